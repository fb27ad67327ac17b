"""The ``mad.dos_cnn`` CalcJob run end to end with the real ``aiida-mad-dos-cnn`` script, and its CLI.

The tiny dataset is the labelled data of ``tests/labelled.py`` with the DFT DOS (4 frames: Si, two rattled Si, H2).
The first test's "predicted" DOS is each frame's DFT DOS moved rigidly by a known shift, so the Fermi-level targets
are known; the CLI test runs the real chain: a tiny PET-MAD-DOS model, its predictions through ``mad.predict``, the
CNNs on them.
"""

from __future__ import annotations

import numpy as np
import pytest
from aiida import orm
from aiida.engine import run_get_node

from aiida_mad.calculations.dos_cnn import DosCnnCalculation
from aiida_mad.data.dos_cnn import DosCnnModelData
from aiida_mad.dos import energy_grid, integrated_dos
from tests.training import BIN, dos_trained, installed_code, training_dataset

#: Few epochs: the test checks the pipeline, not the accuracy.
QUICK = {'max_epochs': 2, 'warmup_epochs': 1, 'patience': 2, 'batch_size': 4}
SHIFT = 0.35


@pytest.fixture
def cnn_code(aiida_localhost, aiida_code_installed):
    """The real ``aiida-mad-dos-cnn`` code."""
    return installed_code(
        aiida_localhost,
        aiida_code_installed,
        label='dos-cnn',
        plugin='mad.dos_cnn',
        executable=BIN / 'aiida-mad-dos-cnn',
    )


@pytest.fixture
def dos_dataset(labelled):
    return training_dataset(labelled, name='train-test-dos', include_dos=True)


def shifted_dft_dos(dataset, shift=SHIFT) -> orm.ArrayData:
    """Return each frame's DFT DOS moved up by ``shift`` eV (NaN as zero), as a DOS model's predictions would be."""
    grid = energy_grid()
    frames = dataset.frames()
    dos = np.array([np.interp(grid - shift, grid, np.nan_to_num(frame.info['dos'])) for frame in frames])
    uuids = np.array([frame.info['source_uuid'] for frame in frames])
    return orm.ArrayData({'uuids': uuids, 'dos': dos[None], 'dos_energies': grid})


def dft_properties(dataset) -> dict[str, dict]:
    index = dataset.index()
    return {
        str(uuid): orm.load_node(str(dft)).outputs.properties.get_dict()
        for uuid, dft in zip(index['source_uuid'], index['dft_uuid'], strict=True)
    }


def test_the_cnns_train_on_a_dos_and_the_denoised_dos_has_the_electrons(cnn_code, dos_dataset):
    dos = shifted_dft_dos(dos_dataset)
    builder = DosCnnCalculation.get_builder()
    builder.code = cnn_code
    builder.dos = dos
    builder.dataset = dos_dataset
    builder.parameters = orm.Dict(QUICK)
    builder.metadata.options.max_wallclock_seconds = 600
    _, node = run_get_node(builder)
    assert node.is_finished_ok, f'{node.exit_status} {node.exit_message}'

    properties = dft_properties(dos_dataset)
    predictions = node.outputs.predictions
    uuids = [str(uuid) for uuid in predictions.get_array('uuids')]
    assert sorted(uuids) == sorted(properties)
    # The targets: the DFT gaps, and the DFT Fermi level found at the known shift on the prediction's axis.
    np.testing.assert_allclose(predictions.get_array('gap_dft'), [properties[uuid]['gap'] for uuid in uuids])
    np.testing.assert_allclose(predictions.get_array('fermi_level_dft'), SHIFT, atol=1e-9)
    assert (predictions.get_array('gap_cnn') >= 0).all()
    assert list(predictions.get_array('split')) == [
        frame.info['split'] for frame in sorted(dos_dataset.frames(), key=lambda f: uuids.index(f.info['source_uuid']))
    ]

    # One model node per target, linked to the dataset and the DOS through the calculation, with its record.
    models = node.outputs.models
    assert set(models) == {'gap', 'fermi_level'}
    for target, model in models.items():
        assert isinstance(model, DosCnnModelData)
        assert model.target == target
        assert model.dataset_uuid == dos_dataset.uuid
        assert model.base.attributes.get('dos_uuid') == dos.uuid
        assert model.creator.inputs.dataset.uuid == dos_dataset.uuid
        assert model.base.attributes.get('epochs') == node.outputs.results['targets'][target]['epochs'] <= 2
        assert model.errors['train']['n'] >= 1
    natoms = [properties[uuid]['natoms'] for uuid in uuids]
    np.testing.assert_allclose(
        models['gap'].predict(dos.get_array('dos')[0], natoms), predictions.get_array('gap_cnn'), rtol=1e-5, atol=1e-6
    )

    # The denoised DOS integrates to the DFT electron count at the CNN's Fermi level.
    denoised = node.outputs.denoised
    fermi = predictions.get_array('fermi_level_cnn')
    assert denoised.base.attributes.get('n') == len(uuids)
    for row, uuid in enumerate(uuids):
        states = integrated_dos(denoised.get_array('energies'), denoised.get_array('denoised')[row], fermi[row])
        assert states == pytest.approx(properties[uuid]['n_electrons'], rel=1e-9)


