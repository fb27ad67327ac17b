"""The frame model: construction, validation with clear errors, summaries and the content hash."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms

from aiida_mad.dataset.frames import (
    FrameError,
    check_frames,
    content_hash,
    make_frame,
    sorted_frames,
    summarize,
    validate_frame,
    validate_frames,
)

UUID = '0f9c6a52-7b51-4c4e-9d55-6f2b2a0c9a11'


def simple(**overrides):
    values = {
        'numbers': [14, 14],
        'positions': [[0.0, 0.0, 0.0], [1.35, 1.35, 1.35]],
        'cell': [[0.0, 2.7, 2.7], [2.7, 0.0, 2.7], [2.7, 2.7, 0.0]],
        'pbc': True,
        'energy': -215.5,
        'forces': [[0.1, 0.0, 0.0], [-0.1, 0.0, 0.0]],
        'stress': np.eye(3) * 0.01,
        'subset': 'mc3d',
        'split': 'train',
        'source_uuid': UUID,
        'fingerprint': 'abc123def456',
    }
    values.update(overrides)
    numbers = values.pop('numbers')
    positions = values.pop('positions')
    return make_frame(numbers, positions, **values)


def test_make_frame_holds_the_model():
    frame = simple(energy_baseline_subtracted=-3.5, dos=[0.0, 1.0, np.nan])
    assert frame.info['energy'] == -215.5
    assert frame.info['energy_baseline_subtracted'] == -3.5
    assert frame.info['stress'].shape == (3, 3)
    assert frame.arrays['forces'].shape == (2, 3)
    assert np.isnan(frame.info['dos'][2])
    assert frame.get_chemical_symbols() == ['Si', 'Si']


def test_voigt_stress_becomes_a_symmetric_matrix():
    frame = simple(stress=[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])  # xx yy zz yz xz xy
    expected = np.array([[1.0, 6.0, 5.0], [6.0, 2.0, 4.0], [5.0, 4.0, 3.0]])
    assert np.array_equal(frame.info['stress'], expected)


@pytest.mark.parametrize(
    ('change', 'message'),
    [
        (lambda f: f.info.pop('energy'), "info['energy'] is missing"),
        (lambda f: f.info.__setitem__('energy', float('nan')), "info['energy'] is not finite"),
        (lambda f: f.info.__setitem__('energy', '1.0'), 'expected a float'),
        (lambda f: f.arrays.__setitem__('forces', np.zeros((2, 2))), 'has shape (2, 2), expected (2, 3)'),
        (lambda f: f.arrays.pop('forces'), "arrays['forces'] is missing"),
        (lambda f: f.arrays['forces'].__setitem__((0, 0), np.inf), 'forces'),
        (lambda f: f.positions.__setitem__((1, 2), np.nan), 'positions are not all finite'),
        (lambda f: f.info.__setitem__('colour', 'blue'), "unknown info keys ['colour']"),
        (lambda f: f.info.__setitem__('split', 'training'), "expected one of ('train', 'val', 'test')"),
        (lambda f: f.info.__setitem__('subset', 'mc 3d'), 'contains whitespace'),
        (lambda f: f.info.__setitem__('subset', '1e5'), 'would be read back as a number'),
        (lambda f: f.info.__setitem__('fingerprint', 'T'), 'would be read back as a boolean'),
        (lambda f: f.info.__setitem__('stress', np.zeros(6)), 'must be a (3, 3) array'),
        (lambda f: f.info.__setitem__('dos', np.zeros((2, 2))), 'non-empty 1D float array'),
        (lambda f: f.info.__setitem__('dos', np.array([1.0, np.inf])), 'infinite values'),
        (lambda f: f.set_cell([[0, 0, 0], [0, 3, 0], [0, 0, 3]]), 'periodic along cell vector 0'),
        (lambda f: f.new_array('charges', np.zeros(2)), "unknown per-atom arrays ['charges']"),
    ],
)
def test_validate_frame_names_the_frame_and_the_problem(change, message):
    frame = simple()
    change(frame)
    with pytest.raises(FrameError) as excinfo:
        validate_frame(frame, index=7)
    assert f'frame 7 (source_uuid {UUID})' in str(excinfo.value)
    assert message in str(excinfo.value)


def test_stress_is_refused_on_a_non_periodic_frame():
    with pytest.raises(FrameError, match=r'non-periodic \(0D\)'):
        simple(pbc=False)
    frame = simple(pbc=False, stress=None)
    assert 'stress' not in frame.info


def test_validate_frame_refuses_other_objects():
    with pytest.raises(FrameError, match=r'expected an ase\.Atoms, got dict'):
        validate_frame({'energy': 1.0}, index=0)
    with pytest.raises(FrameError, match='has no atoms'):
        validate_frame(Atoms(), index=0)


def test_validate_frames_refuses_mixed_fingerprints_and_duplicates(frames):
    validate_frames(frames)
    mixed = [*frames, simple(fingerprint='other0fingerprint')]
    with pytest.raises(FrameError, match='mix 2 level-of-theory fingerprints') as excinfo:
        validate_frames(mixed)
    assert 'other0fingerprint (1 frames)' in str(excinfo.value)
    duplicate = simple(fingerprint=frames[0].info['fingerprint'], source_uuid=frames[3].info['source_uuid'])
    with pytest.raises(FrameError, match=f'frames 3 and 30 have the same source_uuid {frames[3].info["source_uuid"]}'):
        validate_frames([*frames, duplicate])
    validate_frames([*frames, duplicate], unique_sources=False)


def test_summarize_counts_subsets_splits_and_elements(frames):
    summary = summarize(frames)
    assert summary['n_frames'] == 30
    assert summary['n_atoms'] == sum(len(frame) for frame in frames)
    assert set(summary['counts']) == {'mc2d', 'mc3d', 'mc3d-cluster'}
    assert sum(sum(per.values()) for per in summary['counts'].values()) == 30
    assert sum(summary['split_counts'].values()) == 30
    numbers = sorted({int(z) for frame in frames for z in frame.numbers})
    from ase.data import chemical_symbols

    assert summary['elements'] == [chemical_symbols[z] for z in numbers]
    assert summary['n_with_stress'] == 20  # the 0D cluster frames carry no stress
    assert summary['n_with_baseline'] == 30
    assert summary['n_with_dos'] == 0


def test_content_hash_is_order_independent_and_exact(frames):
    reference = content_hash(frames)
    assert content_hash(list(reversed(frames))) == reference
    assert content_hash(sorted_frames(frames)) == reference
    changed = [frame.copy() for frame in frames]
    changed[5].positions[0, 0] = np.nextafter(changed[5].positions[0, 0], np.inf)  # one ulp
    assert content_hash(changed) != reference
    relabelled = [frame.copy() for frame in frames]
    relabelled[2].info['split'] = 'test' if relabelled[2].info['split'] != 'test' else 'val'
    assert content_hash(relabelled) != reference
    assert content_hash(frames[:-1]) != reference


def test_content_hash_canonicalises_nan(dos_frames):
    reference = content_hash(dos_frames)
    copies = [frame.copy() for frame in dos_frames]
    dos = copies[0].info['dos']
    dos[np.isnan(dos)] = -np.nan  # another NaN bit pattern
    assert content_hash(copies) == reference


def test_sorted_frames_orders_by_subset_then_uuid(frames):
    ordered = sorted_frames(frames)
    keys = [(frame.info['subset'], frame.info['source_uuid']) for frame in ordered]
    assert keys == sorted(keys)


@pytest.mark.parametrize(
    ('change', 'message'),
    [
        (lambda f: f.arrays['forces'].__setitem__((1, 2), np.nan), "arrays['forces'] is not all finite"),
        (lambda f: f.positions.__setitem__((0, 0), np.inf), 'positions are not all finite'),
        (lambda f: f.info.__setitem__('energy', float('inf')), "info['energy'] is not finite"),
        (lambda f: f.info.__setitem__('energy_baseline_subtracted', float('nan')), 'is not finite'),
        (lambda f: f.info['stress'].__setitem__((0, 1), np.nan), "info['stress'] is not all finite"),
        (lambda f: f.numbers.__setitem__(0, 0), 'atomic numbers must lie in 1..'),
        (lambda f: f.cell.array.__setitem__(2, 0.0), 'periodic along cell vector 2'),
        (lambda f: f.info.__setitem__('subset', 'a=b'), 'contains whitespace'),
        (lambda f: f.info.__setitem__('dos', [1.0, 2.0]), "info['dos'] must be a non-empty 1D float array"),
    ],
)
def test_check_frames_names_the_first_bad_frame(frames, change, message):
    """The vectorised checks find a problem anywhere in the list and report that frame, not the first one."""
    check_frames(frames)
    bad = frames[18]  # a periodic mc3d frame (index 18 = 3 * 6)
    assert bad.info['subset'] == 'mc3d'
    change(bad)
    with pytest.raises(FrameError) as excinfo:
        check_frames(frames)
    assert f'frame 18 (source_uuid {bad.info["source_uuid"]})' in str(excinfo.value)
    assert message in str(excinfo.value)
