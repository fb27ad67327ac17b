"""Helpers of the training tests: the real ``mtt`` code, a dataset built by the project's pipeline, one real run.

* :func:`mtt_code` sets up the real ``mtt`` executable of this virtual environment as an AiiDA code, with the
  environment the tests need (one thread, caches inside the project).
* :func:`training_dataset` builds, once per session, a ``mad.dataset`` from the real labelled data of
  ``tests/labelled.py`` (pw.x results of Si, rattled Si and H2, with the isolated-atom baseline) through the
  ``mad.dataset`` work chain, with a seed whose stable split has training, validation and test frames.
* :func:`trained` runs one real tiny PET training (energy, forces, stress; a few seconds on one core) through
  ``MetatrainCalculation`` and caches its node for the session.
"""

from __future__ import annotations

import pathlib
import sys

from aiida import orm
from aiida.common.exceptions import NotExistent
from aiida.engine import run_get_node

PROJECT = pathlib.Path(__file__).resolve().parent.parent
MTT_EXECUTABLE = pathlib.Path(sys.executable).parent / 'mtt'
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

_CACHE: dict[str, str] = {}


def mtt_code(aiida_localhost, aiida_code_installed, *, label: str = 'mtt', executable=None) -> orm.InstalledCode:
    """Return the real ``mtt`` of this environment as a code on localhost."""
    return aiida_code_installed(
        label=label,
        default_calc_job_plugin='mad.metatrain',
        filepath_executable=str(executable or MTT_EXECUTABLE),
        computer=aiida_localhost,
        prepend_text=MTT_PREPEND,
    )


def _load(key: str):
    uuid = _CACHE.get(key)
    if uuid is None:
        return None
    try:
        return orm.load_node(uuid)
    except NotExistent:
        return None


def choose_seed(uuids, fractions) -> int:
    """Return the smallest seed whose stable split of ``uuids`` puts at least one of them in every split.

    The periodic frames are passed: metatrain divides by the number of stress values of a split, so a split of
    only molecules (no stress) cannot be validated on stress.
    """
    from aiida_mad.dataset.splits import assign_split

    wanted = {split for split, fraction in zip(('train', 'val', 'test'), fractions, strict=True) if fraction > 0}
    for seed in range(1000):
        if {assign_split(uuid, seed, fractions) for uuid in uuids} >= wanted:
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
    seed = choose_seed(periodic, fractions)
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
    _CACHE[name] = dataset.uuid
    return dataset


def train_builder(code, dataset, parameters=None, **inputs):
    """Return a ``MetatrainCalculation`` builder for ``dataset`` with the tiny PET (or ``parameters``)."""
    from aiida_mad.calculations.metatrain import MetatrainCalculation

    builder = MetatrainCalculation.get_builder()
    builder.code = code
    builder.dataset = dataset
    builder.parameters = orm.Dict(parameters or TINY_PET)
    builder.metadata.options.max_wallclock_seconds = 600
    for key, value in inputs.items():
        builder[key] = value
    return builder


def trained(code, dataset):
    """Return the node of one real tiny PET training on ``dataset`` (run once per session)."""
    cached = _load(f'trained-{dataset.uuid}')
    if cached is not None:
        return cached
    _, node = run_get_node(train_builder(code, dataset))
    assert node.is_finished_ok, f'{node.exit_status} {node.exit_message}'
    _CACHE[f'trained-{dataset.uuid}'] = node.uuid
    return node
