"""``DatasetData`` (``mad.dataset``): the frames of a MAD dataset, stored in the provenance graph.

The node's repository holds the frames as gzip-compressed extended-XYZ shards (``shards/frames-00000.extxyz.gz``,
...; see :mod:`aiida_mad.dataset.extxyz`) and a per-frame index (``index.npz``: source and DFT uuids, subset, split,
number of atoms, energies, largest force, atomic numbers) that the queries and the report read without parsing the
shards. The attributes hold everything a user filters datasets on in a ``QueryBuilder``: name, fingerprint, content
hash, counts per subset and split, elements, seed and split fractions, how the frames were selected.

Why shards rather than one ``StructureData`` per frame: a MAD-sized dataset has 10⁵ frames; exporting it from
shards is a stream copy (tens of thousands of frames per second), while loading as many nodes is two orders of
magnitude slower (``bench/bench_export.py``). The DFT results stay in the graph as the dataset's inputs.
"""

from __future__ import annotations

import io
import pathlib
import tempfile
import zipfile
from collections.abc import Iterable, Sequence

import numpy as np
from aiida import orm
from ase import Atoms

__all__ = ('DatasetData',)

SHARD_FOLDER = 'shards'
INDEX_FILE = 'index.npz'
FORMAT_VERSION = 1

#: Per-frame columns of ``index.npz`` (besides ``numbers`` and ``offsets``, the atomic numbers of all frames).
INDEX_COLUMNS = (
    'source_uuid',
    'dft_uuid',
    'subset',
    'split',
    'natoms',
    'energy',
    'energy_per_atom',
    'energy_baseline_subtracted',
    'max_force',
)


