"""``TrainWorkChain`` (``mad.train``): protocols, guards, a real training killed mid-run and restarted, GPUs on Slurm.

Real metatrain on the CPU with the ``tiny`` protocol; the killed run uses the real ``mtt`` behind a wrapper that
kills it (SIGKILL, as a node failure would) once it has written an intermediate checkpoint.
"""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import yaml
from aiida import orm
from aiida.engine import run_get_node

from aiida_mad.calculations.metatrain import MetatrainCalculation, validate_options
from aiida_mad.workflows.train import TrainWorkChain
from tests.training import MTT_EXECUTABLE, killer_script, mtt_code, trained, training_dataset

PROTOCOLS = ('pet-mad', 'pet-mad-dos', 'lora', 'llpr', 'tiny', 'tiny-dos')


def test_protocols_are_listed_with_descriptions():
    assert set(TrainWorkChain.get_available_protocols()) == set(PROTOCOLS)
    assert TrainWorkChain.get_default_protocol() == 'pet-mad'


@pytest.mark.parametrize('protocol', ['pet-mad', 'pet-mad-dos', 'tiny', 'tiny-dos'])
def test_protocol_options_pass_metatrains_schema(protocol):
    from aiida_mad.calculations.metatrain import build_options, build_targets, get_settings

    inputs = TrainWorkChain.get_protocol_inputs(protocol)
    settings = get_settings(inputs['settings'])
    options = build_options(inputs['metatrain']['parameters'], build_targets(settings, dos_length=4606))
    architecture = validate_options(options)
    assert architecture['name'] == 'pet'


def test_pet_mad_protocol_has_the_paper_numbers():
    parameters = TrainWorkChain.get_protocol_inputs('pet-mad')['metatrain']['parameters']['architecture']
    assert parameters['model'] == {
        'cutoff': 4.5,
        'num_gnn_layers': 2,
        'num_attention_layers': 2,
        'd_pet': 256,
        'num_heads': 8,
        'd_feedforward': 512,
        'd_head': 512,
    }
    training = parameters['training']
    assert (training['learning_rate'], training['num_epochs'], training['batch_size']) == (1e-4, 1500, 24)
    assert training['loss']['energy']['weight'] == 0.1
    assert training['loss']['energy']['forces']['weight'] == 1.0
    dos = TrainWorkChain.get_protocol_inputs('pet-mad-dos')
    assert dos['settings']['target'] == 'dos'
    training = dos['metatrain']['parameters']['architecture']['training']
    assert (training['num_epochs'], training['batch_size']) == (760, 16)
    assert training['loss']['mtt::dos'] == {
        'type': 'shift_agnostic_mse',
        'weight': 1.0,
        'int_weight': 2.0,
        'grad_penalty_weight': 1e-4,
    }
    assert 'energy' not in training['loss']
    lora = TrainWorkChain.get_protocol_inputs('lora')['metatrain']['parameters']['architecture']['training']
    assert lora['finetune'] == {'method': 'lora', 'config': {'rank': 8, 'alpha': 0.5}}
    llpr = TrainWorkChain.get_protocol_inputs('llpr')['metatrain']['parameters']['architecture']
    assert llpr['name'] == 'llpr'
    assert llpr['model']['num_ensemble_members'] == {'energy': 128}


def test_unknown_protocol_and_override_refused():
    with pytest.raises(ValueError, match='unknown protocol `fast`'):
        TrainWorkChain.get_protocol_inputs('fast')
    with pytest.raises(ValueError, match=r"unknown override keys \['setings'\]"):
        TrainWorkChain.get_protocol_inputs('tiny', {'setings': {}})


