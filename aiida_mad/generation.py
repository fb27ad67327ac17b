"""Structure generation with provenance: what the ``aiida-mad structures`` commands and ``GenerateWorkChain`` share.

The pure generators live in :mod:`aiida_mad.structures`; this module plans their use over groups of parent
structures, derives the random seeds, computes the keys that make generation idempotent, and stores seeds and
imported structures in groups. The generated structures themselves are created only by the calcfunction
:func:`aiida_mad.calculations.functions.generate_structures`, which this module calls one *batch* at a time.

Design, decided once here:

* **Batches.** One calcfunction call generates a batch of items (``batch_size``, default 100). Its inputs are one
  parent per item (``parents.p0000``, ``parents.p0001``, ...; a parent drawn twice is linked twice) and one ``Dict``
  with the subset, generator, parameters, element pool, check settings, the user's seed and each item's index. Its
  outputs are the structures, ``structures.s0000`` made from ``parents.p0000`` and so on (``s0000_00``, ``s0000_01``
  for the several molecules of one crystal), plus a ``refused`` Dict when items were refused. So every structure
  traces back by provenance to its parent and to the parameters and seed, while the cost of a process is paid once
  per batch, not once per structure.
* **Seeds.** Every random number comes from ``numpy.random.SeedSequence(seed, spawn_key=(index, stream, ...))``: the
  parent of item ``index`` from stream :data:`PARENT_STREAM`, attempt ``a`` of its generator from
  ``(index, GENERATOR_STREAM, a)``, and the order of the parents of per-parent generators from
  ``(0, ORDER_STREAM)``. Item ``index`` therefore gets the same parent and the same structure whatever the batch
  size, however the run is split over several invocations, and whether it runs from the CLI or the work chain.
* **Parents.** The eligible structures of the parent groups, deduplicated and sorted by UUID (UUIDs survive
  archive export and import, pks do not).
* **Keys.** Each item has a key, the sha256 of the canonical JSON of subset, generator, parameters, element pool,
  check threshold, seed, parent UUID and index (seed and index are left out for per-parent generators, whose result
  does not depend on them). Structures carry it as the extra ``mad_generation_key``; refused items are remembered by
  their key in the ``refused`` Dict's extras. A new run skips the keys found in the target group and the refused
  ones, so running the same command twice adds nothing the second time, and ``--count 200`` after ``--count 100``
  with the same seed adds the next 100.
* **Refusals and retries.** Every generated structure goes through
  :func:`aiida_mad.structures.checks.check_structure`. A refused draw is retried with the next attempt's random
  stream (same parent) up to ``max_attempts`` times; an item that fails every attempt is refused with its reasons
  and the run moves on to further indices until ``count`` items have structures. A run gives up when more items were
  refused than asked for (at least :data:`MIN_REFUSAL_LIMIT`), which means the parents or parameters cannot work.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from aiida import orm
    from ase import Atoms

    from aiida_mad.structures.importers import ImportedStructure

__all__ = (
    'ALL_SUBSETS',
    'GENERATED_SUBSETS',
    'GENERATORS',
    'IMPORTED_SUBSETS',
    'GenerationError',
    'GenerationProgress',
    'Generator',
    'StructureGeneration',
    'generate_item',
    'generation_key',
    'list_structure_groups',
    'seed_group_label',
    'store_imported_structures',
    'store_seeds',
    'stream_rng',
    'structure_group_label',
)

#: Subsets whose structures are imported (files, ASE databases, OPTIMADE) or taken from the bundled seeds.
IMPORTED_SUBSETS: tuple[str, ...] = ('mc3d', 'mc2d', 'shiftml-molcrys')

#: Subsets made by a generator from parent structures, in the order of the MAD data descriptor, then MP-ALOE.
GENERATED_SUBSETS: tuple[str, ...] = (
    'mc3d-rattled',
    'mc3d-random',
    'mc3d-surface',
    'mc3d-cluster',
    'shiftml-molfrags',
    'mp-aloe',
)

#: Every structure subset (SPEC section 3), imported and generated.
ALL_SUBSETS: tuple[str, ...] = (
    'mc3d',
    'mc3d-rattled',
    'mc3d-random',
    'mc3d-surface',
    'mc3d-cluster',
    'mc2d',
    'shiftml-molcrys',
    'shiftml-molfrags',
    'mp-aloe',
)

#: Group paths (``aiida.tools.groups.GroupPath``) of the bundled seeds and of the structure subsets.
SEEDS_GROUP_PREFIX = 'mad/seeds'
STRUCTURES_GROUP_PREFIX = 'mad/structures'

#: The subset each bundled seed source also feeds, so that the demo and the tests have every imported subset.
SEED_SUBSETS: dict[str, str] = {'bulk': 'mc3d', '2d': 'mc2d', 'molcrys': 'shiftml-molcrys'}

#: Source name of the bundled MP-ALOE prototypes (pymatgen's AFLOW library) among the seeds.
PROTOTYPE_SOURCE = 'prototypes'

#: Streams of the per-item seed sequence: which parent an item gets, the generator's draws, the parent order.
PARENT_STREAM = 0
GENERATOR_STREAM = 1
ORDER_STREAM = 2

#: Default number of items per calcfunction call: large enough that the cost of the process is small next to that
#: of storing the structures, small enough that an interrupted run loses little and the progress bar moves.
DEFAULT_BATCH_SIZE = 100

#: Largest batch: link labels carry a four-digit item number.
MAX_BATCH_SIZE = 10000

#: Default fraction of the sum of covalent radii below which two atoms are too close (SPEC section 4.1).
DEFAULT_MIN_DISTANCE_FACTOR = 0.5

#: A run gives up once more items were refused than were asked for, but never before this many.
MIN_REFUSAL_LIMIT = 10

#: At most this many refusal reasons are kept verbatim for the report; the rest are only counted.
MAX_REPORTED_REFUSALS = 10


class GenerationError(ValueError):
    """Raised for bad input before anything is stored; the message names the offending group, element or value."""


# --------------------------------------------------------------------------------------------------------------------
# Generators: the pure functions of aiida_mad.structures behind one calling convention


@dataclasses.dataclass(frozen=True)
class ParentInfo:
    """What the eligibility rules need to know about a parent structure, read without building ``ase.Atoms``.

    :param natoms: number of sites.
    :param pbc: periodic boundary conditions.
    :param symbols: the chemical symbols present.
    """

    natoms: int
    pbc: tuple[bool, bool, bool]
    symbols: frozenset[str]


@dataclasses.dataclass(frozen=True)
class Generator:
    """One generator of a subset.

    :param name: the generator's name, recorded in the extra ``mad_generator`` and the calcfunction's parameters.
    :param subset: the subset it fills.
    :param function: ``function(parent, rng, pool, parameters) -> list[Atoms]``; raises ``ValueError`` when the
        parent and the draw give no structure.
    :param defaults: the parameters and their defaults; other keys are refused.
    :param per_parent: ``True`` when every parent is used once and gives all its structures deterministically
        (molecular fragments); ``False`` when ``count`` items each draw a random parent.
    :param max_attempts: default number of draws per item before it is refused.
    :param sources: default parent group labels; missing ones are skipped.
    :param eligible: ``eligible(info, pool) -> reason or None``: why a parent cannot be used.
    """

    name: str
    subset: str
    function: Callable[[Atoms, np.random.Generator, tuple[str, ...], Mapping[str, Any]], list[Atoms]]
    defaults: Mapping[str, Any]
    per_parent: bool
    max_attempts: int
    sources: tuple[str, ...]
    eligible: Callable[[ParentInfo, tuple[str, ...]], str | None]


def _rattle(parent, rng, pool, parameters):
    from aiida_mad.structures.rattle import rattle

    return [rattle(parent, rng, scale=parameters['scale'])]


def _randomize(parent, rng, pool, parameters):
    from aiida_mad.structures.randomize import randomize_composition

    return [randomize_composition(parent, rng, pool)]


def _surface(parent, rng, pool, parameters):
    from aiida_mad.structures.surfaces import make_slab

    return [make_slab(parent, rng, **parameters)]


def _cluster(parent, rng, pool, parameters):
    from aiida_mad.structures.clusters import cut_cluster

    return [cut_cluster(parent, rng, **parameters)]


def _fragments(parent, rng, pool, parameters):
    from aiida_mad.structures.molecules import molecular_fragments

    return molecular_fragments(parent, rng, **parameters)


def _mp_aloe(parent, rng, pool, parameters):
    from aiida_mad.structures.prototypes import generate_mp_aloe

    return [generate_mp_aloe(parent, rng, pool, **parameters)]


def _needs_several_atoms(info: ParentInfo, pool: tuple[str, ...]) -> str | None:
    if info.natoms < 2:
        return 'has fewer than two atoms'
    return _needs_pool_elements(info, pool)


def _needs_3d(info: ParentInfo, pool: tuple[str, ...]) -> str | None:
    return None if all(info.pbc) else 'is not periodic along all three axes'


def _needs_3d_and_pool_elements(info: ParentInfo, pool: tuple[str, ...]) -> str | None:
    return _needs_3d(info, pool) or _needs_pool_elements(info, pool)


def _needs_pool_elements(info: ParentInfo, pool: tuple[str, ...]) -> str | None:
    # Generators that keep the parent's species cannot make a structure inside the pool from one outside it.
    outside = sorted(info.symbols - set(pool))
    return f'has elements outside the pool ({", ".join(outside)})' if outside else None


def _needs_enough_pool_elements(info: ParentInfo, pool: tuple[str, ...]) -> str | None:
    if not all(info.pbc):
        return 'is not periodic along all three axes'
    if len(info.symbols) > len(pool):
        return f'has {len(info.symbols)} species, more than the {len(pool)} element(s) of the pool'
    return None


#: The generator of every generated subset.
GENERATORS: dict[str, Generator] = {
    generator.subset: generator
    for generator in (
        Generator(
            name='rattle',
            subset='mc3d-rattled',
            function=_rattle,
            defaults={'scale': 0.2},
            per_parent=False,
            max_attempts=10,
            sources=(f'{STRUCTURES_GROUP_PREFIX}/mc3d',),
            eligible=_needs_several_atoms,
        ),
        Generator(
            name='random-composition',
            subset='mc3d-random',
            function=_randomize,
            defaults={},
            per_parent=False,
            max_attempts=10,
            sources=(f'{STRUCTURES_GROUP_PREFIX}/mc3d',),
            eligible=_needs_3d,
        ),
        Generator(
            name='surface',
            subset='mc3d-surface',
            function=_surface,
            defaults={'max_index': 3, 'min_slab_size': 8.0, 'vacuum': 10.0, 'max_atoms': 60},
            per_parent=False,
            # make_slab already tries every plane before it gives up, so further attempts rarely help.
            max_attempts=3,
            sources=(f'{STRUCTURES_GROUP_PREFIX}/mc3d',),
            eligible=_needs_3d_and_pool_elements,
        ),
        Generator(
            name='cluster',
            subset='mc3d-cluster',
            function=_cluster,
            defaults={'min_atoms': 2, 'max_atoms': 8},
            per_parent=False,
            max_attempts=10,
            sources=(f'{STRUCTURES_GROUP_PREFIX}/mc3d', f'{STRUCTURES_GROUP_PREFIX}/mc3d-rattled'),
            eligible=_needs_pool_elements,
        ),
        Generator(
            name='molecular-fragments',
            subset='shiftml-molfrags',
            function=_fragments,
            defaults={'unique': True},
            per_parent=True,
            # Fragmenting draws no random number: a second attempt would give the same molecules.
            max_attempts=1,
            sources=(f'{STRUCTURES_GROUP_PREFIX}/shiftml-molcrys',),
            eligible=_needs_pool_elements,
        ),
        Generator(
            name='mp-aloe',
            subset='mp-aloe',
            function=_mp_aloe,
            defaults={'scramble_sigma': 0.02, 'strain_sigma': 0.02},
            per_parent=False,
            max_attempts=10,
            sources=(f'{SEEDS_GROUP_PREFIX}/{PROTOTYPE_SOURCE}',),
            eligible=_needs_enough_pool_elements,
        ),
    )
}


def get_generator(name_or_subset: str) -> Generator:
    """Return the generator of a generated subset, or the generator with that name.

    :raises GenerationError: if neither matches.
    """
    if name_or_subset in GENERATORS:
        return GENERATORS[name_or_subset]
    for generator in GENERATORS.values():
        if generator.name == name_or_subset:
            return generator
    raise GenerationError(
        f'no generator for {name_or_subset!r}: generated subsets are {", ".join(GENERATED_SUBSETS)}'
        f' ({", ".join(IMPORTED_SUBSETS)} are imported or come from the seeds)'
    )


# --------------------------------------------------------------------------------------------------------------------
# Seeds, keys and one item: pure functions, also called inside the calcfunction


def stream_rng(seed: int, *spawn_key: int) -> np.random.Generator:
    """Return the random generator of one stream: ``default_rng(SeedSequence(seed, spawn_key=spawn_key))``.

    :param seed: the user's seed, a non-negative integer.
    :param spawn_key: identifies the stream, e.g. ``(index, GENERATOR_STREAM, attempt)``.
    """
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=tuple(int(k) for k in spawn_key)))


def _canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(',', ':'), ensure_ascii=True)


def generation_key(settings: Mapping[str, Any], parent_uuid: str, index: int) -> str:
    """Return the key of one item: the sha256 of what determines its structures (see the module docstring).

    :param settings: the calcfunction's parameters (``items`` and ``max_attempts`` are ignored).
    :param parent_uuid: the UUID of the item's parent.
    :param index: the item's index; ignored, like the seed, for per-parent generators.
    """
    generator = get_generator(settings['generator'])
    payload = {
        'subset': settings['subset'],
        'generator': settings['generator'],
        'parameters': settings['parameters'],
        'element_pool': list(settings['element_pool']),
        'min_distance_factor': settings['min_distance_factor'],
        'parent': parent_uuid,
    }
    if not generator.per_parent:
        payload.update(seed=settings['seed'], index=int(index))
    return hashlib.sha256(_canonical_json(payload).encode()).hexdigest()


@dataclasses.dataclass
class ItemResult:
    """What :func:`generate_item` made of one item.

    :param structures: ``(atoms, attempt)`` for every accepted structure.
    :param reasons: why draws or structures were refused, each prefixed with the attempt.
    :param attempts: the number of draws made.
    """

    structures: list[tuple[Atoms, int]]
    reasons: list[str]
    attempts: int


def generate_item(settings: Mapping[str, Any], parent: Atoms, index: int) -> ItemResult:
    """Run the generator of ``settings`` for item ``index`` on ``parent`` and check every structure it makes.

    Attempt ``a`` draws from :func:`stream_rng` ``(seed, index, GENERATOR_STREAM, a)``; the first attempt whose
    structures pass :func:`check_structure` is kept. For per-parent generators (several structures per parent) the
    structures that pass are kept and the others refused one by one.

    :param settings: the calcfunction's parameters.
    :param parent: the parent structure.
    :param index: the item's index.
    """
    from aiida_mad.structures.checks import check_structure

    generator = get_generator(settings['generator'])
    pool = tuple(settings['element_pool'])
    reasons: list[str] = []
    attempts = 0
    for attempt in range(int(settings['max_attempts'])):
        attempts += 1
        rng = stream_rng(settings['seed'], index, GENERATOR_STREAM, attempt)
        try:
            candidates = generator.function(parent, rng, pool, settings['parameters'])
        # The generators raise ValueError with the reason when a parent and a draw give no structure; the libraries
        # below them (pymatgen, spglib, scipy) fail on odd parents with these types too. One odd parent among
        # thousands must become a refusal with its reason, not stop the whole run; programming errors (TypeError,
        # AttributeError, ...) still propagate.
        except (ValueError, ArithmeticError, IndexError, KeyError, RuntimeError) as exception:
            reasons.append(f'attempt {attempt}: {type(exception).__name__}: {exception}')
            continue
        if not candidates:
            reasons.append(f'attempt {attempt}: the generator made no structure')
            continue
        accepted = []
        for number, atoms in enumerate(candidates):
            refusals = check_structure(atoms, pool=pool, min_distance_factor=settings['min_distance_factor'])
            if refusals:
                label = f'structure {number}: ' if len(candidates) > 1 else ''
                reasons.append(f'attempt {attempt}: {label}{"; ".join(refusals)}')
            else:
                accepted.append((atoms, attempt))
        if accepted:
            return ItemResult(accepted, reasons, attempts)
    return ItemResult([], reasons, attempts)


def jsonable_info(info: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``atoms.info`` as plain JSON values (numpy numbers and arrays, tuples converted), for an extra."""

    def convert(value):
        if isinstance(value, np.ndarray):
            return value.tolist()
        if isinstance(value, np.generic):
            return value.item()
        raise TypeError(f'{type(value).__name__} is not JSON serialisable')

    return json.loads(json.dumps(dict(info), default=convert))


