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


def marked_work_chain(state, extra: str, value: str, exit_status: int | None = None) -> orm.WorkflowNode:
    """Store a ``TrainWorkChain`` node in ``state`` marked as the demo marks what it submits."""
    from aiida_mad.workflows.train import TrainWorkChain

    node = orm.WorkflowNode()
    node.set_process_type(TrainWorkChain.build_process_type())
    node.set_process_state(state)
    if exit_status is not None:
        node.set_exit_status(exit_status)
    node.store()
    node.base.extras.set(extra, value)
    return node


@pytest.mark.usefixtures('aiida_profile_clean')
def test_run_once_takes_a_finished_work_chain_and_submits_nothing(pw_code, offline_family, tmp_path):
    from plumpy import ProcessState

    from aiida_mad.workflows.train import TrainWorkChain

    failed = marked_work_chain(ProcessState.FINISHED, 'mad_demo_test', 'a', exit_status=300)
    done = marked_work_chain(ProcessState.FINISHED, 'marked', 'a', exit_status=0)
    done.base.extras.set('mad_demo_test', 'a')
    marked_work_chain(ProcessState.FINISHED, 'mad_demo_test', 'other', exit_status=0)
    lines = []
    demo = Demo(pw_code, offline_family.label, tmp_path, interval=0.1, report=lines.append)

    def builder():
        raise AssertionError('submitted although one finished')

    nodes = orm.QueryBuilder().append(orm.Node).count()
    node, finished = demo._run_once('training', TrainWorkChain, 'mad_demo_test', 'a', builder)
    assert (node.pk, finished) == (done.pk, True)
    assert failed.pk != node.pk
    assert orm.QueryBuilder().append(orm.Node).count() == nodes
    assert lines == ['  TrainWorkChain finished, finished (0 s)']


@pytest.mark.usefixtures('aiida_profile_clean')
def test_run_once_tries_a_failed_one_again_and_names_what_fails(pw_code, offline_family, tmp_path):
    from plumpy import ProcessState

    from aiida_mad.workflows.train import TrainWorkChain

    marked_work_chain(ProcessState.FINISHED, 'mad_demo_test', 'a', exit_status=300)
    demo = Demo(pw_code, offline_family.label, tmp_path, report=lambda line: None)
    tried = []

    def builder():
        tried.append(True)
        raise ValueError('no such protocol tiny-x')

    with pytest.raises(DemoError, match=r'^training: no such protocol tiny-x$'):
        demo._run_once('training', TrainWorkChain, 'mad_demo_test', 'a', builder)
    assert tried == [True]


@pytest.mark.usefixtures('aiida_profile_clean')
def test_run_once_waits_for_a_running_one_and_gives_up_after_the_timeout(pw_code, offline_family, tmp_path):
    from plumpy import ProcessState

    from aiida_mad.workflows.train import TrainWorkChain

    running = marked_work_chain(ProcessState.RUNNING, 'mad_demo_test', 'a')
    lines = []
    demo = Demo(pw_code, offline_family.label, tmp_path, timeout=0.2, interval=0.1, report=lines.append)

    def builder():
        raise AssertionError('submitted although one runs')

    with pytest.raises(DemoError, match=rf'^evaluate: still running after 0 s \({running.pk}\); they go on'):
        demo._run_once('evaluate', TrainWorkChain, 'mad_demo_test', 'a', builder)
    assert lines[0].startswith('  TrainWorkChain running (')


@pytest.mark.usefixtures('aiida_profile_clean')
def test_chosen_seed_trains_on_every_element():
    """The dataset seed puts every element in the train split (the model is evaluated on the others)."""
    from ase import Atoms
    from ase.build import bulk, molecule

    from aiida_mad.dataset.splits import assign_split
    from aiida_mad.demo import FRACTIONS, choose_seed

    made = [bulk('Si', 'diamond', a=5.43), bulk('BN', 'zincblende', a=3.6), bulk('C', 'diamond', a=3.57)]
    made += [Atoms('CO2', positions=[[0, 0, 0], [0, 0, 1.16], [0, 0, -1.16]], cell=[8, 8, 8], pbc=True)]
    made += [bulk('Si', 'diamond', a=5.43 + 0.01 * index) for index in range(4)]
    made += [molecule('N2', vacuum=4.0)]
    uuids = [orm.StructureData(ase=atoms).store().uuid for atoms in made]
    seed = choose_seed(uuids)
    splits = {uuid: assign_split(uuid, seed, FRACTIONS) for uuid in uuids}
    trained = {symbol for uuid in uuids if splits[uuid] == 'train' for symbol in orm.load_node(uuid).get_symbols_set()}
    assert trained == {'B', 'C', 'N', 'O', 'Si'}
    periodic = {splits[uuid] for uuid in uuids if all(orm.load_node(uuid).pbc)}
    assert {'train', 'val'} <= periodic
    assert choose_seed(uuids) == seed
