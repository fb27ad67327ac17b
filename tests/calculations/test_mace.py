"""``MaceTrainCalculation`` (``mad.mace``): the files it writes, its guards, and real tiny ``mace_run_train`` runs.

The dataset comes from the project's own pipeline (real pw.x results of ``tests/labelled.py`` through the
``mad.dataset`` work chain); the trainings are real MACE runs of two epochs on one core.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from aiida import orm
from aiida.engine import run_get_node
from ase.data import atomic_numbers

from aiida_mad.calculations.mace import CONFIG_FILE, MaceTrainCalculation, parse_e0s
from aiida_mad.data.model import ModelData
from aiida_mad.inference.models import Model
from aiida_mad.parsers.mace import NEGLIGIBLE_SCALE, model_facts
from tests.training import TINY_MACE, mace_builder, mace_trained, prepare


def test_writes_config_with_ref_keys_and_baseline_e0s(mace, dataset):
    calcinfo, files = prepare(mace_builder(mace, dataset), folders=('checkpoints',))
    assert sorted(files) == [CONFIG_FILE, 'mad-test.xyz', 'mad-train.xyz', 'mad-val.xyz']
    config = yaml.safe_load(files[CONFIG_FILE])
    assert config['name'] == 'aiida'
    assert (config['energy_key'], config['forces_key'], config['stress_key']) == (
        'REF_energy',
        'REF_forces',
        'REF_stress',
    )
    assert (config['train_file'], config['valid_file'], config['test_file']) == (
        'mad-train.xyz',
        'mad-val.xyz',
        'mad-test.xyz',
    )
    # E0s: exactly the dataset's isolated-atom energies (same fingerprint), never a fit.
    baseline = dataset.atomic_energies
    assert baseline
    assert parse_e0s(config['E0s']) == {atomic_numbers[element]: energy for element, energy in baseline.items()}
    for key, value in TINY_MACE.items():
        assert config[key] == value
    counts = dataset.base.attributes.get('split_counts')
    for split in ('train', 'val', 'test'):
        text = files[f'mad-{split}.xyz']
        assert text.count('Properties=') == counts[split]
        # frames without stress carry no REF_stress at all (MACE: stress weight 0), never NaN
        assert 'nan' not in text.lower()
    assert calcinfo.codes_info[0].cmdline_params == ['--config', CONFIG_FILE]
    assert 'aiida.model' in calcinfo.retrieve_list and 'aiida_compiled.model' in calcinfo.retrieve_list
    assert calcinfo.retrieve_temporary_list == ['checkpoints/aiida_run-*_epoch-*.pt']


@pytest.mark.parametrize(
    ('parameters', 'settings', 'message'),
    [
        ({**TINY_MACE, 'num_chanels': 8}, None, "no option(s) ['num_chanels']"),
        ({**TINY_MACE, 'max_num_epochs': 'two'}, None, "invalid int value: 'two'"),
        ({**TINY_MACE, 'E0s': 'average'}, None, "may not set ['E0s']"),
        ({**TINY_MACE, 'name': 'other'}, None, "may not set ['name']"),
        (TINY_MACE, {'e0s': 'average'}, 'has an isolated-atom baseline'),
        (TINY_MACE, {'e0': 'average'}, "unknown settings key(s) ['e0']"),
    ],
)
def test_bad_input_refused_before_submission(mace, dataset, parameters, settings, message):
    inputs = {'settings': orm.Dict(settings)} if settings else {}
    before = orm.QueryBuilder().append(orm.CalcJobNode).count()
    with pytest.raises(ValueError, match='Error occurred validating port') as info:
        run_get_node(mace_builder(mace, dataset, parameters, **inputs))
    assert message in str(info.value)
    assert orm.QueryBuilder().append(orm.CalcJobNode).count() == before


def test_real_training(mace, dataset):
    node = mace_trained(mace, dataset)
    model = node.outputs.model
    assert isinstance(model, ModelData)
    assert model.architecture == 'mace'
    assert model.dataset_uuid == dataset.uuid
    assert model.fingerprint == dataset.fingerprint
    assert model.energy_reference == 'total'
    assert model.epochs == 2
    assert model.base.attributes.get('e0s') == dataset.atomic_energies
    assert model.base.attributes.get('baseline')['fingerprint'] == dataset.fingerprint
    assert model.n_parameters > 0
    # The training split has frames with forces (tests/training.py::choose_seed): a real interaction scale.
    assert model.base.attributes.get('interaction_scale') > 0.01
    assert set(model.errors) >= {'train', 'val'}
    metrics = node.outputs.metrics
    assert metrics.get_array('epoch').tolist() == [0, 1]
    assert np.all(np.isfinite(metrics.get_array('training_loss')))
    assert np.all(np.isfinite(metrics.get_array('validation_rmse_e_per_atom')))
    checkpoint = node.outputs.checkpoint
    assert checkpoint.base.attributes.get('architecture') == 'mace'
    assert checkpoint.filename.startswith('aiida_run-0_epoch-')
    assert 'compiled_model' in node.outputs
    # MACE really used the dataset's baseline as its E0s: they are in the trained model.
    with model.as_path() as path:
        module = torch.load(path, map_location='cpu', weights_only=False)
    energies = module.atomic_energies_fn.atomic_energies.reshape(-1).tolist()  # one head
    used = dict(zip(module.atomic_numbers.tolist(), energies, strict=True))
    expected = {atomic_numbers[element]: energy for element, energy in dataset.atomic_energies.items()}
    assert used == pytest.approx(expected, abs=1e-10)
    # the model links back to its dataset
    assert dataset.uuid in {link.node.uuid for link in node.base.links.get_incoming().all()}


def test_model_facts_read_the_interaction_scale(mace, dataset, tmp_path):
    # The real model, and a copy whose scale is what MACE's rms_forces_scaling gives on forces of ~1e-31 eV/Å.
    model = mace_trained(mace, dataset).outputs.model
    with model.as_path() as path:
        facts = model_facts(path)
        module = torch.load(path, map_location='cpu', weights_only=False)
    assert facts['n_parameters'] == model.n_parameters
    assert facts['interaction_scale'] == pytest.approx(model.base.attributes.get('interaction_scale'), rel=1e-12)
    module.scale_shift.scale.fill_(3e-31)
    torch.save(module, tmp_path / 'degenerate.model')
    scale = model_facts(tmp_path / 'degenerate.model')['interaction_scale']
    assert scale == pytest.approx(3e-31) and scale < NEGLIGIBLE_SCALE
    # Such a model predicts the sum of its E0s to the last bit, whatever the structure: no committee spread.
    calculator = Model(tmp_path / 'degenerate.model').ase_calculator()
    for frame in dataset.frames():
        atoms = frame.copy()
        atoms.calc = calculator
        e0s = sum(dataset.atomic_energies[symbol] for symbol in atoms.get_chemical_symbols())
        assert atoms.get_potential_energy() == pytest.approx(e0s, rel=1e-15, abs=1e-12)
    (tmp_path / 'broken.model').write_bytes(b'not a model')
    assert model_facts(tmp_path / 'broken.model') == {'n_parameters': None, 'interaction_scale': None}


def test_restart_continues_the_epoch_count(mace, dataset):
    first = mace_trained(mace, dataset)
    checkpoint = first.outputs.checkpoint
    _, files = prepare(
        mace_builder(mace, dataset, {**TINY_MACE, 'max_num_epochs': 4}, restart=checkpoint), folders=('checkpoints',)
    )
    assert yaml.safe_load(files[CONFIG_FILE])['restart_latest'] is True
    _, node = run_get_node(mace_builder(mace, dataset, {**TINY_MACE, 'max_num_epochs': 4}, restart=checkpoint))
    assert node.is_finished_ok, node.exit_message
    epochs = node.outputs.metrics.get_array('epoch').tolist()
    # MACE resumes at the epoch number of its checkpoint (its own counting) and goes on to max_num_epochs
    assert epochs[0] == checkpoint.base.attributes.get('epoch')
    assert epochs[-1] == 3
    assert node.outputs.model.epochs == 4
    assert node.outputs.model.base.attributes.get('restarted_from')['uuid'] == checkpoint.uuid


def test_restart_of_another_kind_refused(mace, dataset, tmp_path):
    path = tmp_path / 'model.ckpt'
    path.write_bytes(b'not a checkpoint')
    wrong = orm.SinglefileData(path)
    with pytest.raises(ValueError, match='is not a MACE checkpoint'):
        run_get_node(mace_builder(mace, dataset, restart=wrong))
    pet = orm.SinglefileData(path, filename='aiida_run-0_epoch-1.pt')
    pet.base.attributes.set('architecture', 'pet')
    with pytest.raises(ValueError, match='is a `pet` checkpoint, not a MACE one'):
        run_get_node(mace_builder(mace, dataset, restart=pet))


def test_process_class_registered():
    from aiida.plugins import CalculationFactory, ParserFactory

    assert CalculationFactory('mad.mace') is MaceTrainCalculation
    assert ParserFactory('mad.mace').__name__ == 'MaceTrainParser'


def test_protocols_build_checked_builders(mace, dataset):
    from aiida_mad.workflows.mace import MaceTrainWorkChain

    assert set(MaceTrainWorkChain.get_available_protocols()) == {'mace-mp-large', 'mace-small', 'tiny'}
    large = MaceTrainWorkChain.get_protocol_inputs('mace-mp-large')['mace']['parameters']
    assert (large['num_channels'], large['max_L'], large['r_max'], large['max_num_epochs']) == (128, 2, 6.0, 100)
    # MACE-MP-0a large (mace-mp mace_mp_0a/2024-01-07-mace-128-L2.sh), not the 0b settings (ZBL, Agnesi)
    assert (large['model'], large['interaction_first'], large['lr'], large['ema_decay']) == (
        'ScaleShiftMACE',
        'RealAgnosticResidualInteractionBlock',
        0.005,
        0.995,
    )
    assert 'pair_repulsion' not in large and 'distance_transform' not in large
    assert MaceTrainWorkChain.get_protocol_inputs('mace-small')['mace']['parameters']['max_L'] == 0
    builder = MaceTrainWorkChain.get_builder_from_protocol(mace, dataset, 'tiny', name='tiny-mace')
    assert builder.mace.parameters.get_dict()['num_channels'] == 8
    with pytest.raises(ValueError, match='unknown protocol `huge`'):
        MaceTrainWorkChain.get_builder_from_protocol(mace, dataset, 'huge')
    # the large protocol's batch of 16 is refused on a dataset of a few frames, before anything is stored
    with pytest.raises(ValueError, match='batch_size 16 is larger than the'):
        MaceTrainWorkChain.get_builder_from_protocol(mace, dataset, 'mace-mp-large')
