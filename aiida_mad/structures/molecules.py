"""The ``shiftml-molfrags`` generator: the neutral molecules of a molecular crystal, cut out and made whole.

Bonds are pairs of atoms closer than the sum of their ASE natural cutoffs (``ase.neighborlist.natural_cutoffs``, the
covalent radii) times :data:`CUTOFF_MULT`, periodic images included; molecules are the connected components of that
bond graph. A component that is bonded to its own periodic image (a polymer chain, a layer, a framework) is no
molecule and is left out.

Neutrality (:func:`is_neutral`) is decided from the bond graph alone, by asking whether the molecule has a
closed-shell Lewis structure with zero net formal charge; see that function for the rules.
"""

from __future__ import annotations

from collections import deque

import numpy as np
from ase import Atoms
from ase.neighborlist import natural_cutoffs, neighbor_list

__all__ = (
    'CUTOFF_MULT',
    'DISTANCE_TOLERANCE',
    'VACUUM',
    'VALENCE_STATES',
    'is_neutral',
    'molecular_fragments',
    'split_molecules',
)

#: Factor on the natural cutoffs (covalent radii) below which two atoms are bonded. With 1.0 even C-H bonds
#: (1.09 Å against 0.76 + 0.31 Å) are missed; 1.2 catches stretched covalent bonds but stays far below hydrogen
#: bonds (H...O about 1.8 Å against 1.16 Å) and van der Waals contacts between molecules.
CUTOFF_MULT = 1.2

#: Empty space in Å on each side of a molecule: the box is the extent of the atoms plus twice this.
VACUUM = 5.0

#: Two molecules with the same formula are the same when their sorted interatomic distances differ by at most this
#: many Å; symmetry copies in a crystal agree to far better than this, distinct conformers usually differ by more.
DISTANCE_TOLERANCE = 1e-3

#: Tolerance in Å for a bond vector to be reproduced by the unwrapped positions (detects periodic components).
_UNWRAP_TOLERANCE = 1e-6


def _states(*pairs: tuple[int, int]) -> tuple[tuple[int, int], ...]:
    return tuple(pairs)


_ALKALI = _states((1, 0))
_ALKALINE_EARTH = _states((2, 0))
_TRIEL = _states((3, 0), (4, -1))
_TETREL = _states((4, 0), (3, 1), (3, -1))
_PNICTOGEN = _states((3, 0), (5, 0), (4, 1), (2, -1))
_CHALCOGEN = _states((2, 0), (4, 0), (6, 0), (3, 1), (1, -1))
_HALOGEN = _states((1, 0), (3, 0), (5, 0), (7, 0))
_NOBLE = _states((0, 0))

#: Allowed (valence, formal charge) states per element for the Lewis-structure test. Every state leaves an even
#: number of non-bonding electrons (valence electrons - charge - valence >= 0 and even), so a structure built from
#: these states is closed-shell, and its formal charges add up to the net charge of the molecule.
VALENCE_STATES: dict[str, tuple[tuple[int, int], ...]] = {
    'H': _states((1, 0)),
    **dict.fromkeys(('Li', 'Na', 'K', 'Rb', 'Cs'), _ALKALI),
    **dict.fromkeys(('Be', 'Mg', 'Ca', 'Sr', 'Ba'), _ALKALINE_EARTH),
    **dict.fromkeys(('B', 'Al', 'Ga', 'In', 'Tl'), _TRIEL),
    **dict.fromkeys(('C', 'Si', 'Ge'), _TETREL),
    **dict.fromkeys(('Sn', 'Pb'), (*_TETREL, (2, 0))),
    'N': _states((3, 0), (4, 1), (2, -1)),
    **dict.fromkeys(('P', 'As', 'Sb', 'Bi'), _PNICTOGEN),
    'O': _states((2, 0), (3, 1), (1, -1)),
    **dict.fromkeys(('S', 'Se', 'Te'), _CHALCOGEN),
    'F': _states((1, 0)),
    **dict.fromkeys(('Cl', 'Br', 'I'), _HALOGEN),
    **dict.fromkeys(('He', 'Ne', 'Ar', 'Kr', 'Rn'), _NOBLE),
    'Xe': _states((0, 0), (2, 0), (4, 0), (6, 0)),
}


