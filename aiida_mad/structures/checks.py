"""Plausibility checks run on every structure before it is stored or submitted.

A structure is refused with human-readable reasons rather than an exception deep inside a generator, so that the
caller can record why it was dropped and nothing half-written stays behind.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers, covalent_radii
from ase.neighborlist import neighbor_list

from .elements import MAD_ELEMENTS

__all__ = ('ImplausibleStructureError', 'assert_plausible', 'check_structure')

#: The periodic cell is degenerate when its volume (area, length) is below this fraction of the product of the
#: lengths of its vectors, i.e. when the vectors are (nearly) linearly dependent or one of them is zero.
DEGENERATE_CELL_TOLERANCE = 1e-6

#: At most this many close pairs are named one by one; the rest are counted, so that a collapsed structure with
#: thousands of overlaps still gives a readable message.
MAX_REPORTED_PAIRS = 10

_AXES = ('a', 'b', 'c')


class ImplausibleStructureError(ValueError):
    """Raised by :func:`assert_plausible` when a structure fails the plausibility checks."""

    def __init__(self, reasons: list[str]):
        self.reasons = list(reasons)
        super().__init__('implausible structure: ' + '; '.join(self.reasons))


def check_structure(atoms: Atoms, *, pool: Iterable[str] | None = None, min_distance_factor: float = 0.5) -> list[str]:
    """Return the reasons why ``atoms`` is not a plausible structure; an empty list means it passes.

    The checks are: at least one atom; finite positions (naming each offending atom) and finite cell vectors;
    a non-degenerate cell along the periodic directions (non-periodic directions only need finite numbers);
    every element in the pool; and no pair of atoms, periodic images included, closer than
    ``min_distance_factor`` times the sum of their covalent radii (``ase.data.covalent_radii``). The distance check
    is skipped when the coordinates or the cell already fail, since distances are then meaningless.

    :param atoms: the structure to check.
    :param pool: the allowed elements; ``None`` means the 85 MAD elements.
    :param min_distance_factor: the fraction of the sum of covalent radii below which a pair is too close.
    :return: human-readable refusal reasons, one per problem (close pairs are named one by one, closest first).
    :raises ValueError: if ``min_distance_factor`` is negative or not finite.
    """
    if not np.isfinite(min_distance_factor) or min_distance_factor < 0:
        raise ValueError(f'min_distance_factor must be a finite non-negative number, got {min_distance_factor!r}')

    reasons: list[str] = []
    if len(atoms) == 0:
        reasons.append('the structure has no atoms')

    geometry_ok = True
    positions = np.asarray(atoms.positions, dtype=float)
    bad_atoms = np.flatnonzero(~np.all(np.isfinite(positions), axis=1))
    if bad_atoms.size:
        geometry_ok = False
        listed = ', '.join(f'{i} ({atoms[i].symbol})' for i in bad_atoms)
        reasons.append(f'non-finite position for atom(s) {listed}')

    cell = np.asarray(atoms.cell.array, dtype=float)
    bad_vectors = [axis for axis, vector in zip(_AXES, cell, strict=True) if not np.all(np.isfinite(vector))]
    if bad_vectors:
        geometry_ok = False
        reasons.append(f'non-finite cell vector(s) {", ".join(bad_vectors)}')
    else:
        degenerate = _degenerate_cell_reason(cell, atoms.pbc)
        if degenerate:
            geometry_ok = False
            reasons.append(degenerate)

    reasons.extend(_pool_reasons(atoms, pool))

    if geometry_ok and len(atoms) > 0:
        reasons.extend(_close_pair_reasons(atoms, min_distance_factor))
    return reasons


def assert_plausible(atoms: Atoms, **kwargs) -> None:
    """Raise :class:`ImplausibleStructureError` if :func:`check_structure` finds any problem.

    :param atoms: the structure to check.
    :param kwargs: passed on to :func:`check_structure` (``pool``, ``min_distance_factor``).
    :raises ImplausibleStructureError: with all reasons joined in its message and kept in its ``reasons``.
    """
    reasons = check_structure(atoms, **kwargs)
    if reasons:
        raise ImplausibleStructureError(reasons)


def _degenerate_cell_reason(cell: np.ndarray, pbc: np.ndarray) -> str | None:
    """Return a reason if the periodic cell vectors span less than their number of dimensions, else ``None``."""
    periodic = np.flatnonzero(pbc)
    if periodic.size == 0:
        return None
    vectors = cell[periodic]
    # The Gram determinant gives the length, area or volume spanned by 1, 2 or 3 vectors alike.
    measure = float(np.sqrt(max(np.linalg.det(vectors @ vectors.T), 0.0)))
    lengths = np.linalg.norm(vectors, axis=1)
    if measure > DEGENERATE_CELL_TOLERANCE * float(np.prod(lengths)) and measure > 0.0:
        return None
    names = ', '.join(_AXES[i] for i in periodic)
    kind = {1: 'length', 2: 'area', 3: 'volume'}[periodic.size]
    unit = {1: 'Å', 2: 'Å²', 3: 'Å³'}[periodic.size]
    return f'degenerate cell along the periodic direction(s) {names}: {kind} {measure:.3g} {unit}'


def _pool_reasons(atoms: Atoms, pool: Iterable[str] | None) -> list[str]:
    """Return a reason naming every element of ``atoms`` outside ``pool``."""
    allowed = set(MAD_ELEMENTS if pool is None else pool)
    outside = sorted(set(atoms.get_chemical_symbols()) - allowed, key=lambda s: atomic_numbers.get(s, 0))
    if not outside:
        return []
    label = 'the MAD elements' if pool is None else 'the element pool'
    return [f'element(s) not in {label}: {", ".join(outside)}']


def _close_pair_reasons(atoms: Atoms, factor: float) -> list[str]:
    """Return one reason per pair (periodic images included) closer than ``factor`` x the sum of covalent radii."""
    if factor == 0.0:
        return []
    radii = covalent_radii[atoms.numbers]
    # ASE includes a pair when d < cutoff_i + cutoff_j, so per-atom cutoffs of factor * r_i give exactly the test.
    first, second, distance, shift = neighbor_list('ijdS', atoms, factor * radii)
    # Every pair appears twice, as (i, j, S) and (j, i, -S); keep the copy with i < j, or for an atom and its own
    # image the copy whose first non-zero shift component is positive.
    first_nonzero = np.take_along_axis(shift, np.argmax(shift != 0, axis=1)[:, None], axis=1)[:, 0]
    keep = (first < second) | ((first == second) & (first_nonzero > 0))
    limit = factor * (radii[first] + radii[second])
    keep &= distance < limit
    first, second, distance, shift, limit = first[keep], second[keep], distance[keep], shift[keep], limit[keep]

    order = np.lexsort((second, first, distance))
    symbols = atoms.get_chemical_symbols()
    reasons = []
    for k in order[:MAX_REPORTED_PAIRS]:
        i, j = int(first[k]), int(second[k])
        image = '' if not shift[k].any() else f' (periodic image {tuple(int(s) for s in shift[k])})'
        reasons.append(
            f'atoms {i} ({symbols[i]}) and {j} ({symbols[j]}){image} are {distance[k]:.3f} Å apart, closer than '
            f'{factor:g} x ({radii[i]:.2f} + {radii[j]:.2f}) = {limit[k]:.3f} Å'
        )
    if order.size > MAX_REPORTED_PAIRS:
        reasons.append(f'{order.size - MAX_REPORTED_PAIRS} more pair(s) closer than {factor:g} x sum of covalent radii')
    return reasons
