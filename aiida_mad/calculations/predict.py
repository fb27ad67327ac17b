"""``PredictCalculation`` (``mad.predict``): one or N models on a set of structures, in batches, as a CalcJob.

The calculation runs the ``aiida-mad-predict`` console script (:mod:`aiida_mad.inference.script`, installed with
the package; it needs no AiiDA database) on the compute node, on CPU or GPU (``parameters.device``).

What it predicts on
    Either a ``mad.dataset`` (input ``dataset``, optionally one ``split``: its shards are copied as they are, no
    per-frame load) or any structures (namespace ``structures`` of ``StructureData``: a structure group, candidate
    structures), written to one extended-XYZ file with each structure's uuid.

Models
    Namespace ``models`` of ``mad.model`` nodes, in the order of their keys: exported metatrain models (``model.pt``,
    run through metatomic) and MACE models (run through MACE's own batched data loader), mixed as needed. The
    models of one calculation must share their energy reference (``total`` or ``baseline_subtracted``): the
    committee mean of energies on different references means nothing.

Outputs, keyed by structure uuid (array ``uuids``, in the order of the structures)
    ``predictions`` (``ArrayData``): ``uuids``, ``natoms``, ``offsets`` and, models first, ``energy`` and
    ``energy_per_atom`` ``(M, n)``, ``forces`` ``(M, n_atoms, 3)`` (the structures' atoms concatenated, structure
    ``i`` in rows ``offsets[i]:offsets[i + 1]``), ``stress`` ``(M, n, 3, 3)`` (NaN for a structure not periodic in
    all three directions); attribute ``models`` lists the model uuids in order. ``committee`` (``ArrayData``, for
    two models or more): ``uuids``, ``energy_per_atom_mean``, ``energy_per_atom_std``, ``forces_mean``,
    ``stress_mean`` (Voigt), ``force_std_max`` (max over atoms of the force deviation) and ``stress_std_max``, by
    :func:`aiida_mad.learning.committee.committee_statistics`. ``results`` (``Dict``): counts, model kinds, timings.
    :func:`predictions_by_uuid` reads them back as one dictionary per structure.

DOS models (metatrain's ``mtt::dos``: protocols ``pet-mad-dos``, ``tiny-dos``)
    ``predictions``: ``uuids``, ``natoms``, ``offsets``, ``dos`` ``(M, n, G)`` (states/eV per cell) and
    ``dos_energies`` ``(G,)`` (the grid, eV relative to the Fermi energy: :func:`aiida_mad.dos.energy_grid`);
    ``committee`` (two models or more): ``uuids``, ``offsets``, ``dos_energies``, ``dos_mean`` and ``dos_std``
    ``(n, G)``. All models of one calculation predict the same targets (energy or DOS).

Descriptors (``parameters.descriptors: true``; off by default, and then nothing is computed)
    ``predictions`` also holds ``descriptors`` ``(M, n, d)`` (float64): every model's descriptor vector of every
    structure, the mean over its atoms of the model's per-atom features (:mod:`aiida_mad.inference.models`: for a
    MACE model the invariant node features of its last interaction layer, for a metatomic model its ``features``
    output), computed in the batches of the energies; attribute ``descriptors`` records ``kind``
    (``mace_last_layer_invariants``, ``metatomic_features``, or ``mixed``), ``kinds`` (per model), ``dimension``
    and ``reduction``. A model that gives none is refused before submission (:func:`model_descriptors`), naming it
    and the reason.

Rotated copies (input ``rotations``, used by ``mad.evaluate`` for the rotational symmetry error)
    ``ArrayData`` with ``matrices`` ``(R, 3, 3)`` (proper rotations) and optionally ``uuids`` (the structures to
    rotate; all by default): the script also predicts every structure rotated by every matrix, in the same run
    (:func:`aiida_mad.learning.rotations.rotation_arrays`; the copies are never stored). Output ``rotations``
    (``ArrayData``): ``rotation_uuids``, ``rotation_matrices``, ``rotation_energy`` and ``rotation_energy_per_atom``
    ``(M, k, R)``, for DOS models ``rotation_dos_variance`` ``(M, k, G)``.

Before anything is stored or submitted (:func:`validate_inputs`): every model file is a model of a known kind (a
file of another kind is refused, by name), the models predict the same targets, the references agree, and no
structure has an element that a model was
not trained on (refused naming the structure, the element and the model).
"""

