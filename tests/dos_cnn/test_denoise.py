"""Tests for the denoising of a predicted DOS and the Fermi level of a prediction (PET-MAD-DOS section 4.6)."""

from __future__ import annotations

import numpy as np
import pytest

from aiida_mad.dos import compute_dos, energy_grid, integrated_dos
from aiida_mad.learning.dos_denoise import (
    aligned_fermi_level,
    denoise_dos,
    gaussian_filter_dos,
    sigmoid_threshold,
)


def _insulator(natoms=2):
    """A DOS of two bands of 4 states each (8 electrons) around a 3 eV gap, with a Fermi level mid-gap."""
    rng = np.random.default_rng(3)
    valence = rng.uniform(-6.0, -1.5, size=(5, 4))
    conduction = rng.uniform(1.5, 6.0, size=(5, 4))
    eigenvalues = np.hstack([valence, conduction, np.full((5, 1), 40.0)])
    return compute_dos(eigenvalues, np.ones(5), 0.0, mask=False)


def test_the_denoiser_conserves_the_electron_count():
    true = _insulator()
    rng = np.random.default_rng(0)
    # A "prediction": 7 % too few states and noise of both signs in the gap.
    noisy = 0.93 * true.dos + 0.02 * np.abs(rng.normal(size=true.dos.size)) * np.sin(true.energies)
    for fermi in (-0.4, 0.0, 0.7):
        clean = denoise_dos(true.energies, noisy, n_electrons=8.0, fermi_level=fermi, natoms=2)
        assert integrated_dos(true.energies, clean, fermi) == pytest.approx(8.0, rel=1e-12)
    # The raw prediction misses electrons; the gap noise is gone after thresholding.
    assert integrated_dos(true.energies, noisy, 0.0) < 7.6
    gap = np.abs(true.energies) < 0.3
    assert np.abs(noisy[gap]).max() > 1e-3
    assert np.abs(clean[gap]).max() < 1e-6


def test_the_gaussian_filter_keeps_the_integral_and_widens_a_peak():
    energies = energy_grid(-10.0, 0.05, 401)
    spike = np.zeros_like(energies)
    spike[200] = 1.0 / 0.05
    filtered = gaussian_filter_dos(energies, spike, sigma=0.3)
    assert np.trapezoid(filtered, energies) == pytest.approx(1.0, rel=1e-9)
    # A unit spike becomes a normalised Gaussian of standard deviation 0.3 eV.
    expected = np.exp(-0.5 * (energies / 0.3) ** 2) / (0.3 * np.sqrt(2 * np.pi))
    np.testing.assert_allclose(filtered, expected, atol=2e-3)


def test_the_sigmoid_has_its_inflection_at_a():
    assert sigmoid_threshold([0.1])[0] == pytest.approx(0.5)
    assert sigmoid_threshold([0.0])[0] < 1e-4
    assert sigmoid_threshold([0.2])[0] > 1 - 1e-4


def test_the_fermi_level_of_a_shifted_prediction_is_the_shift():
    true = compute_dos(np.array([[-8.0, -5.0, -3.0, 2.0, 4.0, 9.0]]), [1.0], 0.0)
    for shift in (-1.35, 0.0, 2.2):
        predicted = np.interp(true.energies - shift, true.energies, np.nan_to_num(true.dos))
        assert aligned_fermi_level(true.energies, predicted, true.energies, true.dos) == pytest.approx(shift)


def test_bad_input_is_refused_by_name():
    true = _insulator()
    with pytest.raises(ValueError, match='n_electrons'):
        denoise_dos(true.energies, true.dos, n_electrons=0.0, fermi_level=0.0)
    with pytest.raises(ValueError, match='non-finite'):
        denoise_dos(true.energies, np.full_like(true.dos, np.nan), n_electrons=8.0, fermi_level=0.0)
    with pytest.raises(ValueError, match='no states below the Fermi level'):
        denoise_dos(true.energies, true.dos, n_electrons=8.0, fermi_level=-140.0)
