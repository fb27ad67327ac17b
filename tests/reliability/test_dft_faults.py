"""DFT faults in a labelling campaign: recovered by a handler or recorded with their exit code, nothing lost.

The real pw.x runs through the fault-injecting wrapper (``tests/fixtures/fake_pw/pw_fault.sh``), submitted by the
controller to the real daemon: ``once`` (the SCF does not converge in the first run; the handler restarts it),
``always`` (it never converges: ``ERROR_SCF_FAILED``, 310) and ``crash`` (pw.x dies before writing anything).
In every case the structure stays in its group, the controller's status reports it with its state and exit status,
every calculation keeps its retrieved files, and the controller does not submit the structure again.
"""

from __future__ import annotations

import time
import uuid as uuid_module

import pytest
from aiida import orm
from ase.build import bulk

from aiida_mad.controllers.dft import DftSubmissionController
from aiida_mad.workflows.dft import MadDftWorkChain
from tests.fixtures.fake_pw.utils import fault_code

OVERRIDES = {'pseudo_family': 'offline', 'kpoints_distance': 1.0}


@pytest.mark.scenario('DFT faults (fault-injecting pw.x)')
def test_faults_are_recovered_or_recorded_and_nothing_is_lost(
    pw_code, offline_family, started_daemon_client, tmp_path, figures
):
    expected = {
        'once': ('finished', None),
        'always': ('failed', MadDftWorkChain.exit_codes.ERROR_SCF_FAILED.status),
        'crash': ('failed', MadDftWorkChain.exit_codes.ERROR_SCF_FAILED.status),
    }
    controllers = {}
    for index, fault in enumerate(expected):
        parent = orm.Group(label=f'reliability/faults/{fault}-{uuid_module.uuid4().hex[:8]}').store()
        structure = orm.StructureData(ase=bulk('Si', 'fcc', a=3.80 + 0.03 * index))
        structure.base.extras.set('mad_subset', 'mc3d')
        parent.add_nodes(structure.store())
        process_group = f'{parent.label}/dft'
        orm.Group(label=process_group).store()
        controllers[fault] = DftSubmissionController(
            parent_group_label=parent.label,
            group_label=process_group,
            code=fault_code(pw_code, fault, directory=tmp_path).full_label,
            protocol='fast',
            overrides=OVERRIDES,
            max_concurrent=1,
        )
        assert len(controllers[fault].submit_new_batch()) == 1
    deadline = time.monotonic() + 600
    while not all(controller.is_done for controller in controllers.values()):
        assert time.monotonic() < deadline, 'the faulty runs did not end in 10 minutes'
        time.sleep(1)

    calculations = 0
    for fault, (state, exit_status) in expected.items():
        controller = controllers[fault]
        status = controller.status()['mc3d']
        assert status.counts[state] == 1, (fault, status)
        if exit_status is not None:
            assert dict(status.exit_statuses) == {exit_status: 1}, (fault, status)
        # Nothing lost: the structure is still in its group, every calculation kept what it retrieved.
        (structure,) = controller.parent_group.nodes
        (workchain,) = controller.group.nodes
        assert workchain.inputs.structure.uuid == structure.uuid
        for calculation in workchain.called_descendants:
            if isinstance(calculation, orm.CalcJobNode):
                calculations += 1
                assert 'retrieved' in calculation.outputs, (fault, calculation.pk, calculation.exit_status)
                assert calculation.base.repository.list_object_names()  # the written input is kept
        # A failed structure is not submitted again: it is recorded, not pending.
        assert controller.pending_uuids() == []
        assert controller.submit_new_batch() == {}
    figures['faults'] = len(expected)
    figures['recovered'] = 1
    figures['recorded failures'] = 2
    figures['calculations kept'] = calculations
