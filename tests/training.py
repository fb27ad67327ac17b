"""Helpers and fixtures of the training tests: the real codes, a dataset built by the project's pipeline, real runs.

* :func:`mtt_code`, :func:`mace_code` and :func:`predict_code` set up the real ``mtt``, ``mace_run_train`` and
  ``aiida-mad-predict`` executables of this virtual environment as AiiDA codes, with the environment the tests need
  (one thread, caches inside the project).
* :func:`training_dataset` builds, once per session, a ``mad.dataset`` from the real labelled data of
  ``tests/labelled.py`` (pw.x results of Si, rattled Si and H2, with the isolated-atom baseline) through the
  ``mad.dataset`` work chain, with a seed whose stable split has training, validation and test frames.
* :func:`trained` runs one real tiny PET training (energy, forces, stress; a few seconds on one core) through
  ``MetatrainCalculation``, :func:`mace_trained` one real tiny MACE training (two epochs) through
  ``MaceTrainCalculation``, :func:`dos_trained` one real tiny PET-MAD-DOS training (``mtt::dos``) on the dataset
  with the DOS; each caches its node for the session.
* :func:`prepare` runs ``prepare_for_submission`` of a builder in a sandbox.
* The fixtures ``mtt``, ``mace``, ``predictor`` (the codes) and ``dataset`` (:func:`training_dataset`), registered
  for every test by ``pytest_plugins`` in ``tests/conftest.py``.
"""

from __future__ import annotations

import pathlib
import sys

import numpy as np
import pytest
from aiida import orm
from aiida.common.exceptions import NotExistent
from aiida.engine import run_get_node

PROJECT = pathlib.Path(__file__).resolve().parent.parent
BIN = pathlib.Path(sys.executable).parent
MTT_EXECUTABLE = BIN / 'mtt'
MACE_EXECUTABLE = BIN / 'mace_run_train'
PREDICT_EXECUTABLE = BIN / 'aiida-mad-predict'
CACHE = PROJECT / '.cache'
#: The prepend text of the test code: one thread and every cache inside the project.
MTT_PREPEND = '\n'.join(
    [
        'export OMP_NUM_THREADS=1',
        f'export XDG_CACHE_HOME={CACHE}',
        f'export MPLCONFIGDIR={CACHE}/mpl',
        f'export TORCH_HOME={CACHE}/torch',
    ]
)

#: A PET small enough to train in seconds on one core.
TINY_PET = {
    'architecture': {
        'name': 'pet',
        'model': {
            'cutoff': 4.0,
            'd_pet': 8,
            'd_head': 8,
            'd_node': 8,
            'd_feedforward': 8,
            'num_heads': 1,
            'num_attention_layers': 1,
            'num_gnn_layers': 1,
        },
        'training': {'batch_size': 1, 'num_epochs': 3, 'checkpoint_interval': 1, 'num_workers': 0},
    },
    'seed': 0,
    'device': 'cpu',
}

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


def installed_code(aiida_localhost, aiida_code_installed, *, label: str, plugin: str, executable) -> orm.InstalledCode:
    """Return ``executable`` as a code of ``plugin`` on localhost, with the environment of the tests."""
    return aiida_code_installed(
        label=label,
        default_calc_job_plugin=plugin,
        filepath_executable=str(executable),
        computer=aiida_localhost,
        prepend_text=MTT_PREPEND,
    )


def mtt_code(aiida_localhost, aiida_code_installed, *, label: str = 'mtt', executable=None) -> orm.InstalledCode:
    """Return the real ``mtt`` of this environment (or ``executable``) as a code on localhost."""
    return installed_code(
        aiida_localhost,
        aiida_code_installed,
        label=label,
        plugin='mad.metatrain',
        executable=executable or MTT_EXECUTABLE,
    )


def mace_code(aiida_localhost, aiida_code_installed, *, label: str = 'mace', executable=None) -> orm.InstalledCode:
    """Return the real ``mace_run_train`` of this environment (or ``executable``) as a code on localhost."""
    return installed_code(
        aiida_localhost, aiida_code_installed, label=label, plugin='mad.mace', executable=executable or MACE_EXECUTABLE
    )


def predict_code(aiida_localhost, aiida_code_installed) -> orm.InstalledCode:
    """Return the real ``aiida-mad-predict`` of this environment as a code on localhost."""
    return installed_code(
        aiida_localhost, aiida_code_installed, label='predict', plugin='mad.predict', executable=PREDICT_EXECUTABLE
    )


@pytest.fixture
def mtt(aiida_localhost, aiida_code_installed):
    """The real ``mtt`` code."""
    return mtt_code(aiida_localhost, aiida_code_installed)


@pytest.fixture
def mace(aiida_localhost, aiida_code_installed):
    """The real ``mace_run_train`` code."""
    return mace_code(aiida_localhost, aiida_code_installed)


