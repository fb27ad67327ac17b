"""Fast extended-XYZ writer and reader for frames, the split files and the compressed shards of a dataset.

File layout (one frame)::

    5
    Lattice="ax ay az bx by bz cx cy cz" Properties=species:S:1:pos:R:3:REF_forces:R:3 REF_energy=-123.4 \
REF_stress="sxx sxy sxz syx syy syz szx szy szz" REF_energy_baseline_subtracted=-1.2 subset=mc3d split=train \
source_uuid=... fingerprint=... REF_dos="d0 d1 ..." pbc="T T T"
    Si 0.0 0.0 0.0 0.1 -0.2 0.0
    ...

Decisions
    * Reference values use the ``REF_*`` keys (``REF_energy``, ``REF_forces``, ``REF_stress``,
      ``REF_energy_baseline_subtracted``, ``REF_dos``), never ``energy``/``forces``/``stress``: ASE turns those into a
      ``SinglePointCalculator`` on reading, and MACE warns that they are unsafe. ``ase.io.read`` keeps ``REF_*`` keys
      in ``atoms.info``/``atoms.arrays``, and metatrain (``key: REF_energy``, ``forces: {key: REF_forces}``,
      ``stress: {key: REF_stress}``) and MACE (``--energy_key REF_energy`` ...) read them as they are.
    * ``REF_stress`` is 9 numbers, the 3x3 tensor in row-major order (eV/Å³, ASE sign). ASE reads it as a 9-vector;
      metatrain and MACE reshape it row-major. The tensor is symmetric, so the order never changes a value.
    * Frames without stress (0D clusters and molecules): ``missing_stress='nan'`` (default) writes nine NaN, which
      metatrain masks in its loss; without the key metatrain would drop the stress of the *whole file* as soon as
      one frame lacks it. MACE, however, does not mask NaN (its loss becomes NaN): files for MACE training must be
      written with ``missing_stress='omit'``, which MACE reads as "stress weight 0" for those frames.
    * ``REF_dos`` (optional) is the whole DOS vector as one quoted, space-separated list, which ASE reads back as a
      float array (``nan`` for masked grid points) and metatrain reads as a per-structure target
      (``type: scalar``, ``sample_kind: system``, ``num_subtargets = len``).
    * Every float is written with Python's shortest round-trip representation (``repr``), so reading a file gives
      back exactly the stored float64 values, and a dataset's content hash survives its shards.
    * ``Lattice`` is written whenever the cell is not zero, with an explicit ``pbc`` (0D frames keep their DFT box,
      2D frames their vacuum vector).
    * Expected, harmless warnings when metatrain reads these files: "Found 9-long numerical vector for the
      stress/virial ... Assume a row major format" (it is row-major), and metatomic's "non-zero cell vectors but
      ... boundary conditions are set to False" for 0D and 2D frames (it zeroes the non-periodic cell vectors).

Speed: the values of a block of frames go through one numpy object array and one ``%`` template per frame (count
line, header and atom lines), with no per-atom Python loop; validation is vectorised over all frames
(:func:`~aiida_mad.dataset.frames.check_frames`). :func:`read_extxyz` parses files in this layout with one numpy
conversion for all atoms and falls back to ``ase.io.read`` for anything else. The export of a stored dataset should
use :func:`write_split_files_from_shards`, which routes each frame's text from the shards to its split file without
parsing it (tens of thousands of frames per second).
"""

from __future__ import annotations

import functools
import gzip
import io
import os
import pathlib
import re
from collections.abc import Iterable, Sequence

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers, chemical_symbols

from .frames import SPLITS, STRING_INFO, FrameError, check_frames

__all__ = [
    'FILE_KEYS',
    'PROPERTIES',
    'ShardWriter',
    'read_extxyz',
    'read_shards',
    'split_file_names',
    'write_extxyz',
    'write_shards',
    'write_split_files',
    'write_split_files_from_shards',
]

#: The frame model's keys and the keys they have in the files.
FILE_KEYS = {
    'energy': 'REF_energy',
    'forces': 'REF_forces',
    'stress': 'REF_stress',
    'energy_baseline_subtracted': 'REF_energy_baseline_subtracted',
    'dos': 'REF_dos',
}

