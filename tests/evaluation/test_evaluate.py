"""``EvaluateWorkChain`` (``mad.evaluate``) and ``aiida-mad model evaluate`` on real tiny trained models.

The models are the session's real tiny trainings (PET by ``mtt train``, MACE by ``mace_run_train``) on the dataset
the project's pipeline builds from real pw.x results; the predictions run through the real ``aiida-mad-predict``.
MACE is equivariant by construction (its energy is invariant to float64 round-off), PET is not: the rotational
error separates them.
"""

from __future__ import annotations

import numpy as np
import pytest
from aiida import orm
from aiida.engine import run_get_node

from aiida_mad.workflows.evaluate import EvaluateWorkChain
from tests.training import TINY_PET, dos_trained, train_builder, training_dataset
from tests.training import _run_once as run_once

#: The tiny PET of the training tests without target scaling: with two training frames the composition baseline fits
#: their energies exactly, the scaler then multiplies the network's output by zero and the model is as invariant as
#: the baseline. Unscaled, the network's share of the energy shows its (approximate) rotational invariance.
UNSCALED_PET = {
    **TINY_PET,
    'architecture': {
        **TINY_PET['architecture'],
        'training': {**TINY_PET['architecture']['training'], 'scale_targets': False},
    },
}


@pytest.fixture
def pet_model(mtt, dataset):
    return run_once(f'evaluation-pet-{dataset.uuid}', train_builder(mtt, dataset, UNSCALED_PET)).outputs.model


def evaluate(model, predictor, dataset, **kwargs):
    builder = EvaluateWorkChain.get_builder_for(
        model, code=predictor, dataset=dataset, parameters={'batch_size': 4}, **kwargs
    )
    _, node = run_get_node(builder)
    assert node.is_finished_ok, f'{node.exit_status} {node.exit_message}'
    return node


def test_pet_table_per_subset_with_every_column(pet_model, predictor, dataset):
    node = evaluate(pet_model, predictor, dataset, split='all')
    table = node.outputs.table.get_dict()
    frames = dataset.frames()
    assert set(table['subsets']) == {frame.info['subset'] for frame in frames}
    overall = table['overall']
    assert overall['n_frames'] == len(frames)
    assert overall['n_rotated'] == len(frames)
    assert table['rotations']['n_rotations'] == 38
    assert table['same_level_of_theory'] is True
    for column in ('energy_mae', 'energy_rmse', 'forces_mae', 'forces_rmse', 'stress_mae', 'stress_rmse'):
        assert overall[column] > 0, column
    assert overall['rotation_std'] > 0  # PET is not rotationally invariant by construction
    assert overall['energy_rmse'] >= overall['energy_mae']
    assert overall['n_stress'] == sum(1 for frame in frames if 'stress' in frame.info)

    # The energy MAE recomputed from the predictions and the frames by hand.
    prediction = node.called[0]
    predicted = prediction.outputs.predictions
    by_uuid = {frame.info['source_uuid']: frame for frame in frames}
    energy = predicted.get_array('energy_per_atom')[0]
    reference = pet_model.energy_reference
    key = 'energy_baseline_subtracted' if reference == 'baseline_subtracted' else 'energy'
    errors = [
        energy[index] - by_uuid[uuid].info[key] / len(by_uuid[uuid])
        for index, uuid in enumerate(predicted.get_array('uuids'))
    ]
    assert overall['energy_mae'] == pytest.approx(1000 * np.mean(np.abs(errors)))

    # The table is linked to the model and the dataset by the calcfunction that made it.
    creator = node.outputs.table.creator
    assert creator.inputs.model.uuid == pet_model.uuid
    assert creator.inputs.dataset.uuid == dataset.uuid
    assert prediction.inputs.rotations.get_array('matrices').shape == (38, 3, 3)
    per_frame = node.outputs.per_frame
    assert sorted(per_frame.get_array('uuids')) == sorted(by_uuid)
    assert np.all(per_frame.get_array('rotation_std') > 0)


def test_mace_is_rotationally_invariant_pet_is_not(mace_model, pet_model, predictor, dataset):
    rotations = {'order': 5, 'in_plane': 2, 'max_per_subset': 1}
    mace_table = evaluate(mace_model, predictor, dataset, split='train', rotations=rotations).outputs.table
    pet_table = evaluate(pet_model, predictor, dataset, split='train', rotations=rotations).outputs.table
    assert mace_table['rotations']['n_rotations'] == 28
    assert mace_table['overall']['n_rotated'] == len(mace_table['subsets'])  # one per subset
    assert mace_table['overall']['rotation_std_max'] < 1e-6  # meV/atom: float64 round-off
    assert pet_table['overall']['rotation_std'] > 1e-3
    assert mace_table['energy_reference'] == 'total'


