"""``aiida-mad-dos-cnn``: the console script that ``mad.dos_cnn`` runs on the compute node (pure: no AiiDA).

``aiida-mad-dos-cnn dos-cnn.json`` reads the configuration::

    {"dos": "predicted-dos.npy", "uuids": "predicted-uuids.npy", "energies": "predicted-energies.npy" or null,
     "grid": [start, spacing] (used when "energies" is null), "frames": "frames.json",
     "shards": ["shards/frames-00000.extxyz.gz", ...], "targets": ["gap", "fermi_level"],
     "settings": {"learning_rate": 1e-4, "warmup_epochs": 100, ...}, "max_shift": 10.0, "denoise": true}

* ``dos``: the DOS predicted by a DOS model, per cell, ``(n, points)`` or ``(models, n, points)`` (averaged over
  the models), one row per structure uuid of ``uuids``, on ``energies`` (or on ``start + i spacing``);
* ``frames``: ``{uuid: {"split", "natoms", "gap", "n_electrons"}}`` of the dataset's frames, with the DFT gap (eV,
  null where unknown) and valence electron count;
* ``shards``: the dataset's shards, read only for the Fermi-level target, which each frame's DFT DOS (``info['dos']``
  on the project's grid, zero at the DFT Fermi level) gives: where the DFT Fermi level falls on the prediction's
  energy axis (:func:`~aiida_mad.learning.dos_denoise.aligned_fermi_level`).

Each target's CNN (:mod:`aiida_mad.learning.dos_cnn`) trains on the ``train`` frames with a target, stops early on the
``val`` frames, and is evaluated on every split. Written: ``<target>.pt`` (the model), ``dos-cnn.npz`` (``uuids``,
``split``, ``<target>_dft`` and ``<target>_cnn`` per structure, and with ``denoise`` and a Fermi-level CNN the
``energies`` and ``denoised`` DOS by :func:`~aiida_mad.learning.dos_denoise.denoise_dos` at the CNN's Fermi level) and
``dos-cnn-info.json`` (per target: epochs, best epoch, errors per split, the history). Exit status 2 for bad input,
with the reason on stderr.
"""

from __future__ import annotations

import json
import math
import pathlib
import sys
import time

import numpy as np

from aiida_mad.scripts import run_script

__all__ = ('INFO_FILE', 'OUTPUT_FILE', 'errors_by_split', 'main', 'run')

INFO_FILE = 'dos-cnn-info.json'
OUTPUT_FILE = 'dos-cnn.npz'
_SPLITS = ('train', 'val', 'test')


def errors_by_split(predicted, target, split) -> dict:
    """Return ``{split: {n, mae, rmse}}`` (eV) over the structures with a finite target."""
    result = {}
    for name in _SPLITS:
        chosen = (split == name) & np.isfinite(target)
        difference = predicted[chosen] - target[chosen]
        count = int(chosen.sum())
        result[name] = {
            'n': count,
            'mae': float(np.mean(np.abs(difference))) if count else None,
            'rmse': float(math.sqrt(np.mean(difference**2))) if count else None,
        }
    return result


