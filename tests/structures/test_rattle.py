"""Tests for the ``mc3d-rattled`` generator."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.data import covalent_radii

from aiida_mad.structures.rattle import rattle


@pytest.fixture(scope='module')
def big_mixed():
    """Six thousand atoms of three elements with very different covalent radii (plausibility does not matter)."""
    rng = np.random.default_rng(1234)
    symbols = ['H', 'Si', 'Cs'] * 2000
    return Atoms(symbols, positions=rng.uniform(0, 50, size=(6000, 3)), cell=np.eye(3) * 50, pbc=True)


def test_displacement_std_per_element(big_mixed):
    rattled = rattle(big_mixed, np.random.default_rng(7))
    displacement = rattled.positions - big_mixed.positions
    for number in np.unique(big_mixed.numbers):
        sigma = 0.2 * covalent_radii[number]
        mask = big_mixed.numbers == number
        # 6000 samples per element: the relative standard error of the std is about 1 %.
        std = displacement[mask].std()
        assert abs(std / sigma - 1) < 0.05, (number, std, sigma)
        # Each Cartesian component on its own (2000 samples, about 1.6 %) has the same spread.
        for component in range(3):
            assert abs(displacement[mask, component].std() / sigma - 1) < 0.08, (number, component)


def test_scale_parameter(big_mixed):
    rattled = rattle(big_mixed, np.random.default_rng(8), scale=0.05)
    displacement = rattled.positions - big_mixed.positions
    mask = big_mixed.numbers == 55
    assert abs(displacement[mask].std() / (0.05 * covalent_radii[55]) - 1) < 0.05
    unchanged = rattle(big_mixed, np.random.default_rng(8), scale=0.0)
    assert np.array_equal(unchanged.positions, big_mixed.positions)


def test_zero_mean_and_uncorrelated_components(big_mixed):
    rattled = rattle(big_mixed, np.random.default_rng(9))
    normalized = (rattled.positions - big_mixed.positions) / (0.2 * covalent_radii[big_mixed.numbers])[:, None]
    # Each normalized component is N(0, 1): its mean over 6000 atoms has a standard error of about 0.013.
    assert np.all(np.abs(normalized.mean(axis=0)) < 0.06)
    correlation = np.corrcoef(normalized.T)
    assert np.all(np.abs(correlation[np.triu_indices(3, 1)]) < 0.06)


def test_same_seed_identical_different_seed_differs():
    parent = bulk('GaAs', 'zincblende', a=5.65) * (2, 2, 2)
    first = rattle(parent, np.random.default_rng(42))
    second = rattle(parent, np.random.default_rng(42))
    other = rattle(parent, np.random.default_rng(43))
    assert first.positions.tobytes() == second.positions.tobytes()
    assert first.positions.tobytes() != other.positions.tobytes()


def test_copy_keeps_cell_pbc_species_and_parent():
    parent = bulk('NaCl', 'rocksalt', a=5.64)
    parent.pbc = (True, True, False)
    before = parent.positions.copy()
    rattled = rattle(parent, np.random.default_rng(0))
    assert rattled is not parent
    assert np.array_equal(parent.positions, before)
    assert np.array_equal(rattled.cell.array, parent.cell.array)
    assert list(rattled.pbc) == [True, True, False]
    assert rattled.get_chemical_symbols() == parent.get_chemical_symbols()
    assert not np.allclose(rattled.positions, parent.positions)


def test_positions_are_not_wrapped():
    parent = Atoms('H2', positions=[(0, 0, 0), (0, 0, 5)], cell=np.eye(3) * 10, pbc=True)
    rattled = rattle(parent, np.random.default_rng(3), scale=1.0)
    fractional = rattled.get_scaled_positions(wrap=False)
    assert np.any(fractional < 0)


def test_single_atom_parent_refused():
    with pytest.raises(ValueError, match='Cu'):
        rattle(bulk('Cu', 'fcc', a=3.6), np.random.default_rng(0))
    with pytest.raises(ValueError, match='more than one atom'):
        rattle(Atoms(), np.random.default_rng(0))


def test_negative_scale_refused():
    with pytest.raises(ValueError, match='scale'):
        rattle(bulk('Si', 'diamond', a=5.43), np.random.default_rng(0), scale=-0.1)
