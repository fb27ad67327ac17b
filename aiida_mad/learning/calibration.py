"""Calibration of committee sigmas against the true errors of new DFT labels (pure: numpy only).

After an iteration's selected candidates are labelled, the committee's prediction error on them is known: for
structure ``i``, ``error_energy[i] = |E_mean[i] - E_DFT[i]|`` per atom and ``error_force[i]`` the largest, over its
atoms, of ``|F_mean - F_DFT|``. A committee is *calibrated* when its sigma predicts that error. Following the way
AiiDA-TrainsPot fits the committee deviation against the RMSE, :func:`calibrate` fits the line through the origin
``error = slope × sigma`` by least squares (``slope = Σ σ e / Σ σ²``) for energies and forces separately, and reports
the Spearman rank correlation and the RMSE of the errors.

Rescaling thresholds. If the true error is ``slope × sigma``, a structure whose expected error exceeds the error
target ``T`` has ``sigma > T / slope``. With the current thresholds taken as the error targets, the next thresholds
are ``threshold / slope`` (:func:`rescaled_thresholds`), the slope clipped to ``[1/10, 10]`` so that a tiny or
degenerate sample cannot move a threshold by more than a factor of 10 in one iteration. An underconfident committee
(errors larger than its sigmas, ``slope > 1``) thus gets lower thresholds and selects more.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

__all__ = ('MAX_SLOPE_FACTOR', 'calibrate', 'fit_slope', 'rescaled_thresholds', 'spearman')

#: The slope used for rescaling is clipped to [1 / MAX_SLOPE_FACTOR, MAX_SLOPE_FACTOR].
MAX_SLOPE_FACTOR = 10.0


def _pair(sigma, error, name: str) -> tuple[np.ndarray, np.ndarray]:
    sigma = np.asarray(sigma, dtype=float)
    error = np.asarray(error, dtype=float)
    if sigma.ndim != 1 or sigma.shape != error.shape:
        raise ValueError(
            f'{name}: sigma and error must be 1-D arrays of one length, got {sigma.shape} and {error.shape}'
        )
    bad = ~np.isfinite(sigma) | ~np.isfinite(error) | (sigma < 0) | (error < 0)
    if np.any(bad):
        index = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f'{name}: structure {index} has sigma {sigma[index]} and error {error[index]}: need finite >= 0'
        )
    return sigma, error


def fit_slope(sigma, error) -> float:
    """Return the least-squares slope of ``error = slope × sigma`` through the origin (NaN if every sigma is 0)."""
    sigma, error = _pair(sigma, error, 'fit')
    denominator = float(np.dot(sigma, sigma))
    return float(np.dot(sigma, error) / denominator) if denominator > 0 else math.nan


def _ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind='stable')
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values), dtype=float)
    # average ranks over ties
    unique, inverse = np.unique(values, return_inverse=True)
    if len(unique) < len(values):
        sums = np.zeros(len(unique))
        np.add.at(sums, inverse, ranks)
        ranks = (sums / np.bincount(inverse))[inverse]
    return ranks


def spearman(a, b) -> float:
    """Return the Spearman rank correlation of ``a`` and ``b`` (NaN for fewer than 2 values or a constant array)."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if len(a) < 2:
        return math.nan
    ra, rb = _ranks(a), _ranks(b)
    if np.std(ra) == 0 or np.std(rb) == 0:
        return math.nan
    return float(np.corrcoef(ra, rb)[0, 1])


def calibrate(sigmas: Mapping[str, np.ndarray], errors: Mapping[str, np.ndarray]) -> dict:
    """Return the calibration of each quantity present in both ``sigmas`` and ``errors`` (``energy``, ``force``, ...).

    For each: ``n``, ``slope`` (:func:`fit_slope`), ``spearman``, ``rmse`` of the errors, ``mean_sigma``,
    ``mean_error`` and ``fraction_within`` (errors at most the sigma). Units are those given (eV/atom, eV/Å).
    NaN values (a stress a structure does not have) are dropped pair-wise first.
    """
    report = {}
    for name in sorted(set(sigmas) & set(errors)):
        sigma = np.asarray(sigmas[name], dtype=float)
        error = np.asarray(errors[name], dtype=float)
        keep = np.isfinite(sigma) & np.isfinite(error)
        sigma, error = _pair(sigma[keep], error[keep], name)
        if len(sigma) == 0:
            continue
        report[name] = {
            'n': len(sigma),
            'slope': fit_slope(sigma, error),
            'spearman': spearman(sigma, error),
            'rmse': float(np.sqrt(np.mean(error**2))),
            'mean_sigma': float(sigma.mean()),
            'mean_error': float(error.mean()),
            'fraction_within': float(np.mean(error <= sigma)),
        }
    return report


def rescaled_thresholds(thresholds: Mapping[str, float], report: Mapping[str, Mapping]) -> dict[str, float]:
    """Return ``thresholds`` divided by the clipped calibration slope of each quantity with one (others unchanged)."""
    result = dict(thresholds)
    for name, entry in report.items():
        slope = entry.get('slope', math.nan)
        if name in result and math.isfinite(slope) and slope > 0:
            slope = min(max(slope, 1 / MAX_SLOPE_FACTOR), MAX_SLOPE_FACTOR)
            result[name] = float(result[name]) / slope
    return result