# --------------------------------------------------------------------------------------------------------------------
# Groups


def structure_group_label(subset: str) -> str:
    """Return ``mad/structures/<subset>``."""
    return f'{STRUCTURES_GROUP_PREFIX}/{subset}'


def seed_group_label(source: str) -> str:
    """Return ``mad/seeds/<source>``."""
    return f'{SEEDS_GROUP_PREFIX}/{source}'


def _get_or_create_group(label: str) -> orm.Group:
    from aiida.tools.groups import GroupPath

    group, _ = GroupPath(label).get_or_create_group()
    return group


def _extra_values_in_group(label: str, extra: str) -> set:
    """Return the values of one extra over the nodes of group ``label`` (empty if the group does not exist)."""
    from aiida import orm

    query = orm.QueryBuilder()
    query.append(orm.Group, filters={'label': label}, tag='group')
    query.append(orm.Node, with_group='group', filters={'extras': {'has_key': extra}}, project=f'extras.{extra}')
    return {value for (value,) in query.iterall() if value is not None}


def list_structure_groups() -> list[tuple[str, str, int]]:
    """Return ``(group label, subset or seed source, number of structures)`` for the structure groups.

    These are the ``mad/seeds/*`` and ``mad/structures/*`` groups, sorted by label; empty ones are listed with zero.
    """
    from aiida import orm

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