def frame_index(frames: Sequence[Atoms], dft_uuids: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Return the per-frame index columns of ``frames`` (see :data:`INDEX_COLUMNS`)."""
    natoms = np.array([len(frame) for frame in frames], dtype=np.int64)
    offsets = np.zeros(len(frames) + 1, dtype=np.int64)
    np.cumsum(natoms, out=offsets[1:])
    energy = np.array([frame.info['energy'] for frame in frames], dtype=float)
    forces = np.concatenate([frame.arrays['forces'] for frame in frames]) if frames else np.zeros((0, 3))
    magnitudes = np.linalg.norm(forces, axis=1)
    max_force = np.maximum.reduceat(magnitudes, offsets[:-1]) if len(frames) else np.zeros(0)
    return {
        'source_uuid': np.array([frame.info['source_uuid'] for frame in frames], dtype='U36'),
        'dft_uuid': np.array(dft_uuids if dft_uuids is not None else [''] * len(frames), dtype='U36'),
        'subset': np.array([frame.info['subset'] for frame in frames], dtype=str),
        'split': np.array([frame.info['split'] for frame in frames], dtype='U5'),
        'natoms': natoms,
        'energy': energy,
        'energy_per_atom': energy / np.maximum(natoms, 1),
        'energy_baseline_subtracted': np.array(
            [frame.info.get('energy_baseline_subtracted', np.nan) for frame in frames], dtype=float
        ),
        'max_force': max_force,
        'numbers': np.concatenate([frame.numbers for frame in frames]).astype(np.uint8)
        if frames
        else np.zeros(0, np.uint8),
        'offsets': offsets,
    }


def _index_bytes(columns: dict[str, np.ndarray]) -> bytes:
    """Return ``index.npz`` as ``np.savez_compressed`` writes it, with a fixed time stamp: the same bytes each time."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, 'w', compression=zipfile.ZIP_DEFLATED, allowZip64=True) as archive:
        for key, value in columns.items():
            info = zipfile.ZipInfo(f'{key}.npy', date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(info, 'w', force_zip64=True) as handle:
                np.lib.format.write_array(handle, np.asanyarray(value), allow_pickle=False)
    return buffer.getvalue()


class _DatasetWriter:
    """Write the shards, index and summary of a dataset from frames given a block at a time, in canonical order.

    Only the open shard, the index columns and one digest per frame are kept: building a dataset of 10⁵ frames
    does not hold 10⁵ frames. Checks as :func:`~aiida_mad.dataset.frames.validate_frames` does: every frame
    (vectorised per block), one fingerprint, one frame per source uuid; and that the frames come in canonical order.
    """

    def __init__(self, folder: pathlib.Path, frames_per_shard: int):
        from aiida_mad.dataset.extxyz import ShardWriter
        from aiida_mad.dataset.frames import FrameSummary

        self.shards = ShardWriter(folder, frames_per_shard)
        self.summary = FrameSummary()
        self.columns: dict[str, list[np.ndarray]] = {}
        self.sources: set[str] = set()
        self.last_key: tuple[str, str] | None = None

    def __enter__(self) -> _DatasetWriter:
        return self

    def __exit__(self, *exception) -> None:
        self.shards.__exit__(*exception)

    def add(self, frames: Sequence[Atoms], dft_uuids: Sequence[str] | None = None) -> None:
        """Check ``frames`` and write them after those added before."""
        from aiida_mad.dataset.frames import FrameError, check_frames

        if dft_uuids is not None and len(dft_uuids) != len(frames):
            raise ValueError(f'{len(dft_uuids)} DFT uuids for {len(frames)} frames')
        check_frames(frames)
        start = self.summary.n_frames
        for offset, frame in enumerate(frames):
            key = (frame.info['subset'], frame.info['source_uuid'])
            if key[1] in self.sources:
                raise FrameError(f'frame {start + offset} has the same source_uuid {key[1]} as an earlier frame')
            if self.last_key is not None and key < self.last_key:
                raise FrameError(f'frame {start + offset} ({key}) comes after {self.last_key}: not in canonical order')
            self.sources.add(key[1])
            self.last_key = key
        self.summary.add(frames)
        if len(self.summary.fingerprints) > 1:
            found = ', '.join(f'{value} ({count} frames)' for value, count in self.summary.fingerprints.most_common())
            raise FrameError(f'frames mix {len(self.summary.fingerprints)} level-of-theory fingerprints: {found}')
        self.shards.write(frames, validate=False)
        for key, column in frame_index(frames, dft_uuids).items():
            if key != 'offsets':
                self.columns.setdefault(key, []).append(column)

    def index(self) -> dict[str, np.ndarray]:
        """Return the index columns of every frame added (see :func:`frame_index`)."""
        columns = {key: np.concatenate(blocks) for key, blocks in self.columns.items()}
        offsets = np.zeros(len(columns['natoms']) + 1, dtype=np.int64)
        np.cumsum(columns['natoms'], out=offsets[1:])
        columns['offsets'] = offsets
        return columns


class DatasetData(orm.Data):
    """A MAD dataset: frames of one level of theory, split per subset, with their selection record.

    Build it with the ``mad.dataset`` work chain (``aiida-mad dataset build``), which links it to every DFT result
    it holds; the constructor is the low-level part that stores given frames, :meth:`from_blocks` the one that streams
    them.
    """

    def __init__(
        self,
        frames: Sequence[Atoms] | None = None,
        *,
        name: str | None = None,
        seed: int | None = None,
        fractions: Sequence[float] | None = None,
        dft_uuids: Sequence[str] | None = None,
        selection: dict | None = None,
        atomic_energies: dict[str, float] | None = None,
        frames_per_shard: int = 10_000,
        **kwargs,
    ):
        """Store ``frames`` (validated: one fingerprint, one frame per source) in the node's repository.

        :param frames: the frames (see :mod:`aiida_mad.dataset.frames`), in any order; stored in canonical order.
        :param name: the dataset name.
        :param seed: the seed of the splits.
        :param fractions: the ``(train, val, test)`` fractions of the splits.
        :param dft_uuids: uuid of the DFT work chain of each frame (same order as ``frames``).
        :param selection: the selection record (per-subset counts of used and excluded results, thresholds).
        :param atomic_energies: the isolated-atom energies (eV) of the baseline, by element.
        :param frames_per_shard: at most this many frames per shard file.
        """
        super().__init__(**kwargs)
        if frames is None:
            return
        from aiida_mad.dataset.frames import sorted_frames, validate_frames

        if not name:
            raise ValueError('a dataset needs a name')
        frames = list(frames)
        if not frames:
            raise ValueError(f'dataset {name}: no frames')
        if dft_uuids is not None and len(dft_uuids) != len(frames):
            raise ValueError(f'dataset {name}: {len(dft_uuids)} DFT uuids for {len(frames)} frames')
        validate_frames(frames)
        order = {id(frame): index for index, frame in enumerate(frames)}
        frames = sorted_frames(frames)
        if dft_uuids is not None:
            dft_uuids = [dft_uuids[order[id(frame)]] for frame in frames]
        self._write(
            [(frames, dft_uuids)],
            name=name,
            seed=seed,
            fractions=fractions,
            selection=selection,
            atomic_energies=atomic_energies,
            frames_per_shard=frames_per_shard,
        )

    @classmethod
    def from_blocks(
        cls,
        blocks: Iterable[tuple[Sequence[Atoms], Sequence[str] | None]],
        *,
        name: str,
        seed: int | None = None,
        fractions: Sequence[float] | None = None,
        selection: dict | None = None,
        atomic_energies: dict[str, float] | None = None,
        frames_per_shard: int = 10_000,
    ) -> DatasetData:
        """Return a new dataset from ``(frames, dft_uuids)`` blocks in canonical order (subset, then source uuid).

        The same node as the constructor given every frame at once (same repository bytes and attributes), but each
        block is checked, written to the shards and dropped before the next is read: the blocks can come from a
        generator, so memory does not grow with the number of frames. Raises ``FrameError`` as the constructor does,
        and also when the frames are not in canonical order.
        """
        node = cls()
        node._write(
            blocks,
            name=name,
            seed=seed,
            fractions=fractions,
            selection=selection,
            atomic_energies=atomic_energies,
            frames_per_shard=frames_per_shard,
        )
        return node

    def _write(self, blocks, *, name, seed, fractions, selection, atomic_energies, frames_per_shard: int) -> None:
        """Write the shards and the index of ``blocks`` to the repository, and set the attributes."""
        from aiida_mad.dataset.splits import validate_fractions

        if not name:
            raise ValueError('a dataset needs a name')
        with tempfile.TemporaryDirectory() as folder:
            with _DatasetWriter(pathlib.Path(folder), frames_per_shard) as writer:
                for frames, dft_uuids in blocks:
                    writer.add(frames, dft_uuids)
            if writer.summary.n_frames == 0:
                raise ValueError(f'dataset {name}: no frames')
            for path in writer.shards.paths:
                self.base.repository.put_object_from_file(str(path), f'{SHARD_FOLDER}/{path.name}')
            self.base.repository.put_object_from_bytes(_index_bytes(writer.index()), INDEX_FILE)
        summary = writer.summary.summary()
        self.base.attributes.set_many(
            {
                'format_version': FORMAT_VERSION,
                'name': name,
                'fingerprint': summary['fingerprints'][0],
                'content_hash': writer.summary.content_hash(),
                'n_frames': summary['n_frames'],
                'n_atoms': summary['n_atoms'],
                'counts': summary['counts'],
                'split_counts': summary['split_counts'],
                'subsets': sorted(summary['counts']),
                'elements': summary['elements'],
                'n_with_stress': summary['n_with_stress'],
                'n_with_dos': summary['n_with_dos'],
                'n_with_baseline': summary['n_with_baseline'],
                'seed': seed,
                'fractions': list(validate_fractions(fractions)) if fractions is not None else None,
                'selection': selection or {},
                'atomic_energies': dict(sorted((atomic_energies or {}).items())),
                'shards': [path.name for path in writer.shards.paths],
            }
        )

    # ------------------------------------------------------------------------------------------------------------
    # Attributes

    @property
    def name(self) -> str:
        """Return the dataset name."""
        return self.base.attributes.get('name')

    @property
    def fingerprint(self) -> str:
        """Return the level-of-theory fingerprint shared by every frame."""
        return self.base.attributes.get('fingerprint')

    @property
    def content_hash(self) -> str:
        """Return the order-independent content hash of the frames (:func:`aiida_mad.dataset.frames.content_hash`)."""
        return self.base.attributes.get('content_hash')

    @property
    def n_frames(self) -> int:
        """Return the number of frames."""
        return self.base.attributes.get('n_frames')

    @property
    def counts(self) -> dict[str, dict[str, int]]:
        """Return ``{subset: {split: frames}}``."""
        return self.base.attributes.get('counts')

    @property
    def elements(self) -> list[str]:
        """Return the chemical symbols present, by atomic number."""
        return self.base.attributes.get('elements')

    @property
    def selection(self) -> dict:
        """Return the selection record: per-subset used and excluded counts, and the thresholds."""
        return self.base.attributes.get('selection', {})

    @property
    def theory(self) -> dict:
        """Return the level of theory in full and in words, empty if not recorded.

        Keys ``level_of_theory``, ``protocol``, ``code_version``, ``production``, ``description``: see
        :func:`aiida_mad.workflows.dft.theory_summary`.
        """
        return self.selection.get('theory') or {}

    @property
    def theory_description(self) -> str:
        """Return the level of theory in plain words, or a sentence saying it was not recorded."""
        return self.theory.get('description') or f'not recorded (fingerprint {self.fingerprint[:16]})'

    @property
    def atomic_energies(self) -> dict[str, float]:
        """Return the isolated-atom energies (eV) of the baseline, by element (empty without a baseline)."""
        return self.base.attributes.get('atomic_energies', {})

    # ------------------------------------------------------------------------------------------------------------
    # Frames

    def shard_names(self) -> list[str]:
        """Return the repository paths of the shards, in order."""
        return [f'{SHARD_FOLDER}/{name}' for name in self.base.attributes.get('shards', [])]

    def frames(self) -> list[Atoms]:
        """Return every frame, in canonical order (subset, then source uuid)."""
        from aiida_mad.dataset.extxyz import read_shards

        with self.base.repository.as_path(SHARD_FOLDER) as folder:
            return read_shards([pathlib.Path(folder) / pathlib.Path(name).name for name in self.shard_names()])

    def index(self) -> dict[str, np.ndarray]:
        """Return the per-frame index (see :data:`INDEX_COLUMNS`, plus ``numbers`` and ``offsets``)."""
        with self.base.repository.open(INDEX_FILE, 'rb') as handle, np.load(handle, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}

    def write_split_files(self, directory, *, prefix: str = 'mad', missing_stress: str = 'nan') -> dict:
        """Write ``<prefix>-train.xyz``, ``-val.xyz``, ``-test.xyz`` into ``directory`` straight from the shards.

        :return: ``{split: (path, number of frames)}``.
        """
        from aiida_mad.dataset.extxyz import write_split_files_from_shards

        with self.base.repository.as_path(SHARD_FOLDER) as folder:
            shards = [pathlib.Path(folder) / pathlib.Path(name).name for name in self.shard_names()]
            return write_split_files_from_shards(shards, directory, prefix=prefix, missing_stress=missing_stress)