@pytest.fixture
def predictor(aiida_localhost, aiida_code_installed):
    """The real ``aiida-mad-predict`` code."""
    return predict_code(aiida_localhost, aiida_code_installed)


@pytest.fixture
def dataset(labelled):
    """The training dataset of :func:`training_dataset` (built once per session)."""
    return training_dataset(labelled)


def _load(key: str):
    uuid = _CACHE.get(key)
    if uuid is None:
        return None
    try:
        return orm.load_node(uuid)
    except NotExistent:
        return None


def choose_seed(uuids, fractions, *, learned=(), forced=()) -> int:
    """Return the smallest seed whose stable split of ``uuids`` puts at least one of them in every split.

    The periodic frames are passed: metatrain divides by the number of stress values of a split, so a split of
    only molecules (no stress) cannot be validated on stress. The frames ``learned`` must be in ``train`` or ``val``:
    a model only knows the elements of those splits (the H2 molecule is the only frame with H). One of the frames
    ``forced`` (those with non-zero forces) must be in ``train``: on a training split of the symmetric bulk frame
    alone, whose forces are ~1e-31 eV/Å, MACE scales its interaction energy by that force RMS (its zero check is
    exact), so every MACE model predicts the E0 sum to the last bit and two of them have no spread at all.
    """
    from aiida_mad.dataset.splits import assign_split

    wanted = {split for split, fraction in zip(('train', 'val', 'test'), fractions, strict=True) if fraction > 0}
    for seed in range(1000):
        if (
            {assign_split(uuid, seed, fractions) for uuid in uuids} >= wanted
            and all(assign_split(uuid, seed, fractions) != 'test' for uuid in learned)
            and (not forced or any(assign_split(uuid, seed, fractions) == 'train' for uuid in forced))
        ):
            return seed
    raise AssertionError(f'no seed below 1000 splits {len(uuids)} frames into {sorted(wanted)}')


def training_dataset(labelled, *, name: str = 'train-test', include_dos: bool = False):
    """Return a ``mad.dataset`` of the labelled data (Si, 2 rattled Si, H2) with train, val and test frames."""
    cached = _load(name)
    if cached is not None:
        return cached
    from aiida_mad.workflows.dataset import DatasetWorkChain
    from tests.labelled import DFT_GROUPS

    fractions = [0.5, 0.25, 0.25]
    periodic = [node.inputs.structure.uuid for subset in ('mc3d', 'mc3d-rattled') for node in labelled.nodes(subset)]
    molecules = [node.inputs.structure.uuid for node in labelled.nodes('shiftml-molfrags')]
    rattled = [node.inputs.structure.uuid for node in labelled.nodes('mc3d-rattled') if node.is_finished_ok]
    seed = choose_seed(periodic, fractions, learned=molecules, forced=rattled)
    builder = DatasetWorkChain.get_builder()
    builder.name = orm.Str(f'{name}-{labelled.isolated_atoms[:8]}')
    builder.groups = orm.List(list(DFT_GROUPS.values()))
    builder.seed = orm.Int(seed)
    builder.fractions = orm.List(fractions)
    builder.include_dos = orm.Bool(include_dos)
    _, node = run_get_node(builder)
    assert node.is_finished_ok, node.exit_message
    dataset = node.outputs.dataset
    frames = dataset.frames()
    for split in ('train', 'val', 'test'):
        # metatrain divides by the number of stress values of a split: each split needs a periodic frame.
        chosen = [(frame.info['subset'], 'stress' in frame.info) for frame in frames if frame.info['split'] == split]
        assert any(has_stress for _, has_stress in chosen), f'seed {seed}: split {split} is {chosen}'
    train_forces = [np.abs(frame.arrays['forces']).max() for frame in frames if frame.info['split'] == 'train']
    assert max(train_forces) > 0.01, f'seed {seed}: no training frame with forces ({train_forces} eV/Å)'
    _CACHE[name] = dataset.uuid
    return dataset


def _builder(process_class, code, dataset, parameters: dict, inputs: dict):
    builder = process_class.get_builder()
    builder.code = code
    builder.dataset = dataset
    builder.parameters = orm.Dict(parameters)
    builder.metadata.options.max_wallclock_seconds = 600
    for key, value in inputs.items():
        builder[key] = value
    return builder


def train_builder(code, dataset, parameters=None, **inputs):
    """Return a ``MetatrainCalculation`` builder for ``dataset`` with the tiny PET (or ``parameters``)."""
    from aiida_mad.calculations.metatrain import MetatrainCalculation

    return _builder(MetatrainCalculation, code, dataset, parameters or TINY_PET, inputs)


def mace_builder(code, dataset, parameters=None, **inputs):
    """Return a ``MaceTrainCalculation`` builder for ``dataset`` with the tiny MACE (or ``parameters``)."""
    from aiida_mad.calculations.mace import MaceTrainCalculation

    return _builder(MaceTrainCalculation, code, dataset, parameters or TINY_MACE, inputs)


