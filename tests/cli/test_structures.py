"""``aiida-mad structures``: seeds, imports (files, ASE db, OPTIMADE), generation of every subset, list."""

from __future__ import annotations

import json
import urllib.request

import ase.db
import ase.io
import pytest
from aiida import orm
from ase import Atoms
from ase.build import bulk, molecule

pytestmark = pytest.mark.usefixtures('aiida_profile_clean')


def database_state() -> tuple[int, int, int]:
    """Return the numbers of nodes, groups and group memberships: bad input must change none of them."""
    memberships = orm.QueryBuilder().append(orm.Group, tag='group').append(orm.Node, with_group='group').count()
    return orm.QueryBuilder().append(orm.Node).count(), orm.QueryBuilder().append(orm.Group).count(), memberships


def group_nodes(label: str) -> list[orm.StructureData]:
    return list(orm.load_group(label).nodes)


@pytest.fixture
def seeds(run_cli_command):
    """Store the bulk, 2d and molcrys seeds (and their subsets) through the CLI."""
    run_cli_command(['structures', 'seeds', '--source', 'bulk', '--source', '2d', '--source', 'molcrys'])


def test_help_lists_the_commands(run_cli_command):
    result = run_cli_command(['structures', '--help'])
    for command in ('generate', 'import', 'list', 'seeds'):
        assert command in result.output


def test_seeds_fill_the_imported_subsets_once(run_cli_command):
    first = run_cli_command(['structures', 'seeds', '-s', 'bulk', '-s', '2d', '-s', 'molcrys', '-s', 'molecules'])
    assert 'mad/seeds/bulk: 8 stored, 0 already there' in first.output
    state = database_state()

    second = run_cli_command(['structures', 'seeds', '-s', 'bulk', '-s', '2d', '-s', 'molcrys', '-s', 'molecules'])
    assert '0 seed structure(s) stored' in second.output
    assert database_state() == state
    assert len(group_nodes('mad/structures/mc3d')) == 8
    assert len(group_nodes('mad/structures/mc2d')) == 1
    assert len(group_nodes('mad/structures/shiftml-molcrys')) == 1
    assert len(group_nodes('mad/seeds/molecules')) == 4
    assert {node.base.extras.get('mad_subset') for node in group_nodes('mad/structures/mc2d')} == {'mc2d'}

    listing = run_cli_command(['structures', 'list'])
    lines = {line.split()[0]: line.split() for line in listing.output.splitlines() if line.startswith('mad/')}
    assert lines['mad/structures/mc3d'][1:] == ['mc3d', '8']
    assert lines['mad/seeds/molecules'][-1] == '4'


@pytest.mark.parametrize(
    ('subset', 'arguments', 'expected'),
    [
        ('mc3d-rattled', ['--count', '5'], 5),
        ('mc3d-random', ['--count', '4', '--element-pool', 'Si,Ge,Sn', '-e', 'C'], 4),
        ('mc3d-surface', ['--count', '2', '--from', 'mad/seeds/bulk'], 2),
        ('mc3d-cluster', ['--count', '4'], 4),
        ('shiftml-molfrags', [], 1),
    ],
)
def test_generate_each_subset_into_its_group(run_cli_command, seeds, subset, arguments, expected):
    result = run_cli_command(['structures', 'generate', subset, '--seed', '3', *arguments])

    assert f'{subset}: {expected} of {expected}' in result.output
    nodes = group_nodes(f'mad/structures/{subset}')
    assert len(nodes) >= expected
    for node in nodes:
        extras = node.base.extras.all
        assert extras['mad_subset'] == subset
        assert extras['mad_seed'] == 3
        assert node.creator.inputs.parameters['subset'] == subset
        assert orm.load_node(extras['mad_parent']).uuid == extras['mad_parent']
    if subset == 'mc3d-random':
        assert {symbol for node in nodes for symbol in node.get_symbols_set()} <= {'C', 'Si', 'Ge', 'Sn'}
    if subset == 'mc3d-surface':
        assert all(node.pbc == (True, True, False) for node in nodes)
    if subset == 'shiftml-molfrags':
        assert [node.get_formula() for node in nodes] == ['CO2']


def test_generation_draws_only_elements_of_the_labelling_family(run_cli_command, seeds, offline_family):
    """No -F and no SSSP installed: the pool is that of the offline family, which the labelling will use."""
    result = run_cli_command(['structures', 'generate', 'mc3d-random', '--count', '6', '--seed', '5'])
    assert f'those of {offline_family.label} (the offline family) among the MAD elements' in result.output
    assert '] mc3d-random: ' in result.output and '/6 stored' in result.output  # progress lines off a terminal
    drawn = {symbol for node in group_nodes('mad/structures/mc3d-random') for symbol in node.get_symbols_set()}
    assert drawn and drawn <= set(offline_family.elements)


