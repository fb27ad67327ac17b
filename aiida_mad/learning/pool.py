"""Candidate pools: many generated structures in a few compressed shards, not one node each (pure: no AiiDA).

MP-ALOE screened about 10^8 substituted prototypes; one ``StructureData`` node per candidate would cost a database row
and a repository file each, for structures of which more than 99 % are never looked at again. A pool holds its
candidates as gzip-compressed extended-XYZ shards (``candidates-00000.extxyz.gz``, ...), written in batches, in the
conventions of the dataset's shards (:mod:`aiida_mad.dataset.extxyz`: deterministic gzip stream without name or time
stamp, every float in its shortest round-trip form, ``Lattice`` and an explicit ``pbc``), and an index of arrays
(:func:`pool_index`: candidate ids, numbers of atoms, atomic numbers, prototypes).

A candidate has no label, so its frame carries only ``Properties=species:S:1:pos:R:3`` and the strings
``source_uuid`` (the candidate id), ``subset`` and ``pbc``: any extended-XYZ reader (``ase.io.read``, and so the
``aiida-mad-predict`` script that ``mad.predict`` runs) reads the shards as they are.

Candidate ids
    ``uuid5(CANDIDATE_NAMESPACE, f'{pool_key}:{index}')``: the same generation settings give the same candidates with
    the same ids, on any machine and however the pool is cut into batches. ``pool_key`` is the sha256 of the canonical
    JSON of the settings (:func:`pool_key`).

Generation
    Candidate ``index`` draws its parent (prototype) from ``stream_rng(seed, index, PARENT_STREAM)`` and its structure
    from the generator's streams, exactly as :func:`aiida_mad.structures.registry.generate_item` does for stored
    structures; a refused item (every attempt failed :func:`~aiida_mad.structures.checks.check_structure`) is counted
    with its reasons and leaves a gap in the indices. :func:`generate_batches` yields one batch at a time, so memory
    stays that of one batch whatever the size of the pool.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import pathlib
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers, chemical_symbols

from aiida_mad.structures.registry import (
    DEFAULT_MIN_DISTANCE_FACTOR,
    PARENT_STREAM,
    canonical_json,
    generate_item,
    get_generator,
)
from aiida_mad.structures.registry import stream_rng as registry_stream_rng

__all__ = (
    'CANDIDATE_NAMESPACE',
    'DEFAULT_POOL_SETTINGS',
    'PROPERTIES',
    'CandidateBatch',
    'candidate_id',
    'generate_batches',
    'load_parents',
    'pool_index',
    'pool_key',
    'pool_settings',
    'read_candidates',
    'shard_name',
    'structure_features',
    'write_candidates',
)

#: Namespace of the candidate ids (a fixed, arbitrary uuid).
CANDIDATE_NAMESPACE = uuid.UUID('6d3e6f0a-7c55-4a59-9d3a-5e2b2f1b9a41')

#: The per-atom columns of a candidate frame.
PROPERTIES = 'species:S:1:pos:R:3'

#: Settings of a pool and their defaults: MP-ALOE's prototypes (2-8 atoms, at most 3 species) with elements of the
#: pool drawn uniformly, 1000 candidates per shard.
DEFAULT_POOL_SETTINGS: dict[str, Any] = {
    'generator': 'mp-aloe',
    'parameters': {},
    'element_pool': [],
    'count': 1000,
    'seed': 0,
    'batch_size': 1000,
    'max_attempts': 10,
    'min_distance_factor': DEFAULT_MIN_DISTANCE_FACTOR,
    'prototypes': {'min_atoms': 2, 'max_atoms': 8, 'max_species': 3},
}

_PBC = {(a, b, c): ' '.join('T' if x else 'F' for x in (a, b, c)) for a in (0, 1) for b in (0, 1) for c in (0, 1)}
_SYMBOLS = np.array(chemical_symbols, dtype=object)
_KEY_VALUE = re.compile(r'([A-Za-z_][A-Za-z0-9_-]*)=(?:"([^"]*)"|(\S+))')


def pool_settings(settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """Return ``settings`` merged over :data:`DEFAULT_POOL_SETTINGS`, after checking every key and value.

    :raises ValueError: naming the unknown key or the bad value (an unknown generator, an element that is not one, a
        count or batch size that is not a positive integer, ...).
    """
    from aiida_mad.structures.elements import validate_symbols

    settings = dict(settings or {})
    unknown = sorted(set(settings) - set(DEFAULT_POOL_SETTINGS))
    if unknown:
        raise ValueError(f'unknown pool setting(s) {", ".join(unknown)}; known: {", ".join(DEFAULT_POOL_SETTINGS)}')
    merged = {**DEFAULT_POOL_SETTINGS, **settings}
    merged['prototypes'] = {**DEFAULT_POOL_SETTINGS['prototypes'], **(settings.get('prototypes') or {})}
    generator = get_generator(merged['generator'])
    merged['generator'] = generator.name
    merged['subset'] = generator.subset
    unknown = sorted(set(merged['parameters']) - set(generator.defaults))
    if unknown:
        raise ValueError(f'unknown parameter(s) {", ".join(unknown)} of generator {generator.name}')
    merged['parameters'] = {**generator.defaults, **merged['parameters']}
    for key in ('count', 'batch_size', 'max_attempts'):
        value = merged[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f'pool setting {key} must be a positive integer, got {value!r}')
    if isinstance(merged['seed'], bool) or not isinstance(merged['seed'], int) or merged['seed'] < 0:
        raise ValueError(f'pool setting seed must be a non-negative integer, got {merged["seed"]!r}')
    if not merged['element_pool']:
        raise ValueError('pool setting element_pool is empty: give the elements the candidates may contain')
    merged['element_pool'] = sorted(validate_symbols(merged['element_pool']), key=atomic_numbers.__getitem__)
    if generator.per_parent:
        raise ValueError(f'generator {generator.name} makes structures per parent; a pool needs a random generator')
    return merged


def pool_key(settings: Mapping[str, Any], parents: Sequence[str] = ()) -> str:
    """Return the sha256 of what determines a pool's candidates: its settings (no batch size) and parent uuids."""
    payload = {key: value for key, value in settings.items() if key != 'batch_size'}
    payload['parents'] = list(parents)
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


