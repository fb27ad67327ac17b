"""``MaceTrainCalculation`` (``mad.mace``): ``mace_run_train`` on the frames of a ``mad.dataset``, as a CalcJob.

What the calculation writes
    ``config.yaml``, read by ``mace_run_train --config config.yaml`` (MACE's ``configargparse`` YAML: a flat map of
    its command-line options): the ``parameters`` input (model and training options: ``model``, ``num_channels``,
    ``max_L``, ``r_max``, ``max_num_epochs``, ``batch_size``, ``seed``, ``device``, ...) plus the keys the plugin
    owns (:data:`PLUGIN_KEYS`): the fixed ``name`` (``aiida``, so that the retrieved file names are known), the split
    files ``mad-train.xyz``, ``mad-val.xyz``, ``mad-test.xyz`` copied from the dataset's shards (frames without
    stress written without ``REF_stress``, which MACE reads as stress weight 0), the explicit keys ``REF_energy``,
    ``REF_forces``, ``REF_stress`` (the dataset's extended-XYZ keys; MACE's defaults would be the same today, but
    a default can change), the folders, and ``E0s``.

E0s
    The isolated-atom energies of the dataset's own baseline (same level-of-theory fingerprint as the frames), as
    ``{Z: E}``: MACE learns total energies on top of them. ``E0s: average`` (a least-squares fit over the training
    set) is only accepted, through ``settings.e0s = 'average'``, for a dataset without a baseline: E0s taken at
    another level of theory, or fitted when the real ones exist, are a classic silent error.

Restart
    ``restart`` (a checkpoint of an earlier ``mad.mace`` run, ``aiida_run-<seed>_epoch-<N>.pt``) is copied into the
    checkpoint folder under the name MACE looks for, and ``restart_latest: true`` makes MACE continue from it: the
    epoch count goes on up to ``max_num_epochs``.

What it retrieves
    ``aiida.model`` (the model, ``torch.save`` of the module), ``aiida_compiled.model`` (TorchScript), their
    ``_stagetwo`` variants when stage two (SWA) is on, ``logs/aiida_run-<seed>.log``, the per-evaluation metrics
    ``results/aiida_run-<seed>_train.txt`` (JSON lines) and the standard output and error; the checkpoints
    ``checkpoints/*.pt`` temporarily: the parser keeps the newest as output ``checkpoint``.

Everything is checked before anything is stored or submitted (:func:`validate_inputs`): an option MACE does not know,
or one the plugin owns, is refused by name; values are parsed by MACE's own argument parser; the dataset needs
training and validation frames, and E0s for every element.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import io
import re

from aiida import orm
from aiida.engine import CalcJob

from aiida_mad.calculations.training import (
    calculation_info,
    check_training_splits,
    checked_keys,
    define_training_exit_codes,
    set_option_defaults,
)
from aiida_mad.data.dataset import DatasetData

__all__ = (
    'CONFIG_FILE',
    'DEFAULT_SETTINGS',
    'MODEL_NAME',
    'PLUGIN_KEYS',
    'MaceTrainCalculation',
    'build_config',
    'e0s_from_dataset',
    'validate_parameters',
)

CONFIG_FILE = 'config.yaml'
#: The fixed ``--name``: the files are ``aiida.model``, ``aiida_compiled.model``, ``logs/aiida_run-<seed>.log``, ...
MODEL_NAME = 'aiida'
MODEL_FILE = f'{MODEL_NAME}.model'
COMPILED_FILE = f'{MODEL_NAME}_compiled.model'
STAGETWO_FILE = f'{MODEL_NAME}_stagetwo.model'
STAGETWO_COMPILED_FILE = f'{MODEL_NAME}_stagetwo_compiled.model'
STDOUT_FILE = 'mace.out'
STDERR_FILE = 'mace.err'
SPLIT_PREFIX = 'mad'
CHECKPOINTS = 'checkpoints'
LOGS = 'logs'
RESULTS = 'results'
#: MACE's own default seed (``--seed``), used when ``parameters`` sets none.
DEFAULT_SEED = 123
#: The dataset's extended-XYZ keys, passed explicitly.
REF_KEYS = {'energy_key': 'REF_energy', 'forces_key': 'REF_forces', 'stress_key': 'REF_stress'}
#: Options the plugin writes itself; the ``parameters`` input may not set them.
PLUGIN_KEYS = (
    'name',
    'train_file',
    'valid_file',
    'test_file',
    'test_dir',
    'valid_fraction',
    'energy_key',
    'forces_key',
    'stress_key',
    'E0s',
    'work_dir',
    'model_dir',
    'checkpoints_dir',
    'log_dir',
    'results_dir',
    'downloads_dir',
    'restart_latest',
    'config',
)
#: Defaults of the ``settings`` input.
DEFAULT_SETTINGS = {'e0s': 'baseline'}


def get_settings(settings: dict | None) -> dict:
    """Return ``settings`` merged over :data:`DEFAULT_SETTINGS`, after checking them.

    :raises ValueError: naming the unknown key or the bad value.
    """
    merged = checked_keys(settings, DEFAULT_SETTINGS, 'settings')
    if merged['e0s'] not in ('baseline', 'average'):
        raise ValueError(f"settings.e0s must be 'baseline' or 'average', got {merged['e0s']!r}")
    return merged


def e0s_from_dataset(dataset: DatasetData, settings: dict | None = None) -> dict[int, float] | str:
    """Return MACE's ``E0s``: ``{Z: isolated-atom energy}`` of the dataset's baseline, or ``'average'``.

    :raises ValueError: if the dataset has a baseline and ``average`` was asked (never mix), if it has none and
        ``average`` was not asked, or if the baseline lacks an element of the dataset.
    """
    from ase.data import atomic_numbers

    settings = get_settings(settings)
    energies = dataset.atomic_energies
    label = f'dataset {dataset.name} (pk {dataset.pk})'
    if settings['e0s'] == 'average':
        if energies:
            raise ValueError(
                f'{label} has an isolated-atom baseline at its own level of theory ({dataset.fingerprint}): '
                "E0s come from it; settings.e0s = 'average' is only for a dataset without a baseline"
            )
        return 'average'
    if not energies:
        raise ValueError(
            f'{label} has no isolated-atom baseline: rebuild it with the isolated atoms, or set '
            "settings.e0s = 'average' to let MACE fit E0s (recorded on the model)"
        )
    missing = sorted(set(dataset.elements) - set(energies), key=atomic_numbers.__getitem__)
    if missing:
        raise ValueError(f'{label}: the baseline has no isolated-atom energy of {", ".join(missing)}')
    return {atomic_numbers[element]: float(energies[element]) for element in sorted(energies, key=atomic_numbers.get)}


def build_config(
    parameters: dict, e0s: dict[int, float] | str, *, has_test: bool = True, restart: bool = False
) -> dict:
    """Return the whole ``config.yaml`` of ``mace_run_train``: the parameters plus the keys the plugin owns.

    :raises ValueError: naming a key of ``parameters`` that the plugin owns.
    """
    config = copy.deepcopy(dict(parameters))
    owned = sorted(set(config) & set(PLUGIN_KEYS))
    if owned:
        raise ValueError(f'parameters may not set {owned}: the plugin writes them')
    config.setdefault('seed', DEFAULT_SEED)
    e0s_text = e0s if isinstance(e0s, str) else '{' + ', '.join(f'{z}: {value!r}' for z, value in e0s.items()) + '}'
    config.update(
        {
            'name': MODEL_NAME,
            'train_file': f'{SPLIT_PREFIX}-train.xyz',
            'valid_file': f'{SPLIT_PREFIX}-val.xyz',
            **REF_KEYS,
            'E0s': e0s_text,
            'model_dir': '.',
            'checkpoints_dir': CHECKPOINTS,
            'log_dir': LOGS,
            'results_dir': RESULTS,
        }
    )
    if not isinstance(e0s, str):
        # Every element of the baseline: MACE otherwise takes its element table from the train and validation
        # frames only, and fails on a test frame with an element that only the test split has.
        config.setdefault('atomic_numbers', '[' + ', '.join(str(z) for z in e0s) + ']')
    if has_test:
        config['test_file'] = f'{SPLIT_PREFIX}-test.xyz'
    if restart:
        config['restart_latest'] = True
    return config


def parse_e0s(text: str) -> dict[int, float]:
    """Return the ``{Z: E}`` of a config's ``E0s`` string."""
    return {int(key): float(value) for key, value in ast.literal_eval(text).items()}


