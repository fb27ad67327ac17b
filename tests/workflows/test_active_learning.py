"""Active learning end to end: pools, selection, DIRECT, labelling, growing, retraining (real MACE, pw.x, predict).

The committee of iteration 0 is two real tiny MACE trainings by ``mad.committee`` (seeds 11 and 12, and
train/validation splits that differ in every session, trained once per session) on the dataset the pipeline builds
from real pw.x results (Si, 2 rattled Si, H2); the candidates are MP-ALOE prototypes of at most 2 atoms with Si and
H; labelling runs the real pw.x with the ``fast`` protocol; iteration 1 trains its own committee of two tiny MACE
models on the grown dataset (two members keep the test short; the default is three). The production model of the
two-iteration run is of another architecture: a real tiny PET (metatrain, protocol ``tiny``), retrained on each grown
dataset."""

from __future__ import annotations

import pytest
from aiida import orm
from aiida.common.links import LinkType
from aiida.engine import run_get_node

from aiida_mad.calculations.pool import PoolPredictCalculation, create_pool
from aiida_mad.calculations.selection import TABLE_COLUMNS, select_candidates, selection_rows
from aiida_mad.workflows.active_learning import ActiveLearningWorkChain, al_group_label, production_inputs

#: Candidates small enough for pw.x in seconds: 2-atom prototypes, Si and H.
POOL = {'count': 12, 'batch_size': 5, 'seed': 1, 'prototypes': {'max_atoms': 2}, 'element_pool': ['H', 'Si']}
#: Thresholds low enough that the tiny committee disagrees on every candidate.
LOW = {'energy': 1e-9, 'force': 1e-9, 'stress': 1e-9}


_COMMITTEES: dict[str, dict[str, str]] = {}


#: The committee seed: member i trains with seed ``COMMITTEE_SEED + i``.
COMMITTEE_SEED = 11


def check_members_differ(record: dict, models: list) -> None:
    """Assert that the committee's members differ in seed, validation frames and model file.

    The dataset of :func:`tests.training.training_dataset` has exactly one periodic frame in each split and the H2
    molecule in train or val, so the pooled train and val frames are 2 periodic frames and H2: each member validates on
    one periodic frame, member 0 on the first and member 1 on the second in the seed's order, whatever the session's
    uuids. Members that differ in seed and in training frames cannot train to the same model.
    """
    members = record['members']
    assert [member['seed'] for member in members] == [COMMITTEE_SEED, COMMITTEE_SEED + 1]
    validation = [frozenset(member['validation']) for member in members]
    assert all(validation) and validation[0] != validation[1], f'members validate on the same frames: {validation}'
    contents = [model.base.repository.get_object_content(model.filename, mode='rb') for model in models]
    assert contents[0] != contents[1], 'the two committee members are the same model'


@pytest.fixture
def committee(mace, dataset):
    """Two real tiny MACE models trained once per session by ``mad.committee``, differing in seed and split."""
    cached = _COMMITTEES.get(dataset.uuid)
    if cached is None:
        from aiida_mad.workflows.committee import CommitteeWorkChain, committee_members
        from aiida_mad.workflows.mace import MaceTrainWorkChain

        builder = CommitteeWorkChain.get_builder()
        builder.dataset = dataset
        builder.members = orm.Int(2)
        builder.seed = orm.Int(COMMITTEE_SEED)
        builder.mace.code = mace
        builder.mace.parameters = orm.Dict(MaceTrainWorkChain.get_protocol_inputs('tiny')['mace']['parameters'])
        builder.mace.metadata.options = {
            'resources': {'num_machines': 1, 'num_mpiprocs_per_machine': 1},
            'max_wallclock_seconds': 600,
        }
        _, node = run_get_node(builder)
        assert node.is_finished_ok, node.exit_message
        models = committee_members(node)
        check_members_differ(node.outputs.committee.get_dict(), models)
        cached = _COMMITTEES[dataset.uuid] = {f'member_{i}': model.uuid for i, model in enumerate(models)}
    return {key: orm.load_node(uuid) for key, uuid in cached.items()}


