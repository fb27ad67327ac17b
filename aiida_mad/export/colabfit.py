"""The ColabFit data standard for a dataset of frames, written without colabfit-tools, with ColabFit's own IDs.

colabfit-tools (PyPI ``colabfit-kit``) pulls in pyspark, a VAST database client, ibis, Django and Jupyter; this
module writes the documented objects itself, as JSON lines, and computes their IDs with ColabFit's own hashing,
reimplemented from colabfit-tools (``colabfit/tools/vast/utils/hashing.py``, ``configuration.py``,
``property.py``, ``configuration_set.py``; commit d25d47a, April 2026). The test fixtures
``tests/export/fixtures/colabfit/expected.json`` were made by colabfit-tools itself.

ColabFit's hash (:func:`colabfit_hash`)
    sha512 over the values of the identifying fields, taken in sorted field-name order, field names not hashed,
    ``None`` fields skipped. A list becomes a numpy array; a float array is cast to float64 and rounded to 16
    decimals (``np.round``), an integer or boolean array is cast to int64, and the array's raw (little-endian)
    bytes are hashed; a Python ``int``/``float``/``bool`` is hashed as the bytes of ``np.array(value)`` (8 bytes,
    8 bytes, 1 byte), a string as UTF-8. An ID is the prefix and the hex digest, cut to 28 characters.

Configuration (CO), ``CO_<25 hex>``: exactly ColabFit's
    Identifying fields ``atomic_numbers``, ``cell``, ``pbc``, ``positions``, with ``pbc`` as ColabFit derives it:
    ``True`` along every cell vector longer than 1e-10 Å. ``structure_hash`` is ColabFit's order-independent
    structure hash (atoms sorted by x, then y, then z). Summary fields (formula, elements, number of sites) and the
    subsets a configuration appears in (``labels``) are stored, not hashed.
Property object (PO), ``PO_<25 hex>``: exactly ColabFit's
    ColabFit's unit of data: all properties of one calculation on one configuration. Identifying fields
    ``configuration_id``, ``dataset_id``, ``chemical_formula_hill``, ``energy`` (total, eV), ``atomic_forces``
    (eV/Å), ``cauchy_stress`` (eV/Å³) and ``cauchy_stress_volume_normalized`` (periodic frames), with ``method``,
    ``software`` and ``metadata`` left empty (``None``, so not hashed). ``multiplicity`` counts the frames that
    carry identical data (not hashed, as in ColabFit).
Configuration set (CS), ``CS_<subset>_<dataset id>``: ColabFit's form; one per subset.
Dataset (DS), ``DS_<12 characters>_0``: ColabFit's form
    ColabFit draws the 12 characters (``[a-z0-9]``) at random; here they come from a sha256 over the sorted CO and
    data-object IDs, so exporting the same data twice gives the same IDs.
Property instance (PI), ``PI_<25 hex>`` and property definition (PD): this module's, in KIM style
    One property of one calculation with its units: ``potential-energy`` (total, eV), a second
    ``potential-energy`` for the baseline-subtracted energy (with ``reference-energy`` = the subtracted Σ E_atom),
    ``atomic-forces`` (eV/Å), ``cauchy-stress`` (eV/Å³, ASE sign, volume-normalized) and
    ``electronic-density-of-states`` (states/eV; masked grid points are ``null``). Hashed with ColabFit's hash over
    ``type`` and every ``<key>`` value and ``<key>_unit``. Definitions follow the KIM property-definition style and
    are identified by name.
Data object (DO), ``DO_<25 hex>``: this module's
    One configuration with the property instances computed for it, and the ID of its property object; ColabFit's
    hash over the CO ID and the sorted PI IDs, so frames whose configuration and properties are identical are one
    DO (its ``sources`` list them: source uuid, subset, split).

Differences from ColabFit, all deliberate:

* ColabFit keeps no per-property instances (PI) or data objects (DO) any more: its property object holds every
  value. They are kept here because the property object has no column for the baseline-subtracted energy (its
  ``energy`` is the total, as ColabFit stores it after adding ``reference-energy`` back) or for the DOS; the PO
  rows carry the values ColabFit's schema has.
* The configuration rows store the frame's own ``pbc`` (a 0D frame keeps its DFT box with ``pbc`` all ``False``);
  only the ID uses ColabFit's cell-derived ``pbc``, under which such a box counts as periodic.
* Values are hashed exactly (ColabFit's rounding to 16 decimals changes nothing at the magnitudes of positions,
  energies and forces): configurations that differ by numerical noise, or by ``-0.0`` against ``0.0``, get
  different IDs, as in ColabFit. The atom order enters the CO ID (not ``structure_hash``), as in ColabFit.
* ``dataset_id`` is this module's deterministic ID (see above), so a PO ID equals the one ColabFit computes only
  for the same dataset ID; ``method``, ``software`` and ``metadata`` are not filled, and ColabFit ingestions that
  fill them get other PO IDs. The level-of-theory fingerprint is in every DO and in the dataset instead, and the
  dataset says the level of theory in plain words (``level_of_theory``) when the metadata gives it.
* ColabFit's ``last_modified`` time stamps are not written (they are not part of any ID).

Duplicates: frames whose configuration and properties are identical collapse into one DO and one PO (the report
counts them and names their source uuids); identical property values shared by different configurations are one PI.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import pathlib
from collections import Counter
from collections.abc import Sequence

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols

from ..dataset.frames import SPLITS, validate_frames
from ..dos import GRID_POINTS, GRID_SPACING, GRID_START, SIGMA
from .folders import staged_folder

__all__ = [
    'ColabfitDataset',
    'ColabfitError',
    'build_colabfit',
    'colabfit_hash',
    'configuration_id',
    'property_definitions',
    'property_object',
    'read_colabfit',
    'structure_hash',
    'write_colabfit',
]

#: Length of ColabFit's hash IDs: the prefix (``CO_``, ``PO_``, ...) and the start of the sha512 hex digest.
ID_LENGTH = 28

#: ColabFit counts a cell vector longer than this (Å) as periodic when it derives ``pbc`` from the cell.
PBC_LENGTH = 1e-10

#: Identifying fields of ColabFit's property object: its schema's fields less those it ignores in the hash.
PROPERTY_OBJECT_FIELDS = (
    'adsorption_energy',
    'atomic_forces',
    'atomization_energy',
    'cauchy_stress',
    'cauchy_stress_volume_normalized',
    'chemical_formula_hill',
    'configuration_id',
    'dataset_id',
    'electronic_band_gap',
    'electronic_band_gap_type',
    'energy',
    'energy_above_hull',
    'formation_energy',
    'metadata',
    'method',
    'software',
)

#: Units of the stored values.
UNITS = {'energy': 'eV', 'forces': 'eV/angstrom', 'stress': 'eV/angstrom^3', 'dos': 'states/eV'}

FILES = {
    'configurations': 'configurations.jsonl',
    'property_instances': 'property_instances.jsonl',
    'property_objects': 'property_objects.jsonl',
    'property_definitions': 'property_definitions.json',
    'configuration_sets': 'configuration_sets.jsonl',
    'data_objects': 'data_objects.jsonl',
    'dataset': 'dataset.json',
}

_PROPERTY_TAG = 'tag:aiida-mad@materialscloud.org,2026-01-01:property'

#: Short descriptions of the MAD subsets, used for their configuration sets.
SUBSET_DESCRIPTIONS = {
    'mc3d': 'Bulk crystals from the Materials Cloud three-dimensional crystals database (MC3D).',
    'mc3d-rattled': 'MC3D crystals with Gaussian noise on the Cartesian positions (0.2 covalent radii).',
    'mc3d-random': 'MC3D cells with every species drawn at random from the element pool and the volume rescaled.',
    'mc3d-surface': 'Slabs cut from MC3D crystals along random low-index planes, periodic in-plane only.',
    'mc3d-cluster': 'Non-periodic clusters of 2 to 8 atoms cut from MC3D and rattled MC3D crystals.',
    'mc2d': 'Two-dimensional materials from the Materials Cloud two-dimensional crystals database (MC2D).',
    'shiftml-molcrys': 'Molecular crystals from the ShiftML dataset.',
    'shiftml-molfrags': 'Neutral molecules cut out of ShiftML molecular crystals, non-periodic.',
    'mp-aloe': 'Prototype substitutions with 2 to 8 atoms, scrambled and strained (MP-ALOE style).',
    'isolated-atom': 'Single atoms in a box: the isolated-atom reference energies.',
}


class ColabfitError(ValueError):
    """Invalid dataset metadata or an unusable output folder."""


def _pd_key(type_: str, unit: bool, extent: list, required: bool, description: str) -> dict:
    return {'type': type_, 'has-unit': unit, 'extent': extent, 'required': required, 'description': description}


def property_definitions() -> list[dict]:
    """Return the KIM-style property definitions used by this module (energy, forces, stress, DOS)."""
    return [
        {
            'property-id': f'{_PROPERTY_TAG}/potential-energy',
            'property-name': 'potential-energy',
            'property-title': 'Potential energy',
            'property-description': 'Potential energy of the configuration (DFT total energy)',
            'energy': _pd_key('float', True, [], True, 'potential energy, eV'),
            'per-atom': _pd_key('bool', False, [], True, 'whether the energy is divided by the number of atoms'),
            'reference-energy': _pd_key(
                'float', True, [], False, 'energy subtracted from "energy" (isolated-atom baseline Σ E_atom), eV'
            ),
        },
        {
            'property-id': f'{_PROPERTY_TAG}/atomic-forces',
            'property-name': 'atomic-forces',
            'property-title': 'Atomic forces',
            'property-description': 'Force on every atom of the configuration',
            'forces': _pd_key('float', True, [':', 3], True, 'Cartesian forces, eV/angstrom, one row per atom'),
        },
        {
            'property-id': f'{_PROPERTY_TAG}/cauchy-stress',
            'property-name': 'cauchy-stress',
            'property-title': 'Cauchy stress',
            'property-description': 'Stress tensor of a periodic configuration, ASE sign (positive = tensile)',
            'stress': _pd_key('float', True, [3, 3], True, 'stress tensor, eV/angstrom^3'),
            'volume-normalized': _pd_key('bool', False, [], True, 'whether the stress is divided by the volume'),
        },
        {
            'property-id': f'{_PROPERTY_TAG}/electronic-density-of-states',
            'property-name': 'electronic-density-of-states',
            'property-title': 'Electronic density of states',
            'property-description': (
                'Gaussian-smeared electronic DOS per cell on a uniform grid relative to the Fermi energy; '
                'null marks grid points above the highest converged band (masked)'
            ),
            'dos': _pd_key('float', True, [':'], True, 'density of states, states/eV'),
            'energy-start': _pd_key('float', True, [], True, 'first grid energy relative to E_F, eV'),
            'energy-spacing': _pd_key('float', True, [], True, 'grid spacing, eV'),
            'smearing-width': _pd_key('float', True, [], False, 'Gaussian standard deviation, eV'),
        },
    ]


@dataclasses.dataclass
class ColabfitDataset:
    """The ColabFit objects of one dataset, as JSON-ready dictionaries keyed by ID (insertion order kept)."""

    dataset: dict
    configurations: dict[str, dict]
    property_instances: dict[str, dict]
    property_objects: dict[str, dict]
    property_definitions: list[dict]
    configuration_sets: dict[str, dict]
    data_objects: dict[str, dict]

    @property
    def id(self) -> str:
        """The dataset ID (``DS_<sha256>``)."""
        return self.dataset['id']

    @property
    def report(self) -> dict:
        """Counts of the build, including duplicates (stored in ``dataset.json`` under ``report``)."""
        return self.dataset['report']


def _hash_bytes(value) -> bytes:
    """Return the bytes ColabFit hashes for one field value (``_format_for_hash`` of colabfit-tools)."""
    if isinstance(value, list | tuple):
        value = np.array(value)
    if isinstance(value, np.ndarray):
        if np.issubdtype(value.dtype, np.floating):
            value = np.round(value.astype(np.float64), decimals=16)
            if np.isnan(value).any():  # not in ColabFit (its fields hold no NaN): one NaN, whatever its bits
                value = np.where(np.isnan(value), np.nan, value)
        elif np.issubdtype(value.dtype, np.integer) or np.issubdtype(value.dtype, np.bool_):
            value = value.astype(np.int64)
        return np.ascontiguousarray(value).tobytes()
    if isinstance(value, str):
        return value.encode('utf-8')
    if isinstance(value, dict):
        return str(value).encode('utf-8')
    if isinstance(value, bool | int | float | np.number):
        return np.array(value).tobytes()
    raise TypeError(f'ColabFit hashes no {type(value).__name__}')


def colabfit_hash(row: dict, keys) -> str:
    """Return ColabFit's sha512 hex digest of ``row``: the values of ``keys`` in sorted order, ``None`` skipped."""
    digest = hashlib.sha512()
    for key in sorted(keys):
        value = row.get(key)
        if value is None:
            continue
        digest.update(_hash_bytes(value))
    return digest.hexdigest()


