"""Parallelization policy for pw.x: MPI ranks and k-point pools from the irreducible k-points and the cores.

k-point pools (``-nk``) are pw.x's most efficient level of parallelism: each pool works on its own k-points and
needs almost no communication. The policy uses as many pools as the ranks allow, limited by the number of
irreducible k-points (a pool without a k-point idles), and keeps the number of ranks a multiple of the pools so
that every pool gets the same share of plane-wave parallelism. On 2 cores, ``-nk 2`` halves the MAD Si run.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Parallelization:
    """MPI ranks and k-point pools for one pw.x run, and the numbers they were chosen from."""

    mpiprocs: int
    npool: int
    irreducible_kpoints: int
    cores: int

    @property
    def flags(self) -> dict[str, int]:
        """Return the ``parallelization`` input of aiida-quantumespresso (pw.x ``-npool``; empty for one pool)."""
        return {'npool': self.npool} if self.npool > 1 else {}

    def as_dict(self) -> dict:
        """Return the policy's choice as a plain dictionary (to record with the results)."""
        return dataclasses.asdict(self)


def count_irreducible_kpoints(atoms, mesh, *, symprec: float = 1e-5) -> int:
    """Return the number of irreducible k-points of a Γ-centred ``mesh`` for ``atoms`` (spglib, time reversal on).

    pw.x finds the same symmetry in most cases; the count only steers the number of pools, so a small difference
    costs some efficiency, never correctness.
    """
    import spglib

    mesh = [int(n) for n in mesh]
    if np.prod(mesh) == 1:
        return 1
    cell = (np.asarray(atoms.cell), atoms.get_scaled_positions(wrap=True), atoms.numbers)
    mapping, _ = spglib.get_ir_reciprocal_mesh(mesh, cell, is_shift=[0, 0, 0], symprec=symprec)
    return len(np.unique(mapping))


def choose_parallelization(irreducible_kpoints: int, cores: int) -> Parallelization:
    """Return the ranks and pools for a run on ``cores`` cores with ``irreducible_kpoints`` k-points.

    All cores get a rank; the pools are the largest divisor of the ranks that does not exceed the k-points.
    """
    if irreducible_kpoints < 1:
        raise ValueError(f'the number of irreducible k-points must be positive, got {irreducible_kpoints}')
    if cores < 1:
        raise ValueError(f'the number of cores must be positive, got {cores}')
    npool = max(d for d in range(1, cores + 1) if cores % d == 0 and d <= irreducible_kpoints)
    return Parallelization(mpiprocs=cores, npool=npool, irreducible_kpoints=irreducible_kpoints, cores=cores)
