"""``aiida-mad model evaluate MODEL [DATASET]``: a model's errors per subset, in the layout of PET-MAD's Table I.

Registered on the ``model`` group in :mod:`aiida_mad.cli`.
"""

import click
from aiida.cmdline.params import types as core_types
from aiida.cmdline.utils import decorators, echo

from .params import options, types
from .utils import require_daemon


@click.command('evaluate')
@click.argument('model', type=types.ModelParamType())
@click.argument('dataset', required=False, type=types.DatasetParamType())
@click.option(
    '--split', type=click.Choice(('train', 'val', 'test', 'all')), default='test', show_default=True, help='Split.'
)
@click.option(
    '-G', '--group', type=core_types.GroupParamType(), help='Structures of this group instead (rotational error only).'
)
@click.option(
    '--rotations',
    type=click.Choice(('0', '3', '5', '7', '9')),
    default='9',
    show_default=True,
    help='Order of the Lebedev-Laikov grid of the rotational error (9: 38 rotations, as PET-MAD); 0 for none.',
)
@click.option('--in-plane', type=click.IntRange(min=1), default=1, show_default=True, help='Rotations about z.')
@click.option(
    '--rotations-per-subset',
    type=click.IntRange(min=1),
    help='Rotate only the first N structures of each subset (default: all).',
)
@options.PREDICT_CODE()
@click.option('--batch-size', type=click.IntRange(min=1), default=16, show_default=True)
@click.option('--device', type=click.Choice(('cpu', 'cuda')), default='cpu', show_default=True)
@click.option('--csv', 'csv_file', type=types.OutputPathParamType(dir_okay=False), help='Also write the table here.')
@click.option('--submit', 'to_daemon', is_flag=True, help='Submit to the daemon instead of running here.')
@decorators.with_dbenv()
def cmd_model_evaluate(
    model,
    dataset,
    split,
    group,
    rotations,
    in_plane,
    rotations_per_subset,
    code,
    batch_size,
    device,
    csv_file,
    to_daemon,
):
    """Evaluate MODEL on a split of DATASET (or a group's structures): MAE and RMSE per subset, rotational error."""
    from aiida import orm
    from aiida.engine import run_get_node, submit

    from aiida_mad.workflows.evaluate import EvaluateWorkChain

    if (dataset is None) == (group is None):
        echo.echo_critical('give either a DATASET or --group')
    structures = None
    if group is not None:
        structures = [node for node in group.nodes if isinstance(node, orm.StructureData)]
        if not structures:
            echo.echo_critical(f'group {group.label} holds no structure')
    builder = EvaluateWorkChain.get_builder_for(
        model,
        dataset=dataset,
        split=split,
        structures=structures,
        code=code,
        rotations={'order': int(rotations), 'in_plane': in_plane, 'max_per_subset': rotations_per_subset},
        parameters={'batch_size': batch_size, 'device': device},
    )
    problem = EvaluateWorkChain.validate_inputs(builder._inputs(prune=True), None)
    if problem:
        echo.echo_critical(problem)
    if to_daemon:
        require_daemon()
        node = submit(builder)
        echo.echo_report(f'submitted EvaluateWorkChain<{node.pk}>; show it later with `verdi process show {node.pk}`')
        return
    _, node = run_get_node(builder)
    if not node.is_finished_ok:
        echo.echo_critical(f'EvaluateWorkChain<{node.pk}> failed: [{node.exit_status}] {node.exit_message}')
    table = node.outputs.table.get_dict()
    echo_evaluation(table)
    if csv_file is not None:
        from aiida_mad.learning.evaluation import table_csv

        csv_file.write_text(table_csv(table), encoding='utf-8')
        echo.echo_success(f'table written to {csv_file}')
    echo.echo_report(f'EvaluateWorkChain<{node.pk}>: table stored as Dict<{node.outputs.table.pk}>')


def echo_evaluation(table: dict) -> None:
    """Print the record line and the table in the layout of PET-MAD's Table I."""
    from tabulate import tabulate

    from aiida_mad.learning.evaluation import table_rows

    where = f'dataset {table["dataset_name"]}, split {table["split"]}' if table.get('dataset') else 'structures'
    rotations = table.get('rotations', {})
    grid = (
        f'{rotations["n_rotations"]} rotations (Lebedev order {rotations.get("order")}, {rotations.get("in_plane")} '
        'in-plane)'
        if rotations.get('n_rotations')
        else 'no rotations'
    )
    echo.echo(f'model {table["model"][:8]} ({table["model_architecture"]}) on {where}; {grid}')
    if table.get('dataset') and not table.get('same_level_of_theory'):
        echo.echo_warning('the model was trained at another level of theory than the dataset (fingerprints differ)')
    header, rows = table_rows(table)
    echo.echo(tabulate(rows, headers=header, disable_numparse=True))
