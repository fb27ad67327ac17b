"""Stable splits: hash thresholds on (seed, uuid), binomial proportions per subset, fraction validation."""

from __future__ import annotations

import hashlib
import math
import random
import uuid

import pytest

from aiida_mad.dataset.splits import (
    apply_splits,
    assign_split,
    check_proportions,
    proportion_tolerance,
    split_counts,
    split_value,
    validate_fractions,
)


def uuids(count: int, seed: int) -> list[str]:
    generator = random.Random(seed)
    return [str(uuid.UUID(int=generator.getrandbits(128), version=4)) for _ in range(count)]


@pytest.mark.parametrize(
    ('source', 'seed', 'expected'),
    [
        ('0f9c6a52-7b51-4c4e-9d55-6f2b2a0c9a11', 0, 'test'),
        ('0f9c6a52-7b51-4c4e-9d55-6f2b2a0c9a11', 42, 'train'),
        ('9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d', 0, 'val'),
        ('ffffffff-ffff-4fff-bfff-ffffffffffff', 42, 'val'),
        ('3b2e1d90-5a7c-4e8f-b1a2-c3d4e5f60718', 0, 'train'),
    ],
)
def test_assign_split_is_pinned(source, seed, expected):
    """The method is part of the data: changing it would move published frames between splits."""
    assert assign_split(source, seed) == expected


def test_split_value_is_the_documented_hash():
    source = '0f9c6a52-7b51-4c4e-9d55-6f2b2a0c9a11'
    digest = hashlib.sha256(f'7:{source}'.encode()).hexdigest()
    assert split_value(source, 7) == int(digest[:13], 16) / 16**13
    assert 0.0 <= split_value(source, 7) < 1.0


def test_adding_frames_never_moves_old_frames():
    old = uuids(2000, seed=1)
    before = {source: assign_split(source, 5) for source in old}
    combined = old + uuids(3000, seed=2)
    random.Random(3).shuffle(combined)
    after = {source: assign_split(source, 5) for source in combined}
    assert all(after[source] == split for source, split in before.items())


def test_apply_splits_sets_info_in_place(frames):
    apply_splits(frames, seed=11)
    for frame in frames:
        assert frame.info['split'] == assign_split(frame.info['source_uuid'], 11)
    more = [*frames[:10]]
    apply_splits(more, seed=11)  # a different collection: the same splits
    assert [frame.info['split'] for frame in more] == [frame.info['split'] for frame in frames[:10]]


def test_the_seed_changes_the_split():
    sources = uuids(500, seed=4)
    moved = sum(assign_split(source, 0) != assign_split(source, 1) for source in sources)
    # Independent draws disagree with probability 1 - (0.64 + 0.01 + 0.01) = 0.34.
    assert 0.25 * 500 < moved < 0.43 * 500


def test_per_subset_proportions_are_binomial(make_frames):
    """Per subset of 1000 frames, every split lies within 5 binomial standard deviations (+1) of 80:10:10."""
    frames = make_frames(3000, seed=8)
    apply_splits(frames, seed=0)
    counts = split_counts(frames)
    assert set(counts) == {'mc3d', 'mc3d-cluster', 'mc2d'}
    assert all(sum(per_split.values()) == 1000 for per_split in counts.values())
    deviations = check_proportions(counts)
    # One standard deviation is 12.6 frames for train, 9.5 for val and test: the observed ones are reported here.
    assert all(abs(value) < 5 for per_split in deviations.values() for value in per_split.values())
    assert proportion_tolerance(1000, 0.8) == pytest.approx(5 * math.sqrt(160) + 1)


def test_check_proportions_refuses_a_skewed_split():
    with pytest.raises(ValueError, match=r'subset mc3d: 950 of 1000 frames in train, expected 800.0'):
        check_proportions({'mc3d': {'train': 950, 'val': 25, 'test': 25}})


def test_zero_fractions_are_respected():
    sources = uuids(300, seed=9)
    assert {assign_split(source, 3, (1.0, 0.0, 0.0)) for source in sources} == {'train'}
    assert {assign_split(source, 3, (0.7, 0.3, 0.0)) for source in sources} == {'train', 'val'}
    assert {assign_split(source, 3, (0.0, 0.0, 1.0)) for source in sources} == {'test'}


def test_split_counts_lists_every_split(frames):
    for frame in frames:
        frame.info['split'] = 'train'
    counts = split_counts(frames)
    assert counts['mc3d'] == {'train': 10, 'val': 0, 'test': 0}
    assert list(counts) == sorted(counts)


@pytest.mark.parametrize(
    ('fractions', 'message'),
    [
        ((0.8, 0.1, 0.2), r'sum to 1.1.*not 1'),
        ((0.8, 0.1), 'three numbers'),
        ((0.8, 0.1, 0.05, 0.05), 'three numbers'),
        ((1.1, -0.05, -0.05), 'val must be a finite non-negative number'),
        ((float('nan'), 0.1, 0.1), 'train must be a finite non-negative number'),
        (('a', 0.1, 0.1), 'train is not a number'),
        (0.8, 'three numbers'),
    ],
)
def test_validate_fractions_refuses_bad_input(fractions, message):
    with pytest.raises(ValueError, match=message):
        validate_fractions(fractions)


def test_validate_fractions_accepts_rounding_within_1e_9():
    assert validate_fractions([0.8, 0.1, 0.1 + 5e-10]) == (0.8, 0.1, 0.1 + 5e-10)
    assert validate_fractions(('0.9', 0.05, 0.05)) == (0.9, 0.05, 0.05)
    with pytest.raises(ValueError, match='not 1'):
        validate_fractions([0.8, 0.1, 0.1 + 2e-9])


def test_bad_seed_or_uuid_is_refused():
    with pytest.raises(ValueError, match='seed must be an integer'):
        assign_split('abc', '1')
    with pytest.raises(ValueError, match='non-empty uuid'):
        assign_split('', 1)
