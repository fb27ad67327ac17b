"""Per-subset AiiDA archives ``<prefix>-<subset>.aiida``: the full provenance of a subset, from seeds to DFT outputs.

Each archive lets anyone re-import one subset and trace every labelled structure back to where it came from: the
DFT work chains, everything they called (``MadPwBaseWorkChain``, ``PwCalculation``, calcfunctions) with all their
inputs and outputs, and backwards from each input structure through the ``generate_structures`` calcfunctions (and
their ``Dict`` of generator, parameters and seed) to the seed or imported structures, which have no creator.

**Traversal rules.** ``create_archive`` walks the graph from the given nodes. The rules that aiida-core does not let
one toggle already do most of the work (``aiida.common.links.GraphTraversalRules.EXPORT``): inputs of every process
(``input_calc_backward``, ``input_work_backward``), outputs (``create_forward``, ``return_forward``), called
processes (``call_calc_forward``, ``call_work_forward``) and the creator of every data node (``create_backward``,
which is what reaches ``generate_structures`` and, through its inputs, the seeds). :data:`TRAVERSAL_RULES` sets every
toggleable rule explicitly, all to ``False``, so that an archive holds one subset and nothing else:

* ``input_calc_forward`` / ``input_work_forward``: from a data node to the processes that *used* it. The code, the
  pseudopotentials, the family label and the seed structures are inputs of every run; following them forwards would
  pull in the whole database (every subset's DFT runs, every other generation from the same seeds).
* ``call_calc_backward`` / ``call_work_backward`` (aiida-core's default: ``True``): from a process to its caller. A
  ``generate_structures`` call made by ``GenerateWorkChain``, or a work chain run inside a larger workflow, would pull
  in the caller and then, forwards, all its other children: other batches and other subsets. The subset's own work
  chains are the starting points, so nothing below them is lost.
* ``return_backward``: from a data node to every workflow that returned it; shared nodes would pull in foreign work
  chains (the seed is returned as ``structure`` by its own `mc3d` run). Outputs are reached forwards anyway.

Consequences of the fixed rules: a ``generate_structures`` batch comes with all its outputs (``create_forward``),
also the structures of the batch that were not labelled and its ``refused`` Dict; the code, its computer (without
authentication info), the pseudopotentials and the seeds are in every archive that uses them, with the same uuids,
so importing several archives into one profile merges them instead of duplicating them. Files that stayed on the
cluster (the ``RemoteData`` folders) are not in an archive; the retrieved files are. Logs and comments are included.

**Groups are not exported.** The ``mad/seeds/*``, ``mad/structures/*`` and ``mad/dft/*`` groups are not per subset
(seed groups serve every generated subset, and exporting a group exports all its members with their provenance).
On import, ``verdi archive import`` / :func:`aiida.tools.archive.import_archive` puts every node of the archive
(also those the profile held already) into one automatically created import group (or the group given). The subset
of each run is in its ``subset`` input and in ``properties['subset']``, the structure's subset in its ``mad_subset``
extra, and the work chains keep their extras (``mad_fingerprint``, ``mad_source_uuid``, ``mad_outlier``): enough to
rebuild the groups if wanted.

**What is published.** Archives are meant to be published, so by default (``private_data=False``) every archive
is scrubbed after it is written (:func:`scrub_archive`): the computers keep their label, hostname, transport,
scheduler and MPI command, but lose their description, ``prepend_text``, ``append_text`` and work directory; codes
lose their ``prepend_text`` and ``append_text`` and keep only the file name of their executable; calculations lose
their remote working directory, the ``prepend_text``/``append_text``, custom scheduler commands and environment
variables of their options, and the submit script and job description files of their repository
(``_aiidasubmit.sh``, ``.aiida/``); ``RemoteData`` nodes lose their path; every user's email is replaced by
``anonymous@aiida-mad.invalid`` (names and institutions stay: they credit the authors). Any remaining occurrence
of those texts (in logs, comments, attributes, retrieved files) is replaced by ``[scrubbed]``. Authentication
information is never exported. What stays: structures, inputs and outputs of every calculation (pw.x input and
output files included), pseudopotentials, the provenance links, logs and extras. ``private_data=True`` keeps
everything (for a private backup).

**Writer.** :func:`write_archive` writes the archive itself, in aiida-core's format (``sqlite_zip``: the same SQLite
schema, metadata and ``repo/<sha256>`` members; ``verdi archive import`` reads it), instead of aiida-core's
``create_archive``, which walks the graph with one ``QueryBuilder`` step per rule and converts every row to ORM
entities and back (about 250 frames per CPU second, 7 minutes of CPU for 10⁵ structures, most of the export). The
node set is the same closure (one query per 10 000 nodes and step; on PostgreSQL one per step), the rows are copied
as the database stores them (JSON as text; from PostgreSQL fetched by a second thread while the rows already fetched
are inserted), the scrubbing is applied on the way, and the repository objects are read pack by pack from the object
store (:mod:`aiida_mad.export.objectstore`) into the ZIP file (:mod:`aiida_mad.export.zipwriter`);
``tests/export/test_archive.py::test_bulk_writer_gives_what_create_archive_gives`` checks that both give the same
rows, objects and metadata and import to the same nodes, links, attributes, extras and repository content (and
``test_bulk_writer_on_postgresql_gives_what_create_archive_gives`` on PostgreSQL). ``writer='aiida'`` keeps the old
way (``create_archive`` then :func:`scrub_archive`).

**Compression.** ZIP deflate level :data:`DEFAULT_COMPRESSION` (1). On the three test archives (Si through the fast
protocol: 2.05 MB of SQLite database, pseudopotentials, pw.x outputs and XML, arrays) level 6 keeps 18.3 % of the
bytes at 15 MB/s, level 9 18.2 % at 5 MB/s, level 1 20.2 % at 31 MB/s. At scale the database dominates (about
9.5 kB per synthetic result, 95 MB for 10⁴): level 1 compresses it at 230 MB/s to 16.7 %, level 6 at 83 MB/s to
14.0 %: level 1 saves about 10 % of the export's CPU time (3.2 s against 3.5 s for 10⁴ results) for archives
about 12 % larger (the Materials Cloud limit is 50 GB of archives: about 10⁶ structures at either level).
Repository objects under 512 bytes are stored without compression (deflating a few hundred bytes costs more than it
saves). ``compression=6`` or ``9`` for the smallest files.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import hashlib
import itertools
import json
import operator
import os
import pathlib
import queue
import re
import secrets
import shutil
import sqlite3
import tempfile
import threading
import time
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from aiida import orm

from .zipwriter import ZipWriter

__all__ = [
    'DEFAULT_COMPRESSION',
    'TRAVERSAL_RULES',
    'archive_filename',
    'archive_summary',
    'export_subset_archives',
    'scrub_archive',
    'write_archive',
]

#: The toggleable export traversal rules of aiida-core, each set explicitly (see the module docstring for why).
TRAVERSAL_RULES: dict[str, bool] = {
    'input_calc_forward': False,
    'input_work_forward': False,
    'call_calc_backward': False,
    'call_work_backward': False,
    'return_backward': False,
}

#: ZIP deflate level of the archives (0-9; see *Compression* in the module documentation).
DEFAULT_COMPRESSION = 1

#: Subset names become file names: letters, digits, ``.``, ``_`` and ``-``, starting with a letter or digit.
_SUBSET_PATTERN = re.compile(r'[A-Za-z0-9][A-Za-z0-9._-]*')


def archive_filename(subset: str, prefix: str = 'mad') -> str:
    """Return ``<prefix>-<subset>.aiida``."""
    return f'{prefix}-{subset}.aiida'


def _stored_pk(node: orm.Node) -> int | None:
    """Return the pk of ``node``, ``None`` if it is not stored, without reloading an expired node.

    After any commit (every ``QueryBuilder`` query commits) the ORM expires its nodes: ``node.pk`` or
    ``node.is_stored`` then reload the node, one query each (minutes for 10⁵ work chains). The identity of the
    database row survives the expiry.
    """
    import sqlalchemy

    try:
        state = sqlalchemy.inspect(node.backend_entity.bare_model)
    except (AttributeError, sqlalchemy.exc.NoInspectionAvailable):
        return node.pk if node.is_stored else None
    return state.identity[0] if state.identity else None


def workflow_pks(uuids: Sequence[str]) -> dict[str, int]:
    """Return ``{uuid: pk}`` of the workflow nodes among ``uuids`` (the others are left out).

    On PostgreSQL with one query (the uuids as one array parameter), on SQLite with one per 5 000 uuids.
    """
    from aiida_mad.calculations.bulk import query_rows

    source = _Source()
    if source.postgres:
        sql = (
            "SELECT uuid::text, id FROM db_dbnode WHERE uuid = ANY(%s::uuid[]) AND node_type LIKE 'process.workflow.%%'"
        )
        return dict(source.rows(sql, ('{' + ','.join(uuids) + '}',)))
    found: dict[str, int] = {}
    for first in range(0, len(uuids), 5_000):
        query = orm.QueryBuilder().append(
            orm.WorkflowNode, filters={'uuid': {'in': list(uuids[first : first + 5_000])}}, project=['uuid', 'id']
        )
        found.update(query_rows(query))
    return found


def _check_nodes(subset: str, nodes: Sequence[Any], *, workflows: bool, what: str) -> list[int]:
    """Return the pks of ``nodes`` (nodes or pks), or raise ``ValueError`` naming the subset and what is wrong.

    Whether the nodes exist, are work chains and are sealed is read with one query per 10 000 nodes (100 000 on
    PostgreSQL).
    """
    if isinstance(nodes, orm.Node | str | bytes) or not isinstance(nodes, Sequence):
        raise ValueError(f'subset `{subset}`: {what} must be a sequence of nodes, got {type(nodes).__name__}')
    expected = orm.WorkflowNode if workflows else orm.Node
    pks = []
    for node in nodes:
        if isinstance(node, int) and not isinstance(node, bool):
            pks.append(node)
            continue
        if not isinstance(node, expected):
            raise ValueError(f'subset `{subset}`: {what} must be {expected.__name__} instances, got {node!r}')
        pk = _stored_pk(node)
        if pk is None:
            raise ValueError(f'subset `{subset}`: {what} include an unstored node {node!r}: store it first')
        pks.append(pk)
    found = set()
    source = _Source()
    # whether the node is sealed, read in the database, not from every node's attributes (on SQLite the text as
    # json.dumps writes it; a node not found sealed so is checked through the ORM below)
    if source.postgres:
        sealed = "attributes -> 'sealed' = 'true'::jsonb"
        queries = [('WHERE id = ANY(%s::integer[])', (_array(batch),)) for batch in _batches(pks, 10 * _BATCH)]
    else:
        sealed = 'instr(attributes, \'"sealed": true\') > 0'
        queries = [(f'WHERE id IN ({_ints(batch)})', None) for batch in _batches(pks)]
    for where, parameters in queries:
        for pk, node_type, is_sealed in source.rows(
            f'SELECT id, node_type, {sealed} FROM db_dbnode {where}', parameters
        ):
            found.add(pk)
            if workflows and not node_type.startswith('process.workflow.'):
                raise ValueError(
                    f'subset `{subset}`: {what} must be {expected.__name__} instances, got {node_type}<{pk}>'
                )
            if node_type.startswith('process.') and not is_sealed and not (node := orm.load_node(pk)).is_sealed:
                label, state = (
                    node.base.attributes.get('process_label', None),
                    node.base.attributes.get('process_state', None),
                )
                raise ValueError(
                    f'subset `{subset}`: {label}<{pk}> is not sealed (state {state}): wait until it has terminated'
                )
    missing = sorted(set(pks) - found)
    if missing:
        raise ValueError(f'subset `{subset}`: {what} include pks of no node: {", ".join(map(str, missing[:10]))}')
    return list(dict.fromkeys(pks))


def export_subset_archives(
    workchains_by_subset: Mapping[str, Sequence[orm.WorkflowNode | int]],
    directory: str | os.PathLike,
    *,
    prefix: str = 'mad',
    force: bool = False,
    extra_by_subset: Mapping[str, Sequence[orm.Node | int]] | None = None,
    compression: int = DEFAULT_COMPRESSION,
    private_data: bool = False,
    writer: str = 'bulk',
) -> dict[str, pathlib.Path]:
    """Write one AiiDA archive ``<prefix>-<subset>.aiida`` per subset, with the whole provenance of its work chains.

    Everything is checked before anything is written, and every archive is first written to a hidden temporary
    file in ``directory`` and renamed into place only once all of them are complete: a failure leaves the
    directory as it was (with ``force``, existing archives are replaced only at that last step).

    :param workchains_by_subset: the work chains of each subset (``MadDftWorkChain``; under ``'isolated-atom'``,
        ``IsolatedAtomsWorkChain`` nodes, written to ``<prefix>-isolated-atom.aiida``), as nodes or pks. They must
        be stored and terminated.
    :param directory: where the archives go; created if missing.
    :param prefix: the start of every file name.
    :param force: replace existing archives; without it an existing target file is refused.
    :param extra_by_subset: further stored nodes (or pks) to put in a subset's archive (with their provenance, by the
        same rules), e.g. a structure that was refused or a baseline table.
    :param compression: ZIP deflate level, 0 to 9.
    :param private_data: keep the computers' setup texts, local paths, submit scripts and user emails; by default
        they are scrubbed (:func:`scrub_archive`), as archives are meant for publication.
    :param writer: ``'bulk'`` (the default: :func:`write_archive`, rows copied in bulk and scrubbed while written)
        or ``'aiida'`` (aiida-core's ``create_archive``, then :func:`scrub_archive`: the same content, 20 to 50
        times slower; kept as the reference the bulk writer is tested against).
    :return: ``{subset: path of its archive}``.
    :raises ValueError: for no subsets, a subset with no work chains, a subset name that cannot be a file name,
        unstored or unsealed nodes, a key of ``extra_by_subset`` that is no subset, or an existing target file
        without ``force`` (each message names the subset or the file).
    """
    directory = pathlib.Path(directory)
    extra_by_subset = dict(extra_by_subset or {})
    if not workchains_by_subset:
        raise ValueError('no subsets given: nothing to export')
    if not isinstance(compression, int) or isinstance(compression, bool) or not 0 <= compression <= 9:
        raise ValueError(f'compression must be an integer from 0 to 9, got {compression!r}')
    if writer not in ('bulk', 'aiida'):
        raise ValueError(f"writer must be 'bulk' or 'aiida', got {writer!r}")
    unknown = sorted(set(extra_by_subset) - set(workchains_by_subset))
    if unknown:
        raise ValueError(f'extra nodes given for subsets without work chains: {", ".join(unknown)}')
    if directory.exists() and not directory.is_dir():
        raise ValueError(f'{directory} exists and is not a directory')

    plans: dict[str, tuple[pathlib.Path, list[int]]] = {}
    for subset, workchains in workchains_by_subset.items():
        if not isinstance(subset, str) or not _SUBSET_PATTERN.fullmatch(subset):
            raise ValueError(
                f'subset name {subset!r} cannot be part of a file name: use letters, digits, `.`, `_`, `-`'
            )
        pks = _check_nodes(subset, workchains, workflows=True, what='work chains')
        if not pks:
            raise ValueError(f'subset `{subset}`: no work chains given, refusing to write an empty archive')
        extra = _check_nodes(subset, extra_by_subset.get(subset, ()), workflows=False, what='extra nodes')
        pks = list(dict.fromkeys([*pks, *extra]))
        target = directory / archive_filename(subset, prefix)
        if target.exists() and not force:
            raise ValueError(f'{target} exists already: pass force=True to replace it')
        if target.exists() and not target.is_file():
            raise ValueError(f'{target} exists and is not a file')
        plans[subset] = (target, pks)

    directory.mkdir(parents=True, exist_ok=True)
    temporary: dict[str, pathlib.Path] = {}
    try:
        for subset, (target, pks) in plans.items():
            # Not `mkstemp`: its file would be private (0600); the archive is created with the umask.
            temporary[subset] = directory / f'.{target.name}.{secrets.token_hex(6)}.partial'
            try:
                if writer == 'bulk':
                    write_archive(pks, temporary[subset], compression=compression, private_data=private_data)
                else:
                    _write_with_create_archive(pks, temporary[subset], compression, private_data)
            except Exception as exception:
                exception.add_note(f'while writing the archive of subset `{subset}` ({target}); nothing was written')
                raise
        for target, _ in plans.values():
            if target.exists() and not force:  # appeared while the archives were written
                raise ValueError(f'{target} exists already: pass force=True to replace it')
        for subset, (target, _) in plans.items():
            os.replace(temporary.pop(subset), target)
    finally:
        for path in temporary.values():
            path.unlink(missing_ok=True)
    return {subset: target for subset, (target, _) in plans.items()}


def _write_with_create_archive(pks: list[int], path: pathlib.Path, compression: int, private_data: bool) -> None:
    """Write the archive with aiida-core's ``create_archive`` (then :func:`scrub_archive`): the reference writer."""
    from aiida.tools.archive import create_archive

    nodes = [orm.load_node(pk) for pk in pks]
    create_archive(nodes, filename=path, overwrite=False, compression=compression, **TRAVERSAL_RULES)
    if not private_data:
        scrub_archive(path, compression=compression)


