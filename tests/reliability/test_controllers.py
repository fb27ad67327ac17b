"""Racing and interrupted DFT submissions: every structure gets exactly one work chain per level of theory.

Real controllers against the session's SQLite profile and its real daemon (ZeroMQ broker). The racing controllers
run in two real Python processes that wait at a barrier (a file) and then submit at the same moment. The work chains
run the fault-injecting pw.x that crashes at once (``crash_code``), and are killed once they are counted:
what is checked is how many work chains each structure got, not the DFT.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import textwrap
import time
import uuid as uuid_module

import pytest
from aiida import orm
from aiida.engine.processes.control import kill_processes
from aiida.manage import get_manager
from ase.build import bulk

from aiida_mad.controllers.dft import DFT_PROCESS_TYPE, SUBMISSION_EXTRA, DftSubmissionController

OVERRIDES = {'pseudo_family': 'offline'}
REPOSITORY = pathlib.Path(__file__).resolve().parents[2]

#: One racing side for every trial (one process, so that the trials do not pay for a Python start each). Arguments:
#: the profile, a JSON list of ``[controller fields, barrier path]`` (one per trial) and the side's name. For each
#: trial: build the controller, say ready (file ``<barrier>.<side>``), wait for the barrier, submit, print the
#: submitted uuids as one JSON line.
RACER = """
import json, pathlib, sys, time
from aiida import load_profile
load_profile(sys.argv[1], allow_switch=True)
from aiida_mad.controllers.dft import DftSubmissionController
trials = json.loads(sys.argv[2])
side = sys.argv[3]
for fields, barrier in trials:
    barrier = pathlib.Path(barrier)
    controller = DftSubmissionController(**fields)
    controller.fingerprint
    (barrier.parent / (barrier.name + '.' + side)).touch()
    while not barrier.exists():
        time.sleep(0.005)
    submitted = controller.submit_new_batch()
    print(json.dumps(sorted(uuid for uuid, _ in submitted)), flush=True)