def test_builder_guards_refuse_before_anything_is_stored(mtt, dataset):
    before = orm.QueryBuilder().append(orm.Node).count()
    with pytest.raises(ValueError, match="Unrecognized option 'num_epoch'"):
        TrainWorkChain.get_builder_from_protocol(
            mtt, dataset, 'tiny', {'metatrain': {'parameters': {'architecture': {'training': {'num_epoch': 2}}}}}
        )
    with pytest.raises(ValueError, match='has no DOS'):
        TrainWorkChain.get_builder_from_protocol(mtt, dataset, 'tiny-dos')
    with pytest.raises(ValueError, match='needs a base model'):
        TrainWorkChain.get_builder_from_protocol(mtt, dataset, 'lora')
    assert orm.QueryBuilder().append(orm.Node).count() == before


def test_finetune_across_fingerprints_refused_unless_allowed(mtt, dataset):
    from aiida_mad.data.dataset import DatasetData

    model = trained(mtt, dataset).outputs.model
    frames = dataset.frames()
    for frame in frames:
        frame.info['fingerprint'] = 'f' * 64  # the same frames at another level of theory
    other = DatasetData(frames, name='other-level', seed=0, atomic_energies=dataset.atomic_energies).store()
    with pytest.raises(
        ValueError, match=f'fine-tuning refused: the base model was trained at fingerprint {dataset.fingerprint}'
    ):
        TrainWorkChain.get_builder_from_protocol(mtt, other, 'lora', base_model=model)
    builder = TrainWorkChain.get_builder_from_protocol(
        mtt, other, 'lora', base_model=model, allow_fingerprint_mismatch=True
    )
    assert builder.metatrain.allow_fingerprint_mismatch.value is True
    # The same level of theory needs no flag.
    TrainWorkChain.get_builder_from_protocol(mtt, dataset, 'lora', base_model=model)


def test_killed_training_restarts_from_its_checkpoint_and_finishes(
    mtt, dataset, aiida_localhost, aiida_code_installed, tmp_path
):
    # The real mtt, killed with SIGKILL once the checkpoint of epoch 4 is on disk (a restart runs unwrapped).
    script = killer_script(
        tmp_path / 'mtt-killed',
        MTT_EXECUTABLE,
        restarting='[[ " $* " == *" --restart "* ]]',
        glob='outputs/*/*/model_4.ckpt',
        pause='sleep 0.5',
        what='its checkpoint of epoch 4',
    )
    killer = mtt_code(aiida_localhost, aiida_code_installed, label='mtt-killed', executable=script)
    overrides = {
        'metatrain': {'parameters': {'architecture': {'training': {'num_epochs': 40, 'checkpoint_interval': 2}}}}
    }
    builder = TrainWorkChain.get_builder_from_protocol(
        killer, dataset, 'tiny', overrides, name='killed-and-restarted', progress_interval=1
    )
    _, node = run_get_node(builder)
    assert node.is_finished_ok, f'{node.exit_status} {node.exit_message}'
    first, second = sorted(node.called, key=lambda child: child.ctime)
    assert first.exit_status == MetatrainCalculation.exit_codes.ERROR_TRAINING_INTERRUPTED.status
    checkpoint = first.outputs.checkpoint
    epoch = checkpoint.base.attributes.get('epoch')
    assert epoch >= 4 and epoch % 2 == 0
    assert second.inputs.restart.uuid == checkpoint.uuid
    epochs = second.outputs.metrics.get_array('epoch')
    assert epochs[0] == epoch + 1  # the epoch count goes on
    assert epochs[-1] == 39
    model = node.outputs.model
    assert model.epochs == 40
    assert orm.load_group('mad/models/killed-and-restarted').count() == 1
    reports = ' '.join(log.message for log in orm.Log.collection.get_logs_for(node))
    assert f'restarting from checkpoint {checkpoint.filename}<{checkpoint.pk}> (epoch {epoch})' in reports
    # The progress monitor reported epochs of the running calculations (verdi process report).
    progress = [log.message for child in (first, second) for log in orm.Log.collection.get_logs_for(child)]
    assert any(message.startswith('epoch ') and 'training loss' in message for message in progress), progress


