"""Denoising of a predicted DOS and the Fermi level of a prediction (PET-MAD-DOS section 4.6; pure numpy/scipy).

A DOS model's raw prediction has small non-zero values inside gaps and an integral that misses the electron count,
so neither the Fermi level nor the gap can be read off it. :func:`denoise_dos` cleans it in three steps:

1. smooth with a Gaussian filter of standard deviation ``sigma`` (0.3 eV): ``DOS_G = DOS_pred * g``;
2. multiply by the modified sigmoid ``f(x) = 1 / (1 + exp(-b (x - a)))`` of the smoothed DOS per atom (``a = 0.1``
   states/eV/atom, ``b = 100``; ``a`` is the inflection point, ``b`` the slope): ``DOS_thresh = DOS_pred f(DOS_G)``,
   which switches off the noise wherever the smoothed DOS is well below ``a``;
3. rescale so that the integrated DOS up to the Fermi level predicted by the Fermi-level CNN equals the number of
   valence electrons: ``DOS_clean = DOS_thresh n_elec / int_{-inf}^{E_F^CNN} DOS_thresh``.

The paper's DOS is per atom, the project's per cell (:mod:`aiida_mad.dos`): the sigmoid is applied to the smoothed
DOS divided by the number of atoms, so its threshold means the same; the DOS itself stays per cell.

:func:`aligned_fermi_level` gives the target of the Fermi-level CNN: a DOS model trained with a shift-agnostic loss
predicts on an energy axis whose zero need not be the Fermi level; the DFT Fermi level (zero of the DFT DOS) falls,
on the prediction's axis, at the rigid shift that best aligns the DFT DOS with the prediction.
"""

from __future__ import annotations

import math

import numpy as np

from aiida_mad.dos import SIGMA, integrated_dos

__all__ = ('SIGMOID_A', 'SIGMOID_B', 'aligned_fermi_level', 'denoise_dos', 'gaussian_filter_dos', 'sigmoid_threshold')

SIGMOID_A = 0.1
"""Inflection point of the threshold sigmoid (states/eV per atom)."""

SIGMOID_B = 100.0
"""Slope of the threshold sigmoid (per states/eV per atom)."""


def _uniform_spacing(energies: np.ndarray) -> float:
    e = np.asarray(energies, dtype=np.float64)
    if e.ndim != 1 or e.size < 2 or not np.all(np.isfinite(e)):
        raise ValueError(f'energies must be a finite 1D grid of at least 2 points, got shape {e.shape}')
    steps = np.diff(e)
    spacing = float(steps.mean())
    if spacing <= 0 or not np.allclose(steps, spacing, rtol=1e-6, atol=1e-9):
        raise ValueError('energies must be a uniform, strictly increasing grid')
    return spacing


def _finite_dos(dos, energies: np.ndarray, what: str) -> np.ndarray:
    d = np.asarray(dos, dtype=np.float64)
    if d.shape != energies.shape:
        raise ValueError(f'{what} has shape {d.shape}, expected {energies.shape} like the energies')
    if not np.all(np.isfinite(d)):
        raise ValueError(f'{what} has non-finite values (a prediction has no masked points)')
    return d


def gaussian_filter_dos(energies, dos, *, sigma: float = SIGMA) -> np.ndarray:
    """Return the DOS convolved with a normalised Gaussian of standard deviation ``sigma`` (eV).

    Zero is assumed outside the grid (no states beyond it).

    :raises ValueError: on a non-uniform grid, mismatched shapes, non-finite values or a bad ``sigma``.
    """
    from scipy.ndimage import gaussian_filter1d

    e = np.asarray(energies, dtype=np.float64)
    spacing = _uniform_spacing(e)
    d = _finite_dos(dos, e, 'dos')
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f'sigma must be a positive finite number, got {sigma!r}')
    return gaussian_filter1d(d, sigma / spacing, mode='constant', cval=0.0, truncate=6.0)


def sigmoid_threshold(values, *, a: float = SIGMOID_A, b: float = SIGMOID_B) -> np.ndarray:
    """Return ``1 / (1 + exp(-b (values - a)))``, the weight of each grid point (0 in gaps, 1 in bands)."""
    from scipy.special import expit

    return expit(b * (np.asarray(values, dtype=np.float64) - a))


