"""``CommitteeWorkChain`` (``mad.committee``): members that differ only in seed and train/validation split.

A real committee of 3 tiny MACE models (``mace_run_train``, two epochs each, in parallel) on the dataset the
project's pipeline builds from real pw.x results.
"""

from __future__ import annotations

import pytest
from aiida import orm
from aiida.engine import run_get_node

from aiida_mad.calculations.committee import member_validation
from aiida_mad.workflows.committee import CommitteeWorkChain, committee_members
from tests.training import TINY_MACE, mace_code


def committee_builder(code, dataset, members=3, parameters=None):
    builder = CommitteeWorkChain.get_builder()
    builder.dataset = dataset
    builder.members = orm.Int(members)
    builder.mace.code = code
    builder.mace.parameters = orm.Dict(parameters or TINY_MACE)
    builder.mace.metadata.options.max_wallclock_seconds = 600
    builder.name = orm.Str('test-committee')
    return builder


def test_member_validation_blocks_differ_and_keep_a_periodic_frame():
    periodic = [f'p{i}' for i in range(6)]
    others = [f'm{i}' for i in range(4)]
    sets = [member_validation(periodic, others, member, seed=0, fractions=(0.8, 0.1, 0.1)) for member in range(3)]
    assert all(len(validation) == 1 for validation in sets)  # 10 pooled frames, 1/9 of them for validation
    assert len({tuple(validation) for validation in sets}) == 3
    assert all(validation[0].startswith('p') for validation in sets)
    # another committee seed orders the pool differently
    by_seed = [[tuple(member_validation(periodic, others, m, seed=seed)) for m in range(6)] for seed in (0, 1)]
    assert by_seed[0] != by_seed[1] and sorted(by_seed[0]) == sorted(by_seed[1])
    # more members than periodic frames: the later ones also validate on another frame, all sets differ
    small = [
        tuple(member_validation(['p0', 'p1'], ['m0'], member, seed=0, fractions=(0.5, 0.25, 0.25)))
        for member in range(3)
    ]
    assert len(set(small)) == 3 and all(any(uuid.startswith('p') for uuid in validation) for validation in small)
    with pytest.raises(ValueError, match='at least 2 training and validation frames'):
        member_validation(['p0'], [], 0, seed=0)


def test_committee_of_three_mace_models(aiida_localhost, aiida_code_installed, dataset):
    code = mace_code(aiida_localhost, aiida_code_installed)
    _, node = run_get_node(committee_builder(code, dataset))
    assert node.is_finished_ok, node.exit_message
    record = node.outputs.committee.get_dict()
    assert record['n_members'] == 3 and record['architecture'] == 'mace'
    members = committee_members(node)
    assert len(members) == 3
    seeds = [model.base.attributes.get('seed') for model in members]
    assert seeds == [0, 1, 2]
    validations = [tuple(entry['validation']) for entry in record['members']]
    assert len(set(validations)) == 3, validations
    test_frames = set()
    for entry, model in zip(record['members'], members, strict=True):
        member_dataset = orm.load_node(entry['dataset'])
        assert model.dataset_uuid == member_dataset.uuid
        assert member_dataset.fingerprint == dataset.fingerprint
        frames = member_dataset.frames()
        assert sorted(frame.info['source_uuid'] for frame in frames if frame.info['split'] == 'val') == sorted(
            entry['validation']
        )
        test_frames.add(tuple(sorted(frame.info['source_uuid'] for frame in frames if frame.info['split'] == 'test')))
        assert entry['errors'] == model.errors and 'val' in entry['errors']
        # the member dataset descends from the committee's dataset
        assert member_dataset.creator.inputs.dataset.uuid == dataset.uuid
    original_test = tuple(
        sorted(frame.info['source_uuid'] for frame in dataset.frames() if frame.info['split'] == 'test')
    )
    assert test_frames == {original_test}  # every member is tested on the same frames
    group = orm.load_group('mad/committees/test-committee')
    assert {model.uuid for model in group.nodes} == {model.uuid for model in members}
    # the record is a calcfunction output: the provenance graph links every member model to it
    creator = node.outputs.committee.creator
    assert creator.process_type == 'aiida.calculations:mad.committee_record'
    assert {link.node.uuid for link in creator.base.links.get_incoming().all()} >= {model.uuid for model in members}
    assert creator.caller.uuid == node.uuid


def test_committee_of_one_refused(aiida_localhost, aiida_code_installed, dataset):
    code = mace_code(aiida_localhost, aiida_code_installed)
    before = orm.QueryBuilder().append(orm.ProcessNode).count()
    with pytest.raises(ValueError, match='a committee needs at least 2 members, got 1'):
        run_get_node(committee_builder(code, dataset, members=1))
    with pytest.raises(ValueError, match=r"no option\(s\) \['num_chanels'\]"):
        run_get_node(committee_builder(code, dataset, parameters={**TINY_MACE, 'num_chanels': 4}))
    assert orm.QueryBuilder().append(orm.ProcessNode).count() == before


def test_metatrain_committee_inputs_checked_before_anything_runs(aiida_localhost, aiida_code_installed, dataset):
    from tests.training import TINY_PET, mtt_code

    mtt = mtt_code(aiida_localhost, aiida_code_installed)
    builder = CommitteeWorkChain.get_builder()
    builder.dataset = dataset
    builder.metatrain.code = mtt
    builder.metatrain.parameters = orm.Dict({**TINY_PET, 'sed': 1})
    before = orm.QueryBuilder().append(orm.ProcessNode).count()
    with pytest.raises(ValueError, match='sed'):
        run_get_node(builder)
    builder.metatrain.parameters = orm.Dict(TINY_PET)
    builder.mace.code = mace_code(aiida_localhost, aiida_code_installed)
    builder.mace.parameters = orm.Dict(TINY_MACE)
    with pytest.raises(ValueError, match='exactly one architecture'):
        run_get_node(builder)
    assert orm.QueryBuilder().append(orm.ProcessNode).count() == before


def test_committee_of_two_pet_models(aiida_localhost, aiida_code_installed, dataset):
    from tests.training import TINY_PET, mtt_code

    builder = CommitteeWorkChain.get_builder()
    builder.dataset = dataset
    builder.members = orm.Int(2)
    builder.seed = orm.Int(5)
    builder.metatrain.code = mtt_code(aiida_localhost, aiida_code_installed)
    builder.metatrain.parameters = orm.Dict(TINY_PET)
    builder.metatrain.metadata.options.max_wallclock_seconds = 600
    _, node = run_get_node(builder)
    assert node.is_finished_ok, node.exit_message
    record = node.outputs.committee.get_dict()
    assert record['architecture'] == 'metatrain'
    members = committee_members(node)
    assert [model.architecture for model in members] == ['pet', 'pet']
    seeds = [orm.load_node(entry['calculation']).inputs.parameters['seed'] for entry in record['members']]
    assert seeds == [5, 6]
    assert record['members'][0]['validation'] != record['members'][1]['validation']
