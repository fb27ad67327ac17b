"""Export of a stored ``mad.dataset`` against loading every DFT node and converting it, in one temporary profile.

Setup (timed, reported in the first row's note, compared with nothing):

* ``MAD_BENCH_DATASET_COUNT`` synthetic DFT results (default 20 000: 2 to 8 atoms; four in five periodic ``mc3d``
  frames with a stress, one in five a 0D ``mc3d-cluster`` frame without one; one fingerprint) stored in the layout
  of ``MadDftWorkChain``: a ``WorkflowNode`` of process type ``aiida.workflows:mad.dft`` (``MadDftWorkChain``,
  finished, exit status 0, sealed), its ``structure`` input (``INPUT_WORK`` from a ``StructureData``, returned as
  the ``structure`` output as a periodic run does) and the ``RETURN`` outputs ``energy`` (``Float``), ``forces`` and
  ``stress`` (``ArrayData``) and ``properties`` (``Dict``: ``fingerprint``, ``subset``, ``max_force``,
  ``level_of_theory``), all in one group; every node carries a stand-in of its stored caching hash (the build's
  process hash reads them). The rows are inserted in bulk (nodes, links and group members with one ``executemany``
  each, the ``.npy`` files packed straight into the object store): ``store()`` node by node, in one transaction,
  runs at about ten results per second here (hashing, per-link queries), over half an hour for 20 000. The first
  result is checked against what the ORM stores for the same values.
* ``DatasetWorkChain`` (``baseline=False``: there are no isolated atoms) builds a dataset from the first
  ``MAD_BENCH_DATASET_BUILD_COUNT`` results (default 1 000, in their own group; the build streams its frames, about
  1 000 to 1 500 per CPU second at 10⁴, see ``docs/datasets.md``). Its content hash is checked against the frames of
  the stored values. Set the count to the full count to build and export the work chain's own dataset.
* Otherwise the exported dataset is stored with ``DatasetData(frames)`` from the same values (the frames
  ``build_dataset`` makes, as that check shows).

Rows (frames per second, higher is better):

1. ``aiida-mad dataset export --no-archives --no-chemiscope``, i.e. ``export_dataset(..., archives=False,
   chemiscope=False)``: ``mad-train/val/test.xyz`` routed from the dataset's shards, next to the naive way on the
   same profile: query the group's DFT work chains, ``load_node`` each, read its input structure (the split's
   source) and its outputs (``structure.get_ase()``, energy, forces, stress, properties), build an ``ase.Atoms``
   with the same ``REF_*``/``subset``/``split``/``source_uuid``/``fingerprint`` keys and ``ase.io.write`` each split
   file as extended XYZ. Both write the same frames to the same three files (checked after the timing: each naive
   frame is in the same split file of ours); the naive loop even does less (no fingerprint, duplicate or outlier
   selection; ASE's 8-decimal floats instead of lossless ones). The issue asks for at least 5 000 frames/s and 20
   times the naive way. The naive loop runs on the first ``MAD_BENCH_DATASET_NAIVE_COUNT`` work chains (default
   1 000, about two minutes here; 0 for all): its cost per frame does not depend on how many there are.
2. The chemiscope file of each subset: ``write_chemiscope_per_subset`` next to ``chemiscope.write_input`` (the
   chemiscope package's own writer) given the same frames, the same meta, structure properties (energy per atom,
   energy, max force, number of atoms, subset, split, source uuid), per-atom force magnitude, environments of every
   atom (3.5 Å cutoff) and settings, gzip-compressed; the package also writes the box of 0D frames, ours does not.
   The frames are read from the dataset once, before both timings.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import re
import tempfile
import time

from common import Row, temporary_profile

COUNT = int(os.environ.get('MAD_BENCH_DATASET_COUNT', '20000'))
BUILD_COUNT = int(os.environ.get('MAD_BENCH_DATASET_BUILD_COUNT', '1000'))
NAIVE_COUNT = int(os.environ.get('MAD_BENCH_DATASET_NAIVE_COUNT', '1000')) or None
GROUP = 'bench/dft/mad'
BUILD_GROUP = 'bench/dft/mad-build'
FINGERPRINT = '0123456789abcdef' * 4
SEED = 0
FRACTIONS = (0.8, 0.1, 0.1)


def bench_theory() -> dict:
    """Return the level of theory the synthetic results carry in ``properties`` (the dataset records it)."""
    from aiida_mad.fingerprint import level_of_theory

    return level_of_theory(
        code_name='pw.x',
        code_version='7.2',
        functional='PBEsol',
        pseudo_family='bench',
        pseudo_md5={'X': '0' * 32},
        ecutwfc=30.0,
        ecutrho=240.0,
        smearing='cold',
        degauss=0.02,
        kpoints_distance=0.3,
        nspin=1,
        vacuum=10.0,
        coulomb_truncation={'2D': '2D', '0D': 'mt'},
    )


def _npy(array) -> bytes:
    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _structure_attributes(numbers, positions, cell, periodic: bool) -> dict:
    """Return the attributes ``StructureData(ase=...)`` stores for these atoms (checked in :func:`_check_layout`)."""
    from ase.data import atomic_masses, chemical_symbols

    symbols = [chemical_symbols[number] for number in numbers]
    kinds = {}
    for number, symbol in zip(numbers.tolist(), symbols, strict=True):
        mass = float(atomic_masses[number])
        kinds.setdefault(symbol, {'symbols': [symbol], 'weights': [1.0], 'mass': mass, 'name': symbol})
    return {
        'cell': cell.tolist(),
        'pbc1': periodic,
        'pbc2': periodic,
        'pbc3': periodic,
        'kinds': list(kinds.values()),
        'sites': [
            {'kind_name': symbol, 'position': position}
            for symbol, position in zip(symbols, positions.tolist(), strict=True)
        ],
    }


def _synthetic_results(count: int, seed: int = 0):
    """Yield one dict of plain values per DFT result: numbers, positions, cell, pbc, energy, forces, stress, subset."""
    import numpy as np

    rng = np.random.default_rng(seed)
    for index in range(count):
        natoms = int(rng.integers(2, 9))
        periodic = index % 5 != 0
        matrix = rng.normal(0.0, 0.01, (3, 3))
        yield {
            'numbers': rng.integers(1, 87, natoms),
            'positions': rng.uniform(0.0, 5.0, (natoms, 3)),
            'cell': np.diag(rng.uniform(3.0, 7.0, 3)) if periodic else np.eye(3) * 30.0,
            'periodic': periodic,
            'energy': float(rng.normal(-100.0 * natoms, 50.0)),
            'forces': np.clip(rng.normal(0.0, 1.0, (natoms, 3)), -4.0, 4.0),  # below every outlier threshold
            'stress': matrix + matrix.T if periodic else None,
            'subset': 'mc3d' if periodic else 'mc3d-cluster',
        }


def _insert(storage, entity_type, rows: list[dict]) -> None:
    """Insert ``rows`` in the table of ``entity_type`` of the SQLite storage, with one ``executemany``.

    ``StorageBackend.bulk_insert`` returns the new ids through ``RETURNING``, and SQLAlchemy's splicing of the
    returned rows, batch after batch, dominated a profile (20 s for 5 000 results, against 3 s this way); the ids are
    looked up by uuid instead. The benchmark's profile is always SQLite (:func:`common.temporary_profile`).
    """
    from aiida.storage.sqlite_zip.models import MAP_ENTITY_TYPE_TO_MODEL
    from sqlalchemy import insert

    storage.get_session().execute(insert(MAP_ENTITY_TYPE_TO_MODEL[entity_type].__table__), rows)


def store_results(count: int, groups: dict[str, int]) -> tuple[list[tuple[str, str]], int]:
    """Store ``count`` synthetic DFT results in the ``MadDftWorkChain`` layout; the first ``n`` in group ``label``.

    :param groups: ``{label: n}``: the new groups, each with the first ``n`` work chains.
    :return: the ``(structure uuid, work chain uuid)`` of every result, in order, and the number of nodes stored.

    Everything goes in bulk in one transaction: the array files are packed into the object store first, then the
    node rows, the links and the group membership are inserted.
    """
    import datetime
    import hashlib
    import uuid

    import numpy as np
    from aiida import orm
    from aiida.common.links import LinkType
    from aiida.common.timezone import now
    from aiida.orm.entities import EntityTypes

    from aiida_mad.workflows.dataset import DFT_PROCESS_TYPE

    storage = orm.Node.collection.backend
    user_id = orm.User.collection.get_default().pk
    group_ids = {label: orm.Group(label=label).store().pk for label in groups}
    start = now()
    node_types = {
        'structure': orm.StructureData.class_node_type,
        'workflow': orm.WorkflowNode.class_node_type,
        'energy': orm.Float.class_node_type,
        'forces': orm.ArrayData.class_node_type,
        'stress': orm.ArrayData.class_node_type,
        'properties': orm.Dict.class_node_type,
    }
    workflow_attributes = {
        'process_label': 'MadDftWorkChain',
        'process_state': 'finished',
        'exit_status': 0,
        'sealed': True,
    }

    nodes, links, workflows, structures, blobs, blob_rows = [], [], [], [], [], []

    def node_row(kind: str, ctime, attributes: dict, extras: dict | None = None) -> dict:
        row = {
            'uuid': str(uuid.uuid4()),
            'node_type': node_types[kind],
            'process_type': DFT_PROCESS_TYPE if kind == 'workflow' else None,
            'label': '',
            'description': '',
            'ctime': ctime,
            'mtime': ctime,
            'attributes': attributes,
            'extras': extras or {},
            'repository_metadata': {},
            'dbcomputer_id': None,
            'user_id': user_id,
        }
        # Every node stored through the ORM carries its caching hash; a stand-in here (the hash of the uuid), so that
        # what reads the stored hashes (the dataset build's process hash) does what it does on real data.
        row['extras'] = {**row['extras'], '_aiida_hash': hashlib.sha256(row['uuid'].encode()).hexdigest()}
        nodes.append(row)
        return row

    theory = bench_theory()
    for index, values in enumerate(_synthetic_results(count)):
        ctime = start + datetime.timedelta(microseconds=index)
        attributes = _structure_attributes(values['numbers'], values['positions'], values['cell'], values['periodic'])
        structure = node_row('structure', ctime, attributes)
        structures.append(structure)
        workflow = node_row('workflow', ctime, dict(workflow_attributes), {'mad_fingerprint': FINGERPRINT})
        workflows.append(workflow)
        links.append((structure, workflow, 'structure', LinkType.INPUT_WORK))
        links.append((workflow, structure, 'structure', LinkType.RETURN))
        extras = {'mad_fingerprint': FINGERPRINT}
        max_force = float(np.linalg.norm(values['forces'], axis=1).max())
        outputs = {
            'energy': node_row('energy', ctime, {'value': values['energy']}, extras),
            'forces': node_row('forces', ctime, {'array|forces': list(values['forces'].shape)}, extras),
            'properties': node_row(
                'properties',
                ctime,
                {
                    'fingerprint': FINGERPRINT,
                    'subset': values['subset'],
                    'max_force': max_force,
                    'outlier': False,
                    'level_of_theory': theory,
                },
                extras,
            ),
        }
        blobs.append(_npy(values['forces']))
        blob_rows.append((outputs['forces'], 'forces.npy'))
        if values['stress'] is not None:
            outputs['stress'] = node_row('stress', ctime, {'array|stress': [3, 3]}, extras)
            blobs.append(_npy(values['stress']))
            blob_rows.append((outputs['stress'], 'stress.npy'))
        links.extend((workflow, node, name, LinkType.RETURN) for name, node in outputs.items())

    container = storage.get_container() if hasattr(storage, 'get_container') else None
    if container is not None:
        with container:
            keys = container.add_objects_to_pack(blobs)
    else:
        repository = storage.get_repository()
        keys = [repository.put_object_from_filelike(io.BytesIO(blob)) for blob in blobs]
    for (row, name), key in zip(blob_rows, keys, strict=True):
        row['repository_metadata'] = {'o': {name: {'k': key}}}

    with storage.transaction():
        _insert(storage, EntityTypes.NODE, nodes)
        ids = dict(orm.QueryBuilder().append(orm.Node, project=['uuid', 'id']).iterall(batch_size=10_000))
        link_rows = [
            {'input_id': ids[source['uuid']], 'output_id': ids[target['uuid']], 'label': name, 'type': kind.value}
            for source, target, name, kind in links
        ]
        _insert(storage, EntityTypes.LINK, link_rows)
        members = [
            {'dbnode_id': ids[row['uuid']], 'dbgroup_id': group_ids[label]}
            for label, size in groups.items()
            for row in workflows[:size]
        ]
        _insert(storage, EntityTypes.GROUP_NODE, members)
    pairs = [(structure['uuid'], workflow['uuid']) for structure, workflow in zip(structures, workflows, strict=True)]
    return pairs, len(nodes)


def result_frames(uuids: list[tuple[str, str]]):
    """Return the frames ``build_dataset`` makes of the stored results (from the values they were stored with)."""
    from aiida_mad.dataset.frames import make_frame
    from aiida_mad.dataset.splits import assign_split

    frames = []
    for values, (source_uuid, _) in zip(_synthetic_results(len(uuids)), uuids, strict=True):
        frames.append(
            make_frame(
                values['numbers'],
                values['positions'],
                cell=values['cell'],
                pbc=values['periodic'],
                energy=values['energy'],
                forces=values['forces'],
                stress=values['stress'],
                subset=values['subset'],
                split=assign_split(source_uuid, SEED, FRACTIONS),
                source_uuid=source_uuid,
                fingerprint=FINGERPRINT,
                validate=False,
            )
        )
    return frames


def _check_layout(label: str) -> None:
    """Check the first stored result against what the ORM makes of the same values, and that it loads back."""
    import numpy as np
    from aiida import orm
    from ase import Atoms

    values = next(_synthetic_results(1))
    query = orm.QueryBuilder().append(orm.Group, filters={'label': label}, tag='g')
    query.append(orm.WorkflowNode, with_group='g', project='*', tag='w').order_by({'w': 'id'})
    node = query.first(flat=True)
    assert node.is_finished_ok and node.process_label == 'MadDftWorkChain', node
    atoms = Atoms(values['numbers'], positions=values['positions'], cell=values['cell'], pbc=values['periodic'])
    expected = json.loads(json.dumps(orm.StructureData(ase=atoms).base.attributes.all))  # tuples to lists, as stored
    assert node.inputs.structure.base.attributes.all == expected
    assert node.outputs.structure.uuid == node.inputs.structure.uuid
    assert node.outputs.energy.value == values['energy']
    assert np.array_equal(node.outputs.forces.get_array('forces'), values['forces'])
    assert node.outputs.forces.base.attributes.all == orm.ArrayData({'forces': values['forces']}).base.attributes.all
    assert ('stress' in node.outputs) == (values['stress'] is not None)
    assert node.outputs.properties['subset'] == values['subset']


def naive_export(label: str, directory: pathlib.Path, limit: int | None) -> int:
    """Write ``mad-<split>.xyz`` by loading every DFT work chain of group ``label`` and converting it with ASE.

    Return the number of frames written.
    """
    import ase.io
    import numpy as np
    from aiida import orm

    from aiida_mad.dataset.frames import SPLITS
    from aiida_mad.dataset.splits import assign_split
    from aiida_mad.workflows.dataset import DFT_PROCESS_TYPE

    query = orm.QueryBuilder().append(orm.Group, filters={'label': label}, tag='g')
    query.append(orm.WorkflowNode, with_group='g', filters={'process_type': DFT_PROCESS_TYPE}, project='id', tag='w')
    pks = query.order_by({'w': 'id'}).all(flat=True)[:limit]
    by_split = {split: [] for split in SPLITS}
    no_stress = np.full(9, np.nan)
    for pk in pks:
        node = orm.load_node(pk)
        if not node.is_finished_ok:
            continue
        outputs = node.outputs
        source_uuid = node.inputs.structure.uuid
        properties = outputs.properties.get_dict()
        atoms = outputs.structure.get_ase()
        split = assign_split(source_uuid, SEED, FRACTIONS)
        atoms.info = {
            'REF_energy': outputs.energy.value,
            'REF_stress': outputs.stress.get_array('stress').ravel() if 'stress' in outputs else no_stress,
            'subset': properties['subset'],
            'split': split,
            'source_uuid': source_uuid,
            'fingerprint': properties['fingerprint'],
        }
        atoms.new_array('REF_forces', outputs.forces.get_array('forces'))
        by_split[split].append(atoms)
    for split, frames in by_split.items():
        ase.io.write(directory / f'mad-{split}.xyz', frames, format='extxyz')
    return sum(len(frames) for frames in by_split.values())


_SOURCE = re.compile(r'source_uuid=(\S+)')


def _sources(directory: pathlib.Path) -> dict[str, list[str]]:
    """Return the source uuids of the frames of each split file in ``directory``."""
    from aiida_mad.dataset.frames import SPLITS

    return {split: _SOURCE.findall((directory / f'mad-{split}.xyz').read_text()) for split in SPLITS}


def chemiscope_baseline(frames, directory: pathlib.Path, prefix: str = 'mad') -> None:
    """Write one chemiscope file per subset with ``chemiscope.write_input``, the content of ours."""
    import chemiscope
    import numpy as np

    from aiida_mad.export import chemiscope as ours

    groups = {}
    for frame in frames:
        groups.setdefault(frame.info['subset'], []).append(frame)
    for subset, subset_frames in sorted(groups.items()):
        natoms = np.array([len(frame) for frame in subset_frames])
        energy = np.array([frame.info['energy'] for frame in subset_frames])
        magnitude = [np.linalg.norm(frame.arrays['forces'], axis=1) for frame in subset_frames]
        max_force = np.array([values.max() for values in magnitude])
        values = {ours.ENERGY_PER_ATOM: energy / natoms, ours.ENERGY: energy}
        if all('energy_baseline_subtracted' in frame.info for frame in subset_frames):
            baseline = np.array([frame.info['energy_baseline_subtracted'] for frame in subset_frames])
            values[ours.BASELINE_PER_ATOM] = baseline / natoms
        values |= {
            ours.MAX_FORCE: max_force,
            ours.N_ATOMS: natoms,
            ours.SUBSET: [frame.info['subset'] for frame in subset_frames],
            ours.SPLIT: [frame.info['split'] for frame in subset_frames],
            ours.SOURCE_UUID: [frame.info['source_uuid'] for frame in subset_frames],
        }
        properties = {}
        for name, column in values.items():
            units, description = ours.STRUCTURE_PROPERTIES[name]
            properties[name] = {'target': 'structure', 'values': column, 'description': description}
            if units is not None:
                properties[name]['units'] = units
        properties[ours.FORCE_MAGNITUDE] = {
            'target': 'atom',
            'values': np.concatenate(magnitude),
            'units': 'eV/Å',
            'description': 'norm of the DFT force on the atom',
        }
        settings = {
            'target': 'structure',
            'map': {
                'x': {'property': ours.ENERGY_PER_ATOM, 'scale': 'linear'},
                'y': {'property': ours.MAX_FORCE, 'scale': 'log' if max_force.min() > 0 else 'linear'},
                'color': {'property': ours.N_ATOMS},  # one subset per file
                'symbol': ours.SPLIT,
            },
        }
        chemiscope.write_input(
            str(directory / f'{prefix}-{subset}{ours.SUFFIX}'),
            structures=subset_frames,
            metadata={
                'name': f'{prefix}-{subset}',
                'description': f'Subset {subset} of {prefix}: {len(subset_frames)} structures, {natoms.sum()} atoms.',
            },
            properties=properties,
            environments=chemiscope.all_atomic_environments(subset_frames, ours.ENVIRONMENT_CUTOFF),
            settings=settings,
        )


def run() -> list[Row]:
    with temporary_profile():
        from aiida import orm
        from aiida.engine import run_get_node

        from aiida_mad.data.dataset import DatasetData
        from aiida_mad.dataset.frames import content_hash
        from aiida_mad.export.chemiscope import write_chemiscope_per_subset
        from aiida_mad.export.dataset import export_dataset
        from aiida_mad.workflows.dataset import DatasetWorkChain

        build_all = BUILD_COUNT >= COUNT
        groups = {GROUP: COUNT} if build_all else {GROUP: COUNT, BUILD_GROUP: BUILD_COUNT}
        start = time.perf_counter()
        uuids, stored = store_results(COUNT, groups)
        create_time = time.perf_counter() - start
        _check_layout(GROUP)
        print(f'  stored {COUNT} DFT results ({stored} nodes) in {create_time:.1f} s', flush=True)

        build_count = min(BUILD_COUNT, COUNT)
        start = time.perf_counter()
        _, node = run_get_node(
            DatasetWorkChain,
            name=orm.Str('bench'),
            groups=orm.List([GROUP if build_all else BUILD_GROUP]),
            seed=orm.Int(SEED),
            fractions=orm.List(list(FRACTIONS)),
            baseline=orm.Bool(False),
        )
        build_time = time.perf_counter() - start
        assert node.is_finished_ok, f'DatasetWorkChain<{node.pk}>: {node.exit_status} {node.exit_message}'
        built = node.outputs.dataset
        frames = result_frames(uuids)
        # the frames the work chain built are exactly those of the stored results
        assert built.n_frames == build_count and built.content_hash == content_hash(frames[:build_count])
        print(
            f'  DatasetWorkChain built {build_count} frames in {build_time:.1f} s ({build_count / build_time:.1f} '
            'frames/s)',
            flush=True,
        )
        if build_all:
            dataset, direct = built, ''
        else:
            start = time.perf_counter()
            dataset = DatasetData(
                frames, name='bench-all', seed=SEED, fractions=FRACTIONS, dft_uuids=[uuid for _, uuid in uuids]
            ).store()
            direct_time = time.perf_counter() - start
            direct = f'; the {COUNT}-frame dataset exported was stored with DatasetData() in {direct_time:.1f} s'
            print(f'  stored the {COUNT}-frame dataset directly with DatasetData() in {direct_time:.1f} s', flush=True)

        with tempfile.TemporaryDirectory(prefix='aiida-mad-bench-dataset-') as dirpath:
            folder = pathlib.Path(dirpath)
            start = time.perf_counter()
            export_dataset(dataset, folder / 'ours', archives=False, chemiscope=False)
            export_rate = COUNT / (time.perf_counter() - start)

            (folder / 'naive').mkdir()
            start = time.perf_counter()
            naive_count = naive_export(GROUP, folder / 'naive', NAIVE_COUNT)
            naive_time = time.perf_counter() - start
            naive_rate = naive_count / naive_time

            ours_sources, naive_sources = _sources(folder / 'ours'), _sources(folder / 'naive')
            for split, sources in naive_sources.items():
                if naive_count == COUNT:
                    assert sorted(sources) == sorted(ours_sources[split]), split
                else:
                    assert set(sources) <= set(ours_sources[split]), split
            print(
                f'  export: ours {export_rate:.0f} frames/s, naive load+convert {naive_rate:.1f} frames/s '
                f'({naive_count} frames in {naive_time:.1f} s), ratio {export_rate / naive_rate:.0f}x',
                flush=True,
            )

            frames = dataset.frames()
            start = time.perf_counter()
            write_chemiscope_per_subset(frames, folder / 'chemiscope-ours')
            chemiscope_rate = COUNT / (time.perf_counter() - start)
            (folder / 'chemiscope-package').mkdir()
            start = time.perf_counter()
            chemiscope_baseline(frames, folder / 'chemiscope-package')
            package_rate = COUNT / (time.perf_counter() - start)
            print(
                f'  chemiscope: ours {chemiscope_rate:.0f} frames/s, chemiscope.write_input {package_rate:.0f} '
                f'frames/s, ratio {chemiscope_rate / package_rate:.1f}x',
                flush=True,
            )

    setup = (
        f'setup: {COUNT} results stored in bulk in {create_time:.1f} s; DatasetWorkChain built {build_count} frames '
        f'in {build_time:.1f} s ({build_count / build_time:.1f} frames/s, nothing to compare with){direct}'
    )
    sample = '' if naive_count == COUNT else f' (naive: the first {naive_count})'
    return [
        Row(
            'dataset: export split files vs load+convert nodes',
            export_rate,
            naive_rate,
            'frames/s',
            True,
            f'{COUNT} frames{sample}; export_dataset(archives=False, chemiscope=False) vs load_node + outputs + '
            f'ase.io.write per split; target >= 5000 frames/s and >= 20x. {setup}',
        ),
        Row(
            'dataset: chemiscope per subset',
            chemiscope_rate,
            package_rate,
            'frames/s',
            True,
            f'{COUNT} frames (read from the dataset before both); write_chemiscope_per_subset vs '
            'chemiscope.write_input, same properties, environments and settings',
        ),
    ]