"""


def race(popen, sides: list[list], directory) -> list[list[list[str]]]:
    """Run the two sides of every trial (``sides[i]``: ``[fields, barrier]`` per trial) released together.

    ``popen(script, trials_json, side)`` starts one side; returns, per side, the uuids it submitted in each trial.
    """
    script = directory / 'racer.py'
    script.write_text(textwrap.dedent(RACER))
    racers = [popen(script, json.dumps(trials), str(side)) for side, trials in enumerate(sides)]
    for _, barrier in sides[0]:
        deadline = time.monotonic() + 300
        while not all(pathlib.Path(f'{barrier}.{side}').exists() for side in range(len(sides))):
            assert time.monotonic() < deadline, f'the racing controllers did not get ready for {barrier}'
            assert all(racer.poll() is None for racer in racers), [racer.communicate() for racer in racers]
            time.sleep(0.05)
        pathlib.Path(barrier).touch()  # both are waiting: release them together
    outputs = [racer.communicate(timeout=300) for racer in racers]
    for racer, (_, stderr) in zip(racers, outputs, strict=True):
        assert racer.returncode == 0, stderr
    return [[json.loads(line) for line in stdout.splitlines() if line.startswith('[')] for stdout, _ in outputs]


def structure_group(count: int) -> orm.Group:
    """Return a new group of ``count`` one-atom Si cells (fcc, distinct lattice constants)."""
    group = orm.Group(label=f'reliability/structures/{uuid_module.uuid4().hex[:12]}').store()
    for index in range(count):
        node = orm.StructureData(ase=bulk('Si', 'fcc', a=3.80 + 0.02 * index))
        node.base.extras.set('mad_subset', 'mc3d')
        group.add_nodes(node.store())
    return group


def controller_fields(parent: orm.Group, code, process_group: str) -> dict:
    orm.Group.collection.get_or_create(label=process_group)
    return {
        'parent_group_label': parent.label,
        'group_label': process_group,
        'code': code.full_label,
        'protocol': 'fast',
        'overrides': OVERRIDES,
        'max_concurrent': 100,
    }


def work_chains(parent: orm.Group) -> dict[str, list[orm.WorkflowNode]]:
    """Return ``{structure uuid: [MadDftWorkChain, ...]}`` over the whole profile for the structures of ``parent``."""
    uuids = {node.uuid for node in parent.nodes}
    query = orm.QueryBuilder().append(
        orm.WorkflowNode, filters={'process_type': DFT_PROCESS_TYPE}, project=['extras.mad_source_uuid', '*']
    )
    result: dict[str, list] = {uuid: [] for uuid in uuids}
    for uuid, node in query.iterall():
        if uuid in uuids:
            result[uuid].append(node)
    return result


def stop(nodes, timeout: float = 300) -> None:
    """Kill the work chains that are still active and wait until every one has terminated."""
    active = [node for node in nodes if not node.is_terminated]
    if active:
        kill_processes(active, msg_text='reliability test: counted, no need to run', timeout=120)
    deadline = time.monotonic() + timeout
    while not all(node.is_terminated for node in nodes):
        assert time.monotonic() < deadline, f'work chains still active: {[n.pk for n in nodes if not n.is_terminated]}'
        time.sleep(0.5)


@pytest.mark.scenario('racing controllers (2 processes, SQLite)')
def test_two_controllers_in_two_processes_submit_every_structure_once(
    crash_code, offline_family, started_daemon_client, tmp_path, figures
):
    profile = get_manager().get_profile().name
    trials, per_trial = 3, 3
    parents = [structure_group(per_trial) for _ in range(trials)]
    sides: list[list] = [[], []]
    for trial, parent in enumerate(parents):
        # trial 1: each controller writes into its own process group; the key must hold across groups
        groups = ['reliability/dft/shared'] * 2 if trial != 1 else ['reliability/dft/a', 'reliability/dft/b']
        for side, group in enumerate(groups):
            sides[side].append((controller_fields(parent, crash_code, group), str(tmp_path / f'go-{trial}')))

    def popen(script, trials_json, side):
        return subprocess.Popen(
            [sys.executable, str(script), profile, trials_json, side],
            cwd=REPOSITORY,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    claimed = race(popen, sides, tmp_path)
    submitted_total = 0
    for trial, parent in enumerate(parents):
        # Together they submitted every structure, and no structure twice.
        assert sorted(claimed[0][trial] + claimed[1][trial]) == sorted(node.uuid for node in parent.nodes)
        chains = work_chains(parent)
        assert {uuid: len(nodes) for uuid, nodes in chains.items()} == dict.fromkeys(chains, 1)
        submitted_total += sum(len(nodes) for nodes in chains.values())
    stop([node for parent in parents for nodes in work_chains(parent).values() for node in nodes])
    figures['trials'] = trials
    figures['structures'] = trials * per_trial
    figures['work chains'] = submitted_total
    figures['duplicates'] = submitted_total - trials * per_trial


@pytest.mark.scenario('key holds across process groups')
def test_another_process_group_does_not_relabel(crash_code, offline_family, started_daemon_client, figures):
    parent = structure_group(2)
    first = DftSubmissionController(**controller_fields(parent, crash_code, 'reliability/dft/first'))
    assert len(first.submit_new_batch()) == 2
    other = DftSubmissionController(**controller_fields(parent, crash_code, 'reliability/dft/other'))
    assert other.num_to_run == 0 and other.pending_uuids() == []
    assert other.submit_new_batch() == {}
    assert sum(entry.counts['pending'] for entry in other.status().values()) == 0
    chains = work_chains(parent)
    assert [len(nodes) for nodes in chains.values()] == [1, 1]
    stop([node for nodes in chains.values() for node in nodes])
    figures['structures'] = 2
    figures['work chains'] = 2


@pytest.mark.scenario('interrupted submission')
def test_interrupted_submissions_leave_nothing_that_looks_like_a_run(
    crash_code, offline_family, started_daemon_client, monkeypatch, figures
):
    parent = structure_group(2)
    controller = DftSubmissionController(**controller_fields(parent, crash_code, 'reliability/dft/interrupted'))
    nodes_before = orm.QueryBuilder().append(orm.Node).count()

    # Kill point 1: between storing the work chain and adding it to its group (Ctrl-C there, once).
    original_add_nodes = orm.Group.add_nodes

    def interrupted_add_nodes(self, nodes):
        monkeypatch.setattr(orm.Group, 'add_nodes', original_add_nodes)
        raise KeyboardInterrupt

    monkeypatch.setattr(orm.Group, 'add_nodes', interrupted_add_nodes)
    with pytest.raises(KeyboardInterrupt):
        controller.submit_new_batch()
    assert orm.QueryBuilder().append(orm.Node).count() == nodes_before  # rolled back: no node at all
    assert all(not nodes for nodes in work_chains(parent).values())
    assert len(controller.pending_uuids()) == 2

    # Kill point 2: committed, but killed before the message to the daemon went out.
    runner = get_manager().get_runner()
    original_continue = runner.controller.continue_process

    def interrupted_continue(*args, **kwargs):
        monkeypatch.setattr(runner.controller, 'continue_process', original_continue)
        raise KeyboardInterrupt

    monkeypatch.setattr(runner.controller, 'continue_process', interrupted_continue)
    with pytest.raises(KeyboardInterrupt):
        controller.submit_new_batch()
    orphans = controller.orphaned_submissions()
    assert len(orphans) == 1 and orphans[0].process_state.value == 'created'
    # It is not a run: the structure is still pending, and status does not count it as running.
    assert len(controller.pending_uuids()) == 2
    assert sum(entry.counts['running'] for entry in controller.status().values()) == 0

    # The next cycle retires the orphan (killed, kept) and submits every structure once.
    submitted = controller.submit_new_batch()
    assert len(submitted) == 2
    chains = work_chains(parent)
    live = {
        uuid: [node for node in nodes if node.base.extras.get(SUBMISSION_EXTRA) != 'orphaned']
        for uuid, nodes in chains.items()
    }
    assert [len(nodes) for nodes in live.values()] == [1, 1]
    assert orphans[0].is_killed and orphans[0].base.extras.get(SUBMISSION_EXTRA) == 'orphaned'
    assert all(node.base.extras.get(SUBMISSION_EXTRA) == 'sent' for nodes in live.values() for node in nodes)
    assert controller.submit_new_batch() == {}
    stop([node for nodes in chains.values() for node in nodes])
    figures['kill points'] = 2
    figures['orphans retired'] = 1
    figures['work chains per structure'] = 1