# ----------------------------------------------------------------------------------------------------------------
# The bulk writer

#: Rows per query (``id IN (...)``) and per insert of the bulk writer.
_BATCH = 10_000

#: Queries the fetching thread may run ahead of the inserts (PostgreSQL; each holds up to :data:`_BATCH` rows).
_AHEAD = 4

#: Copy the rows of a SQLite profile inside SQLite (``ATTACH`` and ``INSERT ... SELECT``); ``False``: through Python,
#: as for PostgreSQL (the tests write archives both ways).
_ATTACH_SQLITE = True

#: Repository object keys in (JSON) repository metadata.
_KEY_PATTERN = re.compile(r'"k": ?"([0-9a-f]{64})"')


def _traversal_link_types() -> tuple[list[str], list[str]]:
    """Return the link types followed forwards and backwards: aiida-core's export rules with :data:`TRAVERSAL_RULES`."""
    from aiida.common.links import GraphTraversalRules

    forward, backward = [], []
    for name, rule in GraphTraversalRules.EXPORT.value.items():
        if TRAVERSAL_RULES.get(name, rule.default):
            (forward if rule.direction == 'forward' else backward).append(rule.link_type.value)
    return forward, backward


def _batches(values: Sequence[int], size: int = _BATCH):
    for first in range(0, len(values), size):
        yield values[first : first + size]


