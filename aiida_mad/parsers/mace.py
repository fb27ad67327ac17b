"""Parser of ``mad.mace``: the model, the newest checkpoint, the per-epoch metrics and the final errors.

The outputs have the shape of ``mad.metatrain``'s (``model`` a ``mad.model``, ``checkpoint``, ``metrics``,
``results``), with the compiled model as ``compiled_model``. The per-epoch metrics come from MACE's
``results/aiida_run-<seed>_train.txt`` (JSON lines: one ``"mode": "eval"`` line per validation pass, one
``"mode": "opt"`` line per optimisation step), the final errors from the error tables of ``logs/aiida_run-<seed>.log``.
A run that wrote no model is classified from the standard error (MACE's traceback), NaN losses and the scheduler's
walltime code; whenever a checkpoint exists it is attached and named in the exit message, for the restart.
"""

from __future__ import annotations

import json
import pathlib
import re

import numpy as np
from aiida import orm
from aiida.engine import ExitCode

from aiida_mad.calculations.mace import (
    COMPILED_FILE,
    CONFIG_FILE,
    MODEL_FILE,
    STAGETWO_COMPILED_FILE,
    STAGETWO_FILE,
    STDERR_FILE,
    checkpoint_epoch,
    parse_e0s,
)
from aiida_mad.calculations.metatrain import baseline_record
from aiida_mad.data.model import ModelData
from aiida_mad.parsers.training import TrainingParser, energy_target, last_epoch_metrics

__all__ = ('MaceTrainParser', 'parse_error_tables', 'parse_mace_metrics')

_VERSION = re.compile(r'MACE version: (\S+)')
_TABLE = re.compile(r'Error-table on (TRAIN and VALID|TEST):')


def parse_mace_metrics(text: str) -> dict[str, np.ndarray]:
    """Return per-epoch arrays from MACE's ``_train.txt`` (JSON lines).

    ``epoch``, ``training_loss`` (the mean of the epoch's optimisation steps) and every validation metric
    (``validation_loss``, ``validation_rmse_e_per_atom``, ...).

    :raises ValueError: naming the line that is not JSON.
    """
    training: dict[int, list[float]] = {}
    validation: dict[int, dict] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exception:
            raise ValueError(f'_train.txt line {number} is not JSON: {exception}') from None
        epoch = entry.get('epoch')
        if epoch is None:
            continue  # the evaluation before the first epoch
        if entry.get('mode') == 'opt':
            training.setdefault(int(epoch), []).append(float(entry['loss']))
        elif entry.get('mode') == 'eval':
            validation[int(epoch)] = entry
    epochs = sorted(set(training) | set(validation))
    arrays: dict[str, np.ndarray] = {'epoch': np.array(epochs, dtype=np.int64)}
    arrays['training_loss'] = np.array([np.mean(training[e]) if e in training else np.nan for e in epochs])
    names = sorted(
        {key for entry in validation.values() for key, value in entry.items() if isinstance(value, int | float)}
        - {'epoch', 'time'}
    )
    for name in names:
        arrays[f'validation_{name}'] = np.array(
            [
                float(validation[e][name]) if e in validation and validation[e].get(name) is not None else np.nan
                for e in epochs
            ]
        )
    return arrays


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def parse_error_tables(log: str) -> dict[str, dict[str, float]]:
    """Return ``{split: {metric (unit): value}}`` from the error tables MACE logs after training."""
    errors: dict[str, dict[str, float]] = {}
    section = None
    headers: list[str] | None = None
    for line in log.splitlines():
        match = _TABLE.search(line)
        if match:
            section, headers = match.group(1), None
            continue
        if section is None:
            continue
        if not line.startswith('|'):
            if line.startswith('+'):
                continue
            section = None
            continue
        cells = [cell.strip() for cell in line.strip().strip('|').split('|')]
        if headers is None:
            headers = cells
            continue
        label = cells[0]
        if section == 'TEST':
            split = 'test'
        elif label.startswith('train'):
            split = 'train'
        elif label.startswith('valid'):
            split = 'val'
        else:
            continue
        values = {header: _float(cell) for header, cell in zip(headers[1:], cells[1:], strict=False)}
        errors.setdefault(split, {}).update({key: value for key, value in values.items() if value is not None})
    return errors


#: An interaction scale below this makes a MACE model predict the sum of its E0s whatever the structure: MACE's
#: ``rms_forces_scaling`` over training frames whose forces are all ~0 (symmetric cells; MACE replaces only an exact 0
#: by 1). Two such models agree to the last bit, so a committee of them has no spread.
NEGLIGIBLE_SCALE = 1e-6


def model_facts(path) -> dict:
    """Return ``n_parameters`` and ``interaction_scale`` (the largest scale of the model's ``ScaleShiftBlock``).

    Either is ``None`` when it cannot be read (a model without a scale block has no ``interaction_scale``).
    """
    try:
        import torch

        model = torch.load(path, map_location='cpu', weights_only=False)
    except Exception:
        return {'n_parameters': None, 'interaction_scale': None}
    scale = getattr(getattr(model, 'scale_shift', None), 'scale', None)
    return {
        'n_parameters': int(sum(parameter.numel() for parameter in model.parameters())),
        'interaction_scale': float(torch.as_tensor(scale).abs().max()) if scale is not None else None,
    }


