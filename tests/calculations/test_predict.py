"""``PredictCalculation`` (``mad.predict``) and its console script: real models, real structures, real runs.

The models are real tiny trainings (a MACE by ``mace_run_train``, a PET by ``mtt train``) on the dataset the
project's own pipeline builds from real pw.x results; the predictions run through the installed
``aiida-mad-predict`` script and are compared with what each model's own ASE calculator gives.
"""

from __future__ import annotations

import numpy as np
import pytest
from aiida import orm
from aiida.engine import run_get_node
from ase.build import molecule

from aiida_mad.calculations.predict import PredictCalculation, predictions_by_uuid
from aiida_mad.data.model import ModelData
from aiida_mad.inference.models import Model
from tests.training import dos_trained, mace_trained, training_dataset


def builder_for(code, models, *, dataset=None, structures=None, **inputs):
    builder = PredictCalculation.get_builder()
    builder.code = code
    builder.models = {f'model_{index}': model for index, model in enumerate(models)}
    if dataset is not None:
        builder.dataset = dataset
    if structures is not None:
        builder.structures = structures
    builder.parameters = orm.Dict({'batch_size': 2})
    builder.metadata.options.max_wallclock_seconds = 600
    for key, value in inputs.items():
        builder[key] = value
    return builder


def reference(model: ModelData, frames):
    """Return ``{uuid: (energy, forces, stress or None)}`` from the model's own ASE calculator, one at a time."""
    with model.as_path() as path:
        calculator = Model(path).ase_calculator()
        result = {}
        for frame in frames:
            atoms = frame.copy()
            atoms.calc = calculator
            stress = atoms.get_stress(voigt=False) if atoms.pbc.all() else None
            result[frame.info['source_uuid']] = (atoms.get_potential_energy(), atoms.get_forces(), stress)
    return result


def check_equal(predicted: dict, expected: dict, tolerance: float):
    assert sorted(predicted) == sorted(expected)
    for uuid, (energy, forces, stress) in expected.items():
        entry = predicted[uuid]
        assert entry['energy'][0] == pytest.approx(energy, abs=tolerance)
        assert entry['energy_per_atom'][0] == pytest.approx(energy / entry['natoms'], abs=tolerance)
        np.testing.assert_allclose(entry['forces'][0], forces, atol=tolerance)
        if stress is None:
            assert np.all(np.isnan(entry['stress'][0]))
        else:
            np.testing.assert_allclose(entry['stress'][0], stress, atol=tolerance)


def test_mace_predictions_equal_its_ase_calculator(predictor, dataset, mace_model):
    _, node = run_get_node(builder_for(predictor, [mace_model], dataset=dataset))
    assert node.is_finished_ok, node.exit_message
    assert 'committee' not in node.outputs
    predicted = predictions_by_uuid(node.outputs.predictions)
    check_equal(predicted, reference(mace_model, dataset.frames()), 1e-9)
    assert node.outputs.predictions.base.attributes.get('models') == [mace_model.uuid]
    assert node.outputs.results['models'][0]['kind'] == 'mace'


def test_metatrain_predictions_on_structures_equal_its_ase_calculator(predictor, dataset, pet_model):
    frames = dataset.frames()
    structures = {}
    for index, frame in enumerate(frames):
        node = orm.StructureData(ase=frame).store()
        frame.info['source_uuid'] = node.uuid
        structures[f's{index}'] = node
    _, node = run_get_node(builder_for(predictor, [pet_model], structures=structures))
    assert node.is_finished_ok, node.exit_message
    predicted = predictions_by_uuid(node.outputs.predictions)
    check_equal(predicted, reference(pet_model, frames), 1e-4)
    assert node.outputs.results['models'][0]['kind'] == 'metatomic'


def test_one_split_only(predictor, dataset, mace_model):
    _, node = run_get_node(builder_for(predictor, [mace_model], dataset=dataset, split=orm.Str('val')))
    assert node.is_finished_ok, node.exit_message
    uuids = node.outputs.predictions.get_array('uuids').tolist()
    assert sorted(uuids) == sorted(
        frame.info['source_uuid'] for frame in dataset.frames() if frame.info['split'] == 'val'
    )