def _store_in_group(nodes: Sequence[orm.Node], label: str) -> None:
    """Store ``nodes`` and add them to group ``label`` in one transaction: all of them or none."""
    from aiida.manage import get_manager

    if not nodes:
        return
    with get_manager().get_profile_storage().transaction():
        group = _get_or_create_group(label)
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
    from aiida import orm

    from aiida_mad.structures import seeds

    known = (*seeds.SEED_SOURCES, PROTOTYPE_SOURCE)
    sources = list(known if sources is None else dict.fromkeys(sources))
    unknown = [source for source in sources if source not in known]
    if unknown:
        raise GenerationError(f'unknown seed source(s) {", ".join(unknown)}: choose from {", ".join(known)}')

    bundled = seeds.all_seeds()
    result = {}
    for source in sources:
        if source == PROTOTYPE_SOURCE:
            from aiida_mad.structures.prototypes import load_prototypes

            structures = {atoms.info['prototype']: atoms for atoms in load_prototypes()}
        else:
            structures = bundled[source]
        label = seed_group_label(source)
        present = _extra_values_in_group(label, 'mad_seed_name')
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
        _store_in_group(nodes, label)
        if subset is not None:
            # Seeds stored earlier without subsets join their subset group now; nodes never enter a group twice.
            subset_group = _get_or_create_group(structure_group_label(subset))
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
    return hashlib.sha256(_canonical_json([imported.source, *identity]).encode()).hexdigest()


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
    from aiida import orm

    from aiida_mad.structures.checks import check_structure

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
    present = _extra_values_in_group(result.group_label, 'mad_import_key')
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
    _store_in_group(nodes, result.group_label)
    result.stored = nodes
    return result


