"""Scale benchmark (``make bench-scale``): a MAD-size campaign, stage by stage, at growing N, on SQLite and PostgreSQL.

Not part of ``make test`` or ``make bench``. For every backend and every N (``--sizes``, default 1000,10000,100000) a
fresh process makes a throw-away profile under ``.bench-scale/`` in the project folder (removed afterwards unless
``--keep``) and times these stages (wall time, rate, peak RSS of the process during the stage):

Time is wall time; the process CPU time is printed next to it, as on a loaded machine the wall time mostly measures
the other processes (the stages are CPU-bound: SQLite and the repository are local files).

1. ``generate``: N ``mc3d-rattled`` structures with provenance (``StructureGeneration``: batched calcfunction,
   bulk links, extras, group), from the bundled bulk seeds;
2. synthetic DFT results for the first N/2 structures, inserted in bulk in the layout ``MadDftWorkChain`` stores
   (work chain node with its extras, ``structure`` input and output, ``energy``, ``forces``, ``stress``,
   ``properties`` with its fingerprint and subset, the level of theory in one shared node; in the process group), at
   the fingerprint of the ``fast`` protocol on the real pw.x code and the offline family (setup, not timed as a
   stage; its bytes are measured);
3. ``cycle N/2``: one submission-controller cycle over the group with N/2 finished and N/2 pending (``dry_run``:
   the pending are found and the batch chosen; nothing is sent, as there is no daemon);
4. ``status N/2``: ``aiida-mad dft status`` of the group (the table printed, to a null device);
5. the other N/2 results, then ``cycle N`` (``submit_new_batch``: nothing left to submit) and ``status N``;
6. ``build``: ``DatasetWorkChain`` of the N results (``baseline=False``: there are no isolated atoms), one
   ``build_dataset`` calcfunction linked to every result;
7. ``export xyz`` (split files), ``export chemiscope`` (one file per subset), ``export archives`` (one AiiDA
   archive per subset with the provenance of its work chains);
8. ``lineage``: the lineage of one frame; ``query``: the frames holding an element.

Also printed: the repository and database bytes per labelled structure (the DFT results only, from the growth of
the database file or ``pg_database_size`` and of the repository folder). After all sizes, the growth exponent of
each stage is the least-squares slope of log(time) against log(N).

Results go to ``bench/results/scale.json``, in the series ``--label`` (default ``current``; a run replaces the
result of the same backend and N there). Each (backend, N) process writes its figures after every stage, so a run
that is stopped or fails keeps the stages it finished (marked incomplete). The plot of the series, CPU and wall time
of each stage against N, goes to ``docs/scale.png`` (``--plot-only`` redraws it from the results file).

The synthetic results have no ``PwBaseWorkChain``/``PwCalculation`` below the work chain, so the archives and the
bytes per structure count only what the data pipeline reads; ``docs/scale.md`` adds the calculation nodes of a
real run.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import pathlib
import shutil
import subprocess
import sys
import threading
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = ROOT / '.bench-scale'
RESULTS = HERE / 'results' / 'scale.json'
PLOT = ROOT / 'docs' / 'scale.png'
#: Where setup_profile.sh keeps the PostgreSQL password; read before a profile of the benchmark changes AIIDA_PATH.
AIIDA_PATH = pathlib.Path(os.environ.get('AIIDA_PATH', ROOT / '.aiida'))
PARENT_GROUP = 'mad/structures/mc3d-rattled'
PROCESS_GROUP = 'mad/dft/mc3d-rattled'
SUBSET = 'mc3d-rattled'
PROTOCOL = 'fast'
OVERRIDES = {'pseudo_family': 'offline'}
PW = '/usr/bin/pw.x'


class PeakRss:
    """Sample the resident set size of this process every 20 ms in a thread; ``peak`` is the largest, in bytes."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()
        self._page = os.sysconf('SC_PAGE_SIZE')
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        with open('/proc/self/statm') as handle:
            self.peak = max(self.peak, int(handle.read().split()[1]) * self._page)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self._sample()

    def __enter__(self):
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *_):
        self._stop.set()
        self._thread.join()
        self._sample()


