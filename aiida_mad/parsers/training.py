"""What the parsers of the training calculations (``mad.metatrain``, ``mad.mace``) share: ``TrainingParser``.

Both attach the same outputs (``model``, ``checkpoint``, ``metrics``, ``results``) and classify a failure the same
way (the exit codes of :func:`aiida_mad.calculations.training.define_training_exit_codes`): NaN in the training loss,
then what the traceback says (out of memory, failed import, ...), then the scheduler's walltime code, a run that left
no log at all, and a run that stopped without an error (killed, node failure). Whenever a checkpoint exists it is
attached with the attributes the guards read, and named in the exit message, for the restart.
"""

from __future__ import annotations

import math
import zipfile

import numpy as np
from aiida import orm
from aiida.engine import ExitCode
from aiida.parsers import Parser

__all__ = ('TrainingParser', 'complete_checkpoint', 'energy_target', 'last_epoch_metrics')


def energy_target(reference: str, gradients) -> dict:
    """Return the ``targets`` entry of an energy model: total or baseline-subtracted energy, with its gradients."""
    units = {'forces': 'eV/Å', 'stress': 'eV/Å³'}
    return {
        'quantity': 'energy',
        'unit': 'eV',
        'per_atom': False,
        'reference': reference,
        'gradients': {name: units[name] for name in gradients},
    }


def complete_checkpoint(source) -> bool:
    """Return whether ``source`` (a path or a seekable binary handle) is a whole ``torch.save`` file.

    ``torch.save`` writes a ZIP archive whose central directory comes last; a run killed while it writes a checkpoint
    leaves a file without one, which ``torch.load`` refuses ("failed reading zip archive"). Only the directory and the
    member names are read, not the tensors.
    """
    try:
        with zipfile.ZipFile(source) as archive:
            return any(name.endswith('data.pkl') for name in archive.namelist())
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return False


def last_epoch_metrics(arrays: dict[str, np.ndarray]) -> dict[str, float | None]:
    """Return the last value of every per-epoch array but ``epoch`` (``None`` for a value that is not finite)."""
    last = {name: float(values[-1]) for name, values in arrays.items() if name != 'epoch' and len(values)}
    return {name: (value if math.isfinite(value) else None) for name, value in last.items()}


class TrainingParser(Parser):
    """The parts of a training calculation's parser that do not depend on the training program."""

    def _read(self, name: str, names: set[str] | None = None) -> str:
        """Return the text of a retrieved file; ``''`` if ``names`` is given and lacks it."""
        if names is not None and name not in names:
            return ''
        return self.retrieved.base.repository.get_object_content(name, mode='r')

    @staticmethod
    def _metrics_node(arrays: dict[str, np.ndarray], columns: dict | None = None) -> orm.ArrayData:
        """Return the ``metrics`` output: one array per metric (and the columns' headers and units, if given)."""
        node = orm.ArrayData()
        for name, values in arrays.items():
            node.set_array(name, values)
        if columns is not None:
            node.base.attributes.set('columns', columns)
        return node

    def _newest_complete(self, candidates: list) -> tuple | None:
        """Return the largest of ``candidates`` (tuples ending in a path) whose file is a complete checkpoint.

        A newer file that is incomplete (the run was stopped while writing it) is skipped with a warning: restarting
        from it would fail.
        """
        for candidate in sorted(candidates, reverse=True):
            if complete_checkpoint(candidate[-1]):
                return candidate
            self._skip_incomplete(candidate[-1].name)
        return None

    def _skip_incomplete(self, name: str) -> None:
        """Warn that the checkpoint ``name`` is not a complete file, and is not the one a restart continues from."""
        self.logger.warning(f'{name} is incomplete (the run stopped while writing it): skipped')

    @staticmethod
    def _set_checkpoint_attributes(node: orm.SinglefileData, record: dict, epoch, source: str) -> orm.SinglefileData:
        """Set on a checkpoint node what the guards of a restart or fine-tuning read, and return it."""
        node.base.attributes.set_many(
            {
                'architecture': record['architecture'],
                'epoch': epoch,
                'dataset_uuid': record['dataset_uuid'],
                'fingerprint': record['fingerprint'],
                'energy_reference': record['energy_reference'],
                'source_file': source,
            }
        )
        return node

    def _dataset_record(self) -> dict:
        """Return what every training records of its dataset (and of the checkpoint it restarted from)."""
        inputs = self.node.inputs
        dataset = inputs.dataset
        record = {
            'dataset_uuid': dataset.uuid,
            'dataset_name': dataset.base.attributes.get('name'),
            'dataset_content_hash': dataset.base.attributes.get('content_hash'),
            'fingerprint': dataset.base.attributes.get('fingerprint'),
        }
        return record

    def _restart_record(self) -> dict:
        """Return ``{'restarted_from': {uuid, epoch}}`` of a restarted training, else ``{}``."""
        if 'restart' not in self.node.inputs:
            return {}
        restart = self.node.inputs.restart
        return {'restarted_from': {'uuid': restart.uuid, 'epoch': restart.base.attributes.get('epoch', None)}}

    def _nan_loss(self, arrays: dict[str, np.ndarray]) -> ExitCode | None:
        """Return ``ERROR_NAN_LOSS`` naming the first epoch whose training loss is not finite, else ``None``."""
        loss = arrays.get('training_loss')
        if loss is None or np.all(np.isfinite(loss)):
            return None
        epoch = int(arrays['epoch'][np.argmax(~np.isfinite(loss))]) if 'epoch' in arrays else None
        return self.exit_codes.ERROR_NAN_LOSS.format(epoch=epoch, message='training loss is not finite')

    def _out_of_memory(self, text: str, message: str, checkpoint: str) -> ExitCode | None:
        """Return ``ERROR_OUT_OF_MEMORY`` if ``text`` (a traceback) says out of memory, else ``None``."""
        if 'OutOfMemoryError' in text or 'out of memory' in text.lower():
            return self.exit_codes.ERROR_OUT_OF_MEMORY.format(message=message, checkpoint=checkpoint)
        return None

    def _import_failure(self, text: str, message: str) -> ExitCode | None:
        """Return ``ERROR_ARCHITECTURE_IMPORT`` if ``text`` names a failed import, else ``None``."""
        if 'ModuleNotFoundError' in text or 'ImportError' in text:
            return self.exit_codes.ERROR_ARCHITECTURE_IMPORT.format(message=message)
        return None

    def _stopped(self, log: str, last_epoch, checkpoint: str, tail: str) -> ExitCode:
        """Return the exit code of a run that wrote no model and no error: walltime, no log at all, or interrupted.

        :param tail: the message of ``ERROR_TRAINING_FAILED`` when the run left no log.
        """
        epoch = last_epoch if last_epoch is not None else 'none'
        if self.node.exit_status == self.node.process_class.exit_codes.ERROR_SCHEDULER_OUT_OF_WALLTIME.status:
            return self.exit_codes.ERROR_OUT_OF_WALLTIME.format(epoch=epoch, checkpoint=checkpoint)
        if not log:
            return self.exit_codes.ERROR_TRAINING_FAILED.format(message=tail)
        return self.exit_codes.ERROR_TRAINING_INTERRUPTED.format(epoch=epoch, checkpoint=checkpoint)
