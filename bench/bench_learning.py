"""Active-learning numerics: DIRECT downsampling and committee screening, against the naive ways.

Rows:

1. DIRECT (standardize, PCA with eigenvalue > 1, BIRCH into k clusters, m per cluster) on 10^5 synthetic 128-dim
   descriptors (a Gaussian mixture of 100 components with widths and feature scales that differ), next to
   scikit-learn's ``KMeans`` with the same k on the raw, unstandardized features (one initialisation, at most 100
   iterations), then the k structures closest to the centres: time (s) and peak memory (MB) of each, measured in a
   forked child each (the rise of its peak resident set size). The note also says how many mixture components
   each selection covers.
2. Committee statistics and selection of 10^5 candidates (3 members, 1-8 atoms each, as MP-ALOE's prototypes):
   vectorised over the ragged batch, next to a Python loop over structures computing the same sigmas and decision
   (timed on the first tenth of the candidates): candidates per second.

3. Candidate pool generation (MP-ALOE prototypes, the 85 MAD elements, shards of 1000): time and memory per
   candidate, bytes of compressed shard per candidate; ``MAD_BENCH_POOL_COUNT`` candidates (default 10000: about
   7 ms each on a loaded 2-core machine, so 10^5 take minutes; the memory is that of one batch whatever the count).
4. Candidates screened per second, end to end on CPU: generation into shards, committee prediction (3 real tiny
   MACE models trained here on EMT copper frames, batched through ``aiida_mad.inference``) and selection, on
   ``MAD_BENCH_SCREEN_COUNT`` (default 500) elemental-Cu prototype candidates.
5. A pool node vs one ``StructureData`` node per candidate in a throw-away profile: store (s) and screen (read every
   candidate back as ``ase.Atoms``), on ``MAD_BENCH_NODES_COUNT`` candidates (default 2000).
6. One active-learning iteration at scale without the prediction and the DFT, in a throw-away profile, in a forked
   child: ``MAD_BENCH_ITERATION_GENERATED`` (default 10000) real MP-ALOE candidates over the 85 MAD elements are
   generated (CPU time per candidate: generation costs the same per candidate whatever the count, and its memory is
   one batch), then repeated under new ids up to ``MAD_BENCH_ITERATION_COUNT`` candidates (default 100000) and
   stored by the real ``build_pool`` as one node; the real ``mad.al.select`` calcfunction runs on synthetic committee
   sigmas (about a third above MP-ALOE's thresholds; DIRECT k=100, m=5: 500 ``StructureData`` stored) and every
   candidate is read back as the prediction reads them. Wall and CPU time per candidate of each phase, and the peak
   memory (rise of the child's peak resident set) after each. ``MAD_BENCH_ITERATION_COUNT=0`` skips it.

``MAD_BENCH_LEARNING_COUNT`` sets the number of descriptors and candidates of rows 1-2 (default 100000). BLAS runs
on one thread.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import time

import numpy as np
from common import Row

COUNT = int(os.environ.get('MAD_BENCH_LEARNING_COUNT', '100000'))
POOL_COUNT = int(os.environ.get('MAD_BENCH_POOL_COUNT', '10000'))
SCREEN_COUNT = int(os.environ.get('MAD_BENCH_SCREEN_COUNT', '500'))
NODES_COUNT = int(os.environ.get('MAD_BENCH_NODES_COUNT', '2000'))
ITERATION_COUNT = int(os.environ.get('MAD_BENCH_ITERATION_COUNT', '100000'))
ITERATION_GENERATED = int(os.environ.get('MAD_BENCH_ITERATION_GENERATED', '10000'))
DIMENSIONS = 128
COMPONENTS = 100
CLUSTERS = 200
PER_CLUSTER = 10
MEMBERS = 3


def _rss_bytes() -> int:
    """Return the current resident set size of this process."""
    with open('/proc/self/statm') as handle:
        return int(handle.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def _child(connection, function, args):
    start_rss = _rss_bytes()
    start = time.perf_counter()
    result = function(*args)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    connection.send((seconds, max(peak - start_rss, 0), result))
    connection.close()


def _measure(function, *args):
    """Run ``function(*args)`` in a forked child; return its seconds, peak memory rise in bytes and result."""
    context = multiprocessing.get_context('fork')
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(sender, function, args))
    process.start()
    sender.close()
    outcome = receiver.recv()
    process.join()
    return outcome


def _mixture(count: int, seed: int = 0):
    """Return ``(count, 128)`` descriptors from a Gaussian mixture, and each one's component."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=3.0, size=(COMPONENTS, DIMENSIONS))
    widths = rng.uniform(0.5, 2.0, size=COMPONENTS)
    component = rng.integers(COMPONENTS, size=count)
    features = centres[component] + rng.normal(size=(count, DIMENSIONS)) * widths[component, None]
    # Features on very different scales, as raw descriptors are.
    features *= np.logspace(-2, 2, DIMENSIONS)
    return features, component


