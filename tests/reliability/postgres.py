"""Throwaway profiles on this machine's servers: PostgreSQL storage (ZeroMQ broker), or RabbitMQ broker (SQLite).

Each has its own ``AIIDA_PATH``. :func:`rabbitmq_server` starts RabbitMQ the way ``setup_profile.sh --rabbitmq``
does if it is not running, and stops it (and Erlang's port mapper) afterwards; :class:`RabbitProfile` is a SQLite
profile with the RabbitMQ broker and the same computer, code and family as below, without a daemon at first.

The cluster is the one ``setup_profile.sh --postgres`` uses (Debian's ``postgresql`` package, ``pg_ctlcluster``).
:func:`postgres_cluster` starts it if it is down and stops it again afterwards (a test leaves no server behind, as
``tests/test_setup_profile.py`` checks). :class:`PostgresProfile` creates a role and a database of its own (through
``psql`` as the ``postgres`` user, peer authentication: the ``postgres`` role's password is left alone), an AiiDA
profile on them, a ``localhost`` computer, a pw.x code that fails at once (``/bin/false``, declared 7.2: the
submissions are what is tested) and the offline pseudopotential family; scripts run in subprocesses with the
profile loaded. :meth:`PostgresProfile.delete` stops its daemon and drops the database and the role.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import textwrap
import time

from tests.fresh_profile import REPOSITORY

#: Prepended to every script run in the profile: load it.
_LOAD = """\
import sys
from aiida import load_profile
load_profile({name!r}, allow_switch=True)
"""

_CREATE = """\
import json, pathlib, sys
from aiida.manage.configuration import create_profile, get_config, load_profile
settings = json.loads(sys.argv[1])
config = get_config(create=True)
if settings['broker'] == 'core.rabbitmq':
    storage = ('core.sqlite_dos', {'filepath': settings['repository']})
    broker = {
        'broker_protocol': 'amqp', 'broker_username': 'guest', 'broker_password': 'guest',
        'broker_host': '127.0.0.1', 'broker_port': 5672, 'broker_virtual_host': '',
    }
else:
    storage = ('core.psql_dos', {
        'database_hostname': 'localhost',
        'database_port': 5432,
        'database_username': settings['role'],
        'database_password': settings['password'],
        'database_name': settings['database'],
        'repository_uri': pathlib.Path(settings['repository']).as_uri(),
    })
    broker = {}
create_profile(
    config,
    storage_backend=storage[0],
    storage_config=storage[1],
    broker_backend=settings['broker'],
    broker_config=broker,
    name=settings['name'],
    email='race@aiida-mad.test',
)
config.set_option('warnings.rabbitmq_version', False, scope=settings['name'])
config.set_default_profile(settings['name'], overwrite=True)
config.store()
load_profile(settings['name'], allow_switch=True)
from aiida import orm
from aiida_mad.pseudos import install_offline_family
computer = orm.Computer(
    label='localhost', hostname='localhost', transport_type='core.local', scheduler_type='core.direct',
    workdir=settings['workdir'],
).store()
computer.set_minimum_job_poll_interval(0.0)
computer.set_default_mpiprocs_per_machine(1)
computer.configure()
code = orm.InstalledCode(
    label='pw-crash', computer=computer, filepath_executable='/bin/false', default_calc_job_plugin='quantumespresso.pw'
).store()
code.base.extras.set('mad_code_version', '7.2')
install_offline_family()
print(json.dumps({'code': code.full_label}))
"""


def _psql(sql: str) -> None:
    command = ['runuser', '-u', 'postgres', '--', 'psql', '-q', '-v', 'ON_ERROR_STOP=1', '-c', sql]
    if os.geteuid() != 0:
        command = ['sudo', '-n', *command]
    subprocess.run(command, capture_output=True, text=True, check=True, timeout=120)


def _cluster() -> tuple[str, str, str]:
    """Return ``(version, name, status)`` of the first PostgreSQL cluster (``pg_lsclusters``)."""
    output = subprocess.run(['pg_lsclusters', '-h'], capture_output=True, text=True, check=True).stdout
    version, name, _, status, *_ = output.splitlines()[0].split()
    return version, name, status


@contextlib.contextmanager
def postgres_cluster():
    """Run the machine's PostgreSQL cluster for the block: started if it was down, and then stopped again."""
    if not shutil.which('pg_lsclusters'):
        raise RuntimeError('PostgreSQL is not installed: `setup_profile.sh --postgres` installs it')
    version, name, status = _cluster()
    started = status != 'online'
    as_root = [] if os.geteuid() == 0 else ['sudo', '-n']
    if started:
        subprocess.run([*as_root, 'pg_ctlcluster', version, name, 'start'], check=True, timeout=120)
    try:
        yield
    finally:
        if started:
            subprocess.run([*as_root, 'pg_ctlcluster', version, name, 'stop'], check=False, timeout=120)


