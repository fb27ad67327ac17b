"""Committee statistics: the means and spreads of several models' predictions on a batch of structures.

A batch of ``n`` structures with different numbers of atoms is held as one ragged batch, the layout the dataset
index uses: per-atom arrays of all structures are concatenated, and ``offsets`` (length ``n + 1``, starting at 0,
non-decreasing) says that the atoms of structure ``i`` are rows ``offsets[i]:offsets[i + 1]``. Every structure has at
least one atom. A committee of ``M`` models gives:

- ``energy``: ``(M, n)`` energies per atom in eV/atom (or total energies in eV with ``energy_per_atom=False``);
- ``forces``: ``(M, n_atoms, 3)`` in eV/Å;
- ``stress`` (optional): ``(M, n, 6)`` in Voigt order ``(xx, yy, zz, yz, xz, xy)`` or ``(M, n, 3, 3)``, in eV/Å³.

The committee sigmas (MP-ALOE's σ_e, σ_f, σ_s; the paper says "standard deviation of the ensemble's predicted
energies, forces, or stresses" and no more, so the force and stress reductions below are this project's choice):

- ``sigma_energy``: the standard deviation over members of the energy per atom (eV/atom);
- ``sigma_force``: the largest, over the structure's atoms, of the atom's force deviation
  ``sqrt(σ_x² + σ_y² + σ_z²)``, where σ_c is the standard deviation over members of force component ``c``; this is
  the root mean square over members of the distance between a member's force vector and the committee's mean
  force vector, the "max force deviation" of DP-GEN-style model deviation, and does not depend on the orientation
  of the axes (eV/Å);
- ``sigma_stress``: the largest, over the 6 independent stress components, of the standard deviation over members
  (eV/Å³); NaN for a structure whose stress some member did not predict (NaN), so that no stress criterion applies.

Standard deviations are population ones (``ddof=0``: divide by ``M``), as ensemble and committee uncertainties are
usually written (mean over members of the squared deviation from the committee mean); ``ddof=1`` gives the sample
standard deviation, larger by ``sqrt(M / (M - 1))``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ('CommitteeStatistics', 'committee_statistics', 'stress_voigt', 'validate_offsets')

#: Indices of the Voigt components ``(xx, yy, zz, yz, xz, xy)`` in a 3x3 tensor.
VOIGT_INDICES = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))


@dataclasses.dataclass(frozen=True)
class CommitteeStatistics:
    """Committee means and sigmas of a ragged batch of ``n`` structures with ``n_atoms`` atoms in total."""

    offsets: np.ndarray
    """``(n + 1,)`` atom offsets of the structures."""
    n_members: int
    """Number of committee members."""
    energy: np.ndarray
    """``(n,)`` committee mean of the energy per atom, eV/atom."""
    forces: np.ndarray
    """``(n_atoms, 3)`` committee mean forces, eV/Å."""
    stress: np.ndarray | None
    """``(n, 6)`` committee mean stress in Voigt order, eV/Å³, or ``None`` when no stress was given."""
    sigma_energy: np.ndarray
    """``(n,)`` standard deviation over members of the energy per atom, eV/atom."""
    sigma_force_atom: np.ndarray
    """``(n_atoms,)`` force deviation of every atom, ``sqrt(σ_x² + σ_y² + σ_z²)``, eV/Å."""
    sigma_force: np.ndarray
    """``(n,)`` largest force deviation over the structure's atoms, eV/Å."""
    sigma_stress: np.ndarray
    """``(n,)`` largest standard deviation over the 6 stress components, eV/Å³; NaN where there is no stress."""

    @property
    def n_structures(self) -> int:
        """Return the number of structures of the batch."""
        return len(self.offsets) - 1


def validate_offsets(offsets, n_atoms: int | None = None, *, name: str = 'offsets') -> np.ndarray:
    """Return ``offsets`` as an ``int64`` array after checking that they describe non-empty structures.

    :param offsets: ``(n + 1,)`` integers, ``offsets[0] == 0``, strictly increasing (every structure has an atom).
    :param n_atoms: if given, the number of rows of the per-atom arrays, which must equal ``offsets[-1]``.
    :param name: the name used in error messages.
    :raises ValueError: naming the first offending structure.
    """
    array = np.asarray(offsets)
    if array.ndim != 1 or len(array) < 2:
        raise ValueError(
            f'{name} must be a 1-D array of at least 2 integers (n + 1 for n structures), got {array.shape}'
        )
    integral = np.issubdtype(array.dtype, np.integer) or (
        np.issubdtype(array.dtype, np.floating) and np.array_equal(array, np.round(array))
    )
    if not integral:
        raise ValueError(f'{name} must hold integers, got dtype {array.dtype}')
    array = array.astype(np.int64)
    if array[0] != 0:
        raise ValueError(f'{name}[0] must be 0, got {array[0]}')
    counts = np.diff(array)
    empty = np.flatnonzero(counts <= 0)
    if len(empty):
        raise ValueError(
            f'{name} must be strictly increasing (every structure needs at least one atom): structure {empty[0]} '
            f'has {counts[empty[0]]} atoms'
        )
    if n_atoms is not None and array[-1] != n_atoms:
        raise ValueError(f'{name}[-1] is {array[-1]} but the per-atom arrays have {n_atoms} rows')
    return array


