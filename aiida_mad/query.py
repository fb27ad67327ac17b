"""Queries over datasets and the provenance graph, used by ``aiida-mad query`` and documented in ``docs/queries.md``.

* :func:`query_frames` filters the frames of a dataset by subset, element, split and largest force, from the
  dataset's per-frame index (no shard is parsed, so it takes milliseconds for 10⁵ frames).
* :func:`lineage` follows one frame through the graph: back from the labelled structure through the generator
  calcfunctions (generator, seed, index) to its seed structure, to the DFT work chains that labelled it (state,
  fingerprint), and forward to the datasets that hold it and to whatever consumed those datasets (training runs and
  their models).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np
from aiida import orm
from aiida.common.links import LinkType

from aiida_mad.constants import SPLITS, process_type
from aiida_mad.data.dataset import DatasetData

__all__ = ('FrameQuery', 'lineage', 'query_frames')

#: Processes are found by their process type (entry point), never by label.
DFT_PROCESS_TYPE = process_type('mad.dft')
GENERATE_STRUCTURES_PROCESS_TYPE = process_type('mad.generate_structures')
BUILD_DATASET_PROCESS_TYPE = process_type('mad.build_dataset')


@dataclasses.dataclass
class FrameQuery:
    """The frames of a dataset that matched, as index rows (see :data:`aiida_mad.data.dataset.INDEX_COLUMNS`)."""

    dataset: orm.Data
    positions: np.ndarray
    index: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.positions)

    def column(self, name: str) -> np.ndarray:
        """Return the values of column ``name`` for the matching frames."""
        return self.index[name][self.positions]

    def rows(self) -> list[dict]:
        """Return one dict per matching frame: source uuid, DFT uuid, subset, split, atoms, energies, max |F|."""
        columns = ('source_uuid', 'dft_uuid', 'subset', 'split', 'natoms', 'energy', 'energy_per_atom', 'max_force')
        values = {name: self.column(name).tolist() for name in columns}
        return [{name: values[name][row] for name in columns} for row in range(len(self))]

    def frames(self) -> list:
        """Return the matching frames (``ase.Atoms``), parsing the dataset's shards."""
        wanted = set(self.column('source_uuid').tolist())
        return [frame for frame in self.dataset.frames() if frame.info['source_uuid'] in wanted]


def _element_numbers(elements: Iterable[str]) -> list[int]:
    from ase.data import atomic_numbers

    numbers = []
    for element in elements:
        if element not in atomic_numbers or element == 'X':
            raise ValueError(f'unknown element {element!r}')
        numbers.append(atomic_numbers[element])
    return numbers


def query_frames(
    dataset,
    *,
    subsets: Sequence[str] | None = None,
    splits: Sequence[str] | None = None,
    elements: Sequence[str] | None = None,
    any_element: bool = False,
    max_force_min: float | None = None,
    max_force_max: float | None = None,
) -> FrameQuery:
    """Return the frames of ``dataset`` that match every given filter.

    :param subsets: keep frames of these subsets.
    :param splits: keep frames of these splits (``train``, ``val``, ``test``).
    :param elements: keep frames that contain all these elements (any of them with ``any_element``).
    :param max_force_min: keep frames whose largest force magnitude (eV/Å) is at least this.
    :param max_force_max: keep frames whose largest force magnitude (eV/Å) is at most this.
    :raises ValueError: for an unknown subset, split or element, naming it and what exists.
    """
    index = dataset.index()
    mask = np.ones(len(index['subset']), dtype=bool)
    if subsets:
        unknown = sorted(set(subsets) - set(dataset.counts))
        if unknown:
            raise ValueError(
                f'dataset {dataset.name} has no subset {", ".join(unknown)} (it has {", ".join(dataset.counts)})'
            )
        mask &= np.isin(index['subset'], list(subsets))
    if splits:
        unknown = sorted(set(splits) - set(SPLITS))
        if unknown:
            raise ValueError(f'unknown split {", ".join(unknown)}: splits are {", ".join(SPLITS)}')
        mask &= np.isin(index['split'], list(splits))
    if elements:
        numbers = _element_numbers(elements)
        offsets = index['offsets']
        starts = offsets[:-1]
        has = []
        for number in numbers:
            hits = (index['numbers'] == number).astype(np.int64)
            # Atoms of element `number` per frame; frames with no atom give an empty slice, hence the guard.
            per_frame = np.add.reduceat(hits, starts) if len(hits) else np.zeros(len(starts), np.int64)
            per_frame[np.diff(offsets) == 0] = 0
            has.append(per_frame > 0)
        mask &= np.any(has, axis=0) if any_element else np.all(has, axis=0)
    if max_force_min is not None:
        mask &= index['max_force'] >= max_force_min
    if max_force_max is not None:
        mask &= index['max_force'] <= max_force_max
    return FrameQuery(dataset, np.flatnonzero(mask), index)