# --------------------------------------------------------------------------------------------------------------------
# Generation runs


@dataclasses.dataclass
class GenerationProgress:
    """Where a generation run stands; plain values only, so that a work chain can keep it in its context.

    :param next_index: the next item index to plan.
    :param done: items that have structures in the group (already there or made in this run).
    :param existing: items found in the group already.
    :param refused_before: items skipped because an earlier run refused them.
    :param new_items: items that got structures in this run.
    :param new_structures: structures stored in this run.
    :param refused: items refused in this run.
    :param examples: the first refusal reasons, for the report.
    :param calculations: pks of the calcfunctions run.
    """

    next_index: int = 0
    done: int = 0
    existing: int = 0
    refused_before: int = 0
    new_items: int = 0
    new_structures: int = 0
    refused: int = 0
    examples: list[str] = dataclasses.field(default_factory=list)
    calculations: list[int] = dataclasses.field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Return the progress as a JSON-serialisable dictionary."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> GenerationProgress:
        """Return the progress saved with :meth:`as_dict`."""
        return cls(**{key: (list(value) if isinstance(value, list) else value) for key, value in values.items()})


@dataclasses.dataclass(frozen=True)
class PlannedItem:
    """One item of a batch: its index, its parent node and its key."""

    index: int
    parent: orm.StructureData
    key: str


