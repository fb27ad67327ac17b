"""Tests for ``aiida_mad.structures.importers``: files, ASE databases and a real OPTIMADE server on loopback.

The OPTIMADE tests start optimade-python-tools' reference server (uvicorn, in-memory ``mongomock`` backend) in a
subprocess, loaded with the structures it ships as test data plus a few entries written here for the edge cases
(2D and 0D structures with ``null`` lattice vectors, disorder, vacancies, species names that are not symbols).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import ase.db
import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.singlepoint import SinglePointCalculator
from optimade.adapters import Structure

from aiida_mad.structures.importers import (
    ImportedStructure,
    OptimadeClient,
    OptimadeError,
    StructureImportError,
    atoms_from_optimade,
    read_ase_db,
    read_structure_files,
)

SERVER_START_TIMEOUT = 60.0


def assert_same_structure(actual: Atoms, expected: Atoms, atol: float = 1e-6) -> None:
    assert actual.get_chemical_symbols() == expected.get_chemical_symbols()
    np.testing.assert_allclose(actual.positions, expected.positions, atol=atol)
    np.testing.assert_allclose(actual.cell.array, expected.cell.array, atol=atol)
    assert list(actual.pbc) == list(expected.pbc)


def rocksalt() -> Atoms:
    atoms = bulk('NaCl', 'rocksalt', a=5.64, cubic=True)
    atoms.rattle(0.05, seed=1)
    atoms.wrap()
    return atoms


# ----------------------------------------------------------------------------------------------------------------
# Files


def test_read_cif(tmp_path):
    atoms = rocksalt()
    path = tmp_path / 'nacl.cif'
    ase.io.write(path, atoms)

    (imported,) = read_structure_files(path)

    assert isinstance(imported, ImportedStructure)
    assert imported.source == 'file'
    assert imported.metadata['path'] == str(path.resolve())
    assert imported.metadata['index'] == 0
    assert imported.metadata['format'] == 'cif'
    assert len(imported.metadata['sha256']) == 64
    assert_same_structure(imported.atoms, atoms, atol=1e-5)


@pytest.mark.parametrize('name', ['POSCAR', 'CONTCAR', 'si.vasp'])
def test_read_poscar(tmp_path, name):
    atoms = bulk('Si', 'diamond', a=5.43) * (2, 1, 1)
    atoms.rattle(0.02, seed=2)
    atoms.wrap()
    path = tmp_path / name
    ase.io.write(path, atoms, format='vasp', direct=True)

    (imported,) = read_structure_files([path])

    assert imported.metadata['format'] == 'vasp'
    assert_same_structure(imported.atoms, atoms, atol=1e-5)


def test_read_extxyz_all_frames(tmp_path):
    frames = []
    for seed in range(3):
        atoms = bulk('Cu', 'fcc', a=3.6 + 0.05 * seed, cubic=True)
        atoms.rattle(0.05, seed=seed)
        atoms.info['seed'] = seed
        # Results in the file are labels of somebody else's level of theory: the importer must drop them.
        atoms.calc = SinglePointCalculator(atoms, energy=-1.0 * seed, forces=np.zeros((len(atoms), 3)))
        frames.append(atoms)
    water = molecule('H2O')
    frames.append(water)
    path = tmp_path / 'frames.extxyz'
    ase.io.write(path, frames, format='extxyz')

    imported = read_structure_files(path)

    assert [item.metadata['index'] for item in imported] == [0, 1, 2, 3]
    assert {item.metadata['format'] for item in imported} == {'extxyz'}
    for item, expected in zip(imported, frames, strict=True):
        assert_same_structure(item.atoms, expected)
        assert item.atoms.calc is None
    assert [item.atoms.info.get('seed') for item in imported[:3]] == [0, 1, 2]
    assert list(imported[3].atoms.pbc) == [False, False, False]


def test_read_several_files_keeps_order(tmp_path):
    ase.io.write(tmp_path / 'b.xyz', [molecule('CH4'), molecule('NH3')], format='extxyz')
    ase.io.write(tmp_path / 'a.cif', rocksalt())

    imported = read_structure_files([tmp_path / 'b.xyz', str(tmp_path / 'a.cif')])

    assert [(Path(item.metadata['path']).name, item.metadata['index']) for item in imported] == [
        ('b.xyz', 0),
        ('b.xyz', 1),
        ('a.cif', 0),
    ]
    assert imported[1].atoms.get_chemical_formula() == 'H3N'


def test_read_with_explicit_format(tmp_path):
    atoms = bulk('Si', 'diamond', a=5.43)
    path = tmp_path / 'structure.txt'
    ase.io.write(path, atoms, format='vasp')

    (imported,) = read_structure_files(path, format='vasp')

    assert imported.metadata['format'] == 'vasp'
    assert_same_structure(imported.atoms, atoms, atol=1e-6)


def test_missing_file_fails_whole_import(tmp_path):
    good = tmp_path / 'good.cif'
    ase.io.write(good, rocksalt())
    missing = tmp_path / 'missing.cif'

    with pytest.raises(StructureImportError, match='does not exist') as excinfo:
        read_structure_files([good, missing])

    assert str(missing) in str(excinfo.value)
    assert str(good) not in str(excinfo.value)
    assert excinfo.value.problems == [(str(missing), 'does not exist')]


def test_unreadable_files_are_all_named(tmp_path):
    garbage_cif = tmp_path / 'garbage.cif'
    garbage_cif.write_text('this is not a CIF file\nat all\n')
    unknown = tmp_path / 'mystery.abc'
    unknown.write_text('12 34 56\nno format here\n')
    empty = tmp_path / 'empty.xyz'
    empty.write_text('')
    directory = tmp_path / 'folder'
    directory.mkdir()

    with pytest.raises(StructureImportError) as excinfo:
        read_structure_files([garbage_cif, unknown, empty, directory])

    problems = dict(excinfo.value.problems)
    assert set(problems) == {str(garbage_cif), str(unknown), str(empty), str(directory)}
    assert problems[str(garbage_cif)].startswith("cannot be read as format 'cif': ")
    assert 'unknown format' in problems[str(unknown)]
    assert problems[str(empty)] == 'is empty'
    assert problems[str(directory)] == 'is not a regular file'
    message = str(excinfo.value)
    assert message.startswith('4 file(s) cannot be imported; nothing was imported')
    for path in (garbage_cif, unknown, empty, directory):
        assert str(path) in message


def test_non_finite_positions_are_refused(tmp_path):
    good = molecule('H2O')
    bad = molecule('H2O')
    bad.positions[1, 2] = np.nan
    path = tmp_path / 'frames.extxyz'
    ase.io.write(path, [good, bad], format='extxyz')

    with pytest.raises(StructureImportError, match=r'frame 1: non-finite positions \(atoms 1\)') as excinfo:
        read_structure_files(path)
    assert str(path) in str(excinfo.value)


def test_disordered_cif_is_refused(tmp_path):
    path = tmp_path / 'disordered.cif'
    path.write_text(
        'data_feco\n'
        '_cell_length_a 2.87\n_cell_length_b 2.87\n_cell_length_c 2.87\n'
        '_cell_angle_alpha 90\n_cell_angle_beta 90\n_cell_angle_gamma 90\n'
        "_symmetry_space_group_name_H-M 'P 1'\n"
        'loop_\n_atom_site_label\n_atom_site_type_symbol\n'
        '_atom_site_fract_x\n_atom_site_fract_y\n_atom_site_fract_z\n_atom_site_occupancy\n'
        'Fe1 Fe 0 0 0 0.5\nCo1 Co 0 0 0 0.5\nFe2 Fe 0.5 0.5 0.5 1\n'
    )

    with pytest.raises(StructureImportError, match='partial occupancies') as excinfo:
        read_structure_files(path)
    assert str(path) in str(excinfo.value)


def test_unknown_explicit_format(tmp_path):
    path = tmp_path / 'x.cif'
    ase.io.write(path, rocksalt())

    with pytest.raises(StructureImportError, match=r"unknown ase\.io format 'cifx'"):
        read_structure_files(path, format='cifx')


def test_importers_do_not_import_aiida():
    # The importers must stay usable (and testable) without AiiDA: check in a fresh interpreter.
    code = (
        'import sys, aiida_mad.structures.importers; '
        "sys.exit(any(m == 'aiida' or m.startswith('aiida.') for m in sys.modules))"
    )
    assert subprocess.run([sys.executable, '-c', code], check=False).returncode == 0


def test_no_paths():
    with pytest.raises(StructureImportError, match='no structure files'):
        read_structure_files([])


# ----------------------------------------------------------------------------------------------------------------
# ASE databases


@pytest.fixture
def ase_database(tmp_path):
    path = tmp_path / 'structures.db'
    structures = [bulk('Si', 'diamond', a=5.43), rocksalt(), molecule('CH4'), bulk('Cu', 'fcc', a=3.6)]
    subsets = ['mc3d', 'mc3d', 'molecule', 'mc3d']
    with ase.db.connect(path) as database:
        for atoms, subset in zip(structures, subsets, strict=True):
            atoms = atoms.copy()
            atoms.calc = SinglePointCalculator(atoms, energy=-1.0)
            database.write(atoms, subset=subset, natoms_label=len(atoms))
    return path, structures, subsets


def test_read_ase_db_round_trip_with_selection(ase_database):
    path, structures, _ = ase_database

    imported = read_ase_db(path, selection='subset=mc3d,natoms<8')

    assert [item.metadata['row_id'] for item in imported] == [1, 4]
    for item, expected in zip(imported, [structures[0], structures[3]], strict=True):
        assert item.source == 'ase-db'
        assert item.metadata['path'] == str(path.resolve())
        assert item.metadata['selection'] == 'subset=mc3d,natoms<8'
        assert item.metadata['key_value_pairs']['subset'] == 'mc3d'
        assert len(item.metadata['unique_id']) == 32
        assert item.atoms.calc is None
        assert_same_structure(item.atoms, expected)


def test_read_ase_db_all_rows_json(tmp_path):
    path = tmp_path / 'structures.json'
    structures = [bulk('Si', 'diamond', a=5.43), molecule('H2O')]
    database = ase.db.connect(path)
    for atoms in structures:
        database.write(atoms)

    imported = read_ase_db(path)

    assert [item.metadata['row_id'] for item in imported] == [1, 2]
    for item, expected in zip(imported, structures, strict=True):
        assert_same_structure(item.atoms, expected)
    json.dumps([item.metadata for item in imported])


def test_read_ase_db_missing_file_creates_nothing(tmp_path):
    path = tmp_path / 'missing.db'

    with pytest.raises(StructureImportError, match='does not exist') as excinfo:
        read_ase_db(path)

    assert str(path) in str(excinfo.value)
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_read_ase_db_bad_selection(ase_database):
    path, _, _ = ase_database

    with pytest.raises(StructureImportError, match=r"invalid selection 'natoms<'") as excinfo:
        read_ase_db(path, selection='natoms<')
    assert str(path) in str(excinfo.value)


def test_read_ase_db_selection_matching_nothing(ase_database):
    path, _, _ = ase_database

    with pytest.raises(StructureImportError, match=r"no row matching selection 'subset=mc3D'"):
        read_ase_db(path, selection='subset=mc3D')


def test_read_ase_db_not_a_database(tmp_path):
    path = tmp_path / 'fake.db'
    path.write_text('hello')

    with pytest.raises(StructureImportError, match='cannot be opened as an ASE database') as excinfo:
        read_ase_db(path)
    assert str(path) in str(excinfo.value)


# ----------------------------------------------------------------------------------------------------------------
# OPTIMADE: conversion of single entries (no server needed)


def periodic_entry(**overrides) -> dict:
    attributes = {
        'lattice_vectors': [[4.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 4.0]],
        'cartesian_site_positions': [[0.0, 0.0, 0.0], [2.0, 2.0, 2.0]],
        'species_at_sites': ['Na', 'Cl'],
        'species': [
            {'name': 'Na', 'chemical_symbols': ['Na'], 'concentration': [1.0]},
            {'name': 'Cl', 'chemical_symbols': ['Cl'], 'concentration': [1.0]},
        ],
        'dimension_types': [1, 1, 1],
        'nperiodic_dimensions': 3,
    }
    attributes.update(overrides)
    return {'id': 'test-1', 'type': 'structures', 'attributes': attributes}


def test_atoms_from_optimade_periodic():
    atoms = atoms_from_optimade(periodic_entry())

    assert atoms.get_chemical_symbols() == ['Na', 'Cl']
    assert list(atoms.pbc) == [True, True, True]
    np.testing.assert_allclose(atoms.cell.array, 4.0 * np.eye(3))


def test_atoms_from_optimade_infers_pbc_from_null_vectors():
    entry = periodic_entry(
        dimension_types=None,
        nperiodic_dimensions=2,
        lattice_vectors=[[4.0, 0.0, 0.0], None, [0.0, 0.0, 4.0]],
    )

    atoms = atoms_from_optimade(entry)

    assert list(atoms.pbc) == [True, False, True]
    np.testing.assert_allclose(atoms.cell.array[1], 0.0)


def test_atoms_from_optimade_without_species_list():
    atoms = atoms_from_optimade(periodic_entry(species=None))
    assert atoms.get_chemical_symbols() == ['Na', 'Cl']


#: What optimade-python-tools' model refuses (the reason quotes its validation error) ...
INVALID = 'not a valid OPTIMADE structure: '


@pytest.mark.parametrize(
    ('overrides', 'reason'),
    [
        # ... checked by the OPTIMADE models of optimade-python-tools,
        (
            {'lattice_vectors': [[4.0, 0, 0], [None, None, None], [0, 0, 4.0]]},
            INVALID + 'Null entries in lattice vectors are only permitted when the corresponding dimension type is 0',
        ),
        (
            {'species_at_sites': ['Na']},
            INVALID + r'Number of species_at_sites \(value: 1\) MUST equal number of sites \(value: 2\)',
        ),
        ({'species_at_sites': ['Na', 'K']}, INVALID + 'species_at_sites MUST be represented by a species.+but K'),
        ({'nsites': 3}, INVALID + r'nsites \(value: 3\) MUST equal length of cartesian_site_positions'),
        ({'cartesian_site_positions': [[0, 0, 0], [1, 1]]}, INVALID + 'cartesian_site_positions.1: List should have'),
        ({'dimension_types': [1, 1, 0]}, INVALID + r'nperiodic_dimensions \(3\) does not match'),
        ({'dimension_types': [[1], 1, 1]}, INVALID + 'dimension_types.0: Input should be 0 or 1'),
        (
            {
                'species': [
                    {'name': 'Na', 'chemical_symbols': ['Na'], 'concentration': ['full']},
                    {'name': 'Cl', 'chemical_symbols': ['Cl'], 'concentration': [1.0]},
                ]
            },
            INVALID + 'species.0.concentration.0: Input should be a valid number',
        ),
        ({'cartesian_site_positions': [[0, 0, 0], [None, 1, 1]]}, 'malformed entry: TypeError'),
        # ... and what the ASE adapter lacks: this module's policy and checks.
        ({'lattice_vectors': None}, 'periodic structure without lattice_vectors'),
        ({'cartesian_site_positions': [[0, 0, 0], [float('nan'), 1, 1]]}, r'non-finite positions \(atoms 1\)'),
        ({'dimension_types': None, 'nperiodic_dimensions': None}, 'neither dimension_types'),
        (
            {'species': [{'name': 'Na', 'chemical_symbols': ['X']}, {'name': 'Cl', 'chemical_symbols': ['Cl']}]},
            "unknown element 'X'",
        ),
        (
            {
                'species': [
                    {'name': 'Na', 'chemical_symbols': ['Na'], 'concentration': [0.8]},
                    {'name': 'Cl', 'chemical_symbols': ['Cl'], 'concentration': [1.0]},
                ]
            },
            r"species 'Na' has partial concentration \[0.8\]",
        ),
        (
            {
                'species': [
                    {'name': 'Na', 'chemical_symbols': ['vacancy'], 'concentration': [1.0]},
                    {'name': 'Cl', 'chemical_symbols': ['Cl'], 'concentration': [1.0]},
                ]
            },
            "species 'Na' is a vacancy",
        ),
        (
            {
                'species': [
                    {'name': 'Na', 'chemical_symbols': ['Na', 'K'], 'concentration': [0.5, 0.5]},
                    {'name': 'Cl', 'chemical_symbols': ['Cl'], 'concentration': [1.0]},
                ]
            },
            "species 'Na' is disordered",
        ),
        ({'structure_features': ['implicit_atoms']}, 'implicit_atoms'),
        ({'structure_features': ['site_attachments']}, 'site_attachments'),
        ({'lattice_vectors': [[4.0, 0, 0], [8.0, 0, 0], [0, 0, 4.0]]}, 'linearly dependent'),
        ({'species': None, 'species_at_sites': ['Na1', 'Cl']}, r"site names \['Na1'\] are not chemical symbols"),
    ],
)
def test_atoms_from_optimade_refuses(overrides, reason):
    with pytest.raises(StructureImportError, match=reason) as excinfo:
        atoms_from_optimade(periodic_entry(**overrides))
    assert 'test-1' in str(excinfo.value)


@pytest.mark.parametrize(
    ('url', 'expected'),
    [
        ('https://example.org/optimade', 'https://example.org/optimade'),
        ('https://example.org/optimade/', 'https://example.org/optimade'),
        ('https://example.org/optimade/v1', 'https://example.org/optimade'),
        ('https://example.org/optimade/v1/', 'https://example.org/optimade'),
        ('  https://example.org/optimade/v1.2.0 ', 'https://example.org/optimade'),
        ('http://127.0.0.1:5000', 'http://127.0.0.1:5000'),
    ],
)
def test_normalise_base_url(url, expected):
    assert OptimadeClient(url).base_url == expected


@pytest.mark.parametrize('url', ['ftp://example.org', 'example.org/optimade', 'https://example.org/x?filter=a'])
def test_bad_base_url(url):
    with pytest.raises(OptimadeError):
        OptimadeClient(url)


def test_unreachable_server():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    # Nothing listens on the port any more: the connection is refused at once.
    client = OptimadeClient(f'http://127.0.0.1:{port}/v1', timeout=5)

    with pytest.raises(OptimadeError, match='cannot reach OPTIMADE server') as excinfo:
        list(client.fetch('nelements=2'))

    assert f'http://127.0.0.1:{port}/v1/structures' in str(excinfo.value)
    assert excinfo.value.status is None


# ----------------------------------------------------------------------------------------------------------------
# OPTIMADE: a real reference server on loopback


def _lattice(a: float) -> list[list[float]]:
    return [[a, 0.0, 0.0], [0.0, a, 0.0], [0.0, 0.0, a]]


def _extra_entries() -> list[dict]:
    """Entries for the cases the bundled test data lacks; they follow the OPTIMADE 1.2 schema the server validates."""
    date = {'$date': '2024-01-01T00:00:00Z'}

    def entry(structure_id, **attributes):
        attributes.setdefault('last_modified', date)
        attributes.setdefault('structure_features', [])
        attributes['nsites'] = len(attributes['cartesian_site_positions'])
        return {'type': 'structures', 'id': structure_id, 'attributes': attributes}

    return [
        entry(
            'mad-graphene',
            elements=['C'],
            nelements=1,
            elements_ratios=[1.0],
            chemical_formula_reduced='C',
            chemical_formula_anonymous='A',
            dimension_types=[1, 1, 0],
            nperiodic_dimensions=2,
            lattice_vectors=[[2.46, 0.0, 0.0], [-1.23, 2.130422, 0.0], [None, None, None]],
            cartesian_site_positions=[[0.0, 0.0, 0.0], [0.0, 1.420281, 0.0]],
            species=[{'name': 'C', 'chemical_symbols': ['C'], 'concentration': [1.0]}],
            species_at_sites=['C', 'C'],
        ),
        entry(
            'mad-water',
            elements=['H', 'O'],
            nelements=2,
            elements_ratios=[2 / 3, 1 / 3],
            chemical_formula_reduced='H2O',
            chemical_formula_anonymous='A2B',
            dimension_types=[0, 0, 0],
            nperiodic_dimensions=0,
            lattice_vectors=[[None, None, None]] * 3,
            cartesian_site_positions=[[0.0, 0.0, 0.119262], [0.0, 0.763239, -0.477047], [0.0, -0.763239, -0.477047]],
            species=[
                {'name': 'H', 'chemical_symbols': ['H'], 'concentration': [1.0]},
                {'name': 'O', 'chemical_symbols': ['O'], 'concentration': [1.0]},
            ],
            species_at_sites=['O', 'H', 'H'],
        ),
        entry(
            'mad-silicon-sites',
            elements=['Si'],
            nelements=1,
            elements_ratios=[1.0],
            chemical_formula_reduced='Si',
            chemical_formula_anonymous='A',
            dimension_types=[1, 1, 1],
            nperiodic_dimensions=3,
            lattice_vectors=[[0.0, 2.715, 2.715], [2.715, 0.0, 2.715], [2.715, 2.715, 0.0]],
            cartesian_site_positions=[[0.0, 0.0, 0.0], [1.3575, 1.3575, 1.3575]],
            species=[
                {'name': 'Si1', 'chemical_symbols': ['Si'], 'concentration': [1.0]},
                {'name': 'Si2', 'chemical_symbols': ['Si'], 'concentration': [1.0]},
            ],
            species_at_sites=['Si1', 'Si2'],
        ),
        entry(
            'mad-disordered',
            elements=['Co', 'Fe'],
            nelements=2,
            elements_ratios=[0.5, 0.5],
            chemical_formula_reduced='CoFe',
            chemical_formula_anonymous='AB',
            dimension_types=[1, 1, 1],
            nperiodic_dimensions=3,
            lattice_vectors=_lattice(2.87),
            cartesian_site_positions=[[0.0, 0.0, 0.0]],
            species=[{'name': 'CoFe', 'chemical_symbols': ['Co', 'Fe'], 'concentration': [0.5, 0.5]}],
            species_at_sites=['CoFe'],
            structure_features=['disorder'],
        ),
        entry(
            'mad-vacancy',
            elements=['Fe'],
            nelements=1,
            elements_ratios=[1.0],
            chemical_formula_reduced='Fe',
            chemical_formula_anonymous='A',
            dimension_types=[1, 1, 1],
            nperiodic_dimensions=3,
            lattice_vectors=_lattice(2.87),
            cartesian_site_positions=[[0.0, 0.0, 0.0], [1.435, 1.435, 1.435]],
            species=[
                {'name': 'Fe', 'chemical_symbols': ['Fe'], 'concentration': [1.0]},
                {'name': 'Fe_vac', 'chemical_symbols': ['Fe', 'vacancy'], 'concentration': [0.9, 0.1]},
            ],
            species_at_sites=['Fe', 'Fe_vac'],
            structure_features=['disorder'],
        ),
    ]


def _bundled_entries() -> list[dict]:
    """The reference server's own test structures, renamed from its MongoDB layout to OPTIMADE fields."""
    spec = importlib.util.find_spec('optimade')
    data = Path(next(iter(spec.submodule_search_locations))) / 'server' / 'data' / 'test_structures.json'
    entries = []
    for document in json.loads(data.read_text()):
        attributes = {
            key: value
            for key, value in document.items()
            if not key.startswith('_')
            and key not in ('task_id', 'pretty_formula', 'formula_anonymous', 'chemsys', 'relationships')
        }
        attributes['chemical_formula_reduced'] = document['pretty_formula']
        attributes['chemical_formula_anonymous'] = document['formula_anonymous']
        entries.append({'type': 'structures', 'id': document['task_id'], 'attributes': attributes})
    return entries


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def _start_server(workdir: Path, port: int) -> subprocess.Popen:
    base_url = f'http://127.0.0.1:{port}'
    config = {
        'database_backend': 'mongomock',
        # The bundled test data would also pull the provider list from providers.optimade.org: no downloads in tests.
        'insert_test_data': False,
        'insert_from_jsonl': str(workdir / 'structures.jsonl'),
        'base_url': base_url,
        'log_dir': str(workdir / 'logs'),
        'page_limit': 20,
    }
    (workdir / 'optimade_config.json').write_text(json.dumps(config))
    env = {key: value for key, value in os.environ.items() if not key.upper().startswith('OPTIMADE_')}
    env['OPTIMADE_CONFIG_FILE'] = str(workdir / 'optimade_config.json')
    log = (workdir / f'server-{port}.log').open('w')
    command = [sys.executable, '-m', 'uvicorn', 'optimade.server.main:app', '--host', '127.0.0.1', '--port', str(port)]
    return subprocess.Popen(command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)


