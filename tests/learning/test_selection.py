"""Tests for query-by-committee selection: thresholds, the element multiplier and the selection table."""

from __future__ import annotations

import io

import numpy as np
import pytest

from aiida_mad.learning.committee import committee_statistics
from aiida_mad.learning.selection import (
    MULTIPLIER_ELEMENTS,
    SELECTION_DTYPE,
    SelectionThresholds,
    reason_labels,
    select,
    select_candidates,
)

SI, XE, CE, TC, U, OX = 14, 54, 58, 43, 92, 8


def _select(energy, force, stress, numbers=None, thresholds=None):
    """Select candidates of one Si atom each (unless ``numbers`` is given) with the given sigmas."""
    n = len(energy)
    numbers = [[SI]] * n if numbers is None else numbers
    offsets = np.concatenate([[0], np.cumsum([len(atoms) for atoms in numbers])])
    return select(energy, force, stress, np.concatenate(numbers), offsets, thresholds)


def test_each_threshold_alone_triggers_selection():
    table = _select(
        energy=[0.05, 0.15, 0.05, 0.05, 0.15],
        force=[0.05, 0.05, 0.15, 0.05, 0.15],
        stress=[0.05, 0.05, 0.05, 0.15, np.nan],
    )
    assert table.dtype == SELECTION_DTYPE
    assert table['selected'].tolist() == [False, True, True, True, True]
    assert table['energy_exceeded'].tolist() == [False, True, False, False, True]
    assert table['force_exceeded'].tolist() == [False, False, True, False, True]
    assert table['stress_exceeded'].tolist() == [False, False, False, True, False]
    assert reason_labels(table).tolist() == ['', 'energy', 'force', 'stress', 'energy+force']
    assert table['reasons'].tolist() == [0, 1, 2, 4, 3]
    np.testing.assert_allclose(table['threshold_energy'], 0.1)
    np.testing.assert_allclose(table['sigma_force'], [0.05, 0.05, 0.15, 0.05, 0.15])


def test_thresholds_are_configurable_and_strict():
    thresholds = SelectionThresholds(energy=0.2, force=0.3, stress=0.4)
    table = _select([0.2, 0.21, 0.0, 0.0], [0.3, 0.0, 0.31, 0.0], [0.4, 0.0, 0.0, 0.41], thresholds=thresholds)
    # Equal to a threshold is not above it.
    assert table['selected'].tolist() == [False, True, True, True]
    assert reason_labels(table).tolist() == ['', 'energy', 'force', 'stress']


def test_a_nan_stress_never_fires():
    table = _select([0.0, 0.0], [0.0, 0.0], [np.nan, 1.0])
    assert table['selected'].tolist() == [False, True]
    assert np.isnan(table['sigma_stress'][0])


def test_multiplier_applies_per_candidate_with_any_such_element():
    numbers = [[SI, SI], [SI, XE], [CE], [OX, TC, OX], [U, SI], [XE, CE, TC]]
    sigma = [0.15] * len(numbers)
    table = _select(sigma, [0.0] * 6, [0.0] * 6, numbers=numbers)
    assert table['multiplied'].tolist() == [False, True, True, True, True, True]
    # The factor applies once, however many such elements a candidate holds.
    np.testing.assert_allclose(table['threshold_energy'], [0.1, 0.2, 0.2, 0.2, 0.2, 0.2])
    np.testing.assert_allclose(table['threshold_force'], [0.1, 0.2, 0.2, 0.2, 0.2, 0.2])
    np.testing.assert_allclose(table['threshold_stress'], [0.1, 0.2, 0.2, 0.2, 0.2, 0.2])
    assert table['selected'].tolist() == [True, False, False, False, False, False]
    # Above the multiplied threshold, they are selected too.
    assert _select([0.25] * 6, [0.0] * 6, [0.0] * 6, numbers=numbers)['selected'].all()
    # Force and stress thresholds are multiplied as well.
    table = _select([0.0] * 2, [0.15, 0.25], [0.0] * 2, numbers=[[CE], [CE]])
    assert table['selected'].tolist() == [False, True]


