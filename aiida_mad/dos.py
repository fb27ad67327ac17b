"""Electronic density of states in the PET-MAD-DOS convention (pure numpy, no AiiDA).

The target DOS of a structure is built from the Kohn-Sham eigenvalues of one SCF calculation::

    DOS(E) = s * sum_nk w_k g(E - (eps_nk - E_F)),    sum_k w_k = 1,

where ``s`` is the spin degeneracy (2 for ``nspin = 1``), ``g`` is a normalised Gaussian of standard deviation
``SIGMA`` (0.3 eV) and energies are relative to the Fermi energy printed by Quantum ESPRESSO. The result is per
cell (extensive) in states/eV, on a uniform grid of ``GRID_POINTS`` points spaced ``GRID_SPACING`` apart from
``GRID_START``. Only a finite number of bands is computed, so the DOS is unreliable near and above the lowest
"highest band"; grid points above ``E_max = min_k(max_n eps_nk) - E_F - EMAX_MARGIN`` are set to NaN.

Evaluation is exact point evaluation of the Gaussians (not binning). Terms with ``|E - (eps - E_F)|`` larger than
``CUTOFF_SIGMAS * sigma`` are skipped: each skipped Gaussian is below ``exp(-CUTOFF_SIGMAS**2 / 2)`` (about 2e-22)
of its peak, and because the weights sum to one the total dropped amount at any grid point is below
``s * exp(-50) / (sigma * sqrt(2 pi))``, i.e. under 1e-21 states/eV for the defaults. Everything else equals the
direct formula up to floating-point summation order.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

__all__ = (
    'CUTOFF_SIGMAS',
    'EMAX_MARGIN',
    'GRID_POINTS',
    'GRID_SPACING',
    'GRID_START',
    'SIGMA',
    'DosResult',
    'band_edges',
    'compute_dos',
    'energy_grid',
    'integrated_dos',
)

SIGMA = 0.3
"""Standard deviation of the Gaussian broadening (eV)."""

GRID_SPACING = 0.05
"""Spacing of the default energy grid (eV)."""

GRID_START = -149.65
"""First point of the default energy grid, relative to the Fermi energy (eV)."""

# The PET-MAD-DOS paper quotes "4806 points from -149.65 eV to 80.65 eV", which does not fit a 0.05 eV spacing
# (that range has 4607 points); we follow the project specification: 4606 points, the last one at +80.60 eV.
GRID_POINTS = 4606
"""Number of points of the default energy grid (it then ends at +80.60 eV)."""

EMAX_MARGIN = 0.9
"""Distance (eV, three times ``SIGMA``) kept below the lowest highest-computed band; the DOS above is masked."""

CUTOFF_SIGMAS = 10.0
"""Gaussians are evaluated only within this many standard deviations of their centre (see the module docstring)."""

# Target number of (grid point, eigenvalue) pairs evaluated per block. Each pair costs a few float64/int64
# temporaries (about 50 bytes in all), so blocks of this size stay in the CPU cache; on 165 k x 40 bands this was
# faster than evaluating all pairs at once (blocks of 2 million pairs), and it bounds the memory for any input.
_PAIRS_PER_BLOCK = 32_768


@dataclasses.dataclass(frozen=True, eq=False)
class DosResult:
    """Density of states on an energy grid.

    :param energies: grid energies relative to the Fermi energy (eV), shape ``(npoints,)``.
    :param dos: DOS per cell (states/eV), same shape; NaN above ``e_max`` when masking was requested.
    :param e_max: highest energy (eV, relative to the Fermi energy) at which the DOS is considered reliable.
    :param fermi_energy: absolute Fermi energy the grid is aligned to (eV).
    :param sigma: Gaussian standard deviation used for the broadening (eV).
    """

    energies: np.ndarray
    dos: np.ndarray
    e_max: float
    fermi_energy: float
    sigma: float

    @property
    def mask(self) -> np.ndarray:
        """Boolean array, True at grid points where the DOS is valid (energy not above ``e_max``)."""
        return self.energies <= self.e_max


def energy_grid(start: float = GRID_START, spacing: float = GRID_SPACING, points: int = GRID_POINTS) -> np.ndarray:
    """Return a uniform energy grid.

    Points are computed as ``start + i * spacing`` (not by repeated addition) so that, for the defaults, the point
    at index 2993 is zero (the Fermi energy) to within one rounding error.

    :param start: first energy (eV).
    :param spacing: distance between consecutive points (eV), positive.
    :param points: number of points, positive.
    :return: float64 array of shape ``(points,)``.
    """
    if not (math.isfinite(start) and math.isfinite(spacing)) or spacing <= 0:
        raise ValueError(f'energy grid: start must be finite and spacing positive, got {start!r}, {spacing!r}')
    if int(points) != points or points < 1:
        raise ValueError(f'energy grid: points must be a positive integer, got {points!r}')
    return start + spacing * np.arange(int(points), dtype=np.float64)


def compute_dos(
    eigenvalues,
    weights,
    fermi_energy: float,
    *,
    grid: np.ndarray | None = None,
    sigma: float = SIGMA,
    spin_degeneracy: float = 2.0,
    mask: bool = True,
) -> DosResult:
    """Compute the Gaussian-broadened DOS of one calculation, aligned to its Fermi energy.

    :param eigenvalues: Kohn-Sham eigenvalues (eV, absolute as Quantum ESPRESSO prints them), shape
        ``(nkpoints, nbands)``.
    :param weights: k-point weights, shape ``(nkpoints,)``; any positive scale (Quantum ESPRESSO's sum to 2 for
        ``nspin = 1``), normalised here so that they sum to one.
    :param fermi_energy: Fermi energy (eV, same reference as the eigenvalues).
    :param grid: energies relative to the Fermi energy (eV), strictly increasing; defaults to ``energy_grid()``.
    :param sigma: standard deviation of the Gaussian broadening (eV).
    :param spin_degeneracy: occupancy of each (n, k) state; 2 for spin-unpolarised calculations.
    :param mask: if True, set the DOS to NaN at grid points above ``e_max``.
    :return: a ``DosResult``; its arrays are read-only.
    :raises ValueError: on wrong shapes, non-finite values, negative or all-zero weights, or bad parameters.
    """
    eps, w = _validate_eigenvalues_and_weights(eigenvalues, weights)
    e_f = _finite_scalar(fermi_energy, 'fermi_energy')
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f'sigma must be a positive finite number, got {sigma!r}')
    if not (math.isfinite(spin_degeneracy) and spin_degeneracy > 0):
        raise ValueError(f'spin_degeneracy must be a positive finite number, got {spin_degeneracy!r}')
    energies = energy_grid() if grid is None else _validate_grid(grid)

    # Flatten to one list of (centre, weight) and sort it so that the centres that reach a given grid point form a
    # contiguous slice found with searchsorted.
    centres = (eps - e_f).ravel()
    centre_weights = np.repeat(w, eps.shape[1])
    order = np.argsort(centres, kind='stable')
    centres = centres[order]
    centre_weights = centre_weights[order]

    dos = _gaussian_sum(energies, centres, centre_weights, sigma)
    dos *= spin_degeneracy / (sigma * math.sqrt(2.0 * math.pi))

    # The highest computed band bounds the trustworthy energy range: above its minimum over k, states are missing.
    e_max = float(np.min(np.max(eps, axis=1)) - e_f - EMAX_MARGIN)
    if mask:
        dos[energies > e_max] = np.nan

    energies = energies.copy()
    energies.setflags(write=False)
    dos.setflags(write=False)
    return DosResult(energies=energies, dos=dos, e_max=e_max, fermi_energy=e_f, sigma=float(sigma))


def band_edges(eigenvalues, fermi_energy: float, *, weights=None, occupations=None) -> dict:
    """Return the highest occupied and lowest unoccupied eigenvalues, the gap and whether the system is a metal.

    A state is occupied when its eigenvalue is strictly below the Fermi energy or, if ``occupations`` are given,
    when its occupation exceeds half the full occupation (full occupation is taken as 2 if any occupation is
    above 1.5, else 1, so both 0..1 and 0..2 conventions work). The eigenvalues at each k-point are sorted first.
    The system is a metal if some band index is occupied at some k-points and unoccupied at others (a band
    crosses the Fermi level), or if the lowest unoccupied state is not above the highest occupied one. Metals
    get ``gap = 0.0``.

    :param eigenvalues: eigenvalues (eV), shape ``(nkpoints, nbands)``.
    :param fermi_energy: Fermi energy (eV, same reference as the eigenvalues).
    :param weights: optional k-point weights, shape ``(nkpoints,)``; k-points of zero weight are ignored.
    :param occupations: optional occupations, shape ``(nkpoints, nbands)``, in the same band order as the
        eigenvalues.
    :return: dict with ``homo`` and ``lumo`` (eV, absolute; None if no occupied or no unoccupied state was
        computed), ``gap`` (eV; 0.0 for metals, None if ``homo`` or ``lumo`` is missing) and ``is_metal`` (bool).
    :raises ValueError: on wrong shapes, non-finite values or invalid weights.
    """
    if weights is None:
        eps = _validate_eigenvalues(eigenvalues)
        keep = np.ones(eps.shape[0], dtype=bool)
    else:
        eps, w = _validate_eigenvalues_and_weights(eigenvalues, weights)
        keep = w > 0
    e_f = _finite_scalar(fermi_energy, 'fermi_energy')

    if occupations is None:
        order = None
        eps = np.sort(eps, axis=1)
        occupied = eps < e_f
    else:
        occ = np.asarray(occupations, dtype=np.float64)
        if occ.shape != eps.shape:
            raise ValueError(f'occupations have shape {occ.shape}, expected {eps.shape} like the eigenvalues')
        if not np.all(np.isfinite(occ)):
            raise ValueError('occupations contain non-finite values')
        full = 2.0 if occ.max() > 1.5 else 1.0
        # Sort occupations together with the eigenvalues so that the band index stays meaningful.
        order = np.argsort(eps, axis=1, kind='stable')
        eps = np.take_along_axis(eps, order, axis=1)
        occupied = np.take_along_axis(occ, order, axis=1) > 0.5 * full

    eps = eps[keep]
    occupied = occupied[keep]
    crossing = bool(np.any(occupied.any(axis=0) & ~occupied.all(axis=0)))
    homo = float(eps[occupied].max()) if occupied.any() else None
    lumo = float(eps[~occupied].min()) if (~occupied).any() else None

    is_metal = crossing or (homo is not None and lumo is not None and lumo <= homo)
    if is_metal:
        gap = 0.0
    elif homo is None or lumo is None:
        gap = None
    else:
        gap = lumo - homo
    return {'homo': homo, 'lumo': lumo, 'gap': gap, 'is_metal': is_metal}


def integrated_dos(energies, dos, upto: float) -> float:
    """Integrate the DOS with the trapezoid rule from the first grid point up to an energy.

    The last interval is cut at ``upto`` with the DOS linearly interpolated, so the result is continuous in
    ``upto``. Every DOS value used must be finite: integrating into the masked (NaN) region is an error rather
    than a silent underestimate.

    :param energies: strictly increasing grid energies (eV).
    :param dos: DOS values on the grid (states/eV), same shape.
    :param upto: upper integration limit (eV, same reference as ``energies``).
    :return: the number of states below ``upto`` (0.0 if ``upto`` is at or below the first grid point).
    :raises ValueError: on mismatched shapes, ``upto`` beyond the grid, or NaN values inside the range.
    """
    e = _validate_grid(energies)
    d = np.asarray(dos, dtype=np.float64)
    if d.shape != e.shape:
        raise ValueError(f'dos has shape {d.shape}, expected {e.shape} like the energies')
    upto = _finite_scalar(upto, 'upto')
    if upto <= e[0]:
        return 0.0
    if upto > e[-1]:
        raise ValueError(f'upto = {upto} eV is above the last grid point {e[-1]} eV')

    i = int(np.searchsorted(e, upto, side='right'))  # e[:i] <= upto
    needed = d[: min(i + 1, d.size)] if upto > e[i - 1] else d[:i]
    if not np.all(np.isfinite(needed)):
        raise ValueError(f'the DOS is masked (NaN) or non-finite below upto = {upto} eV; E_max is too low')

    total = float(np.sum(0.5 * (d[1:i] + d[: i - 1]) * np.diff(e[:i])))
    if upto > e[i - 1]:
        frac = (upto - e[i - 1]) / (e[i] - e[i - 1])
        d_upto = d[i - 1] + frac * (d[i] - d[i - 1])
        total += 0.5 * (d[i - 1] + d_upto) * (upto - e[i - 1])
    return total


def _gaussian_sum(energies: np.ndarray, centres: np.ndarray, weights: np.ndarray, sigma: float) -> np.ndarray:
    """Return ``sum_j weights_j exp(-(E - centres_j)^2 / (2 sigma^2))`` at each grid energy (unnormalised).

    Centres must be sorted, so the centres within ``CUTOFF_SIGMAS * sigma`` of a grid point are a contiguous slice
    found with ``searchsorted``. The (grid point, centre) pairs of a block of consecutive grid points are laid out
    flat with ``np.repeat``, evaluated in one ``np.exp`` call and summed back per grid point with ``np.bincount``.
    Blocks hold about ``_PAIRS_PER_BLOCK`` pairs (at most that plus the largest per-point count): small enough to
    stay in cache, which is faster than one huge block, and memory stays bounded for any input size.
    """
    cut = CUTOFF_SIGMAS * sigma
    first = np.searchsorted(centres, energies - cut, side='left')
    counts = np.searchsorted(centres, energies + cut, side='right') - first
    result = np.zeros_like(energies)
    cumulative = np.cumsum(counts)
    if cumulative.size == 0 or cumulative[-1] == 0:
        return result

    # A grid point goes to the block in which its last pair falls; block ids are non-decreasing along the grid.
    block_id = (cumulative - 1) // _PAIRS_PER_BLOCK
    edges = np.concatenate(([0], np.flatnonzero(np.diff(block_id)) + 1, [energies.size]))
    inv_two_var = 0.5 / (sigma * sigma)
    for start, stop in zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True):
        c = counts[start:stop]
        npairs = int(c.sum())
        if npairs == 0:
            continue
        row = np.repeat(np.arange(stop - start), c)
        # Pair p of row r refers to centre first[r] + (p - offset[r]), where offset[r] is where row r starts.
        offsets = np.cumsum(c) - c
        col = np.repeat(first[start:stop] - offsets, c) + np.arange(npairs)
        diff = energies[start:stop][row] - centres[col]
        terms = weights[col] * np.exp(-inv_two_var * diff * diff)
        result[start:stop] = np.bincount(row, weights=terms, minlength=stop - start)
    return result


def _validate_eigenvalues(eigenvalues) -> np.ndarray:
    eps = np.asarray(eigenvalues, dtype=np.float64)
    if eps.ndim != 2 or eps.shape[0] == 0 or eps.shape[1] == 0:
        raise ValueError(f'eigenvalues must have shape (nkpoints, nbands) with both non-zero, got {eps.shape}')
    if not np.all(np.isfinite(eps)):
        raise ValueError('eigenvalues contain non-finite values (NaN or inf)')
    return eps


def _validate_eigenvalues_and_weights(eigenvalues, weights) -> tuple[np.ndarray, np.ndarray]:
    eps = _validate_eigenvalues(eigenvalues)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (eps.shape[0],):
        raise ValueError(f'weights have shape {w.shape}, expected ({eps.shape[0]},): one per k-point')
    if not np.all(np.isfinite(w)):
        raise ValueError('weights contain non-finite values (NaN or inf)')
    if np.any(w < 0):
        raise ValueError('weights contain negative values')
    total = w.sum()
    if total <= 0:
        raise ValueError('weights are all zero')
    return eps, w / total


def _validate_grid(grid) -> np.ndarray:
    e = np.asarray(grid, dtype=np.float64)
    if e.ndim != 1 or e.size == 0:
        raise ValueError(f'energy grid must be a non-empty 1D array, got shape {e.shape}')
    if not np.all(np.isfinite(e)):
        raise ValueError('energy grid contains non-finite values')
    if e.size > 1 and np.any(np.diff(e) <= 0):
        raise ValueError('energy grid must be strictly increasing')
    return e


def _finite_scalar(value, name: str) -> float:
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise ValueError(f'{name} must be a real number, got {value!r}') from None
    if not math.isfinite(result):
        raise ValueError(f'{name} must be finite, got {value!r}')
    return result