#: The per-atom columns of every file written here.
PROPERTIES = 'species:S:1:pos:R:3:REF_forces:R:3'

#: Name pattern of the compressed shards of a dataset.
SHARD_GLOB = '*.extxyz.gz'

_SYMBOLS = np.array(chemical_symbols, dtype=object)
_BLOCK = 4096
_KEY_VALUE = re.compile(r'([A-Za-z_][A-Za-z0-9_-]*)=(?:"([^"]*)"|(\S+))')
_NAN_STRESS = ' '.join(['nan'] * 9)
_MISSING_STRESS = ('nan', 'omit')


@functools.lru_cache(maxsize=4096)
def _frame_format(natoms: int, has_cell: bool, stress: str, has_baseline: bool, dos_length: int, pbc: str) -> str:
    """Return the ``%`` template of one whole frame: count line, header and atom lines.

    :param stress: ``'value'`` (nine numbers), ``'nan'`` (nine NaN) or ``'omit'``.
    """
    parts = []
    if has_cell:
        parts.append('Lattice="' + ' '.join(['%r'] * 9) + '"')
    parts.append(f'Properties={PROPERTIES}')
    parts.append('REF_energy=%r')
    if stress == 'value':
        parts.append('REF_stress="' + ' '.join(['%r'] * 9) + '"')
    elif stress == 'nan':
        parts.append(f'REF_stress="{_NAN_STRESS}"')
    if has_baseline:
        parts.append('REF_energy_baseline_subtracted=%r')
    parts.extend(f'{key}=%s' for key in STRING_INFO)
    if dos_length:
        parts.append('REF_dos="' + ' '.join(['%r'] * dos_length) + '"')
    parts.append(f'pbc="{pbc}"')
    return f'{natoms}\n' + ' '.join(parts) + '\n' + '%s %r %r %r %r %r %r\n' * natoms


_PBC_STRINGS = {
    (a, b, c): ' '.join('T' if x else 'F' for x in (a, b, c)) for a in (0, 1) for b in (0, 1) for c in (0, 1)
}


def _format_block(frames: Sequence[Atoms], missing_stress: str) -> str:
    """Return the extended-XYZ text of a block of frames (one ``%`` per frame, no per-atom Python loop)."""
    sizes = [len(frame) for frame in frames]
    total = sum(sizes)
    table = np.empty((total, 7), dtype=object)
    table[:, 0] = _SYMBOLS[np.concatenate([frame.numbers for frame in frames])]
    table[:, 1:4] = np.concatenate([frame.positions for frame in frames])
    table[:, 4:7] = np.concatenate([frame.arrays['forces'] for frame in frames])
    values = table.ravel().tolist()
    cells = np.array([frame.cell.array for frame in frames]).reshape(len(frames), 9)
    has_cells = cells.any(axis=1).tolist()
    cells = cells.tolist()
    pbcs = np.array([frame.pbc for frame in frames], dtype=int).tolist()
    chunks = []
    start = 0
    for frame, size, cell, has_cell, pbc in zip(frames, sizes, cells, has_cells, pbcs, strict=True):
        info = frame.info
        head = cell if has_cell else []
        head.append(float(info['energy']))
        stress = info.get('stress')
        if stress is not None:
            head.extend(np.asarray(stress, dtype=float).ravel().tolist())
            stress_mode = 'value'
        else:
            stress_mode = missing_stress
        baseline = info.get('energy_baseline_subtracted')
        if baseline is not None:
            head.append(float(baseline))
        head.extend([info['subset'], info['split'], info['source_uuid'], info['fingerprint']])
        dos = info.get('dos')
        if dos is not None:
            head.extend(np.asarray(dos, dtype=float).tolist())
        template = _frame_format(
            size, has_cell, stress_mode, baseline is not None, 0 if dos is None else len(dos), _PBC_STRINGS[tuple(pbc)]
        )
        stop = start + 7 * size
        head.extend(values[start:stop])
        chunks.append(template % tuple(head))
        start = stop
    return ''.join(chunks)


