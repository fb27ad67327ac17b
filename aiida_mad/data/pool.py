"""``CandidatePoolData`` (``mad.pool``): the candidate structures of one active-learning pool, in one node.

The repository holds the candidates as gzip-compressed extended-XYZ shards (``shards/candidates-00000.extxyz.gz``,
...; :mod:`aiida_mad.learning.pool`) and an index (``index.npz``: candidate ids, generation indices, numbers of atoms,
atomic numbers, prototypes, volumes, shard of each candidate). The attributes hold the generation settings, the pool
key, the counts (made, refused with their first reasons) and the elements. Only the candidates that active learning
selects become ``StructureData`` nodes (:func:`aiida_mad.calculations.selection.select_candidates`), each linked to the
pool and carrying its candidate id.
"""

from __future__ import annotations

import pathlib

import numpy as np
from aiida import orm
from ase import Atoms

__all__ = ('CandidatePoolData',)

SHARD_FOLDER = 'shards'
INDEX_FILE = 'index.npz'


class CandidatePoolData(orm.Data):
    """A pool of generated candidate structures stored as compressed shards with an index."""

    @property
    def settings(self) -> dict:
        """Return the generation settings."""
        return self.base.attributes.get('settings')

    @property
    def key(self) -> str:
        """Return the pool key (sha256 of the settings and parents): the namespace of the candidate ids."""
        return self.base.attributes.get('key')

    @property
    def n_candidates(self) -> int:
        """Return the number of candidates."""
        return self.base.attributes.get('n_candidates')

    @property
    def elements(self) -> list[str]:
        """Return the chemical symbols present in the candidates, by atomic number."""
        return self.base.attributes.get('elements')

    def shard_names(self) -> list[str]:
        """Return the repository paths of the shards, in order."""
        return [f'{SHARD_FOLDER}/{name}' for name in self.base.attributes.get('shards', [])]

    def index(self) -> dict[str, np.ndarray]:
        """Return the index arrays (see :func:`aiida_mad.learning.pool.pool_index`)."""
        with self.base.repository.open(INDEX_FILE, 'rb') as handle, np.load(handle, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}

    def candidates(self, ids=None) -> list[Atoms]:
        """Return the candidates (all, or those whose ids are in ``ids``, in pool order), read from the shards."""
        from aiida_mad.learning.pool import read_candidates

        wanted = None if ids is None else set(ids)
        shards = self.shard_names()
        if wanted is not None:
            index = self.index()
            numbers = sorted({int(s) for s, i in zip(index['shard'], index['ids'], strict=True) if str(i) in wanted})
            shards = [shards[number] for number in numbers]
        frames = []
        with self.base.repository.as_path(SHARD_FOLDER) as folder:
            for name in shards:
                for atoms in read_candidates(pathlib.Path(folder) / pathlib.Path(name).name):
                    if wanted is None or atoms.info['source_uuid'] in wanted:
                        frames.append(atoms)
        return frames
