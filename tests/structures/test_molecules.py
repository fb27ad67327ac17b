"""Tests for the ``shiftml-molfrags`` generator."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from scipy.spatial.transform import Rotation

from aiida_mad.structures.molecules import VACUUM, is_neutral, molecular_fragments, split_molecules

#: A triclinic cell, so that unwrapping must use the full cell and not only its diagonal.
CELL = np.array([[7.0, 0.0, 0.0], [1.2, 7.5, 0.0], [-0.8, 0.9, 8.0]])

#: Molecule centres in scaled coordinates, all on a face, an edge or a corner of the cell so that wrapping breaks them.
CENTRES = [[0.0, 0.0, 0.0], [0.5, 0.0, 0.5], [0.0, 0.4, 0.0], [0.3, 0.6, 0.0]]
NAMES = ['H2O', 'CO2', 'H2O', 'CO2']


def build_crystal() -> tuple[Atoms, list[Atoms]]:
    """Return a crystal of two water and two CO2 molecules, wrapped into the cell, and the intact molecules."""
    parts = []
    for k, (name, centre) in enumerate(zip(NAMES, CENTRES, strict=True)):
        part = molecule(name)
        part.positions = part.positions @ Rotation.random(random_state=k).as_matrix().T + np.dot(centre, CELL)
        parts.append(part)
    crystal = parts[0].copy()
    for part in parts[1:]:
        crystal += part
    crystal.cell = CELL
    crystal.pbc = True
    crystal.wrap()
    return crystal, parts


@pytest.fixture
def crystal() -> tuple[Atoms, list[Atoms]]:
    return build_crystal()


def test_wrapping_really_breaks_the_molecules(crystal):
    """Guard for the tests below: in the wrapped crystal, the molecules are not whole."""
    wrapped, parts = crystal
    broken = 0
    for k, part in enumerate(parts):
        raw = wrapped[3 * k : 3 * k + 3].get_all_distances()
        broken += not np.allclose(raw, part.get_all_distances(), atol=1e-6)
    assert broken == len(parts)


def test_split_molecules_makes_them_whole(crystal):
    wrapped, parts = crystal
    molecules = split_molecules(wrapped)
    assert len(molecules) == 4
    for k, (mol, part) in enumerate(zip(molecules, parts, strict=True)):
        assert mol.info['parent_indices'] == [3 * k, 3 * k + 1, 3 * k + 2]
        assert mol.get_chemical_formula() == part.get_chemical_formula()
        assert mol.get_chemical_formula() in ('H2O', 'CO2')
        # bond lengths and angles (all interatomic distances) are those of the intact molecule
        assert np.allclose(mol.get_all_distances(), part.get_all_distances(), atol=1e-9)
        assert not mol.pbc.any()
        extent = np.ptp(mol.positions, axis=0)
        assert np.allclose(mol.cell.array, np.diag(extent + 2 * VACUUM))
        assert np.allclose(mol.positions.min(axis=0), VACUUM)
        assert np.allclose(mol.positions.max(axis=0), extent + VACUUM)


def test_fragments_unique_and_all(crystal):
    wrapped, _ = crystal
    everything = molecular_fragments(wrapped, unique=False)
    assert [m.get_chemical_formula() for m in everything] == ['H2O', 'CO2', 'H2O', 'CO2']
    assert all(is_neutral(m) for m in everything)

    unique = molecular_fragments(wrapped)
    assert [m.get_chemical_formula() for m in unique] == ['H2O', 'CO2']
    assert [m.info['copies'] for m in unique] == [2, 2]
    assert [m.info['parent_indices'] for m in unique] == [[0, 1, 2], [3, 4, 5]]


def test_a_different_conformer_is_kept(crystal):
    wrapped, _ = crystal
    # stretch one O-H bond of the second water by 0.05 Å along the bond
    o, h = 6, 7
    bond = wrapped.get_distance(o, h, mic=True, vector=True)
    wrapped.positions[h] += 0.05 * bond / np.linalg.norm(bond)
    unique = molecular_fragments(wrapped)
    assert [m.get_chemical_formula() for m in unique] == ['H2O', 'CO2', 'H2O']


def test_fragments_are_deterministic(crystal):
    wrapped, _ = crystal
    first = molecular_fragments(wrapped, np.random.default_rng(0))
    second = molecular_fragments(wrapped.copy(), np.random.default_rng(1))
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        assert a.positions.tobytes() == b.positions.tobytes()
        assert a.cell.array.tobytes() == b.cell.array.tobytes()
        assert a.info == b.info


def test_infinite_components_are_left_out():
    # a carbon chain bonded through the periodic boundary along x, plus one water molecule far from it
    chain = Atoms('C2', positions=[[0.0, 0.0, 0.0], [1.5, 0.0, 0.0]])
    water = molecule('H2O')
    water.positions += [1.5, 4.0, 4.0]
    crystal = chain + water
    crystal.cell = [3.0, 8.0, 8.0]
    crystal.pbc = True
    molecules = split_molecules(crystal)
    assert [m.get_chemical_formula() for m in molecules] == ['H2O']
    assert molecules[0].info['parent_indices'] == [2, 3, 4]

    # an atom bonded to its own image only
    single = Atoms('Si', positions=[[0, 0, 0]], cell=[2.2, 10.0, 10.0], pbc=True)
    assert split_molecules(single) == []
    # without periodicity the chain is a finite molecule
    crystal.pbc = False
    assert len(split_molecules(crystal)) == 2


def test_non_periodic_input_keeps_geometry():
    water = molecule('H2O')
    (mol,) = split_molecules(water)
    assert np.allclose(mol.get_all_distances(), water.get_all_distances())


def _tetrahedral(centre: str, ligand: str, bond: float) -> Atoms:
    directions = np.array([[1, 1, 1], [-1, -1, 1], [1, -1, -1], [-1, 1, -1]]) / np.sqrt(3)
    return Atoms(centre + ligand * 4, positions=np.vstack([[0, 0, 0], bond * directions]))


def _trigonal(centre: str, ligand: str, bond: float) -> Atoms:
    angles = np.radians([0, 120, 240])
    return Atoms(
        centre + ligand * 3,
        positions=np.vstack([[0, 0, 0], bond * np.column_stack([np.cos(angles), np.sin(angles), np.zeros(3)])]),
    )


def _ammonia_borane() -> Atoms:
    """H3N-BH3: a neutral molecule whose only Lewis structure has N(+) and B(-)."""
    tilt = np.radians(180 - 109.47)
    phi = np.radians([0, 120, 240])
    ring = np.column_stack([np.sin(tilt) * np.cos(phi), np.sin(tilt) * np.sin(phi), np.full(3, np.cos(tilt))])
    positions = [[0, 0, 0], [0, 0, 1.66], *(-1.01 * ring), *(ring * 1.21 + [0, 0, 1.66])]
    return Atoms('NBH3H3', positions=positions)


@pytest.mark.parametrize(
    ('atoms', 'expected'),
    [
        (molecule('H2O'), True),
        (molecule('CO2'), True),
        (molecule('C6H6'), True),  # needs a Kekule structure
        (molecule('CH3NO2'), True),  # nitro group: N(+) and O(-)
        (molecule('CH3CN'), True),  # triple bond
        (molecule('C2H6SO'), True),  # DMSO: S with valence 4 (or S+ O-)
        (_trigonal('S', 'O', 1.43), True),  # SO3: S with valence 6
        (_ammonia_borane(), True),
        (Atoms('Ar'), True),
        (_tetrahedral('N', 'H', 1.02), False),  # ammonium
        (_tetrahedral('S', 'O', 1.49), False),  # sulfate: even electron count, yet 2-
        (_trigonal('C', 'O', 1.29), False),  # carbonate: even electron count, yet 2-
        (molecule('CH3'), False),  # radical
        (molecule('CH2_s3B1d'), False),  # carbene, even electron count but no closed-shell octet structure
        (Atoms('Cl'), False),
        (Atoms('Fe2', positions=[[0, 0, 0], [0, 0, 2.0]]), True),  # no rule for Fe: even electron count
        (Atoms('FeH', positions=[[0, 0, 0], [0, 0, 1.6]]), False),  # odd electron count
    ],
)
def test_is_neutral(atoms, expected):
    assert is_neutral(atoms) is expected


def test_is_neutral_rejects_empty():
    with pytest.raises(ValueError):
        is_neutral(Atoms())


def test_ions_are_not_fragments():
    """A salt of ammonium and sulfate splits into ions, none of which is kept."""
    ammonium = _tetrahedral('N', 'H', 1.02)
    sulfate = _tetrahedral('S', 'O', 1.49)
    sulfate.positions += [4.0, 4.0, 4.0]
    water = molecule('H2O')
    water.positions += [0.0, 4.0, 0.0]
    crystal = ammonium + sulfate + water
    crystal.cell = [8.0, 8.0, 8.0]
    crystal.pbc = True
    assert len(split_molecules(crystal)) == 3
    fragments = molecular_fragments(crystal)
    assert [m.get_chemical_formula() for m in fragments] == ['H2O']
    assert fragments[0].info['parent_indices'] == [10, 11, 12]
