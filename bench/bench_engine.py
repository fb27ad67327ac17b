"""Engine overhead per labelled structure, and the daemon's throughput in labelled structures per minute.

1. In-process runner, ``fast`` Si (2 atoms): ``MadDftWorkChain`` wall time against pw.x's own, split into the time
   before pw.x is launched, the calculation job beyond pw.x (upload, submission, polling, retrieval, parsing) and the
   time after it (results, the ``extract_dft_results`` calcfunction); and the engine's CPU time per structure (this
   Python process, pw.x excluded) against aiida-quantumespresso's bare ``PwBaseWorkChain`` with the same pw.x inputs,
   the floor that aiida-core and the plugin set.
2. A real daemon (ZeroMQ broker, as ``setup_profile.sh`` makes it) labelling a stream of trivially short pw.x runs:
   a 2-atom Si cell with bench-only inputs (15/60 Ry, 1.5 1/Å k-spacing, 1 MPI rank; never a level of theory for
   real runs), submitted at once. Labelled structures per minute with 2 workers against 1, and the workers' CPU
   seconds per structure.

The machine's load average is printed with each figure: on a shared machine wall times grow with it, CPU times
much less.
"""

from __future__ import annotations

import contextlib
import os
import time

from bench_dft import make_code, pw_wall_time, wall_time
from common import Row, temporary_profile

#: Lattice constants (Å) of the in-process runs: one structure each, for each work chain.
LATTICE = (5.38, 5.43, 5.48)

#: Structures submitted to the daemon per worker count.
STREAM = 8

#: Bench-only inputs of the daemon stream: pw.x runs of well under a second on an idle core.
TINY = {'kpoints_distance': 1.5, 'pw': {'parameters': {'SYSTEM': {'ecutwfc': 15.0, 'ecutrho': 60.0}}}}

#: Seconds the daemon stream may take before the benchmark gives up.
STREAM_TIMEOUT = 1800


@contextlib.contextmanager
def user_profile(broker: str | None = None):
    """Yield a throw-away profile (:func:`common.temporary_profile`) that the engine treats as a user's profile.

    aiida-core gives test profiles a runner poll interval of 0: every process that waits for a child checks the
    database in a busy loop, which burns a core and slows pw.x next to it. A profile of ``setup_profile.sh`` is no
    test profile and polls every second (``runner.poll.interval`` 1, as ``verdi presto`` sets it).
    """
    from aiida.manage.configuration import get_config

    with temporary_profile(broker) as profile:
        profile.is_test_profile = False
        config = get_config()
        config.update_profile(profile)
        config.store()
        yield profile


def last_calculation(workchain):
    """Return the last ``PwCalculation`` that ``workchain`` (a ``MadPwBaseWorkChain`` or ``PwBaseWorkChain``) ran."""
    return max((child for child in workchain.called if child.process_label == 'PwCalculation'), key=lambda c: c.ctime)


def scf_of(node):
    """Return the ``MadPwBaseWorkChain`` of the ``MadDftWorkChain`` ``node``."""
    return next(child for child in node.called if child.process_label == 'MadPwBaseWorkChain')


def phases(node, calculation) -> tuple[float, float, float]:
    """Return the seconds before the pw.x job, in the job beyond pw.x, and after it, from the nodes' timestamps."""
    before = (calculation.ctime - node.ctime).total_seconds()
    job = (calculation.mtime - calculation.ctime).total_seconds() - pw_wall_time(calculation)
    after = (node.mtime - calculation.mtime).total_seconds()
    return before, job, after


def run_timed(builder) -> tuple[object, float, float]:
    """Run ``builder`` in this process and return ``(node, wall seconds, CPU seconds of this process)``."""
    from aiida.engine import run_get_node

    wall, cpu = time.perf_counter(), time.process_time()
    _, node = run_get_node(builder)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if not node.is_finished_ok:
        raise RuntimeError(f'{node.process_label}<{node.pk}> failed: {node.exit_status} {node.exit_message}')
    return node, wall, cpu


