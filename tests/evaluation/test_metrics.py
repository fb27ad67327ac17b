"""The pure evaluation metrics: error tables, Lebedev rotations, shift-aligned DOS errors, band gaps."""

from __future__ import annotations

import itertools
from math import gamma

import numpy as np
import pytest
from ase import Atoms

from aiida_mad.learning.evaluation import (
    FrameSet,
    aligned_dos_error,
    dos_bandgap,
    dos_electrons,
    dos_rmse,
    error_table,
    mae_rmse,
    rotation_dos_error,
    rotation_std,
    table_rows,
)
from aiida_mad.learning.rotations import (
    LEBEDEV_ORDERS,
    align_z,
    lebedev_grid,
    rotated_copies,
    rotation_arrays,
    rotation_matrices,
)


def three_frames(**extra) -> FrameSet:
    """Three frames (2, 1 and 3 atoms) in two subsets, with errors that are easy to add up by hand."""
    natoms = np.array([2, 1, 3])
    forces_reference = np.zeros((6, 3))
    forces_predicted = np.zeros((6, 3))
    forces_predicted[0, 0] = 0.003  # frame 0
    forces_predicted[2, 1] = -0.006  # frame 1
    forces_predicted[5, 2] = 0.009  # frame 2
    stress_reference = np.zeros((3, 3, 3))
    stress_predicted = np.zeros((3, 3, 3))
    stress_predicted[0] = np.eye(3) * 0.001
    stress_reference[2] = np.nan  # a molecule: no stress
    stress_predicted[2] = np.nan
    return FrameSet(
        subsets=['a', 'b', 'a'],
        natoms=natoms,
        energy_reference=np.array([-1.0, -2.0, -3.0]),
        energy_predicted=np.array([-1.010, -1.980, -3.040]),
        forces_reference=forces_reference,
        forces_predicted=forces_predicted,
        stress_reference=stress_reference,
        stress_predicted=stress_predicted,
        **extra,
    )


def test_hand_computed_errors_on_three_frames():
    table = error_table(three_frames())
    overall, a, b = table['overall'], table['subsets']['a'], table['subsets']['b']
    # Energy errors 10, 20, 40 meV/atom.
    assert overall['energy_mae'] == pytest.approx((10 + 20 + 40) / 3)
    assert overall['energy_rmse'] == pytest.approx(np.sqrt((100 + 400 + 1600) / 3))
    assert a['energy_mae'] == pytest.approx(25.0)
    assert b['energy_mae'] == pytest.approx(20.0)
    # Forces per component: 18 components, errors 3, 6, 9 meV/Å.
    assert overall['forces_mae'] == pytest.approx(18 / 18)
    assert overall['forces_rmse'] == pytest.approx(np.sqrt((9 + 36 + 81) / 18))
    assert a['forces_mae'] == pytest.approx(12 / 15)
    assert b['forces_mae'] == pytest.approx(6 / 3)
    # Stress: frames 0 and 1 only (frame 2 has none), 9 components each; frame 0 errs by 1 meV/Å³ on 3 of them.
    assert overall['n_stress'] == 2
    assert overall['stress_mae'] == pytest.approx(3 / 18)
    assert a['n_stress'] == 1
    assert a['stress_mae'] == pytest.approx(3 / 9)
    assert overall['n_frames'] == 3
    assert overall['n_atoms'] == 6
    assert overall['rotation_std'] is None
    assert overall['dos_rmse'] is None


def test_table_rows_in_table_one_layout():
    table = error_table(three_frames(rotation_std=np.array([0.001, np.nan, 0.003])))
    header, rows = table_rows(table)
    assert header[:2] == ['subset', 'frames']
    assert [row[0] for row in rows] == ['a', 'b', 'overall']
    assert rows[0][header.index('energy MAE|RMSE [meV/atom]')] == '25.0 | 29.2'
    assert rows[2][header.index('rotational std mean (max) [meV/atom]')] == '2.000 (3.000)'
    assert rows[1][header.index('rotational std mean (max) [meV/atom]')] == '— (—)'
    assert not any(name.startswith('DOS') for name in header)


def test_error_table_refuses_mismatched_arrays():
    frames = three_frames()
    frames.forces_predicted = frames.forces_predicted[:5]
    with pytest.raises(ValueError, match='forces_predicted has 5 rows for 6 atoms'):
        error_table(frames)


