"""Load a trained model file and run it on batches of structures (pure: torch and the model's package, no AiiDA).

Two kinds of model files are known:

* ``metatomic``: an exported metatrain model (``model.pt``, a TorchScript ``AtomisticModel``), run in batches by the
  metatomic ASE calculator's ``compute_energy`` on lists of structures (one forward pass per batch);
* ``mace``: a MACE model (``<name>.model``, a ``torch.save`` pickle of the module, or its ``_compiled.model``
  TorchScript), run in batches through MACE's own data pipeline (``AtomicData`` graphs collated by its
  ``DataLoader``), as ``mace_eval_configs`` does.

Every batch holds structures of one periodicity: stresses are only defined (and metatomic only computes them) for
structures periodic in all three directions; other structures get a NaN stress.

A metatomic model trained on the density of states (output ``mtt::dos``, the ``pet-mad-dos`` and ``tiny-dos``
protocols) predicts one DOS per structure on the grid of its training data (:data:`Model.targets` holds ``'dos'``);
a model can predict the energy, the DOS or both.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Sequence

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols

__all__ = (
    'DOS_OUTPUT',
    'KINDS',
    'TARGETS',
    'Model',
    'ModelFileError',
    'Prediction',
    'load_model',
    'model_elements',
    'model_kind',
)

KINDS = ('metatomic', 'mace')
#: What a model can predict: ``energy`` (with forces and stress) and ``dos`` (the density of states).
TARGETS = ('energy', 'dos')
#: The metatomic output of a DOS model (metatrain's ``mtt::dos`` target).
DOS_OUTPUT = 'mtt::dos'


class ModelFileError(ValueError):
    """A file that is not a model this package can run."""


@dataclasses.dataclass
class Prediction:
    """One model's predictions on ``n`` structures with ``n_atoms`` atoms in total (in the order given).

    The fields of a target the model does not predict are ``None``.
    """

    energy: np.ndarray | None = None
    """``(n,)`` total energies, eV."""
    forces: np.ndarray | None = None
    """``(n_atoms, 3)`` forces of all structures concatenated, eV/Å."""
    stress: np.ndarray | None = None
    """``(n, 3, 3)`` stresses (ASE sign), eV/Å³; NaN for a structure not periodic in all directions."""
    dos: np.ndarray | None = None
    """``(n, G)`` density of states per structure, states/eV, on the model's grid of ``G`` points."""


def _is_mace_module(model) -> bool:
    return hasattr(model, 'atomic_numbers') and hasattr(model, 'r_max')


def _load_any(path: pathlib.Path):
    """Return ``(kind, loaded object)`` of a model file; raise :class:`ModelFileError` naming the file otherwise."""
    import torch

    path = pathlib.Path(path)
    if not path.is_file():
        raise ModelFileError(f'{path}: no such model file')
    problems = []
    try:
        from metatomic.torch import load_atomistic_model

        return 'metatomic', load_atomistic_model(str(path))
    except Exception as exception:
        first = str(exception).splitlines()[0] if str(exception) else type(exception).__name__
        problems.append(f'not a metatomic model ({first[:100]})')
    try:
        model = torch.load(path, map_location='cpu', weights_only=False)
    except Exception as exception:
        try:
            model = torch.jit.load(str(path), map_location='cpu')
        except Exception:
            problems.append(f'not a torch model ({type(exception).__name__})')
            model = None
    if model is not None:
        if _is_mace_module(model):
            return 'mace', model
        problems.append(f'a torch file holding a {type(model).__name__}, not a MACE model')
    raise ModelFileError(f'{path.name} is not a model aiida-mad can run: {"; ".join(problems)}')


def model_kind(path) -> str:
    """Return ``'metatomic'`` or ``'mace'`` for a model file.

    :raises ModelFileError: naming the file if it is neither.
    """
    return _load_any(path)[0]


