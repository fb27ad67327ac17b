"""``MetatrainCalculation`` (``mad.metatrain``): ``mtt train`` on the frames of a ``mad.dataset``, as a CalcJob.

What the calculation writes
    ``options.yaml`` (the ``parameters`` input, i.e. metatrain's ``architecture`` section and base options such as
    ``seed`` and ``device``, plus the data sections the plugin builds from the dataset) and ``mad-train.xyz``,
    ``mad-val.xyz``, ``mad-test.xyz`` copied straight from the dataset's shards (no per-frame load). A ``restart``
    checkpoint goes in as ``restart.ckpt`` (``mtt train options.yaml --restart restart.ckpt``, the epoch count goes
    on), a ``base_model`` checkpoint as ``base_model.ckpt`` (read by ``finetune.read_from`` of PET or by
    ``model_checkpoint`` of the LLPR wrapper).

What it retrieves
    ``model.pt`` (exported), ``model.ckpt`` (final checkpoint), and from metatrain's timestamped folder
    ``outputs/<date>/<time>/`` (retrieved by glob) ``train.csv`` (per-epoch metrics), ``train.log``, ``error.log``
    and ``options_restart.yaml``. The intermediate checkpoints ``model_<epoch>.ckpt`` are retrieved temporarily: the
    parser keeps the newest one as output ``checkpoint`` when training stopped early, so that a restart never starts
    from scratch.

Energies
    By default the target is the dataset's baseline-subtracted energy (``REF_energy_baseline_subtracted``, MAD's
    choice: E minus the isolated-atom energies of the same level of theory); ``settings.energy = 'total'`` trains on
    total energies. The choice and the baseline's identity (fingerprint and sha256 of the atomic energies) are
    recorded on the model.

Everything is checked before anything is stored or submitted (:func:`validate_inputs`): the options against
metatrain's own pydantic schema (an unknown key is an error naming it), the dataset against the targets (a DOS
target needs a dataset with the DOS; baseline-subtracted energies need a baseline), and checkpoints against the
architecture (by name) and, for fine-tuning, the level-of-theory fingerprint.
"""

from __future__ import annotations

import copy
import hashlib
import json
import pathlib
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
    'BASE_MODEL_FILE',
    'DEFAULT_SETTINGS',
    'DOS_TARGET',
    'OPTIONS_FILE',
    'RESTART_FILE',
    'MetatrainCalculation',
    'build_options',
    'checkpoint_info',
    'validate_options',
)

OPTIONS_FILE = 'options.yaml'
RESTART_FILE = 'restart.ckpt'
BASE_MODEL_FILE = 'base_model.ckpt'
MODEL_FILE = 'model.pt'
CHECKPOINT_FILE = 'model.ckpt'
STDOUT_FILE = 'mtt.out'
SPLIT_PREFIX = 'mad'
#: The files metatrain writes into its timestamped output folder that the parser reads.
OUTPUT_FOLDER_FILES = ('train.csv', 'train.log', 'error.log', 'options_restart.yaml')
#: Name of the DOS target in metatrain (``mtt::`` marks a target that is not a standard quantity).
DOS_TARGET = 'mtt::dos'
#: Architectures that the LLPR wrapper can wrap.
LLPR_WRAPPABLE = ('pet', 'soap_bpnn')

#: Defaults of the ``settings`` input.
DEFAULT_SETTINGS = {
    'target': 'energy',  # or 'dos'
    'energy': 'baseline_subtracted',  # or 'total'
    'forces': True,
    'stress': True,
}
_SETTINGS_CHOICES = {'target': ('energy', 'dos'), 'energy': ('baseline_subtracted', 'total')}
#: Top-level options that the plugin writes itself from the dataset; the ``parameters`` input may not set them.
DATA_SECTIONS = ('training_set', 'validation_set', 'test_set')