# ----------------------------------------------------------------------------------------------------------------
# Lineage


def _describe(node: orm.Node) -> dict:
    return {'pk': node.pk, 'uuid': node.uuid, 'type': node.node_type.rsplit('.', 2)[-2] if node.node_type else ''}


def _source_structure(uuid: str) -> orm.StructureData:
    """Return the labelled structure of ``uuid``: a structure, or the input structure of a DFT work chain."""
    node = orm.load_node(uuid)
    if isinstance(node, orm.StructureData):
        return node
    if isinstance(node, orm.WorkflowNode) and node.process_type == DFT_PROCESS_TYPE:
        return node.inputs.structure
    raise ValueError(
        f'{node.__class__.__name__}<{node.pk}> is neither a structure nor a MadDftWorkChain: give the source uuid of a '
        'dataset frame (its `source_uuid`) or the uuid of its DFT work chain'
    )


def _generation_steps(structure: orm.StructureData) -> tuple[list[dict], orm.StructureData]:
    """Return the generation steps from ``structure`` back to its seed (newest first), and the seed."""
    steps = []
    current = structure
    seen = set()
    while current.uuid not in seen:
        seen.add(current.uuid)
        links = current.base.links.get_incoming(link_type=LinkType.CREATE).all()
        if not links:
            break
        link = links[0]
        creator = link.node
        step = {
            'structure': {**_describe(current), 'formula': current.get_formula()},
            'calculation': {**_describe(creator), 'process_label': creator.process_label},
        }
        parent = None
        if creator.process_type == GENERATE_STRUCTURES_PROCESS_TYPE:
            parameters = creator.inputs.parameters.get_dict()
            label = link.link_label.split('__', 1)[-1]
            item = 'p' + label[1:].split('_')[0]
            step.update(
                generator=parameters.get('generator'),
                subset=parameters.get('subset'),
                seed=parameters.get('seed'),
                index=parameters.get('items', {}).get(item, {}).get('index'),
            )
            parent_links = creator.base.links.get_incoming(link_label_filter=f'parents__{item}').all()
            parent = parent_links[0].node if parent_links else None
        else:
            structures = [
                entry.node
                for entry in creator.base.links.get_incoming(link_type=LinkType.INPUT_CALC).all()
                if isinstance(entry.node, orm.StructureData)
            ]
            parent = structures[0] if len(structures) == 1 else None
        steps.append(step)
        if parent is None:
            break
        current = parent
    return steps, current


def _groups_of(node: orm.Node) -> list[str]:
    query = orm.QueryBuilder()
    query.append(orm.Node, filters={'id': node.pk}, tag='node')
    query.append(orm.Group, with_node='node', project='label')
    return sorted(query.all(flat=True))


