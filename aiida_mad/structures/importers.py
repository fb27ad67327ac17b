"""Import structures from files, ASE databases and OPTIMADE providers as ``ase.Atoms`` with provenance metadata.

Pure Python: nothing here imports AiiDA, so that the CLI and the work chains can validate every imported structure
before anything is stored. Three sources feed the ``mc3d``, ``mc2d`` and ``shiftml-molcrys`` subsets:

* :func:`read_structure_files`: any format ``ase.io.read`` reads (CIF, POSCAR/CONTCAR, extended XYZ, ...), every
  frame of every file.
* :func:`read_ase_db`: the rows of an ASE database, optionally narrowed by an ASE selection string.
* :class:`OptimadeClient`: the ``/v1/structures`` endpoint of any OPTIMADE provider (MC3D is served by Materials
  Cloud), following the server's pagination links. HTTP goes through the standard library; each entry is validated
  against the OPTIMADE specification and converted to ``ase.Atoms`` by optimade-python-tools' adapter
  (``optimade.adapters.Structure(...).as_ase``), with the few additions it lacks (see :func:`atoms_from_optimade`).

All three give :class:`ImportedStructure` objects whose ``metadata`` says where each structure came from; the
metadata holds only JSON values, so that it can be stored as node extras unchanged.

Policies, decided here once so that every caller behaves the same:

* The importers return *structures only*: results ASE finds in a file or database row (energies, forces) are dropped.
* Disordered structures (partial occupancies, several chemical symbols or a vacancy on one site, unknown element
  ``X``, implicit atoms) are refused, because a DFT label needs one definite arrangement of atoms. A file or database
  row that is disordered fails the whole import (the user asked for that exact structure); an OPTIMADE entry that is
  disordered is *skipped* and recorded in :attr:`OptimadeClient.skipped` with its reason, because a filter on a large
  provider legitimately matches a few such entries and one of them must not abort an import of thousands.
* Non-periodic directions of OPTIMADE entries whose lattice vector is ``null`` get a zero cell vector (the ASE
  convention for "no cell along this direction") and ``pbc=False`` along it; adding vacuum is the caller's choice.
* An OPTIMADE entry that breaks the specification (as optimade-python-tools' models check it: shapes, ``nsites``,
  species names, ``null`` vectors along periodic directions, ...) is skipped with the validation errors as reason.
* Plausibility checks beyond "finite coordinates and a definite composition" (close contacts, element pool,
  degenerate cells) belong to ``aiida_mad.structures.checks`` and are not repeated here.
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ase.db
import ase.io
import numpy as np
from ase import Atoms
from ase.data import atomic_numbers
from ase.io.formats import UnknownFileTypeError, filetype, ioformats

from aiida_mad import __version__

__all__ = (
    'OPTIMADE_STRUCTURE_FIELDS',
    'SOURCES',
    'ImportedStructure',
    'OptimadeClient',
    'OptimadeError',
    'SkippedEntry',
    'StructureImportError',
    'atoms_from_optimade',
    'read_ase_db',
    'read_structure_files',
)

#: The values :attr:`ImportedStructure.source` can take.
SOURCES: tuple[str, ...] = ('file', 'ase-db', 'optimade')

#: OPTIMADE structure fields the conversion to ``ase.Atoms`` reads; always requested when the caller narrows the
#: response with ``response_fields``.
OPTIMADE_STRUCTURE_FIELDS: tuple[str, ...] = (
    'lattice_vectors',
    'cartesian_site_positions',
    'species_at_sites',
    'species',
    'dimension_types',
    'nperiodic_dimensions',
    'nsites',
    'structure_features',
    'assemblies',
    'chemical_formula_reduced',
    'immutable_id',
    'last_modified',
)

# Occupancies within this distance of 1 count as full: CIF and OPTIMADE values are rounded decimals.
_OCCUPANCY_TOLERANCE = 1e-6

# OPTIMADE versioned base URLs end in /v1, /v1.2 or /v1.2.0; the client always adds /v1 itself.
_VERSION_SUFFIX = re.compile(r'/v1(?:\.\d+){0,2}$')


class StructureImportError(ValueError):
    """Raised when structures cannot be imported; the message names every offending item and why.

    :ivar problems: ``(item, reason)`` pairs, one per offending file, database row or entry.
    """

    def __init__(self, message: str, problems: Iterable[tuple[str, str]] = ()):
        super().__init__(message)
        self.problems: list[tuple[str, str]] = list(problems)


class OptimadeError(StructureImportError):
    """Raised when an OPTIMADE server cannot be reached, rejects a query or answers with something unusable.

    :ivar url: the URL requested.
    :ivar status: the HTTP status, or ``None`` when no HTTP answer came back.
    :ivar details: the ``detail`` (or ``title``) of every error object in the server's ``errors`` list.
    """

    def __init__(self, message: str, *, url: str, status: int | None = None, details: Sequence[str] = ()):
        super().__init__(message, [(url, message)])
        self.url = url
        self.status = status
        self.details = list(details)


class _RefusedError(Exception):
    """Internal: one item (file, frame, row, entry) is refused; the message is the reason."""


@dataclass(frozen=True)
class ImportedStructure:
    """One imported structure and where it came from.

    :param atoms: the structure.
    :param source: ``'file'``, ``'ase-db'`` or ``'optimade'``.
    :param metadata: JSON-serialisable provenance: for files ``path``, ``index`` (frame within the file), ``format``
        and ``sha256`` of the file; for ASE databases ``path``, ``row_id``, ``unique_id``, ``key_value_pairs`` and
        ``selection``; for OPTIMADE ``base_url``, ``structure_id``, ``url`` (``<base_url>/v1/structures/<id>``),
        ``filter``, plus ``chemical_formula_reduced``, ``immutable_id``, ``last_modified``, ``provider`` (the
        provider prefix) where the server gives them and ``attributes`` for extra ``response_fields`` asked for.
    """

    atoms: Atoms
    source: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f'unknown source {self.source!r}: expected one of {", ".join(SOURCES)}')


@dataclass(frozen=True)
class SkippedEntry:
    """An OPTIMADE entry that was not converted, and why.

    :param structure_id: the entry's ``id`` (``None`` if it had none).
    :param url: the entry's URL, or the page URL when the entry had no ``id``.
    :param reason: why it was refused.
    """

    structure_id: str | None
    url: str
    reason: str


# --------------------------------------------------------------------------------------------------------------------
# Checks shared by all sources


def _check_atoms(atoms: Atoms) -> None:
    """Raise :class:`_RefusedError` if ``atoms`` has no atoms, non-finite numbers or partial occupancies."""
    if len(atoms) == 0:
        raise _RefusedError('no atoms')
    if not np.all(np.isfinite(atoms.positions)):
        bad = sorted({int(i) for i in np.argwhere(~np.isfinite(atoms.positions))[:, 0]})
        raise _RefusedError(f'non-finite positions (atoms {", ".join(map(str, bad[:10]))})')
    if not np.all(np.isfinite(atoms.cell.array)):
        raise _RefusedError('non-finite cell')
    # ASE's CIF reader keeps only one species per disordered site and records the occupancies here; without this
    # check a Fe0.5Co0.5 site would silently become a full Co atom.
    occupancy = atoms.info.get('occupancy')
    if isinstance(occupancy, Mapping):
        partial = sorted(
            str(site)
            for site, occupancies in occupancy.items()
            if isinstance(occupancies, Mapping)
            and (len(occupancies) > 1 or any(abs(float(v) - 1) > _OCCUPANCY_TOLERANCE for v in occupancies.values()))
        )
        if partial:
            sites = ', '.join(partial[:10])
            raise _RefusedError(f'partial occupancies (disordered sites {sites}); only ordered structures')


def _problems_message(what: str, problems: Sequence[tuple[str, str]]) -> str:
    """Return one message listing every ``(item, reason)`` pair, first line a summary."""
    lines = [f'{len(problems)} {what} cannot be imported; nothing was imported:']
    lines.extend(f'  {item}: {reason}' for item, reason in problems)
    return '\n'.join(lines)


# --------------------------------------------------------------------------------------------------------------------
# Files


def read_structure_files(
    paths: str | os.PathLike | Iterable[str | os.PathLike], *, format: str | None = None
) -> list[ImportedStructure]:
    """Read every frame of every file with ``ase.io.read``; all files are read before anything is returned.

    Any format ASE reads works: CIF, POSCAR/CONTCAR (``vasp``), extended XYZ (all frames), ... The format is guessed
    from each file's name and content unless ``format`` is given. Results stored with a frame (energies, forces) are
    dropped. Either every file is fine and all structures come back, or :class:`StructureImportError` lists every
    offending file and why (does not exist, not a file, unreadable, unknown format, no structures, a frame with
    non-finite coordinates or partial occupancies), so that the caller never stores half an import.

    :param paths: one path or several.
    :param format: an ``ase.io`` format name used for every file, or ``None`` to let ASE guess per file.
    :return: one :class:`ImportedStructure` per frame, in the order of ``paths`` and of the frames in each file.
    :raises StructureImportError: if no path is given or any file cannot be imported.
    """
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    paths = [Path(path) for path in paths]
    if not paths:
        raise StructureImportError('no structure files given')
    if format is not None and format not in ioformats:
        raise StructureImportError(f'unknown ase.io format {format!r} for files {", ".join(map(str, paths))}')

    imported: list[ImportedStructure] = []
    problems: list[tuple[str, str]] = []
    for path in paths:
        try:
            imported.extend(_read_one_file(path, format))
        except _RefusedError as exc:
            problems.append((str(path), str(exc)))

    if problems:
        raise StructureImportError(_problems_message('file(s)', problems), problems)
    return imported


def _read_one_file(path: Path, format: str | None) -> list[ImportedStructure]:
    """Read all frames of one file, raising :class:`_RefusedError` with the reason if anything is wrong."""
    if not path.exists():
        raise _RefusedError('does not exist')
    if not path.is_file():
        raise _RefusedError('is not a regular file')
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise _RefusedError(f'cannot be read: {exc.strerror or exc}') from exc
    if not content.strip():
        raise _RefusedError('is empty')

    if format is None:
        try:
            format = filetype(str(path), guess=True)
        except (UnknownFileTypeError, OSError) as exc:
            raise _RefusedError(f'unknown format (pass an ase.io format name explicitly): {exc}') from exc
        # For an unknown extension ASE returns the extension itself instead of raising.
        if format not in ioformats:
            raise _RefusedError(f'unknown format {format!r} (pass an ase.io format name explicitly)')

    try:
        frames = ase.io.read(str(path), index=':', format=format)
    # ASE's many readers fail with every kind of exception (ValueError, KeyError, IndexError, StopIteration, ...);
    # whatever it is, the file is unreadable in this format and the user needs the file name and the reason.
    except Exception as exc:
        # Some readers fail on a bare assert; the exception type alone tells the user nothing.
        reason = str(exc) or f'{type(exc).__name__} in the ase.io reader, the content is not valid {format}'
        raise _RefusedError(f'cannot be read as format {format!r}: {reason}') from exc
    if isinstance(frames, Atoms):
        frames = [frames]
    if not frames:
        raise _RefusedError(f'contains no structures (read as format {format!r})')

    sha256 = hashlib.sha256(content).hexdigest()
    resolved = str(path.resolve())
    imported = []
    for index, atoms in enumerate(frames):
        try:
            _check_atoms(atoms)
        except _RefusedError as exc:
            raise _RefusedError(f'frame {index}: {exc}') from exc
        atoms.calc = None
        metadata = {'path': resolved, 'index': index, 'format': format, 'sha256': sha256}
        imported.append(ImportedStructure(atoms=atoms, source='file', metadata=metadata))
    return imported


# --------------------------------------------------------------------------------------------------------------------
# ASE databases


def read_ase_db(path: str | os.PathLike, *, selection: str | int | None = None) -> list[ImportedStructure]:
    """Read the rows of an ASE database (``ase.db.connect``), optionally narrowed by an ASE selection.

    The database is only read: a missing file is an error rather than a new empty database. A selection that matches
    no row is an error too, because it is almost always a typo in a key or value. Results stored with a row
    (energies, forces) are dropped.

    :param path: an ASE database file (``.db`` for SQLite, ``.json``).
    :param selection: an ASE selection such as ``'subset=mc3d,natoms<20'`` or a row id; ``None`` selects all rows.
    :return: one :class:`ImportedStructure` per row, in row order.
    :raises StructureImportError: if the file is missing or no ASE database, the selection is invalid or matches
        nothing, or a row has non-finite coordinates.
    """
    path = Path(path)
    if not path.exists():
        raise StructureImportError(f'ASE database {path} does not exist', [(str(path), 'does not exist')])
    if not path.is_file():
        raise StructureImportError(f'ASE database {path} is not a regular file', [(str(path), 'not a file')])

    try:
        # Reading only: no lock file and no new indices written next to the user's database.
        database = ase.db.connect(str(path), use_lock_file=False, create_indices=False)
        database.count()
    # sqlite3.DatabaseError, json.JSONDecodeError, ValueError('Unknown database type') and friends: all mean the
    # file cannot be opened as an ASE database.
    except Exception as exc:
        reason = f'cannot be opened as an ASE database: {exc}'
        raise StructureImportError(f'ASE database {path} {reason}', [(str(path), reason)]) from exc

    try:
        rows = list(database.select(selection))
    except Exception as exc:
        reason = f'invalid selection {selection!r}: {exc}'
        raise StructureImportError(f'ASE database {path}: {reason}', [(str(path), reason)]) from exc
    if not rows:
        what = 'contains no rows' if selection is None else f'has no row matching selection {selection!r}'
        raise StructureImportError(f'ASE database {path} {what}', [(str(path), what)])

    resolved = str(path.resolve())
    imported: list[ImportedStructure] = []
    problems: list[tuple[str, str]] = []
    for row in rows:
        atoms = row.toatoms()
        try:
            _check_atoms(atoms)
        except _RefusedError as exc:
            problems.append((f'{path} row {row.id}', str(exc)))
            continue
        atoms.calc = None
        metadata = {
            'path': resolved,
            'row_id': int(row.id),
            'unique_id': str(row.get('unique_id', '')),
            'key_value_pairs': dict(row.key_value_pairs),
            'selection': selection,
        }
        imported.append(ImportedStructure(atoms=atoms, source='ase-db', metadata=metadata))

    if problems:
        raise StructureImportError(_problems_message('database row(s)', problems), problems)
    return imported


# --------------------------------------------------------------------------------------------------------------------
# OPTIMADE


def atoms_from_optimade(entry: Mapping[str, Any]) -> Atoms:
    """Convert one OPTIMADE structure entry (or its ``attributes``) to ``ase.Atoms``.

    The entry is validated against the OPTIMADE specification and converted by optimade-python-tools
    (:class:`optimade.adapters.Structure` and its ``as_ase``), after the additions the adapter lacks: see
    :func:`_prepare_attributes` and :func:`_refuse_unordered`.

    :param entry: a JSON:API resource object with ``attributes``, or the attributes themselves.
    :return: the structure.
    :raises StructureImportError: naming the reason if the entry is disordered (several chemical symbols or a
        vacancy on a species, partial concentrations, ``disorder``/``implicit_atoms``/``assemblies``/
        ``site_attachments`` features), uses the unknown element ``X``, or is no valid OPTIMADE structure (the
        message quotes the validation errors of optimade-python-tools).
    """
    try:
        return _atoms_from_optimade(entry)
    except _RefusedError as exc:
        identifier = entry.get('id', '<no id>') if isinstance(entry, Mapping) else '<not an object>'
        raise StructureImportError(f'OPTIMADE entry {identifier}: {exc}', [(str(identifier), str(exc))]) from exc


def _atoms_from_optimade(entry: Mapping[str, Any]) -> Atoms:
    """Convert an entry, raising :class:`_RefusedError` with the reason."""
    try:
        return _convert_optimade_entry(entry)
    # Providers serve all kinds of malformed values (strings for numbers, nested lists for flags); one bad entry must
    # end up as a refusal with a reason, not as a crash half-way through an import.
    except (TypeError, ValueError, KeyError, IndexError) as exc:
        raise _RefusedError(f'malformed entry: {type(exc).__name__}: {exc}') from exc


@functools.cache
def _optimade_adapter():
    """Return :class:`optimade.adapters.Structure` and the exceptions of a refused conversion.

    Imported on first use, not with this module: ``optimade.adapters`` also loads its AiiDA adapter, which imports
    aiida-core when it is installed, and this module must stay free of AiiDA (and quick to import).
    """
    import pydantic
    from optimade.adapters import Structure
    from optimade.adapters.exceptions import ConversionError

    return Structure, (pydantic.ValidationError, ConversionError)


def _convert_optimade_entry(entry: Mapping[str, Any]) -> Atoms:
    """Do the conversion of :func:`_atoms_from_optimade`."""
    if not isinstance(entry, Mapping):
        raise _RefusedError('entry is not a JSON object')
    attributes = entry.get('attributes', entry)
    if not isinstance(attributes, Mapping):
        raise _RefusedError('attributes is not a JSON object')
    _refuse_unordered(attributes)
    attributes = _prepare_attributes(attributes)

    structure_class, refusals = _optimade_adapter()
    resource = {'id': str(entry.get('id', 'entry')), 'type': 'structures', 'attributes': attributes}
    try:
        with warnings.catch_warnings():
            # Missing optional fields (formulae, elements) are no reason to refuse a structure.
            warnings.simplefilter('ignore', category=_optimade_warning())
            atoms = structure_class(resource).as_ase
    except refusals as exc:
        raise _RefusedError(f'not a valid OPTIMADE structure: {_validation_summary(exc)}') from exc

    if attributes.get('lattice_vectors') is None and any(value == 1 for value in attributes['dimension_types']):
        raise _RefusedError('periodic structure without lattice_vectors')
    # The adapter turns the null lattice vector of a non-periodic direction into NaN: ASE's "no cell vector" is zero.
    pbc = np.array([value == 1 for value in attributes['dimension_types']])
    cell = atoms.cell.array.copy()
    cell[~pbc & np.isnan(cell).any(axis=1)] = 0.0
    atoms.set_cell(cell)
    atoms.pbc = pbc
    atoms.info.clear()  # provider-specific fields end up in info: the importers return structures only
    _check_atoms(atoms)
    periodic = cell[pbc]
    if len(periodic) and np.linalg.matrix_rank(periodic, tol=1e-8) < len(periodic):
        raise _RefusedError('lattice vectors of the periodic directions are linearly dependent')
    return atoms


def _optimade_warning() -> type[Warning]:
    from optimade.warnings import OptimadeWarning

    return OptimadeWarning


def _validation_summary(exc: Exception, limit: int = 3) -> str:
    """Return the first ``limit`` errors of a pydantic ``ValidationError`` (field path and message), or the text."""
    errors = getattr(exc, 'errors', None)
    if errors is None:
        return str(exc)
    lines = []
    for error in errors()[:limit]:
        location = '.'.join(str(part) for part in error['loc'] if part != 'attributes')
        message = error['msg'].removeprefix('Value error, ')
        lines.append(f'{location}: {message}' if location else message)
    more = len(errors()) - limit
    return '; '.join(lines) + (f' (and {more} more)' if more > 0 else '')


def _refuse_unordered(attributes: Mapping[str, Any]) -> None:
    """Refuse what the ASE adapter would convert wrongly or with an unclear error: the policy of this module.

    The adapter refuses the ``disorder`` feature and the element ``X`` itself, but it keeps the first chemical symbol
    of a species whatever its concentration, and fails on vacancies, site attachments and implicit atoms with
    generic errors. Here they are refused, each with its reason.
    """
    features = attributes.get('structure_features') or []
    if not isinstance(features, list):
        raise _RefusedError(f'structure_features must be a list, got {features!r}')
    refused_features = sorted({'disorder', 'implicit_atoms', 'assemblies', 'site_attachments'}.intersection(features))
    if refused_features:
        raise _RefusedError(f'structure_features {refused_features}: only ordered structures with all atoms on sites')
    if attributes.get('assemblies'):
        raise _RefusedError('has assemblies (alternative site groups): only ordered structures')

    species = attributes.get('species')
    site_names = attributes.get('species_at_sites')
    if species is None:
        # Without ``species`` the adapter takes the site names as chemical symbols.
        if isinstance(site_names, list):
            unknown = sorted({name for name in site_names if name not in atomic_numbers or name == 'X'}, key=str)
            if unknown:
                raise _RefusedError(f'no species list, and site names {unknown} are not chemical symbols')
        return
    if not isinstance(species, list):
        raise _RefusedError('species is not a list')
    for item in species:
        if not isinstance(item, Mapping) or not isinstance(item.get('name'), str):
            raise _RefusedError('species holds an item without a name')
        name = item['name']
        symbols = item.get('chemical_symbols')
        if not isinstance(symbols, list) or not symbols:
            raise _RefusedError(f'species {name!r} has no chemical_symbols')
        if len(symbols) > 1:
            raise _RefusedError(f'species {name!r} is disordered (chemical_symbols {symbols}): only ordered structures')
        if symbols[0] == 'vacancy':
            raise _RefusedError(f'species {name!r} is a vacancy: only ordered structures')
        if symbols[0] == 'X' or symbols[0] not in atomic_numbers:
            raise _RefusedError(f'species {name!r} has unknown element {symbols[0]!r}')
        concentration = item.get('concentration')
        if (
            isinstance(concentration, list)
            and len(concentration) == 1
            and isinstance(concentration[0], int | float)
            and abs(float(concentration[0]) - 1) > _OCCUPANCY_TOLERANCE
        ):
            raise _RefusedError(f'species {name!r} has partial concentration {concentration}: only ordered structures')
        if item.get('attached'):
            raise _RefusedError(f'species {name!r} has attached atoms without positions {item["attached"]}')


def _prepare_attributes(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of ``attributes`` completed where the adapter needs a field that a provider may not serve.

    * ``dimension_types`` absent: inferred from ``nperiodic_dimensions`` (0 or 3) or, for 1 and 2, from which
      lattice vectors are ``null``; the adapter would take "no dimension types" for "not periodic".
    * A lattice vector given as a single ``null`` becomes three ``null`` components (the OPTIMADE form).
    * ``nsites`` absent: the number of positions (the adapter counts sites with it).
    * ``structure_features`` and ``last_modified`` absent: ``[]`` and ``null``. The model requires both fields to be
      present; a provider that narrows its response may leave them out, and neither changes the structure (a
      disordered entry still fails: the model requires the ``disorder`` feature for a multi-symbol species).
    """
    prepared = dict(attributes)
    if prepared.get('dimension_types') is None:
        prepared['dimension_types'] = [int(value) for value in _periodicity(attributes)]
    vectors = prepared.get('lattice_vectors')
    if isinstance(vectors, list):
        prepared['lattice_vectors'] = [[None, None, None] if vector is None else vector for vector in vectors]
    positions = prepared.get('cartesian_site_positions')
    if prepared.get('nsites') is None and isinstance(positions, list):
        prepared['nsites'] = len(positions)
    prepared.setdefault('structure_features', [])
    prepared.setdefault('last_modified', None)
    if prepared['structure_features'] is None:
        prepared['structure_features'] = []
    return prepared