def _predicted_dos(config: dict, directory: pathlib.Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    dos = np.load(directory / config['dos'], allow_pickle=False)
    if dos.ndim == 3:
        dos = dos.mean(axis=0)
    if dos.ndim != 2:
        raise ValueError(f'the predicted DOS must be (n, points) or (models, n, points), got shape {dos.shape}')
    uuids = np.load(directory / config['uuids'], allow_pickle=False).astype(str)
    if uuids.shape != (dos.shape[0],):
        raise ValueError(f'{uuids.size} uuids for {dos.shape[0]} predicted DOS rows')
    if config.get('energies'):
        energies = np.load(directory / config['energies'], allow_pickle=False).astype(np.float64)
    else:
        start, spacing = config['grid']
        energies = start + spacing * np.arange(dos.shape[1], dtype=np.float64)
    if energies.shape != (dos.shape[1],):
        raise ValueError(f'{energies.size} energies for a predicted DOS of {dos.shape[1]} points')
    if not np.all(np.isfinite(dos)):
        raise ValueError('the predicted DOS has non-finite values')
    return uuids, energies, dos


def _fermi_targets(config, directory, uuids, energies, dos) -> np.ndarray:
    """Return the DFT Fermi level on the prediction's axis for each structure (NaN without a DFT DOS)."""
    from aiida_mad.dataset.extxyz import read_shards
    from aiida_mad.dos import GRID_SPACING, GRID_START
    from aiida_mad.learning.dos_denoise import aligned_fermi_level

    reference = {}
    for frame in read_shards([directory / name for name in config.get('shards', [])]):
        if 'dos' in frame.info:
            reference[str(frame.info['source_uuid'])] = np.asarray(frame.info['dos'], dtype=np.float64)
    targets = np.full(len(uuids), np.nan)
    max_shift = float(config.get('max_shift', 10.0))
    for index, uuid in enumerate(uuids):
        values = reference.get(uuid)
        if values is None or not np.isfinite(values).any():
            continue
        grid = GRID_START + GRID_SPACING * np.arange(values.size, dtype=np.float64)
        targets[index] = aligned_fermi_level(energies, dos[index], grid, values, max_shift=max_shift)
    return targets


def run(config: dict, directory: pathlib.Path) -> dict:
    """Train and evaluate the CNNs that ``config`` describes, with paths relative to ``directory``; return the info."""
    from aiida_mad.learning.dos_cnn import TARGETS, TrainingSettings, cnn_inputs, predict_cnn, save_cnn, train_cnn
    from aiida_mad.learning.dos_denoise import denoise_dos

    start = time.perf_counter()
    targets = list(config.get('targets', TARGETS))
    unknown = sorted(set(targets) - set(TARGETS))
    if unknown or not targets:
        raise ValueError(f'targets must be a non-empty list of {TARGETS}, got {targets}')
    settings = TrainingSettings(**config.get('settings', {}))
    frames = json.loads((directory / config['frames']).read_text())
    uuids, energies, dos = _predicted_dos(config, directory)
    missing = [uuid for uuid in uuids if uuid not in frames]
    if missing:
        raise ValueError(f'{len(missing)} predicted structure(s) are no frame of the dataset, e.g. {missing[0]}')
    split = np.array([frames[uuid]['split'] for uuid in uuids], dtype='U5')
    natoms = np.array([frames[uuid]['natoms'] for uuid in uuids], dtype=np.int64)
    n_electrons = np.array([frames[uuid].get('n_electrons') or np.nan for uuid in uuids], dtype=np.float64)
    inputs = cnn_inputs(dos, natoms)
    values = {}
    if 'gap' in targets:
        values['gap'] = np.array([np.nan if frames[u].get('gap') is None else frames[u]['gap'] for u in uuids])
    if 'fermi_level' in targets:
        values['fermi_level'] = _fermi_targets(config, directory, uuids, energies, dos)

    arrays = {'uuids': uuids.astype('U36'), 'split': split}
    info = {'n_structures': len(uuids), 'n_points': int(energies.size), 'targets': {}}
    for target in targets:
        wanted = values[target]
        train = (split == 'train') & np.isfinite(wanted)
        val = (split == 'val') & np.isfinite(wanted)
        if not train.any():
            raise ValueError(
                f'no training structure has a {target} target (a DFT value): the {target} CNN cannot train'
            )
        trained = train_cnn(inputs[train], wanted[train], inputs[val], wanted[val], target=target, settings=settings)
        save_cnn(trained, directory / f'{target}.pt', extra={'energies': [float(energies[0]), float(energies[-1])]})
        predicted = predict_cnn(trained.model, inputs, target=target)
        arrays[f'{target}_dft'] = wanted
        arrays[f'{target}_cnn'] = predicted
        info['targets'][target] = {
            'epochs': trained.epochs,
            'best_epoch': trained.best_epoch,
            'stopped_early': trained.stopped_early,
            'n_without_target': int((~np.isfinite(wanted)).sum()),
            'n_parameters': sum(parameter.numel() for parameter in trained.model.parameters()),
            'errors': errors_by_split(predicted, wanted, split),
            'history': trained.history,
        }
    if config.get('denoise', True) and 'fermi_level_cnn' in arrays:
        denoised = np.full_like(dos, np.nan)
        failed = []
        for index in range(len(uuids)):
            if not np.isfinite(n_electrons[index]):
                failed.append(f'{uuids[index]}: unknown electron count')
                continue
            try:
                denoised[index] = denoise_dos(
                    energies,
                    dos[index],
                    n_electrons=float(n_electrons[index]),
                    fermi_level=float(arrays['fermi_level_cnn'][index]),
                    natoms=int(natoms[index]),
                )
            except ValueError as exception:
                failed.append(f'{uuids[index]}: {exception}')
        arrays['energies'] = energies
        arrays['denoised'] = denoised
        arrays['n_electrons'] = n_electrons
        info['denoised'] = {'n': len(uuids) - len(failed), 'failed': failed}
    np.savez(directory / OUTPUT_FILE, **arrays)
    info['seconds'] = time.perf_counter() - start
    (directory / INFO_FILE).write_text(json.dumps(info, indent=2))
    return info


def summary(info: dict) -> str:
    """Return the lines printed after a run: per target its epochs, best epoch and test MAE."""
    lines = []
    for target, record in info['targets'].items():
        test = record['errors']['test']
        shown = f'test MAE {test["mae"]:.4f} eV' if test['n'] else 'no test structure'
        lines.append(f'{target}: {record["epochs"]} epochs (best {record["best_epoch"]}), {shown}')
    return '\n'.join(lines)


def main(argv=None) -> int:
    """Entry point of ``aiida-mad-dos-cnn``."""
    return run_script('dos-cnn', argv, doc=__doc__, run=run, summary=summary)


if __name__ == '__main__':  # pragma: no cover
    sys.exit(main())
