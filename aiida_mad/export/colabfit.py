"""The ColabFit data standard for a dataset of frames, written without ``colabfit-kit``.

``colabfit-kit`` installs through the constraints file but pulls in pyspark, a VAST database client, ibis, Django
and Jupyter; this module writes the documented structures itself, as JSON lines.

Objects (ColabFit Exchange, Vita et al. 2023) and how they are identified:

Configuration (CO), ``CO_<sha256>``
    Atomic numbers, Cartesian positions, cell and periodic boundary conditions: the hash covers exactly these,
    with positions and cell rounded to :data:`POSITION_DECIMALS` decimals (1e-8 Å) and ``-0.0`` folded into
    ``0.0``. Summary fields (formula, elements, number of sites, periodic dimensions) and the subsets it appears in
    (``labels``) are stored but not hashed.
Property instance (PI), ``PI_<sha256>``
    One property of one calculation, with its units, hashed over the property name, the values (rounded, see
    :data:`DECIMALS`) and the units: ``potential-energy`` (total, eV), a second ``potential-energy`` for the
    baseline-subtracted energy (with ``reference-energy`` = the subtracted Σ E_atom), ``atomic-forces``
    (eV/Å), ``cauchy-stress`` (eV/Å³, ASE sign, volume-normalized) and ``electronic-density-of-states``
    (states/eV; masked grid points are ``null``).
Property definition (PD)
    KIM property-definition style (``property-id``, ``property-name``, ``property-title``,
    ``property-description`` and one entry per key with ``type``, ``has-unit``, ``extent``, ``required``,
    ``description``); identified by name, not by hash.
Data object (DO), ``DO_<sha256>``
    One configuration with the property instances computed for it; its ID hashes the CO ID and the sorted PI IDs,
    so the same configuration with identical properties is one DO, however many frames carry it. The DO lists the
    frames it stands for (``sources``: source uuid, subset, split).
Configuration set (CS), ``CS_<sha256>``
    One per subset; the ID hashes the sorted IDs of its configurations.
Dataset (DS), ``DS_<sha256>``
    Name, authors, license, links, description and aggregated counts; the ID hashes the sorted CS and DO IDs.

Duplicates: frames whose configuration and properties are identical collapse into one DO (the report counts
them and names their source uuids); identical property values shared by different configurations are one PI.
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
    'property_definitions',
    'read_colabfit',
    'write_colabfit',
]

#: Decimals kept when hashing positions and cell (Å).
POSITION_DECIMALS = 8

#: Decimals kept when hashing each property's values (in the units stored).
DECIMALS = {
    'potential-energy': 8,  # eV
    'atomic-forces': 8,  # eV/Å
    'cauchy-stress': 10,  # eV/Å³
    'electronic-density-of-states': 8,  # states/eV
}

#: Units of the stored values.
UNITS = {'energy': 'eV', 'forces': 'eV/angstrom', 'stress': 'eV/angstrom^3', 'dos': 'states/eV'}

FILES = {
    'configurations': 'configurations.jsonl',
    'property_instances': 'property_instances.jsonl',
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


def _sha(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, 'little'))
        digest.update(part)
    return digest.hexdigest()


def _rounded(values, decimals: int) -> bytes:
    array = np.round(np.asarray(values, dtype='<f8'), decimals) + 0.0  # + 0.0 turns -0.0 into 0.0
    if np.isnan(array).any():
        array = np.where(np.isnan(array), np.nan, array)
    return np.ascontiguousarray(array, dtype='<f8').tobytes()


def _configuration(frame: Atoms) -> dict:
    numbers = frame.numbers
    cell = frame.cell.array
    pbc = [bool(value) for value in frame.pbc]
    identifier = 'CO_' + _sha(
        b'configuration',
        np.ascontiguousarray(numbers, dtype='<i8').tobytes(),
        _rounded(frame.positions, POSITION_DECIMALS),
        _rounded(cell, POSITION_DECIMALS),
        bytes(pbc),
    )
    counts = Counter(numbers.tolist())
    elements = sorted(counts, key=lambda number: chemical_symbols[number])
    return {
        'id': identifier,
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


def _property(name: str, fields: dict, hashed: list[tuple[str, object]]) -> dict:
    """Return a property instance; ``hashed`` lists ``(key, value)`` pairs that identify it with their units."""
    parts = [b'property-instance', name.encode()]
    for key, value in hashed:
        parts.append(key.encode())
        if isinstance(value, str | bool):
            parts.append(repr(value).encode())
        else:
            parts.append(_rounded(value, DECIMALS[name]))
    for key in sorted(fields):
        unit = fields[key].get('source-unit')
        parts.append(f'{key}:{unit}'.encode())
    return {'id': 'PI_' + _sha(*parts), 'property-id': f'{_PROPERTY_TAG}/{name}', 'type': name, **fields}


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
            [('energy', energy), ('per-atom', False)],
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
                [('energy', subtracted), ('per-atom', False), ('reference-energy', reference)],
            )
        )
    forces = frame.arrays['forces']
    instances.append(
        _property('atomic-forces', {'forces': _value(forces.tolist(), UNITS['forces'])}, [('forces', forces)])
    )
    if 'stress' in info:
        stress = np.asarray(info['stress'], dtype=float)
        instances.append(
            _property(
                'cauchy-stress',
                {'stress': _value(stress.tolist(), UNITS['stress']), 'volume-normalized': _value(True)},
                [('stress', stress), ('volume-normalized', True)],
            )
        )
    if 'dos' in info:
        dos = np.asarray(info['dos'], dtype=float)
        fields = {
            'dos': _value(_json_floats(dos), UNITS['dos']),
            'energy-start': _value(float(dos_grid['start']), 'eV'),
            'energy-spacing': _value(float(dos_grid['spacing']), 'eV'),
        }
        hashed = [('dos', dos), ('energy-start', dos_grid['start']), ('energy-spacing', dos_grid['spacing'])]
        if dos_grid.get('sigma') is not None:
            fields['smearing-width'] = _value(float(dos_grid['sigma']), 'eV')
            hashed.append(('smearing-width', dos_grid['sigma']))
        instances.append(_property('electronic-density-of-states', fields, hashed))
    return instances


def validate_metadata(metadata: dict) -> dict:
    """Check and normalise the dataset metadata: name, authors, license, description, optional links.

    :raises ColabfitError: naming the missing or invalid field.
    """
    if not isinstance(metadata, dict):
        raise ColabfitError(f'dataset metadata must be a dict, got {type(metadata).__name__}')
    unknown = set(metadata) - {'name', 'authors', 'license', 'links', 'description', 'dos_grid'}
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
        identifier = 'DO_' + _sha(b'data-object', configuration['id'].encode(), *(i.encode() for i in instance_ids))
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

    configuration_sets = {}
    for subset in sorted(subset_configurations):
        ids = sorted(subset_configurations[subset])
        identifier = 'CS_' + _sha(b'configuration-set', *(i.encode() for i in ids))
        configuration_sets[identifier] = {
            'id': identifier,
            'name': subset,
            'description': SUBSET_DESCRIPTIONS.get(subset, f'Configurations of the {subset} subset.'),
            'configuration_ids': ids,
        }

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
    dataset_id = 'DS_' + _sha(
        b'dataset', *(i.encode() for i in sorted(configuration_sets)), *(i.encode() for i in sorted(data_objects))
    )
    report = {
        'n_frames': len(frames),
        'n_data_objects': len(data_objects),
        'n_configurations': len(configurations),
        'n_property_instances': len(instances),
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
        for kind in ('configurations', 'property_instances', 'configuration_sets', 'data_objects'):
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
        property_definitions=json.loads((directory / FILES['property_definitions']).read_text(encoding='utf-8')),
        configuration_sets=lines('configuration_sets'),
        data_objects=lines('data_objects'),
    )
