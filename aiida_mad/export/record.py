"""A Materials Cloud Archive record folder: the files, ``metadata.yml``, ``optimade.yaml`` and a README.

``metadata.yml``
    What the Archive's upload form asks for, checked against its moderation checklist: ``title``, ``description``
    (an abstract), ``keywords`` (at least 3, not counting funding keywords), ``authors`` (each with
    ``givennames`` and ``familyname``, or ``name``, and at least one affiliation; optional ``orcid``),
    ``license`` (SPDX identifier from :data:`LICENSES`) and ``references`` (each with ``type`` and
    ``citation``, optional ``doi``/``url``/``comment``; at least one journal article or preprint).
``optimade.yaml``
    The Archive's OPTIMADE integration reads this file with optimade-maker (``config_version`` 0.1.0: accepted by
    every released version). optimade-maker parses a structure file with ``ase.io.read(path)``, which returns only
    the *last* frame of a multi-frame file, so pointing it at ``mad-train.xyz`` would serve one structure per split.
    When the frames are given, the record therefore also holds ``optimade-structures.zip`` (one extended-XYZ file
    per frame, ``structures/<source_uuid>.xyz``, same keys as the split files) and ``optimade-properties.csv``
    (energy, energy per atom, subset, split, largest force; ``id`` = source uuid, which is the id optimade-maker
    gives each structure), and ``optimade.yaml`` points at those; without frames it points at the ``.xyz`` files.
``README.md``
    The metadata, the level of theory in plain words (with a warning when it is test grade) and a table describing
    every file.

Size limits: the Archive accepts 5 GB of files per record; AiiDA archives (``*.aiida``) count towards a separate
limit of 50 GB (decimal GB, as the Archive states them). :func:`check_record_size` refuses a record over either
limit before anything is written, saying which limit and by how much.
"""

from __future__ import annotations

import csv
import fnmatch
import html
import io
import os
import pathlib
import re
import shutil
import zipfile
from collections.abc import Mapping, Sequence

import numpy as np
import yaml
from ase import Atoms

from ..constants import DEFAULT_FRACTIONS
from ..dataset.extxyz import write_extxyz
from ..dataset.frames import validate_frames
from .folders import MARKER, staged_folder

__all__ = [
    'FILE_LIMIT_BYTES',
    'LICENSES',
    'RecordError',
    'check_record_size',
    'validate_metadata',
    'write_optimade_files',
    'write_record',
]

#: The Archive's limit on the files of one record (AiiDA archives excluded).
FILE_LIMIT_BYTES = 5 * 1000**3

#: The Archive's separate limit on AiiDA archives (``*.aiida``) in one record.
AIIDA_LIMIT_BYTES = 50 * 1000**3

#: Licenses accepted for a record (SPDX identifier -> name).
LICENSES = {
    'CC-BY-4.0': 'Creative Commons Attribution 4.0 International',
    'CC0-1.0': 'Creative Commons Zero v1.0 Universal',
    'CC-BY-SA-4.0': 'Creative Commons Attribution Share Alike 4.0 International',
    'CC-BY-NC-4.0': 'Creative Commons Attribution Non Commercial 4.0 International',
    'MIT': 'MIT License',
    'BSD-2-Clause': 'BSD 2-Clause "Simplified" License',
    'BSD-3-Clause': 'BSD 3-Clause "New" or "Revised" License',
    'Apache-2.0': 'Apache License 2.0',
    'GPL-3.0-or-later': 'GNU General Public License v3.0 or later',
    'LGPL-3.0-or-later': 'GNU Lesser General Public License v3.0 or later',
    'MPL-2.0': 'Mozilla Public License 2.0',
    'ODbL-1.0': 'Open Data Commons Open Database License v1.0',
}

#: Reference types (case-insensitive on input); the first two count as "journal article or preprint".
REFERENCE_TYPES = ('Journal reference', 'Preprint', 'Software', 'Dataset', 'Website', 'Other')

