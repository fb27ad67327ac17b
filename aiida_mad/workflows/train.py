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

import importlib.resources
import pathlib

from aiida import orm
from aiida.common import AttributeDict
from aiida.engine import BaseRestartWorkChain, ProcessHandlerReport, process_handler, while_
from aiida_quantumespresso.workflows.protocols.utils import ProtocolMixin, recursive_merge

from aiida_mad.calculations.metatrain import MetatrainCalculation
from aiida_mad.calculations.metatrain import validate_inputs as validate_calculation_inputs
from aiida_mad.constants import model_group_label
from aiida_mad.data.dataset import DatasetData
from aiida_mad.data.model import ModelData, checkpoint_of

__all__ = ('TrainWorkChain',)

_RESTART_CODES = (
    MetatrainCalculation.exit_codes.ERROR_OUT_OF_WALLTIME,
    MetatrainCalculation.exit_codes.ERROR_TRAINING_INTERRUPTED,
    MetatrainCalculation.exit_codes.ERROR_SCHEDULER_OUT_OF_WALLTIME,
    MetatrainCalculation.exit_codes.ERROR_SCHEDULER_NODE_FAILURE,
)


def _as_checkpoint(node) -> orm.SinglefileData:
    """Return the checkpoint of a ``mad.model`` node, or the node itself if it is a checkpoint already."""
    if isinstance(node, ModelData):
        return checkpoint_of(node)
    if isinstance(node, orm.SinglefileData):
        return node
    raise TypeError(f'expected a mad.model or a checkpoint SinglefileData, got {type(node).__name__}')


