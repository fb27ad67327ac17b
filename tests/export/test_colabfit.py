"""ColabFit data standard: ColabFit's own IDs (as colabfit-tools computes them), duplicates stored once, round trip."""

from __future__ import annotations

import json
import pathlib
import re

import numpy as np
import pytest
from ase import Atoms

from aiida_mad.dataset.frames import FrameError
from aiida_mad.export.colabfit import (
    FILES,
    UNITS,
    ColabfitError,
    build_colabfit,
    configuration_id,
    property_definitions,
    property_object,
    read_colabfit,
    structure_hash,
    write_colabfit,
)
from aiida_mad.export.folders import MARKER

FIXTURES = pathlib.Path(__file__).parent / 'fixtures' / 'colabfit'

METADATA = {
    'name': 'mad-test',
    'authors': ['A. Author', 'B. Author'],
    'license': 'CC-BY-4.0',
    'links': ['https://archive.materialscloud.org/record/2025.145'],
    'description': 'Synthetic frames for the tests.',
}


def duplicate_of(frame, source_uuid):
    copy = frame.copy()
    copy.info['source_uuid'] = source_uuid
    return copy


def ids_of(dataset):
    return [*dataset.configurations, *dataset.data_objects, *dataset.property_instances, *dataset.property_objects]


def test_ids_are_those_colabfit_tools_computes():
    # expected.json was made by colabfit-tools itself (make_expected.py, in a throw-away environment).
    inputs = json.loads((FIXTURES / 'inputs.json').read_text())
    expected = json.loads((FIXTURES / 'expected.json').read_text())
    assert len(inputs) == len(expected['configurations']) == 7
    for item, wanted in zip(inputs, expected['configurations'], strict=True):
        atoms = Atoms(numbers=item['numbers'], positions=item['positions'], cell=item['cell'], pbc=item['pbc'])
        identifier = configuration_id(atoms.numbers, atoms.positions, atoms.cell.array)
        assert identifier == wanted['configuration_id'], item['name']
        assert structure_hash(atoms.numbers, atoms.positions, atoms.cell.array) == wanted['structure_hash']
        formula = atoms.get_chemical_formula('hill')
        assert formula == wanted['chemical_formula_hill']
        found = property_object(
            identifier, expected['dataset_id'], formula, item['energy'], item['forces'], item['stress']
        )
        assert found['id'] == wanted['property_object_id'], item['name']
    by_name = {item['name']: item for item in expected['configurations']}
    # the atom order enters the configuration ID, not the structure hash; ColabFit's pbc comes from the cell
    assert by_name['bulk-sio2']['configuration_id'] != by_name['bulk-sio2-reordered']['configuration_id']
    assert by_name['bulk-sio2']['structure_hash'] == by_name['bulk-sio2-reordered']['structure_hash']
    assert by_name['molecule-in-box']['colabfit_pbc'] == [True, True, True]
    assert by_name['molecule-no-cell']['colabfit_pbc'] == [False, False, False]


def test_dataset_uses_the_colabfit_ids(frames):
    dataset = build_colabfit(frames, METADATA)
    for frame in frames:
        identifier = configuration_id(frame.numbers, frame.positions, frame.cell.array)
        configuration = dataset.configurations[identifier]
        assert configuration['pbc'] == frame.pbc.tolist()  # the frame's own, not ColabFit's cell-derived pbc
    for item in dataset.data_objects.values():
        found = dataset.property_objects[item['property_object_id']]
        assert found['configuration_id'] == item['configuration_id']
        assert found['dataset_id'] == dataset.id
        assert found['multiplicity'] == len(item['sources'])
        (frame,) = [frame for frame in frames if frame.info['source_uuid'] == item['sources'][0]['source_uuid']]
        assert found['energy'] == frame.info['energy']  # the total energy, as ColabFit stores it
        assert found['atomic_forces'] == frame.arrays['forces'].tolist()
        assert found['cauchy_stress'] == (frame.info['stress'].tolist() if 'stress' in frame.info else None)
        formula = dataset.configurations[item['configuration_id']]['chemical_formula_hill']
        again = property_object(
            found['configuration_id'],
            dataset.id,
            formula,
            found['energy'],
            found['atomic_forces'],
            found['cauchy_stress'],
            multiplicity=found['multiplicity'],
        )
        assert again == found