def _open_text(path, mode: str, compresslevel: int = 6, *, gzipped: bool | None = None):
    """Open ``path`` as text; ``.gz`` files through a deterministic gzip stream (no name, no time stamp)."""
    path = pathlib.Path(path)
    if gzipped if gzipped is not None else path.name.endswith('.gz'):
        if 'w' in mode:
            raw = open(path, 'wb')  # noqa: SIM115 - closed by the wrapper below
            stream = gzip.GzipFile(filename='', mode='wb', fileobj=raw, compresslevel=compresslevel, mtime=0)
            return _ClosingTextWrapper(stream, raw)
        return io.TextIOWrapper(gzip.open(path, 'rb'), encoding='utf-8', newline='\n')
    return open(path, mode, encoding='utf-8', newline='\n')


class _ClosingTextWrapper(io.TextIOWrapper):
    """A text wrapper around a gzip stream that also closes the underlying file."""

    def __init__(self, stream, raw):
        super().__init__(stream, encoding='utf-8', newline='\n')
        self._raw = raw

    def close(self):
        try:
            super().close()
        finally:
            self._raw.close()


def write_extxyz(
    frames: Iterable[Atoms],
    path,
    *,
    missing_stress: str = 'nan',
    validate: bool = True,
    compresslevel: int = 6,
) -> int:
    """Write frames to an extended-XYZ file.

    :param frames: the frames (see :mod:`aiida_mad.dataset.frames`).
    :param path: the file; a name ending in ``.gz`` is gzip-compressed (deterministically). An open text stream
        (anything with ``write``) is written to and left open.
    :param missing_stress: ``'nan'`` writes nine NaN for frames without stress (metatrain masks them),
        ``'omit'`` leaves the key out (for MACE); see the module documentation.
    :param validate: check every frame with :func:`~aiida_mad.dataset.frames.validate_frame` first.
    :param compresslevel: gzip level for ``.gz`` files.
    :return: the number of frames written.
    :raises FrameError: if a frame does not follow the frame model (nothing is written).
    """
    if missing_stress not in _MISSING_STRESS:
        raise ValueError(f'missing_stress must be one of {_MISSING_STRESS}, got {missing_stress!r}')
    frames = list(frames)
    if validate:
        check_frames(frames)
    if hasattr(path, 'write'):
        _write_blocks(frames, path, missing_stress)
        return len(frames)
    target = pathlib.Path(path)
    partial = target.with_name(f'.{target.name}.partial')
    try:
        with _open_text(partial, 'w', compresslevel, gzipped=target.name.endswith('.gz')) as handle:
            _write_blocks(frames, handle, missing_stress)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return len(frames)


def _write_blocks(frames: Sequence[Atoms], handle, missing_stress: str) -> None:
    for first in range(0, len(frames), _BLOCK):
        handle.write(_format_block(frames[first : first + _BLOCK], missing_stress))


def split_file_names(prefix: str = 'mad') -> dict[str, str]:
    """Return ``{split: file name}``: ``mad-train.xyz``, ``mad-val.xyz``, ``mad-test.xyz`` for the default."""
    return {split: f'{prefix}-{split}.xyz' for split in SPLITS}


def write_split_files(
    frames: Iterable[Atoms], directory, *, prefix: str = 'mad', missing_stress: str = 'nan'
) -> dict[str, pathlib.Path]:
    """Write one extended-XYZ file per split (all three, an empty file where a split has no frame).

    :param frames: the frames; each goes to the file of its ``info['split']``, in the given order.
    :param directory: an existing folder.
    :param prefix: file name prefix.
    :param missing_stress: as for :func:`write_extxyz`.
    :return: ``{split: path}``.
    """
    directory = pathlib.Path(directory)
    frames = list(frames)
    check_frames(frames)
    by_split: dict[str, list[Atoms]] = {split: [] for split in SPLITS}
    for frame in frames:
        by_split[frame.info['split']].append(frame)
    paths = {}
    for split, name in split_file_names(prefix).items():
        paths[split] = directory / name
        write_extxyz(by_split[split], paths[split], missing_stress=missing_stress, validate=False)
    return paths


