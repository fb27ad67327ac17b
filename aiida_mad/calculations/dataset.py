"""The calcfunction that builds a ``mad.dataset`` node from DFT results (entry point ``mad.build_dataset``).

A dataset has up to five inputs per frame, so :class:`aiida_mad.workflows.dataset.DatasetWorkChain` runs it through
:data:`BulkLinkBuildDataset` (see :mod:`aiida_mad.calculations.bulk`) with the per-frame inputs given by pk: same
provenance (every result is an input, with the same link label), links written in bulk, no node loaded.
"""

from __future__ import annotations

from typing import Any

from aiida import orm
from aiida.engine import calcfunction

from aiida_mad.calculations.bulk import (
    bulk_link_process_class,
    linked_inputs,
    read_arrays,
    read_attributes,
    read_structures,
)
from aiida_mad.constants import FRAMES_PER_SHARD
from aiida_mad.data.dataset import DatasetData
from aiida_mad.dataset.frames import make_frame
from aiida_mad.dataset.splits import assign_split, validate_fractions

__all__ = ('BulkLinkBuildDataset', 'build_dataset')


@calcfunction
def build_dataset(parameters: orm.Dict, **inputs: Any) -> dict[str, Any]:
    """Build a ``mad.dataset`` node from DFT results; every result it uses is one of its inputs.

    ``parameters`` holds ``name``, ``seed``, ``fractions``, ``fingerprint``, ``frames_per_shard``, ``selection``
    (the selection record, stored on the dataset) and ``frames``: for each frame label ``fNNNNNN``, the
    ``source_uuid`` (the structure that was labelled: it drives the split), ``dft_uuid`` and ``subset``. The inputs
    are namespaces keyed by frame label: ``structures`` (the cell pw.x used), ``energies`` (eV), ``forces``
    (eV/Å), ``stresses`` (eV/Å³, ASE sign; not for 0D), ``dos`` (optional) and ``baselines``: isolated-atom tables
    of the same fingerprint, merged in label order (energies in eV by element). With baselines every frame gets
    ``energy_baseline_subtracted`` = E − Σ E_atom. Through :data:`BulkLinkBuildDataset` the per-frame namespaces can
    be given by pk (``linked``), with the same links.
    """
    settings = parameters.get_dict()
    inputs = {**linked_inputs(), **inputs}  # the namespaces given by pk to the bulk-linked process, if any
    known = {'structures', 'energies', 'forces', 'stresses', 'dos', 'baselines'}
    unexpected = sorted(set(inputs) - known)
    if unexpected:
        raise ValueError(f'unexpected inputs {", ".join(unexpected)}: expected the namespaces {sorted(known)}')
    fractions = validate_fractions(settings['fractions'])
    seed = settings['seed']
    atomic: dict[str, float] = {}
    for label in sorted(inputs.get('baselines', {})):
        atomic.update(inputs['baselines'][label].get_dict())
    # Bulk reads: one query per QUERY_CHUNK_SIZE nodes and one pass over the object store, instead of several per node.
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
        frames_per_shard=settings.get('frames_per_shard', FRAMES_PER_SHARD),
    )
    return {'dataset': dataset}


#: :func:`build_dataset` with bulk-written links: a dataset has up to five inputs per frame.
BulkLinkBuildDataset = bulk_link_process_class(build_dataset)