def test_committee_of_copies_has_zero_spread(predictor, dataset, mace_model):
    _, node = run_get_node(builder_for(predictor, [mace_model] * 3, dataset=dataset))
    assert node.is_finished_ok, node.exit_message
    committee = node.outputs.committee
    assert committee.get_array('uuids').tolist() == node.outputs.predictions.get_array('uuids').tolist()
    np.testing.assert_allclose(committee.get_array('energy_per_atom_std'), 0.0, atol=1e-12)
    np.testing.assert_allclose(committee.get_array('force_std_max'), 0.0, atol=1e-12)
    stress = committee.get_array('stress_std_max')
    periodic = np.isfinite(stress)
    assert periodic.any() and not periodic.all()  # the H2 molecule has no stress
    np.testing.assert_allclose(stress[periodic], 0.0, atol=1e-12)
    predictions = node.outputs.predictions.get_array('energy_per_atom')
    np.testing.assert_allclose(committee.get_array('energy_per_atom_mean'), predictions[0], atol=1e-12)


def test_committee_of_different_models_has_positive_spread(mace, predictor, dataset, mace_model):
    # A second MACE of another width and seed (a MACE and a PET cannot be one committee: their energy references
    # differ). The dataset's training split always holds a frame with forces (``choose_seed``): on the symmetric bulk
    # frame alone MACE scales its interaction energy by a force RMS of ~1e-31 eV/Å and every model gives the E0 sum.
    other = mace_trained(mace, dataset, seed=1, num_channels=16).outputs.model
    files = [model.base.repository.get_object_content(model.filename, mode='rb') for model in (mace_model, other)]
    assert files[0] != files[1], 'the two models are the same file'
    frames = dataset.frames()
    _, node = run_get_node(builder_for(predictor, [mace_model, other], dataset=dataset))
    assert node.is_finished_ok, node.exit_message
    committee = node.outputs.committee
    by_uuid = predictions_by_uuid(node.outputs.predictions, committee)
    # each member's predictions are its own model's, not the other's
    for member, model in enumerate((mace_model, other)):
        for uuid, (energy, forces, _) in reference(model, frames).items():
            assert by_uuid[uuid]['energy'][member] == pytest.approx(energy, abs=1e-9)
            np.testing.assert_allclose(by_uuid[uuid]['forces'][member], forces, atol=1e-9)
    assert np.all(committee.get_array('energy_per_atom_std') > 0)
    energies = node.outputs.predictions.get_array('energy_per_atom')
    np.testing.assert_allclose(committee.get_array('energy_per_atom_std'), energies.std(axis=0), rtol=1e-12)
    for frame in frames:  # the forces of the high-symmetry frames are zero by symmetry for any model
        entry = by_uuid[frame.info['source_uuid']]
        assert entry['energy_per_atom_std'] == pytest.approx(float(np.std(entry['energy_per_atom'])))
        if np.abs(frame.arrays['forces']).max() > 1e-3:
            assert entry['force_std_max'] > 0, frame.info['source_uuid']


def dos_reference(model: ModelData, frames) -> np.ndarray:
    """Return the ``(n, G)`` DOS of ``frames`` by the model's own metatomic calculator, one structure at a time."""
    from metatomic.torch import ModelOutput

    with model.as_path() as path:
        calculator = Model(path).ase_calculator()
        outputs = [
            calculator.run_model(frame, {'mtt::dos': ModelOutput(per_atom=False)})['mtt::dos'].block().values
            for frame in frames
        ]
    return np.concatenate([values.detach().double().numpy() for values in outputs])


