"""The ``aiida-mad`` root command, ``setup localhost`` and ``demo``, through click's runner and a subprocess."""

import subprocess
import sys

import pytest

from aiida_mad.pseudos import offline_family_label


def test_help_lists_commands(run_cli_command):
    result = run_cli_command(['--help'])
    assert 'demo' in result.output
    assert 'setup' in result.output


def test_console_script_help():
    executable = f'{sys.prefix}/bin/aiida-mad'
    result = subprocess.run([executable, '--help'], capture_output=True, text=True, check=True)
    assert 'Usage: aiida-mad' in result.stdout


@pytest.mark.usefixtures('aiida_profile_clean')
def test_setup_localhost_is_idempotent(run_cli_command, aiida_localhost):
    from aiida import orm

    first = run_cli_command(['setup', 'localhost', '--computer', aiida_localhost.label])
    assert 'setup changed something' in first.output
    assert f'{offline_family_label()} (72 elements): created' in first.output
    codes = orm.QueryBuilder().append(orm.InstalledCode).count()

    second = run_cli_command(['setup', 'localhost', '--computer', aiida_localhost.label])
    assert 'nothing to do' in second.output
    assert orm.QueryBuilder().append(orm.InstalledCode).count() == codes
    assert orm.load_code(f'pw@{aiida_localhost.label}').with_mpi is True


@pytest.mark.usefixtures('aiida_profile_clean')
def test_setup_localhost_refuses_missing_executable(run_cli_command, aiida_localhost):
    result = run_cli_command(
        ['setup', 'localhost', '--computer', aiida_localhost.label, '--pw-executable', '/nonexistent/pw.x'],
        raises=True,
    )
    assert '/nonexistent/pw.x' in result.output