def _bonds(atoms: Atoms, mult: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the bonds of ``atoms`` as arrays ``i``, ``j``, ``S`` (both directions, periodic shifts), sorted."""
    if len(atoms) == 0:
        empty = np.zeros(0, dtype=int)
        return empty, empty, np.zeros((0, 3), dtype=int)
    i, j, shifts = neighbor_list('ijS', atoms, natural_cutoffs(atoms, mult=mult), self_interaction=False)
    # Sort so the traversal order, hence the unwrapped copy of each molecule, does not depend on neighbour-list
    # internals.
    order = np.lexsort((shifts[:, 2], shifts[:, 1], shifts[:, 0], j, i))
    return i[order], j[order], shifts[order]


def split_molecules(atoms: Atoms, *, mult: float = CUTOFF_MULT) -> list[Atoms]:
    """Split ``atoms`` into its molecules, each made whole across the periodic boundaries.

    Atoms are bonded when closer than the sum of their natural cutoffs times ``mult`` (periodic images included);
    molecules are the connected components of the bond graph. Each molecule is unwrapped by a breadth-first walk
    over its bonds from its lowest-index atom, which stays where it is, every further atom being placed at its
    bonded neighbour plus the vector to the bonded periodic image. A component whose bonds cannot all be reproduced
    that way is bonded to its own periodic image (an infinite chain, layer or framework): it is no molecule and is
    left out.

    Molecules come in the order of their lowest atom index, their atoms in increasing parent index. Each is
    non-periodic, centred in a box of its extent plus ``2 * VACUUM`` (10 Å), and carries ``info['parent_indices']``
    (indices into ``atoms``) and ``info['parent_formula']``.

    :param atoms: the molecular crystal (any pbc).
    :param mult: the factor on the natural cutoffs.
    :return: the finite molecules.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n_atoms = len(atoms)
    if n_atoms == 0:
        return []
    i, j, shifts = _bonds(atoms, mult)
    bond_vectors = atoms.positions[j] + shifts @ atoms.cell.array - atoms.positions[i]
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(n_atoms, n_atoms)).tocsr()
    _, labels = connected_components(graph, directed=False)

    # Bonds of atom k are the contiguous slice starts[k]:starts[k + 1] because i is sorted.
    starts = np.searchsorted(i, np.arange(n_atoms + 1))
    formula = atoms.get_chemical_formula()
    molecules = []
    seen = np.zeros(n_atoms, dtype=bool)
    for root in range(n_atoms):
        if seen[root]:
            continue
        members = np.flatnonzero(labels == labels[root])
        seen[members] = True
        unwrapped = _unwrap(root, atoms.positions, j, bond_vectors, starts)
        if unwrapped is None:
            continue
        molecule = Atoms(numbers=atoms.numbers[members], positions=unwrapped[members], pbc=False)
        molecule.center(vacuum=VACUUM)
        molecule.info['parent_indices'] = [int(k) for k in members]
        molecule.info['parent_formula'] = formula
        molecules.append(molecule)
    return molecules


def _unwrap(
    root: int, positions: np.ndarray, j: np.ndarray, bond_vectors: np.ndarray, starts: np.ndarray
) -> np.ndarray | None:
    """Return unwrapped positions for the component of ``root`` (other rows undefined), or ``None`` if periodic."""
    unwrapped = np.full_like(positions, np.nan)
    unwrapped[root] = positions[root]
    queue = deque([root])
    visited = [root]
    while queue:
        k = queue.popleft()
        for bond in range(starts[k], starts[k + 1]):
            other = j[bond]
            if np.isnan(unwrapped[other, 0]):
                unwrapped[other] = unwrapped[k] + bond_vectors[bond]
                queue.append(other)
                visited.append(other)
    # Every bond, not only those of the walk, must be reproduced; otherwise some ring of bonds closes only through
    # a lattice translation, i.e. the component is infinite.
    for k in visited:
        bonds = slice(starts[k], starts[k + 1])
        mismatch = unwrapped[j[bonds]] - unwrapped[k] - bond_vectors[bonds]
        if mismatch.size and np.abs(mismatch).max() > _UNWRAP_TOLERANCE:
            return None
    return unwrapped