class _Source:
    """Raw reads from the profile's database (SQLite or PostgreSQL), as the text the archive's SQLite stores."""

    def __init__(self):
        from aiida.manage import get_manager

        storage = get_manager().get_profile_storage()
        self.session = storage.get_session()
        self.repository = storage.get_repository()
        bind = self.session.get_bind()
        self.postgres = bind.dialect.name == 'postgresql'
        #: The profile's SQLite database file (``None`` on PostgreSQL): attached to the archive's database, its rows
        #: are copied by ``INSERT ... SELECT`` inside SQLite (see :meth:`attach`).
        self.sqlite_file = bind.url.database if bind.dialect.name == 'sqlite' and _ATTACH_SQLITE else None
        #: Where :meth:`rows` runs: the session's connection, or the archive's with the profile attached as ``src``.
        self.attached: sqlite3.Connection | None = None
        self.prefix = ''

    def attach(self, connection: sqlite3.Connection) -> bool:
        """Attach the profile's SQLite database to ``connection`` as ``src`` (to read); ``False`` on PostgreSQL."""
        if self.sqlite_file is None:
            return False
        connection.execute('ATTACH DATABASE ? AS src', (str(self.sqlite_file),))  # only read
        self.attached, self.prefix = connection, 'src.'
        return True

    def rows(self, sql: str, parameters: Sequence | None = None) -> list[tuple]:
        """Return the rows of ``sql`` (with ``parameters``: PostgreSQL only).

        Through the session's own database connection (its transaction), or through the archive's connection once
        the profile is attached (tables then named with :attr:`prefix`).
        """
        if self.attached is not None:
            return self.attached.execute(sql).fetchall()
        cursor = self.session.connection().connection.cursor()
        try:
            cursor.execute(sql) if parameters is None else cursor.execute(sql, parameters)
            return cursor.fetchall()
        finally:
            cursor.close()

    def queries(self, table, where: str, values: Sequence[int], columns: Sequence[str] | None = None, size=_BATCH):
        """Return ``(names, [(sql, parameters), ...])``: the queries of ``table``'s rows with ``where`` in ``values``.

        ``table`` is an archive model table; ``size`` values per query; the columns as the archive stores them.
        """
        from aiida.storage.sqlite_zip.models import TZDateTime
        from sqlalchemy import JSON

        names = columns or [column.name for column in table.columns]
        projected = []
        for name in names:
            column = table.columns[name]
            if not self.postgres:
                projected.append(f'"{name}"')  # SQLite: stored as the archive stores it (JSON and datetimes as text)
            elif isinstance(column.type, JSON) or name == 'uuid':
                projected.append(f'"{name}"::text')
            elif isinstance(column.type, TZDateTime):
                projected.append(f"to_char(\"{name}\" AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')")
            else:
                projected.append(f'"{name}"')
        select = f'SELECT {", ".join(projected)} FROM {self.prefix}{table.name} WHERE {where}'
        if self.postgres:  # one array parameter: no list to parse
            return names, [
                (f'{select} = ANY(%s::integer[]) ORDER BY {where}', (_array(batch),))
                for batch in _batches(values, size)
            ]
        return names, [(f'{select} IN ({_ints(batch)})', None) for batch in _batches(values, size)]

    def select(self, table, where: str, values: Sequence[int], columns: Sequence[str] | None = None, size=_BATCH):
        """Return ``(names, rows)`` of :meth:`queries`."""
        names, queries = self.queries(table, where, values, columns, size)
        return names, [row for sql, parameters in queries for row in self.rows(sql, parameters)]

    def stream(self, queries: Sequence[tuple[str, Sequence | None]]):
        """Yield the rows of each of ``queries`` (a list each), in order.

        On PostgreSQL a second thread runs them on its own connection, up to :data:`_AHEAD` queries ahead, while the
        caller inserts the rows it has: the server's work (JSON to text, the transfer) and the archive's inserts
        overlap. Elsewhere they run one by one, when asked for.
        """
        if not self.postgres:
            for sql, parameters in queries:
                yield self.rows(sql, parameters)
            return
        results: queue.Queue = queue.Queue(maxsize=_AHEAD)
        stop = threading.Event()
        bind = self.session.get_bind()

        def fetch() -> None:
            try:
                connection = bind.raw_connection()
                try:
                    cursor = connection.cursor()
                    for sql, parameters in queries:
                        if stop.is_set():
                            return
                        cursor.execute(sql, parameters)
                        results.put((True, cursor.fetchall()))
                finally:
                    connection.close()
                results.put((False, None))
            except BaseException as exception:  # given to the caller
                results.put((None, exception))

        thread = threading.Thread(target=fetch, name='mad-archive-fetch', daemon=True)
        thread.start()
        try:
            while True:
                done, value = results.get()
                if done is None:
                    raise value
                if not done:
                    return
                yield value
        finally:
            stop.set()
            while thread.is_alive():  # unblock a waiting put
                with contextlib.suppress(queue.Empty):
                    results.get(timeout=0.05)
            thread.join()

    def process_pks(self, pks: Sequence[int]) -> set[int]:
        """Return those of ``pks`` that are process nodes."""
        if self.postgres:
            sql = "SELECT id FROM db_dbnode WHERE id = ANY(%s::integer[]) AND node_type LIKE 'process.%%'"
            return {pk for (pk,) in self.rows(sql, (_array(pks),))}
        found: set[int] = set()
        for batch in _batches(pks):
            sql = f'SELECT id, node_type FROM {self.prefix}db_dbnode WHERE id IN ({_ints(batch)})'
            found.update(pk for pk, node_type in self.rows(sql) if node_type.startswith('process.'))
        return found

    def neighbours(self, pks: Sequence[int], link_types: Sequence[str], forward: bool) -> list[tuple[int, str]]:
        """Return ``(pk, link type)`` of the nodes one link of ``link_types`` away from ``pks``.

        Their outputs (``forward``) or their inputs.
        """
        from aiida.common.links import LinkType

        side, other = ('input_id', 'output_id') if forward else ('output_id', 'input_id')
        kinds = [LinkType(link_type).value for link_type in link_types]  # plain words
        if self.postgres:  # one query: PostgreSQL hashes a large array and picks the plan for its size
            sql = f'SELECT {other}, type FROM db_dblink WHERE {side} = ANY(%s::integer[]) AND type = ANY(%s)'
            return self.rows(sql, (_array(pks), kinds))
        # On SQLite as `+type`, which no index can serve: given `type = ...`, SQLite may walk the index of the link
        # type (every link of that type, for each batch: quadratic) instead of that of the node.
        words = ', '.join(f"'{kind}'" for kind in kinds)
        found: list[tuple[int, str]] = []
        for batch in _batches(pks):
            sql = f'SELECT {other}, type FROM {self.prefix}db_dblink WHERE {side} IN ({_ints(batch)})'
            sql += f' AND +type IN ({words})'
            found += self.rows(sql)
        return found


