"""Calibration of committee sigmas against true errors (pure)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from aiida_mad.learning.calibration import calibrate, fit_slope, rescaled_thresholds, spearman


def test_slope_of_a_proportional_error():
    """Errors exactly twice the sigmas give slope 2, rank correlation 1 and halved thresholds."""
    sigma = np.array([0.01, 0.05, 0.2, 0.4])
    report = calibrate({'energy': sigma, 'force': sigma}, {'energy': 2 * sigma, 'force': 0.5 * sigma})
    assert report['energy']['slope'] == pytest.approx(2.0)
    assert report['force']['slope'] == pytest.approx(0.5)
    assert report['energy']['spearman'] == pytest.approx(1.0)
    assert report['energy']['fraction_within'] == 0.0
    assert report['force']['fraction_within'] == 1.0
    assert report['energy']['n'] == 4
    thresholds = rescaled_thresholds({'energy': 0.1, 'force': 0.1, 'stress': 0.1}, report)
    assert thresholds == pytest.approx({'energy': 0.05, 'force': 0.2, 'stress': 0.1})


def test_rescaling_is_clipped():
    """A slope beyond 10 moves a threshold by a factor of 10 at most."""
    report = {'energy': {'slope': 1000.0}, 'force': {'slope': 1e-6}, 'stress': {'slope': math.nan}}
    thresholds = rescaled_thresholds({'energy': 0.1, 'force': 0.1, 'stress': 0.1}, report)
    assert thresholds == pytest.approx({'energy': 0.01, 'force': 1.0, 'stress': 0.1})


def test_nan_pairs_are_dropped_and_bad_values_refused():
    """NaN sigmas (no stress) are left out; negative errors are refused naming the structure."""
    report = calibrate({'stress': [np.nan, 0.1]}, {'stress': [0.2, 0.3]})
    assert report['stress']['n'] == 1
    with pytest.raises(ValueError, match='structure 1'):
        calibrate({'energy': [0.1, 0.2]}, {'energy': [0.1, -0.2]})
    assert math.isnan(fit_slope([0.0, 0.0], [0.1, 0.2]))


def test_spearman():
    """Rank correlation: +1, -1, NaN for a constant array, ties averaged."""
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    assert spearman([1, 2, 2, 3], [1, 2, 2, 3]) == pytest.approx(1.0)
