"""``aiida-mad model dos-cnn DOS_MODEL DATASET``: bandgap and Fermi-level CNNs on a DOS model's predictions."""

import click
from aiida.cmdline.params import options as core_options
from aiida.cmdline.params import types as core_types
from aiida.cmdline.utils import decorators, echo

from .params import types
from .utils import require_daemon

DOS_CNN_CODE = core_options.OverridableOption(
    '-X',
    '--code',
    type=types.CodeParamType(entry_point='mad.dos_cnn'),
    default='aiida-mad-dos-cnn@localhost',
    show_default=True,
    help='The `aiida-mad-dos-cnn` code.',
)


def find_predictions(model, dataset):
    """Return the newest DOS ``predictions`` of a finished ``mad.predict`` run of ``model`` on ``dataset``."""
    from aiida import orm

    query = orm.QueryBuilder()
    query.append(orm.Node, filters={'id': model.pk}, tag='model')
    query.append(
        orm.CalcJobNode,
        with_incoming='model',
        filters={'process_type': 'aiida.calculations:mad.predict', 'attributes.exit_status': 0},
        tag='predict',
    )
    query.append(orm.Node, filters={'id': dataset.pk}, with_outgoing='predict')
    query.append(orm.ArrayData, with_incoming='predict', edge_filters={'label': 'predictions'}, project='*')
    query.order_by({orm.ArrayData: {'id': 'desc'}})
    for (node,) in query.iterall():
        if 'dos' in node.get_arraynames():
            return node
    return None


@click.command('dos-cnn')
@click.argument('dos_model', type=types.ModelParamType())
@click.argument('dataset', type=types.DatasetParamType())
@click.option(
    '--dos',
    'dos',
    type=core_types.DataParamType(sub_classes=('aiida.data:core.array',)),
    help='The predicted DOS (ArrayData with `uuids` and `dos`); default: the newest `mad.predict` run of DOS_MODEL '
    'on DATASET.',
)
@click.option(
    '-t',
    '--target',
    'targets',
    type=click.Choice(('gap', 'fermi_level')),
    multiple=True,
    help='What to train (repeatable); default both.',
)
@click.option('--max-epochs', type=click.IntRange(min=1), default=1000, show_default=True)
@click.option('--warmup-epochs', type=click.IntRange(min=0), default=100, show_default=True)
@click.option('--patience', type=click.IntRange(min=1), default=50, show_default=True, help='Early stopping.')
@click.option('--seed', type=click.IntRange(min=0), default=0, show_default=True)
@click.option('--device', type=click.Choice(('cpu', 'cuda')), default='cpu', show_default=True)
@click.option('--no-denoise', is_flag=True, help='Do not output the denoised DOS.')
@DOS_CNN_CODE()
@click.option('--submit', 'to_daemon', is_flag=True, help='Submit to the daemon instead of running here.')
@decorators.with_dbenv()
def cmd_model_dos_cnn(
    dos_model, dataset, dos, targets, max_epochs, warmup_epochs, patience, seed, device, no_denoise, code, to_daemon
):
    """Train bandgap and Fermi-level CNNs on the DOS that DOS_MODEL predicted for DATASET (PET-MAD-DOS 4.5-4.6)."""
    from aiida import orm
    from aiida.engine import run_get_node, submit

    from aiida_mad.calculations.dos_cnn import DosCnnCalculation

    if dos is None:
        dos = find_predictions(dos_model, dataset)
        if dos is None:
            echo.echo_critical(
                f'no DOS predictions of model {dos_model.pk} on dataset {dataset.name}: run '
                f'`aiida-mad model predict {dos_model.pk} --dataset {dataset.name}` first, or give --dos'
            )
    builder = DosCnnCalculation.get_builder()
    builder.code = code
    builder.dos = dos
    builder.dos_model = dos_model
    builder.dataset = dataset
    builder.parameters = orm.Dict(
        {
            'targets': list(targets) or ['gap', 'fermi_level'],
            'max_epochs': max_epochs,
            'warmup_epochs': warmup_epochs,
            'patience': patience,
            'seed': seed,
            'device': device,
            'denoise': not no_denoise,
        }
    )
    problem = DosCnnCalculation.spec().inputs.validator(builder._inputs(prune=True), None)
    if problem:
        echo.echo_critical(problem)
    if to_daemon:
        require_daemon()
        node = submit(builder)
        echo.echo_report(f'submitted DosCnnCalculation<{node.pk}>')
        return
    _, node = run_get_node(builder)
    if not node.is_finished_ok:
        echo.echo_critical(f'DosCnnCalculation<{node.pk}> failed: {node.exit_status} {node.exit_message}')
    echo_results(node)


def echo_results(node) -> None:
    """Print one line per target and split: number of structures, MAE and RMSE (eV)."""
    from tabulate import tabulate

    rows = []
    for target, model in sorted(node.outputs.models.items()):
        for split, errors in model.errors.items():
            shown = [f'{errors[key]:.4f}' if errors[key] is not None else '-' for key in ('mae', 'rmse')]
            rows.append([target, model.pk, split, errors['n'], *shown])
    click.echo(tabulate(rows, headers=['target', 'model', 'split', 'n', 'MAE (eV)', 'RMSE (eV)']))
    epochs = ', '.join(
        f'{target} {record["epochs"]} epochs (best {record["best_epoch"]})'
        for target, record in node.outputs.results['targets'].items()
    )
    outputs = 'models, predictions' + (', denoised' if 'denoised' in node.outputs else '')
    echo.echo_report(f'DosCnnCalculation<{node.pk}>: {epochs}; outputs {outputs}')
