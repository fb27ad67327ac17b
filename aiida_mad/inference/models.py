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

Descriptors (``Model.predict(..., descriptors=True)``): one vector per structure, the mean over its atoms of the
model's per-atom features, in the batches of the energies:

* ``mace`` (:data:`MACE_DESCRIPTORS`): the invariant (``l = 0``, even) features of the last interaction layer, the
  last columns of the model's ``node_feats`` output (what ``MACECalculator.get_descriptors`` returns for that layer),
  taken from the same forward pass as the energies (no extra cost); a compiled (TorchScript) MACE file does not
  expose its irreps and gives none;
* ``metatomic`` (:data:`METATOMIC_DESCRIPTORS`): metatomic's standard ``features`` output, per atom, when the model
  has it (PET models of metatrain do), in one more forward pass per batch.

A model that gives none is refused with :class:`DescriptorError` naming the file and the reason.
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
    'FEATURES_OUTPUT',
    'KINDS',
    'MACE_DESCRIPTORS',
    'METATOMIC_DESCRIPTORS',
    'TARGETS',
    'DescriptorError',
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
#: The metatomic output of per-atom descriptors (metatomic's standard ``features`` output).
FEATURES_OUTPUT = 'features'
#: Descriptor kind of a MACE model: the invariant node features of its last interaction layer.
MACE_DESCRIPTORS = 'mace_last_layer_invariants'
#: Descriptor kind of a metatomic model: its ``features`` output.
METATOMIC_DESCRIPTORS = 'metatomic_features'


class ModelFileError(ValueError):
    """A file that is not a model this package can run."""


class DescriptorError(ValueError):
    """A model that cannot give per-structure descriptors."""


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
    descriptors: np.ndarray | None = None
    """``(n, d)`` per-structure descriptors (the mean over atoms of the per-atom features), when asked for."""


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


