"""``DatasetWorkChain`` (``mad.dataset``) on real labelled data: selection, filters, baseline, splits, provenance."""

from __future__ import annotations

import numpy as np
import pytest
from aiida import orm
from aiida.common.links import LinkType
from aiida.engine import run_get_node

from aiida_mad.calculations import dataset as calculation
from aiida_mad.calculations.bulk import query_rows
from aiida_mad.calculations.dataset import build_dataset
from aiida_mad.data.dataset import DatasetData
from aiida_mad.dataset.frames import FrameError, content_hash, make_frame, sorted_frames
from aiida_mad.dataset.splits import assign_split
from aiida_mad.workflows.dataset import DatasetSelectionError, DatasetWorkChain, select_results
from aiida_mad.workflows.dft import result_level_of_theory
from tests.dataset.synthetic import synthetic_frames
from tests.labelled import DFT_GROUPS, MIX_GROUP, OTHER_LEVEL, SEED_GROUP

ALL_GROUPS = list(DFT_GROUPS.values())

_BUILT: dict[str, str] = {}


def build(name: str, groups, **inputs):
    """Run ``mad.dataset`` and return its node."""
    builder = DatasetWorkChain.get_builder()
    builder.name = orm.Str(name)
    builder.groups = orm.List(list(groups))
    for key, value in inputs.items():
        builder[key] = value
    _, node = run_get_node(builder)
    return node


@pytest.fixture
def dataset(labelled) -> DatasetData:
    """Return the dataset of every test group (seed 5), built once."""
    if 'all' in _BUILT:
        try:
            return orm.load_node(_BUILT['all'])
        except Exception:
            pass
    node = build(f'all-{len(_BUILT)}-{labelled.isolated_atoms[:8]}', ALL_GROUPS, seed=orm.Int(5))
    assert node.is_finished_ok, node.exit_message
    _BUILT['all'] = node.outputs.dataset.uuid
    return node.outputs.dataset


def stored_count() -> int:
    return orm.QueryBuilder().append(orm.Node).count()


def test_frames_hold_the_dft_outputs(dataset, labelled):
    frames = {frame.info['source_uuid']: frame for frame in dataset.frames()}
    used = [node for subset in labelled.used for node in labelled.nodes(subset)]
    assert len(frames) == len(used) == dataset.n_frames == 4
    atomic = orm.load_node(labelled.isolated_atoms).outputs.energies.get_dict()
    for node in used:
        frame = frames[node.inputs.structure.uuid]
        structure = node.outputs.structure.get_ase()
        assert frame.info['energy'] == node.outputs.energy.value
        np.testing.assert_array_equal(frame.arrays['forces'], node.outputs.forces.get_array('forces'))
        np.testing.assert_array_equal(frame.positions, structure.positions)
        np.testing.assert_array_equal(frame.cell.array, structure.cell.array)
        assert frame.info['subset'] == node.outputs.properties['subset']
        assert frame.info['fingerprint'] == node.outputs.properties['fingerprint'] == dataset.fingerprint
        # The baseline: E - sum of the isolated-atom energies of the same fingerprint.
        expected = node.outputs.energy.value - sum(atomic[symbol] for symbol in structure.get_chemical_symbols())
        assert frame.info['energy_baseline_subtracted'] == pytest.approx(expected, abs=1e-9)
        if 'stress' in node.outputs:
            np.testing.assert_array_equal(frame.info['stress'], node.outputs.stress.get_array('stress'))
        else:
            assert frame.info['subset'] == 'shiftml-molfrags'
            assert 'stress' not in frame.info
        # The split depends only on the structure uuid and the seed.
        assert frame.info['split'] == assign_split(node.inputs.structure.uuid, 5)
    assert dataset.content_hash == content_hash(frames.values())
    assert dataset.atomic_energies == atomic
    assert dataset.elements == ['H', 'Si']


