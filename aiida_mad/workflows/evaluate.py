"""``EvaluateWorkChain`` (``mad.evaluate``): a model's report card, per subset, the way the seed papers report it.

One ``mad.predict`` run predicts a dataset's split (``test`` by default; ``train``, ``val`` or ``all``) or any
structures (a structure group: no reference values, so only the rotational error), together with the rotated copies
of its structures (a Lebedev-Laikov grid, order 9 by default as in PET-MAD: 38 rotations, predicted in the same
batches of the same run); :func:`~aiida_mad.calculations.evaluate.evaluation_table` (``mad.evaluation_table``)
turns the predictions into the table:

- per subset and overall: MAE and RMSE of the energy per atom (meV/atom), the force components (meV/Å) and the
  stress components (meV/Å³) (PET-MAD Table I, Fig. 2);
- the rotational symmetry error: the standard deviation of the energy per atom over the rotations (meV/atom;
  PET-MAD Fig. 2, right panel), or of the DOS (PET-MAD-DOS eq. 10);
- for DOS models: the shift-aligned DOS RMSE normalised by the electron count (PET-MAD-DOS eqs. 8-9) and the error of
  the band gap read from the DOS.

Outputs: ``table`` (``Dict``), ``per_frame`` (``ArrayData``), both made by the calcfunction whose inputs are the
model and the dataset, so the table sits next to both in the provenance graph. ``aiida-mad model evaluate`` prints
it in the layout of PET-MAD's Table I; the HTML report shows it.

Rotations (input ``rotations``, a ``Dict``): ``order`` (9; 0 for none), ``in_plane`` (1: rotations about z applied
before each grid rotation), ``max_per_subset`` (``None``: every structure; else the first ``N`` of each subset in the
dataset's order, which bounds the cost: the copies multiply the structures predicted by the number of rotations).
"""

from __future__ import annotations

import numpy as np
from aiida import orm
from aiida.common import AttributeDict
from aiida.engine import ToContext, WorkChain

from aiida_mad.calculations.evaluate import evaluation_table
from aiida_mad.calculations.predict import PredictCalculation
from aiida_mad.calculations.predict import validate_inputs as validate_predict
from aiida_mad.data.dataset import DatasetData
from aiida_mad.data.model import ModelData

__all__ = ('DEFAULT_ROTATIONS', 'EvaluateWorkChain', 'evaluation_tables', 'rotation_settings')

#: Defaults of the ``rotations`` input: PET-MAD's grid of order 9 (38 rotations), no in-plane rotation, every frame.
DEFAULT_ROTATIONS = {'order': 9, 'in_plane': 1, 'max_per_subset': None}
SPLITS = ('train', 'val', 'test', 'all')


def rotation_settings(value: dict | None) -> dict:
    """Return the ``rotations`` settings merged over :data:`DEFAULT_ROTATIONS`, checked.

    :raises ValueError: naming an unknown key or a bad value.
    """
    from aiida_mad.learning.rotations import LEBEDEV_ORDERS

    settings = {**DEFAULT_ROTATIONS, **(value or {})}
    unknown = sorted(set(settings) - set(DEFAULT_ROTATIONS))
    if unknown:
        raise ValueError(f'unknown rotations setting(s) {unknown}: the settings are {sorted(DEFAULT_ROTATIONS)}')
    order = settings['order']
    if order not in (0, None, *LEBEDEV_ORDERS):
        raise ValueError(f'rotations.order must be 0 (no rotations) or one of {list(LEBEDEV_ORDERS)}, got {order!r}')
    if not isinstance(settings['in_plane'], int) or settings['in_plane'] < 1:
        raise ValueError(f'rotations.in_plane must be a positive integer, got {settings["in_plane"]!r}')
    limit = settings['max_per_subset']
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f'rotations.max_per_subset must be a positive integer or None, got {limit!r}')
    return settings


def _subset(node: orm.StructureData) -> str:
    """Return the subset of a structure (extra ``mad_subset``), ``structures`` for one without."""
    return node.base.extras.get('mad_subset', 'structures')


