"""Pytest plugin: a real single-node Slurm cluster, started by the tests, and an AiiDA computer that submits to it.

The cluster comes from Debian's ``slurm-wlm`` and ``munge`` packages through ``tests/services/slurm.sh``. Nothing is
skipped: when the cluster cannot start, every test that asks for it fails with the script's reason and logs.

List this module in the root ``conftest.py``'s ``pytest_plugins`` as ``'tests.slurm_fixtures'``, or in a test
module's ``pytest_plugins``. (``-p tests.slurm_fixtures`` on the command line does not work in this environment:
some installed distributions ship a top-level ``tests`` package that shadows ours before pytest sets up the
``tests`` namespace for the conftest.)

Fixtures:

- ``slurm_cluster`` (session): a running cluster (:class:`SlurmCluster`); ``SLURM_CONF`` is set in ``os.environ``
  for the whole session, so the AiiDA daemon (started later, or restarted here if it already runs) inherits it.
- ``slurm_computer`` (function): a configured AiiDA computer with the ``core.slurm`` scheduler and the
  ``core.local`` transport, whose MPI command is ``mpirun -np {tot_num_mpiprocs}``.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import shlex
import subprocess
import time

import pytest

#: The service script that starts, stops and reports on the cluster.
SLURM_SCRIPT = pathlib.Path(__file__).resolve().parent / 'services' / 'slurm.sh'

#: Seconds allowed for ``slurm.sh start`` (it waits up to 60 s for the node itself) and ``slurm.sh stop``.
START_TIMEOUT = 150
STOP_TIMEOUT = 90

#: The MPI launcher that works for Debian's OpenMPI under this Slurm. ``srun`` direct launch does not: Debian's
#: OpenMPI has no Slurm PMI support and Slurm's ``mpi/pmix`` plugin cannot load the PMIx library; ``mpirun`` sees
#: the allocation (``SLURM_*`` variables) and starts the ranks itself.
MPIRUN_COMMAND = 'mpirun -np {tot_num_mpiprocs}'

#: Label of the computer made by ``slurm_computer``.
SLURM_COMPUTER_LABEL = 'slurm-test'


@dataclasses.dataclass(frozen=True)
class SlurmCluster:
    """A running single-node Slurm cluster.

    :param directory: the folder with the configuration, state, spool, logs and pid files.
    :param conf: the ``slurm.conf`` (also in ``os.environ['SLURM_CONF']`` while the session runs).
    :param node: the node name (``hostname -s``).
    :param partition: the default (and only) partition.
    :param cpus: the node's CPUs (``nproc``).
    """

    directory: pathlib.Path
    conf: pathlib.Path
    node: str
    partition: str
    cpus: int

    @property
    def log_directory(self) -> pathlib.Path:
        """Return the folder with ``slurmctld.log`` and ``slurmd.log``."""
        return self.directory / 'log'

    def env(self, **extra: str) -> dict[str, str]:
        """Return a copy of ``os.environ`` with ``SLURM_CONF`` pointing at this cluster, plus ``extra``."""
        return {**os.environ, 'SLURM_CONF': str(self.conf), **extra}

    def run(self, *args: str, timeout: float = 30, check: bool = True, **extra_env: str) -> subprocess.CompletedProcess:
        """Run a Slurm client command (``sbatch``, ``squeue``, ``scontrol`` ...) against this cluster.

        :param check: fail the test, showing the command's output, when it exits non-zero.
        """
        result = subprocess.run(
            list(args), capture_output=True, text=True, timeout=timeout, env=self.env(**extra_env), check=False
        )
        if check and result.returncode != 0:
            pytest.fail(
                f'`{shlex.join(args)}` exited with {result.returncode}\n'
                f'stdout:\n{result.stdout}\nstderr:\n{result.stderr}'
            )
        return result

    def job_info(self, job_id: int | str) -> dict[str, str]:
        """Return ``scontrol show job`` of a job as a dictionary (``JobState``, ``ExitCode``, ``WorkDir`` ...)."""
        output = self.run('scontrol', '--oneliner', 'show', 'job', str(job_id)).stdout
        return dict(re.findall(r'(\w+)=(\S*)', output))

    def wait_for_job(self, job_id: int | str, timeout: float = 60) -> dict[str, str]:
        """Wait until a job has left the queue's active states and return its ``scontrol show job`` information.

        Fails the test, with the job's information and the daemons' logs, when the job is still active after
        ``timeout`` seconds.
        """
        active = {'PENDING', 'CONFIGURING', 'RUNNING', 'COMPLETING', 'SUSPENDED', 'REQUEUED', 'RESIZING'}
        deadline = time.monotonic() + timeout
        while True:
            info = self.job_info(job_id)
            if info.get('JobState') not in active:
                return info
            if time.monotonic() > deadline:
                pytest.fail(f'Slurm job {job_id} still {info.get("JobState")} after {timeout} s: {info}\n{self.logs()}')
            time.sleep(0.2)

    def logs(self, lines: int = 30) -> str:
        """Return the last lines of the daemons' logs, for failure messages."""
        parts = []
        for path in sorted(self.log_directory.glob('*.log')):
            tail = path.read_text(errors='replace').splitlines()[-lines:]
            parts.append(f'---- last lines of {path} ----\n' + '\n'.join(tail))
        return '\n'.join(parts)


