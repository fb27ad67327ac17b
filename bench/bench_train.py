"""Training overhead: ``mad.metatrain`` (CalcJob on localhost) vs ``mtt train`` run directly on the same files.

Both train the same tiny PET for the same epochs on the same split files, written from a ``mad.dataset`` of
synthetic EMT copper frames (no pw.x), one after the other in one run. The CalcJob's extra work is writing the
files from the shards, uploading, the scheduler round trip, retrieving and parsing (metrics, errors, the checkpoint's
parameter count). Goal: ratio <= 1.1 for real trainings (minutes to days); for this few-second training the fixed
cost of the engine shows, and the note says how many seconds it is.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import tempfile
import time

from common import Row, cu_frames, local_code, overhead_row, temporary_profile, timed_run

EPOCHS = 10
FRAMES = 24


def run() -> list[Row]:
    from aiida import orm

    from aiida_mad.calculations.metatrain import build_options, build_targets, get_settings
    from aiida_mad.data.dataset import DatasetData
    from aiida_mad.workflows.train import TrainWorkChain

    mtt = pathlib.Path(sys.executable).parent / 'mtt'
    overrides = {'metatrain': {'parameters': {'architecture': {'training': {'num_epochs': EPOCHS}}}}}
    inputs = TrainWorkChain.get_protocol_inputs('tiny', overrides)
    parameters = inputs['metatrain']['parameters']
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    with temporary_profile():
        code = local_code('mtt-bench', mtt)
        frames = cu_frames(FRAMES, repeats=((2, 1, 1),), fingerprint='e' * 64, baseline_subtracted=True)
        dataset = DatasetData(frames, name='bench-train', seed=0).store()
        from aiida_mad.calculations.metatrain import MetatrainCalculation

        builder = MetatrainCalculation.get_builder()
        builder.code = code
        builder.dataset = dataset
        builder.parameters = orm.Dict(parameters)
        builder.settings = orm.Dict({'energy': 'total'})
        _, calcjob = timed_run(builder)

        with tempfile.TemporaryDirectory(prefix='aiida-mad-bench-mtt-') as folder:
            import yaml

            start = time.perf_counter()
            counts = dataset.write_split_files(folder)
            targets = build_targets(get_settings({'energy': 'total'}))
            options = build_options(parameters, targets, has_test=counts['test'][1] > 0)
            (pathlib.Path(folder) / 'options.yaml').write_text(yaml.safe_dump(options))
            subprocess.run([str(mtt), 'train', 'options.yaml'], cwd=folder, env=env, check=True, capture_output=True)
            direct = time.perf_counter() - start
    name = f'train: CalcJob vs mtt train ({EPOCHS} epochs, {FRAMES} frames)'
    return [overhead_row(name, calcjob, direct, 'mtt train')]


if __name__ == '__main__':
    for row in run():
        print(row.cells(), row.note)