def predict_pool(predictor, pool, models):
    builder = PoolPredictCalculation.get_builder()
    builder.code = predictor
    builder.pool = pool
    builder.models = models
    builder.parameters = orm.Dict({'batch_size': 4})
    builder.metadata.options.max_wallclock_seconds = 600
    _, node = run_get_node(builder)
    assert node.is_finished_ok, node.exit_message
    return node


def test_pool_predict_select(predictor, committee):
    """One pool node, predictions for every candidate, a full table, nodes only for kept candidates, with reasons."""
    pool = create_pool(orm.Dict(POOL))
    assert pool.n_candidates == len(pool.index()['ids']) > 3
    assert len(pool.shard_names()) == 3
    assert set(pool.elements) <= {'H', 'Si'}
    assert pool.creator.inputs.settings.get_dict() == POOL
    again = create_pool(orm.Dict(POOL))
    assert again.index()['ids'].tolist() == pool.index()['ids'].tolist()

    node = predict_pool(predictor, pool, committee)
    committee_arrays = node.outputs.committee
    assert sorted(committee_arrays.get_array('uuids').tolist()) == sorted(pool.index()['ids'].tolist())

    parameters = {'thresholds': LOW, 'direct': {'n_clusters': 2, 'per_cluster': 1}}
    results = select_candidates(pool, committee_arrays, orm.Dict({**parameters, 'iteration': 7}))
    table = results['table']
    assert set(table.get_arraynames()) == {'ids', *TABLE_COLUMNS}
    rows = selection_rows(table)
    assert len(rows) == pool.n_candidates
    for row in rows:  # the decision and the reasons follow the sigmas and the thresholds
        fired = [name for name in ('energy', 'force', 'stress') if row[f'sigma_{name}'] > row[f'threshold_{name}']]
        assert [name for name in ('energy', 'force', 'stress') if row[f'{name}_exceeded']] == fired
        assert row['reasons'] == '+'.join(fired)
        assert row['selected'] == bool(fired)
    # Two different models differ in energy on every candidate (forces can vanish by symmetry in 2-atom cells).
    assert all(row['sigma_energy'] > 0 for row in rows), [row['sigma_energy'] for row in rows]
    selected = [row for row in rows if row['selected']]
    assert len(selected) > 2, 'DIRECT runs only with more selected candidates than its 2 x 1 picks'
    kept = [row for row in rows if row['downsampled']]
    assert len(kept) == 2
    assert all(row['selected'] for row in kept)
    assert {row['cluster'] for row in kept} == {0, 1}
    structures = [results[key] for key in results if key.startswith('structure_')]
    assert len(structures) == 2
    summary = results['summary'].get_dict()
    assert summary['direct']['run'] and summary['n_selected'] == len(selected)
    kept_rows = {row['id']: row for row in kept}
    for structure in structures:
        extras = structure.base.extras.all
        assert extras['mad_candidate_id'] in kept_rows
        row = kept_rows[extras['mad_candidate_id']]
        assert extras['mad_al_reason'] == row['reasons']
        assert extras['mad_al_iteration'] == 7
        assert extras['mad_pool'] == pool.uuid
        assert extras['mad_al_sigmas']['energy'] == pytest.approx(row['sigma_energy'])
        assert extras['mad_al_sigmas']['energy'] > 0
        creator = structure.creator
        assert creator.inputs.pool.uuid == pool.uuid
        assert creator.inputs.committee.uuid == committee_arrays.uuid


def test_pool_predict_refuses_unknown_elements(predictor, committee):
    """A pool with an element the committee does not know is refused before the calculation runs."""
    pool = create_pool(orm.Dict({**POOL, 'element_pool': ['O', 'Si'], 'count': 3}))
    builder = PoolPredictCalculation.get_builder()
    builder.code = predictor
    builder.pool = pool
    builder.models = committee
    with pytest.raises(ValueError, match='has candidates with O, which model `member_0`'):
        run_get_node(builder)