def get_settings(settings: dict | None) -> dict:
    """Return ``settings`` merged over :data:`DEFAULT_SETTINGS`, after checking its keys and values.

    :raises ValueError: naming the unknown key or the bad value.
    """
    merged = checked_keys(settings, DEFAULT_SETTINGS, 'settings')
    for key, choices in _SETTINGS_CHOICES.items():
        if merged[key] not in choices:
            raise ValueError(f'settings.{key} must be one of {list(choices)}, got {merged[key]!r}')
    for key in ('forces', 'stress'):
        if not isinstance(merged[key], bool):
            raise ValueError(f'settings.{key} must be true or false, got {merged[key]!r}')
    return merged


def build_targets(settings: dict, *, dos_length: int | None = None) -> dict:
    """Return metatrain's ``targets`` section for the dataset's split files.

    :param settings: the merged settings (:func:`get_settings`).
    :param dos_length: number of DOS grid points (needed for the DOS target).
    """
    if settings['target'] == 'dos':
        if not dos_length:
            raise ValueError('a DOS target needs the length of the DOS grid')
        return {
            DOS_TARGET: {
                'key': 'REF_dos',
                'quantity': '',
                'unit': '',
                'type': 'scalar',
                'sample_kind': 'system',
                'num_subtargets': int(dos_length),
            }
        }
    key = 'REF_energy_baseline_subtracted' if settings['energy'] == 'baseline_subtracted' else 'REF_energy'
    energy = {'key': key, 'quantity': 'energy', 'unit': 'eV'}
    energy['forces'] = {'key': 'REF_forces'} if settings['forces'] else False
    energy['stress'] = {'key': 'REF_stress'} if settings['stress'] else False
    return {'energy': energy}


def _data_section(filename: str, targets: dict) -> dict:
    return {
        'systems': {'read_from': filename, 'reader': 'ase', 'length_unit': 'angstrom'},
        'targets': copy.deepcopy(targets),
    }


def build_options(
    parameters: dict,
    targets: dict,
    *,
    has_test: bool = True,
    base_model: str | None = None,
) -> dict:
    """Return the whole ``options.yaml`` of ``mtt train``: the parameters plus the data sections.

    :param parameters: metatrain's ``architecture`` section and base options (``seed``, ``device``, ...).
    :param targets: the ``targets`` section (:func:`build_targets`).
    :param has_test: whether the dataset has test frames (otherwise ``test_set: 0.0``).
    :param base_model: file name of a base checkpoint: PET's ``finetune.read_from`` or the LLPR wrapper's
        ``model_checkpoint`` is set to it.
    :raises ValueError: if ``parameters`` sets a data section, or a base model is given to an architecture that
        cannot use one.
    """
    options = copy.deepcopy(dict(parameters))
    for key in DATA_SECTIONS:
        if key in options:
            raise ValueError(f'parameters may not set `{key}`: the data sections are written from the dataset')
    names = {split: f'{SPLIT_PREFIX}-{split}.xyz' for split in ('train', 'val', 'test')}
    options['training_set'] = _data_section(names['train'], targets)
    options['validation_set'] = _data_section(names['val'], targets)
    options['test_set'] = _data_section(names['test'], targets) if has_test else 0.0
    architecture = options.setdefault('architecture', {})
    training = architecture.setdefault('training', {})
    name = architecture.get('name')
    if base_model is not None:
        if name == 'llpr':
            training['model_checkpoint'] = base_model
        elif 'finetune' in training:
            training['finetune'] = {**training['finetune'], 'read_from': base_model}
        else:
            raise ValueError(
                f'a base model needs `architecture.training.finetune` (architecture {name}) or the llpr architecture'
            )
    return options


