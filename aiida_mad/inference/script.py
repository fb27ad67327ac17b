"""``aiida-mad-predict``: the console script that ``mad.predict`` runs on the compute node (pure: no AiiDA).

``aiida-mad-predict predict.json`` reads the configuration::

    {"models": ["model-0.pt", "model-1.model"], "shards": ["shards/frames-00000.extxyz.gz", ...],
     "structures": ["structures.xyz"], "split": null, "batch_size": 16, "device": "cpu", "dtype": null,
     "descriptors": false, "output": "predictions.npz"}

loads the dataset's shards as they are (``shards``, read by :func:`aiida_mad.dataset.extxyz.read_shards`; only the
frames of ``split`` when it is set: ``train``, ``val`` or ``test``) and plain extended-XYZ files of structures
(``structures``, read by ASE, each frame with its uuid in ``info['source_uuid']``), predicts with every model
(:func:`aiida_mad.inference.predict.predict`), with ``rotations`` (``{"matrices": [[[...]]], "uuids": [...]}``)
also the rotated copies of those structures (:func:`aiida_mad.learning.rotations.rotation_arrays`: arrays
``rotation_*``, for the rotational symmetry error), with ``descriptors`` also every model's per-structure
descriptors (array ``descriptors`` ``(M, n, d)``; each model's descriptor kind in the info), and writes the arrays
to ``output`` (``numpy.savez``), with the model kinds and the timings in ``predict.json``'s sibling
``predict-info.json``. Exit status 2 for bad input (a file that is not a model, an element a model does not know,
descriptors asked of a model that gives none), with the reason on stderr.
"""

from __future__ import annotations

import json
import pathlib
import sys
import time

import ase.io
import numpy as np

from aiida_mad.scripts import run_script

__all__ = ('INFO_FILE', 'main', 'run', 'summary')

INFO_FILE = 'predict-info.json'
_SPLITS = ('train', 'val', 'test')


def run(config: dict, directory: pathlib.Path) -> dict:
    """Run the predictions that ``config`` describes, with paths relative to ``directory``; return the info."""
    from aiida_mad.dataset.extxyz import read_shards
    from aiida_mad.inference.models import Model
    from aiida_mad.inference.predict import predict

    start = time.perf_counter()
    split = config.get('split')
    if split is not None and split not in _SPLITS:
        raise ValueError(f'split must be one of {_SPLITS}, got {split!r}')
    frames = read_shards([directory / name for name in config.get('shards', [])])
    if split is not None:
        frames = [frame for frame in frames if frame.info.get('split') == split]
    for name in config.get('structures', []):
        frames.extend(ase.io.read(directory / name, index=':'))
    device = config.get('device', 'cpu')
    dtype = config.get('dtype')
    models = [Model(directory / name, device=device, dtype=dtype) for name in config['models']]
    loaded = time.perf_counter()
    batch_size = int(config.get('batch_size', 16))
    descriptors = bool(config.get('descriptors', False))
    arrays = predict(models, frames, batch_size=batch_size, descriptors=descriptors)
    rotations = config.get('rotations')
    if rotations:
        from aiida_mad.learning.rotations import rotation_arrays

        def predict_copies(copies):
            return predict(models, copies, batch_size=batch_size)

        arrays.update(rotation_arrays(predict_copies, frames, rotations['matrices'], rotations.get('uuids')))
    predicted = time.perf_counter()
    np.savez(directory / config.get('output', 'predictions.npz'), **arrays)
    info = {
        'n_structures': len(frames),
        'n_atoms': int(arrays['offsets'][-1]),
        'models': [
            {
                'file': model.path.name,
                'kind': model.kind,
                'elements': model.elements,
                **({'descriptors': model.descriptor_kind} if descriptors else {}),
            }
            for model in models
        ],
        'device': device,
        'dtype': dtype,
        'batch_size': batch_size,
        'n_rotated': len(arrays.get('rotation_uuids', [])),
        'n_rotations': len(arrays.get('rotation_matrices', [])),
        'descriptor_dimension': int(arrays['descriptors'].shape[2]) if descriptors else None,
        'seconds_loading': loaded - start,
        'seconds_predicting': predicted - loaded,
    }
    (directory / INFO_FILE).write_text(json.dumps(info, indent=2))
    return info


def summary(info: dict) -> str:
    """Return the line printed after a successful run."""
    return (
        f'predicted {info["n_structures"]} structures ({info["n_atoms"]} atoms) with {len(info["models"])} model(s) '
        f'in {info["seconds_predicting"]:.3f} s'
    )


def main(argv=None) -> int:
    """Entry point of ``aiida-mad-predict``."""
    return run_script('predict', argv, doc=__doc__, run=run, summary=summary)


if __name__ == '__main__':  # pragma: no cover
    sys.exit(main())
