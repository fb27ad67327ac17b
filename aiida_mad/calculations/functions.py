"""Calcfunctions of aiida-mad: the structure generators, one batch of structures per call.

:func:`generate_structures` is an ordinary calcfunction. :func:`run_generate_structures` runs the very same function
through :class:`BulkLinkGenerateStructures`, which records identical provenance (same process type, label, inputs,
outputs and link labels) but writes the links without the per-link validation queries of aiida-core. Those queries
(a uniqueness check and a graph-cycle check for every link) cost several times more than storing the structure
itself: measured on SQLite, one plain calcfunction call per structure stores about 12 times fewer structures per
second than ``StructureData.store()``, and batches through the plain calcfunction reach only a fifth to a third of
it, short of the half the issue asks for; this path reaches about twice the raw rate. The checks cannot fail here
by construction, which is why skipping them is safe: the process node is new, every output is a new unstored node,
and the link labels are the distinct keys of the input and output dictionaries. See ``bench/bench_generate.py``.
"""

from __future__ import annotations

from typing import Any

from aiida import orm
from aiida.common.links import LinkType
from aiida.engine import calcfunction
from aiida.orm.utils.links import LinkTriple

__all__ = ('BulkLinkGenerateStructures', 'generate_structures', 'run_generate_structures')


@calcfunction
def generate_structures(parameters: orm.Dict, **inputs: Any) -> dict[str, Any]:
    """Generate a batch of structures from their parents with one of the MAD or MP-ALOE generators.

    ``parameters`` holds the subset, generator, generator parameters, element pool, ``min_distance_factor``,
    ``max_attempts``, the user's ``seed`` and ``items``: for each parent link label ``pNNNN`` of the ``parents``
    namespace, the item's ``index``. Item ``index`` draws attempt ``a`` from
    ``SeedSequence(seed, spawn_key=(index, 1, a))`` (see :mod:`aiida_mad.generation`), so the same inputs always
    give the same structures. Every structure passes :func:`aiida_mad.structures.checks.check_structure`.

    Outputs: ``structures.sNNNN`` made from ``parents.pNNNN`` (``sNNNN_MM`` when one parent gives several, as
    molecular fragments do), with the extras ``mad_subset``, ``mad_generator``, ``mad_seed``, ``mad_parent`` (the
    parent's UUID), ``mad_index``, ``mad_attempt``, ``mad_generation_key`` and ``mad_info`` (the generator's notes,
    e.g. the Miller index of a slab); and ``refused``, a Dict with the reasons for every item that gave no
    structure, present only when there is one.

    :param parameters: the settings and items described above.
    :param inputs: the ``parents`` namespace of ``StructureData``.
    """
    from aiida_mad.generation import generate_item, generation_key, get_generator, jsonable_info

    settings = parameters.get_dict()
    parents = inputs.get('parents', {})
    unexpected = sorted(set(inputs) - {'parents'})
    if unexpected:
        raise ValueError(f'unexpected inputs {", ".join(unexpected)}: parents go in the `parents` namespace')
    missing = sorted(set(settings['items']) - set(parents))
    if missing:
        raise ValueError(f'items without a parent input: {", ".join(missing)}')
    generator = get_generator(settings['generator'])

    structures: dict[str, orm.StructureData] = {}
    refused: dict[str, Any] = {}
    parent_atoms = {}
    for label in sorted(settings['items']):
        index = settings['items'][label]['index']
        parent = parents[label]
        if parent.uuid not in parent_atoms:
            parent_atoms[parent.uuid] = parent.get_ase()
        key = generation_key(settings, parent.uuid, index)
        result = generate_item(settings, parent_atoms[parent.uuid], index)
        output_label = 's' + label[1:]
        for number, (atoms, attempt) in enumerate(result.structures):
            structure = orm.StructureData(ase=atoms)
            extras = {
                'mad_subset': settings['subset'],
                'mad_generator': settings['generator'],
                'mad_seed': settings['seed'],
                'mad_parent': parent.uuid,
                'mad_index': index,
                'mad_attempt': attempt,
                'mad_generation_key': key,
                'mad_info': jsonable_info(atoms.info),
            }
            if generator.per_parent:
                extras['mad_fragment'] = number
            # Extras set before storing are written with the node: no second database write per structure.
            structure.base.extras.set_many(extras)
            structures[f'{output_label}_{number:02d}' if generator.per_parent else output_label] = structure
        if not result.structures:
            refused[label] = {
                'index': index,
                'parent': parent.uuid,
                'parent_formula': parent.get_formula(),
                'key': key,
                'attempts': result.attempts,
                'reasons': result.reasons,
            }

    outputs: dict[str, Any] = {}
    if structures:
        outputs['structures'] = structures
    if refused:
        report = orm.Dict({'items': refused})
        report.base.extras.set_many(
            {
                'mad_subset': settings['subset'],
                'mad_generator': settings['generator'],
                'mad_refused_keys': sorted(record['key'] for record in refused.values()),
            }
        )
        outputs['refused'] = report
    return outputs


