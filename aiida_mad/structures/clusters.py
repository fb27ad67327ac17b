"""The ``mc3d-cluster`` generator: a random atom of a crystal with its nearest neighbours, cut out as a cluster."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ase import Atoms

__all__ = ('CLUSTER_PADDING', 'choose_parent', 'cut_cluster')

#: Length (Å) added to the extent of the atoms along each Cartesian axis to make the cluster's box. The box only
#: makes the cluster a valid structure on its own; the DFT step sets the real vacuum of non-periodic structures.
CLUSTER_PADDING = 10.0

#: Distances (Å) that differ by less than this count as equal, so that the choice among equidistant neighbours is
#: made by the random generator and not by floating-point noise or by the order of the atoms in the parent.
_TIE_TOLERANCE = 1e-6

#: Starting search radius (Å) around the centre; it doubles until the sphere holds enough atoms.
_START_RADIUS = 4.0
_MAX_DOUBLINGS = 16


def choose_parent(parents: Sequence[Atoms], rng: np.random.Generator, *, min_atoms: int = 1) -> int:
    """Return the index of a parent drawn uniformly among those with at least ``min_atoms`` atoms.

    Useful for generators with a condition on the parent, e.g. ``min_atoms=2`` for ``mc3d-rattled``.

    :param parents: the candidate parent structures.
    :param rng: the random generator; one ``rng.integers`` draw is made.
    :param min_atoms: the smallest number of atoms an eligible parent has.
    :return: an index into ``parents``.
    :raises ValueError: if no parent is eligible.
    """
    eligible = [index for index, parent in enumerate(parents) if len(parent) >= min_atoms]
    if not eligible:
        raise ValueError(f'none of the {len(parents)} parent(s) has at least {min_atoms} atom(s)')
    return eligible[int(rng.integers(len(eligible)))]


def cut_cluster(
    atoms: Atoms,
    rng: np.random.Generator,
    *,
    min_atoms: int = 2,
    max_atoms: int = 8,
    padding: float = CLUSTER_PADDING,
) -> Atoms:
    """Return the ``n`` atoms nearest to a random central atom of ``atoms`` as a non-periodic cluster.

    The centre is drawn uniformly among the parent's atoms and ``n`` uniformly in ``[min_atoms, max_atoms]``. The
    cluster holds the centre and its ``n - 1`` nearest neighbours, periodic images included (so a one-atom cell
    still gives ``n`` atoms); neighbours at the same distance are chosen among at random. The atoms keep their
    Cartesian arrangement around the centre, ordered by distance from it (the centre first). The cluster is
    non-periodic and sits in the middle of an orthorhombic box whose edges are the extent of the atoms plus
    ``padding``; the box only makes the structure valid on its own, the DFT step sets the vacuum it needs.

    ``info`` holds ``cluster_centre_index`` (the parent index of the centre) and ``cluster_parent_indices`` (the
    parent index of every cluster atom; an atom can appear more than once through its periodic images).

    A parent that is periodic in no direction offers at most ``len(atoms)`` atoms, so ``n`` is then drawn in
    ``[min_atoms, min(max_atoms, len(atoms))]``.

    :param atoms: the parent structure; its cell must be non-degenerate along its periodic directions.
    :param rng: the random generator.
    :param min_atoms: the smallest cluster size, at least 1.
    :param max_atoms: the largest cluster size.
    :param padding: Å added to the extent of the atoms along x, y and z to make the box.
    :return: the cluster as a new ``Atoms`` with ``pbc`` False.
    :raises ValueError: if the sizes are inconsistent, the parent is empty, has too few atoms for a finite parent,
        or has a degenerate periodic cell.
    """
    if not 1 <= min_atoms <= max_atoms:
        raise ValueError(f'need 1 <= min_atoms <= max_atoms, got min_atoms={min_atoms}, max_atoms={max_atoms}')
    if not np.isfinite(padding) or padding < 0:
        raise ValueError(f'padding must be a finite non-negative number, got {padding!r}')
    if len(atoms) == 0:
        raise ValueError('cannot cut a cluster from an empty structure')
    periodic = np.flatnonzero(atoms.pbc)
    upper = max_atoms
    if periodic.size == 0:
        upper = min(max_atoms, len(atoms))
        if upper < min_atoms:
            raise ValueError(
                f'the non-periodic parent {atoms.get_chemical_formula()} has {len(atoms)} atom(s), '
                f'fewer than min_atoms={min_atoms}'
            )
    elif np.linalg.matrix_rank(atoms.cell.array[periodic]) < periodic.size:
        raise ValueError(f'the cell of {atoms.get_chemical_formula()} is degenerate along its periodic directions')

    centre = int(rng.integers(len(atoms)))
    size = int(rng.integers(min_atoms, upper + 1))
    indices, vectors = _nearest_atoms(atoms, centre, size, rng)

    positions = atoms.positions[centre] + vectors
    low, high = positions.min(axis=0), positions.max(axis=0)
    cluster = Atoms(
        numbers=atoms.numbers[indices],
        positions=positions - low + padding / 2,
        cell=np.diag(high - low + padding),
        pbc=False,
    )
    cluster.info['cluster_centre_index'] = centre
    cluster.info['cluster_parent_indices'] = [int(i) for i in indices]
    return cluster


def _nearest_atoms(atoms: Atoms, centre: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Return parent indices and vectors from the centre of the ``size`` atoms (images included) nearest to it."""
    periodic = np.flatnonzero(atoms.pbc)
    radius = np.inf if periodic.size == 0 else _START_RADIUS
    for _ in range(_MAX_DOUBLINGS):
        indices, vectors = _environment(atoms, centre, radius)
        distances = np.linalg.norm(vectors, axis=1)
        order = np.argsort(distances, kind='stable')
        # Everything within the radius is found; the selection is complete once the size-th atom (and any atom
        # tied with it) lies safely inside the sphere.
        if order.size >= size and distances[order[size - 1]] < radius - 10 * _TIE_TOLERANCE:
            break
        radius *= 2
    else:  # pragma: no cover - a non-degenerate periodic cell always fills the sphere
        raise RuntimeError(f'could not find {size} atoms around atom {centre}')

    sorted_distances = distances[order]
    groups = np.concatenate([[0], np.cumsum(np.diff(sorted_distances) > _TIE_TOLERANCE)])
    is_centre = (indices[order] == centre) & (sorted_distances == 0.0)
    groups = np.where(is_centre, -1, groups)  # the centre itself always comes first
    tie_break = rng.random(order.size)
    chosen = order[np.lexsort((tie_break, groups))][:size]
    return indices[chosen], vectors[chosen]


