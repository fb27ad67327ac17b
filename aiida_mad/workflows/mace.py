"""``MaceTrainWorkChain`` (``mad.train.mace``): a MACE training that survives walltime limits and node failures.

The MACE counterpart of :class:`aiida_mad.workflows.train.TrainWorkChain` (same pattern, same exit codes of the
calculation): when a ``mad.mace`` calculation stops early it restarts from the newest checkpoint that calculation
left (``restart_latest``), so the epoch count goes on; without a checkpoint it stops with an exit code and never
starts from scratch silently. Builders come from ``protocols/mace.yaml`` (``mace-mp-large``, ``mace-small``,
``tiny``) through :meth:`MaceTrainWorkChain.get_builder_from_protocol`, which checks the calculation's guards
before anything is stored.
"""

from __future__ import annotations

from aiida import orm
from aiida.engine import BaseRestartWorkChain

from aiida_mad.calculations.mace import MaceTrainCalculation
from aiida_mad.data.dataset import DatasetData
from aiida_mad.workflows.training import TrainingRestartMixin, as_checkpoint

__all__ = ('MaceTrainWorkChain', 'mace_protocol_inputs')


def mace_protocol_inputs(protocol: str | None = None, overrides: dict | None = None) -> dict:
    """Return the inputs of a protocol of ``protocols/mace.yaml`` merged with ``overrides``.

    :raises ValueError: naming an unknown protocol or override key.
    """
    return MaceTrainWorkChain.get_protocol_inputs(protocol, overrides)


class MaceTrainWorkChain(TrainingRestartMixin, BaseRestartWorkChain):
    """Train a MACE model on a ``mad.dataset``, restarting from checkpoints when a run stops early.

    Out of memory stops it (``ERROR_TRAINING_FAILED``), like the other failures that would repeat.
    """

    _process_class = MaceTrainCalculation
    _namespace = 'mace'
    _protocol_file = 'mace.yaml'

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
        run_options = cls.run_options(mace.get('metadata', {}).get('options', {}), options)
        builder = cls.training_builder(inputs, code, dataset, mace['parameters'], run_options, name)
        if restart is not None:
            builder.mace.restart = as_checkpoint(restart)
        builder.metadata.label = builder.mace.metadata.label = f'train mace on {dataset.base.attributes.get("name")}'
        cls.check_builder(builder)
        return builder