def _colabfit_id(prefix: str, digest: str) -> str:
    return f'{prefix}_{digest}'[:ID_LENGTH]


def colabfit_pbc(cell) -> list[bool]:
    """Return the periodic boundary conditions ColabFit derives from a cell: a vector longer than 1e-10 Å."""
    return (np.linalg.norm(np.asarray(cell, dtype=float), axis=1) > PBC_LENGTH).tolist()


def configuration_id(numbers, positions, cell) -> str:
    """Return ColabFit's configuration ID (``CO_`` and 25 hex digits) of a structure."""
    row = {
        'atomic_numbers': np.asarray(numbers).astype(int).tolist(),
        'cell': np.asarray(cell, dtype=float).tolist(),
        'pbc': colabfit_pbc(cell),
        'positions': np.asarray(positions, dtype=float).tolist(),
    }
    return _colabfit_id('CO', colabfit_hash(row, row))


def structure_hash(numbers, positions, cell) -> str:
    """Return ColabFit's ``structure_hash``: like the configuration ID, with the atoms sorted by x, then y, then z."""
    positions = np.asarray(positions, dtype=float)
    order = np.lexsort((positions[:, 2], positions[:, 1], positions[:, 0]))
    digest = hashlib.sha512()
    digest.update(_hash_bytes(np.asarray(numbers)[order].astype(int)))
    digest.update(_hash_bytes(np.asarray(cell, dtype=float).tolist()))
    digest.update(_hash_bytes(colabfit_pbc(cell)))
    digest.update(_hash_bytes(positions[order]))
    return digest.hexdigest()