#: For each link type, whether the node at its input and at its output side is a process node (AiiDA's link rules:
#: CREATE calculation -> data, RETURN workflow -> data, INPUT_CALC/INPUT_WORK data -> process, CALL_CALC/CALL_WORK
#: workflow -> process).
_LINK_SIDES = {
    'create': (True, False),
    'return': (True, False),
    'input_calc': (False, True),
    'input_work': (False, True),
    'call_calc': (True, True),
    'call_work': (True, True),
}


def _side(link_type: str, forward: bool) -> tuple[bool, bool]:
    """Return whether the nodes at the start and at the end of a ``link_type`` link are process nodes.

    The start is the link's input if it is followed ``forward``, its output otherwise.
    """
    start, end = _LINK_SIDES[link_type]
    return (start, end) if forward else (end, start)


def _array(values: Sequence[int]) -> str:
    """Return ``values`` as the text of a PostgreSQL integer array (faster to pass than a list of ints)."""
    return f'{{{_ints(values)}}}'


def _ints(values: Sequence[int]) -> str:
    """Return ``values`` as the text of an SQL list (ints only: nothing else can end up in the statement)."""
    return ', '.join(map(str, map(operator.index, values)))


def _closure(source: _Source, starting: Sequence[int]) -> set[int]:
    """Return the pks reached from ``starting`` by the export traversal rules (as aiida-core's ``get_nodes_export``).

    A link type is followed forwards only from the nodes that can be at its input side, backwards only from those
    that can be at its output side (a data node is never the input of a ``create`` link...): the kind of every node
    found is known from the link it was found by, so no node is queried for links it cannot have (the outputs of a
    result, input to every dataset built from it, would otherwise bring all those links back at each step).
    """
    forward, backward = _traversal_link_types()
    # (forwards?, is the start a process?) -> the link types to follow from there
    steps = {}
    for kinds, ahead in ((forward, True), (backward, False)):
        for kind in kinds:
            steps.setdefault((ahead, _side(kind, ahead)[0]), []).append(kind)
    selected = set(starting)
    processes = source.process_pks(sorted(selected))
    frontier = {True: sorted(processes), False: sorted(selected - processes)}  # {is a process: pks}
    while frontier[True] or frontier[False]:
        found: dict[bool, set[int]] = {True: set(), False: set()}
        for (ahead, start_is_process), kinds in steps.items():
            if frontier[start_is_process]:
                for pk, kind in source.neighbours(frontier[start_is_process], kinds, ahead):
                    found[_side(kind, ahead)[1]].add(pk)
        frontier = {key: sorted(pks - selected) for key, pks in found.items()}
        selected.update(*frontier.values())
    return selected


def _dump(value) -> str:
    return json.dumps(value)


class _Scrubber:
    """The per-row part of :func:`scrub_archive`, applied while the rows are copied; collects the private texts."""

    def __init__(self):
        self.found: set[str] = set()
        self.removed: set[str] = set()
        self._needles = re.compile('|'.join(f'"{re.escape(key)}"' for key in _PRIVATE_KEYS))

    def attributes(self, node_type: str, attributes: str | None) -> str | None:
        if attributes is None:
            return attributes
        code = node_type.startswith('data.core.code.')
        if not code and not self._needles.search(attributes):
            return attributes
        value = json.loads(attributes)
        scrubbed = _scrub_mapping(value, self.found)
        if code and scrubbed.get('filepath_executable'):
            scrubbed['filepath_executable'] = pathlib.PurePath(scrubbed['filepath_executable']).name
        return _dump(scrubbed) if scrubbed != value else attributes

    def repository(self, metadata: str) -> str:
        if '"_aiidasubmit.sh"' not in metadata and '".aiida"' not in metadata:
            return metadata
        value = json.loads(metadata)
        scrubbed = _drop_private_files(value, self.removed)
        return _dump(scrubbed) if scrubbed != value else metadata


def _object_contents(repository, keys: set[str]):
    """Yield ``(key, content)`` of the repository objects ``keys``.

    From the disk-objectstore container in one pass (:func:`aiida_mad.export.objectstore.iter_object_contents`), or
    through the repository backend's streams.
    """
    from .objectstore import iter_object_contents, supported

    container = getattr(repository, '_container', None)
    if container is not None and supported(container):
        yield from iter_object_contents(container, sorted(keys))
        return
    for key, stream in repository.iter_object_streams(sorted(keys)):
        yield key, stream.read()


#: Repository objects smaller than this (bytes) are stored without compression: deflating a few hundred bytes costs
#: more (about 13 µs each, the most of an archive of small arrays) than it saves (about 10 % of them).
_STORED_BELOW = 512


#: Declared column types of the archive's schema that hold no text.
_NUMERIC_TYPES = {'INTEGER', 'BIGINT', 'SMALLINT', 'BOOLEAN', 'FLOAT', 'REAL', 'NUMERIC'}


def _replace_texts(connection: sqlite3.Connection, texts: Sequence[str]) -> bool:
    """Replace every remaining private text in every text column of the archive's database; ``True`` if any was."""
    if not texts:
        return False
    needles = list(dict.fromkeys(n for text in texts for n in (text, json.dumps(text)[1:-1])))
    before = connection.total_changes
    tables = connection.execute("SELECT name FROM main.sqlite_master WHERE type = 'table'").fetchall()
    for (table,) in tables:
        columns = [
            row[1]
            for row in connection.execute(f'PRAGMA main.table_info("{table}")').fetchall()
            if row[2].upper() not in _NUMERIC_TYPES  # ids and flags hold no text
        ]
        if not columns:
            continue
        for first in range(0, len(needles), 20):  # one scan of the table per 20 texts
            chunk = needles[first : first + 20]
            assignments, found, parameters = [], [], []
            for column in columns:
                replaced = f'"{column}"'
                for needle in chunk:
                    replaced = f'replace({replaced}, ?, ?)'
                    parameters += [needle, SCRUBBED]
                text_only = f'CASE WHEN typeof("{column}") = \'text\' THEN {replaced} ELSE "{column}" END'
                assignments.append(f'"{column}" = {text_only}')
                found += [f'instr("{column}", ?) > 0' for _ in chunk]
            connection.execute(
                f'UPDATE main."{table}" SET {", ".join(assignments)} WHERE {" OR ".join(found)}',
                parameters + chunk * len(columns),
            )
    return connection.total_changes > before