def _direct(features):
    from threadpoolctl import threadpool_limits

    from aiida_mad.learning.direct import direct_sample

    with threadpool_limits(1):
        result = direct_sample(features, CLUSTERS, PER_CLUSTER, seed=0)
    return result.indices, result.threshold, result.n_subclusters, len(result.eigenvalues)


def _kmeans(features):
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        model = KMeans(CLUSTERS, n_init=1, max_iter=100, random_state=0).fit(features)
        distance = np.linalg.norm(features - model.cluster_centers_[model.labels_], axis=1)
        order = np.lexsort((distance, model.labels_))
        labels = model.labels_[order]
        rank = np.arange(len(order)) - np.searchsorted(labels, labels)
    return np.sort(order[rank < PER_CLUSTER]), model.n_iter_


def _candidates(count: int, seed: int = 1):
    """Return synthetic committee predictions of ``count`` candidates: energy, forces, offsets, stress, numbers."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 9, size=count)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    energy = rng.normal(-4.0, 0.1, size=(1, count)) + rng.normal(scale=0.08, size=(MEMBERS, count))
    forces = rng.normal(size=(1, offsets[-1], 3)) + rng.normal(scale=0.05, size=(MEMBERS, offsets[-1], 3))
    stress = rng.normal(scale=0.05, size=(1, count, 6)) + rng.normal(scale=0.03, size=(MEMBERS, count, 6))
    numbers = rng.integers(1, 87, size=offsets[-1])
    return energy, forces, offsets, stress, numbers


def _screen(energy, forces, offsets, stress, numbers):
    from aiida_mad.learning.committee import committee_statistics
    from aiida_mad.learning.selection import select_candidates

    return select_candidates(committee_statistics(energy, forces, offsets, stress), numbers)['selected']


def _screen_loop(energy, forces, offsets, stress, numbers, count):
    from ase.data import chemical_symbols

    from aiida_mad.learning.selection import DEFAULT_MULTIPLIER, MULTIPLIER_ELEMENTS

    selected = []
    for index in range(count):
        atoms = forces[:, offsets[index] : offsets[index + 1]]
        sigma_energy = np.std(energy[:, index])
        sigma_force = np.sqrt(((atoms - atoms.mean(axis=0)) ** 2).sum(axis=2).mean(axis=0)).max()
        sigma_stress = np.std(stress[:, index], axis=0).max()
        symbols = {chemical_symbols[z] for z in numbers[offsets[index] : offsets[index + 1]]}
        factor = DEFAULT_MULTIPLIER if symbols & MULTIPLIER_ELEMENTS else 1.0
        selected.append(max(sigma_energy, sigma_force, sigma_stress) > 0.1 * factor)
    return np.array(selected)


def _generate_pool(count: int, elements, folder: str):
    """Generate ``count`` candidates into shards in ``folder``; return (candidates, refused, shard bytes)."""
    import pathlib

    from aiida_mad.learning.pool import (
        generate_batches,
        load_parents,
        pool_key,
        pool_settings,
        shard_name,
        write_candidates,
    )

    settings = pool_settings({'element_pool': list(elements), 'count': count, 'batch_size': 1000})
    made = refused = 0
    for number, batch in enumerate(generate_batches(settings, load_parents(settings), pool_key(settings))):
        made += write_candidates(batch.frames, pathlib.Path(folder) / shard_name(number))
        refused += len(batch.refused)
    size = sum(path.stat().st_size for path in pathlib.Path(folder).iterdir())
    return made, refused, size


def pool_rows() -> list[Row]:
    """Rows 3-5: pool generation per candidate, screening end to end, pool node vs one node per candidate."""
    import tempfile

    from aiida_mad.structures.elements import element_pool

    rows = []
    with tempfile.TemporaryDirectory(prefix='aiida-mad-bench-pool-') as folder:
        seconds, memory, (made, refused, size) = _measure(_generate_pool, POOL_COUNT, element_pool(), folder)
    rows.append(
        Row(
            'candidate pool: generation into shards, per candidate',
            seconds / POOL_COUNT * 1e3,
            seconds / POOL_COUNT * 1e3,
            'ms/candidate',
            False,
            f'{POOL_COUNT} MP-ALOE candidates over the 85 MAD elements ({made} made, {refused} refused): '
            f'{seconds:.1f} s, peak memory rise {memory / 2**20:.0f} MB (one batch of 1000), '
            f'{size / max(made, 1):.0f} bytes of gzip shard per candidate; no baseline (same value twice)',
        )
    )
    rows.append(_screen_row())
    rows.extend(_node_rows())
    if ITERATION_COUNT > 0:
        rows.append(iteration_row(ITERATION_COUNT, min(ITERATION_GENERATED, ITERATION_COUNT)))
    return rows


def _peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _Phase:
    """Wall and CPU seconds of a phase, and the peak memory rise over ``start_rss`` at its end."""

    def __init__(self, figures: dict, name: str, start_rss: int):
        self.figures, self.name, self.start_rss = figures, name, start_rss

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), _cpu_seconds()
        return self

    def __exit__(self, *exc):
        self.figures[self.name] = (
            time.perf_counter() - self.wall,
            _cpu_seconds() - self.cpu,
            _peak_bytes() - self.start_rss,
        )


def _repeated_batches(frames, count: int, key: str, subset: str, size: int = 1000):
    """Yield batches of ``count`` candidates: ``frames`` repeated under the ids of indices ``0 .. count - 1``."""
    from aiida_mad.learning.pool import CandidateBatch, candidate_id

    for first in range(0, count, size):
        batch = CandidateBatch([], [], [], [], {})
        for index in range(first, min(first + size, count)):
            atoms = frames[index % len(frames)].copy()
            identifier = candidate_id(key, index)
            atoms.info = {'source_uuid': identifier, 'subset': subset}
            batch.frames.append(atoms)
            batch.indices.append(index)
            batch.ids.append(identifier)
            batch.prototypes.append('repeated')
        yield batch


def _iteration_phases(count: int, generated: int) -> dict:
    """Generate, store, select and read back ``count`` candidates in a throw-away profile; return the figures."""
    from common import temporary_profile

    start_rss = _rss_bytes()
    figures = {}
    with temporary_profile():
        from aiida import orm

        from aiida_mad.calculations.pool import build_pool
        from aiida_mad.calculations.selection import select_candidates
        from aiida_mad.learning.pool import generate_batches, load_parents, pool_key, pool_settings
        from aiida_mad.structures.elements import element_pool

        raw = {'element_pool': list(element_pool()), 'seed': 0}
        settings = pool_settings({**raw, 'count': generated})
        parents = load_parents(settings)
        with _Phase(figures, 'generate', start_rss):
            frames = [
                atoms for batch in generate_batches(settings, parents, pool_key(settings)) for atoms in batch.frames
            ]
        figures['generated'] = len(frames)
        settings = pool_settings({**raw, 'count': count})
        with _Phase(figures, 'store', start_rss):
            batches = _repeated_batches(frames, count, pool_key(settings), settings['subset'])
            pool = build_pool({**raw, 'count': count}, batches=batches).store()
        del frames
        figures['n_candidates'] = pool.n_candidates
        figures['repository'] = sum(
            len(pool.base.repository.get_object_content(name, mode='rb')) for name in pool.shard_names()
        )

        rng = np.random.default_rng(0)
        ids = pool.index()['ids']
        sigmas = {name: rng.lognormal(np.log(0.06), 1.0, size=len(ids)) for name in ('energy', 'force', 'stress')}
        committee = orm.ArrayData()
        committee.set_array('uuids', ids)
        committee.set_array('energy_per_atom_std', sigmas['energy'])
        committee.set_array('force_std_max', sigmas['force'])
        committee.set_array('stress_std_max', sigmas['stress'])
        committee.set_array('energy_per_atom_mean', rng.normal(-4.0, 1.0, size=len(ids)))
        committee.store()
        parameters = orm.Dict({'thresholds': {}, 'direct': {'n_clusters': 100, 'per_cluster': 5}, 'iteration': 0})
        with _Phase(figures, 'select', start_rss):
            results = select_candidates(pool, committee, parameters)
        summary = results['summary'].get_dict()
        figures['selected'], figures['kept'] = summary['n_selected'], summary['n_downsampled']

        with _Phase(figures, 'read', start_rss):
            frames = pool.candidates()
        figures['n_atoms'] = sum(len(atoms) for atoms in frames)
    return figures


def iteration_row(count: int, generated: int) -> Row:
    """Row 6: generation per candidate, then pool, selection and read-back of ``count`` candidates."""
    seconds, memory, figures = _measure(_iteration_phases, count, generated)
    made = figures['n_candidates']
    cpu = figures['generate'][1]
    per_candidate = {'generate': figures['generated']}
    phases = ', '.join(
        f'{name} {figures[name][0]:.0f} s wall, {figures[name][1] / per_candidate.get(name, made) * 1e3:.2f} ms CPU '
        f'per candidate, peak rise {figures[name][2] / 2**20:.0f} MB'
        for name in ('generate', 'store', 'select', 'read')
    )
    stages = sum(figures[name][1] for name in ('store', 'select', 'read')) / made
    return Row(
        'AL iteration at scale without prediction and DFT: CPU per candidate (generate + store + select + read)',
        cpu / figures['generated'] * 1e3 + stages * 1e3,
        cpu / figures['generated'] * 1e3 + stages * 1e3,
        'ms/candidate',
        False,
        f'{figures["generated"]} real MP-ALOE candidates over the 85 MAD elements generated, repeated to {made} '
        f'({figures["n_atoms"]} atoms, {figures["repository"] / made:.0f} bytes of gzip shard each); '
        f'{figures["selected"]} selected, {figures["kept"]} kept by DIRECT: {phases}; whole child {seconds:.0f} s, '
        f'peak memory rise {memory / 2**20:.0f} MB ({memory / made / 1024:.2f} kB per candidate of the {made}); '
        'no baseline (same value twice)',
    )


def _screen_row() -> Row:
    """Row 4: generation + committee prediction + selection of elemental-Cu candidates, per second."""
    import pathlib
    import tempfile

    import torch
    from bench_predict import TINY, cu_frames, train_direct

    from aiida_mad.inference.models import Model
    from aiida_mad.inference.predict import predict
    from aiida_mad.learning.pool import generate_batches, load_parents, pool_key, pool_settings
    from aiida_mad.learning.selection import select_candidates

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix='aiida-mad-bench-screen-') as folder:
        models = []
        for seed in range(MEMBERS):
            path = pathlib.Path(folder) / f'member-{seed}'
            path.mkdir()
            train_direct(path, cu_frames(16), {**TINY, 'seed': seed}, 2)
            models.append(Model(path / 'aiida.model'))
        settings = pool_settings({'element_pool': ['Cu'], 'count': SCREEN_COUNT, 'batch_size': 1000})
        start = time.perf_counter()
        frames = [
            atoms
            for batch in generate_batches(settings, load_parents(settings), pool_key(settings))
            for atoms in batch.frames
        ]
        generated = time.perf_counter()
        arrays = predict(models, frames, batch_size=32)
        predicted = time.perf_counter()
        from aiida_mad.learning.committee import committee_statistics

        statistics = committee_statistics(
            arrays['energy_per_atom'], arrays['forces'], arrays['offsets'], arrays['stress']
        )
        numbers = np.concatenate([atoms.numbers for atoms in frames])
        table = select_candidates(statistics, numbers)
        done = time.perf_counter()
    total = done - start
    return Row(
        'candidates screened end to end (generate + 3-MACE predict + select), CPU 1 thread',
        len(frames) / total,
        len(frames) / (predicted - generated),
        'candidates/s',
        True,
        f'{len(frames)} Cu prototype candidates: generation {generated - start:.1f} s, prediction '
        f'{predicted - generated:.1f} s, selection {done - predicted:.3f} s, {int(table["selected"].sum())} selected; '
        'baseline column = prediction alone (the ratio is the share of the total the prediction takes)',
    )


def _node_rows() -> list[Row]:
    """Row 5: one pool node vs one StructureData per candidate, store and screen, in a throw-away profile."""
    from common import temporary_profile

    with temporary_profile():
        from aiida import orm

        from aiida_mad.calculations.pool import build_pool
        from aiida_mad.learning.pool import generate_batches, load_parents, pool_key, pool_settings

        settings = {'element_pool': ['Si', 'O', 'Mg'], 'count': NODES_COUNT, 'batch_size': 1000}
        checked = pool_settings(settings)
        batches = list(generate_batches(checked, load_parents(checked), pool_key(checked)))
        start = time.perf_counter()
        pool = build_pool(settings, batches=batches).store()
        pool_store = time.perf_counter() - start
        start = time.perf_counter()
        frames = pool.candidates()
        pool_screen = time.perf_counter() - start
        start = time.perf_counter()
        nodes = [orm.StructureData(ase=atoms).store() for atoms in frames]
        node_store = time.perf_counter() - start
        start = time.perf_counter()
        pks = [node.pk for node in nodes]
        query = orm.QueryBuilder().append(orm.StructureData, filters={'id': {'in': pks}})
        back = [node.get_ase() for (node,) in query.iterall()]
        node_screen = time.perf_counter() - start
        assert len(back) == len(frames)
    note = f'{len(frames)} MP-ALOE candidates (Si, O, Mg)'
    return [
        Row('candidate pool: one node vs one StructureData each: store', pool_store, node_store, 's', False,
            f'{note}: writing the shards and the index, storing the node; the candidates generated before'),
        Row('candidate pool: one node vs one StructureData each: read back', pool_screen, node_screen, 's', False,
            note),
    ]  # fmt: skip


def run() -> list[Row]:
    features, component = _mixture(COUNT)
    ours_seconds, ours_memory, (indices, threshold, subclusters, kept) = _measure(_direct, features)
    naive_seconds, naive_memory, (naive_indices, iterations) = _measure(_kmeans, features)
    covered = len(np.unique(component[indices]))
    naive_covered = len(np.unique(component[naive_indices]))
    direct_note = (
        f'{COUNT} x {DIMENSIONS} descriptors, k={CLUSTERS}, m={PER_CLUSTER}: DIRECT kept {kept} components, BIRCH '
        f'threshold {threshold:.3g} ({subclusters} subclusters), selected {len(indices)} covering {covered}/'
        f'{COMPONENTS} mixture components; KMeans ({iterations} iterations) selected {len(naive_indices)} covering '
        f'{naive_covered}/{COMPONENTS}'
    )

    energy, forces, offsets, stress, numbers = _candidates(COUNT)
    start = time.perf_counter()
    selected = _screen(energy, forces, offsets, stress, numbers)
    screen_rate = COUNT / (time.perf_counter() - start)
    loop_count = max(COUNT // 10, 1)
    start = time.perf_counter()
    loop_selected = _screen_loop(energy, forces, offsets, stress, numbers, loop_count)
    loop_rate = loop_count / (time.perf_counter() - start)
    assert np.array_equal(selected[:loop_count], loop_selected), 'the loop and the vectorised selection disagree'
    screen_note = (
        f'{COUNT} candidates, {offsets[-1]} atoms, {MEMBERS} members: {int(selected.sum())} selected; the loop on the '
        f'first {loop_count}'
    )
    return [
        Row('DIRECT vs KMeans on raw features: time', ours_seconds, naive_seconds, 's', False, direct_note),
        Row('DIRECT vs KMeans on raw features: peak memory', ours_memory / 2**20, naive_memory / 2**20, 'MB', False),
        Row('committee stats + selection vs per-structure loop', screen_rate, loop_rate, 'candidates/s', True,
            screen_note),
        *pool_rows(),
    ]  # fmt: skip