def test_dos_committee_predictions(mtt, predictor, labelled):
    from aiida_mad.dos import GRID_POINTS, energy_grid

    models = [dos_trained(mtt, labelled, seed=seed).outputs.model for seed in (0, 1)]
    dataset = training_dataset(labelled, name='train-test-dos', include_dos=True)
    _, node = run_get_node(builder_for(predictor, models, dataset=dataset))
    assert node.is_finished_ok, node.exit_message
    predictions, committee = node.outputs.predictions, node.outputs.committee
    assert predictions.base.attributes.get('targets') == ['dos']
    assert 'energy' not in predictions.get_arraynames() and 'energy_per_atom_std' not in committee.get_arraynames()
    frames = dataset.frames()
    order = {uuid: index for index, uuid in enumerate(predictions.get_array('uuids'))}
    dos = predictions.get_array('dos')
    assert dos.shape == (2, len(frames), GRID_POINTS)
    np.testing.assert_array_equal(predictions.get_array('dos_energies'), energy_grid())
    for position, model in enumerate(models):
        expected = dos_reference(model, frames)
        rows = [order[frame.info['source_uuid']] for frame in frames]
        np.testing.assert_allclose(dos[position, rows], expected, atol=1e-5)
    np.testing.assert_allclose(committee.get_array('dos_mean'), dos.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(committee.get_array('dos_std'), dos.std(axis=0), rtol=1e-12)
    assert np.all(committee.get_array('dos_std').max(axis=1) > 0)  # two seeds: two different models
    entry = predictions_by_uuid(predictions, committee)[frames[0].info['source_uuid']]
    assert entry['dos'].shape == (2, GRID_POINTS) and entry['dos_std'].shape == (GRID_POINTS,)


def test_energy_and_dos_models_not_mixed(mtt, predictor, labelled, pet_model):
    dos_model = dos_trained(mtt, labelled).outputs.model
    dataset = training_dataset(labelled, name='train-test-dos', include_dos=True)
    with pytest.raises(ValueError, match=r'do not all predict the same targets \(`model_0`: energy, `model_1`: dos\)'):
        run_get_node(builder_for(predictor, [pet_model, dos_model], dataset=dataset))


def test_unknown_element_refused_by_name(predictor, mace_model):
    water = molecule('H2O')
    water.center(vacuum=4.0)
    structure = orm.StructureData(ase=water).store()
    before = orm.QueryBuilder().append(orm.CalcJobNode).count()
    with pytest.raises(ValueError, match=rf'structure {structure.uuid} has O, which model `model_0`'):
        run_get_node(builder_for(predictor, [mace_model], structures={'water': structure}))
    assert orm.QueryBuilder().append(orm.CalcJobNode).count() == before


def test_model_file_of_the_wrong_kind_refused(predictor, dataset, tmp_path):
    path = tmp_path / 'model.pt'
    path.write_bytes(b'this is not a model')
    before = orm.QueryBuilder().append(orm.CalcJobNode).count()
    with pytest.raises(ValueError, match=r'model\.pt is not a model aiida-mad can run'):
        run_get_node(builder_for(predictor, [ModelData(path)], dataset=dataset))
    assert orm.QueryBuilder().append(orm.CalcJobNode).count() == before


def test_models_on_different_energy_references_refused(predictor, dataset, mace_model, pet_model):
    with pytest.raises(ValueError, match='different references'):
        run_get_node(builder_for(predictor, [mace_model, pet_model], dataset=dataset))


def test_structures_and_dataset_exclusive(predictor, dataset, mace_model):
    with pytest.raises(ValueError, match='either a `dataset` or `structures`'):
        run_get_node(builder_for(predictor, [mace_model]))
    with pytest.raises(ValueError, match='give at least one model'):
        run_get_node(builder_for(predictor, [], dataset=dataset))


def test_cli_predict_prints_committee_spread(run_cli_command, predictor, dataset, mace_model):
    group, _ = orm.Group.collection.get_or_create('test-predict-structures')
    structures = [orm.StructureData(ase=frame).store() for frame in dataset.frames()[:2]]
    group.add_nodes(structures)
    code = f'{predictor.label}@{predictor.computer.label}'
    result = run_cli_command(['model', 'predict', mace_model.pk, mace_model.pk, '--group', group.label, '-X', code])
    assert 'σE (meV/atom)' in result.output
    for structure in structures:
        assert structure.uuid[:8] in result.output
    result = run_cli_command(['model', 'predict', mace_model.pk, '-X', code], raises=True)
    assert 'give either --group or --dataset' in result.output


def test_float32_predictions_of_a_float64_mace_model(dataset, mace_model, pet_model):
    frames = dataset.frames()
    with mace_model.as_path() as path:
        own, single = Model(path), Model(path, dtype='float32')
        assert (str(own.dtype), str(single.dtype)) == ('torch.float64', 'torch.float32')
        expected, predicted = own.predict(frames, 4), single.predict(frames, 4)
    np.testing.assert_allclose(predicted.energy, expected.energy, rtol=1e-5)
    np.testing.assert_allclose(predicted.forces, expected.forces, atol=1e-4)
    assert not np.array_equal(predicted.energy, expected.energy)  # really computed in float32
    with pet_model.as_path() as path, pytest.raises(ValueError, match='exported in float32; it cannot run in float64'):
        Model(path, dtype='float64')
