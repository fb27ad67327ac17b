"""The archive writer's ZIP writer and repository reader, alone: what ``zipfile`` reads back, ZIP64 included, and
every object of a disk-objectstore container (packed, compressed, loose) read in one pass."""

from __future__ import annotations

import io
import os
import zipfile

import pytest
from disk_objectstore import Container
from disk_objectstore.exceptions import NotExistent

from aiida_mad.export import objectstore, zipwriter


def _members() -> dict[str, bytes]:
    return {f'repo/{index:03d}': os.urandom(index) + b'x' * (index * 37) for index in range(40)}


@pytest.mark.parametrize('zip64', [False, True])
def test_zipfile_reads_back_every_member_first_ones_first(tmp_path, monkeypatch, zip64):
    """Stored and deflated members, a file member, the central directory order asked for; with the ZIP64 limits
    lowered (``zip64``) every member, offset and the member count need ZIP64 fields and end records."""
    if zip64:
        monkeypatch.setattr(zipwriter, 'ZIP64_LIMIT', 100)
        monkeypatch.setattr(zipwriter, 'FILECOUNT_LIMIT', 3)
    members = _members()
    big = tmp_path / 'big.bin'
    big.write_bytes(os.urandom(3000))
    path = tmp_path / 'test.zip'
    with path.open('wb') as handle:
        writer = zipwriter.ZipWriter(handle, (2026, 12, 2, 4, 5, 6))
        writer.add_many(members.items(), level=1, stored_below=300)
        writer.add_file('db.sqlite3', big, crc=__import__('zlib').crc32(big.read_bytes()), size=3000, method=0)
        writer.add('metadata.json', b'{"a": 1}')
        writer.close(first=('metadata.json', 'db.sqlite3'))
    raw = path.read_bytes()
    assert (b'PK\x06\x06' in raw) is zip64 and (b'PK\x06\x07' in raw) is zip64
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
        assert archive.namelist() == ['metadata.json', 'db.sqlite3', *members]
        assert archive.read('db.sqlite3') == big.read_bytes() and archive.read('metadata.json') == b'{"a": 1}'
        for name, content in members.items():
            assert archive.read(name) == content
            info = archive.getinfo(name)
            assert info.compress_type == (zipfile.ZIP_DEFLATED if len(content) >= 300 else zipfile.ZIP_STORED)
            assert info.date_time == (2026, 12, 2, 4, 5, 6)


def test_members_are_written_as_zipfile_writes_them(tmp_path):
    """Byte for byte what ``zipfile`` writes for the same stored members (headers, directory, end record)."""
    members = _members()
    ours = io.BytesIO()
    writer = zipwriter.ZipWriter(ours, (2026, 12, 2, 4, 5, 6))
    writer.add_many(members.items())
    writer.close()
    theirs = io.BytesIO()
    with zipfile.ZipFile(theirs, 'w') as archive:
        for name, content in members.items():
            info = zipfile.ZipInfo(name, (2026, 12, 2, 4, 5, 6))
            archive.writestr(info, content)
    assert ours.getvalue() == theirs.getvalue()


def test_container_objects_are_read_in_one_pass(tmp_path):
    """Packed (compressed or not) and loose objects give the container's own content; a missing key is refused."""
    container = Container(tmp_path / 'container')
    container.init_container(clear=True)
    packed = [os.urandom(50) + bytes(index) for index in range(30)]
    compressed = [b'abc' * (100 + index) for index in range(10)]
    keys = container.add_objects_to_pack(packed) + container.add_objects_to_pack(compressed, compress=True)
    keys += [container.add_object(b'loose %d' % index) for index in range(5)]
    assert objectstore.supported(container)
    found = dict(objectstore.iter_object_contents(container, [*keys, *keys[:3]]))
    assert found == {key: container.get_object_content(key) for key in keys}
    with pytest.raises(NotExistent):
        list(objectstore.iter_object_contents(container, [keys[0], '0' * 64]))
    container.close()
