"""Model evaluation the way the seed papers report it: per-subset error tables (pure numpy, no AiiDA).

Energies, forces and stresses (PET-MAD Table I and Fig. 2)
    Mean absolute error (MAE) and root mean square error (RMSE) of the energy per atom (meV/atom), of every force
    component (meV/Å) and of every stress component (meV/Å³, the nine components of the 3x3 tensor of each structure
    periodic in all three directions that has a reference stress). "Overall" pools every frame (PET-MAD's "MAD"
    row), it is not the mean of the subsets.

Rotational symmetry error (PET-MAD Fig. 2, right panel; PET-MAD-DOS eq. 10)
    Per structure, the standard deviation (population, ``ddof=0``) of the predicted energy per atom over its rotated
    copies (a Lebedev-Laikov grid of order 9, :mod:`aiida_mad.learning.rotations`), in meV/atom; per subset, the mean
    over its structures (and the largest). For the DOS, ``sqrt(∫ var_R DOS(E) dE) / n_A`` over the energies where
    the target is defined, in the units of the DOS error.

Density of states (PET-MAD-DOS eqs. 8-9)
    The DOS has no absolute energy reference in a periodic solid, so the error of a structure ``A`` is taken at the
    rigid shift ``Δ`` (integer multiples of the grid spacing, at most ``max_shift`` points either way, 200 = 10 eV in
    the paper) that minimises it, over the energies where the target is defined (not NaN), and normalised by the
    number of electrons ``n_A`` the target represents::

        RMSE_A = sqrt( min_Δ ∫ (DOS_pred,A(E + Δ) - DOS_A(E))² dE ) / n_A        [eV^-1/2 electrons^-1 states]

    and the error of a set is the mean of ``RMSE_A`` over its structures. The seed text shows eqs. 8 and 9 only as
    images: this reading follows from their units, from "normalized to account for the difference in the number of
    electrons represented by the DOS" and from the per-structure error distribution of the paper's Fig. 2. ``n_A`` is
    the integral of the target DOS up to the Fermi level (0 on the dataset's grid) unless given.

Band gap (PET-MAD-DOS section 2.2, Fig. 3)
    The gap read from a DOS: the Fermi level where the integrated DOS reaches the electron count; zero if the DOS
    there is at least ``threshold`` (0.1 states/eV per atom), else the distance between the nearest energies below
    and above it where the DOS reaches the threshold. The error compares the gap of the predicted DOS with the gap of
    the target DOS read the same way (the frames carry no DFT gap; the target's Fermi level is its grid's zero).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

__all__ = (
    'COLUMNS',
    'DOS_MAX_SHIFT',
    'GAP_THRESHOLD',
    'FrameSet',
    'aligned_dos_error',
    'dos_bandgap',
    'dos_electrons',
    'dos_rmse',
    'error_table',
    'mae_rmse',
    'rotation_dos_error',
    'rotation_std',
    'table_csv',
    'table_rows',
)

#: Largest rigid shift of the DOS, in grid points (PET-MAD-DOS: 200, i.e. 10 eV at 0.05 eV).
DOS_MAX_SHIFT = 200
#: DOS per atom below which an energy is in a gap (states/eV/atom; PET-MAD-DOS Fig. 3).
GAP_THRESHOLD = 0.1

#: Keys of one row of the table, with their units (``None`` where there is no value).
COLUMNS = {
    'n_frames': '',
    'n_atoms': '',
    'energy_mae': 'meV/atom',
    'energy_rmse': 'meV/atom',
    'forces_mae': 'meV/Å',
    'forces_rmse': 'meV/Å',
    'n_stress': '',
    'stress_mae': 'meV/Å³',
    'stress_rmse': 'meV/Å³',
    'n_rotated': '',
    'rotation_std': 'meV/atom',
    'rotation_std_max': 'meV/atom',
    'rotation_dos': 'eV^-1/2 electrons^-1 states',
    'n_dos': '',
    'dos_rmse': 'eV^-1/2 electrons^-1 states',
    'gap_mae': 'eV',
    'gap_rmse': 'eV',
}


def mae_rmse(differences) -> tuple[float | None, float | None]:
    """Return the mean absolute error and the root mean square error of ``differences`` (NaN ignored).

    ``(None, None)`` when no finite value is left.
    """
    values = np.asarray(differences, dtype=float).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None, None
    return float(np.mean(np.abs(values))), float(np.sqrt(np.mean(values**2)))


def rotation_std(energies_per_atom) -> np.ndarray:
    """Return, per structure, the standard deviation (``ddof=0``) over rotations of ``(n, R)`` energies per atom."""
    values = np.asarray(energies_per_atom, dtype=float)
    if values.ndim != 2 or values.shape[1] < 2:
        raise ValueError(f'rotated energies must be (structures, rotations >= 2), got shape {values.shape}')
    return values.std(axis=1)


def aligned_dos_error(
    predicted, target, *, spacing: float = 0.05, max_shift: int = DOS_MAX_SHIFT
) -> tuple[float, float]:
    """Return ``(∫ squared error dE, shift)`` of ``predicted`` against ``target`` at the best rigid shift.

    Both DOS start at the same energy with the same ``spacing``; the prediction is zero outside its grid (and may
    have more or fewer points than the target). Only the target's defined points (not NaN) count. The shift (eV)
    is ``Δ`` with ``predicted(E + Δ)`` aligned to ``target(E)``: positive when the prediction's features sit higher.

    :raises ValueError: for a target without a defined point or a non-finite prediction.
    """
    target = np.asarray(target, dtype=float)
    predicted = np.asarray(predicted, dtype=float)
    valid = np.isfinite(target)
    if not valid.any():
        raise ValueError('the target DOS has no defined point')
    if not np.all(np.isfinite(predicted)):
        raise ValueError('the predicted DOS has non-finite values')
    size = target.size
    padded = np.zeros(size + 2 * max_shift)
    kept = min(predicted.size, size + max_shift)
    padded[max_shift : max_shift + kept] = predicted[:kept]
    windows = np.lib.stride_tricks.sliding_window_view(padded, size)[:, valid]
    squared = ((windows - target[valid]) ** 2).sum(axis=1) * spacing
    best = int(np.argmin(squared))
    return float(squared[best]), float((best - max_shift) * spacing)


def dos_electrons(target, *, start: float = -149.65, spacing: float = 0.05, fermi: float = 0.0) -> float:
    """Return the number of electrons a DOS represents: its integral up to ``fermi`` (over its defined points)."""
    target = np.asarray(target, dtype=float)
    energies = start + spacing * np.arange(target.size)
    below = (energies <= fermi + 1e-9) & np.isfinite(target)
    return float(target[below].sum() * spacing)


def dos_rmse(
    predicted, target, n_electrons: float | None = None, *, spacing: float = 0.05, max_shift: int = DOS_MAX_SHIFT
) -> float:
    """Return PET-MAD-DOS's RMSE of one structure: shift-aligned, normalised by its electron count (eq. 8).

    :param n_electrons: the electrons the target represents; by default :func:`dos_electrons` of the target.
    :raises ValueError: for an electron count that is not positive.
    """
    if n_electrons is None:
        n_electrons = dos_electrons(target, spacing=spacing)
    if not n_electrons > 0:
        raise ValueError(f'the electron count must be positive, got {n_electrons}')
    squared, _ = aligned_dos_error(predicted, target, spacing=spacing, max_shift=max_shift)
    return math.sqrt(squared) / n_electrons


def rotation_dos_error(variance, target, n_electrons: float, *, spacing: float = 0.05) -> float:
    """Return PET-MAD-DOS's rotational symmetry error of one structure (eq. 10).

    ``sqrt(∫ var_R DOS(E) dE) / n_A`` over the energies where the target is defined, ``variance`` being the variance
    over the rotated copies (``ddof=0``) of the predicted DOS at each grid point (same grid as the target).
    """
    target = np.asarray(target, dtype=float)
    variance = np.asarray(variance, dtype=float)[: target.size]
    valid = np.isfinite(target[: variance.size])
    return math.sqrt(float(variance[valid].sum()) * spacing) / n_electrons


def dos_bandgap(
    dos,
    n_electrons: float,
    natoms: int,
    *,
    start: float = -149.65,
    spacing: float = 0.05,
    fermi: float | None = None,
    threshold: float = GAP_THRESHOLD,
) -> float:
    """Return the band gap (eV) read from a DOS (see the module docstring); 0 for a metal.

    :param fermi: the Fermi level; by default where the integrated DOS reaches ``n_electrons``.
    :param threshold: states/eV per atom below which an energy is in the gap.
    """
    dos = np.nan_to_num(np.asarray(dos, dtype=float), nan=0.0)
    energies = start + spacing * np.arange(dos.size)
    if fermi is None:
        cumulative = np.cumsum(dos) * spacing
        index = int(np.searchsorted(cumulative, n_electrons))
        fermi = float(energies[min(index, dos.size - 1)])
    per_atom = dos / natoms
    at = int(np.clip(np.round((fermi - start) / spacing), 0, dos.size - 1))
    if per_atom[at] >= threshold:
        return 0.0
    occupied = np.nonzero(per_atom[:at] >= threshold)[0]
    empty = np.nonzero(per_atom[at:] >= threshold)[0]
    if occupied.size == 0 or empty.size == 0:
        return 0.0
    return float(energies[at + empty[0]] - energies[occupied[-1]])


@dataclasses.dataclass
class FrameSet:
    """Reference values and predictions of ``n`` frames (``n_atoms`` atoms in all), the input of :func:`error_table`.

    Energies in eV/atom, forces in eV/Å (ragged: structure ``i`` in rows ``offsets[i]:offsets[i + 1]``), stresses in
    eV/Å³ ``(n, 3, 3)`` (NaN where undefined). The optional per-structure arrays hold NaN where a structure has no
    value: ``rotation_std`` (eV/atom), ``rotation_dos`` (PET-MAD-DOS eq. 10, :func:`rotation_dos_error`),
    ``dos_rmse`` (eq. 8), ``gap_error`` (eV, predicted minus reference).
    """

    subsets: Sequence[str]
    natoms: np.ndarray
    energy_reference: np.ndarray
    energy_predicted: np.ndarray
    forces_reference: np.ndarray
    forces_predicted: np.ndarray
    stress_reference: np.ndarray
    stress_predicted: np.ndarray
    rotation_std: np.ndarray | None = None
    rotation_dos: np.ndarray | None = None
    dos_rmse: np.ndarray | None = None
    gap_error: np.ndarray | None = None

    @property
    def offsets(self) -> np.ndarray:
        """Return where each structure's atoms start, length ``n + 1``."""
        return np.concatenate([[0], np.cumsum(np.asarray(self.natoms, dtype=np.int64))])