def test_objects_and_counts(frames, dos_frames):
    everything = frames + dos_frames
    dataset = build_colabfit(everything, METADATA)
    assert re.fullmatch('DS_[a-z0-9]{12}_0', dataset.id)
    assert len(dataset.configurations) == len(dataset.data_objects) == len(everything)
    assert len(dataset.property_objects) == len(everything)
    assert all(re.fullmatch('(CO|DO|PI|PO)_[0-9a-f]{25}', identifier) for identifier in ids_of(dataset))
    assert dataset.report['n_duplicate_frames'] == 0
    # energy, baseline-subtracted energy and forces for every frame, stress for periodic ones, DOS where present
    counts = dataset.dataset['property_counts']
    assert counts['potential-energy'] == 2 * len(everything)
    assert counts['atomic-forces'] == len(everything)
    assert counts['cauchy-stress'] == sum('stress' in frame.info for frame in everything)
    assert counts['electronic-density-of-states'] == len(dos_frames)
    names = {definition['property-name'] for definition in dataset.property_definitions}
    for instance in dataset.property_instances.values():
        assert instance['type'] in names
        assert instance['id'].startswith('PI_')
    assert {item['name'] for item in dataset.configuration_sets.values()} == {'mc3d', 'mc3d-cluster', 'mc2d'}
    assert set(dataset.configuration_sets) == {f'CS_{name}_{dataset.id}' for name in ('mc3d', 'mc3d-cluster', 'mc2d')}
    for item in dataset.configuration_sets.values():
        assert all(
            dataset.configurations[identifier]['labels'] == [item['name']] for identifier in item['configuration_ids']
        )
    assert dataset.dataset['split_counts'] == {
        split: sum(frame.info['split'] == split for frame in everything) for split in ('train', 'val', 'test')
    }


def test_property_definitions_carry_units():
    definitions = {definition['property-name']: definition for definition in property_definitions()}
    assert set(definitions) == {'potential-energy', 'atomic-forces', 'cauchy-stress', 'electronic-density-of-states'}
    assert definitions['potential-energy']['energy']['has-unit'] is True
    assert definitions['atomic-forces']['forces']['extent'] == [':', 3]
    assert definitions['cauchy-stress']['stress']['extent'] == [3, 3]
    assert definitions['electronic-density-of-states']['dos']['required'] is True
    for definition in definitions.values():
        assert definition['property-id'].endswith('/' + definition['property-name'])


def test_property_instances_store_values_with_units(frames):
    frame = frames[0]
    dataset = build_colabfit([frame], METADATA)
    data_object = next(iter(dataset.data_objects.values()))
    instances = [dataset.property_instances[identifier] for identifier in data_object['property_instance_ids']]
    by_type = {}
    for instance in instances:
        by_type.setdefault(instance['type'], []).append(instance)
    total, subtracted = sorted(by_type['potential-energy'], key=lambda item: 'reference-energy' in item)
    assert total['energy'] == {'source-value': frame.info['energy'], 'source-unit': UNITS['energy']}
    assert subtracted['energy']['source-value'] == frame.info['energy_baseline_subtracted']
    assert subtracted['reference-energy']['source-value'] == pytest.approx(
        frame.info['energy'] - frame.info['energy_baseline_subtracted']
    )
    assert by_type['atomic-forces'][0]['forces']['source-unit'] == 'eV/angstrom'
    assert np.array_equal(by_type['atomic-forces'][0]['forces']['source-value'], frame.arrays['forces'])
    assert by_type['cauchy-stress'][0]['stress']['source-unit'] == 'eV/angstrom^3'
    assert np.array_equal(by_type['cauchy-stress'][0]['stress']['source-value'], frame.info['stress'])
    configuration = dataset.configurations[data_object['configuration_id']]
    assert configuration['atomic_numbers'] == frame.numbers.tolist()
    assert configuration['positions'] == frame.positions.tolist()
    assert configuration['nperiodic_dimensions'] == 3
    assert data_object['sources'] == [
        {'source_uuid': frame.info['source_uuid'], 'subset': 'mc3d', 'split': frame.info['split']}
    ]


def test_duplicates_are_stored_once_and_reported(frames):
    copies = [duplicate_of(frames[0], 'aaaaaaaa-0000-4000-8000-000000000001'), duplicate_of(frames[4], 'dup-4')]
    dataset = build_colabfit(frames + copies, METADATA)
    assert len(dataset.data_objects) == len(frames)
    assert len(dataset.configurations) == len(frames)
    report = dataset.report
    assert report['n_frames'] == len(frames) + 2
    assert report['n_duplicate_frames'] == 2
    duplicates = {tuple(item['source_uuids']) for item in report['duplicates']}
    assert duplicates == {
        tuple(sorted([frames[0].info['source_uuid'], 'aaaaaaaa-0000-4000-8000-000000000001'])),
        tuple(sorted([frames[4].info['source_uuid'], 'dup-4'])),
    }
    # the duplicated data object lists both frames it stands for
    for item in report['duplicates']:
        data_object = dataset.data_objects[item['data_object_id']]
        assert len(data_object['sources']) == 2
        assert dataset.property_objects[data_object['property_object_id']]['multiplicity'] == 2


