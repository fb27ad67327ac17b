"""Structure generation with provenance against storing bare ``StructureData`` nodes, in one temporary profile.

Rows (rates in structures per second, higher is better):

1. ``aiida-mad`` generation of ``mc3d-rattled`` (batched calcfunction with bulk links, checks, extras, group) next
   to ``StructureData.store()`` of as many rattled structures made beforehand, with no provenance, no extras and no
   group: the issue asks for at least half the raw rate.
1b. The same next to raw stores grouped 100 per transaction, as ours are: the best the raw way can do.
2. The same generation next to one plain calcfunction call per structure, the obvious design.
3. The same generation next to the same batches through the plain ``@calcfunction`` (aiida-core's per-link
   validation queries), to show what writing the links in bulk buys.

``MAD_BENCH_GENERATE_COUNT`` sets the number of structures of row 1 (default 2000); the slow baselines of rows 2 and 3
use a fortieth and a tenth of it (at least 20 and 100). Each rate is measured into its own group; the parents are the
bundled bulk seeds with more than one atom.
"""

from __future__ import annotations

import os
import time

from common import Row, temporary_profile

COUNT = int(os.environ.get('MAD_BENCH_GENERATE_COUNT', '2000'))


def _rattled_atoms(parents, count: int, seed: int):
    """Return ``count`` rattled copies of the parents, made outside the timed region."""
    import numpy as np

    from aiida_mad.structures.rattle import rattle

    rng = np.random.default_rng(seed)
    return [rattle(parents[i % len(parents)], rng) for i in range(count)]


def run() -> list[Row]:
    with temporary_profile():
        from aiida import orm

        from aiida_mad.calculations.generate import generate_structures
        from aiida_mad.storage import store_seeds
        from aiida_mad.workflows.generate import GenerationProgress, StructureGeneration

        store_seeds(['bulk'])
        parents = [node.get_ase() for node in orm.load_group('mad/structures/mc3d').nodes if len(node.sites) > 1]

        atoms_list = _rattled_atoms(parents, COUNT, seed=0)
        start = time.perf_counter()
        for atoms in atoms_list:
            orm.StructureData(ase=atoms).store()
        raw_rate = COUNT / (time.perf_counter() - start)

        # The raw rate at its best: the same stores grouped in transactions of 100, as ours are.
        transaction_count = max(COUNT // 4, 100)
        storage = orm.Node.collection.backend
        start = time.perf_counter()
        for first in range(0, transaction_count, 100):
            with storage.transaction():
                for atoms in atoms_list[first : first + 100][: transaction_count - first]:
                    orm.StructureData(ase=atoms).store()
        transaction_rate = transaction_count / (time.perf_counter() - start)

        start = time.perf_counter()
        generation = StructureGeneration('mc3d-rattled', count=COUNT, seed=1, group_label='bench/ours')
        progress = generation.run()
        ours_rate = progress.new_structures / (time.perf_counter() - start)
        assert progress.new_structures == COUNT, generation.summary(progress)

        # One plain calcfunction call per structure: a batch of one item each.
        single_count = max(COUNT // 40, 20)
        generation = StructureGeneration('mc3d-rattled', count=single_count, seed=2, batch_size=1, group_label='x')
        start = time.perf_counter()
        for index in range(single_count):
            inputs = generation.batch_inputs([generation.next_batch(GenerationProgress(next_index=index))[0]])
            generate_structures(**inputs)
        single_rate = single_count / (time.perf_counter() - start)

        # The same batches as ours through the plain calcfunction, with aiida-core's per-link validation.
        plain_count = max(COUNT // 10, 100)
        generation = StructureGeneration('mc3d-rattled', count=plain_count, seed=3, group_label='bench/plain')
        progress = GenerationProgress()
        start = time.perf_counter()
        while not generation.finished(progress):
            items = generation.next_batch(progress)
            outputs = generate_structures(**generation.batch_inputs(items))
            progress.done += len(outputs.get('structures', {}))
        plain_rate = plain_count / (time.perf_counter() - start)

    note = f'{COUNT} rattled structures, batches of {generation.batch_size}'
    return [
        Row('generate: with provenance vs raw store()', ours_rate, raw_rate, 'structures/s', True, note),
        Row('generate: with provenance vs raw store() in transactions', ours_rate, transaction_rate, 'structures/s',
            True, f'{transaction_count} raw stores, 100 per transaction'),
        Row('generate: batched vs one calcfunction each', ours_rate, single_rate, 'structures/s', True,
            f'{single_count} single calls'),
        Row('generate: bulk links vs plain calcfunction', ours_rate, plain_rate, 'structures/s', True,
            f'{plain_count} structures in plain batched calls'),
    ]  # fmt: skip