def run_slurm_script(action: str, directory: pathlib.Path, timeout: float) -> subprocess.CompletedProcess:
    """Run ``slurm.sh ACTION DIRECTORY`` and return the completed process (never raises on a non-zero exit)."""
    try:
        return subprocess.run(
            ['bash', str(SLURM_SCRIPT), action, str(directory)],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired as exception:
        stderr = exception.stderr.decode(errors='replace') if isinstance(exception.stderr, bytes) else exception.stderr
        return subprocess.CompletedProcess(exception.cmd, 124, '', f'timed out after {timeout} s\n{stderr or ""}')


def read_cluster(directory: pathlib.Path) -> SlurmCluster:
    """Return the :class:`SlurmCluster` described by the ``slurm.conf`` that ``slurm.sh`` wrote in ``directory``."""
    conf = directory / 'slurm.conf'
    text = conf.read_text()
    node = re.search(r'^NodeName=(\S+).*?\bCPUs=(\d+)', text, re.MULTILINE)
    partition = re.search(r'^PartitionName=(\S+)', text, re.MULTILINE)
    if node is None or partition is None:
        raise ValueError(f'{conf} names no node or no partition:\n{text}')
    return SlurmCluster(
        directory=directory, conf=conf, node=node.group(1), partition=partition.group(1), cpus=int(node.group(2))
    )


def restart_running_daemon() -> None:
    """Restart the AiiDA daemon of the loaded profile if it already runs, so that it inherits ``SLURM_CONF``.

    The daemon copies the environment when it starts; one started before the cluster would not find it.
    """
    try:
        from aiida.engine.daemon.client import get_daemon_client
        from aiida.manage import get_manager
    except ImportError:
        return
    profile = get_manager().get_profile()
    if profile is None:
        return
    try:
        client = get_daemon_client(profile.name)
        running = client.is_daemon_running
    except Exception:  # a profile without a broker has no daemon to restart
        return
    if running:
        from tests.daemon import start_daemon, stop_daemon

        stop_daemon(client)
        start_daemon(client)


@pytest.fixture(scope='session')
def slurm_cluster(tmp_path_factory):
    """Start a single-node Slurm cluster for the session and yield its :class:`SlurmCluster`.

    ``os.environ['SLURM_CONF']`` points at the cluster until the session ends (an AiiDA daemon that already runs is
    restarted to see it). The cluster is stopped at the end; munged is stopped only if this fixture started it.
    Fails, never skips, when the cluster cannot start.
    """
    directory = tmp_path_factory.mktemp('slurm')
    result = run_slurm_script('start', directory, START_TIMEOUT)
    if result.returncode != 0:
        stop = run_slurm_script('stop', directory, STOP_TIMEOUT)
        pytest.fail(
            f'could not start Slurm with {SLURM_SCRIPT} (exit code {result.returncode}):\n{result.stderr}'
            f'{stop.stderr if stop.returncode else ""}',
            pytrace=False,
        )
    cluster = read_cluster(directory)
    previous = os.environ.get('SLURM_CONF')
    os.environ['SLURM_CONF'] = str(cluster.conf)
    try:
        restart_running_daemon()
        yield cluster
    finally:
        if previous is None:
            os.environ.pop('SLURM_CONF', None)
        else:
            os.environ['SLURM_CONF'] = previous
        result = run_slurm_script('stop', directory, STOP_TIMEOUT)
        if result.returncode != 0:
            pytest.fail(f'could not stop Slurm in {directory}:\n{result.stderr}', pytrace=False)


@pytest.fixture
def slurm_computer(slurm_cluster, aiida_computer):
    """Return a configured AiiDA computer that submits to ``slurm_cluster``.

    Scheduler ``core.slurm``, transport ``core.local``, work directory in a temporary folder, MPI command
    ``mpirun -np {tot_num_mpiprocs}``, ``default_mpiprocs_per_machine`` = the node's CPUs. Codes that run OpenMPI
    as root need ``OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1`` in their prepend text
    (``aiida_mad.codes.pw_prepend_text`` adds them).
    """
    computer = aiida_computer(
        label=SLURM_COMPUTER_LABEL,
        hostname='localhost',
        scheduler_type='core.slurm',
        transport_type='core.local',
        default_mpiprocs_per_machine=slurm_cluster.cpus,
        configuration_kwargs={'safe_interval': 0.0},
    )
    computer.set_mpirun_command(shlex.split(MPIRUN_COMMAND))
    computer.set_default_mpiprocs_per_machine(slurm_cluster.cpus)
    computer.set_minimum_job_poll_interval(0.5)
    computer.description = f'single-node Slurm cluster of the test session ({slurm_cluster.conf})'
    return computer