class Stages:
    """The measured stages of one (backend, N) run."""

    def __init__(self, backend: str, size: int, output: pathlib.Path | None = None):
        self.backend, self.size, self.rows, self.info, self.output = backend, size, [], {}, output
        self.generate_limit = 0  # generate at most this many structures (0: all), see copy_structures

    def save(self) -> None:
        """Write the rows and info so far to ``output`` (after every stage: a run cut short keeps its figures)."""
        if self.output is not None:
            self.output.parent.mkdir(parents=True, exist_ok=True)
            partial = self.output.with_suffix('.partial')
            partial.write_text(json.dumps({'rows': self.rows, 'info': self.info}, indent=1, default=str))
            partial.replace(self.output)

    @contextlib.contextmanager
    def stage(self, name: str, items: int, unit: str):
        start, cpu = time.perf_counter(), time.process_time()
        with PeakRss() as rss:
            yield
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        row = {
            'backend': self.backend,
            'size': self.size,
            'stage': name,
            'seconds': seconds,
            'cpu_seconds': cpu,
            'items': items,
            'rate': items / seconds if seconds > 0 else math.inf,
            'unit': unit,
            'rss_mb': rss.peak / 2**20,
        }
        self.rows.append(row)
        self.save()
        print(
            f'  [{self.backend} N={self.size}] {name:<18} {seconds:9.2f} s (CPU {cpu:8.2f} s) '
            f'{row["rate"]:10.1f} {unit}/s  peak RSS {row["rss_mb"]:7.0f} MB',
            flush=True,
        )


# ----------------------------------------------------------------------------------------------------------------
# Profiles


def _postgres_credentials() -> dict:
    """Start the local PostgreSQL cluster as ``setup_profile.sh --postgres`` does; return how to connect."""
    password_file = AIIDA_PATH / 'postgres-password'
    clusters = subprocess.run(['pg_lsclusters', '-h'], capture_output=True, text=True, check=True).stdout.split()
    if not clusters:
        raise RuntimeError('no PostgreSQL cluster (pg_lsclusters): run ./setup_profile.sh --postgres first')
    version, cluster, port, state = clusters[0], clusters[1], clusters[2], clusters[3]
    if state != 'online':
        subprocess.run(['pg_ctlcluster', version, cluster, 'start'], check=True)
    if not password_file.is_file() or not password_file.read_text().strip():
        # As setup_profile.sh: a generated password for the `postgres` role, kept in $AIIDA_PATH (mode 600).
        import secrets

        password_file.parent.mkdir(parents=True, exist_ok=True)
        password_file.touch(mode=0o600)
        password_file.write_text(secrets.token_urlsafe(18).replace('-', '').replace('_', ''))
        _psql(f"ALTER USER postgres PASSWORD '{password_file.read_text().strip()}'")
    password = password_file.read_text().strip()
    try:
        import psycopg

        psycopg.connect(host='localhost', port=int(port), user='postgres', password=password, dbname='postgres').close()
    except psycopg.OperationalError:
        # Another setup (e.g. a test's profile with its own AIIDA_PATH) gave the role another password: set ours again.
        _psql(f"ALTER USER postgres PASSWORD '{password}'")
    return {'port': int(port), 'password': password}


def _psql(sql: str) -> None:
    subprocess.run(['runuser', '-u', 'postgres', '--', 'psql', '-q', '-c', sql], check=True, capture_output=True)


@contextlib.contextmanager
def profile(backend: str, folder: pathlib.Path, keep: bool = False):
    """Create and load a throw-away profile of ``backend`` in ``folder``; drop its PostgreSQL database afterwards
    (unless ``keep``)."""
    from aiida.manage.configuration import create_profile, get_config, profile_context, reset_config, settings

    config_dir = folder / settings.DEFAULT_CONFIG_DIR_NAME
    os.environ[settings.DEFAULT_AIIDA_PATH_VARIABLE] = str(config_dir)
    reset_config()
    settings.AiiDAConfigDir.set(config_dir)
    config = get_config(create=True)
    database = None
    if backend == 'sqlite':
        storage = ('core.sqlite_dos', {'filepath': str(folder / 'storage')})
    else:
        credentials = _postgres_credentials()
        database = f'mad_bench_scale_{os.getpid()}'
        _psql(f'CREATE DATABASE {database}')
        storage = (
            'core.psql_dos',
            {
                'database_engine': 'postgresql_psycopg',
                'database_hostname': 'localhost',
                'database_port': credentials['port'],
                'database_username': 'postgres',
                'database_password': credentials['password'],
                'database_name': database,
                'repository_uri': f'file://{folder / "repository"}',
            },
        )
    try:
        created = create_profile(
            config,
            storage_backend=storage[0],
            storage_config=storage[1],
            broker_backend=None,
            broker_config=None,
            name='scale',
            email='bench@localhost',
            is_test_profile=True,
        )
        config.set_default_profile(created.name)
        config.store()
        with profile_context(created, allow_switch=True):
            yield created, database
    finally:
        reset_config()
        if database is not None and not keep:
            from aiida.manage import get_manager

            with contextlib.suppress(Exception):
                get_manager().reset_profile()
            _psql(f'DROP DATABASE IF EXISTS {database} WITH (FORCE)')


