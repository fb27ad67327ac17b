"""Tests for the ``mc3d-random`` generator."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.data import atomic_numbers, covalent_radii

from aiida_mad.structures.elements import UnknownElementError
from aiida_mad.structures.randomize import randomize_composition, volume_ratio

POOL = ('H', 'C', 'Fe', 'Sn', 'Bi')


@pytest.fixture
def parent():
    """A strained, slightly rattled SrTiO3 supercell, so that the cell shape is not trivial."""
    atoms = Atoms(
        'SrTiO3',
        scaled_positions=[(0, 0, 0), (0.5, 0.5, 0.5), (0.5, 0.5, 0), (0.5, 0, 0.5), (0, 0.5, 0.5)],
        cell=[(3.9, 0, 0), (0.3, 4.0, 0), (0.1, 0.2, 4.1)],
        pbc=True,
    ) * (2, 2, 2)
    atoms.positions += np.random.default_rng(5).normal(scale=0.05, size=atoms.positions.shape)
    return atoms


def test_volume_follows_covalent_radius_volume(parent):
    randomized = randomize_composition(parent, np.random.default_rng(1), POOL)
    r_parent = covalent_radii[parent.numbers]
    r_new = np.array([covalent_radii[atomic_numbers[s]] for s in randomized.get_chemical_symbols()])
    expected = parent.get_volume() * np.sum(r_new**3) / np.sum(r_parent**3)
    assert randomized.get_volume() == pytest.approx(expected, rel=1e-12)
    assert randomized.get_volume() != pytest.approx(parent.get_volume(), rel=1e-3)


def test_volume_ratio_values():
    assert volume_ratio([6, 6], [6, 6]) == 1.0
    r_h, r_c = covalent_radii[1], covalent_radii[6]
    assert volume_ratio([6, 6], [1, 6]) == pytest.approx((r_h**3 + r_c**3) / (2 * r_c**3), rel=1e-14)
    with pytest.raises(ValueError, match='site counts differ'):
        volume_ratio([6, 6], [6])


def test_cell_scaled_isotropically_and_fractional_positions_kept(parent):
    randomized = randomize_composition(parent, np.random.default_rng(2), POOL)
    nonzero = parent.cell.array != 0
    ratio = randomized.cell.array[nonzero] / parent.cell.array[nonzero]
    assert np.allclose(ratio, ratio[0], rtol=1e-13, atol=0)
    assert np.all(randomized.cell.array[~nonzero] == 0)
    assert np.allclose(
        randomized.get_scaled_positions(wrap=False), parent.get_scaled_positions(wrap=False), rtol=0, atol=1e-12
    )
    assert list(randomized.pbc) == list(parent.pbc)
    assert len(randomized) == len(parent)


def test_species_only_from_pool_and_uniform():
    parent = bulk('Si', 'diamond', a=5.43, cubic=True) * (7, 7, 7)  # 2744 sites
    randomized = randomize_composition(parent, np.random.default_rng(3), POOL)
    counts = Counter(randomized.get_chemical_symbols())
    assert set(counts) == set(POOL)
    expected = len(parent) / len(POOL)
    chi2 = sum((counts[s] - expected) ** 2 / expected for s in POOL)
    # 4 degrees of freedom: chi2 > 25 has a probability below 1e-4 for a uniform draw.
    assert chi2 < 25, counts


def test_duplicates_in_pool_do_not_bias():
    parent = bulk('Si', 'diamond', a=5.43, cubic=True) * (5, 5, 5)  # 1000 sites
    randomized = randomize_composition(parent, np.random.default_rng(4), ['O', 'O', 'O', 'N'])
    fraction = randomized.get_chemical_symbols().count('N') / len(parent)
    assert 0.44 < fraction < 0.56


def test_deterministic_and_seed_dependent(parent):
    first = randomize_composition(parent, np.random.default_rng(11), POOL)
    second = randomize_composition(parent, np.random.default_rng(11), POOL)
    other = randomize_composition(parent, np.random.default_rng(12), POOL)
    assert first.numbers.tobytes() == second.numbers.tobytes()
    assert first.positions.tobytes() == second.positions.tobytes()
    assert first.cell.array.tobytes() == second.cell.array.tobytes()
    assert first.numbers.tobytes() != other.numbers.tobytes()


def test_parent_untouched(parent):
    before = parent.copy()
    randomize_composition(parent, np.random.default_rng(0), POOL)
    assert parent.positions.tobytes() == before.positions.tobytes()
    assert parent.numbers.tobytes() == before.numbers.tobytes()
    assert parent.cell.array.tobytes() == before.cell.array.tobytes()


def test_single_element_pool():
    parent = bulk('NaCl', 'rocksalt', a=5.64)
    randomized = randomize_composition(parent, np.random.default_rng(0), ['Cu'])
    assert randomized.get_chemical_symbols() == ['Cu', 'Cu']


def test_bad_inputs_refused(parent):
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match='empty'):
        randomize_composition(parent, rng, [])
    with pytest.raises(UnknownElementError, match='Xx'):
        randomize_composition(parent, rng, ['Si', 'Xx'])
    with pytest.raises(ValueError, match='span three dimensions'):
        randomize_composition(Atoms('H2', positions=[(0, 0, 0), (0, 0, 0.74)]), rng, POOL)
    with pytest.raises(ValueError, match='empty structure'):
        randomize_composition(Atoms(cell=np.eye(3)), rng, POOL)
