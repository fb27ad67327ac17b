"""Storage per labelled structure: the database and repository bytes of real ``fast`` ``MadDftWorkChain`` runs.

Two real pw.x runs (bulk Si at two lattice constants, protocol ``fast``, offline family, in-process runner) in a
throw-away SQLite profile. Every node a run stores is counted: the work chain, ``MadPwBaseWorkChain``,
``PwCalculation``, the calcfunctions, their inputs made for this run (parameters, k-points, the context) and every
output (retrieved and remote folders, the parser's outputs, energy, forces, stress, bands, the DOS, ``properties``),
with the links into each node and the log messages (reports) of each process. Nodes and repository objects that
both runs use (code, pseudopotentials, the level-of-theory node of a fingerprint, identical files such as the
4 606-point DOS energy grid: the object store is content-addressed and keeps one copy) are counted once, as shared.

Database bytes are the payload of the rows (SQLite's ``length`` of every text and JSON column, 8 bytes per integer
and timestamp column) of ``db_dbnode``, ``db_dblink`` and ``db_dblog``, without the indexes and the page overhead;
the growth of the SQLite file over the runs is printed next to them. Repository bytes are the sizes of the objects
the nodes reference, each counted once.

``before`` is the layout this project stored until the storage pass of issue 16: the same run with the level of
theory (the md5 of every pseudopotential of the family) stored twice per structure, in the ``context`` input of
``extract_dft_results`` and in its ``properties`` output; it is rebuilt from this run's own values (the JSON bytes
of that table), not re-run. Now it is one ``Dict`` per fingerprint, an input of every ``extract_dft_results``, and
``properties`` keep its fingerprint only (read it back with ``workflows.dft.result_level_of_theory``).

``python bench/bench_storage.py`` prints the table by node type; ``make bench`` prints the two totals.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import pathlib
import sys
import zlib

HERE = pathlib.Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from common import Row, temporary_profile  # noqa: E402

#: The two structures labelled: bulk Si at these lattice constants (Å).
LATTICE_CONSTANTS = (5.43, 5.38)
OVERRIDES = {'pseudo_family': 'offline'}
#: Integer and timestamp columns of ``db_dbnode`` (id, ctime, mtime, dbcomputer_id, user_id), ``db_dblink`` (id,
#: input_id, output_id) and ``db_dblog`` (id, time, dbnode_id), 8 bytes each.
NODE_FIXED, LINK_FIXED, LOG_FIXED = 40, 24, 24


@dataclasses.dataclass
class Usage:
    """Bytes of one kind of node, summed over the runs measured."""

    nodes: int = 0
    database: int = 0
    repository: int = 0
    packed: int = 0  # the repository objects compressed as `verdi storage maintain --full --compress` packs them

    def add(self, other: Usage) -> None:
        self.nodes += other.nodes
        self.database += other.database
        self.repository += other.repository
        self.packed += other.packed


def _label(node) -> str:
    from aiida import orm

    if isinstance(node, orm.ProcessNode):
        return node.process_label or type(node).__name__
    return type(node).__name__


def run_nodes(workchain) -> dict[int, str]:
    """Return ``{pk: kind}`` of every node a ``MadDftWorkChain`` run involves (processes, inputs, outputs).

    A data node's kind is its class, the process that made it and the link label (``FolderData
    PwCalculation.retrieved``); a data node without a creator is named by the first process that takes it
    (``Dict -> extract_dft_results.context``).
    """
    from aiida.common.links import LinkType

    processes, queue = [], [workchain]
    while queue:
        process = queue.pop()
        processes.append(process)
        queue.extend(process.base.links.get_outgoing(link_type=(LinkType.CALL_CALC, LinkType.CALL_WORK)).all_nodes())
    kinds = {process.pk: _label(process) for process in processes}
    for process in processes:
        for link in process.base.links.get_outgoing(link_type=LinkType.CREATE).all():
            kinds[link.node.pk] = f'{_label(link.node)} {_label(process)}.{link.link_label}'
    for process in processes:
        inputs = process.base.links.get_incoming(link_type=(LinkType.INPUT_CALC, LinkType.INPUT_WORK)).all()
        for link in inputs:
            if link.node.pk in kinds:
                continue
            if link.node.base.links.get_incoming(link_type=LinkType.CREATE).all():
                continue  # made by a process of another run (e.g. the structure's generation)
            kinds[link.node.pk] = f'{_label(link.node)} -> {_label(process)}.{link.link_label}'
    kinds[workchain.inputs.structure.pk] = 'StructureData (the structure labelled)'
    return kinds


def _scalar(session, sql: str, **parameters) -> list:
    from sqlalchemy import text

    return session.execute(text(sql), parameters).all()


def database_bytes(pks: list[int]) -> dict[int, int]:
    """Return the payload bytes of each node's row, the links into it and the log messages about it (SQLite)."""
    from aiida import orm

    session = orm.Node.collection.backend.get_session()
    columns = ('uuid', 'node_type', 'process_type', 'label', 'description', 'attributes', 'extras')
    node_sql = ' + '.join(f'coalesce(length(CAST({column} AS BLOB)), 0)' for column in columns)
    node_sql += ' + coalesce(length(CAST(repository_metadata AS BLOB)), 0)'
    sizes = collections.Counter()
    for first in range(0, len(pks), 500):
        chunk = pks[first : first + 500]
        marks = ', '.join(str(int(pk)) for pk in chunk)
        for pk, size in _scalar(session, f'SELECT id, {node_sql} FROM db_dbnode WHERE id IN ({marks})'):
            sizes[pk] += size + NODE_FIXED
        link_sql = 'SELECT output_id, length(CAST(label AS BLOB)) + length(CAST(type AS BLOB)) FROM db_dblink'
        for pk, size in _scalar(session, f'{link_sql} WHERE output_id IN ({marks})'):
            sizes[pk] += size + LINK_FIXED
        log_columns = ('uuid', 'loggername', 'levelname', 'message', 'metadata')
        log_sql = ' + '.join(f'coalesce(length(CAST({column} AS BLOB)), 0)' for column in log_columns)
        for pk, size in _scalar(session, f'SELECT dbnode_id, {log_sql} FROM db_dblog WHERE dbnode_id IN ({marks})'):
            sizes[pk] += size + LOG_FIXED
    return dict(sizes)