def storage_bytes(folder: pathlib.Path, database: str | None) -> tuple[int, int]:
    """Return ``(database bytes, repository bytes)`` of the profile in ``folder``."""
    from aiida.manage import get_manager

    storage = get_manager().get_profile_storage()
    storage.get_session().commit()
    if database is None:
        db_file = folder / 'storage' / 'database.sqlite'
        db = db_file.stat().st_size
        repository = folder / 'storage' / 'container'
    else:
        from sqlalchemy import text

        db = int(storage.get_session().execute(text(f"SELECT pg_database_size('{database}')")).scalar())
        repository = folder / 'repository'
    return db, sum(path.stat().st_size for path in repository.rglob('*') if path.is_file())


# ----------------------------------------------------------------------------------------------------------------
# Synthetic DFT results


def _table(entity_type):
    from aiida.manage import get_manager

    storage = get_manager().get_profile_storage()
    return storage._get_mapper_from_entity(entity_type, False)[0].local_table  # the SQLite or the PostgreSQL model


def _npy(array) -> bytes:
    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def store_results(structures: list[tuple[int, str, dict]], fingerprint: str, theory: dict, seed: int) -> int:
    """Store one finished ``MadDftWorkChain`` result per ``(pk, uuid, attributes)`` structure, in bulk; return nodes.

    The layout is that of :mod:`bench.bench_dataset` (checked there against the ORM), with the extras the work chain
    and the controller set (``mad_fingerprint``, ``mad_source_uuid``, ``mad_submission``, ``mad_outlier``) and the
    work chain in the process group.
    """
    import datetime
    import hashlib
    import uuid as uuid_module

    import numpy as np
    from aiida import orm
    from aiida.common.links import LinkType
    from aiida.common.timezone import now
    from aiida.orm.entities import EntityTypes
    from sqlalchemy import insert

    from aiida_mad.workflows.dataset import DFT_PROCESS_TYPE

    storage = orm.Node.collection.backend
    user_id = orm.User.collection.get_default().pk
    group_id = orm.load_group(PROCESS_GROUP).pk
    rng = np.random.default_rng(seed)
    start = now()
    node_types = {
        'workflow': orm.WorkflowNode.class_node_type,
        'energy': orm.Float.class_node_type,
        'array': orm.ArrayData.class_node_type,
        'properties': orm.Dict.class_node_type,
    }
    nodes, links, workflows, blobs, blob_rows = [], [], [], [], []

    def node_row(kind: str, ctime, attributes: dict, extras: dict) -> dict:
        row = {
            'uuid': str(uuid_module.uuid4()),
            'node_type': node_types[kind],
            'process_type': DFT_PROCESS_TYPE if kind == 'workflow' else None,
            'label': '',
            'description': '',
            'ctime': ctime,
            'mtime': ctime,
            'attributes': attributes,
            'extras': extras,
            'repository_metadata': {},
            'dbcomputer_id': None,
            'user_id': user_id,
        }
        # Every node stored through the ORM carries its caching hash; a stand-in here (the hash of the uuid), so that
        # what reads the stored hashes (the dataset build's process hash) does what it does on real data.
        row['extras'] = {**extras, '_aiida_hash': hashlib.sha256(row['uuid'].encode()).hexdigest()}
        nodes.append(row)
        return row

    for index, (structure_pk, structure_uuid, attributes) in enumerate(structures):
        natoms = len(attributes['sites'])
        ctime = start + datetime.timedelta(microseconds=index)
        forces = np.clip(rng.normal(0.0, 1.0, (natoms, 3)), -4.0, 4.0)
        matrix = rng.normal(0.0, 0.01, (3, 3))
        energy = float(rng.normal(-100.0 * natoms, 50.0))
        max_force = float(np.linalg.norm(forces, axis=1).max())
        workflow = node_row(
            'workflow',
            ctime,
            {'process_label': 'MadDftWorkChain', 'process_state': 'finished', 'exit_status': 0, 'sealed': True},
            {
                'mad_fingerprint': fingerprint,
                'mad_source_uuid': structure_uuid,
                'mad_submission': 'sent',
                'mad_outlier': False,
            },
        )
        workflows.append(workflow)
        extras = {'mad_fingerprint': fingerprint}
        outputs = {
            'energy': node_row('energy', ctime, {'value': energy}, extras),
            'forces': node_row('array', ctime, {'array|forces': [natoms, 3]}, extras),
            'stress': node_row('array', ctime, {'array|stress': [3, 3]}, extras),
            'properties': node_row(
                'properties',
                ctime,
                {
                    'natoms': natoms,
                    'energy': energy,
                    'energy_per_atom': energy / natoms,
                    'max_force': max_force,
                    'outlier': False,
                    'has_stress': True,
                    'outlier_max_force': 10.0,
                    'code_version': theory.get('code_version'),
                    'units': {'energy': 'eV', 'forces': 'eV/Å', 'stress': 'eV/Å^3'},
                    'fingerprint': fingerprint,
                    'dimensionality': 3,
                    'subset': SUBSET,
                },
                extras,
            ),
        }
        blobs += [_npy(forces), _npy(matrix + matrix.T)]
        blob_rows += [(outputs['forces'], 'forces.npy'), (outputs['stress'], 'stress.npy')]
        links.append((structure_pk, workflow, 'structure', LinkType.INPUT_WORK))
        links.append((workflow, structure_pk, 'structure', LinkType.RETURN))
        links.extend((workflow, node, name, LinkType.RETURN) for name, node in outputs.items())

    repository = storage.get_repository()
    container = getattr(repository, '_container', None)  # aiida-core has no public accessor
    if container is not None:  # packed straight into the object store
        with container:
            keys = container.add_objects_to_pack(blobs)
    else:
        keys = [repository.put_object_from_filelike(io.BytesIO(blob)) for blob in blobs]
    for (row, name), key in zip(blob_rows, keys, strict=True):
        row['repository_metadata'] = {'o': {name: {'k': key}}}

    session = storage.get_session()
    with storage.transaction():
        session.execute(insert(_table(EntityTypes.NODE)), nodes)
        uuids = [row['uuid'] for row in nodes]
        ids = {}
        for first in range(0, len(uuids), 5000):
            query = orm.QueryBuilder().append(
                orm.Node, filters={'uuid': {'in': uuids[first : first + 5000]}}, project=['uuid', 'id']
            )
            ids.update(dict(query.all()))

        def pk(value):
            return value if isinstance(value, int) else ids[value['uuid']]

        session.execute(
            insert(_table(EntityTypes.LINK)),
            [
                {'input_id': pk(source), 'output_id': pk(target), 'label': name, 'type': kind.value}
                for source, target, name, kind in links
            ],
        )
        session.execute(
            insert(_table(EntityTypes.GROUP_NODE)),
            [{'dbnode_id': ids[row['uuid']], 'dbgroup_id': group_id} for row in workflows],
        )
    return len(nodes)


