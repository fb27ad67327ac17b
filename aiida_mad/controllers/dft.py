"""Throttled DFT labelling of a structure group: ``DftSubmissionController``.

A structure is labelled once per level of theory: the unique key of a run is the structure's uuid plus the
fingerprint of the protocol (``mad_source_uuid``, ``mad_fingerprint`` extras on the work chain). Re-running the
controller never duplicates a calculation, and ``max_concurrent`` caps the work chains that are active at once.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

from aiida import engine, orm
from aiida_submission_controller import FromGroupSubmissionController
from pydantic import PrivateAttr

#: Extras on every submitted work chain that identify what it labels.
UNIQUE_EXTRA_KEYS = ('mad_source_uuid', 'mad_fingerprint')

#: States reported per subset by :meth:`DftSubmissionController.status`.
STATES = ('pending', 'running', 'finished', 'outlier', 'failed')


@dataclasses.dataclass
class SubsetStatus:
    """Counts of one subset, and the exit statuses of its failed work chains."""

    counts: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(STATES, 0))
    exit_statuses: collections.Counter = dataclasses.field(default_factory=collections.Counter)


class DftSubmissionController(FromGroupSubmissionController):
    """Submit ``MadDftWorkChain`` for every structure of ``parent_group_label``, at most ``max_concurrent`` at once."""

    code: str
    """Full label of the pw.x code, e.g. ``pw@cluster``."""
    protocol: str = 'mad'
    """Protocol of ``MadDftWorkChain``: ``mad``, ``mad-dos`` or ``fast``."""
    overrides: dict[str, Any] | None = None
    """Overrides merged over the protocol (e.g. ``{'pseudo_family': ...}``)."""
    options: dict[str, Any] | None = None
    """``metadata.options`` of the pw.x calculations (resources, walltime, queue, account...)."""
    unique_extra_keys: tuple = UNIQUE_EXTRA_KEYS
    """The structure uuid and the level-of-theory fingerprint."""

    _fingerprint: str | None = PrivateAttr(default=None)

    @property
    def fingerprint(self) -> str:
        """Return the level-of-theory fingerprint of the runs this controller submits."""
        from aiida_mad.workflows.dft import protocol_fingerprint

        if self._fingerprint is None:
            self._fingerprint = protocol_fingerprint(orm.load_code(self.code), self.protocol, self.overrides)
        return self._fingerprint

    def structure_query(self, projections) -> orm.QueryBuilder:
        """Return a query over the structures of the parent group."""
        query = orm.QueryBuilder()
        query.append(orm.Group, filters={'id': self.parent_group.pk}, tag='group')
        query.append(orm.StructureData, filters=self.filters or {}, project=projections, with_group='group')
        return query

    def get_all_extras_to_submit(self) -> list[tuple[str, str]]:
        """Return ``(structure uuid, fingerprint)`` for every structure of the parent group."""
        fingerprint = self.fingerprint
        return [(uuid, fingerprint) for uuid in self.structure_query(['uuid']).all(flat=True)]

    def get_parent_node_from_extras(self, extras_values):
        """Return the structure identified by its uuid."""
        return orm.load_node(extras_values[0])

    def get_inputs_and_processclass_from_extras(self, extras_values):
        """Return the builder of ``MadDftWorkChain`` for one structure (a builder, despite the method's name)."""
        from aiida_mad.workflows.dft import MadDftWorkChain

        structure = self.get_parent_node_from_extras(extras_values)
        return MadDftWorkChain.get_builder_from_protocol(
            self.code, structure, self.protocol, self.overrides, options=self.options
        )

    def pending_uuids(self) -> list[str]:
        """Return the uuids of the structures without a work chain of this fingerprint, in a stable order."""
        submitted = {uuid for uuid, fingerprint in self._check_submitted_extras() if fingerprint == self.fingerprint}
        return sorted(set(self.structure_query(['uuid']).all(flat=True)) - submitted)

    def validate_pending(self) -> None:
        """Raise one ``ValueError`` naming every problem of the pending structures, before anything is submitted.

        Elements that the pseudopotential family lacks are listed once for the whole group (with how many
        structures need them); implausible structures are listed by pk with their reasons.
        """
        from aiida_mad.structures.cells import DimensionalityError, dimensionality
        from aiida_mad.structures.checks import check_structure
        from aiida_mad.structures.elements import element_pool
        from aiida_mad.workflows.dft import MadDftWorkChain, code_version, load_family

        code = orm.load_code(self.code)
        code_version(code)
        inputs = MadDftWorkChain.get_protocol_inputs(self.protocol, self.overrides)
        family = load_family(inputs['pseudo_family'])
        available, pool = set(family.elements), element_pool(family.elements)
        pending = set(self.pending_uuids())
        missing: collections.Counter = collections.Counter()
        refused = []
        for uuid, pk, structure in self.structure_query(['uuid', 'id', '*']).iterall():
            if uuid not in pending:
                continue
            lacking = set(structure.get_symbols_set()) - available
            missing.update(lacking)
            atoms = structure.get_ase()
            reasons = [] if lacking else check_structure(atoms, pool=pool)
            try:
                dimensionality(atoms)
            except DimensionalityError as exception:
                reasons.append(str(exception))
            if reasons:
                refused.append(f'{structure.get_formula()}<{pk}>: ' + '; '.join(reasons))
        problems = []
        if missing:
            listed = ', '.join(f'{element} ({count} structures)' for element, count in sorted(missing.items()))
            problems.append(f'no pseudopotential in `{family.label}` for {listed}')
        if refused:
            shown = refused[:20] + ([f'... and {len(refused) - 20} more'] if len(refused) > 20 else [])
            problems.append('implausible structures: ' + ' | '.join(shown))
        if problems:
            raise ValueError('nothing submitted: ' + '; '.join(problems))

    def submit_new_batch(self, dry_run=False, sort=True, verbose=False, sleep=0):
        """Submit up to the free slots; unlike the base class, let errors propagate instead of logging them away.

        Every submission is complete (extras set, node in the group) before the next one starts, so an error
        leaves no half-submitted work behind. Returns ``{(uuid, fingerprint): node}`` of what was submitted.
        """
        pending = self.pending_uuids()
        slots = self.num_available_slots
        batch = [(uuid, self.fingerprint) for uuid in pending[:slots]]
        if dry_run:
            return dict.fromkeys(batch)
        submitted = {}
        group = self.group
        for extras in batch:
            node = engine.submit(self.get_inputs_and_processclass_from_extras(extras))
            node.base.extras.set_many(dict(zip(UNIQUE_EXTRA_KEYS, extras, strict=True)))
            group.add_nodes([node])
            submitted[extras] = node
        return submitted

    def status(self) -> dict[str, SubsetStatus]:
        """Return the state of every structure of the parent group at this fingerprint, per subset.

        States: pending (not submitted), running, finished, outlier (finished with max |F| above the threshold),
        failed (with the exit statuses).
        """
        subsets = dict(self.structure_query(['uuid', 'extras.mad_subset']).all())
        processes = orm.QueryBuilder()
        processes.append(orm.Group, filters={'label': self.group_label}, tag='group')
        processes.append(
            orm.WorkChainNode,
            with_group='group',
            filters={'extras.mad_fingerprint': self.fingerprint},
            project=[
                'extras.mad_source_uuid',
                'attributes.process_state',
                'attributes.exit_status',
                'extras.mad_outlier',
            ],
        )
        result: dict[str, SubsetStatus] = collections.defaultdict(SubsetStatus)
        seen = set()
        for uuid, state, exit_status, outlier in processes.iterall():
            if uuid not in subsets:
                continue
            seen.add(uuid)
            entry = result[subsets[uuid] or 'unknown']
            if state in ('finished', 'excepted', 'killed'):
                if exit_status == 0:
                    entry.counts['outlier' if outlier else 'finished'] += 1
                else:
                    entry.counts['failed'] += 1
                    entry.exit_statuses[exit_status if state == 'finished' else state] += 1
            else:
                entry.counts['running'] += 1
        for uuid, subset in subsets.items():
            if uuid not in seen:
                result[subset or 'unknown'].counts['pending'] += 1
        return dict(sorted(result.items()))

    @property
    def is_done(self) -> bool:
        """Return whether every structure has a terminated work chain of this fingerprint."""
        return not self.pending_uuids() and self.num_active_slots == 0


def default_process_group_label(parent_group_label: str) -> str:
    """Return ``mad/dft/<subset>`` for ``mad/structures/<subset>``, else ``mad/dft/<parent label>``."""
    prefix = 'mad/structures/'
    name = parent_group_label[len(prefix) :] if parent_group_label.startswith(prefix) else parent_group_label
    return f'mad/dft/{name}'