def test_structures_of_a_group_give_the_rotational_error_only(pet_model, predictor, dataset):
    structures = [orm.load_node(uuid) for uuid in sorted(set(dataset.index()['source_uuid']))[:2]]
    builder = EvaluateWorkChain.get_builder_for(
        pet_model, code=predictor, structures=structures, rotations={'order': 3}, parameters={'batch_size': 4}
    )
    _, node = run_get_node(builder)
    assert node.is_finished_ok, node.exit_message
    overall = node.outputs.table['overall']
    assert overall['n_frames'] == 2
    assert overall['energy_mae'] is None
    assert overall['rotation_std'] > 0


def test_bad_inputs_refused_before_anything_runs(pet_model, predictor, dataset):
    builder = EvaluateWorkChain.get_builder_for(pet_model, code=predictor, dataset=dataset, split='nope')
    assert 'split must be one of' in EvaluateWorkChain.validate_inputs(builder._inputs(prune=True), None)
    builder = EvaluateWorkChain.get_builder_for(pet_model, code=predictor, dataset=dataset, rotations={'order': 4})
    assert 'rotations.order must be' in EvaluateWorkChain.validate_inputs(builder._inputs(prune=True), None)
    builder = EvaluateWorkChain.get_builder_for(pet_model, code=predictor, dataset=dataset, rotations={'grid': 1})
    assert "unknown rotations setting(s) ['grid']" in EvaluateWorkChain.validate_inputs(
        builder._inputs(prune=True), None
    )


def test_cli_prints_table_one_and_writes_csv(run_cli_command, pet_model, predictor, dataset, tmp_path):
    target = tmp_path / 'table.csv'
    result = run_cli_command(
        [
            'model',
            'evaluate',
            pet_model.pk,
            dataset.pk,
            '--split',
            'all',
            '--rotations',
            '3',
            '--code',
            predictor.full_label,
            '--csv',
            target,
        ]
    )
    assert 'energy MAE|RMSE [meV/atom]' in result.output
    assert 'rotational std mean (max) [meV/atom]' in result.output
    assert 'overall' in result.output
    assert '6 rotations (Lebedev order 3' in result.output
    lines = target.read_text().splitlines()
    assert lines[0].startswith('subset,n_frames,n_atoms,energy_mae [meV/atom]')
    assert lines[-1].startswith('overall,')


def test_cli_refuses_dataset_and_group_together(run_cli_command, pet_model, predictor, dataset):
    group = orm.Group(label='evaluate-both').store()
    result = run_cli_command(
        ['model', 'evaluate', pet_model.pk, dataset.pk, '-G', group.label, '--code', predictor.full_label], raises=True
    )
    assert 'give either a DATASET or --group' in result.output


def test_predict_refuses_rotations_that_are_not_rotations(pet_model, dataset):
    from aiida_mad.calculations.predict import validate_inputs

    rotations = orm.ArrayData()
    rotations.set_array('matrices', np.array([np.eye(3), np.diag([1.0, 1.0, -1.0])]))  # a mirror
    inputs = {'models': {'model': pet_model}, 'dataset': dataset, 'rotations': rotations}
    assert 'must be a proper rotation' in validate_inputs(inputs, None)
    rotations = orm.ArrayData()
    rotations.set_array('matrices', np.eye(3)[None])
    assert 'at least two 3x3 matrices' in validate_inputs({**inputs, 'rotations': rotations}, None)


def test_dos_model_table_has_the_dos_columns(mtt, predictor, labelled):
    from aiida_mad.learning.evaluation import table_rows

    model = dos_trained(mtt, labelled).outputs.model
    dataset = training_dataset(labelled, name='train-test-dos', include_dos=True)
    node = evaluate(model, predictor, dataset, split='all', rotations={'order': 3})
    table = node.outputs.table.get_dict()
    overall = table['overall']
    with_dos = sum(1 for frame in dataset.frames() if frame.info.get('dos') is not None)
    assert table['targets'] == ['dos']
    assert overall['n_dos'] == with_dos > 0
    assert overall['dos_rmse'] > 0
    assert overall['gap_mae'] is not None and overall['gap_mae'] >= 0
    assert overall['rotation_dos'] is not None and overall['rotation_dos'] >= 0
    assert overall['energy_mae'] is None and overall['rotation_std'] is None
    header, _ = table_rows(table)
    assert 'DOS RMSE [eV^-½ e^-1 states]' in header
    assert not any(name.startswith('energy') for name in header)