class TrainWorkChain(ProtocolMixin, BaseRestartWorkChain):
    """Train a metatrain model on a ``mad.dataset``, restarting from checkpoints when a run stops early."""

    _process_class = MetatrainCalculation

    @classmethod
    def define(cls, spec):
        """Define the process specification."""
        super().define(spec)
        spec.expose_inputs(MetatrainCalculation, namespace='metatrain')
        spec.input('name', valid_type=orm.Str, required=False, help='Model name: the model goes to mad/models/<name>.')
        spec.inputs.validator = cls.validate_inputs
        spec.outline(
            cls.setup,
            while_(cls.should_run_process)(cls.run_process, cls.inspect_process),
            cls.results,
        )
        spec.expose_outputs(MetatrainCalculation)
        spec.exit_code(
            310,
            'ERROR_NO_CHECKPOINT',
            message='training stopped early and left no checkpoint: not restarting from scratch ({message})',
        )
        spec.exit_code(320, 'ERROR_TRAINING_FAILED', message='training failed: {message}')

    @staticmethod
    def validate_inputs(value, ctx):
        """Run the calculation's guards on the ``metatrain`` namespace before anything is stored."""
        return validate_calculation_inputs(value.get('metatrain', {}), ctx)

    # ------------------------------------------------------------------------------------------------------------
    # Protocols

    @classmethod
    def get_protocol_filepath(cls):
        """Return the path of the protocol file of this work chain."""
        from aiida_mad.workflows import protocols

        return importlib.resources.files(protocols) / 'metatrain.yaml'

    @classmethod
    def get_protocol_inputs(cls, protocol: str | None = None, overrides: dict | None = None) -> dict:
        """Return the protocol's inputs merged with ``overrides``; an unknown protocol or top-level key is refused."""
        data = cls._load_protocol_file()
        protocol = protocol or data['default_protocol']
        if protocol not in data['protocols']:
            available = ', '.join(sorted(data['protocols']))
            raise ValueError(f'unknown protocol `{protocol}`: available protocols are {available}')
        inputs = recursive_merge(data['default_inputs'], data['protocols'][protocol])
        inputs.pop('description')
        if overrides:
            unknown = sorted(set(overrides) - set(inputs))
            if unknown:
                raise ValueError(f'unknown override keys {unknown}: allowed are {sorted(inputs)}')
            inputs = recursive_merge(inputs, overrides)
        return inputs

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
        run_options = recursive_merge(
            {'resources': {'num_machines': 1, 'num_mpiprocs_per_machine': 1}},
            dict(metatrain.get('metadata', {}).get('options', {})),
        )
        if gpus:
            check_launcher(code.computer.scheduler_type, code.computer.get_mpirun_command())
            run_options = recursive_merge(run_options, gpu_options(gpus))
            parameters = gpu_parameters(parameters)
        if options:
            run_options = recursive_merge(run_options, options)
        settings = dict(inputs['settings'])
        if total_energy:
            settings['energy'] = 'total'

        builder = cls.get_builder()
        builder.metatrain.code = code
        builder.metatrain.dataset = dataset
        builder.metatrain.parameters = orm.Dict(parameters)
        builder.metatrain.settings = orm.Dict(settings)
        builder.metatrain.metadata.options = run_options
        if base_model is not None:
            builder.metatrain.base_model = _as_checkpoint(base_model)
        if restart is not None:
            builder.metatrain.restart = _as_checkpoint(restart)
        if progress_interval:
            builder.metatrain.monitors = {
                'progress': orm.Dict(
                    {'entry_point': 'mad.metatrain.progress', 'minimum_poll_interval': int(progress_interval)}
                )
            }
        if allow_fingerprint_mismatch:
            builder.metatrain.allow_fingerprint_mismatch = orm.Bool(True)
        builder.max_iterations = orm.Int(inputs['max_iterations'])
        builder.clean_workdir = orm.Bool(inputs['clean_workdir'])
        if name:
            builder.name = orm.Str(name)
        label = f'train {parameters["architecture"]["name"]} on {dataset.base.attributes.get("name")}'
        builder.metadata.label = label
        builder.metatrain.metadata.label = label
        problem = validate_calculation_inputs(builder.metatrain._inputs(prune=True), None)
        if problem:
            raise ValueError(problem)
        return builder

    # ------------------------------------------------------------------------------------------------------------
    # Steps

    def setup(self):
        """Prepare the inputs of the first calculation."""
        super().setup()
        self.ctx.inputs = AttributeDict(self.exposed_inputs(MetatrainCalculation, 'metatrain'))

    def results(self):
        """Attach the outputs of the last calculation and put the model in its group."""
        result = super().results()
        if result is not None and result.status:
            return result
        node = self.ctx.children[self.ctx.iteration - 1]
        if 'name' in self.inputs and 'model' in node.outputs:
            group, _ = orm.Group.collection.get_or_create(model_group_label(self.inputs.name.value))
            group.add_nodes([node.outputs.model])
        if 'model' in node.outputs:
            model = node.outputs.model
            self.report(
                f'model {model.pk}: {model.architecture}, {model.epochs} epochs, '
                f'{model.n_parameters} parameters, validation errors {model.errors.get("val", {})}'
            )
        return None

    def report_error_handled(self, calculation, action: str) -> None:
        """Report an error that a handler took care of, in one uniform line."""
        self.report(f'{calculation.process_label}<{calculation.pk}> failed with exit status {calculation.exit_status}')
        self.report(f'action taken: {action}')

    def _restart_from(self, calculation) -> bool:
        if 'checkpoint' not in calculation.outputs:
            return False
        checkpoint = calculation.outputs.checkpoint
        self.ctx.inputs.restart = checkpoint
        return True

    # ------------------------------------------------------------------------------------------------------------
    # Handlers

    @process_handler(priority=600, exit_codes=list(_RESTART_CODES))
    def handle_stopped_early(self, calculation):
        """Restart from the checkpoint the calculation left behind (walltime, node failure, killed)."""
        if not self._restart_from(calculation):
            self.report_error_handled(calculation, 'no checkpoint left: stopping (never restarting from scratch)')
            return ProcessHandlerReport(
                True, self.exit_codes.ERROR_NO_CHECKPOINT.format(message=calculation.exit_message or '')
            )
        checkpoint = calculation.outputs.checkpoint
        epoch = checkpoint.base.attributes.get('epoch')
        self.report_error_handled(
            calculation, f'restarting from checkpoint {checkpoint.filename}<{checkpoint.pk}> (epoch {epoch})'
        )
        return ProcessHandlerReport(True)

    @process_handler(
        priority=100,
        exit_codes=[
            MetatrainCalculation.exit_codes[label]
            for label in (
                'ERROR_MISSING_OUTPUT_FILES',
                'ERROR_INVALID_OPTIONS',
                'ERROR_READING_METRICS',
                'ERROR_ARCHITECTURE_IMPORT',
                'ERROR_NAN_LOSS',
                'ERROR_TRAINING_FAILED',
            )
        ],
    )
    def handle_unrecoverable(self, calculation):
        """Stop: running the same training again would fail the same way (or start from scratch unasked)."""
        self.report_error_handled(calculation, 'unrecoverable: stopping')
        return ProcessHandlerReport(
            True, self.exit_codes.ERROR_TRAINING_FAILED.format(message=calculation.exit_message)
        )

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