def candidate_id(key: str, index: int) -> str:
    """Return the id of candidate ``index`` of the pool of key ``key`` (a uuid string, 36 characters)."""
    return str(uuid.uuid5(CANDIDATE_NAMESPACE, f'{key}:{int(index)}'))


def load_parents(settings: Mapping[str, Any]) -> list[Atoms]:
    """Return the MP-ALOE prototypes the settings ask for (the parents when none are given).

    :raises ValueError: if the generator needs parents (it is not ``mp-aloe``) or no prototype fits.
    """
    if settings['generator'] != 'mp-aloe':
        raise ValueError(f'generator {settings["generator"]} needs parent structures; give them')
    from aiida_mad.structures.prototypes import load_prototypes

    prototypes = load_prototypes(**settings['prototypes'])
    pool_size = len(settings['element_pool'])
    prototypes = [atoms for atoms in prototypes if len(set(atoms.numbers)) <= pool_size]
    if not prototypes:
        raise ValueError(f'no prototype fits {settings["prototypes"]} with {pool_size} element(s)')
    return prototypes


@dataclasses.dataclass
class CandidateBatch:
    """One batch of generated candidates: the structures, their indices and ids, and the refused indices."""

    frames: list[Atoms]
    indices: list[int]
    ids: list[str]
    prototypes: list[str]
    refused: dict[int, list[str]]


def generate_batches(
    settings: Mapping[str, Any], parents: Sequence[Atoms], key: str, *, start: int = 0
) -> Iterator[CandidateBatch]:
    """Yield the candidates of the pool in batches of ``settings['batch_size']`` indices, from index ``start``.

    :param settings: checked settings (:func:`pool_settings`).
    :param parents: the parents (prototypes), in a fixed order.
    :param key: the pool key (:func:`pool_key`).
    """
    count, size = settings['count'], settings['batch_size']
    for first in range(start, count, size):
        batch = CandidateBatch([], [], [], [], {})
        for index in range(first, min(first + size, count)):
            rng = registry_stream_rng(settings['seed'], index, PARENT_STREAM)
            parent = parents[int(rng.integers(len(parents)))]
            result = generate_item(settings, parent, index)
            if not result.structures:
                batch.refused[index] = result.reasons
                continue
            atoms = result.structures[0][0]
            identifier = candidate_id(key, index)
            atoms.info = {'source_uuid': identifier, 'subset': settings['subset']}
            batch.frames.append(atoms)
            batch.indices.append(index)
            batch.ids.append(identifier)
            batch.prototypes.append(str(parent.info.get('prototype', parent.get_chemical_formula())))
        yield batch


def shard_name(number: int, prefix: str = 'candidates') -> str:
    """Return the file name of shard ``number``."""
    return f'{prefix}-{number:05d}.extxyz.gz'


def _frame_text(atoms: Atoms) -> str:
    head = [str(len(atoms))]
    parts = []
    cell = atoms.cell.array
    if cell.any():
        parts.append('Lattice="' + ' '.join(repr(float(value)) for value in cell.ravel()) + '"')
    parts.append(f'Properties={PROPERTIES}')
    parts.append(f'source_uuid={atoms.info["source_uuid"]}')
    parts.append(f'subset={atoms.info["subset"]}')
    parts.append(f'pbc="{_PBC[tuple(int(flag) for flag in atoms.pbc)]}"')
    head.append(' '.join(parts))
    table = np.empty((len(atoms), 4), dtype=object)
    table[:, 0] = _SYMBOLS[atoms.numbers]
    table[:, 1:] = atoms.positions
    body = ('%s %r %r %r\n' * len(atoms)) % tuple(table.ravel().tolist())
    return '\n'.join(head) + '\n' + body