def copy_structures(count: int) -> None:
    """Insert ``count`` copies of the generated structures in bulk into the parent group (not a timed stage).

    For ``--generate-limit``: each copy has a new UUID, the attributes and extras of its original, a distinct
    ``mad_generation_key`` and ``mad_copy_of`` (the original's UUID), and no provenance.
    """
    import uuid as uuid_module

    from aiida import orm
    from aiida.common.timezone import now
    from aiida.orm.entities import EntityTypes
    from sqlalchemy import insert

    storage = orm.Node.collection.backend
    group = orm.load_group(PARENT_GROUP)
    query = orm.QueryBuilder().append(orm.Group, filters={'id': group.pk}, tag='g')
    query.append(orm.StructureData, with_group='g', project=['uuid', 'attributes', 'extras'])
    originals = query.all()
    user_id, ctime, rows = orm.User.collection.get_default().pk, now(), []
    for number in range(count):
        uuid, attributes, extras = originals[number % len(originals)]
        extras = {**extras, 'mad_generation_key': f'{extras["mad_generation_key"]}-copy{number}', 'mad_copy_of': uuid}
        rows.append(
            {
                'uuid': str(uuid_module.uuid4()),
                'node_type': orm.StructureData.class_node_type,
                'process_type': None,
                'label': '',
                'description': '',
                'ctime': ctime,
                'mtime': ctime,
                'attributes': attributes,
                'extras': extras,
                'repository_metadata': {},
                'dbcomputer_id': None,
                'user_id': user_id,
            }
        )
    session = storage.get_session()
    with storage.transaction():
        for first in range(0, len(rows), 5000):
            chunk = rows[first : first + 5000]
            session.execute(insert(_table(EntityTypes.NODE)), chunk)
            ids = orm.QueryBuilder().append(
                orm.Node, filters={'uuid': {'in': [row['uuid'] for row in chunk]}}, project='id'
            )
            session.execute(
                insert(_table(EntityTypes.GROUP_NODE)),
                [{'dbnode_id': pk, 'dbgroup_id': group.pk} for pk in ids.all(flat=True)],
            )