def validate_options(options: dict) -> dict:
    """Validate a whole ``options.yaml`` the way ``mtt train`` does, and return the expanded architecture options.

    The base options are checked by metatrain's ``validate_base_options``, then the architecture options, merged
    over the architecture's defaults, by ``check_architecture_options``: both are pydantic models that forbid
    unknown keys, so a misspelt option is refused here, naming it, instead of failing in the queue.

    :raises ValueError: with metatrain's message, which names every offending key.
    """
    try:
        from metatrain.utils.architectures import check_architecture_options, get_default_hypers
        from metatrain.utils.pydantic import MetatrainValidationError, validate_base_options
    except ImportError as exception:  # pragma: no cover - the `train` extra is a dependency of this module's users
        raise ValueError(
            f'metatrain is needed to validate the options (pip install aiida-mad[train]): {exception}'
        ) from None
    from omegaconf import OmegaConf

    options = copy.deepcopy(options)
    try:
        validate_base_options(copy.deepcopy(options))
        name = options['architecture']['name']
        defaults = get_default_hypers(name)
        base_precision = options.get('base_precision', 32)
        merged = OmegaConf.merge(
            {'base_precision': base_precision}, {'architecture': defaults}, {'architecture': options['architecture']}
        )
        architecture = OmegaConf.to_container(merged, resolve=True)['architecture']
        check_architecture_options(name=name, options=copy.deepcopy(architecture))
    except MetatrainValidationError as exception:
        raise ValueError(f'metatrain options: {exception}') from None
    except (ValueError, KeyError, TypeError) as exception:
        raise ValueError(f'metatrain options: {exception}') from None
    return architecture


def checkpoint_info(node: orm.SinglefileData) -> dict:
    """Return ``{'architecture', 'epoch', 'dataset_uuid', 'fingerprint'}`` of a checkpoint node.

    A checkpoint made by this plugin carries them as attributes; any other checkpoint file is opened (metatrain
    checkpoints are ``torch.save`` dictionaries with ``architecture_name`` and ``epoch``), and then the dataset and
    fingerprint are unknown (``None``).

    :raises ValueError: if the file is not a metatrain checkpoint.
    """
    attributes = node.base.attributes.all
    if attributes.get('architecture'):
        return {key: attributes.get(key) for key in ('architecture', 'epoch', 'dataset_uuid', 'fingerprint')}
    import metatomic.torch  # noqa: F401 - registers the TorchScript classes that checkpoints hold
    import torch

    with node.as_path() as path:
        try:
            checkpoint = torch.load(path, weights_only=False, map_location='cpu')
        except Exception as exception:
            raise ValueError(f'{node.filename} (node {node.pk}) is not a metatrain checkpoint: {exception}') from None
    if not isinstance(checkpoint, dict) or 'architecture_name' not in checkpoint:
        raise ValueError(f'{node.filename} (node {node.pk}) is not a metatrain checkpoint: no architecture_name')
    return {
        'architecture': checkpoint['architecture_name'],
        'epoch': checkpoint.get('epoch'),
        'dataset_uuid': None,
        'fingerprint': None,
    }


def baseline_record(dataset: DatasetData) -> dict:
    """Return the identity of the dataset's isolated-atom baseline: its fingerprint and the energies' sha256."""
    energies = dataset.atomic_energies
    digest = hashlib.sha256(json.dumps(energies, sort_keys=True).encode()).hexdigest()
    return {'fingerprint': dataset.fingerprint, 'atomic_energies_sha256': digest, 'elements': sorted(energies)}


def check_dataset(dataset: DatasetData, settings: dict) -> None:
    """Check that ``dataset`` can train the targets of ``settings``.

    :raises ValueError: naming the dataset and what it lacks.
    """
    attributes = dataset.base.attributes.all
    label = f'dataset {attributes.get("name")} (pk {dataset.pk})'
    check_training_splits(dataset, 'metatrain')
    n_frames = attributes.get('n_frames', 0)
    if settings['target'] == 'dos':
        n_dos = attributes.get('n_with_dos', 0)
        if n_dos == 0:
            raise ValueError(f'{label} has no DOS: build it with include_dos (DFT with the mad-dos protocol)')
        if n_dos != n_frames:
            raise ValueError(f'{label}: only {n_dos} of {n_frames} frames have a DOS')
    elif settings['energy'] == 'baseline_subtracted' and attributes.get('n_with_baseline', 0) != n_frames:
        raise ValueError(
            f'{label}: {attributes.get("n_with_baseline", 0)} of {n_frames} frames have a baseline-subtracted energy; '
            "train on total energies (settings.energy = 'total') or rebuild the dataset with the isolated atoms"
        )


