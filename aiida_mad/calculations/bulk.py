"""aiida-core internals for calcfunctions with tens of thousands of inputs and outputs: the one place that uses them.

Two jobs, both measured in ``bench/`` and both relying on private parts of aiida-core 2.9. When aiida-core changes,
``tests/calculations/test_bulk.py`` fails and names what to re-check; nothing else in aiida-mad touches these parts.

**Bulk links** (:func:`bulk_link_process_class`, :func:`run_bulk_linked`). aiida-core writes every link of a process
with a uniqueness check and a graph-cycle check, each a database query, which costs several times more than storing
the node itself: on SQLite one plain calcfunction call per structure stores about 12 times fewer structures per second
than ``StructureData.store()``, and batches through the plain calcfunction reach only a fifth to a third of it. The
bulk-linked process class of a calcfunction records identical provenance (same process type, label, function source,
inputs, outputs and link labels: the node loads back as the plain calcfunction) but puts the links in the nodes' link
caches, written when the nodes are stored. The checks cannot fail here by construction: the process node is new,
every output is a new unstored node, and the link labels are the distinct keys of the input and output namespaces.
It overrides these private parts of ``aiida.engine.processes.process.Process``:

* ``_setup_db_record`` (to swap the node's caching class ``Node._CLS_NODE_CACHING`` for
  :class:`StoredInputHashCaching`, which hashes the inputs by their stored ``_aiida_hash`` extras in one query);
* ``_setup_inputs`` (input links into ``node.base.links.incoming_cache``);
* ``update_outputs`` (public, but its link writing is copied: outputs linked through their caches, stored in one
  transaction);
* ``_build_process_label`` and ``build_process_type`` (the plain calcfunction's label and type);

* ``run`` (public; it calls ``FunctionProcess.run`` after writing the links of the inputs given by pk, below);
* ``_get_mapper_from_entity`` of the storage backend (the link table of SQLite or PostgreSQL, for the bulk insert);

and uses ``_flat_inputs``, ``_flat_outputs``, ``ProcessNodeCaching.get_objects_to_hash``, ``_HASH_EXTRA_KEY`` and
``_hash_ignored_inputs``.

**Inputs by pk** (``run_bulk_linked(..., linked={namespace: {label: pk}})``). For 10⁵ inputs even the link cache
is slow: every input must be loaded as an ORM node (a query and an entry-point lookup each), checked as stored
and linked by one ``INSERT`` each, and after each commit the ORM reloads every node it touches; at 10⁵ frames of a
dataset that was over 80 % of the build. Inputs given by pk are never loaded: once the process node is stored, their
``INPUT_CALC`` links (label ``<namespace>__<label>``, as aiida-core flattens a namespace) are written with one
multi-row ``INSERT`` per :data:`~aiida_mad.constants.QUERY_CHUNK_SIZE` links (after checking that every pk is a
stored ``Data`` node), the node's hash is recomputed with them, and the function reads them with
:func:`linked_inputs` (``{namespace: {label: pk}}``), e.g. through :func:`read_arrays`, which take pks as well as
nodes. The links and labels are those the same inputs given as nodes would get.

**Bulk reads** (:func:`read_attributes`, :func:`read_arrays`, :func:`read_structures`). ``node.get_array(...)``,
``node.get_ase()`` and ``node.value`` each cost one or more database round trips and one repository open per node
(about 20 ms for an ``ArrayData`` on SQLite), and after every commit the ORM reloads each node it touches. For a
dataset of 10⁵ frames that is hours. These helpers fetch the attributes of many nodes with one query per
:data:`~aiida_mad.constants.QUERY_CHUNK_SIZE` nodes and stream the array files of many nodes from the object store in
one pass (``iter_object_streams``), which reads packed objects sequentially. They read the node's
``repository_metadata`` layout (``{'o': {name: {'k': key}}}``) and the ``StructureData`` attribute layout directly.
Measured in ``bench/bench_dataset.py``.

**Raw rows** (:func:`query_rows`): the rows of a ``QueryBuilder`` without aiida-core's per-value conversion, which
costs more than the query for 10⁵ rows of JSON projections; it runs the statement that the private
``QueryBuilder._impl.get_query`` compiles.
"""

from __future__ import annotations