def denoise_dos(
    energies,
    dos,
    *,
    n_electrons: float,
    fermi_level: float,
    natoms: int = 1,
    sigma: float = SIGMA,
    a: float = SIGMOID_A,
    b: float = SIGMOID_B,
) -> np.ndarray:
    """Return the denoised DOS: Gaussian-filtered, sigmoid-thresholded, rescaled to ``n_electrons`` at ``fermi_level``.

    :param energies: uniform energy grid of the prediction (eV).
    :param dos: the raw predicted DOS per cell (states/eV), same shape, finite.
    :param n_electrons: number of valence electrons of the structure.
    :param fermi_level: the Fermi level (eV, on the axis of ``energies``), e.g. from the Fermi-level CNN.
    :param natoms: number of atoms: the threshold applies to the smoothed DOS per atom.
    :param sigma: standard deviation of the Gaussian filter (eV).
    :param a: inflection point of the sigmoid (states/eV per atom).
    :param b: slope of the sigmoid.
    :return: the denoised DOS per cell (states/eV); it integrates to ``n_electrons`` up to ``fermi_level``.
    :raises ValueError: on bad input, or if no state is left below ``fermi_level`` after thresholding.
    """
    e = np.asarray(energies, dtype=np.float64)
    raw = _finite_dos(dos, e, 'dos')
    if not (math.isfinite(n_electrons) and n_electrons > 0):
        raise ValueError(f'n_electrons must be a positive number, got {n_electrons!r}')
    if int(natoms) != natoms or natoms < 1:
        raise ValueError(f'natoms must be a positive integer, got {natoms!r}')
    filtered = gaussian_filter_dos(e, raw, sigma=sigma)
    thresholded = raw * sigmoid_threshold(filtered / natoms, a=a, b=b)
    states = integrated_dos(e, thresholded, fermi_level)
    if not states > 0:
        raise ValueError(
            f'no states below the Fermi level {fermi_level} eV after thresholding (integral {states}): cannot rescale '
            f'to {n_electrons} electrons'
        )
    return thresholded * (n_electrons / states)


def aligned_fermi_level(energies, dos, reference_energies, reference_dos, *, max_shift: float = 10.0) -> float:
    """Return where the Fermi level of a reference DOS falls on the energy axis of a predicted DOS.

    The reference (a DFT DOS on energies relative to its Fermi level, NaN at masked points) is shifted rigidly by
    integer multiples of its grid spacing up to ``max_shift`` (eV) either way; the shift ``s`` that minimises the
    mean squared difference ``(dos(E + s) - reference(E))^2`` over the reference's valid points is returned: the
    reference's zero sits at ``s`` on the prediction's axis. Ties go to the smallest ``|s|``. The prediction is
    linearly interpolated and taken as zero outside its grid.

    :raises ValueError: on mismatched shapes, a reference without valid points, or non-finite predictions.
    """
    e = np.asarray(energies, dtype=np.float64)
    d = _finite_dos(dos, e, 'dos')
    reference_e = np.asarray(reference_energies, dtype=np.float64)
    spacing = _uniform_spacing(reference_e)
    reference = np.asarray(reference_dos, dtype=np.float64)
    if reference.shape != reference_e.shape:
        raise ValueError(f'reference_dos has shape {reference.shape}, expected {reference_e.shape}')
    valid = np.isfinite(reference)
    if not valid.any():
        raise ValueError('the reference DOS has no valid (finite) point')
    steps = round(max_shift / spacing)
    shifts = spacing * np.arange(-steps, steps + 1)
    points = reference_e[valid]
    values = reference[valid]
    errors = np.empty(shifts.size)
    # One interpolation per shift keeps memory at one grid, whatever max_shift is.
    for index, shift in enumerate(shifts):
        errors[index] = np.mean((np.interp(points + shift, e, d, left=0.0, right=0.0) - values) ** 2)
    best = np.flatnonzero(errors <= errors.min() * (1 + 1e-12))
    return float(shifts[best[np.argmin(np.abs(shifts[best]))]])