def al_builder(dataset, committee, mace, predictor, pw_code, *, name, **inputs):
    """Return a builder of the work chain with the tiny MACE committee, the fast protocol and the small pool."""
    builder = ActiveLearningWorkChain.get_builder_from_protocol(
        dataset,
        name=name,
        mace_code=mace,
        predict_code=predictor,
        pw_code=pw_code,
        dft_protocol='fast',
        committee_protocol='tiny',
        pool=POOL,
        thresholds=LOW,
        direct={'n_clusters': 2, 'per_cluster': 1},
        models=committee,
        members=2,
    )
    builder.predict.parameters = orm.Dict({'batch_size': 4})
    builder.outlier_max_force = orm.Dict({'default': 1000.0})
    for key, value in inputs.items():
        builder[key] = value
    return builder


def test_two_iterations(dataset, committee, mace, mtt, predictor, pw_code, run_cli_command, tmp_path):
    """Two iterations: the dataset grows, old frames keep their splits, new frames trace back to their selection.

    The MACE committee chooses the data of a production PET, retrained on each grown dataset. The candidates are Si
    only: pw.x stops on some 2-atom H prototypes ("too many r-vectors"), and which ones DIRECT picks depends on the
    session's committee (the failure path is tested on its own).
    """
    builder = al_builder(
        dataset,
        committee,
        mace,
        predictor,
        pw_code,
        name='al-test-two',
        pool=orm.Dict({**POOL, 'element_pool': ['Si']}),
        max_iterations=orm.Int(2),
        max_concurrent=orm.Int(1),
        final_retrain=orm.Bool(False),
    )
    builder.production = production_inputs(mtt, dataset, 'tiny')
    _, node = run_get_node(builder)
    assert node.is_finished_ok, f'{node.exit_status} {node.exit_message}'
    record = node.outputs.record.get_dict()['iterations']
    assert [entry['iteration'] for entry in record] == [0, 1]
    assert all(entry['downsampled'] == 2 and entry['labelled'] + entry['failed'] == 2 for entry in record)
    # Iteration 0 used the pretrained committee, iteration 1 trained its own.
    assert record[0]['committee'] == {key: model.uuid for key, model in committee.items()}
    assert set(record[1]['committee'].values()).isdisjoint(record[0]['committee'].values())

    final = node.outputs.dataset
    old_splits = dict(zip(dataset.index()['source_uuid'].tolist(), dataset.index()['split'].tolist(), strict=True))
    index = final.index()
    new_splits = dict(zip(index['source_uuid'].tolist(), index['split'].tolist(), strict=True))
    assert final.n_frames == dataset.n_frames + sum(entry['labelled'] for entry in record)
    assert {uuid: new_splits[uuid] for uuid in old_splits} == old_splits

    iterations = node.outputs.iterations
    assert set(iterations) == {'iteration_0', 'iteration_1'}
    for number in (0, 1):
        outputs = iterations[f'iteration_{number}']
        assert {'pool', 'committee_predictions', 'table', 'summary', 'dataset', 'calibration', 'labels'} <= set(outputs)
        assert 'energy' in outputs['calibration'].get_dict()['calibration']

    # The production PET: one training per grown dataset, by mad.train, on exactly that dataset; the last is the output.
    called = node.base.links.get_outgoing(link_type=LinkType.CALL_WORK, link_label_filter='production_%').all()
    labels = {link.link_label: link.node for link in called}
    assert sorted(labels) == ['production_0', 'production_1']
    for number in (0, 1):
        model = iterations[f'iteration_{number}']['production_model']
        assert model.architecture == 'pet'
        training = labels[f'production_{number}']
        assert training.process_type == 'aiida.workflows:mad.train' and training.is_finished_ok
        assert training.outputs.model.uuid == model.uuid
        assert model.creator.inputs.dataset.uuid == iterations[f'iteration_{number}']['dataset'].uuid
        assert record[number]['production']['model'] == model.uuid
    assert node.outputs.production_model.uuid == iterations['iteration_1']['production_model'].uuid
    # Iteration 0 used the pretrained committee, so the only trainings of the run are the two production ones.
    assert [child.process_type for child in node.called_descendants if 'train' in (child.process_type or '')].count(
        'aiida.workflows:mad.train'
    ) == 2

    # A new frame: its structure was made by the selection of its iteration, for its reason, from its pool.
    group = orm.load_group(al_group_label('al-test-two', 'structures'))
    new_sources = set(new_splits) - set(old_splits)
    assert new_sources
    for uuid in new_sources:
        structure = orm.load_node(uuid)
        assert structure in group.nodes
        selection = structure.creator
        assert selection.process_type == 'aiida.calculations:mad.al.select'
        iteration = structure.base.extras.get('mad_al_iteration')
        assert selection.inputs.parameters['iteration'] == iteration
        assert selection.inputs.pool.uuid == iterations[f'iteration_{iteration}']['pool'].uuid
        rows = {row['id']: row for row in selection_rows(iterations[f'iteration_{iteration}']['table'])}
        row = rows[structure.base.extras.get('mad_candidate_id')]
        assert row['downsampled']
        assert structure.base.extras.get('mad_al_reason') == row['reasons'] != ''
        assert 'energy' in row['reasons']  # thresholds of 1e-9: two different models always differ in energy

    # The commands: status per iteration, the table of an iteration, as text and CSV.
    output = run_cli_command(['al', 'status', node.pk]).output
    lines = [line.split() for line in output.splitlines() if line.split() and line.split()[0] in ('0', '1')]
    assert [line[:6] for line in lines] == [
        [str(entry[key]) for key in ('iteration', 'candidates', 'selected', 'downsampled', 'labelled', 'failed')]
        for entry in record
    ]
    assert 'production model' in output
    for number, line in enumerate(lines):
        model = iterations[f'iteration_{number}']['production_model']
        assert ' '.join(line).count(f'pet {model.pk} (') == 1, output
    output = run_cli_command(['al', 'table', node.pk, '-i', '0', '--selected']).output
    assert (
        sum(row['id'] in output for row in selection_rows(iterations['iteration_0']['table'])) == record[0]['selected']
    )
    path = tmp_path / 'table.csv'
    run_cli_command(['al', 'table', node.pk, '--csv', path])
    assert len(path.read_text().splitlines()) == 1 + record[1]['candidates']
    result = run_cli_command(['al', 'table', node.pk, '-i', '5'], raises=True)
    assert 'no table for iteration 5' in result.output


