"""A ZIP writer for archives of hundreds of thousands of small members.

``zipfile.ZipFile`` costs about 15 µs of Python per member it writes (a ``ZipInfo`` with its local time, a lock, a
header built then rewritten) and again per member when it writes the central directory: at 2 x 10⁵ repository
objects, most of an archive's repository time. :class:`ZipWriter` appends members to a file that is only written,
keeps each member as one tuple, and writes the central directory at the end, in the format ``zipfile`` writes (the
same header fields, ZIP64 extra fields and end records past ``zipfile.ZIP64_LIMIT`` bytes or
``zipfile.ZIP_FILECOUNT_LIMIT`` members), so ``zipfile`` and aiida-core read the result as they read their own.

No AiiDA here: this module is imported by the archive writer and tested alone.
"""

from __future__ import annotations

import io
import os
import shutil
import struct
import zlib
from collections.abc import Iterable
from typing import BinaryIO, NamedTuple

__all__ = ['ZipWriter']

#: Sizes and offsets from which a member needs ZIP64 fields, and the member count from which the archive needs the
#: ZIP64 end records (``zipfile``'s limits; module constants so that the tests can lower them).
ZIP64_LIMIT = (1 << 31) - 1
FILECOUNT_LIMIT = (1 << 16) - 1

_LOCAL = struct.Struct('<4s2B4HL2L2H')  # zipfile.structFileHeader
_CENTRAL = struct.Struct('<4s4B4HL2L5H2L')  # zipfile.structCentralDir
_END = struct.Struct('<4s4H2LH')  # zipfile.structEndArchive
_END64 = struct.Struct('<4sQ2H2L4Q')  # zipfile.structEndArchive64
_LOCATOR64 = struct.Struct('<4sLQL')  # zipfile.structEndArchive64Locator

_STORED, _DEFLATED = 0, 8
_VERSION, _VERSION64 = 20, 45
_CREATE_SYSTEM = 0 if os.name == 'nt' else 3  # as zipfile
_EXTERNAL_ATTR = 0o600 << 16  # as ``ZipFile.writestr``


class _Member(NamedTuple):
    name: bytes
    crc: int
    compressed_size: int
    size: int
    method: int
    offset: int


def dos_date_time(date_time: tuple) -> tuple[int, int]:
    """Return ``(dosdate, dostime)`` of ``(year, month, day, hour, minute, second)``, as ZIP headers store them."""
    year, month, day, hour, minute, second = date_time[:6]
    return (year - 1980) << 9 | month << 5 | day, hour << 11 | minute << 5 | second // 2


def _copy(source: BinaryIO, target: BinaryIO, size: int) -> None:
    """Append the ``size`` bytes of the file ``source`` to ``target``: in the kernel where it can, else in chunks."""
    target.flush()
    copied = 0
    try:
        while copied < size:
            step = os.copy_file_range(source.fileno(), target.fileno(), size - copied)
            if not step:
                break
            copied += step
    except (AttributeError, OSError, io.UnsupportedOperation):
        pass  # no copy_file_range (or not between these files): the rest in chunks
    if copied < size:
        source.seek(copied)
        shutil.copyfileobj(source, target, 1 << 22)
    target.seek(0, os.SEEK_END)