class StructureGeneration:
    """Generate one subset from parent structures in batches of calcfunction calls, into a group, idempotently.

    Everything is validated in the constructor, before anything is stored: the subset, the count and seed, the
    generator parameters, the element pool, the parent groups (they must exist and hold structures) and the
    eligibility of the parents. Then :meth:`run` (CLI, Python) or :meth:`next_batch` plus :meth:`run_batch` (the work
    chain, one step per batch) do the work. See the module docstring for seeds, keys and refusals.

    :param subset: a generated subset (:data:`GENERATED_SUBSETS`).
    :param parent_groups: labels of the groups holding the parents; ``None`` uses the generator's default groups
        (those that do not exist are skipped).
    :param parents: parent structures given directly (stored ``StructureData``), used together with the groups.
    :param count: items to have in the group: structures for the random generators, parent crystals for
        ``shiftml-molfrags`` (default: all of them). Required, and positive, for all others.
    :param seed: the user's seed, a non-negative integer.
    :param parameters: generator parameters overriding :attr:`Generator.defaults`.
    :param element_pool: restrict the pool to these elements (each a MAD element).
    :param available_elements: elements that can be computed, e.g. those of a pseudopotential family; the pool is
        intersected with them.
    :param min_distance_factor: the close-contact threshold of the checks.
    :param max_attempts: draws per item before it is refused; defaults to the generator's.
    :param batch_size: items per calcfunction call.
    :param group_label: the target group; defaults to ``mad/structures/<subset>``.
    :raises GenerationError: for any bad input, naming it.
    """

    def __init__(
        self,
        subset: str,
        *,
        parent_groups: Sequence[str] | None = None,
        parents: Sequence[orm.StructureData] = (),
        count: int | None = None,
        seed: int = 0,
        parameters: Mapping[str, Any] | None = None,
        element_pool: Iterable[str] | None = None,
        available_elements: Iterable[str] | None = None,
        min_distance_factor: float = DEFAULT_MIN_DISTANCE_FACTOR,
        max_attempts: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        group_label: str | None = None,
    ):
        if subset not in GENERATED_SUBSETS:
            hint = ' (it is imported or comes from the seeds)' if subset in IMPORTED_SUBSETS else ''
            raise GenerationError(
                f'cannot generate subset {subset!r}{hint}: generated subsets are {", ".join(GENERATED_SUBSETS)}'
            )
        self.generator = GENERATORS[subset]
        if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count <= 0):
            raise GenerationError(f'count must be a positive integer, got {count!r}')
        if count is None and not self.generator.per_parent:
            raise GenerationError(f'subset {subset} needs a count: the number of structures to generate')
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise GenerationError(f'seed must be a non-negative integer, got {seed!r}')
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= MAX_BATCH_SIZE:
            raise GenerationError(f'batch size must be an integer from 1 to {MAX_BATCH_SIZE}, got {batch_size!r}')
        max_attempts = self.generator.max_attempts if max_attempts is None else max_attempts
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise GenerationError(f'max attempts must be a positive integer, got {max_attempts!r}')
        if not np.isfinite(min_distance_factor) or min_distance_factor < 0:
            raise GenerationError(f'min distance factor must be a non-negative number, got {min_distance_factor!r}')

        parameters = dict(parameters or {})
        unknown = sorted(set(parameters) - set(self.generator.defaults))
        if unknown:
            known = ', '.join(self.generator.defaults) or 'none'
            raise GenerationError(
                f'unknown parameter(s) {", ".join(unknown)} for generator {self.generator.name} (known: {known})'
            )
        from aiida_mad.structures.elements import element_pool as make_pool

        try:
            pool = make_pool(available_elements, include=element_pool)
        # UnknownElementError (a ValueError) names the bad symbols; a plain ValueError says the pool is empty.
        except ValueError as exception:
            raise GenerationError(f'element pool: {exception}') from exception

        self.subset = subset
        self.seed = seed
        self.batch_size = batch_size
        self.group_label = group_label or structure_group_label(subset)
        self.settings: dict[str, Any] = {
            'subset': subset,
            'generator': self.generator.name,
            'parameters': {**self.generator.defaults, **parameters},
            'element_pool': list(pool),
            'min_distance_factor': float(min_distance_factor),
            'max_attempts': max_attempts,
            'seed': seed,
        }
        self.candidates = self._load_parents(parent_groups, parents, pool)
        if self.generator.per_parent:
            self.target = len(self.candidates) if count is None else min(count, len(self.candidates))
            self.order = stream_rng(seed, 0, ORDER_STREAM).permutation(len(self.candidates))
        else:
            self.target = count
            self.order = None
        self.refusal_limit = max(MIN_REFUSAL_LIMIT, self.target)
        self._existing_keys: set[str] | None = None
        self._refused_keys: set[str] | None = None

    def _load_parents(
        self, labels: Sequence[str] | None, parents: Sequence[orm.StructureData], pool: tuple[str, ...]
    ) -> list[orm.StructureData]:
        """Return the eligible parents sorted by UUID, raising :class:`GenerationError` naming a bad group."""
        from aiida import orm
        from aiida.common.exceptions import NotExistent

        explicit = labels is not None
        labels = list(labels) if explicit else ([] if parents else list(self.generator.sources))
        nodes: dict[str, orm.StructureData] = {}
        tried = []
        for label in labels:
            try:
                group = orm.load_group(label=label)
            except NotExistent:
                if explicit:
                    raise GenerationError(f'parent group {label} does not exist') from None
                tried.append(f'{label} (does not exist)')
                continue
            query = orm.QueryBuilder().append(orm.Group, filters={'id': group.pk}, tag='group')
            query.append(orm.StructureData, with_group='group')
            members = query.all(flat=True)
            if not members:
                if explicit:
                    raise GenerationError(f'parent group {label} holds no structures')
                tried.append(f'{label} (empty)')
                continue
            nodes.update((node.uuid, node) for node in members)
        for node in parents:
            if not isinstance(node, orm.StructureData) or not node.is_stored:
                raise GenerationError(f'parents must be stored StructureData nodes, got {node!r}')
            nodes[node.uuid] = node
        if not nodes:
            where = ', '.join(tried) or 'none given'
            hint = ' (run `aiida-mad structures seeds` or import structures first)'
            raise GenerationError(f'no parent structures for {self.subset}: parent groups {where}{hint}')

        eligible, reasons = [], {}
        for uuid in sorted(nodes):
            node = nodes[uuid]
            info = ParentInfo(natoms=len(node.sites), pbc=tuple(node.pbc), symbols=frozenset(node.get_symbols_set()))
            reason = self.generator.eligible(info, pool)
            if reason is None:
                eligible.append(node)
            else:
                reasons.setdefault(reason, []).append(node.get_formula())
        if not eligible:
            details = '; '.join(f'{", ".join(formulas[:5])} {reason}' for reason, formulas in reasons.items())
            source = ', '.join(labels) or 'the given structures'
            raise GenerationError(
                f'none of the {len(nodes)} structure(s) in {source} can be a parent for {self.subset}: {details}'
            )
        return eligible

    # -- planning ----------------------------------------------------------------------------------------------------

    @property
    def existing_keys(self) -> set[str]:
        """The item keys of the structures in the target group (one query, made once)."""
        if self._existing_keys is None:
            self._existing_keys = _extra_values_in_group(self.group_label, 'mad_generation_key')
        return self._existing_keys

    @property
    def refused_keys(self) -> set[str]:
        """The keys of items refused by earlier runs of this generator (one query, made once)."""
        from aiida import orm

        if self._refused_keys is None:
            query = orm.QueryBuilder().append(
                orm.Dict,
                filters={'extras.mad_generator': self.generator.name, 'extras.mad_subset': self.subset},
                project='extras.mad_refused_keys',
            )
            self._refused_keys = {key for (keys,) in query.iterall() for key in keys or ()}
        return self._refused_keys

    def parent_of(self, index: int) -> orm.StructureData:
        """Return the parent of item ``index``: drawn from its parent stream, or the index-th of the seeded order."""
        if self.order is not None:
            return self.candidates[int(self.order[index])]
        rng = stream_rng(self.seed, index, PARENT_STREAM)
        return self.candidates[int(rng.integers(len(self.candidates)))]

    def finished(self, progress: GenerationProgress, pending: int = 0) -> bool:
        """Return whether the run is complete.

        It is when the target is reached (counting ``pending`` planned items as done), the parents are used up
        (per-parent generators), or too many items were refused.
        """
        if progress.done + pending >= self.target:
            return True
        if self.order is not None and progress.next_index >= len(self.candidates):
            return True
        return progress.refused + progress.refused_before >= self.refusal_limit

    def next_batch(self, progress: GenerationProgress) -> list[PlannedItem]:
        """Plan the next batch, updating ``progress`` for the items found done or refused already.

        :return: up to ``batch_size`` items to generate; empty when :meth:`finished`.
        """
        items: list[PlannedItem] = []
        while len(items) < self.batch_size and not self.finished(progress, pending=len(items)):
            index = progress.next_index
            progress.next_index += 1
            parent = self.parent_of(index)
            key = generation_key(self.settings, parent.uuid, index)
            if key in self.existing_keys:
                progress.done += 1
                progress.existing += 1
            elif key in self.refused_keys:
                progress.refused_before += 1
            else:
                items.append(PlannedItem(index=index, parent=parent, key=key))
        return items

    def batch_inputs(self, items: Sequence[PlannedItem]) -> dict[str, Any]:
        """Return the inputs of the calcfunction for ``items``: ``parameters`` and the ``parents`` namespace."""
        from aiida import orm

        labels = [f'p{position:04d}' for position in range(len(items))]
        settings = {
            **self.settings,
            'items': {label: {'index': item.index} for label, item in zip(labels, items, strict=True)},
        }
        return {
            'parameters': orm.Dict(settings),
            'parents': {label: item.parent for label, item in zip(labels, items, strict=True)},
        }

    # -- running -----------------------------------------------------------------------------------------------------

    def run_batch(self, items: Sequence[PlannedItem], progress: GenerationProgress) -> list[orm.StructureData]:
        """Generate ``items`` with one calcfunction call, add the structures to the group, and update ``progress``.

        :return: the new structures.
        """
        from aiida_mad.calculations.functions import run_generate_structures

        if not items:
            return []
        outputs, node = run_generate_structures(**self.batch_inputs(items))
        structures = list(outputs.get('structures', {}).values())
        if structures:
            _get_or_create_group(self.group_label).add_nodes(structures)
        refused = outputs['refused'].get_dict()['items'] if 'refused' in outputs else {}
        new_items = len(items) - len(refused)
        progress.done += new_items
        progress.new_items += new_items
        progress.new_structures += len(structures)
        progress.refused += len(refused)
        progress.calculations.append(node.pk)
        for record in refused.values():
            if len(progress.examples) < MAX_REPORTED_REFUSALS:
                reason = record['reasons'][-1] if record['reasons'] else 'no reason recorded'
                progress.examples.append(f'item {record["index"]} (parent {record["parent_formula"]}): {reason}')
        return structures

    def run(self, callback: Callable[[GenerationProgress], None] | None = None) -> GenerationProgress:
        """Generate until :meth:`finished`, batch after batch.

        :param callback: called with the progress after every batch (e.g. to advance a progress bar).
        :return: the final progress.
        """
        progress = GenerationProgress()
        while not self.finished(progress):
            items = self.next_batch(progress)
            self.run_batch(items, progress)
            if callback is not None:
                callback(progress)
        return progress

    def summary(self, progress: GenerationProgress) -> str:
        """Return a one-line account of a run for reports."""
        unit = 'parent crystal(s)' if self.generator.per_parent else 'structure(s)'
        text = (
            f'{self.subset}: {progress.done} of {self.target} {unit} in {self.group_label} '
            f'({progress.new_structures} structure(s) stored now, {progress.existing} already there, '
            f'{progress.refused} refused now, {progress.refused_before} refused earlier)'
        )
        return text