def _rotated_uuids(dataset: DatasetData | None, split: str | None, structures: dict, limit: int | None) -> list[str]:
    """Return the uuids of the structures to rotate: all, or the first ``limit`` of each subset."""
    if dataset is not None:
        index = dataset.index()
        pairs = [
            (str(subset), str(uuid))
            for uuid, subset, frame_split in zip(index['source_uuid'], index['subset'], index['split'], strict=True)
            if split is None or frame_split == split
        ]
    else:
        pairs = [
            (node.base.extras.get('mad_subset', 'structures'), node.uuid) for _, node in sorted(structures.items())
        ]
    if limit is None:
        return [uuid for _, uuid in pairs]
    taken: dict[str, int] = {}
    chosen = []
    for subset, uuid in pairs:
        if taken.get(subset, 0) < limit:
            taken[subset] = taken.get(subset, 0) + 1
            chosen.append(uuid)
    return chosen


class EvaluateWorkChain(WorkChain):
    """Evaluate a model on a dataset's split (or structures): per-subset errors and rotational symmetry error."""

    @classmethod
    def define(cls, spec):
        """Define the process specification."""
        super().define(spec)
        spec.input('model', valid_type=ModelData, help='The `mad.model` to evaluate.')
        spec.input('dataset', valid_type=DatasetData, required=False, help='Evaluate on the frames of this dataset.')
        spec.input(
            'split',
            valid_type=orm.Str,
            default=lambda: orm.Str('test'),
            help='The split of `dataset`: train, val, test (default) or all.',
        )
        spec.input_namespace(
            'structures',
            valid_type=orm.StructureData,
            dynamic=True,
            required=False,
            help='Structures without reference values (e.g. a group): only the rotational error.',
        )
        spec.input(
            'rotations',
            valid_type=orm.Dict,
            required=False,
            help='Rotation grid: `order` (9; 0 for none), `in_plane` (1), `max_per_subset` (None: every structure).',
        )
        spec.expose_inputs(
            PredictCalculation,
            namespace='predict',
            exclude=('models', 'dataset', 'split', 'structures', 'rotations'),
            namespace_options={
                'help': 'Inputs of the `mad.predict` run: code, parameters, metadata.options.',
                'validator': None,  # mad.predict's own validator needs the models: validate_inputs calls it
            },
        )
        spec.inputs.validator = cls.validate_inputs
        spec.outline(cls.predict, cls.tabulate)
        spec.output('table', valid_type=orm.Dict, help='The evaluation table per subset and overall, with its record.')
        spec.output('per_frame', valid_type=orm.ArrayData, help='The errors of every structure.')
        spec.exit_code(400, 'ERROR_PREDICTION_FAILED', message='the mad.predict run failed: {message}')

    @classmethod
    def get_builder_for(
        cls,
        model: ModelData,
        *,
        code: orm.AbstractCode,
        dataset: DatasetData | None = None,
        split: str = 'test',
        structures=None,
        rotations: dict | None = None,
        parameters: dict | None = None,
        options: dict | None = None,
    ):
        """Return a builder that evaluates ``model`` on ``dataset``'s ``split`` or on ``structures``.

        :param code: the ``aiida-mad-predict`` code.
        :param structures: ``StructureData`` nodes (a group's), instead of a dataset.
        :param rotations: the rotation settings (:data:`DEFAULT_ROTATIONS`).
        :param parameters: ``batch_size`` and ``device`` of ``mad.predict``.
        :param options: ``metadata.options`` of the ``mad.predict`` run (default: one process, 1 h).
        """
        builder = cls.get_builder()
        builder.model = model
        if dataset is not None:
            builder.dataset = dataset
            builder.split = orm.Str(split)
        if structures:
            builder.structures = {f'structure_{node.pk}': node for node in structures}
        if rotations is not None:
            builder.rotations = orm.Dict(rotations)
        builder.predict.code = code
        if parameters:
            builder.predict.parameters = orm.Dict(parameters)
        builder.predict.metadata.options = {
            'resources': {'num_machines': 1, 'num_mpiprocs_per_machine': 1},
            'max_wallclock_seconds': 3600,
            **(options or {}),
        }
        return builder

    @staticmethod
    def validate_inputs(value, _):
        """Check the dataset or structures, the split, the rotations and the prediction before anything runs."""
        dataset = value.get('dataset')
        structures = value.get('structures') or {}
        if (dataset is None) == (not structures):
            return 'give either a `dataset` or `structures`, not both and not neither'
        split = value['split'].value if 'split' in value else 'test'
        if split not in SPLITS:
            return f'split must be one of {", ".join(SPLITS)}, got {split!r}'
        try:
            rotation_settings(value['rotations'].get_dict() if 'rotations' in value else None)
        except ValueError as exception:
            return str(exception)
        if 'model' not in value:
            return None
        inputs = {'models': {'model': value['model']}}
        if dataset is not None:
            inputs['dataset'] = dataset
            if split != 'all':
                inputs['split'] = orm.Str(split)
        else:
            inputs['structures'] = structures
        if 'parameters' in value.get('predict', {}):
            inputs['parameters'] = value['predict']['parameters']
        return validate_predict(inputs, None)

    @property
    def split(self) -> str | None:
        """Return the split evaluated (``None`` for the whole dataset or for structures)."""
        split = self.inputs.split.value
        return None if split == 'all' or 'dataset' not in self.inputs else split

    def predict(self):
        """Run ``mad.predict`` on the structures and their rotated copies."""
        from aiida_mad.learning.rotations import rotation_matrices

        inputs = AttributeDict(self.exposed_inputs(PredictCalculation, 'predict'))
        inputs.models = {'model': self.inputs.model}
        if 'dataset' in self.inputs:
            inputs.dataset = self.inputs.dataset
            if self.split is not None:
                inputs.split = orm.Str(self.split)
        else:
            inputs.structures = dict(self.inputs.structures)
        settings = rotation_settings(self.inputs.rotations.get_dict() if 'rotations' in self.inputs else None)
        self.ctx.grid = settings
        if settings['order']:
            uuids = _rotated_uuids(
                self.inputs.get('dataset'),
                self.split,
                dict(self.inputs.get('structures', {})),
                settings['max_per_subset'],
            )
            rotations = orm.ArrayData()
            rotations.set_array('matrices', rotation_matrices(settings['order'], settings['in_plane']))
            rotations.set_array('uuids', np.array(uuids, dtype='U36'))
            rotations.base.attributes.set('grid', {'kind': 'lebedev', **settings})
            inputs.rotations = rotations
        inputs.metadata = {**dict(inputs.get('metadata', {})), 'call_link_label': 'predict'}
        node = self.submit(PredictCalculation, **inputs)
        what = (
            f'dataset {self.inputs.dataset.name} ({self.split or "all"})' if 'dataset' in self.inputs else 'structures'
        )
        self.report(f'PredictCalculation<{node.pk}> on {what} with model {self.inputs.model.pk}')
        return ToContext(prediction=node)

    def tabulate(self):
        """Make the table from the predictions (a calcfunction: linked to the model and the dataset)."""
        node = self.ctx.prediction
        if not node.is_finished_ok:
            return self.exit_codes.ERROR_PREDICTION_FAILED.format(
                message=f'{node.process_label}<{node.pk}>: {node.exit_status} {node.exit_message}'
            )
        inputs = {'model': self.inputs.model, 'predictions': node.outputs.predictions, 'grid': orm.Dict(self.ctx.grid)}
        if 'rotations' in node.outputs:
            inputs['rotations'] = node.outputs.rotations
        if 'dataset' in self.inputs:
            inputs['dataset'] = self.inputs.dataset
            if self.split is not None:
                inputs['split'] = orm.Str(self.split)
        else:
            inputs['subsets'] = orm.Dict(
                {
                    node.uuid: node.base.extras.get('mad_subset', 'structures')
                    for node in self.inputs.structures.values()
                }
            )
        results = evaluation_table(**inputs, metadata={'call_link_label': 'table'})
        self.out('table', results['table'])
        self.out('per_frame', results['per_frame'])
        overall = results['table']['overall']
        self.report(
            f'{overall["n_frames"]} structures: energy MAE {overall["energy_mae"]} meV/atom, forces MAE '
            f'{overall["forces_mae"]} meV/Å, rotational std {overall["rotation_std"]} meV/atom'
        )
        return None


def evaluation_tables(*, dataset: DatasetData | None = None, model: ModelData | None = None) -> list[orm.Dict]:
    """Return the evaluation tables (``table`` outputs of ``mad.evaluation_table``), newest first.

    :param dataset: only the tables of this dataset.
    :param model: only the tables of this model.
    """
    filters = {}
    if dataset is not None:
        filters['attributes.dataset'] = dataset.uuid
    if model is not None:
        filters['attributes.model'] = model.uuid
    query = orm.QueryBuilder()
    query.append(orm.CalcFunctionNode, filters={'attributes.process_label': 'evaluation_table'}, tag='calc')
    query.append(orm.Dict, with_incoming='calc', edge_filters={'label': 'table'}, filters=filters, tag='table')
    query.order_by({'table': {'id': 'desc'}})
    return query.all(flat=True)