def write_shards(
    frames: Sequence[Atoms],
    directory,
    frames_per_shard: int = 10_000,
    *,
    prefix: str = 'frames',
    compresslevel: int = 6,
) -> list[pathlib.Path]:
    """Write frames as gzip-compressed extended-XYZ shards ``<prefix>-00000.extxyz.gz``, ... in ``directory``.

    Stress is written as NaN where absent (read back as absent), so the shards hold the frames exactly.

    :param frames: the frames, in the order they should be read back.
    :param directory: the folder (created if needed); it must not contain shards already.
    :param frames_per_shard: at most this many frames per file.
    :param prefix: shard name prefix.
    :param compresslevel: gzip level.
    :return: the shard paths, in order.
    """
    with ShardWriter(directory, frames_per_shard, prefix=prefix, compresslevel=compresslevel) as writer:
        writer.write(list(frames))
    return writer.paths


class ShardWriter:
    """Write the shards of :func:`write_shards` from frames given a block at a time (a context manager).

    The files are byte for byte those :func:`write_shards` writes from all the blocks at once, however the frames are
    cut into blocks; only the shard being written is open, so memory does not grow with the number of frames.
    Leaving the ``with`` block on an exception removes every shard written.
    """

    def __init__(self, directory, frames_per_shard: int = 10_000, *, prefix: str = 'frames', compresslevel: int = 6):
        """Check the arguments; ``directory`` is created if needed and must not contain shards already."""
        if isinstance(frames_per_shard, bool) or not isinstance(frames_per_shard, int) or frames_per_shard < 1:
            raise ValueError(f'frames_per_shard must be a positive integer, got {frames_per_shard!r}')
        self.directory = pathlib.Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        existing = sorted(self.directory.glob(SHARD_GLOB))
        if existing:
            raise FileExistsError(f'{self.directory} already holds {len(existing)} shard(s), e.g. {existing[0].name}')
        self.frames_per_shard = frames_per_shard
        self.prefix = prefix
        self.compresslevel = compresslevel
        #: The shards written so far (the last one may still be open), in order.
        self.paths: list[pathlib.Path] = []
        self._handle = None
        self._room = 0  # frames the open shard can still take

    def write(self, frames: Sequence[Atoms], *, validate: bool = True) -> None:
        """Append ``frames`` to the shards, first checked with :func:`~aiida_mad.dataset.frames.check_frames`."""
        if validate:
            check_frames(frames)
        first = 0
        while first < len(frames):
            if self._room == 0:
                self._next_shard()
            block = frames[first : first + self._room]
            _write_blocks(block, self._handle, 'nan')
            self._room -= len(block)
            first += len(block)

    def _next_shard(self) -> None:
        self._close_shard()
        path = self.directory / f'{self.prefix}-{len(self.paths):05d}.extxyz.gz'
        self._handle = _open_text(path, 'w', self.compresslevel, gzipped=True)
        self.paths.append(path)
        self._room = self.frames_per_shard

    def _close_shard(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, kind, *_) -> None:
        self._close_shard()
        if kind is not None:
            for path in self.paths:
                path.unlink(missing_ok=True)


def _shard_paths(source) -> list[pathlib.Path]:
    if isinstance(source, str | os.PathLike) and pathlib.Path(source).is_dir():
        return sorted(pathlib.Path(source).glob(SHARD_GLOB))
    return [pathlib.Path(path) for path in source]


