"""Tests for :mod:`aiida_mad.dos` against a slow reference and real pw.x eigenvalues (see fixtures/dos/README.md)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from aiida_mad import dos as dos_module
from aiida_mad.dos import (
    EMAX_MARGIN,
    GRID_POINTS,
    GRID_SPACING,
    GRID_START,
    SIGMA,
    band_edges,
    compute_dos,
    energy_grid,
    integrated_dos,
)

FIXTURES = Path(__file__).parent / 'fixtures' / 'dos'

# Tolerances against the reference. The fast code drops Gaussian tails beyond CUTOFF_SIGMAS (10) standard
# deviations, which changes any value by less than 1e-21 states/eV, and it sums terms in a different order, which
# costs a few ulps of the largest partial sums (observed up to ~2e-15 states/eV where the DOS is ~2.5 states/eV).
# So: 1e-8 relative plus a 1e-13 states/eV absolute floor for points deep in the tails where the DOS is ~0.
RTOL = 1e-8
ATOL = 1e-13


def reference_dos(eigenvalues, weights, fermi_energy, grid, sigma=SIGMA, spin_degeneracy=2.0):
    """Direct formula, one Gaussian per (k, n) over the whole grid: slow but obviously correct."""
    eigenvalues = np.asarray(eigenvalues, dtype=float)
    weights = np.asarray(weights, dtype=float) / np.sum(weights)
    grid = np.asarray(grid, dtype=float)
    result = np.zeros_like(grid)
    norm = 1.0 / (sigma * math.sqrt(2.0 * math.pi))
    for k in range(eigenvalues.shape[0]):
        for n in range(eigenvalues.shape[1]):
            centre = eigenvalues[k, n] - fermi_energy
            result += spin_degeneracy * weights[k] * norm * np.exp(-0.5 * ((grid - centre) / sigma) ** 2)
    return result


def reference_count(eigenvalues, weights, fermi_energy, upto, sigma=SIGMA, spin_degeneracy=2.0):
    """Exact integral of the broadened DOS from -inf to ``upto``: a sum of Gaussian cumulative distributions."""
    weights = np.asarray(weights, dtype=float) / np.sum(weights)
    total = 0.0
    for k in range(len(eigenvalues)):
        for eigenvalue in eigenvalues[k]:
            z = (upto - (eigenvalue - fermi_energy)) / (sigma * math.sqrt(2.0))
            total += spin_degeneracy * weights[k] * 0.5 * (1.0 + math.erf(z))
    return total


def load(name):
    data = json.loads((FIXTURES / f'{name}.json').read_text(encoding='utf-8'))
    return np.array(data['eigenvalues']), np.array(data['weights']), data['fermi_energy'], data


@pytest.fixture(scope='module')
def silicon():
    return load('si')


@pytest.fixture(scope='module')
def aluminium():
    return load('al')


# --- grid -------------------------------------------------------------------------------------------------------


def test_energy_grid_defaults():
    grid = energy_grid()
    assert grid.shape == (GRID_POINTS,) == (4606,)
    assert grid[0] == GRID_START == -149.65
    np.testing.assert_allclose(np.diff(grid), GRID_SPACING, rtol=0, atol=1e-12)
    assert GRID_SPACING == 0.05
    assert grid[-1] == pytest.approx(80.60, abs=1e-9)
    # The Fermi energy (0) is a grid point, to floating error.
    assert np.min(np.abs(grid)) < 1e-9
    assert abs(grid[2993]) < 1e-9


@pytest.mark.parametrize(
    ('kwargs', 'message'),
    [({'spacing': 0.0}, 'spacing'), ({'points': 0}, 'points'), ({'start': float('nan')}, 'start')],
)
def test_energy_grid_invalid(kwargs, message):
    with pytest.raises(ValueError, match=message):
        energy_grid(**kwargs)


# --- agreement with the reference -----------------------------------------------------------------------------


@pytest.mark.parametrize('name', ['si', 'al'])
def test_matches_reference_on_real_eigenvalues(name):
    eigenvalues, weights, fermi, _ = load(name)
    result = compute_dos(eigenvalues, weights, fermi)
    expected = reference_dos(eigenvalues, weights, fermi, result.energies)
    valid = result.mask
    assert valid.sum() > 3000
    np.testing.assert_allclose(result.dos[valid], expected[valid], rtol=RTOL, atol=ATOL)

    unmasked = compute_dos(eigenvalues, weights, fermi, mask=False)
    np.testing.assert_allclose(unmasked.dos, expected, rtol=RTOL, atol=ATOL)


def test_matches_reference_on_custom_grid_and_small_blocks(monkeypatch):
    """Irregular grid, unsorted eigenvalues and tiny evaluation blocks exercise the block bookkeeping."""
    rng = np.random.default_rng(42)
    eigenvalues = rng.uniform(-8.0, 12.0, size=(7, 5))
    eigenvalues[0, :] = 3.0  # degenerate states
    weights = rng.uniform(0.0, 1.0, size=7)
    weights[3] = 0.0
    grid = np.sort(rng.uniform(-15.0, 10.0, size=700))
    expected = reference_dos(eigenvalues, weights, 1.5, grid, sigma=0.2, spin_degeneracy=1.0)
    for block in (1, 7, 100, 32_768):
        monkeypatch.setattr(dos_module, '_PAIRS_PER_BLOCK', block)
        result = compute_dos(eigenvalues, weights, 1.5, grid=grid, sigma=0.2, spin_degeneracy=1.0, mask=False)
        np.testing.assert_allclose(result.dos, expected, rtol=RTOL, atol=ATOL)


def test_states_far_from_grid_give_zero():
    result = compute_dos([[1000.0]], [1.0], 0.0, mask=False)
    assert np.all(result.dos == 0.0)


# --- E_max mask -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize('name', ['si', 'al'])
def test_emax_mask(name):
    eigenvalues, weights, fermi, _ = load(name)
    result = compute_dos(eigenvalues, weights, fermi)
    expected_emax = np.min(np.max(eigenvalues, axis=1)) - fermi - EMAX_MARGIN
    assert result.e_max == pytest.approx(expected_emax, abs=1e-12)
    assert EMAX_MARGIN == 0.9

    above = result.energies > result.e_max
    assert above.any()
    assert (~above).any()
    assert np.all(np.isnan(result.dos[above]))
    assert np.all(np.isfinite(result.dos[~above]))
    np.testing.assert_array_equal(result.mask, ~above)
    np.testing.assert_array_equal(result.mask, np.isfinite(result.dos))

    unmasked = compute_dos(eigenvalues, weights, fermi, mask=False)
    assert np.all(np.isfinite(unmasked.dos))
    assert unmasked.e_max == result.e_max
    np.testing.assert_array_equal(unmasked.mask, result.mask)
    np.testing.assert_array_equal(unmasked.dos[result.mask], result.dos[result.mask])


def test_emax_uses_highest_band_even_if_unsorted():
    result = compute_dos([[5.0, 1.0], [0.0, 4.0]], [1.0, 1.0], 2.0)
    assert result.e_max == pytest.approx(4.0 - 2.0 - EMAX_MARGIN)


# --- integrals and sum rules -----------------------------------------------------------------------------------


def test_silicon_integrates_to_valence_electrons(silicon):
    """Integral up to E_F is 8 for insulating Si, up to the Gaussian tails that cross E_F.

    E_F from pw.x sits in the gap, 0.125 eV above the valence band maximum and 0.465 eV below the conduction band
    minimum (gap 0.59 eV, about 2 sigma). With sigma = 0.3 eV some valence weight spills above E_F and a little
    conduction weight below it; the exact erf expression gives 7.9924. So: within 5e-4 of the exact broadened
    count (trapezoid error of the 0.05 eV grid) and within 0.02 of 8 (the tails).
    """
    eigenvalues, weights, fermi, data = silicon
    assert data['n_electrons'] == 8.0
    result = compute_dos(eigenvalues, weights, fermi)
    count = integrated_dos(result.energies, result.dos, 0.0)
    assert count == pytest.approx(reference_count(eigenvalues, weights, fermi, 0.0), abs=5e-4)
    assert count == pytest.approx(8.0, abs=0.02)


@pytest.mark.parametrize('name', ['si', 'al'])
def test_integral_matches_exact_count(name):
    eigenvalues, weights, fermi, _ = load(name)
    result = compute_dos(eigenvalues, weights, fermi)
    for upto in (-5.0, -0.37, 0.0, 2.01):
        exact = reference_count(eigenvalues, weights, fermi, upto)
        assert integrated_dos(result.energies, result.dos, upto) == pytest.approx(exact, abs=5e-4)


@pytest.mark.parametrize('name', ['si', 'al'])
def test_total_states_is_twice_the_bands(name):
    eigenvalues, weights, fermi, _ = load(name)
    result = compute_dos(eigenvalues, weights, fermi, mask=False)
    total = integrated_dos(result.energies, result.dos, result.energies[-1])
    assert total == pytest.approx(2.0 * eigenvalues.shape[1], rel=1e-10)


def test_integrated_dos_edges():
    energies = np.linspace(0.0, 10.0, 11)
    dos = np.full(11, 2.0)
    assert integrated_dos(energies, dos, -1.0) == 0.0
    assert integrated_dos(energies, dos, 0.0) == 0.0
    assert integrated_dos(energies, dos, 3.25) == pytest.approx(6.5)
    assert integrated_dos(energies, dos, 10.0) == pytest.approx(20.0)
    with pytest.raises(ValueError, match='above the last grid point'):
        integrated_dos(energies, dos, 10.5)
    dos[6:] = np.nan
    assert integrated_dos(energies, dos, 5.0) == pytest.approx(10.0)
    with pytest.raises(ValueError, match='masked'):
        integrated_dos(energies, dos, 5.5)
    with pytest.raises(ValueError, match='shape'):
        integrated_dos(energies, dos[:-1], 1.0)


# --- invariances ------------------------------------------------------------------------------------------------


def test_fermi_alignment(silicon):
    eigenvalues, weights, fermi, _ = silicon
    result = compute_dos(eigenvalues, weights, fermi)
    shifted = compute_dos(eigenvalues + 3.217, weights, fermi + 3.217)
    assert shifted.fermi_energy == pytest.approx(fermi + 3.217)
    assert shifted.e_max == pytest.approx(result.e_max, abs=1e-12)
    np.testing.assert_array_equal(shifted.mask, result.mask)
    np.testing.assert_allclose(shifted.dos[result.mask], result.dos[result.mask], rtol=1e-10, atol=ATOL)


def test_weight_scaling(silicon):
    eigenvalues, weights, fermi, _ = silicon
    assert np.sum(weights) == pytest.approx(2.0)  # pw.x convention for nspin = 1
    result = compute_dos(eigenvalues, weights, fermi)
    for factor in (0.5, 1.0 / np.sum(weights), 1234.5):
        scaled = compute_dos(eigenvalues, weights * factor, fermi)
        np.testing.assert_allclose(scaled.dos[result.mask], result.dos[result.mask], rtol=1e-12, atol=ATOL)


def test_spin_degeneracy_and_sigma(silicon):
    eigenvalues, weights, fermi, _ = silicon
    default = compute_dos(eigenvalues, weights, fermi)
    single = compute_dos(eigenvalues, weights, fermi, spin_degeneracy=1.0)
    np.testing.assert_allclose(single.dos[default.mask], 0.5 * default.dos[default.mask], rtol=1e-14)
    assert default.sigma == SIGMA == 0.3
    wide = compute_dos(eigenvalues, weights, fermi, sigma=0.5, mask=False)
    assert wide.sigma == 0.5
    np.testing.assert_allclose(wide.dos, reference_dos(eigenvalues, weights, fermi, wide.energies, 0.5), atol=ATOL)


def test_result_is_frozen(silicon):
    eigenvalues, weights, fermi, _ = silicon
    result = compute_dos(eigenvalues, weights, fermi)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.e_max = 0.0
    with pytest.raises(ValueError, match='read-only'):
        result.dos[0] = 1.0


# --- bad input --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ('eigenvalues', 'weights', 'fermi', 'kwargs', 'message'),
    [
        ([[0.0, 1.0]], [-1.0], 0.0, {}, 'negative'),
        ([[0.0, 1.0], [0.5, 2.0]], [0.0, 0.0], 0.0, {}, 'all zero'),
        ([[0.0, 1.0], [0.5, 2.0]], [1.0], 0.0, {}, r'weights have shape'),
        ([0.0, 1.0], [1.0], 0.0, {}, r'eigenvalues must have shape'),
        (np.zeros((0, 3)), [], 0.0, {}, r'eigenvalues must have shape'),
        ([[0.0, float('nan')]], [1.0], 0.0, {}, 'eigenvalues contain non-finite'),
        ([[0.0, 1.0]], [float('inf')], 0.0, {}, 'weights contain non-finite'),
        ([[0.0, 1.0]], [1.0], float('nan'), {}, 'fermi_energy'),
        ([[0.0, 1.0]], [1.0], 0.0, {'sigma': 0.0}, 'sigma'),
        ([[0.0, 1.0]], [1.0], 0.0, {'spin_degeneracy': -2.0}, 'spin_degeneracy'),
        ([[0.0, 1.0]], [1.0], 0.0, {'grid': np.array([0.0, 1.0, 1.0])}, 'strictly increasing'),
        ([[0.0, 1.0]], [1.0], 0.0, {'grid': np.array([[0.0, 1.0]])}, 'grid'),
    ],
)
def test_bad_input_raises(eigenvalues, weights, fermi, kwargs, message):
    with pytest.raises(ValueError, match=message):
        compute_dos(eigenvalues, weights, fermi, **kwargs)


# --- band edges -------------------------------------------------------------------------------------------------


def test_band_edges_silicon(silicon):
    eigenvalues, weights, fermi, data = silicon
    edges = band_edges(eigenvalues, fermi)
    assert edges['is_metal'] is False
    assert 0.4 < edges['gap'] < 0.7
    assert edges['homo'] < fermi < edges['lumo']
    # Four occupied bands (8 electrons, spin-degenerate): HOMO is the top of band 4, LUMO the bottom of band 5.
    assert edges['homo'] == np.max(eigenvalues[:, :4])
    assert edges['lumo'] == np.min(eigenvalues[:, 4:])
    assert edges['gap'] == pytest.approx(edges['lumo'] - edges['homo'])
    assert band_edges(eigenvalues, fermi, weights=weights, occupations=data['occupations']) == edges


def test_band_edges_aluminium(aluminium):
    eigenvalues, weights, fermi, data = aluminium
    for kwargs in ({}, {'weights': weights}, {'occupations': data['occupations']}):
        edges = band_edges(eigenvalues, fermi, **kwargs)
        assert edges['is_metal'] is True
        assert edges['gap'] == 0.0
        assert edges['homo'] < fermi < edges['lumo']


def test_band_edges_rules():
    eigenvalues = np.array([[-1.0, 2.0], [0.5, 3.0]])
    # Band 1 is below E_F at k0 and above at k1: it crosses E_F.
    assert band_edges(eigenvalues, 0.0)['is_metal'] is True
    # Ignoring k1 through a zero weight leaves an insulator.
    edges = band_edges(eigenvalues, 0.0, weights=[1.0, 0.0])
    assert edges == {'homo': -1.0, 'lumo': 2.0, 'gap': 3.0, 'is_metal': False}
    # Unsorted bands are sorted per k-point first.
    assert band_edges(eigenvalues[:, ::-1], 0.0, weights=[1.0, 0.0]) == edges
    # Occupations in the 0..2 convention; the occupations travel with their eigenvalues when sorting.
    occupations = np.array([[2.0, 0.0], [2.0, 0.0]])
    edges = band_edges(eigenvalues, 0.0, occupations=occupations)
    assert edges == {'homo': 0.5, 'lumo': 2.0, 'gap': 1.5, 'is_metal': False}
    assert band_edges(eigenvalues[:, ::-1], 0.0, occupations=occupations[:, ::-1]) == edges
    # No unoccupied state computed: gap unknown.
    assert band_edges([[-2.0, -1.0]], 0.0) == {'homo': -1.0, 'lumo': None, 'gap': None, 'is_metal': False}
    with pytest.raises(ValueError, match='occupations have shape'):
        band_edges(eigenvalues, 0.0, occupations=[[1.0, 0.0]])
    with pytest.raises(ValueError, match='negative'):
        band_edges(eigenvalues, 0.0, weights=[1.0, -1.0])


# --- the fixture itself -----------------------------------------------------------------------------------------


@pytest.mark.parametrize('name', ['si', 'al'])
def test_fixture_matches_pw_output(name):
    """The JSON is what extract_fixture.py makes from the stored XML, and agrees with the pw.x stdout."""
    spec = importlib.util.spec_from_file_location('extract_fixture', FIXTURES / 'extract_fixture.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    data = json.loads((FIXTURES / f'{name}.json').read_text(encoding='utf-8'))
    assert module.extract(str(FIXTURES / f'{name}.data-file-schema.xml.gz')) == data

    stdout = (FIXTURES / f'{name}.aiida.out').read_text(encoding='utf-8')
    assert 'JOB DONE' in stdout
    printed_fermi = float(re.search(r'the Fermi energy is\s+(\S+) ev', stdout).group(1))
    assert data['fermi_energy'] == pytest.approx(printed_fermi, abs=2e-4)
    printed_nks = int(re.search(r'number of k points=\s*(\d+)', stdout).group(1))
    assert len(data['weights']) == len(data['eigenvalues']) == printed_nks
    assert {len(row) for row in data['eigenvalues']} == {data['nbnd']}