#: Names the record writes itself.
GENERATED_FILES = ('metadata.yml', 'optimade.yaml', 'README.md')

#: Descriptions of the files a MAD record usually holds (``fnmatch`` patterns, first match wins); ``{train}``,
#: ``{val}`` and ``{test}`` are replaced by the dataset's split fractions.
FILE_DESCRIPTIONS = (
    (
        '*-train.xyz',
        'Extended XYZ, training split ({train} of every subset): positions (Å), REF_energy (eV), '
        'REF_forces (eV/Å), REF_stress (eV/Å³, 3x3 row-major, ASE sign; NaN for non-periodic frames), subset, split, '
        'source_uuid, fingerprint; readable by ase.io.read, metatrain and MACE.',
    ),
    ('*-val.xyz', 'Extended XYZ, validation split ({val} of every subset); same keys as the training file.'),
    ('*-test.xyz', 'Extended XYZ, test split ({test} of every subset); same keys as the training file.'),
    (
        'atomic-energies.csv',
        'Isolated-atom reference energies (eV) of the same level of theory, one element a '
        'row, with the level-of-theory fingerprint: the compositional baseline.',
    ),
    (
        '*.aiida',
        'AiiDA archive with the full provenance (seed structures, generation, DFT workflows and outputs) '
        'of one subset; import with `verdi archive import`.',
    ),
    (
        '*.chemiscope.json.gz',
        'Chemiscope file (structures with energy, force magnitude and subset) for '
        'interactive viewing at chemiscope.org or in the Archive.',
    ),
    (
        '*colabfit*.zip',
        'The dataset in the ColabFit data standard (JSON lines: configurations, property '
        'instances, property definitions, configuration sets, data objects, dataset metadata).',
    ),
    (
        'optimade-structures.zip',
        "One extended-XYZ file per structure (structures/<source_uuid>.xyz) for the record's OPTIMADE API.",
    ),
    ('optimade-properties.csv', 'Per-structure properties served by the OPTIMADE API (id = source uuid).'),
    ('*.report.html', 'HTML report: element counts, energy and force histograms, convergence and split counts.'),
)

_DOI = re.compile(r'^10\.\d{4,9}/\S+$')
_ORCID = re.compile(r'^\d{4}-\d{4}-\d{4}-\d{3}[\dX]$')


class RecordError(ValueError):
    """Invalid record metadata, files over the Archive's limits, or an unusable output folder."""


def _text(metadata: Mapping, field: str, where: str = '') -> str:
    value = metadata.get(field)
    if not isinstance(value, str) or not value.strip():
        raise RecordError(f'record metadata{where}: {field!r} is missing or not a non-empty string (got {value!r})')
    return value.strip()


def _author(author, position: int) -> dict:
    where = f' author {position + 1}'
    if not isinstance(author, Mapping):
        raise RecordError(f'record metadata{where}: expected a mapping with names and affiliations, got {author!r}')
    unknown = set(author) - {'name', 'givennames', 'familyname', 'affiliations', 'orcid'}
    if unknown:
        raise RecordError(f'record metadata{where}: unknown fields {sorted(unknown)}')
    result = {}
    if 'givennames' in author or 'familyname' in author:
        result['givennames'] = _text(author, 'givennames', where)
        result['familyname'] = _text(author, 'familyname', where)
    else:
        result['name'] = _text(author, 'name', where)
    affiliations = author.get('affiliations')
    if isinstance(affiliations, str):
        affiliations = [affiliations]
    if not isinstance(affiliations, Sequence) or not affiliations:
        raise RecordError(f"record metadata{where}: 'affiliations' must list at least one affiliation")
    if not all(isinstance(item, str) and item.strip() for item in affiliations):
        raise RecordError(f"record metadata{where}: 'affiliations' has an empty or non-string entry")
    result['affiliations'] = [item.strip() for item in affiliations]
    if author.get('orcid') is not None:
        orcid = str(author['orcid']).removeprefix('https://orcid.org/')
        if not _ORCID.match(orcid):
            raise RecordError(
                f"record metadata{where}: 'orcid' {author['orcid']!r} is not of the form 0000-0000-0000-000X"
            )
        result['orcid'] = orcid
    return result