def test_selection_record_counts_exclusions_per_subset(dataset, labelled):
    record = dataset.selection['subsets']
    assert record['mc3d']['used'] == 1
    assert record['mc3d']['duplicate'] == 1
    assert record['mc3d']['failed'] == 1
    failed = orm.load_node(labelled.failed)
    assert record['mc3d']['exit_statuses'] == {str(failed.exit_status): 1}
    assert record['mc3d-rattled']['used'] == 2
    assert record['shiftml-molfrags']['used'] == 1
    splits = {frame.info['source_uuid']: (frame.info['subset'], frame.info['split']) for frame in dataset.frames()}
    expected = {subset: dict.fromkeys(('train', 'val', 'test'), 0) for subset in labelled.used}
    for subset, split in splits.values():
        expected[subset][split] += 1
    assert dataset.counts == expected
    assert {subset: sum(counts.values()) for subset, counts in dataset.counts.items()} == {
        subset: record[subset]['used'] for subset in labelled.used
    }


def test_dataset_is_linked_to_every_result_it_used(dataset, labelled):
    creator = dataset.creator
    assert creator.process_label == 'build_dataset'
    assert creator.process_type == 'aiida.calculations:mad.build_dataset'  # loads back however the code moves
    assert creator.process_class is build_dataset
    inputs = {link.node.pk for link in creator.base.links.get_incoming(link_type=LinkType.INPUT_CALC).all()}
    for subset in labelled.used:
        for node in labelled.nodes(subset):
            for label in ('energy', 'forces', 'structure'):
                assert node.outputs[label].pk in inputs, (subset, label)
    assert orm.load_node(labelled.isolated_atoms).outputs.energies.pk in inputs
    duplicate = orm.load_node(labelled.duplicate)
    assert duplicate.outputs.energy.pk not in inputs
    (workchain,) = [link.node for link in creator.base.links.get_incoming(link_type=LinkType.CALL_CALC).all()]
    assert workchain.process_type == 'aiida.workflows:mad.dataset' and workchain.process_class is DatasetWorkChain
    group = orm.load_group(f'mad/datasets/{dataset.name}')
    assert dataset.pk in {node.pk for node in group.nodes}


def test_bulk_build_is_the_plain_calcfunction(dataset):
    # The work chain gives the per-frame inputs by pk and writes their links in bulk; the plain calcfunction given the
    # same nodes makes the same dataset (same repository bytes) with the same input links and the same process hash.
    creator = dataset.creator
    links = creator.base.links.get_incoming(link_type=LinkType.INPUT_CALC).all()
    inputs: dict = {}
    for link in links:
        namespace, _, label = link.link_label.partition('__')
        if label:
            inputs.setdefault(namespace, {})[label] = link.node
        else:
            inputs[namespace] = link.node
    assert set(inputs) == {'parameters', 'structures', 'energies', 'forces', 'stresses', 'baselines'}
    assert len(inputs['structures']) == len(inputs['energies']) == len(inputs['forces']) == dataset.n_frames
    _, plain = build_dataset.run_get_node(**inputs)
    built = plain.outputs.dataset
    assert built.content_hash == dataset.content_hash
    assert built.base.repository.hash() == dataset.base.repository.hash()
    assert built.base.attributes.all == dataset.base.attributes.all

    def triples(node):
        return sorted(
            (link.link_label, link.link_type.value, link.node.pk)
            for link in node.base.links.get_incoming(link_type=LinkType.INPUT_CALC).all()
        )

    assert triples(plain) == triples(creator)
    assert plain.base.caching.get_hash() == creator.base.caching.get_hash() == creator.base.caching.compute_hash()


def repository_files(node) -> dict[str, bytes]:
    """Return every file of a dataset's repository (shards and index) by path."""
    names = [*node.shard_names(), 'index.npz']
    assert sorted(node.base.repository.list_object_names('shards')) == sorted(name.split('/')[1] for name in names[:-1])
    return {name: node.base.repository.get_object_content(name, 'rb') for name in names}