def _elements(kind: str, model) -> list[str]:
    if kind == 'metatomic':
        numbers = model.capabilities().atomic_types
    else:
        numbers = [int(number) for number in model.atomic_numbers]
    return [chemical_symbols[int(number)] for number in sorted(numbers)]


def _targets(kind: str, model) -> tuple[str, ...]:
    if kind == 'mace':
        return ('energy',)
    outputs = model.capabilities().outputs
    return tuple(target for target, key in zip(TARGETS, ('energy', DOS_OUTPUT), strict=True) if key in outputs)


def model_elements(path) -> list[str]:
    """Return the chemical symbols of the elements a model file was trained on, by atomic number."""
    kind, model = _load_any(path)
    return _elements(kind, model)


def _bare(frame: Atoms) -> Atoms:
    """Return the structure alone: numbers, positions, cell and periodicity (no reference values)."""
    return Atoms(numbers=frame.numbers, positions=frame.positions, cell=frame.cell, pbc=frame.pbc)


def _batches(frames: Sequence[Atoms], batch_size: int):
    """Yield lists of indices of at most ``batch_size`` structures of one periodicity (fully periodic or not)."""
    if batch_size < 1:
        raise ValueError(f'batch_size must be at least 1, got {batch_size}')
    for periodic in (True, False):
        indices = [index for index, frame in enumerate(frames) if bool(np.all(frame.pbc)) is periodic]
        for start in range(0, len(indices), batch_size):
            yield periodic, indices[start : start + batch_size]