#: Bytes per chunk of the database's compression (see :func:`_deflate_file`).
_DEFLATE_CHUNK = 1 << 24


class _Deflated(NamedTuple):
    """A file as the data of a ZIP member: compressed to a raw deflate stream in ``path`` (or the file itself)."""

    path: pathlib.Path
    crc: int
    size: int
    method: int  # ZIP compression method: 8 deflated, 0 stored


def _deflate_file(path: pathlib.Path, level: int, workers: int = 2) -> _Deflated:
    """Compress the file ``path`` at deflate ``level`` into ``<path>.deflate`` (level 0: only its CRC).

    In chunks of :data:`_DEFLATE_CHUNK` bytes, ``workers`` at a time (zlib releases the GIL while it compresses):
    each chunk is an independent deflate stream ended by a sync flush (byte-aligned, not final) and the last by the
    final block, so that their concatenation is one valid stream (as ``pigz`` writes it; each chunk starts without the
    previous 32 KiB as dictionary, which costs a few bytes per chunk).
    """

    def compress(data: bytes, last: bool) -> bytes:
        compressor = zlib.compressobj(level, zlib.DEFLATED, -15)
        return compressor.compress(data) + compressor.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)

    target = path.with_name(path.name + '.deflate')
    crc = size = 0
    with path.open('rb') as source:
        if not level:
            while chunk := source.read(_DEFLATE_CHUNK):
                crc, size = zlib.crc32(chunk, crc), size + len(chunk)
            return _Deflated(path, crc, size, 0)
        with target.open('wb') as handle, concurrent.futures.ThreadPoolExecutor(workers) as pool:
            pending: collections.deque = collections.deque()
            chunk = source.read(_DEFLATE_CHUNK)
            if not chunk:
                handle.write(compress(b'', True))
            while chunk:
                following = source.read(_DEFLATE_CHUNK)
                crc, size = zlib.crc32(chunk, crc), size + len(chunk)
                pending.append(pool.submit(compress, chunk, not following))
                while len(pending) > workers:
                    handle.write(pending.popleft().result())
                chunk = following
            while pending:
                handle.write(pending.popleft().result())
    return _Deflated(target, crc, size, 8)


def _insert(connection: sqlite3.Connection, table: str, names: Sequence[str], rows: Sequence[Sequence]) -> None:
    if rows:
        marks = ', '.join('?' * len(names))
        columns = ', '.join(f'"{name}"' for name in names)
        connection.executemany(f'INSERT INTO {table} ({columns}) VALUES ({marks})', rows)


def _fix_node(node_type: str, attributes: str | None, repository: str, scrubber: _Scrubber | None):
    """Return ``(attributes, repository metadata, unsealed)`` of a node row as the archive gets it.

    The checkpoint of a process node is removed (``unsealed`` tells whether it is not sealed); unless ``scrubber`` is
    ``None``, its private keys are emptied and its private files left out of its repository metadata.
    """
    from aiida.orm import ProcessNode

    unsealed = False
    if node_type.startswith('process.') and (
        attributes is None or f'"{ProcessNode.CHECKPOINT_KEY}"' in attributes or '"sealed": true' not in attributes
    ):
        value = json.loads(attributes or '{}')
        unsealed = value.get('sealed') is not True
        if ProcessNode.CHECKPOINT_KEY in value:
            value.pop(ProcessNode.CHECKPOINT_KEY)
            attributes = _dump(value)
    if scrubber is not None:
        attributes = scrubber.attributes(node_type, attributes)
        repository = scrubber.repository(repository)
    return attributes, repository, unsealed


def _copy_nodes(connection, names: list[str], node_ids: Sequence[int], batches) -> None:
    """Copy the node rows ``node_ids`` as stored into the archive's ``db_dbnode``.

    From an attached SQLite profile (``batches`` is ``None``) with one ``INSERT ... SELECT`` (the pks go to the
    temporary table ``mad_selected``, which the links' copy reads too); otherwise the rows of
    ``batches`` (an iterator over the row lists of :meth:`_Source.stream`) as the driver gives them (no per-row
    Python). :func:`_fix_nodes` then changes the few rows that need it.
    """
    if batches is None:
        connection.execute('CREATE TEMP TABLE mad_selected (id INTEGER PRIMARY KEY)')
        connection.executemany('INSERT INTO temp.mad_selected VALUES (?)', ((pk,) for pk in node_ids))
        columns = ', '.join(f'"{name}"' for name in names)
        connection.execute(
            f'INSERT INTO main.db_dbnode ({columns}) SELECT {columns} FROM src.db_dbnode '
            'WHERE id IN (SELECT id FROM temp.mad_selected) ORDER BY id'
        )
        return
    for rows in batches:
        _insert(connection, 'db_dbnode', names, rows)


def _fix_nodes(connection, starting: set[int], scrubber: _Scrubber | None):
    """Pass the copied node rows that need it through :func:`_fix_node`; collect what the rest of the archive needs.

    Only those rows are read into Python and updated: process nodes with a checkpoint or not sealed, and (scrubbing)
    codes and the rows whose text holds a private key (the scrubber's own pattern, one pass over each text) or a
    private file name.

    :return: ``(users, computers, repository keys, unsealed pks, uuids of the starting nodes in pk order)``.
    """
    from aiida.orm import ProcessNode

    conditions = [
        "(substr(node_type, 1, 8) = 'process.' AND (attributes IS NULL OR instr(attributes, ?) > 0 "
        'OR instr(attributes, \'"sealed": true\') = 0))'
    ]
    parameters = [f'"{ProcessNode.CHECKPOINT_KEY}"']
    if scrubber is not None:
        # the scrubber's own pattern, one regular-expression pass per text (8 `instr` take twice as long: SQLite's
        # `instr` compares the needle at every position)
        search = scrubber._needles.search
        connection.create_function(
            'mad_private', 1, lambda text: text is not None and search(text) is not None, deterministic=True
        )
        conditions.append("substr(node_type, 1, 15) = 'data.core.code.'")
        conditions.append('mad_private(attributes)')
        conditions += ['instr(repository_metadata, ?) > 0'] * len(_PRIVATE_FILES)
        parameters += [f'"{name}"' for name in _PRIVATE_FILES]
    unsealed = []
    rows = connection.execute(
        f'SELECT id, node_type, attributes, repository_metadata FROM main.db_dbnode WHERE {" OR ".join(conditions)}',
        parameters,
    ).fetchall()
    for pk, node_type, attributes, repository in rows:
        fixed, fixed_repository, is_unsealed = _fix_node(node_type, attributes, repository, scrubber)
        if is_unsealed:
            unsealed.append(pk)
        if (fixed, fixed_repository) != (attributes, repository):
            connection.execute(
                'UPDATE main.db_dbnode SET attributes = ?, repository_metadata = ? WHERE id = ?',
                (fixed, fixed_repository, pk),
            )
    pairs = connection.execute('SELECT DISTINCT user_id, dbcomputer_id FROM main.db_dbnode').fetchall()
    users = {user for user, _ in pairs}
    computers = {computer for _, computer in pairs if computer is not None}
    keys = set()
    cursor = connection.execute("SELECT repository_metadata FROM main.db_dbnode WHERE repository_metadata != '{}'")
    while rows := cursor.fetchmany(_BATCH):  # one search per batch of texts
        keys.update(_KEY_PATTERN.findall(' '.join(text for (text,) in rows)))
    starting_uuids = []
    for batch in _batches(sorted(starting)):
        sql = f'SELECT uuid FROM main.db_dbnode WHERE id IN ({_ints(batch)}) ORDER BY id'
        starting_uuids += [uuid for (uuid,) in connection.execute(sql)]
    return users, computers, keys, unsealed, starting_uuids


