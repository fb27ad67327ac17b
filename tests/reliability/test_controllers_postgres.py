"""Racing controllers on PostgreSQL: the submission lock is the database's advisory lock, so it holds across machines.

A profile on the machine's PostgreSQL cluster (:mod:`tests.reliability.postgres`: its own role, database and
``AIIDA_PATH``, the ZeroMQ broker and a daemon) and a group of one-atom cells per trial. Two real Python processes,
one per side, go through the trials together: for each, they build their controllers, wait at a barrier (a file) and
submit at the same moment (in one trial each into its own process group). Two processes on one
machine stand for two machines here: on PostgreSQL the controller takes no file lock at all (a lock file would not
reach another machine), only ``pg_advisory_lock``, which is checked in ``pg_locks`` while it is held. The code fails
at once (``/bin/false``): what is counted is the work chains per structure, not the DFT.
"""

from __future__ import annotations

import json

import pytest

from tests.reliability.postgres import PostgresProfile, postgres_cluster
from tests.reliability.test_controllers import race

#: Hold the submission lock and report what it is, and the advisory locks PostgreSQL shows meanwhile; then make
#: ``argv[1]`` groups of ``argv[2]`` one-atom Si cells. Prints ``{'lock', 'held', 'file', 'groups'}`` as JSON.
PREPARE = """
import json, uuid
from sqlalchemy import text
from aiida import orm
from aiida.manage import get_manager
from ase.build import bulk
from aiida_mad.controllers.dft import submission_lock, submission_lock_path
with submission_lock() as lock:
    session = get_manager().get_profile_storage().get_session()
    held = session.execute(text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted")).scalar()
    session.commit()
labels = []
for _ in range(int(sys.argv[1])):
    group = orm.Group(label=f'race/{uuid.uuid4().hex[:12]}').store()
    for index in range(int(sys.argv[2])):
        node = orm.StructureData(ase=bulk('Si', 'fcc', a=3.80 + 0.02 * index))
        node.base.extras.set('mad_subset', 'mc3d')
        group.add_nodes(node.store())
    labels.append(group.label)
print(json.dumps({'lock': lock, 'held': held, 'file': submission_lock_path().exists(), 'groups': labels}))
"""

#: Print ``{group label: {structure uuid: work chains}}`` over the whole profile for the groups ``argv[1:]``.
COUNT = """
import json
from aiida import orm
query = orm.QueryBuilder().append(
    orm.WorkflowNode, filters={'process_type': 'aiida.workflows:mad.dft'}, project=['extras.mad_source_uuid']
)
found = [uuid for (uuid,) in query.iterall()]
result = {}
for label in sys.argv[1:]:
    uuids = [node.uuid for node in orm.Group.collection.get(label=label).nodes]
    result[label] = {uuid: found.count(uuid) for uuid in uuids}
print(json.dumps(result))
"""


@pytest.fixture(scope='module')
def postgres_profile(tmp_path_factory):
    """Yield a :class:`PostgresProfile` with its daemon running; delete it (and stop the cluster if started) after."""
    with postgres_cluster():
        profile = PostgresProfile(tmp_path_factory.mktemp('postgres-profile'))
        try:
            profile.create()
            yield profile
        finally:
            profile.delete()


@pytest.mark.scenario('racing controllers (2 processes, PostgreSQL)')
def test_two_controllers_on_postgresql_submit_every_structure_once(postgres_profile, tmp_path, figures):
    profile = postgres_profile
    trials, per_trial = 3, 3
    prepared = json.loads(profile.run(PREPARE, str(trials), str(per_trial)).splitlines()[-1])
    # On PostgreSQL the submission lock is the advisory lock, not a file.
    assert prepared['lock'].startswith('pg_advisory_lock(') and prepared['held'] == 1, prepared
    assert not prepared['file'], prepared

    sides: list[list] = [[], []]
    for trial, parent in enumerate(prepared['groups']):
        # trial 1: each controller writes into its own process group; the key must hold across groups
        groups = [f'{parent}/dft'] * 2 if trial != 1 else [f'{parent}/dft-a', f'{parent}/dft-b']
        for side, group in enumerate(groups):
            fields = {
                'parent_group_label': parent,
                'group_label': group,
                'code': profile.code,
                'protocol': 'fast',
                'overrides': {'pseudo_family': 'offline'},
                'max_concurrent': 100,
            }
            sides[side].append((fields, str(tmp_path / f'go-{trial}')))
    lines = race(profile.popen, sides, tmp_path)
    claimed = {parent: (lines[0][trial], lines[1][trial]) for trial, parent in enumerate(prepared['groups'])}

    counts = json.loads(profile.run(COUNT, *prepared['groups']).splitlines()[-1])
    submitted = 0
    for parent, (first, second) in claimed.items():
        # Together they submitted every structure, and no structure twice.
        assert sorted(first + second) == sorted(counts[parent]), parent
        assert counts[parent] == dict.fromkeys(counts[parent], 1), counts[parent]
        submitted += sum(counts[parent].values())
    figures['trials'] = trials
    figures['structures'] = trials * per_trial
    figures['work chains'] = submitted
    figures['duplicates'] = submitted - trials * per_trial