def write_split_files_from_shards(
    shards, directory, *, prefix: str = 'mad', missing_stress: str = 'nan'
) -> dict[str, tuple[pathlib.Path, int]]:
    """Write the split files of a dataset straight from its shards, routing each frame's text to its split.

    This is the fast export: frames are neither parsed nor re-formatted, only the ``split=`` token of each header is
    read (and, for ``missing_stress='omit'``, the all-NaN ``REF_stress`` of frames without stress is cut out).
    The files are byte for byte those :func:`write_split_files` writes from the same frames in shard order. A
    shard in another layout is read and re-written through :func:`read_extxyz` and :func:`write_extxyz`.

    :param shards: a folder of shards (name order) or a list of shard paths.
    :param directory: an existing folder.
    :param prefix: file name prefix.
    :param missing_stress: as for :func:`write_extxyz`.
    :return: ``{split: (path, number of frames)}``.
    """
    if missing_stress not in _MISSING_STRESS:
        raise ValueError(f'missing_stress must be one of {_MISSING_STRESS}, got {missing_stress!r}')
    directory = pathlib.Path(directory)
    names = split_file_names(prefix)
    partials = {split: directory / f'.{name}.partial' for split, name in names.items()}
    counts = dict.fromkeys(SPLITS, 0)
    handles = {split: open(path, 'w', encoding='utf-8', newline='\n') for split, path in partials.items()}  # noqa: SIM115
    try:
        for path in _shard_paths(shards):
            with _open_text(path, 'r') as handle:
                text = handle.read()
            routed = _route_frames(text, missing_stress)
            if routed is None:
                frames = read_extxyz(path)
                routed = {split: [] for split in SPLITS}
                for frame in frames:
                    buffer = io.StringIO()
                    write_extxyz([frame], buffer, missing_stress=missing_stress, validate=False)
                    routed[frame.info['split']].append(buffer.getvalue())
                routed = {split: (''.join(chunks), len(chunks)) for split, chunks in routed.items()}
            for split, (chunk, count) in routed.items():
                handles[split].write(chunk)
                counts[split] += count
        for handle in handles.values():
            handle.close()
        for split, name in names.items():
            os.replace(partials[split], directory / name)
    finally:
        for handle in handles.values():
            handle.close()
        for path in partials.values():
            path.unlink(missing_ok=True)
    return {split: (directory / name, counts[split]) for split, name in names.items()}


_SPLIT_TOKEN = re.compile(r' split=(train|val|test) ')
_NAN_STRESS_FIELD = f' REF_stress="{_NAN_STRESS}"'


def _route_frames(text: str, missing_stress: str) -> dict[str, tuple[str, int]] | None:
    """Split the text of a file in this module's layout by the frames' splits; ``None`` for another layout."""
    lines = text.split('\n')
    routed: dict[str, list[str]] = {split: [] for split in SPLITS}
    counts = dict.fromkeys(SPLITS, 0)
    position = 0
    total_lines = len(lines)
    properties = f' Properties={PROPERTIES} '
    while position < total_lines:
        line = lines[position]
        if not line:
            position += 1
            continue
        try:
            size = int(line)
        except ValueError:
            return None
        if size < 1 or position + 2 + size > total_lines:
            return None
        header = lines[position + 1]
        match = _SPLIT_TOKEN.search(header)
        if match is None or properties not in f' {header} ':
            return None
        if missing_stress == 'omit':
            header = header.replace(_NAN_STRESS_FIELD, '', 1)
        elif ' REF_stress="' not in header:
            return None  # written without stress for some frames: re-write through the frame model
        split = match.group(1)
        target = routed[split]
        target.append(line)
        target.append(header)
        target.extend(lines[position + 2 : position + 2 + size])
        counts[split] += 1
        position += 2 + size
    return {split: ('\n'.join(chunk) + '\n' if chunk else '', counts[split]) for split, chunk in routed.items()}


def read_shards(source) -> list[Atoms]:
    """Read the frames of a folder of shards (in name order) or of an explicit list of shard paths."""
    frames: list[Atoms] = []
    for path in _shard_paths(source):
        frames.extend(read_extxyz(path))
    return frames


def read_extxyz(path) -> list[Atoms]:
    """Read an extended-XYZ file (optionally ``.gz``) into frames of the frame model.

    Files in the layout written by :func:`write_extxyz` are parsed directly (numpy bulk conversion); any other
    extended-XYZ file with the ``REF_*`` keys goes through ``ase.io.read``. In both cases ``REF_*`` keys become the
    frame model's keys, and an all-NaN ``REF_stress`` becomes "no stress".

    :raises FrameError: if a frame lacks what the frame model needs, naming the frame and the file.
    """
    path = pathlib.Path(path)
    with _open_text(path, 'r') as handle:
        text = handle.read()
    frames = _parse_fast(text)
    if frames is None:
        frames = _parse_with_ase(path, text)
    try:
        check_frames(frames)
    except FrameError as exception:
        raise FrameError(f'{path}: {exception}') from None
    return frames


