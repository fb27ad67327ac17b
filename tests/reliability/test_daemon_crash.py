"""Daemon workers killed mid-campaign: after a restart every structure ends with exactly one finished calculation.

A labelling campaign of ten one-atom cells (the real pw.x, ``fast`` protocol, two k-points per direction) through the
real daemon (ZeroMQ broker), four work chains at a time. As soon as a calculation runs, every daemon worker is killed
with SIGKILL; the daemon is stopped and started again (a new ZeroMQ broker, on new sockets, which takes over the tasks
the old one kept on disk) and the same controller keeps going until everything is labelled.

The dataset built from the campaign is then compared with one built from an uninterrupted campaign on copies of the
same structures (new ``StructureData`` nodes with the same content: the controller's unique key would otherwise see
them as labelled already), submitted after the restart, alongside the rest of the crashed campaign, with the same
code, MPI ranks, protocol and overrides. A frame's content hash covers its structure's uuid and the split drawn from
it, so the uninterrupted frames are given the uuids of the structures they copy (and the splits those draw) before
their hash is compared, bit for bit, with the stored content hash of the crashed campaign's dataset: pw.x run
identically gives bitwise identical results here (no tolerance is needed; a difference is reported frame by frame).
"""

from __future__ import annotations

import os
import signal
import time
import uuid as uuid_module

import numpy as np
import pytest
from aiida import orm
from aiida.engine import run_get_node
from ase.build import bulk

from aiida_mad.controllers.broker import broker_restarted
from aiida_mad.controllers.dft import DFT_PROCESS_TYPE, SUBMISSION_EXTRA, DftSubmissionController
from aiida_mad.dataset.frames import content_hash
from aiida_mad.dataset.splits import assign_split
from aiida_mad.workflows.dataset import DatasetWorkChain
from tests.daemon import stop_daemon

OVERRIDES = {'pseudo_family': 'offline', 'kpoints_distance': 1.0}
SEED = 0


def worker_pids(client) -> list[int]:
    """Return the pids of the daemon's workers (circus ``stats``)."""
    info = client.get_worker_info().get('info', {})
    return sorted(int(pid) for pid in (info if isinstance(info, dict) else [item['pid'] for item in info]))


def campaign(label: str, structures, code, max_concurrent: int = 4) -> DftSubmissionController:
    """Store ``structures`` (subset ``mc3d``) in group ``label`` and return their controller."""
    parent = orm.Group(label=label).store()
    for structure in structures:
        structure.base.extras.set('mad_subset', 'mc3d')
        parent.add_nodes(structure.store())
    process_group = orm.Group(label=f'{label}/dft').store()
    return DftSubmissionController(
        parent_group_label=parent.label,
        group_label=process_group.label,
        code=code.full_label,
        protocol='fast',
        overrides=OVERRIDES,
        max_concurrent=max_concurrent,
    )


def run_to_completion(*controllers: DftSubmissionController) -> None:
    """Submit the controllers' batches until every structure is labelled (15 minutes at most)."""
    deadline = time.monotonic() + 900
    while not all(controller.is_done for controller in controllers):
        status = [controller.status() for controller in controllers]
        assert time.monotonic() < deadline, f'labelling did not finish after the crash: {status}'
        for controller in controllers:
            controller.submit_new_batch()
        time.sleep(1)


def build_dataset(controller: DftSubmissionController):
    """Return the ``mad.dataset`` (no baseline, seed :data:`SEED`) of the controller's process group."""
    builder = DatasetWorkChain.get_builder()
    builder.name = orm.Str(f'crash-{uuid_module.uuid4().hex[:12]}')
    builder.groups = orm.List([controller.group_label])
    builder.seed = orm.Int(SEED)
    builder.baseline = orm.Bool(False)
    _, node = run_get_node(builder)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    return node.outputs.dataset


def differences(frames, reference) -> dict:
    """Return, for the frames of ``frames`` that differ from those of ``reference`` (by source uuid), what differs."""
    by_uuid = {frame.info['source_uuid']: frame for frame in reference}
    found = {}
    for frame in frames:
        other = by_uuid.get(frame.info['source_uuid'])
        if other is None:
            found[frame.info['source_uuid']] = 'missing from the uninterrupted dataset'
            continue
        pairs = {
            'positions': (frame.positions, other.positions),
            'cell': (frame.cell.array, other.cell.array),
            'forces': (frame.arrays['forces'], other.arrays['forces']),
            **{key: (frame.info.get(key), other.info.get(key)) for key in ('energy', 'stress', 'split', 'fingerprint')},
        }
        differing = {
            key: (a, b) if isinstance(a, str) or a is None or b is None else float(np.max(np.abs(np.subtract(a, b))))
            for key, (a, b) in pairs.items()
            if not np.array_equal(a, b)
        }
        if differing:
            found[frame.info['source_uuid']] = differing
    return found


@pytest.mark.scenario('daemon workers SIGKILLed mid-campaign')
def test_killed_daemon_workers_lose_and_duplicate_nothing(pw_code, offline_family, started_daemon_client, figures):
    label = f'reliability/crash/{uuid_module.uuid4().hex[:8]}'
    atoms = [bulk('Si', 'fcc', a=3.70 + 0.03 * index) for index in range(10)]
    structures = [orm.StructureData(ase=item) for item in atoms]
    controller = campaign(label, structures, pw_code)
    parent = orm.load_group(controller.parent_group_label)
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
    # Then the daemon is stopped and started again: a new ZeroMQ broker, on new sockets, takes over the tasks the old
    # one kept on disk. The controller, connected to the old broker, must connect anew before it submits: else the
    # work chains it submits from now on would stay `created`.
    stop_daemon(started_daemon_client)
    started_daemon_client.start_daemon()
    assert broker_restarted(), 'the daemon started again with the broker this process was connected to'

    # Copies of the same structures, labelled without interruption from now on (all at once: the number of work
    # chains in flight changes nothing in a pw.x run), while the crashed campaign goes on.
    copies = [orm.StructureData(ase=item) for item in atoms]
    uninterrupted = campaign(f'{label}/uninterrupted', copies, pw_code, max_concurrent=len(copies))
    run_to_completion(controller, uninterrupted)

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
    figures['controller reconnected'] = not broker_restarted()

    # The same structures, labelled without interruption, give the same dataset content.
    crashed = build_dataset(controller)
    assert crashed.n_frames == len(runs)
    reference = build_dataset(uninterrupted)
    originals = {copy.uuid: original.uuid for copy, original in zip(copies, structures, strict=True)}
    frames = reference.frames()
    for frame in frames:
        frame.info['source_uuid'] = originals[frame.info['source_uuid']]
        frame.info['split'] = assign_split(frame.info['source_uuid'], SEED)
    assert content_hash(frames) == crashed.content_hash, differences(crashed.frames(), frames)
    figures['dataset hash'] = f'{crashed.content_hash[:12]} (= uninterrupted)'
