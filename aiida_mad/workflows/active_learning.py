"""``ActiveLearningWorkChain`` (``mad.active_learning``): MP-ALOE's query-by-committee loop, unattended.

One iteration ``i``:

1. **committee**: a ``mad.committee`` of N models (3 MACE by default) on the current dataset; for iteration 0 the
   pretrained ``models`` when given;
2. **pool**: ``count`` candidates (MP-ALOE prototypes by default) into one ``mad.pool`` node
   (:func:`~aiida_mad.calculations.pool.create_pool`, seed ``pool.seed + i``);
3. **predict**: the committee on the pool (``mad.predict.pool``), with the per-structure descriptors when every member
   gives them (:func:`~aiida_mad.calculations.selection.descriptor_parameters`; ``predict.parameters.descriptors:
   false`` turns them off);
4. **select**: thresholds on the committee sigmas, then DIRECT (on the first member's descriptors, else on the fallback
   featurization, recorded in the summary with the reason), and ``StructureData`` nodes for the kept candidates
   only (:func:`~aiida_mad.calculations.selection.select_candidates`), put in group
   ``mad/al/<name>/structures``;
5. **label**: one ``mad.dft`` per kept structure, never more than ``max_concurrent`` at once (batches); failures
   are recorded (structure, process, exit status) and skipped; the loop stops with an exit code only if the failed
   fraction exceeds ``max_failure_fraction``. The work chains go to group ``mad/al/<name>/dft``;
6. **grow**: a new dataset ``<name>-al-<i>`` through ``mad.dataset`` on the input dataset's groups plus the run's DFT
   group, with the input dataset's seed and fractions, so old frames keep their splits (the split of a frame depends
   only on its structure's uuid and the seed: :mod:`aiida_mad.dataset.splits`);
7. **calibrate**: the committee's sigmas against its true errors on the new labels
   (:func:`~aiida_mad.calculations.selection.calibrate`); with ``rescale_thresholds`` the next iteration uses the
   rescaled thresholds;
8. **production** (optional): the production model, which may be of another architecture than the committee (a
   MACE committee choosing data for PET), is retrained on the grown dataset: the inputs of ``mad.train.mace``
   (namespace ``production.mace``) or of ``mad.train`` (``production.metatrain``, where ``base_model`` with the
   ``lora`` protocol fine-tunes a pretrained model on every grown dataset), without the dataset, which the work chain
   sets. Its model is the output ``iterations.iteration_<i>.production_model``.

The loop stops after ``max_iterations``, or when the fraction of selected candidates falls below
``min_selected_fraction`` (or nothing is selected); with ``final_retrain`` a last committee is trained on the final
dataset. Outputs: per iteration ``iterations.iteration_<i>`` (``pool``, ``committee_predictions``, ``table``,
``summary``, ``dataset``, ``calibration``, ``production_model``, ``labels`` the record of labelled and failed
structures), and ``dataset``, ``models`` (the last committee), ``production_model`` (the last one trained) and
``record`` (one entry per iteration, as ``aiida-mad al status`` shows it).

Everything between steps lives in the context as node identifiers and plain numbers, so a daemon restart resumes at
the step it had reached; finished work (a trained committee, the pool, labelled structures) is not repeated.

Bad input is refused before anything runs (:meth:`ActiveLearningWorkChain.validate_inputs`): thresholds <= 0, DIRECT
``n_clusters`` or ``per_cluster`` <= 0, a committee of one, pool elements outside the pseudo family or outside the
committee's elements, production inputs of no or of both architectures, or that the training's own checks refuse on
the input dataset.
"""

from __future__ import annotations

from aiida import orm
from aiida.common import AttributeDict
from aiida.engine import ToContext, WorkChain, if_, while_

from aiida_mad.calculations.pool import PoolPredictCalculation, create_pool
from aiida_mad.calculations.predict import model_elements
from aiida_mad.calculations.selection import (
    calibrate,
    check_selection_parameters,
    descriptor_parameters,
    select_candidates,
)
from aiida_mad.data.dataset import DatasetData
from aiida_mad.data.model import ModelData
from aiida_mad.workflows.committee import CommitteeWorkChain, committee_members
from aiida_mad.workflows.dataset import DatasetWorkChain
from aiida_mad.workflows.dft import MadDftWorkChain
from aiida_mad.workflows.mace import MaceTrainWorkChain
from aiida_mad.workflows.train import TrainWorkChain

__all__ = (
    'AL_GROUP_PREFIX',
    'PRODUCTION',
    'ActiveLearningWorkChain',
    'al_group_label',
    'dft_inputs_from_protocol',
    'iteration_rows',
    'production_inputs',
)

