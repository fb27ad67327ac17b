"""The evaluation table of a model as a calcfunction: predictions of ``mad.predict`` against the reference frames.

:func:`evaluation_table` (``mad.evaluation_table``) takes the model, the outputs of one ``mad.predict`` run
(``predictions``, and ``rotations`` when the run predicted rotated copies) and the dataset with its split (or, for
structures without reference values, their subset labels ``subsets``), with the rotation ``grid`` (order, in-plane
rotations, structures per subset), and returns:

``table`` (``Dict``)
    ``subsets`` and ``overall`` rows of :func:`aiida_mad.learning.evaluation.error_table` (MAE and RMSE of energy
    per atom, forces, stress; rotational symmetry error; DOS RMSE and band-gap error for DOS models), ``units``, and
    the record: model and dataset uuids and names, split, energy reference, the rotations used, both level-of-theory
    fingerprints and whether they agree.
``per_frame`` (``ArrayData``)
    per structure: ``uuids``, ``subsets``, ``natoms``, ``energy_error`` (eV/atom), ``forces_mae`` (eV/Å),
    ``rotation_std`` (eV/atom), ``dos_rmse``, ``gap_error`` (eV); NaN where a structure has no value.

The model and the dataset are inputs of the calcfunction, so the table is linked to both in the provenance graph.
"""

from __future__ import annotations

import numpy as np
from aiida import orm
from aiida.engine import calcfunction

from aiida_mad.data.dataset import DatasetData
from aiida_mad.data.model import ModelData

__all__ = ('evaluation_table', 'frame_set')


def _reference_energy(frame, reference: str | None) -> float:
    if reference == 'baseline_subtracted':
        return float(frame.info.get('energy_baseline_subtracted', np.nan))
    return float(frame.info['energy'])


def frame_set(
    predictions: dict[str, np.ndarray],
    *,
    frames: list | None = None,
    subsets: dict[str, str] | None = None,
    energy_reference: str | None = None,
    rotations: dict[str, np.ndarray] | None = None,
):
    """Return the :class:`~aiida_mad.learning.evaluation.FrameSet` and per-structure arrays of one model's predictions.

    :param predictions: the arrays of ``mad.predict``'s ``predictions`` (one model: model axis of length 1).
    :param frames: the reference frames (by ``info['source_uuid']``), or ``None`` for structures without references.
    :param subsets: ``{uuid: subset}`` for structures without reference frames.
    :param energy_reference: the model's energy reference (``total`` or ``baseline_subtracted``).
    :param rotations: the arrays of ``mad.predict``'s ``rotations`` output.
    :raises ValueError: naming a predicted structure that has no reference frame.
    """
    from aiida_mad.learning import evaluation

    uuids = [str(uuid) for uuid in predictions['uuids']]
    natoms = np.asarray(predictions['natoms'], dtype=np.int64)
    n, n_atoms = len(uuids), int(natoms.sum())
    by_uuid = {str(frame.info['source_uuid']): frame for frame in frames or []}
    if frames is not None:
        missing = [uuid for uuid in uuids if uuid not in by_uuid]
        if missing:
            raise ValueError(f'structure {missing[0]} was predicted but is not a frame of the dataset')
        ordered = [by_uuid[uuid] for uuid in uuids]
        names = [frame.info['subset'] for frame in ordered]
    else:
        ordered = None
        names = [(subsets or {}).get(uuid, 'structures') for uuid in uuids]

    energy_predicted = np.full(n, np.nan)
    forces_predicted = np.full((n_atoms, 3), np.nan)
    stress_predicted = np.full((n, 3, 3), np.nan)
    if 'energy_per_atom' in predictions:
        energy_predicted = np.asarray(predictions['energy_per_atom'])[0]
        forces_predicted = np.asarray(predictions['forces'])[0]
        stress_predicted = np.asarray(predictions['stress'])[0]
    energy_reference_values = np.full(n, np.nan)
    forces_reference = np.full((n_atoms, 3), np.nan)
    stress_reference = np.full((n, 3, 3), np.nan)
    dos_rmse = np.full(n, np.nan)
    gap_error = np.full(n, np.nan)
    electrons = np.full(n, np.nan)
    offsets = np.concatenate([[0], np.cumsum(natoms)])
    if ordered is not None:
        for index, frame in enumerate(ordered):
            energy_reference_values[index] = _reference_energy(frame, energy_reference) / len(frame)
            forces_reference[offsets[index] : offsets[index + 1]] = frame.arrays['forces']
            if 'stress' in frame.info and bool(np.all(frame.pbc)):
                stress_reference[index] = np.asarray(frame.info['stress'], dtype=float).reshape(3, 3)
            if 'dos' in predictions and frame.info.get('dos') is not None:
                target = np.asarray(frame.info['dos'], dtype=float)
                predicted = np.asarray(predictions['dos'])[0, index]
                electrons[index] = evaluation.dos_electrons(target)
                if electrons[index] > 0:
                    dos_rmse[index] = evaluation.dos_rmse(predicted, target, electrons[index])
                    gap_predicted = evaluation.dos_bandgap(predicted, electrons[index], len(frame))
                    gap_reference = evaluation.dos_bandgap(target, electrons[index], len(frame), fermi=0.0)
                    gap_error[index] = gap_predicted - gap_reference

    rotation_std = np.full(n, np.nan)
    rotation_dos = np.full(n, np.nan)
    if rotations:
        position = {uuid: index for index, uuid in enumerate(uuids)}
        rotated = [position[str(uuid)] for uuid in rotations['rotation_uuids']]
        if 'rotation_energy_per_atom' in rotations:
            rotation_std[rotated] = evaluation.rotation_std(np.asarray(rotations['rotation_energy_per_atom'])[0])
        if 'rotation_dos_variance' in rotations and ordered is not None:
            for row, index in enumerate(rotated):
                target = ordered[index].info.get('dos')
                if target is not None and electrons[index] > 0:
                    variance = np.asarray(rotations['rotation_dos_variance'])[0, row]
                    rotation_dos[index] = evaluation.rotation_dos_error(variance, target, electrons[index])

    frame_errors = evaluation.FrameSet(
        subsets=names,
        natoms=natoms,
        energy_reference=energy_reference_values,
        energy_predicted=energy_predicted,
        forces_reference=forces_reference,
        forces_predicted=forces_predicted,
        stress_reference=stress_reference,
        stress_predicted=stress_predicted,
        rotation_std=rotation_std,
        rotation_dos=rotation_dos,
        dos_rmse=dos_rmse,
        gap_error=gap_error,
    )
    force_errors = np.abs(forces_predicted - forces_reference).reshape(-1)
    per_atom = np.repeat(np.arange(n), natoms * 3)
    with np.errstate(invalid='ignore'):
        forces_mae = np.bincount(per_atom, weights=force_errors, minlength=n) / np.maximum(natoms * 3, 1)
    per_frame = {
        'uuids': np.array(uuids, dtype='U36'),
        'subsets': np.array(names, dtype=str),
        'natoms': natoms,
        'energy_error': energy_predicted - energy_reference_values,
        'forces_mae': forces_mae,
        'rotation_std': rotation_std,
        'rotation_dos': rotation_dos,
        'dos_rmse': dos_rmse,
        'gap_error': gap_error,
    }
    return frame_errors, per_frame