def property_object(
    configuration: str, dataset: str, formula: str, energy: float, forces, stress=None, multiplicity: int = 1
) -> dict:
    """Return ColabFit's property object of one calculation, with its ID (``PO_`` and 25 hex digits).

    :param configuration: the configuration ID.
    :param dataset: the dataset ID.
    :param formula: the Hill formula (``ase.Atoms.get_chemical_formula()``).
    :param energy: total energy, eV.
    :param forces: ``(N, 3)`` forces, eV/Å.
    :param stress: ``(3, 3)`` stress, eV/Å³ (``None`` for non-periodic frames).
    :param multiplicity: how many frames carry these data (not hashed).
    """
    row = {
        'configuration_id': configuration,
        'dataset_id': dataset,
        'chemical_formula_hill': formula,
        'energy': float(energy),
        'energy_unit': UNITS['energy'],
        'energy_per_atom': False,
        'atomic_forces': np.asarray(forces, dtype=float).tolist(),
        'atomic_forces_unit': UNITS['forces'],
        'cauchy_stress': None if stress is None else np.asarray(stress, dtype=float).tolist(),
        'cauchy_stress_unit': None if stress is None else UNITS['stress'],
        'cauchy_stress_volume_normalized': None if stress is None else True,
        'method': None,
        'software': None,
        'metadata': None,
        'multiplicity': multiplicity,
    }
    return {'id': _colabfit_id('PO', colabfit_hash(row, PROPERTY_OBJECT_FIELDS)), **row}