def _stop_server(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _wait_until_ready(process: subprocess.Popen, base_url: str, deadline: float) -> bool:
    """Return ``True`` once ``/v1/info`` answers, ``False`` if the server exited; fail the test at the deadline."""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        with contextlib.suppress(OSError, ValueError):
            if _get_json(f'{base_url}/v1/info').get('data'):
                return True
        time.sleep(0.2)
    pytest.fail(f'OPTIMADE reference server at {base_url} did not answer /v1/info within {SERVER_START_TIMEOUT} s')


@pytest.fixture(scope='module')
def optimade_server(tmp_path_factory):
    """Start optimade-python-tools' reference server on a free loopback port; yield its base URL (no ``/v1``)."""
    # A missing server must fail the tests, not skip them: optimade[server] comes with the tests extra.
    assert importlib.util.find_spec('optimade.server') is not None, 'the OPTIMADE tests need optimade[server]'
    workdir = tmp_path_factory.mktemp('optimade-server')
    lines = [json.dumps({'x-optimade': {'meta': {'api_version': '1.2.0'}}})]
    lines.extend(json.dumps(entry) for entry in _bundled_entries() + _extra_entries())
    (workdir / 'structures.jsonl').write_text('\n'.join(lines) + '\n')

    with pytest.MonkeyPatch.context() as monkeypatch:
        # A proxy configured in the environment must not intercept requests to the loopback server.
        no_proxy = ','.join(filter(None, [os.environ.get('no_proxy', ''), '127.0.0.1', 'localhost']))
        monkeypatch.setenv('no_proxy', no_proxy)
        monkeypatch.setenv('NO_PROXY', no_proxy)

        deadline = time.monotonic() + SERVER_START_TIMEOUT
        # The free port is chosen before uvicorn binds it; another process may take it first, so try a few.
        for _ in range(3):
            port = _free_port()
            process = _start_server(workdir, port)
            try:
                if _wait_until_ready(process, f'http://127.0.0.1:{port}', deadline):
                    yield f'http://127.0.0.1:{port}'
                    return
            finally:
                _stop_server(process)
        log = (workdir / f'server-{port}.log').read_text()
        pytest.fail(f'OPTIMADE reference server did not start; last log:\n{log[-4000:]}')


def _species_symbols(attributes: dict) -> list[str]:
    symbol_of = {item['name']: item['chemical_symbols'][0] for item in attributes['species']}
    return [symbol_of[name] for name in attributes['species_at_sites']]


def test_optimade_pagination_follows_all_pages(optimade_server):
    first_page = _get_json(f'{optimade_server}/v1/structures?page_limit=3')
    data_returned = first_page['meta']['data_returned']
    assert data_returned == 22
    client = OptimadeClient(optimade_server, page_limit=3)

    structures = list(client.fetch(None))

    assert client.data_returned == data_returned
    assert client.pages_fetched == math.ceil(data_returned / 3)
    assert len(structures) + len(client.skipped) == data_returned
    identifiers = [item.metadata['structure_id'] for item in structures]
    assert len(set(identifiers)) == len(identifiers)
    reasons = {entry.structure_id: entry.reason for entry in client.skipped}
    assert set(reasons) == {'mad-disordered', 'mad-vacancy'}
    assert 'disorder' in reasons['mad-disordered']
    assert 'disorder' in reasons['mad-vacancy']
    assert client.skipped[0].url == f'{optimade_server}/v1/structures/{client.skipped[0].structure_id}'


def test_optimade_filter_count_matches_server(optimade_server):
    filter_string = 'nelements>=2 AND nsites<=30'
    query = urllib.parse.urlencode({'filter': filter_string, 'page_limit': 2}, quote_via=urllib.parse.quote)
    data_returned = _get_json(f'{optimade_server}/v1/structures?{query}')['meta']['data_returned']
    assert data_returned > 4
    client = OptimadeClient(f'{optimade_server}/v1', page_limit=2)

    structures = list(client.fetch(filter_string))

    assert len(structures) + len(client.skipped) == data_returned
    assert client.pages_fetched > 2
    assert all(len(set(item.atoms.get_chemical_symbols())) >= 2 and len(item.atoms) <= 30 for item in structures)
    assert {item.metadata['filter'] for item in structures} == {filter_string}


def test_optimade_entry_converted_like_json(optimade_server):
    entry = _get_json(f'{optimade_server}/v1/structures/mpf_3803')['data']
    attributes = entry['attributes']
    client = OptimadeClient(optimade_server)

    (imported,) = client.fetch('id="mpf_3803"')

    assert imported.source == 'optimade'
    assert imported.metadata == {
        'base_url': optimade_server,
        'structure_id': 'mpf_3803',
        'url': f'{optimade_server}/v1/structures/mpf_3803',
        'filter': 'id="mpf_3803"',
        'chemical_formula_reduced': attributes['chemical_formula_reduced'],
        'last_modified': attributes['last_modified'],
        'provider': 'exmpl',
    }
    # The recorded URL leads back to the same entry.
    assert _get_json(imported.metadata['url'])['data']['id'] == 'mpf_3803'
    atoms = imported.atoms
    assert len(atoms) == attributes['nsites'] == 44
    assert atoms.get_chemical_symbols() == _species_symbols(attributes)
    np.testing.assert_allclose(atoms.positions, attributes['cartesian_site_positions'])
    np.testing.assert_allclose(atoms.cell.array, attributes['lattice_vectors'])
    assert list(atoms.pbc) == [bool(value) for value in attributes['dimension_types']]
    assert atoms.get_chemical_formula(mode='reduce') != ''
    # The conversion is optimade-python-tools' own ASE adapter.
    reference = Structure(entry).as_ase
    assert atoms.get_chemical_symbols() == reference.get_chemical_symbols()
    assert atoms.positions.tobytes() == reference.positions.tobytes()
    assert atoms.cell.array.tobytes() == reference.cell.array.tobytes()


def test_optimade_low_dimensional_and_named_species(optimade_server):
    client = OptimadeClient(optimade_server)

    imported = {
        item.metadata['structure_id']: item.atoms
        for item in client.fetch('id="mad-graphene" OR id="mad-water" OR id="mad-silicon-sites"')
    }

    graphene = imported['mad-graphene']
    assert list(graphene.pbc) == [True, True, False]
    np.testing.assert_allclose(graphene.cell.array, [[2.46, 0, 0], [-1.23, 2.130422, 0], [0, 0, 0]])
    water = imported['mad-water']
    assert list(water.pbc) == [False, False, False]
    assert water.get_chemical_symbols() == ['O', 'H', 'H']
    np.testing.assert_allclose(water.cell.array, np.zeros((3, 3)))
    assert imported['mad-silicon-sites'].get_chemical_symbols() == ['Si', 'Si']


def test_optimade_response_fields(optimade_server):
    client = OptimadeClient(optimade_server)

    (imported,) = client.fetch('id="mpf_1"', response_fields=['nelements', 'elements', 'lattice_vectors'])

    assert imported.metadata['attributes'] == {'nelements': 1, 'elements': ['Ac']}
    assert imported.atoms.get_chemical_symbols() == ['Ac']


def test_optimade_max_structures(optimade_server):
    client = OptimadeClient(optimade_server, page_limit=2, max_structures=5)

    structures = list(client.fetch('nsites>=1'))

    assert len(structures) == 5
    assert client.pages_fetched == 3
    assert client.data_returned > 5


@pytest.mark.parametrize('suffix', ['', '/', '/v1', '/v1/'])
def test_optimade_base_url_variants(optimade_server, suffix):
    client = OptimadeClient(optimade_server + suffix)

    (imported,) = client.fetch('id="mpf_1"')

    assert client.base_url == optimade_server
    assert imported.metadata['url'] == f'{optimade_server}/v1/structures/mpf_1'


def test_optimade_wrong_base_url(optimade_server):
    client = OptimadeClient(f'{optimade_server}/no-such-database')

    with pytest.raises(OptimadeError, match=r'failed \(HTTP 404\)') as excinfo:
        list(client.fetch('nsites=1'))

    assert f'{optimade_server}/no-such-database/v1/structures' in str(excinfo.value)
    assert excinfo.value.status == 404


@pytest.mark.parametrize(
    ('filter_string', 'detail'),
    [('nelements>==2', 'Unable to parse filter'), ('frobnicity=3', "'frobnicity' is not a known")],
)
def test_optimade_bad_filter(optimade_server, filter_string, detail):
    client = OptimadeClient(optimade_server)

    with pytest.raises(OptimadeError) as excinfo:
        list(client.fetch(filter_string))

    message = str(excinfo.value)
    assert filter_string in message
    assert detail in message
    assert excinfo.value.status == 400
    assert any(detail in text for text in excinfo.value.details)
    assert client.skipped == []
