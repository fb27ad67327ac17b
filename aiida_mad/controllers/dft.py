"""Throttled DFT labelling of a structure group: ``DftSubmissionController``.

A structure is labelled once per level of theory: the unique key of a run is the structure's uuid plus the
fingerprint of the protocol (``mad_source_uuid``, ``mad_fingerprint`` extras on the work chain). The key holds across
the whole profile, not only within one process group: a structure counts as labelled when *any* ``MadDftWorkChain``
of the profile carries its key (one query over the process nodes by their extras), whatever group it is in.
``max_concurrent`` caps the work chains of the process group that are active at once.

**Concurrent controllers.** Finding the pending structures and submitting them is one critical section, guarded by
an exclusive lock, one per profile (structures can be in several parent groups, so the lock is not per group); the
pending structures are queried again inside the lock. On PostgreSQL the lock is a session-level advisory lock of the
database (``pg_advisory_lock``, key :data:`ADVISORY_LOCK_KEY`), so controllers on different machines sharing the
profile never both submit a structure; the database releases it if the controller's connection dies. On SQLite
(one machine by nature) it is an exclusive file lock (``fcntl.flock``) in the AiiDA configuration folder.

**Process group.** The controller creates its process group only when it submits something: building one, asking
its status, a dry run or a refused submission store nothing.

**Atomic submission.** A work chain is stored, given its extras (key and ``mad_submission = 'stored'``) and added
to its process group in one database transaction: an interruption before the commit leaves nothing (no node, no
group membership). Only then is it sent to the daemon, after which ``mad_submission`` becomes ``'sent'``. A work
chain still in the state ``created`` with ``mad_submission = 'stored'`` was never sent (the submitting process died
between the commit and the message): it would never run. The next controller cycle marks such an *orphaned
submission* killed (``mad_submission = 'orphaned'``, kept, with a process status saying why) and submits the
structure again; orphans count neither as labelled nor in :meth:`DftSubmissionController.status`.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import fcntl
import hashlib
import pathlib
from collections.abc import Iterator
from typing import Any

from aiida import orm
from aiida_submission_controller import FromGroupSubmissionController
from pydantic import PrivateAttr, field_validator

from aiida_mad.calculations.bulk import query_rows

#: Extras on every submitted work chain that identify what it labels.
UNIQUE_EXTRA_KEYS = ('mad_source_uuid', 'mad_fingerprint')

#: States reported per subset by :meth:`DftSubmissionController.status`.
STATES = ('pending', 'running', 'finished', 'outlier', 'failed')

#: Extra of a submitted work chain: ``stored`` (committed, not yet sent to the daemon), ``sent``, or ``orphaned``.
SUBMISSION_EXTRA = 'mad_submission'

#: How long a submission waits for the SQLite write lock held by another process (ms; SQLite's default: 5 s).
SQLITE_BUSY_TIMEOUT_MS = 120_000

#: Process type of the work chains the controller submits.
DFT_PROCESS_TYPE = 'aiida.workflows:mad.dft'

#: Key of the PostgreSQL advisory lock of the DFT submissions (a signed 64-bit integer; one lock per database, and
#: so per profile).
ADVISORY_LOCK_KEY = int.from_bytes(hashlib.sha256(b'aiida-mad:dft-submit').digest()[:8], 'big', signed=True)

#: Longest group label: PostgreSQL's limit (``varchar(255)``), enforced on SQLite too so profiles stay portable.
MAX_GROUP_LABEL = 255


def submission_lock_path() -> pathlib.Path:
    """Return the lock file of the DFT submissions of the loaded profile (in the AiiDA configuration folder)."""
    from aiida.manage import get_manager
    from aiida.manage.configuration import get_config

    profile = get_manager().get_profile()
    return pathlib.Path(get_config().dirpath) / 'mad' / f'dft-submit-{profile.uuid}.lock'


def _begin_immediate(storage) -> None:
    """Open the session's transaction; on SQLite take the write lock at once (``BEGIN IMMEDIATE``).

    A deferred SQLite transaction that reads first and writes later can fail at once with "database is locked"
    when another process commits meanwhile (SQLite does not wait where waiting could deadlock); an immediate one
    waits for the lock (up to :data:`SQLITE_BUSY_TIMEOUT_MS`) before anything is read.
    """
    session = storage.get_session()
    session.commit()
    connection = session.connection()
    if connection.dialect.name == 'sqlite':
        connection.exec_driver_sql(f'PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}')
        connection.exec_driver_sql('BEGIN IMMEDIATE')


@contextlib.contextmanager
def submission_lock() -> Iterator[str]:
    """Hold the profile's exclusive submission lock (blocking) for the duration of the block; yield what it is.

    On PostgreSQL: the advisory lock :data:`ADVISORY_LOCK_KEY`, held on a connection of its own (commits of the
    submissions do not release it; a dead controller's connection does). On SQLite: the file lock of
    :func:`submission_lock_path`.
    """
    from aiida.manage import get_manager

    bind = get_manager().get_profile_storage().get_session().get_bind()
    engine = getattr(bind, 'engine', bind)
    if engine.dialect.name == 'postgresql':
        from sqlalchemy import text

        with engine.connect() as connection:
            connection.execute(text('SELECT pg_advisory_lock(:key)'), {'key': ADVISORY_LOCK_KEY})
            connection.commit()
            try:
                yield f'pg_advisory_lock({ADVISORY_LOCK_KEY})'
            finally:
                connection.execute(text('SELECT pg_advisory_unlock(:key)'), {'key': ADVISORY_LOCK_KEY})
                connection.commit()
        return
    path = submission_lock_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open('a') as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield str(path)
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def check_group_label(label: str) -> str:
    """Return ``label`` if it can name a process group; raise ``ValueError`` naming the problem otherwise.

    Refused, as by the command line: an empty or blank label, one longer than :data:`MAX_GROUP_LABEL` characters,
    one with control or format characters (newlines, tabs, bidirectional overrides), one that starts or ends with
    white space, one with an empty path component (``//``, ``/`` at an end). The group need not exist: the controller
    creates it at its first submission.
    """
    import unicodedata

    if not isinstance(label, str) or not label.strip():
        raise ValueError(f'process group label {label!r} is empty: give a label such as mad/dft/mc3d')
    if len(label) > MAX_GROUP_LABEL:
        raise ValueError(
            f'process group label {label[:40]!r}... has {len(label)} characters: at most {MAX_GROUP_LABEL} '
            '(the limit of PostgreSQL profiles)'
        )
    control = sorted({character for character in label if unicodedata.category(character) in ('Cc', 'Cf')})
    if control:
        listed = ', '.join(f'U+{ord(character):04X}' for character in control)
        raise ValueError(f'process group label {label!r} contains control characters ({listed})')
    if label != label.strip():
        raise ValueError(f'process group label {label!r} starts or ends with white space')
    if '' in label.split('/'):
        raise ValueError(f"process group label {label!r} has an empty path component ('//', or '/' at an end)")
    return label


@dataclasses.dataclass
class SubsetStatus:
    """Counts of one subset, and the exit statuses of its failed work chains."""

    counts: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(STATES, 0))
    exit_statuses: collections.Counter = dataclasses.field(default_factory=collections.Counter)


class DftSubmissionController(FromGroupSubmissionController):
    """Submit ``MadDftWorkChain`` for every structure of ``parent_group_label``, at most ``max_concurrent`` at once."""

    code: str
    """Full label of the pw.x code, e.g. ``pw@cluster``."""
    protocol: str = 'mad'
    """Protocol of ``MadDftWorkChain``: ``mad``, ``mad-dos`` or ``fast``."""
    overrides: dict[str, Any] | None = None
    """Overrides merged over the protocol (e.g. ``{'pseudo_family': ...}``)."""
    options: dict[str, Any] | None = None
    """``metadata.options`` of the pw.x calculations (resources, walltime, queue, account...)."""
    unique_extra_keys: tuple = UNIQUE_EXTRA_KEYS
    """The structure uuid and the level-of-theory fingerprint."""

    _fingerprint: str | None = PrivateAttr(default=None)

    # The process group need not exist: it is created at the first submission (see :meth:`ensure_group`).
    _validate_group_exists = field_validator('group_label')(check_group_label)

    @field_validator('max_concurrent')
    @classmethod
    def _check_max_concurrent(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f'max_concurrent must be at least 1, not {value}')
        return value

    @property
    def group(self) -> orm.Group:
        """Return the process group; raise ``NotExistent`` naming it if nothing was submitted into it yet."""
        from aiida.common.exceptions import NotExistent

        try:
            return orm.Group.collection.get(label=self.group_label)
        except NotExistent:
            raise NotExistent(
                f'process group `{self.group_label}` does not exist yet: it is created at the first submission'
            ) from None

    def ensure_group(self) -> orm.Group:
        """Return the process group, creating it first if needed (only :meth:`submit_new_batch` calls this)."""
        group, _ = orm.Group.collection.get_or_create(label=self.group_label)
        return group

    @property
    def fingerprint(self) -> str:
        """Return the level-of-theory fingerprint of the runs this controller submits."""
        from aiida_mad.workflows.dft import protocol_fingerprint

        if self._fingerprint is None:
            self._fingerprint = protocol_fingerprint(orm.load_code(self.code), self.protocol, self.overrides)
        return self._fingerprint

    def structure_query(self, projections) -> orm.QueryBuilder:
        """Return a query over the structures of the parent group."""
        query = orm.QueryBuilder()
        query.append(orm.Group, filters={'id': self.parent_group.pk}, tag='group')
        query.append(orm.StructureData, filters=self.filters or {}, project=projections, with_group='group')
        return query

    def get_all_extras_to_submit(self) -> list[tuple[str, str]]:
        """Return ``(structure uuid, fingerprint)`` for every structure of the parent group."""
        fingerprint = self.fingerprint
        return [(uuid, fingerprint) for (uuid,) in query_rows(self.structure_query(['uuid']))]

    def get_parent_node_from_extras(self, extras_values):
        """Return the structure identified by its uuid."""
        return orm.load_node(extras_values[0])

    def get_inputs_and_processclass_from_extras(self, extras_values):
        """Return the builder of ``MadDftWorkChain`` for one structure (a builder, despite the method's name)."""
        from aiida_mad.workflows.dft import MadDftWorkChain

        structure = self.get_parent_node_from_extras(extras_values)
        return MadDftWorkChain.get_builder_from_protocol(
            self.code, structure, self.protocol, self.overrides, options=self.options
        )

    def labelled(self, uuids: list[str] | None = None) -> dict[str, list[tuple]]:
        """Return ``{structure uuid: [(pk, process state, exit status, outlier), ...]}`` at this fingerprint.

        One query over every ``MadDftWorkChain`` of the profile by its extras, in any process group (or none);
        orphaned submissions, and work chains stored but not yet sent to the daemon, are left out. ``uuids``
        restricts the result to those structures.
        """
        filters: dict[str, Any] = {'process_type': DFT_PROCESS_TYPE, 'extras.mad_fingerprint': self.fingerprint}
        query = orm.QueryBuilder().append(
            orm.WorkflowNode,
            filters=filters,
            project=[
                'extras.mad_source_uuid',
                'id',
                'attributes.process_state',
                'attributes.exit_status',
                'extras.mad_outlier',
                f'extras.{SUBMISSION_EXTRA}',
            ],
        )
        wanted = set(uuids) if uuids is not None else None
        result: dict[str, list[tuple]] = collections.defaultdict(list)
        for uuid, pk, state, exit_status, outlier, submission in query_rows(query):  # plain values: 10⁵ rows
            if uuid is None or submission == 'orphaned' or (wanted is not None and uuid not in wanted):
                continue
            if submission == 'stored' and state == 'created':  # never sent to the daemon (yet): not a run
                continue
            result[uuid].append((pk, state, exit_status, outlier))
        return dict(result)

    def _check_submitted_extras(self) -> set[tuple[str, str]]:
        """Return the keys of every structure labelled at this fingerprint anywhere in the profile."""
        return {(uuid, self.fingerprint) for uuid in self.labelled()}

    def pending_uuids(self) -> list[str]:
        """Return the uuids of the structures without a work chain of this fingerprint, in a stable order."""
        return sorted({uuid for (uuid,) in query_rows(self.structure_query(['uuid']))} - set(self.labelled()))

    def orphaned_submissions(self) -> list[orm.WorkflowNode]:
        """Return the work chains of this fingerprint that were stored but never sent to the daemon.

        Those are in the state ``created`` with ``mad_submission = 'stored'``: the submitting process died between
        the commit and the message to the daemon, so they would never run.
        """
        query = orm.QueryBuilder().append(
            orm.WorkflowNode,
            filters={
                'process_type': DFT_PROCESS_TYPE,
                'extras.mad_fingerprint': self.fingerprint,
                f'extras.{SUBMISSION_EXTRA}': 'stored',
                'attributes.process_state': 'created',
            },
        )
        return query.all(flat=True)

    def retire_orphans(self) -> list[orm.WorkflowNode]:
        """Mark every orphaned submission killed (kept, ``mad_submission = 'orphaned'``); return them.

        Their structures become pending again. Should the daemon still receive one of them later, it finds the work
        chain terminated and does not run it.
        """
        from aiida.engine import ProcessState

        orphans = self.orphaned_submissions()
        for node in orphans:
            node.set_process_state(ProcessState.KILLED)
            node.set_process_status('orphaned submission: stored but never sent to the daemon; submitted again')
            node.base.extras.set(SUBMISSION_EXTRA, 'orphaned')
            node.seal()
        return orphans

    def validate_pending(self) -> None:
        """Raise one ``ValueError`` naming every problem of the pending structures, before anything is submitted.

        Elements that the pseudopotential family lacks are listed once for the whole group (with how many
        structures need them), then the structures that need them by pk; implausible structures are listed by pk with
        their reasons.
        """
        from aiida_mad.structures.cells import DimensionalityError, dimensionality
        from aiida_mad.structures.checks import check_structure
        from aiida_mad.structures.elements import element_pool
        from aiida_mad.workflows.dft import MadDftWorkChain, code_version, load_family

        code = orm.load_code(self.code)
        code_version(code)
        inputs = MadDftWorkChain.get_protocol_inputs(self.protocol, self.overrides)
        family = load_family(inputs['pseudo_family'])
        available, pool = set(family.elements), element_pool(family.elements)
        pending = set(self.pending_uuids())
        missing: collections.Counter = collections.Counter()
        lacking_by_pk: list[str] = []
        refused = []
        for uuid, pk, structure in self.structure_query(['uuid', 'id', '*']).iterall():
            if uuid not in pending:
                continue
            lacking = set(structure.get_symbols_set()) - available
            missing.update(lacking)
            if lacking:
                lacking_by_pk.append(f'{structure.get_formula()}<{pk}> ({", ".join(sorted(lacking))})')
            atoms = structure.get_ase()
            reasons = [] if lacking else check_structure(atoms, pool=pool)
            try:
                dimensionality(atoms)
            except DimensionalityError as exception:
                reasons.append(str(exception))
            if reasons:
                refused.append(f'{structure.get_formula()}<{pk}>: ' + '; '.join(reasons))
        problems = []
        if missing:
            listed = ', '.join(
                f'{element} ({count} structure{"s" * (count != 1)})' for element, count in sorted(missing.items())
            )
            shown = lacking_by_pk[:20] + (
                [f'... and {len(lacking_by_pk) - 20} more'] if len(lacking_by_pk) > 20 else []
            )
            problems.append(
                f'no pseudopotential in `{family.label}` for {listed}; structures lacking them: {", ".join(shown)} '
                f'(remove them from the group, or label with a family that has these elements)'
            )
        if refused:
            shown = refused[:20] + ([f'... and {len(refused) - 20} more'] if len(refused) > 20 else [])
            problems.append('implausible structures: ' + ' | '.join(shown))
        if problems:
            raise ValueError('nothing submitted: ' + '; '.join(problems))

    def submit_new_batch(self, dry_run=False, sort=True, verbose=False, sleep=0):
        """Submit up to the free slots; unlike the base class, let errors propagate instead of logging them away.

        The pending structures are found and submitted under the profile's submission lock (see the module
        documentation); orphaned submissions are retired first. The process group is created here, and only when
        there is something to submit. Each work chain is stored, keyed and put in the
        process group in one transaction, then sent to the daemon. Returns ``{(uuid, fingerprint): node}``.
        """
        if dry_run:
            batch = [(uuid, self.fingerprint) for uuid in self.pending_uuids()[: self.num_available_slots]]
            return dict.fromkeys(batch)
        submitted = {}
        with submission_lock():
            self.retire_orphans()
            pending = self.pending_uuids()
            batch = [(uuid, self.fingerprint) for uuid in pending[: self.num_available_slots]]
            group = self.ensure_group() if batch else None
            for extras in batch:
                submitted[extras] = self.submit_one(extras, group)
        return submitted

    def submit_one(self, extras: tuple[str, str], group: orm.Group) -> orm.WorkflowNode:
        """Submit the work chain of one ``(structure uuid, fingerprint)``: stored, keyed and grouped at once.

        Call it under :func:`submission_lock` after checking that the structure is pending.
        """
        from aiida.common.exceptions import InvalidOperation
        from aiida.engine.utils import instantiate_process
        from aiida.manage import get_manager

        from aiida_mad.controllers.broker import connected_runner

        builder = self.get_inputs_and_processclass_from_extras(extras)
        manager = get_manager()
        profile = manager.get_profile()
        if profile.process_control_backend == 'core.zeromq' and not manager.get_daemon_client().is_daemon_running:
            raise InvalidOperation('cannot submit: the daemon is not running (start it with `verdi daemon start`)')
        runner = connected_runner(manager)  # a daemon restart gives a ZeroMQ broker new sockets
        if runner.controller is None:
            raise InvalidOperation(f'cannot submit: profile `{profile.name}` has no broker')
        storage = manager.get_profile_storage()
        process = None
        try:
            _begin_immediate(storage)
            with storage.transaction():
                process = instantiate_process(runner, builder)
                node = process.node
                keys = dict(zip(UNIQUE_EXTRA_KEYS, extras, strict=True))
                node.base.extras.set_many({**keys, SUBMISSION_EXTRA: 'stored'})
                group.add_nodes([node])
                runner.persister.save_checkpoint(process)
        except BaseException:
            storage.get_session().rollback()
            raise
        finally:
            if process is not None:
                process.close()  # also after a rollback: it unsubscribes the process from the broker
        runner.controller.continue_process(process.pid, nowait=False, no_reply=True)
        node.base.extras.set(SUBMISSION_EXTRA, 'sent')
        return node

    def status(self) -> dict[str, SubsetStatus]:
        """Return the state of every structure of the parent group at this fingerprint, per subset.

        One state per structure, from its work chains in any process group (orphaned submissions left out): pending
        (none), running, finished, outlier (finished with max |F| above the threshold), failed (with the exit
        statuses). A structure with several work chains (made before the key held across groups) counts once, by
        its best one: finished, else running, else failed.
        """
        subsets = dict(query_rows(self.structure_query(['uuid', 'extras.mad_subset'])))
        result: dict[str, SubsetStatus] = collections.defaultdict(SubsetStatus)
        labelled = self.labelled(list(subsets))
        for uuid, subset in subsets.items():
            entry = result[subset or 'unknown']
            runs = labelled.get(uuid)
            if not runs:
                entry.counts['pending'] += 1
                continue
            finished = [run for run in runs if run[1] == 'finished' and run[2] == 0]
            running = [run for run in runs if run[1] not in ('finished', 'excepted', 'killed')]
            if finished:
                entry.counts['outlier' if all(run[3] for run in finished) else 'finished'] += 1
            elif running:
                entry.counts['running'] += 1
            else:
                _, state, exit_status, _ = max(runs)
                entry.counts['failed'] += 1
                entry.exit_statuses[exit_status if state == 'finished' else state] += 1
        return dict(sorted(result.items()))

    @property
    def is_done(self) -> bool:
        """Return whether every structure has a terminated work chain of this fingerprint."""
        return not self.pending_uuids() and self.num_active_slots == 0


def default_process_group_label(parent_group_label: str) -> str:
    """Return ``mad/dft/<subset>`` for ``mad/structures/<subset>``, else ``mad/dft/<parent label>``."""
    prefix = 'mad/structures/'
    name = parent_group_label[len(prefix) :] if parent_group_label.startswith(prefix) else parent_group_label
    return f'mad/dft/{name}'