from __future__ import annotations

import json

from aiida import orm
from aiida.engine import CalcJob

from aiida_mad.calculations.training import calculation_info, checked_keys, set_option_defaults
from aiida_mad.data.dataset import DatasetData
from aiida_mad.data.model import ModelData

__all__ = (
    'CONFIG_FILE',
    'DEFAULT_PARAMETERS',
    'OUTPUT_FILE',
    'PredictCalculation',
    'model_descriptors',
    'model_elements',
    'model_targets',
    'models_order',
    'predictions_by_uuid',
)

CONFIG_FILE = 'predict.json'
OUTPUT_FILE = 'predictions.npz'
INFO_FILE = 'predict-info.json'
STRUCTURES_FILE = 'structures.xyz'
STDOUT_FILE = 'predict.out'
STDERR_FILE = 'predict.err'
#: Defaults of the ``parameters`` input.
DEFAULT_PARAMETERS = {'batch_size': 16, 'device': 'cpu', 'dtype': None, 'descriptors': False}
#: Per-model arrays of the ``predictions`` output (``descriptors`` only when asked for).
PREDICTION_ARRAYS = ('uuids', 'natoms', 'offsets', 'energy', 'energy_per_atom', 'forces', 'stress', 'descriptors')
#: Arrays of the ``committee`` output (with ``uuids`` and ``offsets``).
COMMITTEE_ARRAYS = (
    'energy_per_atom_mean',
    'energy_per_atom_std',
    'forces_mean',
    'stress_mean',
    'force_std_max',
    'stress_std_max',
)
#: Per-model arrays of the ``predictions`` output of DOS models (with ``uuids``, ``natoms`` and ``offsets``).
DOS_ARRAYS = ('dos', 'dos_energies')
#: Arrays of the ``committee`` output of DOS models (with ``uuids`` and ``offsets``).
COMMITTEE_DOS_ARRAYS = ('dos_mean', 'dos_std', 'dos_energies')


def get_parameters(parameters: dict | None) -> dict:
    """Return ``parameters`` merged over :data:`DEFAULT_PARAMETERS`, after checking keys and values.

    :raises ValueError: naming the unknown key or the bad value.
    """
    merged = checked_keys(parameters, DEFAULT_PARAMETERS, 'parameters')
    if not isinstance(merged['batch_size'], int) or merged['batch_size'] < 1:
        raise ValueError(f'parameters.batch_size must be a positive integer, got {merged["batch_size"]!r}')
    if not isinstance(merged['device'], str) or merged['device'].split(':')[0] not in ('cpu', 'cuda'):
        raise ValueError(f"parameters.device must be 'cpu' or 'cuda', got {merged['device']!r}")
    if merged['dtype'] not in (None, 'float32', 'float64'):
        raise ValueError(f"parameters.dtype must be null, 'float32' or 'float64', got {merged['dtype']!r}")
    if not isinstance(merged['descriptors'], bool):
        raise ValueError(f'parameters.descriptors must be true or false, got {merged["descriptors"]!r}')
    return merged


def model_elements(model: ModelData) -> list[str]:
    """Return the elements ``model`` was trained on: attribute ``elements``, else read from the model file.

    :raises ValueError: naming the node if its file is not a model of a known kind.
    """
    elements = model.base.attributes.get('elements', None)
    if elements:
        return list(elements)
    from aiida_mad.inference.models import ModelFileError
    from aiida_mad.inference.models import model_elements as file_elements

    with model.as_path() as path:
        try:
            return file_elements(path)
        except ModelFileError as exception:
            raise ValueError(f'model {model.pk} ({model.filename}): {exception}') from None