def validate_parameters(config: dict):
    """Parse a whole config with MACE's own argument parser and return the parsed namespace.

    :raises ValueError: naming an option MACE does not know, or with MACE's message for a bad value.
    """
    import tempfile

    import yaml

    try:
        from mace.tools import build_default_arg_parser
    except ImportError as exception:  # pragma: no cover - the `train` extra brings mace-torch
        raise ValueError(f'mace-torch is needed to validate the options: {exception}') from None
    parser = build_default_arg_parser()
    known = {action.dest for action in parser._actions}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f'mace_run_train has no option(s) {unknown}')
    with tempfile.NamedTemporaryFile('w', suffix='.yaml') as handle:
        yaml.safe_dump(config, handle)
        handle.flush()
        errors = io.StringIO()
        try:
            with contextlib.redirect_stderr(errors):
                return parser.parse_args(['--config', handle.name])
        except SystemExit:
            lines = [line for line in errors.getvalue().splitlines() if 'error:' in line]
            message = lines[-1].split('error:', 1)[1].strip() if lines else errors.getvalue().strip()[-300:]
            raise ValueError(f'mace_run_train options: {message}') from None


_CHECKPOINT = re.compile(rf'{MODEL_NAME}_run-(\d+)_epoch-(\d+)(_swa)?\.pt$')


