"""``setup_profile.sh``: a real run in a scratch AIIDA_PATH, twice (the second a no-op), and its bad input."""

import os
import pathlib
import shutil
import socket
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = REPO / 'setup_profile.sh'


def run_script(*args, env_overrides=None, timeout=900):
    env = {**os.environ, 'MAD_VENV': sys.prefix, **(env_overrides or {})}
    return subprocess.run(
        ['bash', str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=timeout, check=False
    )


@pytest.fixture
def scratch_aiida_path(tmp_path):
    """Yield a scratch AIIDA_PATH; stop the daemon of the scratch profile afterwards, whatever happened."""
    yield tmp_path
    subprocess.run(
        [f'{sys.prefix}/bin/verdi', '-p', 'mad-scratch', 'daemon', 'stop'],
        env={**os.environ, 'AIIDA_PATH': str(tmp_path)},
        capture_output=True,
        check=False,
    )


def test_second_run_is_a_no_op(scratch_aiida_path):
    env = {'AIIDA_PATH': str(scratch_aiida_path)}
    first = run_script('--profile', 'mad-scratch', env_overrides=env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert 'created profile mad-scratch' in first.stdout
    assert 'code pw@localhost' in first.stdout
    assert 'started the daemon of mad-scratch' in first.stdout
    assert 'setup complete.' in first.stdout
    assert (scratch_aiida_path / '.aiida' / 'config.json').is_file()

    second = run_script('--profile', 'mad-scratch', env_overrides=env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert 'nothing changed: everything was already set up.' in second.stdout
    for made in ('created profile', 'started the daemon', ': created'):
        assert made not in second.stdout

    status = subprocess.run(
        [f'{sys.prefix}/bin/verdi', '-p', 'mad-scratch', 'daemon', 'status'],
        env={**os.environ, 'AIIDA_PATH': str(scratch_aiida_path)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert status.returncode == 0, status.stdout + status.stderr


def test_unknown_option_prints_usage():
    result = run_script('--no-such-option')
    assert result.returncode == 2
    assert "unknown option '--no-such-option'" in result.stderr
    assert 'Usage: ./setup_profile.sh' in result.stderr


def test_failing_step_is_named(tmp_path):
    result = run_script('--profile', 'never-made', env_overrides={'AIIDA_PATH': str(tmp_path), 'PYTHON': 'false'})
    assert result.returncode != 0
    assert "step 'Python environment' failed" in result.stderr
    assert 'What to do:' in result.stderr
    assert not (tmp_path / '.aiida').exists()


def as_root(*command: str) -> list[str]:
    return list(command) if os.geteuid() == 0 else ['sudo', '-n', *command]


def listening(port: int) -> bool:
    """Return whether a server accepts connections on ``port`` of this machine (asking starts nothing)."""
    try:
        with socket.create_connection(('127.0.0.1', port), timeout=2):
            return True
    except OSError:
        return False


def running_services() -> set[str]:
    """Return the servers running now: ``rabbitmq``, ``epmd``, ``postgresql <version> <cluster>``.

    RabbitMQ and Erlang's port mapper are found by their ports: ``rabbitmqctl`` itself would start ``epmd``.
    """
    running = {name for name, port in (('rabbitmq', 5672), ('epmd', 4369)) if listening(port)}
    if shutil.which('pg_lsclusters'):
        clusters = subprocess.run(['pg_lsclusters', '-h'], capture_output=True, text=True, check=False)
        for line in clusters.stdout.splitlines():
            version, cluster, _, state, *_ = line.split()
            if state == 'online':
                running.add(f'postgresql {version} {cluster}')
    return running


def stop_service(service: str) -> None:
    if service == 'rabbitmq':
        subprocess.run(as_root('rabbitmqctl', '-q', 'stop'), capture_output=True, check=True, timeout=300)
    elif service == 'epmd':
        subprocess.run(as_root('epmd', '-kill'), capture_output=True, check=True, timeout=60)
    else:
        _, version, cluster = service.split()
        subprocess.run(as_root('pg_ctlcluster', version, cluster, 'stop'), capture_output=True, check=True)


@pytest.fixture
def production_profile(tmp_path):
    """Yield ``(name, AIIDA_PATH)`` of a PostgreSQL + RabbitMQ profile to create.

    Afterwards the profile and its database are deleted, and the servers that setup_profile.sh started (those that
    were not running before) are stopped: the test leaves no server behind.
    """
    import secrets

    before = running_services()
    name = f'mad-prod-{secrets.token_hex(4)}'
    yield name, tmp_path
    env = {**os.environ, 'AIIDA_PATH': str(tmp_path)}
    verdi = f'{sys.prefix}/bin/verdi'
    subprocess.run([verdi, '-p', name, 'daemon', 'stop'], env=env, capture_output=True, check=False)
    subprocess.run(
        [verdi, 'profile', 'delete', name, '--delete-data', '--force'], env=env, capture_output=True, check=False
    )
    # The broker first: stopping it runs rabbitmqctl, which needs (and may start) epmd.
    started = sorted(running_services() - before, key=lambda service: service == 'epmd')
    for service in started:
        stop_service(service)
    assert not (running_services() - before), f'servers still running after the test: {running_services() - before}'


@pytest.mark.timeout(2400)
def test_production_profile_postgres_rabbitmq(production_profile):
    """`--postgres --rabbitmq`: real PostgreSQL storage and RabbitMQ broker, the demo's labelling through them, a no-op.

    setup_profile.sh installs the Debian packages (postgresql, rabbitmq-server) and starts the servers itself; the
    fixture stops what it started. The demo runs its first stages here, those that the production services carry:
    its structures, then real pw.x submitted through RabbitMQ to the daemon by the submission controller (which locks
    with PostgreSQL's advisory lock), and once more to show that the controller's keys hold on PostgreSQL. The later
    stages run end to end in tests/cli/test_demo.py (interrupted and resumed), on the test profile: running the whole
    demo twice in the suite would only repeat minutes of pw.x and training.
    """
    name, aiida_path = production_profile
    env = {'AIIDA_PATH': str(aiida_path)}
    first = run_script('--profile', name, '--postgres', '--rabbitmq', env_overrides=env)
    assert first.returncode == 0, first.stdout + first.stderr
    services = running_services()
    assert 'rabbitmq' in services and any(service.startswith('postgresql ') for service in services), services
    assert f'profile: {name} (storage core.psql_dos, broker core.rabbitmq)' in first.stdout
    assert (aiida_path / 'postgres-password').stat().st_mode & 0o077 == 0

    def demo():
        command = [f'{sys.prefix}/bin/aiida-mad', '-p', name, 'demo', '--until', 'labelling']
        result = subprocess.run(
            [*command, '--output-dir', str(aiida_path / 'mad-demo')],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=1200,  # the demo protocol's 85/340 Ry: minutes on 2 idle cores, more on a loaded machine
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        for number, stage in enumerate(('structures', 'labelling'), start=1):
            assert f'[{number}/2] {stage}: ' in result.stdout, result.stdout
        return result.stdout

    # Every structure of the demo labelled through RabbitMQ and the daemon, none failed.
    from aiida_mad.demo import GENERATION, IMPORTED_SEEDS

    structures = len(IMPORTED_SEEDS) + sum(settings['count'] for settings in GENERATION.values())
    output = demo()
    assert f'[2/2] labelling: {structures} labelled, {structures} submitted now, in mad-demo/dft (' in output, output
    assert 'verdi group list -a -p mad-demo' in output, output
    # Again: nothing is generated or submitted twice.
    again = demo()
    assert '0 seeds and 0 generated structures stored now' in again, again
    assert f'[2/2] labelling: {structures} labelled, 0 submitted now, in mad-demo/dft (' in again, again

    second = run_script('--profile', name, '--postgres', '--rabbitmq', env_overrides=env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert 'nothing changed: everything was already set up.' in second.stdout
