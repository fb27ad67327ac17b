"""Storing structures that come from outside the provenance graph, and the groups that hold them.

The bundled seeds (:func:`store_seeds`) and imported structures (:func:`store_imported_structures`) are sources: they
are stored without a calcfunction, each with extras that say where it came from and a key that makes storing it a
second time a no-op. Generated structures are not stored here but by the calcfunction
:func:`aiida_mad.calculations.generate.generate_structures`, planned by
:class:`aiida_mad.workflows.generate.StructureGeneration`, which uses the group helpers of this module.
Group labels come from :mod:`aiida_mad.constants` (``mad/seeds/<source>``, ``mad/structures/<subset>``).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from aiida import orm
from aiida.manage import get_manager
from aiida.tools.groups import GroupPath

from aiida_mad.constants import (
    ALL_SUBSETS,
    SEEDS_GROUP_PREFIX,
    STRUCTURES_GROUP_PREFIX,
    seed_group_label,
    structure_group_label,
)
from aiida_mad.structures import seeds
from aiida_mad.structures.checks import check_structure
from aiida_mad.structures.registry import (
    DEFAULT_MIN_DISTANCE_FACTOR,
    PROTOTYPE_SOURCE,
    SEED_SUBSETS,
    GenerationError,
    canonical_json,
)

if TYPE_CHECKING:
    from aiida_mad.structures.importers import ImportedStructure

__all__ = (
    'ImportResult',
    'describe_import',
    'extra_values_in_group',
    'get_or_create_group',
    'import_key',
    'list_structure_groups',
    'store_imported_structures',
    'store_in_group',
    'store_seeds',
)


def get_or_create_group(label: str) -> orm.Group:
    """Return the group ``label``, created (with its ``GroupPath`` parents) if it does not exist."""
    group, _ = GroupPath(label).get_or_create_group()
    return group


def extra_values_in_group(label: str, extra: str) -> set:
    """Return the values of one extra over the nodes of group ``label`` (empty if the group does not exist)."""
    query = orm.QueryBuilder()
    query.append(orm.Group, filters={'label': label}, tag='group')
    query.append(orm.Node, with_group='group', filters={'extras': {'has_key': extra}}, project=f'extras.{extra}')
    return {value for (value,) in query.iterall() if value is not None}


def list_structure_groups() -> list[tuple[str, str, int]]:
    """Return ``(group label, subset or seed source, number of structures)`` for the structure groups.

    These are the ``mad/seeds/*`` and ``mad/structures/*`` groups, sorted by label; empty ones are listed with zero.
    """
    label_filter = {
        'or': [{'label': {'like': f'{SEEDS_GROUP_PREFIX}/%'}}, {'label': {'like': f'{STRUCTURES_GROUP_PREFIX}/%'}}]
    }
    groups = orm.QueryBuilder().append(orm.Group, filters=label_filter, project='label')
    counts = {label: 0 for (label,) in groups.iterall()}
    query = orm.QueryBuilder().append(orm.Group, filters=label_filter, tag='group', project='label')
    query.append(orm.StructureData, with_group='group', project='id')
    for label, _ in query.iterall():
        counts[label] += 1
    rows = []
    for label in sorted(counts):
        if label.startswith(f'{STRUCTURES_GROUP_PREFIX}/'):
            kind = label.removeprefix(f'{STRUCTURES_GROUP_PREFIX}/')
        else:
            kind = f'seeds: {label.removeprefix(f"{SEEDS_GROUP_PREFIX}/")}'
        rows.append((label, kind, counts[label]))
    return rows


# --------------------------------------------------------------------------------------------------------------------
# Seeds and imports: sources, stored without a calcfunction


def store_in_group(nodes: Sequence[orm.Node], label: str) -> None:
    """Store ``nodes`` and add them to group ``label`` in one transaction: all of them or none."""
    if not nodes:
        return
    with get_manager().get_profile_storage().transaction():
        group = get_or_create_group(label)
        for node in nodes:
            node.store()
        group.add_nodes(list(nodes))


def store_seeds(sources: Iterable[str] | None = None, *, subsets: bool = True) -> dict[str, tuple[int, int]]:
    """Store the bundled seed structures in ``mad/seeds/<source>``; a second call stores nothing.

    Sources are those of :func:`aiida_mad.structures.seeds.all_seeds` plus ``prototypes``: the MP-ALOE prototypes
    of :func:`aiida_mad.structures.prototypes.load_prototypes` (2-8 atoms, at most 3 species), the default parents
    of the ``mp-aloe`` subset. Every structure gets the extras ``mad_source`` (``'seeds'``) and ``mad_seed_name``
    (``'<source>/<name>'``), which also makes the call idempotent. With ``subsets``, the ``bulk``, ``2d`` and
    ``molcrys`` seeds are also put in the ``mc3d``, ``mc2d`` and ``shiftml-molcrys`` groups (and get ``mad_subset``),
    so that every subset can be made from the seeds alone.

    :param sources: the sources to store; ``None`` stores all.
    :param subsets: whether to add the seeds to their subset groups too.
    :return: ``{source: (stored, already present)}``.
    :raises GenerationError: if a source is unknown.
    """
    known = (*seeds.SEED_SOURCES, PROTOTYPE_SOURCE)
    sources = list(known if sources is None else dict.fromkeys(sources))
    unknown = [source for source in sources if source not in known]
    if unknown:
        raise GenerationError(f'unknown seed source(s) {", ".join(unknown)}: choose from {", ".join(known)}')

    bundled = seeds.all_seeds()
    result = {}
    for source in sources:
        if source == PROTOTYPE_SOURCE:
            # pymatgen takes seconds to import: only when the prototypes are asked for.
            from aiida_mad.structures.prototypes import load_prototypes

            structures = {atoms.info['prototype']: atoms for atoms in load_prototypes()}
        else:
            structures = bundled[source]
        label = seed_group_label(source)
        present = extra_values_in_group(label, 'mad_seed_name')
        subset = SEED_SUBSETS.get(source) if subsets else None
        nodes = []
        for name, atoms in structures.items():
            seed_name = f'{source}/{name}'
            if seed_name in present:
                continue
            node = orm.StructureData(ase=atoms)
            extras = {'mad_source': 'seeds', 'mad_seed_name': seed_name}
            if subset is not None:
                extras['mad_subset'] = subset
            if source == PROTOTYPE_SOURCE:
                extras['mad_prototype'] = name
            node.base.extras.set_many(extras)
            nodes.append(node)
        store_in_group(nodes, label)
        if subset is not None:
            # Seeds stored earlier without subsets join their subset group now; nodes never enter a group twice.
            subset_group = get_or_create_group(structure_group_label(subset))
            query = orm.QueryBuilder().append(orm.Group, filters={'label': label}, tag='group')
            query.append(orm.StructureData, with_group='group')
            members = query.all(flat=True)
            for node in members:
                if node.base.extras.get('mad_subset', None) is None:
                    node.base.extras.set('mad_subset', subset)
            subset_group.add_nodes(members)
        result[source] = (len(nodes), len(structures) - len(nodes))
    return result


def import_key(imported: ImportedStructure) -> str:
    """Return the key that identifies an imported structure, so that importing it twice stores it once.

    Files: their content hash and the frame; ASE databases: the row's ``unique_id`` (or path and row id);
    OPTIMADE: the base URL and the entry id.
    """
    metadata = imported.metadata
    if imported.source == 'file':
        identity = [metadata['sha256'], metadata['index']]
    elif imported.source == 'ase-db':
        identity = [metadata['unique_id']] if metadata.get('unique_id') else [metadata['path'], metadata['row_id']]
    else:
        identity = [metadata['base_url'], metadata['structure_id']]
    return hashlib.sha256(canonical_json([imported.source, *identity]).encode()).hexdigest()


@dataclasses.dataclass
class ImportResult:
    """What :func:`store_imported_structures` did.

    :param group_label: the group the structures went to.
    :param stored: the newly stored nodes.
    :param existing: how many were in the group already.
    :param refused: ``(item, reasons)`` of the implausible structures left out.
    """

    group_label: str
    stored: list = dataclasses.field(default_factory=list)
    existing: int = 0
    refused: list[tuple[str, list[str]]] = dataclasses.field(default_factory=list)


def describe_import(imported: ImportedStructure) -> str:
    """Return a short name of an imported structure for messages: file and frame, database row or OPTIMADE URL."""
    metadata = imported.metadata
    if imported.source == 'file':
        return f'{metadata["path"]} frame {metadata["index"]}'
    if imported.source == 'ase-db':
        return f'{metadata["path"]} row {metadata["row_id"]}'
    return metadata['url']


def store_imported_structures(
    imported: Sequence[ImportedStructure],
    *,
    subset: str,
    group_label: str | None = None,
    pool: Iterable[str] | None = None,
    skip_implausible: bool = False,
    min_distance_factor: float = DEFAULT_MIN_DISTANCE_FACTOR,
) -> ImportResult:
    """Check imported structures and store them in one transaction in their group; nothing twice.

    Each structure goes through :func:`check_structure`. Implausible ones fail the whole import (the user named those
    files) unless ``skip_implausible`` (a provider's filter may match a few odd entries), in which case they are left
    out and listed. Structures whose :func:`import_key` is in the group already are not stored again. Extras:
    ``mad_subset``, ``mad_source`` (``file``, ``ase-db``, ``optimade``), ``mad_import`` (all the importer's metadata),
    ``mad_import_key`` and, for OPTIMADE, ``mad_optimade_provider``, ``mad_optimade_id`` and ``mad_optimade_url``.

    :param imported: the structures, all read before this call.
    :param subset: the subset they belong to.
    :param group_label: the group; defaults to ``mad/structures/<subset>``.
    :param pool: the allowed elements; ``None`` means the 85 MAD elements.
    :param skip_implausible: leave implausible structures out instead of failing.
    :param min_distance_factor: the close-contact threshold of the checks.
    :raises GenerationError: naming every implausible structure, if any and not ``skip_implausible``; nothing is
        stored then.
    """
    if subset not in ALL_SUBSETS:
        raise GenerationError(f'unknown subset {subset!r}: choose from {", ".join(ALL_SUBSETS)}')
    result = ImportResult(group_label=group_label or structure_group_label(subset))
    pool = None if pool is None else tuple(pool)
    for item in imported:
        reasons = check_structure(item.atoms, pool=pool, min_distance_factor=min_distance_factor)
        if reasons:
            result.refused.append((describe_import(item), reasons))
    if result.refused and not skip_implausible:
        lines = [f'{len(result.refused)} implausible structure(s); nothing was imported:']
        lines.extend(f'  {item}: {"; ".join(reasons)}' for item, reasons in result.refused)
        raise GenerationError('\n'.join(lines))

    refused = {item for item, _ in result.refused}
    present = extra_values_in_group(result.group_label, 'mad_import_key')
    nodes = []
    for item in imported:
        if describe_import(item) in refused:
            continue
        key = import_key(item)
        if key in present:
            result.existing += 1
            continue
        present.add(key)
        node = orm.StructureData(ase=item.atoms)
        extras = {
            'mad_subset': subset,
            'mad_source': item.source,
            'mad_import': item.metadata,
            'mad_import_key': key,
        }
        if item.source == 'optimade':
            extras.update(
                mad_optimade_provider=item.metadata.get('provider'),
                mad_optimade_id=item.metadata['structure_id'],
                mad_optimade_url=item.metadata['url'],
            )
        node.base.extras.set_many(extras)
        nodes.append(node)
    store_in_group(nodes, result.group_label)
    result.stored = nodes
    return result