def _milli(value: float | None) -> float | None:
    return None if value is None else 1000 * value


def _row(frames: FrameSet, selected: np.ndarray) -> dict:
    offsets = frames.offsets
    atoms = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in selected]) if selected.size else []
    atoms = np.asarray(atoms, dtype=np.int64)
    energy = np.asarray(frames.energy_predicted, float)[selected] - np.asarray(frames.energy_reference, float)[selected]
    forces = np.asarray(frames.forces_predicted, float)[atoms] - np.asarray(frames.forces_reference, float)[atoms]
    stress = np.asarray(frames.stress_predicted, float)[selected] - np.asarray(frames.stress_reference, float)[selected]
    has_stress = np.all(np.isfinite(stress.reshape(len(selected), -1)), axis=1) if selected.size else np.zeros(0, bool)
    row = {'n_frames': int(selected.size), 'n_atoms': int(np.asarray(frames.natoms)[selected].sum())}
    for name, values, scale in (('energy', energy, _milli), ('forces', forces, _milli)):
        mae, rmse = mae_rmse(values)
        row[f'{name}_mae'], row[f'{name}_rmse'] = scale(mae), scale(rmse)
    mae, rmse = mae_rmse(stress[has_stress])
    row.update({'n_stress': int(has_stress.sum()), 'stress_mae': _milli(mae), 'stress_rmse': _milli(rmse)})
    rotation = _selected(frames.rotation_std, selected)
    row['n_rotated'] = int(rotation.size)
    row['rotation_std'] = _milli(float(rotation.mean())) if rotation.size else None
    row['rotation_std_max'] = _milli(float(rotation.max())) if rotation.size else None
    rotation = _selected(frames.rotation_dos, selected)
    row['rotation_dos'] = float(rotation.mean()) if rotation.size else None
    dos = _selected(frames.dos_rmse, selected)
    row['n_dos'] = int(dos.size)
    row['dos_rmse'] = float(dos.mean()) if dos.size else None
    row['gap_mae'], row['gap_rmse'] = mae_rmse(_selected(frames.gap_error, selected))
    return row


