"""The calcfunction of structure generation: one batch of structures per call, with full provenance.

:func:`generate_structures` (entry point ``mad.generate_structures``) is an ordinary calcfunction.
:func:`run_generate_structures` runs the very same function through :data:`BulkLinkGenerateStructures`, which records
identical provenance but writes the links without aiida-core's per-link validation queries (see
:mod:`aiida_mad.calculations.bulk`); this path stores about twice as many structures per second as bare
``StructureData.store()`` calls (``bench/bench_generate.py``). The batches are planned by
:class:`aiida_mad.workflows.generate.StructureGeneration`.
"""

from __future__ import annotations

from typing import Any

from aiida import orm
from aiida.engine import calcfunction

from aiida_mad.calculations.bulk import bulk_link_process_class, run_bulk_linked
from aiida_mad.structures.registry import generate_item, generation_key, get_generator, jsonable_info

__all__ = ('BulkLinkGenerateStructures', 'generate_structures', 'run_generate_structures')


@calcfunction
def generate_structures(parameters: orm.Dict, **inputs: Any) -> dict[str, Any]:
    """Generate a batch of structures from their parents with one of the MAD or MP-ALOE generators.

    ``parameters`` holds the subset, generator, generator parameters, element pool, ``min_distance_factor``,
    ``max_attempts``, the user's ``seed`` and ``items``: for each parent link label ``pNNNN`` of the ``parents``
    namespace, the item's ``index``. Item ``index`` draws attempt ``a`` from
    ``SeedSequence(seed, spawn_key=(index, 1, a))`` (see :mod:`aiida_mad.structures.registry`), so the same inputs
    always give the same structures. Every structure passes :func:`aiida_mad.structures.checks.check_structure`.

    Outputs: ``structures.sNNNN`` made from ``parents.pNNNN`` (``sNNNN_MM`` when one parent gives several, as
    molecular fragments do), with the extras ``mad_subset``, ``mad_generator``, ``mad_seed``, ``mad_parent`` (the
    parent's UUID), ``mad_index``, ``mad_attempt``, ``mad_generation_key`` and ``mad_info`` (the generator's notes,
    e.g. the Miller index of a slab); and ``refused``, a Dict with the reasons for every item that gave no
    structure, present only when there is one.

    :param parameters: the settings and items described above.
    :param inputs: the ``parents`` namespace of ``StructureData``.
    """
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


#: :func:`generate_structures` with bulk-written links (see :func:`bulk_link_process_class`).
BulkLinkGenerateStructures = bulk_link_process_class(generate_structures)


def run_generate_structures(
    parameters: orm.Dict, parents: dict[str, orm.StructureData]
) -> tuple[dict[str, Any], orm.CalcFunctionNode]:
    """Run :func:`generate_structures` through :data:`BulkLinkGenerateStructures`; return outputs and node.

    :param parameters: the calcfunction's ``parameters``.
    :param parents: the ``parents`` namespace.
    """
    return run_bulk_linked(BulkLinkGenerateStructures, parameters=parameters, parents=parents)