def test_mae_rmse_ignores_nan_and_is_none_when_empty():
    assert mae_rmse([1.0, -3.0, np.nan]) == (2.0, pytest.approx(np.sqrt(5)))
    assert mae_rmse([np.nan]) == (None, None)


@pytest.mark.parametrize('order', LEBEDEV_ORDERS)
def test_lebedev_grids_integrate_polynomials_exactly(order):
    points, weights = lebedev_grid(order)
    assert len(points) == {3: 6, 5: 14, 7: 26, 9: 38}[order]
    assert np.allclose(np.linalg.norm(points, axis=1), 1)
    assert weights.sum() == pytest.approx(1)
    for a, b, c in itertools.product(range(order + 1), repeat=3):
        if a + b + c > order:
            continue
        exact = 0.0
        if a % 2 == 0 and b % 2 == 0 and c % 2 == 0:
            # Mean of x^a y^b z^c over the unit sphere: 2 Γ(α) Γ(β) Γ(γ) / Γ(α + β + γ) / 4π, α = (a + 1) / 2, ...
            alpha, beta, gamma_ = (a + 1) / 2, (b + 1) / 2, (c + 1) / 2
            exact = 2 * gamma(alpha) * gamma(beta) * gamma(gamma_) / gamma(alpha + beta + gamma_) / (4 * np.pi)
        value = float(np.sum(weights * points[:, 0] ** a * points[:, 1] ** b * points[:, 2] ** c))
        assert value == pytest.approx(exact, abs=1e-12), (a, b, c)
    with pytest.raises(ValueError, match='orders available'):
        lebedev_grid(4)


def test_rotations_are_proper_and_start_with_the_identity():
    matrices = rotation_matrices(9, in_plane=2)
    assert matrices.shape == (76, 3, 3)
    for matrix in matrices:
        assert np.allclose(matrix @ matrix.T, np.eye(3))
        assert np.linalg.det(matrix) == pytest.approx(1)
    points, _ = lebedev_grid(9)
    for point in points:
        assert np.allclose(align_z(point) @ [0, 0, 1], point)
    assert any(np.allclose(matrix, np.eye(3)) for matrix in matrices)


def composition_energy(frame: Atoms) -> float:
    """An exactly invariant model: a sum of per-element energies."""
    return float(sum({1: -13.6, 14: -107.0}[int(number)] for number in frame.numbers))


def test_rotational_error_zero_for_an_invariant_model_and_positive_for_a_broken_one():
    frame = Atoms('SiH2', positions=[[0, 0, 0], [1.5, 0, 0], [0, 1.2, 0.4]], cell=np.eye(3) * 6, pbc=True)
    copies = rotated_copies(frame, rotation_matrices())
    assert len(copies) == 38
    distances = frame.get_all_distances()
    for copy in copies:
        assert np.allclose(copy.get_all_distances(), distances)
    invariant = np.array([[composition_energy(copy) / len(copy) for copy in copies]])
    assert rotation_std(invariant)[0] == pytest.approx(0.0, abs=1e-15)
    # A model that reads the x coordinate is not invariant.
    broken = np.array([[composition_energy(copy) + copy.positions[1, 0] for copy in copies]])
    assert rotation_std(broken)[0] > 0.1
    with pytest.raises(ValueError, match='rotations >= 2'):
        rotation_std(np.zeros((3, 1)))


def gaussian_dos(centres, size=1200, spacing=0.05, start=-40.0) -> np.ndarray:
    energies = start + spacing * np.arange(size)
    norm = 0.3 * np.sqrt(2 * np.pi)
    return sum(2 * np.exp(-((energies - centre) ** 2) / (2 * 0.3**2)) / norm for centre in centres)


def test_shift_aligned_dos_error_recovers_a_known_shift():
    target = gaussian_dos([-12.0, -5.0, -2.0, 3.0])
    target[1100:] = np.nan  # above E_max
    predicted = np.roll(gaussian_dos([-12.0, -5.0, -2.0, 3.0]), 37)
    squared, shift = aligned_dos_error(predicted, target)
    assert shift == pytest.approx(37 * 0.05)
    assert squared == pytest.approx(0.0, abs=1e-12)
    unaligned = np.sqrt(np.nansum((predicted - target) ** 2) * 0.05)
    assert unaligned > 1
    assert dos_rmse(predicted, target, 8.0) == pytest.approx(0.0, abs=1e-6)
    # A prediction that also differs in shape keeps the residual error at the best shift, divided by n.
    noisy = predicted + 0.01
    expected = np.sqrt(np.sum(np.where(np.isfinite(target), 0.01**2, 0)) * 0.05) / 8.0
    assert dos_rmse(noisy, target, 8.0) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match='no defined point'):
        aligned_dos_error(predicted, np.full(1200, np.nan))


