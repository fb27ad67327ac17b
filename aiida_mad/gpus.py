"""Scheduler options for GPU training on Slurm (pure: plain dictionaries, no AiiDA import).

aiida-core has no GPU resource field, so GPUs are requested through ``custom_scheduler_commands``
(``#SBATCH --gres=gpu:N``). metatrain's distributed mode engages by itself when it runs as more than one Slurm task
(it reads ``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID`` and the node list), so each GPU gets one task: the
job asks for N tasks per node, one GPU each, and the code runs with MPI so that the computer's launcher starts the
N tasks. That launcher must be ``srun``: ``mpirun`` would start the processes without their own ``SLURM_PROCID``,
and every one of them would train alone on rank 0. :func:`check_launcher` refuses other launchers by name.
"""

from __future__ import annotations

__all__ = ('check_launcher', 'gpu_options', 'gpu_parameters')


def gpu_options(
    gpus: int,
    *,
    nodes: int = 1,
    cpus_per_gpu: int | None = None,
    max_wallclock_seconds: int | None = None,
    account: str | None = None,
    queue_name: str | None = None,
    extra_commands: str = '',
) -> dict:
    """Return ``metadata.options`` that run one metatrain process per GPU on ``nodes`` Slurm nodes.

    :param gpus: GPUs per node (``#SBATCH --gres=gpu:<gpus>``, one task per GPU).
    :param nodes: number of nodes; metatrain trains on ``nodes x gpus`` processes.
    :param cpus_per_gpu: CPU cores per task (data loading); ``--cpus-per-task``.
    :param max_wallclock_seconds: the walltime.
    :param account: the Slurm account.
    :param queue_name: the partition.
    :param extra_commands: more ``#SBATCH`` lines (modules go into the code's prepend text).
    :raises ValueError: for a non-positive count.
    """
    for name, value in (('gpus', gpus), ('nodes', nodes), ('cpus_per_gpu', cpus_per_gpu or 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f'{name} must be a positive integer, got {value!r}')
    resources = {'num_machines': nodes, 'num_mpiprocs_per_machine': gpus}
    if cpus_per_gpu:
        resources['num_cores_per_mpiproc'] = cpus_per_gpu
    lines = [f'#SBATCH --gres=gpu:{gpus}']
    if extra_commands:
        lines.append(extra_commands.rstrip('\n'))
    options = {'resources': resources, 'withmpi': True, 'custom_scheduler_commands': '\n'.join(lines)}
    if max_wallclock_seconds:
        options['max_wallclock_seconds'] = int(max_wallclock_seconds)
    if account:
        options['account'] = account
    if queue_name:
        options['queue_name'] = queue_name
    return options


def gpu_parameters(parameters: dict) -> dict:
    """Return metatrain ``parameters`` set to train on CUDA (``device: cuda``), leaving everything else."""
    return {**parameters, 'device': 'cuda'}


def check_launcher(scheduler_type: str, mpirun_command: list[str]) -> None:
    """Check that a computer starts MPI jobs with ``srun`` when it is a Slurm computer.

    :param scheduler_type: the computer's scheduler entry point (``core.slurm``).
    :param mpirun_command: the computer's MPI launcher command (``computer.get_mpirun_command()``).
    :raises ValueError: naming the launcher and how to change it.
    """
    if scheduler_type != 'core.slurm':
        raise ValueError(f'GPU training through Slurm needs a core.slurm computer, not {scheduler_type}')
    launcher = mpirun_command[0] if mpirun_command else ''
    if launcher.rsplit('/', 1)[-1] != 'srun':
        raise ValueError(
            f"the computer launches MPI jobs with `{' '.join(mpirun_command)}`: metatrain's distributed mode needs "
            'one Slurm task per GPU started by srun (verdi computer configure or setup with --mpirun-command "srun")'
        )
