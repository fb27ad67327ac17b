"""Parser of ``mad.metatrain``: the exported model, its checkpoint, the per-epoch metrics and the final errors.

Outputs: ``model`` (``mad.model``: ``model.pt`` with its training record), ``checkpoint`` (``model.ckpt``, or the
newest intermediate ``model_<epoch>.ckpt`` when training stopped early), ``metrics`` (``ArrayData``, one array per
column of ``train.csv``), ``results`` (``Dict``: final errors per split, epochs, parameter counts, versions).

Failures are classified by what metatrain left behind (see the exit codes of ``MetatrainCalculation``): its
``error.log`` traceback (failed import of the architecture, out of memory, refused options, anything else), NaN in
the training loss of ``train.csv`` (metatrain itself trains on), the scheduler's walltime code, and a run that stopped
without an error (killed, node failure). Whenever an intermediate checkpoint exists it is attached, and named in the
exit message, so that the restart work chain can continue from it.
"""

from __future__ import annotations

import io
import pathlib
import re

import numpy as np
from aiida import orm
from aiida.engine import ExitCode

from aiida_mad.calculations.metatrain import (
    CHECKPOINT_FILE,
    DOS_TARGET,
    MODEL_FILE,
    baseline_record,
    get_settings,
)
from aiida_mad.data.model import ModelData
from aiida_mad.parsers.training import TrainingParser, complete_checkpoint, energy_target, last_epoch_metrics

__all__ = ('MetatrainParser', 'parse_final_errors', 'parse_metrics')

_EVALUATING = re.compile(r'Evaluating (training|validation|test) dataset')
_METRIC = re.compile(r'^\s*(.+?):\s*([-+0-9.eE]+|nan|inf)\s*(\S*)\s*$')
_PARAMETERS = re.compile(r'The model has .* parameters \(actual number: (\d+)\)')
_TRAINABLE = re.compile(r'Number of trainable parameters: (\d+)')
_VERSION = re.compile(r'Package version: (\S+)')
_CHECKPOINT_EPOCH = re.compile(r'model_(\d+)\.ckpt$')
_SPLIT_NAMES = {'training': 'train', 'validation': 'val', 'test': 'test'}


def column_name(header: str) -> str:
    """Return the array name of a ``train.csv`` column (``training energy RMSE`` -> ``training_energy_rmse``)."""
    name = re.sub(r'[^0-9a-zA-Z]+', '_', header.strip().lower()).strip('_')
    return name or 'column'


def parse_metrics(text: str) -> tuple[dict[str, np.ndarray], dict[str, dict[str, str]]]:
    """Parse metatrain's ``train.csv``: a header row, a units row, then one row per logged epoch.

    :return: ``({array name: values}, {array name: {'header': ..., 'unit': ...}})``.
    :raises ValueError: if the file has no header and units rows or rows of the wrong length.
    """
    import csv

    rows = [row for row in csv.reader(io.StringIO(text)) if row]
    if len(rows) < 2:
        raise ValueError('train.csv has no header and units rows')
    headers, units = rows[0], rows[1]
    if len(units) != len(headers):
        raise ValueError(f'train.csv: {len(headers)} headers but {len(units)} units')
    names = [column_name(header) for header in headers]
    values = []
    for number, row in enumerate(rows[2:], start=3):
        if len(row) != len(headers):
            raise ValueError(f'train.csv line {number}: {len(row)} values for {len(headers)} columns')
        values.append([float(value) for value in row])
    table = np.array(values, dtype=float).reshape(len(values), len(headers))
    arrays = {name: table[:, index] for index, name in enumerate(names)}
    if 'epoch' in arrays:
        arrays['epoch'] = arrays['epoch'].astype(np.int64)
    columns = {
        name: {'header': header.strip(), 'unit': unit.strip()}
        for name, header, unit in zip(names, headers, units, strict=True)
    }
    return arrays, columns


def parse_final_errors(log: str) -> dict[str, dict[str, float]]:
    """Return ``{split: {metric (unit): value}}`` from the final evaluation that ``mtt train`` logs."""
    errors: dict[str, dict[str, float]] = {}
    split = None
    for line in log.splitlines():
        match = _EVALUATING.search(line)
        if match:
            split = _SPLIT_NAMES[match.group(1)]
            continue
        if split is None or ' | ' not in line or 'Epoch' in line:
            continue
        message = line.split('] - ', 1)[-1]
        if 'RMSE' not in message and 'MAE' not in message:
            continue
        metrics = {}
        for part in message.split(' | '):
            found = _METRIC.match(part)
            if found:
                name, value, unit = found.groups()
                metrics[f'{name} ({unit})' if unit else name] = float(value)
        errors[split] = metrics
        split = None
    return errors