AL_GROUP_PREFIX = 'mad/al'

#: Keys of a ``MadDftWorkChain`` builder that the labelling of every structure shares.
DFT_KEYS = ('pseudo_family', 'kpoints_distance', 'rules', 'outlier_max_force', 'bands_factor', 'scf')

#: The training work chains of the production model, by the name of their namespace under ``production``.
PRODUCTION = {'mace': MaceTrainWorkChain, 'metatrain': TrainWorkChain}


def al_group_label(name: str, kind: str) -> str:
    """Return the label of the group of ``kind`` (``structures`` or ``dft``) of active-learning run ``name``."""
    return f'{AL_GROUP_PREFIX}/{name}/{kind}'


def dft_inputs_from_protocol(code, structure: orm.StructureData, protocol=None, overrides=None, *, options=None):
    """Return the ``dft`` inputs of the work chain from ``MadDftWorkChain``'s protocol, built on ``structure``.

    The SCF threshold of the protocol scales with the number of atoms: it is recorded per atom
    (``conv_thr_per_atom``) and set for each labelled structure.
    """
    builder = MadDftWorkChain.get_builder_from_protocol(code, structure, protocol, overrides, options=options)
    inputs = {key: builder[key] for key in DFT_KEYS if key in builder}
    conv_thr = builder.scf.pw.parameters.get_dict()['ELECTRONS']['conv_thr']
    return inputs, conv_thr / len(structure.sites)