def _configuration(frame: Atoms) -> dict:
    numbers = frame.numbers
    cell = frame.cell.array
    pbc = [bool(value) for value in frame.pbc]
    counts = Counter(numbers.tolist())
    elements = sorted(counts, key=lambda number: chemical_symbols[number])
    return {
        'id': configuration_id(numbers, frame.positions, cell),
        'structure_hash': structure_hash(numbers, frame.positions, cell),
        'atomic_numbers': numbers.tolist(),
        'positions': frame.positions.tolist(),
        'cell': cell.tolist(),
        'pbc': pbc,
        'chemical_formula_hill': frame.get_chemical_formula('hill'),
        'elements': [chemical_symbols[number] for number in elements],
        'elements_ratios': [counts[number] / len(numbers) for number in elements],
        'nsites': len(numbers),
        'nperiodic_dimensions': sum(pbc),
        'dimension_types': [int(value) for value in pbc],
        'labels': [],
    }


def _property(name: str, fields: dict) -> dict:
    """Return a property instance; its ID is ColabFit's hash of its type and every field's value and unit."""
    row: dict = {'type': name}
    for key, field in fields.items():
        row[key] = np.asarray(field['source-value'], dtype=float) if key == 'dos' else field['source-value']
        row[f'{key}_unit'] = field.get('source-unit')
    return {
        'id': _colabfit_id('PI', colabfit_hash(row, row)),
        'property-id': f'{_PROPERTY_TAG}/{name}',
        'type': name,
        **fields,
    }