def reference_dataset(dataset, labelled, frames_per_shard: int) -> DatasetData:
    """Return the dataset of the ``dataset`` fixture made the plain way: each node loaded, all frames at once."""
    atomic = orm.load_node(labelled.isolated_atoms).outputs.energies.get_dict()
    frames, dft_uuids = [], []
    for node in (node for subset in labelled.used for node in labelled.nodes(subset)):
        atoms = node.outputs.structure.get_ase()
        energy = node.outputs.energy.value
        source = node.inputs.structure.uuid
        frames.append(
            make_frame(
                atoms.numbers,
                atoms.positions,
                cell=atoms.cell.array,
                pbc=atoms.pbc,
                energy=energy,
                energy_baseline_subtracted=energy - sum(atomic[symbol] for symbol in atoms.get_chemical_symbols()),
                forces=node.outputs.forces.get_array('forces'),
                stress=node.outputs.stress.get_array('stress') if 'stress' in node.outputs else None,
                subset=node.outputs.properties['subset'],
                split=assign_split(source, 5),
                source_uuid=source,
                fingerprint=node.outputs.properties['fingerprint'],
            )
        )
        dft_uuids.append(node.uuid)
    return DatasetData(
        frames,
        name=dataset.name,
        seed=5,
        fractions=dataset.base.attributes.get('fractions'),
        dft_uuids=dft_uuids,
        selection=dataset.selection,
        atomic_energies=atomic,
        frames_per_shard=frames_per_shard,
    )


def test_build_is_the_dataset_of_the_nodes_byte_for_byte(dataset, labelled, monkeypatch):
    """The streamed build writes the files and attributes of the plain constructor given every frame at once.

    Also read and written a block of two frames at a time into shards of three (several blocks and shards), by the
    plain calcfunction given the same inputs.
    """
    reference = reference_dataset(dataset, labelled, frames_per_shard=10_000)
    assert repository_files(dataset) == repository_files(reference)
    assert dataset.base.attributes.all == reference.base.attributes.all
    assert dataset.content_hash == content_hash(reference.frames())

    creator = dataset.creator
    inputs: dict = {}
    for link in creator.base.links.get_incoming(link_type=LinkType.INPUT_CALC).all():
        namespace, _, label = link.link_label.partition('__')
        inputs.setdefault(namespace, {})[label] = link.node
    parameters = creator.inputs.parameters.get_dict()
    inputs['parameters'] = orm.Dict({**parameters, 'frames_per_shard': 3})
    monkeypatch.setattr(calculation, 'QUERY_CHUNK_SIZE', 2)
    _, node = build_dataset.run_get_node(**inputs)
    blocks = node.outputs.dataset
    assert blocks.shard_names() == ['shards/frames-00000.extxyz.gz', 'shards/frames-00001.extxyz.gz']
    reference = reference_dataset(dataset, labelled, frames_per_shard=3)
    assert repository_files(blocks) == repository_files(reference)
    assert blocks.base.attributes.all == reference.base.attributes.all
    assert blocks.content_hash == dataset.content_hash


def test_links_are_those_of_the_selection(dataset, labelled):
    """Every input link of ``build_dataset``, derived from the work chains alone: labels in source-uuid order."""
    creator = dataset.creator
    used = sorted(
        (node for subset in labelled.used for node in labelled.nodes(subset)), key=lambda n: n.inputs.structure.uuid
    )
    expected = {('parameters', creator.inputs.parameters.pk)}
    expected.add(('baselines__t000', orm.load_node(labelled.isolated_atoms).outputs.energies.pk))
    frames = {}
    for index, node in enumerate(used):
        label = f'f{index:07d}'
        frames[label] = {
            'source_uuid': node.inputs.structure.uuid,
            'dft_uuid': node.uuid,
            'subset': node.outputs.properties['subset'],
        }
        for output, namespace in [('structure', 'structures'), ('energy', 'energies'), ('forces', 'forces')]:
            expected.add((f'{namespace}__{label}', node.outputs[output].pk))
        if 'stress' in node.outputs:
            expected.add((f'stresses__{label}', node.outputs.stress.pk))
    links = creator.base.links.get_incoming(link_type=LinkType.INPUT_CALC).all()
    assert {(link.link_label, link.node.pk) for link in links} == expected
    assert len(links) == len(expected) == 2 + 4 * len(used) - 1  # parameters, baselines; one 0D frame: no stress
    assert creator.inputs.parameters['frames'] == frames
    assert [(link.link_label, link.node.pk) for link in creator.base.links.get_outgoing().all()] == [
        ('dataset', dataset.pk)
    ]


def test_missing_per_frame_input_is_named(dataset):
    creator = dataset.creator
    inputs: dict = {'parameters': creator.inputs.parameters}
    for link in creator.base.links.get_incoming(link_type=LinkType.INPUT_CALC).all():
        namespace, _, label = link.link_label.partition('__')
        if label and link.link_label != 'energies__f0000002':
            inputs.setdefault(namespace, {})[label] = link.node
    with pytest.raises(ValueError, match=r'frame f0000002: no input energies__f0000002 \(1 per-frame inputs missing\)'):
        build_dataset.run_get_node(**inputs)


