"""The ``mc3d-surface`` generator: slabs cleaved from a crystal along a random low-index plane.

Miller indices always refer to the **conventional standard cell** of the parent (pymatgen
``SpacegroupAnalyzer.get_conventional_standard_structure``), which is the cell in which crystallographers quote them;
MC3D parents are usually primitive cells, whose own indices would label other planes (the primitive (111) of an fcc
crystal is the conventional (100)). The same conventional structure is given both to
``get_symmetrically_distinct_miller_indices`` and to ``SlabGenerator``, so an index means the same plane in both.
Which planes count as equivalent is pymatgen's call and has changed between releases (recent ones use the point group
of the lattice, older ones the space group of the crystal), so the list of planes, and with it the plane a seed
draws, is reproducible for a given pymatgen version only.

Slabs are kept small, as in MAD: at least ``min_slab_size`` (8 Å) of material and at least ``vacuum`` (10 Å) of empty
space along the normal. The vacuum only has to be positive here: the DFT step resets the cell length along the
non-periodic axis to the extent of the atoms plus 25 Å.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms

__all__ = (
    'DEFAULT_MAX_ATOMS',
    'DEFAULT_MAX_INDEX',
    'DEFAULT_MIN_SLAB_SIZE',
    'DEFAULT_SYMPREC',
    'DEFAULT_VACUUM',
    'distinct_miller_indices',
    'make_slab',
)

#: Largest absolute Miller index of the cleaving planes (MAD data descriptor).
DEFAULT_MAX_INDEX = 3

#: Minimum thickness of the material in a slab, in Å.
DEFAULT_MIN_SLAB_SIZE = 8.0

#: Minimum vacuum along the surface normal, in Å; only needs to be positive (the DFT step sets its own).
DEFAULT_VACUUM = 10.0

#: Largest number of atoms a slab may have; other planes and terminations are tried when a slab is larger.
DEFAULT_MAX_ATOMS = 60

#: Symmetry tolerance in Å used to find the conventional standard cell of the parent.
DEFAULT_SYMPREC = 0.01


def distinct_miller_indices(
    atoms: Atoms, max_index: int = DEFAULT_MAX_INDEX, *, symprec: float = DEFAULT_SYMPREC
) -> list[tuple[int, int, int]]:
    """Return the symmetrically distinct Miller indices of ``atoms`` up to ``max_index``.

    The indices refer to the conventional standard cell of ``atoms`` (see the module docstring) and come from pymatgen
    ``get_symmetrically_distinct_miller_indices`` applied to that cell, in pymatgen's (deterministic) order.

    :param atoms: a periodic crystal (pbc True along all three axes).
    :param max_index: the largest absolute value of h, k and l.
    :param symprec: the symmetry tolerance in Å for finding the conventional cell.
    :return: the distinct indices as tuples of Python ints.
    :raises ValueError: if ``atoms`` is not periodic in 3D, is empty, or ``max_index`` is below 1.
    """
    from pymatgen.core.surface import get_symmetrically_distinct_miller_indices

    if max_index < 1:
        raise ValueError(f'max_index must be at least 1, got {max_index!r}')
    conventional = _conventional_structure(atoms, symprec)
    return [tuple(int(i) for i in hkl) for hkl in get_symmetrically_distinct_miller_indices(conventional, max_index)]


def make_slab(
    atoms: Atoms,
    rng: np.random.Generator,
    *,
    max_index: int = DEFAULT_MAX_INDEX,
    min_slab_size: float = DEFAULT_MIN_SLAB_SIZE,
    vacuum: float = DEFAULT_VACUUM,
    max_atoms: int = DEFAULT_MAX_ATOMS,
    symprec: float = DEFAULT_SYMPREC,
    miller_index: tuple[int, int, int] | None = None,
) -> Atoms:
    """Return a slab of ``atoms`` cleaved along a random symmetrically distinct plane, with a random termination.

    The planes of :func:`distinct_miller_indices` are tried in an order drawn with ``rng.permutation``, so the first
    plane is uniform among them. For each plane pymatgen ``SlabGenerator`` (on the conventional cell, with
    in-plane primitive reduction) gives the possible terminations; one of those with at most ``max_atoms`` atoms is
    drawn uniformly with ``rng.integers``. If none fits, the next plane is tried. The slab's normal lattice vector is
    then made exactly orthogonal to the surface (``Slab.get_orthogonal_c_slab``), the in-plane vectors are
    Gauss-reduced to the shortest pair, and the cell is oriented with a along x, b in the xy plane and c along z;
    the atoms are wrapped in-plane and centred along z.

    The result has ``pbc = (True, True, False)`` and ``info`` entries ``miller_index`` (tuple, conventional cell),
    ``termination`` (index into pymatgen's list of terminations for that plane), ``n_terminations`` and
    ``parent_formula``.

    :param atoms: the parent crystal (pbc True along all three axes).
    :param rng: the random generator.
    :param max_index: the largest absolute Miller index.
    :param min_slab_size: the minimum thickness of material along the normal, in Å.
    :param vacuum: the minimum vacuum along the normal, in Å.
    :param max_atoms: the largest number of atoms accepted.
    :param symprec: the symmetry tolerance in Å for the conventional cell.
    :param miller_index: cleave along this plane (conventional cell) instead of a random one; the termination is
        still drawn.
    :return: a new ``Atoms``; the parent is left untouched.
    :raises ValueError: if the parameters are out of range, the parent is not a 3D crystal, or no plane and
        termination gives a slab with at most ``max_atoms`` atoms (the message names the parent formula).
    """
    from pymatgen.core.surface import SlabGenerator, get_symmetrically_distinct_miller_indices

    if not (np.isfinite(min_slab_size) and min_slab_size > 0):
        raise ValueError(f'min_slab_size must be a positive number, got {min_slab_size!r}')
    if not (np.isfinite(vacuum) and vacuum > 0):
        raise ValueError(f'vacuum must be a positive number, got {vacuum!r}')
    if max_atoms < 1:
        raise ValueError(f'max_atoms must be at least 1, got {max_atoms!r}')
    if max_index < 1:
        raise ValueError(f'max_index must be at least 1, got {max_index!r}')

    formula = atoms.get_chemical_formula()
    conventional = _conventional_structure(atoms, symprec)
    if miller_index is None:
        planes = [
            tuple(int(i) for i in hkl) for hkl in get_symmetrically_distinct_miller_indices(conventional, max_index)
        ]
    else:
        if len(miller_index) != 3 or not any(miller_index):
            raise ValueError(f'miller_index must be three integers, not all zero, got {miller_index!r}')
        planes = [tuple(int(i) for i in miller_index)]

    for plane_index in rng.permutation(len(planes)):
        miller = planes[plane_index]
        # pymatgen's own centring is slow (neighbour searches) and not needed: the slab is centred below.
        generator = SlabGenerator(conventional, miller, min_slab_size, vacuum, center_slab=False, primitive=True)
        slabs = generator.get_slabs()
        fitting = [i for i, slab in enumerate(slabs) if len(slab) <= max_atoms]
        if not fitting:
            continue
        termination = fitting[int(rng.integers(len(fitting)))]
        result = _to_atoms(slabs[termination].get_orthogonal_c_slab())
        result.info.update(
            {
                'miller_index': miller,
                'termination': termination,
                'n_terminations': len(slabs),
                'parent_formula': formula,
            }
        )
        return result

    raise ValueError(
        f'no slab of {formula} with at most {max_atoms} atoms for any of the {len(planes)} plane(s) tried '
        f'({"max index " + str(max_index) if miller_index is None else miller_index}, '
        f'min_slab_size {min_slab_size} Å)'
    )


def _conventional_structure(atoms: Atoms, symprec: float):
    """Return the conventional standard pymatgen ``Structure`` of a 3D-periodic ``atoms``."""
    from pymatgen.io.ase import AseAtomsAdaptor
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    if len(atoms) == 0:
        raise ValueError('cannot cleave an empty structure')
    if not all(atoms.pbc):
        raise ValueError(f'the parent {atoms.get_chemical_formula()} must be periodic along all three axes')
    # Only species, positions and cell matter; dropping info/arrays avoids adaptor surprises with foreign keys.
    bare = Atoms(atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=True)
    structure = AseAtomsAdaptor.get_structure(bare)
    return SpacegroupAnalyzer(structure, symprec=symprec).get_conventional_standard_structure()


def _reduce_2d(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the Lagrange-Gauss reduced basis of the 2D lattice spanned by ``a`` and ``b`` (shortest vectors first)."""
    # The reduced pair spans the same lattice (unimodular steps) but avoids the long, skewed in-plane vectors that
    # SlabGenerator often returns; compact cells are cheaper to converge in k-points.
    if np.dot(b, b) < np.dot(a, a):
        a, b = b, a
    while True:
        mu = np.rint(np.dot(a, b) / np.dot(a, a))
        b = b - mu * a
        if np.dot(b, b) < np.dot(a, a) - 1e-12:
            a, b = b, a
            continue
        return a, b


def _to_atoms(slab) -> Atoms:
    """Convert a pymatgen slab whose c is orthogonal to a and b into oriented, centred ``Atoms``."""
    a, b, c = np.asarray(slab.lattice.matrix, dtype=float)
    height = float(np.linalg.norm(c))
    normal = c / height
    a, b = _reduce_2d(a, b)
    if np.dot(np.cross(a, b), normal) < 0:
        b = -b
    # Right-handed orthonormal frame with x along a and z along the normal: a proper rotation of the slab.
    x_axis = a / np.linalg.norm(a)
    y_axis = np.cross(normal, x_axis)
    rotation = np.array([x_axis, y_axis, normal])
    cell = np.array([rotation @ a, rotation @ b, [0.0, 0.0, height]])
    # Exact zeros where the frame guarantees them, so that c is along z and a, b lie in the xy plane bit for bit.
    cell[0, 1:] = 0.0
    cell[1, 2] = 0.0
    positions = np.asarray(slab.cart_coords, dtype=float) @ rotation.T

    fractional = np.linalg.solve(cell.T, positions.T).T
    fractional[:, :2] %= 1.0
    # Move the largest empty gap along the normal to the cell boundary so the slab is contiguous, then centre it.
    z = fractional[:, 2] % 1.0
    order = np.sort(z)
    gaps = np.diff(np.concatenate([order, [order[0] + 1.0]]))
    start = order[(int(np.argmax(gaps)) + 1) % len(order)]
    z = (z - start) % 1.0
    fractional[:, 2] = z
    positions = fractional @ cell
    extent = float(np.ptp(positions[:, 2]))
    if extent >= height:
        raise ValueError('the slab leaves no vacuum along its normal')
    positions[:, 2] += 0.5 * height - 0.5 * (positions[:, 2].max() + positions[:, 2].min())

    numbers = [site.specie.Z for site in slab]
    return Atoms(numbers=numbers, positions=positions, cell=cell, pbc=(True, True, False))