def _mace_descriptor_columns(model) -> tuple[np.ndarray | None, int, str | None]:
    """Return the columns of ``node_feats`` of the last layer's invariant features, the width, or why there are none.

    ``node_feats`` concatenates the outputs of the model's products (one per interaction layer); the last layer's
    columns are the last ``irreps_out.dim`` ones, of which the ``0e`` irreps are the invariants.
    """
    import torch

    if isinstance(model, torch.jit.ScriptModule):
        return None, 0, 'a compiled (TorchScript) MACE model does not expose its irreps; give its .model file'
    products = getattr(model, 'products', None)
    if not products:
        return None, 0, f'a {type(model).__name__} has no interaction products (node features)'
    from e3nn import o3

    layers = [o3.Irreps(str(product.linear.irreps_out)) for product in products]
    width = sum(irreps.dim for irreps in layers)
    start = width - layers[-1].dim
    columns = [
        np.arange(start + part.start, start + part.stop)
        for (_, irrep), part in zip(layers[-1], layers[-1].slices(), strict=True)
        if irrep.l == 0 and irrep.p == 1
    ]
    if not columns:
        return None, width, f'the last layer of the {type(model).__name__} has no invariant features'
    return np.concatenate(columns), width, None


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
            self._columns, self._width, self.descriptors_problem = _mace_descriptor_columns(model)
            self.descriptor_kind = MACE_DESCRIPTORS if self.descriptors_problem is None else None
            self.descriptor_dimension = None if self._columns is None else len(self._columns)
        else:
            own = model.capabilities().dtype
            if dtype is not None and dtype != own:
                raise ValueError(f'{self.path.name} is a metatomic model exported in {own}; it cannot run in {dtype}')
            self.dtype = getattr(torch, own)
            self._model = None  # the metatomic calculator loads the file itself
            has_features = FEATURES_OUTPUT in model.capabilities().outputs
            self.descriptor_kind = METATOMIC_DESCRIPTORS if has_features else None
            self.descriptor_dimension = None  # known after the first forward pass
            self.descriptors_problem = None if has_features else f'it has no `{FEATURES_OUTPUT}` output'

    def check_descriptors(self) -> str:
        """Return the kind of descriptors the model gives (:data:`MACE_DESCRIPTORS`, :data:`METATOMIC_DESCRIPTORS`).

        :raises DescriptorError: naming the model file and why it gives none.
        """
        if self.descriptor_kind is None:
            raise DescriptorError(f'model {self.path.name} cannot give descriptors: {self.descriptors_problem}')
        return self.descriptor_kind

    def ase_calculator(self):
        """Return the model's own ASE calculator (one structure at a time)."""
        if self.kind == 'mace':
            import torch
            from mace.calculators import MACECalculator

            dtype = 'float64' if self.dtype == torch.float64 else 'float32'
            return MACECalculator(model_paths=str(self.path), device=self.device, default_dtype=dtype)
        from metatomic_ase import MetatomicCalculator

        return MetatomicCalculator(str(self.path), device=self.device)

    def predict(self, frames: Sequence[Atoms], batch_size: int = 16, *, descriptors: bool = False) -> Prediction:
        """Return the predictions on ``frames`` (batches of at most ``batch_size`` structures) of every target.

        :param descriptors: also return the per-structure descriptors (see the module docstring).
        :raises DescriptorError: if ``descriptors`` is asked of a model that gives none (before anything runs).
        """
        if batch_size < 1:
            raise ValueError(f'batch_size must be at least 1, got {batch_size}')
        if descriptors:
            self.check_descriptors()
        frames = [_bare(frame) for frame in frames]
        in_energy_pass = descriptors and self.kind == 'mace'  # MACE: node features of the energies' forward pass
        prediction = (
            self._predict_energy(frames, batch_size, in_energy_pass) if 'energy' in self.targets else Prediction()
        )
        if 'dos' in self.targets:
            prediction.dos = self._predict_dos(frames, batch_size)
        if descriptors and prediction.descriptors is None:
            prediction.descriptors = self._describe_metatomic(frames, batch_size)
        if descriptors:
            self.descriptor_dimension = prediction.descriptors.shape[1]
        return prediction

    def _describe_metatomic(self, frames: list[Atoms], batch_size: int) -> np.ndarray:
        """Return the ``(n, d)`` means over atoms of the ``features`` output, in the batches of the energies."""
        import torch
        from metatomic.torch import ModelOutput

        calculator = self._calculator()
        result = [None] * len(frames)
        for _, indices in _batches(frames, batch_size):
            batch = [frames[index] for index in indices]
            with torch.no_grad():
                outputs = calculator.run_model(batch, {FEATURES_OUTPUT: ModelOutput(sample_kind='atom')})
            block = outputs[FEATURES_OUTPUT].block()
            values = block.values.detach().cpu().double().numpy().reshape(len(block.values), -1)
            systems = block.samples.column('system').cpu().numpy().astype(np.int64)
            counts = np.bincount(systems, minlength=len(batch))
            natoms = np.array([len(frame) for frame in batch])
            if not np.array_equal(counts, natoms):
                raise DescriptorError(
                    f'model {self.path.name} gave `{FEATURES_OUTPUT}` for {counts.tolist()} atoms of structures of '
                    f'{natoms.tolist()} atoms'
                )
            sums = np.zeros((len(batch), values.shape[1]))
            np.add.at(sums, systems, values)
            for position, index in enumerate(indices):
                result[index] = sums[position] / natoms[position]
        return np.stack(result)

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

    def _predict_energy(self, frames: list[Atoms], batch_size: int, descriptors: bool = False) -> Prediction:
        """Return energies, forces, stresses and, for a MACE model with ``descriptors``, the descriptors."""
        natoms = np.array([len(frame) for frame in frames], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(natoms)])
        energy = np.full(len(frames), np.nan)
        forces = np.full((int(offsets[-1]), 3), np.nan)
        stress = np.full((len(frames), 3, 3), np.nan)
        described = np.full((len(frames), self.descriptor_dimension or 0), np.nan) if descriptors else None
        for periodic, indices in _batches(frames, batch_size):
            batch = [frames[index] for index in indices]
            if self.kind == 'mace':
                results = self._run_mace(batch, periodic, descriptors)
            else:
                results = (*self._run_metatomic(batch, periodic), None)
            batch_energy, batch_forces, batch_stress, batch_descriptors = results
            for position, index in enumerate(indices):
                energy[index] = batch_energy[position]
                forces[offsets[index] : offsets[index + 1]] = batch_forces[position]
                if periodic:
                    stress[index] = batch_stress[position]
                if descriptors:
                    described[index] = batch_descriptors[position]
        return Prediction(energy=energy, forces=forces, stress=stress, descriptors=described)

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

    def _run_mace(self, frames: list[Atoms], periodic: bool, descriptors: bool = False):
        """Return energies, forces, stresses (``None`` unless ``periodic``) and descriptors (``None`` unless asked)."""
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
            described = self._mace_descriptors(output, pointers) if descriptors else None
        finally:
            torch.set_default_dtype(previous)
        return energies, forces, stress, described

    def _mace_descriptors(self, output: dict, pointers: np.ndarray) -> np.ndarray:
        """Return the ``(n, d)`` means over atoms of the last layer's invariant node features of a MACE output."""
        from aiida_mad.learning.direct import mean_features

        node_feats = output.get('node_feats')
        if node_feats is None or node_feats.shape[1] != self._width:
            found = 'no node_feats' if node_feats is None else f'node_feats of width {node_feats.shape[1]}'
            raise DescriptorError(f'model {self.path.name} gave {found}; its products give {self._width}')
        return mean_features(node_feats.detach().cpu().double().numpy()[:, self._columns], pointers)


def load_model(path, *, device: str = 'cpu', dtype: str | None = None) -> Model:
    """Return the :class:`Model` of a model file (see :class:`Model` for ``dtype``)."""
    return Model(path, device=device, dtype=dtype)