def write_archive(
    pks: Sequence[int],
    path: str | os.PathLike,
    *,
    compression: int = DEFAULT_COMPRESSION,
    private_data: bool = False,
) -> dict[str, int]:
    """Write the AiiDA archive of the nodes ``pks`` with their provenance to ``path``, by bulk copies of the rows.

    What aiida-core's ``create_archive(nodes, **TRAVERSAL_RULES)`` followed by :func:`scrub_archive` writes, in the
    same format (``verdi archive import`` reads it), without their per-row work: the node set is the closure of
    ``pks`` under the export traversal rules (:data:`TRAVERSAL_RULES`), computed with one query per 10 000 nodes
    and step; the rows of nodes, links (those between two exported nodes: the ones the traversal walks), logs,
    comments, computers and users are read as stored and inserted as they are into the archive's SQLite database
    (aiida-core's ``sqlite_zip`` schema), checkpoints stripped, the repository objects of the nodes streamed into the
    ZIP file. Unless ``private_data``, the scrubbing of :func:`scrub_archive` is applied on the way: private keys
    emptied per row, the emails replaced, then every remaining private text replaced in the database by SQL and in
    the repository objects as they are streamed (an object that changes gets the key of its new content).

    :return: counts: ``nodes``, ``links``, ``objects`` (repository objects written), ``objects_rewritten``, and
        ``cpu`` and ``wall``: the CPU (this process, all threads) and wall seconds of each phase (closure, nodes,
        links, ..., database compression).
    :raises aiida.tools.archive.exceptions.ExportValidationError: if a process node of the closure is not sealed.
    """
    import datetime
    import sqlite3

    from aiida import get_version
    from aiida.common.links import GraphTraversalRules
    from aiida.storage.sqlite_zip import models, utils
    from aiida.tools.archive.abstract import get_format
    from aiida.tools.archive.exceptions import ExportValidationError

    path = pathlib.Path(path)
    source = _Source()
    scrubber = None if private_data else _Scrubber()
    starting = set(pks)
    counts = {'nodes': 0, 'links': 0, 'objects': 0, 'objects_rewritten': 0}
    counts['cpu'], counts['wall'] = {'_start': time.process_time()}, {'_start': time.perf_counter()}

    with tempfile.TemporaryDirectory(prefix='.mad-archive-', dir=path.parent) as work:
        database = pathlib.Path(work) / utils.DB_FILENAME
        engine = utils.create_sqla_engine(database)
        models.SqliteBase.metadata.create_all(engine)
        engine.dispose()
        # Not bound to this thread: the indexes are made in a second thread while the repository is streamed.
        connection = sqlite3.connect(database, check_same_thread=False)
        batches = None
        try:
            connection.execute('PRAGMA journal_mode = OFF')
            connection.execute('PRAGMA synchronous = OFF')
            # 64 MiB of page cache (SQLite's default: 2 MiB): the uuid index takes its rows in random order
            connection.execute('PRAGMA cache_size = -65536')
            attached = source.attach(connection)
            node_ids = sorted(_closure(source, pks))
            counts['nodes'] = len(node_ids)
            # The secondary indexes are dropped during the inserts and made again afterwards (faster in bulk).
            indexes = connection.execute(
                "SELECT name, sql FROM main.sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
            ).fetchall()
            for name, _ in indexes:
                connection.execute(f'DROP INDEX main."{name}"')

            def insert(table, names, rows):
                _insert(connection, table.name, names, rows)

            _phase(counts, 'closure')
            # Nodes: checkpoints stripped, sealed checked, private keys scrubbed; users, computers and keys collected.
            node_table, link_table = models.DbNode.__table__, models.DbLink.__table__
            names = [column.name for column in node_table.columns]
            link_names = ['input_id', 'output_id', 'label', 'type']
            if attached:
                node_batches = link_batches = None
            else:  # the links are fetched (PostgreSQL: in a second thread) while the nodes are fixed
                _, node_queries = source.queries(node_table, 'id', node_ids, names)
                _, link_queries = source.queries(link_table, 'output_id', node_ids, link_names)
                batches = source.stream([*node_queries, *link_queries])
                node_batches = itertools.islice(batches, len(node_queries))
                link_batches = itertools.islice(batches, len(link_queries))
            _copy_nodes(connection, names, node_ids, node_batches)
            users, computers, keys, unsealed, starting_uuids = _fix_nodes(connection, starting, scrubber)
            if unsealed:
                raise ExportValidationError(
                    'All ProcessNodes must be sealed before they can be exported. '
                    f'Node(s) with PK(s): {", ".join(str(pk) for pk in unsealed)} is/are not sealed.'
                )

            _phase(counts, 'nodes')
            # Links between two exported nodes: exactly those the traversal walks (every link type is followed in
            # one direction from the node that is always exported with it).
            if attached:
                columns = ', '.join(link_names)
                counts['links'] = connection.execute(
                    f'INSERT INTO main.db_dblink ({columns}) SELECT {columns} FROM src.db_dblink '
                    'WHERE output_id IN (SELECT id FROM temp.mad_selected) '
                    'AND input_id IN (SELECT id FROM temp.mad_selected)'
                ).rowcount
            else:
                selected = set(node_ids)
                for rows in link_batches:
                    rows = [row for row in rows if row[0] in selected]
                    counts['links'] += len(rows)
                    insert(link_table, link_names, rows)

            _phase(counts, 'links')
            for model in (models.DbLog, models.DbComment):
                names, rows = source.select(model.__table__, 'dbnode_id', node_ids, size=10 * _BATCH)
                if model is models.DbComment:
                    users.update(row[names.index('user_id')] for row in rows)
                insert(model.__table__, names, rows)

            names, rows = source.select(models.DbComputer.__table__, 'id', sorted(computers))
            if scrubber is not None:
                scrubbed = []
                for row in rows:
                    row = dict(zip(names, row, strict=True))
                    if row['description'] and row['description'].strip():
                        scrubber.found.add(row['description'])
                    metadata = _scrub_mapping(json.loads(row['metadata'] or '{}'), scrubber.found)
                    scrubbed.append([*row.values()])
                    scrubbed[-1][names.index('metadata')] = _dump(metadata)
                    scrubbed[-1][names.index('description')] = ''
                rows = scrubbed
            insert(models.DbComputer.__table__, names, rows)

            names, rows = source.select(models.DbUser.__table__, 'id', sorted(users))
            rows = sorted(rows, key=lambda row: row[names.index('id')])
            if scrubber is not None:
                email = names.index('email')
                for index, row in enumerate(rows):
                    scrubber.found.add(row[email])
                    anonymous = ANONYMOUS_EMAIL if index == 0 else ANONYMOUS_EMAIL.replace('@', f'-{index}@')
                    rows[index] = [*row[:email], anonymous, *row[email + 1 :]]
            insert(models.DbUser.__table__, names, rows)

            _phase(counts, 'logs users computers')
            texts = _texts(scrubber.found) if scrubber is not None else []

            def finish_database() -> _Deflated:
                # Second thread: SQLite and zlib work without the GIL while this one streams the repository.
                changed = _replace_texts(connection, texts)
                for _, sql in indexes:
                    connection.execute(re.sub(r'^(CREATE (?:UNIQUE )?INDEX )', r'\1main.', sql))
                connection.commit()
                if changed:
                    connection.execute('VACUUM')  # no free pages left holding the old texts
                return _deflate_file(database, compression)

            # Repository objects, streamed into the ZIP file (those holding a private text rewritten, rekeyed).
            encoded = [text.encode('utf-8') for text in texts]
            scrubbed_bytes = SCRUBBED.encode('utf-8')
            renamed: dict[str, str] = {}
            written: set[str] = set()

            def members():
                for key, content in _object_contents(source.repository, keys):
                    if encoded and any(text in content for text in encoded):
                        for text in encoded:
                            content = content.replace(text, scrubbed_bytes)
                        renamed[key] = hashlib.sha256(content).hexdigest()
                        counts['objects_rewritten'] += 1
                    name = renamed.get(key, key)
                    if name not in written:
                        written.add(name)
                        yield f'{utils.REPO_FOLDER}/{name}', content

            with path.open('xb') as handle:
                try:
                    target = ZipWriter(handle, time.localtime()[:6])
                    with concurrent.futures.ThreadPoolExecutor(1) as pool:
                        database_done = pool.submit(finish_database)
                        target.add_many(members(), level=compression, stored_below=_STORED_BELOW)
                        counts['objects'] = len(written)
                        _phase(counts, 'repository')
                        deflated = database_done.result()
                    _phase(counts, 'database: scrub, index, compression')
                    if renamed:
                        for old, new in renamed.items():
                            connection.execute(
                                'UPDATE db_dbnode SET repository_metadata = replace(repository_metadata, ?, ?) '
                                'WHERE instr(repository_metadata, ?) > 0',
                                (old, new, old),
                            )
                        connection.commit()
                        connection.execute('VACUUM')
                        deflated = _deflate_file(database, compression)
                    connection.close()

                    rules = {
                        name: TRAVERSAL_RULES.get(name, rule.default)
                        for name, rule in GraphTraversalRules.EXPORT.value.items()
                    }
                    metadata = {
                        'export_version': get_format().latest_version,
                        'aiida_version': get_version(),
                        'key_format': 'sha256',
                        'compression': compression,
                        'ctime': datetime.datetime.now().isoformat(),
                        'creation_parameters': {
                            'entities_starting_set': {'node': starting_uuids},
                            'include_authinfos': False,
                            'include_comments': True,
                            'include_logs': True,
                            'graph_traversal_rules': rules,
                        },
                    }
                    target.add_file(
                        utils.DB_FILENAME, deflated.path, crc=deflated.crc, size=deflated.size, method=deflated.method
                    )
                    target.add(utils.META_FILENAME, json.dumps(metadata).encode('utf-8'))
                    # aiida reads the metadata and the database from the first entries of the central directory
                    target.close(first=(utils.META_FILENAME, utils.DB_FILENAME))
                except BaseException:
                    handle.close()
                    path.unlink()  # no half-written archive
                    raise
        finally:
            if batches is not None:
                batches.close()  # the fetching thread stops and gives its connection back (also on an error)
            connection.close()
    _phase(counts, 'central directory')
    del counts['cpu']['_start'], counts['wall']['_start']
    return counts


