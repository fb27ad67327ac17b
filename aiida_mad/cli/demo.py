"""``aiida-mad demo``: run a real pw.x calculation through the daemon and print what it computed."""

import click
from aiida.cmdline.utils import decorators, echo

from . import params
from .utils import require_daemon


def describe_job(calculation) -> str:
    """Return a short state of a calculation: its scheduler state while queued or running, else its process state."""
    scheduler_state = calculation.get_scheduler_state()
    if scheduler_state is not None and not calculation.is_terminated:
        return scheduler_state.value
    return calculation.process_state.value if calculation.process_state else 'created'


@click.command('demo')
@params.PW_CODE()
@params.PSEUDO_FAMILY(default='offline', show_default=True)
@params.TIMEOUT()
@decorators.with_dbenv()
def cmd_demo(code, pseudo_family, timeout):
    """Submit a pw.x calculation of bulk Si to the daemon, follow it, and print energy, forces and stress."""
    import time

    import numpy as np
    from aiida.engine import submit
    from aiida.orm import CalcJobNode
    from rich.console import Console

    from aiida_mad.units import qe_stress_to_ase
    from aiida_mad.workflows.demo import get_demo_builder

    require_daemon()

    node = submit(get_demo_builder(code, pseudo_family.label))
    echo.echo_report(f'submitted PwBaseWorkChain<{node.pk}> for bulk Si with {code.full_label}')

    console = Console()
    start = time.monotonic()
    with console.status('') as status:
        while not node.is_terminated:
            if time.monotonic() - start > timeout:
                echo.echo_critical(f'PwBaseWorkChain<{node.pk}> still {node.process_state.value} after {timeout} s')
            jobs = [child for child in node.called if isinstance(child, CalcJobNode)]
            job = f', pw.x {describe_job(jobs[-1])}' if jobs else ''
            state = node.process_state.value if node.process_state else 'created'
            status.update(f'PwBaseWorkChain<{node.pk}> {state}{job} ({time.monotonic() - start:.0f} s)')
            time.sleep(0.5)

    if not node.is_finished_ok:
        echo.echo_critical(
            f'PwBaseWorkChain<{node.pk}> failed: exit status {node.exit_status} {node.exit_message or ""}; '
            f'inspect it with `verdi process report {node.pk}`'
        )
    parameters = node.outputs.output_parameters
    trajectory = node.outputs.output_trajectory
    forces = trajectory.get_array('forces')[-1]
    stress = qe_stress_to_ase(trajectory.get_array('stress')[-1])
    echo.echo(f'process pk:  {node.pk}')
    echo.echo(f'energy:      {parameters["energy"]:.6f} eV')
    echo.echo('forces (eV/Å):')
    for symbol, force in zip(node.inputs.pw.structure.get_ase().get_chemical_symbols(), forces, strict=True):
        echo.echo(f'  {symbol:<3} {force[0]:12.6f} {force[1]:12.6f} {force[2]:12.6f}')
    echo.echo('stress (eV/Å³, ASE sign: positive = tensile):')
    for row in np.asarray(stress):
        echo.echo(f'  {row[0]:12.6f} {row[1]:12.6f} {row[2]:12.6f}')
    echo.echo_success(f'pw.x ran in {time.monotonic() - start:.0f} s through the daemon')
