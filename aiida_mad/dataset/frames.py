"""The in-memory frame model shared by the dataset, its exports and its records.

A *frame* is an :class:`ase.Atoms` (positions in Å, cell in Å, ``pbc``) that carries one DFT result:

======================================  ==================================================================
``info['energy']``                      total energy, eV (``float``)
``info['energy_baseline_subtracted']``  optional: energy minus the isolated-atom baseline Σ E_atom, eV
``info['stress']``                      optional ``(3, 3)`` stress, eV/Å³, ASE sign (positive = tensile);
                                        absent for 0D (non-periodic) frames
``info['subset']``                      subset name (``mc3d``, ``mc3d-rattled``, ...)
``info['split']``                       ``'train'``, ``'val'`` or ``'test'``
``info['source_uuid']``                 uuid of the structure the frame comes from (drives the split)
``info['fingerprint']``                 level-of-theory fingerprint of the DFT result
``info['dos']``                         optional 1D ``float`` array, states/eV (NaN = masked grid point)
``arrays['forces']``                    ``(N, 3)`` forces, eV/Å
======================================  ==================================================================

No other ``info`` key or per-atom array is allowed: the writers store exactly this model, so a frame that passes
:func:`validate_frame` survives every export unchanged.

Why ``ase.Atoms`` rather than a columnar table: every consumer (ASE, chemiscope, metatrain, MACE, the AiiDA
``StructureData`` converters) already speaks ``Atoms``, and the cost is small: the writers in
:mod:`aiida_mad.dataset.extxyz` concatenate the per-frame arrays block-wise and format them with numpy, so building
and writing tens of thousands of frames stays well above 5 000 frames per second.

String fields (subset, split, source uuid, fingerprint) must be single tokens that the extended-XYZ reader cannot
mistake for a number or a boolean, so that they survive a round trip through ``ase.io.read`` unchanged.
"""

from __future__ import annotations

import hashlib
import math
import re
import struct
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols

__all__ = [
    'SPLITS',
    'FrameError',
    'FrameSummary',
    'check_frames',
    'content_hash',
    'frame_label',
    'is_zero_dimensional',
    'make_frame',
    'sorted_frames',
    'summarize',
    'validate_frame',
    'validate_frames',
]

#: The three splits, in file order.
SPLITS = ('train', 'val', 'test')

#: ``info`` keys every frame carries.
REQUIRED_INFO = ('energy', 'subset', 'split', 'source_uuid', 'fingerprint')

#: ``info`` keys a frame may carry.
OPTIONAL_INFO = ('energy_baseline_subtracted', 'stress', 'dos')

#: ``info`` keys that hold single-token strings.
STRING_INFO = ('subset', 'split', 'source_uuid', 'fingerprint')

_KNOWN_INFO = frozenset(REQUIRED_INFO + OPTIONAL_INFO)
_REQUIRED_INFO_SET = frozenset(REQUIRED_INFO)
_BOOL_WORDS = frozenset({'T', 'F', 'true', 'false', 'True', 'False', 'TRUE', 'FALSE'})
_UNSAFE_CHARACTERS = re.compile(r'[\s"\'{}\[\]=,\\]')
_HASH_VERSION = b'aiida-mad-frame-v1'
_INFO_KEYS = [
    (key, f'{key}='.encode(), f'{key}-'.encode()) for key in ('energy', 'energy_baseline_subtracted', 'stress', 'dos')
]
_FLOAT = struct.Struct('<d')


class FrameError(ValueError):
    """A frame does not follow the frame model; the message names the frame and the problem."""


def frame_label(frame: Atoms, index: int | None = None) -> str:
    """Return how error messages name a frame: its position (if known) and its source uuid."""
    uuid = frame.info.get('source_uuid', '<no source_uuid>') if isinstance(frame, Atoms) else '<not an Atoms>'
    return f'frame {index} (source_uuid {uuid})' if index is not None else f'frame (source_uuid {uuid})'


def is_zero_dimensional(frame: Atoms) -> bool:
    """Return whether the frame is non-periodic in every direction (a cluster or a molecule)."""
    return not bool(np.any(frame.pbc))


