"""Chemiscope export: frames as a gzip-compressed chemiscope input file (``*.chemiscope.json.gz``).

`chemiscope <https://chemiscope.org>`_ is the interactive viewer the MAD papers use to browse their datasets: a map
of per-structure properties linked to a 3D structure viewer. This module writes the chemiscope input format (as
read by ``chemiscope.create_input``/``write_input`` and by the JavaScript viewer, checked against chemiscope 1.1.0):

* ``meta``: name, description, authors, references;
* ``structures``: ``size``, ``names``, ``x``/``y``/``z`` (Å), and ``cell`` (9 numbers, row-major ``a``, ``b``,
  ``c``, Å) for periodic frames only (0D frames lose their DFT box; a 2D frame whose non-periodic vector is zero
  gets no cell either, as chemiscope needs three vectors);
* ``properties`` of target ``structure`` (:data:`STRUCTURE_PROPERTIES`: energy per atom, energy, baseline-subtracted
  energy per atom when every frame has it, max force, number of atoms, subset, split, source uuid) and of target
  ``atom`` (:data:`FORCE_MAGNITUDE`, eV/Å);
* ``environments``: every atom, with a 3.5 Å cutoff (chemiscope's default). The viewer only colours atoms by an
  ``atom`` property when environments exist; ``environment_cutoff=None`` leaves them (and the atom property) out;
* ``settings``: a simple map until model features exist: x = energy per atom, y = max force (log scale when every
  max force is positive), colour = subset (or number of atoms for a single subset), symbol = split.

The DOS is not exported (its masked points are NaN, which chemiscope's JSON cannot hold), nor is the stress.
Every number is written with Python's shortest round-trip representation, so the file holds exactly the frames'
float64 values; NaN and infinity are refused (valid frames have none). Columns are built with numpy block operations
and the JSON is streamed in chunks of structures, so 100 000 frames stay fast and memory stays bounded. Files are
written atomically (a temporary file renamed into place) and deterministically (gzip ``mtime`` 0).
"""

from __future__ import annotations

import gzip
import json
import math
import os
import pathlib
import tempfile
from collections.abc import Iterable, Sequence

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols

from ..dataset.frames import check_frames, frame_label

__all__ = [
    'BASELINE_PER_ATOM',
    'ENERGY',
    'ENERGY_PER_ATOM',
    'FORCE_MAGNITUDE',
    'MAX_FORCE',
    'N_ATOMS',
    'SOURCE_UUID',
    'SPLIT',
    'STRUCTURE_PROPERTIES',
    'SUBSET',
    'SUFFIX',
    'read_chemiscope',
    'write_chemiscope',
    'write_chemiscope_per_subset',
]

#: File name suffix of the exported files.
SUFFIX = '.chemiscope.json.gz'

ENERGY_PER_ATOM = 'energy per atom'
ENERGY = 'energy'
BASELINE_PER_ATOM = 'baseline-subtracted energy per atom'
MAX_FORCE = 'max force'
N_ATOMS = 'number of atoms'
SUBSET = 'subset'
SPLIT = 'split'
SOURCE_UUID = 'source uuid'
#: The only ``atom`` property: the norm of each atom's force.
FORCE_MAGNITUDE = 'force magnitude'

#: Structure properties in file order: name -> (units or ``None``, description).
STRUCTURE_PROPERTIES = {
    ENERGY_PER_ATOM: ('eV/atom', 'DFT total energy divided by the number of atoms'),
    ENERGY: ('eV', 'DFT total energy'),
    BASELINE_PER_ATOM: ('eV/atom', 'total energy minus the isolated-atom baseline, divided by the number of atoms'),
    MAX_FORCE: ('eV/Å', 'largest force magnitude over the atoms of the structure'),
    N_ATOMS: (None, 'number of atoms in the structure'),
    SUBSET: (None, 'subset of the dataset'),
    SPLIT: (None, 'train, val or test split'),
    SOURCE_UUID: (None, 'uuid of the structure the frame comes from'),
}

#: Default cutoff (Å) of the atom-centred environments; chemiscope's own default.
ENVIRONMENT_CUTOFF = 3.5

_CHUNK = 2000  # structures per json.dumps call when streaming
_SYMBOLS = np.array(chemical_symbols, dtype=object)


