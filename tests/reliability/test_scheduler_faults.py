"""Faults that only a batch scheduler reports (node failure, Slurm's out-of-memory and time-limit states), handled.

This machine's ``core.direct`` scheduler never reports a lost node, so the Slurm path is taken at the level where
AiiDA meets Slurm's answer: the real ``SlurmScheduler.parse_output`` reads ``sacct`` lines with the states
``NODE_FAIL``, ``TIMEOUT`` and ``OUT_OF_MEMORY`` and returns the calculation's exit code; a ``PwCalculation`` node
failed with that exit code, with the partial pw.x output and Slurm's messages it would have retrieved, goes through
the real handlers of a real ``MadPwBaseWorkChain`` (``inspect_process``). A lost node or a time-limit kill is restarted
from scratch with the same level of theory, at most twice; an out-of-memory kill stops the work chain with
``ERROR_OUT_OF_MEMORY``. (The Slurm tests themselves, ``tests/workflows/test_dft_slurm.py``, run a real Slurm.)
"""

from __future__ import annotations

import copy
import io

import pytest
from aiida import orm
from aiida.common.links import LinkType
from aiida.engine import ExitCode, ProcessState
from aiida.engine.utils import instantiate_process
from aiida.manage import get_manager
from aiida.schedulers.plugins.slurm import SlurmScheduler
from aiida_quantumespresso.calculations.pw import PwCalculation

from aiida_mad.workflows.dft import (
    INTERRUPTED_RESTARTS,
    LOCKED_SYSTEM_KEYS,
    MadDftWorkChain,
    MadPwBaseWorkChain,
    classify_interruption,
)

#: The fields AiiDA asks ``sacct`` for (``SlurmScheduler._detailed_job_info_fields``, as it writes the header).
SACCT_HEADER = 'AllocCPUS|Account|AssocID|AveCPU|AvePages|AveRSS|AveVMSize|Cluster|Comment|CPUTime|CPUTimeRAW|DerivedExitCode|Elapsed|Eligible|End|ExitCode|Gid|Group|JobID|JobName|MaxRSS|MaxRSSNode|MaxRSSTask|MaxVMSize|MaxVMSizeNode|MaxVMSizeTask|MinCPU|MinCPUNode|MinCPUTask|NCPUS|NNodes|NodeList|NTasks|Priority|Partition|QOSRAW|ReqCPUS|Reserved|ResvCPU|ResvCPURAW|Start|State|Submit|Suspended|SystemCPU|Timelimit|TotalCPU|UID|User|UserCPU'  # noqa: E501

#: Slurm's stderr for each state (what slurmstepd writes into the job's error file).
SLURM_STDERR = {
    'NODE_FAIL': 'slurmstepd: error: *** JOB 4242 ON node-3 CANCELLED AT 2026-01-01T00:00:00 DUE TO NODE FAILURE ***',
    'TIMEOUT': 'slurmstepd: error: *** JOB 4242 ON node-3 CANCELLED AT 2026-01-01T00:00:00 DUE TO TIME LIMIT ***',
    'OUT_OF_MEMORY': 'slurmstepd: error: Detected 1 oom-kill event(s) in StepId=4242.0. Some of your processes may '
    'have been killed by the cgroup out-of-memory handler.',
}

#: The start of a pw.x output cut by the kill: header and the first SCF iteration, no JOB DONE.
PARTIAL_STDOUT = """
     Program PWSCF v.7.2 starts on  1Jan2026 at  0: 0: 0

     Self-consistent Calculation

     iteration #  1     ecut=    30.00 Ry     beta= 0.40
     Davidson diagonalization with overlap
"""


def sacct(state: str) -> dict:
    """Return ``detailed_job_info`` as ``SlurmScheduler.get_detailed_job_info`` returns it, for a job in ``state``."""
    fields = SACCT_HEADER.split('|')
    values = dict.fromkeys(fields, '')
    values.update({'JobID': '4242', 'JobName': 'aiida-1', 'State': state, 'NodeList': 'node-3', 'ExitCode': '0:9'})
    return {'retval': 0, 'stderr': '', 'stdout': '|'.join(fields) + '\n' + '|'.join(values[f] for f in fields) + '\n'}


def failed_calculation(computer, exit_code, stderr: str) -> orm.CalcJobNode:
    """Return a stored, failed ``PwCalculation`` node with ``exit_code`` and what such a job retrieves."""
    node = orm.CalcJobNode(computer=computer, process_type='aiida.calculations:quantumespresso.pw')
    node.set_process_label('PwCalculation')
    node.set_option('resources', {'num_machines': 1, 'num_mpiprocs_per_machine': 1})
    node.set_option('output_filename', 'aiida.out')
    node.set_option('scheduler_stderr', '_scheduler-stderr.txt')
    node.set_option('scheduler_stdout', '_scheduler-stdout.txt')
    node.set_process_state(ProcessState.FINISHED)
    node.set_exit_status(exit_code.status)
    node.set_exit_message(exit_code.message)
    node.store()
    retrieved = orm.FolderData()
    retrieved.base.repository.put_object_from_filelike(io.StringIO(PARTIAL_STDOUT), 'aiida.out')
    retrieved.base.repository.put_object_from_filelike(io.StringIO(stderr + '\n'), '_scheduler-stderr.txt')
    retrieved.base.repository.put_object_from_filelike(io.StringIO(''), '_scheduler-stdout.txt')
    retrieved.base.links.add_incoming(node, link_type=LinkType.CREATE, link_label='retrieved')
    retrieved.store()
    node.seal()
    return node


