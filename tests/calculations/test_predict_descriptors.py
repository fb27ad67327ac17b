"""Per-structure descriptors of ``mad.predict`` and DIRECT on them: real tiny MACE and PET models, real runs.

The descriptors of a batch are compared with those each model's own calculator gives one structure at a time
(``MACECalculator.get_descriptors``, the metatomic calculator's ``features`` output), averaged over atoms; the
selection of active learning records which featurization DIRECT used.
"""

# No ``from __future__ import annotations``: metatomic reads the annotations of a model's ``forward`` as typing objects.
from typing import Dict, List, Optional  # noqa: UP035 (metatomic checks for these)

import numpy as np
import pytest
import torch
from aiida import orm
from aiida.engine import run_get_node
from metatensor.torch import Labels, TensorBlock, TensorMap
from metatomic.torch import ModelOutput, System

from aiida_mad.calculations.predict import PredictCalculation, predictions_by_uuid
from aiida_mad.data.model import ModelData
from aiida_mad.inference.models import MACE_DESCRIPTORS, METATOMIC_DESCRIPTORS, DescriptorError, Model
from aiida_mad.inference.predict import predict
from tests.training import TINY_MACE, mace_trained


@pytest.fixture
def compiled_mace(mace, dataset):
    """The TorchScript file of the tiny MACE training as a model node: it exposes no irreps, so no descriptors."""
    compiled = mace_trained(mace, dataset).outputs.compiled_model
    with compiled.as_path() as path:
        return ModelData(path).store()


def builder_for(code, models, dataset, parameters):
    builder = PredictCalculation.get_builder()
    builder.code = code
    builder.models = {f'model_{index}': model for index, model in enumerate(models)}
    builder.dataset = dataset
    builder.parameters = orm.Dict(parameters)
    builder.metadata.options.max_wallclock_seconds = 600
    return builder


def test_mace_descriptors_equal_get_descriptors(predictor, dataset, mace_model):
    """Batches of 2: the mean over atoms of the last layer's invariants of ``get_descriptors``, per structure."""
    from mace.calculators import MACECalculator

    parameters = {'batch_size': 2, 'descriptors': True}
    _, node = run_get_node(builder_for(predictor, [mace_model, mace_model], dataset, parameters))
    assert node.is_finished_ok, node.exit_message
    predictions = node.outputs.predictions
    descriptors = predictions.get_array('descriptors')
    frames = dataset.frames()
    dimension = TINY_MACE['num_channels']  # max_L = 0: the last layer has num_channels scalars
    assert descriptors.shape == (2, len(frames), dimension) and descriptors.dtype == np.float64
    assert predictions.base.attributes.get('descriptors') == {
        'kind': MACE_DESCRIPTORS,
        'kinds': [MACE_DESCRIPTORS, MACE_DESCRIPTORS],
        'dimension': dimension,
        'reduction': 'mean over atoms',
    }
    assert 'descriptors' not in node.outputs.committee.get_arraynames()
    by_uuid = predictions_by_uuid(predictions)
    with mace_model.as_path() as path:
        calculator = MACECalculator(model_paths=str(path), device='cpu', default_dtype='float64')
        for frame in frames:
            expected = calculator.get_descriptors(frame.copy())[:, -dimension:].mean(axis=0)
            entry = by_uuid[frame.info['source_uuid']]['descriptors']
            assert entry.shape == (2, dimension)
            np.testing.assert_allclose(entry[0], expected, rtol=1e-10, atol=1e-12)
            np.testing.assert_array_equal(entry[1], entry[0])
    assert len({tuple(row) for row in descriptors[0]}) == len(frames)  # the structures differ