def test_electron_count_and_band_gap_from_a_dos():
    # Two states (4 electrons) below the Fermi level at 0, a gap up to the state at +3 eV; one atom.
    dos = gaussian_dos([-5.0, -2.0, 3.0], start=-40.0)
    assert dos_electrons(dos, start=-40.0) == pytest.approx(4.0, abs=1e-6)
    gap = dos_bandgap(dos, 4.0, 1, start=-40.0)
    assert 3.0 < gap < 5.0
    assert dos_bandgap(dos, 4.0, 1, start=-40.0, fermi=0.0) == pytest.approx(gap)
    metal = gaussian_dos([-5.0, -2.0, 0.0, 3.0], start=-40.0)
    assert dos_bandgap(metal, 5.0, 1, start=-40.0) == 0.0


def test_rotation_arrays_predict_every_copy_once_per_rotation():
    frames = [
        Atoms('SiH2', positions=[[0, 0, 0], [1.5, 0, 0], [0, 1.2, 0.4]], cell=np.eye(3) * 6, pbc=True),
        Atoms('H2', positions=[[0, 0, 0], [0.74, 0, 0]]),
    ]
    for index, frame in enumerate(frames):
        frame.info['source_uuid'] = f'uuid-{index}'
    calls = []

    def predict(copies):
        calls.append(len(copies))
        energy = np.array([[composition_energy(copy) + 0.01 * copy.positions[-1, 0] for copy in copies]])
        return {'energy': energy, 'dos': np.stack([energy.T * np.ones((len(copies), 4))])}

    arrays = rotation_arrays(predict, frames, rotation_matrices(5), uuids=['uuid-1'])
    assert calls == [14]
    assert list(arrays['rotation_uuids']) == ['uuid-1']
    assert arrays['rotation_energy'].shape == (1, 1, 14)
    assert np.allclose(arrays['rotation_energy_per_atom'], arrays['rotation_energy'] / 2)
    assert arrays['rotation_dos_variance'].shape == (1, 1, 4)
    assert np.allclose(arrays['rotation_dos_variance'][0, 0], arrays['rotation_energy'][0, 0].var())
    assert rotation_std(arrays['rotation_energy_per_atom'][0])[0] > 0
    assert rotation_arrays(predict, frames, rotation_matrices(3))['rotation_energy'].shape == (1, 2, 6)
    with pytest.raises(ValueError, match='no structure nope to rotate'):
        rotation_arrays(predict, frames, rotation_matrices(3), uuids=['nope'])
    with pytest.raises(ValueError, match='at least two 3x3 matrices'):
        rotation_arrays(predict, frames, np.eye(3)[None])


def test_rotational_dos_error_is_zero_without_spread():
    target = gaussian_dos([-5.0, -2.0])
    target[1000:] = np.nan
    assert rotation_dos_error(np.zeros(1200), target, 4.0) == 0.0
    variance = np.full(1200, 0.04)
    assert rotation_dos_error(variance, target, 4.0) == pytest.approx(np.sqrt(0.04 * 1000 * 0.05) / 4.0)


def test_table_csv_has_every_column_and_the_overall_row():
    from aiida_mad.learning.evaluation import COLUMNS, table_csv

    lines = table_csv(error_table(three_frames())).splitlines()
    assert lines[0].split(',')[:3] == ['subset', 'n_frames', 'n_atoms']
    assert len(lines[0].split(',')) == 1 + len(COLUMNS)
    assert [line.split(',')[0] for line in lines[1:]] == ['a', 'b', 'overall']
    overall = dict(zip(lines[0].split(','), lines[3].split(','), strict=True))
    assert float(overall['energy_mae [meV/atom]']) == pytest.approx(70 / 3)
    assert overall['rotation_std [meV/atom]'] == ''
