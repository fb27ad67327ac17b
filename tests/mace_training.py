"""Helpers of the MACE and prediction tests: the real ``mace_run_train`` and ``aiida-mad-predict`` codes, one real
tiny MACE training per session (cached), and the tiny MACE parameters.

The dataset is :func:`tests.training.training_dataset` (real pw.x results through the ``mad.dataset`` work chain).
"""

from __future__ import annotations

import pathlib
import sys

from aiida import orm
from aiida.common.exceptions import NotExistent
from aiida.engine import run_get_node

from tests.training import MTT_PREPEND

BIN = pathlib.Path(sys.executable).parent
MACE_EXECUTABLE = BIN / 'mace_run_train'
PREDICT_EXECUTABLE = BIN / 'aiida-mad-predict'

#: A MACE small enough to train two epochs in seconds on one core.
TINY_MACE = {
    'model': 'MACE',
    'num_channels': 8,
    'max_L': 0,
    'r_max': 4.0,
    'num_radial_basis': 4,
    'max_num_epochs': 2,
    'batch_size': 1,
    'valid_batch_size': 1,
    'eval_interval': 1,
    'loss': 'stress',
    'device': 'cpu',
    'default_dtype': 'float64',
    'seed': 0,
}

_CACHE: dict[str, str] = {}


def mace_code(aiida_localhost, aiida_code_installed) -> orm.InstalledCode:
    """Return the real ``mace_run_train`` of this environment as a code on localhost."""
    return aiida_code_installed(
        label='mace',
        default_calc_job_plugin='mad.mace',
        filepath_executable=str(MACE_EXECUTABLE),
        computer=aiida_localhost,
        prepend_text=MTT_PREPEND,
    )


def predict_code(aiida_localhost, aiida_code_installed) -> orm.InstalledCode:
    """Return the real ``aiida-mad-predict`` of this environment as a code on localhost."""
    return aiida_code_installed(
        label='predict',
        default_calc_job_plugin='mad.predict',
        filepath_executable=str(PREDICT_EXECUTABLE),
        computer=aiida_localhost,
        prepend_text=MTT_PREPEND,
    )


def mace_builder(code, dataset, parameters=None, **inputs):
    """Return a ``MaceTrainCalculation`` builder for ``dataset`` with the tiny MACE (or ``parameters``)."""
    from aiida_mad.calculations.mace import MaceTrainCalculation

    builder = MaceTrainCalculation.get_builder()
    builder.code = code
    builder.dataset = dataset
    builder.parameters = orm.Dict(parameters or TINY_MACE)
    builder.metadata.options.max_wallclock_seconds = 600
    for key, value in inputs.items():
        builder[key] = value
    return builder


def mace_trained(code, dataset, *, seed: int = 0):
    """Return the node of one real tiny MACE training on ``dataset`` with ``seed`` (run once per session)."""
    key = f'mace-{dataset.uuid}-{seed}'
    uuid = _CACHE.get(key)
    if uuid is not None:
        try:
            return orm.load_node(uuid)
        except NotExistent:
            pass
    _, node = run_get_node(mace_builder(code, dataset, {**TINY_MACE, 'seed': seed}))
    assert node.is_finished_ok, f'{node.exit_status} {node.exit_message}'
    _CACHE[key] = node.uuid
    return node