def repository_objects(node) -> dict[str, str]:
    """Return ``{key: path}`` of the objects in a node's repository."""
    found = {}

    def walk(entries: dict, prefix: str) -> None:
        for name, entry in entries.items():
            if 'k' in entry:
                found[entry['k']] = f'{prefix}{name}'
            walk(entry.get('o', {}), f'{prefix}{name}/')

    walk(node.base.repository.metadata.get('o', {}), '')
    return found


def object_size(key: str) -> tuple[int, int]:
    """Return the size of a repository object and its size compressed as the object store packs it (zlib level 1)."""
    from aiida import orm

    repository = orm.Node.collection.backend.get_repository()
    with repository.open(key) as handle:
        content = handle.read()
    return len(content), len(zlib.compress(content, 1))


def remote_bytes(nodes) -> int:
    """Return the bytes of the remote folders of ``nodes`` (``RemoteData`` on a local computer)."""
    from aiida import orm

    total = 0
    for node in nodes:
        if isinstance(node, orm.RemoteData):
            folder = pathlib.Path(node.get_remote_path())
            total += sum(path.stat().st_size for path in folder.rglob('*') if path.is_file())
    return total


@dataclasses.dataclass
class Measurement:
    """Bytes per labelled structure by node kind, and what the runs share."""

    runs: int
    kinds: dict[str, Usage]
    shared: Usage
    files: dict[str, int]  # repository bytes per structure by file (kind: path)
    theory_bytes: int  # JSON bytes of the level of theory of these runs
    remote: float  # bytes of the remote folders per structure (pw.x's scratch, on the computer, not in the profile)

    @property
    def copy_bytes(self) -> int:
        """Return the database bytes of one copy of the level of theory as a key of a ``Dict``'s attributes."""
        return len(b', "level_of_theory": ') + self.theory_bytes

    @property
    def duplicate_bytes(self) -> int:
        """Return the database bytes per structure of the level of theory's copies in the old layout.

        The JSON of the ``level_of_theory`` key in the ``context`` attributes and in the ``properties`` attributes,
        less the input link that refers to the shared node instead.
        """
        return 2 * self.copy_bytes - (LINK_FIXED + len(b'level_of_theory') + len(b'input_calc'))

    @property
    def total(self) -> Usage:
        total = Usage()
        for usage in self.kinds.values():
            total.add(usage)
        return total

    def per_structure(self, usage: Usage) -> tuple[float, float, float, float]:
        return tuple(value / self.runs for value in (usage.nodes, usage.database, usage.repository, usage.packed))