def checkpoint_epoch(filename: str) -> tuple[int, int] | None:
    """Return ``(seed, epoch)`` of a MACE checkpoint file name (``aiida_run-<seed>_epoch-<epoch>.pt``)."""
    match = _CHECKPOINT.search(filename)
    return (int(match.group(1)), int(match.group(2))) if match else None


def validate_inputs(value, _):
    """Check everything that can be checked before the calculation is stored or submitted."""
    dataset = value.get('dataset')
    parameters = value.get('parameters')
    if dataset is None or parameters is None:
        return None
    try:
        settings = get_settings(value['settings'].get_dict() if 'settings' in value else None)
        check_training_splits(dataset, 'mace_run_train')
        e0s = e0s_from_dataset(dataset, settings)
        config = build_config(parameters.get_dict(), e0s, restart='restart' in value)
        arguments = validate_parameters(config)
        n_train = (dataset.base.attributes.get('split_counts') or {}).get('train', 0)
        if arguments.batch_size > n_train:
            return (
                f'batch_size {arguments.batch_size} is larger than the {n_train} training frames of dataset '
                f'{dataset.name}: MACE drops the incomplete last batch and would train on nothing'
            )
    except ValueError as exception:
        return str(exception)
    if 'restart' in value:
        node = value['restart']
        attributes = node.base.attributes.all
        if attributes.get('architecture') not in (None, 'mace'):
            return f'restart is a `{attributes["architecture"]}` checkpoint, not a MACE one'
        if checkpoint_epoch(node.filename) is None:
            return f'restart {node.filename} (node {node.pk}) is not a MACE checkpoint (aiida_run-<seed>_epoch-<N>.pt)'
        if attributes.get('dataset_uuid') not in (None, dataset.uuid):
            return f'restart checkpoint was trained on dataset {attributes["dataset_uuid"]}, not {dataset.uuid}'
    return None


