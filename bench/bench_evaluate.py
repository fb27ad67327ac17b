"""Evaluation throughput: ``mad.evaluate`` (one ``mad.predict`` run, batched) vs frame by frame with ASE.

Same model, same frames, same run: a real tiny MACE trained here on synthetic EMT copper frames (no pw.x), a
``mad.dataset`` of 256 rattled Cu cells (4 to 32 atoms).

* ours: the whole ``EvaluateWorkChain`` in a throw-away profile (the ``mad.predict`` CalcJob on localhost with
  batches of 32, the table calcfunction, storing everything), frames per second of the error table;
* baseline: every frame through the model's ASE calculator (energy, forces, stress), then the same table computed
  from those values (:func:`aiida_mad.learning.evaluation.error_table`).

A second row adds the rotational symmetry error (Lebedev-Laikov order 3: each frame and its 6 rotated copies, frames
per second counted over the original frames): the copies go through the same batched run, against one ASE call per
copy.
"""

from __future__ import annotations

import pathlib
import sys
import tempfile
import time

import numpy as np
from bench_predict import TINY, ase_one_at_a_time, train_direct
from common import Row, cu_frames, local_code, temporary_profile, timed_run

N_FRAMES = 256
TRAIN_FRAMES = 16
BATCH = 32
ROTATION_ORDER = 3
BIN = pathlib.Path(sys.executable).parent


def ase_table(model, frames, matrices=None) -> float:
    """Evaluate ``frames`` one at a time with the model's ASE calculator (and their rotated copies); return seconds."""
    from aiida_mad.learning.evaluation import FrameSet, error_table, rotation_std
    from aiida_mad.learning.rotations import rotated_copies

    calculator = model.ase_calculator()
    start = time.perf_counter()
    energies, forces, stresses = ase_one_at_a_time(calculator, frames)
    spreads = []
    for frame in frames if matrices is not None else ():
        rotated = []
        for copy in rotated_copies(frame, matrices):
            copy.calc = calculator
            rotated.append(copy.get_potential_energy() / len(copy))
        spreads.append(rotation_std(np.array([rotated]))[0])
    error_table(
        FrameSet(
            subsets=[frame.info['subset'] for frame in frames],
            natoms=np.array([len(frame) for frame in frames]),
            energy_reference=np.array([frame.info['energy'] / len(frame) for frame in frames]),
            energy_predicted=np.array(energies) / np.array([len(frame) for frame in frames]),
            forces_reference=np.concatenate([frame.arrays['forces'] for frame in frames]),
            forces_predicted=np.concatenate(forces),
            stress_reference=np.array([frame.info['stress'] for frame in frames]),
            stress_predicted=np.array(stresses),
            rotation_std=np.array(spreads) if spreads else None,
        )
    )
    return time.perf_counter() - start


def run() -> list[Row]:
    import torch

    from aiida_mad.data.dataset import DatasetData
    from aiida_mad.data.model import ModelData
    from aiida_mad.inference.models import Model
    from aiida_mad.learning.rotations import rotation_matrices
    from aiida_mad.workflows.evaluate import EvaluateWorkChain

    torch.set_num_threads(1)
    frames = cu_frames(N_FRAMES, offset=2000)
    n_atoms = sum(len(frame) for frame in frames)
    rows = []
    with tempfile.TemporaryDirectory(prefix='aiida-mad-bench-evaluate-') as folder, temporary_profile():
        path = pathlib.Path(folder)
        train_direct(path, cu_frames(TRAIN_FRAMES), TINY, 1)
        model = ModelData(file=str(path / 'aiida.model'), filename='aiida.model')
        model.base.attributes.set_many({'architecture': 'mace', 'energy_reference': 'total', 'elements': ['Cu']})
        model.store()
        dataset = DatasetData(frames, name='bench-evaluate', seed=0).store()
        code = local_code('predict-bench', BIN / 'aiida-mad-predict')
        loaded = Model(path / 'aiida.model')
        for order in (0, ROTATION_ORDER):
            builder = EvaluateWorkChain.get_builder_for(
                model,
                code=code,
                dataset=dataset,
                split='all',
                rotations={'order': order},
                parameters={'batch_size': BATCH, 'device': 'cpu'},
            )
            node, ours = timed_run(builder)
            table = node.outputs.table.get_dict()
            assert table['overall']['n_frames'] == N_FRAMES
            matrices = rotation_matrices(order) if order else None
            baseline = ase_table(loaded, frames, matrices)
            copies = f' + {len(matrices)} rotated copies each' if order else ''
            rows.append(
                Row(
                    name=f'evaluate: mad.evaluate (mad.predict, batches of {BATCH}) vs ASE frame by frame'
                    + (f', rotational error (Lebedev order {order})' if order else ''),
                    ours=N_FRAMES / ours,
                    baseline=N_FRAMES / baseline,
                    unit='frames/s',
                    higher_is_better=True,
                    note=f'{N_FRAMES} Cu cells ({n_atoms} atoms){copies}, tiny MACE, CPU 1 thread: work chain '
                    f'{ours:.1f} s (engine, CalcJob, storing), ASE loop {baseline:.1f} s',
                )
            )
    return rows


if __name__ == '__main__':
    for row in run():
        print(row.cells(), row.note)