def _phase(counts: dict, name: str) -> None:
    """Record the CPU and wall seconds since the previous phase under ``counts['cpu'][name]``, ``counts['wall']``."""
    for kind, clock in (('cpu', time.process_time), ('wall', time.perf_counter)):
        now = clock()
        counts[kind][name] = now - counts[kind].pop('_start')
        counts[kind]['_start'] = now


def archive_summary(path: str | os.PathLike) -> dict[str, Any]:
    """Describe an AiiDA archive without importing it: read-only, through the archive itself as storage backend.

    :return: a dictionary with

        * ``path``: the archive's path (str); ``version``: its archive format version;
        * ``nodes``: the number of nodes; ``uuids``: the set of their uuids;
        * ``node_types``: ``{node_type: count}``, e.g. ``data.core.structure.StructureData.``;
        * ``process_types``: ``{process_type: count}`` over process nodes, e.g. ``aiida.workflows:mad.dft``;
        * ``process_labels``: ``{process_label: count}``, e.g. ``MadDftWorkChain``, ``generate_structures``;
        * ``links``: the number of links; ``groups``: ``{group label: number of nodes}``;
        * ``traversal_rules`` and ``starting_uuids``: how the archive was made (from its metadata), when recorded.

        ``uuids`` and ``starting_uuids`` are sets: sort them before writing JSON.

    :raises FileNotFoundError: if there is no file at ``path``.
    :raises ValueError: if the file is not an AiiDA archive that this aiida-core can read (e.g. an older version:
        migrate it with ``verdi archive migrate``).
    """
    from aiida.common.exceptions import CorruptStorage, IncompatibleStorageSchema, UnreachableStorage
    from aiida.tools.archive.abstract import get_format

    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'no archive at {path}')
    archive_format = get_format()
    try:
        version = archive_format.read_version(path)
        if version != archive_format.latest_version:
            raise ValueError(
                f'{path} is archive version {version}, this aiida-core reads {archive_format.latest_version}: '
                f'run `verdi archive migrate {path} NEW_PATH` first'
            )
        with archive_format.open(path, mode='r') as reader:
            metadata = reader.get_metadata()
            query = reader.querybuilder().append(
                orm.Node, project=['uuid', 'node_type', 'process_type', 'attributes.process_label']
            )
            uuids: set[str] = set()
            node_types: collections.Counter = collections.Counter()
            process_types: collections.Counter = collections.Counter()
            process_labels: collections.Counter = collections.Counter()
            for uuid, node_type, process_type, process_label in query.iterall():
                uuids.add(uuid)
                node_types[node_type] += 1
                if process_type:
                    process_types[process_type] += 1
                if process_label:
                    process_labels[process_label] += 1
            links = reader.querybuilder().append(orm.Node, tag='node').append(orm.Node, with_incoming='node').count()
            groups: collections.Counter = collections.Counter()
            for group in reader.querybuilder().append(orm.Group, project='label').all(flat=True):
                groups[group] = 0
            member_query = reader.querybuilder().append(orm.Group, project='label', tag='group')
            member_query.append(orm.Node, with_group='group', project='id')
            for label, _ in member_query.iterall():
                groups[label] += 1
    except (CorruptStorage, IncompatibleStorageSchema, UnreachableStorage) as exception:
        raise ValueError(f'{path} is not a readable AiiDA archive: {exception}') from exception
    parameters = metadata.get('creation_parameters', {})
    starting = (parameters.get('entities_starting_set') or {}).get('node', [])
    return {
        'path': str(path),
        'version': version,
        'nodes': len(uuids),
        'uuids': uuids,
        'node_types': dict(sorted(node_types.items())),
        'process_types': dict(sorted(process_types.items())),
        'process_labels': dict(sorted(process_labels.items())),
        'links': links,
        'groups': dict(sorted(groups.items())),
        'traversal_rules': parameters.get('graph_traversal_rules'),
        'starting_uuids': set(starting),
    }


#: The email every user of a scrubbed archive gets (numbered from the second user on).
ANONYMOUS_EMAIL = 'anonymous@aiida-mad.invalid'

#: What replaces a private text that remains somewhere in a scrubbed archive.
SCRUBBED = '[scrubbed]'

#: Keys removed (set empty) from node attributes and computer metadata, at any depth.
_PRIVATE_KEYS = {
    'prepend_text': '',
    'append_text': '',
    'remote_workdir': '',
    'remote_path': '',
    'workdir': '',
    'work_dir': '',
    'custom_scheduler_commands': '',
    'environment_variables': {},
}

#: Top-level repository entries of a calculation that describe the machine: removed.
_PRIVATE_FILES = ('_aiidasubmit.sh', '.aiida')


def _scrub_mapping(value, found: set[str]):
    """Return ``value`` with the values of :data:`_PRIVATE_KEYS` emptied (collecting the non-empty texts)."""
    if isinstance(value, dict):
        result = {}
        for key, item in value.items():
            if key in _PRIVATE_KEYS:
                if isinstance(item, str) and item.strip():
                    found.add(item)
                elif isinstance(item, dict):
                    found.update(str(text) for text in item.values() if str(text).strip())
                result[key] = _PRIVATE_KEYS[key]
            else:
                result[key] = _scrub_mapping(item, found)
        return result
    if isinstance(value, list):
        return [_scrub_mapping(item, found) for item in value]
    return value


