"""Candidate pools (pure): deterministic generation in batches, shards that round-trip, settings checks, features."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest

from aiida_mad.learning.pool import (
    candidate_id,
    generate_batches,
    load_parents,
    pool_index,
    pool_key,
    pool_settings,
    read_candidates,
    shard_name,
    structure_features,
    write_candidates,
)

SETTINGS = {'element_pool': ['Si', 'H'], 'count': 24, 'seed': 3, 'prototypes': {'max_atoms': 4}}


def _generate(batch_size):
    settings = pool_settings({**SETTINGS, 'batch_size': batch_size})
    key = pool_key(settings)
    return settings, key, list(generate_batches(settings, load_parents(settings), key))


def test_batches_do_not_change_the_candidates():
    """The same settings give the same candidates and ids whatever the batch size; the key ignores the batch size."""
    _, key_a, batches_a = _generate(5)
    _, key_b, batches_b = _generate(24)
    assert key_a == key_b
    frames_a = [atoms for batch in batches_a for atoms in batch.frames]
    frames_b = [atoms for batch in batches_b for atoms in batch.frames]
    assert len(batches_a) == 5 and len(batches_b) == 1
    assert len(frames_a) == len(frames_b) > 0
    for a, b in zip(frames_a, frames_b, strict=True):
        assert a.info == b.info
        np.testing.assert_array_equal(a.positions, b.positions)
        np.testing.assert_array_equal(a.numbers, b.numbers)
    indices = [index for batch in batches_a for index in batch.indices]
    assert [atoms.info['source_uuid'] for atoms in frames_a] == [candidate_id(key_a, index) for index in indices]
    assert set(frames_a[0].get_chemical_symbols()) <= {'Si', 'H'}


def test_another_seed_gives_other_candidates():
    """The seed enters the key and the structures."""
    settings = pool_settings({**SETTINGS, 'seed': 4})
    assert pool_key(settings) != _generate(24)[1]


def test_shards_round_trip(tmp_path):
    """A shard reads back exactly, by this module and by ASE, and is byte-identical when written twice."""
    _, _, batches = _generate(24)
    frames = batches[0].frames
    path = tmp_path / shard_name(0)
    assert write_candidates(frames, path) == len(frames)
    again = tmp_path / 'again.extxyz.gz'
    write_candidates(frames, again)
    assert path.read_bytes() == again.read_bytes()
    for original, read, by_ase in zip(frames, read_candidates(path), ase.io.read(path, index=':'), strict=True):
        np.testing.assert_array_equal(read.positions, original.positions)
        np.testing.assert_array_equal(read.cell.array, original.cell.array)
        assert read.info == original.info
        assert by_ase.info['source_uuid'] == original.info['source_uuid']
        np.testing.assert_allclose(by_ase.positions, original.positions)


def test_index_matches_the_frames():
    """The index holds one row per candidate, atoms concatenated, and the shard of each."""
    _, _, batches = _generate(10)
    index = pool_index(batches)
    frames = [atoms for batch in batches for atoms in batch.frames]
    assert len(index['ids']) == len(frames)
    assert index['offsets'][-1] == sum(len(atoms) for atoms in frames)
    np.testing.assert_array_equal(index['numbers'], np.concatenate([atoms.numbers for atoms in frames]))
    assert index['shard'].tolist() == [n for n, batch in enumerate(batches) for _ in batch.frames]


@pytest.mark.parametrize(
    ('settings', 'message'),
    [
        ({'count': 0}, 'count must be a positive integer'),
        ({'batch_size': -1}, 'batch_size must be a positive integer'),
        ({'element_pool': []}, 'element_pool is empty'),
        ({'element_pool': ['Xx']}, 'Xx'),
        ({'generator': 'nope'}, "no generator for 'nope'"),
        ({'colour': 'red'}, 'unknown pool setting(s) colour'),
        ({'parameters': {'sigma': 1}}, 'unknown parameter(s) sigma'),
        ({'generator': 'shiftml-molfrags'}, 'per parent'),
    ],
)
def test_bad_settings_are_refused(settings, message):
    """Bad settings raise a ValueError that names the setting."""
    with pytest.raises(ValueError, match=message.replace('(', r'\(').replace(')', r'\)')):
        pool_settings({'element_pool': ['Si'], **settings})


def test_structure_features():
    """Composition fractions over the given elements, then the extra columns; a foreign element is named."""
    numbers = np.array([14, 14, 1, 1, 1, 14])
    offsets = np.array([0, 2, 5, 6])
    features = structure_features(numbers, offsets, ['H', 'Si'], extra=np.array([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(features, [[0, 1, 1], [1, 0, 2], [0, 1, 3]])
    with pytest.raises(ValueError, match='atom 2 is H, not one of Si'):
        structure_features(numbers, offsets, ['Si'])
