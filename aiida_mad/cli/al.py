"""``aiida-mad al run|status|table``: active learning (``mad.active_learning``) from the command line."""

import click
from aiida.cmdline.params import types as core_types
from aiida.cmdline.utils import decorators, echo

from .params import arguments, types
from .utils import require_daemon


@click.group('al')
def cmd_al():
    """Active learning: query by committee, DIRECT, DFT labelling, retraining (MP-ALOE)."""


@cmd_al.command('run')
@arguments.DATASET(metavar='DATASET')
@click.option('--name', required=True, help='Run name: groups mad/al/NAME/..., datasets NAME-al-<i>.')
@click.option(
    '--mace-code', type=core_types.CodeParamType(entry_point='mad.mace'), default='mace@localhost', show_default=True
)
@click.option(
    '--predict-code',
    type=core_types.CodeParamType(entry_point='mad.predict'),
    default='aiida-mad-predict@localhost',
    show_default=True,
)
@click.option(
    '--pw-code',
    type=core_types.CodeParamType(entry_point='quantumespresso.pw'),
    default='pw@localhost',
    show_default=True,
)
@click.option('-p', '--protocol', default=None, help='DFT protocol (default: mad); must match the dataset`s level.')
@click.option('--committee-protocol', default='mace-mp-large', show_default=True, help='MACE protocol of members.')
@click.option('-n', '--members', type=click.IntRange(min=2), default=3, show_default=True)
@click.option('-c', '--count', type=click.IntRange(min=1), default=1000, show_default=True, help='Candidates.')
@click.option('--elements', help='Comma-separated element pool (default: the dataset`s elements).')
@click.option('--seed', type=click.IntRange(min=0), default=0, show_default=True, help='Seed of the pools.')
@click.option('--energy', type=float, default=100.0, show_default=True, help='Threshold on sigma_E, meV/atom.')
@click.option('--force', type=float, default=100.0, show_default=True, help='Threshold on sigma_F, meV/Å.')
@click.option('--stress', type=float, default=100.0, show_default=True, help='Threshold on sigma_S, meV/Å³.')
@click.option('-k', '--clusters', type=int, default=100, show_default=True, help='DIRECT clusters.')
@click.option('-m', '--per-cluster', type=int, default=5, show_default=True, help='DIRECT structures per cluster.')
@click.option('-i', '--iterations', type=int, default=3, show_default=True)
@click.option('-N', '--max-concurrent', type=int, default=4, show_default=True, help='DFT runs at once.')
@click.option('--rescale/--no-rescale', default=False, show_default=True, help='Rescale thresholds by calibration.')
@click.option(
    '--production-code',
    type=types.CodeParamType(),
    help='Retrain a production model on every grown dataset with this mad.mace or mad.metatrain (mtt) code.',
)
@click.option('--production-protocol', help='Protocol of the production model (e.g. pet-mad, lora, mace-small).')
@click.option('--finetune', type=types.ModelParamType(), help='Base model the production model fine-tunes (lora).')
@decorators.with_dbenv()
def cmd_al_run(dataset, name, mace_code, predict_code, pw_code, protocol, committee_protocol, members, count, **kw):
    """Submit an active-learning run on DATASET (name, pk or uuid).

    With --production-code, a production model, possibly of another architecture than the MACE committee (e.g. PET),
    is retrained on every grown dataset.
    """
    from aiida import orm
    from aiida.engine import submit

    from aiida_mad.workflows.active_learning import ActiveLearningWorkChain

    if kw['production_code'] is None and (kw['production_protocol'] or kw['finetune']):
        raise click.BadParameter('needs --production-code', param_hint='--production-protocol/--finetune')
    pool = {'count': count, 'seed': kw['seed']}
    if kw['elements']:
        pool['element_pool'] = [element.strip() for element in kw['elements'].split(',') if element.strip()]
    try:
        builder = ActiveLearningWorkChain.get_builder_from_protocol(
            dataset,
            name=name,
            mace_code=mace_code,
            predict_code=predict_code,
            pw_code=pw_code,
            dft_protocol=protocol,
            committee_protocol=committee_protocol,
            members=members,
            pool=pool,
            thresholds={key: kw[key] / 1000 for key in ('energy', 'force', 'stress')},
            direct={'n_clusters': kw['clusters'], 'per_cluster': kw['per_cluster']},
            max_iterations=kw['iterations'],
            max_concurrent=kw['max_concurrent'],
            production_code=kw['production_code'],
            production_protocol=kw['production_protocol'],
            production_base_model=kw['finetune'],
        )
    except (ValueError, TypeError) as exception:
        echo.echo_critical(str(exception))
    builder.rescale_thresholds = orm.Bool(kw['rescale'])
    require_daemon()
    node = submit(builder)
    echo.echo_report(f'submitted ActiveLearningWorkChain<{node.pk}>: {node.label}')