def _environment(atoms: Atoms, centre: int, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Return parent indices and vectors from the centre of all atoms and periodic images within ``radius``."""
    displacements = atoms.positions - atoms.positions[centre]
    periodic = np.flatnonzero(atoms.pbc)
    if periodic.size == 0:
        return np.arange(len(atoms)), displacements

    cell = atoms.cell.array
    lattice = cell[periodic]
    # Rows of ``lattice`` times the columns of its pseudo-inverse give the identity, so ``v @ dual`` are the
    # lattice coordinates of the in-plane part of v, and |coordinate_k| <= |v| * |dual[:, k]| bounds the shifts.
    dual = np.linalg.pinv(lattice)
    coordinates = displacements @ dual
    reach = radius * np.linalg.norm(dual, axis=0)
    low = np.floor((-coordinates).min(axis=0) - reach).astype(int)
    high = np.ceil((-coordinates).max(axis=0) + reach).astype(int)
    grid = np.meshgrid(*(np.arange(lo, hi + 1) for lo, hi in zip(low, high, strict=True)), indexing='ij')
    shifts = np.zeros((grid[0].size, 3), dtype=int)
    shifts[:, periodic] = np.stack([g.ravel() for g in grid], axis=1)

    vectors = displacements[None, :, :] + (shifts @ cell)[:, None, :]
    within = np.linalg.norm(vectors, axis=2) <= radius
    image_index, atom_index = np.nonzero(within)
    return atom_index, vectors[image_index, atom_index]
