"""Tests for the ``mp-aloe`` generator."""

from __future__ import annotations

import itertools
import socket

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from aiida_mad.structures import checks, prototypes
from aiida_mad.structures.elements import covalent_radius, element_pool
from aiida_mad.structures.prototypes import (
    atomic_radius,
    generate_mp_aloe,
    lattice_guess,
    load_prototypes,
    scramble,
    strain,
    substitute,
)

POOL = element_pool()


@pytest.fixture(scope='module')
def library() -> list[Atoms]:
    return load_prototypes()


def brute_force_ratios(atoms: Atoms, images: int = 3) -> np.ndarray:
    """Return distance / (r_i + r_j) for all pairs and lattice translations up to ``images`` in each direction."""
    radii = np.array([atomic_radius(s) for s in atoms.get_chemical_symbols()])
    shifts = np.array(list(itertools.product(range(-images, images + 1), repeat=3))) @ atoms.cell.array
    vectors = atoms.positions[None, :, None, :] + shifts[None, None, :, :] - atoms.positions[:, None, None, :]
    distances = np.linalg.norm(vectors, axis=-1)
    ratios = distances / (radii[:, None, None] + radii[None, :, None])
    zero_shift = np.flatnonzero(~shifts.any(axis=1))[0]
    ratios[np.arange(len(atoms)), np.arange(len(atoms)), zero_shift] = np.inf
    return ratios


