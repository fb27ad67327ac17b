"""DFT faults in a labelling campaign: recovered by a handler or recorded with their exit code, nothing lost.

The real pw.x runs through the fault-injecting wrapper (``tests/fixtures/fake_pw/pw_fault.sh``), submitted by the
controller to the real daemon, one structure and one process group per fault:

- ``once``: the SCF does not converge in the first run; the handler restarts it and it finishes;
- ``always``: it never converges: ``ERROR_SCF_FAILED`` (310);
- ``crash``: pw.x dies before writing anything: ``ERROR_SCF_FAILED`` (310), an unhandled failure;
- ``truncated-xml``: pw.x finishes but its XML is cut in half; the run is restarted unchanged and finishes;
- ``walltime``: the job is killed mid-run (SIGTERM, then SIGKILL) with Slurm's time-limit message, partial output
  and no XML; the run is restarted unchanged and finishes;
- ``oom``: the job is killed mid-run with the out-of-memory messages of the kernel and Slurm: ``ERROR_OUT_OF_MEMORY``
  (340), no restart with the same resources.

In every case the structure stays in its group, ``aiida-mad dft status`` reports its state (and, when it failed, the
exit status with its reason), every calculation keeps its retrieved files, no restart changed the level of theory
(cutoffs, smearing, k-points, functional, spin: every written input compared), and the controller does not submit
the structure again. A node failure cannot happen on this machine's ``core.direct`` scheduler: see
``test_slurm_node_failure.py``.
"""

from __future__ import annotations

import time
import uuid as uuid_module

import pytest
from aiida import orm
from ase.build import bulk

from aiida_mad.controllers.dft import DftSubmissionController
from aiida_mad.workflows.dft import MadDftWorkChain
from tests.fixtures.fake_pw.utils import fault_code, parse_pw_input, written_input

OVERRIDES = {'pseudo_family': 'offline'}

#: What no handler may change, as pw.x reads it: the namelist keys of the level of theory.
LOCKED_SYSTEM = ('ecutwfc', 'ecutrho', 'occupations', 'smearing', 'degauss', 'nspin', 'input_dft', 'assume_isolated')

SCF_FAILED = MadDftWorkChain.exit_codes.ERROR_SCF_FAILED.status
OUT_OF_MEMORY = MadDftWorkChain.exit_codes.ERROR_OUT_OF_MEMORY.status

#: fault -> (state in `dft status`, exit status of the work chain or None, reason shown, pw.x calculations)
EXPECTED = {
    'once': ('finished', None, None, 2),
    'always': ('failed', SCF_FAILED, 'scf failed', None),
    'crash': ('failed', SCF_FAILED, 'scf failed', None),
    'truncated-xml': ('finished', None, None, 2),
    'walltime': ('finished', None, None, 2),
    'oom': ('failed', OUT_OF_MEMORY, 'out of memory', 1),
}


def pw_calculations(workchain) -> list:
    """Return the ``PwCalculation`` nodes called under ``workchain``, oldest first."""
    return sorted(
        (node for node in workchain.called_descendants if isinstance(node, orm.CalcJobNode)), key=lambda n: n.ctime
    )


def status_row(run_cli_command, controller) -> list[str]:
    """Return the cells of the ``mc3d`` row of ``aiida-mad dft status`` for the controller's groups."""
    result = run_cli_command(
        [
            'dft',
            'status',
            controller.parent_group_label,
            '--code',
            controller.code,
            '--protocol',
            'fast',
            '--pseudo-family',
            'offline',
            '--process-group',
            controller.group_label,
        ]
    )
    row = next(line for line in result.output.splitlines() if 'mc3d ' in line and '│' in line)
    return [cell.strip() for cell in row.split('│')[1:-1]]


@pytest.mark.scenario('DFT faults (fault-injecting pw.x)')
def test_faults_are_recovered_or_recorded_and_nothing_is_lost(
    pw_code, offline_family, started_daemon_client, run_cli_command, tmp_path, figures
):
    controllers = {}
    for index, fault in enumerate(EXPECTED):
        parent = orm.Group(label=f'reliability/faults/{fault}-{uuid_module.uuid4().hex[:8]}').store()
        structure = orm.StructureData(ase=bulk('Si', 'fcc', a=3.80 + 0.03 * index))
        structure.base.extras.set('mad_subset', 'mc3d')
        parent.add_nodes(structure.store())
        controllers[fault] = DftSubmissionController(
            parent_group_label=parent.label,
            group_label=f'{parent.label}/dft',
            code=fault_code(pw_code, fault, directory=tmp_path).full_label,
            protocol='fast',
            overrides=OVERRIDES,
            max_concurrent=1,
        )
        assert len(controllers[fault].submit_new_batch()) == 1
    deadline = time.monotonic() + 900
    while not all(controller.is_done for controller in controllers.values()):
        assert time.monotonic() < deadline, 'the faulty runs did not end in 15 minutes'
        time.sleep(1)

    calculations = kills = 0
    for fault, (state, exit_status, reason, count) in EXPECTED.items():
        controller = controllers[fault]
        status = controller.status()['mc3d']
        assert status.counts[state] == 1, (fault, status)
        if exit_status is not None:
            assert dict(status.exit_statuses) == {exit_status: 1}, (fault, status)
        # `aiida-mad dft status` shows it, failures with their exit status and reason.
        row = status_row(run_cli_command, controller)
        states = dict(zip(('pending', 'running', 'finished', 'outlier', 'failed'), row[1:6], strict=True))
        assert states[state] == '1', (fault, row)
        if reason is not None:
            assert row[6] == f'{exit_status} ({reason}): 1', (fault, row)
        # Nothing lost: the structure is still in its group, every calculation kept what it retrieved.
        (structure,) = controller.parent_group.nodes
        (workchain,) = controller.group.nodes
        assert workchain.inputs.structure.uuid == structure.uuid
        runs = pw_calculations(workchain)
        if count is not None:
            assert len(runs) == count, (fault, [(run.pk, run.exit_status) for run in runs])
        calculations += len(runs)
        for calculation in runs:
            assert 'retrieved' in calculation.outputs, (fault, calculation.pk, calculation.exit_status)
            assert calculation.base.repository.list_object_names()  # the written input is kept
        # No restart changed the level of theory: the same locked keys and k-points in every written input.
        written = [parse_pw_input(written_input(run)) for run in runs]
        locked = [({key: w['namelists']['system'].get(key) for key in LOCKED_SYSTEM}, w['kpoints']) for w in written]
        assert all(entry == locked[0] for entry in locked), (fault, locked)
        # A failed structure is not submitted again: it is recorded, not pending.
        assert controller.pending_uuids() == []
        assert controller.submit_new_batch() == {}
        if fault in ('walltime', 'oom'):
            first = runs[0].outputs.retrieved
            stdout = first.base.repository.get_object_content('aiida.out')
            stderr = first.base.repository.get_object_content('_scheduler-stderr.txt')
            assert 'iteration #' in stdout and 'JOB DONE' not in stdout, fault  # killed mid-run
            assert ('DUE TO TIME LIMIT' if fault == 'walltime' else 'oom-kill') in stderr, stderr
            kills += 1
        if fault == 'truncated-xml':
            assert runs[0].exit_status == runs[0].process_class.exit_codes.ERROR_OUTPUT_XML_PARSE.status
    figures['faults'] = len(EXPECTED)
    figures['recovered'] = sum(state == 'finished' for state, *_ in EXPECTED.values())
    figures['recorded failures'] = sum(state == 'failed' for state, *_ in EXPECTED.values())
    figures['jobs killed'] = kills
    figures['calculations kept'] = calculations