def test_failures_are_recorded(dataset, committee, mace, predictor, crash_code):
    """DFT runs that fail are recorded and skipped; above the failure fraction the work chain stops with 403."""
    builder = al_builder(
        dataset,
        committee,
        mace,
        predictor,
        crash_code,
        name='al-test-fail',
        max_iterations=orm.Int(1),
        max_failure_fraction=orm.Float(1.0),
    )
    _, node = run_get_node(builder)
    assert node.is_finished_ok, f'{node.exit_status} {node.exit_message}'
    entry = node.outputs.record.get_dict()['iterations'][0]
    assert entry['failed'] == 2 and entry['labelled'] == 0
    assert {failure['structure'] for failure in entry['failures']} <= {
        structure.uuid for structure in orm.load_group(al_group_label('al-test-fail', 'structures')).nodes
    }
    assert node.outputs.dataset.uuid == dataset.uuid

    builder = al_builder(
        dataset,
        committee,
        mace,
        predictor,
        crash_code,
        name='al-test-fail-stop',
        max_iterations=orm.Int(1),
        max_failure_fraction=orm.Float(0.5),
    )
    _, node = run_get_node(builder)
    assert node.exit_status == ActiveLearningWorkChain.exit_codes.ERROR_TOO_MANY_DFT_FAILURES.status