def stress_voigt(stress) -> np.ndarray:
    """Return stresses of shape ``(..., 6)`` (Voigt) from ``(..., 6)`` or ``(..., 3, 3)``; 3x3 ones are symmetrised."""
    array = np.asarray(stress, dtype=float)
    if array.shape[-2:] == (3, 3):
        return np.stack([(array[..., i, j] + array[..., j, i]) / 2 for i, j in VOIGT_INDICES], axis=-1)
    if array.shape[-1] == 6:
        return array
    raise ValueError(f'stress must have a last dimension of 6 (Voigt) or last dimensions (3, 3), got {array.shape}')


def _first_bad(mask: np.ndarray) -> tuple[int, ...]:
    """Return the index of the first ``True`` of ``mask`` as a tuple."""
    return tuple(int(i) for i in np.argwhere(mask)[0])


def committee_statistics(
    energy, forces, offsets, stress=None, *, energy_per_atom: bool = True, ddof: int = 0
) -> CommitteeStatistics:
    """Return the committee means and sigmas of ``M >= 2`` models' predictions on a ragged batch.

    :param energy: ``(M, n)`` energies per atom (eV/atom), or total energies (eV) if ``energy_per_atom`` is false.
    :param forces: ``(M, n_atoms, 3)`` forces in eV/Å, the structures' atoms concatenated.
    :param offsets: ``(n + 1,)`` atom offsets, see the module docstring.
    :param stress: ``(M, n, 6)`` Voigt or ``(M, n, 3, 3)`` stresses in eV/Å³; NaN marks a stress not predicted.
    :param energy_per_atom: whether ``energy`` is already per atom.
    :param ddof: 0 for population standard deviations (the default), 1 for sample ones.
    :raises ValueError: for a committee of fewer than 2 members, inconsistent shapes, or a non-finite energy or force
        (naming the member, the structure and, for forces, the atom).
    """
    energy = np.asarray(energy, dtype=float)
    forces = np.asarray(forces, dtype=float)
    if energy.ndim != 2:
        raise ValueError(f'energy must have shape (members, structures), got {energy.shape}')
    n_members, n_structures = energy.shape
    if n_members < 2:
        raise ValueError(f'a committee needs at least 2 members, got {n_members}')
    if ddof not in (0, 1):
        raise ValueError(f'ddof must be 0 (population) or 1 (sample), got {ddof!r}')
    if forces.ndim != 3 or forces.shape[0] != n_members or forces.shape[2] != 3:
        raise ValueError(f'forces must have shape ({n_members}, atoms, 3) for {n_members} members, got {forces.shape}')
    offsets = validate_offsets(offsets, forces.shape[1])
    if len(offsets) - 1 != n_structures:
        raise ValueError(f'energy has {n_structures} structures but offsets describe {len(offsets) - 1}')
    if not np.all(np.isfinite(energy)):
        member, structure = _first_bad(~np.isfinite(energy))
        value = energy[member, structure]
        raise ValueError(f'energy of structure {structure} by member {member} is not finite: {value}')
    if not np.all(np.isfinite(forces)):
        member, atom, _ = _first_bad(~np.isfinite(forces))
        structure = int(np.searchsorted(offsets, atom, side='right')) - 1
        raise ValueError(
            f'force on atom {atom - offsets[structure]} of structure {structure} by member {member} is not finite'
        )

    counts = np.diff(offsets)
    if not energy_per_atom:
        energy = energy / counts
    energy_mean = energy.mean(axis=0)
    sigma_energy = energy.std(axis=0, ddof=ddof)

    forces_mean = forces.mean(axis=0)
    deviation = forces - forces_mean
    squared = np.einsum('maj,maj->a', deviation, deviation)
    sigma_force_atom = np.sqrt(squared / (n_members - ddof))
    sigma_force = np.maximum.reduceat(sigma_force_atom, offsets[:-1])

    if stress is None:
        stress_mean = None
        sigma_stress = np.full(n_structures, np.nan)
    else:
        stress = stress_voigt(stress)
        if stress.shape != (n_members, n_structures, 6):
            raise ValueError(
                f'stress must have shape ({n_members}, {n_structures}, 6) or ({n_members}, {n_structures}, 3, 3), '
                f'got {np.shape(stress)}'
            )
        if np.any(np.isinf(stress)):
            member, structure, _ = _first_bad(np.isinf(stress))
            raise ValueError(f'stress of structure {structure} by member {member} is infinite')
        stress_mean = stress.mean(axis=0)
        # NaN anywhere in a structure's stresses propagates to its sigma: no stress criterion for that structure.
        sigma_stress = stress.std(axis=0, ddof=ddof).max(axis=1)

    return CommitteeStatistics(
        offsets=offsets,
        n_members=n_members,
        energy=energy_mean,
        forces=forces_mean,
        stress=stress_mean,
        sigma_energy=sigma_energy,
        sigma_force_atom=sigma_force_atom,
        sigma_force=sigma_force,
        sigma_stress=sigma_stress,
    )
