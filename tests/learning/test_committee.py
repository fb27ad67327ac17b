"""Tests for the committee statistics of a ragged batch."""

from __future__ import annotations

import numpy as np
import pytest

from aiida_mad.learning.committee import committee_statistics, stress_voigt, validate_offsets


def _random_batch(rng, n_members=3, sizes=(1, 4, 2, 7, 3)):
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    energy = rng.normal(size=(n_members, len(sizes)))
    forces = rng.normal(size=(n_members, offsets[-1], 3))
    stress = rng.normal(size=(n_members, len(sizes), 6))
    return energy, forces, offsets, stress


def test_identical_members_give_zero_sigmas():
    rng = np.random.default_rng(0)
    energy, forces, offsets, stress = _random_batch(rng, n_members=1)
    stats = committee_statistics(
        np.repeat(energy, 4, axis=0), np.repeat(forces, 4, axis=0), offsets, np.repeat(stress, 4, axis=0)
    )
    assert stats.n_members == 4
    assert stats.n_structures == 5
    for sigma in (stats.sigma_energy, stats.sigma_force, stats.sigma_stress, stats.sigma_force_atom):
        np.testing.assert_allclose(sigma, 0.0, atol=1e-15)
    np.testing.assert_allclose(stats.energy, energy[0])
    np.testing.assert_allclose(stats.forces, forces[0])
    np.testing.assert_allclose(stats.stress, stress[0])


def _two_members():
    """Two structures (1 and 2 atoms) predicted by two members; the sigmas are worked out by hand in the test."""
    energy = [[-1.0, -2.0], [-1.2, -2.0]]
    forces = [
        [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]],
        [[0.3, 0.4, 0.0], [0.0, 0.0, 0.0], [1.0, 0.2, 0.0]],
    ]
    stress = [
        [[0.0, 0.0, 0.0, 0.0, 0.0, 0.0], [0.1, 0.1, 0.1, 0.0, 0.0, 0.0]],
        [[0.2, 0.0, 0.0, 0.0, 0.0, -0.6], [0.1, 0.1, 0.1, 0.0, 0.0, 0.0]],
    ]
    return energy, forces, [0, 1, 3], stress


def test_two_members_by_hand():
    energy, forces, offsets, stress = _two_members()
    stats = committee_statistics(energy, forces, offsets, stress)
    # Energies -1.0 and -1.2: mean -1.1, population std 0.1; the second structure agrees.
    np.testing.assert_allclose(stats.energy, [-1.1, -2.0])
    np.testing.assert_allclose(stats.sigma_energy, [0.1, 0.0], atol=1e-15)
    # Atom 0: deviations (±0.15, ±0.2, 0) from the mean, norm 0.25; atom 2: (0, ±0.1, 0), norm 0.1.
    np.testing.assert_allclose(stats.sigma_force_atom, [0.25, 0.0, 0.1], atol=1e-15)
    np.testing.assert_allclose(stats.sigma_force, [0.25, 0.1], atol=1e-15)
    np.testing.assert_allclose(stats.forces[0], [0.15, 0.2, 0.0])
    # Stress components xx (0, 0.2) and xy (0, -0.6): stds 0.1 and 0.3, the largest is 0.3.
    np.testing.assert_allclose(stats.sigma_stress, [0.3, 0.0], atol=1e-15)
    np.testing.assert_allclose(stats.stress[0], [0.1, 0, 0, 0, 0, -0.3])

    sample = committee_statistics(energy, forces, offsets, stress, ddof=1)
    np.testing.assert_allclose(sample.sigma_energy, [0.2 / np.sqrt(2), 0.0], atol=1e-15)
    np.testing.assert_allclose(sample.sigma_force, [0.25 * np.sqrt(2), 0.1 * np.sqrt(2)])


def test_total_energies_and_tensor_stress_give_the_same():
    energy, forces, offsets, stress = _two_members()
    reference = committee_statistics(energy, forces, offsets, stress)
    total = np.asarray(energy) * [1, 2]
    tensor = np.zeros((2, 2, 3, 3))
    for (i, j), column in zip(((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)), range(6), strict=True):
        tensor[..., i, j] = tensor[..., j, i] = np.asarray(stress)[..., column]
    np.testing.assert_allclose(stress_voigt(tensor), stress)
    other = committee_statistics(total, forces, offsets, tensor, energy_per_atom=False)
    np.testing.assert_allclose(other.sigma_energy, reference.sigma_energy, atol=1e-15)
    np.testing.assert_allclose(other.energy, reference.energy)
    np.testing.assert_allclose(other.sigma_stress, reference.sigma_stress)