def _reference(reference, position: int) -> dict:
    where = f' reference {position + 1}'
    if not isinstance(reference, Mapping):
        raise RecordError(f'record metadata{where}: expected a mapping with type and citation, got {reference!r}')
    unknown = set(reference) - {'type', 'citation', 'doi', 'url', 'comment'}
    if unknown:
        raise RecordError(f'record metadata{where}: unknown fields {sorted(unknown)}')
    kind = _text(reference, 'type', where)
    canonical = {item.lower(): item for item in REFERENCE_TYPES}.get(kind.lower())
    if canonical is None:
        raise RecordError(f"record metadata{where}: 'type' {kind!r} is not one of {REFERENCE_TYPES}")
    result = {'type': canonical, 'citation': _text(reference, 'citation', where)}
    if reference.get('doi') is not None:
        doi = str(reference['doi']).strip().removeprefix('https://doi.org/')
        if not _DOI.match(doi):
            raise RecordError(f"record metadata{where}: 'doi' {reference['doi']!r} is not of the form 10.NNNN/suffix")
        result['doi'] = doi
    if reference.get('url') is not None:
        url = str(reference['url']).strip()
        if not url.startswith(('https://', 'http://')):
            raise RecordError(f"record metadata{where}: 'url' {url!r} is not an http(s) URL")
        result['url'] = url
    if reference.get('comment') is not None:
        result['comment'] = _text(reference, 'comment', where)
    return result


def validate_metadata(metadata: Mapping) -> dict:
    """Check the record metadata and return it normalised (the content of ``metadata.yml``).

    :raises RecordError: naming the missing or invalid field.
    """
    if not isinstance(metadata, Mapping):
        raise RecordError(f'record metadata must be a mapping, got {type(metadata).__name__}')
    # `level_of_theory` and `test_grade` are written by `write_record` from the data: accepted (a record's own
    # metadata.yml can be given back) but never taken from the user.
    generated = {'level_of_theory', 'test_grade'}
    unknown = set(metadata) - {'title', 'description', 'keywords', 'authors', 'license', 'references'} - generated
    if unknown:
        raise RecordError(f'record metadata: unknown fields {sorted(unknown)}')
    result = {'title': _text(metadata, 'title'), 'description': _text(metadata, 'description')}

    keywords = metadata.get('keywords')
    if isinstance(keywords, str) or not isinstance(keywords, Sequence):
        raise RecordError(f"record metadata: 'keywords' must be a list of at least 3 keywords, got {keywords!r}")
    if not all(isinstance(item, str) and item.strip() for item in keywords):
        raise RecordError("record metadata: 'keywords' has an empty or non-string entry")
    unique = list(dict.fromkeys(item.strip() for item in keywords))
    if len({item.lower() for item in unique}) < 3:
        raise RecordError(
            f"record metadata: 'keywords' needs at least 3 distinct keywords, got {len(unique)}: {unique}"
        )
    result['keywords'] = unique

    authors = metadata.get('authors')
    if isinstance(authors, str | Mapping) or not isinstance(authors, Sequence) or not authors:
        raise RecordError("record metadata: 'authors' must be a non-empty list of authors with affiliations")
    result['authors'] = [_author(author, position) for position, author in enumerate(authors)]

    license_ = _text(metadata, 'license')
    matches = {key.lower(): key for key in LICENSES}
    if license_.lower() not in matches:
        raise RecordError(f"record metadata: 'license' {license_!r} is not one of {sorted(LICENSES)}")
    result['license'] = matches[license_.lower()]

    references = metadata.get('references')
    if isinstance(references, str | Mapping) or not isinstance(references, Sequence) or not references:
        raise RecordError("record metadata: 'references' must be a non-empty list (at least one article or preprint)")
    result['references'] = [_reference(reference, position) for position, reference in enumerate(references)]
    if not any(reference['type'] in REFERENCE_TYPES[:2] for reference in result['references']):
        raise RecordError(
            "record metadata: 'references' needs at least one journal article or preprint "
            "(type 'Journal reference' or 'Preprint')"
        )
    return result