def test_refused_inputs_name_the_problem(cnn_code, dataset, dos_dataset):
    builder = DosCnnCalculation.get_builder()
    builder.code = cnn_code
    builder.dataset = dos_dataset
    builder.dos = orm.ArrayData({'uuids': np.array(['x']), 'values': np.zeros((1, 10))})
    with pytest.raises(ValueError, match=r'has no array `dos`'):
        run_get_node(builder)
    builder.dos = orm.ArrayData({'uuids': np.array(['x']), 'dos': np.zeros((1, 10))})
    with pytest.raises(ValueError, match=r'has no `energies` and 10 points'):
        run_get_node(builder)
    builder.dos = shifted_dft_dos(dos_dataset)
    builder.dataset = dataset
    with pytest.raises(ValueError, match=rf'dataset {dataset.name} .* holds no DOS: the Fermi-level target'):
        run_get_node(builder)
    builder.parameters = orm.Dict({'targets': ['homo']})
    with pytest.raises(ValueError, match=r'parameters.targets must be a non-empty list'):
        run_get_node(builder)


def test_the_cli_trains_on_a_dos_models_predictions(mtt, predictor, cnn_code, labelled, dos_dataset, run_cli_command):
    from aiida_mad.calculations.predict import PredictCalculation

    dos_model = dos_trained(mtt, labelled).outputs.model
    args = ['model', 'dos-cnn', str(dos_model.pk), dos_dataset.name, '--code', cnn_code.full_label, '-t', 'gap']
    refused = run_cli_command(args, raises=True)
    assert f'run `aiida-mad model predict {dos_model.pk} --dataset {dos_dataset.name}` first' in refused.output

    builder = PredictCalculation.get_builder()
    builder.code = predictor
    builder.models = {'model_0': dos_model}
    builder.dataset = dos_dataset
    builder.metadata.options.max_wallclock_seconds = 600
    _, predict = run_get_node(builder)
    assert predict.is_finished_ok, predict.exit_message

    for option, value in QUICK.items():
        if option != 'batch_size':
            args += [f'--{option.replace("_", "-")}', str(value)]
    result = run_cli_command(args)
    assert 'MAE (eV)' in result.output and 'outputs models, predictions' in result.output
    node = (
        orm.QueryBuilder()
        .append(DosCnnCalculation, project='*')
        .order_by({DosCnnCalculation: {'id': 'desc'}})
        .first()[0]
    )
    assert node.is_finished_ok
    assert node.inputs.dos.uuid == predict.outputs.predictions.uuid
    model = node.outputs.models.gap
    assert model.dos_model_uuid == dos_model.uuid
    assert 'denoised' not in node.outputs and set(node.outputs.models) == {'gap'}