def test_matches_a_loop_over_structures():
    rng = np.random.default_rng(1)
    energy, forces, offsets, stress = _random_batch(rng, n_members=3)
    stats = committee_statistics(energy, forces, offsets, stress)
    for index in range(5):
        atoms = forces[:, offsets[index] : offsets[index + 1]]
        per_atom = np.sqrt(((atoms - atoms.mean(axis=0)) ** 2).sum(axis=2).mean(axis=0))
        assert stats.sigma_force[index] == pytest.approx(per_atom.max(), rel=1e-12)
        assert stats.sigma_energy[index] == pytest.approx(np.std(energy[:, index]), rel=1e-12)
        assert stats.sigma_stress[index] == pytest.approx(np.std(stress[:, index], axis=0).max(), rel=1e-12)


def test_force_sigma_does_not_depend_on_the_axes():
    rng = np.random.default_rng(2)
    energy, forces, offsets, _ = _random_batch(rng)
    rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    original = committee_statistics(energy, forces, offsets)
    rotated = committee_statistics(energy, forces @ rotation.T, offsets)
    np.testing.assert_allclose(rotated.sigma_force, original.sigma_force, rtol=1e-12)


def test_missing_stress_gives_nan_only_where_missing():
    rng = np.random.default_rng(3)
    energy, forces, offsets, stress = _random_batch(rng)
    stress[1, 2, :] = np.nan
    stats = committee_statistics(energy, forces, offsets, stress)
    assert np.isnan(stats.sigma_stress[2])
    assert np.isfinite(np.delete(stats.sigma_stress, 2)).all()
    assert np.isnan(committee_statistics(energy, forces, offsets).sigma_stress).all()


@pytest.mark.parametrize(
    ('change', 'message'),
    [
        (lambda e, f, o, s: (e[:1], f[:1], o, s[:1]), 'at least 2 members, got 1'),
        (lambda e, f, o, s: (e, f, o + 1, s), r'offsets\[0\] must be 0, got 1'),
        (lambda e, f, o, s: (e, f, [0, 1, 1, 3, 5, 17], s), 'structure 1 has 0 atoms'),
        (lambda e, f, o, s: (e, f[:, :-1], o, s), r'offsets\[-1\] is 17 but the per-atom arrays have 16 rows'),
        (lambda e, f, o, s: (e[:, :-1], f, o, s), 'energy has 4 structures but offsets describe 5'),
        (lambda e, f, o, s: (e, f[..., :2], o, s), 'forces must have shape'),
        (lambda e, f, o, s: (e, f, o, s[..., :5]), 'stress must have a last dimension of 6'),
        (lambda e, f, o, s: (e, f, o, s[:, :-1]), 'stress must have shape'),
    ],
)
def test_bad_shapes(change, message):
    energy, forces, offsets, stress = _random_batch(np.random.default_rng(4))
    with pytest.raises(ValueError, match=message):
        committee_statistics(*change(energy, forces, offsets, stress))


def test_non_finite_predictions_are_named():
    energy, forces, offsets, stress = _random_batch(np.random.default_rng(5))
    bad = forces.copy()
    bad[2, offsets[3] + 4, 1] = np.nan
    with pytest.raises(ValueError, match='force on atom 4 of structure 3 by member 2 is not finite'):
        committee_statistics(energy, bad, offsets)
    bad = energy.copy()
    bad[1, 4] = np.inf
    with pytest.raises(ValueError, match='energy of structure 4 by member 1 is not finite'):
        committee_statistics(bad, forces, offsets)
    bad = stress.copy()
    bad[0, 2, 3] = -np.inf
    with pytest.raises(ValueError, match='stress of structure 2 by member 0 is infinite'):
        committee_statistics(energy, forces, offsets, bad)
    with pytest.raises(ValueError, match='ddof must be 0'):
        committee_statistics(energy, forces, offsets, ddof=2)


def test_validate_offsets():
    np.testing.assert_array_equal(validate_offsets([0, 2, 3]), [0, 2, 3])
    with pytest.raises(ValueError, match='at least 2 integers'):
        validate_offsets([0])
    with pytest.raises(ValueError, match='must hold integers'):
        validate_offsets([0, 1.5, 3])
    with pytest.raises(ValueError, match='structure 0 has -1 atoms'):
        validate_offsets([0, -1, 3])
