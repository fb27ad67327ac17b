"""RabbitMQ broker: submissions made while the daemon is down wait in the broker's queue and run once it is back.

A SQLite profile with the real RabbitMQ broker (:class:`tests.reliability.postgres.RabbitProfile`; the server is
started as ``setup_profile.sh --rabbitmq`` starts it, and stopped afterwards if it was not running). With the daemon
stopped, the controller submits every structure of a group (RabbitMQ keeps the tasks; with ZeroMQ the controller
refuses to submit without a daemon instead). Nothing runs meanwhile. Then the daemon starts: every work chain runs to
its end, each structure has exactly one, and a new controller cycle submits nothing and retires nothing. The code
fails at once (``/bin/false``): what is checked is that the queued tasks reach the daemon, not the DFT.
"""

from __future__ import annotations

import json

import pytest

from tests.reliability.postgres import RabbitProfile, rabbitmq_server

SUBMIT = """
import json, uuid
from aiida import orm
from ase.build import bulk
from aiida.manage import get_manager
from aiida_mad.controllers.dft import DftSubmissionController, SUBMISSION_EXTRA
assert not get_manager().get_daemon_client().is_daemon_running
parent = orm.Group(label=f'queued/{uuid.uuid4().hex[:8]}').store()
for index in range(int(sys.argv[2])):
    node = orm.StructureData(ase=bulk('Si', 'fcc', a=3.80 + 0.02 * index))
    node.base.extras.set('mad_subset', 'mc3d')
    parent.add_nodes(node.store())
controller = DftSubmissionController(
    parent_group_label=parent.label, group_label=parent.label + '/dft', code=sys.argv[1], protocol='fast',
    overrides={'pseudo_family': 'offline'}, max_concurrent=10,
)
nodes = list(controller.submit_new_batch().values())
print(json.dumps({
    'parent': parent.label,
    'states': [node.process_state.value for node in nodes],
    'sent': [node.base.extras.get(SUBMISSION_EXTRA) for node in nodes],
}))
"""

WAIT = """
import json, time
from aiida import orm
from aiida_mad.controllers.dft import DftSubmissionController, DFT_PROCESS_TYPE
parent = orm.Group.collection.get(label=sys.argv[1])
controller = DftSubmissionController(
    parent_group_label=parent.label, group_label=parent.label + '/dft', code=sys.argv[2], protocol='fast',
    overrides={'pseudo_family': 'offline'}, max_concurrent=10,
)
deadline = time.monotonic() + 600
while not all(node.is_terminated for node in controller.group.nodes):
    assert time.monotonic() < deadline, 'the queued work chains did not run in 10 minutes'
    time.sleep(1)
uuids = {node.uuid for node in parent.nodes}
query = orm.QueryBuilder().append(
    orm.WorkflowNode, filters={'process_type': DFT_PROCESS_TYPE}, project=['extras.mad_source_uuid']
)
found = [uuid for (uuid,) in query.iterall() if uuid in uuids]
print(json.dumps({
    'per_structure': sorted(found.count(uuid) for uuid in uuids),
    'states': sorted(node.process_state.value for node in controller.group.nodes),
    'resubmitted': len(controller.submit_new_batch()),
    'orphans': len(controller.orphaned_submissions()),
}))
"""


@pytest.fixture(scope='module')
def rabbit_profile(tmp_path_factory):
    """Yield a :class:`RabbitProfile` without a daemon; stop its daemon (and RabbitMQ, if started here) after."""
    with rabbitmq_server():
        profile = RabbitProfile(tmp_path_factory.mktemp('rabbit-profile'))
        try:
            profile.create()
            yield profile
        finally:
            profile.delete()


@pytest.mark.scenario('RabbitMQ: submitted while the daemon is down, run once back')
def test_submissions_queued_while_the_daemon_is_down_run_once_it_is_back(rabbit_profile, figures):
    profile = rabbit_profile
    count = 2
    submitted = json.loads(profile.run(SUBMIT, profile.code, str(count)).splitlines()[-1])
    # Stored, sent to the broker, and waiting there: not run, not orphaned.
    assert submitted['states'] == ['created'] * count and submitted['sent'] == ['sent'] * count, submitted
    profile.verdi('daemon', 'start', '1')
    result = json.loads(profile.run(WAIT, submitted['parent'], profile.code).splitlines()[-1])
    assert result['per_structure'] == [1] * count, result
    assert result['states'] == ['finished'] * count, result  # each ran to its end (the code fails: exit status 310)
    assert result['resubmitted'] == 0 and result['orphans'] == 0, result
    figures['queued while down'] = count
    figures['ran once back'] = result['states'].count('finished')
    figures['duplicates'] = sum(result['per_structure']) - count
