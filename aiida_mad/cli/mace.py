"""``aiida-mad train mace|committee DATASET`` and ``aiida-mad model predict MODEL...``.

The commands are registered on the ``train`` and ``model`` groups in :mod:`aiida_mad.cli`.
"""

import click
from aiida.cmdline.params import types as core_types
from aiida.cmdline.utils import decorators, echo

from .params import arguments, options, types
from .utils import require_daemon

MACE_PROTOCOLS = ('mace-mp-large', 'mace-small', 'tiny')


@click.command('mace')
@arguments.DATASET(metavar='DATASET')
@click.option('-p', '--protocol', type=click.Choice(MACE_PROTOCOLS), default='mace-mp-large', show_default=True)
@options.MACE_CODE()
@options.RESTART_MODEL(help='Continue the training of this MACE model.')
@options.MODEL_NAME()
@decorators.with_dbenv()
def cmd_train_mace(dataset, protocol, code, restart, name):
    """Train MACE on DATASET (name, pk or uuid), E0s from the dataset's isolated-atom baseline."""
    from aiida.engine import submit

    from aiida_mad.workflows.mace import MaceTrainWorkChain

    try:
        builder = MaceTrainWorkChain.get_builder_from_protocol(code, dataset, protocol, restart=restart, name=name)
    except (ValueError, TypeError) as exception:
        echo.echo_critical(str(exception))
    require_daemon()
    node = submit(builder)
    echo.echo_report(f'submitted MaceTrainWorkChain<{node.pk}>: {node.label}')


@click.command('committee')
@arguments.DATASET(metavar='DATASET')
@click.option('-a', '--architecture', type=click.Choice(('mace', 'pet')), default='mace', show_default=True)
@click.option('-n', '--members', type=click.IntRange(min=2), default=3, show_default=True, help='At least 2.')
@click.option('-p', '--protocol', default='tiny', show_default=True, help='Protocol of the architecture.')
@click.option(
    '-X',
    '--code',
    type=core_types.CodeParamType(),
    required=True,
    help='The `mace_run_train` (mace) or `mtt` (pet) code.',
)
@click.option('--seed', type=int, default=0, show_default=True, help='Member i trains with seed + i.')
@click.option('--name', help='Committee name: the models go to group mad/committees/NAME.')
@decorators.with_dbenv()
def cmd_train_committee(dataset, architecture, members, protocol, code, seed, name):
    """Train a committee of MEMBERS models on DATASET, differing only in seed and train/validation split."""
    from aiida import orm
    from aiida.engine import submit

    from aiida_mad.workflows.committee import CommitteeWorkChain

    try:
        if architecture == 'mace':
            from aiida_mad.workflows.mace import MaceTrainWorkChain

            inputs = MaceTrainWorkChain.get_protocol_inputs(protocol)['mace']
            namespace, settings = 'mace', None
        else:
            from aiida_mad.workflows.train import TrainWorkChain

            protocol_inputs = TrainWorkChain.get_protocol_inputs(protocol)
            inputs, settings = protocol_inputs['metatrain'], protocol_inputs['settings']
            namespace = 'metatrain'
    except ValueError as exception:
        echo.echo_critical(str(exception))
    builder = CommitteeWorkChain.get_builder()
    builder.dataset = dataset
    builder.members = orm.Int(members)
    builder.seed = orm.Int(seed)
    builder[namespace].code = code
    builder[namespace].parameters = orm.Dict(inputs['parameters'])
    if settings:
        builder[namespace].settings = orm.Dict(settings)
    builder[namespace].metadata.options = {
        'resources': {'num_machines': 1, 'num_mpiprocs_per_machine': 1},
        **inputs.get('metadata', {}).get('options', {}),
    }
    if name:
        builder.name = orm.Str(name)
    problem = CommitteeWorkChain.validate_inputs(builder._inputs(prune=True), None)
    if problem:
        echo.echo_critical(problem)
    require_daemon()
    node = submit(builder)
    echo.echo_report(f'submitted CommitteeWorkChain<{node.pk}>: {members} {architecture} members on {dataset.name}')


