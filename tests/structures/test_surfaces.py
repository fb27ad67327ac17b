"""Tests for the ``mc3d-surface`` generator."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.neighborlist import neighbor_list

from aiida_mad.structures import checks
from aiida_mad.structures.surfaces import distinct_miller_indices, make_slab

A_CU = 3.6
NN_CU = A_CU / math.sqrt(2)


@pytest.fixture(scope='module')
def copper() -> Atoms:
    """Primitive fcc copper: its own (111) is the conventional (100), so the cell convention shows."""
    return bulk('Cu', 'fcc', a=A_CU)


@pytest.fixture(scope='module')
def salt() -> Atoms:
    return bulk('NaCl', 'rocksalt', a=5.64)


def assert_slab_geometry(slab: Atoms, max_atoms: int = 60) -> None:
    assert tuple(slab.pbc) == (True, True, False)
    cell = slab.cell.array
    # a and b lie in the xy plane, c is along +z: the normal lattice vector is orthogonal to the surface.
    assert cell[0, 2] == 0.0
    assert cell[1, 2] == 0.0
    assert cell[2, 0] == 0.0
    assert cell[2, 1] == 0.0
    assert cell[2, 2] > 0.0
    assert abs(np.dot(cell[2], cell[0])) < 1e-12
    assert abs(np.dot(cell[2], cell[1])) < 1e-12
    # right-handed cell, atoms inside the box along z with vacuum on both sides
    assert np.linalg.det(cell) > 0
    z = slab.positions[:, 2]
    assert z.min() > 0.0
    assert z.max() < cell[2, 2]
    assert 0 < len(slab) <= max_atoms
    # in-plane wrapped
    scaled = np.linalg.solve(cell.T, slab.positions.T).T
    assert np.all(scaled[:, :2] >= -1e-12)
    assert np.all(scaled[:, :2] < 1 + 1e-12)


def nearest_neighbour_distances(atoms: Atoms, cutoff: float = 3.0) -> np.ndarray:
    i, d = neighbor_list('id', atoms, cutoff)
    return np.array([d[i == k].min() for k in range(len(atoms))])


def test_distinct_indices_of_a_cubic_crystal(copper):
    indices = distinct_miller_indices(copper, 3)
    assert all(max(abs(i) for i in hkl) <= 3 for hkl in indices)
    assert all(isinstance(i, int) for hkl in indices for i in hkl)
    # For the cubic point group, planes are equivalent exactly when their sorted absolute indices agree: the
    # families are the reduced triples of 0..3, independently enumerated here.
    families = {
        tuple(sorted(map(abs, hkl)))
        for hkl in itertools.product(range(-3, 4), repeat=3)
        if any(hkl) and math.gcd(*hkl) == 1
    }
    assert len(indices) == len(families) == 13
    assert {tuple(sorted(map(abs, hkl))) for hkl in indices} == families
    # conventional-cell indices: (1, 0, 0) is there, and (1, 1, 1) is a different family
    assert (1, 0, 0) in indices
    assert (1, 1, 1) in indices


def test_distinct_indices_rejects_bad_input(copper):
    with pytest.raises(ValueError, match='max_index'):
        distinct_miller_indices(copper, 0)
    with pytest.raises(ValueError, match='periodic'):
        distinct_miller_indices(Atoms('Cu2', positions=[[0, 0, 0], [2.5, 0, 0]]), 1)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_random_slab_is_a_valid_cut(copper, seed):
    slab = make_slab(copper, np.random.default_rng(seed))
    assert slab.info['miller_index'] in distinct_miller_indices(copper, 3)
    assert max(abs(i) for i in slab.info['miller_index']) <= 3
    assert 0 <= slab.info['termination'] < slab.info['n_terminations']
    assert slab.info['parent_formula'] == 'Cu'
    assert_slab_geometry(slab)
    # A rigid cut keeps every bulk distance: each atom's nearest neighbour is still at the bulk distance.
    assert np.allclose(nearest_neighbour_distances(slab), NN_CU, atol=1e-6)


def test_fcc_111_and_100_layers(copper):
    rng = np.random.default_rng(0)
    slab = make_slab(copper, rng, miller_index=(1, 1, 1))
    assert_slab_geometry(slab)
    assert slab.info['miller_index'] == (1, 1, 1)
    a, b = slab.cell.lengths()[:2]
    assert a == pytest.approx(NN_CU, abs=1e-6)
    assert b == pytest.approx(NN_CU, abs=1e-6)
    assert slab.cell.angles()[2] in (pytest.approx(60.0, abs=1e-6), pytest.approx(120.0, abs=1e-6))
    # one atom per layer, layers d(111) = a / sqrt(3) apart, at least min_slab_size (8 Å) thick
    layers = np.sort(slab.positions[:, 2])
    assert np.allclose(np.diff(layers), A_CU / math.sqrt(3), atol=1e-6)
    assert layers[-1] - layers[0] >= 8.0 - A_CU / math.sqrt(3)

    slab = make_slab(copper, rng, miller_index=(1, 0, 0))
    assert slab.cell.lengths()[:2] == pytest.approx([NN_CU, NN_CU], abs=1e-6)
    assert slab.cell.angles()[2] == pytest.approx(90.0, abs=1e-6)
    assert np.allclose(np.diff(np.sort(slab.positions[:, 2])), A_CU / 2, atol=1e-6)


def test_salt_slab_keeps_stoichiometry(salt):
    slab = make_slab(salt, np.random.default_rng(3), miller_index=(1, 1, 0))
    assert_slab_geometry(slab)
    symbols = slab.get_chemical_symbols()
    assert symbols.count('Na') == symbols.count('Cl') > 0
    assert np.allclose(nearest_neighbour_distances(slab, 3.5), 5.64 / 2, atol=1e-6)


def test_slab_passes_plausibility_checks(salt):
    slab = make_slab(salt, np.random.default_rng(5), max_index=2)
    assert checks.check_structure(slab) == []


def test_same_seed_same_slab(salt):
    first = make_slab(salt, np.random.default_rng(42), max_index=2)
    second = make_slab(salt, np.random.default_rng(42), max_index=2)
    assert first.positions.tobytes() == second.positions.tobytes()
    assert first.cell.array.tobytes() == second.cell.array.tobytes()
    assert first.numbers.tobytes() == second.numbers.tobytes()
    assert first.info == second.info


def test_different_seeds_give_different_planes(copper):
    planes = [make_slab(copper, np.random.default_rng(seed), max_index=2).info['miller_index'] for seed in range(6)]
    assert len(set(planes)) > 1


def test_max_atoms_is_respected(copper):
    slab = make_slab(copper, np.random.default_rng(0), max_index=2, max_atoms=6)
    assert len(slab) <= 6
    assert_slab_geometry(slab, max_atoms=6)
    with pytest.raises(ValueError, match='Cu'):
        make_slab(copper, np.random.default_rng(0), max_index=1, max_atoms=2)


def test_parent_is_left_alone(salt):
    before = salt.copy()
    make_slab(salt, np.random.default_rng(1), max_index=1)
    assert salt == before


@pytest.mark.parametrize(
    'kwargs',
    [{'min_slab_size': 0.0}, {'vacuum': -1.0}, {'max_atoms': 0}, {'max_index': 0}, {'miller_index': (0, 0, 0)}],
)
def test_bad_parameters(copper, kwargs):
    with pytest.raises(ValueError):
        make_slab(copper, np.random.default_rng(0), **kwargs)