def bare_builder(code, scf, calculation):
    """Return aiida-quantumespresso's ``PwBaseWorkChain`` with the pw.x inputs of ``scf`` and its ``calculation``."""
    from aiida import orm
    from aiida_quantumespresso.workflows.pw.base import PwBaseWorkChain

    builder = PwBaseWorkChain.get_builder()
    builder.pw.code = code
    builder.pw.structure = scf.inputs.pw.structure
    builder.pw.pseudos = scf.inputs.pw.pseudos
    builder.pw.parameters = scf.inputs.pw.parameters
    if 'parallelization' in scf.inputs.pw:
        builder.pw.parallelization = scf.inputs.pw.parallelization
    builder.pw.metadata.options = {
        key: calculation.get_option(key) for key in ('resources', 'max_wallclock_seconds', 'withmpi')
    }
    builder.kpoints_distance = scf.inputs.kpoints_distance
    builder.kpoints_force_parity = orm.Bool(False)
    return builder


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def in_process_rows() -> list[Row]:
    """Return the overhead rows of the in-process runner (fast Si, ``MadDftWorkChain`` and bare ``PwBaseWorkChain``)."""
    with user_profile():
        from aiida import orm
        from ase.build import bulk

        from aiida_mad.pseudos import install_offline_family
        from aiida_mad.workflows.dft import MadDftWorkChain

        code = make_code()
        install_offline_family()
        ours, bare = [], []
        for a in LATTICE:
            structure = orm.StructureData(ase=bulk('Si', 'diamond', a=a))
            node, wall, cpu = run_timed(MadDftWorkChain.get_builder_from_protocol(code, structure, 'fast'))
            scf = scf_of(node)
            calculation = last_calculation(scf)
            ours.append((wall, cpu, pw_wall_time(calculation), phases(node, calculation)))
            baseline, wall, cpu = run_timed(bare_builder(code, scf, calculation))
            calculation = last_calculation(baseline)
            bare.append((wall, cpu, pw_wall_time(calculation), phases(baseline, calculation)))
        load = os.getloadavg()[0]

    def summary(runs) -> tuple[float, float, float, list[float]]:
        return (
            mean(run[0] for run in runs),
            mean(run[1] for run in runs),
            mean(run[2] for run in runs),
            [mean(run[3][index] for run in runs) for index in range(3)],
        )

    wall, cpu, pw, (before, job, after) = summary(ours)
    bare_wall, bare_cpu, bare_pw, (bare_before, bare_job, bare_after) = summary(bare)
    return [
        Row(
            'fast Si: work chain wall vs pw.x alone',
            wall,
            pw,
            's',
            higher_is_better=False,
            note=f'engine overhead per structure {wall - pw:.2f} s: {before:.2f} s before pw.x, {job:.2f} s in the job '
            f'beyond pw.x (upload, submit, polls, retrieve, parse), {after:.2f} s after it; bare PwBaseWorkChain '
            f'{bare_wall - bare_pw:.2f} s ({bare_before:.2f} / {bare_job:.2f} / {bare_after:.2f} s); {len(ours)} runs '
            f'each, in-process runner, load average {load:.1f} on {os.cpu_count()} cores',
        ),
        Row(
            'fast Si: engine CPU per structure, MadDftWorkChain vs bare PwBaseWorkChain',
            cpu,
            bare_cpu,
            's',
            higher_is_better=False,
            note=f'CPU seconds of the Python process per structure, pw.x excluded: {cpu:.2f} s with the labelling '
            f'layer (fingerprint, checks, locked restarts, extract_dft_results, DOS, extras) against {bare_cpu:.2f} s '
            f'for aiida-quantumespresso alone ({bare_pw:.2f} s of pw.x); the rest is aiida-core',
        ),
    ]


