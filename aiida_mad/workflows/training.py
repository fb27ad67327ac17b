"""What the training work chains share: ``TrainingRestartMixin``, the restart-from-checkpoint pattern.

:class:`aiida_mad.workflows.train.TrainWorkChain` (``mad.train``, metatrain) and
:class:`aiida_mad.workflows.mace.MaceTrainWorkChain` (``mad.train.mace``, MACE) are ``BaseRestartWorkChain`` s around a
training CalcJob whose exit codes have the same numbers and meanings (:mod:`aiida_mad.calculations.training`). The
mixin holds what they do alike: the protocol loading (an unknown protocol or top-level override key is refused by
name), the inputs validator (the calculation's own guards on the exposed namespace), the exit codes of the work chain,
the first builder steps, the results step (the model goes to its group ``mad/models/<name>``) and the handlers: a
calculation that stopped early (walltime, node failure, killed) restarts from the checkpoint it left, never from
scratch; without one, and for the failures that would repeat, the work chain stops with an exit code.

A work chain sets ``_process_class`` (the CalcJob), ``_namespace`` (where its inputs are exposed) and
``_protocol_file`` (in ``workflows/protocols``). The mixin is no process itself, so it needs no entry point.
"""

from __future__ import annotations

from aiida import orm
from aiida.common import AttributeDict
from aiida.engine import ExitCode, ProcessHandlerReport, process_handler, while_
from aiida_quantumespresso.workflows.protocols.utils import recursive_merge

from aiida_mad.calculations.training import STOPPED_EARLY_STATUSES, UNRECOVERABLE_STATUSES
from aiida_mad.constants import model_group_label
from aiida_mad.data.model import ModelData, checkpoint_of
from aiida_mad.workflows.protocol import StrictProtocolMixin

__all__ = ('TrainingRestartMixin', 'as_checkpoint')


def as_checkpoint(node) -> orm.SinglefileData:
    """Return the checkpoint of a ``mad.model`` node, or the node itself if it is a checkpoint already.

    :raises ValueError: for a model without a checkpoint.
    :raises TypeError: for a node that is neither.
    """
    if isinstance(node, ModelData):
        return checkpoint_of(node)
    if isinstance(node, orm.SinglefileData):
        return node
    raise TypeError(f'expected a mad.model or a checkpoint SinglefileData, got {type(node).__name__}')


class TrainingRestartMixin(StrictProtocolMixin):
    """Protocols, results and restart handlers of a ``BaseRestartWorkChain`` around a training CalcJob.

    Put it before ``BaseRestartWorkChain`` in the bases; set ``_process_class``, ``_namespace`` and ``_protocol_file``.
    """

    _namespace: str

    @classmethod
    def define(cls, spec):
        """Define the process specification: the exposed calculation, the outline and the exit codes."""
        super().define(spec)
        spec.expose_inputs(cls._process_class, namespace=cls._namespace)
        spec.input('name', valid_type=orm.Str, required=False, help='Model name: the model goes to mad/models/<name>.')
        spec.inputs.validator = cls.validate_inputs
        spec.outline(cls.setup, while_(cls.should_run_process)(cls.run_process, cls.inspect_process), cls.results)
        spec.expose_outputs(cls._process_class)
        spec.exit_code(
            310,
            'ERROR_NO_CHECKPOINT',
            message='training stopped early and left no checkpoint: not restarting from scratch ({message})',
        )
        spec.exit_code(320, 'ERROR_TRAINING_FAILED', message='training failed: {message}')

    @classmethod
    def validate_inputs(cls, value, ctx):
        """Run the calculation's guards on the exposed namespace before anything is stored."""
        return cls._process_class.spec().inputs.validator(value.get(cls._namespace, {}), ctx)

    # ------------------------------------------------------------------------------------------------------------
    # Protocols

    @staticmethod
    def run_options(protocol_options: dict, options: dict | None) -> dict:
        """Return the calculation's ``metadata.options``: one machine and rank, the protocol's, then ``options``."""
        run_options = recursive_merge(
            {'resources': {'num_machines': 1, 'num_mpiprocs_per_machine': 1}}, dict(protocol_options)
        )
        return recursive_merge(run_options, options) if options else run_options

    @classmethod
    def training_builder(
        cls, inputs: dict, code: orm.AbstractCode, dataset, parameters: dict, run_options: dict, name: str | None
    ):
        """Return a builder with the calculation's code, dataset, parameters and options and the protocol's limits."""
        builder = cls.get_builder()
        namespace = builder[cls._namespace]
        namespace.code = code
        namespace.dataset = dataset
        namespace.parameters = orm.Dict(parameters)
        namespace.metadata.options = run_options
        builder.max_iterations = orm.Int(inputs['max_iterations'])
        builder.clean_workdir = orm.Bool(inputs['clean_workdir'])
        if name:
            builder.name = orm.Str(name)
        return builder

    @classmethod
    def check_builder(cls, builder) -> None:
        """Run the calculation's guards on the builder's namespace.

        :raises ValueError: with the guard's message.
        """
        problem = cls._process_class.spec().inputs.validator(builder[cls._namespace]._inputs(prune=True), None)
        if problem:
            raise ValueError(problem)

    # ------------------------------------------------------------------------------------------------------------
    # Steps

    def setup(self):
        """Prepare the inputs of the first calculation."""
        super().setup()
        self.ctx.inputs = AttributeDict(self.exposed_inputs(self._process_class, self._namespace))

    def results(self):
        """Attach the outputs of the last calculation and put the model in its group."""
        result = super().results()
        if result is not None and result.status:
            return result
        node = self.ctx.children[self.ctx.iteration - 1]
        if 'name' in self.inputs and 'model' in node.outputs:
            group, _ = orm.Group.collection.get_or_create(model_group_label(self.inputs.name.value))
            group.add_nodes([node.outputs.model])
        return None

    def report_error_handled(self, calculation, action: str) -> None:
        """Report an error that a handler took care of, in one uniform line."""
        self.report(f'{calculation.process_label}<{calculation.pk}> failed with exit status {calculation.exit_status}')
        self.report(f'action taken: {action}')

    def _restart_from(self, calculation) -> bool:
        """Make the next calculation continue from the checkpoint of ``calculation``; return whether it left one."""
        if 'checkpoint' not in calculation.outputs:
            return False
        self.ctx.inputs.restart = calculation.outputs.checkpoint
        return True

    # ------------------------------------------------------------------------------------------------------------
    # Handlers

    @process_handler(priority=600, exit_codes=[ExitCode(status) for status in STOPPED_EARLY_STATUSES])
    def handle_stopped_early(self, calculation):
        """Restart from the newest checkpoint the calculation left behind (walltime, node failure, killed)."""
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

    @process_handler(priority=100, exit_codes=[ExitCode(status) for status in UNRECOVERABLE_STATUSES])
    def handle_unrecoverable(self, calculation):
        """Stop: running the same training again would fail the same way (or start from scratch unasked).

        Out of memory is among these codes; a work chain that can do better handles it first with a handler of
        higher priority (``TrainWorkChain.handle_out_of_memory`` halves the batch size).
        """
        self.report_error_handled(calculation, 'unrecoverable: stopping')
        return ProcessHandlerReport(
            True, self.exit_codes.ERROR_TRAINING_FAILED.format(message=calculation.exit_message)
        )