def _value(value, unit: str | None = None) -> dict:
    return {'source-value': value} if unit is None else {'source-value': value, 'source-unit': unit}


def _json_floats(array) -> list:
    """Return a nested list with NaN as ``None`` (JSON has no NaN)."""
    array = np.asarray(array, dtype=float)
    if not np.isnan(array).any():
        return array.tolist()
    objects = array.astype(object)
    objects[np.isnan(array)] = None
    return objects.tolist()


def _properties(frame: Atoms, dos_grid: dict) -> list[dict]:
    info = frame.info
    energy = float(info['energy'])
    instances = [
        _property(
            'potential-energy',
            {'energy': _value(energy, UNITS['energy']), 'per-atom': _value(False)},
        )
    ]
    if 'energy_baseline_subtracted' in info:
        subtracted = float(info['energy_baseline_subtracted'])
        reference = energy - subtracted
        instances.append(
            _property(
                'potential-energy',
                {
                    'energy': _value(subtracted, UNITS['energy']),
                    'per-atom': _value(False),
                    'reference-energy': _value(reference, UNITS['energy']),
                },
            )
        )
    forces = frame.arrays['forces']
    instances.append(_property('atomic-forces', {'forces': _value(forces.tolist(), UNITS['forces'])}))
    if 'stress' in info:
        stress = np.asarray(info['stress'], dtype=float)
        instances.append(
            _property(
                'cauchy-stress',
                {'stress': _value(stress.tolist(), UNITS['stress']), 'volume-normalized': _value(True)},
            )
        )
    if 'dos' in info:
        dos = np.asarray(info['dos'], dtype=float)
        fields = {
            'dos': _value(_json_floats(dos), UNITS['dos']),
            'energy-start': _value(float(dos_grid['start']), 'eV'),
            'energy-spacing': _value(float(dos_grid['spacing']), 'eV'),
        }
        if dos_grid.get('sigma') is not None:
            fields['smearing-width'] = _value(float(dos_grid['sigma']), 'eV')
        instances.append(_property('electronic-density-of-states', fields))
    return instances