def make_frame(
    numbers,
    positions,
    *,
    energy: float,
    forces,
    subset: str,
    split: str,
    source_uuid: str,
    fingerprint: str,
    cell=None,
    pbc=False,
    stress=None,
    energy_baseline_subtracted: float | None = None,
    dos=None,
    validate: bool = True,
) -> Atoms:
    """Build a frame from plain values.

    :param numbers: atomic numbers or chemical symbols.
    :param positions: ``(N, 3)`` Cartesian positions, Å.
    :param energy: total energy, eV.
    :param forces: ``(N, 3)`` forces, eV/Å.
    :param subset: subset name.
    :param split: ``'train'``, ``'val'`` or ``'test'``.
    :param source_uuid: uuid of the source structure.
    :param fingerprint: level-of-theory fingerprint.
    :param cell: ``(3, 3)`` cell, Å (``None``: no cell).
    :param pbc: periodic boundary conditions (one bool or three).
    :param stress: ``(3, 3)`` stress or its Voigt form ``(xx, yy, zz, yz, xz, xy)``, eV/Å³, ASE sign.
    :param energy_baseline_subtracted: energy minus the isolated-atom baseline, eV.
    :param dos: 1D density of states, states/eV.
    :param validate: check the frame with :func:`validate_frame` before returning it.
    :return: the frame.
    """
    frame = Atoms(numbers, positions=positions, cell=cell, pbc=pbc)
    frame.info['energy'] = float(energy)
    if energy_baseline_subtracted is not None:
        frame.info['energy_baseline_subtracted'] = float(energy_baseline_subtracted)
    if stress is not None:
        frame.info['stress'] = _stress_matrix(stress)
    frame.info['subset'] = subset
    frame.info['split'] = split
    frame.info['source_uuid'] = source_uuid
    frame.info['fingerprint'] = fingerprint
    if dos is not None:
        frame.info['dos'] = np.asarray(dos, dtype=float)
    frame.arrays['forces'] = np.array(forces, dtype=float)
    if validate:
        validate_frame(frame)
    return frame


def _stress_matrix(stress) -> np.ndarray:
    """Return a ``(3, 3)`` stress from a ``(3, 3)``, 9-long (row-major) or Voigt 6-long input."""
    array = np.asarray(stress, dtype=float)
    if array.shape == (6,):
        xx, yy, zz, yz, xz, xy = array
        return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    if array.shape == (9,):
        return array.reshape(3, 3)
    return array


def safe_token(value) -> str | None:
    """Return why ``value`` cannot be a single-token extended-XYZ string, or ``None`` if it can."""
    if not isinstance(value, str):
        return f'is {type(value).__name__}, expected str'
    if not value:
        return 'is empty'
    if _UNSAFE_CHARACTERS.search(value):
        return f'{value!r} contains whitespace, a quote, a bracket, "=", "," or a backslash'
    if value in _BOOL_WORDS:
        return f'{value!r} would be read back as a boolean'
    try:
        float(value)
    except ValueError:
        return None
    return f'{value!r} would be read back as a number'


def _finite(array: np.ndarray) -> bool:
    """Return whether every value is finite (a finite sum proves it; otherwise check element-wise)."""
    return math.isfinite(array.sum()) or bool(np.isfinite(array).all())


def validate_frame(frame: Atoms, index: int | None = None) -> None:
    """Check that ``frame`` follows the frame model.

    :param frame: the frame.
    :param index: its position in a list, used in the error message.
    :raises FrameError: naming the frame (position and source uuid) and the first problem found.
    """
    if not isinstance(frame, Atoms):
        raise FrameError(f'{frame_label(frame, index)}: expected an ase.Atoms, got {type(frame).__name__}')
    problem = _frame_problem(frame)
    if problem is not None:
        raise FrameError(f'{frame_label(frame, index)}: {problem}')


