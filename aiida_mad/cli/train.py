"""``aiida-mad train pet|dos DATASET``: train PET or PET-MAD-DOS on a dataset with the ``mad.train`` work chain."""

import click
from aiida.cmdline.utils import decorators, echo

from .params import arguments, options, types
from .utils import require_daemon

PET_PROTOCOLS = ('pet-mad', 'lora', 'llpr', 'tiny')
DOS_PROTOCOLS = ('pet-mad-dos', 'tiny-dos')


def _options(protocols: tuple[str, ...]):
    def decorator(function):
        for option in reversed(
            [
                arguments.DATASET(metavar='DATASET'),
                click.option(
                    '-p',
                    '--protocol',
                    type=click.Choice(protocols),
                    default=protocols[0],
                    show_default=True,
                    help='Training protocol (protocols/metatrain.yaml).',
                ),
                options.METATRAIN_CODE(),
                click.option('--gpus', type=click.IntRange(min=1), help='GPUs per node (Slurm computer, srun).'),
                options.RESTART_MODEL(),
                click.option(
                    '--finetune', type=types.ModelParamType(), help='Base model for the lora and llpr protocols.'
                ),
                click.option(
                    '--allow-fingerprint-mismatch',
                    is_flag=True,
                    help='Fine-tune across levels of theory (recorded on the model).',
                ),
                options.MODEL_NAME(),
                click.option('--wait', is_flag=True, help='Follow the training until it ends.'),
            ]
        ):
            function = option(function)
        return function

    return decorator


@click.group('train')
def cmd_train():
    """Train models on a dataset (metatrain, as an AiiDA work chain that restarts from checkpoints)."""


def _submit(dataset, protocol, code, gpus, restart, finetune, allow_fingerprint_mismatch, name, wait, *, total):
    from aiida.engine import submit

    from aiida_mad.workflows.train import TrainWorkChain

    try:
        builder = TrainWorkChain.get_builder_from_protocol(
            code,
            dataset,
            protocol,
            base_model=finetune,
            restart=restart,
            total_energy=total,
            allow_fingerprint_mismatch=allow_fingerprint_mismatch,
            gpus=gpus,
            name=name,
        )
    except (ValueError, TypeError) as exception:
        echo.echo_critical(str(exception))
    require_daemon()
    node = submit(builder)
    echo.echo_report(f'submitted TrainWorkChain<{node.pk}>: {node.label}')
    echo.echo_report(f'follow it with `verdi process report {node.pk}` or `aiida-mad model show {node.pk}`')
    if wait:
        from .model import follow

        follow(node)


@cmd_train.command('pet')
@_options(PET_PROTOCOLS)
@click.option('--total-energy', is_flag=True, help='Train on total energies instead of baseline-subtracted ones.')
@decorators.with_dbenv()
def cmd_train_pet(
    dataset, protocol, code, gpus, restart, finetune, allow_fingerprint_mismatch, name, wait, total_energy
):
    """Train PET (energy, forces, stress) on DATASET (name, pk or uuid)."""
    _submit(
        dataset, protocol, code, gpus, restart, finetune, allow_fingerprint_mismatch, name, wait, total=total_energy
    )


@cmd_train.command('dos')
@_options(DOS_PROTOCOLS)
@decorators.with_dbenv()
def cmd_train_dos(dataset, protocol, code, gpus, restart, finetune, allow_fingerprint_mismatch, name, wait):
    """Train PET-MAD-DOS (the electronic DOS per structure) on DATASET (name, pk or uuid)."""
    _submit(dataset, protocol, code, gpus, restart, finetune, allow_fingerprint_mismatch, name, wait, total=False)
