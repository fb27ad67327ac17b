"""The parameter types of ``aiida-mad``: families (``offline`` everywhere), codes, groups; bad values refused cleanly.

Every refusal is checked through ``run_refused``: a non-zero exit with a message naming the value, no traceback, and
no node, group or group membership stored. Read-only commands (``dft status``, ``dft submit --dry-run``) and refused
submissions must not create the process group.
"""

from __future__ import annotations

import pytest
from aiida import orm
from ase.build import bulk

pytestmark = pytest.mark.usefixtures('aiida_profile_clean')

LONG_LABEL = 'g' * 5000


def structure_group(label: str, count: int = 1) -> orm.Group:
    """Return a stored group of ``count`` Si structures of subset mc3d."""
    group = orm.Group(label=label).store()
    for index in range(count):
        node = orm.StructureData(ase=bulk('Si', 'diamond', a=5.40 + 0.02 * index)).store()
        node.base.extras.set('mad_subset', 'mc3d')
        group.add_nodes(node)
    return group


def group_exists(label: str) -> bool:
    return bool(orm.Group.collection.count(filters={'label': label}))


@pytest.fixture
def dft_args(pw_code, offline_family):
    """Return the code, protocol and family options of a `dft` command (the offline family through its alias)."""
    return ['--code', pw_code.full_label, '-P', 'fast', '-F', 'offline']


def test_offline_alias_in_dft_and_structures(run_cli_command, dft_args, offline_family):
    structure_group('mad/structures/mc3d')
    dry_run = run_cli_command(['dft', 'submit', 'mad/structures/mc3d', *dft_args, '--dry-run'])
    assert 'would submit 1 of 1' in dry_run.output

    run_cli_command(['structures', 'seeds', '--source', 'bulk'])
    generated = run_cli_command(['structures', 'generate', 'mc3d-rattled', '-n', '2', '-F', 'offline'])
    assert 'mc3d-rattled: 2 of 2' in generated.output
    nodes = orm.load_group('mad/structures/mc3d-rattled').nodes
    assert all(node.get_symbols_set() <= set(offline_family.elements) for node in nodes)
    # The alias and the label are the same family: same fingerprint in the dry run.
    by_label = run_cli_command(
        ['dft', 'submit', 'mad/structures/mc3d', *dft_args[:-1], offline_family.label, '--dry-run']
    )
    fingerprint = dry_run.output.split('fingerprint ')[1].split()[0]
    assert f'fingerprint {fingerprint}' in by_label.output


@pytest.mark.parametrize(
    'command',
    [
        ['dft', 'submit', 'mad/structures/mc3d', '--dry-run'],
        ['dft', 'status', 'mad/structures/mc3d'],
        ['dft', 'isolated-atoms', 'Si'],
        ['structures', 'generate', 'mc3d-random', '-n', '1'],
    ],
)
def test_unknown_family_is_refused_everywhere_with_the_installed_ones(run_refused, pw_code, offline_family, command):
    structure_group('mad/structures/mc3d')
    result = run_refused(
        [*command, '--code', pw_code.full_label, '-F', 'SSSP/9.9/none']
        if command[0] == 'dft'
        else [*command, '-F', 'SSSP/9.9/none'],
        "'SSSP/9.9/none' is not installed",
        offline_family.label,
        'aiida-pseudo install sssp',
        'aiida-mad setup localhost',
    )
    assert '--pseudo-family' in result.output


def test_a_group_that_is_not_a_family_is_named_as_such(run_refused, pw_code):
    structure_group('mad/structures/mc3d')
    run_refused(
        ['dft', 'status', 'mad/structures/mc3d', '--code', pw_code.full_label, '-F', 'mad/structures/mc3d'],
        'is a group but not a pseudopotential family',
    )


def test_read_only_commands_create_no_process_group(run_cli_command, run_refused, dft_args):
    structure_group('mad/structures/mc3d', count=2)
    before = orm.QueryBuilder().append(orm.Group).count()

    status = run_cli_command(['dft', 'status', 'mad/structures/mc3d', *dft_args])
    row = next(line for line in status.output.splitlines() if 'mc3d ' in line and '│' in line)
    assert [cell.strip() for cell in row.split('│')[1:7]] == ['mc3d', '2', '0', '0', '0', '0']
    run_cli_command(['dft', 'submit', 'mad/structures/mc3d', *dft_args, '--dry-run'])
    run_cli_command(['dft', 'submit', 'mad/structures/mc3d', *dft_args, '--dry-run', '--process-group', 'mine/dft'])

    assert orm.QueryBuilder().append(orm.Group).count() == before
    assert not group_exists('mad/dft/mc3d') and not group_exists('mine/dft')


def test_status_of_a_process_group_that_does_not_exist_is_refused(run_refused, dft_args):
    structure_group('mad/structures/mc3d')
    run_refused(
        ['dft', 'status', 'mad/structures/mc3d', *dft_args, '--process-group', 'mad/dft/mc3dd'],
        'no group `mad/dft/mc3dd`',
    )
    assert not group_exists('mad/dft/mc3dd')