def model_targets(model: ModelData) -> tuple[str, ...]:
    """Return what ``model`` predicts, ``('energy',)`` or ``('dos',)``: from attribute ``targets``, else its file.

    :raises ValueError: naming the node if its file is not a model of a known kind.
    """
    from aiida_mad.inference.models import DOS_OUTPUT, TARGETS

    if model.base.attributes.get('architecture', None) == 'mace':
        return ('energy',)
    targets = model.base.attributes.get('targets', None)
    if targets:
        return tuple(target for target, key in zip(TARGETS, ('energy', DOS_OUTPUT), strict=True) if key in targets)
    from aiida_mad.inference.models import ModelFileError, load_model

    with model.as_path() as path:
        try:
            return load_model(path).targets
        except ModelFileError as exception:
            raise ValueError(f'model {model.pk} ({model.filename}): {exception}') from None


def model_descriptors(model: ModelData, *, key: str | None = None) -> str:
    """Return the kind of per-structure descriptors ``model`` gives, read from its file.

    :param key: the model's key in the ``models`` namespace, for the message.
    :raises ValueError: naming the node (and ``key``) if its file gives none, with the reason, or is not a model.
    """
    from aiida_mad.inference.models import ModelFileError, load_model

    name = f'model `{key}` (pk {model.pk}, {model.filename})' if key else f'model {model.pk} ({model.filename})'
    with model.as_path() as path:
        try:
            loaded = load_model(path)
        except ModelFileError as exception:
            raise ValueError(f'{name}: {exception}') from None
    if loaded.descriptor_kind is None:
        raise ValueError(f'{name} cannot give descriptors: {loaded.descriptors_problem}')
    return loaded.descriptor_kind


def _model_kind(model: ModelData) -> str:
    return 'mace' if model.base.attributes.get('architecture', None) == 'mace' else 'metatomic'


def _ordered_models(models) -> list[tuple[str, ModelData]]:
    return sorted(models.items())


def _dataset_elements(dataset: DatasetData, split: str | None) -> dict[str, set[str]]:
    """Return ``{source uuid: elements}`` of the dataset's frames (of ``split`` only when given)."""
    from ase.data import chemical_symbols

    index = dataset.index()
    offsets = index['offsets']
    result = {}
    for position, uuid in enumerate(index['source_uuid']):
        if split is not None and index['split'][position] != split:
            continue
        numbers = index['numbers'][offsets[position] : offsets[position + 1]]
        result[str(uuid)] = {chemical_symbols[int(number)] for number in set(numbers.tolist())}
    return result


def rotations_config(rotations: orm.ArrayData) -> dict:
    """Return the ``rotations`` entry of ``predict.json``: ``matrices`` (R, 3, 3) and ``uuids`` (``None``: all).

    The script predicts the rotated copies in the same run (:func:`aiida_mad.learning.rotations.rotation_arrays`);
    the work chain ``mad.evaluate`` uses them for the rotational symmetry error.

    :raises ValueError: unless ``matrices`` holds at least two rotation matrices.
    """
    import numpy as np

    names = rotations.get_arraynames()
    if 'matrices' not in names:
        raise ValueError('rotations: array `matrices` (R, 3, 3) is missing')
    matrices = rotations.get_array('matrices')
    if matrices.ndim != 3 or matrices.shape[1:] != (3, 3) or len(matrices) < 2:
        raise ValueError(f'rotations: `matrices` must be at least two 3x3 matrices, got shape {matrices.shape}')
    identity = np.einsum('rij,rkj->rik', matrices, matrices)
    if not np.allclose(identity, np.eye(3), atol=1e-8) or not np.allclose(np.linalg.det(matrices), 1, atol=1e-8):
        raise ValueError('rotations: every matrix of `matrices` must be a proper rotation')
    uuids = [str(uuid) for uuid in rotations.get_array('uuids')] if 'uuids' in names else None
    return {'matrices': matrices.tolist(), 'uuids': uuids}