def write_chemiscope(
    frames: Iterable[Atoms],
    path,
    *,
    name: str,
    description: str | None = None,
    authors: Sequence[str] = (),
    references: Sequence[str] = (),
    force: bool = False,
    environment_cutoff: float | None = ENVIRONMENT_CUTOFF,
    compresslevel: int = 4,
) -> pathlib.Path:
    """Write frames as a gzip-compressed chemiscope input file.

    :param frames: the frames (see :mod:`aiida_mad.dataset.frames`); they are checked with
        :func:`~aiida_mad.dataset.frames.check_frames` first.
    :param path: the file to write; by convention its name ends in ``.chemiscope.json.gz``.
    :param name: dataset name shown by chemiscope (``meta.name``).
    :param description: dataset description (``meta.description``); a summary of the frames if ``None``.
    :param authors: ``meta.authors``.
    :param references: ``meta.references``.
    :param force: overwrite ``path`` if it exists.
    :param environment_cutoff: cutoff (Å) of the per-atom environments; ``None`` writes no environments and no atom
        property (smaller files, but chemiscope cannot colour atoms by force magnitude).
    :param compresslevel: gzip level.
    :return: the path written.
    :raises ValueError: no frames, an empty name, a bad cutoff, or a value that is not finite.
    :raises FrameError: a frame that does not follow the frame model, named by position and source uuid.
    :raises FileExistsError: ``path`` exists and ``force`` is false.

    Nothing is written when an error is raised.
    """
    frames = list(frames)
    path = pathlib.Path(path)
    _check_arguments(frames, name, environment_cutoff, authors, references)
    if path.exists() and not force:
        raise FileExistsError(f'{path} exists; pass force=True to overwrite it')
    check_frames(frames)
    _write_checked(frames, path, _meta(name, description, authors, references), environment_cutoff, compresslevel)
    return path


def write_chemiscope_per_subset(
    frames: Iterable[Atoms],
    directory,
    *,
    name_prefix: str = 'mad',
    force: bool = False,
    authors: Sequence[str] = (),
    references: Sequence[str] = (),
    environment_cutoff: float | None = ENVIRONMENT_CUTOFF,
    compresslevel: int = 4,
) -> dict[str, pathlib.Path]:
    """Write one chemiscope file per subset: ``<directory>/<name_prefix>-<subset>.chemiscope.json.gz``.

    :param frames: the frames; all of them are checked before anything is written.
    :param directory: where the files go (created if missing).
    :param name_prefix: file name prefix, also the start of each dataset name (``mad-mc3d``).
    :param force: overwrite existing files; without it, nothing is written if any of the files exists. Each file
        is written atomically.
    :param authors: ``meta.authors`` of every file.
    :param references: ``meta.references`` of every file.
    :param environment_cutoff: see :func:`write_chemiscope`.
    :param compresslevel: gzip level.
    :return: ``{subset: path}``, subsets sorted by name.
    :raises ValueError: no frames or a bad prefix; see also :func:`write_chemiscope`.
    """
    frames = list(frames)
    if not isinstance(name_prefix, str) or not name_prefix or '/' in name_prefix or os.sep in name_prefix:
        raise ValueError(f'name_prefix must be a non-empty file name part without a path separator: {name_prefix!r}')
    _check_arguments(frames, name_prefix, environment_cutoff, authors, references)
    check_frames(frames)
    groups: dict[str, list[Atoms]] = {}
    for frame in frames:
        groups.setdefault(frame.info['subset'], []).append(frame)
    directory = pathlib.Path(directory)
    paths = {subset: directory / f'{name_prefix}-{subset}{SUFFIX}' for subset in sorted(groups)}
    existing = [str(path) for path in paths.values() if path.exists()]
    if existing and not force:
        raise FileExistsError(f'{", ".join(existing)} exist(s); pass force=True to overwrite')
    directory.mkdir(parents=True, exist_ok=True)
    for subset, path in paths.items():
        subset_frames = groups[subset]
        description = f'Subset {subset} of {name_prefix}: {_summary(subset_frames)}'
        meta = _meta(f'{name_prefix}-{subset}', description, authors, references)
        _write_checked(subset_frames, path, meta, environment_cutoff, compresslevel)
    return paths


def read_chemiscope(path) -> dict:
    """Return the content of a (gzip-compressed or plain) chemiscope JSON file as a dict."""
    path = pathlib.Path(path)
    with path.open('rb') as handle:
        gzipped = handle.read(2) == b'\x1f\x8b'
    opener = gzip.open if gzipped else open
    with opener(path, 'rt', encoding='utf-8') as handle:
        return json.load(handle)