class MaceTrainCalculation(CalcJob):
    """Train a MACE model with ``mace_run_train`` on a ``mad.dataset``."""

    _DEFAULT_PARSER = 'mad.mace'

    @classmethod
    def define(cls, spec):
        """Define the process specification."""
        super().define(spec)
        spec.input('dataset', valid_type=DatasetData, help='The `mad.dataset` to train on (its own splits).')
        spec.input(
            'parameters',
            valid_type=orm.Dict,
            help='mace_run_train options (model, sizes, training) without the keys the plugin owns; validated by '
            "MACE's own argument parser.",
        )
        spec.input('settings', valid_type=orm.Dict, required=False, help="`e0s`: 'baseline' (default) or 'average'.")
        spec.input(
            'restart', valid_type=orm.SinglefileData, required=False, help='MACE checkpoint to continue training from.'
        )
        spec.inputs.validator = validate_inputs
        set_option_defaults(spec, cls._DEFAULT_PARSER, STDOUT_FILE)

        spec.output('model', help='The MACE model (`mad.model`, architecture `mace`).')
        spec.output('compiled_model', valid_type=orm.SinglefileData, required=False, help='The TorchScript model.')
        spec.output(
            'checkpoint',
            valid_type=orm.SinglefileData,
            required=False,
            help='The newest checkpoint (the one a restart continues from).',
        )
        spec.output('metrics', valid_type=orm.ArrayData, required=False, help='Per-epoch validation metrics.')
        spec.output('results', valid_type=orm.Dict, required=False, help='Final errors, epochs, parameter counts.')
        spec.default_output_node = 'results'

        # The exit codes of ``mad.metatrain``, same numbers and meanings.
        define_training_exit_codes(spec, 'mace_run_train', 'mace_run_train could not import a module')

    def prepare_for_submission(self, folder):
        """Write ``config.yaml`` and the split files, and return the calculation info."""
        import yaml

        dataset = self.inputs.dataset
        settings = get_settings(self.inputs.settings.get_dict() if 'settings' in self.inputs else None)
        written = dataset.write_split_files(folder.abspath, prefix=SPLIT_PREFIX, missing_stress='omit')
        has_test = written['test'][1] > 0
        if not has_test:
            folder.remove_path(f'{SPLIT_PREFIX}-test.xyz')
        config = build_config(
            self.inputs.parameters.get_dict(),
            e0s_from_dataset(dataset, settings),
            has_test=has_test,
            restart='restart' in self.inputs,
        )
        with folder.open(CONFIG_FILE, 'w') as handle:
            yaml.safe_dump(config, handle, sort_keys=False)

        local_copy_list = []
        if 'restart' in self.inputs:
            node = self.inputs.restart
            _, epoch = checkpoint_epoch(node.filename)
            folder.get_subfolder(CHECKPOINTS, create=True)
            target = f'{CHECKPOINTS}/{MODEL_NAME}_run-{config["seed"]}_epoch-{epoch}.pt'
            local_copy_list.append((node.uuid, node.filename, target))

        return calculation_info(
            self,
            ['--config', CONFIG_FILE],
            stderr=STDERR_FILE,
            local_copy_list=local_copy_list,
            retrieve_list=[
                MODEL_FILE,
                COMPILED_FILE,
                STAGETWO_FILE,
                STAGETWO_COMPILED_FILE,
                STDOUT_FILE,
                STDERR_FILE,
                f'{LOGS}/{MODEL_NAME}_run-*.log',
                f'{RESULTS}/{MODEL_NAME}_run-*_train.txt',
            ],
            retrieve_temporary_list=[f'{CHECKPOINTS}/{MODEL_NAME}_run-*_epoch-*.pt'],
        )
