"""``DosCnnCalculation`` (``mad.dos_cnn``): bandgap and Fermi-level CNNs on a DOS model's predictions, as a CalcJob.

The calculation runs the ``aiida-mad-dos-cnn`` console script (:mod:`aiida_mad.learning.dos_cnn_script`, installed
with the package; it needs no AiiDA database) on the compute node, on CPU or GPU (``parameters.device``).

Inputs
    ``dos`` (``ArrayData``): the DOS a DOS model predicted for frames of ``dataset``: array ``uuids`` (the frames'
    source uuids) and the DOS per cell (array ``parameters.dos_array``, default ``dos``), ``(n, points)`` or
    ``(models, n, points)`` (averaged over the models); its energies are array ``dos_energies`` or ``energies`` if
    it has one, else the project's grid (``aiida_mad.dos``). The ``predictions`` output of ``mad.predict`` for a
    DOS model (``dos`` and ``dos_energies``) is such a node, and so is its ``committee`` output with
    ``parameters.dos_array = 'dos_mean'``; any ``ArrayData`` of that layout works as well. ``dos_model``
    (``mad.model``, optional): the DOS model that predicted it (if ``dos`` comes from ``mad.predict``, it must be
    one of that calculation's models).
    ``dataset`` (``mad.dataset``): the frames' split, atom count and DFT results: the gap and the valence electron
    count of each frame come from the ``properties`` output of its DFT work chain (the dataset's index names it),
    the Fermi-level target from the frame's DFT DOS (the dataset must hold the DOS for that target).
    ``parameters`` (``Dict``, optional): see :data:`DEFAULT_PARAMETERS`.

Outputs
    ``models`` namespace: one ``mad.dos_cnn_model`` per target (``gap``, ``fermi_level``) with its record.
    ``predictions`` (``ArrayData``): ``uuids``, ``split``, ``<target>_dft`` and ``<target>_cnn`` (eV; NaN where
    the DFT value is unknown). ``denoised`` (``ArrayData``, with a Fermi-level CNN and ``denoise``): ``uuids``,
    ``energies``, ``denoised`` (the denoised DOS per cell, integrating to ``n_electrons`` at the CNN's Fermi level;
    NaN rows where denoising failed) and ``n_electrons``. ``results`` (``Dict``): per target epochs, best epoch and
    errors per split.
"""

from __future__ import annotations

import json

from aiida import orm
from aiida.engine import CalcJob

from aiida_mad.calculations.training import calculation_info, checked_keys, set_option_defaults
from aiida_mad.data.dataset import DatasetData
from aiida_mad.data.dos_cnn import DosCnnModelData
from aiida_mad.data.model import ModelData

__all__ = ('CONFIG_FILE', 'DEFAULT_PARAMETERS', 'DosCnnCalculation', 'frame_targets')

CONFIG_FILE = 'dos-cnn.json'
FRAMES_FILE = 'frames.json'
OUTPUT_FILE = 'dos-cnn.npz'
INFO_FILE = 'dos-cnn-info.json'
STDOUT_FILE = 'dos-cnn.out'
STDERR_FILE = 'dos-cnn.err'
TARGETS = ('gap', 'fermi_level')
#: Names of the energy grid array of the ``dos`` input, in the order they are looked for.
ENERGY_ARRAYS = ('dos_energies', 'energies')
#: Defaults of the ``parameters`` input: the paper's training settings, both targets, denoising on.
DEFAULT_PARAMETERS = {
    'targets': list(TARGETS),
    'learning_rate': 1e-4,
    'warmup_epochs': 100,
    'patience': 50,
    'max_epochs': 1000,
    'batch_size': 16,
    'seed': 0,
    'device': 'cpu',
    'max_shift': 10.0,
    'denoise': True,
    'dos_array': 'dos',
}
#: The keys of :data:`DEFAULT_PARAMETERS` that are training settings of the CNN.
SETTINGS = ('learning_rate', 'warmup_epochs', 'patience', 'max_epochs', 'batch_size', 'seed', 'device')


