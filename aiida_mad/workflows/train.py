"""``TrainWorkChain`` (``mad.train``): a metatrain training that survives walltime limits and node failures.

A thin ``BaseRestartWorkChain`` around ``MetatrainCalculation`` (the aiida-quantumespresso ``PwBaseWorkChain``
pattern). When a calculation stops early (walltime, node failure, killed) it restarts from the checkpoint that
calculation left behind (the final one, or the newest intermediate ``model_<epoch>.ckpt`` of its folder), so the
epoch count goes on where it stopped. Without a checkpoint it stops with an exit code: it never starts from scratch
silently. Out of memory halves the batch size and continues from the checkpoint if there is one (and says so).

Builders come from the protocols of ``protocols/metatrain.yaml`` (``pet-mad``, ``pet-mad-dos``, ``lora``, ``llpr``,
``tiny``, ``tiny-dos``) through :meth:`TrainWorkChain.get_builder_from_protocol`, which also checks the consistency
guards of the calculation before anything is stored or submitted.
"""

from __future__ import annotations

import pathlib

from aiida import orm
from aiida.engine import BaseRestartWorkChain, ProcessHandlerReport, process_handler
from aiida_quantumespresso.workflows.protocols.utils import recursive_merge

from aiida_mad.calculations.metatrain import MetatrainCalculation
from aiida_mad.data.dataset import DatasetData
from aiida_mad.workflows.training import TrainingRestartMixin, as_checkpoint

__all__ = ('TrainWorkChain',)


class TrainWorkChain(TrainingRestartMixin, BaseRestartWorkChain):
    """Train a metatrain model on a ``mad.dataset``, restarting from checkpoints when a run stops early."""

    _process_class = MetatrainCalculation
    _namespace = 'metatrain'
    _protocol_file = 'metatrain.yaml'

    @classmethod
    def get_builder_from_protocol(
        cls,
        code: orm.AbstractCode,
        dataset: DatasetData,
        protocol: str | None = None,
        overrides: dict | None = None,
        *,
        base_model=None,
        restart=None,
        total_energy: bool = False,
        allow_fingerprint_mismatch: bool = False,
        options: dict | None = None,
        gpus: int | None = None,
        name: str | None = None,
        progress_interval: int | None = 60,
    ):
        """Return a builder for training on ``dataset`` with ``protocol``, checked before anything is stored.

        :param code: the ``mtt`` code.
        :param dataset: the ``mad.dataset``.
        :param protocol: one of :meth:`get_available_protocols` (default ``pet-mad``).
        :param overrides: nested inputs merged over the protocol's (``metatrain.parameters...``, ``settings``...).
        :param base_model: a ``mad.model`` (or checkpoint) to fine-tune (``lora``) or wrap (``llpr``).
        :param restart: a ``mad.model`` (or checkpoint) whose training to continue.
        :param total_energy: train on total energies instead of the baseline-subtracted ones.
        :param allow_fingerprint_mismatch: fine-tune a base model of another level of theory (recorded).
        :param options: ``metadata.options`` merged over the protocol's (e.g. from :func:`aiida_mad.gpus.gpu_options`).
        :param gpus: train on this many GPUs per node of a Slurm computer (``srun`` launcher, ``device: cuda``).
        :param name: the model's name (group ``mad/models/<name>``).
        :param progress_interval: report new epochs (``verdi process report``) at most this often, in seconds; ``None``
            switches the progress monitor off.
        :raises ValueError: naming the problem (unknown protocol or key, failed guard).
        """
        from aiida_mad.gpus import check_launcher, gpu_options, gpu_parameters

        inputs = cls.get_protocol_inputs(protocol, overrides)
        needs_base_model = inputs.pop('needs_base_model', False)
        if needs_base_model and base_model is None:
            raise ValueError(f'protocol `{protocol}` needs a base model (--finetune MODEL)')
        if base_model is not None and not needs_base_model:
            raise ValueError(f'protocol `{protocol}` trains from scratch: use `lora` or `llpr` with a base model')
        metatrain = inputs['metatrain']
        parameters = metatrain['parameters']
        run_options = cls.run_options(metatrain.get('metadata', {}).get('options', {}), None)
        if gpus:
            check_launcher(code.computer.scheduler_type, code.computer.get_mpirun_command())
            run_options = recursive_merge(run_options, gpu_options(gpus))
            parameters = gpu_parameters(parameters)
        if options:
            run_options = recursive_merge(run_options, options)
        settings = dict(inputs['settings'])
        if total_energy:
            settings['energy'] = 'total'

        builder = cls.training_builder(inputs, code, dataset, parameters, run_options, name)
        builder.metatrain.settings = orm.Dict(settings)
        if base_model is not None:
            builder.metatrain.base_model = as_checkpoint(base_model)
        if restart is not None:
            builder.metatrain.restart = as_checkpoint(restart)
        if progress_interval:
            builder.metatrain.monitors = {
                'progress': orm.Dict(
                    {'entry_point': 'mad.metatrain.progress', 'minimum_poll_interval': int(progress_interval)}
                )
            }
        if allow_fingerprint_mismatch:
            builder.metatrain.allow_fingerprint_mismatch = orm.Bool(True)
        label = f'train {parameters["architecture"]["name"]} on {dataset.base.attributes.get("name")}'
        builder.metadata.label = label
        builder.metatrain.metadata.label = label
        cls.check_builder(builder)
        return builder

    def results(self):
        """Attach the outputs of the last calculation, put the model in its group and report its figures."""
        result = super().results()
        if result is not None and result.status:
            return result
        node = self.ctx.children[self.ctx.iteration - 1]
        if 'model' in node.outputs:
            model = node.outputs.model
            self.report(
                f'model {model.pk}: {model.architecture}, {model.epochs} epochs, '
                f'{model.n_parameters} parameters, validation errors {model.errors.get("val", {})}'
            )
        return None

    @process_handler(priority=500, exit_codes=[MetatrainCalculation.exit_codes.ERROR_OUT_OF_MEMORY])
    def handle_out_of_memory(self, calculation):
        """Halve the batch size; continue from the checkpoint if there is one, else start again (reported)."""
        parameters = self.ctx.inputs.parameters.get_dict()
        training = parameters['architecture'].setdefault('training', {})
        batch_size = training.get('batch_size', 16)
        if batch_size <= 1:
            return ProcessHandlerReport(
                True, self.exit_codes.ERROR_TRAINING_FAILED.format(message='out of memory with batch size 1')
            )
        training['batch_size'] = batch_size // 2
        self.ctx.inputs.parameters = orm.Dict(parameters)
        where = 'its checkpoint' if self._restart_from(calculation) else 'scratch (no checkpoint was written yet)'
        self.report_error_handled(calculation, f'out of memory: batch size {batch_size // 2}, starting from {where}')
        return ProcessHandlerReport(True)