def test_pet_descriptors_equal_its_features_output(dataset, pet_model):
    """The mean over atoms of metatomic's ``features`` output, batched as the energies, equals one at a time."""
    frames = dataset.frames()
    with pet_model.as_path() as path:
        model = Model(path)
        assert model.check_descriptors() == METATOMIC_DESCRIPTORS
        arrays = predict([model], frames, batch_size=3, descriptors=True)
        calculator = model.ase_calculator()
        expected = [
            calculator.run_model(frame, {'features': ModelOutput(sample_kind='atom')})['features']
            .block()
            .values.detach()
            .double()
            .numpy()
            .mean(axis=0)
            for frame in frames
        ]
    assert arrays['descriptors'].shape == (1, len(frames), len(expected[0])) and arrays['descriptors'].dtype == float
    np.testing.assert_allclose(arrays['descriptors'][0], np.stack(expected), rtol=1e-5, atol=1e-6)
    assert model.descriptor_dimension == len(expected[0])
    assert 'descriptors' not in predict([model], frames[:1])  # off by default


def test_models_of_different_dimensions_refused(dataset, mace_model, pet_model):
    frames = dataset.frames()[:1]
    with mace_model.as_path() as mace_path, pet_model.as_path() as pet_path:
        models = [Model(mace_path), Model(pet_path)]
        with pytest.raises(ValueError, match='the models give descriptors of different dimensions'):
            predict(models, frames, descriptors=True)


class PerType(torch.nn.Module):
    """A metatomic model of energy only (0.1 eV per unit of atomic number), without a ``features`` output."""

    def forward(
        self,
        systems: List[System],  # noqa: UP006 (metatomic checks for typing's List, Dict and Optional)
        outputs: Dict[str, ModelOutput],  # noqa: UP006
        selected_atoms: Optional[Labels] = None,  # noqa: UP045
    ) -> Dict[str, TensorMap]:  # noqa: UP006
        energies = [
            (0.1 * system.types.to(system.positions.dtype)).sum() + 0.0 * system.positions.sum() for system in systems
        ]
        block = TensorBlock(
            values=torch.stack(energies).reshape(-1, 1),
            samples=Labels('system', torch.arange(len(systems), dtype=torch.int32).reshape(-1, 1)),
            components=[],
            properties=Labels('energy', torch.tensor([[0]], dtype=torch.int32)),
        )
        return {'energy': TensorMap(Labels('_', torch.tensor([[0]], dtype=torch.int32)), [block])}


def test_a_metatomic_model_without_features_is_refused(tmp_path):
    from ase.build import bulk
    from metatomic.torch import AtomisticModel, ModelCapabilities, ModelMetadata

    capabilities = ModelCapabilities(
        outputs={'energy': ModelOutput(unit='eV', sample_kind='system')},
        atomic_types=[1, 14],
        interaction_range=0.0,
        length_unit='angstrom',
        supported_devices=['cpu'],
        dtype='float64',
    )
    path = tmp_path / 'per-type.pt'
    AtomisticModel(PerType().eval(), ModelMetadata(), capabilities).save(str(path))
    model = Model(path)
    assert (model.kind, model.targets, model.descriptor_kind) == ('metatomic', ('energy',), None)
    silicon = bulk('Si')
    silicon.info['source_uuid'] = 'si'
    assert predict([model], [silicon])['energy'][0, 0] == pytest.approx(2.8)
    with pytest.raises(
        DescriptorError, match=r'model per-type\.pt cannot give descriptors: it has no `features` output'
    ):
        predict([model], [silicon], descriptors=True)


def test_a_compiled_mace_model_is_refused(predictor, dataset, mace_model, compiled_mace):
    """A compiled MACE file: refused by name and reason, by the pure code and before ``mad.predict`` runs."""
    with compiled_mace.as_path() as path:
        model = Model(path)
        assert model.kind == 'mace' and model.descriptor_kind is None
        with pytest.raises(DescriptorError, match=r'cannot give descriptors: a compiled \(TorchScript\) MACE model'):
            predict([model], dataset.frames(), descriptors=True)
        assert model.predict(dataset.frames()[:1]).energy.shape == (1,)  # energies still work
    before = orm.QueryBuilder().append(orm.CalcJobNode).count()
    builder = builder_for(predictor, [mace_model, compiled_mace], dataset, {'descriptors': True})
    with pytest.raises(ValueError, match=rf'model `model_1` \(pk {compiled_mace.pk}, .*\) cannot give descriptors'):
        run_get_node(builder)
    assert orm.QueryBuilder().append(orm.CalcJobNode).count() == before
    with pytest.raises(ValueError, match=r'parameters\.descriptors must be true or false'):
        run_get_node(builder_for(predictor, [mace_model], dataset, {'descriptors': 'yes'}))