def lineage(uuid: str) -> dict:
    """Return the lineage of one frame (the uuid of its labelled structure, or of its DFT work chain).

    :return: ``structure`` (the labelled structure, its subset and groups), ``generation`` (steps back to the seed:
        calcfunction, generator, subset, seed, index), ``seed`` (the seed structure and its groups), ``dft`` (every
        ``MadDftWorkChain`` of the structure: state, exit status, fingerprint, energy), ``datasets`` (those holding
        the frame: name, split, subset, content hash) each with ``consumers`` (processes that took the dataset as
        input, and what they created, e.g. trained models).
    """
    structure = _source_structure(uuid)
    steps, seed = _generation_steps(structure)
    result = {
        'structure': {
            **_describe(structure),
            'formula': structure.get_formula(),
            'subset': structure.base.extras.get('mad_subset', None),
            'groups': _groups_of(structure),
        },
        'generation': steps,
        'seed': {
            **_describe(seed),
            'formula': seed.get_formula(),
            'groups': _groups_of(seed),
            'extras': {
                key: value
                for key, value in seed.base.extras.all.items()
                if key.startswith('mad_') and not key.startswith('mad_dft_')
            },
        },
        'dft': [],
        'datasets': [],
    }

    query = orm.QueryBuilder()
    query.append(orm.StructureData, filters={'id': structure.pk}, tag='structure')
    query.append(
        orm.WorkflowNode,
        with_incoming='structure',
        edge_filters={'label': 'structure'},
        filters={'process_type': DFT_PROCESS_TYPE},
        tag='dft',
        project='*',
    )
    workchains = sorted(query.all(flat=True), key=lambda node: node.ctime)
    for node in workchains:
        entry = {
            **_describe(node),
            'process_state': node.process_state.value if node.process_state else None,
            'exit_status': node.exit_status,
            'fingerprint': node.base.extras.get('mad_fingerprint', None),
        }
        if 'properties' in node.outputs:
            entry['fingerprint'] = node.outputs.properties['fingerprint']
            entry['energy'] = node.outputs.energy.value
            entry['max_force'] = node.outputs.properties['max_force']
        result['dft'].append(entry)

    if workchains:
        query = orm.QueryBuilder()
        query.append(orm.WorkflowNode, filters={'id': {'in': [node.pk for node in workchains]}}, tag='dft')
        query.append(orm.Data, with_incoming='dft', edge_filters={'type': LinkType.RETURN.value}, tag='output')
        query.append(
            orm.CalcFunctionNode,
            with_incoming='output',
            filters={'process_type': BUILD_DATASET_PROCESS_TYPE},
            tag='build',
        )
        query.append(DatasetData, with_incoming='build', project='*')
        datasets = sorted({node.pk: node for node in query.all(flat=True)}.values(), key=lambda node: node.ctime)
        for dataset in datasets:
            index = dataset.index()
            rows = np.flatnonzero(index['source_uuid'] == structure.uuid)
            row = int(rows[0]) if len(rows) else None
            result['datasets'].append(
                {
                    **_describe(dataset),
                    'name': dataset.name,
                    'content_hash': dataset.content_hash,
                    'split': str(index['split'][row]) if row is not None else None,
                    'subset': str(index['subset'][row]) if row is not None else None,
                    'dft_uuid': str(index['dft_uuid'][row]) if row is not None else None,
                    'consumers': _consumers(dataset),
                }
            )
    return result


def _consumers(dataset) -> list[dict]:
    """Return the processes that took ``dataset`` as an input, with the nodes they created or returned."""
    consumers = []
    for link in dataset.base.links.get_outgoing(link_type=(LinkType.INPUT_CALC, LinkType.INPUT_WORK)).all():
        process = link.node
        outputs = [
            {**_describe(out.node), 'label': out.link_label}
            for out in process.base.links.get_outgoing(link_type=(LinkType.CREATE, LinkType.RETURN)).all()
        ]
        consumers.append({**_describe(process), 'process_label': process.process_label, 'outputs': outputs})
    return consumers
