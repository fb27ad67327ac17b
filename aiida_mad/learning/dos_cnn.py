"""Bandgap and Fermi-level CNNs on a predicted DOS (PET-MAD-DOS section 4.5; pure torch and numpy, no AiiDA).

The network reads one structure's total DOS (per atom, on a uniform grid) as a 1D signal: four convolution blocks
(64 channels, kernels 32, 16, 8 and 8, each followed by SiLU and a max-pool of 4), then two dense layers of 1024
units with SiLU and a linear output: one scalar, the gap or the Fermi level (eV). Training minimises the mean
squared error with Adam (learning rate 1e-4), a linear warm-up of the learning rate from 0 over the first 100 epochs
(epoch ``i``, counted from 0, runs at ``lr * min(1, (i + 1) / warmup_epochs)``), batches of 16, and stops when the
validation error has not improved for 50 epochs; the weights of the best validation epoch are kept. At inference
a ReLU is applied to the gap, so that no negative gap is predicted.

Inputs and outputs are numpy arrays; :func:`train_cnn` is deterministic for a given ``seed`` on one device.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib

import numpy as np
import torch
from torch import nn

__all__ = (
    'FORMAT',
    'TARGETS',
    'DosCnn',
    'TrainedCnn',
    'TrainingSettings',
    'cnn_inputs',
    'flattened_length',
    'load_cnn',
    'predict_cnn',
    'save_cnn',
    'train_cnn',
)

#: What a CNN predicts: ``gap`` (ReLU at inference) and ``fermi_level``.
TARGETS = ('gap', 'fermi_level')
#: Format tag of the saved file.
FORMAT = 'aiida-mad-dos-cnn-1'
CHANNELS = 64
KERNELS = (32, 16, 8, 8)
POOL = 4
HIDDEN = 1024


def flattened_length(n_points: int, *, kernels=KERNELS, pool: int = POOL) -> int:
    """Return the length of the signal after the convolution blocks (valid convolutions, floor pooling).

    :raises ValueError: if the grid is too short for the blocks.
    """
    length = int(n_points)
    for kernel in kernels:
        length = (length - kernel + 1) // pool
        if length < 1:
            raise ValueError(f'a DOS of {n_points} points is too short for convolution kernels {list(kernels)}')
    return length


class DosCnn(nn.Module):
    """The 1D CNN of PET-MAD-DOS: four convolution blocks and two dense layers, one scalar out."""

    def __init__(self, n_points: int, *, channels: int = CHANNELS, kernels=KERNELS, pool: int = POOL, hidden=HIDDEN):
        super().__init__()
        self.n_points = int(n_points)
        length = flattened_length(n_points, kernels=kernels, pool=pool)
        layers = []
        previous = 1
        for kernel in kernels:
            layers += [nn.Conv1d(previous, channels, kernel), nn.SiLU(), nn.MaxPool1d(pool)]
            previous = channels
        self.convolutions = nn.Sequential(*layers)
        self.dense = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * length, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, 1),
        )

    def forward(self, dos: torch.Tensor) -> torch.Tensor:
        """Return one value per row of ``dos`` (shape ``(batch, n_points)``), before any ReLU."""
        return self.dense(self.convolutions(dos.unsqueeze(1))).squeeze(1)


@dataclasses.dataclass(frozen=True)
class TrainingSettings:
    """How a CNN is trained (defaults: the paper's)."""

    learning_rate: float = 1e-4
    warmup_epochs: int = 100
    patience: int = 50
    max_epochs: int = 1000
    batch_size: int = 16
    seed: int = 0
    device: str = 'cpu'

    def __post_init__(self):
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f'learning_rate must be positive, got {self.learning_rate!r}')
        for name in ('warmup_epochs', 'patience', 'max_epochs', 'batch_size', 'seed'):
            value = getattr(self, name)
            minimum = 1 if name in ('patience', 'max_epochs', 'batch_size') else 0
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise ValueError(f'{name} must be an integer >= {minimum}, got {value!r}')
        if not isinstance(self.device, str) or self.device.split(':')[0] not in ('cpu', 'cuda'):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")

    def learning_rate_at(self, epoch: int) -> float:
        """Return the learning rate of ``epoch`` (counted from 0): linear warm-up from 0, then constant."""
        if self.warmup_epochs == 0:
            return self.learning_rate
        return self.learning_rate * min(1.0, (epoch + 1) / self.warmup_epochs)


@dataclasses.dataclass
class TrainedCnn:
    """A trained CNN and its record.

    :param model: the network with the weights of the best validation epoch, in evaluation mode.
    :param target: ``gap`` or ``fermi_level``.
    :param history: one dict per epoch: ``epoch``, ``learning_rate``, ``train_mse``, ``val_mse``.
    :param best_epoch: the epoch whose weights were kept (counted from 0).
    :param stopped_early: whether the patience ran out before ``max_epochs``.
    :param settings: the training settings.
    """

    model: DosCnn
    target: str
    history: list[dict]
    best_epoch: int
    stopped_early: bool
    settings: TrainingSettings

    @property
    def epochs(self) -> int:
        """Return the number of epochs run."""
        return len(self.history)


def cnn_inputs(dos, natoms) -> np.ndarray:
    """Return the CNN input: the DOS per atom as float32, NaN (masked points) as zero.

    :param dos: DOS per cell, shape ``(n, n_points)``.
    :param natoms: atoms per structure, shape ``(n,)``.
    """
    d = np.asarray(dos, dtype=np.float64)
    n = np.asarray(natoms, dtype=np.float64)
    if d.ndim != 2 or n.shape != (d.shape[0],):
        raise ValueError(f'dos must be (n, n_points) and natoms (n,), got {d.shape} and {n.shape}')
    if np.any(n < 1):
        raise ValueError('natoms must be positive')
    if np.isinf(d).any():
        raise ValueError('dos has infinite values')
    return np.nan_to_num(d / n[:, None], nan=0.0).astype(np.float32)