def test_same_configuration_with_other_properties_is_one_configuration_two_data_objects(frames):
    other = duplicate_of(frames[0], 'other-result')
    other.info['energy'] += 1e-3
    dataset = build_colabfit([frames[0], other], METADATA)
    assert len(dataset.configurations) == 1
    assert len(dataset.data_objects) == 2
    assert dataset.report['n_duplicate_frames'] == 0
    # forces and stress are identical: shared property instances
    assert dataset.report['n_shared_property_instance_references'] == 2
    assert len(dataset.property_instances) == 2 + 2 + 2  # two energies, two baseline energies, forces, stress


def test_configuration_ids_are_exact(frames):
    # As in ColabFit: no tolerance, so numerical noise and -0.0 make another configuration.
    reference = build_colabfit([frames[0]], METADATA)
    nudged = frames[0].copy()
    nudged.positions[0, 0] += 1e-12
    signed = frames[0].copy()
    signed.positions[0, 0] = 0.0
    zero = build_colabfit([signed], METADATA)
    signed.positions[0, 0] = -0.0
    assert list(build_colabfit([nudged], METADATA).configurations) != list(reference.configurations)
    assert list(build_colabfit([signed], METADATA).configurations) != list(zero.configurations)


def test_ids_do_not_depend_on_frame_order(frames):
    forward = build_colabfit(frames, METADATA)
    backward = build_colabfit(frames[::-1], METADATA)
    assert forward.id == backward.id
    assert set(forward.configuration_sets) == set(backward.configuration_sets)
    smaller = build_colabfit(frames[:-1], METADATA)
    assert smaller.id != forward.id


def test_write_and_read_back(tmp_path, frames, dos_frames):
    dataset = build_colabfit(frames + dos_frames + [duplicate_of(frames[1], 'dup-1')], METADATA)
    paths = write_colabfit(dataset, tmp_path / 'colabfit')
    assert {path.name for path in paths.values()} == set(FILES.values())
    assert sorted(item.name for item in (tmp_path / 'colabfit').iterdir()) == sorted([*FILES.values(), MARKER])
    lines = (tmp_path / 'colabfit' / 'configurations.jsonl').read_text().splitlines()
    assert len(lines) == len(dataset.configurations)
    assert all(json.loads(line)['id'].startswith('CO_') for line in lines)
    text = (tmp_path / 'colabfit' / 'property_instances.jsonl').read_text()
    assert 'NaN' not in text and 'null' in text  # masked DOS points are JSON null
    back = read_colabfit(tmp_path / 'colabfit')
    assert back == dataset
    assert back.report['n_duplicate_frames'] == 1


def test_write_refuses_a_non_empty_folder(tmp_path, frames):
    dataset = build_colabfit(frames, METADATA)
    target = tmp_path / 'out'
    target.mkdir()
    (target / 'keep.txt').write_text('mine')
    with pytest.raises(ColabfitError, match='exists and is not empty'):
        write_colabfit(dataset, target)
    assert [item.name for item in target.iterdir()] == ['keep.txt']
    with pytest.raises(ColabfitError, match='not written by an aiida-mad export, not replaced'):
        write_colabfit(dataset, target, force=True)  # --force replaces only an earlier export
    assert [item.name for item in target.iterdir()] == ['keep.txt']
    (target / 'keep.txt').unlink()
    write_colabfit(dataset, target)
    write_colabfit(dataset, target, force=True)
    assert read_colabfit(target) == dataset


@pytest.mark.parametrize(
    ('change', 'message'),
    [
        ({'authors': []}, "'authors' must be a non-empty list"),
        ({'authors': 'A. Author'}, "'authors' must be a non-empty list"),
        ({'license': ''}, "'license' must be a non-empty string"),
        ({'description': None}, "'description' must be a non-empty string"),
        ({'links': ['ftp://example.org']}, 'not an http'),
        ({'colour': 'blue'}, 'unknown dataset metadata fields'),
    ],
)
def test_metadata_is_validated(frames, change, message):
    with pytest.raises(ColabfitError, match=message):
        build_colabfit(frames, {**METADATA, **change})


def test_no_frames_or_mixed_fingerprints_are_refused(frames):
    with pytest.raises(ColabfitError, match='no frames'):
        build_colabfit([], METADATA)
    frames[3].info['fingerprint'] = 'another0fingerprint'
    with pytest.raises(FrameError, match='mix 2 level-of-theory fingerprints'):
        build_colabfit(frames, METADATA)