def _architecture_allowed(options_name: str, checkpoint_name: str, role: str) -> str | None:
    if role == 'base_model' and options_name == 'llpr':
        if checkpoint_name not in LLPR_WRAPPABLE:
            return f'base_model is a `{checkpoint_name}` checkpoint: the llpr wrapper takes {", ".join(LLPR_WRAPPABLE)}'
        return None
    if role == 'restart' and options_name != checkpoint_name:
        return f'restart is a `{checkpoint_name}` checkpoint, but the options train `{options_name}`'
    if role == 'base_model' and options_name != checkpoint_name:
        return f'base_model is a `{checkpoint_name}` checkpoint, but the options fine-tune `{options_name}`'
    return None


def validate_inputs(value, _):
    """Check everything that can be checked before the calculation is stored or submitted."""
    dataset = value.get('dataset')
    parameters = value.get('parameters')
    if dataset is None or parameters is None:
        return None
    try:
        settings = get_settings(value['settings'].get_dict() if 'settings' in value else None)
        check_dataset(dataset, settings)
        parameters = parameters.get_dict()
        base_model = BASE_MODEL_FILE if 'base_model' in value else None
        options = build_options(parameters, build_targets(settings, dos_length=1), has_test=True, base_model=base_model)
        validate_options(options)
        name = parameters['architecture']['name']
        if name == 'llpr' and base_model is None:
            return 'the llpr architecture needs a base_model checkpoint to wrap'
        for role in ('restart', 'base_model'):
            if role not in value:
                continue
            info = checkpoint_info(value[role])
            problem = _architecture_allowed(name, info['architecture'], role)
            if problem:
                return problem
            if role == 'restart' and info['dataset_uuid'] not in (None, dataset.uuid):
                return f'restart checkpoint was trained on dataset {info["dataset_uuid"]}, not {dataset.uuid}'
            if role == 'base_model' and name != 'llpr':
                allowed = value.get('allow_fingerprint_mismatch')
                if info['fingerprint'] != dataset.fingerprint and not (allowed is not None and allowed.value):
                    known = info['fingerprint'] or 'unknown (a checkpoint made outside aiida-mad)'
                    return (
                        f'fine-tuning refused: the base model was trained at fingerprint {known}, the dataset is at '
                        f'{dataset.fingerprint}; set allow_fingerprint_mismatch to fine-tune across levels of theory '
                        '(it is recorded on the model)'
                    )
            if role == 'base_model' and name == 'llpr' and info['fingerprint'] not in (None, dataset.fingerprint):
                return (
                    f'llpr refused: the base model was trained at fingerprint {info["fingerprint"]}, the dataset '
                    f'(used for calibration) is at {dataset.fingerprint}'
                )
    except ValueError as exception:
        return str(exception)
    except KeyError as exception:
        return f'parameters lack {exception}: give at least architecture.name'
    return None


def _dos_length(path: pathlib.Path) -> int:
    """Return the number of values of ``REF_dos`` in the first frame of an extended-XYZ file."""
    with open(path, encoding='utf-8') as handle:
        handle.readline()
        header = handle.readline()
    match = re.search(r'REF_dos="([^"]*)"', header)
    if not match:
        raise ValueError(f'{path.name}: the first frame has no REF_dos')
    return len(match.group(1).split())


