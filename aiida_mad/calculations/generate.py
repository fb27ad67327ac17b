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
from aiida.orm.nodes.data.structure import Kind
from ase import Atoms

from aiida_mad.calculations.bulk import bulk_link_process_class, linked_inputs, run_bulk_linked
from aiida_mad.constants import QUERY_CHUNK_SIZE
from aiida_mad.structures.registry import generate_item, generation_key, get_generator, jsonable_info

__all__ = ('BulkLinkGenerateStructures', 'generate_structures', 'run_generate_structures', 'structure_from_ase')


def structure_from_ase(atoms: Atoms) -> orm.StructureData:
    """Return the unstored ``StructureData`` that ``StructureData(ase=atoms)`` makes, its attributes built directly.

    ``StructureData.set_ase`` appends atom after atom through the node's attributes, rebuilding every kind for every
    atom (about 8 ms for a 30-atom cell, more than the rest of storing it). This builds the same ``kinds`` and
    ``sites`` with aiida-core's own ``Kind`` and ``Site`` and the same rules (a new kind per distinct symbol, mass
    and tag, named with a counter on a clash) and sets them at once; ``cell`` and ``pbc`` go through the node's
    setters. ``tests/calculations/test_generate.py`` compares the attributes with those of ``set_ase``.
    """
    node = orm.StructureData(cell=atoms.cell, pbc=atoms.pbc)
    kinds: list[Kind] = []
    name_of: dict[tuple, str] = {}  # atoms with the same symbol, mass and tag always get the same (first) kind
    sites = []
    for symbol, mass, tag, position in zip(
        atoms.get_chemical_symbols(), atoms.get_masses(), atoms.get_tags(), atoms.positions, strict=True
    ):
        key = (symbol, float(mass), int(tag))
        name = name_of.get(key)
        if name is None:
            kind = Kind(ase=atoms[len(sites)])
            same = next((existing for existing in kinds if kind.compare_with(existing)[0]), None)
            if same is None:
                names = [existing.name for existing in kinds]
                simple, counter = kind.name, 1
                while kind.name in names:
                    kind.name = f'{simple}{counter}'
                    counter += 1
                kinds.append(Kind(kind=kind))
                same = kind
            name = name_of[key] = same.name
        sites.append({'position': tuple(float(value) for value in position), 'kind_name': name})
    node.base.attributes.set_many({'kinds': [kind.get_raw() for kind in kinds], 'sites': sites})
    return node


class _Parent:
    """What the calcfunction reads of one parent: its UUID, atoms and formula, from a node or from stored values."""

    def __init__(self, uuid: str, node: orm.StructureData):
        self.uuid, self._node, self._atoms = uuid, node, None

    def atoms(self) -> Atoms:
        if self._atoms is None:
            self._atoms = self._node.get_ase()
        return self._atoms

    def formula(self) -> str:
        return self._node.get_formula()


def _parents(inputs: dict[str, Any]) -> dict[str, _Parent]:
    """Return ``{label: parent}`` from the ``parents`` namespace, or from the parents linked by pk (bulk path).

    Parents given by pk (:func:`run_generate_structures` with pks) are read in one query per
    :data:`~aiida_mad.constants.QUERY_CHUNK_SIZE` into unstored ``StructureData`` with the stored attributes, so
    ``get_ase`` and ``get_formula`` give what they give on the stored nodes, without loading any node.
    """
    by_pk = linked_inputs().get('parents')
    if by_pk is None:
        shared: dict[str, _Parent] = {}  # a parent drawn twice is read once
        return {
            label: shared.setdefault(node.uuid, _Parent(node.uuid, node))
            for label, node in inputs.get('parents', {}).items()
        }
    found: dict[int, _Parent] = {}
    pks = sorted(set(by_pk.values()))
    for first in range(0, len(pks), QUERY_CHUNK_SIZE):
        chunk = pks[first : first + QUERY_CHUNK_SIZE]
        query = orm.QueryBuilder().append(
            orm.StructureData, filters={'id': {'in': chunk}}, project=['id', 'uuid', 'attributes']
        )
        for pk, uuid, attributes in query.iterall():
            node = orm.StructureData()
            node.base.attributes.set_many(attributes)
            found[pk] = _Parent(uuid, node)
    missing = sorted(label for label, pk in by_pk.items() if pk not in found)
    if missing:
        raise ValueError(f'parents {", ".join(missing)} are no stored StructureData (pk {by_pk[missing[0]]})')
    return {label: found[pk] for label, pk in by_pk.items()}


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
    parents = _parents(inputs)
    unexpected = sorted(set(inputs) - {'parents'})
    if unexpected:
        raise ValueError(f'unexpected inputs {", ".join(unexpected)}: parents go in the `parents` namespace')
    missing = sorted(set(settings['items']) - set(parents))
    if missing:
        raise ValueError(f'items without a parent input: {", ".join(missing)}')
    generator = get_generator(settings['generator'])

    structures: dict[str, orm.StructureData] = {}
    refused: dict[str, Any] = {}
    for label in sorted(settings['items']):
        index = settings['items'][label]['index']
        parent = parents[label]
        key = generation_key(settings, parent.uuid, index)
        result = generate_item(settings, parent.atoms(), index)
        output_label = 's' + label[1:]
        for number, (atoms, attempt) in enumerate(result.structures):
            structure = structure_from_ase(atoms)
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
                'parent_formula': parent.formula(),
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
    parameters: orm.Dict, parents: dict[str, orm.StructureData | int]
) -> tuple[dict[str, Any], orm.CalcFunctionNode]:
    """Run :func:`generate_structures` through :data:`BulkLinkGenerateStructures`; return outputs and node.

    :param parameters: the calcfunction's ``parameters``.
    :param parents: the ``parents`` namespace: nodes, or pks of stored ``StructureData`` (then linked in bulk with
        the same labels and never loaded; see :func:`~aiida_mad.calculations.bulk.run_bulk_linked`).
    """
    if parents and all(isinstance(parent, int) for parent in parents.values()):
        return run_bulk_linked(BulkLinkGenerateStructures, parameters=parameters, linked={'parents': parents})
    return run_bulk_linked(BulkLinkGenerateStructures, parameters=parameters, parents=parents)
