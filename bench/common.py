"""Shared pieces of the benchmarks: the result row, a profile to run them in, a local code, a timed run, EMT frames."""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
import time
import uuid


@dataclasses.dataclass
class Row:
    """One comparison: the project's way (``ours``) next to the naive or default way (``baseline``).

    ``higher_is_better`` says how to read the unit (a rate or a time); ``ratio`` is always "how many times better".
    """

    name: str
    ours: float
    baseline: float
    unit: str
    higher_is_better: bool
    note: str = ''

    @property
    def ratio(self) -> float:
        if self.higher_is_better:
            return self.ours / self.baseline
        return self.baseline / self.ours

    def cells(self) -> tuple[str, ...]:
        return (self.name, f'{self.ours:.4g}', f'{self.baseline:.4g}', self.unit, f'{self.ratio:.2f}x')

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), 'ratio': self.ratio}


def overhead_row(name: str, calcjob: float, direct: float, tool: str) -> Row:
    """Return the row of a CalcJob's seconds next to the same work run directly by ``tool`` (lower is better)."""
    return Row(
        name=name,
        ours=calcjob,
        baseline=direct,
        unit='s',
        higher_is_better=False,
        note=f'CalcJob {calcjob:.1f} s, {tool} {direct:.1f} s: {calcjob - direct:+.1f} s of engine overhead',
    )


@contextlib.contextmanager
def temporary_profile(broker: str | None = None):
    """Create and load a throw-away SQLite profile (optionally with a broker) in a temporary AIIDA_PATH.

    Benchmarks never touch the user's profiles: everything they store disappears with the temporary folder.
    """
    import os
    import pathlib

    from aiida.manage.configuration import create_profile, get_config, profile_context, reset_config, settings

    with tempfile.TemporaryDirectory(prefix='aiida-mad-bench-') as dirpath:
        previous = os.environ.get(settings.DEFAULT_AIIDA_PATH_VARIABLE)
        config_dir = pathlib.Path(dirpath) / settings.DEFAULT_CONFIG_DIR_NAME
        os.environ[settings.DEFAULT_AIIDA_PATH_VARIABLE] = str(config_dir)
        reset_config()
        settings.AiiDAConfigDir.set(config_dir)
        config = get_config(create=True)
        profile = create_profile(
            config,
            storage_backend='core.sqlite_dos',
            storage_config={'filepath': str(config_dir / 'storage')},
            broker_backend=broker,
            broker_config=None,
            name='bench',
            email='bench@localhost',
            is_test_profile=True,
        )
        # As `verdi presto` sets it for the profiles that setup_profile.sh makes.
        config.set_option('runner.poll.interval', 1, scope=profile.name)
        config.set_default_profile(profile.name)
        config.store()
        try:
            with profile_context(profile, allow_switch=True):
                yield profile
        finally:
            reset_config()
            if previous is None:
                os.environ.pop(settings.DEFAULT_AIIDA_PATH_VARIABLE, None)
            else:
                os.environ[settings.DEFAULT_AIIDA_PATH_VARIABLE] = previous


def local_code(label: str, executable) -> object:
    """Store and return a code of ``executable`` on the ``localhost`` computer (created when the profile has none).

    One thread (``OMP_NUM_THREADS=1``), as in the tests. The computer checks its jobs every second: AiiDA's default
    minimum job poll interval (10 s, meant for cluster schedulers) would otherwise add up to 10 s of waiting after a
    job has ended, which dominates a benchmark of a few seconds (and is nothing on a training of hours).
    """
    from aiida import orm
    from aiida.common.exceptions import NotExistent

    try:
        computer = orm.load_computer('localhost')
    except NotExistent:
        workdir = tempfile.mkdtemp(prefix='aiida-mad-bench-work-')
        computer = orm.Computer(
            'localhost', 'localhost', transport_type='core.local', scheduler_type='core.direct', workdir=workdir
        ).store()
        computer.configure()
        computer.set_minimum_job_poll_interval(1)
    return orm.InstalledCode(
        label=label, computer=computer, filepath_executable=str(executable), prepend_text='export OMP_NUM_THREADS=1'
    ).store()


def timed_run(builder) -> tuple[object, float]:
    """Run ``builder`` here and return ``(node, seconds)``.

    :raises RuntimeError: if the process did not finish ok.
    """
    from aiida.engine import run_get_node

    start = time.perf_counter()
    _, node = run_get_node(builder)
    seconds = time.perf_counter() - start
    if not node.is_finished_ok:
        raise RuntimeError(f'bench training failed: {node.exit_status} {node.exit_message}')
    return node, seconds


#: The cells of :func:`cu_frames`, in turn: the cubic fcc Cu cell repeated, 4 to 32 atoms.
CU_REPEATS = ((1, 1, 1), (2, 1, 1), (2, 2, 1), (2, 2, 2))


def cu_frames(
    count: int,
    offset: int = 0,
    *,
    repeats=CU_REPEATS,
    fingerprint: str = 'bench-emt-cu',
    baseline_subtracted: bool = False,
) -> list:
    """Return ``count`` rattled fcc Cu cells labelled by ASE's EMT, as frames of the dataset model (no pw.x).

    Frame ``i`` (``offset`` to ``offset + count - 1``) is the cubic cell repeated ``repeats[i % len(repeats)]``,
    rattled by 0.05 Å with seed ``i``, in the split ``train, train, val, test`` by ``i % 4``, with the source uuid
    ``UUID(int=i + 1)``: the same ``i`` always gives the same frame.

    :param fingerprint: the frames' level-of-theory fingerprint.
    :param baseline_subtracted: also set the energy with the baseline subtracted (the total energy: no baseline).
    """
    from ase.build import bulk
    from ase.calculators.emt import EMT

    from aiida_mad.dataset.frames import make_frame

    result = []
    for index in range(offset, offset + count):
        atoms = bulk('Cu', 'fcc', a=3.6, cubic=True).repeat(repeats[index % len(repeats)])
        atoms.rattle(0.05, seed=index)
        atoms.calc = EMT()
        energy = atoms.get_potential_energy()
        result.append(
            make_frame(
                atoms.numbers,
                atoms.positions,
                cell=atoms.cell.array,
                pbc=True,
                energy=energy,
                **({'energy_baseline_subtracted': energy} if baseline_subtracted else {}),
                forces=atoms.get_forces(),
                stress=atoms.get_stress(voigt=False),
                subset='mc3d-rattled',
                split=('train', 'train', 'val', 'test')[index % 4],
                source_uuid=str(uuid.UUID(int=index + 1)),
                fingerprint=fingerprint,
            )
        )
    return result


def cu_e0() -> float:
    """Return EMT's energy of an isolated Cu atom (the baseline of :func:`cu_frames`)."""
    from ase import Atoms
    from ase.calculators.emt import EMT

    atom = Atoms('Cu', cell=[10, 10, 10])
    atom.calc = EMT()
    return float(atom.get_potential_energy())