class ZipWriter:
    """Write a ZIP file member by member: :meth:`add` (bytes), :meth:`add_file` (a file), then :meth:`close`.

    :param handle: a new binary file open for writing (the ZIP file starts at its beginning).
    :param date_time: the modification time of every member.
    """

    def __init__(self, handle: BinaryIO, date_time: tuple):
        self._handle = handle
        self._position = 0
        self._date, self._time = dos_date_time(date_time)
        self._members: list[_Member] = []
        self._pending: list[bytes] = []
        self._pending_bytes = 0

    def _local_header(self, name: bytes, crc: int, compressed_size: int, size: int, method: int) -> bytes:
        extra = b''
        version = _VERSION
        if size > ZIP64_LIMIT or compressed_size > ZIP64_LIMIT:
            extra = struct.pack('<HHQQ', 1, 16, size, compressed_size)
            size = compressed_size = 0xFFFFFFFF
            version = _VERSION64
        header = _LOCAL.pack(
            b'PK\003\004', version, 0, 0, method, self._time, self._date, crc, compressed_size, size, len(name),
            len(extra),
        )  # fmt: skip
        return header + name + extra

    def add(self, name: str, content: bytes, *, level: int = 0) -> None:
        """Append the member ``name`` holding ``content``, deflated at ``level`` (0: stored)."""
        encoded = name.encode('ascii')
        crc = zlib.crc32(content)
        size = len(content)
        method = _STORED
        if level:
            compressor = zlib.compressobj(level, zlib.DEFLATED, -15)
            content = compressor.compress(content) + compressor.flush()
            method = _DEFLATED
        header = self._local_header(encoded, crc, len(content), size, method)
        self._members.append(_Member(encoded, crc, len(content), size, method, self._position))
        self._position += len(header) + len(content)
        self._pending += (header, content)
        self._pending_bytes += len(header) + len(content)
        if self._pending_bytes >= 1 << 22:
            self._flush()

    def add_many(self, members: Iterable[tuple[str, bytes]], *, level: int = 0, stored_below: int = 0) -> None:
        """Append the members ``(name, content)``, those of ``stored_below`` bytes or more deflated at ``level``.

        :meth:`add` for each, without its per-member overhead for the members stored as they are.
        """
        members_list, pending, local, crc32 = self._members, self._pending, _LOCAL.pack, zlib.crc32
        position, date, time = self._position, self._date, self._time
        for name, content in members:
            size = len(content)
            if (level and size >= stored_below) or size > ZIP64_LIMIT:
                self._position = position
                self.add(name, content, level=level if size >= stored_below else 0)
                position = self._position
                continue
            encoded = name.encode('ascii')
            crc = crc32(content)
            header = local(b'PK\003\004', _VERSION, 0, 0, _STORED, time, date, crc, size, size, len(encoded), 0)
            members_list.append(_Member(encoded, crc, size, size, _STORED, position))
            pending += (header, encoded, content)
            position += len(header) + len(encoded) + size
            if position - self._position >= 1 << 22:
                self._position = position
                self._flush()
        self._position = position
        self._flush()

    def add_file(self, name: str, path: os.PathLike, *, crc: int, size: int, method: int) -> None:
        """Append the member ``name`` whose data (already compressed by ``method``) is the file ``path``.

        :param crc: the CRC-32 of the uncompressed content; ``size`` its length.
        """
        self._flush()
        encoded = name.encode('ascii')
        compressed_size = os.path.getsize(path)
        header = self._local_header(encoded, crc, compressed_size, size, method)
        self._members.append(_Member(encoded, crc, compressed_size, size, method, self._position))
        self._handle.write(header)
        with open(path, 'rb') as source:
            _copy(source, self._handle, compressed_size)
        self._position += len(header) + compressed_size

    def _flush(self) -> None:
        if self._pending:
            self._handle.write(b''.join(self._pending))
            self._pending.clear()
        self._pending_bytes = 0

    def close(self, first: Iterable[str] = ()) -> None:
        """Write the central directory and the end records; the members named in ``first`` are listed first.

        aiida-core reads an archive's metadata and database from the first entries of the central directory.
        """
        self._flush()
        names = [name.encode('ascii') for name in first]
        leading = [member for name in names for member in self._members if member.name == name]
        others = [member for member in self._members if member.name not in names] if names else self._members
        directory = []
        central = _CENTRAL.pack
        for member in (*leading, *others) if leading else others:
            sizes, extra = (member.size, member.compressed_size, member.offset), b''
            if max(sizes) > ZIP64_LIMIT:
                wide = [value for value in sizes if value > ZIP64_LIMIT]
                extra = struct.pack(f'<HH{len(wide)}Q', 1, 8 * len(wide), *wide)
                sizes = tuple(0xFFFFFFFF if value > ZIP64_LIMIT else value for value in sizes)
                version = _VERSION64
            else:
                version = _VERSION
            size, compressed_size, offset = sizes
            directory += (
                central(
                    b'PK\001\002', version, _CREATE_SYSTEM, version, 0, 0, member.method, self._time, self._date,
                    member.crc, compressed_size, size, len(member.name), len(extra), 0, 0, 0, _EXTERNAL_ATTR, offset,
                ),
                member.name,
                extra,
            )  # fmt: skip
        directory_bytes = b''.join(directory)
        count, start = len(self._members), self._position
        end = b''
        if count > FILECOUNT_LIMIT or start > ZIP64_LIMIT or len(directory_bytes) > ZIP64_LIMIT:
            end64_offset, length = start + len(directory_bytes), len(directory_bytes)
            end += _END64.pack(b'PK\006\006', 44, _VERSION64, _VERSION64, 0, 0, count, count, length, start)
            end += _LOCATOR64.pack(b'PK\006\007', 0, end64_offset, 1)
            count, start = min(count, 0xFFFF), min(start, 0xFFFFFFFF)
        end += _END.pack(b'PK\005\006', 0, 0, count, count, min(len(directory_bytes), 0xFFFFFFFF), start, 0)
        self._handle.write(directory_bytes + end)
        self._handle.flush()