def validate_metadata(metadata: dict) -> dict:
    """Check and normalise the dataset metadata: name, authors, license, description, optional links.

    ``level_of_theory`` (optional) is the level of theory in plain words
    (:func:`aiida_mad.fingerprint.describe_level_of_theory`); it goes into the dataset object.

    :raises ColabfitError: naming the missing or invalid field.
    """
    if not isinstance(metadata, dict):
        raise ColabfitError(f'dataset metadata must be a dict, got {type(metadata).__name__}')
    unknown = set(metadata) - {'name', 'authors', 'license', 'links', 'description', 'dos_grid', 'level_of_theory'}
    if unknown:
        raise ColabfitError(f'unknown dataset metadata fields: {sorted(unknown)}')
    result = {}
    for field in ('name', 'license', 'description'):
        value = metadata.get(field)
        if not isinstance(value, str) or not value.strip():
            raise ColabfitError(f'dataset metadata field {field!r} must be a non-empty string, got {value!r}')
        result[field] = value.strip()
    authors = metadata.get('authors')
    if isinstance(authors, str) or not isinstance(authors, Sequence) or not authors:
        raise ColabfitError(f"dataset metadata field 'authors' must be a non-empty list of names, got {authors!r}")
    for author in authors:
        if not isinstance(author, str) or not author.strip():
            raise ColabfitError(f"dataset metadata field 'authors' has an invalid entry: {author!r}")
    result['authors'] = [author.strip() for author in authors]
    links = metadata.get('links', [])
    if isinstance(links, str) or not isinstance(links, Sequence):
        raise ColabfitError(f"dataset metadata field 'links' must be a list of URLs, got {links!r}")
    for link in links:
        if not isinstance(link, str) or not link.startswith(('https://', 'http://')):
            raise ColabfitError(f"dataset metadata field 'links' has an entry that is not an http(s) URL: {link!r}")
    result['links'] = list(links)
    level = metadata.get('level_of_theory')
    if level is not None:
        if not isinstance(level, str) or not level.strip():
            raise ColabfitError(f"dataset metadata field 'level_of_theory' must be a non-empty string, got {level!r}")
        result['level_of_theory'] = level.strip()
    dos_grid = {'start': GRID_START, 'spacing': GRID_SPACING, 'points': GRID_POINTS, 'sigma': SIGMA}
    if metadata.get('dos_grid') is not None:
        given = metadata['dos_grid']
        if not isinstance(given, dict) or set(given) - set(dos_grid):
            raise ColabfitError(f"dataset metadata field 'dos_grid' must be a dict with keys {sorted(dos_grid)}")
        dos_grid.update(given)
        for key in ('start', 'spacing'):
            if not isinstance(dos_grid[key], int | float) or not math.isfinite(dos_grid[key]):
                raise ColabfitError(f"dataset metadata field 'dos_grid' has an invalid {key}: {dos_grid[key]!r}")
    result['dos_grid'] = dos_grid
    return result


def _dataset_id(configurations: dict, data_objects: dict) -> str:
    """Return a ColabFit-style dataset ID, ``DS_<12 of [a-z0-9]>_0``, from the sorted CO and DO IDs."""
    digest = hashlib.sha256('\n'.join([*sorted(configurations), '', *sorted(data_objects)]).encode()).digest()
    number = int.from_bytes(digest, 'big')
    characters = []
    for _ in range(12):
        number, digit = divmod(number, 36)
        characters.append('0123456789abcdefghijklmnopqrstuvwxyz'[digit])
    return f'DS_{"".join(characters)}_0'