def _frame_problem(frame: Atoms) -> str | None:
    """Return the first way in which ``frame`` breaks the frame model, or ``None``."""
    info = frame.info
    arrays = frame.arrays
    natoms = len(frame)
    if natoms == 0:
        return 'has no atoms'
    numbers = arrays['numbers']
    if numbers.min() < 1 or numbers.max() >= len(chemical_symbols):
        return f'atomic numbers must lie in 1..{len(chemical_symbols) - 1}, got {sorted(set(numbers.tolist()))}'
    if not _finite(arrays['positions']):
        return 'positions are not all finite'
    cell = frame.cell.array
    if not _finite(cell):
        return 'cell is not finite'
    pbc = frame.pbc
    for axis in range(3):
        if pbc[axis] and not cell[axis].any():
            return f'is periodic along cell vector {axis} but that vector is zero'

    for key in REQUIRED_INFO:
        if key not in info:
            return f'info[{key!r}] is missing'
    if len(info) > len(REQUIRED_INFO):
        unknown = set(info) - _KNOWN_INFO
        if unknown:
            return f'unknown info keys {sorted(unknown)} (the frame model has {REQUIRED_INFO + OPTIONAL_INFO})'
    for key in STRING_INFO:
        problem = safe_token(info[key])
        if problem is not None:
            return f'info[{key!r}] {problem}'
    if info['split'] not in SPLITS:
        return f"info['split'] is {info['split']!r}, expected one of {SPLITS}"

    for key in ('energy', 'energy_baseline_subtracted'):
        if key in info:
            value = info[key]
            if isinstance(value, bool) or not isinstance(value, float | int | np.floating | np.integer):
                return f'info[{key!r}] is {type(value).__name__}, expected a float (eV)'
            if not math.isfinite(value):
                return f'info[{key!r}] is not finite: {value}'

    forces = arrays.get('forces')
    if forces is None:
        return "arrays['forces'] is missing"
    if forces.shape != (natoms, 3):
        return f"arrays['forces'] has shape {forces.shape}, expected ({natoms}, 3)"
    if not _finite(forces):
        return "arrays['forces'] is not all finite"
    if len(arrays) > 3:
        unknown_arrays = sorted(set(arrays) - {'numbers', 'positions', 'forces'})
        return f'unknown per-atom arrays {unknown_arrays} (the frame model has only forces)'

    stress = info.get('stress')
    if stress is not None:
        if not isinstance(stress, np.ndarray) or stress.shape != (3, 3):
            shape = getattr(stress, 'shape', type(stress).__name__)
            return f"info['stress'] must be a (3, 3) array (eV/Å³), got {shape}"
        if not _finite(stress):
            return "info['stress'] is not all finite"
        if not pbc.any():
            return "has info['stress'] but is non-periodic (0D): stress is only defined for periodic frames"

    dos = info.get('dos')
    if dos is not None:
        if not isinstance(dos, np.ndarray) or dos.ndim != 1 or dos.size == 0 or dos.dtype.kind != 'f':
            return f"info['dos'] must be a non-empty 1D float array (states/eV), got {_describe(dos)}"
        if np.isinf(dos).any():
            return "info['dos'] has infinite values (NaN marks masked grid points, inf is not allowed)"
    return None


def _describe(value) -> str:
    if isinstance(value, np.ndarray):
        return f'array of shape {value.shape} and dtype {value.dtype}'
    return type(value).__name__