def validate_inputs(value, _):
    """Check the models and the structures before anything is stored or submitted."""
    models = value.get('models') or {}
    dataset = value.get('dataset')
    structures = value.get('structures') or {}
    if not models:
        return 'give at least one model in the `models` namespace'
    if (dataset is None) == (not structures):
        return 'give either a `dataset` or `structures`, not both and not neither'
    if 'rotations' in value:
        try:
            rotations_config(value['rotations'])
        except ValueError as exception:
            return str(exception)
    split = value['split'].value if 'split' in value else None
    if split is not None and dataset is None:
        return '`split` selects frames of a `dataset`; none was given'
    if split is not None and split not in ('train', 'val', 'test'):
        return f"split must be 'train', 'val' or 'test', got {split!r}"
    try:
        parameters = get_parameters(value['parameters'].get_dict() if 'parameters' in value else None)
        if parameters['descriptors']:
            for key, model in _ordered_models(models):
                model_descriptors(model, key=key)
        targets = {key: model_targets(model) for key, model in _ordered_models(models)}
        if len(set(targets.values())) > 1:
            described = ', '.join(f'`{key}`: {"+".join(value) or "nothing"}' for key, value in targets.items())
            return f'the models do not all predict the same targets ({described})'
        references = {key: model.base.attributes.get('energy_reference', None) for key, model in models.items()}
        if len({reference for reference in references.values() if reference is not None}) > 1:
            return f'the models predict energies on different references: {references}'
        known = {key: set(model_elements(model)) for key, model in _ordered_models(models)}
    except ValueError as exception:
        return str(exception)
    if dataset is not None:
        targets = _dataset_elements(dataset, split)
        if not targets:
            return f'dataset {dataset.name} (pk {dataset.pk}) has no frames in split {split}'
        label = 'frame of structure {uuid} in dataset ' + f'{dataset.name}'
    else:
        targets = {node.uuid: set(node.get_symbols_set()) for node in structures.values()}
        label = 'structure {uuid}'
    for key, elements in known.items():
        for uuid, present in targets.items():
            unknown = sorted(present - elements)
            if unknown:
                return (
                    f'{label.format(uuid=uuid)} has {", ".join(unknown)}, which model `{key}` (pk {models[key].pk}) '
                    f'was not trained on (it knows {", ".join(sorted(elements))})'
                )
    return None


def predictions_by_uuid(predictions: orm.ArrayData, committee: orm.ArrayData | None = None) -> dict[str, dict]:
    """Return ``{structure uuid: {energy_per_atom, forces, stress, ...}}`` from the outputs of ``mad.predict``.

    Per-model values keep the model axis first: ``energy_per_atom`` ``(M,)``, ``forces`` ``(M, natoms, 3)``,
    ``stress`` ``(M, 3, 3)``, for DOS models ``dos`` ``(M, G)`` (on the grid of array ``dos_energies``), with
    descriptors ``descriptors`` ``(M, d)``; with the
    ``committee`` output, its values for the structure are added (``dos_mean`` and ``dos_std`` ``(G,)``).
    """
    names = set(predictions.get_arraynames())
    arrays = {name: predictions.get_array(name) for name in (*PREDICTION_ARRAYS, 'dos') if name in names}
    offsets = arrays['offsets']
    statistics = {}
    if committee is not None:
        present = set(committee.get_arraynames())
        wanted = (*COMMITTEE_ARRAYS, 'dos_mean', 'dos_std')
        statistics = {name: committee.get_array(name) for name in wanted if name in present}
    result = {}
    for index, uuid in enumerate(arrays['uuids']):
        atoms = slice(int(offsets[index]), int(offsets[index + 1]))
        entry = {'natoms': int(arrays['natoms'][index])}
        for name in ('energy', 'energy_per_atom', 'stress', 'dos', 'descriptors'):
            if name in arrays:
                entry[name] = arrays[name][:, index]
        if 'forces' in arrays:
            entry['forces'] = arrays['forces'][:, atoms]
        for name, values in statistics.items():
            entry[name] = values[atoms] if name == 'forces_mean' else values[index]
        result[str(uuid)] = entry
    return result


