"""Cells for DFT: dimensionality from periodicity, and vacuum along non-periodic directions.

MAD computes 3D, 2D and 0D structures at one level of theory: periodic directions keep their lattice vectors and
k-points; every non-periodic direction gets a cell length equal to the atoms' extent plus a fixed vacuum (25 Å),
a single k-point and a Coulomb truncation (2D: Sohier-Calandra-Mauri, non-periodic axis along z; 0D:
Martyna-Tuckerman in an orthorhombic box).
"""

from __future__ import annotations

import numpy as np
from ase import Atoms

DIMENSIONALITIES = ('3D', '2D', '0D')


class DimensionalityError(ValueError):
    """Raised for periodicity that the MAD level of theory does not cover (1D) or a cell that cannot be used."""


def dimensionality(atoms: Atoms) -> str:
    """Return ``'3D'``, ``'2D'`` or ``'0D'`` from the periodic boundary conditions; refuse 1D."""
    periodic = int(np.count_nonzero(atoms.pbc))
    if periodic == 1:
        raise DimensionalityError(
            f'{atoms.get_chemical_formula()}: 1D periodicity {tuple(bool(p) for p in atoms.pbc)} is not supported '
            '(MAD covers 3D, 2D with a non-periodic axis, and 0D)'
        )
    return {3: '3D', 2: '2D', 0: '0D'}[periodic]


def prepare_cell(atoms: Atoms, *, vacuum: float) -> Atoms:
    """Return a copy of ``atoms`` with the cell the DFT calculation uses.

    - 3D: unchanged.
    - 2D: rotated rigidly so that the two periodic vectors lie in the xy plane (first along x), with the
      non-periodic axis along z; the third vector becomes ``(0, 0, extent_z + vacuum)`` and the atoms are centred
      along it. A structure whose non-periodic axis is not the third is first relabelled cyclically (which keeps
      the handedness of the cell), so every 2D structure ends up with ``pbc = (True, True, False)``.
    - 0D: an orthorhombic box of ``extent + vacuum`` along x, y and z with the atoms centred.

    Forces and stresses computed for the returned structure refer to its (possibly rotated) frame; the structure is
    stored with the results, so the two always match.
    """
    kind = dimensionality(atoms)
    if vacuum <= 0:
        raise ValueError(f'the vacuum must be positive, got {vacuum}')
    prepared = atoms.copy()
    if kind == '3D':
        return prepared

    positions = prepared.get_positions()
    if kind == '0D':
        extent = np.ptp(positions, axis=0)
        box = extent + vacuum
        prepared.set_cell(np.diag(box))
        prepared.set_positions(positions - positions.min(axis=0) + vacuum / 2)
        prepared.pbc = False
        return prepared

    nonperiodic = int(np.flatnonzero(~np.asarray(atoms.pbc))[0])
    # Cyclic relabelling puts the non-periodic axis last: (a, b, c) -> (b, c, a) or (c, a, b).
    order = [(nonperiodic + 1 + i) % 3 for i in range(3)]
    cell = np.asarray(atoms.cell)[order]
    a, b = cell[0], cell[1]
    normal = np.cross(a, b)
    if np.linalg.norm(normal) < 1e-8 or np.linalg.norm(a) < 1e-8:
        raise DimensionalityError(f'{atoms.get_chemical_formula()}: the two periodic lattice vectors are degenerate')
    e1 = a / np.linalg.norm(a)
    e3 = normal / np.linalg.norm(normal)
    e2 = np.cross(e3, e1)
    rotation = np.array([e1, e2, e3])  # rows: new x, y, z axes in the old frame
    rotated = positions @ rotation.T
    z = rotated[:, 2]
    length = float(np.ptp(z)) + vacuum
    rotated[:, 2] = z - z.min() + vacuum / 2
    new_cell = np.array([rotation @ a, rotation @ b, [0.0, 0.0, length]])
    new_cell[:2, 2] = 0.0  # exact zeros: the in-plane vectors have no z component by construction
    prepared.set_cell(new_cell)
    prepared.set_positions(rotated)
    prepared.pbc = (True, True, False)
    return prepared