def test_multiplier_value_and_elements_are_configurable():
    thresholds = SelectionThresholds(multiplier=5.0, multiplier_elements=['O'])
    table = _select([0.3, 0.3, 0.3], [0.0] * 3, [0.0] * 3, numbers=[[SI], [OX, SI], [XE]], thresholds=thresholds)
    np.testing.assert_allclose(table['threshold_energy'], [0.1, 0.5, 0.1])
    assert table['selected'].tolist() == [True, False, True]
    assert SelectionThresholds(multiplier=1).multiplier == 1.0


def test_default_multiplier_elements():
    assert {'He', 'Ne', 'Ar', 'Kr', 'Xe', 'Rn', 'Tc', 'La', 'Ce', 'Lu', 'Ac', 'U', 'Lr'} <= MULTIPLIER_ELEMENTS
    assert not {'H', 'O', 'Si', 'Fe', 'Mn', 'Ru', 'Hf', 'Ba'} & MULTIPLIER_ELEMENTS


def test_from_committee_statistics_and_table_round_trip():
    energy = [[-1.0, -2.0], [-1.3, -2.0]]
    forces = np.zeros((2, 3, 3))
    stats = committee_statistics(energy, forces, [0, 1, 3])
    table = select_candidates(stats, [SI, CE, OX])
    assert table['selected'].tolist() == [True, False]
    np.testing.assert_allclose(table['sigma_energy'], [0.15, 0.0])
    buffer = io.BytesIO()
    np.save(buffer, table, allow_pickle=False)
    buffer.seek(0)
    loaded = np.load(buffer, allow_pickle=False)
    assert loaded.dtype == SELECTION_DTYPE
    assert loaded.tobytes() == table.tobytes()


@pytest.mark.parametrize('name', ['energy', 'force', 'stress'])
@pytest.mark.parametrize('value', [0, -0.1, np.nan, np.inf, '0.1', True, None])
def test_bad_thresholds(name, value):
    with pytest.raises(ValueError, match=f'^{name} must be'):
        SelectionThresholds(**{name: value})


@pytest.mark.parametrize(('value', 'message'), [(0.5, 'multiplier must be >= 1, got 0.5'), (np.inf, 'finite')])
def test_bad_multiplier(value, message):
    with pytest.raises(ValueError, match=message):
        SelectionThresholds(multiplier=value)


def test_bad_multiplier_elements():
    with pytest.raises(ValueError, match='multiplier_elements: not chemical elements: Qq'):
        SelectionThresholds(multiplier_elements=['Xe', 'Qq'])
    with pytest.raises(ValueError, match='multiplier_elements must be a collection'):
        SelectionThresholds(multiplier_elements='Xe')


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match=r'sigma_force of candidate 1 is -0\.1'):
        _select([0.0, 0.0], [0.0, -0.1], [0.0, 0.0])
    with pytest.raises(ValueError, match='sigma_energy of candidate 0 is nan'):
        _select([np.nan], [0.0], [0.0])
    with pytest.raises(ValueError, match=r'sigma_stress must have shape \(2,\)'):
        _select([0.0, 0.0], [0.0, 0.0], [0.0])
    with pytest.raises(ValueError, match='atom 1 has atomic number 0, which is no element'):
        _select([0.0], [0.0], [0.0], numbers=[[SI, 0]])
    with pytest.raises(ValueError, match='numbers must be a 1-D array of atomic numbers'):
        select([0.0], [0.0], [0.0], [14.0], [0, 1])
    with pytest.raises(ValueError, match=r'offsets\[-1\] is 2 but the per-atom arrays have 1 rows'):
        select([0.0], [0.0], [0.0], [SI], [0, 2])
