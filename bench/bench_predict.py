"""Prediction and MACE training overhead.

* Batched prediction (``aiida_mad.inference``, the engine of ``mad.predict``: MACE's own data loader, batches of 32)
  vs one structure at a time through the model's ASE calculator (``MACECalculator``), same model, same structures,
  same precision, structures per second. Two real MACE models trained here on synthetic EMT copper frames (no pw.x):
  the tiny one of the tests (8x0e) and a wider one (32x0e + 32x1o, max_L 1), so that the fixed per-call cost and the
  model's own cost both show; each in its own float64 and converted to float32 (``mad.predict`` parameter
  ``dtype``; the ASE calculator then runs in float32 too). Goal: >= 5x on CPU. Batching removes the per-call cost
  (graph building, Python dispatch of a few thousand small tensor operations); what stays is the model's own
  arithmetic, mostly the radial MLP on every edge (dense matrix products), which float32 about halves.
* The ``mad.mace`` CalcJob (localhost) vs ``mace_run_train`` run directly on the same files (train, validation and
  test), same options, same epochs (10: a run of tens of seconds, not the 2-epoch smoke test). Goal: ratio <= 1.1.
  The CalcJob's extra work is a fixed cost: writing the split files from the shards, the scheduler round trip
  (submission, polling: the bench computer polls every second, see ``common.local_code``; AiiDA's default of 10 s
  alone made an earlier 4-epoch run 21.7 s vs 11.1 s), retrieving and parsing; the note gives it in seconds.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import tempfile
import time

from common import Row, cu_e0, cu_frames, local_code, overhead_row, temporary_profile, timed_run

N_STRUCTURES = 256
BATCH = 32
EPOCHS = 10
TRAIN_FRAMES = 16
TINY = {
    'model': 'MACE',
    'num_channels': 8,
    'max_L': 0,
    'r_max': 4.0,
    'num_radial_basis': 4,
    'batch_size': 4,
    'valid_batch_size': 4,
    'eval_interval': 1,
    'loss': 'stress',
    'device': 'cpu',
    'default_dtype': 'float64',
    'seed': 0,
}
WIDER = {**TINY, 'num_channels': 32, 'max_L': 1, 'r_max': 5.0}
BIN = pathlib.Path(sys.executable).parent


def write_config(folder: pathlib.Path, parameters: dict, epochs: int, *, has_test: bool = False) -> None:
    import yaml

    from aiida_mad.calculations.mace import build_config

    config = build_config({**parameters, 'max_num_epochs': epochs}, {29: cu_e0()}, has_test=has_test)
    (folder / 'config.yaml').write_text(yaml.safe_dump(config))


def train_direct(folder: pathlib.Path, frames, parameters: dict, epochs: int) -> float:
    """Train with ``mace_run_train`` in ``folder`` on ``frames`` (their own splits); return the wall time.

    The same files and options as ``mad.mace`` writes: the three split files, and the test set evaluated at the end
    when it has frames.
    """
    from aiida_mad.dataset.extxyz import write_split_files

    start = time.perf_counter()
    frames = list(frames)
    write_split_files(frames, folder, missing_stress='omit')
    write_config(folder, parameters, epochs, has_test=any(frame.info['split'] == 'test' for frame in frames))
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    subprocess.run(
        [str(BIN / 'mace_run_train'), '--config', 'config.yaml'], cwd=folder, env=env, check=True, capture_output=True
    )
    return time.perf_counter() - start


def ase_one_at_a_time(calculator, structures) -> tuple[list, list, list]:
    """Return the energies, forces and stresses (3x3) that the ASE calculator gives for each structure, in turn."""
    energies, forces, stresses = [], [], []
    for frame in structures:
        atoms = frame.copy()
        atoms.calc = calculator
        energies.append(atoms.get_potential_energy())
        forces.append(atoms.get_forces())
        stresses.append(atoms.get_stress(voigt=False))
    return energies, forces, stresses


def _one_at_a_time(calculator, structures) -> float:
    """Return the seconds the ASE calculator takes for energy, forces and stress of every structure, in turn."""
    start = time.perf_counter()
    ase_one_at_a_time(calculator, structures)
    return time.perf_counter() - start


def prediction_rows() -> list[Row]:
    """Batched vs one at a time, for each model in its own float64 and converted to float32 (both ways alike)."""
    import torch

    from aiida_mad.inference.models import Model

    torch.set_num_threads(1)
    structures = cu_frames(N_STRUCTURES, offset=1000)
    n_atoms = sum(len(frame) for frame in structures)
    rows = []
    with tempfile.TemporaryDirectory(prefix='aiida-mad-bench-predict-') as folder:
        for label, parameters in (('tiny 8x0e', TINY), ('wider 32x0e+32x1o', WIDER)):
            path = pathlib.Path(folder) / label.split()[0]
            path.mkdir()
            train_direct(path, cu_frames(TRAIN_FRAMES), parameters, 1)
            for dtype in ('float64', 'float32'):
                model = Model(path / 'aiida.model', dtype=dtype)
                model.predict(structures[:BATCH], BATCH)  # warm-up
                start = time.perf_counter()
                model.predict(structures, BATCH)
                batched = time.perf_counter() - start
                calculator = model.ase_calculator()  # MACECalculator in the same dtype
                _one_at_a_time(calculator, structures[:2])  # warm-up
                single = _one_at_a_time(calculator, structures)
                rows.append(
                    Row(
                        name=f'predict: batched ({BATCH}) vs ASE calculator, MACE {label} {dtype}, CPU 1 thread',
                        ours=N_STRUCTURES / batched,
                        baseline=N_STRUCTURES / single,
                        unit='structures/s',
                        higher_is_better=True,
                        note=f'{N_STRUCTURES} Cu cells of 4-32 atoms ({n_atoms} atoms): batched {batched:.2f} s, '
                        f'one at a time {single:.2f} s',
                    )
                )
    return rows


def training_row() -> Row:
    from aiida import orm

    from aiida_mad.calculations.mace import MaceTrainCalculation
    from aiida_mad.data.dataset import DatasetData

    frames = cu_frames(TRAIN_FRAMES)
    # A daemon worker imports torch and MACE once (validation and parsing use them), not once per job: import them
    # here first, so that the CalcJob's time is the per-job cost (the direct run's own imports count on both sides).
    import mace.tools  # noqa: F401
    import torch  # noqa: F401

    with temporary_profile():
        code = local_code('mace-bench', BIN / 'mace_run_train')
        dataset = DatasetData(frames, name='bench-mace', seed=0, atomic_energies={'Cu': cu_e0()}).store()
        builder = MaceTrainCalculation.get_builder()
        builder.code = code
        builder.dataset = dataset
        builder.parameters = orm.Dict({**TINY, 'max_num_epochs': EPOCHS})
        _, calcjob = timed_run(builder)
        with tempfile.TemporaryDirectory(prefix='aiida-mad-bench-mace-') as folder:
            direct = train_direct(pathlib.Path(folder), dataset.frames(), TINY, EPOCHS)
    name = f'train: mad.mace CalcJob vs mace_run_train ({EPOCHS} epochs, {TRAIN_FRAMES} frames)'
    return overhead_row(name, calcjob, direct, 'mace_run_train')


def run() -> list[Row]:
    return [*prediction_rows(), training_row()]


if __name__ == '__main__':
    for row in run():
        print(row.cells(), row.note)
