"""Rotations for the rotational symmetry error of unconstrained models (pure numpy and ASE, no AiiDA).

PET is not rotationally invariant by construction: it learns the symmetry from rotated training data. PET-MAD
reports how far it is from invariant as the standard deviation of a structure's predicted energy over the rotations
of a Lebedev-Laikov grid of order 9 (38 points; PET-MAD section II, Fig. 2, right panel), and PET-MAD-DOS the same
over the 38 rotated copies for the DOS (its eq. 10).

A point ``n`` of the grid stands for the rotation that takes the z axis onto ``n`` along the shortest arc
(:func:`align_z`); ``in_plane`` rotations about z, ``2 pi k / in_plane`` for ``k = 0 ... in_plane - 1``, may be
applied first, as the ``pet-mad`` package's rotational averaging does (it uses one, the identity, by default; so
does PET-MAD's symmetry error). The grid of order 9 holds the north pole, so the structure as given is one of the 38
copies.

The grids are written out from their generators (Lebedev's octahedral orbits ``a1`` (6 points), ``a2`` (12), ``a3``
(8) and ``c1`` (24: the permutations and signs of ``(p, q, 0)``)) with their weights;
:func:`lebedev_grid` returns points and weights, and the tests check that each grid integrates every polynomial
up to its order exactly on the sphere.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
from ase import Atoms

__all__ = (
    'LEBEDEV_ORDERS',
    'PET_MAD_ORDER',
    'align_z',
    'lebedev_grid',
    'rotated_copies',
    'rotation_arrays',
    'rotation_matrices',
)

#: The Lebedev-Laikov grid of PET-MAD's rotational discrepancy (38 points).
PET_MAD_ORDER = 9

# Generators and weights of the grids: ``{order: ((orbit, weight, p), ...)}``; ``p`` only for ``c1``.
_GRIDS = {
    3: (('a1', 1 / 6, None),),
    5: (('a1', 1 / 15, None), ('a3', 3 / 40, None)),
    7: (('a1', 1 / 21, None), ('a2', 4 / 105, None), ('a3', 9 / 280, None)),
    9: (('a1', 1 / 105, None), ('a3', 9 / 280, None), ('c1', 1 / 35, 0.4597008433809831)),
}

#: The orders (algebraic degrees) of the grids implemented, with their number of points: 6, 14, 26 and 38.
LEBEDEV_ORDERS = tuple(sorted(_GRIDS))


def _orbit(kind: str, p: float | None) -> np.ndarray:
    """Return the points of one octahedral orbit on the unit sphere."""
    if kind == 'a1':
        base = [(1.0, 0.0, 0.0)]
    elif kind == 'a2':
        base = [(0.0, 1 / np.sqrt(2), 1 / np.sqrt(2))]
    elif kind == 'a3':
        base = [(1 / np.sqrt(3),) * 3]
    else:  # c1
        base = [(p, np.sqrt(1 - p * p), 0.0)]
    points = set()
    for vector in base:
        for permutation in itertools.permutations(vector):
            for signs in itertools.product((1, -1), repeat=3):
                points.add(tuple(round(sign * value, 15) + 0.0 for sign, value in zip(signs, permutation, strict=True)))
    return np.array(sorted(points, reverse=True))


def lebedev_grid(order: int = PET_MAD_ORDER) -> tuple[np.ndarray, np.ndarray]:
    """Return the points ``(N, 3)`` (unit vectors) and weights ``(N,)`` (summing to one) of a Lebedev-Laikov grid.

    :param order: the algebraic degree the grid integrates exactly: one of :data:`LEBEDEV_ORDERS`.
    :raises ValueError: naming the orders available.
    """
    if order not in _GRIDS:
        raise ValueError(f'no Lebedev-Laikov grid of order {order!r}: the orders available are {list(LEBEDEV_ORDERS)}')
    points, weights = [], []
    for kind, weight, p in _GRIDS[order]:
        orbit = _orbit(kind, p)
        points.append(orbit)
        weights.append(np.full(len(orbit), weight))
    return np.concatenate(points), np.concatenate(weights)


def align_z(direction) -> np.ndarray:
    """Return the rotation matrix that takes the z axis onto ``direction`` along the shortest arc.

    The antipode (``-z``) has no shortest arc: the rotation by pi about x is returned.
    """
    n = np.asarray(direction, dtype=float)
    n = n / np.linalg.norm(n)
    z = np.array([0.0, 0.0, 1.0])
    cosine = float(z @ n)
    if cosine < -1 + 1e-12:
        return np.diag([1.0, -1.0, -1.0])
    v = np.cross(z, n)
    cross = np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])
    return np.eye(3) + cross + cross @ cross / (1 + cosine)


def rotation_matrices(order: int = PET_MAD_ORDER, in_plane: int = 1) -> np.ndarray:
    """Return the ``(N * in_plane, 3, 3)`` rotations of a Lebedev grid, each after ``in_plane`` rotations about z.

    Rotation ``i * in_plane + k`` is ``align_z(point_i) @ R_z(2 pi k / in_plane)``.

    :raises ValueError: for an order without a grid or ``in_plane`` below one.
    """
    if not isinstance(in_plane, int | np.integer) or in_plane < 1:
        raise ValueError(f'in_plane must be a positive integer, got {in_plane!r}')
    points, _ = lebedev_grid(order)
    angles = 2 * np.pi * np.arange(in_plane) / in_plane
    about_z = [
        np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]])
        for angle in angles
    ]
    return np.array([align_z(point) @ rotation for point in points for rotation in about_z])


def rotated_copies(frame: Atoms, matrices: Sequence) -> list[Atoms]:
    """Return one copy of ``frame`` per rotation matrix: positions and cell rotated, numbers and pbc kept.

    The copies carry only ``info['source_uuid']`` of the frame (if any); no reference values (they would be those of
    the unrotated frame, rotated or not, and nothing should read them).
    """
    copies = []
    for matrix in np.asarray(matrices, dtype=float):
        copy = Atoms(
            numbers=frame.numbers,
            positions=frame.positions @ matrix.T,
            cell=frame.cell.array @ matrix.T,
            pbc=frame.pbc,
        )
        if 'source_uuid' in frame.info:
            copy.info['source_uuid'] = frame.info['source_uuid']
        copies.append(copy)
    return copies


def rotation_arrays(predict, frames: Sequence[Atoms], matrices, uuids: Sequence[str] | None = None) -> dict:
    """Predict the rotated copies of ``frames`` (those of ``uuids`` only, when given) and return their arrays.

    :param predict: a function of a list of frames returning the arrays of
        :func:`aiida_mad.inference.predict.predict` (``energy`` ``(M, n)``, and/or ``dos`` ``(M, n, G)``).
    :param matrices: the ``(R, 3, 3)`` rotations (``R >= 2``).
    :return: ``rotation_uuids`` ``(k,)``, ``rotation_matrices`` ``(R, 3, 3)`` and, for the targets predicted,
        ``rotation_energy`` and ``rotation_energy_per_atom`` ``(M, k, R)``; ``rotation_dos_variance`` ``(M, k, G)``,
        the variance (``ddof=0``) over the rotations of the DOS at each grid point (PET-MAD-DOS eq. 10 integrates
        it over the energies where the target is defined).
    :raises ValueError: for fewer than two rotations or a uuid that is not among the frames.
    """
    matrices = np.asarray(matrices, dtype=float)
    if matrices.ndim != 3 or matrices.shape[1:] != (3, 3) or len(matrices) < 2:
        raise ValueError(f'rotations must be at least two 3x3 matrices, got an array of shape {matrices.shape}')
    by_uuid = {str(frame.info.get('source_uuid')): frame for frame in frames}
    wanted = list(by_uuid) if uuids is None else [str(uuid) for uuid in uuids]
    missing = [uuid for uuid in wanted if uuid not in by_uuid]
    if missing:
        raise ValueError(f'no structure {missing[0]} to rotate among the {len(frames)} structures predicted')
    copies = [copy for uuid in wanted for copy in rotated_copies(by_uuid[uuid], matrices)]
    count, rotations = len(wanted), len(matrices)
    result = {'rotation_uuids': np.array(wanted, dtype='U36'), 'rotation_matrices': matrices}
    if not copies:
        return result
    arrays = predict(copies)
    if arrays.get('energy') is not None:
        energy = np.asarray(arrays['energy']).reshape(-1, count, rotations)
        natoms = np.array([len(by_uuid[uuid]) for uuid in wanted], dtype=float)
        result['rotation_energy'] = energy
        result['rotation_energy_per_atom'] = energy / natoms[None, :, None]
    if arrays.get('dos') is not None:
        dos = np.asarray(arrays['dos'])
        result['rotation_dos_variance'] = dos.reshape(dos.shape[0], count, rotations, -1).var(axis=2)
    return result