def is_neutral(molecule: Atoms, *, mult: float = CUTOFF_MULT) -> bool:
    """Return whether ``molecule`` looks like a neutral, closed-shell molecule.

    The test asks whether a Lewis structure with zero net formal charge exists for the bond graph (natural cutoffs
    times ``mult``): every bond gets an order 1, 2 or 3, every atom one of the (valence, formal charge) states of
    :data:`VALENCE_STATES` whose valence equals the sum of its bond orders, and the formal charges must add up to
    zero. The states are the usual octet ones plus the common hypervalent ones of P, S, halogens and Xe; each
    leaves an even number of lone electrons, so formal charges add up to the real net charge and the structure is
    closed-shell. Zwitterions (amino acids), nitro groups and N-oxides pass; ammonium, carboxylate, sulfate,
    isolated halide or metal ions and radicals do not. The search is a small integer program solved with
    ``scipy.optimize.milp``.

    For molecules with an element outside :data:`VALENCE_STATES` (transition metals, lanthanides, ...) the bond
    graph says too little, and the fallback is an even total electron count (necessary for a neutral closed-shell
    molecule, not sufficient).

    :param molecule: the molecule; its own pbc is honoured, normally none.
    :param mult: the factor on the natural cutoffs.
    :return: ``True`` if judged neutral.
    :raises ValueError: if the molecule has no atoms.
    """
    from scipy.optimize import Bounds, LinearConstraint, milp

    if len(molecule) == 0:
        raise ValueError('an empty structure is no molecule')
    symbols = molecule.get_chemical_symbols()
    if any(symbol not in VALENCE_STATES for symbol in symbols):
        return int(molecule.numbers.sum()) % 2 == 0

    i, j, shifts = _bonds(molecule, mult)
    # One column per bond: keep one direction of each pair (for a bond to an own image, the positive shift).
    keep = (i < j) | ((i == j) & _positive_shift(shifts))
    i, j = i[keep], j[keep]
    n_atoms, n_bonds = len(molecule), len(i)

    # Variables: the extra order (0..2) of each bond, then one binary per (atom, state).
    state_atoms, state_valences, state_charges = [], [], []
    for atom, symbol in enumerate(symbols):
        for valence, charge in VALENCE_STATES[symbol]:
            state_atoms.append(atom)
            state_valences.append(valence)
            state_charges.append(charge)
    state_atoms = np.array(state_atoms)
    n_states = len(state_atoms)

    incidence = np.zeros((n_atoms, n_bonds))
    np.add.at(incidence, (i, np.arange(n_bonds)), 1.0)
    np.add.at(incidence, (j, np.arange(n_bonds)), 1.0)
    degree = incidence.sum(axis=1)
    choose = np.zeros((n_atoms, n_states))
    choose[state_atoms, np.arange(n_states)] = 1.0

    # sum of bond orders = degree + extra orders = valence of the chosen state
    valence_rows = np.hstack([incidence, -choose * np.array(state_valences)])
    one_state_rows = np.hstack([np.zeros((n_atoms, n_bonds)), choose])
    charge_row = np.concatenate([np.zeros(n_bonds), state_charges])[None, :]
    constraints = [
        LinearConstraint(valence_rows, -degree, -degree),
        LinearConstraint(one_state_rows, 1.0, 1.0),
        LinearConstraint(charge_row, 0.0, 0.0),
    ]
    upper = np.concatenate([np.full(n_bonds, 2.0), np.ones(n_states)])
    result = milp(
        np.zeros(n_bonds + n_states),
        integrality=np.ones(n_bonds + n_states),
        bounds=Bounds(np.zeros(n_bonds + n_states), upper),
        constraints=constraints,
    )
    return bool(result.status == 0)


def _positive_shift(shifts: np.ndarray) -> np.ndarray:
    """Return, per row, whether the first non-zero component of the shift is positive."""
    positive = np.zeros(len(shifts), dtype=bool)
    decided = np.zeros(len(shifts), dtype=bool)
    for axis in range(3):
        component = shifts[:, axis]
        positive |= ~decided & (component > 0)
        decided |= component != 0
    return positive


def _same_molecule(first: Atoms, second: Atoms, tolerance: float) -> bool:
    """Return whether two molecules have the same formula and the same sorted interatomic distances."""
    from scipy.spatial.distance import pdist

    if len(first) != len(second) or sorted(first.numbers) != sorted(second.numbers):
        return False
    if len(first) == 1:
        return True
    difference = np.sort(pdist(first.positions)) - np.sort(pdist(second.positions))
    return bool(np.abs(difference).max() <= tolerance)


def molecular_fragments(
    atoms: Atoms,
    rng: np.random.Generator | None = None,
    *,
    unique: bool = True,
    mult: float = CUTOFF_MULT,
    distance_tolerance: float = DISTANCE_TOLERANCE,
) -> list[Atoms]:
    """Return the neutral molecules of the molecular crystal ``atoms``, optionally without repeats.

    The molecules are those of :func:`split_molecules` for which :func:`is_neutral` holds, in the same order. With
    ``unique``, a molecule with the same formula and the same sorted interatomic distances (within
    ``distance_tolerance`` Å) as an earlier one is dropped, and the kept one records in ``info['copies']`` how many
    molecules of the crystal it stands for.

    :param atoms: the molecular crystal.
    :param rng: accepted so that every generator has the same calling convention; the result is deterministic and
        no number is drawn.
    :param unique: whether to drop repeated molecules.
    :param mult: the factor on the natural cutoffs (bonds and neutrality).
    :param distance_tolerance: the largest difference of sorted interatomic distances, in Å, for two molecules to
        count as the same.
    :return: the neutral molecules, each non-periodic with ``info['parent_indices']``.
    """
    del rng  # fragmenting involves no random choice
    fragments: list[Atoms] = []
    for molecule in split_molecules(atoms, mult=mult):
        if not is_neutral(molecule, mult=mult):
            continue
        if unique:
            twin = next((kept for kept in fragments if _same_molecule(kept, molecule, distance_tolerance)), None)
            if twin is not None:
                twin.info['copies'] += 1
                continue
            molecule.info['copies'] = 1
        fragments.append(molecule)
    return fragments
