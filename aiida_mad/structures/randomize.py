"""The ``mc3d-random`` generator: random species on the sites of a crystal, volume rescaled to match."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers, covalent_radii

from .elements import validate_symbols

__all__ = ('randomize_composition', 'volume_ratio')


def volume_ratio(parent_numbers: Sequence[int], new_numbers: Sequence[int]) -> float:
    """Return V_new / V_parent = sum(r_new^3) / sum(r_parent^3) over the sites, with covalent radii.

    :param parent_numbers: atomic numbers of the parent's sites.
    :param new_numbers: atomic numbers of the same sites after the species were redrawn.
    :raises ValueError: if the two have different lengths or the parent's radii sum to zero.
    """
    parent_numbers = np.asarray(parent_numbers, dtype=int)
    new_numbers = np.asarray(new_numbers, dtype=int)
    if parent_numbers.shape != new_numbers.shape:
        raise ValueError(f'site counts differ: {parent_numbers.size} parent sites, {new_numbers.size} new sites')
    parent_volume = float(np.sum(covalent_radii[parent_numbers] ** 3))
    if parent_volume <= 0.0:
        raise ValueError('the parent has no covalent-radius volume to scale from')
    return float(np.sum(covalent_radii[new_numbers] ** 3)) / parent_volume


def randomize_composition(atoms: Atoms, rng: np.random.Generator, pool: Sequence[str]) -> Atoms:
    """Return a copy of ``atoms`` with every site's species drawn uniformly from ``pool`` and the cell rescaled.

    The fractional positions and the shape of the cell are those of the parent. The cell is scaled isotropically
    so that the volume follows the covalent-radius atomic volume of the new composition. We read "match the
    covalent-radius atomic volume" as keeping the parent's packing: the cell volume scales with the total volume
    of spheres of covalent radius r (``ase.data.covalent_radii``), i.e.

        V_new = V_parent * sum_i r_new,i^3 / sum_i r_parent,i^3

    so every length is multiplied by the cube root of that ratio (the 4/3 pi cancels).

    :param atoms: the parent crystal; its cell must span three dimensions (fractional positions must exist).
    :param rng: the random generator; exactly one ``rng.integers(len(pool), size=len(atoms))`` draw is made.
    :param pool: the symbols to draw from, each with the same probability; duplicates are dropped (first
        occurrence kept) so that no element is favoured.
    :return: a new ``Atoms`` with the same pbc and ``info``; the parent is left untouched.
    :raises ValueError: if the parent has no atoms or a cell that does not span three dimensions, or the pool is
        empty or names something that is no element.
    """
    symbols = list(dict.fromkeys(validate_symbols(pool)))
    if not symbols:
        raise ValueError('the element pool is empty')
    if len(atoms) == 0:
        raise ValueError('cannot randomize an empty structure')
    if atoms.cell.rank < 3 or not np.all(np.isfinite(atoms.cell.array)):
        raise ValueError(
            f'cannot randomize {atoms.get_chemical_formula()}: the cell must be finite and span three dimensions'
        )

    pool_numbers = np.array([atomic_numbers[s] for s in symbols], dtype=int)
    new_numbers = pool_numbers[rng.integers(len(pool_numbers), size=len(atoms))]
    factor = volume_ratio(atoms.numbers, new_numbers) ** (1.0 / 3.0)

    randomized = atoms.copy()
    randomized.numbers = new_numbers
    # Masses set by hand on the parent belong to its species, not to the new ones.
    if randomized.has('masses'):
        del randomized.arrays['masses']
    # scale_atoms=True moves the Cartesian positions with the cell, which keeps the fractional positions.
    randomized.set_cell(atoms.cell.array * factor, scale_atoms=True)
    return randomized