def test_query_rows_are_the_values_of_iterall(dataset):
    query = orm.QueryBuilder().append(DatasetData, filters={'id': dataset.pk}, tag='d', project=['uuid', 'ctime'])
    query.append(
        orm.CalcFunctionNode,
        with_outgoing='d',
        tag='c',
        project=['id', 'attributes.process_state', 'attributes', 'extras'],
        edge_project=['label', 'type'],
    )
    rows = list(query_rows(query))
    assert rows == [tuple(row) for row in query.all()]
    assert isinstance(rows[0][0], str) and rows[0][0] == dataset.uuid and rows[0][-2] == 'dataset'
    assert list(query_rows(orm.QueryBuilder().append(DatasetData, filters={'id': -1}, project='id'))) == []


def test_blocks_must_come_in_canonical_order():
    frames = sorted_frames(synthetic_frames(9))
    whole = DatasetData(frames, name='whole', seed=0, frames_per_shard=4)
    blocks = DatasetData.from_blocks(
        [(frames[:2], None), (frames[2:7], None), (frames[7:], None)], name='whole', seed=0, frames_per_shard=4
    )
    assert repository_files(blocks) == repository_files(whole)
    assert blocks.base.attributes.all == whole.base.attributes.all
    with pytest.raises(FrameError, match=r'frame 2 \(.*\) comes after \(.*\): not in canonical order'):
        DatasetData.from_blocks([(frames[1:3], None), (frames[:1], None)], name='bad', seed=0)
    frames[5].info['source_uuid'] = frames[1].info['source_uuid']
    with pytest.raises(FrameError, match=f'frame 5 has the same source_uuid {frames[1].info["source_uuid"]}'):
        DatasetData.from_blocks([(frames, None)], name='bad', seed=0)
    with pytest.raises(ValueError, match='dataset empty: no frames'):
        DatasetData.from_blocks([], name='empty', seed=0)


def test_outlier_thresholds_per_subset(labelled):
    node = build('outliers', ALL_GROUPS, outlier_max_force=orm.Dict({'mc3d-rattled': 1e-6}))
    assert node.is_finished_ok, node.exit_message
    dataset = node.outputs.dataset
    assert dataset.selection['subsets']['mc3d-rattled'] == {
        'used': 0,
        'outlier': 2,
        'failed': 0,
        'not_finished': 0,
        'other_fingerprint': 0,
        'duplicate': 0,
        'exit_statuses': {},
    }
    assert 'mc3d-rattled' not in dataset.counts
    reports = [entry.message for entry in orm.Log.collection.get_logs_for(node)]
    assert any('mc3d-rattled: 0 frames; excluded 2 outliers (max |F| > 1e-06 eV/Å)' in line for line in reports)


def test_mixed_fingerprints_refused_listing_them(labelled):
    other = orm.load_node(labelled.other_level).outputs.properties['fingerprint']
    fast = orm.load_node(labelled.used['mc3d'][0]).outputs.properties['fingerprint']
    with pytest.raises(DatasetSelectionError, match='mix 2 levels of theory') as info:
        select_results([MIX_GROUP])
    assert other in str(info.value) and fast in str(info.value)
    before = stored_count()
    node = build('mixed', [MIX_GROUP])
    assert node.exit_status == DatasetWorkChain.exit_codes.ERROR_MIXED_FINGERPRINTS.status
    assert 'outputs' not in dir(node) or 'dataset' not in node.outputs
    # Only the work chain node and its inputs were stored: no frame, no dataset, no calcfunction.
    assert stored_count() - before == 1 + len(node.base.links.get_incoming().all())
    # Choosing one is allowed; the other is reported as excluded.
    selection = select_results([MIX_GROUP], fingerprint=fast[:12])
    assert selection.record['mc3d']['other_fingerprint'] == 1
    assert [result.uuid for result in selection.used] == [labelled.used['mc3d'][0]]