def _selected(values, selected: np.ndarray) -> np.ndarray:
    if values is None:
        return np.zeros(0)
    chosen = np.asarray(values, dtype=float)[selected]
    return chosen[np.isfinite(chosen)]


def error_table(frames: FrameSet) -> dict:
    """Return ``{'subsets': {subset: row}, 'overall': row, 'units': {column: unit}}`` (rows: :data:`COLUMNS`).

    :raises ValueError: if the arrays do not describe the same frames.
    """
    n = len(frames.subsets)
    for name in ('natoms', 'energy_reference', 'energy_predicted', 'stress_reference', 'stress_predicted'):
        if len(getattr(frames, name)) != n:
            raise ValueError(f'{name} has {len(getattr(frames, name))} entries for {n} frames')
    total = int(np.sum(frames.natoms))
    for name in ('forces_reference', 'forces_predicted'):
        if len(getattr(frames, name)) != total:
            raise ValueError(f'{name} has {len(getattr(frames, name))} rows for {total} atoms')
    subsets = np.asarray(frames.subsets, dtype=str)
    return {
        'subsets': {str(name): _row(frames, np.nonzero(subsets == name)[0]) for name in sorted(set(subsets.tolist()))},
        'overall': _row(frames, np.arange(n)),
        'units': dict(COLUMNS),
    }