def _normalise_files(files) -> dict[str, tuple[pathlib.Path, str | None]]:
    """Return ``{name in the record: (source path, description or None)}``."""
    items = files.items() if isinstance(files, Mapping) else [(pathlib.Path(path).name, path) for path in files]
    result: dict[str, tuple[pathlib.Path, str | None]] = {}
    for name, value in items:
        if isinstance(value, tuple):
            source, description = value
        else:
            source, description = value, None
        if not isinstance(name, str) or not name or '/' in name or '\\' in name or name.startswith('.'):
            raise RecordError(f'record file name {name!r} must be a plain file name (no folders, not hidden)')
        if name in GENERATED_FILES:
            raise RecordError(f'record file name {name!r} is reserved: the record writes it itself')
        if name in result:
            raise RecordError(f'record file name {name!r} is given twice')
        source = pathlib.Path(source)
        if not source.exists():
            raise RecordError(f'record file {name!r}: {source} does not exist')
        if source.is_dir() and not name.endswith('.zip'):
            raise RecordError(f'record file {name!r}: {source} is a folder; give it a name ending in .zip')
        result[name] = (source, description)
    return result


def _size(path: pathlib.Path) -> int:
    if path.is_dir():
        return sum(item.stat().st_size for item in path.rglob('*') if item.is_file())
    return path.stat().st_size


def _gigabytes(size: float) -> str:
    return f'{size / 1000**3:.3f} GB'


def check_record_size(
    files, *, file_limit: int = FILE_LIMIT_BYTES, aiida_limit: int = AIIDA_LIMIT_BYTES
) -> dict[str, int]:
    """Refuse files over the Archive's limits: 5 GB of files, and separately 50 GB of AiiDA archives.

    :param files: ``{name: path}`` (or ``{name: (path, description)}``) or a list of paths; a folder counts with
        the size of its files (it goes into the record as a zip of at most that size).
    :return: ``{'files_bytes': ..., 'aiida_bytes': ...}``.
    :raises RecordError: saying which limit is exceeded and by how much.
    """
    normalised = _normalise_files(files)
    aiida_bytes = sum(_size(source) for name, (source, _) in normalised.items() if name.endswith('.aiida'))
    files_bytes = sum(_size(source) for name, (source, _) in normalised.items() if not name.endswith('.aiida'))
    if files_bytes > file_limit:
        raise RecordError(
            f'record files (without AiiDA archives) total {_gigabytes(files_bytes)}, over the Materials Cloud '
            f'Archive limit of {_gigabytes(file_limit)} per record by {_gigabytes(files_bytes - file_limit)}'
        )
    if aiida_bytes > aiida_limit:
        raise RecordError(
            f'AiiDA archives (*.aiida) total {_gigabytes(aiida_bytes)}, over the Materials Cloud Archive limit of '
            f'{_gigabytes(aiida_limit)} for AiiDA databases by {_gigabytes(aiida_bytes - aiida_limit)}'
        )
    return {'files_bytes': files_bytes, 'aiida_bytes': aiida_bytes}


def _percent(fraction: float) -> str:
    return f'{100 * fraction:g} %'


def _describe(name: str, description: str | None, fractions: Sequence[float] = DEFAULT_FRACTIONS) -> str:
    if description:
        return description
    train, val, test = (_percent(fraction) for fraction in fractions)
    for pattern, text in FILE_DESCRIPTIONS:
        if fnmatch.fnmatch(name, pattern):
            return text.format(train=train, val=val, test=test)
    raise RecordError(f'record file {name!r} has no description: pass it as (path, description)')


#: File names of the OPTIMADE structures and their properties in a record.
OPTIMADE_STRUCTURES = 'optimade-structures.zip'
OPTIMADE_PROPERTIES_FILE = 'optimade-properties.csv'

