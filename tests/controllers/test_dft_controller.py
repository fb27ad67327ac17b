"""``DftSubmissionController`` with real pw.x runs through a real daemon (ZeroMQ broker)."""

import time

import numpy as np
import pytest
from aiida import orm
from aiida.common.exceptions import NotExistent
from ase.build import bulk

from aiida_mad.controllers.dft import DftSubmissionController, default_process_group_label

OVERRIDES = {'pseudo_family': 'offline'}


def make_structure_group(label, structures, subset='mc3d'):
    group = orm.Group(label=label).store()
    for atoms in structures:
        node = orm.StructureData(ase=atoms).store()
        node.base.extras.set('mad_subset', subset)
        group.add_nodes(node)
    return group


def make_controller(parent, code, max_concurrent):
    label = default_process_group_label(parent.label)
    orm.Group.collection.get_or_create(label=label)
    return DftSubmissionController(
        parent_group_label=parent.label,
        group_label=label,
        code=code.full_label,
        protocol='fast',
        overrides=OVERRIDES,
        max_concurrent=max_concurrent,
    )


def test_default_process_group_label():
    assert default_process_group_label('mad/structures/mc3d-rattled') == 'mad/dft/mc3d-rattled'
    assert default_process_group_label('my-structures') == 'mad/dft/my-structures'


@pytest.mark.usefixtures('aiida_profile_clean')
def test_max_concurrent_respected_and_no_duplicates(pw_code, offline_family, started_daemon_client):
    parent = make_structure_group('mad/structures/mc3d', [bulk('Si', 'diamond', a=a) for a in (5.40, 5.45, 5.50)])
    controller = make_controller(parent, pw_code, max_concurrent=1)
    assert controller.num_to_run == 3

    most_active = 0
    deadline = time.monotonic() + 600
    while not controller.is_done:
        assert time.monotonic() < deadline, 'labelling did not finish in 10 minutes'
        submitted = controller.submit_new_batch()
        assert len(submitted) <= 1
        active = controller.num_active_slots
        assert active <= 1
        most_active = max(most_active, active)
        time.sleep(0.5)
    assert most_active == 1

    workchains = orm.QueryBuilder().append(orm.WorkChainNode, filters={'attributes.process_label': 'MadDftWorkChain'})
    assert workchains.count() == 3
    status = controller.status()
    assert status['mc3d'].counts == {'pending': 0, 'running': 0, 'finished': 3, 'outlier': 0, 'failed': 0}

    # A second controller with the same settings finds everything done: nothing is submitted twice.
    again = make_controller(parent, pw_code, max_concurrent=5)
    assert again.num_to_run == 0
    assert again.submit_new_batch() == {}
    assert workchains.count() == 3
    # Every work chain carries the structure uuid and the protocol's fingerprint.
    extras = orm.QueryBuilder().append(
        orm.WorkChainNode,
        filters={'attributes.process_label': 'MadDftWorkChain'},
        project=['extras.mad_source_uuid', 'extras.mad_fingerprint'],
    )
    pairs = extras.all()
    assert {fingerprint for _, fingerprint in pairs} == {controller.fingerprint}
    assert {uuid for uuid, _ in pairs} == {node.uuid for node in parent.nodes}


@pytest.mark.usefixtures('aiida_profile_clean')
def test_validate_pending_lists_every_problem_and_submits_nothing(pw_code, offline_family):
    from ase import Atoms

    close_pair = Atoms('Si2', positions=[[0, 0, 0], [0.5, 0, 0]], cell=np.eye(3) * 5, pbc=True)
    parent = make_structure_group(
        'mad/structures/bad',
        [bulk('Si', 'diamond', a=5.43), bulk('Ce', 'fcc', a=5.16), bulk('Eu', 'bcc', a=4.6), close_pair],
    )
    controller = make_controller(parent, pw_code, max_concurrent=10)
    nodes_before = orm.QueryBuilder().append(orm.Node).count()
    with pytest.raises(ValueError, match='nothing submitted') as excinfo:
        controller.validate_pending()
    message = str(excinfo.value)
    assert 'Ce (1 structure)' in message
    assert 'Eu (1 structure)' in message
    assert 'Si2' in message and '0.5' in message
    assert orm.QueryBuilder().append(orm.Node).count() == nodes_before


@pytest.mark.usefixtures('aiida_profile_clean')
def test_unknown_protocol_is_refused(pw_code, offline_family):
    parent = make_structure_group('mad/structures/x', [bulk('Si', 'diamond', a=5.43)])
    controller = make_controller(parent, pw_code, max_concurrent=1)
    controller.protocol = 'nonsense'
    controller._fingerprint = None
    with pytest.raises(ValueError, match=r'unknown protocol `nonsense`: available protocols are .*fast, mad, mad-dos'):
        controller.fingerprint  # noqa: B018


def test_process_group_is_created_only_by_a_submission(crash_code, offline_family, started_daemon_client):
    parent = make_structure_group('controller/lazy-group', [bulk('Si', 'fcc', a=3.9)])
    label = 'controller/lazy-group/dft'
    controller = DftSubmissionController(
        parent_group_label=parent.label,
        group_label=label,
        code=crash_code.full_label,
        protocol='fast',
        overrides=OVERRIDES,
        max_concurrent=1,
    )
    # Building it, its status, what is pending, a dry run: nothing stored.
    assert controller.status()['mc3d'].counts['pending'] == 1
    assert len(controller.pending_uuids()) == 1 and controller.num_active_slots == 0
    assert len(controller.submit_new_batch(dry_run=True)) == 1
    assert not orm.Group.collection.count(filters={'label': label})
    with pytest.raises(NotExistent, match='created at the first submission'):
        controller.group  # noqa: B018
    # The first submission creates it, with the work chain in it.
    (node,) = controller.submit_new_batch().values()
    assert [n.uuid for n in controller.group.nodes] == [node.uuid]
    # Nothing pending: a second controller into another (missing) group creates nothing.
    other = DftSubmissionController(**{**controller.model_dump(), 'group_label': 'controller/lazy-group/other'})
    assert other.submit_new_batch() == {}
    assert not orm.Group.collection.count(filters={'label': 'controller/lazy-group/other'})