import contextvars
import io
import itertools
import json
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np
from aiida import orm
from aiida.common.links import LinkType
from aiida.engine.processes.process import Process
from aiida.manage import get_manager
from aiida.orm.entities import EntityTypes
from aiida.orm.nodes.process.process import ProcessNodeCaching
from aiida.orm.utils.links import LinkTriple
from ase import Atoms

from aiida_mad.constants import QUERY_CHUNK_SIZE

__all__ = (
    'StoredInputHashCaching',
    'add_nodes_by_pk',
    'bulk_link_process_class',
    'linked_inputs',
    'query_rows',
    'read_arrays',
    'read_attributes',
    'read_structures',
    'run_bulk_linked',
    'store_new_nodes',
    'stored_pks',
)


def _chunks(values: Sequence) -> list[Sequence]:
    return [values[first : first + QUERY_CHUNK_SIZE] for first in range(0, len(values), QUERY_CHUNK_SIZE)]


#: The inputs given by pk to the bulk-linked process running now: ``{namespace: {label: pk}}`` (see module docs).
_LINKED: contextvars.ContextVar[dict[str, dict[str, int]]] = contextvars.ContextVar('mad_bulk_linked')


def insert_rows(session, table, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert ``rows`` (dictionaries of column values, all with the same keys) into ``table`` in ``session``.

    On PostgreSQL through ``COPY ... FROM STDIN`` on the session's own connection (its transaction): the server
    parses no statement per row (about 5 times less server time than multi-row ``INSERT``s for the 10⁵ links of a
    dataset); on SQLite with SQLAlchemy's ``executemany``, one per :data:`~aiida_mad.constants.QUERY_CHUNK_SIZE`.
    """
    from sqlalchemy import insert

    if not rows:
        return
    if session.get_bind().dialect.name == 'postgresql':
        names = list(rows[0])
        columns = ', '.join(f'"{name}"' for name in names)
        cursor = session.connection().connection.driver_connection.cursor()
        with cursor.copy(f'COPY {table.name} ({columns}) FROM STDIN') as copy:
            for row in rows:
                copy.write_row([row[name] for name in names])
        return
    for chunk in _chunks(rows):
        session.execute(insert(table), list(chunk))


def linked_inputs() -> dict[str, dict[str, int]]:
    """Return the inputs given by pk to the running bulk-linked process (``{namespace: {label: pk}}``), else ``{}``."""
    return _LINKED.get({})


def _pk(node) -> int:
    return node if isinstance(node, int) else node.pk


def _describe(node) -> str:
    return f'node<{node}>' if isinstance(node, int) else f'{node.__class__.__name__}<{node.pk}>'


def query_rows(query: orm.QueryBuilder, batch_size: int | None = None) -> Iterator[tuple]:
    """Yield the rows of ``query`` as tuples of its projections (the order of ``iterall``), as plain values.

    ``QueryBuilder.iterall`` passes every projected value through aiida's entity conversion, which rebuilds each
    JSON dictionary and list recursively and tries the conversion (raising and catching ``TypeError``) on every
    scalar: for 10⁵ rows that is most of the time of a bulk read. This executes the statement the query builder
    compiled and only turns UUIDs into strings, so the values are those ``iterall`` gives. Projections must be columns
    or attributes, not whole entities (``'*'``).

    The statement runs on the session's connection as a Core statement: the column types still convert the values
    (JSON decoded, datetimes parsed), but the ORM's row loading, which the session's ``execute`` adds to a statement
    over mapped tables, is skipped (3 times less CPU per row). The session is flushed first, as ``execute`` would.
    """
    from sqlalchemy import JSON, Text, cast

    storage = get_manager().get_profile_storage()
    statement = query._impl.get_query(query.as_dict()).query.statement  # aiida-core's compiled SQLAlchemy statement
    # JSON values come as their text and are decoded here: most are scalars (a state, a uuid, a number), which need
    # no call of `json.loads` (about 10 µs each, the most of a status of 10⁵ structures).
    columns = list(statement.selected_columns)
    decoded = [index for index, column in enumerate(columns) if isinstance(column.type, JSON)]
    if decoded:
        statement = statement.with_only_columns(
            *(cast(column, Text) if index in decoded else column for index, column in enumerate(columns))
        )
    if batch_size:
        statement = statement.execution_options(yield_per=batch_size)
    session = storage.get_session()
    # As `iterall`: inside a transaction, so that nothing commits (and invalidates the cursor) while rows are read.
    with nullcontext() if session.in_nested_transaction() else storage.transaction():
        session.flush()
        rows = iter(session.connection().execute(statement))
        first = next(rows, None)
        if first is None:
            return
        uuids = [index for index, value in enumerate(first) if isinstance(value, uuid.UUID)]  # UUID columns
        for row in itertools.chain((first,), rows):
            if uuids or decoded:
                row = list(row)
                for index in uuids:
                    row[index] = str(row[index])
                for index in decoded:
                    row[index] = _json_value(row[index])
            yield tuple(row)


_JSON_CONSTANTS = {'true': True, 'false': False, 'null': None}


def _json_value(text: str | None) -> Any:
    """Return the value of the JSON ``text`` (``None`` for SQL ``NULL``), as ``json.loads``: scalars without it."""
    if text is None:
        return None
    if text[:1] == '"' and '\\' not in text:
        return text[1:-1]
    if text in _JSON_CONSTANTS:
        return _JSON_CONSTANTS[text]
    if text.isdigit() and text.isascii():
        return int(text)
    return json.loads(text)


def read_attributes(nodes: Mapping[str, orm.Node | int], keys: Sequence[str]) -> dict[str, tuple]:
    """Return ``{label: (attribute values in the order of keys)}`` for stored nodes (or pks), a few queries in all."""
    by_pk: dict[int, list[str]] = {}
    for label, node in nodes.items():
        by_pk.setdefault(_pk(node), []).append(label)
    result = {}
    for chunk in _chunks(sorted(by_pk)):
        # The whole attribute dictionary, parsed by Python's json: projecting `attributes.<key>` lets SQLite convert
        # a float itself, which can change its last bit.
        query = orm.QueryBuilder().append(orm.Node, filters={'id': {'in': list(chunk)}}, project=['id', 'attributes'])
        for pk, attributes in query.iterall():
            values = tuple(attributes.get(key) for key in keys)
            for label in by_pk[pk]:
                result[label] = values
    missing = set(nodes) - set(result)
    if missing:
        label = sorted(missing)[0]
        raise KeyError(f'{len(missing)} nodes do not exist, e.g. {label}: {_describe(nodes[label])}')
    return result


def read_arrays(nodes: Mapping[str, orm.ArrayData | int], name: str) -> dict[str, np.ndarray]:
    """Return ``{label: array name}`` of stored ``ArrayData`` nodes or pks, streaming the ``.npy`` files in one go."""
    filename = f'{name}.npy'
    by_pk: dict[int, list[str]] = {}
    for label, node in nodes.items():
        by_pk.setdefault(_pk(node), []).append(label)
    labels_of_key: dict[str, list[str]] = {}
    for chunk in _chunks(sorted(by_pk)):
        query = orm.QueryBuilder().append(
            orm.Node, filters={'id': {'in': list(chunk)}}, project=['id', 'repository_metadata']
        )
        for pk, metadata in query.iterall():
            entry = (metadata or {}).get('o', {}).get(filename)
            if entry is None or 'k' not in entry:
                raise KeyError(f'{_describe(nodes[by_pk[pk][0]])} has no array {name!r}')
            labels_of_key.setdefault(entry['k'], []).extend(by_pk[pk])
    repository = get_manager().get_profile_storage().get_repository()
    result: dict[str, np.ndarray] = {}
    for key, stream in repository.iter_object_streams(list(labels_of_key)):
        array = np.load(io.BytesIO(stream.read()), allow_pickle=False)
        for label in labels_of_key[key]:
            result[label] = array
    missing = set(nodes) - set(result)
    if missing:
        raise KeyError(f'the repository lacks the {name!r} arrays of {len(missing)} nodes, e.g. {sorted(missing)[0]}')
    return result


def read_structures(nodes: Mapping[str, orm.StructureData | int]) -> dict[str, Atoms]:
    """Return ``{label: ase.Atoms}`` of stored ``StructureData`` nodes (or pks) from their attributes (a few queries).

    Only ordered structures (one symbol per kind, no vacancy) can be frames; others raise ``ValueError``.
    """
    attributes = read_attributes(nodes, ('cell', 'pbc1', 'pbc2', 'pbc3', 'kinds', 'sites'))
    result = {}
    for label, (cell, pbc1, pbc2, pbc3, kinds, sites) in attributes.items():
        symbols = {}
        for kind in kinds:
            if len(kind['symbols']) != 1 or abs(sum(kind['weights']) - 1.0) > 1e-12:
                pk = _pk(nodes[label])
                raise ValueError(f'StructureData<{pk}>: kind {kind["name"]} is an alloy or has vacancies')
            symbols[kind['name']] = kind['symbols'][0]
        result[label] = Atoms(
            [symbols[site['kind_name']] for site in sites],
            positions=[site['position'] for site in sites],
            cell=cell,
            pbc=(pbc1, pbc2, pbc3),
        )
    return result


# --------------------------------------------------------------------------------------------------------------------
# Bulk links


class _StoredHashes(dict):
    """The inputs of a process node, ``{link label: stored hash}``: hashed by ``make_hash`` as a plain ``dict``."""


def _hash_stored_hashes(mapping: _StoredHashes, **kwargs) -> list[bytes]:
    """Return aiida-core's digests of ``mapping`` as a ``dict``, without a dispatch per key and value.

    As aiida-core's ``dict`` rule: the ``dict(`` digest, then each key's and value's ``str`` digest, by key digest,
    then the closing digest (any value that is not a string takes the generic rule).
    """
    from aiida.common import hashing

    if not all(type(key) is str and type(value) is str for key, value in mapping.items()):
        return hashing._make_hash.dispatch(dict)(dict(mapping), **kwargs)
    digest = hashing._single_digest
    pairs = sorted(
        (digest('str', key.encode('utf-8')), digest('str', value.encode('utf-8'))) for key, value in mapping.items()
    )
    return [digest('dict('), *itertools.chain.from_iterable(pairs), hashing._END_DIGEST]


def _register_stored_hashes() -> None:
    from aiida.common import hashing

    hashing._make_hash.register(_StoredHashes)(_hash_stored_hashes)


_register_stored_hashes()


class StoredInputHashCaching(ProcessNodeCaching):
    """Caching of a process node that hashes its inputs by the hashes stored with them (see ``_aiida_hash``)."""

    def get_objects_to_hash(self) -> list[Any]:
        """Return what enters the hash: as aiida-core's, with each input's stored hash (computed only if missing)."""
        objects = super(ProcessNodeCaching, self).get_objects_to_hash()
        # One query for every input's label and stored hash; no input node is loaded unless its hash is missing.
        query = orm.QueryBuilder()
        query.append(orm.ProcessNode, filters={'id': self._node.pk}, tag='process')
        query.append(
            orm.Node,
            with_outgoing='process',
            edge_filters={'type': {'in': [LinkType.INPUT_CALC.value, LinkType.INPUT_WORK.value]}},
            edge_project='label',
            project=['id', f'extras.{self._HASH_EXTRA_KEY}'],
            tag='input',
            edge_tag='link',
        )
        inputs = _StoredHashes()  # thousands of inputs for a dataset: hashed without aiida-core's per-item dispatch
        for pk, stored, label in query_rows(query):  # the vertex's projections, then the edge's
            if label not in self._hash_ignored_inputs:
                inputs[label] = stored or orm.load_node(pk).base.caching.compute_hash()
        objects.update({'inputs': inputs})
        return objects


def bulk_link_process_class(function) -> type:
    """Return the process class of calcfunction ``function`` with its links written without per-link queries.

    The node it creates is indistinguishable from one of the plain calcfunction: same process type (it loads back as
    ``function``, which must have an entry point), label, function source, inputs, outputs and link labels. The class
    keeps ``function`` as ``bulk_linked_function``. Only the link writing changes:

    * ``_setup_inputs`` puts the input links in the node's link cache (``incoming_cache``), stored with the node,
      instead of validating each with database queries; the process node is new, so no link can clash or close a
      cycle.
    * ``update_outputs`` does the same for the outputs, which must be new nodes, and stores them all in one
      transaction, so a failure leaves none of them behind.
    """
    base = function.process_class

    class BulkLinkProcess(base):
        def _setup_db_record(self) -> None:
            # The node's hash takes the stored hash of each input (one query) instead of recomputing every input's
            # hash from its content (about 10 ms per array node): the same value, as inputs are stored and immutable.
            self.node._CLS_NODE_CACHING = StoredInputHashCaching
            self.node.base.__dict__.pop('caching', None)
            super()._setup_db_record()

        @classmethod
        def build_process_type(cls) -> str:
            """Return the process type of the plain calcfunction, so that the node loads back as that function."""
            return base.build_process_type()

        def _build_process_label(self) -> str:
            return function.__name__

        def _setup_inputs(self) -> None:
            # Appending to the cache directly also skips its duplicate check, which compares every new link with
            # every cached one (quadratic in the batch size); the labels are the distinct keys of the inputs.
            self.node.base.links.incoming_cache.extend(
                LinkTriple(node, LinkType.INPUT_CALC, name)
                for name, node in self._flat_inputs().items()
                if node is not None
            )

        def update_outputs(self) -> None:
            """Link and store the new outputs in one transaction, without per-link validation queries."""
            if self.metadata.store_provenance is False:
                return
            linked = set(self.node.base.links.get_outgoing(link_type=LinkType.CREATE).all_link_labels())
            new_outputs = [(label, node) for label, node in self._flat_outputs().items() if label not in linked]
            stored = [label for label, node in new_outputs if node.is_stored]
            if stored:
                raise ValueError(
                    f'outputs {", ".join(stored)} are stored already: a calcfunction must create its outputs'
                )
            for label, node in new_outputs:
                node.base.links.incoming_cache.append(LinkTriple(self.node, LinkType.CREATE, label))
            store_new_nodes([node for _, node in new_outputs])

        async def run(self):
            """Link the inputs given by pk (see :func:`run_bulk_linked`), then run the function with them visible."""
            linked = getattr(self, '_mad_linked', None) or {}
            if linked and self.node.exit_status is None and self.metadata.store_provenance:
                _link_by_pk(self.node, linked)
            token = _LINKED.set(linked)
            try:
                return await super().run()
            finally:
                _LINKED.reset(token)

    BulkLinkProcess.__name__ = BulkLinkProcess.__qualname__ = f'BulkLink{base.__name__}'
    #: The calcfunction whose process this is: its entry point is the process type of the nodes.
    BulkLinkProcess.bulk_linked_function = function
    return BulkLinkProcess


def store_new_nodes(nodes: Sequence[orm.Node]) -> None:
    """Store new ``nodes`` with the links in their ``incoming_cache``, in one transaction and a few statements.

    What ``Node.store`` does for each node, in bulk: validate it, clean its attributes and extras, put its
    repository files in the object store, and store it with its stored hash (the ``_aiida_hash`` extra, computed from
    the same content as ``NodeCaching.rehash`` after storing) and its incoming links. The node rows go in with one
    ORM flush (SQLAlchemy batches the ``INSERT``; the objects stay attached and get their pks), the links with one
    multi-row ``INSERT`` per :data:`~aiida_mad.constants.QUERY_CHUNK_SIZE`, and the commit does not expire the nodes,
    so reading their pks afterwards costs no query. Caching (``_get_same_node``) is not used: the nodes are the new
    outputs of a process, which aiida-core never takes from the cache either.
    """
    from aiida.storage.psql_dos.orm.utils import disable_expire_on_commit

    if not nodes:
        return
    for node in nodes:
        if node.is_stored:
            raise ValueError(f'{_describe(node)} is stored already')
        node._validate_storability()
        node._validate()
        node._verify_are_parents_stored()
        node.base.repository._store()
        node._backend_entity.clean_values()
        # `rehash` after `store` computes the same hash from the same cleaned content (`_compute_hash` needs no pk).
        node.base.extras.set(ProcessNodeCaching._HASH_EXTRA_KEY, node.base.caching._compute_hash())
    storage = nodes[0].backend
    session = storage.get_session()
    table = storage._get_mapper_from_entity(EntityTypes.LINK, False)[0].local_table  # SQLite or PostgreSQL model
    with disable_expire_on_commit(session), storage.transaction():
        session.add_all([node._backend_entity.bare_model for node in nodes])
        session.flush()
        rows = [
            {'input_id': link.node.pk, 'output_id': node.pk, 'label': link.link_label, 'type': link.link_type.value}
            for node in nodes
            for link in node.base.links.incoming_cache
        ]
        insert_rows(session, table, rows)
    for node in nodes:
        node.base.links.incoming_cache = []
    if storage.autogroup.is_to_be_grouped(nodes[0]):
        storage.autogroup.get_or_create_group().add_nodes(
            [node for node in nodes if storage.autogroup.is_to_be_grouped(node)]
        )


def stored_pks(nodes: Sequence[orm.Node]) -> list[int]:
    """Return the pks of stored ``nodes`` without a query, even after a commit has expired them in the session.

    Reading ``node.pk`` of a node expired by a commit (aiida-core's session expires every object on commit) reloads
    the whole row; the pk is also the node's SQLAlchemy identity, which a commit keeps.
    """
    from sqlalchemy import inspect

    pks = []
    for node in nodes:
        identity = inspect(node.backend_entity.bare_model).identity
        if identity is None:
            raise ValueError(f'{_describe(node)} is not stored')
        pks.append(identity[0])
    return pks


def add_nodes_by_pk(group: orm.Group, pks: Sequence[int]) -> None:
    """Add the stored nodes ``pks``, none of them in ``group`` yet (e.g. new nodes), with one ``INSERT`` per chunk.

    ``Group.add_nodes`` needs the nodes as ORM objects, checks each one as stored (a query per node expired by a
    commit) and guards against duplicates; new nodes need neither.
    """
    storage = group.backend
    table = storage._get_mapper_from_entity(EntityTypes.GROUP_NODE, False)[0].local_table
    rows = [{'dbnode_id': int(pk), 'dbgroup_id': group.pk} for pk in pks]
    with storage.transaction() as session:
        insert_rows(session, table, rows)


def _link_by_pk(node: orm.ProcessNode, linked: Mapping[str, Mapping[str, int]]) -> None:
    """Write the ``INPUT_CALC`` links of ``linked`` (``{namespace: {label: pk}}``) to the stored ``node``, in bulk."""
    rows = [
        {'input_id': int(pk), 'output_id': node.pk, 'label': f'{namespace}__{label}', 'type': LinkType.INPUT_CALC.value}
        for namespace, labels in linked.items()
        for label, pk in labels.items()
    ]
    pks = sorted({row['input_id'] for row in rows})
    found = set()
    for chunk in _chunks(pks):
        query = orm.QueryBuilder().append(orm.Data, filters={'id': {'in': list(chunk)}}, project='id')
        found.update(pk for (pk,) in query_rows(query))
    missing = sorted(set(pks) - found)
    if missing:
        raise ValueError(f'{len(missing)} inputs given by pk are no stored Data node, e.g. pk {missing[0]}')
    storage = node.backend
    table = storage._get_mapper_from_entity(EntityTypes.LINK, False)[0].local_table  # SQLite or PostgreSQL model
    with storage.transaction() as session:
        insert_rows(session, table, rows)
    node.base.caching.rehash()  # the hash covers every input, those linked here included


def run_bulk_linked(
    process_class: type, *, linked: Mapping[str, Mapping[str, int]] | None = None, **inputs
) -> tuple[dict[str, Any], orm.CalcFunctionNode]:
    """Run a :func:`bulk_link_process_class` process with ``inputs``; return its outputs and node.

    :param linked: further inputs by pk, ``{namespace: {label: pk}}`` of stored ``Data`` nodes: linked in bulk
        with the labels they would have as nodes, never loaded; the function reads them with :func:`linked_inputs`.

    Called from a running process (a work chain step), it runs in that process's runner and gets a ``CALL`` link,
    as a calcfunction called there would.
    """
    clash = sorted(set(linked or {}) & set(inputs))
    if clash:
        raise ValueError(f'namespaces given both as nodes and by pk: {", ".join(clash)}')
    current = Process.current()
    runner = current.runner if isinstance(current, Process) else get_manager().create_runner(communicator=None)
    process = process_class(inputs=process_class.create_inputs(**inputs), runner=runner)
    process._mad_linked = {namespace: dict(labels) for namespace, labels in (linked or {}).items() if labels}
    outputs = process.execute()
    return outputs, process.node