class BulkLinkGenerateStructures(generate_structures.process_class):
    """:func:`generate_structures` with its input and output links written without per-link queries.

    The node it creates is indistinguishable from one of the plain calcfunction: same process type (it loads back as
    :func:`generate_structures`), label, function source, inputs, outputs and link labels. Only two methods change:

    * ``_setup_inputs`` puts the input links in the node's link cache (``incoming_cache``), stored with the node,
      instead of validating each with database queries; the process node is new, so no link can clash or close a
      cycle.
    * ``update_outputs`` does the same for the outputs, which must be new nodes, and stores them all in one
      transaction, so a failure leaves none of them behind.
    """

    @classmethod
    def build_process_type(cls) -> str:
        """Return the process type of :func:`generate_structures`, so that the node loads back as that function."""
        return generate_structures.process_class.build_process_type()

    def _build_process_label(self) -> str:
        return generate_structures.__name__

    def _setup_inputs(self) -> None:
        # Appending to the cache directly also skips its duplicate check, which compares every new link with every
        # cached one (quadratic in the batch size); the labels are the distinct keys of the inputs.
        self.node.base.links.incoming_cache.extend(
            LinkTriple(node, LinkType.INPUT_CALC, name)
            for name, node in self._flat_inputs().items()
            if node is not None
        )

    def update_outputs(self) -> None:
        """Link and store the new outputs in one transaction, without per-link validation queries."""
        if self.metadata.store_provenance is False:
            return
        linked = set(self.node.base.links.get_outgoing(link_type=LinkType.CREATE).all_link_labels())
        new_outputs = [(label, node) for label, node in self._flat_outputs().items() if label not in linked]
        stored = [label for label, node in new_outputs if node.is_stored]
        if stored:
            raise ValueError(f'outputs {", ".join(stored)} are stored already: a calcfunction must create its outputs')
        if not new_outputs:
            return
        with self.node.backend.transaction():
            for label, node in new_outputs:
                node.base.links.incoming_cache.append(LinkTriple(self.node, LinkType.CREATE, label))
                node.store()


def run_generate_structures(
    parameters: orm.Dict, parents: dict[str, orm.StructureData]
) -> tuple[dict[str, Any], orm.CalcFunctionNode]:
    """Run :func:`generate_structures` through :class:`BulkLinkGenerateStructures`; return outputs and node.

    Called from a running process (a work chain step), it runs in that process's runner and gets a ``CALL`` link,
    as a calcfunction called there would.

    :param parameters: the calcfunction's ``parameters``.
    :param parents: the ``parents`` namespace.
    """
    from aiida.engine.processes.process import Process
    from aiida.manage import get_manager

    current = Process.current()
    runner = current.runner if isinstance(current, Process) else get_manager().create_runner(communicator=None)
    inputs = BulkLinkGenerateStructures.create_inputs(parameters=parameters, parents=parents)
    process = BulkLinkGenerateStructures(inputs=inputs, runner=runner)
    outputs = process.execute()
    return outputs, process.node