def _parse_fast(text: str) -> list[Atoms] | None:
    """Parse text in this module's layout; return ``None`` if it is in any other layout."""
    lines = text.split('\n')
    headers: list[dict[str, str]] = []
    sizes: list[int] = []
    atom_lines: list[str] = []
    position = 0
    total_lines = len(lines)
    while position < total_lines:
        line = lines[position]
        if not line.strip():
            position += 1
            continue
        try:
            size = int(line)
        except ValueError:
            return None
        if size < 1 or position + 2 + size > total_lines:
            return None
        header = {key: plain or quoted for key, quoted, plain in _KEY_VALUE.findall(lines[position + 1])}
        if header.get('Properties') != PROPERTIES:
            return None
        headers.append(header)
        sizes.append(size)
        atom_lines.extend(lines[position + 2 : position + 2 + size])
        position += 2 + size
    tokens = ' '.join(atom_lines).split()
    total = sum(sizes)
    if len(tokens) != 7 * total:
        return None
    symbols = tokens[0::7]
    del tokens[0::7]
    try:
        numbers = np.array([atomic_numbers[symbol] for symbol in symbols], dtype=int)
        values = np.array(tokens, dtype=float).reshape(total, 6)
    except (KeyError, ValueError):
        return None
    frames = []
    start = 0
    for header, size in zip(headers, sizes, strict=True):
        stop = start + size
        try:
            frames.append(_frame_from_header(header, numbers[start:stop], values[start:stop]))
        except (KeyError, ValueError):
            return None
        start = stop
    return frames


def _floats(text: str) -> np.ndarray:
    return np.array(text.split(), dtype=float)


def _frame_from_header(header: dict[str, str], numbers: np.ndarray, values: np.ndarray) -> Atoms:
    cell = _floats(header['Lattice']).reshape(3, 3) if 'Lattice' in header else None
    pbc = [flag == 'T' for flag in header['pbc'].split()] if 'pbc' in header else cell is not None
    frame = Atoms(numbers=numbers, positions=values[:, :3], cell=cell, pbc=pbc)
    frame.info['energy'] = float(header['REF_energy'])
    if 'REF_stress' in header:
        stress = _floats(header['REF_stress'])
        if stress.shape != (9,):
            raise ValueError('REF_stress must have 9 values')
        if not np.all(np.isnan(stress)):
            frame.info['stress'] = stress.reshape(3, 3)
    if 'REF_energy_baseline_subtracted' in header:
        frame.info['energy_baseline_subtracted'] = float(header['REF_energy_baseline_subtracted'])
    for key in STRING_INFO:
        frame.info[key] = header[key]
    if 'REF_dos' in header:
        frame.info['dos'] = _floats(header['REF_dos'])
    frame.arrays['forces'] = np.ascontiguousarray(values[:, 3:])
    return frame


def _parse_with_ase(path: pathlib.Path, text: str) -> list[Atoms]:
    import ase.io

    frames = []
    for atoms in ase.io.read(io.StringIO(text), index=':', format='extxyz'):
        frames.append(from_ase(atoms, origin=str(path)))
    return frames


def from_ase(atoms: Atoms, *, origin: str = '') -> Atoms:
    """Convert an ``Atoms`` read by ASE from a ``REF_*`` extended-XYZ file into a frame of the frame model."""
    where = f'{origin}: ' if origin else ''
    info = atoms.info
    for key in ('REF_energy', *STRING_INFO):
        if key not in info:
            raise FrameError(f'{where}frame (source_uuid {info.get("source_uuid")}) has no {key}')
    if 'REF_forces' not in atoms.arrays:
        raise FrameError(f'{where}frame (source_uuid {info.get("source_uuid")}) has no REF_forces')
    frame = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell.array, pbc=atoms.pbc)
    frame.info['energy'] = float(info['REF_energy'])
    if 'REF_stress' in info:
        stress = np.asarray(info['REF_stress'], dtype=float).reshape(3, 3)
        if not np.all(np.isnan(stress)):
            frame.info['stress'] = stress
    if 'REF_energy_baseline_subtracted' in info:
        frame.info['energy_baseline_subtracted'] = float(info['REF_energy_baseline_subtracted'])
    for key in STRING_INFO:
        frame.info[key] = str(info[key])
    if 'REF_dos' in info:
        frame.info['dos'] = np.atleast_1d(np.asarray(info['REF_dos'], dtype=float))
    frame.arrays['forces'] = np.array(atoms.arrays['REF_forces'], dtype=float)
    return frame
