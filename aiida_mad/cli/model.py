"""``aiida-mad model list|show|export``: trained models (``mad.model``) and the progress of running trainings."""

import click
from aiida.cmdline.utils import decorators, echo


@click.group('model')
def cmd_model():
    """Inspect and export trained models."""


@cmd_model.command('list')
@click.option('--name', help='Only the models of group mad/models/NAME.')
@decorators.with_dbenv()
def cmd_model_list(name):
    """List the models: pk, architecture, dataset, epochs, parameters, validation errors."""
    from aiida import orm
    from rich.console import Console
    from rich.table import Table

    from aiida_mad.constants import model_group_label
    from aiida_mad.data.model import ModelData

    query = orm.QueryBuilder()
    if name:
        query.append(orm.Group, filters={'label': model_group_label(name)}, tag='group')
        query.append(ModelData, with_group='group', project=['id', 'ctime', 'attributes'])
    else:
        query.append(ModelData, project=['id', 'ctime', 'attributes'])
    query.order_by({ModelData: {'id': 'asc'}})
    table = Table('pk', 'created', 'architecture', 'targets', 'dataset', 'epochs', 'parameters', 'val errors')
    for pk, ctime, attributes in query.iterall():
        errors = attributes.get('errors', {}).get('val', {})
        shown = ', '.join(f'{key} {value:.4g}' for key, value in list(errors.items())[:2])
        table.add_row(
            str(pk),
            ctime.strftime('%Y-%m-%d %H:%M'),
            str(attributes.get('architecture')),
            ', '.join(attributes.get('targets', {})),
            str(attributes.get('dataset_name')),
            str(attributes.get('epochs')),
            str(attributes.get('n_parameters')),
            shown,
        )
    if not table.row_count:
        echo.echo_report('no model in this profile' + (f' under mad/models/{name}' if name else ''))
        return
    Console().print(table)


@cmd_model.command('show')
@click.argument('identifier')
@decorators.with_dbenv()
def cmd_model_show(identifier):
    """Show a model (its record), or the progress of a running training (work chain or calculation pk)."""
    from aiida import orm
    from aiida.common.exceptions import MultipleObjectsError, NotExistent

    from aiida_mad.data.model import ModelData

    try:
        node = orm.load_node(identifier)
    except (NotExistent, MultipleObjectsError, ValueError) as exception:
        raise click.BadParameter(f'no node {identifier!r}: {exception}', param_hint='IDENTIFIER') from None
    if isinstance(node, ModelData):
        show_model(node)
        return
    if isinstance(node, orm.ProcessNode):
        show_training(node)
        return
    raise click.BadParameter(f'node {identifier} is a {type(node).__name__}, not a model or a training')


def show_model(model) -> None:
    """Print the record of a model."""
    import yaml

    echo.echo(f'model {model.pk} ({model.uuid}): {model.filename}')
    echo.echo(yaml.safe_dump(model.summary(), sort_keys=True, allow_unicode=True).rstrip())


def show_training(node) -> None:
    """Print the state of a training and, while it runs, the last epoch metatrain logged."""
    from aiida_mad.workflows.train import live_metrics, training_calculations

    state = node.process_state.value if node.process_state else 'created'
    echo.echo(f'{node.process_label}<{node.pk}> {state}' + (f' [{node.exit_status}]' if node.is_terminated else ''))
    for calculation in training_calculations(node):
        calc_state = calculation.process_state.value if calculation.process_state else 'created'
        echo.echo(f'  {calculation.process_label}<{calculation.pk}> {calc_state} {calculation.exit_message or ""}')
        if 'metrics' in calculation.outputs:
            epochs = calculation.outputs.metrics.get_array('epoch')
            echo.echo(f'    epochs {int(epochs[0])}-{int(epochs[-1])}')
        elif not calculation.is_terminated:
            row = live_metrics(calculation)
            echo.echo(f'    {describe_row(row)}' if row else '    no epoch logged yet')
    if node.is_finished_ok and 'model' in node.outputs:
        show_model(node.outputs.model)


def describe_row(row: dict) -> str:
    """Return ``epoch 12 | training loss 0.1 | ...`` for a row of ``train.csv``."""
    parts = [f'epoch {int(row["Epoch"])}'] if 'Epoch' in row else []
    parts += [f'{key} {value:.4g}' for key, value in row.items() if key != 'Epoch' and 'loss' in key]
    return ' | '.join(parts)


def follow(node, *, interval: float = 2.0) -> None:
    """Show the epoch and losses of a running training until it ends."""
    import time

    from rich.console import Console

    from aiida_mad.workflows.train import live_metrics, training_calculations

    with Console().status('') as status:
        while not node.is_terminated:
            calculations = training_calculations(node)
            row = live_metrics(calculations[-1]) if calculations else None
            text = describe_row(row) if row else 'waiting for the first epoch'
            status.update(f'{node.process_label}<{node.pk}> {text}')
            time.sleep(interval)
    if not node.is_finished_ok:
        echo.echo_critical(f'{node.process_label}<{node.pk}> failed: [{node.exit_status}] {node.exit_message}')
    show_model(node.outputs.model)


@cmd_model.command('export')
@click.argument('identifier')
@click.argument('output', type=click.Path(dir_okay=False, writable=True))
@click.option('--checkpoint', is_flag=True, help='Also write the checkpoint next to it (OUTPUT with .ckpt).')
@decorators.with_dbenv()
def cmd_model_export(identifier, output, checkpoint):
    """Write the exported model IDENTIFIER (a mad.model) to OUTPUT (a .pt file), for ASE, LAMMPS or mtt eval."""
    import pathlib
    import shutil

    from aiida import orm
    from aiida.common.exceptions import MultipleObjectsError, NotExistent

    from aiida_mad.data.model import ModelData, checkpoint_of

    try:
        node = orm.load_node(identifier)
    except (NotExistent, MultipleObjectsError, ValueError) as exception:
        raise click.BadParameter(f'no model {identifier!r}: {exception}', param_hint='IDENTIFIER') from None
    if not isinstance(node, ModelData):
        raise click.BadParameter(f'node {identifier} is a {type(node).__name__}, not a mad.model')
    target = pathlib.Path(output)
    if target.suffix != '.pt':
        raise click.BadParameter(f'{output}: the exported model file must end in .pt', param_hint='OUTPUT')
    if target.exists():
        raise click.BadParameter(f'{output} exists already', param_hint='OUTPUT')
    with node.open(mode='rb') as source, open(target, 'wb') as handle:
        shutil.copyfileobj(source, handle)
    echo.echo_success(f'model {node.pk} written to {target}')
    if checkpoint:
        ckpt = checkpoint_of(node)
        with ckpt.open(mode='rb') as source, open(target.with_suffix('.ckpt'), 'wb') as handle:
            shutil.copyfileobj(source, handle)
        echo.echo_success(f'checkpoint {ckpt.pk} written to {target.with_suffix(".ckpt")}')