@click.command('predict')
@click.argument('models', nargs=-1, required=True, type=types.ModelParamType())
@click.option('-G', '--group', 'group', type=core_types.GroupParamType(), help='Predict the structures of this group.')
@click.option('-D', '--dataset', type=types.DatasetParamType(), help='Predict the frames of this dataset.')
@click.option('--split', type=click.Choice(('train', 'val', 'test')), help='Only this split of the dataset.')
@options.PREDICT_CODE()
@click.option('--batch-size', type=click.IntRange(min=1), default=16, show_default=True)
@click.option('--device', type=click.Choice(('cpu', 'cuda')), default='cpu', show_default=True)
@click.option('--submit', 'to_daemon', is_flag=True, help='Submit to the daemon instead of running here.')
@decorators.with_dbenv()
def cmd_model_predict(models, group, dataset, split, code, batch_size, device, to_daemon):
    """Predict with one model or a committee of MODELS on a group's structures or a dataset's frames."""
    from aiida import orm
    from aiida.engine import run_get_node, submit

    from aiida_mad.calculations.predict import PredictCalculation, predictions_by_uuid

    if (group is None) == (dataset is None):
        echo.echo_critical('give either --group or --dataset')
    builder = PredictCalculation.get_builder()
    builder.code = code
    builder.models = {f'model_{index}': model for index, model in enumerate(models)}
    if dataset is not None:
        builder.dataset = dataset
        if split:
            builder.split = orm.Str(split)
    else:
        structures = [node for node in group.nodes if isinstance(node, orm.StructureData)]
        if not structures:
            echo.echo_critical(f'group {group.label} holds no structure')
        builder.structures = {f'structure_{node.pk}': node for node in structures}
    builder.parameters = orm.Dict({'batch_size': batch_size, 'device': device})
    try:
        if to_daemon:
            require_daemon()
            node = submit(builder)
            echo.echo_report(f'submitted PredictCalculation<{node.pk}>')
            return
        _, node = run_get_node(builder)
    except ValueError as exception:
        echo.echo_critical(str(exception))
    if not node.is_finished_ok:
        echo.echo_critical(f'PredictCalculation<{node.pk}> failed: {node.exit_status} {node.exit_message}')
    committee = node.outputs.committee if 'committee' in node.outputs else None
    rows = predictions_by_uuid(node.outputs.predictions, committee)
    if 'dos' in node.outputs.predictions.get_arraynames():
        echo_dos_table(rows, node.outputs.predictions.get_array('dos_energies'), committee is not None)
    else:
        echo_table(rows, committee is not None)
    echo.echo_report(
        f'PredictCalculation<{node.pk}>: {len(rows)} structures, outputs `predictions`'
        + (' and `committee`' if committee is not None else '')
    )


def echo_table(rows: dict, committee: bool) -> None:
    """Print one line per structure: energy per atom (each model), and the committee sigmas."""
    from tabulate import tabulate

    table = []
    for uuid, entry in rows.items():
        row = [uuid[:8], entry['natoms'], ' '.join(f'{value:.4f}' for value in entry['energy_per_atom'])]
        if committee:
            row += [
                f'{entry["energy_per_atom_std"] * 1000:.1f}',
                f'{entry["force_std_max"] * 1000:.1f}',
                f'{entry["stress_std_max"] * 1000:.2f}',
            ]
        table.append(row)
    headers = ['structure', 'atoms', 'E (eV/atom)']
    if committee:
        headers += ['σE (meV/atom)', 'σF max (meV/Å)', 'σS max (meV/Å³)']
    click.echo(tabulate(table, headers=headers))


def echo_dos_table(rows: dict, energies, committee: bool) -> None:
    """Print one line per structure of DOS models: the DOS at the Fermi energy (each model), the committee sigma."""
    import numpy as np
    from tabulate import tabulate

    fermi = int(np.argmin(np.abs(energies)))
    table = []
    for uuid, entry in rows.items():
        row = [uuid[:8], entry['natoms'], ' '.join(f'{value:.3f}' for value in entry['dos'][:, fermi])]
        if committee:
            row += [f'{entry["dos_std"][fermi]:.3f}', f'{np.max(entry["dos_std"]):.3f}']
        table.append(row)
    headers = ['structure', 'atoms', 'DOS(E_F) (states/eV)']
    if committee:
        headers += ['σDOS(E_F)', 'σDOS max']
    click.echo(tabulate(table, headers=headers))