def training_calculations(node) -> list[orm.CalcJobNode]:
    """Return the ``mad.metatrain`` calculations of a training (a work chain's children, or the calculation itself)."""
    if isinstance(node, orm.CalcJobNode):
        return [node]
    if isinstance(node, orm.WorkflowNode):
        return sorted((child for child in node.called if isinstance(child, orm.CalcJobNode)), key=lambda n: n.ctime)
    return []


def live_metrics(calculation: orm.CalcJobNode) -> dict | None:
    """Return the last row of ``train.csv`` of a running calculation, read from its remote folder.

    ``{'epoch': ..., 'training loss': ..., ...}``; ``None`` before metatrain has logged its first epoch (or when the
    remote folder cannot be read).
    """
    import tempfile

    from aiida_mad.parsers.metatrain import parse_metrics

    if 'remote_folder' not in calculation.outputs:
        return None
    remote = calculation.outputs.remote_folder
    try:
        for day in sorted(remote.listdir('outputs'), reverse=True):
            for moment in sorted(remote.listdir(f'outputs/{day}'), reverse=True):
                path = f'outputs/{day}/{moment}/train.csv'
                with tempfile.NamedTemporaryFile('r', suffix='.csv') as handle:
                    try:
                        remote.getfile(path, handle.name)
                    except OSError:
                        continue
                    text = pathlib.Path(handle.name).read_text(encoding='utf-8')
                arrays, columns = parse_metrics(text)
                if not len(arrays.get('epoch', [])):
                    return None
                return {columns[name]['header']: values[-1].item() for name, values in arrays.items()}
    except (OSError, ValueError):
        return None
    return None