def _check_target(target: str) -> None:
    if target not in TARGETS:
        raise ValueError(f'target must be one of {TARGETS}, got {target!r}')


def _xy(x, y, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.float32)
    if x.ndim != 2 or y.shape != (x.shape[0],) or x.shape[0] == 0:
        raise ValueError(f'{what}: inputs must be (n, n_points) and targets (n,) with n > 0, got {x.shape}, {y.shape}')
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError(f'{what}: inputs and targets must be finite')
    return torch.from_numpy(x), torch.from_numpy(y)


def _mse(model: DosCnn, x: torch.Tensor, y: torch.Tensor, batch_size: int, device) -> float:
    model.eval()
    total = 0.0
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            prediction = model(x[start : start + batch_size].to(device))
            total += float(((prediction - y[start : start + batch_size].to(device)) ** 2).sum())
    return total / x.shape[0]


def train_cnn(train_x, train_y, val_x=None, val_y=None, *, target: str, settings: TrainingSettings | None = None):
    """Train one CNN on inputs ``(n, n_points)`` (see :func:`cnn_inputs`) against targets ``(n,)`` in eV.

    Without validation data the training error decides the early stopping and the best epoch.

    :return: a :class:`TrainedCnn`.
    :raises ValueError: on bad shapes, non-finite values or an unknown target.
    """
    _check_target(target)
    settings = settings or TrainingSettings()
    x, y = _xy(train_x, train_y, 'training data')
    validation = _xy(val_x, val_y, 'validation data') if val_x is not None and len(val_x) else None
    if validation is not None and validation[0].shape[1] != x.shape[1]:
        raise ValueError(f'validation inputs have {validation[0].shape[1]} points, training inputs {x.shape[1]}')
    device = torch.device(settings.device)
    torch.manual_seed(settings.seed)
    model = DosCnn(x.shape[1]).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate_at(0))
    generator = torch.Generator().manual_seed(settings.seed)
    history = []
    best = (math.inf, -1, None)
    stopped_early = False
    for epoch in range(settings.max_epochs):
        rate = settings.learning_rate_at(epoch)
        for group in optimizer.param_groups:
            group['lr'] = rate
        model.train()
        order = torch.randperm(x.shape[0], generator=generator)
        for start in range(0, x.shape[0], settings.batch_size):
            batch = order[start : start + settings.batch_size]
            optimizer.zero_grad()
            loss = torch.mean((model(x[batch].to(device)) - y[batch].to(device)) ** 2)
            loss.backward()
            optimizer.step()
        train_mse = _mse(model, x, y, settings.batch_size, device)
        val_mse = _mse(model, *validation, settings.batch_size, device) if validation is not None else None
        if not math.isfinite(train_mse):
            raise ValueError(f'{target} CNN: the training error became {train_mse} at epoch {epoch}')
        history.append({'epoch': epoch, 'learning_rate': rate, 'train_mse': train_mse, 'val_mse': val_mse})
        monitored = val_mse if val_mse is not None else train_mse
        if monitored < best[0]:
            best = (monitored, epoch, {key: value.detach().clone() for key, value in model.state_dict().items()})
        elif epoch - best[1] >= settings.patience:
            stopped_early = True
            break
    model.load_state_dict(best[2])
    model.eval()
    return TrainedCnn(model, target, history, best[1], stopped_early, settings)


def predict_cnn(model: DosCnn, inputs, *, target: str, batch_size: int = 64) -> np.ndarray:
    """Return the predictions (eV) of ``model`` for inputs ``(n, n_points)``; the gap goes through a ReLU."""
    _check_target(target)
    x = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32))
    if x.ndim != 2 or x.shape[1] != model.n_points:
        raise ValueError(f'inputs must have shape (n, {model.n_points}), got {tuple(x.shape)}')
    device = next(model.parameters()).device
    model.eval()
    outputs = []
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            prediction = model(x[start : start + batch_size].to(device))
            if target == 'gap':
                prediction = torch.relu(prediction)
            outputs.append(prediction.cpu().numpy().astype(np.float64))
    return np.concatenate(outputs) if outputs else np.zeros(0)


def save_cnn(trained: TrainedCnn, path, *, extra: dict | None = None) -> None:
    """Write the weights, the target, the grid length and the settings to ``path`` (a ``torch.save`` dict)."""
    state = {
        'format': FORMAT,
        'target': trained.target,
        'n_points': trained.model.n_points,
        'best_epoch': trained.best_epoch,
        'epochs': trained.epochs,
        'settings': dataclasses.asdict(trained.settings),
        'extra': dict(extra or {}),
        'state_dict': {key: value.cpu() for key, value in trained.model.state_dict().items()},
    }
    torch.save(state, pathlib.Path(path))


def load_cnn(path, *, device: str = 'cpu') -> tuple[DosCnn, dict]:
    """Return ``(model, record)`` from a file of :func:`save_cnn`; the record has ``target``, ``n_points``, ...

    :raises ValueError: if the file is not a saved DOS CNN.
    """
    try:
        state = torch.load(pathlib.Path(path), map_location=device, weights_only=True)
    except Exception as exception:
        raise ValueError(f'{path} is not a saved DOS CNN: {exception}') from None
    if not isinstance(state, dict) or state.get('format') != FORMAT:
        raise ValueError(f'{path} is not a saved DOS CNN (format {FORMAT})')
    model = DosCnn(state['n_points']).to(device)
    model.load_state_dict(state['state_dict'])
    model.eval()
    return model, {key: value for key, value in state.items() if key != 'state_dict'}