def build_colabfit(frames: Sequence[Atoms], metadata: dict) -> ColabfitDataset:
    """Build the ColabFit objects of a dataset.

    :param frames: the frames (one fingerprint; see :mod:`aiida_mad.dataset.frames`).
    :param metadata: ``name``, ``authors`` (list of names), ``license``, ``description``, optional ``links``
        (list of URLs) and ``dos_grid`` (``start``, ``spacing``, ``sigma`` in eV; defaults: the project's grid).
    :return: the dataset; ``dataset.report`` counts frames, unique objects and duplicates.
    :raises ColabfitError: for invalid metadata or no frames.
    :raises FrameError: for an invalid frame or a mix of fingerprints.
    """
    checked = validate_metadata(metadata)
    frames = list(frames)
    if not frames:
        raise ColabfitError('no frames: a ColabFit dataset needs at least one data object')
    validate_frames(frames, unique_sources=False)

    configurations: dict[str, dict] = {}
    instances: dict[str, dict] = {}
    data_objects: dict[str, dict] = {}
    subset_configurations: dict[str, set[str]] = {}
    instance_references = 0
    first_frames: dict[str, Atoms] = {}
    for frame in frames:
        configuration = _configuration(frame)
        configuration = configurations.setdefault(configuration['id'], configuration)
        subset = frame.info['subset']
        if subset not in configuration['labels']:
            configuration['labels'] = sorted([*configuration['labels'], subset])
        subset_configurations.setdefault(subset, set()).add(configuration['id'])
        instance_ids = []
        for instance in _properties(frame, checked['dos_grid']):
            instances.setdefault(instance['id'], instance)
            instance_ids.append(instance['id'])
        instance_references += len(instance_ids)
        instance_ids = sorted(set(instance_ids))
        row = {'configuration_id': configuration['id'], 'property_instance_ids': '\n'.join(instance_ids)}
        identifier = _colabfit_id('DO', colabfit_hash(row, row))
        if identifier not in data_objects:
            first_frames[identifier] = frame
        data_object = data_objects.setdefault(
            identifier,
            {
                'id': identifier,
                'configuration_id': configuration['id'],
                'property_instance_ids': instance_ids,
                'fingerprint': frame.info['fingerprint'],
                'sources': [],
            },
        )
        data_object['sources'].append(
            {'source_uuid': frame.info['source_uuid'], 'subset': subset, 'split': frame.info['split']}
        )

    dataset_id = _dataset_id(configurations, data_objects)
    configuration_sets = {}
    for subset in sorted(subset_configurations):
        identifier = f'CS_{subset}_{dataset_id}'
        configuration_sets[identifier] = {
            'id': identifier,
            'name': subset,
            'description': SUBSET_DESCRIPTIONS.get(subset, f'Configurations of the {subset} subset.'),
            'dataset_id': dataset_id,
            'configuration_ids': sorted(subset_configurations[subset]),
        }

    property_objects = {}
    for identifier, item in data_objects.items():
        frame = first_frames[identifier]
        found = property_object(
            item['configuration_id'],
            dataset_id,
            configurations[item['configuration_id']]['chemical_formula_hill'],
            frame.info['energy'],
            frame.arrays['forces'],
            frame.info.get('stress'),
            multiplicity=len(item['sources']),
        )
        if found['id'] in property_objects:  # the same calculation results, here with other PIs (DOS, baseline)
            property_objects[found['id']]['multiplicity'] += found['multiplicity']
        else:
            property_objects[found['id']] = found
        item['property_object_id'] = found['id']

    duplicates = [
        {'data_object_id': identifier, 'source_uuids': sorted(source['source_uuid'] for source in item['sources'])}
        for identifier, item in data_objects.items()
        if len(item['sources']) > 1
    ]
    for item in data_objects.values():
        item['sources'].sort(key=lambda source: source['source_uuid'])
    split_counts = Counter(
        source['split'] for data_object in data_objects.values() for source in data_object['sources']
    )
    report = {
        'n_frames': len(frames),
        'n_data_objects': len(data_objects),
        'n_configurations': len(configurations),
        'n_property_instances': len(instances),
        'n_property_objects': len(property_objects),
        'n_duplicate_frames': len(frames) - len(data_objects),
        'n_shared_property_instance_references': instance_references - len(instances),
        'duplicates': duplicates,
    }
    dataset = {
        'id': dataset_id,
        'name': checked['name'],
        'authors': checked['authors'],
        'license': checked['license'],
        'links': checked['links'],
        'description': checked['description'],
        'configuration_set_ids': list(configuration_sets),
        'fingerprints': sorted({frame.info['fingerprint'] for frame in frames}),
        **({'level_of_theory': checked['level_of_theory']} if 'level_of_theory' in checked else {}),
        'elements': sorted(
            {element for item in configurations.values() for element in item['elements']},
            key=chemical_symbols.index,
        ),
        'nsites': sum(configurations[item['configuration_id']]['nsites'] for item in data_objects.values()),
        'property_counts': dict(sorted(Counter(item['type'] for item in instances.values()).items())),
        'split_counts': {split: split_counts.get(split, 0) for split in SPLITS},
        'dos_grid': checked['dos_grid'],
        'report': report,
    }
    return ColabfitDataset(
        dataset=dataset,
        configurations=configurations,
        property_instances=instances,
        property_objects=property_objects,
        property_definitions=property_definitions(),
        configuration_sets=configuration_sets,
        data_objects=data_objects,
    )