def _arrays(node: orm.ArrayData | None) -> dict[str, np.ndarray]:
    return {name: node.get_array(name) for name in node.get_arraynames()} if node is not None else {}


@calcfunction
def evaluation_table(
    model: ModelData,
    predictions: orm.ArrayData,
    dataset: DatasetData | None = None,
    split: orm.Str | None = None,
    rotations: orm.ArrayData | None = None,
    subsets: orm.Dict | None = None,
    grid: orm.Dict | None = None,
):
    """Return the evaluation ``table`` (``Dict``) and the ``per_frame`` errors (``ArrayData``) of one model."""
    from aiida_mad.learning.evaluation import error_table

    attributes = model.base.attributes.all
    frames = None
    if dataset is not None:
        wanted = split.value if split is not None else None
        frames = [frame for frame in dataset.frames() if wanted in (None, frame.info['split'])]
    arrays = _arrays(predictions)
    rotation_arrays = _arrays(rotations)
    frame_errors, per_frame = frame_set(
        arrays,
        frames=frames,
        subsets=subsets.get_dict() if subsets is not None else None,
        energy_reference=attributes.get('energy_reference'),
        rotations=rotation_arrays,
    )
    table = error_table(frame_errors)
    matrices = rotation_arrays.get('rotation_matrices')
    table.update(
        {
            'model': model.uuid,
            'model_architecture': attributes.get('architecture'),
            'model_fingerprint': attributes.get('fingerprint'),
            'energy_reference': attributes.get('energy_reference'),
            'targets': list(predictions.base.attributes.get('targets', ['energy'])),
            'dataset': dataset.uuid if dataset is not None else None,
            'dataset_name': dataset.name if dataset is not None else None,
            'dataset_fingerprint': dataset.fingerprint if dataset is not None else None,
            'same_level_of_theory': dataset is not None and dataset.fingerprint == attributes.get('fingerprint'),
            'split': split.value if split is not None else ('all' if dataset is not None else None),
            'rotations': {
                'n_rotations': len(matrices) if matrices is not None else 0,
                **(grid.get_dict() if grid is not None else {}),
            },
        }
    )
    per_frame_node = orm.ArrayData()
    for name, values in per_frame.items():
        per_frame_node.set_array(name, values)
    per_frame_node.base.attributes.set('units', {'energy_error': 'eV/atom', 'forces_mae': 'eV/Å', 'gap_error': 'eV'})
    return {'table': orm.Dict(table), 'per_frame': per_frame_node}
