"""``aiida-mad demo`` end to end through click's runner: real pw.x through a real daemon, interrupted and re-run."""

import shlex

import pytest
from aiida import orm

from aiida_mad.constants import ALL_SUBSETS, process_type
from aiida_mad.demo import ACTIVE_LEARNING, DATASET_NAME, DFT_GROUP, STRUCTURES_GROUP, subset_group_label
from aiida_mad.export.folders import read_marker
from aiida_mad.workflows.active_learning import ActiveLearningWorkChain
from aiida_mad.workflows.evaluate import EvaluateWorkChain
from aiida_mad.workflows.train import TrainWorkChain

PW_PROCESS_TYPE = 'aiida.calculations:quantumespresso.pw'


def count_nodes(cls=orm.ProcessNode, process_type_=None) -> int:
    filters = {'process_type': process_type_} if process_type_ else {}
    return orm.QueryBuilder().append(cls, filters=filters).count()


def stage_lines(output: str) -> list[str]:
    """Return the stage lines of the demo's output, e.g. ``[1/2] structures``."""
    return [line.split(':')[0] for line in output.splitlines() if line.startswith('[')]


def generated_structures() -> int:
    query = orm.QueryBuilder().append(orm.StructureData, filters={'extras': {'has_key': 'mad_generation_key'}})
    return query.count()


def isolated_atom_elements() -> list[str]:
    query = orm.QueryBuilder().append(
        orm.WorkflowNode, filters={'process_type': process_type('mad.dft.isolated_atoms')}
    )
    return sorted(element for node in query.all(flat=True) for element in node.inputs.elements.get_list())


