"""One or N models on one ragged batch of structures, with the committee statistics (pure: no AiiDA import).

The arrays follow the ragged layout of :mod:`aiida_mad.learning.committee`: per-atom arrays of all structures
concatenated, ``offsets`` (length ``n + 1``) marking where each structure's atoms start. Models come first in every
per-model array: ``energy[m, i]`` is model ``m``'s energy of structure ``i``, ``dos[m, i]`` its DOS of structure
``i`` on the grid ``dos_energies`` (:func:`aiida_mad.dos.energy_grid` with the model's number of points),
``descriptors[m, i]`` (with ``descriptors=True``) model ``m``'s descriptor vector of structure ``i``: the mean over
its atoms of the model's per-atom features (:mod:`aiida_mad.inference.models`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers

from aiida_mad.dos import energy_grid
from aiida_mad.inference.models import Model
from aiida_mad.learning.committee import committee_statistics

__all__ = ('UUID_KEY', 'check_descriptors', 'check_elements', 'check_targets', 'frame_uuids', 'predict')

#: Key of ``atoms.info`` that holds the structure's uuid (the dataset's shards carry it already).
UUID_KEY = 'source_uuid'


def frame_uuids(frames: Sequence[Atoms]) -> list[str]:
    """Return the structure uuid of every frame (``info['source_uuid']``).

    :raises ValueError: naming the first frame without one.
    """
    uuids = []
    for index, frame in enumerate(frames):
        uuid = frame.info.get(UUID_KEY)
        if not uuid:
            raise ValueError(f'structure {index} ({frame.get_chemical_formula()}) has no {UUID_KEY}')
        uuids.append(str(uuid))
    return uuids


def check_elements(frames: Sequence[Atoms], elements: Sequence[str], *, model: str = 'the model') -> None:
    """Refuse a structure with an element that the model was not trained on.

    :raises ValueError: naming the structure (uuid and formula), the element(s) and the model.
    """
    allowed = set(elements)
    for index, frame in enumerate(frames):
        unknown = sorted(set(frame.get_chemical_symbols()) - allowed, key=atomic_numbers.__getitem__)
        if unknown:
            name = frame.info.get(UUID_KEY, f'number {index}')
            raise ValueError(
                f'structure {name} ({frame.get_chemical_formula()}) has {", ".join(unknown)}, which {model} was not '
                f'trained on (it knows {", ".join(elements)})'
            )


def check_targets(models: Sequence[Model]) -> tuple[str, ...]:
    """Return the targets that all ``models`` predict (``('energy',)``, ``('dos',)`` or both).

    :raises ValueError: naming the models if they do not all predict the same targets (a committee of an energy
        model and a DOS model means nothing).
    """
    targets = {model.targets for model in models}
    if len(targets) > 1:
        described = ', '.join(f'{model.path.name}: {"+".join(model.targets)}' for model in models)
        raise ValueError(f'the models do not all predict the same targets ({described})')
    return targets.pop()


def check_descriptors(models: Sequence[Model]) -> list[str]:
    """Return the descriptor kind of every model.

    :raises aiida_mad.inference.models.DescriptorError: naming the first model that gives none, and why.
    """
    return [model.check_descriptors() for model in models]


def predict(
    models: Sequence[Model | str],
    frames: Sequence[Atoms],
    *,
    batch_size: int = 16,
    device: str = 'cpu',
    descriptors: bool = False,
) -> dict[str, np.ndarray]:
    """Return the predictions of every model on ``frames``, and the committee statistics for two models or more.

    :param models: loaded :class:`~aiida_mad.inference.models.Model` objects or model file paths.
    :param frames: the structures; their uuids are read from ``info['source_uuid']``.
    :param batch_size: at most this many structures per forward pass.
    :param device: ``cpu`` or ``cuda`` (for paths; a loaded model keeps its own).
    :param descriptors: also return ``descriptors`` ``(M, n, d)``, float64, every model's per-structure descriptors
        (the mean over atoms of its per-atom features), computed in the same batches.
    :return: ``uuids``, ``natoms``, ``offsets``; for energy models ``energy`` and ``energy_per_atom`` ``(M, n)``,
        ``forces`` ``(M, n_atoms, 3)``, ``stress`` ``(M, n, 3, 3)`` (NaN where not periodic) and, for ``M >= 2``,
        ``energy_per_atom_mean``, ``energy_per_atom_std``, ``forces_mean``, ``stress_mean`` (Voigt ``(n, 6)``),
        ``force_std_max`` and ``stress_std_max`` (:func:`aiida_mad.learning.committee.committee_statistics`); for
        DOS models ``dos`` ``(M, n, G)`` (states/eV), ``dos_energies`` ``(G,)`` (eV, relative to the Fermi energy)
        and, for ``M >= 2``, ``dos_mean`` and ``dos_std`` ``(n, G)`` (population standard deviation).
    :raises ValueError: for no model, no structure, a structure without uuid, an element a model does not know,
        models that predict different targets (or DOS on grids of different lengths), with ``descriptors`` a model
        that gives none (:class:`~aiida_mad.inference.models.DescriptorError`, before anything runs) or models whose
        descriptors differ in dimension.
    """
    if not models:
        raise ValueError('no model to predict with')
    if not frames:
        raise ValueError('no structure to predict')
    uuids = frame_uuids(frames)
    loaded = [model if isinstance(model, Model) else Model(model, device=device) for model in models]
    for model in loaded:
        check_elements(frames, model.elements, model=f'model {model.path.name}')
    targets = check_targets(loaded)
    if descriptors:
        check_descriptors(loaded)
    natoms = np.array([len(frame) for frame in frames], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(natoms)]).astype(np.int64)
    predictions = [model.predict(frames, batch_size, descriptors=descriptors) for model in loaded]
    arrays = {'uuids': np.array(uuids, dtype='U36'), 'natoms': natoms, 'offsets': offsets}
    if descriptors:
        dimensions = {
            model.path.name: prediction.descriptors.shape[1]
            for model, prediction in zip(loaded, predictions, strict=True)
        }
        if len(set(dimensions.values())) > 1:
            raise ValueError(f'the models give descriptors of different dimensions: {dimensions}')
        arrays['descriptors'] = np.stack([prediction.descriptors for prediction in predictions]).astype(np.float64)
    if 'dos' in targets:
        lengths = {
            prediction.dos.shape[1]: model.path.name for model, prediction in zip(loaded, predictions, strict=True)
        }
        if len(lengths) > 1:
            raise ValueError(f'the models predict DOS on grids of different lengths: {lengths}')
        dos = np.stack([prediction.dos for prediction in predictions])
        arrays.update({'dos': dos, 'dos_energies': energy_grid(points=dos.shape[2])})
        if len(loaded) >= 2:
            arrays.update({'dos_mean': dos.mean(axis=0), 'dos_std': dos.std(axis=0)})
    if 'energy' not in targets:
        return arrays
    energy = np.stack([prediction.energy for prediction in predictions])
    arrays.update(
        {
            'energy': energy,
            'energy_per_atom': energy / natoms,
            'forces': np.stack([prediction.forces for prediction in predictions]),
            'stress': np.stack([prediction.stress for prediction in predictions]),
        }
    )
    if len(loaded) >= 2:
        statistics = committee_statistics(arrays['energy_per_atom'], arrays['forces'], offsets, arrays['stress'])
        arrays.update(
            {
                'energy_per_atom_mean': statistics.energy,
                'energy_per_atom_std': statistics.sigma_energy,
                'forces_mean': statistics.forces,
                'stress_mean': statistics.stress,
                'force_std_max': statistics.sigma_force,
                'stress_std_max': statistics.sigma_stress,
            }
        )
    return arrays