def get_parameters(parameters: dict | None) -> dict:
    """Return ``parameters`` merged over :data:`DEFAULT_PARAMETERS`, after checking keys and values.

    :raises ValueError: naming the unknown key or the bad value.
    """
    merged = checked_keys(parameters, DEFAULT_PARAMETERS, 'parameters')
    targets = merged['targets']
    if not isinstance(targets, list) or not targets or not set(targets) <= set(TARGETS):
        raise ValueError(f'parameters.targets must be a non-empty list of {list(TARGETS)}, got {targets!r}')
    for name in ('warmup_epochs', 'patience', 'max_epochs', 'batch_size', 'seed'):
        value = merged[name]
        minimum = 0 if name in ('warmup_epochs', 'seed') else 1
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ValueError(f'parameters.{name} must be an integer >= {minimum}, got {value!r}')
    for name in ('learning_rate', 'max_shift'):
        if not isinstance(merged[name], int | float) or not merged[name] > 0:
            raise ValueError(f'parameters.{name} must be a positive number, got {merged[name]!r}')
    if not isinstance(merged['device'], str) or merged['device'].split(':')[0] not in ('cpu', 'cuda'):
        raise ValueError(f"parameters.device must be 'cpu' or 'cuda', got {merged['device']!r}")
    if not isinstance(merged['denoise'], bool):
        raise ValueError(f'parameters.denoise must be true or false, got {merged["denoise"]!r}')
    return merged


def energies_array(dos: orm.ArrayData) -> str | None:
    """Return the name of the energy grid array of ``dos`` (``dos_energies`` of ``mad.predict``, or ``energies``)."""
    names = dos.get_arraynames()
    return next((name for name in ENERGY_ARRAYS if name in names), None)


def predicted_models(dos: orm.ArrayData) -> list[str]:
    """Return the uuids of the models that predicted ``dos`` (the ``mad.predict`` calculation's), else ``[]``."""
    creator = dos.creator
    if creator is None or creator.process_type != 'aiida.calculations:mad.predict':
        return []
    return [node.uuid for node in creator.inputs.models.values()] if 'models' in creator.inputs else []


def frame_targets(dataset: DatasetData) -> dict[str, dict]:
    """Return ``{source uuid: {split, natoms, gap, n_electrons}}`` of the frames of ``dataset``.

    The gap and electron count come from the ``properties`` output of each frame's DFT work chain.

    :raises ValueError: naming the dataset if a frame has no DFT work chain in the index, or it has no properties.
    """
    index = dataset.index()
    dft_uuids = [str(uuid) for uuid in index['dft_uuid']]
    if not all(dft_uuids):
        raise ValueError(
            f'dataset {dataset.name} (pk {dataset.pk}) does not name the DFT work chain of every frame: the gap and '
            'electron counts cannot be found'
        )
    query = orm.QueryBuilder()
    query.append(orm.WorkflowNode, filters={'uuid': {'in': sorted(set(dft_uuids))}}, project='uuid', tag='dft')
    query.append(
        orm.Dict,
        with_incoming='dft',
        edge_filters={'label': 'properties'},
        project=['attributes.gap', 'attributes.n_electrons'],
    )
    properties = {uuid: (gap, n_electrons) for uuid, gap, n_electrons in query.iterall()}
    result = {}
    for position, uuid in enumerate(index['source_uuid']):
        dft = dft_uuids[position]
        if dft not in properties:
            raise ValueError(f'dataset {dataset.name}: the DFT work chain {dft} of frame {uuid} has no properties')
        gap, n_electrons = properties[dft]
        result[str(uuid)] = {
            'split': str(index['split'][position]),
            'natoms': int(index['natoms'][position]),
            'gap': None if gap is None else float(gap),
            'n_electrons': None if n_electrons is None else float(n_electrons),
        }
    return result


def validate_inputs(value, _):
    """Check the parameters, the DOS arrays, the DOS model and the dataset before anything is stored."""
    try:
        parameters = get_parameters(value['parameters'].get_dict() if 'parameters' in value else None)
    except ValueError as exception:
        return str(exception)
    dos, dataset = value.get('dos'), value.get('dataset')
    if dos is None or dataset is None:
        return None
    names = set(dos.get_arraynames())
    for name in ('uuids', parameters['dos_array']):
        if name not in names:
            return f'the `dos` input (pk {dos.pk}) has no array `{name}`: it has {sorted(names)}'
    shape = dos.get_shape(parameters['dos_array'])
    if len(shape) not in (2, 3) or shape[-2] != dos.get_shape('uuids')[0]:
        return f'array `{parameters["dos_array"]}` of `dos` must be (n, points) or (models, n, points) for n uuids'
    energies = energies_array(dos)
    if energies is not None and tuple(dos.get_shape(energies)) != (shape[-1],):
        return f'array `{energies}` of `dos` must have {shape[-1]} points like the DOS'
    if energies is None:
        from aiida_mad.dos import GRID_POINTS

        if shape[-1] != GRID_POINTS:
            return f'the `dos` input has no `energies` and {shape[-1]} points, not the {GRID_POINTS} of the grid'
    model = value.get('dos_model')
    models = predicted_models(dos)
    if model is not None and models and model.uuid not in models:
        return f'dos_model {model.pk} did not predict the `dos` input (pk {dos.pk}): its models are {models}'
    counts = dataset.base.attributes.get('split_counts') or {}
    if not counts.get('train'):
        return f'dataset {dataset.name} (pk {dataset.pk}) has no training frames'
    try:
        frame_targets(dataset)
    except ValueError as exception:
        return str(exception)
    if 'fermi_level' in parameters['targets'] and not dataset.base.attributes.get('n_with_dos'):
        return (
            f'dataset {dataset.name} (pk {dataset.pk}) holds no DOS: the Fermi-level target needs the DFT DOS '
            '(build it with the DOS included, or train only the gap: parameters.targets = ["gap"])'
        )
    return None