@pytest.fixture
def restart_work_chain(pw_code, offline_family, silicon):
    """Return a ``MadPwBaseWorkChain`` process at the `fast` level of theory, set up to inspect calculations."""
    builder = MadDftWorkChain.get_builder_from_protocol(pw_code, silicon, 'fast', {'pseudo_family': 'offline'})
    inputs = {
        'pw': {
            'code': pw_code,
            'structure': silicon,
            'parameters': builder.scf.pw.parameters,
            'pseudos': offline_family.get_pseudos(structure=silicon),
            'metadata': {'options': dict(builder.scf.pw.metadata['options'])},
        },
        'kpoints_distance': orm.Float(0.5),
    }
    process = instantiate_process(get_manager().get_runner(), MadPwBaseWorkChain, **inputs)
    process.setup()
    process.validate_kpoints()
    process.ctx.children = []
    return process


def inspect(process, calculation):
    """Let ``process`` inspect ``calculation`` as its next child; return its exit code (status 0: restart)."""
    process.ctx.children.append(calculation)
    process.ctx.iteration = len(process.ctx.children)
    return process.inspect_process() or ExitCode(0)


@pytest.mark.scenario('Slurm node failure, time limit, out of memory (scheduler output)')
def test_slurm_node_failure_and_time_limit_restart_unchanged_out_of_memory_stops(restart_work_chain, pw_code, figures):
    scheduler = SlurmScheduler()
    expected = {
        'NODE_FAIL': PwCalculation.exit_codes.ERROR_SCHEDULER_NODE_FAILURE,
        'TIMEOUT': PwCalculation.exit_codes.ERROR_SCHEDULER_OUT_OF_WALLTIME,
        'OUT_OF_MEMORY': PwCalculation.exit_codes.ERROR_SCHEDULER_OUT_OF_MEMORY,
    }
    calculations = {}
    for state, exit_code in expected.items():
        # Slurm's answer, read by AiiDA's own Slurm plugin.
        parsed = scheduler.parse_output(sacct(state), '', SLURM_STDERR[state])
        assert parsed.status == exit_code.status, state
        calculations[state] = failed_calculation(pw_code.computer, parsed, SLURM_STDERR[state])
    assert classify_interruption(calculations['NODE_FAIL']) == 'interrupted'
    assert classify_interruption(calculations['TIMEOUT']) == 'interrupted'
    assert classify_interruption(calculations['OUT_OF_MEMORY']) == 'out of memory'

    process = restart_work_chain
    locked = copy.deepcopy({key: process.ctx.inputs.parameters['SYSTEM'].get(key) for key in LOCKED_SYSTEM_KEYS})
    kpoints = process.ctx.inputs.kpoints.get_kpoints_mesh()
    # A lost node, then a time limit: each restarted from scratch, the level of theory untouched.
    for state in ('NODE_FAIL', 'TIMEOUT'):
        assert inspect(process, calculations[state]).status == 0, state
        assert process.ctx.inputs.parameters['CONTROL']['restart_mode'] == 'from_scratch'
        assert {key: process.ctx.inputs.parameters['SYSTEM'].get(key) for key in LOCKED_SYSTEM_KEYS} == locked
        assert process.ctx.inputs.kpoints.get_kpoints_mesh() == kpoints
        assert process.ctx.locked_state == process._current_locked_state()  # what the launch guard compares
    # A third interruption: given up with a known unrecoverable failure (MadDftWorkChain: 310).
    third = failed_calculation(pw_code.computer, expected['NODE_FAIL'], SLURM_STDERR['NODE_FAIL'])
    exit_code = inspect(process, third)
    assert exit_code.status == MadPwBaseWorkChain.exit_codes.ERROR_KNOWN_UNRECOVERABLE_FAILURE.status
    assert process.ctx.interrupted_restarts == INTERRUPTED_RESTARTS + 1

    # Out of memory: not restarted with the same resources; the exit code says what to change.
    fresh = instantiate_process(get_manager().get_runner(), MadPwBaseWorkChain, **dict(process.inputs))
    fresh.setup()
    fresh.validate_kpoints()
    fresh.ctx.children = []
    exit_code = inspect(fresh, calculations['OUT_OF_MEMORY'])
    assert exit_code.status == MadPwBaseWorkChain.exit_codes.ERROR_OUT_OF_MEMORY.status == 360
    assert f'PwCalculation<{calculations["OUT_OF_MEMORY"].pk}>' in exit_code.message
    assert 'more memory' in exit_code.message
    figures['scheduler states'] = len(expected)
    figures['restarts'] = 2
    figures['given up'] = 1
    figures['out of memory stopped'] = 1