class PostgresProfile:
    """An AiiDA profile on a database of its own, in ``directory`` (its ``AIIDA_PATH``); see the module docstring."""

    def __init__(self, directory):
        self.directory = directory
        token = secrets.token_hex(4)
        self.name = f'mad-race-{token}'
        self.role = self.database = f'mad_race_{token}'
        self.password = secrets.token_hex(16)
        self.env = {**os.environ, 'AIIDA_PATH': str(directory)}
        self.code = None

    broker = 'core.zeromq'

    def create(self, *, daemon: bool = True) -> None:
        """Create the role, the database, the profile and what submissions need; start the daemon (one worker)."""
        _psql(f"CREATE ROLE {self.role} LOGIN PASSWORD '{self.password}'")
        _psql(f'CREATE DATABASE {self.database} OWNER {self.role}')
        self._create(daemon)

    def _create(self, daemon: bool) -> None:
        settings = {
            'broker': self.broker,
            'name': self.name,
            'role': self.role,
            'password': self.password,
            'database': self.database,
            'repository': str(self.directory / 'repository'),
            'workdir': str(self.directory / 'work'),
        }
        output = self._python(_CREATE, json.dumps(settings))
        self.code = json.loads(output.splitlines()[-1])['code']
        if daemon:
            self.verdi('daemon', 'start', '1')

    def verdi(self, *args: str) -> str:
        result = subprocess.run(
            [f'{sys.prefix}/bin/verdi', '-p', self.name, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if result.returncode:
            raise RuntimeError(f'verdi {" ".join(args)}: {result.stdout}{result.stderr}')
        return result.stdout

    def _python(self, source: str, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, '-c', source, *args],
            cwd=REPOSITORY,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if result.returncode:
            raise RuntimeError(f'script failed ({result.returncode}):\n{result.stdout}\n{result.stderr}')
        return result.stdout

    def run(self, source: str, *args: str) -> str:
        """Run Python ``source`` with the profile loaded; return its stdout."""
        return self._python(_LOAD.format(name=self.name) + textwrap.dedent(source), *args)

    def popen(self, script, *args: str) -> subprocess.Popen:
        """Start the Python file ``script`` (its first argument: the profile's name) in the profile's configuration."""
        return subprocess.Popen(
            [sys.executable, str(script), self.name, *args],
            cwd=REPOSITORY,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def delete(self) -> None:
        """Stop the daemon, drop the database and the role (whatever state they are in)."""
        with contextlib.suppress(RuntimeError, subprocess.SubprocessError):
            self.verdi('daemon', 'stop')
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                _psql(f'DROP DATABASE IF EXISTS {self.database} WITH (FORCE)')
                break
            except subprocess.CalledProcessError:
                time.sleep(1)
        with contextlib.suppress(subprocess.CalledProcessError):
            _psql(f'DROP ROLE IF EXISTS {self.role}')


def _listening(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(('127.0.0.1', port), timeout=2):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def rabbitmq_server():
    """Run RabbitMQ for the block: started (as ``setup_profile.sh`` does) if it was not, then stopped with epmd."""
    if not shutil.which('rabbitmq-server'):
        raise RuntimeError('RabbitMQ is not installed: `setup_profile.sh --rabbitmq` installs it')
    as_root = [] if os.geteuid() == 0 else ['sudo', '-n']
    running, epmd = _listening(5672), _listening(4369)
    if not running:
        subprocess.run([*as_root, 'rabbitmq-server', '-detached'], check=True, timeout=120)
        subprocess.run([*as_root, 'rabbitmqctl', '-q', 'await_startup', '--timeout', '120'], check=False, timeout=180)
        deadline = time.monotonic() + 120
        while not _listening(5672):
            if time.monotonic() > deadline:
                raise RuntimeError('rabbitmq-server did not start in 2 minutes: see /var/log/rabbitmq')
            time.sleep(1)
    try:
        yield
    finally:
        if not running:
            subprocess.run([*as_root, 'rabbitmqctl', '-q', 'stop'], capture_output=True, check=False, timeout=300)
        if not epmd and _listening(4369):
            subprocess.run([*as_root, 'epmd', '-kill'], capture_output=True, check=False, timeout=60)


class RabbitProfile(PostgresProfile):
    """A SQLite profile with the RabbitMQ broker (no database server needed), created without a daemon."""

    broker = 'core.rabbitmq'

    def create(self, *, daemon: bool = False) -> None:
        """Create the profile and what submissions need; start the daemon only if asked."""
        self._create(daemon)

    def delete(self) -> None:
        """Stop the daemon (its storage lives in the profile's folder, removed with it)."""
        with contextlib.suppress(RuntimeError, subprocess.SubprocessError):
            self.verdi('daemon', 'stop')
