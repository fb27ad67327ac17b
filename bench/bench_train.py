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
import uuid

from common import Row, local_code, temporary_profile, timed_run

EPOCHS = 10
FRAMES = 24


def frames():
    """Return ``FRAMES`` rattled fcc Cu frames labelled by ASE's EMT (train, val and test)."""
    from ase.build import bulk
    from ase.calculators.emt import EMT

    from aiida_mad.dataset.frames import make_frame

    result = []
    for index in range(FRAMES):
        atoms = bulk('Cu', 'fcc', a=3.6, cubic=True).repeat((2, 1, 1))
        atoms.rattle(0.05, seed=index)
        atoms.calc = EMT()
        split = ('train', 'train', 'val', 'test')[index % 4]
        result.append(
            make_frame(
                atoms.numbers,
                atoms.positions,
                cell=atoms.cell.array,
                pbc=True,
                energy=atoms.get_potential_energy(),
                energy_baseline_subtracted=atoms.get_potential_energy(),
                forces=atoms.get_forces(),
                stress=atoms.get_stress(voigt=False),
                subset='mc3d-rattled',
                split=split,
                source_uuid=str(uuid.UUID(int=index + 1)),
                fingerprint='e' * 64,
            )
        )
    return result


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
        dataset = DatasetData(frames(), name='bench-train', seed=0).store()
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
    return [
        Row(
            name=f'train: CalcJob vs mtt train ({EPOCHS} epochs, {FRAMES} frames)',
            ours=calcjob,
            baseline=direct,
            unit='s',
            higher_is_better=False,
            note=f'CalcJob {calcjob:.1f} s, mtt train {direct:.1f} s: {calcjob - direct:+.1f} s of engine overhead',
        )
    ]


if __name__ == '__main__':
    for row in run():
        print(row.cells(), row.note)