@pytest.mark.parametrize(
    ('inputs', 'message'),
    [
        ({'thresholds': {'energy': 0.0}}, 'energy must be finite and > 0'),
        ({'thresholds': {'force': -1.0}}, 'force must be finite and > 0'),
        ({'direct': {'n_clusters': 0}}, 'n_clusters must be a positive integer'),
        ({'direct': {'per_cluster': -2}}, 'per_cluster must be a positive integer'),
        ({'pool': {**POOL, 'element_pool': ['Si', 'O']}}, 'pool elements O are not in dataset'),
        ({'pool': {**POOL, 'element_pool': ['Si', 'Og']}}, 'pool'),
        ({'one_model': True}, 'a committee needs at least 2 members, got 1 pretrained'),
        ({'members': 1}, 'a committee needs at least 2 members, got 1'),
        ({'production': 'both'}, 'production: give the training inputs of exactly one architecture'),
        ({'production': 'batch'}, r'production model \(`MaceTrainWorkChain`, mace\) on dataset .*batch_size 1000'),
    ],
)
def test_bad_input_is_refused(dataset, committee, mace, mtt, predictor, pw_code, inputs, message):
    """Bad thresholds, DIRECT settings, pool elements, committees of one and production models are refused up front.

    A production model needs the inputs of one architecture, which its training's own checks accept on the dataset.
    """
    before = orm.QueryBuilder().append(orm.ProcessNode).count()
    builder = al_builder(dataset, committee, mace, predictor, pw_code, name='al-test-bad')
    for key in ('thresholds', 'direct', 'pool'):
        if key in inputs:
            builder[key] = orm.Dict(inputs[key])
    if inputs.get('one_model'):
        builder.models = {'member_0': committee['member_0']}
    if 'members' in inputs:
        builder.committee.members = orm.Int(inputs['members'])
    if inputs.get('production') == 'both':
        builder.production = production_inputs(mace, dataset, 'tiny')
        builder.production.metatrain = production_inputs(mtt, dataset, 'tiny')['metatrain']
    elif inputs.get('production') == 'batch':
        builder.production = production_inputs(mace, dataset, 'tiny')
        parameters = builder.production.mace.parameters.get_dict()
        builder.production.mace.parameters = orm.Dict({**parameters, 'batch_size': 1000})
    with pytest.raises(ValueError, match=message):
        run_get_node(builder)
    assert orm.QueryBuilder().append(orm.ProcessNode).count() == before


def test_cli_refuses_bad_thresholds(dataset, mace, predictor, pw_code, run_cli_command):
    """`al run` refuses a threshold <= 0, and a production protocol without its code, before anything is submitted."""
    before = orm.QueryBuilder().append(orm.ProcessNode).count()
    codes = ['--mace-code', mace.full_label, '--predict-code', predictor.full_label, '--pw-code', pw_code.full_label]
    arguments = ['al', 'run', dataset.pk, '--name', 'al-test-cli', '-p', 'fast', *codes]
    result = run_cli_command([*arguments, '--force', '0'], raises=True)
    assert 'force must be finite and > 0' in result.output
    result = run_cli_command([*arguments, '--production-protocol', 'tiny'], raises=True)
    assert 'needs --production-code' in result.output
    assert orm.QueryBuilder().append(orm.ProcessNode).count() == before


def test_elements_outside_the_family_are_refused(dataset, committee, mace, predictor, pw_code, offline_family):
    """A pool element that the pseudopotential family lacks is refused, naming the element and the family."""
    from aiida_pseudo.groups.family import PseudoPotentialFamily

    family, created = PseudoPotentialFamily.collection.get_or_create('al-test-si-only')
    if created:
        family.add_nodes([offline_family.get_pseudo('Si')])
    builder = al_builder(dataset, committee, mace, predictor, pw_code, name='al-test-family')
    builder.dft.pseudo_family = orm.Str(family.label)
    with pytest.raises(ValueError, match='pool elements H are not in pseudopotential family al-test-si-only'):
        run_get_node(builder)
