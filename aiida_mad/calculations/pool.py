"""The calcfunction that generates a candidate pool (``mad.al.create_pool``): one node for all its candidates.

:func:`create_pool` takes the pool settings (a ``Dict``, :data:`aiida_mad.learning.pool.DEFAULT_POOL_SETTINGS`) and,
for generators other than ``mp-aloe``, the parent structures; it generates the candidates batch by batch
(:func:`aiida_mad.learning.pool.generate_batches`), writes each batch as one compressed shard and returns one
``mad.pool`` node (:class:`~aiida_mad.data.pool.CandidatePoolData`) linked to its settings and parents. The same
settings give the same candidates and ids.

:class:`PoolPredictCalculation` (``mad.predict.pool``) is ``mad.predict`` on the candidates of a pool: the pool's
shards are copied to the calculation as they are (no per-candidate node, no re-writing) and read by the
``aiida-mad-predict`` script as extended-XYZ structure files; inputs, parser, outputs and exit codes are those of
:class:`~aiida_mad.calculations.predict.PredictCalculation`, with input ``pool`` in place of ``dataset`` or
``structures``.
"""

from __future__ import annotations

import io
import pathlib
import tempfile

import numpy as np
from aiida import orm
from aiida.engine import calcfunction

from aiida_mad.calculations.predict import CONFIG_FILE, PredictCalculation, model_elements
from aiida_mad.calculations.predict import validate_inputs as validate_predict
from aiida_mad.data.pool import INDEX_FILE, SHARD_FOLDER, CandidatePoolData

__all__ = ('PoolPredictCalculation', 'build_pool', 'create_pool')

#: Refusal reasons kept in the attributes (the first ones).
MAX_REASONS = 20


def build_pool(settings: dict, parents: list | None = None) -> CandidatePoolData:
    """Return an unstored pool of the candidates of ``settings`` (checked by :func:`pool_settings`).

    :param settings: the pool settings.
    :param parents: ``StructureData`` parents; the MP-ALOE prototypes when ``None`` or empty.
    :raises ValueError: for bad settings or no parent.
    """
    from aiida_mad.learning.pool import (
        generate_batches,
        load_parents,
        pool_index,
        pool_key,
        pool_settings,
        shard_name,
        write_candidates,
    )

    settings = pool_settings(settings)
    parents = sorted(parents or [], key=lambda node: node.uuid)
    atoms_parents = [node.get_ase() for node in parents] if parents else load_parents(settings)
    key = pool_key(settings, [node.uuid for node in parents])
    pool = CandidatePoolData()
    batches = []
    refused = {}
    names = []
    with tempfile.TemporaryDirectory() as folder:
        for batch in generate_batches(settings, atoms_parents, key):
            refused.update(batch.refused)
            if not batch.frames:
                continue
            name = shard_name(len(names))
            path = pathlib.Path(folder) / name
            write_candidates(batch.frames, path)
            pool.base.repository.put_object_from_file(str(path), f'{SHARD_FOLDER}/{name}')
            path.unlink()
            names.append(name)
            batch.frames = [_Light(atoms) for atoms in batch.frames]
            batches.append(batch)
    index = pool_index(batches)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **index)
    pool.base.repository.put_object_from_bytes(buffer.getvalue(), INDEX_FILE)
    from ase.data import chemical_symbols

    elements = [chemical_symbols[number] for number in sorted(set(index['numbers'].tolist()))]
    pool.base.attributes.set_many(
        {
            'settings': settings,
            'key': key,
            'n_candidates': len(index['ids']),
            'n_atoms': int(index['offsets'][-1]),
            'n_refused': len(refused),
            'refusals': {str(i): reasons[-1] if reasons else '' for i, reasons in list(refused.items())[:MAX_REASONS]},
            'elements': elements,
            'shards': names,
            'parents': [node.uuid for node in parents],
        }
    )
    return pool


class _Light:
    """What :func:`pool_index` needs of a written candidate (its atoms go out of memory with the batch)."""

    def __init__(self, atoms):
        self.numbers = atoms.numbers.copy()
        self.pbc = atoms.pbc.copy()
        self.cell = atoms.cell.copy()

    def __len__(self):
        return len(self.numbers)


@calcfunction
def create_pool(settings: orm.Dict, **parents: orm.StructureData) -> CandidatePoolData:
    """Generate the candidates of ``settings`` (from ``parents``, or the MP-ALOE prototypes) into one ``mad.pool``."""
    return build_pool(settings.get_dict(), list(parents.values()))


def validate_pool_inputs(value, ctx):
    """Check the models as ``mad.predict`` does, and that the pool has only elements every model knows."""
    pool = value.get('pool')
    if pool is None:
        return 'give the candidate pool (`pool`)'
    if value.get('dataset') is not None or value.get('structures'):
        return 'give only the `pool`: `dataset` and `structures` are for `mad.predict`'
    models = value.get('models') or {}
    try:
        for key, model in sorted(models.items()):
            unknown = sorted(set(pool.elements) - set(model_elements(model)))
            if unknown:
                return (
                    f'pool {pool.pk} has candidates with {", ".join(unknown)}, which model `{key}` (pk {model.pk}) '
                    f'was not trained on'
                )
    except ValueError as exception:
        return str(exception)
    return _validate_models(value, ctx)


def _validate_models(value, ctx):
    """Run ``mad.predict``'s checks of the models and parameters with the pool's elements as the structures."""
    elements = list(value['pool'].elements)
    if not elements:
        return f'pool {value["pool"].pk} has no candidates'
    from ase import Atoms

    probe = orm.StructureData(ase=Atoms(elements, positions=[[0.0, 0.0, 2.0 * i] for i in range(len(elements))]))
    inputs = {key: item for key, item in value.items() if key != 'pool'}
    inputs['structures'] = {'probe': probe}
    return validate_predict(inputs, ctx)


class PoolPredictCalculation(PredictCalculation):
    """``mad.predict`` on the candidates of a ``mad.pool``: its shards are copied and read as they are."""

    @classmethod
    def define(cls, spec):
        """Define the process specification: ``mad.predict``'s, with the input ``pool``."""
        super().define(spec)
        spec.input('pool', valid_type=CandidatePoolData, help='Predict the candidates of this pool.')
        spec.inputs.validator = validate_pool_inputs

    def prepare_for_submission(self, folder):
        """Write ``predict.json`` with the pool's shards as the structure files, and copy the shards."""
        import json

        calcinfo = super().prepare_for_submission(folder)
        pool = self.inputs.pool
        names = [pathlib.Path(name).name for name in pool.shard_names()]
        calcinfo.local_copy_list.extend(
            (pool.uuid, path, name) for path, name in zip(pool.shard_names(), names, strict=True)
        )
        with folder.open(CONFIG_FILE, 'r') as handle:
            config = json.load(handle)
        config['structures'] = names
        with folder.open(CONFIG_FILE, 'w') as handle:
            json.dump(config, handle, indent=2)
        return calcinfo
