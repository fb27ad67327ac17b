"""``aiida-mad model dimers|ev-scan|md-stability MODEL``: the physicality benchmarks of a model, one command each.

The commands are added to the ``model`` group in :mod:`aiida_mad.cli`.

Each command runs ``PhysicalityWorkChain`` (``mad.physicality``) here (or submits it with ``--submit``), prints one
row per element, structure or MD run and the headline numbers, and writes the rows as CSV with ``--csv``.
"""

import click
from aiida.cmdline.params import options as core_options
from aiida.cmdline.params import types as core_types
from aiida.cmdline.utils import decorators, echo

from aiida_mad.cli.params import types

__all__ = ('cmd_model_dimers', 'cmd_model_ev_scan', 'cmd_model_md_stability')

BENCHMARK_CODE = core_options.OverridableOption(
    '-X',
    '--code',
    type=core_types.CodeParamType(entry_point='mad.benchmark'),
    default='aiida-mad-benchmark@localhost',
    show_default=True,
    help='The `aiida-mad-benchmark` code.',
)
DEVICE = core_options.OverridableOption(
    '--device', type=click.Choice(('cpu', 'cuda')), default='cpu', show_default=True, help='Run the model here.'
)
CSV = core_options.OverridableOption(
    '--csv',
    'csv_path',
    type=click.Path(dir_okay=False, writable=True),
    help='Also write the rows to this CSV file (refused if it exists).',
)
SUBMIT = core_options.OverridableOption(
    '--submit', 'to_daemon', is_flag=True, help='Submit to the daemon instead of running here.'
)
GROUP = core_options.OverridableOption(
    '-G', '--group', 'group', type=core_types.GroupParamType(), help='Run on the structures of this group.'
)
SEEDS = core_options.OverridableOption(
    '--seed',
    'seeds',
    multiple=True,
    help='A bundled bulk structure (e.g. Si-diamond); repeatable. Default, without --group: those made only of the '
    "model's elements.",
)


def run_benchmark(model, benchmark: str, code, parameters: dict, *, group=None, seeds=(), elements=(), **flags):
    """Run (or submit) the benchmark of ``model``, then print its table and summary and write the CSV."""
    import pathlib

    from aiida import orm
    from aiida.engine import run_get_node, submit

    from aiida_mad.cli.utils import require_daemon
    from aiida_mad.workflows.physicality import PhysicalityWorkChain

    csv_path = flags.get('csv_path')
    if csv_path and pathlib.Path(csv_path).exists():
        raise click.BadParameter(f'{csv_path} exists already', param_hint='--csv')
    builder = PhysicalityWorkChain.get_builder()
    builder.model = model
    builder.benchmark = orm.Str(benchmark)
    builder.parameters = orm.Dict({**parameters, 'device': flags.get('device', 'cpu')})
    builder.calculation.code = code
    builder.calculation.metadata.options = {'resources': {'num_machines': 1, 'num_mpiprocs_per_machine': 1}}
    if group is not None:
        builder.group = orm.Str(group.label)
    if seeds:
        builder.seeds = orm.List(list(seeds))
    if elements:
        builder.elements = orm.List(list(elements))
    try:
        if flags.get('to_daemon'):
            problem = PhysicalityWorkChain.spec().inputs.validate(builder._inputs(prune=True))
            if problem:
                echo.echo_critical(problem.message)
            require_daemon()
            node = submit(builder)
            echo.echo_report(f'submitted PhysicalityWorkChain<{node.pk}>: {benchmark} of model {model.pk}')
            return
        _, node = run_get_node(builder)
    except ValueError as exception:
        echo.echo_critical(str(exception))
    if not node.is_finished_ok:
        echo.echo_critical(f'PhysicalityWorkChain<{node.pk}> failed: [{node.exit_status}] {node.exit_message}')
    echo_results(node.outputs.results.get_dict())
    if csv_path:
        from aiida_mad.export.physicality import write_csv

        write_csv(node.outputs.results.get_dict(), csv_path)
        echo.echo_success(f'wrote {csv_path}')
    echo.echo_report(f'PhysicalityWorkChain<{node.pk}>: output `results` (Dict<{node.outputs.results.pk}>)')


def echo_results(results: dict) -> None:
    """Print the rows and the summary line of a benchmark result."""
    from tabulate import tabulate

    from aiida_mad.export.physicality import summary_line, table

    headers, rows = table(results)
    click.echo(tabulate(rows, headers=headers))
    click.echo(summary_line(results))


@click.command('dimers')
@click.argument('model', type=types.ModelParamType())
@click.option('-e', '--element', 'elements', multiple=True, help='An element; repeatable (default: all the model has).')
@click.option('--points', type=click.IntRange(min=3), default=10, show_default=True, help='Distances per element.')
@BENCHMARK_CODE()
@DEVICE()
@CSV()
@SUBMIT()
@decorators.with_dbenv()
def cmd_model_dimers(model, elements, points, code, **flags):
    """Homonuclear dimer curves of MODEL: short-range repulsion and smoothness (PET-MAD)."""
    run_benchmark(model, 'dimers', code, {'points': points}, elements=elements, **flags)


@click.command('ev-scan')
@click.argument('model', type=types.ModelParamType())
@GROUP()
@SEEDS()
@click.option('--points', type=click.IntRange(min=5), default=21, show_default=True, help='Strains per structure.')
@click.option(
    '--max-strain', type=click.FloatRange(0, 0.9, min_open=True), default=0.2, show_default=True, help='Linear strain.'
)
@BENCHMARK_CODE()
@DEVICE()
@CSV()
@SUBMIT()
@decorators.with_dbenv()
def cmd_model_ev_scan(model, group, seeds, points, max_strain, code, **flags):
    """E-V scans of MODEL under uniform strain without relaxation (MP-ALOE Table I)."""
    parameters = {'points': points, 'max_strain': max_strain}
    run_benchmark(model, 'ev_scan', code, parameters, group=group, seeds=seeds, **flags)


@click.command('md-stability')
@click.argument('model', type=types.ModelParamType())
@GROUP()
@SEEDS()
@click.option(
    '--ensemble',
    'ensembles',
    type=click.Choice(('nvt', 'npt')),
    multiple=True,
    help='nvt and/or npt (default: both).',
)
@click.option(
    '--time',
    'total_time_fs',
    type=click.FloatRange(min=0, min_open=True),
    default=10000.0,
    show_default=True,
    help='Length of each run (fs).',
)
@click.option(
    '--timestep', 'timestep_fs', type=click.FloatRange(min=0, min_open=True), help='fs (default 2, 0.5 with H).'
)
@click.option('--pressure-end', type=float, default=100.0, show_default=True, help='Final pressure of NPT (GPa).')
@click.option('--min-atoms', type=click.IntRange(min=1), default=64, show_default=True, help='Repeat cells to this.')
@BENCHMARK_CODE()
@DEVICE()
@CSV()
@SUBMIT()
@decorators.with_dbenv()
def cmd_model_md_stability(
    model, group, seeds, ensembles, total_time_fs, timestep_fs, pressure_end, min_atoms, code, **flags
):
    """MD stability of MODEL under 300 -> 3000 K (NVT) and pressure ramps (NPT) (MP-ALOE Fig. 5)."""
    parameters = {
        'ensembles': list(ensembles or ('nvt', 'npt')),
        'total_time_fs': total_time_fs,
        'timestep_fs': timestep_fs,
        'pressure_end_GPa': pressure_end,
        'min_atoms': min_atoms,
    }
    run_benchmark(model, 'md_stability', code, parameters, group=group, seeds=seeds, **flags)
