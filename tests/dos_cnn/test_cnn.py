"""Tests for the bandgap and Fermi-level CNN (PET-MAD-DOS section 4.5) on tiny synthetic DOS."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from aiida_mad.dos import compute_dos, energy_grid
from aiida_mad.learning.dos_cnn import (
    DosCnn,
    TrainingSettings,
    cnn_inputs,
    flattened_length,
    load_cnn,
    predict_cnn,
    save_cnn,
    train_cnn,
)

GRID = energy_grid(-25.0, 0.05, 1024)


def synthetic(n, seed):
    """``n`` DOS of one valence and one conduction band around gaps of 0 to 4 eV; returns inputs, gaps, natoms."""
    rng = np.random.default_rng(seed)
    gaps = rng.uniform(0.0, 4.0, n)
    natoms = rng.integers(1, 4, n)
    dos = []
    for gap, atoms in zip(gaps, natoms, strict=True):
        valence = -gap / 2 - rng.uniform(0.0, 5.0, size=(3, 4 * atoms))
        conduction = gap / 2 + rng.uniform(0.0, 5.0, size=(3, 4 * atoms))
        dos.append(compute_dos(np.hstack([valence, conduction]), np.ones(3), 0.0, grid=GRID, mask=False).dos)
    return cnn_inputs(np.array(dos), natoms), gaps, natoms


def test_the_network_has_the_papers_layers():
    model = DosCnn(4606)
    convolutions = [layer for layer in model.convolutions if isinstance(layer, torch.nn.Conv1d)]
    assert [layer.kernel_size[0] for layer in convolutions] == [32, 16, 8, 8]
    assert {layer.out_channels for layer in convolutions} == {64}
    assert [layer.kernel_size for layer in model.convolutions if isinstance(layer, torch.nn.MaxPool1d)] == [4] * 4
    dense = [layer for layer in model.dense if isinstance(layer, torch.nn.Linear)]
    assert [layer.out_features for layer in dense] == [1024, 1024, 1]
    assert dense[0].in_features == 64 * flattened_length(4606) == 64 * 15
    assert sum(isinstance(layer, torch.nn.SiLU) for layer in model.modules()) == 6
    with pytest.raises(ValueError, match='too short'):
        DosCnn(100)


def test_the_warm_up_is_linear_from_zero():
    settings = TrainingSettings()
    assert (settings.learning_rate, settings.warmup_epochs, settings.patience) == (1e-4, 100, 50)
    assert settings.learning_rate_at(0) == pytest.approx(1e-6)
    assert settings.learning_rate_at(49) == pytest.approx(5e-5)
    assert settings.learning_rate_at(99) == settings.learning_rate_at(500) == pytest.approx(1e-4)
    with pytest.raises(ValueError, match='patience'):
        TrainingSettings(patience=0)


def test_the_cnn_trains_deterministically_and_the_gap_is_never_negative(tmp_path):
    x, gaps, _ = synthetic(16, seed=1)
    val_x, val_gaps, _ = synthetic(4, seed=2)
    settings = TrainingSettings(warmup_epochs=2, max_epochs=6, learning_rate=3e-4, batch_size=4, seed=5)
    trained = train_cnn(x, gaps, val_x, val_gaps, target='gap', settings=settings)
    assert trained.epochs == 6
    assert trained.history[-1]['train_mse'] < 0.5 * trained.history[0]['train_mse']
    assert [row['learning_rate'] for row in trained.history[:3]] == pytest.approx([1.5e-4, 3e-4, 3e-4])
    again = train_cnn(x, gaps, val_x, val_gaps, target='gap', settings=settings)
    assert again.history == trained.history

    predicted = predict_cnn(trained.model, val_x, target='gap')
    assert predicted.shape == (4,)
    # A ReLU at inference: with the output bias moved down, the raw outputs are negative and the gaps zero.
    lowered = copy.deepcopy(trained.model)
    with torch.no_grad():
        lowered.dense[-1].bias -= predicted.max() + 1.0
    raw = predict_cnn(lowered, val_x, target='fermi_level')
    assert (raw < 0).all()
    np.testing.assert_allclose(raw, predicted - predicted.max() - 1.0, atol=1e-4)
    np.testing.assert_array_equal(predict_cnn(lowered, val_x, target='gap'), np.zeros(4))

    save_cnn(trained, tmp_path / 'gap.pt', extra={'grid': [-25.0, 0.05, 1024]})
    model, record = load_cnn(tmp_path / 'gap.pt')
    assert record['target'] == 'gap' and record['n_points'] == 1024 and record['extra']['grid'][2] == 1024
    np.testing.assert_array_equal(predict_cnn(model, val_x, target='gap'), predicted)


def test_early_stopping_keeps_the_best_validation_epoch():
    x, gaps, _ = synthetic(8, seed=3)
    # Validation targets far below anything the training pulls towards: the validation error only grows.
    settings = TrainingSettings(warmup_epochs=0, patience=3, max_epochs=50, learning_rate=1e-3, batch_size=8)
    trained = train_cnn(x, gaps, x[:2], gaps[:2] - 100.0, target='fermi_level', settings=settings)
    assert trained.stopped_early
    assert trained.epochs == trained.best_epoch + 3 + 1 < 50
    best = trained.history[trained.best_epoch]['val_mse']
    assert best == min(row['val_mse'] for row in trained.history)


def test_bad_input_is_refused():
    x, gaps, natoms = synthetic(2, seed=4)
    with pytest.raises(ValueError, match='target must be one of'):
        train_cnn(x, gaps, target='homo')
    with pytest.raises(ValueError, match='finite'):
        train_cnn(x, np.array([np.nan, 1.0]), target='gap')
    with pytest.raises(ValueError, match='natoms'):
        cnn_inputs(x, natoms[:1])
