"""``MaceTrainWorkChain`` (``mad.train.mace``): a real MACE training killed mid-run and restarted from its checkpoint.

The killed run uses the real ``mace_run_train`` behind a wrapper that kills it (SIGKILL, as a node failure would)
once it has written its first checkpoint.
"""

from __future__ import annotations

import stat

from aiida import orm
from aiida.engine import run_get_node

from aiida_mad.calculations.mace import MaceTrainCalculation
from aiida_mad.workflows.mace import MaceTrainWorkChain
from tests.mace_training import MACE_EXECUTABLE
from tests.training import MTT_PREPEND, training_dataset

#: Runs the real mace_run_train; unless restarting, kills it with SIGKILL once a checkpoint is on disk.
KILLER = """#!/bin/bash
if grep -q '^restart_latest: true' config.yaml; then exec {mace} "$@"; fi
{mace} "$@" &
pid=$!
while kill -0 $pid 2>/dev/null; do
    if compgen -G "checkpoints/aiida_run-*_epoch-*.pt" > /dev/null; then
        sleep 0.2
        kill -9 $pid
        wait $pid
        echo "killed mace_run_train (pid $pid) after its first checkpoint" >&2
        exit 137
    fi
    sleep 0.05
done
wait $pid
"""


def test_killed_training_restarts_from_its_checkpoint(labelled, aiida_localhost, aiida_code_installed, tmp_path):
    dataset = training_dataset(labelled)
    script = tmp_path / 'mace-killed'
    script.write_text(KILLER.format(mace=MACE_EXECUTABLE))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    killer = aiida_code_installed(
        label='mace-killed',
        default_calc_job_plugin='mad.mace',
        filepath_executable=str(script),
        computer=aiida_localhost,
        prepend_text=MTT_PREPEND,
    )
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
