"""``MaceTrainWorkChain`` (``mad.train.mace``): a MACE training that survives walltime limits and node failures.

The MACE counterpart of :class:`aiida_mad.workflows.train.TrainWorkChain` (same pattern, same exit codes of the
calculation): when a ``mad.mace`` calculation stops early it restarts from the newest checkpoint that calculation
left (``restart_latest``), so the epoch count goes on; without a checkpoint it stops with an exit code and never
starts from scratch silently. Builders come from ``protocols/mace.yaml`` (``mace-mp-large``, ``mace-small``,
``tiny``) through :meth:`MaceTrainWorkChain.get_builder_from_protocol`, which checks the calculation's guards
before anything is stored.
"""

from __future__ import annotations

import importlib.resources

from aiida import orm
from aiida.common import AttributeDict
from aiida.engine import BaseRestartWorkChain, ProcessHandlerReport, process_handler, while_
from aiida_quantumespresso.workflows.protocols.utils import ProtocolMixin, recursive_merge

from aiida_mad.calculations.mace import MaceTrainCalculation
from aiida_mad.calculations.mace import validate_inputs as validate_calculation_inputs
from aiida_mad.constants import model_group_label
from aiida_mad.data.dataset import DatasetData

__all__ = ('MaceTrainWorkChain', 'mace_protocol_inputs')

_CODES = MaceTrainCalculation.exit_codes
_RESTART_CODES = (
    _CODES.ERROR_OUT_OF_WALLTIME,
    _CODES.ERROR_TRAINING_INTERRUPTED,
    _CODES.ERROR_SCHEDULER_OUT_OF_WALLTIME,
    _CODES.ERROR_SCHEDULER_NODE_FAILURE,
)


def mace_protocol_inputs(protocol: str | None = None, overrides: dict | None = None) -> dict:
    """Return the inputs of a protocol of ``protocols/mace.yaml`` merged with ``overrides``.

    :raises ValueError: naming an unknown protocol or override key.
    """
    return MaceTrainWorkChain.get_protocol_inputs(protocol, overrides)