class ActiveLearningWorkChain(WorkChain):
    """Grow a dataset by query by committee: committee, candidates, selection, DIRECT, DFT, retraining."""

    @classmethod
    def define(cls, spec):
        """Define the process specification."""
        super().define(spec)
        spec.input('dataset', valid_type=DatasetData, help='The initial `mad.dataset`.')
        spec.input('name', valid_type=orm.Str, help='Run name: groups mad/al/<name>/..., datasets <name>-al-<i>.')
        spec.input_namespace(
            'models', valid_type=ModelData, dynamic=True, required=False, help='Pretrained committee for iteration 0.'
        )
        spec.expose_inputs(CommitteeWorkChain, namespace='committee', exclude=('dataset',))
        spec.expose_inputs(
            PoolPredictCalculation,
            namespace='predict',
            exclude=('models', 'pool', 'dataset', 'structures', 'split'),
        )
        spec.expose_inputs(MadDftWorkChain, namespace='dft', exclude=('structure', 'subset'))
        spec.input('conv_thr_per_atom', valid_type=orm.Float, required=False, help='SCF threshold per atom (Ry).')
        spec.input('pool', valid_type=orm.Dict, help='Pool settings (aiida_mad.learning.pool.DEFAULT_POOL_SETTINGS).')
        spec.input('thresholds', valid_type=orm.Dict, default=lambda: orm.Dict({}), help='Selection thresholds.')
        spec.input('direct', valid_type=orm.Dict, default=lambda: orm.Dict({}), help='DIRECT: n_clusters, per_cluster.')
        spec.input('max_iterations', valid_type=orm.Int, default=lambda: orm.Int(3), help='Iterations at most.')
        spec.input('max_concurrent', valid_type=orm.Int, default=lambda: orm.Int(4), help='DFT runs at once.')
        spec.input(
            'max_failure_fraction',
            valid_type=orm.Float,
            default=lambda: orm.Float(0.5),
            help='Stop if more than this fraction of an iteration`s DFT runs fail.',
        )
        spec.input(
            'min_selected_fraction',
            valid_type=orm.Float,
            default=lambda: orm.Float(0.0),
            help='Stop when the selected fraction of the candidates is at most this.',
        )
        spec.input(
            'outlier_max_force',
            valid_type=orm.Dict,
            required=False,
            help='Outlier thresholds (eV/Å) of the grown datasets, by subset (`mad.dataset`).',
        )
        spec.input('rescale_thresholds', valid_type=orm.Bool, default=lambda: orm.Bool(False))
        spec.input('final_retrain', valid_type=orm.Bool, default=lambda: orm.Bool(True))
        for name, process in PRODUCTION.items():
            spec.expose_inputs(
                process,
                namespace='production',
                exclude=(f'{name}.dataset',),
                namespace_options={
                    'required': False,
                    'populate_defaults': False,
                    'validator': None,
                    'help': 'The production model, retrained on every grown dataset: `mace` or `metatrain` inputs.',
                },
            )
        for name in PRODUCTION:
            spec.inputs['production'][name].required = False
            spec.inputs['production'][name].populate_defaults = False
        spec.inputs.validator = cls.validate_inputs

        spec.outline(
            cls.setup,
            while_(cls.should_iterate)(
                if_(cls.needs_committee)(cls.train_committee, cls.inspect_committee),
                cls.make_pool,
                cls.predict,
                cls.select,
                while_(cls.labels_left)(cls.label),
                cls.inspect_labels,
                if_(cls.has_labels)(
                    cls.grow,
                    cls.inspect_dataset,
                    cls.calibrate,
                    if_(cls.has_production)(cls.train_production, cls.inspect_production),
                ),
                cls.finish_iteration,
            ),
            if_(cls.should_retrain)(cls.train_committee, cls.inspect_committee),
            cls.results,
        )
        spec.output_namespace('iterations', dynamic=True, help='Per iteration: iteration_<i>.<output>.')
        spec.output('dataset', valid_type=DatasetData, help='The final dataset.')
        spec.output_namespace('models', valid_type=ModelData, dynamic=True, help='The last committee.')
        spec.output('production_model', valid_type=ModelData, required=False, help='The last production model trained.')
        spec.output('record', valid_type=orm.Dict, help='Per iteration: counts, failures, calibration.')
        spec.exit_code(401, 'ERROR_COMMITTEE_FAILED', message='the committee training failed: {message}')
        spec.exit_code(402, 'ERROR_PREDICTION_FAILED', message='the prediction on the pool failed: {message}')
        spec.exit_code(403, 'ERROR_TOO_MANY_DFT_FAILURES', message='{failed} of {total} DFT runs failed: {message}')
        spec.exit_code(404, 'ERROR_DATASET_FAILED', message='growing the dataset failed: {message}')
        spec.exit_code(405, 'ERROR_FINGERPRINT_MISMATCH', message='the new labels are at another level: {message}')
        spec.exit_code(406, 'ERROR_PRODUCTION_FAILED', message='the production model`s training failed: {message}')

    @classmethod
    def get_builder_from_protocol(
        cls,
        dataset: DatasetData,
        *,
        name: str,
        mace_code,
        predict_code,
        pw_code,
        dft_protocol: str | None = None,
        committee_protocol: str = 'mace-mp-large',
        members: int = 3,
        pool: dict | None = None,
        thresholds: dict | None = None,
        direct: dict | None = None,
        max_iterations: int = 3,
        max_concurrent: int = 4,
        dft_options: dict | None = None,
        models: dict | None = None,
        production_code=None,
        production_protocol: str | None = None,
        production_overrides: dict | None = None,
        production_base_model=None,
    ):
        """Return a builder: a MACE committee of ``committee_protocol``, DFT at ``dft_protocol`` (``mad`` default).

        The DFT inputs are those of ``MadDftWorkChain.get_builder_from_protocol`` on the dataset's first frame, with
        the SCF threshold set per structure.

        With ``production_code`` a production model is retrained on every grown dataset: a ``mad.mace`` code gives
        ``mad.train.mace`` inputs, a ``mad.metatrain`` code ``mad.train`` inputs, from that work chain's
        ``get_builder_from_protocol`` with ``production_protocol`` and ``production_overrides`` (and
        ``production_base_model``, a ``mad.model`` to fine-tune, for metatrain's ``lora``).

        :raises ValueError: for an unknown protocol, a family that is not installed, or bad settings (the validator
            runs on the builder before it is returned).
        """
        frame = dataset.frames()[0]
        frame.info = {}
        frame.arrays.pop('forces', None)
        dft, conv_thr = dft_inputs_from_protocol(
            pw_code, orm.StructureData(ase=frame), dft_protocol, options=dft_options
        )
        mace = MaceTrainWorkChain.get_protocol_inputs(committee_protocol)['mace']
        builder = cls.get_builder()
        builder.dataset = dataset
        builder.name = orm.Str(name)
        if models:
            builder.models = models
        builder.committee.members = orm.Int(members)
        builder.committee.mace.code = mace_code
        builder.committee.mace.parameters = orm.Dict(mace['parameters'])
        builder.committee.mace.metadata.options = {
            'resources': {'num_machines': 1, 'num_mpiprocs_per_machine': 1},
            **mace.get('metadata', {}).get('options', {}),
        }
        builder.predict.code = predict_code
        builder.predict.metadata.options = {'resources': {'num_machines': 1, 'num_mpiprocs_per_machine': 1}}
        builder.dft = dft
        builder.conv_thr_per_atom = orm.Float(conv_thr)
        builder.pool = orm.Dict(pool or {})
        builder.thresholds = orm.Dict(thresholds or {})
        builder.direct = orm.Dict(direct or {})
        builder.max_iterations = orm.Int(max_iterations)
        builder.max_concurrent = orm.Int(max_concurrent)
        if production_code is not None:
            builder.production = production_inputs(
                production_code, dataset, production_protocol, production_overrides, base_model=production_base_model
            )
        builder.metadata.label = f'mad.active_learning {name} on {dataset.name}'
        problem = cls.validate_inputs(builder._inputs(prune=True), None)
        if problem:
            raise ValueError(problem)
        return builder

    # ------------------------------------------------------------------------------------------------------------
    # Validation

    @staticmethod
    def validate_inputs(value, ctx):
        """Refuse bad thresholds, DIRECT settings, committees and pool elements before anything runs."""
        from aiida_mad.learning.pool import pool_settings
        from aiida_mad.workflows.dft import load_family

        try:
            check_selection_parameters(
                {'thresholds': value['thresholds'].get_dict(), 'direct': value['direct'].get_dict()}
            )
        except (ValueError, TypeError) as exception:
            return f'selection: {exception}'
        for key, minimum in (('max_iterations', 1), ('max_concurrent', 1)):
            if key in value and value[key].value < minimum:
                return f'{key} must be at least {minimum}, got {value[key].value}'
        if 'max_failure_fraction' in value and not 0 <= value['max_failure_fraction'].value <= 1:
            return f'max_failure_fraction must be in [0, 1], got {value["max_failure_fraction"].value}'
        models = value.get('models') or {}
        if models and len(models) < 2:
            return f'a committee needs at least 2 members, got {len(models)} pretrained model(s)'
        committee = value.get('committee') or {}
        if 'members' in committee and committee['members'].value < 2:
            return f'a committee needs at least 2 members, got {committee["members"].value}'
        production = value.get('production') or {}
        given = [name for name in PRODUCTION if production.get(name)]
        if production and len(given) != 1:
            return (
                'production: give the training inputs of exactly one architecture, `production.mace` or '
                f'`production.metatrain` (got {", ".join(given) or "none"})'
            )
        if given and 'dataset' in value:
            process = PRODUCTION[given[0]]
            inputs = {**production[given[0]], 'dataset': value['dataset']}
            problem = process._process_class.spec().inputs.validator(inputs, None)
            if problem:
                return (
                    f'production model (`{process.__name__}`, {given[0]}) on dataset {value["dataset"].name}: {problem}'
                )
        if 'dataset' not in value or 'pool' not in value:
            return None
        dataset = value['dataset']
        settings = dict(value['pool'].get_dict())
        settings.setdefault('element_pool', list(dataset.elements))
        try:
            settings = pool_settings(settings)
        except ValueError as exception:
            return f'pool: {exception}'
        elements = set(settings['element_pool'])
        outside = sorted(elements - set(dataset.elements))
        if outside:
            return (
                f'pool elements {", ".join(outside)} are not in dataset {dataset.name} (pk {dataset.pk}), so the '
                f'committee is not trained on them (it knows {", ".join(dataset.elements)})'
            )
        try:
            for key, model in sorted(models.items()):
                outside = sorted(elements - set(model_elements(model)))
                if outside:
                    return f'pool elements {", ".join(outside)} are unknown to pretrained model `{key}` (pk {model.pk})'
        except ValueError as exception:
            return str(exception)
        dft = value.get('dft') or {}
        if 'pseudo_family' in dft:
            try:
                family = load_family(dft['pseudo_family'].value)
            except ValueError as exception:
                return str(exception)
            outside = sorted(elements - set(family.elements))
            if outside:
                return f'pool elements {", ".join(outside)} are not in pseudopotential family {family.label}'
        return None

    # ------------------------------------------------------------------------------------------------------------
    # Steps

    def setup(self):
        """Start at iteration 0 on the input dataset, with the pretrained models if any."""
        self.ctx.iteration = 0
        self.ctx.dataset = self.inputs.dataset.uuid
        self.ctx.models = {key: model.uuid for key, model in (self.inputs.get('models') or {}).items()}
        self.ctx.thresholds = self.inputs.thresholds.get_dict()
        self.ctx.record = []
        self.ctx.stop = False
        settings = dict(self.inputs.pool.get_dict())
        settings.setdefault('element_pool', list(self.inputs.dataset.elements))
        self.ctx.pool_settings = settings
        self.ctx.groups = list(self.inputs.dataset.selection.get('groups') or [])
        for kind in ('structures', 'dft'):
            orm.Group.collection.get_or_create(al_group_label(self.inputs.name.value, kind))

    def should_iterate(self):
        """Return whether another iteration runs."""
        return not self.ctx.stop and self.ctx.iteration < self.inputs.max_iterations.value

    def needs_committee(self):
        """Return whether the iteration's committee must be trained (no pretrained or retrained one)."""
        return not self.ctx.models

    def should_retrain(self):
        """Return whether to train a last committee on the final dataset."""
        return self.inputs.final_retrain.value and not self.ctx.models and self.ctx.dataset != self.inputs.dataset.uuid

    def train_committee(self):
        """Train the committee on the current dataset."""
        inputs = AttributeDict(self.exposed_inputs(CommitteeWorkChain, 'committee'))
        inputs.dataset = orm.load_node(self.ctx.dataset)
        inputs.metadata = {'call_link_label': f'committee_{self.ctx.iteration}'}
        node = self.submit(CommitteeWorkChain, **inputs)
        self.report(f'iteration {self.ctx.iteration}: committee CommitteeWorkChain<{node.pk}>')
        return ToContext(committee=node)

    def inspect_committee(self):
        """Take the committee's models."""
        node = self.ctx.committee
        if not node.is_finished_ok:
            return self.exit_codes.ERROR_COMMITTEE_FAILED.format(message=f'{node.process_label}<{node.pk}>')
        self.ctx.models = {f'member_{i}': model.uuid for i, model in enumerate(committee_members(node))}
        return None

    def has_production(self):
        """Return whether a production model is retrained on every grown dataset."""
        return bool(self.inputs.get('production'))

    def train_production(self):
        """Train the production model on the grown dataset with its own training work chain."""
        name = next(name for name in PRODUCTION if self.inputs.production.get(name))
        process = PRODUCTION[name]
        inputs = AttributeDict(self.exposed_inputs(process, 'production', agglomerate=False))
        namespace = AttributeDict(dict(inputs[name]))
        namespace.dataset = orm.load_node(self.ctx.dataset)
        inputs[name] = namespace
        label = f'al production {name} on {namespace.dataset.name}'
        namespace.metadata = {**dict(namespace.get('metadata', {})), 'label': label}
        inputs.metadata = {'call_link_label': f'production_{self.ctx.iteration}', 'label': label}
        node = self.submit(process, **inputs)
        self.report(f'iteration {self.ctx.iteration}: production model {process.__name__}<{node.pk}>')
        return ToContext(production=node)

    def inspect_production(self):
        """Take the production model of this iteration."""
        node = self.ctx.production
        if not node.is_finished_ok or 'model' not in node.outputs:
            return self.exit_codes.ERROR_PRODUCTION_FAILED.format(
                message=f'{node.process_label}<{node.pk}> {node.exit_status}: {node.exit_message}'
            )
        model = node.outputs.model
        self._iteration_out('production_model', model)
        self.ctx.production_model = model.uuid
        self.ctx.last_production_model = model.uuid
        return None

    def _iteration_out(self, name: str, node) -> None:
        self.out(f'iterations.iteration_{self.ctx.iteration}.{name}', node)

    def make_pool(self):
        """Generate the iteration's candidates into one pool node."""
        settings = dict(self.ctx.pool_settings)
        settings['seed'] = int(settings.get('seed', 0)) + self.ctx.iteration
        pool = create_pool(orm.Dict(settings), metadata={'call_link_label': f'pool_{self.ctx.iteration}'})
        self.ctx.pool = pool.uuid
        self._iteration_out('pool', pool)
        self.report(f'iteration {self.ctx.iteration}: pool<{pool.pk}> of {pool.n_candidates} candidates')

    def predict(self):
        """Predict the pool with the committee."""
        inputs = AttributeDict(self.exposed_inputs(PoolPredictCalculation, 'predict'))
        inputs.pool = orm.load_node(self.ctx.pool)
        inputs.models = {key: orm.load_node(uuid) for key, uuid in self.ctx.models.items()}
        given = inputs.parameters.get_dict() if 'parameters' in inputs else None
        parameters, self.ctx.fallback_reason = descriptor_parameters(inputs.models, given)
        inputs.parameters = orm.Dict(parameters)
        inputs.metadata = {**dict(inputs.get('metadata', {})), 'call_link_label': f'predict_{self.ctx.iteration}'}
        node = self.submit(PoolPredictCalculation, **inputs)
        return ToContext(prediction=node)

    def select(self):
        """Select, downsample and store the kept candidates; queue them for labelling."""
        node = self.ctx.prediction
        if not node.is_finished_ok or 'committee' not in node.outputs:
            return self.exit_codes.ERROR_PREDICTION_FAILED.format(
                message=f'PoolPredictCalculation<{node.pk}> exit status {node.exit_status}'
            )
        self._iteration_out('committee_predictions', node.outputs.committee)
        parameters = {
            'thresholds': self.ctx.thresholds,
            'direct': self.inputs.direct.get_dict(),
            'iteration': self.ctx.iteration,
        }
        if self.ctx.get('fallback_reason'):
            parameters['fallback_reason'] = self.ctx.fallback_reason
        results = select_candidates(
            orm.load_node(self.ctx.pool),
            node.outputs.committee,
            orm.Dict(parameters),
            node.outputs.predictions,
            metadata={'call_link_label': f'select_{self.ctx.iteration}'},
        )
        self._iteration_out('table', results['table'])
        self._iteration_out('summary', results['summary'])
        structures = [results[key] for key in sorted(results) if key.startswith('structure_')]
        group = orm.load_group(al_group_label(self.inputs.name.value, 'structures'))
        group.add_nodes(structures)
        self.ctx.summary = results['summary'].get_dict()
        self.ctx.queue = [structure.uuid for structure in structures]
        self.ctx.labelled = []
        self.ctx.failed = []
        self.report(
            f'iteration {self.ctx.iteration}: {self.ctx.summary["n_selected"]} of {self.ctx.summary["n_candidates"]} '
            f'selected, {len(structures)} kept by DIRECT'
        )
        return None

    def labels_left(self):
        """Return whether structures wait for labelling."""
        return bool(self.ctx.queue)

    def label(self):
        """Submit the next batch of at most ``max_concurrent`` DFT runs and wait for it."""
        size = self.inputs.max_concurrent.value
        batch, self.ctx.queue = self.ctx.queue[:size], self.ctx.queue[size:]
        futures = {}
        base = self.exposed_inputs(MadDftWorkChain, 'dft')
        for uuid in batch:
            structure = orm.load_node(uuid)
            inputs = AttributeDict(dict(base))
            inputs.structure = structure
            inputs.subset = orm.Str(structure.base.extras.get('mad_subset'))
            if 'conv_thr_per_atom' in self.inputs:
                scf = AttributeDict(dict(inputs.scf))
                pw = AttributeDict(dict(scf.pw))
                parameters = pw.parameters.get_dict()
                parameters['ELECTRONS']['conv_thr'] = self.inputs.conv_thr_per_atom.value * len(structure.sites)
                pw.parameters = orm.Dict(parameters)
                scf.pw = pw
                inputs.scf = scf
            number = self.ctx.get('submitted', 0)
            self.ctx.submitted = number + 1
            inputs.metadata = {
                'call_link_label': f'dft_{self.ctx.iteration}_{number}',
                'label': f'al {structure.get_formula()}',
            }
            futures[f'dft_{uuid}'] = self.submit(MadDftWorkChain, **inputs)
        self.report(f'iteration {self.ctx.iteration}: labelling {len(batch)} ({len(self.ctx.queue)} queued)')
        return ToContext(**futures)

    def inspect_labels(self):
        """Record labelled and failed structures; stop if too many failed."""
        group = orm.load_group(al_group_label(self.inputs.name.value, 'dft'))
        labelled, failed = [], []
        for key in [key for key in self.ctx if key.startswith('dft_')]:
            node = self.ctx[key]
            uuid = key[len('dft_') :]
            if node.is_finished_ok:
                labelled.append({'structure': uuid, 'dft': node.uuid})
            else:
                failed.append({'structure': uuid, 'dft': node.uuid, 'exit_status': node.exit_status})
        group.add_nodes([self.ctx[f'dft_{entry["structure"]}'] for entry in labelled + failed])
        for key in [key for key in self.ctx if key.startswith('dft_')]:
            del self.ctx[key]
        self.ctx.labelled, self.ctx.failed = labelled, failed
        total = len(labelled) + len(failed)
        for entry in failed:
            self.report(f'DFT failed: structure {entry["structure"]} (exit status {entry["exit_status"]}), skipped')
        fingerprint = self.inputs.dataset.fingerprint
        for entry in labelled:
            found = orm.load_node(entry['dft']).outputs.properties.get('fingerprint')
            if found != fingerprint:
                return self.exit_codes.ERROR_FINGERPRINT_MISMATCH.format(
                    message=f'MadDftWorkChain {entry["dft"]} has {found[:16]}, dataset has {fingerprint[:16]}'
                )
        if total and len(failed) / total > self.inputs.max_failure_fraction.value:
            return self.exit_codes.ERROR_TOO_MANY_DFT_FAILURES.format(
                failed=len(failed), total=total, message=', '.join(entry['structure'] for entry in failed)
            )
        return None

    def has_labels(self):
        """Return whether this iteration labelled any structure."""
        return bool(self.ctx.labelled)

    def grow(self):
        """Build the grown dataset: the input dataset's groups plus this run's DFT group, same seed and fractions."""
        dataset = self.inputs.dataset
        attributes = dataset.base.attributes
        builder = DatasetWorkChain.get_builder()
        builder.name = orm.Str(f'{self.inputs.name.value}-al-{self.ctx.iteration}')
        groups = [*self.ctx.groups, al_group_label(self.inputs.name.value, 'dft')]
        builder.groups = orm.List(groups)
        builder.seed = orm.Int(attributes.get('seed') or 0)
        if attributes.get('fractions'):
            builder.fractions = orm.List(list(attributes.get('fractions')))
        builder.fingerprint = orm.Str(dataset.fingerprint)
        builder.baseline = orm.Bool(bool(dataset.atomic_energies))
        if 'outlier_max_force' in self.inputs:
            builder.outlier_max_force = self.inputs.outlier_max_force
        builder.metadata = {'call_link_label': f'dataset_{self.ctx.iteration}'}
        node = self.submit(builder)
        return ToContext(grown=node)

    def inspect_dataset(self):
        """Take the grown dataset."""
        node = self.ctx.grown
        if not node.is_finished_ok:
            return self.exit_codes.ERROR_DATASET_FAILED.format(
                message=f'DatasetWorkChain<{node.pk}> {node.exit_status}: {node.exit_message}'
            )
        self.ctx.dataset = node.outputs.dataset.uuid
        self._iteration_out('dataset', node.outputs.dataset)
        return None

    def calibrate(self):
        """Compare the committee's sigmas with its errors on the new labels; rescale the thresholds if asked."""
        committee = self.ctx.prediction.outputs.committee
        candidates, symbols, labels = {}, {}, {}
        for number, entry in enumerate(self.ctx.labelled):
            structure = orm.load_node(entry['structure'])
            dft = orm.load_node(entry['dft'])
            key = f'c{number:05d}'
            candidates[key] = structure.base.extras.get('mad_candidate_id')
            symbols[key] = [site.kind_name for site in structure.sites]
            labels[f'energy_{key}'] = dft.outputs.energy
            labels[f'forces_{key}'] = dft.outputs.forces
        models = [orm.load_node(uuid) for uuid in self.ctx.models.values()]
        references = {model.energy_reference for model in models}
        parameters = {
            'thresholds': self.ctx.thresholds,
            'candidates': candidates,
            'symbols': symbols,
            'energy_reference': references.pop() if len(references) == 1 else 'total',
            'atomic_energies': dict(self.inputs.dataset.atomic_energies),
            'rescale': self.inputs.rescale_thresholds.value,
        }
        result = calibrate(
            committee, orm.Dict(parameters), **labels, metadata={'call_link_label': f'calibrate_{self.ctx.iteration}'}
        )
        report = result['report']
        self._iteration_out('calibration', report)
        self.ctx.calibration = report.get_dict()['calibration']
        if self.inputs.rescale_thresholds.value:
            self.ctx.thresholds = report.get_dict()['next_thresholds']

    def finish_iteration(self):
        """Record the iteration, decide whether to go on, and make the next committee train."""
        summary = self.ctx.summary
        entry = {
            'iteration': self.ctx.iteration,
            'pool': self.ctx.pool,
            'committee': dict(self.ctx.models),
            'candidates': summary['n_candidates'],
            'selected': summary['n_selected'],
            'downsampled': summary['n_downsampled'],
            'labelled': len(self.ctx.labelled),
            'failed': len(self.ctx.failed),
            'failures': self.ctx.failed,
            'dataset': self.ctx.dataset,
            'thresholds': summary['thresholds'],
            'calibration': self.ctx.get('calibration', {}) if self.ctx.labelled else {},
            'committee_errors': {key: orm.load_node(uuid).errors for key, uuid in sorted(self.ctx.models.items())},
        }
        if self.ctx.get('production_model'):
            model = orm.load_node(self.ctx.production_model)
            entry['production'] = {'model': model.uuid, 'architecture': model.architecture, 'errors': model.errors}
        self._iteration_out('labels', orm.Dict({'labelled': self.ctx.labelled, 'failed': self.ctx.failed}).store())
        self.ctx.record = [*self.ctx.record, entry]
        fraction = summary['selected_fraction']
        if summary['n_selected'] == 0 or fraction <= self.inputs.min_selected_fraction.value:
            self.report(f'iteration {self.ctx.iteration}: selected fraction {fraction:.4f}: converged, stopping')
            self.ctx.stop = True
        if not self.ctx.labelled:
            self.ctx.stop = True
        self.ctx.iteration += 1
        if not self.ctx.stop:
            self.ctx.models = {}
        else:
            # The committee of the last iteration is the final one unless the dataset grew since it was trained.
            self.ctx.models = {} if self.ctx.labelled else self.ctx.models
        self.ctx.pop('calibration', None)
        self.ctx.pop('production_model', None)

    def results(self):
        """Attach the final dataset, the last committee and the record."""
        self.out('dataset', orm.load_node(self.ctx.dataset))
        for key, uuid in self.ctx.models.items():
            self.out(f'models.{key}', orm.load_node(uuid))
        if self.ctx.get('last_production_model'):
            self.out('production_model', orm.load_node(self.ctx.last_production_model))
        self.out('record', orm.Dict({'name': self.inputs.name.value, 'iterations': self.ctx.record}).store())