def measure(workchains) -> Measurement:
    """Return the bytes of ``workchains`` (finished ``MadDftWorkChain`` nodes) by node kind; shared ones apart."""
    from aiida import orm

    from aiida_mad.workflows.dft import result_level_of_theory

    per_run = [run_nodes(workchain) for workchain in workchains]
    counts = collections.Counter(pk for kinds in per_run for pk in kinds)
    keys_by_run = []
    objects = {}
    for kinds in per_run:
        keys = {}
        for pk, kind in kinds.items():
            for key, path in repository_objects(orm.load_node(pk)).items():
                keys.setdefault(key, (pk, f'{kind}: {path}'))
        keys_by_run.append(keys)
        objects.update(keys)
    key_counts = collections.Counter(key for keys in keys_by_run for key in keys)
    sizes = {key: object_size(key) for key in objects}
    database = database_bytes(sorted(counts))

    kinds: dict[str, Usage] = collections.defaultdict(Usage)
    shared = Usage()
    files: dict[str, int] = collections.Counter()
    for index, run_kinds in enumerate(per_run):
        for pk, kind in run_kinds.items():
            if counts[pk] > 1:
                if index == 0:
                    shared.nodes += 1
                    shared.database += database.get(pk, 0)
                continue
            kinds[kind].nodes += 1
            kinds[kind].database += database.get(pk, 0)
        for key, (pk, path) in keys_by_run[index].items():
            size, packed = sizes[key]
            if key_counts[key] > 1 or counts[pk] > 1:
                if index == 0:
                    shared.repository += size
                    shared.packed += packed
                continue
            kinds[run_kinds[pk]].repository += size
            kinds[run_kinds[pk]].packed += packed
            files[path] += size / len(per_run)
    theory = result_level_of_theory(workchains[0])
    theory_bytes = len(json.dumps(theory).encode())
    remote = sum(remote_bytes(orm.load_node(pk) for pk in kinds) for kinds in per_run) / len(per_run)
    return Measurement(len(per_run), dict(kinds), shared, dict(files), theory_bytes, remote)


def label_structures(code, constants=LATTICE_CONSTANTS) -> list:
    """Run ``MadDftWorkChain`` (``fast``) on bulk Si at each lattice constant; return the finished work chains."""
    from aiida import orm
    from aiida.engine import run_get_node
    from ase.build import bulk

    from aiida_mad.workflows.dft import MadDftWorkChain

    nodes = []
    for constant in constants:
        structure = orm.StructureData(ase=bulk('Si', 'diamond', a=constant)).store()
        builder = MadDftWorkChain.get_builder_from_protocol(code, structure, 'fast', OVERRIDES, subset='mc3d')
        _, node = run_get_node(builder)
        if not node.is_finished_ok:
            raise RuntimeError(f'MadDftWorkChain<{node.pk}> failed: {node.exit_status} {node.exit_message}')
        nodes.append(node)
    return nodes


