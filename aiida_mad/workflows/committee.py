"""``CommitteeWorkChain`` (``mad.committee``): N models that differ only in seed and train/validation split.

MP-ALOE selects structures by the disagreement of a committee of 3 MACE models that differ only in their seed and
their train/validation split (SPEC 4.5). The work chain takes one dataset and the inputs of one training, either
MACE (namespace ``mace``: :class:`~aiida_mad.calculations.mace.MaceTrainCalculation`) or metatrain (namespace
``metatrain``: :class:`~aiida_mad.calculations.metatrain.MetatrainCalculation`); for member ``i`` it makes the
member's dataset (:func:`~aiida_mad.calculations.committee.committee_split`: train and val frames split again by
member, test frames shared) and sets the seed to ``seed + i``; all members train in parallel.

Outputs: ``models`` (namespace ``member_<i>``, the members' ``mad.model`` nodes) and ``committee`` (a ``Dict``
listing each member: model uuid, seed, its dataset and validation frames, its errors; made by the calcfunction
:func:`~aiida_mad.calculations.committee.committee_record` from the member models, so the provenance graph links
every member to the record), and with ``name`` the
models go to group ``mad/committees/<name>``. A committee of one is refused before anything runs.
"""

from __future__ import annotations

from aiida import orm
from aiida.common import AttributeDict
from aiida.engine import WorkChain

from aiida_mad.calculations.committee import committee_record, committee_split
from aiida_mad.calculations.mace import MaceTrainCalculation
from aiida_mad.calculations.mace import validate_inputs as validate_mace
from aiida_mad.calculations.metatrain import MetatrainCalculation
from aiida_mad.calculations.metatrain import validate_inputs as validate_metatrain
from aiida_mad.data.dataset import DatasetData
from aiida_mad.data.model import ModelData

__all__ = ('COMMITTEE_GROUP_PREFIX', 'CommitteeWorkChain', 'committee_members')

COMMITTEE_GROUP_PREFIX = 'mad/committees'
ARCHITECTURES = {'mace': MaceTrainCalculation, 'metatrain': MetatrainCalculation}


def _with_seed(parameters: dict, architecture: str, seed: int) -> dict:
    """Return ``parameters`` with the member's seed (MACE's ``seed``; metatrain's top-level ``seed``)."""
    return {**parameters, 'seed': seed}


class CommitteeWorkChain(WorkChain):
    """Train a committee of N models (MACE or metatrain) that differ only in seed and train/validation split."""

    @classmethod
    def define(cls, spec):
        """Define the process specification."""
        super().define(spec)
        spec.input('dataset', valid_type=DatasetData, help='The `mad.dataset` of the committee.')
        spec.input('members', valid_type=orm.Int, default=lambda: orm.Int(3), help='Number of members (at least 2).')
        spec.input(
            'seed',
            valid_type=orm.Int,
            default=lambda: orm.Int(0),
            help='Member i trains with seed + i; the seed also orders the frames of the validation splits.',
        )
        spec.input('name', valid_type=orm.Str, required=False, help='Committee name: group mad/committees/<name>.')
        for name, process in ARCHITECTURES.items():
            spec.expose_inputs(
                process,
                namespace=name,
                exclude=('dataset',),
                namespace_options={'required': False, 'populate_defaults': False, 'help': f'A {name} training.'},
            )
        spec.inputs.validator = cls.validate_inputs
        spec.outline(cls.split, cls.train, cls.results)
        spec.output_namespace('models', valid_type=ModelData, dynamic=True, help='The members, `member_<i>`.')
        spec.output('committee', valid_type=orm.Dict, help='Members with their seeds, splits and errors.')
        spec.exit_code(400, 'ERROR_MEMBER_FAILED', message='committee member(s) failed: {message}')

    @staticmethod
    def validate_inputs(value, ctx):
        """Refuse a committee of one, and check one member's training inputs before anything runs."""
        members = value['members'].value if 'members' in value else 3
        if members < 2:
            return f'a committee needs at least 2 members, got {members}'
        given = [name for name in ARCHITECTURES if value.get(name)]
        if len(given) != 1:
            return f'give the inputs of exactly one architecture, `mace` or `metatrain` (got {given or "none"})'
        if 'dataset' not in value:
            return None
        inputs = {**value[given[0]], 'dataset': value['dataset']}
        return (validate_mace if given[0] == 'mace' else validate_metatrain)(inputs, None)

    @property
    def architecture(self) -> str:
        """Return ``mace`` or ``metatrain``."""
        return next(name for name in ARCHITECTURES if self.inputs.get(name))

    def split(self):
        """Make each member's dataset: its own train/validation split, the same test frames."""
        self.ctx.datasets = [
            committee_split(self.inputs.dataset, orm.Int(member), self.inputs.seed)
            for member in range(self.inputs.members.value)
        ]

    def train(self):
        """Submit every member's training at once."""
        process = ARCHITECTURES[self.architecture]
        base = AttributeDict(self.exposed_inputs(process, self.architecture))
        for member, dataset in enumerate(self.ctx.datasets):
            inputs = AttributeDict(dict(base))
            seed = self.inputs.seed.value + member
            inputs.dataset = dataset
            inputs.parameters = orm.Dict(_with_seed(base.parameters.get_dict(), self.architecture, seed))
            inputs.metadata = {**dict(base.get('metadata', {})), 'label': f'committee member {member}'}
            node = self.submit(process, **inputs)
            self.report(f'member {member}: {process.__name__}<{node.pk}> with seed {seed} on dataset {dataset.pk}')
            self.to_context(**{f'member_{member}': node})

    def results(self):
        """Attach the members' models and the committee record."""
        failed = []
        members = {}
        for member, dataset in enumerate(self.ctx.datasets):
            node = self.ctx[f'member_{member}']
            if not node.is_finished_ok:
                failed.append(
                    f'member {member} ({node.process_label}<{node.pk}>: {node.exit_status} {node.exit_message})'
                )
                continue
            model = node.outputs.model
            self.out(f'models.member_{member}', model)
            members[f'model_{member}'] = model
            members[f'dataset_{member}'] = dataset
        if failed:
            return self.exit_codes.ERROR_MEMBER_FAILED.format(message='; '.join(failed))
        record = committee_record(
            self.inputs.dataset,
            orm.Str(self.architecture),
            self.inputs.seed,
            metadata={'call_link_label': 'committee_record'},
            **members,
        )
        self.out('committee', record)
        if 'name' in self.inputs:
            group, _ = orm.Group.collection.get_or_create(f'{COMMITTEE_GROUP_PREFIX}/{self.inputs.name.value}')
            group.add_nodes([orm.load_node(entry['model']) for entry in record['members']])
        self.report(f'committee of {record["n_members"]} {self.architecture} models')
        return None


def committee_members(node: orm.WorkflowNode) -> list[ModelData]:
    """Return the member models of a finished ``mad.committee`` work chain, in member order."""
    models = node.outputs.models
    return [models[key] for key in sorted(models, key=lambda key: int(key.split('_')[1]))]
