"""``ModelData`` (``mad.model``): a trained, exported metatrain model and what it was trained on.

The node holds the exported model file (``model.pt``, a TorchScript ``metatomic`` model that ASE, LAMMPS and
``mtt eval`` load as is) and attributes that a ``QueryBuilder`` filters on: the architecture, the targets with their
units, the parameter counts, the metatrain version, the training dataset (uuid, name, content hash, level-of-theory
fingerprint), the energy reference (baseline-subtracted or total, with the baseline's identity), the epochs and the
final train/validation/test errors. The calculation that made it links it to the dataset and so to every DFT
result it learned from.

Checkpoints (``model.ckpt``, needed to restart or fine-tune) stay separate ``SinglefileData`` nodes, output
``checkpoint`` of the same calculation, with a few attributes (:data:`CHECKPOINT_ATTRIBUTES`) that the consistency
guards read without loading the file: :func:`checkpoint_of` finds a model's checkpoint.
"""

from __future__ import annotations

from aiida import orm

__all__ = ('CHECKPOINT_ATTRIBUTES', 'ModelData', 'checkpoint_of')

#: Attributes the parser sets on a checkpoint ``SinglefileData`` (read by the guards before any submission).
CHECKPOINT_ATTRIBUTES = ('architecture', 'epoch', 'dataset_uuid', 'fingerprint', 'energy_reference')


class ModelData(orm.SinglefileData):
    """An exported metatrain model (``model.pt``) with its training record in the attributes."""

    @property
    def architecture(self) -> str:
        """Return the metatrain architecture name (``pet``, ``llpr``, ...)."""
        return self.base.attributes.get('architecture')

    @property
    def targets(self) -> dict:
        """Return ``{target name: {quantity, unit, per_atom, gradients, ...}}``."""
        return self.base.attributes.get('targets', {})

    @property
    def n_parameters(self) -> int | None:
        """Return the total number of parameters of the model."""
        return self.base.attributes.get('n_parameters')

    @property
    def n_trainable_parameters(self) -> int | None:
        """Return the number of parameters that were trained (fewer than the total for LoRA)."""
        return self.base.attributes.get('n_trainable_parameters')

    @property
    def fingerprint(self) -> str | None:
        """Return the level-of-theory fingerprint of the training data."""
        return self.base.attributes.get('fingerprint')

    @property
    def dataset_uuid(self) -> str | None:
        """Return the uuid of the ``mad.dataset`` the model was trained on."""
        return self.base.attributes.get('dataset_uuid')

    @property
    def energy_reference(self) -> str | None:
        """Return ``baseline_subtracted`` or ``total`` (``None`` for a model without an energy target)."""
        return self.base.attributes.get('energy_reference')

    @property
    def errors(self) -> dict:
        """Return the final errors ``{split: {metric: value}}`` from metatrain's evaluation after training."""
        return self.base.attributes.get('errors', {})

    @property
    def epochs(self) -> int | None:
        """Return the number of epochs trained in total (restarts included)."""
        return self.base.attributes.get('epochs')

    def summary(self) -> dict:
        """Return every attribute as a plain dictionary (for ``aiida-mad model show``)."""
        return dict(self.base.attributes.all)


def checkpoint_of(model: ModelData) -> orm.SinglefileData:
    """Return the checkpoint stored next to ``model`` (output ``checkpoint`` of the same calculation).

    :raises ValueError: if the model has no creator with a ``checkpoint`` output.
    """
    creator = model.creator
    if creator is None or 'checkpoint' not in creator.outputs:
        raise ValueError(f'model {model.pk} has no checkpoint: it was not made by a training calculation')
    return creator.outputs.checkpoint