def worker_cpu_seconds(client) -> float:
    """Return the CPU seconds used so far by the daemon workers of ``client`` (user plus system)."""
    import psutil

    total = 0.0
    for process in psutil.Process(client.get_daemon_pid()).children(recursive=True):
        try:
            if 'worker' in ' '.join(process.cmdline()):
                times = process.cpu_times()
                total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def stop_daemon(client) -> None:
    """Stop the daemon of ``client``; if circus does not answer on a loaded machine, end its process group."""
    import contextlib
    import signal

    from aiida.engine.daemon.client import DaemonException

    try:
        client.stop_daemon(wait=True, timeout=60)
    except DaemonException:
        pid = client.get_daemon_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(os.getpgid(pid), signal.SIGTERM)


def stream(code, client, workers: int, offset: float) -> dict:
    """Submit :data:`STREAM` tiny Si structures to a daemon of ``workers`` workers and time them to the last one."""
    from aiida import orm
    from aiida.engine import submit
    from ase.build import bulk

    from aiida_mad.workflows.dft import MadDftWorkChain

    builders = [
        MadDftWorkChain.get_builder_from_protocol(
            code, orm.StructureData(ase=bulk('Si', 'diamond', a=5.40 + offset + 0.005 * index)), 'fast', TINY
        )
        for index in range(STREAM)
    ]
    client.start_daemon(number_workers=workers)
    try:
        cpu = worker_cpu_seconds(client)
        start = time.perf_counter()
        nodes = [submit(builder) for builder in builders]
        while not all(node.is_terminated for node in nodes):
            if time.perf_counter() - start > STREAM_TIMEOUT:
                raise RuntimeError(f'the daemon stream of {workers} worker(s) took over {STREAM_TIMEOUT} s')
            time.sleep(0.2)
        seconds = time.perf_counter() - start
        cpu = worker_cpu_seconds(client) - cpu
    finally:
        stop_daemon(client)
    failed = [node.pk for node in nodes if not node.is_finished_ok]
    if failed:
        raise RuntimeError(f'bench_engine: MadDftWorkChain {failed} failed in the daemon stream')
    pw = [pw_wall_time(last_calculation(scf_of(node))) for node in nodes]
    return {
        'per_minute': 60 * len(nodes) / seconds,
        'cpu': cpu / len(nodes),
        'pw': mean(pw),
        'wall': mean(wall_time(node) for node in nodes),
        'load': os.getloadavg()[0],
    }


def daemon_stream(workers: int) -> dict:
    """Return the figures of :func:`stream` for ``workers`` workers, in a fresh profile with its own daemon and broker.

    A fresh profile per worker count: a client that submitted to one ZeroMQ broker does not reach the next one that a
    restarted daemon starts.
    """
    with user_profile(broker='core.zeromq') as profile:
        from aiida.engine.daemon.client import get_daemon_client

        from aiida_mad.pseudos import install_offline_family

        code = make_code()
        code.computer.set_default_mpiprocs_per_machine(1)
        install_offline_family()
        return stream(code, get_daemon_client(profile.name), workers, 0.1 * workers)


def daemon_rows() -> list[Row]:
    """Return the daemon throughput row: labelled structures per minute with 2 workers against 1."""
    one = daemon_stream(1)
    two = daemon_stream(2)
    return [
        Row(
            'daemon: labelled structures per minute, 2 workers vs 1',
            two['per_minute'],
            one['per_minute'],
            '/min',
            higher_is_better=True,
            note=f'{STREAM} tiny Si runs submitted at once (pw.x {one["pw"]:.2f} s / {two["pw"]:.2f} s each); worker '
            f'CPU {one["cpu"]:.2f} s / {two["cpu"]:.2f} s per structure; work chain wall {one["wall"]:.1f} s / '
            f'{two["wall"]:.1f} s each; load average {one["load"]:.1f} / {two["load"]:.1f} on {os.cpu_count()} cores',
        )
    ]


def run() -> list[Row]:
    return in_process_rows() + daemon_rows()