def iteration_rows(node: orm.WorkflowNode) -> list[dict]:
    """Return one row per iteration of an active-learning run: from its record, else from the outputs so far."""
    if 'record' in node.outputs:
        return list(node.outputs.record.get_dict()['iterations'])
    rows = []
    iterations = node.outputs.iterations if 'iterations' in node.outputs else {}
    for key in sorted(iterations, key=lambda key: int(key.split('_')[1])):
        outputs = iterations[key]
        row = {'iteration': int(key.split('_')[1])}
        if 'summary' in outputs:
            summary = outputs['summary'].get_dict()
            row.update(
                candidates=summary['n_candidates'],
                selected=summary['n_selected'],
                downsampled=summary['n_downsampled'],
                thresholds=summary['thresholds'],
            )
        if 'labels' in outputs:
            labels = outputs['labels'].get_dict()
            row.update(labelled=len(labels['labelled']), failed=len(labels['failed']), failures=labels['failed'])
        if 'calibration' in outputs:
            row['calibration'] = outputs['calibration'].get_dict()['calibration']
        if 'dataset' in outputs:
            row['dataset'] = outputs['dataset'].uuid
        if 'production_model' in outputs:
            model = outputs['production_model']
            row['production'] = {'model': model.uuid, 'architecture': model.architecture, 'errors': model.errors}
        rows.append(row)
    return rows