def check_frames(frames: Sequence[Atoms]) -> None:
    """Check every frame like :func:`validate_frame`, with the numeric checks vectorised over all frames.

    Structural checks (keys, shapes, strings) run per frame in Python; finiteness and ranges of positions, cells,
    forces, energies and stresses run once on concatenated arrays. When a vectorised check fails, the frames are
    checked one by one so that the error names the first offending frame.

    :raises FrameError: naming the first frame (position and source uuid) that breaks the frame model.
    """
    good_tokens: set[str] = set()
    numbers, positions, forces, cells, pbcs, scalars, stresses = [], [], [], [], [], [], []
    for index, frame in enumerate(frames):
        if not isinstance(frame, Atoms):
            validate_frame(frame, index)
        info = frame.info
        arrays = frame.arrays
        natoms = len(arrays['positions'])
        force = arrays.get('forces')
        if (
            natoms == 0
            or len(arrays) != 3
            or force is None
            or force.shape != (natoms, 3)
            or not _REQUIRED_INFO_SET.issubset(info)
            or not _KNOWN_INFO.issuperset(info)
            or info['split'] not in SPLITS
        ):
            validate_frame(frame, index)
        for key in STRING_INFO:
            token = info[key]
            if token not in good_tokens:
                if safe_token(token) is not None:
                    validate_frame(frame, index)
                if key != 'source_uuid':
                    good_tokens.add(token)
        for key in ('energy', 'energy_baseline_subtracted'):
            value = info.get(key)
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, float | int | np.floating | np.integer):
                    validate_frame(frame, index)
                scalars.append(value)
        pbc = frame.pbc
        stress = info.get('stress')
        if stress is not None:
            if not isinstance(stress, np.ndarray) or stress.shape != (3, 3) or not pbc.any():
                validate_frame(frame, index)
            stresses.append(stress)
        if 'dos' in info:
            validate_frame(frame, index)
        numbers.append(arrays['numbers'])
        positions.append(arrays['positions'])
        forces.append(force)
        cells.append(frame.cell.array)
        pbcs.append(pbc)
    if not frames:
        return
    all_numbers = np.concatenate(numbers)
    cell_array = np.array(cells)
    periodic_zero = np.array(pbcs) & ~cell_array.any(axis=2)
    if (
        all_numbers.min() < 1
        or all_numbers.max() >= len(chemical_symbols)
        or not _finite(np.concatenate(positions))
        or not _finite(np.concatenate(forces))
        or not _finite(cell_array)
        or not _finite(np.array(scalars, dtype=float))
        or (stresses and not _finite(np.array(stresses)))
        or periodic_zero.any()
    ):
        for index, frame in enumerate(frames):
            validate_frame(frame, index)


def validate_frames(frames: Sequence[Atoms], *, single_fingerprint: bool = True, unique_sources: bool = True) -> None:
    """Check every frame and the collection as a whole.

    :param frames: the frames.
    :param single_fingerprint: refuse frames of more than one level of theory.
    :param unique_sources: refuse two frames with the same source uuid.
    :raises FrameError: naming the offending frame(s).
    """
    check_frames(frames)
    if single_fingerprint:
        fingerprints = Counter(frame.info['fingerprint'] for frame in frames)
        if len(fingerprints) > 1:
            found = ', '.join(f'{fingerprint} ({count} frames)' for fingerprint, count in fingerprints.most_common())
            raise FrameError(f'frames mix {len(fingerprints)} level-of-theory fingerprints: {found}')
    if unique_sources:
        seen: dict[str, int] = {}
        for index, frame in enumerate(frames):
            uuid = frame.info['source_uuid']
            if uuid in seen:
                raise FrameError(f'frames {seen[uuid]} and {index} have the same source_uuid {uuid}')
            seen[uuid] = index


def sorted_frames(frames: Iterable[Atoms]) -> list[Atoms]:
    """Return the frames in canonical order: by subset, then by source uuid."""
    return sorted(frames, key=lambda frame: (frame.info['subset'], frame.info['source_uuid']))


def summarize(frames: Sequence[Atoms]) -> dict:
    """Return JSON-ready counts of a collection of frames.

    :return: ``n_frames``, ``n_atoms``, ``counts`` (subset -> split -> frames, every split present),
        ``split_counts`` (split -> frames), ``elements`` (symbols by atomic number), ``fingerprints`` (sorted),
        ``n_with_stress``, ``n_with_dos`` and ``n_with_baseline``.
    """
    return FrameSummary(digests=False).add(frames).summary()