def _periodicity(attributes: Mapping[str, Any]) -> list[bool]:
    """Return the periodic boundary conditions of an entry that has no ``dimension_types``."""
    nperiodic = attributes.get('nperiodic_dimensions')
    if nperiodic in (0, 3):
        return [nperiodic == 3] * 3
    if nperiodic in (1, 2):
        # Without dimension_types only the null lattice vectors can say which directions are periodic.
        vectors = attributes.get('lattice_vectors')
        if isinstance(vectors, list) and len(vectors) == 3:
            pbc = [isinstance(v, list) and len(v) == 3 and all(c is not None for c in v) for v in vectors]
            if sum(pbc) == nperiodic:
                return pbc
        raise _RefusedError(f'nperiodic_dimensions={nperiodic} without dimension_types does not say which directions')
    raise _RefusedError('neither dimension_types nor nperiodic_dimensions says which directions are periodic')


class OptimadeClient:
    """Fetch structures from the ``/v1/structures`` endpoint of an OPTIMADE provider, following pagination.

    HTTP goes through the standard library (``urllib``), the conversion through :func:`atoms_from_optimade`. Entries
    that cannot be converted (disordered, vacancies, ...) are skipped and recorded in :attr:`skipped` instead of
    aborting the whole import; HTTP and protocol failures raise
    :class:`OptimadeError`.

    :param base_url: the provider's base URL, with or without a trailing ``/v1`` (``/v1.2``, ``/``), e.g.
        ``https://optimade.materialscloud.org/main/mc3d-pbesol-v1``.
    :param page_limit: entries requested per page (the ``page_limit`` query parameter); servers may cap it.
    :param timeout: seconds to wait for each HTTP response.
    :param max_structures: stop after this many structures were yielded; ``None`` fetches until the server has no
        more pages.
    :param max_request_delay: upper bound in seconds on the wait between pages that a server asks for with
        ``meta.request_delay``.

    :ivar base_url: the normalised base URL, without trailing ``/`` or version.
    :ivar skipped: the :class:`SkippedEntry` objects of the last :meth:`fetch`, in the order met.
    :ivar data_returned: ``meta.data_returned`` of the first page of the last :meth:`fetch` (the number of entries
        the filter matches), or ``None`` if the server does not say; handy for progress bars.
    :ivar pages_fetched: the number of pages requested by the last :meth:`fetch`.
    """

    def __init__(
        self,
        base_url: str,
        *,
        page_limit: int = 100,
        timeout: float = 30.0,
        max_structures: int | None = None,
        max_request_delay: float = 10.0,
    ):
        if not isinstance(page_limit, int) or isinstance(page_limit, bool) or page_limit < 1:
            raise ValueError(f'page_limit must be a positive integer, got {page_limit!r}')
        if not timeout > 0:
            raise ValueError(f'timeout must be positive, got {timeout!r}')
        if max_structures is not None and (
            not isinstance(max_structures, int) or isinstance(max_structures, bool) or max_structures < 0
        ):
            raise ValueError(f'max_structures must be None or a non-negative integer, got {max_structures!r}')
        self.base_url = self.normalise_base_url(base_url)
        self.page_limit = page_limit
        self.timeout = float(timeout)
        self.max_structures = max_structures
        self.max_request_delay = float(max_request_delay)
        self.skipped: list[SkippedEntry] = []
        self.data_returned: int | None = None
        self.pages_fetched = 0

    @staticmethod
    def normalise_base_url(base_url: str) -> str:
        """Return ``base_url`` without surrounding blanks, trailing ``/`` and trailing version (``/v1``, ``/v1.2``).

        :param base_url: an ``http`` or ``https`` URL.
        :raises OptimadeError: if it is no such URL or carries a query or fragment.
        """
        url = str(base_url).strip()
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ('http', 'https') or not parsed.netloc:
            raise OptimadeError(f'OPTIMADE base URL {base_url!r} is not an http(s) URL', url=str(base_url))
        if parsed.query or parsed.fragment:
            raise OptimadeError(f'OPTIMADE base URL {base_url!r} must not have a query or fragment', url=str(base_url))
        url = url.rstrip('/')
        return _VERSION_SUFFIX.sub('', url).rstrip('/')

    @property
    def structures_url(self) -> str:
        """The URL of the structures endpoint, ``<base_url>/v1/structures``."""
        return f'{self.base_url}/v1/structures'

    def entry_url(self, structure_id: str) -> str:
        """Return the URL of one structure entry, ``<base_url>/v1/structures/<id>`` (id percent-encoded)."""
        return f'{self.structures_url}/{urllib.parse.quote(structure_id, safe="/")}'

    def fetch(
        self, filter_string: str | None, *, response_fields: Sequence[str] | None = None
    ) -> Iterator[ImportedStructure]:
        """Yield the structures matching an OPTIMADE filter, page after page, until exhausted or ``max_structures``.

        This is a generator: requests are made, and errors raised, while it is iterated. Collect it completely
        (``list(client.fetch(...))``) before storing anything, so that a failing page leaves nothing half-stored.
        Entries that cannot be converted are recorded in :attr:`skipped` and do not count towards
        ``max_structures``; :attr:`skipped`, :attr:`data_returned` and :attr:`pages_fetched` are reset when the
        iteration starts.

        :param filter_string: an OPTIMADE filter such as ``'elements HAS ALL "Si","O" AND nsites<=8'``; ``None`` or
            ``''`` fetches every structure.
        :param response_fields: extra fields to ask for; the fields the conversion needs are always added, and the
            extra ones end up in ``metadata['attributes']``. ``None`` asks for the server's default fields.
        :raises OptimadeError: if the server is unreachable (the message names the URL), rejects the query (the
            message includes the filter and the server's ``detail``), or answers with no OPTIMADE response.
        """
        self.skipped = []
        self.data_returned = None
        self.pages_fetched = 0
        filter_string = (filter_string or '').strip()

        extra_fields = [name for name in dict.fromkeys(response_fields or ()) if name not in OPTIMADE_STRUCTURE_FIELDS]
        params: dict[str, Any] = {}
        if filter_string:
            params['filter'] = filter_string
        params['page_limit'] = self.page_limit
        if response_fields is not None:
            params['response_fields'] = ','.join(OPTIMADE_STRUCTURE_FIELDS + tuple(extra_fields))
        # Spaces as %20 rather than '+': '+' means a space only in form encoding, %20 in every URL parser.
        url: str | None = f'{self.structures_url}?{urllib.parse.urlencode(params, quote_via=urllib.parse.quote)}'

        yielded = 0
        requested: set[str] = set()
        while url is not None:
            if self.max_structures is not None and yielded >= self.max_structures:
                return
            requested.add(url)
            page = self._get_page(url, filter_string)
            self.pages_fetched += 1
            meta = page.get('meta') if isinstance(page.get('meta'), Mapping) else {}
            if self.pages_fetched == 1:
                self.data_returned = meta.get('data_returned')
            provider = meta.get('provider') if isinstance(meta.get('provider'), Mapping) else {}

            for entry in page['data']:
                imported = self._convert(entry, url, filter_string, provider.get('prefix'), extra_fields)
                if imported is None:
                    continue
                yield imported
                yielded += 1
                if self.max_structures is not None and yielded >= self.max_structures:
                    return

            next_url = _next_link(page.get('links'))
            if next_url is None or not page['data']:
                return
            next_url = urllib.parse.urljoin(url, next_url)
            if next_url in requested:
                raise OptimadeError(
                    f'OPTIMADE server {self.base_url} sent a pagination link back to a page already read: {next_url}',
                    url=next_url,
                )
            url = next_url
            delay = meta.get('request_delay')
            if isinstance(delay, int | float) and delay > 0:
                # The server asks clients to pace themselves (OPTIMADE 1.2 meta.request_delay).
                time.sleep(min(float(delay), self.max_request_delay))

    def _convert(
        self,
        entry: Any,
        page_url: str,
        filter_string: str,
        provider_prefix: str | None,
        extra_fields: Sequence[str],
    ) -> ImportedStructure | None:
        """Convert one entry, or record it in :attr:`skipped` and return ``None``."""
        structure_id = entry.get('id') if isinstance(entry, Mapping) else None
        if not isinstance(structure_id, str) or not structure_id:
            self.skipped.append(SkippedEntry(None, page_url, 'entry has no id'))
            return None
        url = self.entry_url(structure_id)
        if entry.get('type', 'structures') != 'structures':
            self.skipped.append(SkippedEntry(structure_id, url, f'entry type is {entry.get("type")!r}, not structures'))
            return None
        try:
            atoms = _atoms_from_optimade(entry)
        except _RefusedError as exc:
            self.skipped.append(SkippedEntry(structure_id, url, str(exc)))
            return None

        attributes = entry.get('attributes') or {}
        metadata: dict[str, Any] = {
            'base_url': self.base_url,
            'structure_id': structure_id,
            'url': url,
            'filter': filter_string,
        }
        for key in ('chemical_formula_reduced', 'immutable_id', 'last_modified'):
            if attributes.get(key) is not None:
                metadata[key] = attributes[key]
        if provider_prefix:
            metadata['provider'] = provider_prefix
        if extra_fields:
            metadata['attributes'] = {name: attributes.get(name) for name in extra_fields}
        return ImportedStructure(atoms=atoms, source='optimade', metadata=metadata)

    def _get_page(self, url: str, filter_string: str) -> dict[str, Any]:
        """GET one page and return the decoded JSON:API document, raising :class:`OptimadeError` on any failure."""
        request = urllib.request.Request(
            url,
            headers={'Accept': 'application/vnd.api+json, application/json', 'User-Agent': f'aiida-mad/{__version__}'},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            details = _error_details(_read_error_body(exc))
            detail = '; '.join(details) or str(exc.reason)
            if exc.code in (400, 403, 501) and filter_string:
                # 400: the filter does not parse or names an unknown field; 501: valid but not implemented here;
                # 403: page_limit over the server's maximum. All are about the query the user wrote.
                message = (
                    f'OPTIMADE server {self.base_url} rejected the query for filter {filter_string!r} '
                    f'(HTTP {exc.code}): {detail}'
                )
            else:
                message = f'OPTIMADE request {url} failed (HTTP {exc.code}): {detail}'
            raise OptimadeError(message, url=url, status=exc.code, details=details) from exc
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            # URLError wraps refused connections and unknown hosts; a bare TimeoutError or reset comes as OSError.
            reason = getattr(exc, 'reason', None) or exc
            raise OptimadeError(f'cannot reach OPTIMADE server at {url}: {reason}', url=url) from exc

        try:
            page = json.loads(body)
        except ValueError as exc:
            raise OptimadeError(f'OPTIMADE server at {url} did not answer with JSON: {exc}', url=url) from exc
        if not isinstance(page, dict):
            raise OptimadeError(f'OPTIMADE server at {url} answered with JSON that is no object', url=url)
        if page.get('errors') and not page.get('data'):
            details = _error_details(page)
            raise OptimadeError(
                f'OPTIMADE server at {url} answered with errors for filter {filter_string!r}: {"; ".join(details)}',
                url=url,
                details=details,
            )
        if not isinstance(page.get('data'), list):
            raise OptimadeError(f'OPTIMADE server at {url} answered without a list of entries in data', url=url)
        return page


def _read_error_body(exc: urllib.error.HTTPError) -> Any:
    """Return the decoded JSON body of an HTTP error response, or ``None``."""
    try:
        return json.loads(exc.read())
    except (ValueError, OSError):
        return None


def _error_details(document: Any) -> list[str]:
    """Return the ``detail`` (or ``title``) of each error object of a JSON:API error document."""
    if not isinstance(document, Mapping) or not isinstance(document.get('errors'), list):
        return []
    details = []
    for error in document['errors']:
        if isinstance(error, Mapping):
            text = error.get('detail') or error.get('title')
            if text:
                details.append(str(text).strip())
    return details


def _next_link(links: Any) -> str | None:
    """Return the ``links.next`` URL of a page; JSON:API allows a string or a link object with ``href``."""
    if not isinstance(links, Mapping):
        return None
    link = links.get('next')
    if isinstance(link, Mapping):
        link = link.get('href')
    return link if isinstance(link, str) and link else None
