"""``MetatrainCalculation`` (``mad.metatrain``): the files it writes, its guards, and real tiny ``mtt train`` runs.

The dataset comes from the project's own pipeline (real pw.x results of ``tests/labelled.py`` through the
``mad.dataset`` work chain); the trainings are real metatrain PET runs of a few epochs on one core.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import yaml
from aiida import orm
from aiida.common.links import LinkType
from aiida.engine import run_get_node

from aiida_mad.calculations.metatrain import OPTIONS_FILE, RESTART_FILE, MetatrainCalculation
from aiida_mad.data.model import ModelData, checkpoint_of
from tests.training import TINY_PET, prepare, train_builder, trained


def count_nodes(cls=orm.Node) -> int:
    return orm.QueryBuilder().append(cls).count()


def test_writes_options_and_split_files_from_the_shards(mtt, dataset):
    calcinfo, files = prepare(train_builder(mtt, dataset))
    assert sorted(files) == ['mad-test.xyz', 'mad-train.xyz', 'mad-val.xyz', OPTIONS_FILE]
    options = yaml.safe_load(files[OPTIONS_FILE])
    assert options['architecture'] == TINY_PET['architecture']
    energy = options['training_set']['targets']['energy']
    # MAD's default: the baseline-subtracted energies, with forces and stress.
    assert energy == {
        'key': 'REF_energy_baseline_subtracted',
        'quantity': 'energy',
        'unit': 'eV',
        'forces': {'key': 'REF_forces'},
        'stress': {'key': 'REF_stress'},
    }
    for section, split in (('training_set', 'train'), ('validation_set', 'val'), ('test_set', 'test')):
        assert options[section]['systems']['read_from'] == f'mad-{split}.xyz'
        frames = files[f'mad-{split}.xyz'].count('Properties=')
        assert frames == dataset.base.attributes.get('split_counts')[split] > 0
    assert calcinfo.codes_info[0].cmdline_params == ['train', OPTIONS_FILE]
    assert calcinfo.local_copy_list == []
    assert 'outputs/*/*/train.csv' in calcinfo.retrieve_list
    assert calcinfo.retrieve_temporary_list == ['outputs/*/*/model_*.ckpt']


def test_total_energy_on_request(mtt, dataset):
    _, files = prepare(train_builder(mtt, dataset, settings=orm.Dict({'energy': 'total', 'stress': False})))
    energy = yaml.safe_load(files[OPTIONS_FILE])['validation_set']['targets']['energy']
    assert energy['key'] == 'REF_energy'
    assert energy['stress'] is False


@pytest.mark.parametrize(
    ('change', 'expected'),
    [
        (lambda p: p['architecture']['training'].update(num_epoch=3), "Unrecognized option 'num_epoch'"),
        (lambda p: p['architecture']['model'].update(d_pett=8), "Unrecognized option 'd_pett'"),
        (lambda p: p.update(devic='cpu'), "Unrecognized option 'devic'"),
        (lambda p: p.update(training_set='x.xyz'), 'parameters may not set `training_set`'),
        (lambda p: p['architecture'].update(name='no_such_architecture'), 'no_such_architecture'),
    ],
)
def test_bad_options_refused_naming_the_key_before_anything_is_stored(mtt, dataset, change, expected):
    parameters = copy.deepcopy(TINY_PET)
    change(parameters)
    before = count_nodes()
    with pytest.raises(ValueError, match=expected):
        run_get_node(train_builder(mtt, dataset, parameters))
    assert count_nodes() == before


def test_unknown_settings_refused(mtt, dataset):
    with pytest.raises(ValueError, match=r"unknown settings key\(s\) \['energies'\]"):
        run_get_node(train_builder(mtt, dataset, settings=orm.Dict({'energies': 'total'})))


def test_dos_target_refused_for_a_dataset_without_dos(mtt, dataset):
    before = count_nodes()
    with pytest.raises(ValueError, match='has no DOS'):
        run_get_node(train_builder(mtt, dataset, settings=orm.Dict({'target': 'dos'})))
    assert count_nodes() == before


def test_real_training_energy_forces_stress(mtt, dataset):
    node = trained(mtt, dataset)
    model = node.outputs.model
    assert isinstance(model, ModelData)
    attributes = model.base.attributes.all
    assert attributes['architecture'] == 'pet'
    assert attributes['metatrain_version'] == '2026.4.1'
    assert attributes['targets']['energy']['unit'] == 'eV'
    assert attributes['targets']['energy']['gradients'] == {'forces': 'eV/Å', 'stress': 'eV/Å³'}
    assert attributes['energy_reference'] == 'baseline_subtracted'
    assert attributes['baseline']['fingerprint'] == dataset.fingerprint
    assert attributes['baseline']['elements'] == ['H', 'Si']
    assert attributes['dataset_uuid'] == dataset.uuid
    assert attributes['dataset_content_hash'] == dataset.content_hash
    assert attributes['fingerprint'] == dataset.fingerprint
    assert attributes['epochs'] == 3
    assert attributes['n_parameters'] >= attributes['n_trainable_parameters'] > 0
    assert 'final_evaluation_failed' not in attributes, attributes['final_evaluation_failed']
    for split in ('train', 'val', 'test'):
        errors = attributes['errors'][split]
        assert errors['energy RMSE (per atom) (meV)'] >= 0
        assert 'energy_positions_gradients MAE (meV/A)' in errors
    metrics = node.outputs.metrics
    np.testing.assert_array_equal(metrics.get_array('epoch'), [0, 1, 2])
    assert np.all(np.isfinite(metrics.get_array('training_loss')))
    assert metrics.base.attributes.get('columns')['validation_forces_rmse']['unit'] == 'meV/A'
    checkpoint = checkpoint_of(model)
    assert checkpoint.base.attributes.get('architecture') == 'pet'
    assert checkpoint.base.attributes.get('epoch') == 2
    # The exported model is a TorchScript metatomic model that ASE can run.
    from metatomic_ase import MetatomicCalculator

    frame = dataset.frames()[0]
    with model.as_path() as path:
        frame.calc = MetatomicCalculator(str(path), device='cpu')
        assert np.isfinite(frame.get_potential_energy())


def test_model_links_back_to_its_dataset_and_frames(mtt, dataset, labelled):
    node = trained(mtt, dataset)
    model = node.outputs.model
    assert model.creator.uuid == node.uuid
    assert node.inputs.dataset.uuid == dataset.uuid
    # From the model through the dataset to every DFT result it holds.
    query = orm.QueryBuilder()
    query.append(ModelData, filters={'uuid': model.uuid}, tag='model')
    query.append(orm.CalcJobNode, with_outgoing='model', tag='training')
    query.append(type(dataset), with_outgoing='training', tag='dataset')
    query.append(orm.CalcFunctionNode, with_outgoing='dataset', tag='build')
    query.append(orm.Data, with_outgoing='build', edge_filters={'type': LinkType.INPUT_CALC.value}, project='uuid')
    inputs = {uuid for (uuid,) in query.all()}
    used = [node for subset in labelled.used for node in labelled.nodes(subset)]
    for dft in used:
        assert dft.outputs.energy.uuid in inputs


def test_restart_continues_the_epoch_count(mtt, dataset):
    first = trained(mtt, dataset)
    parameters = copy.deepcopy(TINY_PET)
    parameters['architecture']['training']['num_epochs'] = 5
    builder = train_builder(mtt, dataset, parameters, restart=first.outputs.checkpoint)
    _, node = run_get_node(builder)
    assert node.is_finished_ok, node.exit_message
    np.testing.assert_array_equal(node.outputs.metrics.get_array('epoch'), [3, 4])
    assert node.outputs.model.epochs == 5
    assert node.outputs.model.base.attributes.get('restarted_from')['epoch'] == 2


def test_restart_from_another_architecture_refused_by_name(mtt, dataset):
    checkpoint = trained(mtt, dataset).outputs.checkpoint
    parameters = {'architecture': {'name': 'soap_bpnn'}, 'device': 'cpu'}
    before = count_nodes()
    with pytest.raises(ValueError, match='restart is a `pet` checkpoint, but the options train `soap_bpnn`'):
        run_get_node(train_builder(mtt, dataset, parameters, restart=checkpoint))
    assert count_nodes() == before


def test_restart_file_is_copied_and_named_on_the_command_line(mtt, dataset):
    checkpoint = trained(mtt, dataset).outputs.checkpoint
    calcinfo, _ = prepare(train_builder(mtt, dataset, restart=checkpoint))
    assert calcinfo.codes_info[0].cmdline_params == ['train', OPTIONS_FILE, '--restart', RESTART_FILE]
    assert calcinfo.local_copy_list == [(checkpoint.uuid, checkpoint.filename, RESTART_FILE)]


def test_process_class_is_registered():
    from aiida.plugins import CalculationFactory, DataFactory, ParserFactory

    assert CalculationFactory('mad.metatrain') is MetatrainCalculation
    assert DataFactory('mad.model') is ModelData
    assert ParserFactory('mad.metatrain').__name__ == 'MetatrainParser'
