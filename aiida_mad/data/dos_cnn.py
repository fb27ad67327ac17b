"""``DosCnnModelData`` (``mad.dos_cnn_model``): a bandgap or Fermi-level CNN trained on a DOS model's predictions.

The node holds the saved network (``gap.pt`` or ``fermi_level.pt``, written by
:func:`aiida_mad.learning.dos_cnn.save_cnn`) and, in its attributes, what a ``QueryBuilder`` filters on: the target
(``gap`` or ``fermi_level``, in eV), the energy grid of its input, the DOS model and the dataset it was trained on
(uuids, the dataset's name and fingerprint), the epochs, the best epoch and the errors per split. The
``mad.dos_cnn`` calculation that made it has the DOS predictions and the dataset as inputs, so the graph links the
CNN to both. It is not a ``mad.model``: it predicts from a DOS, not from a structure.
"""

from __future__ import annotations

from aiida import orm

__all__ = ('DosCnnModelData',)


class DosCnnModelData(orm.SinglefileData):
    """A saved bandgap or Fermi-level CNN with its training record in the attributes."""

    @property
    def target(self) -> str:
        """Return ``gap`` or ``fermi_level``."""
        return self.base.attributes.get('target')

    @property
    def errors(self) -> dict:
        """Return ``{split: {n, mae, rmse}}`` in eV."""
        return self.base.attributes.get('errors', {})

    @property
    def dos_model_uuid(self) -> str | None:
        """Return the uuid of the DOS model whose predictions the CNN was trained on (None if not recorded)."""
        return self.base.attributes.get('dos_model_uuid')

    @property
    def dataset_uuid(self) -> str | None:
        """Return the uuid of the ``mad.dataset`` whose DFT values were the targets."""
        return self.base.attributes.get('dataset_uuid')

    def summary(self) -> dict:
        """Return every attribute as a plain dictionary."""
        return dict(self.base.attributes.all)

    def predict(self, dos, natoms, *, device: str = 'cpu'):
        """Return the CNN's predictions (eV; gaps through a ReLU) for DOS per cell ``(n, points)`` on its grid."""
        from aiida_mad.learning.dos_cnn import cnn_inputs, load_cnn, predict_cnn

        with self.as_path() as path:
            model, record = load_cnn(path, device=device)
        return predict_cnn(model, cnn_inputs(dos, natoms), target=record['target'])