def test_refused_submission_creates_no_process_group(run_refused, dft_args):
    group = orm.Group(label='mad/structures/mixed').store()
    for atoms in (bulk('Si', 'diamond', a=5.43), bulk('Ce', 'fcc', a=5.16)):
        group.add_nodes(orm.StructureData(ase=atoms).store())
    run_refused(['dft', 'submit', group.label, *dft_args], 'nothing submitted', 'Ce (1 structure)')
    assert not group_exists('mad/dft/mixed')


@pytest.mark.parametrize('command', ['submit', 'status'])
def test_empty_or_foreign_groups_are_refused(run_refused, dft_args, command):
    orm.Group(label='empty').store()
    run_refused(['dft', command, 'empty', *dft_args], 'group `empty` is empty', 'no structures')

    foreign = orm.Group(label='numbers').store()
    foreign.add_nodes([orm.Int(1).store(), orm.Int(2).store(), orm.Dict({'a': 1}).store()])
    run_refused(['dft', command, 'numbers', *dft_args], 'group `numbers` holds no structures', '1 Dict, 2 Int')

    mixed = structure_group('mixed', count=2)
    mixed.add_nodes(orm.Int(3).store())
    run_refused(['dft', command, 'mixed', *dft_args], 'group `mixed` holds 2 structures and also 1 Int')

    run_refused(['dft', command, 'no/such/group', *dft_args], 'no group `no/such/group`', 'aiida-mad structures list')


@pytest.mark.parametrize(
    ('label', 'expected'),
    [
        pytest.param('', 'cannot be empty', id='empty'),
        pytest.param('   ', 'cannot be empty', id='blank'),
        pytest.param(LONG_LABEL, 'at most 255 characters', id='5000-characters'),
        pytest.param('bad\nlabel', 'control characters (U+000A)', id='newline'),
        pytest.param('tab\tlabel', 'U+0009', id='tab'),
        pytest.param('mad//dft', 'empty path component', id='double-slash'),
        pytest.param('mad/dft/', 'empty path component', id='trailing-slash'),
        pytest.param(' padded', 'white space', id='padded'),
    ],
)
def test_bad_group_labels_are_refused(run_refused, dft_args, label, expected):
    structure_group('mad/structures/mc3d')
    run_refused(['dft', 'submit', 'mad/structures/mc3d', *dft_args, '--process-group', label], expected)
    run_refused(['dft', 'status', label, *dft_args], expected)
    run_refused(['structures', 'generate', 'mc3d-rattled', '-n', '1', '-G', label], expected)
    run_refused(['structures', 'import', '--ase-db', 'never-read.db', '-S', 'mc3d', '-G', label], expected)


def test_long_label_is_shown_cut_with_its_length(run_refused, dft_args):
    structure_group('mad/structures/mc3d')
    result = run_refused(['dft', 'submit', 'mad/structures/mc3d', *dft_args, '--process-group', LONG_LABEL], '5000')
    assert LONG_LABEL not in result.output and '(5000 characters)' in result.output


def test_structures_are_not_put_into_a_group_of_other_nodes(run_refused, tmp_path):
    import ase.io

    group = orm.Group(label='mad/dft/mc3d').store()
    group.add_nodes(orm.Int(1).store())
    ase.io.write(tmp_path / 'si.cif', bulk('Si', 'diamond', a=5.43))
    run_refused(
        ['structures', 'import', tmp_path / 'si.cif', '-S', 'mc3d', '-G', 'mad/dft/mc3d'],
        'group `mad/dft/mc3d` holds 1 Int',
    )


def test_generate_from_an_empty_parent_group_is_refused(run_refused):
    orm.Group(label='parents').store()
    run_refused(['structures', 'generate', 'mc3d-rattled', '-n', '1', '--from', 'parents'], 'group `parents` is empty')


def test_codes_are_checked(run_refused, pw_code, offline_family, aiida_code_installed):
    structure_group('mad/structures/mc3d')
    args = ['dft', 'submit', 'mad/structures/mc3d', '-P', 'fast', '-F', 'offline', '--dry-run']
    run_refused([*args, '--code', 'nope@localhost'], "no code 'nope@localhost'", pw_code.full_label)
    other = aiida_code_installed(
        label='bash', default_calc_job_plugin='core.arithmetic.add', filepath_executable='/bin/bash'
    )
    run_refused(
        [*args, '--code', other.full_label],
        f'code `{other.full_label}` runs `core.arithmetic.add`',
        'quantumespresso.pw',
    )


def test_code_type_accepts_codes_without_plugin_by_executable(aiida_localhost):
    import click

    from aiida_mad.cli.params.types import CodeParamType

    mtt = orm.InstalledCode(label='mtt', computer=aiida_localhost, filepath_executable='/usr/bin/mtt').store()
    bash = orm.InstalledCode(label='sh', computer=aiida_localhost, filepath_executable='/bin/sh').store()
    param = CodeParamType(entry_point='mad.metatrain', executable='mtt')
    assert param.convert(mtt.full_label, None, None).pk == mtt.pk
    with pytest.raises(click.BadParameter, match='the executable `mtt`'):
        param.convert(bash.full_label, None, None)
    assert param.candidates() == [mtt.full_label]


def test_isolated_atoms_refuse_what_is_no_element(run_refused, dft_args):
    run_refused(['dft', 'isolated-atoms', 'Si', 'Xx', '$(reboot)', *dft_args], 'not chemical elements: Xx')