def _load_run(identifier):
    from aiida import orm
    from aiida.common.exceptions import MultipleObjectsError, NotExistent

    try:
        node = orm.load_node(identifier)
    except (NotExistent, MultipleObjectsError, ValueError) as exception:
        raise click.BadParameter(str(exception), param_hint='PK') from None
    if node.process_type != 'aiida.workflows:mad.active_learning':
        raise click.BadParameter(f'node {node.pk} is not an active-learning run ({node.process_type})', param_hint='PK')
    return node


@cmd_al.command('status')
@click.argument('identifier', metavar='PK')
@decorators.with_dbenv()
def cmd_al_status(identifier):
    """Show, per iteration, candidates, selected, downsampled, labelled, failed, committee errors and calibration.

    With a production model, also its architecture, pk and validation force RMSE per iteration.
    """
    from tabulate import tabulate

    from aiida_mad.workflows.active_learning import iteration_rows

    node = _load_run(identifier)
    echo.echo(f'{node.process_label}<{node.pk}> {node.label}: {node.process_state.value}')
    rows = []
    production = False
    for row in iteration_rows(node):
        calibration = row.get('calibration') or {}
        force_errors = [_force_rmse(member) for member in (row.get('committee_errors') or {}).values()]
        force_errors = [value for value in force_errors if value is not None]
        rows.append(
            [
                row['iteration'],
                row.get('candidates', '-'),
                row.get('selected', '-'),
                row.get('downsampled', '-'),
                row.get('labelled', '-'),
                row.get('failed', '-'),
                f'{max(force_errors):.3g}' if force_errors else '-',  # worst member
                _slope(calibration, 'energy'),
                _slope(calibration, 'force'),
                _production(row.get('production')),
            ]
        )
        production = production or bool(row.get('production'))
    headers = [
        'iteration',
        'candidates',
        'selected',
        'downsampled',
        'labelled',
        'failed',
        'committee F RMSE (val, worst)',
        'E err/sigma',
        'F err/sigma',
        'production model (F RMSE val)',
    ]
    if not production:
        headers.pop()
        rows = [row[:-1] for row in rows]
    echo.echo(tabulate(rows, headers=headers) if rows else 'no iteration finished yet')


def _production(entry: dict | None) -> str:
    """Return the production model of an iteration: architecture, pk and validation force RMSE."""
    from aiida import orm

    if not entry:
        return '-'
    rmse = _force_rmse(entry.get('errors') or {})
    shown = f'{rmse:.3g}' if rmse is not None else 'n/a'
    return f'{entry["architecture"]} {orm.load_node(entry["model"]).pk} ({shown})'


def _force_rmse(errors: dict) -> float | None:
    """Return a member's validation force RMSE (``{split: {metric: value}}`` of its training), if it has one."""
    for split in ('val', 'test'):
        for metric, value in (errors.get(split) or {}).items():
            if 'RMSE' in metric and 'F' in metric.split('/')[0] and isinstance(value, int | float):
                return float(value)
    return None


def _slope(calibration: dict, name: str) -> str:
    entry = calibration.get(name)
    if not entry:
        return '-'
    slope = 'n/a' if entry.get('slope') is None else f'{entry["slope"]:.3g}'
    rho = 'n/a' if entry.get('spearman') is None else f'{entry["spearman"]:.2f}'
    return f'{slope} (rho {rho}, n {entry["n"]})'


@cmd_al.command('table')
@click.argument('identifier', metavar='PK')
@click.option('-i', '--iteration', type=int, default=None, help='The iteration (default: the last one).')
@click.option('--selected', is_flag=True, help='Only the selected candidates.')
@click.option('--csv', 'csv_path', type=click.Path(dir_okay=False, writable=True), help='Write the table as CSV.')
@decorators.with_dbenv()
def cmd_al_table(identifier, iteration, selected, csv_path):
    """Print the selection table of an iteration: every candidate's sigmas, thresholds and decision."""
    import csv

    from tabulate import tabulate

    from aiida_mad.calculations.selection import selection_rows

    node = _load_run(identifier)
    iterations = node.outputs.iterations if 'iterations' in node.outputs else {}
    tables = {int(key.split('_')[1]): outputs['table'] for key, outputs in iterations.items() if 'table' in outputs}
    if not tables:
        echo.echo_critical(f'{node.process_label}<{node.pk}> has no selection table yet')
    if iteration is None:
        iteration = max(tables)
    if iteration not in tables:
        raise click.BadParameter(f'no table for iteration {iteration}; there are {sorted(tables)}', param_hint='-i')
    rows = selection_rows(tables[iteration])
    if selected:
        rows = [row for row in rows if row['selected']]
    if csv_path:
        with open(csv_path, 'w', newline='', encoding='utf-8') as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ['id'])
            writer.writeheader()
            writer.writerows(rows)
        echo.echo_success(f'wrote {len(rows)} rows to {csv_path}')
        return
    columns = ['id', 'sigma_energy', 'sigma_force', 'sigma_stress', 'reasons', 'selected', 'cluster', 'downsampled']
    echo.echo(tabulate([[row[column] for column in columns] for row in rows], headers=columns, floatfmt='.4g'))