# ------------------------------------------------------------------------------------------------------ internals


def _check_arguments(frames: list, name, environment_cutoff, authors, references) -> None:
    """Refuse arguments that cannot make a chemiscope file, before any frame is looked at."""
    if not frames:
        raise ValueError('no frames to export to chemiscope: the frame list is empty')
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f'the chemiscope dataset needs a non-empty name, got {name!r}')
    if environment_cutoff is not None and (
        isinstance(environment_cutoff, bool)
        or not isinstance(environment_cutoff, float | int)
        or not math.isfinite(environment_cutoff)
        or environment_cutoff <= 0
    ):
        raise ValueError(f'environment_cutoff must be a positive number (Å) or None, got {environment_cutoff!r}')
    for key, values in (('authors', authors), ('references', references)):
        if isinstance(values, str) or not all(isinstance(value, str) for value in values):
            raise ValueError(f'{key} must be a sequence of strings, got {values!r}')


def _write_checked(frames: list[Atoms], path: pathlib.Path, meta: dict, environment_cutoff, compresslevel) -> None:
    """Write frames that passed :func:`check_frames`; a ``None`` description becomes a summary of the frames."""
    columns = _Columns(frames)
    if meta['description'] is None:
        meta['description'] = _summary(frames)
    _atomic_write(path, lambda write: _stream_dataset(write, meta, columns, environment_cutoff), compresslevel)


def _meta(name: str, description: str | None, authors: Sequence[str], references: Sequence[str]) -> dict:
    """Return ``meta``; a ``None`` description is filled in by :func:`_write_checked`."""
    meta = {'name': name, 'description': None if description is None else str(description)}
    if authors:
        meta['authors'] = list(authors)
    if references:
        meta['references'] = list(references)
    return meta


def _summary(frames: Sequence[Atoms]) -> str:
    return f'{len(frames)} structures, {sum(len(frame) for frame in frames)} atoms.'


class _Columns:
    """Every value of the file as flat numpy arrays / Python lists, built block-wise from the frames."""

    def __init__(self, frames: Sequence[Atoms]):
        self.n_frames = len(frames)
        self.sizes = np.fromiter((len(frame) for frame in frames), dtype=np.int64, count=self.n_frames)
        self.offsets = np.zeros(self.n_frames + 1, dtype=np.int64)
        np.cumsum(self.sizes, out=self.offsets[1:])
        numbers = np.concatenate([frame.arrays['numbers'] for frame in frames])
        positions = np.concatenate([frame.arrays['positions'] for frame in frames])
        forces = np.concatenate([frame.arrays['forces'] for frame in frames])
        cells = np.array([frame.cell.array for frame in frames], dtype=float).reshape(self.n_frames, 9)
        pbc = np.array([frame.pbc for frame in frames], dtype=bool)
        # a cell is written for periodic frames with three non-zero vectors (chemiscope needs an invertible cell)
        has_cell = pbc.any(axis=1) & cells.reshape(-1, 3, 3).any(axis=2).all(axis=1)

        energy = np.array([frame.info['energy'] for frame in frames], dtype=float)
        self.force_magnitude = np.sqrt(np.einsum('ij,ij->i', forces, forces))
        self.max_force = np.maximum.reduceat(self.force_magnitude, self.offsets[:-1])
        self.numeric = {ENERGY_PER_ATOM: energy / self.sizes, ENERGY: energy}
        if all('energy_baseline_subtracted' in frame.info for frame in frames):
            baseline = np.array([frame.info['energy_baseline_subtracted'] for frame in frames], dtype=float)
            self.numeric[BASELINE_PER_ATOM] = baseline / self.sizes
        self.numeric[MAX_FORCE] = self.max_force
        self.numeric[N_ATOMS] = self.sizes
        self.strings = {
            SUBSET: [frame.info['subset'] for frame in frames],
            SPLIT: [frame.info['split'] for frame in frames],
            SOURCE_UUID: [frame.info['source_uuid'] for frame in frames],
        }
        # check_frames refused NaN and infinity in the inputs; this catches overflow in derived values (|F|, E/N)
        for label, values in (('force magnitude', self.force_magnitude), *self.numeric.items()):
            bad = np.flatnonzero(~np.isfinite(values))
            if bad.size:
                index = int(bad[0])
                if values is self.force_magnitude:  # per atom: find the frame of the atom
                    index = int(np.searchsorted(self.offsets, index, side='right')) - 1
                raise ValueError(
                    f'{frame_label(frames[index], index)}: its {label} is not finite, which chemiscope JSON cannot hold'
                )

        self.names = _SYMBOLS[numbers].tolist()
        self.x, self.y, self.z = positions.T.tolist()
        self.cells = [
            cell if written else None for cell, written in zip(cells.tolist(), has_cell.tolist(), strict=True)
        ]
        self.offset_list = self.offsets.tolist()

    def structures(self, start: int, stop: int) -> list[dict]:
        """Return the chemiscope structures ``start:stop``."""
        result = []
        offsets, names, x, y, z, cells = self.offset_list, self.names, self.x, self.y, self.z, self.cells
        for index in range(start, stop):
            first, last = offsets[index], offsets[index + 1]
            structure = {
                'size': last - first,
                'names': names[first:last],
                'x': x[first:last],
                'y': y[first:last],
                'z': z[first:last],
            }
            if cells[index] is not None:
                structure['cell'] = cells[index]
            result.append(structure)
        return result

    def properties(self, with_atoms: bool) -> dict:
        result = {}
        for name, values in {**self.numeric, **self.strings}.items():
            units, description = STRUCTURE_PROPERTIES[name]
            entry = {'target': 'structure', 'values': values if isinstance(values, list) else values.tolist()}
            if units is not None:
                entry['units'] = units
            entry['description'] = description
            result[name] = entry
        if with_atoms:
            result[FORCE_MAGNITUDE] = {
                'target': 'atom',
                'values': self.force_magnitude.tolist(),
                'units': 'eV/Å',
                'description': 'norm of the DFT force on the atom',
            }
        return result

    def settings(self) -> dict:
        """Return the default view: energy per atom against max force, coloured by subset, symbols by split."""
        several_subsets = len(set(self.strings[SUBSET])) > 1
        log_forces = bool(self.max_force.min() > 0.0)
        color = {'property': SUBSET, 'palette': 'tab10'} if several_subsets else {'property': N_ATOMS}
        return {
            'target': 'structure',
            'map': {
                'x': {'property': ENERGY_PER_ATOM, 'scale': 'linear'},
                'y': {'property': MAX_FORCE, 'scale': 'log' if log_forces else 'linear'},
                'color': color,
                'symbol': SPLIT,
            },
        }