def test_no_baseline_at_that_fingerprint_refused(labelled):
    other = orm.load_node(labelled.other_level).outputs.properties['fingerprint']
    with pytest.raises(DatasetSelectionError, match=r'no isolated-atom energy at fingerprint .* for Si') as info:
        select_results([MIX_GROUP], fingerprint=other)
    assert info.value.exit_code == 'ERROR_MISSING_BASELINE'
    code = orm.load_node(labelled.other_level).base.links.get_incoming(link_label_filter='scf__pw__code').one().node
    from aiida_mad.pseudos import offline_family_label

    assert f'`aiida-mad dft isolated-atoms Si -F {offline_family_label()} ' in str(info.value)
    assert f'--code {code.full_label} --wait`' in str(info.value) and 'match no protocol' in str(info.value)
    node = build('no-baseline', [MIX_GROUP], fingerprint=orm.Str(other), baseline=orm.Bool(False))
    assert node.is_finished_ok, node.exit_message
    (frame,) = node.outputs.dataset.frames()
    assert 'energy_baseline_subtracted' not in frame.info
    assert node.outputs.dataset.atomic_energies == {}
    # The other level differs from the `fast` one by its k-point distance only, and that alone changes the fingerprint.
    other_theory = result_level_of_theory(orm.load_node(labelled.other_level))
    fast_theory = result_level_of_theory(orm.load_node(labelled.used['mc3d'][0]))
    assert {key for key in fast_theory if other_theory[key] != fast_theory[key]} == {'kpoints_distance'}
    assert other_theory['kpoints_distance'] == OTHER_LEVEL['kpoints_distance'] != fast_theory['kpoints_distance']


def test_structure_groups_select_the_runs_of_their_structures(labelled):
    selection = select_results(
        [SEED_GROUP], fingerprint=orm.load_node(labelled.duplicate).outputs.properties['fingerprint']
    )
    assert [result.uuid for result in selection.used] == [labelled.used['mc3d'][0]]
    assert selection.record['mc3d']['duplicate'] == 1


def test_adding_data_keeps_the_splits_of_old_frames(dataset, labelled):
    node = build('fewer', [DFT_GROUPS['mc3d'], DFT_GROUPS['mc3d-rattled']], seed=orm.Int(5))
    smaller = {frame.info['source_uuid']: frame.info['split'] for frame in node.outputs.dataset.frames()}
    larger = {frame.info['source_uuid']: frame.info['split'] for frame in dataset.frames()}
    assert len(smaller) == 3 and len(larger) == 4
    assert all(larger[uuid] == split for uuid, split in smaller.items())


@pytest.mark.parametrize(
    ('groups', 'inputs', 'exit_code', 'message'),
    [
        (['no/such/group'], {}, 'ERROR_UNKNOWN_GROUP', 'A group of `groups` does not exist: unknown group(s): no/such'),
        (
            [SEED_GROUP + '-empty'],
            {},
            'ERROR_EMPTY_SELECTION',
            'The groups give no result that can be a frame: the groups test-dataset/structures/mc3d-empty hold no',
        ),
    ],
)
def test_bad_selection_exit_codes(labelled, groups, inputs, exit_code, message):
    orm.Group.collection.get_or_create(SEED_GROUP + '-empty')
    node = build('bad', groups, **inputs)
    assert node.exit_status == DatasetWorkChain.exit_codes[exit_code].status
    assert message in node.exit_message


def test_input_errors_are_2xx_and_say_what_is_wrong():
    # Everything that stops this work chain comes from its inputs: aiida-core's range for input errors is 200-299.
    mine = {label: code for label, code in DatasetWorkChain.spec().exit_codes.items() if code.status >= 200}
    assert sorted(code.status for code in mine.values()) == list(range(201, 209))
    for label, code in mine.items():
        assert code.message.endswith(': {message}') and len(code.message) > len(': {message}') + 10, label


def test_existing_name_refused(dataset):
    node = build(dataset.name, ALL_GROUPS)
    assert node.exit_status == DatasetWorkChain.exit_codes.ERROR_DATASET_EXISTS.status


@pytest.mark.parametrize(
    ('name', 'fractions', 'message'),
    [('bad name', [0.8, 0.1, 0.1], 'invalid dataset name'), ('ok', [0.8, 0.1, 0.2], 'sum to 1')],
)
def test_invalid_inputs_refused_before_running(name, fractions, message):
    with pytest.raises(ValueError, match=message):
        build(name, ALL_GROUPS, fractions=orm.List(fractions))
