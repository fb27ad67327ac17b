"""Structure generation with provenance: the batch planner and ``GenerateWorkChain`` (``mad.generate``).

:class:`StructureGeneration` plans the generation of one subset over groups of parent structures and runs it in
batches of the calcfunction :func:`aiida_mad.calculations.generate.generate_structures`; ``aiida-mad structures
generate`` calls it directly, :class:`GenerateWorkChain` one batch per step. The generators, seeds and keys are those
of :mod:`aiida_mad.structures.registry`; the groups are handled by :mod:`aiida_mad.storage`.

Design, decided once here:

* **Batches.** One calcfunction call generates a batch of items (``batch_size``, default 100). Its inputs are one
  parent per item (``parents.p0000``, ``parents.p0001``, ...; a parent drawn twice is linked twice) and one ``Dict``
  with the subset, generator, parameters, element pool, check settings, the user's seed and each item's index. Its
  outputs are the structures, ``structures.s0000`` made from ``parents.p0000`` and so on (``s0000_00``, ``s0000_01``
  for the several molecules of one crystal), plus a ``refused`` Dict when items were refused. So every structure
  traces back by provenance to its parent and to the parameters and seed, while the cost of a process is paid once
  per batch, not once per structure.
* **Parents.** The eligible structures of the parent groups, deduplicated and sorted by a stable identity
  (:func:`parent_identity`: the seed name, import key or generation key, else the structure's content), so the same
  ``--seed`` draws the same parents in any profile, after archive export and import too (pks and UUIDs differ
  between fresh profiles).
* **Idempotence.** A new run skips the item keys (:func:`~aiida_mad.structures.registry.generation_key`) found in the
  target group and those of items refused earlier (kept in the ``refused`` Dict's extras), so running the same
  command twice adds nothing the second time, and ``--count 200`` after ``--count 100`` with the same seed adds the
  next 100.
* **Refusals.** An item that fails every attempt is refused with its reasons and the run moves on to further indices
  until ``count`` items have structures. A run gives up when more items were refused than asked for (at least
  :data:`MIN_REFUSAL_LIMIT`), which means the parents or parameters cannot work.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from aiida import orm
from aiida.common.exceptions import NotExistent
from aiida.engine import WorkChain, while_

from aiida_mad.calculations.bulk import add_nodes_by_pk, stored_pks
from aiida_mad.calculations.generate import run_generate_structures
from aiida_mad.constants import GENERATED_SUBSETS, IMPORTED_SUBSETS, structure_group_label
from aiida_mad.storage import extra_values_in_group, get_or_create_group
from aiida_mad.structures.elements import element_pool as make_pool
from aiida_mad.structures.registry import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MIN_DISTANCE_FACTOR,
    GENERATORS,
    MAX_BATCH_SIZE,
    ORDER_STREAM,
    PARENT_STREAM,
    GenerationError,
    ParentInfo,
    canonical_json,
    generation_key,
    stream_rng,
)

__all__ = ('GenerateWorkChain', 'GenerationProgress', 'PlannedItem', 'StructureGeneration')

#: A run gives up once more items were refused than were asked for, but never before this many.
MIN_REFUSAL_LIMIT = 10

#: At most this many refusal reasons are kept verbatim for the report; the rest are only counted.
MAX_REPORTED_REFUSALS = 10

#: The extras that identify a structure independently of its profile, in order of preference.
IDENTITY_EXTRAS = ('mad_seed_name', 'mad_import_key', 'mad_generation_key')


def parent_identity(node: orm.StructureData) -> str:
    """Return an identity of ``node`` that is the same in every profile, for ordering parents reproducibly.

    The bundled seed's name, the import key or the generation key when the node has one (prefixed by the extra's
    name); otherwise a hash of its content (cell, periodicity, kinds and positions rounded to 1e-8 Å).
    """
    extras = node.base.extras.all
    for name in IDENTITY_EXTRAS:
        value = extras.get(name)
        if value:
            return f'{name}:{value}'
    content = {
        'cell': np.round(np.asarray(node.cell, dtype=float), 8).tolist(),
        'pbc': list(node.pbc),
        'sites': [[site.kind_name, np.round(site.position, 8).tolist()] for site in node.sites],
    }
    return 'content:' + hashlib.sha256(canonical_json(content).encode()).hexdigest()


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
    """One item of a batch: its index, its parent node, its key and the parent's pk."""

    index: int
    parent: orm.StructureData
    key: str
    parent_pk: int