class MaceTrainWorkChain(ProtocolMixin, BaseRestartWorkChain):
    """Train a MACE model on a ``mad.dataset``, restarting from checkpoints when a run stops early."""

    _process_class = MaceTrainCalculation

    @classmethod
    def define(cls, spec):
        """Define the process specification."""
        super().define(spec)
        spec.expose_inputs(MaceTrainCalculation, namespace='mace')
        spec.input('name', valid_type=orm.Str, required=False, help='Model name: the model goes to mad/models/<name>.')
        spec.inputs.validator = cls.validate_inputs
        spec.outline(cls.setup, while_(cls.should_run_process)(cls.run_process, cls.inspect_process), cls.results)
        spec.expose_outputs(MaceTrainCalculation)
        spec.exit_code(
            310,
            'ERROR_NO_CHECKPOINT',
            message='training stopped early and left no checkpoint: not restarting from scratch ({message})',
        )
        spec.exit_code(320, 'ERROR_TRAINING_FAILED', message='training failed: {message}')

    @staticmethod
    def validate_inputs(value, ctx):
        """Run the calculation's guards on the ``mace`` namespace before anything is stored."""
        return validate_calculation_inputs(value.get('mace', {}), ctx)

    @classmethod
    def get_protocol_filepath(cls):
        """Return the path of the protocol file of this work chain."""
        from aiida_mad.workflows import protocols

        return importlib.resources.files(protocols) / 'mace.yaml'

    @classmethod
    def get_protocol_inputs(cls, protocol: str | None = None, overrides: dict | None = None) -> dict:
        """Return the protocol's inputs merged with ``overrides``; an unknown protocol or top-level key is refused."""
        data = cls._load_protocol_file()
        protocol = protocol or data['default_protocol']
        if protocol not in data['protocols']:
            raise ValueError(f'unknown protocol `{protocol}`: available protocols are {", ".join(data["protocols"])}')
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
        restart=None,
        options: dict | None = None,
        name: str | None = None,
    ):
        """Return a builder for training MACE on ``dataset`` with ``protocol``, checked before anything is stored.

        :param code: the ``mace_run_train`` code.
        :param dataset: the ``mad.dataset``.
        :param protocol: ``mace-mp-large`` (default), ``mace-small`` or ``tiny``.
        :param overrides: nested inputs merged over the protocol's (``mace.parameters...``).
        :param restart: a ``mad.model`` of MACE (its checkpoint) or a MACE checkpoint whose training to continue.
        :param options: ``metadata.options`` merged over the protocol's.
        :param name: the model's name (group ``mad/models/<name>``).
        :raises ValueError: naming the problem.
        """
        inputs = cls.get_protocol_inputs(protocol, overrides)
        mace = inputs['mace']
        run_options = recursive_merge(
            {'resources': {'num_machines': 1, 'num_mpiprocs_per_machine': 1}},
            dict(mace.get('metadata', {}).get('options', {})),
        )
        if options:
            run_options = recursive_merge(run_options, options)
        builder = cls.get_builder()
        builder.mace.code = code
        builder.mace.dataset = dataset
        builder.mace.parameters = orm.Dict(mace['parameters'])
        builder.mace.metadata.options = run_options
        if restart is not None:
            builder.mace.restart = _checkpoint(restart)
        builder.max_iterations = orm.Int(inputs['max_iterations'])
        builder.clean_workdir = orm.Bool(inputs['clean_workdir'])
        if name:
            builder.name = orm.Str(name)
        builder.metadata.label = builder.mace.metadata.label = f'train mace on {dataset.base.attributes.get("name")}'
        problem = validate_calculation_inputs(builder.mace._inputs(prune=True), None)
        if problem:
            raise ValueError(problem)
        return builder

    def setup(self):
        """Prepare the inputs of the first calculation."""
        super().setup()
        self.ctx.inputs = AttributeDict(self.exposed_inputs(MaceTrainCalculation, 'mace'))

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

    @process_handler(priority=600, exit_codes=list(_RESTART_CODES))
    def handle_stopped_early(self, calculation):
        """Restart from the newest checkpoint the calculation left behind (walltime, node failure, killed)."""
        if 'checkpoint' not in calculation.outputs:
            self.report_error_handled(calculation, 'no checkpoint left: stopping (never restarting from scratch)')
            return ProcessHandlerReport(
                True, self.exit_codes.ERROR_NO_CHECKPOINT.format(message=calculation.exit_message or '')
            )
        checkpoint = calculation.outputs.checkpoint
        self.ctx.inputs.restart = checkpoint
        self.report_error_handled(
            calculation,
            f'restarting from checkpoint {checkpoint.filename}<{checkpoint.pk}> '
            f'(epoch {checkpoint.base.attributes.get("epoch")})',
        )
        return ProcessHandlerReport(True)

    @process_handler(
        priority=100,
        exit_codes=[
            _CODES[label]
            for label in (
                'ERROR_MISSING_OUTPUT_FILES',
                'ERROR_INVALID_OPTIONS',
                'ERROR_READING_METRICS',
                'ERROR_ARCHITECTURE_IMPORT',
                'ERROR_NAN_LOSS',
                'ERROR_TRAINING_FAILED',
                'ERROR_OUT_OF_MEMORY',
            )
        ],
    )
    def handle_unrecoverable(self, calculation):
        """Stop: running the same training again would fail the same way."""
        self.report_error_handled(calculation, 'unrecoverable: stopping')
        return ProcessHandlerReport(
            True, self.exit_codes.ERROR_TRAINING_FAILED.format(message=calculation.exit_message)
        )


def _checkpoint(node) -> orm.SinglefileData:
    """Return the checkpoint of a MACE ``mad.model`` (output ``checkpoint`` of its calculation) or the node itself."""
    from aiida_mad.data.model import ModelData

    if isinstance(node, ModelData):
        creator = node.creator
        if creator is None or 'checkpoint' not in creator.outputs:
            raise ValueError(f'model {node.pk} has no checkpoint to restart from')
        return creator.outputs.checkpoint
    return node