def _dump(value) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(',', ':'))


def write_colabfit(dataset: ColabfitDataset, directory, *, force: bool = False) -> dict[str, pathlib.Path]:
    """Write the dataset as JSON lines files (one object a line) plus two JSON files.

    :param dataset: from :func:`build_colabfit`.
    :param directory: the output folder; created if missing, refused if it exists and is not empty unless
        ``force`` (then it is replaced).
    :return: ``{kind: path}`` of the files written (see :data:`FILES`).
    """
    directory = pathlib.Path(directory).absolute()
    with staged_folder(directory, force=force, error=ColabfitError) as staging:
        for kind in ('configurations', 'property_instances', 'property_objects', 'configuration_sets', 'data_objects'):
            with (staging / FILES[kind]).open('w', encoding='utf-8') as handle:
                for item in getattr(dataset, kind).values():
                    handle.write(_dump(item) + '\n')
        (staging / FILES['property_definitions']).write_text(
            json.dumps(dataset.property_definitions, indent=2, ensure_ascii=False) + '\n', encoding='utf-8'
        )
        (staging / FILES['dataset']).write_text(
            json.dumps(dataset.dataset, indent=2, ensure_ascii=False, allow_nan=False) + '\n', encoding='utf-8'
        )
    return {kind: directory / name for kind, name in FILES.items()}


def read_colabfit(directory) -> ColabfitDataset:
    """Read a folder written by :func:`write_colabfit` back into a :class:`ColabfitDataset`."""
    directory = pathlib.Path(directory)
    missing = [name for name in FILES.values() if not (directory / name).is_file()]
    if missing:
        raise ColabfitError(f'{directory} is not a ColabFit folder: missing {missing}')

    def lines(kind: str) -> dict[str, dict]:
        items = {}
        with (directory / FILES[kind]).open(encoding='utf-8') as handle:
            for line in handle:
                if line.strip():
                    item = json.loads(line)
                    items[item['id']] = item
        return items

    return ColabfitDataset(
        dataset=json.loads((directory / FILES['dataset']).read_text(encoding='utf-8')),
        configurations=lines('configurations'),
        property_instances=lines('property_instances'),
        property_objects=lines('property_objects'),
        property_definitions=json.loads((directory / FILES['property_definitions']).read_text(encoding='utf-8')),
        configuration_sets=lines('configuration_sets'),
        data_objects=lines('data_objects'),
    )
