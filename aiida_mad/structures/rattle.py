"""The ``mc3d-rattled`` generator: Gaussian noise on the Cartesian positions of a crystal."""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.data import covalent_radii

__all__ = ('DEFAULT_RATTLE_SCALE', 'rattle')

#: Standard deviation of the displacement as a fraction of each atom's covalent radius (MAD data descriptor).
DEFAULT_RATTLE_SCALE = 0.2


def rattle(atoms: Atoms, rng: np.random.Generator, *, scale: float = DEFAULT_RATTLE_SCALE) -> Atoms:
    """Return a copy of ``atoms`` with every Cartesian coordinate displaced by independent Gaussian noise.

    The noise has zero mean and, for each atom, a standard deviation of ``scale`` times the covalent radius of its
    element (``ase.data.covalent_radii``), the same for the x, y and z components. Cell, pbc and ``info`` are
    kept; positions are not wrapped back into the cell.

    :param atoms: the parent structure; it must have more than one atom (a single atom in a cell only moves rigidly).
    :param rng: the random generator; exactly ``3 * len(atoms)`` standard normal numbers are drawn from it.
    :param scale: the standard deviation in units of the covalent radius.
    :return: a new ``Atoms``; the parent is left untouched.
    :raises ValueError: if the parent has fewer than two atoms, or ``scale`` is negative or not finite.
    """
    if len(atoms) < 2:
        raise ValueError(
            f'cannot rattle {atoms.get_chemical_formula() or "an empty structure"}: parents need more than one atom'
        )
    if not np.isfinite(scale) or scale < 0:
        raise ValueError(f'scale must be a finite non-negative number, got {scale!r}')
    sigma = scale * covalent_radii[atoms.numbers]
    noise = rng.standard_normal((len(atoms), 3)) * sigma[:, None]
    rattled = atoms.copy()
    rattled.positions = atoms.positions + noise
    return rattled
