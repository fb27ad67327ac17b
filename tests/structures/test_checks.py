"""Tests for the plausibility checks."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule

from aiida_mad.structures.checks import (
    MAX_REPORTED_PAIRS,
    ImplausibleStructureError,
    assert_plausible,
    check_structure,
)


def test_plausible_structures_give_no_reasons():
    water = molecule('H2O')  # cell of zeros, non-periodic: allowed
    layer = Atoms('BN', positions=[(0, 0, 0), (1.25, 0.72, 0)], cell=[(2.5, 0, 0), (-1.25, 2.17, 0), (0, 0, 0)])
    layer.pbc = (True, True, False)
    for atoms in (bulk('Si', 'diamond', a=5.43), bulk('Cu', 'fcc', a=3.6), water, layer):
        assert check_structure(atoms) == []
        assert_plausible(atoms)


def test_no_atoms():
    reasons = check_structure(Atoms(cell=np.eye(3) * 5, pbc=True))
    assert reasons == ['the structure has no atoms']


def test_non_finite_position_names_the_atom():
    atoms = bulk('Si', 'diamond', a=5.43, cubic=True)
    atoms.positions[3, 1] = np.nan
    atoms.positions[5, 0] = np.inf
    reasons = check_structure(atoms)
    assert len(reasons) == 1
    assert 'non-finite position' in reasons[0]
    assert '3 (Si)' in reasons[0]
    assert '5 (Si)' in reasons[0]
    assert '4 (Si)' not in reasons[0]


def test_non_finite_cell_refused_even_along_non_periodic_direction():
    atoms = Atoms('H2', positions=[(0, 0, 0), (0, 0, 0.74)], cell=[5, 5, 5], pbc=(True, True, False))
    atoms.cell.array[2, 2] = np.inf
    reasons = check_structure(atoms)
    assert reasons == ['non-finite cell vector(s) c']


@pytest.mark.parametrize(
    ('cell', 'pbc', 'directions', 'kind'),
    [
        ([(4, 0, 0), (0, 4, 0), (4, 4, 0)], True, 'a, b, c', 'volume'),
        ([(4, 0, 0), (0, 4, 0), (0, 0, 0)], True, 'a, b, c', 'volume'),
        ([(4, 0, 0), (8, 0, 0), (0, 0, 10)], (True, True, False), 'a, b', 'area'),
        ([(0, 0, 0), (0, 4, 0), (0, 0, 10)], (True, False, False), 'a', 'length'),
    ],
)
def test_degenerate_periodic_cell(cell, pbc, directions, kind):
    atoms = Atoms('H', positions=[(0.1, 0.2, 0.3)], cell=cell, pbc=pbc)
    reasons = check_structure(atoms)
    assert len(reasons) == 1
    assert f'degenerate cell along the periodic direction(s) {directions}: {kind}' in reasons[0]


def test_zero_cell_along_non_periodic_directions_is_fine():
    atoms = Atoms('H2', positions=[(0, 0, 0), (0, 0, 0.74)], cell=[(0, 0, 0), (0, 0, 0), (0, 0, 0)], pbc=False)
    assert check_structure(atoms) == []
    wire = Atoms('H', positions=[(0, 0, 0)], cell=[(2.0, 0, 0), (0, 0, 0), (0, 0, 0)], pbc=(True, False, False))
    assert check_structure(wire) == []


def test_elements_outside_pool_are_all_listed():
    atoms = Atoms('SiOCSi', positions=np.arange(12).reshape(4, 3) * 1.0, cell=np.eye(3) * 30, pbc=True)
    reasons = check_structure(atoms, pool=['Si', 'Ge'])
    assert reasons == ['element(s) not in the element pool: C, O']


def test_default_pool_is_mad_elements():
    atoms = Atoms('AtH', positions=[(0, 0, 0), (3, 0, 0)], cell=np.eye(3) * 20, pbc=True)
    reasons = check_structure(atoms)
    assert reasons == ['element(s) not in the MAD elements: At']


def test_close_pair_names_pair_and_distance():
    atoms = Atoms('OH2', positions=[(0, 0, 0), (0.3, 0, 0), (5, 0, 0)], cell=np.eye(3) * 10, pbc=True)
    reasons = check_structure(atoms)
    assert len(reasons) == 1
    assert reasons[0].startswith('atoms 0 (O) and 1 (H) are 0.300 Å apart')
    assert 'periodic image' not in reasons[0]


def test_close_pair_across_the_periodic_boundary():
    atoms = Atoms('Si2', positions=[(0.1, 5, 5), (9.9, 5, 5)], cell=np.eye(3) * 10, pbc=True)
    reasons = check_structure(atoms)
    assert len(reasons) == 1
    assert 'atoms 0 (Si) and 1 (Si) (periodic image (-1, 0, 0)) are 0.200 Å apart' in reasons[0]
    # Without periodicity along x the two atoms are 9.8 Å apart.
    atoms.pbc = (False, True, True)
    assert check_structure(atoms) == []


def test_atom_too_close_to_its_own_image():
    atoms = Atoms('Cu', positions=[(0, 0, 0)], cell=[0.8, 5, 5], pbc=True)
    reasons = check_structure(atoms)
    assert len(reasons) == 1  # the +a and -a images are one pair
    assert 'atoms 0 (Cu) and 0 (Cu) (periodic image (1, 0, 0)) are 0.800 Å apart' in reasons[0]


def test_min_distance_factor_is_used():
    atoms = Atoms('H2', positions=[(0, 0, 0), (0, 0, 0.74)], cell=np.eye(3) * 10, pbc=True)
    assert check_structure(atoms) == []
    reasons = check_structure(atoms, min_distance_factor=1.5)
    assert len(reasons) == 1
    assert '0.740 Å apart' in reasons[0]
    assert check_structure(atoms, min_distance_factor=0.0) == []
    with pytest.raises(ValueError, match='min_distance_factor'):
        check_structure(atoms, min_distance_factor=-1.0)


@pytest.mark.parametrize(('distance', 'refused'), [(0.305, True), (0.315, False)])
def test_threshold_is_half_the_sum_of_covalent_radii(distance, refused):
    # H has a covalent radius of 0.31 Å, so the default limit for H-H is 0.31 Å.
    atoms = Atoms('H2', positions=[(0, 0, 0), (distance, 0, 0)], cell=np.eye(3) * 10, pbc=True)
    assert bool(check_structure(atoms)) is refused


def test_many_close_pairs_are_capped():
    atoms = Atoms('C20', positions=np.zeros((20, 3)), cell=np.eye(3) * 10, pbc=True)
    reasons = check_structure(atoms)
    pairs = 20 * 19 // 2
    assert len(reasons) == MAX_REPORTED_PAIRS + 1
    assert reasons[-1].startswith(f'{pairs - MAX_REPORTED_PAIRS} more pair(s)')


def test_several_reasons_together():
    atoms = Atoms('AtAt', positions=[(0, 0, 0), (0.1, 0, 0)], cell=np.eye(3) * 10, pbc=True)
    reasons = check_structure(atoms)
    assert len(reasons) == 2
    assert 'At' in reasons[0]
    assert '0.100 Å apart' in reasons[1]


def test_assert_plausible_raises_with_all_reasons():
    atoms = Atoms('OH2', positions=[(0, 0, 0), (0.3, 0, 0), (0, 0.2, 0)], cell=np.eye(3) * 10, pbc=True)
    with pytest.raises(ImplausibleStructureError) as excinfo:
        assert_plausible(atoms, pool=['O'])
    error = excinfo.value
    assert isinstance(error, ValueError)
    assert len(error.reasons) == 3
    for reason in error.reasons:
        assert reason in str(error)


def test_a_few_hundred_atoms_one_close_pair_found():
    # A 216-atom supercell passes; moving one atom next to another, across the periodic boundary, gives exactly that
    # pair (the neighbour list with per-element cutoffs finds it among ~23 000 pairs).
    atoms = bulk('Si', 'diamond', a=5.43, cubic=True) * (3, 3, 3)
    rng = np.random.default_rng(0)
    atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
    assert check_structure(atoms) == []

    first = int(np.argmin(atoms.positions[:, 0]))
    partner = int(np.argmax(atoms.positions[:, 0]))
    atoms.positions[partner] = atoms.positions[first] - [0.3, 0.0, 0.0] + atoms.cell.array[0]
    reasons = check_structure(atoms)
    assert len(reasons) == 1
    low, high = sorted((first, partner))
    assert reasons[0].startswith(f'atoms {low} (Si) and {high} (Si) (periodic image')
    assert 'are 0.300 Å apart' in reasons[0]