def _profile_bytes() -> tuple[int, int]:
    """Return the bytes of the SQLite file and of the repository folder of the loaded profile."""
    from aiida.manage import get_manager

    storage = pathlib.Path(get_manager().get_profile().storage_config['filepath'])
    database = sum(path.stat().st_size for path in storage.glob('database.sqlite*'))
    repository = sum(path.stat().st_size for path in (storage / 'container').rglob('*') if path.is_file())
    return database, repository


def print_table(measurement: Measurement, growth: tuple[float, float] | None = None) -> None:
    """Print the bytes per labelled structure by node kind, then the shared ones and the totals."""
    rows = sorted(measurement.kinds.items(), key=lambda item: -(item[1].database + item[1].repository))
    width = max(len(kind) for kind, _ in rows)
    print(f'{"node kind":<{width}}  {"nodes":>5}  {"database B":>10}  {"repository B":>12}  {"packed B":>8}')
    for kind, usage in rows:
        nodes, database, repository, packed = measurement.per_structure(usage)
        print(f'{kind:<{width}}  {nodes:>5.0f}  {database:>10.0f}  {repository:>12.0f}  {packed:>8.0f}')
    nodes, database, repository, packed = measurement.per_structure(measurement.total)
    print(f'{"total per structure":<{width}}  {nodes:>5.0f}  {database:>10.0f}  {repository:>12.0f}  {packed:>8.0f}')
    shared = measurement.shared
    print(
        f'{"shared by the runs (once)":<{width}}  {shared.nodes:>5}  {shared.database:>10}  {shared.repository:>12}  '
        f'{shared.packed:>8}'
    )
    print(f'level of theory: {measurement.theory_bytes} B of JSON (stored once per fingerprint, not per structure)')
    print(f'remote folders (pw.x scratch on the computer): {measurement.remote:.0f} B per structure')
    if growth:
        print(f'SQLite file growth {growth[0]:.0f} B and repository folder growth {growth[1]:.0f} B per structure')
    print('\nrepository bytes per structure by file:')
    for path, size in sorted(measurement.files.items(), key=lambda item: -item[1]):
        print(f'  {size:>8.0f}  {path}')


def run() -> list[Row]:
    with temporary_profile():
        from bench_dft import make_code

        from aiida_mad.pseudos import install_offline_family

        code = make_code()
        install_offline_family()
        before = _profile_bytes()
        workchains = label_structures(code)
        after = _profile_bytes()
        measurement = measure(workchains)
        growth = tuple((end - start) / len(workchains) for start, end in zip(before, after, strict=True))
        print_table(measurement, growth)
        nodes, database, repository, packed = measurement.per_structure(measurement.total)
        return [
            Row(
                'storage: database bytes per labelled structure (fast Si)',
                database,
                database + measurement.duplicate_bytes,
                'B',
                higher_is_better=False,
                note=f'{nodes:.0f} nodes per structure; baseline: the same runs with the level of theory stored '
                'twice per structure (in the context input and in properties, as before issue 16; '
                f'{database + measurement.copy_bytes:.0f} B with the copy in properties only); SQLite file growth '
                f'{growth[0]:.0f} B per structure',
            ),
            Row(
                'storage: repository bytes per labelled structure (fast Si), packed+compressed vs loose',
                packed,
                repository,
                'B',
                higher_is_better=False,
                note='loose objects as the runs write them vs packed with `verdi storage maintain --full --compress` '
                '(zlib level 1); the DOS energy grid and other identical files are kept once by the content-addressed '
                f'object store; remote folders {measurement.remote / 1e6:.1f} MB per structure on the computer',
            ),
        ]


if __name__ == '__main__':
    for row in run():
        print(f'{row.name}: {row.ours:.0f} {row.unit} (before {row.baseline:.0f} {row.unit}); {row.note}')
