"""Committees: ``committee_split`` (``mad.committee_split``) and ``committee_record`` (``mad.committee_record``).

``committee_split`` makes one committee member's own train/validation split; ``committee_record`` the record of a
trained committee, linked to its members.

MP-ALOE's committee members differ only in their seed and their train/validation split. A member's dataset is the
committee's dataset with the frames of ``train`` and ``val`` pooled and split again, the ``test`` frames untouched
(every member is tested on the same frames). The pool is ordered by the stable hash of each frame's source uuid and
the committee seed (:func:`aiida_mad.dataset.splits.split_value`), periodic frames and the others separately (so that
every validation split has frames with a stress when the pool has any), and member ``i`` validates on the ``i``-th
block of each (with more members than periodic blocks, the later members add one of the other frames): the members'
validation sets differ as long as the pool has enough frames, and their size follows the dataset's own fractions (at
least one frame).

``committee_record`` takes the committee's dataset, the architecture, the committee seed and, per member ``i``, its
model (``model_<i>``) and its dataset (``dataset_<i>``), and returns the ``Dict`` that ``CommitteeWorkChain``
outputs as ``committee``: as a calcfunction output, the record descends from every member model in the provenance
graph (and through them from their trainings and datasets).
"""

from __future__ import annotations

import numpy as np
from aiida import orm
from aiida.engine import calcfunction

from aiida_mad.data.dataset import DatasetData

__all__ = ('committee_record', 'committee_split', 'member_validation')


def _block(items: list[str], start: int, size: int) -> list[str]:
    if not items or size <= 0:
        return []
    return [items[(start + offset) % len(items)] for offset in range(min(size, len(items)))]


def member_validation(
    periodic: list[str], others: list[str], member: int, seed: int, fractions=(0.8, 0.1, 0.1)
) -> list[str]:
    """Return the source uuids that member ``member`` validates on.

    :param periodic: source uuids of the pooled (train and val) frames that are periodic in all directions.
    :param others: source uuids of the other pooled frames.
    :param member: the member's index.
    :param seed: the committee seed (orders the pool).
    :param fractions: the dataset's ``(train, val, test)`` fractions.
    :raises ValueError: if the pool has fewer than two frames.
    """
    from aiida_mad.dataset.splits import split_value

    pool = len(periodic) + len(others)
    if pool < 2:
        raise ValueError(f'a committee member needs at least 2 training and validation frames, the dataset has {pool}')
    share = fractions[1] / (fractions[0] + fractions[1]) if fractions[0] + fractions[1] > 0 else 0.1
    n_val = min(pool - 1, max(1, round(pool * share)))
    n_periodic = min(len(periodic), max(1, round(n_val * len(periodic) / pool))) if periodic else 0
    n_others = n_val - n_periodic
    periodic = sorted(periodic, key=lambda uuid: split_value(uuid, seed))
    others = sorted(others, key=lambda uuid: split_value(uuid, seed))
    validation = _block(periodic, member * n_periodic, n_periodic) + _block(others, member * n_others, n_others)
    blocks = max(1, len(periodic) // n_periodic) if n_periodic else 0
    if blocks and n_others == 0 and others and member >= blocks:
        # more members than periodic blocks: later rounds also validate on one other frame, so that sets differ
        validation += _block(others, member // blocks - 1, 1)
    return validation


@calcfunction
def committee_split(dataset: DatasetData, member: orm.Int, seed: orm.Int) -> DatasetData:
    """Return the dataset of committee member ``member``: train and val frames split again, test frames kept."""
    frames = dataset.frames()
    index = dataset.index()
    dft_uuids = dict(zip(index['source_uuid'].tolist(), index['dft_uuid'].tolist(), strict=True))
    fractions = tuple(dataset.base.attributes.get('fractions') or (0.8, 0.1, 0.1))
    pooled = [frame for frame in frames if frame.info['split'] in ('train', 'val')]
    periodic = [frame.info['source_uuid'] for frame in pooled if np.all(frame.pbc)]
    others = [frame.info['source_uuid'] for frame in pooled if not np.all(frame.pbc)]
    validation = set(member_validation(periodic, others, member.value, seed.value, fractions))
    for frame in pooled:
        frame.info['split'] = 'val' if frame.info['source_uuid'] in validation else 'train'
    attributes = dataset.base.attributes
    selection = {
        **(attributes.get('selection') or {}),
        'committee': {
            'parent_dataset': dataset.uuid,
            'member': member.value,
            'seed': seed.value,
            'validation': sorted(validation),
        },
    }
    return DatasetData(
        frames,
        name=f'{attributes.get("name")}-member-{member.value}',
        seed=attributes.get('seed'),
        fractions=attributes.get('fractions'),
        dft_uuids=[dft_uuids[frame.info['source_uuid']] for frame in frames],
        selection=selection,
        atomic_energies=dataset.atomic_energies,
    )


@calcfunction
def committee_record(dataset: DatasetData, architecture: orm.Str, seed: orm.Int, **members) -> orm.Dict:
    """Return the record of a committee: per member its model, training, seed, dataset, validation frames, errors.

    :param members: ``model_<i>`` (the member's ``mad.model``) and ``dataset_<i>`` (its ``committee_split`` dataset)
        for every member ``i``.
    """
    count = len([key for key in members if key.startswith('model_')])
    entries = []
    for member in range(count):
        model = members[f'model_{member}']
        member_dataset = members[f'dataset_{member}']
        creator = model.creator
        entries.append(
            {
                'member': member,
                'model': model.uuid,
                'calculation': creator.uuid if creator is not None else None,
                'seed': seed.value + member,
                'dataset': member_dataset.uuid,
                'validation': member_dataset.selection['committee']['validation'],
                'errors': model.errors,
            }
        )
    return orm.Dict(
        {
            'architecture': architecture.value,
            'dataset': dataset.uuid,
            'fingerprint': dataset.fingerprint,
            'n_members': count,
            'members': entries,
        }
    )
