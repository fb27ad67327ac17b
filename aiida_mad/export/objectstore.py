"""Read many objects of a disk-objectstore container in one pass.

The container is the repository of AiiDA's ``core.sqlite_dos`` and ``core.psql_dos`` storages.

``Container.get_objects_stream_and_meta`` costs about 20 µs of Python per object (a query row fetched one by one, a
stream object, position bookkeeping): at 2 x 10⁵ objects, about 4 s of an archive's export. The archive needs every
object's bytes, once, in any order: :func:`iter_object_contents` looks all the keys up in the pack index with one
query per 50 000 keys, reads the packed objects pack by pack in file order from a memory map, and reads the others
from their loose files. An object packed (or removed) while this runs is read through the container's own API.

No AiiDA here (disk-objectstore only).
"""

from __future__ import annotations

import itertools
import json
import mmap
import operator
import sqlite3
import zlib
from collections.abc import Iterator, Sequence

__all__ = ['iter_object_contents', 'supported']

_LOOKUP = 50_000


def supported(container) -> bool:
    """Return whether :func:`iter_object_contents` can read ``container`` (a version-1 container, zlib objects)."""
    from disk_objectstore import Container

    if not isinstance(container, Container) or not container.is_initialised:
        return False
    config = container._get_repository_config()
    return config.get('container_version') == 1 and config.get('compression_algorithm', '').startswith('zlib')


def iter_object_contents(container, keys: Sequence[str]) -> Iterator[tuple[str, bytes]]:
    """Yield ``(key, content)`` for each of ``keys`` (once each): the packed objects in pack order, then the loose.

    :raises disk_objectstore.exceptions.NotExistent: for a key the container does not hold.
    """
    wanted = sorted(set(keys))
    packed: list[tuple] = []
    index = container._get_pack_index_path()
    if index.exists():
        connection = sqlite3.connect(index)  # only read
        try:
            for first in range(0, len(wanted), _LOOKUP):
                packed += connection.execute(
                    'SELECT pack_id, "offset", length, compressed, hashkey FROM db_object '
                    'WHERE hashkey IN (SELECT value FROM json_each(?))',
                    (json.dumps(wanted[first : first + _LOOKUP]),),
                ).fetchall()
        finally:
            connection.close()
    packed.sort()
    for pack_id, rows in itertools.groupby(packed, key=operator.itemgetter(0)):
        pack = container._get_pack_path_from_pack_id(pack_id)
        with open(pack, 'rb') as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
            for _, offset, length, compressed, key in rows:
                content = view[offset : offset + length]
                yield key, zlib.decompress(content) if compressed else content
    found = {row[4] for row in packed}
    for key in wanted:
        if key not in found:
            try:
                with open(container._get_loose_path_from_hashkey(key), 'rb') as handle:
                    content = handle.read()
            except FileNotFoundError:  # packed since the lookup, or not there (NotExistent)
                content = container.get_object_content(key)
            yield key, content
