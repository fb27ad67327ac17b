"""Tests for the bundled seed structures."""

from __future__ import annotations

import numpy as np
import pytest
from ase.neighborlist import natural_cutoffs, neighbor_list
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from aiida_mad.structures.checks import check_structure
from aiida_mad.structures.seeds import (
    SEED_SOURCES,
    all_seeds,
    bulk_seeds,
    molecular_crystal_seeds,
    molecule_seeds,
    two_d_seeds,
)


def _molecules(atoms):
    """Return the chemical formula of every bonded fragment (1.2 x natural cutoffs, periodic images included)."""
    # Plain covalent radii sum to 1.07 Å for C-H, shorter than the 1.09 Å bond of ASE's methane.
    first, second = neighbor_list('ij', atoms, natural_cutoffs(atoms, mult=1.2))
    graph = coo_matrix((np.ones(first.size), (first, second)), shape=(len(atoms), len(atoms)))
    count, labels = connected_components(graph, directed=False)
    return sorted(atoms[labels == label].get_chemical_formula() for label in range(count))


def _all():
    return [
        pytest.param(source, name, atoms, id=f'{source}/{name}')
        for source, seeds in all_seeds().items()
        for name, atoms in seeds.items()
    ]


def test_sources():
    seeds = all_seeds()
    assert tuple(seeds) == SEED_SOURCES == ('bulk', '2d', 'molcrys', 'molecules')
    assert all(seeds.values())


@pytest.mark.parametrize(('source', 'name', 'atoms'), _all())
def test_every_seed_passes_the_checks(source, name, atoms):
    assert check_structure(atoms) == [], (source, name)
    # A seed should not be close to the refusal threshold either.
    assert check_structure(atoms, min_distance_factor=0.8) == [], (source, name)


def test_bulk_seeds_cover_elements_binaries_and_a_ternary():
    seeds = bulk_seeds()
    assert len(seeds) >= 6
    species_counts = {name: len(set(atoms.get_chemical_symbols())) for name, atoms in seeds.items()}
    assert {1, 2, 3} <= set(species_counts.values())
    assert seeds['SrTiO3-perovskite'].get_chemical_formula() == 'O3SrTi'
    assert seeds['Si-diamond'].get_volume() == pytest.approx(5.431**3 / 4)
    for atoms in seeds.values():
        assert atoms.pbc.all()


def test_two_d_seed():
    (layer,) = two_d_seeds().values()
    assert list(layer.pbc) == [True, True, False]
    assert layer.get_chemical_formula() == 'BN'
    # Non-periodic axis along z, orthogonal to the plane, with about 20 Å of cell and the layer in the middle.
    assert np.allclose(layer.cell.array[2], [0, 0, 20.0])
    assert np.allclose(layer.cell.array[:2, 2], 0)
    assert np.allclose(layer.positions[:, 2], 10.0)
    assert np.linalg.norm(layer.positions[1] - layer.positions[0]) == pytest.approx(2.504 / np.sqrt(3))


def test_molecular_crystal_has_intact_molecules():
    (crystal,) = molecular_crystal_seeds().values()
    assert crystal.pbc.all()
    assert _molecules(crystal) == ['CO2'] * 4
    first, second, distances = neighbor_list('ijd', crystal, 3.0)
    assert np.allclose(distances[crystal.numbers[first] != crystal.numbers[second]], 1.153, atol=0.01)
    assert (distances > 1.1).all()


def test_molecules_are_intact_in_a_box():
    seeds = molecule_seeds()
    assert set(seeds) >= {'H2O', 'CH4', 'NH3', 'CO2'}
    for name, atoms in seeds.items():
        assert not atoms.pbc.any()
        assert _molecules(atoms) == [atoms.get_chemical_formula()], name
        assert atoms.positions.min() > 4.9
        assert (atoms.cell.lengths() - atoms.positions.max(axis=0) > 4.9).all()


def test_deterministic_and_fresh():
    first, second = all_seeds(), all_seeds()
    for source, seeds in first.items():
        for name, atoms in seeds.items():
            other = second[source][name]
            assert atoms.positions.tobytes() == other.positions.tobytes()
            assert atoms.numbers.tobytes() == other.numbers.tobytes()
            assert atoms.cell.array.tobytes() == other.cell.array.tobytes()
            assert atoms is not other
    first['bulk']['Si-diamond'].positions += 1.0
    assert np.allclose(bulk_seeds()['Si-diamond'].positions[0], 0.0)
