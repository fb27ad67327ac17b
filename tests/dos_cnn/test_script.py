"""The ``aiida-mad-dos-cnn`` console script on its own (no AiiDA): synthetic frames, shards and predictions."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest

from aiida_mad.dataset.extxyz import write_shards
from aiida_mad.dataset.frames import make_frame
from aiida_mad.dos import compute_dos, energy_grid, integrated_dos
from aiida_mad.learning.dos_cnn import load_cnn
from aiida_mad.learning.dos_cnn_script import INFO_FILE, OUTPUT_FILE, main

SHIFT = -0.6
SPLITS = ['train', 'train', 'train', 'train', 'val', 'test']


def write_inputs(directory, *, splits=SPLITS, gaps=True):
    """Write 6 frames (insulators of 8 electrons per atom with gaps 0.5..3 eV) and their 'predicted' DOS."""
    rng = np.random.default_rng(0)
    frames, predicted, records = [], [], {}
    for index, split in enumerate(splits):
        natoms = 1 + index % 2
        gap = 0.5 + 0.5 * index
        eigenvalues = np.hstack(
            [
                -gap / 2 - rng.uniform(0.0, 6.0, size=(4, 4 * natoms)),
                gap / 2 + rng.uniform(0.0, 6.0, size=(4, 4 * natoms)),
            ]
        )
        dft = compute_dos(eigenvalues, np.ones(4), 0.0)
        source = str(uuid.UUID(int=index + 1))
        frames.append(
            make_frame(
                [14] * natoms,
                rng.uniform(0.0, 3.0, size=(natoms, 3)),
                energy=-1.0,
                forces=np.zeros((natoms, 3)),
                subset='mc3d',
                split=split,
                source_uuid=source,
                fingerprint='f' * 16,
                dos=dft.dos,
            )
        )
        grid = energy_grid()
        predicted.append(np.interp(grid - SHIFT, grid, np.nan_to_num(dft.dos)) * 0.95)
        records[source] = {'split': split, 'natoms': natoms, 'gap': gap if gaps else None, 'n_electrons': 8.0 * natoms}
    shards = write_shards(frames, directory / 'shards')
    np.save(directory / 'predicted-dos.npy', np.array(predicted)[None])
    np.save(directory / 'predicted-uuids.npy', np.array(list(records)))
    (directory / 'frames.json').write_text(json.dumps(records))
    config = {
        'dos': 'predicted-dos.npy',
        'uuids': 'predicted-uuids.npy',
        'energies': None,
        'grid': [energy_grid()[0], 0.05],
        'frames': 'frames.json',
        'shards': [f'shards/{path.name}' for path in shards],
        'targets': ['gap', 'fermi_level'],
        'settings': {'max_epochs': 2, 'warmup_epochs': 1, 'batch_size': 4},
        'max_shift': 2.0,
        'denoise': True,
    }
    (directory / 'dos-cnn.json').write_text(json.dumps(config))
    return records


def test_the_script_trains_both_cnns_and_denoises(tmp_path, capsys):
    records = write_inputs(tmp_path)
    assert main([str(tmp_path / 'dos-cnn.json')]) == 0
    assert 'gap: 2 epochs' in capsys.readouterr().out
    info = json.loads((tmp_path / INFO_FILE).read_text())
    with np.load(tmp_path / OUTPUT_FILE) as data:
        arrays = {name: data[name] for name in data.files}
    assert list(arrays['split']) == SPLITS
    np.testing.assert_allclose(arrays['fermi_level_dft'], SHIFT, atol=1e-9)
    np.testing.assert_allclose(arrays['gap_dft'], [records[u]['gap'] for u in arrays['uuids']])
    assert (arrays['gap_cnn'] >= 0).all()
    for target in ('gap', 'fermi_level'):
        record = info['targets'][target]
        assert record['epochs'] == len(record['history']) == 2
        assert [record['errors'][split]['n'] for split in ('train', 'val', 'test')] == [4, 1, 1]
        model, saved = load_cnn(tmp_path / f'{target}.pt')
        assert saved['target'] == target and model.n_points == 4606
    assert info['denoised'] == {'n': 6, 'failed': []}
    for row, fermi in enumerate(arrays['fermi_level_cnn']):
        states = integrated_dos(arrays['energies'], arrays['denoised'][row], fermi)
        assert states == pytest.approx(arrays['n_electrons'][row], rel=1e-9)


def test_the_script_refuses_a_target_without_training_values(tmp_path, capsys):
    write_inputs(tmp_path, gaps=False)
    assert main([str(tmp_path / 'dos-cnn.json')]) == 2
    assert 'no training structure has a gap target' in capsys.readouterr().err