class StructureGeneration:
    """Generate one subset from parent structures in batches of calcfunction calls, into a group, idempotently.

    Everything is validated in the constructor, before anything is stored: the subset, the count and seed, the
    generator parameters, the element pool, the parent groups (they must exist and hold structures) and the
    eligibility of the parents. Then :meth:`run` (CLI, Python) or :meth:`next_batch` plus :meth:`run_batch` (the work
    chain, one step per batch) do the work. See this module's docstring and :mod:`aiida_mad.structures.registry` for
    batches, seeds, keys and refusals.

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
        # Read once: a commit expires every node in the session, and reading a pk or UUID again reloads the node.
        self._candidate_ids = [(node.pk, node.uuid) for node in self.candidates]
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
        """Return the eligible parents in :func:`parent_identity` order, raising :class:`GenerationError`."""
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
        for node in sorted(nodes.values(), key=lambda node: (parent_identity(node), node.uuid)):
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
            self._existing_keys = extra_values_in_group(self.group_label, 'mad_generation_key')
        return self._existing_keys

    @property
    def refused_keys(self) -> set[str]:
        """The keys of items refused by earlier runs of this generator (one query, made once)."""
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
        return self.candidates[self._parent_position(index)]

    def _parent_position(self, index: int) -> int:
        if self.order is not None:
            return int(self.order[index])
        rng = stream_rng(self.seed, index, PARENT_STREAM)
        return int(rng.integers(len(self.candidates)))

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
            position = self._parent_position(index)
            parent_pk, parent_uuid = self._candidate_ids[position]
            key = generation_key(self.settings, parent_uuid, index)
            if key in self.existing_keys:
                progress.done += 1
                progress.existing += 1
            elif key in self.refused_keys:
                progress.refused_before += 1
            else:
                items.append(PlannedItem(index=index, parent=self.candidates[position], key=key, parent_pk=parent_pk))
        return items

    def batch_inputs(self, items: Sequence[PlannedItem], by_pk: bool = False) -> dict[str, Any]:
        """Return the inputs of the calcfunction for ``items``: ``parameters`` and the ``parents`` namespace.

        :param by_pk: give the parents as pks (for :func:`run_generate_structures`, which links them in bulk).
        """
        labels = [f'p{position:04d}' for position in range(len(items))]
        settings = {
            **self.settings,
            'items': {label: {'index': item.index} for label, item in zip(labels, items, strict=True)},
        }
        return {
            'parameters': orm.Dict(settings),
            'parents': {
                label: item.parent_pk if by_pk else item.parent for label, item in zip(labels, items, strict=True)
            },
        }

    # -- running -----------------------------------------------------------------------------------------------------

    def run_batch(self, items: Sequence[PlannedItem], progress: GenerationProgress) -> list[orm.StructureData]:
        """Generate ``items`` with one calcfunction call, add the structures to the group, and update ``progress``.

        :return: the new structures.
        """
        if not items:
            return []
        outputs, node = run_generate_structures(**self.batch_inputs(items, by_pk=True))
        structures = list(outputs.get('structures', {}).values())
        if structures:
            add_nodes_by_pk(get_or_create_group(self.group_label), stored_pks(structures))
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


def _generation_from_inputs(inputs) -> StructureGeneration:
    """Return the :class:`StructureGeneration` the inputs describe; raises :class:`GenerationError` on bad input."""
    return StructureGeneration(
        inputs['subset'].value,
        parent_groups=inputs['parent_groups'].get_list() if 'parent_groups' in inputs else None,
        parents=list(inputs.get('structures', {}).values()),
        count=inputs['count'].value if 'count' in inputs else None,
        seed=inputs['seed'].value,
        parameters=inputs['parameters'].get_dict() if 'parameters' in inputs else None,
        element_pool=inputs['element_pool'].get_list() if 'element_pool' in inputs else None,
        min_distance_factor=inputs['min_distance_factor'].value,
        max_attempts=inputs['max_attempts'].value if 'max_attempts' in inputs else None,
        batch_size=inputs.get('batch_size', DEFAULT_BATCH_SIZE),
        group_label=inputs['group_label'].value if 'group_label' in inputs else None,
    )


def validate_inputs(inputs, _):
    """Validate all inputs together, parent groups included, so that bad input fails before anything is stored."""
    if 'subset' not in inputs:
        return None
    try:
        _generation_from_inputs(inputs)
    except GenerationError as exception:
        return str(exception)
    return None


class GenerateWorkChain(WorkChain):
    """Generate ``count`` structures of a subset from parent structures into ``mad/structures/<subset>``.

    Each step makes one batch with the calcfunction ``generate_structures`` (called from the step, so it hangs below
    this work chain in the provenance graph) and adds the new structures to the group. The planning, seeds and keys
    are those of :class:`StructureGeneration`, shared with ``aiida-mad structures generate``:
    the same inputs give the same structures, and structures already in the group are not made again.
    """

    @classmethod
    def define(cls, spec):
        """Define the process specification."""
        super().define(spec)
        spec.input('subset', valid_type=orm.Str, help=f'The subset to generate: {", ".join(GENERATED_SUBSETS)}.')
        spec.input(
            'parent_groups',
            valid_type=orm.List,
            required=False,
            help="Labels of the groups holding the parents; defaults to the subset generator's groups.",
        )
        spec.input_namespace(
            'structures',
            valid_type=orm.StructureData,
            dynamic=True,
            required=False,
            help='Parent structures given directly (together with `parent_groups` if both are given).',
        )
        spec.input(
            'count',
            valid_type=orm.Int,
            required=False,
            help='Items to have in the group: structures, or parent crystals for shiftml-molfrags (default: all).',
        )
        spec.input('seed', valid_type=orm.Int, default=lambda: orm.Int(0), help='The seed, a non-negative integer.')
        spec.input('parameters', valid_type=orm.Dict, required=False, help='Generator parameters.')
        spec.input('element_pool', valid_type=orm.List, required=False, help='Restrict the pool to these elements.')
        spec.input(
            'min_distance_factor',
            valid_type=orm.Float,
            default=lambda: orm.Float(DEFAULT_MIN_DISTANCE_FACTOR),
            help='Pairs closer than this times the sum of covalent radii are refused.',
        )
        spec.input('max_attempts', valid_type=orm.Int, required=False, help='Draws per item before it is refused.')
        spec.input('group_label', valid_type=orm.Str, required=False, help='Target group (mad/structures/<subset>).')
        spec.input(
            'batch_size',
            valid_type=int,
            non_db=True,
            default=DEFAULT_BATCH_SIZE,
            help='Items per calcfunction call; does not change the structures.',
        )
        spec.inputs.validator = validate_inputs
        spec.outline(
            cls.setup,
            while_(cls.should_run_batch)(cls.run_batch),
            cls.finalize,
        )
        spec.exit_code(
            201,
            'ERROR_INVALID_INPUTS',
            message='The inputs no longer describe a valid generation (groups changed after submission?): {message}',
        )
        spec.exit_code(
            310,
            'ERROR_TOO_MANY_REFUSED',
            message='Only {done} of {target} items have structures: {refused} items were refused. {examples}',
        )

    @property
    def generation(self) -> StructureGeneration:
        """The generation plan; rebuilt from the inputs after a reload (it holds nodes, so it is not checkpointed)."""
        if getattr(self, '_generation', None) is None:
            self._generation = _generation_from_inputs(self.inputs)
        return self._generation

    def setup(self):
        """Check the inputs against the database once more and start the progress record."""
        try:
            generation = self.generation
        except GenerationError as exception:
            return self.exit_codes.ERROR_INVALID_INPUTS.format(message=str(exception))
        self.ctx.progress = GenerationProgress().as_dict()
        self.report(
            f'generating {generation.target} item(s) of {generation.subset} into {generation.group_label} from '
            f'{len(generation.candidates)} eligible parent(s), seed {generation.seed}'
        )
        return None

    def should_run_batch(self) -> bool:
        """Return whether items remain to be generated."""
        return not self.generation.finished(GenerationProgress.from_dict(self.ctx.progress))

    def run_batch(self):
        """Plan and generate one batch, and add its structures to the group."""
        progress = GenerationProgress.from_dict(self.ctx.progress)
        items = self.generation.next_batch(progress)
        structures = self.generation.run_batch(items, progress)
        self.ctx.progress = progress.as_dict()
        if items:
            self.report(f'batch of {len(items)} item(s): {len(structures)} structure(s) stored')

    def finalize(self):
        """Report what was done; fail with 310 if too many items were refused to reach the count."""
        generation = self.generation
        progress = GenerationProgress.from_dict(self.ctx.progress)
        self.node.base.extras.set_many(
            {
                'mad_subset': generation.subset,
                'mad_done': progress.done,
                'mad_new_structures': progress.new_structures,
                'mad_existing': progress.existing,
                'mad_refused': progress.refused,
            }
        )
        self.report(generation.summary(progress))
        if progress.done < generation.target and not generation.generator.per_parent:
            return self.exit_codes.ERROR_TOO_MANY_REFUSED.format(
                done=progress.done,
                target=generation.target,
                refused=progress.refused + progress.refused_before,
                examples='; '.join(progress.examples[:3]),
            )
        return None
