"""The generator calcfunction ``generate_structures``: provenance, determinism, refusals, and the bulk-link path."""

from __future__ import annotations

import numpy as np
import pytest
from aiida import orm
from aiida.common.links import LinkType

from aiida_mad.calculations.generate import generate_structures, run_generate_structures, structure_from_ase
from aiida_mad.storage import store_seeds
from aiida_mad.structures.registry import GenerationError, generation_key, stream_rng
from aiida_mad.workflows.generate import GenerationProgress, StructureGeneration

pytestmark = pytest.mark.usefixtures('aiida_profile_clean')


@pytest.fixture
def bulk_seeds():
    """Store the bundled bulk crystals in mad/seeds/bulk and mad/structures/mc3d."""
    store_seeds(['bulk'])
    return orm.load_group('mad/structures/mc3d')


def structure_arrays(node: orm.StructureData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    atoms = node.get_ase()
    return atoms.numbers, atoms.positions, atoms.cell.array


def generated(group_label: str) -> list[orm.StructureData]:
    nodes = orm.load_group(group_label).nodes
    return sorted(nodes, key=lambda node: node.base.extras.get('mad_index'))


def test_every_structure_traces_back_to_parent_and_seed(bulk_seeds):
    generation = StructureGeneration('mc3d-rattled', count=12, seed=7, batch_size=5)
    progress = generation.run()

    assert progress.new_structures == 12
    assert len(progress.calculations) == 3
    parents = {node.uuid for node in bulk_seeds.nodes}
    for structure in generated('mad/structures/mc3d-rattled'):
        (link,) = structure.base.links.get_incoming(link_type=LinkType.CREATE).all()
        creator = link.node
        assert isinstance(creator, orm.CalcFunctionNode)
        assert creator.process_label == 'generate_structures'
        assert creator.is_finished_ok
        assert creator.process_class is generate_structures
        # structures__s0003 was made from parents__p0003.
        namespace, label = link.link_label.split('__')
        assert namespace == 'structures'
        parent = creator.base.links.get_incoming(link_label_filter=f'parents__p{label[1:]}').one().node
        parameters = creator.inputs.parameters.get_dict()
        extras = structure.base.extras.all
        assert extras['mad_parent'] == parent.uuid
        assert parent.uuid in parents
        assert parameters['seed'] == 7 == extras['mad_seed']
        assert parameters['items'][f'p{label[1:]}']['index'] == extras['mad_index']
        assert parameters['generator'] == 'rattle' == extras['mad_generator']
        assert extras['mad_subset'] == 'mc3d-rattled'
        assert extras['mad_generation_key'] == generation_key(parameters, parent.uuid, extras['mad_index'])
        assert len(structure.sites) == len(parent.sites)


def test_bulk_link_path_records_what_the_plain_calcfunction_records(bulk_seeds):
    generation = StructureGeneration('mc3d-random', count=4, seed=3)
    items = generation.next_batch(GenerationProgress())

    plain_outputs, plain_node = generate_structures.run_get_node(**generation.batch_inputs(items))
    bulk_outputs, bulk_node = run_generate_structures(**generation.batch_inputs(items))

    assert bulk_node.process_type == plain_node.process_type == 'aiida.calculations:mad.generate_structures'
    assert bulk_node.process_class is plain_node.process_class is generate_structures
    assert bulk_node.process_label == plain_node.process_label
    assert bulk_node.base.attributes.all == plain_node.base.attributes.all
    assert bulk_node.base.repository.list_object_names() == plain_node.base.repository.list_object_names()

    def links(node, direction):
        manager = getattr(node.base.links, f'get_{direction}')()
        return sorted(
            (link.link_label, link.link_type, link.node.uuid) for link in manager.all() if link.node.is_stored
        )

    assert links(bulk_node, 'incoming')[1:] == links(plain_node, 'incoming')[1:]  # all but the parameters Dict
    assert sorted(bulk_outputs['structures']) == sorted(plain_outputs['structures'])
    for label, plain in plain_outputs['structures'].items():
        bulk = bulk_outputs['structures'][label]
        for first, second in zip(structure_arrays(plain), structure_arrays(bulk), strict=True):
            np.testing.assert_array_equal(first, second)
        assert {k: v for k, v in bulk.base.extras.all.items() if k != '_aiida_hash'} == {
            k: v for k, v in plain.base.extras.all.items() if k != '_aiida_hash'
        }


@pytest.mark.parametrize('subset', ['mc3d-rattled', 'mc3d-cluster'])
def test_bulk_path_with_parents_by_pk_stores_what_the_plain_calcfunction_stores(bulk_seeds, subset):
    # The path of StructureGeneration.run_batch: parents linked by pk, outputs stored in bulk (store_new_nodes).
    generation = StructureGeneration(subset, count=5, seed=2)
    items = generation.next_batch(GenerationProgress())
    plain_outputs, plain_node = generate_structures.run_get_node(**generation.batch_inputs(items))
    bulk_outputs, bulk_node = run_generate_structures(**generation.batch_inputs(items, by_pk=True))

    assert bulk_node.base.caching.get_hash() == plain_node.base.caching.get_hash()
    assert orm.load_node(bulk_node.pk).base.caching.compute_hash() == bulk_node.base.caching.get_hash()

    def links(node, direction):
        manager = getattr(node.base.links, f'get_{direction}')()
        return sorted((link.link_label, link.link_type, link.node.uuid) for link in manager.all())

    assert links(bulk_node, 'incoming')[1:] == links(plain_node, 'incoming')[1:]  # all but the parameters Dict
    assert [(label, kind) for label, kind, _ in links(bulk_node, 'outgoing')] == [
        (label, kind) for label, kind, _ in links(plain_node, 'outgoing')
    ]
    assert sorted(bulk_outputs['structures']) == sorted(plain_outputs['structures'])
    for label, plain in plain_outputs['structures'].items():
        bulk = orm.load_node(bulk_outputs['structures'][label].pk)  # as stored
        assert bulk.base.attributes.all == plain.base.attributes.all
        assert bulk.base.extras.all == plain.base.extras.all  # the stored hash (_aiida_hash) included
        assert bulk.base.caching.compute_hash() == bulk.base.extras.get('_aiida_hash')
        assert (bulk.node_type, bulk.process_type, bulk.label, bulk.description, bulk.computer, bulk.user.pk) == (
            plain.node_type,
            plain.process_type,
            plain.label,
            plain.description,
            plain.computer,
            plain.user.pk,
        )


def test_structure_from_ase_makes_the_attributes_of_set_ase():
    from ase import Atoms
    from ase.build import bulk, molecule

    tagged = bulk('NaCl', 'rocksalt', a=5.6).repeat((2, 1, 1))
    tagged.set_tags([0, 1, 0, 2])
    heavy = bulk('Si', 'diamond', a=5.43).repeat((1, 1, 2))
    heavy.set_masses([28.0855, 30.0, 28.0855 + 1e-5, 30.0])  # a new kind Si1 for 30.0; within 1e-4: the same kind
    water = molecule('H2O')
    water.center(vacuum=3.0)
    water.pbc = (True, False, True)
    cases = [tagged, heavy, water, Atoms('Cu', cell=[2.0, 2.0, 2.0], pbc=True), bulk('Fe', 'bcc', a=2.87)]
    for atoms in cases:
        expected = orm.StructureData(ase=atoms).base.attributes.all
        assert structure_from_ase(atoms).base.attributes.all == expected
    assert [kind['name'] for kind in structure_from_ase(heavy).base.attributes.get('kinds')] == ['Si', 'Si1']


def test_same_seed_same_structures_other_seed_others(bulk_seeds):
    for group_label, seed in (('first', 11), ('again', 11), ('other', 12)):
        StructureGeneration('mc3d-rattled', count=6, seed=seed, batch_size=4, group_label=group_label).run()

    first, again, other = (generated(label) for label in ('first', 'again', 'other'))
    for one, two in zip(first, again, strict=True):
        assert one.uuid != two.uuid
        assert one.base.extras.get('mad_generation_key') == two.base.extras.get('mad_generation_key')
        for array_one, array_two in zip(structure_arrays(one), structure_arrays(two), strict=True):
            np.testing.assert_array_equal(array_one, array_two)
    differing = [
        not np.array_equal(structure_arrays(one)[1], structure_arrays(two)[1])
        for one, two in zip(first, other, strict=True)
    ]
    assert all(differing)


def test_batch_size_does_not_change_the_structures(bulk_seeds):
    StructureGeneration('mc3d-cluster', count=5, seed=4, batch_size=5, group_label='one-batch').run()
    StructureGeneration('mc3d-cluster', count=5, seed=4, batch_size=2, group_label='three-batches').run()

    for one, two in zip(generated('one-batch'), generated('three-batches'), strict=True):
        for array_one, array_two in zip(structure_arrays(one), structure_arrays(two), strict=True):
            np.testing.assert_array_equal(array_one, array_two)


def test_refused_items_are_recorded_not_stored(bulk_seeds):
    # Nothing passes a close-contact threshold of twice the sum of covalent radii: every item is refused.
    generation = StructureGeneration('mc3d-rattled', count=5, seed=1, min_distance_factor=2.0, max_attempts=2)
    progress = generation.run()

    assert progress.new_structures == 0
    assert progress.refused == generation.refusal_limit == 10
    assert 'closer than 2 x' in progress.examples[0]
    assert not orm.QueryBuilder().append(orm.Group, filters={'label': 'mad/structures/mc3d-rattled'}).count()
    reports = orm.QueryBuilder().append(orm.Dict, filters={'extras.mad_generator': 'rattle'}).all(flat=True)
    records = [record for report in reports for record in report['items'].values()]
    assert len(records) == 10
    assert all(record['attempts'] == 2 and len(record['reasons']) == 2 for record in records)

    # A second run skips the refused items instead of drawing them again: no new process.
    again = StructureGeneration('mc3d-rattled', count=5, seed=1, min_distance_factor=2.0, max_attempts=2)
    progress = again.run()
    assert progress.refused_before == 10
    assert progress.calculations == []


def test_keys_depend_on_what_changes_the_structures(bulk_seeds):
    settings = StructureGeneration('mc3d-rattled', count=1, seed=5).settings
    key = generation_key(settings, 'some-uuid', 3)
    assert key == generation_key({**settings, 'max_attempts': 99}, 'some-uuid', 3)
    assert key != generation_key({**settings, 'seed': 6}, 'some-uuid', 3)
    assert key != generation_key(settings, 'some-uuid', 4)
    assert key != generation_key(settings, 'other-uuid', 3)
    assert key != generation_key({**settings, 'parameters': {'scale': 0.1}}, 'some-uuid', 3)


def test_stream_rng_is_reproducible_and_streams_differ():
    assert stream_rng(1, 2, 1, 0).random() == stream_rng(1, 2, 1, 0).random()
    assert stream_rng(1, 2, 1, 0).random() != stream_rng(1, 2, 1, 1).random()
    assert stream_rng(1, 2, 0).random() != stream_rng(2, 2, 0).random()


def test_bad_generation_input_names_the_problem(bulk_seeds):
    with pytest.raises(GenerationError, match='Xx'):
        StructureGeneration('mc3d-random', count=1, element_pool=['Si', 'Xx'])
    with pytest.raises(GenerationError, match='count'):
        StructureGeneration('mc3d-rattled', count=0)
    with pytest.raises(GenerationError, match='mc3d'):
        StructureGeneration('mc3d', count=1)
    with pytest.raises(GenerationError, match='no/such/group'):
        StructureGeneration('mc3d-rattled', count=1, parent_groups=['no/such/group'])
    with pytest.raises(GenerationError, match='wiggle'):
        StructureGeneration('mc3d-rattled', count=1, parameters={'wiggle': 1})
    with pytest.raises(GenerationError, match='fewer than two atoms'):
        StructureGeneration('mc3d-rattled', count=1, parents=[n for n in bulk_seeds.nodes if len(n.sites) == 1])