#: Columns of ``optimade-properties.csv`` (after ``id``) with their OPTIMADE property definitions.
OPTIMADE_PROPERTIES = (
    {'name': 'energy', 'title': 'Total energy', 'description': 'DFT total energy', 'unit': 'eV', 'type': 'float'},
    {
        'name': 'energy_per_atom',
        'title': 'Energy per atom',
        'description': 'DFT total energy divided by the number of atoms',
        'unit': 'eV/atom',
        'type': 'float',
    },
    {'name': 'subset', 'title': 'Subset', 'description': 'MAD subset of the structure', 'unit': None, 'type': 'string'},
    {'name': 'split', 'title': 'Split', 'description': 'train, val or test', 'unit': None, 'type': 'string'},
    {
        'name': 'max_force',
        'title': 'Largest force',
        'description': 'Largest force magnitude on an atom',
        'unit': 'eV/Å',
        'type': 'float',
    },
)


def write_optimade_files(directory, frames: Sequence[Atoms]) -> dict[str, pathlib.Path]:
    """Write ``optimade-structures.zip`` and ``optimade-properties.csv`` for the record's OPTIMADE API.

    :param directory: an existing folder to write the two files into.
    :param frames: the frames of the record (unique source uuids).
    :return: ``{file name: path}``.
    """
    frames = list(frames)
    validate_frames(frames)
    directory = pathlib.Path(directory)
    archive_path = directory / OPTIMADE_STRUCTURES
    with zipfile.ZipFile(archive_path, 'w', compression=zipfile.ZIP_DEFLATED) as archive:
        for frame in sorted(frames, key=lambda item: item.info['source_uuid']):
            buffer = io.StringIO()
            write_extxyz([frame], buffer, validate=False)
            info = zipfile.ZipInfo(f'structures/{frame.info["source_uuid"]}.xyz', date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, buffer.getvalue())
    csv_path = directory / OPTIMADE_PROPERTIES_FILE
    with csv_path.open('w', newline='', encoding='utf-8') as handle:
        writer = csv.writer(handle)
        writer.writerow(['id'] + [item['name'] for item in OPTIMADE_PROPERTIES])
        for frame in sorted(frames, key=lambda item: item.info['source_uuid']):
            energy = float(frame.info['energy'])
            forces = frame.arrays['forces']
            writer.writerow(
                [
                    frame.info['source_uuid'],
                    repr(energy),
                    repr(energy / len(frame)),
                    frame.info['subset'],
                    frame.info['split'],
                    repr(float(np.sqrt((forces**2).sum(axis=1)).max())),
                ]
            )
    return {OPTIMADE_STRUCTURES: archive_path, OPTIMADE_PROPERTIES_FILE: csv_path}


def _optimade_config(metadata: dict, names: Sequence[str]) -> dict:
    if OPTIMADE_STRUCTURES in names:
        entry: dict = {
            'entry_type': 'structures',
            'entry_paths': [{'file': OPTIMADE_STRUCTURES, 'matches': ['structures/*.xyz']}],
        }
        if OPTIMADE_PROPERTIES_FILE in names:
            entry['property_paths'] = [{'file': OPTIMADE_PROPERTIES_FILE}]
            entry['property_definitions'] = [dict(item) for item in OPTIMADE_PROPERTIES]
    else:
        xyz = [name for name in names if name.endswith('.xyz')]
        if not xyz:
            raise RecordError('the record has no .xyz file and no frames for its optimade.yaml to point at')
        entry = {'entry_type': 'structures', 'entry_paths': [{'file': name} for name in xyz]}
    return {
        'config_version': '0.1.0',
        'database_description': f'{metadata["title"]}. {metadata["description"]}',
        'entries': [entry],
    }


def _author_name(author: dict) -> str:
    return author.get('name') or f'{author["givennames"]} {author["familyname"]}'


def _escape(text) -> str:
    """Return ``text`` with ``&``, ``<`` and ``>`` escaped: metadata is shown as text, never as HTML."""
    return html.escape(str(text), quote=False)


