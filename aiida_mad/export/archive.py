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

**Compression.** ZIP deflate level :data:`DEFAULT_COMPRESSION`, aiida-core's default too, chosen after measuring it
against the other levels on the three test archives (Si through the fast protocol: 2.05 MB of SQLite database,
pseudopotentials, pw.x outputs and XML, arrays). Level 6 keeps 18.3 % of the bytes at 15 MB/s; level 9 keeps 18.2 %
at 5 MB/s (three times slower for 0.5 % smaller); level 1 keeps 20.2 % at 31 MB/s (10 % larger files). For archives
of many GB, level 9 would cost hours for nothing, and the Materials Cloud limit is on size, so 6 it is.
"""

from __future__ import annotations

import collections
import os
import pathlib
import re
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from aiida import orm

__all__ = ['DEFAULT_COMPRESSION', 'TRAVERSAL_RULES', 'archive_filename', 'archive_summary', 'export_subset_archives']

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
    """Return ``nodes`` as a list, or raise ``ValueError`` naming the subset and what is wrong with them."""
    if isinstance(nodes, orm.Node | str | bytes) or not isinstance(nodes, Sequence):
        raise ValueError(f'subset `{subset}`: {what} must be a sequence of nodes, got {type(nodes).__name__}')
    nodes = list(nodes)
    expected = orm.WorkflowNode if workflows else orm.Node
    for node in nodes:
        if not isinstance(node, expected):
            raise ValueError(f'subset `{subset}`: {what} must be {expected.__name__} instances, got {node!r}')
        if not node.is_stored:
            raise ValueError(f'subset `{subset}`: {what} include an unstored node {node!r}: store it first')
        if isinstance(node, orm.ProcessNode) and not node.is_sealed:
            raise ValueError(
                f'subset `{subset}`: {node.process_label}<{node.pk}> is not sealed (state {node.process_state}): '
                'wait until it has terminated'
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