class PredictCalculation(CalcJob):
    """Predict energies, forces and stresses of structures with one model or a committee, in batches."""

    _DEFAULT_PARSER = 'mad.predict'

    @classmethod
    def define(cls, spec):
        """Define the process specification."""
        super().define(spec)
        spec.input_namespace('models', valid_type=ModelData, dynamic=True, help='The models (`mad.model`), by key.')
        spec.input('dataset', valid_type=DatasetData, required=False, help='Predict the frames of this dataset.')
        spec.input('split', valid_type=orm.Str, required=False, help='Only the frames of this split of `dataset`.')
        spec.input_namespace(
            'structures', valid_type=orm.StructureData, dynamic=True, required=False, help='Predict these structures.'
        )
        spec.input(
            'parameters',
            valid_type=orm.Dict,
            required=False,
            help=(
                "`batch_size` (16), `device` (cpu or cuda), `dtype` (null: the model's own; float32, float64), "
                '`descriptors` (false; true: also the per-structure descriptors of every model).'
            ),
        )
        spec.input(
            'rotations',
            valid_type=orm.ArrayData,
            required=False,
            help='Also predict rotated copies: `matrices` (R, 3, 3), optional `uuids` (the structures to rotate).',
        )
        spec.inputs.validator = validate_inputs
        set_option_defaults(spec, cls._DEFAULT_PARSER, STDOUT_FILE)

        spec.output('predictions', valid_type=orm.ArrayData, help='Per-model predictions, keyed by `uuids`.')
        spec.output('committee', valid_type=orm.ArrayData, required=False, help='Committee means and sigmas.')
        spec.output('results', valid_type=orm.Dict, required=False, help='Counts, model kinds and timings.')
        spec.output('rotations', valid_type=orm.ArrayData, required=False, help='Predictions of rotated copies.')
        spec.default_output_node = 'results'

        spec.exit_code(301, 'ERROR_MISSING_OUTPUT_FILES', message='aiida-mad-predict wrote no {files}.')
        spec.exit_code(302, 'ERROR_INVALID_INPUT', message='aiida-mad-predict refused the input: {message}')
        spec.exit_code(350, 'ERROR_PREDICTION_FAILED', message='aiida-mad-predict failed: {message}')

    def prepare_for_submission(self, folder):
        """Write ``predict.json`` (and the structures), copy the models and shards, and return the calculation info."""
        import ase.io

        parameters = get_parameters(self.inputs.parameters.get_dict() if 'parameters' in self.inputs else None)
        local_copy_list = []
        model_files = []
        for index, (_, model) in enumerate(_ordered_models(self.inputs.models)):
            suffix = 'model' if _model_kind(model) == 'mace' else 'pt'
            name = f'model-{index}.{suffix}'
            local_copy_list.append((model.uuid, model.filename, name))
            model_files.append(name)
        config = {
            'models': model_files,
            'shards': [],
            'structures': [],
            'split': None,
            'batch_size': parameters['batch_size'],
            'device': parameters['device'],
            'dtype': parameters['dtype'],
            'descriptors': parameters['descriptors'],
            'output': OUTPUT_FILE,
        }
        if 'dataset' in self.inputs:
            dataset = self.inputs.dataset
            for name in dataset.shard_names():
                local_copy_list.append((dataset.uuid, name, name))
                config['shards'].append(name)
            config['split'] = self.inputs.split.value if 'split' in self.inputs else None
        else:
            frames = []
            for _, node in sorted((self.inputs.get('structures') or {}).items()):
                atoms = node.get_ase()
                atoms.info = {'source_uuid': node.uuid}
                frames.append(atoms)
            with folder.open(STRUCTURES_FILE, 'w') as handle:
                ase.io.write(handle, frames, format='extxyz')
            config['structures'] = [STRUCTURES_FILE]
        if 'rotations' in self.inputs:
            config['rotations'] = rotations_config(self.inputs.rotations)
        with folder.open(CONFIG_FILE, 'w') as handle:
            json.dump(config, handle, indent=2)

        return calculation_info(
            self,
            [CONFIG_FILE],
            stderr=STDERR_FILE,
            local_copy_list=local_copy_list,
            retrieve_list=[STDOUT_FILE, STDERR_FILE, INFO_FILE],
            retrieve_temporary_list=[OUTPUT_FILE],
        )


def models_order(node) -> list[str]:
    """Return the uuids of the models of a ``mad.predict`` calculation node, in the order of the arrays."""
    return [model.uuid for _, model in _ordered_models(node.inputs.models)]