class MetatrainCalculation(CalcJob):
    """Train a metatrain model (PET, PET-MAD-DOS, LoRA fine-tune, LLPR wrapper) on a ``mad.dataset``."""

    _DEFAULT_PARSER = 'mad.metatrain'

    @classmethod
    def define(cls, spec):
        """Define the process specification."""
        super().define(spec)
        spec.input('dataset', valid_type=DatasetData, help='The `mad.dataset` to train on (its own splits).')
        spec.input(
            'parameters',
            valid_type=orm.Dict,
            help='metatrain options without the data sections: `architecture` (name, model, training) and base '
            "options (seed, device, base_precision, ...). Validated against metatrain's schema.",
        )
        spec.input(
            'settings',
            valid_type=orm.Dict,
            required=False,
            help='Targets: `target` (energy or dos), `energy` (baseline_subtracted or total), `forces`, `stress`.',
        )
        spec.input(
            'restart', valid_type=orm.SinglefileData, required=False, help='Checkpoint to continue training from.'
        )
        spec.input(
            'base_model',
            valid_type=orm.SinglefileData,
            required=False,
            help='Checkpoint to fine-tune (PET `finetune`) or to wrap (llpr).',
        )
        spec.input(
            'allow_fingerprint_mismatch',
            valid_type=orm.Bool,
            required=False,
            help='Fine-tune a base model trained at another level of theory (recorded on the model).',
        )
        spec.inputs.validator = validate_inputs
        set_option_defaults(spec, cls._DEFAULT_PARSER, STDOUT_FILE)

        spec.output('model', help='The exported model (`mad.model`).')
        spec.output(
            'checkpoint',
            valid_type=orm.SinglefileData,
            required=False,
            help='The final checkpoint, or the newest intermediate one when training stopped early.',
        )
        spec.output('metrics', valid_type=orm.ArrayData, required=False, help='Per-epoch metrics of train.csv.')
        spec.output('results', valid_type=orm.Dict, required=False, help='Final errors, epochs, parameter counts.')
        spec.default_output_node = 'results'

        define_training_exit_codes(spec, 'mtt train', 'metatrain could not import the architecture')

    def prepare_for_submission(self, folder):
        """Write ``options.yaml`` and the split files, and return the calculation info."""
        import yaml

        settings = get_settings(self.inputs.settings.get_dict() if 'settings' in self.inputs else None)
        dataset = self.inputs.dataset
        written = dataset.write_split_files(folder.abspath, prefix=SPLIT_PREFIX)
        counts = {split: count for split, (_, count) in written.items()}
        dos_length = _dos_length(pathlib.Path(written['train'][0])) if settings['target'] == 'dos' else None
        targets = build_targets(settings, dos_length=dos_length)
        base_model = BASE_MODEL_FILE if 'base_model' in self.inputs else None
        options = build_options(
            self.inputs.parameters.get_dict(), targets, has_test=counts['test'] > 0, base_model=base_model
        )
        with folder.open(OPTIONS_FILE, 'w') as handle:
            yaml.safe_dump(options, handle, sort_keys=False)

        local_copy_list = []
        cmdline = ['train', OPTIONS_FILE]
        if 'restart' in self.inputs:
            node = self.inputs.restart
            local_copy_list.append((node.uuid, node.filename, RESTART_FILE))
            cmdline += ['--restart', RESTART_FILE]
        if base_model is not None:
            node = self.inputs.base_model
            local_copy_list.append((node.uuid, node.filename, BASE_MODEL_FILE))

        return calculation_info(
            self,
            cmdline,
            local_copy_list=local_copy_list,
            retrieve_list=[
                MODEL_FILE,
                CHECKPOINT_FILE,
                self.metadata.options.output_filename,
                *[f'outputs/*/*/{name}' for name in OUTPUT_FOLDER_FILES],
            ],
            retrieve_temporary_list=['outputs/*/*/model_*.ckpt'],
        )
