"""The calcfunction that builds a ``mad.dataset`` node from DFT results (entry point ``mad.build_dataset``).

A dataset has up to five inputs per frame, so :class:`aiida_mad.workflows.dataset.DatasetWorkChain` runs it through
:data:`BulkLinkBuildDataset` (see :mod:`aiida_mad.calculations.bulk`) with the per-frame inputs given by pk: same
provenance (every result is an input, with the same link label), links written in bulk, no node loaded.

The frames are built and written a block of :data:`~aiida_mad.constants.QUERY_CHUNK_SIZE` at a time, in the
dataset's canonical order (subset, then source uuid): one query for the attributes and repository layout of every
input node of the block, one pass over the object store for its arrays, then the block goes to the shards
(:meth:`~aiida_mad.data.dataset.DatasetData.from_blocks`) and is dropped. Memory does not grow with the number of
frames beyond the per-frame parameters, the index and one digest per frame.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from aiida import orm
from aiida.engine import calcfunction
from aiida.manage import get_manager
from ase import Atoms

from aiida_mad.calculations.bulk import bulk_link_process_class, linked_inputs, query_rows
from aiida_mad.constants import FRAMES_PER_SHARD, QUERY_CHUNK_SIZE
from aiida_mad.data.dataset import DatasetData
from aiida_mad.dataset.frames import make_frame
from aiida_mad.dataset.splits import assign_split, validate_fractions

__all__ = ('BulkLinkBuildDataset', 'build_dataset')

#: The per-frame namespaces: required ones first; ``stresses`` (not for 0D) and ``dos`` are optional.
FRAME_NAMESPACES = ('structures', 'energies', 'forces', 'stresses', 'dos')


@calcfunction
def build_dataset(parameters: orm.Dict, **inputs: Any) -> dict[str, Any]:
    """Build a ``mad.dataset`` node from DFT results; every result it uses is one of its inputs.

    ``parameters`` holds ``name``, ``seed``, ``fractions``, ``fingerprint``, ``frames_per_shard``, ``selection``
    (the selection record, stored on the dataset) and ``frames``: for each frame label ``fNNNNNN``, the
    ``source_uuid`` (the structure that was labelled: it drives the split), ``dft_uuid`` and ``subset``. The inputs
    are namespaces keyed by frame label: ``structures`` (the cell pw.x used), ``energies`` (eV), ``forces``
    (eV/Å), ``stresses`` (eV/Å³, ASE sign; not for 0D), ``dos`` (optional) and ``baselines``: isolated-atom tables
    of the same fingerprint, merged in label order (energies in eV by element). With baselines every frame gets
    ``energy_baseline_subtracted`` = E − Σ E_atom. Through :data:`BulkLinkBuildDataset` the per-frame namespaces can
    be given by pk (``linked``), with the same links.
    """
    settings = parameters.get_dict()
    inputs = {**linked_inputs(), **inputs}  # the namespaces given by pk to the bulk-linked process, if any
    known = {*FRAME_NAMESPACES, 'baselines'}
    unexpected = sorted(set(inputs) - known)
    if unexpected:
        raise ValueError(f'unexpected inputs {", ".join(unexpected)}: expected the namespaces {sorted(known)}')
    fractions = validate_fractions(settings['fractions'])
    seed = settings['seed']
    atomic: dict[str, float] = {}
    for label in sorted(inputs.get('baselines', {})):
        atomic.update(inputs['baselines'][label].get_dict())
    frames = settings['frames']
    missing = [
        (namespace, label)
        for namespace in ('structures', 'energies', 'forces')
        for label in frames
        if label not in inputs.get(namespace, {})
    ]
    if missing:
        namespace, label = min(missing, key=lambda pair: pair[1])
        raise ValueError(f'frame {label}: no input {namespace}__{label} ({len(missing)} per-frame inputs missing)')
    order = sorted(frames, key=lambda label: (frames[label]['subset'], frames[label]['source_uuid']))
    namespaces = {namespace: inputs.get(namespace, {}) for namespace in FRAME_NAMESPACES}

    def blocks():
        for first in range(0, len(order), QUERY_CHUNK_SIZE):
            labels = order[first : first + QUERY_CHUNK_SIZE]
            block = _read_block(labels, namespaces)
            built = []
            for label in labels:
                meta = frames[label]
                symbols, positions, cell, pbc = block['structures'][label]
                energy = block['energies'][label]
                baseline = None
                if atomic:
                    lacking = sorted(set(symbols) - set(atomic))
                    if lacking:
                        formula = Atoms(symbols).get_chemical_formula()
                        raise ValueError(f'frame {label} ({formula}): no baseline energy for {lacking}')
                    baseline = energy - sum(atomic[symbol] for symbol in symbols)
                built.append(
                    make_frame(
                        symbols,
                        positions,
                        cell=cell,
                        pbc=pbc,
                        energy=energy,
                        energy_baseline_subtracted=baseline,
                        forces=block['forces'][label],
                        stress=block['stresses'].get(label),
                        dos=block['dos'].get(label),
                        subset=meta['subset'],
                        split=assign_split(meta['source_uuid'], seed, fractions),
                        source_uuid=meta['source_uuid'],
                        fingerprint=settings['fingerprint'],
                        validate=False,
                    )
                )
            yield built, [frames[label]['dft_uuid'] for label in labels]

    dataset = DatasetData.from_blocks(
        blocks(),
        name=settings['name'],
        seed=seed,
        fractions=fractions,
        selection=settings.get('selection'),
        atomic_energies=atomic,
        frames_per_shard=settings.get('frames_per_shard', FRAMES_PER_SHARD),
    )
    return {'dataset': dataset}


#: :func:`build_dataset` with bulk-written links: a dataset has up to five inputs per frame.
BulkLinkBuildDataset = bulk_link_process_class(build_dataset)


def _pk(node) -> int:
    return node if isinstance(node, int) else node.pk


def _read_block(labels: Sequence[str], namespaces: Mapping[str, Mapping[str, orm.Data | int]]) -> dict[str, dict]:
    """Return ``{namespace: {label: value}}`` of the frames ``labels``: one query, one pass over the object store.

    ``structures`` gives ``(symbols, positions, cell, pbc)`` from the ``StructureData`` attributes, ``energies`` the
    ``Float`` value, ``forces``, ``stresses`` and ``dos`` the ``.npy`` array of the ``ArrayData`` (``forces``,
    ``stress``, ``dos``), read from the node's repository layout ``{'o': {name: {'k': key}}}``.
    """
    wanted = {
        namespace: {label: _pk(nodes[label]) for label in labels if label in nodes}
        for namespace, nodes in namespaces.items()
    }
    attributes = _project(wanted, ('structures', 'energies'), 'attributes')
    layouts = _project(wanted, ('forces', 'stresses', 'dos'), 'repository_metadata')

    block: dict[str, dict] = {}
    block['structures'] = {label: _structure(pk, attributes[pk]) for label, pk in wanted['structures'].items()}
    energies = block['energies'] = {}
    for label, pk in wanted['energies'].items():
        value = attributes[pk].get('value')
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f'energies__{label}: node<{pk}> holds no number (a Float of the energy in eV)')
        energies[label] = value
    keys: dict[str, list[tuple[str, str]]] = {}
    for namespace, name in (('forces', 'forces'), ('stresses', 'stress'), ('dos', 'dos')):
        block[namespace] = {}
        for label, pk in wanted[namespace].items():
            entry = (layouts[pk] or {}).get('o', {}).get(f'{name}.npy')
            if entry is None or 'k' not in entry:
                raise ValueError(f'{namespace}__{label}: node<{pk}> has no array {name!r}')
            keys.setdefault(entry['k'], []).append((namespace, label))
    repository = get_manager().get_profile_storage().get_repository()
    for key, stream in repository.iter_object_streams(list(keys)):
        array = _load_npy(stream.read())
        for namespace, label in keys.pop(key):
            block[namespace][label] = array
    if keys:
        namespace, label = next(iter(keys.values()))[0]
        raise ValueError(f'the repository lacks {len(keys)} arrays, e.g. that of {namespace}__{label}')
    return block


def _project(wanted: Mapping[str, Mapping[str, int]], namespaces: Sequence[str], column: str) -> dict[int, Any]:
    """Return ``{pk: column}`` of the nodes of ``namespaces`` in ``wanted``, one query per chunk of pks."""
    pks = sorted({pk for namespace in namespaces for pk in wanted[namespace].values()})
    values = {}
    for first in range(0, len(pks), QUERY_CHUNK_SIZE):
        chunk = pks[first : first + QUERY_CHUNK_SIZE]
        query = orm.QueryBuilder().append(orm.Node, filters={'id': {'in': chunk}}, project=['id', column])
        values.update(query_rows(query))
    absent = sorted(set(pks) - set(values))
    if absent:
        raise ValueError(f'{len(absent)} inputs of the dataset do not exist, e.g. node<{absent[0]}>')
    return values


#: The header of a ``.npy`` file as ``np.save`` writes a C-ordered little-endian float or integer array.
_NPY_HEADER = re.compile(rb"\{'descr': '(<f8|<i8)', 'fortran_order': False, 'shape': \(([0-9, ]*)\), \} *\n")


def _load_npy(data: bytes) -> np.ndarray:
    """Return the array of a ``.npy`` file: as ``np.load``, without its generic header parser in the common case."""
    if data[:8] == b'\x93NUMPY\x01\x00':
        length = int.from_bytes(data[8:10], 'little')
        match = _NPY_HEADER.fullmatch(data, 10, 10 + length)
        if match:
            shape = tuple(int(size) for size in match.group(2).split(b',') if size.strip())
            array = np.frombuffer(data, dtype=match.group(1).decode(), offset=10 + length)
            if array.size == math.prod(shape):
                return array.reshape(shape).copy()  # writable, as np.load gives
    return np.load(io.BytesIO(data), allow_pickle=False)


def _structure(pk: int, attributes: Mapping) -> tuple[list[str], list, list, tuple[bool, bool, bool]]:
    """Return ``(symbols, positions, cell, pbc)`` of the attributes of an ordered ``StructureData``."""
    try:
        kinds, sites, cell = attributes['kinds'], attributes['sites'], attributes['cell']
        pbc = (attributes['pbc1'], attributes['pbc2'], attributes['pbc3'])
    except KeyError as exception:
        raise ValueError(f'node<{pk}> is no StructureData: it has no {exception.args[0]!r} attribute') from None
    symbols = {}
    for kind in kinds:
        if len(kind['symbols']) != 1 or abs(sum(kind['weights']) - 1.0) > 1e-12:
            raise ValueError(f'StructureData<{pk}>: kind {kind["name"]} is an alloy or has vacancies')
        symbols[kind['name']] = kind['symbols'][0]
    return [symbols[site['kind_name']] for site in sites], [site['position'] for site in sites], cell, pbc
