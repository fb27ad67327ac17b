"""Reading the values of many stored nodes at once, for calcfunctions with tens of thousands of inputs.

``node.get_array(...)``, ``node.get_ase()`` and ``node.value`` each cost one or more database round trips and one
repository open per node (about 20 ms for an ``ArrayData`` on SQLite), and after every commit the ORM reloads each
node it touches. For a dataset of 10⁵ frames that is hours. These helpers fetch the attributes of many nodes with one
query per 5 000 nodes and stream the array files of many nodes from the object store in one pass
(``iter_object_streams``), which reads packed objects sequentially. Measured in ``bench/bench_dataset.py``.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
from aiida import orm
from ase import Atoms

__all__ = ('read_arrays', 'read_attributes', 'read_structures')

#: Nodes per query: SQLite caps the number of variables of one statement.
CHUNK = 5_000


def _chunks(values: Sequence) -> list[Sequence]:
    return [values[first : first + CHUNK] for first in range(0, len(values), CHUNK)]


def read_attributes(nodes: Mapping[str, orm.Node], keys: Sequence[str]) -> dict[str, tuple]:
    """Return ``{label: (attribute values in the order of keys)}`` for stored nodes, a few queries in all."""
    by_pk: dict[int, list[str]] = {}
    for label, node in nodes.items():
        by_pk.setdefault(node.pk, []).append(label)
    result = {}
    for chunk in _chunks(sorted(by_pk)):
        # The whole attribute dictionary, parsed by Python's json: projecting `attributes.<key>` lets SQLite convert
        # a float itself, which can change its last bit.
        query = orm.QueryBuilder().append(orm.Node, filters={'id': {'in': list(chunk)}}, project=['id', 'attributes'])
        for pk, attributes in query.iterall():
            values = tuple(attributes.get(key) for key in keys)
            for label in by_pk[pk]:
                result[label] = values
    return result


def read_arrays(nodes: Mapping[str, orm.ArrayData], name: str) -> dict[str, np.ndarray]:
    """Return ``{label: array name}`` of stored ``ArrayData`` nodes, streaming their ``.npy`` files in one pass."""
    from aiida.manage import get_manager

    filename = f'{name}.npy'
    by_pk: dict[int, list[str]] = {}
    for label, node in nodes.items():
        by_pk.setdefault(node.pk, []).append(label)
    labels_of_key: dict[str, list[str]] = {}
    for chunk in _chunks(sorted(by_pk)):
        query = orm.QueryBuilder().append(
            orm.Node, filters={'id': {'in': list(chunk)}}, project=['id', 'repository_metadata']
        )
        for pk, metadata in query.iterall():
            entry = (metadata or {}).get('o', {}).get(filename)
            if entry is None or 'k' not in entry:
                raise KeyError(f'{nodes[by_pk[pk][0]].__class__.__name__}<{pk}> has no array {name!r}')
            labels_of_key.setdefault(entry['k'], []).extend(by_pk[pk])
    repository = get_manager().get_profile_storage().get_repository()
    result: dict[str, np.ndarray] = {}
    for key, stream in repository.iter_object_streams(list(labels_of_key)):
        array = np.load(io.BytesIO(stream.read()), allow_pickle=False)
        for label in labels_of_key[key]:
            result[label] = array
    missing = set(nodes) - set(result)
    if missing:
        raise KeyError(f'the repository lacks the {name!r} arrays of {len(missing)} nodes, e.g. {sorted(missing)[0]}')
    return result


def read_structures(nodes: Mapping[str, orm.StructureData]) -> dict[str, Atoms]:
    """Return ``{label: ase.Atoms}`` of stored ``StructureData`` nodes from their attributes (a few queries in all).

    Only ordered structures (one symbol per kind, no vacancy) can be frames; others raise ``ValueError``.
    """
    attributes = read_attributes(nodes, ('cell', 'pbc1', 'pbc2', 'pbc3', 'kinds', 'sites'))
    result = {}
    for label, (cell, pbc1, pbc2, pbc3, kinds, sites) in attributes.items():
        symbols = {}
        for kind in kinds:
            if len(kind['symbols']) != 1 or abs(sum(kind['weights']) - 1.0) > 1e-12:
                raise ValueError(f'StructureData<{nodes[label].pk}>: kind {kind["name"]} is an alloy or has vacancies')
            symbols[kind['name']] = kind['symbols'][0]
        result[label] = Atoms(
            [symbols[site['kind_name']] for site in sites],
            positions=[site['position'] for site in sites],
            cell=cell,
            pbc=(pbc1, pbc2, pbc3),
        )
    return result