class MaceTrainParser(TrainingParser):
    """Parse the retrieved files of a ``mad.mace`` calculation."""

    def parse(self, **kwargs):
        """Attach the model, compiled model, checkpoint, metrics and results, or return the exit code of the failure."""
        import yaml

        names = set(self.retrieved.base.repository.list_object_names())
        temporary = kwargs.get('retrieved_temporary_folder')
        log = next((self._read(name) for name in sorted(names) if re.fullmatch(r'aiida_run-\d+\.log', name)), '')
        metrics_text = next((self._read(name) for name in sorted(names) if name.endswith('_train.txt')), '')
        stderr = self._read(STDERR_FILE) if STDERR_FILE in names else ''
        config = yaml.safe_load(self.node.base.repository.get_object_content(CONFIG_FILE, mode='r'))

        arrays = {}
        if metrics_text:
            try:
                arrays = parse_mace_metrics(metrics_text)
            except ValueError as exception:
                return self.exit_codes.ERROR_READING_METRICS.format(message=str(exception))
        last_epoch = int(arrays['epoch'][-1]) if len(arrays.get('epoch', [])) else None
        if arrays and len(arrays['epoch']):
            self.out('metrics', self._metrics_node(arrays))

        checkpoint = self._checkpoint(temporary)
        if checkpoint is not None:
            self.out('checkpoint', checkpoint)
        checkpoint_label = checkpoint.base.attributes.get('source_file') if checkpoint is not None else 'none'

        nan_loss = self._nan_loss(arrays)
        if nan_loss is not None:
            return nan_loss

        stagetwo = STAGETWO_FILE in names
        model_file = STAGETWO_FILE if stagetwo else MODEL_FILE
        if model_file not in names:
            return self._failure(stderr, log, last_epoch, checkpoint_label)
        compiled_file = STAGETWO_COMPILED_FILE if stagetwo else COMPILED_FILE
        missing = [name for name in (compiled_file,) if name not in names]
        if not log:
            missing.append('logs/aiida_run-<seed>.log')
        if missing:
            return self.exit_codes.ERROR_MISSING_OUTPUT_FILES.format(files=', '.join(missing))

        results = self._results(config, log, arrays, last_epoch, stagetwo)
        with self.retrieved.base.repository.as_path(model_file) as path:
            results.update(model_facts(pathlib.Path(path)))
            results['n_trainable_parameters'] = results['n_parameters']  # MACE trains every parameter
            model = ModelData(pathlib.Path(path), filename=MODEL_FILE)
        scale = results['interaction_scale']
        if scale is not None and scale < NEGLIGIBLE_SCALE:
            self.logger.warning(
                f'the interaction energy is scaled by {scale:.3g}: the training frames have (almost) no forces, so '
                'the model predicts the sum of its E0s whatever the structure; train on frames with forces, or set '
                'the parameter scaling: no_scaling'
            )
        attributes = {key: value for key, value in results.items() if key != 'last_epoch_metrics'}
        attributes['targets'] = {'energy': energy_target('total', ('forces', 'stress'))}
        model.base.attributes.set_many(attributes)
        self.out('model', model)
        with self.retrieved.base.repository.open(compiled_file, 'rb') as handle:
            self.out('compiled_model', orm.SinglefileData(handle, filename=COMPILED_FILE))
        self.out('results', orm.Dict(results))
        return ExitCode(0)

    # ------------------------------------------------------------------------------------------------------------

    def _record(self, config: dict) -> dict:
        """Return what the inputs say about the training: dataset, fingerprint, E0s and their baseline."""
        from ase.data import chemical_symbols

        dataset = self.node.inputs.dataset
        e0s = config['E0s']
        record = {
            'architecture': 'mace',
            **self._dataset_record(),
            'energy_reference': 'total',
            'elements': list(dataset.elements),
            'seed': int(config['seed']),
            'r_max': config.get('r_max'),
            'e0s': e0s if e0s == 'average' else {chemical_symbols[z]: value for z, value in parse_e0s(e0s).items()},
            'e0s_source': 'average' if e0s == 'average' else 'dataset baseline',
        }
        if e0s != 'average':
            record['baseline'] = baseline_record(dataset)
        record.update(self._restart_record())
        return record

    def _checkpoint(self, temporary) -> orm.SinglefileData | None:
        """Return the newest complete checkpoint of the run, with the attributes the guards read."""
        if temporary is None:
            return None
        candidates = []
        for path in pathlib.Path(temporary).rglob('*.pt'):
            found = checkpoint_epoch(path.name)
            if found:
                candidates.append((found[1], path.name, path))
        found = self._newest_complete(candidates)
        if found is None:
            return None
        epoch, name, path = found
        record = {'architecture': 'mace', **self._dataset_record(), 'energy_reference': 'total'}
        return self._set_checkpoint_attributes(orm.SinglefileData(path, filename=name), record, epoch, name)

    def _failure(self, stderr: str, log: str, last_epoch, checkpoint: str) -> ExitCode:
        lines = [line.strip() for line in stderr.splitlines() if re.match(r'^[\w.]+(Error|Exception)\b', line.strip())]
        message = lines[-1] if lines else ''
        if message:
            failure = self._out_of_memory(stderr, message, checkpoint) or self._import_failure(message, message)
            return failure or self.exit_codes.ERROR_TRAINING_FAILED.format(message=message)
        if 'error: ' in stderr and 'usage:' in stderr:
            return self.exit_codes.ERROR_INVALID_OPTIONS.format(message=stderr.strip().splitlines()[-1])
        tail = ' '.join(stderr.strip().splitlines()[-3:]) or 'no log, no output'
        return self._stopped(log, last_epoch, checkpoint, tail)

    def _results(self, config: dict, log: str, arrays: dict, last_epoch, stagetwo: bool) -> dict:
        version = _VERSION.search(log)
        results = {
            **self._record(config),
            'mace_version': version.group(1) if version else None,
            'epochs': last_epoch + 1 if last_epoch is not None else None,
            'epochs_this_run': len(arrays.get('epoch', [])),
            'stage_two': stagetwo,
            'errors': parse_error_tables(log),
        }
        if arrays:
            results['last_epoch_metrics'] = last_epoch_metrics(arrays)
        return results