def _count_parameters(path: pathlib.Path) -> int | None:
    """Return the number of parameters in the checkpoint's model state (``None`` if it cannot be read)."""
    try:
        import metatomic.torch  # noqa: F401 - registers the TorchScript classes of the checkpoint
        import torch

        checkpoint = torch.load(path, weights_only=False, map_location='cpu')
        state = checkpoint.get('best_model_state_dict') or checkpoint['model_state_dict']
    except Exception:
        return None
    return int(sum(value.numel() for value in state.values() if hasattr(value, 'numel') and value.is_floating_point()))


def _exception_line(traceback: str) -> str:
    """Return the last ``SomeError: message`` line of a traceback (the exception metatrain raised)."""
    lines = [line.strip() for line in traceback.splitlines() if re.match(r'^[\w.]+(Error|Exception)\b.*:', line)]
    if lines:
        return lines[-1]
    stripped = traceback.strip().splitlines()
    return stripped[-1] if stripped else ''


class MetatrainParser(TrainingParser):
    """Parse the retrieved files of a ``mad.metatrain`` calculation."""

    def parse(self, **kwargs):
        """Attach the model, checkpoint, metrics and results, or return the exit code that says what went wrong."""
        retrieved = self.retrieved
        names = set(retrieved.base.repository.list_object_names())
        temporary = kwargs.get('retrieved_temporary_folder')
        log = self._read('train.log', names)
        error_log = self._read('error.log', names)

        metrics_text = self._read('train.csv', names)
        arrays, columns = {}, {}
        if metrics_text:
            try:
                arrays, columns = parse_metrics(metrics_text)
            except ValueError as exception:
                return self.exit_codes.ERROR_READING_METRICS.format(message=str(exception))
        last_epoch = int(arrays['epoch'][-1]) if len(arrays.get('epoch', [])) else None
        if arrays:
            self.out('metrics', self._metrics_node(arrays, columns))

        nan_epoch = self._first_nan_epoch(arrays, error_log, last_epoch)
        checkpoint = self._checkpoint(names, temporary, last_epoch, nan_epoch)
        if checkpoint is not None:
            self.out('checkpoint', checkpoint)
        checkpoint_label = checkpoint.base.attributes.get('source_file') if checkpoint is not None else 'none'

        nan_loss = self._nan_loss(arrays)
        if nan_loss is not None:
            return nan_loss

        if MODEL_FILE not in names:
            return self._failure(error_log, log, last_epoch, checkpoint_label)
        missing = [name for name in (CHECKPOINT_FILE, 'train.csv', 'train.log') if name not in names]
        if missing:
            return self.exit_codes.ERROR_MISSING_OUTPUT_FILES.format(files=', '.join(missing))

        results = self._results(log, arrays, columns, last_epoch)
        if error_log:
            # The model and checkpoint were written, then metatrain's final evaluation failed (e.g. a split whose
            # frames all lack stress): keep the model, and say which errors are missing and why.
            results['final_evaluation_failed'] = _exception_line(error_log)
            self.logger.warning(f'final evaluation failed: {results["final_evaluation_failed"]}')
        model = self._model_node(results)
        self.out('model', model)
        self.out('results', orm.Dict(results))
        return ExitCode(0)

    # ------------------------------------------------------------------------------------------------------------

    @staticmethod
    def _first_nan_epoch(arrays: dict[str, np.ndarray], error_log: str, last_epoch) -> int | None:
        """Return the first epoch whose training loss is not finite (from the metrics, else from the error), or None.

        metatrain stops in the epoch whose loss turns NaN, before it logs the epoch, so without a NaN row in the
        metrics a NaN error means the epoch after the last logged one.
        """
        loss = arrays.get('training_loss')
        if loss is not None and 'epoch' in arrays and not np.all(np.isfinite(loss)):
            return int(arrays['epoch'][np.argmax(~np.isfinite(loss))])
        message = _exception_line(error_log) if error_log else ''
        if re.search(r'\bNaN\b', message) or re.search(r'\bnan\b', message):
            return last_epoch + 1 if last_epoch is not None else 0
        return None

    def _checkpoint(self, names: set[str], temporary, last_epoch, nan_epoch=None) -> orm.SinglefileData | None:
        """Return the final checkpoint, else the newest intermediate one, as a ``SinglefileData`` with attributes.

        After a NaN loss (``nan_epoch``), only a checkpoint written before that epoch is kept: the last good one.
        A checkpoint the run was stopped while writing (not a complete file) is skipped for the one before it.
        """
        if CHECKPOINT_FILE in names and nan_epoch is None:
            with self.retrieved.base.repository.open(CHECKPOINT_FILE, 'rb') as handle:
                if complete_checkpoint(handle):
                    handle.seek(0)
                    node = orm.SinglefileData(handle, filename=CHECKPOINT_FILE)
                    return self._set_checkpoint_attributes(node, self._training_record(), last_epoch, CHECKPOINT_FILE)
            self._skip_incomplete(CHECKPOINT_FILE)
        candidates = []
        if temporary is not None:
            for path in pathlib.Path(temporary).glob('model_*.ckpt'):
                match = _CHECKPOINT_EPOCH.search(path.name)
                if match and (nan_epoch is None or int(match.group(1)) < nan_epoch):
                    candidates.append((int(match.group(1)), path))
        found = self._newest_complete(candidates)
        if found is None:
            return None
        epoch, path = found
        node = orm.SinglefileData(path, filename=path.name)
        return self._set_checkpoint_attributes(node, self._training_record(), epoch, path.name)

    def _training_record(self) -> dict:
        """Return what the inputs say about the training: architecture, dataset, fingerprint, targets."""
        inputs = self.node.inputs
        dataset = inputs.dataset
        settings = get_settings(inputs.settings.get_dict() if 'settings' in inputs else None)
        parameters = inputs.parameters.get_dict()
        record = {
            'architecture': parameters['architecture']['name'],
            **self._dataset_record(),
            'energy_reference': settings['energy'] if settings['target'] == 'energy' else None,
            'settings': settings,
        }
        if settings['target'] == 'energy' and settings['energy'] == 'baseline_subtracted':
            record['baseline'] = baseline_record(dataset)
        if 'base_model' in inputs:
            base = inputs.base_model
            record['base_model'] = {
                'uuid': base.uuid,
                'architecture': base.base.attributes.get('architecture'),
                'fingerprint': base.base.attributes.get('fingerprint'),
                'dataset_uuid': base.base.attributes.get('dataset_uuid'),
            }
            finetune = parameters['architecture'].get('training', {}).get('finetune')
            if finetune:
                record['finetune'] = {key: value for key, value in finetune.items() if key != 'read_from'}
            allowed = inputs.allow_fingerprint_mismatch if 'allow_fingerprint_mismatch' in inputs else None
            record['fingerprint_mismatch_allowed'] = bool(allowed is not None and allowed.value)
        record.update(self._restart_record())
        return record

    def _failure(self, error_log: str, log: str, last_epoch, checkpoint: str) -> ExitCode:
        """Return the exit code of a run that wrote no model."""
        message = _exception_line(error_log)
        if error_log:
            if re.search(r'\bNaN\b', message) or re.search(r'\bnan\b', message):
                epoch = last_epoch + 1 if last_epoch is not None else 0
                return self.exit_codes.ERROR_NAN_LOSS.format(epoch=epoch, message=message)
            failure = self._out_of_memory(error_log, message, checkpoint) or self._import_failure(error_log, message)
            if failure is not None:
                return failure
            if 'MetatrainValidationError' in error_log or 'validation error' in error_log:
                return self.exit_codes.ERROR_INVALID_OPTIONS.format(message=message)
            return self.exit_codes.ERROR_TRAINING_FAILED.format(message=message)
        tail = ''
        if not log:
            names = set(self.retrieved.base.repository.list_object_names())
            stdout = self._read(self.node.get_option('output_filename'), names)
            tail = ' '.join(stdout.strip().splitlines()[-3:]) or 'no train.log, no output'
        return self._stopped(log, last_epoch, checkpoint, tail)

    def _results(self, log: str, arrays: dict, columns: dict, last_epoch) -> dict:
        record = self._training_record()
        version = _VERSION.search(log)
        # metatrain logs the parameters that require gradients, then (fine-tuning) the trainable ones after freezing.
        trainable = _TRAINABLE.search(log) or _PARAMETERS.search(log)
        results = {
            **record,
            'metatrain_version': version.group(1) if version else None,
            'n_trainable_parameters': int(trainable.group(1)) if trainable else None,
            'epochs': last_epoch + 1 if last_epoch is not None else None,
            'epochs_this_run': len(arrays.get('epoch', [])),
            'errors': parse_final_errors(log),
            'metric_units': {name: column['unit'] for name, column in columns.items()},
        }
        with self.retrieved.base.repository.as_path(CHECKPOINT_FILE) as path:
            results['n_parameters'] = _count_parameters(pathlib.Path(path))
        if arrays:
            results['last_epoch_metrics'] = last_epoch_metrics(arrays)
        return results

    def _model_node(self, results: dict) -> ModelData:
        with self.retrieved.base.repository.open(MODEL_FILE, 'rb') as handle:
            model = ModelData(handle, filename=MODEL_FILE)
        settings = results['settings']
        if settings['target'] == 'dos':
            targets = {DOS_TARGET: {'quantity': 'dos', 'unit': 'states/eV', 'per_atom': False}}
        else:
            gradients = [name for name in ('forces', 'stress') if settings[name]]
            targets = {'energy': energy_target(settings['energy'], gradients)}
        parameters = self.node.inputs.parameters.get_dict()['architecture']
        if parameters['name'] == 'llpr':
            members = parameters.get('model', {}).get('num_ensemble_members', {})
            for name, target in targets.items():
                target['uncertainty'] = f'{name}_uncertainty'
                if name in members:
                    target['ensemble'] = {'output': f'{name}_ensemble', 'members': members[name]}
        attributes = {key: value for key, value in results.items() if key not in ('last_epoch_metrics', 'metric_units')}
        attributes['targets'] = targets
        model.base.attributes.set_many(attributes)
        return model