#: The README's warning for a record whose level of theory is not production grade.
TEST_GRADE_WARNING = (
    '**Test grade.** This level of theory is not the production MAD level (protocol `mad`/`mad-dos` with an SSSP '
    'pseudopotential family): its energies, forces and stresses are for tests and demonstrations, not for training '
    'or benchmarking models. The record was written with an explicit override (`--allow-test-grade`).'
)


def _readme(metadata: dict, rows: list[tuple[str, int, str]]) -> str:
    """Return the README: the metadata (every user-given text HTML-escaped), the level of theory, the files."""
    lines = [f'# {_escape(metadata["title"])}', '', _escape(metadata['description']), '']
    if metadata.get('level_of_theory'):
        lines += ['## Level of theory', '', _escape(metadata['level_of_theory']), '']
        if metadata.get('test_grade'):
            lines += [TEST_GRADE_WARNING, '']
    lines += ['## Authors', '']
    for author in metadata['authors']:
        orcid = f' (ORCID {_escape(author["orcid"])})' if 'orcid' in author else ''
        affiliations = '; '.join(_escape(affiliation) for affiliation in author['affiliations'])
        lines.append(f'- {_escape(_author_name(author))}{orcid}: {affiliations}')
    lines += ['', f'License: {metadata["license"]} ({LICENSES[metadata["license"]]})', '']
    lines += ['Keywords: ' + ', '.join(_escape(keyword) for keyword in metadata['keywords']), '', '## References', '']
    for reference in metadata['references']:
        extra = ''.join(f' {key}: {_escape(reference[key])}.' for key in ('doi', 'url', 'comment') if key in reference)
        lines.append(f'- {_escape(reference["type"])}: {_escape(reference["citation"])}.{extra}')
    lines += [
        '',
        '## Files',
        '',
        'Units: Å, eV, eV/Å, eV/Å³ (stress with the ASE sign: positive = tensile).',
        '',
        '| File | Size | Content |',
        '| --- | --- | --- |',
    ]
    for name, size, description in rows:
        lines.append(f'| `{name}` | {size:,} bytes | {_escape(description)} |')
    lines.append('')
    return '\n'.join(lines)


def _zip_folder(source: pathlib.Path, target: pathlib.Path) -> None:
    """Zip a folder deterministically (sorted names, fixed time stamps)."""
    with zipfile.ZipFile(target, 'w', compression=zipfile.ZIP_DEFLATED) as archive:
        for item in sorted(source.rglob('*')):
            if item.is_file() and item.relative_to(source) != pathlib.Path(MARKER):
                info = zipfile.ZipInfo(str(item.relative_to(source)), date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, item.read_bytes())


