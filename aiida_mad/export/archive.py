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

**Compression.** ZIP deflate level :data:`DEFAULT_COMPRESSION`, aiida-core's default too, chosen after measuring it
against the other levels on the three test archives (Si through the fast protocol: 2.05 MB of SQLite database,
pseudopotentials, pw.x outputs and XML, arrays). Level 6 keeps 18.3 % of the bytes at 15 MB/s; level 9 keeps 18.2 %
at 5 MB/s (three times slower for 0.5 % smaller); level 1 keeps 20.2 % at 31 MB/s (10 % larger files). For archives
of many GB, level 9 would cost hours for nothing, and the Materials Cloud limit is on size, so 6 it is.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import pathlib
import re
import secrets
import shutil
import sqlite3
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any

from aiida import orm

__all__ = [
    'DEFAULT_COMPRESSION',
    'TRAVERSAL_RULES',
    'archive_filename',
    'archive_summary',
    'export_subset_archives',
    'scrub_archive',
]

#: The toggleable export traversal rules of aiida-core, each set explicitly (see the module docstring for why).
TRAVERSAL_RULES: dict[str, bool] = {
    'input_calc_forward': False,
    'input_work_forward': False,
    'call_calc_backward': False,
    'call_work_backward': False,
    'return_backward': False,
}

#: ZIP deflate level of the archives (0-9).
DEFAULT_COMPRESSION = 6

#: Subset names become file names: letters, digits, ``.``, ``_`` and ``-``, starting with a letter or digit.
_SUBSET_PATTERN = re.compile(r'[A-Za-z0-9][A-Za-z0-9._-]*')


def archive_filename(subset: str, prefix: str = 'mad') -> str:
    """Return ``<prefix>-<subset>.aiida``."""
    return f'{prefix}-{subset}.aiida'


def _check_nodes(subset: str, nodes: Sequence[Any], *, workflows: bool, what: str) -> list[orm.Node]:
    """Return ``nodes`` as a list, or raise ``ValueError`` naming the subset and what is wrong with them.

    Whether the processes are sealed is read with one query per 5 000 nodes (reading ``node.is_sealed`` reloads an
    expired node: one query each, minutes for 10⁵ work chains).
    """
    if isinstance(nodes, orm.Node | str | bytes) or not isinstance(nodes, Sequence):
        raise ValueError(f'subset `{subset}`: {what} must be a sequence of nodes, got {type(nodes).__name__}')
    nodes = list(nodes)
    expected = orm.WorkflowNode if workflows else orm.Node
    for node in nodes:
        if not isinstance(node, expected):
            raise ValueError(f'subset `{subset}`: {what} must be {expected.__name__} instances, got {node!r}')
        if not node.is_stored:
            raise ValueError(f'subset `{subset}`: {what} include an unstored node {node!r}: store it first')
    processes = [node.pk for node in nodes if isinstance(node, orm.ProcessNode)]
    for first in range(0, len(processes), 5_000):
        query = orm.QueryBuilder().append(
            orm.ProcessNode,
            filters={'id': {'in': processes[first : first + 5_000]}},
            project=['id', 'attributes.sealed', 'attributes.process_label', 'attributes.process_state'],
        )
        for pk, sealed, label, state in query.iterall():
            if not sealed:
                raise ValueError(
                    f'subset `{subset}`: {label}<{pk}> is not sealed (state {state}): wait until it has terminated'
                )
    return nodes


def export_subset_archives(
    workchains_by_subset: Mapping[str, Sequence[orm.WorkflowNode]],
    directory: str | os.PathLike,
    *,
    prefix: str = 'mad',
    force: bool = False,
    extra_by_subset: Mapping[str, Sequence[orm.Node]] | None = None,
    compression: int = DEFAULT_COMPRESSION,
    private_data: bool = False,
) -> dict[str, pathlib.Path]:
    """Write one AiiDA archive ``<prefix>-<subset>.aiida`` per subset, with the whole provenance of its work chains.

    Everything is checked before anything is written, and every archive is first written to a hidden temporary
    file in ``directory`` and renamed into place only once all of them are complete: a failure leaves the
    directory as it was (with ``force``, existing archives are replaced only at that last step).

    :param workchains_by_subset: the work chains of each subset (``MadDftWorkChain``; under ``'isolated-atom'``,
        ``IsolatedAtomsWorkChain`` nodes, written to ``<prefix>-isolated-atom.aiida``). They must be stored and
        terminated.
    :param directory: where the archives go; created if missing.
    :param prefix: the start of every file name.
    :param force: replace existing archives; without it an existing target file is refused.
    :param extra_by_subset: further stored nodes to put in a subset's archive (with their provenance, by the same
        rules), e.g. a structure that was refused or a baseline table.
    :param compression: ZIP deflate level, 0 to 9.
    :param private_data: keep the computers' setup texts, local paths, submit scripts and user emails; by default
        they are scrubbed (:func:`scrub_archive`), as archives are meant for publication.
    :return: ``{subset: path of its archive}``.
    :raises ValueError: for no subsets, a subset with no work chains, a subset name that cannot be a file name,
        unstored or unsealed nodes, a key of ``extra_by_subset`` that is no subset, or an existing target file
        without ``force`` (each message names the subset or the file).
    """
    from aiida.tools.archive import create_archive

    directory = pathlib.Path(directory)
    extra_by_subset = dict(extra_by_subset or {})
    if not workchains_by_subset:
        raise ValueError('no subsets given: nothing to export')
    if not isinstance(compression, int) or isinstance(compression, bool) or not 0 <= compression <= 9:
        raise ValueError(f'compression must be an integer from 0 to 9, got {compression!r}')
    unknown = sorted(set(extra_by_subset) - set(workchains_by_subset))
    if unknown:
        raise ValueError(f'extra nodes given for subsets without work chains: {", ".join(unknown)}')
    if directory.exists() and not directory.is_dir():
        raise ValueError(f'{directory} exists and is not a directory')

    plans: dict[str, tuple[pathlib.Path, list[orm.Node]]] = {}
    for subset, workchains in workchains_by_subset.items():
        if not isinstance(subset, str) or not _SUBSET_PATTERN.fullmatch(subset):
            raise ValueError(
                f'subset name {subset!r} cannot be part of a file name: use letters, digits, `.`, `_`, `-`'
            )
        nodes = _check_nodes(subset, workchains, workflows=True, what='work chains')
        if not nodes:
            raise ValueError(f'subset `{subset}`: no work chains given, refusing to write an empty archive')
        nodes += _check_nodes(subset, extra_by_subset.get(subset, ()), workflows=False, what='extra nodes')
        target = directory / archive_filename(subset, prefix)
        if target.exists() and not force:
            raise ValueError(f'{target} exists already: pass force=True to replace it')
        if target.exists() and not target.is_file():
            raise ValueError(f'{target} exists and is not a file')
        plans[subset] = (target, nodes)

    directory.mkdir(parents=True, exist_ok=True)
    temporary: dict[str, pathlib.Path] = {}
    try:
        for subset, (target, nodes) in plans.items():
            # Not `mkstemp`: its file would be private (0600); `create_archive` creates this one with the umask.
            temporary[subset] = directory / f'.{target.name}.{secrets.token_hex(6)}.partial'
            try:
                create_archive(
                    nodes,
                    filename=temporary[subset],
                    overwrite=False,
                    compression=compression,
                    **TRAVERSAL_RULES,
                )
                if not private_data:
                    scrub_archive(temporary[subset], compression=compression)
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