def test_lineage_shows_the_plane_and_termination_of_a_surface(run_cli_command, seeds):
    run_cli_command(['structures', 'generate', 'mc3d-surface', '--count', '1', '--from', 'mad/seeds/bulk'])
    (surface,) = group_nodes('mad/structures/mc3d-surface')
    info = surface.base.extras.get('mad_info')
    result = run_cli_command(['query', 'lineage', surface.uuid])
    miller = ' '.join(str(index) for index in info['miller_index'])
    expected = f'Miller index ({miller}), termination {info["termination"]} of {info["n_terminations"]}'
    assert f'generator notes: {expected}' in result.output


def test_generate_mp_aloe_from_the_bundled_prototypes(run_cli_command):
    run_cli_command(['structures', 'seeds', '--source', 'prototypes'])
    result = run_cli_command(['structures', 'generate', 'mp-aloe', '-n', '6', '-s', '1', '-e', 'Li,Na,Mg,Al,Si,O,S'])

    assert 'mp-aloe: 6 of 6' in result.output
    nodes = group_nodes('mad/structures/mp-aloe')
    assert len(nodes) == 6
    prototypes = {node.uuid for node in group_nodes('mad/seeds/prototypes')}
    assert all(node.base.extras.get('mad_parent') in prototypes for node in nodes)
    assert all(node.get_symbols_set() <= {'Li', 'Na', 'Mg', 'Al', 'Si', 'O', 'S'} for node in nodes)
    assert all('prototype' in node.base.extras.get('mad_info') for node in nodes)


def test_generate_twice_adds_nothing_and_a_larger_count_adds_the_rest(run_cli_command, seeds):
    arguments = ['structures', 'generate', 'mc3d-rattled', '--count', '4', '--seed', '9', '--batch-size', '3']
    run_cli_command(arguments)
    state = database_state()
    keys = {node.base.extras.get('mad_generation_key') for node in group_nodes('mad/structures/mc3d-rattled')}

    again = run_cli_command(arguments)
    assert '0 structure(s) stored now, 4 already there' in again.output
    assert database_state() == state

    run_cli_command([*arguments[:4], '6', *arguments[5:]])
    nodes = group_nodes('mad/structures/mc3d-rattled')
    assert len(nodes) == 6
    assert keys < {node.base.extras.get('mad_generation_key') for node in nodes}


def test_import_files_of_each_format(run_cli_command, tmp_path):
    ase.io.write(tmp_path / 'nacl.cif', bulk('NaCl', 'rocksalt', a=5.64))
    ase.io.write(tmp_path / 'POSCAR', bulk('Si', 'diamond', a=5.43), format='vasp')
    frames = [bulk('Cu', 'fcc', a=3.6), bulk('Al', 'fcc', a=4.05)]
    ase.io.write(tmp_path / 'frames.extxyz', frames, format='extxyz')
    files = [tmp_path / 'nacl.cif', tmp_path / 'POSCAR', tmp_path / 'frames.extxyz']

    result = run_cli_command(['structures', 'import', *files, '--subset', 'mc3d'])

    assert '4 structure(s) imported into mad/structures/mc3d' in result.output
    nodes = group_nodes('mad/structures/mc3d')
    assert sorted(node.get_formula() for node in nodes) == ['Al', 'ClNa', 'Cu', 'Si2']
    extras = next(node.base.extras.all for node in nodes if node.get_formula() == 'Si2')
    assert extras['mad_subset'] == 'mc3d'
    assert extras['mad_source'] == 'file'
    assert extras['mad_import']['path'] == str((tmp_path / 'POSCAR').resolve())
    state = database_state()

    again = run_cli_command(['structures', 'import', *files, '--subset', 'mc3d'])
    assert '0 structure(s) imported' in again.output
    assert '4 already there' in again.output
    assert database_state() == state


def test_import_ase_database_with_selection(run_cli_command, tmp_path):
    path = tmp_path / 'molcrys.db'
    with ase.db.connect(path) as database:
        database.write(bulk('Si', 'diamond', a=5.43), kind='bulk')
        water = molecule('H2O')
        water.center(vacuum=5.0)
        database.write(water, kind='molecule')

    result = run_cli_command(
        ['structures', 'import', '--ase-db', path, '--select', 'kind=molecule', '-S', 'shiftml-molcrys', '-G', 'mine']
    )

    assert '1 structure(s) imported into mine' in result.output
    (node,) = group_nodes('mine')
    assert node.get_formula() == 'H2O'
    assert node.base.extras.get('mad_source') == 'ase-db'
    assert node.base.extras.get('mad_import')['key_value_pairs'] == {'kind': 'molecule'}