def test_no_checkpoint_means_no_silent_restart_from_scratch(
    mtt, dataset, aiida_localhost, aiida_code_installed, tmp_path
):
    # The real mtt, killed as soon as it has opened its log: before any checkpoint exists.
    script = killer_script(
        tmp_path / 'mtt-dies',
        MTT_EXECUTABLE,
        restarting='[[ " $* " == *" --restart "* ]]',
        glob='outputs/*/*/train.log',
        pause='true',
        what='its checkpoint of epoch 4',
    )
    dying = mtt_code(aiida_localhost, aiida_code_installed, label='mtt-dies', executable=script)
    _, node = run_get_node(TrainWorkChain.get_builder_from_protocol(dying, dataset, 'tiny'))
    assert node.exit_status == TrainWorkChain.exit_codes.ERROR_NO_CHECKPOINT.status
    (calculation,) = node.called
    assert calculation.exit_status == MetatrainCalculation.exit_codes.ERROR_TRAINING_INTERRUPTED.status
    assert 'checkpoint' not in calculation.outputs


def test_gpu_slurm_submit_script(dataset, aiida_computer, tmp_path, monkeypatch):
    computer = aiida_computer(label='gpu-cluster', scheduler_type='core.slurm', transport_type='core.local')
    computer.set_mpirun_command(['srun'])
    computer.store()
    code = orm.InstalledCode(computer=computer, filepath_executable=str(MTT_EXECUTABLE), label='mtt-gpu').store()
    builder = TrainWorkChain.get_builder_from_protocol(code, dataset, 'tiny', gpus=2)
    options = builder.metatrain.metadata.options
    assert options['resources'] == {'num_machines': 1, 'num_mpiprocs_per_machine': 2}
    inputs = {key: builder.metatrain[key] for key in ('code', 'dataset', 'parameters', 'settings')}
    monkeypatch.chdir(tmp_path)
    _, node = run_get_node(
        MetatrainCalculation, **inputs, metadata={'options': dict(options), 'dry_run': True, 'store_provenance': False}
    )
    folder = pathlib.Path(node.dry_run_info['folder'])
    script = (folder / '_aiidasubmit.sh').read_text(encoding='utf-8')
    assert '#SBATCH --gres=gpu:2' in script
    assert '#SBATCH --ntasks-per-node=2' in script
    assert f"'srun' '{MTT_EXECUTABLE}' 'train' 'options.yaml'" in script
    written = yaml.safe_load((folder / 'options.yaml').read_text(encoding='utf-8'))
    assert written['device'] == 'cuda'


def test_gpus_refused_on_a_computer_without_srun(dataset, aiida_computer):
    computer = aiida_computer(label='mpirun-cluster', scheduler_type='core.slurm', transport_type='core.local')
    computer.set_mpirun_command(['mpirun', '-np', '{tot_num_mpiprocs}'])
    code = orm.InstalledCode(computer=computer, filepath_executable=str(MTT_EXECUTABLE), label='mtt-mpirun').store()
    with pytest.raises(ValueError, match='needs one Slurm task per GPU started by srun'):
        TrainWorkChain.get_builder_from_protocol(code, dataset, 'tiny', gpus=2)


def test_metrics_are_finite(mtt, dataset):
    assert np.all(np.isfinite(trained(mtt, dataset).outputs.metrics.get_array('training_loss')))


def _state(path, key='model_state_dict'):
    import metatomic.torch  # noqa: F401
    import torch

    return torch.load(path, weights_only=False, map_location='cpu')[key]