def write_record(
    directory,
    *,
    metadata: Mapping,
    files,
    frames: Sequence[Atoms] | None = None,
    force: bool = False,
    link: bool = False,
    file_limit: int = FILE_LIMIT_BYTES,
    aiida_limit: int = AIIDA_LIMIT_BYTES,
    fractions: Sequence[float] | None = None,
    level_of_theory: str | None = None,
    test_grade: bool = False,
) -> dict[str, pathlib.Path]:
    """Write a Materials Cloud Archive record folder.

    Everything is checked first (metadata, file names and descriptions, the Archive's size limits); the folder is
    then assembled next to ``directory`` and moved into place, so a failure leaves nothing half-written behind.

    :param directory: the record folder; refused if it exists and is not empty, unless ``force`` (then replaced).
    :param metadata: see :func:`validate_metadata`.
    :param files: ``{name in the record: path}`` or ``{name: (path, description)}`` or a list of paths (named by
        their file names). Names matching :data:`FILE_DESCRIPTIONS` get a standard description; others need one.
        A folder is stored as a zip (its name must end in ``.zip``).
    :param frames: the record's frames; given, the record gets ``optimade-structures.zip`` and
        ``optimade-properties.csv`` and ``optimade.yaml`` serves every frame (see the module documentation).
    :param force: replace a folder written by an earlier record or export (one holding the marker of
        :mod:`aiida_mad.export.folders` and nothing else); any other non-empty folder is refused.
    :param link: hard-link files instead of copying them where the file system allows (for big archives).
    :param file_limit: the Archive's file limit in bytes (default 5 GB).
    :param aiida_limit: the Archive's AiiDA-archive limit in bytes (default 50 GB).
    :param fractions: the dataset's ``(train, val, test)`` split fractions, quoted in the descriptions of the split
        files (default 0.8, 0.1, 0.1).
    :param level_of_theory: the level of theory in plain words; written to the README and ``metadata.yml``
        (``level_of_theory``).
    :param test_grade: the level of theory is not production grade: the README says so in a warning and
        ``metadata.yml`` has ``test_grade: true``.
    :return: ``{name: path}`` of every file in the record, generated ones included.
    :raises RecordError: for invalid metadata, files or sizes, a folder that is not free (see
        :func:`~aiida_mad.export.folders.check_free`), or a failure of the file system (full disk, read-only place).
    """
    checked = validate_metadata(metadata)
    if level_of_theory:
        checked['level_of_theory'] = str(level_of_theory)
    if test_grade:
        checked['test_grade'] = True
    normalised = _normalise_files(files)
    fractions = tuple(DEFAULT_FRACTIONS if fractions is None else fractions)
    if len(fractions) != 3 or not all(isinstance(value, int | float) and 0 <= value <= 1 for value in fractions):
        raise RecordError(f'fractions must be three numbers from 0 to 1 (train, val, test), got {fractions!r}')
    descriptions = {name: _describe(name, description, fractions) for name, (_, description) in normalised.items()}
    check_record_size(normalised, file_limit=file_limit, aiida_limit=aiida_limit)
    generated = [OPTIMADE_STRUCTURES, OPTIMADE_PROPERTIES_FILE] if frames is not None else []
    clashes = sorted(set(generated) & set(normalised))
    if clashes:
        raise RecordError(f'record file names {clashes} are written from the frames: do not pass them as files')
    optimade = _optimade_config(checked, [*normalised, *generated])
    if frames is not None:
        frames = list(frames)
        if not frames:
            raise RecordError('frames is empty: pass the frames of the record, or None')
        validate_frames(frames)

    directory = pathlib.Path(directory).absolute()
    with staged_folder(directory, force=force, error=RecordError, kind='record') as staging:
        for name, (source, _) in normalised.items():
            target = staging / name
            if source.is_dir():
                _zip_folder(source, target)
            elif link:
                try:
                    os.link(source, target)
                except OSError:
                    shutil.copyfile(source, target)
            else:
                shutil.copyfile(source, target)
        if frames is not None:
            write_optimade_files(staging, frames)
            descriptions.update({name: _describe(name, None, fractions) for name in generated})
        names = [*normalised, *generated]
        check_record_size({name: staging / name for name in names}, file_limit=file_limit, aiida_limit=aiida_limit)
        rows = [(name, (staging / name).stat().st_size, descriptions[name]) for name in names]
        (staging / 'metadata.yml').write_text(
            yaml.safe_dump(checked, sort_keys=False, allow_unicode=True, width=120), encoding='utf-8'
        )
        (staging / 'optimade.yaml').write_text(
            yaml.safe_dump(optimade, sort_keys=False, allow_unicode=True, width=120), encoding='utf-8'
        )
        rows += [
            ('metadata.yml', (staging / 'metadata.yml').stat().st_size, 'Record metadata (this README in YAML).'),
            (
                'optimade.yaml',
                (staging / 'optimade.yaml').stat().st_size,
                "Configuration of the Archive's OPTIMADE API (optimade-maker) over the extended-XYZ files.",
            ),
        ]
        (staging / 'README.md').write_text(_readme(checked, rows), encoding='utf-8')
    return {name: directory / name for name in [*names, *GENERATED_FILES]}