class FrameSummary:
    """The counts of :func:`summarize` and the content hash of :func:`content_hash`, accumulated block by block.

    A dataset of 10⁵ frames is built a block at a time: this keeps what the node's attributes need (counts, elements,
    fingerprints) and the 32-byte digest of each frame, never the frames.
    """

    def __init__(self, *, digests: bool = True):
        """Start empty; ``digests=False`` skips the per-frame digests (no :meth:`content_hash`)."""
        self.n_frames = 0
        self.n_atoms = 0
        self.counts: dict[str, dict[str, int]] = {}
        self.numbers: set[int] = set()
        self.fingerprints: Counter = Counter()
        self.n_with_stress = self.n_with_dos = self.n_with_baseline = 0
        self.digests: list[bytes] | None = [] if digests else None

    def add(self, frames: Sequence[Atoms]) -> FrameSummary:
        """Count ``frames`` (and keep their digests); return this summary."""
        counts = self.counts
        for frame in frames:
            info = frame.info
            per_subset = counts.get(info['subset'])
            if per_subset is None:
                per_subset = counts[info['subset']] = dict.fromkeys(SPLITS, 0)
            per_subset[info['split']] += 1
            self.fingerprints[info['fingerprint']] += 1
            self.n_with_stress += 'stress' in info
            self.n_with_dos += 'dos' in info
            self.n_with_baseline += 'energy_baseline_subtracted' in info
        if frames:
            numbers = np.concatenate([frame.numbers for frame in frames])
            self.numbers.update(np.unique(numbers).tolist())
            self.n_atoms += len(numbers)
        self.n_frames += len(frames)
        if self.digests is not None:
            self.digests.extend(frame_digest(frame) for frame in frames)
        return self

    def summary(self) -> dict:
        """Return the counts as :func:`summarize` does."""
        counts = self.counts
        return {
            'n_frames': self.n_frames,
            'n_atoms': self.n_atoms,
            'counts': {subset: counts[subset] for subset in sorted(counts)},
            'split_counts': {split: sum(per_subset[split] for per_subset in counts.values()) for split in SPLITS},
            'elements': [chemical_symbols[number] for number in sorted(self.numbers)],
            'fingerprints': sorted(self.fingerprints),
            'n_with_stress': self.n_with_stress,
            'n_with_dos': self.n_with_dos,
            'n_with_baseline': self.n_with_baseline,
        }

    def content_hash(self) -> str:
        """Return the :func:`content_hash` of every frame added."""
        if self.digests is None:
            raise ValueError('this summary keeps no digests: make it with digests=True')
        return _hash_digests(self.digests)


def _canonical_floats(values) -> bytes:
    """Return the float64 bytes of ``values`` with every NaN replaced by the one canonical NaN."""
    array = np.ascontiguousarray(values, dtype='<f8')
    if np.isnan(array).any():
        array = np.where(np.isnan(array), np.nan, array)
    return array.tobytes()


def _info_digest(digest, info: dict) -> None:
    """Add the ``info`` part of a frame to its digest (see :func:`frame_digest`)."""
    for key, present, absent in _INFO_KEYS:
        value = info.get(key)
        if value is None:
            digest.update(absent)
        elif isinstance(value, float) and not math.isnan(value):  # a shape () array: no shape bytes
            digest.update(present + _FLOAT.pack(value))
        else:
            digest.update(present)
            array = np.asarray(value, dtype=float)
            digest.update(np.asarray(array.shape, dtype='<i8').tobytes())
            digest.update(_canonical_floats(array))
    for key in STRING_INFO:
        digest.update(f'\x00{key}={info[key]}'.encode())


def frame_digest(frame: Atoms) -> bytes:
    """Return the sha256 digest of everything a frame holds (exact values, no rounding)."""
    digest = hashlib.sha256(_HASH_VERSION)
    digest.update(np.ascontiguousarray(frame.numbers, dtype='<i8').tobytes())
    digest.update(_canonical_floats(frame.positions))
    digest.update(_canonical_floats(frame.cell.array))
    digest.update(np.asarray(frame.pbc, dtype=np.uint8).tobytes())
    digest.update(_canonical_floats(frame.arrays['forces']))
    _info_digest(digest, frame.info)
    return digest.digest()


def content_hash(frames: Iterable[Atoms]) -> str:
    """Return the sha256 content hash of a collection of frames, independent of their order.

    Every value enters with its exact float64 bits (NaN canonicalised), so frames written to extended XYZ by
    :mod:`aiida_mad.dataset.extxyz` (lossless shortest round-trip formatting) and read back hash the same.
    """
    return _hash_digests([frame_digest(frame) for frame in frames])


def _hash_digests(digests: list[bytes]) -> str:
    """Return the collection hash of per-frame digests (sorted here: the order of the frames does not matter)."""
    total = hashlib.sha256(_HASH_VERSION + b'-collection')
    total.update(len(digests).to_bytes(8, 'little'))
    for digest in sorted(digests):
        total.update(digest)
    return total.hexdigest()
