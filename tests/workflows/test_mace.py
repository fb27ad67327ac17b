"""``MaceTrainWorkChain`` (``mad.train.mace``): a real MACE training killed mid-run and restarted from its checkpoint.

The killed run uses the real ``mace_run_train`` behind a wrapper that kills it (SIGKILL, as a node failure would)
once it has written its first checkpoint.
"""

from __future__ import annotations

from aiida import orm
from aiida.engine import run_get_node

from aiida_mad.calculations.mace import MaceTrainCalculation
from aiida_mad.workflows.mace import MaceTrainWorkChain
from tests.training import MACE_EXECUTABLE, killer_script, mace_code


def test_killed_training_restarts_from_its_checkpoint(dataset, aiida_localhost, aiida_code_installed, tmp_path):
    # The real mace_run_train, killed with SIGKILL once a checkpoint is on disk (a restart runs unwrapped).
    script = killer_script(
        tmp_path / 'mace-killed',
        MACE_EXECUTABLE,
        restarting="grep -q '^restart_latest: true' config.yaml",
        glob='checkpoints/aiida_run-*_epoch-*.pt',
        pause='sleep 0.2',
        what='its first checkpoint',
    )
    killer = mace_code(aiida_localhost, aiida_code_installed, label='mace-killed', executable=script)
    overrides = {'mace': {'parameters': {'max_num_epochs': 4}}}
    builder = MaceTrainWorkChain.get_builder_from_protocol(killer, dataset, 'tiny', overrides, name='mace-killed')
    _, node = run_get_node(builder)
    assert node.is_finished_ok, f'{node.exit_status} {node.exit_message}'
    first, second = sorted(node.called, key=lambda child: child.ctime)
    assert first.exit_status == MaceTrainCalculation.exit_codes.ERROR_TRAINING_INTERRUPTED.status
    checkpoint = first.outputs.checkpoint
    epoch = checkpoint.base.attributes.get('epoch')
    assert second.inputs.restart.uuid == checkpoint.uuid
    epochs = second.outputs.metrics.get_array('epoch').tolist()
    assert epochs[0] == epoch  # the epoch count goes on (MACE resumes at its checkpoint's epoch number)
    assert epochs[-1] == 3
    assert node.outputs.model.epochs == 4
    assert orm.load_group('mad/models/mace-killed').count() == 1
