"""Daemon workers killed mid-campaign: after a restart every structure ends with exactly one finished calculation.

A labelling campaign of ten one-atom cells (the real pw.x, ``fast`` protocol, two k-points per direction) through the
real daemon (ZeroMQ broker), four work chains at a time. As soon as a calculation runs, every daemon worker is killed
with SIGKILL; the daemon is restarted and the controller keeps going until everything is labelled.
"""

from __future__ import annotations

import os
import signal
import time
import uuid as uuid_module

import pytest
from aiida import orm
from ase.build import bulk

from aiida_mad.controllers.dft import DFT_PROCESS_TYPE, SUBMISSION_EXTRA, DftSubmissionController

OVERRIDES = {'pseudo_family': 'offline', 'kpoints_distance': 1.0}


def worker_pids(client) -> list[int]:
    """Return the pids of the daemon's workers (circus ``stats``)."""
    info = client.get_worker_info().get('info', {})
    return sorted(int(pid) for pid in (info if isinstance(info, dict) else [item['pid'] for item in info]))


@pytest.mark.scenario('daemon workers SIGKILLed mid-campaign')
def test_killed_daemon_workers_lose_and_duplicate_nothing(pw_code, offline_family, started_daemon_client, figures):
    parent = orm.Group(label=f'reliability/crash/{uuid_module.uuid4().hex[:8]}').store()
    for index in range(10):
        structure = orm.StructureData(ase=bulk('Si', 'fcc', a=3.70 + 0.03 * index))
        structure.base.extras.set('mad_subset', 'mc3d')
        parent.add_nodes(structure.store())
    process_group = orm.Group(label=f'{parent.label}/dft').store()
    controller = DftSubmissionController(
        parent_group_label=parent.label,
        group_label=process_group.label,
        code=pw_code.full_label,
        protocol='fast',
        overrides=OVERRIDES,
        max_concurrent=4,
    )
    first = list(controller.submit_new_batch().values())
    assert len(first) == 4

    # Wait until a pw.x calculation exists, then kill every worker at once.
    deadline = time.monotonic() + 300
    while not any(isinstance(item, orm.CalcJobNode) for node in first for item in node.called_descendants):
        states = [(node.pk, node.process_state, node.process_status) for node in first]
        assert time.monotonic() < deadline, f'no calculation started in 5 minutes: {states}'
        time.sleep(0.2)
    killed = worker_pids(started_daemon_client)
    assert killed
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    started_daemon_client.restart_daemon(wait=True)

    deadline = time.monotonic() + 900
    while not controller.is_done:
        assert time.monotonic() < deadline, f'labelling did not finish after the crash: {controller.status()}'
        controller.submit_new_batch()
        time.sleep(1)

    query = orm.QueryBuilder().append(
        orm.WorkflowNode,
        filters={'process_type': DFT_PROCESS_TYPE, 'extras.mad_fingerprint': controller.fingerprint},
        project=['extras.mad_source_uuid', '*'],
    )
    runs: dict[str, list] = {node.uuid: [] for node in parent.nodes}
    for uuid, node in query.iterall():
        if uuid in runs and node.base.extras.get(SUBMISSION_EXTRA, None) != 'orphaned':
            runs[uuid].append(node)
    assert {uuid: len(nodes) for uuid, nodes in runs.items()} == dict.fromkeys(runs, 1)
    finished = [node for nodes in runs.values() for node in nodes if node.is_finished_ok]
    assert len(finished) == len(runs), [
        (node.pk, node.process_state, node.exit_status) for nodes in runs.values() for node in nodes
    ]
    assert controller.status()['mc3d'].counts['finished'] == len(runs)
    figures['structures'] = len(runs)
    figures['workers killed'] = len(killed)
    figures['finished'] = len(finished)
    figures['duplicates'] = 0