def test_selection_records_the_featurization(predictor, mace, dataset, compiled_mace):
    """DIRECT runs on the first member's descriptors when the predictions have them, else on the fallback."""
    from aiida_mad.calculations.pool import PoolPredictCalculation, create_pool
    from aiida_mad.calculations.selection import descriptor_parameters, select_candidates
    from aiida_mad.learning.direct import direct_sample

    pool = create_pool(
        orm.Dict({'count': 12, 'batch_size': 6, 'seed': 1, 'prototypes': {'max_atoms': 2}, 'element_pool': ['H', 'Si']})
    )
    models = {f'member_{seed}': mace_trained(mace, dataset, seed=seed).outputs.model for seed in (0, 1)}
    parameters, reason = descriptor_parameters(models, {'batch_size': 4})
    assert parameters == {'batch_size': 4, 'descriptors': True} and reason is None
    builder = PoolPredictCalculation.get_builder()
    builder.code = predictor
    builder.pool = pool
    builder.models = models
    builder.parameters = orm.Dict(parameters)
    builder.metadata.options.max_wallclock_seconds = 600
    _, node = run_get_node(builder)
    assert node.is_finished_ok, node.exit_message
    predictions, committee = node.outputs.predictions, node.outputs.committee

    settings = {'thresholds': {'energy': 1e-9, 'force': 1e-9, 'stress': 1e-9}, 'direct': {'n_clusters': 2}}
    settings['direct']['per_cluster'] = 1
    results = select_candidates(pool, committee, orm.Dict(settings), predictions)
    summary = results['summary'].get_dict()
    assert summary['featurization'] == 'descriptors' and summary['direct']['run']
    assert summary['descriptors'] == {
        'kind': MACE_DESCRIPTORS,
        'dimension': TINY_MACE['num_channels'],
        'model': models['member_0'].uuid,
        'predictions': predictions.uuid,
    }
    assert results['table'].base.attributes.get('featurization') == 'descriptors'
    # DIRECT on member 0's descriptors of the selected candidates, in pool order, picks what the table says.
    ids = pool.index()['ids']
    table = results['table']
    selected = np.flatnonzero(table.get_array('selected'))
    assert len(selected) > 2
    row = {str(uuid): index for index, uuid in enumerate(predictions.get_array('uuids'))}
    features = predictions.get_array('descriptors')[0][[row[str(i)] for i in ids]][selected]
    expected = direct_sample(features, n_clusters=2, per_cluster=1, seed=0)
    np.testing.assert_array_equal(np.flatnonzero(table.get_array('downsampled')), selected[expected.indices])

    fallback = select_candidates(pool, committee, orm.Dict(settings))
    summary = fallback['summary'].get_dict()
    assert summary['featurization'] == 'fallback' and summary['fallback_reason'] == 'no predictions given'
    assert summary['features'].startswith('fallback: composition')
    assert fallback['table'].base.attributes.get('featurization') == 'fallback'

    models['member_1'] = compiled_mace
    parameters, reason = descriptor_parameters(models, {'batch_size': 4})
    assert parameters == {'batch_size': 4, 'descriptors': False}
    assert reason.startswith(f'model `member_1` (pk {compiled_mace.pk}') and 'compiled (TorchScript)' in reason
    assert descriptor_parameters(models, {'descriptors': False})[1] == 'descriptors: false in the prediction parameters'
