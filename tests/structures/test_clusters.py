"""Tests for the ``mc3d-cluster`` generator."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.neighborlist import neighbor_list

from aiida_mad.structures.checks import check_structure
from aiida_mad.structures.clusters import CLUSTER_PADDING, choose_parent, cut_cluster
from aiida_mad.structures.rattle import rattle


def _parents():
    rattled = rattle(bulk('GaAs', 'zincblende', a=5.65, cubic=True), np.random.default_rng(0))
    return {
        'Cu-fcc (1 atom)': bulk('Cu', 'fcc', a=3.6),
        'Mg-hcp': bulk('Mg', 'hcp', a=3.21, c=5.21),
        'NaCl': bulk('NaCl', 'rocksalt', a=5.64),
        'GaAs-rattled': rattled,
    }


@pytest.mark.parametrize('name', list(_parents()))
def test_cluster_atoms_are_the_nearest_neighbours(name):
    parent = _parents()[name]
    # ASE's periodic neighbour list of the parent, for every atom: 6 Å holds well over 7 neighbours here.
    first, second, all_vectors = neighbor_list('ijD', parent, 6.0)
    rng = np.random.default_rng(100)
    for _ in range(30):
        cluster = cut_cluster(parent, rng)
        centre = cluster.info['cluster_centre_index']
        assert 0 <= centre < len(parent)
        assert 2 <= len(cluster) <= 8
        assert cluster[0].symbol == parent[centre].symbol
        assert cluster.info['cluster_parent_indices'][0] == centre
        assert list(cluster.numbers) == list(parent.numbers[cluster.info['cluster_parent_indices']])

        indices, vectors = second[first == centre], all_vectors[first == centre]
        assert len(indices) >= len(cluster) - 1
        parent_distances = np.linalg.norm(vectors, axis=1)
        cluster_vectors = cluster.positions[1:] - cluster.positions[0]
        cluster_distances = np.linalg.norm(cluster_vectors, axis=1)
        # The cluster holds the n - 1 nearest neighbours: the same sorted distances as the parent's list.
        expected = np.sort(parent_distances)[: len(cluster) - 1]
        assert np.allclose(np.sort(cluster_distances), expected, rtol=0, atol=1e-9)
        # And each cluster atom is a real neighbour: same vector from the centre and same species.
        for vector, number in zip(cluster_vectors, cluster.numbers[1:], strict=True):
            match = np.linalg.norm(vectors - vector, axis=1) < 1e-9
            assert match.any()
            assert number in parent.numbers[indices[match]]


def test_sizes_uniform_between_bounds():
    parent = bulk('Si', 'diamond', a=5.43)
    rng = np.random.default_rng(7)
    sizes = Counter(len(cut_cluster(parent, rng)) for _ in range(700))
    assert set(sizes) == set(range(2, 9))
    expected = 700 / 7
    chi2 = sum((count - expected) ** 2 / expected for count in sizes.values())
    # 6 degrees of freedom: chi2 > 25 has a probability of about 3e-4 for a uniform draw.
    assert chi2 < 25, sizes


def test_custom_size_bounds():
    parent = bulk('Cu', 'fcc', a=3.6)
    rng = np.random.default_rng(1)
    sizes = {len(cut_cluster(parent, rng, min_atoms=4, max_atoms=5)) for _ in range(50)}
    assert sizes == {4, 5}
    assert len(cut_cluster(parent, rng, min_atoms=13, max_atoms=13)) == 13


def test_one_atom_cell_gives_non_periodic_cluster_in_a_box():
    parent = bulk('Cu', 'fcc', a=3.6)
    rng = np.random.default_rng(3)
    for _ in range(20):
        cluster = cut_cluster(parent, rng)
        assert not cluster.pbc.any()
        assert cluster.info['cluster_centre_index'] == 0
        assert set(cluster.info['cluster_parent_indices']) == {0}
        extent = np.ptp(cluster.positions, axis=0)
        assert np.allclose(cluster.cell.array, np.diag(extent + CLUSTER_PADDING))
        assert np.allclose(cluster.positions.min(axis=0), CLUSTER_PADDING / 2)
        assert check_structure(cluster) == []


def test_equidistant_neighbours_chosen_at_random():
    parent = bulk('Cu', 'fcc', a=3.6)
    rng = np.random.default_rng(4)
    angles = set()
    for _ in range(200):
        cluster = cut_cluster(parent, rng, min_atoms=3, max_atoms=3)
        first, second = cluster.positions[1:] - cluster.positions[0]
        cosine = first @ second / np.linalg.norm(first) / np.linalg.norm(second)
        angles.add(round(float(np.degrees(np.arccos(np.clip(cosine, -1, 1))))))
    # Two of the twelve fcc nearest neighbours make 60, 90, 120 or 180 degrees at the centre.
    assert angles == {60, 90, 120, 180}


def test_clusters_pass_the_checks():
    rng = np.random.default_rng(5)
    for parent in _parents().values():
        for _ in range(10):
            assert check_structure(cut_cluster(parent, rng)) == []


def test_deterministic_and_seed_dependent():
    parent = _parents()['GaAs-rattled']
    first = cut_cluster(parent, np.random.default_rng(21))
    second = cut_cluster(parent, np.random.default_rng(21))
    assert first.positions.tobytes() == second.positions.tobytes()
    assert first.numbers.tobytes() == second.numbers.tobytes()
    assert first.cell.array.tobytes() == second.cell.array.tobytes()
    others = {cut_cluster(parent, np.random.default_rng(seed)).positions.tobytes() for seed in range(22, 32)}
    assert len(others | {first.positions.tobytes()}) > 5


def test_partly_periodic_parent():
    layer = Atoms(
        'BN', positions=[(0, 0, 10), (1.252, 0.723, 10)], cell=[(2.504, 0, 0), (-1.252, 2.169, 0), (0, 0, 20)]
    )
    layer.pbc = (True, True, False)
    rng = np.random.default_rng(6)
    for _ in range(10):
        cluster = cut_cluster(layer, rng, min_atoms=8, max_atoms=8)
        assert len(cluster) == 8
        # All atoms stay in the plane: no images along the non-periodic z.
        assert np.ptp(cluster.positions[:, 2]) < 1e-12


def test_non_periodic_parent_limits_the_size():
    methane = molecule('CH4')
    rng = np.random.default_rng(8)
    sizes = {len(cut_cluster(methane, rng)) for _ in range(60)}
    assert sizes == {2, 3, 4, 5}
    with pytest.raises(ValueError, match='fewer than min_atoms'):
        cut_cluster(Atoms('He'), rng)


def test_bad_arguments_refused():
    parent = bulk('Cu', 'fcc', a=3.6)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match='min_atoms'):
        cut_cluster(parent, rng, min_atoms=5, max_atoms=4)
    with pytest.raises(ValueError, match='min_atoms'):
        cut_cluster(parent, rng, min_atoms=0)
    with pytest.raises(ValueError, match='empty'):
        cut_cluster(Atoms(cell=np.eye(3), pbc=True), rng)
    flat = Atoms('H', cell=[(1, 0, 0), (2, 0, 0), (0, 0, 1)], pbc=True)
    with pytest.raises(ValueError, match='degenerate'):
        cut_cluster(flat, rng)


def test_choose_parent():
    parents = [
        bulk('Cu', 'fcc', a=3.6),
        bulk('Si', 'diamond', a=5.43),
        bulk('Fe', 'bcc', a=2.87),
        bulk('MgO', 'rocksalt', a=4.21),
    ]
    rng = np.random.default_rng(9)
    counts = Counter(choose_parent(parents, rng, min_atoms=2) for _ in range(600))
    assert set(counts) == {1, 3}
    assert 240 < counts[1] < 360
    assert set(Counter(choose_parent(parents, rng) for _ in range(200))) == {0, 1, 2, 3}
    with pytest.raises(ValueError, match='at least 3'):
        choose_parent(parents, rng, min_atoms=3)
