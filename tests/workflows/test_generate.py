"""``GenerateWorkChain`` (``mad.generate``): batches of the generator calcfunction below one work chain."""

from __future__ import annotations

import pytest
from aiida import orm
from aiida.engine import run_get_node
from aiida.plugins import WorkflowFactory

from aiida_mad.storage import store_seeds

pytestmark = pytest.mark.usefixtures('aiida_profile_clean')

GenerateWorkChain = WorkflowFactory('mad.generate')


@pytest.fixture
def bulk_seeds():
    store_seeds(['bulk'])
    return orm.load_group('mad/structures/mc3d')


def node_count() -> int:
    return orm.QueryBuilder().append(orm.Node).count()


def test_entry_point_loads_the_work_chain():
    from aiida_mad.workflows import generate

    assert GenerateWorkChain is generate.GenerateWorkChain


def test_work_chain_fills_the_group_in_batches(bulk_seeds):
    inputs = {'subset': orm.Str('mc3d-rattled'), 'count': orm.Int(7), 'seed': orm.Int(5), 'batch_size': 3}
    _, node = run_get_node(GenerateWorkChain, **inputs)

    assert node.is_finished_ok, node.exit_message
    group = orm.load_group('mad/structures/mc3d-rattled')
    assert group.count() == 7
    calls = node.called
    assert len(calls) == 3
    assert {call.process_label for call in calls} == {'generate_structures'}
    for structure in group.nodes:
        creator = structure.creator
        assert creator.caller.pk == node.pk
        assert creator.inputs.parameters['seed'] == 5
        assert structure.base.extras.get('mad_parent') in {parent.uuid for parent in bulk_seeds.nodes}
    assert node.base.extras.get('mad_new_structures') == 7

    # The same inputs again: nothing new is generated, no calcfunction is called.
    _, again = run_get_node(GenerateWorkChain, **inputs)
    assert again.is_finished_ok
    assert again.called == []
    assert group.count() == 7
    assert again.base.extras.get('mad_existing') == 7


def test_work_chain_with_parent_structures_and_parameters(bulk_seeds):
    parents = {f'parent_{node.pk}': node for node in bulk_seeds.nodes if node.get_formula() in ('NaCl', 'MgO')}
    _, node = run_get_node(
        GenerateWorkChain,
        subset=orm.Str('mc3d-cluster'),
        structures=parents,
        count=orm.Int(4),
        parameters=orm.Dict({'min_atoms': 3, 'max_atoms': 4}),
        group_label=orm.Str('my/clusters'),
    )

    assert node.is_finished_ok, node.exit_message
    clusters = orm.load_group('my/clusters').nodes
    assert len(clusters) == 4
    assert all(3 <= len(cluster.sites) <= 4 and not any(cluster.pbc) for cluster in clusters)
    assert {cluster.base.extras.get('mad_parent') for cluster in clusters} <= {p.uuid for p in parents.values()}


def test_bad_inputs_fail_before_anything_is_stored(bulk_seeds):
    orm.Group(label='empty').store()
    before = node_count()
    for inputs, message in (
        ({'subset': orm.Str('mc3d-rattled'), 'count': orm.Int(2), 'parent_groups': orm.List(['empty'])}, 'empty'),
        ({'subset': orm.Str('mc3d-rattled'), 'count': orm.Int(0)}, 'count'),
        ({'subset': orm.Str('mc3d-random'), 'count': orm.Int(1), 'element_pool': orm.List(['Si', 'Qq'])}, 'Qq'),
        ({'subset': orm.Str('mc3d'), 'count': orm.Int(1)}, 'mc3d'),
    ):
        with pytest.raises(ValueError, match=message):
            run_get_node(GenerateWorkChain, **inputs)
    assert node_count() == before


def test_too_many_refusals_exit_code(bulk_seeds):
    _, node = run_get_node(
        GenerateWorkChain,
        subset=orm.Str('mc3d-rattled'),
        count=orm.Int(5),
        min_distance_factor=orm.Float(2.0),
        max_attempts=orm.Int(1),
    )

    assert node.exit_status == GenerateWorkChain.exit_codes.ERROR_TOO_MANY_REFUSED.status
    assert '0 of 5' in node.exit_message


def generated_in_fresh_storage(profile) -> list[tuple[str, str, list]]:
    """Reset the storage, store the bundled bulk seeds (new UUIDs) and generate; return what each item became."""
    profile.reset_storage()
    store_seeds(['bulk'])
    _, node = run_get_node(
        GenerateWorkChain, subset=orm.Str('mc3d-rattled'), count=orm.Int(4), seed=orm.Int(1), batch_size=4
    )
    assert node.is_finished_ok, node.exit_message
    items = []
    for structure in orm.load_group('mad/structures/mc3d-rattled').nodes:
        parent = orm.load_node(structure.base.extras.get('mad_parent'))
        items.append((structure.base.extras.get('mad_index'), parent.base.extras.get('mad_seed_name'), structure.sites))
    return sorted(
        (index, name, [(site.kind_name, list(site.position)) for site in sites]) for index, name, sites in items
    )


def test_same_seed_same_structures_in_a_fresh_profile(aiida_profile):
    """The parents are ordered by their seed names, not by UUIDs, so ``--seed`` reproduces across profiles."""
    first = generated_in_fresh_storage(aiida_profile)
    second = generated_in_fresh_storage(aiida_profile)
    assert len(first) == 4
    assert first == second
