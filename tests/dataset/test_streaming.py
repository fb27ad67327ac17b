"""Writing a dataset a block at a time: the same shards, counts and content hash as all at once, pinned."""

from __future__ import annotations

import gzip
import hashlib

import pytest

from aiida_mad.dataset.extxyz import ShardWriter, write_extxyz, write_shards
from aiida_mad.dataset.frames import FrameSummary, content_hash, sorted_frames, summarize

#: The content hash and the text of the shards (16 frames each) of the frames of :func:`pinned_frames`. They change
#: only if the frame model, the digest or the extended-XYZ layout changes: then every stored dataset hashes otherwise.
PINNED_CONTENT_HASH = 'ae8ceaa8e17ee76df8800eac4bff30981f5a22802467c8bc16bba45ce57f554e'
PINNED_SHARD_TEXT = [
    '3d2d0a1fe809763e096b4693e6ebfc7ac0b00d9e4e1ded453ed01409c88299aa',
    '22d89fe0287567b9d2736f3f6effc8e57054ddc3399216551f5e4194bb71dc35',
    '55e17ef5575ef272cadb88cd3bd55da6f1ea4347d1cc0099bc5bf68ce0843205',
]


@pytest.fixture
def pinned_frames(frames, dos_frames):
    """The 42 synthetic frames (3D, 2D, 0D, with and without DOS) in canonical order."""
    return sorted_frames(frames + dos_frames)


def test_content_hash_and_shards_are_pinned(tmp_path, pinned_frames):
    assert content_hash(pinned_frames) == PINNED_CONTENT_HASH
    paths = write_shards(pinned_frames, tmp_path, frames_per_shard=16)
    assert [hashlib.sha256(gzip.decompress(path.read_bytes())).hexdigest() for path in paths] == PINNED_SHARD_TEXT


@pytest.mark.parametrize('cuts', [[1], [16], [5, 11, 16, 17, 30], [41], list(range(1, 42))])
def test_blocks_give_the_shards_of_all_at_once(tmp_path, pinned_frames, cuts):
    """However the frames are cut into blocks, the shards are byte for byte those of the slices written alone."""
    with ShardWriter(tmp_path / 'blocks', 16) as writer:
        for start, stop in zip([0, *cuts], [*cuts, len(pinned_frames)], strict=True):
            writer.write(pinned_frames[start:stop])
    expected = []
    for number, first in enumerate(range(0, len(pinned_frames), 16)):
        path = tmp_path / f'slice-{number}.extxyz.gz'
        write_extxyz(pinned_frames[first : first + 16], path)
        expected.append(path.read_bytes())
    assert [path.name for path in writer.paths] == [
        'frames-00000.extxyz.gz',
        'frames-00001.extxyz.gz',
        'frames-00002.extxyz.gz',
    ]
    assert [path.read_bytes() for path in writer.paths] == expected


def test_a_failure_leaves_no_shard(tmp_path, pinned_frames):
    pinned_frames[20].info['split'] = 'holdout'
    with pytest.raises(ValueError, match=r'frame 4 .*holdout'), ShardWriter(tmp_path, 16) as writer:
        writer.write(pinned_frames[:16])
        writer.write(pinned_frames[16:])
    assert writer.paths and list(tmp_path.iterdir()) == []


def test_summary_of_blocks_is_that_of_all_frames(pinned_frames):
    summary = FrameSummary()
    for first in range(0, len(pinned_frames), 5):
        summary.add(pinned_frames[first : first + 5])
    assert summary.summary() == summarize(pinned_frames)
    assert summary.content_hash() == content_hash(pinned_frames) == PINNED_CONTENT_HASH
    with pytest.raises(ValueError, match='keeps no digests'):
        FrameSummary(digests=False).add(pinned_frames).content_hash()