def write_candidates(frames: Sequence[Atoms], path, *, compresslevel: int = 6) -> int:
    """Write candidate frames (``info``: ``source_uuid``, ``subset``) to a gzip-compressed extended-XYZ file.

    The stream is deterministic (no file name, no time stamp): the same candidates give the same bytes. The file is
    written to a partial name and renamed, so an interrupted write leaves no truncated shard.

    :return: the number of frames written.
    """
    target = pathlib.Path(path)
    partial = target.with_name(f'.{target.name}.partial')
    try:
        with (
            open(partial, 'wb') as raw,
            gzip.GzipFile(filename='', mode='wb', fileobj=raw, compresslevel=compresslevel, mtime=0) as stream,
        ):
            stream.write(''.join(_frame_text(atoms) for atoms in frames).encode())
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return len(frames)


def read_candidates(path) -> list[Atoms]:
    """Read the candidates of a shard written by :func:`write_candidates` (``info``: ``source_uuid``, ``subset``)."""
    with gzip.open(path, 'rb') as handle:
        lines = io.TextIOWrapper(handle, encoding='utf-8').read().split('\n')
    frames = []
    position = 0
    while position < len(lines):
        if not lines[position].strip():
            position += 1
            continue
        size = int(lines[position])
        header = {key: plain or quoted for key, quoted, plain in _KEY_VALUE.findall(lines[position + 1])}
        rows = [line.split() for line in lines[position + 2 : position + 2 + size]]
        cell = np.array(header['Lattice'].split(), dtype=float).reshape(3, 3) if 'Lattice' in header else None
        atoms = Atoms(
            symbols=[row[0] for row in rows],
            positions=np.array([row[1:4] for row in rows], dtype=float),
            cell=cell,
            pbc=[flag == 'T' for flag in header['pbc'].split()],
        )
        atoms.info = {'source_uuid': header['source_uuid'], 'subset': header['subset']}
        frames.append(atoms)
        position += 2 + size
    return frames


def pool_index(batches: Sequence[CandidateBatch]) -> dict[str, np.ndarray]:
    """Return the index arrays of a pool.

    The arrays: ``ids``, ``indices``, ``natoms``, ``offsets``, ``numbers``, ``prototypes``, ``volume_per_atom`` and
    ``shard`` (the shard number of every candidate).
    """
    ids, indices, natoms, numbers, prototypes, volumes, shards = [], [], [], [], [], [], []
    for number, batch in enumerate(batches):
        ids.extend(batch.ids)
        indices.extend(batch.indices)
        prototypes.extend(batch.prototypes)
        for atoms in batch.frames:
            natoms.append(len(atoms))
            numbers.append(atoms.numbers)
            volumes.append(abs(atoms.cell.volume) / len(atoms) if all(atoms.pbc) else np.nan)
            shards.append(number)
    natoms = np.array(natoms, dtype=np.int64)
    offsets = np.zeros(len(natoms) + 1, dtype=np.int64)
    np.cumsum(natoms, out=offsets[1:])
    return {
        'ids': np.array(ids, dtype='U36'),
        'indices': np.array(indices, dtype=np.int64),
        'natoms': natoms,
        'offsets': offsets,
        'numbers': np.concatenate(numbers).astype(np.uint8) if numbers else np.zeros(0, np.uint8),
        'prototypes': np.array(prototypes, dtype=str),
        'volume_per_atom': np.array(volumes, dtype=float),
        'shard': np.array(shards, dtype=np.int64),
    }


def structure_features(numbers, offsets, elements: Sequence[str], *, extra=None) -> np.ndarray:
    """Return per-structure descriptors when no model descriptors are available: composition and ``extra`` columns.

    The columns are the fraction of every element of ``elements`` in the structure, then the columns of ``extra``
    (for example the volume per atom and the committee's mean energy per atom and its sigmas). This is a fallback
    for DIRECT: it separates chemistry and, through ``extra``, what the committee sees, but not local environments
    the way a model's last-layer features do.

    :param numbers: ``(n_atoms,)`` atomic numbers of all structures, concatenated.
    :param offsets: ``(n + 1,)`` atom offsets.
    :param elements: the chemical symbols of the composition columns.
    :param extra: ``(n, k)`` more columns, or ``None``.
    :raises ValueError: for an atom whose element is not in ``elements`` (naming it) or mismatched shapes.
    """
    numbers = np.asarray(numbers, dtype=np.int64)
    offsets = np.asarray(offsets, dtype=np.int64)
    column = np.full(len(chemical_symbols), -1, dtype=np.int64)
    for position, symbol in enumerate(elements):
        column[atomic_numbers[symbol]] = position
    columns = column[numbers]
    if np.any(columns < 0):
        atom = int(np.flatnonzero(columns < 0)[0])
        raise ValueError(f'atom {atom} is {chemical_symbols[numbers[atom]]}, not one of {", ".join(elements)}')
    n = len(offsets) - 1
    structure = np.repeat(np.arange(n), np.diff(offsets))
    counts = np.zeros((n, len(elements)))
    np.add.at(counts, (structure, columns), 1.0)
    features = counts / np.diff(offsets)[:, None]
    if extra is not None:
        extra = np.asarray(extra, dtype=float).reshape(n, -1)
        features = np.concatenate([features, extra], axis=1)
    return features