def test_load_works_offline(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError('network access in a test')

    monkeypatch.setattr(socket.socket, 'connect', refuse)
    monkeypatch.setattr(socket, 'create_connection', refuse)
    prototypes._aflow_library.cache_clear()
    loaded = load_prototypes()
    assert len(loaded) >= 100


def test_filter_and_labels(library):
    assert all(2 <= len(p) <= 8 for p in library)
    assert all(len(set(p.numbers)) <= 3 for p in library)
    assert all(p.pbc.all() for p in library)
    labels = [p.info['prototype'] for p in library]
    assert len(set(labels)) == len(labels)
    assert 'AB_cF8_225_a_b:ClNa' in labels  # rock salt, 2 atoms in its primitive cell
    assert 'AB3C_cP5_221_a_c_b:CaO3Ti' in labels  # perovskite
    assert 'A_cF4_225_a:Cu' not in labels  # one atom
    assert {p.info['prototype_source'] for p in library} == {'aflow'}
    # every species count from 1 to 3 occurs
    assert {len(set(p.numbers)) for p in library} == {1, 2, 3}
    # a second call gives equal but independent objects
    again = load_prototypes()
    assert [p.info['prototype'] for p in again] == labels
    again[0].positions += 1.0
    assert not np.allclose(load_prototypes()[0].positions, again[0].positions)


def test_tighter_filter_is_a_subset(library):
    small = load_prototypes(max_atoms=4, max_species=1)
    assert small
    assert all(2 <= len(p) <= 4 and len(set(p.numbers)) == 1 for p in small)
    assert {p.info['prototype'] for p in small} <= {p.info['prototype'] for p in library}


def test_user_files(tmp_path):
    salt = bulk('NaCl', 'rocksalt', a=5.64, cubic=True)  # 8 atoms, primitive cell has 2
    ase.io.write(tmp_path / 'salt.cif', salt)
    frames = [bulk('Si', 'diamond', a=5.43), bulk('Cu', 'fcc', a=3.6), bulk('GaAs', 'zincblende', a=5.65)]
    ase.io.write(tmp_path / 'many.extxyz', frames)
    quaternary = Atoms('LiBeBC', scaled_positions=np.eye(4)[:, :3] * 0.5, cell=[4, 4, 4], pbc=True)
    ase.io.write(tmp_path / 'four.extxyz', quaternary)

    loaded = load_prototypes(paths=[tmp_path / 'salt.cif', tmp_path / 'many.extxyz', tmp_path / 'four.extxyz'])
    users = [p for p in loaded if p.info['prototype_source'] != 'aflow']
    # Cu has one atom and the quaternary four species: both filtered out
    assert [p.info['prototype'] for p in users] == ['salt.cif', 'many.extxyz@0', 'many.extxyz@2']
    assert [len(p) for p in users] == [2, 2, 2]
    assert users[0].get_volume() == pytest.approx(salt.get_volume() / 4)

    only_users = load_prototypes(paths=[tmp_path / 'salt.cif'], aflow=False)
    assert [p.info['prototype'] for p in only_users] == ['salt.cif']

    molecule_file = tmp_path / 'molecule.xyz'
    ase.io.write(molecule_file, Atoms('H2', positions=[[0, 0, 0], [0, 0, 0.74]]))
    with pytest.raises(ValueError, match='periodic'):
        load_prototypes(paths=[molecule_file])


def test_atomic_radius():
    assert atomic_radius('Fe') == pytest.approx(1.4)
    assert atomic_radius('Xe') == covalent_radius('Xe')  # pymatgen has no atomic radius for Xe


def test_substitute_keeps_the_pattern(library):
    rng = np.random.default_rng(7)
    for prototype in library:
        new = substitute(prototype, rng, POOL)
        mapping = new.info['substitution']
        old_symbols = prototype.get_chemical_symbols()
        assert set(mapping) == set(old_symbols)
        assert len(set(mapping.values())) == len(mapping)  # distinct species stay distinct
        assert set(mapping.values()) <= set(POOL)
        assert new.get_chemical_symbols() == [mapping[s] for s in old_symbols]
        assert new.positions.tobytes() == prototype.positions.tobytes()
        assert new.info['prototype'] == prototype.info['prototype']


def test_substitute_is_uniform_and_order_independent(library):
    unary = next(p for p in library if len(set(p.numbers)) == 1)
    pool = ['O', 'Fe', 'H', 'Xe', 'Cu']
    rng = np.random.default_rng(11)
    draws = [substitute(unary, rng, pool).get_chemical_symbols()[0] for _ in range(5000)]
    counts = np.array([draws.count(symbol) for symbol in pool])
    assert np.all(np.abs(counts - 1000) < 100), counts  # expected 1000 each, standard deviation 28

    binary = next(p for p in library if len(set(p.numbers)) == 2)
    first = substitute(binary, np.random.default_rng(3), pool)
    second = substitute(binary, np.random.default_rng(3), list(reversed(pool)))
    assert first.numbers.tobytes() == second.numbers.tobytes()

    ternary = next(p for p in library if len(set(p.numbers)) == 3)
    with pytest.raises(ValueError, match='pool'):
        substitute(ternary, np.random.default_rng(0), ['H', 'He'])


def test_lattice_guess_on_every_prototype(library):
    rng = np.random.default_rng(2024)
    for prototype in library:
        substituted = substitute(prototype, rng, POOL)
        guessed = lattice_guess(substituted)
        ratios = brute_force_ratios(guessed)
        assert ratios.min() >= 1.0 - 1e-9, guessed.info['prototype']
        assert ratios.min() == pytest.approx(1.0, abs=1e-6), guessed.info['prototype']
        # isotropic: same scaled positions, cell scaled by the one recorded factor
        assert np.allclose(guessed.get_scaled_positions(wrap=False), substituted.get_scaled_positions(wrap=False))
        assert np.allclose(guessed.cell.array, substituted.cell.array * guessed.info['lattice_scale'])


def test_lattice_guess_rock_salt():
    salt = bulk('NaCl', 'rocksalt', a=10.0)
    r_na, r_cl = atomic_radius('Na'), atomic_radius('Cl')
    # cation-anion at a/2, like ions at a/sqrt(2): the tightest of the three sets the lattice constant
    expected = max(2 * (r_na + r_cl), np.sqrt(2) * 2 * r_na, np.sqrt(2) * 2 * r_cl)
    guessed = lattice_guess(salt)
    assert guessed.info['lattice_scale'] * 10.0 == pytest.approx(expected, rel=1e-12)


def test_lattice_guess_single_atom_uses_its_own_images():
    guessed = lattice_guess(Atoms('Cu', cell=[[0, 2, 2], [2, 0, 2], [2, 2, 0]], pbc=True))
    assert np.linalg.norm(guessed.cell.array[0]) == pytest.approx(2 * atomic_radius('Cu'), rel=1e-12)


def test_lattice_guess_refuses_coinciding_atoms():
    with pytest.raises(ValueError, match='coinciding'):
        lattice_guess(Atoms('Cu2', positions=[[0, 0, 0], [0, 0, 0]], cell=[3, 3, 3], pbc=True))


def _big_triclinic(n_atoms: int = 20000) -> Atoms:
    rng = np.random.default_rng(99)
    cell = [[40.0, 0.0, 0.0], [7.0, 35.0, 0.0], [-5.0, 4.0, 30.0]]
    return Atoms(f'C{n_atoms}', scaled_positions=rng.random((n_atoms, 3)), cell=cell, pbc=True)


def test_scramble_statistics():
    atoms = _big_triclinic()
    scrambled = scramble(atoms, np.random.default_rng(5))
    displacement = scrambled.positions - atoms.positions
    fractional = np.linalg.solve(atoms.cell.array.T, displacement.T).T
    n_atoms = len(atoms)
    assert np.all(np.abs(fractional.std(axis=0) - 0.02) < 0.05 * 0.02)
    assert np.all(np.abs(fractional.mean(axis=0)) < 5 * 0.02 / np.sqrt(n_atoms))
    # independent directions
    correlation = np.corrcoef(fractional.T)
    assert np.all(np.abs(correlation[np.triu_indices(3, 1)]) < 0.05)
    # the cell is untouched, another sigma scales the noise
    assert scrambled.cell.array.tobytes() == atoms.cell.array.tobytes()
    wider = scramble(atoms, np.random.default_rng(5), sigma=0.1)
    assert np.allclose(wider.positions - atoms.positions, 5 * displacement)


def test_strain_statistics():
    atoms = bulk('Cu', 'fcc', a=3.6, cubic=True)
    rng = np.random.default_rng(8)
    tensors = []
    for _ in range(4000):
        strained = strain(atoms, rng)
        eps = np.array(strained.info['strain'])
        assert np.array_equal(eps, eps.T)
        tensors.append(eps)
    tensors = np.array(tensors)
    components = tensors[:, [0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]  # xx yy zz yz xz xy
    assert np.all(np.abs(components.std(axis=0) - 0.02) < 0.05 * 0.02), components.std(axis=0)
    assert np.all(np.abs(components.mean(axis=0)) < 5 * 0.02 / np.sqrt(len(tensors)))
    correlation = np.corrcoef(components.T)
    assert np.all(np.abs(correlation[np.triu_indices(6, 1)]) < 0.1)

    # the cell follows cell @ (I + eps) and the atoms follow the cell
    assert np.allclose(strained.cell.array, atoms.cell.array @ (np.eye(3) + eps), rtol=0, atol=1e-12)
    assert np.allclose(strained.get_scaled_positions(), atoms.get_scaled_positions())


@pytest.mark.parametrize('function', [scramble, strain])
def test_random_steps_are_deterministic(function):
    atoms = bulk('NaCl', 'rocksalt', a=5.64, cubic=True)
    first = function(atoms, np.random.default_rng(1))
    second = function(atoms, np.random.default_rng(1))
    other = function(atoms, np.random.default_rng(2))
    assert first.positions.tobytes() == second.positions.tobytes()
    assert first.cell.array.tobytes() == second.cell.array.tobytes()
    assert first.positions.tobytes() != other.positions.tobytes()
    with pytest.raises(ValueError, match='sigma'):
        function(atoms, np.random.default_rng(1), sigma=-0.1)


def test_generate_mp_aloe(library):
    prototype = next(p for p in library if p.info['prototype'] == 'AB3C_cP5_221_a_c_b:CaO3Ti')
    first = generate_mp_aloe(prototype, np.random.default_rng(123), POOL)
    second = generate_mp_aloe(prototype, np.random.default_rng(123), POOL)
    other = generate_mp_aloe(prototype, np.random.default_rng(124), POOL)

    for name in ('positions', 'numbers'):
        assert getattr(first, name).tobytes() == getattr(second, name).tobytes()
    assert first.cell.array.tobytes() == second.cell.array.tobytes()
    assert first.info == second.info
    assert first.positions.tobytes() != other.positions.tobytes()

    assert first.info['prototype'] == 'AB3C_cP5_221_a_c_b:CaO3Ti'
    assert set(first.info['substitution']) == {'Ca', 'Ti', 'O'}
    assert np.shape(first.info['strain']) == (3, 3)
    assert first.pbc.all()

    # the same steps by hand, from the same seed, give the same structure
    rng = np.random.default_rng(123)
    by_hand = strain(scramble(lattice_guess(substitute(prototype, rng, POOL)), rng), rng)
    assert by_hand.positions.tobytes() == first.positions.tobytes()
    assert by_hand.cell.array.tobytes() == first.cell.array.tobytes()
    assert prototype.info == {'prototype': 'AB3C_cP5_221_a_c_b:CaO3Ti', 'prototype_source': 'aflow'}


def test_generated_structures_are_plausible(library):
    rng = np.random.default_rng(0)
    for prototype in library[:40]:
        generated = generate_mp_aloe(prototype, rng, POOL)
        assert checks.check_structure(generated) == [], generated.info['prototype']