def _texts(found: set[str]) -> list[str]:
    """Return the texts to look for: each private text and its non-trivial lines, longest first."""
    texts = set()
    for text in found:
        texts.add(text.strip())
        texts.update(line.strip() for line in text.splitlines() if len(line.strip()) >= 6)
    return sorted((text for text in texts if len(text) >= 6), key=len, reverse=True)


def _drop_private_files(metadata: dict, removed: set[str]) -> dict:
    """Return repository metadata without :data:`_PRIVATE_FILES`, collecting the object keys they referenced."""

    def keys(entry):
        if 'k' in entry:
            removed.add(entry['k'])
        for child in entry.get('o', {}).values():
            keys(child)

    objects = dict(metadata.get('o', {}))
    for name in _PRIVATE_FILES:
        if name in objects:
            keys(objects.pop(name))
    return {**metadata, 'o': objects} if objects or 'o' in metadata else metadata


def _rekey(metadata: dict, renamed: Mapping[str, str]) -> dict:
    """Return repository metadata with the object keys of ``renamed`` replaced."""
    result = dict(metadata)
    if 'k' in result and result['k'] in renamed:
        result['k'] = renamed[result['k']]
    if 'o' in result:
        result['o'] = {name: _rekey(entry, renamed) for name, entry in result['o'].items()}
    return result


def _replace_all(text: str, texts: Sequence[str]) -> str:
    for private in texts:
        text = text.replace(private, SCRUBBED)
        escaped = json.dumps(private)[1:-1]
        if escaped != private:
            text = text.replace(escaped, SCRUBBED)
    return text


def scrub_archive(path: str | os.PathLike, *, compression: int = DEFAULT_COMPRESSION) -> dict[str, int]:
    """Remove the machine's setup, local paths and user emails from the AiiDA archive at ``path``, in place.

    See the module documentation (*What is published*) for what is removed and what stays. The archive is rewritten
    next to itself and renamed over it: an interruption leaves the original.

    :return: counts: ``computers``, ``users``, ``nodes`` changed, ``files_removed``, ``files_rewritten``,
        ``texts`` (distinct private texts looked for).
    """
    path = pathlib.Path(path)
    counts = dict.fromkeys(('computers', 'users', 'nodes', 'files_removed', 'files_rewritten', 'texts'), 0)
    with tempfile.TemporaryDirectory(prefix='.mad-scrub-', dir=path.parent) as work, zipfile.ZipFile(path) as source:
        database = pathlib.Path(work) / 'db.sqlite3'
        with source.open('db.sqlite3') as handle, database.open('wb') as copy:
            shutil.copyfileobj(handle, copy)
        found: set[str] = set()
        removed: set[str] = set()
        connection = sqlite3.connect(database)
        try:
            cursor = connection.cursor()
            rows = cursor.execute('SELECT id, metadata, description FROM db_dbcomputer').fetchall()
            for pk, metadata, description in rows:
                if description and description.strip():
                    found.add(description)
                scrubbed = _scrub_mapping(json.loads(metadata or '{}'), found)
                cursor.execute(
                    'UPDATE db_dbcomputer SET metadata = ?, description = ? WHERE id = ?',
                    (json.dumps(scrubbed), '', pk),
                )
                counts['computers'] += 1
            for index, (pk, email) in enumerate(cursor.execute('SELECT id, email FROM db_dbuser').fetchall()):
                found.add(email)
                anonymous = ANONYMOUS_EMAIL if index == 0 else ANONYMOUS_EMAIL.replace('@', f'-{index}@')
                cursor.execute('UPDATE db_dbuser SET email = ? WHERE id = ?', (anonymous, pk))
                counts['users'] += 1
            rows = cursor.execute('SELECT id, node_type, attributes, repository_metadata FROM db_dbnode').fetchall()
            for pk, node_type, attributes, repository in rows:
                attributes = json.loads(attributes or '{}')
                repository = json.loads(repository or '{}')
                new_attributes = _scrub_mapping(attributes, found)
                if node_type.startswith('data.core.code.') and new_attributes.get('filepath_executable'):
                    new_attributes['filepath_executable'] = pathlib.PurePath(new_attributes['filepath_executable']).name
                new_repository = _drop_private_files(repository, removed)
                if new_attributes != attributes or new_repository != repository:
                    cursor.execute(
                        'UPDATE db_dbnode SET attributes = ?, repository_metadata = ? WHERE id = ?',
                        (json.dumps(new_attributes), json.dumps(new_repository), pk),
                    )
                    counts['nodes'] += 1
            texts = _texts(found)
            counts['texts'] = len(texts)
            # Whatever still holds one of the texts (logs, comments, labels, extras...): replaced in every text column.
            for (table,) in cursor.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
                columns = [row[1] for row in cursor.execute(f'PRAGMA table_info("{table}")').fetchall()]
                for column in columns:
                    values = cursor.execute(
                        f'SELECT rowid, "{column}" FROM "{table}" WHERE typeof("{column}") = \'text\''
                    ).fetchall()
                    for rowid, value in values:
                        replaced = _replace_all(value, texts)
                        if replaced != value:
                            cursor.execute(f'UPDATE "{table}" SET "{column}" = ? WHERE rowid = ?', (replaced, rowid))
            # Repository objects: drop the private files; rewrite (under their new hash) those holding a text.
            still_used: set[str] = set()
            for (repository,) in cursor.execute('SELECT repository_metadata FROM db_dbnode').fetchall():
                stack = [json.loads(repository or '{}')]
                while stack:
                    entry = stack.pop()
                    if 'k' in entry:
                        still_used.add(entry['k'])
                    stack.extend(entry.get('o', {}).values())
            encoded = [text.encode('utf-8') for text in texts]
            objects = [info for info in source.infolist() if info.filename.startswith('repo/') and not info.is_dir()]
            rewritten: dict[str, bytes] = {}
            renamed: dict[str, str] = {}
            for info in objects:
                key = info.filename.rsplit('/', 1)[-1]
                if key not in still_used:
                    continue
                content = source.read(info)
                if any(text in content for text in encoded):
                    for text in encoded:
                        content = content.replace(text, SCRUBBED.encode('utf-8'))
                    renamed[key] = hashlib.sha256(content).hexdigest()
                    rewritten[key] = content
            for pk, repository in cursor.execute('SELECT id, repository_metadata FROM db_dbnode').fetchall():
                metadata = json.loads(repository or '{}')
                rekeyed = _rekey(metadata, renamed)
                if rekeyed != metadata:
                    cursor.execute(
                        'UPDATE db_dbnode SET repository_metadata = ? WHERE id = ?', (json.dumps(rekeyed), pk)
                    )
            connection.commit()
            connection.execute('VACUUM')  # no free pages left holding the old texts
            connection.close()
            partial = path.with_name(f'.{path.name}.{secrets.token_hex(6)}.scrub')
            deflate = {'compression': zipfile.ZIP_DEFLATED, 'compresslevel': compression} if compression else {}
            try:
                with zipfile.ZipFile(partial, 'w', **deflate) as target:
                    # aiida reads the metadata and the database from the first entries of the central directory
                    target.writestr(source.getinfo('metadata.json'), source.read('metadata.json'))
                    target.write(database, 'db.sqlite3')
                    written = set()
                    for info in objects:
                        key = info.filename.rsplit('/', 1)[-1]
                        if key not in still_used:
                            counts['files_removed'] += key in removed
                            continue
                        if key in rewritten:
                            if renamed[key] not in written:
                                target.writestr(f'repo/{renamed[key]}', rewritten[key])
                                written.add(renamed[key])
                            counts['files_rewritten'] += 1
                        elif key not in written:
                            target.writestr(info, source.read(info))
                            written.add(key)
                os.replace(partial, path)
            finally:
                partial.unlink(missing_ok=True)
        finally:
            connection.close()
    return counts
