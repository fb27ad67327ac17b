"""Cells for DFT: dimensionality from pbc, vacuum along non-periodic directions, 2D orientation, refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.neighborlist import neighbor_list

from aiida_mad.structures.cells import DimensionalityError, dimensionality, prepare_cell

VACUUM = 25.0


def random_rotation(seed: int) -> np.ndarray:
    """Return a random proper rotation matrix."""
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q @ np.diag(np.sign(np.diag(r)))
    return q if np.linalg.det(q) > 0 else -q


def buckled_layer() -> Atoms:
    """Return a 4-atom buckled layer (two silicene-like honeycombs of Si and Ge), periodic along a and b only."""
    a = 3.9
    cell = [[a, 0, 0], [a / 2 * 0.9, a * math.sqrt(3) / 2, 0], [0.3, -0.2, 7.0]]
    atoms = Atoms(
        'SiGeSiGe',
        cell=cell,
        scaled_positions=[[0, 0, 0.40], [1 / 3, 1 / 3, 0.46], [0.5, 0.1, 0.43], [0.8, 0.6, 0.49]],
        pbc=(True, True, False),
    )
    return atoms


def with_nonperiodic_axis(atoms: Atoms, axis: int, rotation: np.ndarray) -> Atoms:
    """Return ``atoms`` (non-periodic along c) relabelled so that c becomes lattice vector ``axis``, then rotated."""
    cell = np.array(atoms.cell)
    order = {0: [2, 0, 1], 1: [1, 2, 0], 2: [0, 1, 2]}[axis]
    pbc = [True, True, True]
    pbc[axis] = False
    return Atoms(
        atoms.get_chemical_symbols(),
        positions=atoms.positions @ rotation.T,
        cell=cell[order] @ rotation.T,
        pbc=pbc,
    )


def sorted_distances(atoms: Atoms, cutoff: float = 6.0) -> np.ndarray:
    """Return all interatomic distances up to ``cutoff``, periodic images included, sorted."""
    return np.sort(neighbor_list('d', atoms, cutoff))


def test_dimensionality_from_pbc():
    atoms = bulk('Si')
    assert dimensionality(atoms) == '3D'
    for pbc in [(True, True, False), (True, False, True), (False, True, True)]:
        atoms.pbc = pbc
        assert dimensionality(atoms) == '2D'
    atoms.pbc = False
    assert dimensionality(atoms) == '0D'


@pytest.mark.parametrize('pbc', [(True, False, False), (False, True, False), (False, False, True)])
def test_1d_refused_with_a_clear_message(pbc):
    atoms = Atoms('C2', positions=[[0, 0, 0], [1.3, 0, 0]], cell=[2.6, 10, 10], pbc=pbc)
    message = rf'C2: 1D periodicity {re_tuple(pbc)} is not supported \(MAD covers 3D, 2D .*and 0D\)'
    with pytest.raises(DimensionalityError, match=message):
        dimensionality(atoms)
    with pytest.raises(DimensionalityError, match=message):
        prepare_cell(atoms, vacuum=VACUUM)


def re_tuple(values) -> str:
    return r'\(' + r', '.join(str(bool(v)) for v in values) + r'\)'


def test_3d_unchanged():
    atoms = bulk('Si', 'diamond', a=5.43) * (1, 2, 1)
    prepared = prepare_cell(atoms, vacuum=VACUUM)
    assert prepared is not atoms
    np.testing.assert_array_equal(prepared.cell, atoms.cell)
    np.testing.assert_array_equal(prepared.positions, atoms.positions)
    assert prepared.pbc.all()


def test_2d_already_along_z():
    layer = buckled_layer()
    prepared = prepare_cell(layer, vacuum=VACUUM)
    cell = np.array(prepared.cell)
    assert tuple(prepared.pbc) == (True, True, False)
    # The in-plane vectors keep their metric (rigid rotation putting a along x), c is along z.
    np.testing.assert_allclose(cell[:2] @ cell[:2].T, np.array(layer.cell)[:2] @ np.array(layer.cell)[:2].T, atol=1e-9)
    np.testing.assert_allclose(cell[0, 1:], 0.0, atol=1e-12)
    np.testing.assert_allclose(cell[:2, 2], 0.0, atol=0)
    extent = np.ptp(layer.positions[:, 2])  # the layer's normal is z: a and b have no z component
    np.testing.assert_allclose(cell[2], [0, 0, extent + VACUUM], atol=1e-9)
    # Centred along z: vacuum / 2 on each side.
    assert prepared.positions[:, 2].min() == pytest.approx(VACUUM / 2)
    assert prepared.positions[:, 2].max() == pytest.approx(cell[2, 2] - VACUUM / 2)
    np.testing.assert_allclose(sorted_distances(prepared), sorted_distances(layer), atol=1e-9)
    np.testing.assert_allclose(prepared.get_all_distances(), layer.get_all_distances(), atol=1e-9)


@pytest.mark.parametrize('axis', [0, 1, 2])
@pytest.mark.parametrize('seed', [1, 2])
def test_2d_rotation_keeps_distances_and_puts_c_along_z(axis, seed):
    layer = buckled_layer()
    given = with_nonperiodic_axis(layer, axis, random_rotation(seed))
    assert dimensionality(given) == '2D'
    prepared = prepare_cell(given, vacuum=VACUUM)
    cell = np.array(prepared.cell)

    assert tuple(prepared.pbc) == (True, True, False)
    assert prepared.get_chemical_symbols() == layer.get_chemical_symbols()
    # a along x, b in the xy plane (positive y), c along z with length extent + vacuum.
    np.testing.assert_allclose(cell[0, 1:], 0.0, atol=1e-9)
    assert cell[0, 0] > 0 and cell[1, 1] > 0
    np.testing.assert_allclose(cell[:2, 2], 0.0, atol=0)
    extent = np.ptp(layer.positions[:, 2])
    np.testing.assert_allclose(cell[2], [0, 0, extent + VACUUM], atol=1e-9)
    assert prepared.positions[:, 2].min() == pytest.approx(VACUUM / 2)
    # The same 2D lattice, in the cyclic order of the given vectors.
    old = np.array(layer.cell)[:2]
    np.testing.assert_allclose(cell[:2] @ cell[:2].T, old @ old.T, atol=1e-9)
    # A rigid motion: all distances, within the cell and to periodic images in the plane, are kept.
    np.testing.assert_allclose(prepared.get_all_distances(), layer.get_all_distances(), atol=1e-9)
    np.testing.assert_allclose(sorted_distances(prepared), sorted_distances(layer), atol=1e-9)
    assert np.linalg.det(cell) > 0


def test_2d_with_atoms_across_the_cell_boundary():
    """Positions outside the cell (unwrapped) are moved rigidly, not wrapped: the layer stays in one piece."""
    layer = buckled_layer()
    layer.positions[0] -= np.array(layer.cell)[0]
    prepared = prepare_cell(layer, vacuum=VACUUM)
    np.testing.assert_allclose(prepared.get_all_distances(), layer.get_all_distances(), atol=1e-9)


def test_0d_box():
    atoms = molecule('CH3CH2OH')
    atoms.rotate(37, (1, 2, 3))
    atoms.cell = [[1, 0, 0], [0.5, 1, 0], [0, 0, 0]]  # whatever cell comes with a molecule is ignored
    prepared = prepare_cell(atoms, vacuum=VACUUM)
    extent = np.ptp(atoms.positions, axis=0)
    np.testing.assert_allclose(prepared.cell, np.diag(extent + VACUUM), atol=1e-12)
    assert not prepared.pbc.any()
    np.testing.assert_allclose(prepared.positions.min(axis=0), VACUUM / 2)
    np.testing.assert_allclose(prepared.positions.max(axis=0), extent + VACUUM / 2)
    # Translated only.
    np.testing.assert_allclose(prepared.positions - prepared.positions[0], atoms.positions - atoms.positions[0])


def test_0d_single_atom():
    prepared = prepare_cell(Atoms('Ar', positions=[[1, 2, 3]]), vacuum=VACUUM)
    np.testing.assert_allclose(prepared.cell, np.diag([VACUUM] * 3))
    np.testing.assert_allclose(prepared.positions, [[VACUUM / 2] * 3])


def test_input_not_modified():
    layer = with_nonperiodic_axis(buckled_layer(), 0, random_rotation(3))
    cell, positions, pbc = np.array(layer.cell), layer.positions.copy(), layer.pbc.copy()
    prepare_cell(layer, vacuum=VACUUM)
    np.testing.assert_array_equal(layer.cell, cell)
    np.testing.assert_array_equal(layer.positions, positions)
    np.testing.assert_array_equal(layer.pbc, pbc)


@pytest.mark.parametrize(
    'cell',
    [
        [[3, 0, 0], [6, 0, 0], [0, 0, 10]],  # parallel in-plane vectors
        [[0, 0, 0], [0, 3, 0], [0, 0, 10]],  # a zero in-plane vector
        [[3, 0, 0], [0, 0, 0], [0, 0, 10]],  # b zero
    ],
    ids=['parallel', 'zero-a', 'zero-b'],
)
def test_degenerate_2d_refused(cell):
    atoms = Atoms('C2', positions=[[0, 0, 0], [1.4, 0.5, 0]], cell=cell, pbc=(True, True, False))
    with pytest.raises(DimensionalityError, match=r'C2: the two periodic lattice vectors are degenerate'):
        prepare_cell(atoms, vacuum=VACUUM)


@pytest.mark.parametrize('vacuum', [0.0, -5.0])
def test_vacuum_must_be_positive(vacuum):
    with pytest.raises(ValueError, match='the vacuum must be positive'):
        prepare_cell(molecule('H2O'), vacuum=vacuum)