# ----------------------------------------------------------------------------------------------------------------
# One (backend, N) run


def run_one(backend: str, size: int, keep: bool, output: pathlib.Path | None = None, generate_limit: int = 0) -> dict:
    """Run every stage for ``size`` structures on ``backend`` in a throw-away profile; return rows and info.

    :param output: where the rows and info are written after every stage and at the end.
    :param generate_limit: generate at most this many structures, copy the rest (0: generate all).
    """
    folder = WORK / f'{backend}-{size}-{os.getpid()}'
    folder.mkdir(parents=True, exist_ok=True)
    stages = Stages(backend, size, output)
    stages.generate_limit = generate_limit
    try:
        with profile(backend, folder, keep) as (_, database):
            _run_stages(stages, folder, database)
        stages.info['complete'] = True
        stages.save()
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)
    return {'rows': stages.rows, 'info': stages.info}


def _run_stages(stages: Stages, folder: pathlib.Path, database: str | None) -> None:
    import tempfile

    from aiida import orm
    from aiida.engine import run_get_node

    from aiida_mad.cli.dft import print_status
    from aiida_mad.codes import detect_pw_version
    from aiida_mad.controllers.dft import DftSubmissionController
    from aiida_mad.export.archive import export_subset_archives
    from aiida_mad.export.chemiscope import write_chemiscope_per_subset
    from aiida_mad.export.dataset import dft_workchains_by_subset, quiet_archive_logger
    from aiida_mad.pseudos import install_offline_family
    from aiida_mad.query import lineage, query_frames
    from aiida_mad.storage import store_seeds
    from aiida_mad.workflows.dataset import DatasetWorkChain
    from aiida_mad.workflows.dft import CODE_VERSION_EXTRA, level_of_theory_node, protocol_level_of_theory
    from aiida_mad.workflows.generate import StructureGeneration

    sys.path.insert(0, str(HERE))
    from common import local_code

    size = stages.size
    store_seeds(['bulk'])
    install_offline_family()
    code = local_code('pw', PW)
    code.base.extras.set(CODE_VERSION_EXTRA, detect_pw_version(PW))
    orm.Group(label=PROCESS_GROUP).store()

    generated = min(size, stages.generate_limit or size)
    with stages.stage('generate' if generated == size else f'generate {generated}', generated, 'structures'):
        generation = StructureGeneration(SUBSET, count=generated, seed=1, group_label=PARENT_GROUP)
        progress = generation.run()
    assert progress.new_structures == generated, generation.summary(progress)
    if generated < size:
        start = time.perf_counter()
        copy_structures(size - generated)
        stages.info.update(generated=generated, copy_seconds=time.perf_counter() - start)
        stages.save()

    controller = DftSubmissionController(
        parent_group_label=PARENT_GROUP,
        group_label=PROCESS_GROUP,
        code=code.full_label,
        protocol=PROTOCOL,
        overrides=OVERRIDES,
        max_concurrent=size,
    )
    fingerprint = controller.fingerprint
    theory = protocol_level_of_theory(code, PROTOCOL, OVERRIDES)
    level_of_theory_node(fingerprint, theory).store()  # one per fingerprint, as real runs share it
    query = orm.QueryBuilder().append(orm.Group, filters={'label': PARENT_GROUP}, tag='g')
    query.append(orm.StructureData, with_group='g', project=['id', 'uuid', 'attributes'], tag='s')
    structures = sorted(query.all(), key=lambda row: row[0])
    half = size // 2

    before = storage_bytes(folder, database)
    start = time.perf_counter()
    count = store_results(structures[:half], fingerprint, theory, seed=0)
    stages.info['insert_seconds'] = time.perf_counter() - start
    stages.save()

    with stages.stage('cycle N/2', size, 'structures'):
        batch = controller.submit_new_batch(dry_run=True)
    assert len(batch) == size - half, len(batch)
    with stages.stage('status N/2', size, 'structures'), contextlib.redirect_stdout(io.StringIO()):
        print_status(controller)
    status = controller.status()[SUBSET].counts
    assert status['finished'] == half and status['pending'] == size - half, status

    start = time.perf_counter()
    count += store_results(structures[half:], fingerprint, theory, seed=1)
    stages.info['insert_seconds'] += time.perf_counter() - start
    if database is not None:
        # Half a million rows arrive here in seconds, faster than autovacuum analyses them (a campaign's results
        # arrive over days): without fresh statistics PostgreSQL may plan the lineage's recursive query as if the
        # tables were empty (31 s instead of 0.2 s at N = 10 000, once).
        from aiida.manage import get_manager
        from sqlalchemy import text

        storage = get_manager().get_profile_storage()
        with storage.transaction() as session:
            session.execute(text('ANALYZE'))
    after = storage_bytes(folder, database)
    stages.info['db_bytes_per_structure'] = (after[0] - before[0]) / size
    stages.info['repository_bytes_per_structure'] = (after[1] - before[1]) / size
    stages.info['nodes_per_structure'] = count / size
    print(
        f'  [{stages.backend} N={size}] DFT results: {count} nodes inserted in {stages.info["insert_seconds"]:.1f} s; '
        f'{stages.info["db_bytes_per_structure"]:.0f} database + {stages.info["repository_bytes_per_structure"]:.0f} '
        'repository bytes per structure',
        flush=True,
    )

    with stages.stage('cycle N', size, 'structures'):
        batch = controller.submit_new_batch()
    assert batch == {}, len(batch)
    with stages.stage('status N', size, 'structures'), contextlib.redirect_stdout(io.StringIO()):
        print_status(controller)
    assert controller.status()[SUBSET].counts['finished'] == size

    with stages.stage('build', size, 'frames'):
        _, node = run_get_node(
            DatasetWorkChain,
            name=orm.Str('scale'),
            groups=orm.List([PROCESS_GROUP]),
            baseline=orm.Bool(False),
        )
    assert node.is_finished_ok, f'DatasetWorkChain<{node.pk}>: {node.exit_status} {node.exit_message}'
    dataset = node.outputs.dataset
    assert dataset.n_frames == size, dataset.n_frames
    stored = sum(len(dataset.base.repository.get_object_content(name, 'rb')) for name in dataset.shard_names())
    stored += len(dataset.base.repository.get_object_content('index.npz', 'rb'))
    stages.info['dataset_bytes_per_frame'] = stored / size

    with tempfile.TemporaryDirectory(prefix='xyz-', dir=folder) as out, stages.stage('export xyz', size, 'frames'):
        dataset.write_split_files(out)
    with (
        tempfile.TemporaryDirectory(prefix='chemiscope-', dir=folder) as directory,
        stages.stage('export chemiscope', size, 'frames'),
    ):
        write_chemiscope_per_subset(dataset.frames(), directory)
    with tempfile.TemporaryDirectory(prefix='archives-', dir=folder) as directory:
        with stages.stage('export archives', size, 'frames'), quiet_archive_logger():
            paths = export_subset_archives(dft_workchains_by_subset(dataset), directory)
        stages.info['archive_bytes_per_structure'] = sum(path.stat().st_size for path in paths.values()) / size

    sources = [str(uuid) for uuid in dataset.index()['source_uuid']]
    query = orm.QueryBuilder().append(orm.StructureData, project=['uuid', 'extras.mad_copy_of'])
    copies = {uuid for uuid, copy_of in query.iterall() if copy_of}
    source = next(uuid for uuid in sources[size // 3 :] + sources if uuid not in copies)  # generated: provenance
    with stages.stage('lineage', 1, 'frames'):
        found = lineage(source)
    assert found['datasets'] and found['generation'], found
    element = dataset.elements[0]
    with stages.stage('query', size, 'frames'):
        selected = query_frames(dataset, elements=[element])
    assert len(selected) > 0


# ----------------------------------------------------------------------------------------------------------------
# Driver


def exponent(points: list[tuple[int, float]]) -> float | None:
    """Return the least-squares slope of log(seconds) against log(N), or ``None`` with fewer than two sizes."""
    points = [(n, t) for n, t in points if t > 0]
    if len({n for n, _ in points}) < 2:
        return None
    xs = [math.log(n) for n, _ in points]
    ys = [math.log(t) for _, t in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)


def table(results: list[dict]) -> str:
    """Return the markdown table of every row with the growth exponent of its stage on its backend."""
    rows = [row for result in results for row in result['rows']]
    fits, cpu_fits = {}, {}
    for row in rows:
        fits.setdefault((row['backend'], row['stage']), []).append((row['size'], row['seconds']))
        cpu_fits.setdefault((row['backend'], row['stage']), []).append((row['size'], row.get('cpu_seconds', 0.0)))
    lines = [
        '| backend | stage | N | time (s) | CPU (s) | rate | peak RSS (MB) | exponent (time) | exponent (CPU) |',
        '|---|---|---|---|---|---|---|---|---|',
    ]
    for row in rows:
        slopes = [exponent(fits[(row['backend'], row['stage'])]), exponent(cpu_fits[(row['backend'], row['stage'])])]
        shown = ' | '.join('' if slope is None else f'{slope:.2f}' for slope in slopes)
        lines.append(
            f'| {row["backend"]} | {row["stage"]} | {row["size"]} | {row["seconds"]:.2f} | '
            f'{row.get("cpu_seconds", math.nan):.2f} | {row["rate"]:.0f} {row["unit"]}/s | {row["rss_mb"]:.0f} | '
            f'{shown} |'
        )
    for result in results:
        info, (backend, size) = result['info'], _key(result)
        if info.get('complete') is False:
            lines.append(f'\n{backend} N={size}: incomplete (only the stages above were run)')
        if 'db_bytes_per_structure' in info:
            parts = [
                f'{info["nodes_per_structure"]:.0f} nodes, {info["db_bytes_per_structure"]:.0f} database bytes and '
                f'{info["repository_bytes_per_structure"]:.0f} repository bytes per labelled structure (synthetic '
                'results)'
            ]
            if 'archive_bytes_per_structure' in info:
                parts.append(f'archives {info["archive_bytes_per_structure"]:.0f} bytes per structure')
            if 'dataset_bytes_per_frame' in info:
                parts.append(f'dataset {info["dataset_bytes_per_frame"]:.0f} bytes per frame')
            lines.append(f'\n{backend} N={size}: ' + '; '.join(parts))
    return '\n'.join(lines)


def load_results(path: pathlib.Path) -> dict[str, list[dict]]:
    """Return the series of ``path``: ``{label: [one result per (backend, N)]}`` (``{}`` if there is no file)."""
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return {'current': data} if isinstance(data, list) else data


def _key(result: dict) -> tuple[str, int]:
    row = result['rows'][0] if result['rows'] else {}
    return result.get('backend', row.get('backend', '?')), int(result.get('size', row.get('size', 0)))


def merge_result(path: pathlib.Path, label: str, result: dict) -> None:
    """Put ``result`` into series ``label`` of ``path``, replacing the result of the same backend and N."""
    series = load_results(path)
    kept = [old for old in series.get(label, []) if _key(old) != _key(result)]
    series[label] = sorted([*kept, result], key=lambda item: (_key(item)[0] != 'sqlite', _key(item)))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(series, indent=1, default=str))


#: The stages of the plot, in the order of the legend.
PLOTTED = (
    'generate',
    'build',
    'export archives',
    'export chemiscope',
    'export xyz',
    'cycle N',
    'status N',
    'lineage',
    'query',
)


def plot(results: list[dict], path: pathlib.Path, title: str) -> pathlib.Path:
    """Draw the CPU and wall time of each stage against N (log-log, one line per stage and backend) into ``path``."""
    os.environ.setdefault('MPLCONFIGDIR', str(ROOT / '.cache' / 'mpl'))
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(12, 5), sharey=True)
    colours = plt.rcParams['axes.prop_cycle'].by_key()['color']
    sizes = set()
    panels = (('cpu_seconds', 'process CPU time'), ('seconds', 'wall time'))
    for panel, (column, name) in zip(axes, panels, strict=True):
        for number, stage in enumerate(PLOTTED):
            for backend, style in (('sqlite', '-o'), ('postgres', '--s')):
                points = sorted(
                    (row['size'], row[column])
                    for result in results
                    for row in result['rows']
                    if row['backend'] == backend and row['stage'] == stage and row.get(column, 0) > 0
                )
                if not points:
                    continue
                sizes.update(n for n, _ in points)
                slope = exponent(points)
                label = f'{stage} ({backend}' + (f', N^{slope:.2f})' if slope is not None else ')')
                xs, ys = [n for n, _ in points], [t for _, t in points]
                panel.plot(xs, ys, style, color=colours[number % len(colours)], label=label, markersize=4)
        if sizes:
            low, high = min(sizes), max(sizes)
            panel.plot([low, high], [1.0, high / low], ':', color='grey', label='linear (slope 1)')
        panel.set_xscale('log')
        panel.set_yscale('log')
        panel.set_xlabel('N (structures)')
        panel.set_title(name)
        panel.grid(True, which='both', alpha=0.3)
    axes[0].set_ylabel('seconds')
    handles, labels = axes[0].get_legend_handles_labels()  # the growth exponents of the CPU time
    axes[1].legend(handles, labels, fontsize=7, loc='center left', bbox_to_anchor=(1.0, 0.5))
    figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--sizes', default=os.environ.get('MAD_BENCH_SCALE_SIZES', '1000,10000,100000'))
    parser.add_argument('--backends', default=os.environ.get('MAD_BENCH_SCALE_BACKENDS', 'sqlite,postgres'))
    parser.add_argument('--keep', action='store_true', help='keep the profiles under .bench-scale/')
    parser.add_argument('--one', nargs=2, metavar=('BACKEND', 'N'), help=argparse.SUPPRESS)
    parser.add_argument('--output', type=pathlib.Path, default=RESULTS)
    parser.add_argument(
        '--label', default='current', help='the series of the results file to put these runs in (default: current)'
    )
    parser.add_argument('--plot', type=pathlib.Path, default=PLOT, help=f'the plot to write (default: {PLOT})')
    parser.add_argument('--plot-only', action='store_true', help='only redraw the plot from the results file')
    parser.add_argument(
        '--generate-limit',
        type=int,
        default=0,
        help='generate at most this many structures (stage "generate <M>"); the rest are copies inserted in bulk, '
        'without provenance (to reach the later stages at large N sooner; default: no limit)',
    )
    args = parser.parse_args(argv)

    if args.one:
        backend, size = args.one[0], int(args.one[1])
        run_one(backend, size, args.keep, args.output, args.generate_limit)
        return 0

    if args.plot_only:
        results = load_results(args.output).get(args.label, [])
        print(table(results))
        print(f'plot: {plot(results, args.plot, f"make bench-scale ({args.label})")}')
        return 0

    sizes = [int(value) for value in args.sizes.split(',') if value]
    backends = [value for value in args.backends.split(',') if value]
    unknown = sorted(set(backends) - {'sqlite', 'postgres'})
    if unknown or not sizes or min(sizes) < 2:
        parser.error(f'backends are sqlite and postgres (got {unknown}); sizes are integers >= 2 (got {sizes})')
    for backend in backends:
        for size in sizes:
            print(f'{backend}, N = {size}', flush=True)
            output = WORK / f'result-{backend}-{size}-{os.getpid()}.json'
            output.parent.mkdir(parents=True, exist_ok=True)
            command = [sys.executable, __file__, '--one', backend, str(size), '--output', str(output)]
            command += ['--generate-limit', str(args.generate_limit)]
            if args.keep:
                command.append('--keep')
            returncode = subprocess.run(command, check=False).returncode
            if not output.is_file():
                print(f'  {backend} N={size} failed before its first stage (exit status {returncode})', flush=True)
                continue
            result = json.loads(output.read_text())
            result.update(backend=backend, size=size)
            if returncode != 0 or not result['info'].get('complete'):
                # Every finished stage was saved: keep them, marked incomplete.
                result['info']['complete'] = False
                done = ', '.join(row['stage'] for row in result['rows']) or 'none'
                print(f'  {backend} N={size} stopped (exit status {returncode}); stages done: {done}', flush=True)
            merge_result(args.output, args.label, result)
            output.unlink()
    results = load_results(args.output).get(args.label, [])
    print(table(results))
    print(f'plot: {plot(results, args.plot, f"make bench-scale ({args.label})")}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