def _dumps(value) -> str:
    return json.dumps(value, allow_nan=False, separators=(',', ':'))


def _environment_template(size: int, cutoff: str) -> str:
    """Return the JSON text of one structure's environments, with ``{s}`` for the structure index."""
    return ','.join(f'{{{{"structure":{{s}},"center":{center},"cutoff":{cutoff}}}}}' for center in range(size))


def _stream_dataset(write, meta: dict, columns: _Columns, environment_cutoff: float | None) -> None:
    """Write the dataset as JSON text through ``write`` in chunks of structures."""
    write('{"meta":' + _dumps(meta))
    write(',"settings":' + _dumps(columns.settings()))
    write(',"structures":[')
    for start in range(0, columns.n_frames, _CHUNK):
        stop = min(start + _CHUNK, columns.n_frames)
        write((',' if start else '') + _dumps(columns.structures(start, stop))[1:-1])
    write(']')
    if environment_cutoff is not None:
        cutoff = repr(float(environment_cutoff))
        templates: dict[int, str] = {}
        sizes = columns.sizes.tolist()
        write(',"environments":[')
        for start in range(0, columns.n_frames, _CHUNK):
            parts = []
            for index in range(start, min(start + _CHUNK, columns.n_frames)):
                size = sizes[index]
                template = templates.get(size)
                if template is None:
                    template = templates[size] = _environment_template(size, cutoff)
                parts.append(template.format(s=index))
            write((',' if start else '') + ','.join(parts))
        write(']')
    write(',"properties":' + _dumps(columns.properties(with_atoms=environment_cutoff is not None)) + '}')


def _atomic_write(path: pathlib.Path, produce, compresslevel: int) -> None:
    """Run ``produce(write)`` into a gzip temporary file next to ``path``, then rename it to ``path``."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.partial')
    try:
        with (
            os.fdopen(descriptor, 'wb') as raw,
            gzip.GzipFile(filename='', mode='wb', fileobj=raw, compresslevel=compresslevel, mtime=0) as stream,
        ):
            produce(lambda text: stream.write(text.encode('ascii')))
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        pathlib.Path(temporary).unlink(missing_ok=True)
        raise