def test_lora_finetune_trains_only_the_adapters(mtt, dataset):
    import torch

    base = trained(mtt, dataset)
    overrides = {
        'metatrain': {
            'parameters': {
                'device': 'cpu',
                'architecture': {
                    'training': {
                        'num_epochs': 2,
                        'batch_size': 1,
                        'num_workers': 0,
                        'finetune': {'config': {'rank': 2, 'alpha': 0.5}},
                    }
                },
            }
        }
    }
    builder = TrainWorkChain.get_builder_from_protocol(mtt, dataset, 'lora', overrides, base_model=base.outputs.model)
    _, node = run_get_node(builder)
    assert node.is_finished_ok, f'{node.exit_status} {node.exit_message}'
    model = node.outputs.model
    attributes = model.base.attributes.all
    assert attributes['finetune'] == {'method': 'lora', 'config': {'rank': 2, 'alpha': 0.5}}
    assert attributes['base_model']['uuid'] == base.outputs.checkpoint.uuid
    assert attributes['fingerprint_mismatch_allowed'] is False
    assert 0 < attributes['n_trainable_parameters'] < attributes['n_parameters']
    with base.outputs.checkpoint.as_path() as path:
        before = _state(path, 'best_model_state_dict')  # what fine-tuning starts from
    with node.outputs.checkpoint.as_path() as path:
        after = _state(path)
    adapters = [name for name in after if '.lora_' in name]
    assert adapters
    assert any(name.endswith('lora_B.weight') and after[name].abs().sum() > 0 for name in adapters)
    for name, value in after.items():
        if '.lora_' in name or not (torch.is_tensor(value) and value.is_floating_point()):
            continue
        original = name.replace('.linear.weight', '.weight').replace('.linear.bias', '.bias')
        assert torch.equal(value, before[original]), f'{name} changed: LoRA must freeze the base weights'


def test_llpr_model_yields_uncertainties(mtt, dataset):
    from metatomic.torch import ModelOutput
    from metatomic_ase import MetatomicCalculator

    base = trained(mtt, dataset)
    overrides = {
        'metatrain': {
            'parameters': {
                'device': 'cpu',
                'architecture': {
                    'model': {'num_ensemble_members': {'energy': 16}},
                    'training': {'num_epochs': 2, 'batch_size': 1},
                },
            }
        }
    }
    builder = TrainWorkChain.get_builder_from_protocol(mtt, dataset, 'llpr', overrides, base_model=base.outputs.model)
    _, node = run_get_node(builder)
    assert node.is_finished_ok, f'{node.exit_status} {node.exit_message}'
    model = node.outputs.model
    assert model.architecture == 'llpr'
    assert model.targets['energy']['uncertainty'] == 'energy_uncertainty'
    assert model.targets['energy']['ensemble'] == {'output': 'energy_ensemble', 'members': 16}
    frame = dataset.frames()[0]
    with model.as_path() as path:
        calculator = MetatomicCalculator(str(path), device='cpu')
        outputs = calculator.run_model(
            frame, {'energy_uncertainty': ModelOutput(per_atom=False), 'energy_ensemble': ModelOutput(per_atom=False)}
        )
    uncertainty = outputs['energy_uncertainty'].block().values
    assert uncertainty.shape == (1, 1) and float(uncertainty) > 0
    assert outputs['energy_ensemble'].block().values.shape == (1, 16)


def test_dos_training_with_nan_masked_targets(mtt, labelled):
    dataset = training_dataset(labelled, name='train-test-dos', include_dos=True)
    frames = dataset.frames()
    assert all(len(frame.info['dos']) == 4606 for frame in frames)
    # Grid points above E_max (few bands in the fast protocol) are NaN: metatrain's loss masks them.
    assert all(np.isnan(frame.info['dos']).any() for frame in frames)
    builder = TrainWorkChain.get_builder_from_protocol(mtt, dataset, 'tiny-dos')
    _, node = run_get_node(builder)
    assert node.is_finished_ok, f'{node.exit_status} {node.exit_message}'
    model = node.outputs.model
    assert list(model.targets) == ['mtt::dos']
    assert model.energy_reference is None
    assert np.all(np.isfinite(node.outputs.metrics.get_array('training_loss')))
    (calculation,) = node.called
    assert calculation.inputs.settings['target'] == 'dos'