def _cell(value: float | None, digits: int = 1) -> str:
    return '—' if value is None else f'{value:.{digits}f}'


def table_rows(table: dict) -> tuple[list[str], list[list[str]]]:
    """Return the header and rows of ``table`` in the layout of PET-MAD's Table I: one row per subset, then overall.

    Each error column shows ``MAE | RMSE``; a column without any value anywhere is left out (a DOS model has no
    energy error, an energy model no DOS error); rotational errors as ``mean (max)``.
    """
    rows = [*table['subsets'].items(), ('overall', table['overall'])]
    columns = [
        ('energy MAE|RMSE [meV/atom]', 'energy_mae', 'energy_rmse', 1),
        ('forces MAE|RMSE [meV/Å]', 'forces_mae', 'forces_rmse', 1),
        ('stress MAE|RMSE [meV/Å³]', 'stress_mae', 'stress_rmse', 2),
        ('rotational std mean (max) [meV/atom]', 'rotation_std', 'rotation_std_max', 3),
        ('DOS RMSE [eV^-½ e^-1 states]', 'dos_rmse', None, 4),
        ('DOS rotational std [eV^-½ e^-1 states]', 'rotation_dos', None, 6),
        ('gap MAE|RMSE [eV]', 'gap_mae', 'gap_rmse', 3),
    ]
    present = [column for column in columns if any(row.get(column[1]) is not None for _, row in rows)]
    header = ['subset', 'frames', *(column[0] for column in present)]
    lines = []
    for name, row in rows:
        cells = [name, str(row['n_frames'])]
        for _, first, second, digits in present:
            if second is None:
                cells.append(_cell(row.get(first), digits))
            elif first == 'rotation_std':
                cells.append(f'{_cell(row.get(first), digits)} ({_cell(row.get(second), digits)})')
            else:
                cells.append(f'{_cell(row.get(first), digits)} | {_cell(row.get(second), digits)}')
        lines.append(cells)
    return header, lines


def table_csv(table: dict) -> str:
    """Return ``table`` as CSV: one line per subset, then ``overall``, every column of :data:`COLUMNS` (empty: none)."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator='\n')
    writer.writerow(['subset', *(f'{name} [{unit}]' if unit else name for name, unit in COLUMNS.items())])
    for name, row in [*table['subsets'].items(), ('overall', table['overall'])]:
        writer.writerow([name, *('' if row.get(column) is None else row[column] for column in COLUMNS)])
    return buffer.getvalue()