class DosCnnCalculation(CalcJob):
    """Train bandgap and Fermi-level CNNs on a DOS model's predicted DOS against the DFT values, and denoise."""

    _DEFAULT_PARSER = 'mad.dos_cnn'

    @classmethod
    def define(cls, spec):
        """Define the process specification."""
        super().define(spec)
        spec.input('dos', valid_type=orm.ArrayData, help='The predicted DOS: arrays `uuids`, `dos` (, `energies`).')
        spec.input('dos_model', valid_type=ModelData, required=False, help='The DOS model that predicted `dos`.')
        spec.input('dataset', valid_type=DatasetData, help='The frames, their splits and DFT results.')
        spec.input('parameters', valid_type=orm.Dict, required=False, help='Targets and training settings.')
        spec.inputs.validator = validate_inputs
        set_option_defaults(spec, cls._DEFAULT_PARSER, STDOUT_FILE)

        spec.output_namespace(
            'models', valid_type=DosCnnModelData, dynamic=True, help='One `mad.dos_cnn_model` per target.'
        )
        spec.output('predictions', valid_type=orm.ArrayData, help='DFT and CNN values per structure (eV).')
        spec.output('denoised', valid_type=orm.ArrayData, required=False, help='The denoised DOS per structure.')
        spec.output('results', valid_type=orm.Dict, help='Epochs and errors per target and split.')
        spec.default_output_node = 'results'

        spec.exit_code(301, 'ERROR_MISSING_OUTPUT_FILES', message='aiida-mad-dos-cnn wrote no {files}.')
        spec.exit_code(302, 'ERROR_INVALID_INPUT', message='aiida-mad-dos-cnn refused the input: {message}')
        spec.exit_code(350, 'ERROR_TRAINING_FAILED', message='aiida-mad-dos-cnn failed: {message}')

    def prepare_for_submission(self, folder):
        """Write ``dos-cnn.json`` and ``frames.json``, copy the DOS arrays (and shards), return the calculation info."""
        from aiida_mad.dos import GRID_SPACING, GRID_START

        parameters = get_parameters(self.inputs.parameters.get_dict() if 'parameters' in self.inputs else None)
        dos, dataset = self.inputs.dos, self.inputs.dataset
        local_copy_list = [
            (dos.uuid, f'{parameters["dos_array"]}.npy', 'predicted-dos.npy'),
            (dos.uuid, 'uuids.npy', 'predicted-uuids.npy'),
        ]
        energies = energies_array(dos)
        if energies is not None:
            local_copy_list.append((dos.uuid, f'{energies}.npy', 'predicted-energies.npy'))
        shards = []
        if 'fermi_level' in parameters['targets']:
            for name in dataset.shard_names():
                local_copy_list.append((dataset.uuid, name, name))
                shards.append(name)
        config = {
            'dos': 'predicted-dos.npy',
            'uuids': 'predicted-uuids.npy',
            'energies': 'predicted-energies.npy' if energies is not None else None,
            'grid': [GRID_START, GRID_SPACING],
            'frames': FRAMES_FILE,
            'shards': shards,
            'targets': parameters['targets'],
            'settings': {name: parameters[name] for name in SETTINGS},
            'max_shift': parameters['max_shift'],
            'denoise': parameters['denoise'],
        }
        with folder.open(FRAMES_FILE, 'w') as handle:
            json.dump(frame_targets(dataset), handle)
        with folder.open(CONFIG_FILE, 'w') as handle:
            json.dump(config, handle, indent=2)
        return calculation_info(
            self,
            [CONFIG_FILE],
            stderr=STDERR_FILE,
            local_copy_list=local_copy_list,
            retrieve_list=[STDOUT_FILE, STDERR_FILE, INFO_FILE],
            retrieve_temporary_list=[OUTPUT_FILE, *(f'{target}.pt' for target in parameters['targets'])],
        )