class Model:
    """A loaded model file that predicts energies, forces and stresses of batches of structures."""

    def __init__(self, path, *, device: str = 'cpu', dtype: str | None = None):
        """Load the model file at ``path`` onto ``device`` (``cpu`` or ``cuda``).

        :param dtype: ``None`` (the model's own precision), ``'float32'`` or ``'float64'``. A MACE model is converted
            (float32 about halves the cost of the model's dense layers on a CPU, at a relative change of the
            energies of about 1e-7); a metatomic model runs in the precision it was exported with (another one is
            refused).
        :raises ModelFileError: for a file that is not a model, or a model that predicts neither energy nor DOS.
        :raises ValueError: for an unknown ``dtype``, or one a metatomic model was not exported with.
        """
        import torch

        if dtype not in (None, 'float32', 'float64'):
            raise ValueError(f"dtype must be None, 'float32' or 'float64', got {dtype!r}")
        self.path = pathlib.Path(path)
        self.device = device
        self.kind, model = _load_any(self.path)
        self.elements = _elements(self.kind, model)
        self.targets = _targets(self.kind, model)
        """What the model predicts: ``('energy',)``, ``('dos',)`` or both."""
        if not self.targets:
            raise ModelFileError(f'{self.path.name} predicts neither the energy nor the DOS ({DOS_OUTPUT})')
        if self.kind == 'mace':
            if dtype is not None:
                model = model.to(getattr(torch, dtype))
            model = model.to(device)
            for parameter in model.parameters():
                parameter.requires_grad = False
            self.dtype = next(model.parameters()).dtype if list(model.parameters()) else torch.float64
            self._model = model
        else:
            own = model.capabilities().dtype
            if dtype is not None and dtype != own:
                raise ValueError(f'{self.path.name} is a metatomic model exported in {own}; it cannot run in {dtype}')
            self.dtype = getattr(torch, own)
            self._model = None  # the metatomic calculator loads the file itself

    def ase_calculator(self):
        """Return the model's own ASE calculator (one structure at a time)."""
        if self.kind == 'mace':
            import torch
            from mace.calculators import MACECalculator

            dtype = 'float64' if self.dtype == torch.float64 else 'float32'
            return MACECalculator(model_paths=str(self.path), device=self.device, default_dtype=dtype)
        from metatomic_ase import MetatomicCalculator

        return MetatomicCalculator(str(self.path), device=self.device)

    def predict(self, frames: Sequence[Atoms], batch_size: int = 16) -> Prediction:
        """Return the predictions on ``frames`` (batches of at most ``batch_size`` structures) of every target."""
        if batch_size < 1:
            raise ValueError(f'batch_size must be at least 1, got {batch_size}')
        frames = [_bare(frame) for frame in frames]
        prediction = self._predict_energy(frames, batch_size) if 'energy' in self.targets else Prediction()
        if 'dos' in self.targets:
            prediction.dos = self._predict_dos(frames, batch_size)
        return prediction

    def _predict_dos(self, frames: list[Atoms], batch_size: int) -> np.ndarray:
        from metatomic.torch import ModelOutput

        calculator = self._calculator()
        blocks = []
        for start in range(0, len(frames), batch_size):
            batch = frames[start : start + batch_size]
            block = calculator.run_model(batch, {DOS_OUTPUT: ModelOutput(per_atom=False)})[DOS_OUTPUT].block()
            values = block.values.detach().cpu().double().numpy()
            order = np.argsort(block.samples.column('system').cpu().numpy())
            blocks.append(values[order].reshape(len(batch), -1))
        return np.concatenate(blocks)

    def _predict_energy(self, frames: list[Atoms], batch_size: int) -> Prediction:
        natoms = np.array([len(frame) for frame in frames], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(natoms)])
        energy = np.full(len(frames), np.nan)
        forces = np.full((int(offsets[-1]), 3), np.nan)
        stress = np.full((len(frames), 3, 3), np.nan)
        run = self._run_mace if self.kind == 'mace' else self._run_metatomic
        for periodic, indices in _batches(frames, batch_size):
            batch_energy, batch_forces, batch_stress = run([frames[index] for index in indices], periodic)
            for position, index in enumerate(indices):
                energy[index] = batch_energy[position]
                forces[offsets[index] : offsets[index + 1]] = batch_forces[position]
                if periodic:
                    stress[index] = batch_stress[position]
        return Prediction(energy=energy, forces=forces, stress=stress)

    def _calculator(self):
        if not hasattr(self, '_metatomic'):
            from metatomic_ase import MetatomicCalculator

            self._metatomic = MetatomicCalculator(str(self.path), device=self.device)
        return self._metatomic

    def _run_metatomic(self, frames: list[Atoms], periodic: bool):
        results = self._calculator().compute_energy(frames, compute_forces_and_stresses=True)
        energies = np.atleast_1d(np.asarray(results['energy'], dtype=float))
        forces = [np.asarray(value, dtype=float) for value in results['forces']]
        stress = [np.asarray(value, dtype=float).reshape(3, 3) for value in results['stress']] if periodic else None
        return energies, forces, stress

    def _run_mace(self, frames: list[Atoms], periodic: bool):
        import torch
        from mace import data
        from mace.tools import torch_geometric, utils

        previous = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)
        try:
            model = self._model
            z_table = utils.AtomicNumberTable([int(z) for z in model.atomic_numbers])
            heads = getattr(model, 'heads', None)
            graphs = [
                data.AtomicData.from_config(
                    data.config_from_atoms(frame), z_table=z_table, cutoff=float(model.r_max), heads=heads
                )
                for frame in frames
            ]
            loader = torch_geometric.dataloader.DataLoader(
                graphs, batch_size=len(graphs), shuffle=False, drop_last=False
            )
            batch = next(iter(loader)).to(self.device)
            output = model(batch.to_dict(), compute_stress=periodic, training=False)
            energies = output['energy'].detach().cpu().double().numpy()
            pointers = batch.ptr.cpu().numpy()
            all_forces = output['forces'].detach().cpu().double().numpy()
            forces = [all_forces[pointers[i] : pointers[i + 1]] for i in range(len(frames))]
            stress = output['stress'].detach().cpu().double().numpy() if periodic else None
        finally:
            torch.set_default_dtype(previous)
        return energies, forces, stress


def load_model(path, *, device: str = 'cpu', dtype: str | None = None) -> Model:
    """Return the :class:`Model` of a model file (see :class:`Model` for ``dtype``)."""
    return Model(path, device=device, dtype=dtype)
