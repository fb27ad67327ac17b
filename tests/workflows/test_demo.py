"""The stages of :mod:`aiida_mad.demo` that need no pw.x: its plan, its concurrency and its structures stage."""

import pytest
from aiida import orm

from aiida_mad.constants import ALL_SUBSETS, GENERATED_SUBSETS, IMPORTED_SUBSETS
from aiida_mad.demo import (
    DEMO_ELEMENTS,
    GENERATION,
    IMPORTED_SEEDS,
    STAGES,
    STRUCTURES_GROUP,
    Demo,
    DemoError,
    demo_concurrency,
    subset_group_label,
)


def test_every_subset_has_a_plan():
    assert sorted(GENERATION) == sorted(GENERATED_SUBSETS)
    assert sorted(IMPORTED_SEEDS) == sorted(IMPORTED_SUBSETS)


def test_concurrency_never_exceeds_the_cores(pw_code):
    cores = pw_code.computer.get_default_mpiprocs_per_machine()
    assert cores >= 1
    for asked in (None, 1, 2, cores, cores + 3):
        ranks, concurrent = demo_concurrency(pw_code, asked)
        assert 1 <= ranks <= max(asked or 1, 1)
        assert ranks * concurrent <= cores
    assert demo_concurrency(pw_code) == (1, cores)


def test_unknown_stage_refused(pw_code, offline_family, tmp_path):
    with pytest.raises(DemoError, match=r"unknown stage 'everything'.*structures, labelling"):
        Demo(pw_code, offline_family.label, tmp_path).run(until='everything')


@pytest.mark.usefixtures('aiida_profile_clean')
def test_structures_stage_is_idempotent_and_uses_the_family(pw_code, offline_family, tmp_path):
    lines = []
    demo = Demo(pw_code, offline_family.label, tmp_path / 'demo', report=lines.append)
    result = demo.run(until='structures')
    assert result.stages == ['structures']
    assert lines[0].startswith('[1/1] structures: ') and lines[-1].startswith('[1/1] structures: ')
    everything = orm.load_group(label=STRUCTURES_GROUP)
    assert result.structures == everything.count() >= len(ALL_SUBSETS)
    for subset in ALL_SUBSETS:
        nodes = orm.load_group(label=subset_group_label(subset)).nodes
        assert nodes, subset
        assert {node.base.extras.get('mad_subset') for node in nodes} == {subset}
    elements = {symbol for node in everything.nodes for symbol in node.get_symbols_set()}
    assert elements <= set(DEMO_ELEMENTS) & set(offline_family.elements)
    assert not (tmp_path / 'demo').exists()

    nodes = orm.QueryBuilder().append(orm.Node).count()
    again = []
    Demo(pw_code, offline_family.label, tmp_path / 'demo', report=again.append).run(until='structures')
    assert orm.QueryBuilder().append(orm.Node).count() == nodes
    assert '0 seeds and 0 generated structures stored now' in again[-1]
    assert STAGES[0] == 'structures'
