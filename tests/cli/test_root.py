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


@pytest.mark.usefixtures('aiida_profile_clean')
def test_demo_runs_through_the_daemon(run_cli_command, pw_code, offline_family, started_daemon_client):
    result = run_cli_command(['demo', '--code', pw_code.full_label])
    assert 'energy:' in result.output
    energy = float(result.output.split('energy:')[1].split()[0])
    assert energy == pytest.approx(-230.27, abs=0.05)
    assert 'forces (eV/Å)' in result.output
    assert 'stress (eV/Å³' in result.output


@pytest.mark.usefixtures('aiida_profile_clean')
def test_demo_refuses_unknown_family(run_cli_command, pw_code):
    result = run_cli_command(['demo', '--code', pw_code.full_label, '--pseudo-family', 'no/such/family'], raises=True)
    assert 'no/such/family' in result.output


@pytest.mark.usefixtures('aiida_profile_clean')
def test_demo_says_when_daemon_is_down(run_cli_command, pw_code, offline_family, stopped_daemon_client):
    result = run_cli_command(['demo', '--code', pw_code.full_label], raises=True)
    assert 'daemon' in result.output
    assert 'not running' in result.output