def test_import_from_optimade_follows_pages_and_keeps_the_source(run_cli_command, optimade_server):
    identifiers = ['mad-graphene', 'mad-water', 'mad-silicon-sites', 'mad-disordered']
    filter_string = ' OR '.join(f'id="{identifier}"' for identifier in identifiers)

    source = ['--optimade', optimade_server, '--filter', filter_string]
    result = run_cli_command(['structures', 'import', *source, '--page-limit', '1', '--subset', 'mc2d'])

    assert '3 structure(s) imported into mad/structures/mc2d (0 already there, 1 skipped)' in result.output
    assert f'skipped {optimade_server}/v1/structures/mad-disordered: structure_features' in result.output
    nodes = {node.base.extras.get('mad_optimade_id'): node for node in group_nodes('mad/structures/mc2d')}
    assert set(nodes) == set(identifiers[:3])
    assert nodes['mad-graphene'].pbc == (True, True, False)
    assert nodes['mad-water'].get_formula() == 'H2O'
    for identifier, node in nodes.items():
        extras = node.base.extras.all
        assert extras['mad_source'] == 'optimade'
        assert extras['mad_subset'] == 'mc2d'
        assert extras['mad_optimade_provider'] == 'exmpl'
        assert extras['mad_optimade_url'] == f'{optimade_server}/v1/structures/{identifier}'
        assert extras['mad_import']['filter'] == filter_string
    with urllib.request.urlopen(nodes['mad-water'].base.extras.get('mad_optimade_url'), timeout=10) as response:
        assert json.loads(response.read())['data']['id'] == 'mad-water'

    state = database_state()
    again = run_cli_command(['structures', 'import', *source, '-S', 'mc2d'])
    assert '0 structure(s) imported into mad/structures/mc2d (3 already there, 1 skipped)' in again.output
    assert database_state() == state


@pytest.mark.parametrize(
    ('arguments', 'message'),
    [
        (['generate', 'mc3d-rattled', '--count', '2', '--from', 'empty'], 'empty'),
        (['generate', 'mc3d-rattled', '--count', '2', '--from', 'no/such/group'], 'no/such/group'),
        (['generate', 'mc3d-rattled', '--count', '0'], '--count'),
        (['generate', 'mc3d-rattled', '--count', '-3'], '--count'),
        (['generate', 'mc3d-random', '--count', '2', '--element-pool', 'Si,Qq'], 'Qq'),
        (['generate', 'mc3d-random', '--count', '2', '--element-pool', 'Si,At'], 'At'),
        (['generate', 'mc3d-rattled', '--count', '2', '--pseudo-family', 'no/family'], 'no/family'),
        (['generate', 'mc3d-rattled'], 'count'),
        (['generate', 'mc3d', '--count', '2'], 'mc3d'),
        (['import', '--subset', 'mc3d'], 'exactly one source'),
        (['import', '--subset', 'mc3d', '--ase-db', '/no/such.db'], '/no/such.db'),
    ],
)
def test_bad_input_stores_nothing(run_cli_command, seeds, arguments, message):
    orm.Group(label='empty').store()
    state = database_state()

    result = run_cli_command(['structures', *arguments], raises=True)

    assert message in result.output
    assert database_state() == state


def test_unreadable_or_implausible_files_store_nothing(run_cli_command, tmp_path):
    ase.io.write(tmp_path / 'good.cif', bulk('NaCl', 'rocksalt', a=5.64))
    (tmp_path / 'broken.cif').write_text('data_broken\n_cell_length_a five\n')
    ase.io.write(tmp_path / 'overlap.xyz', Atoms('H2', positions=[[0, 0, 0], [0, 0, 0.1]]))
    state = database_state()

    broken = run_cli_command(
        ['structures', 'import', tmp_path / 'good.cif', tmp_path / 'broken.cif', '-S', 'mc3d'], raises=True
    )
    assert 'broken.cif' in broken.output
    overlap = run_cli_command(['structures', 'import', tmp_path / 'overlap.xyz', '-S', 'mc3d'], raises=True)
    assert 'overlap.xyz' in overlap.output
    assert 'closer than' in overlap.output
    assert database_state() == state


def test_rejected_optimade_filter_stores_nothing(run_cli_command, optimade_server):
    state = database_state()

    result = run_cli_command(
        ['structures', 'import', '--optimade', optimade_server, '--filter', 'nsites <<< 3', '-S', 'mc3d'], raises=True
    )

    assert 'nsites <<< 3' in result.output
    assert database_state() == state