def _run_once(key: str, builder):
    """Return the node of the run of ``builder`` cached under ``key``, running it the first time."""
    cached = _load(key)
    if cached is not None:
        return cached
    _, node = run_get_node(builder)
    assert node.is_finished_ok, f'{node.exit_status} {node.exit_message}'
    _CACHE[key] = node.uuid
    return node


def trained(code, dataset):
    """Return the node of one real tiny PET training on ``dataset`` (run once per session)."""
    return _run_once(f'trained-{dataset.uuid}', train_builder(code, dataset))


def mace_trained(code, dataset, *, seed: int = 0, **parameters):
    """Return the node of one real tiny MACE training on ``dataset`` with ``seed`` (run once per session).

    ``parameters`` override those of :data:`TINY_MACE` (e.g. ``num_channels``).
    """
    key = '-'.join(f'{name}={value}' for name, value in sorted(parameters.items()))
    builder = mace_builder(code, dataset, {**TINY_MACE, **parameters, 'seed': seed})
    return _run_once(f'mace-{dataset.uuid}-{seed}{"-" + key if key else ""}', builder)


@pytest.fixture
def mace_model(mace, dataset):
    """The model of :func:`mace_trained` on the session's ``dataset`` (seed 0)."""
    return mace_trained(mace, dataset).outputs.model


@pytest.fixture
def pet_model(mtt, dataset):
    """The model of :func:`trained` (the tiny PET) on the session's ``dataset``."""
    return trained(mtt, dataset).outputs.model


#: The tiny PET on the DOS with the PET-MAD-DOS loss (the ``tiny-dos`` protocol's parameters).
TINY_DOS = {
    **TINY_PET,
    'architecture': {
        **TINY_PET['architecture'],
        'training': {
            **TINY_PET['architecture']['training'],
            'num_epochs': 2,
            'atomic_baseline': {'mtt::dos': 0.0},
            'loss': {'mtt::dos': {'type': 'shift_agnostic_mse', 'int_weight': 2.0, 'grad_penalty_weight': 1e-4}},
        },
    },
}


def dos_trained(code, labelled, *, seed: int = 0):
    """Return the node of one real tiny PET-MAD-DOS training (``mtt::dos``) with ``seed`` (run once per session).

    The dataset is :func:`training_dataset` with the DOS (``name='train-test-dos'``, ``include_dos=True``).
    """
    dataset = training_dataset(labelled, name='train-test-dos', include_dos=True)
    builder = train_builder(code, dataset, {**TINY_DOS, 'seed': seed}, settings=orm.Dict({'target': 'dos'}))
    return _run_once(f'dos-{dataset.uuid}-{seed}', builder)


def prepare(builder, *, folders=()):
    """Run ``prepare_for_submission`` of the builder's calculation in a sandbox; return ``(calcinfo, contents)``.

    ``contents`` maps each file name to its text, and each name of ``folders`` to the sorted names it holds.
    """
    from aiida.common.folders import SandboxFolder
    from aiida.engine.utils import instantiate_process
    from aiida.manage import get_manager

    process = instantiate_process(get_manager().get_runner(), builder)
    with SandboxFolder() as folder:
        calcinfo = process.prepare_for_submission(folder)
        contents = {}
        for name in folder.get_content_list():
            if name in folders:
                contents[name] = sorted(folder.get_subfolder(name).get_content_list())
            else:
                contents[name] = pathlib.Path(folder.get_abs_path(name)).read_text(encoding='utf-8')
    return calcinfo, contents


#: A wrapper of a training executable: unless restarting, it kills the run with SIGKILL once a file is on disk.
KILLER = """#!/bin/bash
if {restarting}; then exec {executable} "$@"; fi
{executable} "$@" &
pid=$!
while kill -0 $pid 2>/dev/null; do
    if compgen -G "{glob}" > /dev/null; then
        {pause}
        kill -9 $pid
        wait $pid
        echo "killed {name} (pid $pid) after {what}" >&2
        exit 137
    fi
    sleep 0.05
done
wait $pid
"""


def killer_script(path: pathlib.Path, executable, *, restarting: str, glob: str, pause: str, what: str) -> pathlib.Path:
    """Write the :data:`KILLER` wrapper of ``executable`` to ``path`` (executable) and return it.

    :param restarting: the bash test that is true for a restarted run (which runs unwrapped).
    :param glob: the file whose appearance makes it kill the run, e.g. a checkpoint.
    :param pause: the bash command run between seeing the file and killing (``sleep 0.5``, ``true``).
    :param what: the end of the message written to the standard error (``after its first checkpoint``).
    """
    import stat

    name = pathlib.Path(str(executable)).name
    path.write_text(
        KILLER.format(restarting=restarting, executable=executable, glob=glob, pause=pause, name=name, what=what)
    )
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path
