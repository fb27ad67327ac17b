"""Calcfunctions of aiida-mad: the structure generators, one batch of structures per call.

:func:`generate_structures` is an ordinary calcfunction. :func:`run_generate_structures` runs the very same function
through :data:`BulkLinkGenerateStructures`, which records identical provenance (same process type, label, inputs,
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
from aiida.orm.nodes.process.process import ProcessNodeCaching
from aiida.orm.utils.links import LinkTriple

__all__ = (
    'BulkLinkGenerateStructures',
    'build_dataset',
    'bulk_link_process_class',
    'generate_structures',
    'run_bulk_linked',
    'run_generate_structures',
)


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


class StoredInputHashCaching(ProcessNodeCaching):
    """Caching of a process node that hashes its inputs by the hashes stored with them (see ``_aiida_hash``)."""

    def get_objects_to_hash(self) -> list[Any]:
        """Return what enters the hash: as aiida-core's, with each input's stored hash (computed only if missing)."""
        objects = super(ProcessNodeCaching, self).get_objects_to_hash()
        # One query for every input's label and stored hash; no input node is loaded unless its hash is missing.
        query = orm.QueryBuilder()
        query.append(orm.ProcessNode, filters={'id': self._node.pk}, tag='process')
        query.append(
            orm.Node,
            with_outgoing='process',
            edge_filters={'type': {'in': [LinkType.INPUT_CALC.value, LinkType.INPUT_WORK.value]}},
            edge_project='label',
            project=['id', f'extras.{self._HASH_EXTRA_KEY}'],
            tag='input',
            edge_tag='link',
        )
        inputs = {}
        for row in query.iterdict():
            label, pk, stored = row['link']['label'], row['input']['id'], row['input'][f'extras.{self._HASH_EXTRA_KEY}']
            if label not in self._hash_ignored_inputs:
                inputs[label] = stored or orm.load_node(pk).base.caching.compute_hash()
        objects.update({'inputs': inputs})
        return objects


def bulk_link_process_class(function) -> type:
    """Return the process class of calcfunction ``function`` with its links written without per-link queries.

    The node it creates is indistinguishable from one of the plain calcfunction: same process type (it loads back as
    ``function``), label, function source, inputs, outputs and link labels. Only two methods change:

    * ``_setup_inputs`` puts the input links in the node's link cache (``incoming_cache``), stored with the node,
      instead of validating each with database queries; the process node is new, so no link can clash or close a
      cycle.
    * ``update_outputs`` does the same for the outputs, which must be new nodes, and stores them all in one
      transaction, so a failure leaves none of them behind.
    """
    base = function.process_class

    class BulkLinkProcess(base):
        def _setup_db_record(self) -> None:
            # The node's hash takes the stored hash of each input (one query) instead of recomputing every input's
            # hash from its content (about 10 ms per array node): the same value, as inputs are stored and immutable.
            self.node._CLS_NODE_CACHING = StoredInputHashCaching
            self.node.base.__dict__.pop('caching', None)
            super()._setup_db_record()

        @classmethod
        def build_process_type(cls) -> str:
            """Return the process type of the plain calcfunction, so that the node loads back as that function."""
            return base.build_process_type()

        def _build_process_label(self) -> str:
            return function.__name__

        def _setup_inputs(self) -> None:
            # Appending to the cache directly also skips its duplicate check, which compares every new link with
            # every cached one (quadratic in the batch size); the labels are the distinct keys of the inputs.
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
                raise ValueError(
                    f'outputs {", ".join(stored)} are stored already: a calcfunction must create its outputs'
                )
            if not new_outputs:
                return
            with self.node.backend.transaction():
                for label, node in new_outputs:
                    node.base.links.incoming_cache.append(LinkTriple(self.node, LinkType.CREATE, label))
                    node.store()

    BulkLinkProcess.__name__ = BulkLinkProcess.__qualname__ = f'BulkLink{base.__name__}'
    return BulkLinkProcess


def run_bulk_linked(process_class: type, **inputs) -> tuple[dict[str, Any], orm.CalcFunctionNode]:
    """Run a :func:`bulk_link_process_class` process with ``inputs``; return its outputs and node.

    Called from a running process (a work chain step), it runs in that process's runner and gets a ``CALL`` link,
    as a calcfunction called there would.
    """
    from aiida.engine.processes.process import Process
    from aiida.manage import get_manager

    current = Process.current()
    runner = current.runner if isinstance(current, Process) else get_manager().create_runner(communicator=None)
    process = process_class(inputs=process_class.create_inputs(**inputs), runner=runner)
    outputs = process.execute()
    return outputs, process.node


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


@calcfunction
def build_dataset(parameters: orm.Dict, **inputs: Any) -> dict[str, Any]:
    """Build a ``mad.dataset`` node from DFT results; every result it uses is one of its inputs.

    ``parameters`` holds ``name``, ``seed``, ``fractions``, ``fingerprint``, ``frames_per_shard``, ``selection``
    (the selection record, stored on the dataset) and ``frames``: for each frame label ``fNNNNNN``, the
    ``source_uuid`` (the structure that was labelled: it drives the split), ``dft_uuid`` and ``subset``. The inputs
    are namespaces keyed by frame label: ``structures`` (the cell pw.x used), ``energies`` (eV), ``forces``
    (eV/Å), ``stresses`` (eV/Å³, ASE sign; not for 0D), ``dos`` (optional) and ``baselines``: isolated-atom tables
    of the same fingerprint, merged in label order (energies in eV by element). With baselines every frame gets
    ``energy_baseline_subtracted`` = E − Σ E_atom.
    """
    from aiida_mad.calculations.bulk import read_arrays, read_attributes, read_structures
    from aiida_mad.data.dataset import DatasetData
    from aiida_mad.export.frames import make_frame
    from aiida_mad.export.splits import assign_split, validate_fractions

    settings = parameters.get_dict()
    known = {'structures', 'energies', 'forces', 'stresses', 'dos', 'baselines'}
    unexpected = sorted(set(inputs) - known)
    if unexpected:
        raise ValueError(f'unexpected inputs {", ".join(unexpected)}: expected the namespaces {sorted(known)}')
    fractions = validate_fractions(settings['fractions'])
    seed = settings['seed']
    atomic: dict[str, float] = {}
    for label in sorted(inputs.get('baselines', {})):
        atomic.update(inputs['baselines'][label].get_dict())
    # Bulk reads: one query per 5 000 nodes and one pass over the object store, instead of several per node.
    structures = read_structures(inputs['structures'])
    energies = {label: values[0] for label, values in read_attributes(inputs['energies'], ('value',)).items()}
    forces = read_arrays(inputs['forces'], 'forces')
    stresses = read_arrays(inputs['stresses'], 'stress') if inputs.get('stresses') else {}
    dos = read_arrays(inputs['dos'], 'dos') if inputs.get('dos') else {}

    frames, dft_uuids = [], []
    for label in sorted(settings['frames']):
        meta = settings['frames'][label]
        atoms = structures[label]
        energy = energies[label]
        baseline = None
        if atomic:
            symbols = atoms.get_chemical_symbols()
            lacking = sorted(set(symbols) - set(atomic))
            if lacking:
                raise ValueError(f'frame {label} ({atoms.get_chemical_formula()}): no baseline energy for {lacking}')
            baseline = energy - sum(atomic[symbol] for symbol in symbols)
        frames.append(
            make_frame(
                atoms.numbers,
                atoms.positions,
                cell=atoms.cell.array,
                pbc=atoms.pbc,
                energy=energy,
                energy_baseline_subtracted=baseline,
                forces=forces[label],
                stress=stresses.get(label),
                dos=dos.get(label),
                subset=meta['subset'],
                split=assign_split(meta['source_uuid'], seed, fractions),
                source_uuid=meta['source_uuid'],
                fingerprint=settings['fingerprint'],
                validate=False,
            )
        )
        dft_uuids.append(meta['dft_uuid'])
    dataset = DatasetData(
        frames,
        name=settings['name'],
        seed=seed,
        fractions=fractions,
        dft_uuids=dft_uuids,
        selection=settings.get('selection'),
        atomic_energies=atomic,
        frames_per_shard=settings.get('frames_per_shard', 10_000),
    )
    return {'dataset': dataset}


#: :func:`build_dataset` with bulk-written links: a dataset has up to five inputs per frame.
BulkLinkBuildDataset = bulk_link_process_class(build_dataset)
