"""The structure generators behind one calling convention, and the seeds and keys of the items they make.

Pure (no AiiDA import): the calcfunction :func:`aiida_mad.calculations.generate.generate_structures` calls
:func:`generate_item` for every item of a batch, and the batch planner
(:class:`aiida_mad.workflows.generate.StructureGeneration`) calls :func:`generation_key` and :func:`stream_rng` to plan
them. A new generator is one :class:`Generator` entry in :data:`GENERATORS` (its subset goes in
:data:`aiida_mad.constants.GENERATED_SUBSETS`) wrapping a pure function of this sub-package.

* **Seeds.** Every random number comes from ``numpy.random.SeedSequence(seed, spawn_key=(index, stream, ...))``: the
  parent of item ``index`` from stream :data:`PARENT_STREAM`, attempt ``a`` of its generator from
  ``(index, GENERATOR_STREAM, a)``, and the order of the parents of per-parent generators from
  ``(0, ORDER_STREAM)``. Item ``index`` therefore gets the same parent and the same structure whatever the batch
  size, however the run is split over several invocations, and whether it runs from the CLI or the work chain.
* **Keys.** Each item has a key, the sha256 of the canonical JSON of subset, generator, parameters, element pool,
  check threshold, seed, parent UUID and index (seed and index are left out for per-parent generators, whose result
  does not depend on them). Structures carry it as the extra ``mad_generation_key``; refused items are remembered by
  their key, so that a second run makes nothing twice.
* **Refusals and retries.** Every generated structure goes through
  :func:`aiida_mad.structures.checks.check_structure`. A refused draw is retried with the next attempt's random
  stream (same parent) up to ``max_attempts`` times; an item that fails every attempt is refused with its reasons.

The generator functions are imported when a generator runs: pymatgen and scipy take seconds to import, and the CLI
reads this registry for its ``--help``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from aiida_mad.constants import GENERATED_SUBSETS, IMPORTED_SUBSETS, seed_group_label, structure_group_label

if TYPE_CHECKING:
    from ase import Atoms

__all__ = (
    'DEFAULT_BATCH_SIZE',
    'DEFAULT_MIN_DISTANCE_FACTOR',
    'GENERATORS',
    'GENERATOR_STREAM',
    'MAX_BATCH_SIZE',
    'ORDER_STREAM',
    'PARENT_STREAM',
    'PROTOTYPE_SOURCE',
    'SEED_SUBSETS',
    'GenerationError',
    'Generator',
    'ItemResult',
    'ParentInfo',
    'canonical_json',
    'generate_item',
    'generation_key',
    'get_generator',
    'jsonable_info',
    'stream_rng',
)

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

#: Default fraction of the sum of covalent radii below which two atoms are too close.
DEFAULT_MIN_DISTANCE_FACTOR = 0.5


class GenerationError(ValueError):
    """Raised for bad input before anything is stored; the message names the offending group, element or value."""


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
            sources=(structure_group_label('mc3d'),),
            eligible=_needs_several_atoms,
        ),
        Generator(
            name='random-composition',
            subset='mc3d-random',
            function=_randomize,
            defaults={},
            per_parent=False,
            max_attempts=10,
            sources=(structure_group_label('mc3d'),),
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
            sources=(structure_group_label('mc3d'),),
            eligible=_needs_3d_and_pool_elements,
        ),
        Generator(
            name='cluster',
            subset='mc3d-cluster',
            function=_cluster,
            defaults={'min_atoms': 2, 'max_atoms': 8},
            per_parent=False,
            max_attempts=10,
            sources=(structure_group_label('mc3d'), structure_group_label('mc3d-rattled')),
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
            sources=(structure_group_label('shiftml-molcrys'),),
            eligible=_needs_pool_elements,
        ),
        Generator(
            name='mp-aloe',
            subset='mp-aloe',
            function=_mp_aloe,
            defaults={'scramble_sigma': 0.02, 'strain_sigma': 0.02},
            per_parent=False,
            max_attempts=10,
            sources=(seed_group_label(PROTOTYPE_SOURCE),),
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
# Seeds, keys and one item, called inside the calcfunction


def stream_rng(seed: int, *spawn_key: int) -> np.random.Generator:
    """Return the random generator of one stream: ``default_rng(SeedSequence(seed, spawn_key=spawn_key))``.

    :param seed: the user's seed, a non-negative integer.
    :param spawn_key: identifies the stream, e.g. ``(index, GENERATOR_STREAM, attempt)``.
    """
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=tuple(int(k) for k in spawn_key)))


def canonical_json(value: Any) -> str:
    """Return ``value`` as canonical JSON: sorted keys, no spaces, ASCII (the input of every key's hash)."""
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
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


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