# The whole demo with real pw.x at the `demo` protocol's 85/340 Ry: minutes on 2 idle cores, more on a loaded machine
# than the suite's default timeout allows.
@pytest.mark.timeout(2400)
@pytest.mark.usefixtures('aiida_profile_clean')
def test_demo_interrupted_then_resumed_repeats_nothing(
    run_cli_command,
    pw_code,
    offline_family,
    mtt,
    predictor,
    started_daemon_client,
    tmp_path,
    aiida_localhost,
    aiida_code_installed,
):
    output_dir = tmp_path / 'demo'
    args = ['demo', '--code', pw_code.full_label, '--output-dir', output_dir, '--skip-training']

    # Interrupted during the labelling: the demo stops waiting after a second (--timeout), its pw.x go on in the daemon.
    first = run_cli_command([*args, '--until', 'labelling', '--timeout', '1'], raises=True)
    print(first.output)
    assert stage_lines(first.output) == ['[1/2] structures'] * 2 + ['[2/2] labelling']
    assert 'labelling: still running after 1 s' in first.output
    assert 'they go on in the daemon' in first.output and 'Run `aiida-mad demo` again' in first.output
    for subset in ALL_SUBSETS:
        nodes = orm.load_group(label=subset_group_label(subset)).nodes
        assert nodes, f'no structure of {subset}'
        # Tiny cells: the CO2 molecular crystal (12 atoms) is the largest.
        assert all(len(node.sites) <= (12 if subset == 'shiftml-molcrys' else 4) for node in nodes), subset
    structures = orm.load_group(label=STRUCTURES_GROUP).count()
    submitted = orm.load_group(label=DFT_GROUP).count()
    # At most as many at once as the cores hold (all of them on a machine with as many cores as structures).
    assert 0 < submitted <= structures
    assert isolated_atom_elements() == []
    assert not output_dir.exists()
    generated = generated_structures()

    # Resumed: the running pw.x are waited for, nothing of the first stages is made again; the others run.
    second = run_cli_command(args)
    print(second.output)
    assert stage_lines(second.output) == [
        f'[{n}/5] {stage}'
        for n, stage in enumerate(('structures', 'labelling', 'isolated-atoms', 'dataset', 'export'), start=1)
        for _ in range(2)
    ]
    assert '0 seeds and 0 generated structures stored now' in second.output
    assert f'{structures - submitted} of {structures} structures to label' in second.output
    assert f'{structures} labelled, {structures - submitted} submitted now' in second.output
    dft = orm.load_group(label=DFT_GROUP)
    assert dft.count() == structures
    assert all(node.is_finished_ok for node in dft.nodes), [node.exit_status for node in dft.nodes]
    assert generated_structures() == generated
    elements = sorted(
        {symbol for node in orm.load_group(label=STRUCTURES_GROUP).nodes for symbol in node.get_symbols_set()}
    )
    assert isolated_atom_elements() == elements
    # One MadDftWorkChain per structure and per isolated atom: nothing was labelled twice.
    labelled = orm.QueryBuilder().append(orm.WorkflowNode, filters={'attributes.process_label': 'MadDftWorkChain'})
    assert labelled.count() == structures + len(elements)
    pw_jobs = count_nodes(orm.CalcJobNode, PW_PROCESS_TYPE)
    from aiida_mad.workflows.dataset import load_dataset

    dataset = load_dataset(DATASET_NAME)
    # Every subset is in the dataset, unless its structure is an outlier (the fast protocol is test-grade).
    record = dataset.selection['subsets']
    assert sorted(record) == sorted(ALL_SUBSETS)
    assert sorted(dataset.counts) == sorted(subset for subset in ALL_SUBSETS if not record[subset]['outlier'])
    assert len(dataset.counts) >= len(ALL_SUBSETS) - 2
    # The MP-ALOE structure is Si on the diamond prototype, scrambled and strained: near equilibrium, never an outlier.
    assert not record['mp-aloe']['outlier']
    (aloe,) = orm.load_group(label=subset_group_label('mp-aloe')).nodes
    assert aloe.get_symbols_set() == {'Si'}
    assert sorted(dataset.atomic_energies) == elements
    assert read_marker(output_dir / 'export')['kind'] == 'export'
    assert read_marker(output_dir / 'record')['kind'] == 'record'
    assert (output_dir / 'record' / 'mad.report.html').is_file()
    assert (output_dir / 'export' / 'mad-train.xyz').is_file()
    for command in ('verdi group list', f'aiida-mad dataset show {DATASET_NAME}', 'aiida-mad query frames'):
        assert command in second.output
    assert str(output_dir / 'record') in second.output
    # The aiida-mad commands it suggests run as printed.
    suggested = [line.split(maxsplit=1)[1] for line in second.output.splitlines() if line.startswith('  aiida-mad ')]
    assert len(suggested) == 3
    for command in suggested:
        result = run_cli_command(shlex.split(command))
        assert 'Error' not in result.output, result.output
    assert DFT_GROUP in run_cli_command(shlex.split(suggested[0])).output

    # The training and evaluate stages: a tiny PET on the dataset, its errors per subset (the `predictor` code of the
    # computer); the computer has no MACE code yet: the active-learning stage says so and is skipped.
    training = [*args[:-1], '--train-code', mtt.full_label]
    fourth = run_cli_command(training)
    print(fourth.output)
    assert '[6/8] training' in fourth.output
    assert '[7/8] evaluate' in fourth.output
    assert '[8/8] active-learning: skipped: no mace_run_train code (plugin mad.mace) on computer' in fourth.output
    assert count_nodes(orm.CalcJobNode, PW_PROCESS_TYPE) == pw_jobs
    (train,) = (
        orm.QueryBuilder()
        .append(orm.WorkflowNode, filters={'process_type': TrainWorkChain.build_process_type()})
        .all(flat=True)
    )
    assert train.is_finished_ok, train.exit_message
    assert train.inputs.metatrain.dataset.uuid == dataset.uuid
    assert count_nodes(orm.WorkflowNode, ActiveLearningWorkChain.build_process_type()) == 0

    # With a MACE code: training and evaluate find their work done, one iteration of active learning runs.
    from tests.training import mace_code

    mace_code(aiida_localhost, aiida_code_installed)
    evaluations = count_nodes(orm.WorkflowNode, EvaluateWorkChain.build_process_type())
    fifth = run_cli_command(training)
    print(fifth.output)
    assert f'TrainWorkChain<{train.pk}> finished' in fifth.output
    assert count_nodes(orm.WorkflowNode, TrainWorkChain.build_process_type()) == 1
    assert count_nodes(orm.WorkflowNode, EvaluateWorkChain.build_process_type()) == evaluations
    (learning,) = (
        orm.QueryBuilder()
        .append(orm.WorkflowNode, filters={'process_type': ActiveLearningWorkChain.build_process_type()})
        .all(flat=True)
    )
    assert learning.is_finished_ok, f'{learning.exit_status} {learning.exit_message}'
    assert learning.inputs.dataset.uuid == dataset.uuid
    (entry,) = learning.outputs.record.get_dict()['iterations']
    assert 0 < entry['candidates'] <= ACTIVE_LEARNING['pool']['count']
    assert entry['downsampled'] <= 2
    assert entry['labelled'] + entry['failed'] == entry['downsampled']
    assert learning.outputs.dataset.n_frames == dataset.n_frames + entry['labelled']
    assert f'ActiveLearningWorkChain<{learning.pk}> finished now: {entry["candidates"]} candidates' in fifth.output

    # Once more: every stage finds its work done and nothing at all is stored (nothing is generated, labelled,
    # built, exported, trained, evaluated or learnt again).
    nodes = count_nodes(orm.Node)
    sixth = run_cli_command(training)
    print(sixth.output)
    assert count_nodes(orm.Node) == nodes
    assert '0 seeds and 0 generated structures stored now' in sixth.output
    assert f'{structures} labelled, 0 submitted now' in sixth.output
    assert f'{len(elements)} of {len(elements)} elements, 0 computed now' in sixth.output
    assert f'dataset {DATASET_NAME}<{dataset.pk}> already there' in sixth.output
    assert 'export and record already there' in sixth.output
    assert f'TrainWorkChain<{train.pk}> finished' in sixth.output
    assert f'ActiveLearningWorkChain<{learning.pk}> finished: ' in sixth.output
    (evaluation,) = (
        orm.QueryBuilder()
        .append(orm.WorkflowNode, filters={'process_type': EvaluateWorkChain.build_process_type()})
        .all(flat=True)
    )
    assert evaluation.is_finished_ok, evaluation.exit_message
    assert evaluation.inputs.model.uuid == train.outputs.model.uuid
    assert evaluation.outputs.table['overall']['n_frames'] >= 1
    assert f'model {train.outputs.model.pk} already evaluated' in sixth.output


@pytest.mark.usefixtures('aiida_profile_clean')
def test_demo_refuses_unknown_family(run_refused, pw_code):
    run_refused(['demo', '--code', pw_code.full_label, '--pseudo-family', 'no/such/family'], 'no/such/family')


@pytest.mark.usefixtures('aiida_profile_clean')
def test_demo_refuses_missing_training_code(run_refused, pw_code, offline_family):
    run_refused(
        ['demo', '--code', pw_code.full_label, '--train-code', 'nomtt@nowhere'], 'nomtt@nowhere', '--skip-training'
    )


@pytest.mark.usefixtures('aiida_profile_clean')
def test_demo_says_when_daemon_is_down(run_refused, pw_code, offline_family, stopped_daemon_client):
    run_refused(['demo', '--code', pw_code.full_label, '--skip-training'], 'daemon', 'not running')