def production_inputs(code, dataset: DatasetData, protocol=None, overrides=None, *, base_model=None) -> dict:
    """Return the ``production`` inputs for ``code`` (``mad.mace`` or ``mad.metatrain``), without the dataset.

    They are the inputs of the training work chain's ``get_builder_from_protocol`` on ``dataset`` (so its checks run),
    under ``production.mace`` or ``production.metatrain``; ``base_model`` (metatrain only) is the model to fine-tune.
    A code without a default plugin (as ``aiida-mad setup`` makes them) is taken by its executable, ``mace_run_train``
    or ``mtt``. The labels (which name ``dataset``) are left out: the work chain labels each training.

    :raises ValueError: for a code of another plugin, or what the training's builder refuses.
    """
    import pathlib

    plugin = code.default_calc_job_plugin
    executable = pathlib.PurePath(str(getattr(code, 'filepath_executable', ''))).name
    if plugin == 'mad.mace' or (plugin is None and executable == 'mace_run_train'):
        if base_model is not None:
            raise ValueError('production: fine-tuning a base model is for metatrain (`lora`), not MACE')
        builder = MaceTrainWorkChain.get_builder_from_protocol(code, dataset, protocol, overrides)
        name = 'mace'
    elif plugin == 'mad.metatrain' or (plugin is None and executable == 'mtt'):
        builder = TrainWorkChain.get_builder_from_protocol(code, dataset, protocol, overrides, base_model=base_model)
        name = 'metatrain'
    else:
        raise ValueError(
            f'production code {code.full_label} runs `{plugin}`: give a `mad.mace` or `mad.metatrain` code'
        )
    inputs = builder._inputs(prune=True)
    inputs[name] = {key: value for key, value in inputs[name].items() if key != 'dataset'}
    if 'metadata' in inputs[name]:
        inputs[name]['metadata'] = {key: value for key, value in inputs[name]['metadata'].items() if key != 'label'}
    inputs.pop('metadata', None)
    return inputs
