"""Extended-XYZ export throughput of the pure-Python layer, against ASE's own writer and reader.

Rows (frames per second, higher is better), on ``MAD_BENCH_EXPORT_COUNT`` synthetic frames (default 20 000: random
cells with 2 to 8 atoms, random forces, stresses and energies; one frame in five a 0D cluster without stress):

1. ``write_extxyz`` (validation included) next to ``ase.io.write(..., format='extxyz')`` writing the same content
   (the same ``REF_*`` keys, prepared outside the timed region).
2. ``read_extxyz`` (back to frames, validation included) next to ``ase.io.read(..., index=':')`` on the same file.
3. The export of a stored dataset's frames to ``mad-train/val/test.xyz``: ``write_split_files_from_shards`` (routes
   each frame's text from the gzip shards to its split file) next to reading the shards with ``ase.io.read`` and
   writing each split with ``ase.io.write`` (shards decompressed in memory first: ``ase.io.read`` on a gzip stream
   seeks back and forth and becomes quadratic, about 50 frames/s).

The per-subset AiiDA archives are compared separately, in one process on a profile kept by the scale benchmark
(``python bench/bench_scale.py --one sqlite 10000 --keep``, then
``python bench/bench_export.py --archives .bench-scale/sqlite-10000-PID``): aiida-core's ``create_archive`` followed
by the scrubbing (``writer='aiida'``, deflate level 6 as before) next to the bulk writer (``writer='bulk'``, at
level 1 and 6), with the CPU seconds and frames per CPU second of each.

The AiiDA-level comparison asked by the issue (the exporter of a stored dataset against loading every DFT node and
converting it) belongs to the dataset benchmark of the AiiDA layer; this one measures the formatting underneath.
"""

from __future__ import annotations

import gzip
import io
import os
import pathlib
import tempfile
import time

from common import Row

COUNT = int(os.environ.get('MAD_BENCH_EXPORT_COUNT', '20000'))


def synthetic_frames(count: int, seed: int = 0):
    """Return ``count`` valid frames: random cells of 2-8 atoms, every fifth one a 0D cluster."""
    import numpy as np

    from aiida_mad.dataset.frames import make_frame

    rng = np.random.default_rng(seed)
    frames = []
    for index in range(count):
        natoms = int(rng.integers(2, 9))
        periodic = index % 5 != 0
        matrix = rng.normal(0.0, 0.01, (3, 3))
        energy = float(rng.normal(-100.0, 50.0))
        frames.append(
            make_frame(
                rng.integers(1, 87, natoms),
                rng.uniform(0.0, 5.0, (natoms, 3)),
                cell=np.diag(rng.uniform(3.0, 7.0, 3)) if periodic else np.eye(3) * 30.0,
                pbc=periodic,
                energy=energy,
                energy_baseline_subtracted=energy + float(rng.normal(90.0, 5.0)),
                forces=rng.normal(0.0, 1.0, (natoms, 3)),
                stress=matrix + matrix.T if periodic else None,
                subset='mc3d' if periodic else 'mc3d-cluster',
                split=('train', 'val', 'test')[index % 3],
                source_uuid=f'{index:08x}-0000-4000-8000-{seed:012x}',
                fingerprint='0123456789abcdef' * 4,
                validate=False,
            )
        )
    return frames


def _ase_layout(frames):
    """Return copies of the frames with the file's keys, so that ``ase.io.write`` writes the same content."""
    import numpy as np

    copies = []
    for frame in frames:
        atoms = frame.copy()
        info = frame.info
        atoms.info = {
            'REF_energy': info['energy'],
            'REF_stress': info['stress'].ravel() if 'stress' in info else np.full(9, np.nan),
            'REF_energy_baseline_subtracted': info['energy_baseline_subtracted'],
            'subset': info['subset'],
            'split': info['split'],
            'source_uuid': info['source_uuid'],
            'fingerprint': info['fingerprint'],
        }
        del atoms.arrays['forces']
        atoms.new_array('REF_forces', frame.arrays['forces'])
        copies.append(atoms)
    return copies


def run() -> list[Row]:
    import ase.io

    from aiida_mad.dataset.extxyz import read_extxyz, write_extxyz

    frames = synthetic_frames(COUNT)
    baseline_frames = _ase_layout(frames)
    with tempfile.TemporaryDirectory(prefix='aiida-mad-bench-export-') as dirpath:
        ours_path = pathlib.Path(dirpath) / 'ours.xyz'
        ase_path = pathlib.Path(dirpath) / 'ase.xyz'

        start = time.perf_counter()
        write_extxyz(frames, ours_path)
        write_rate = COUNT / (time.perf_counter() - start)

        start = time.perf_counter()
        ase.io.write(ase_path, baseline_frames, format='extxyz')
        ase_write_rate = COUNT / (time.perf_counter() - start)

        start = time.perf_counter()
        back = read_extxyz(ours_path)
        read_rate = COUNT / (time.perf_counter() - start)
        assert len(back) == COUNT

        start = time.perf_counter()
        ase_back = ase.io.read(ours_path, index=':')
        ase_read_rate = COUNT / (time.perf_counter() - start)
        assert len(ase_back) == COUNT

        from aiida_mad.dataset.extxyz import write_shards, write_split_files_from_shards

        shards = write_shards(frames, pathlib.Path(dirpath) / 'shards', frames_per_shard=5000, compresslevel=1)
        (pathlib.Path(dirpath) / 'ours').mkdir()
        (pathlib.Path(dirpath) / 'ase').mkdir()
        start = time.perf_counter()
        written = write_split_files_from_shards(shards, pathlib.Path(dirpath) / 'ours')
        export_rate = COUNT / (time.perf_counter() - start)
        assert sum(count for _, count in written.values()) == COUNT

        start = time.perf_counter()
        by_split = {'train': [], 'val': [], 'test': []}
        for shard in shards:
            # decompress first: ase.io.read seeks back and forth in a gzip stream, which is quadratic
            with gzip.open(shard, 'rt') as handle:
                text = io.StringIO(handle.read())
            for atoms in ase.io.read(text, index=':', format='extxyz'):
                by_split[atoms.info['split']].append(atoms)
        for split, atoms_list in by_split.items():
            ase.io.write(pathlib.Path(dirpath) / 'ase' / f'mad-{split}.xyz', atoms_list, format='extxyz')
        ase_export_rate = COUNT / (time.perf_counter() - start)

        ours_mb = ours_path.stat().st_size / 1e6
        sizes = f'{ours_mb:.1f} MB ours (lossless repr floats), {ase_path.stat().st_size / 1e6:.1f} MB ase'

    print(
        f'  write: ours {write_rate:.0f} frames/s, ase.io.write {ase_write_rate:.0f} frames/s, '
        f'ratio {write_rate / ase_write_rate:.1f}x ({sizes})'
    )
    print(
        f'  read:  ours {read_rate:.0f} frames/s, ase.io.read {ase_read_rate:.0f} frames/s, '
        f'ratio {read_rate / ase_read_rate:.1f}x'
    )
    print(
        f'  export shards -> split files: ours {export_rate:.0f} frames/s, ase read+write {ase_export_rate:.0f} '
        f'frames/s, ratio {export_rate / ase_export_rate:.1f}x'
    )
    return [
        Row(
            'export: write extxyz',
            write_rate,
            ase_write_rate,
            'frames/s',
            True,
            f'{COUNT} frames of 2-8 atoms; write_extxyz (validated, repr floats) vs ase.io.write; {sizes}',
        ),
        Row(
            'export: read extxyz',
            read_rate,
            ase_read_rate,
            'frames/s',
            True,
            f'{COUNT} frames; read_extxyz (to validated frames) vs ase.io.read on the same file',
        ),
        Row(
            'export: shards -> split files',
            export_rate,
            ase_export_rate,
            'frames/s',
            True,
            f'{COUNT} frames in gzip shards to mad-train/val/test.xyz; write_split_files_from_shards vs '
            'ase.io.read + ase.io.write',
        ),
    ]


def archives_side_by_side(folder: pathlib.Path, group: str = 'mad/dft/mc3d-rattled', profile: str = 'scale') -> None:
    """Time both archive writers on the work chains of ``group`` in the profile kept in ``folder``; print the rows."""
    import resource

    os.environ['AIIDA_PATH'] = str(pathlib.Path(folder).resolve() / '.aiida')
    from aiida import load_profile, orm

    load_profile(profile, allow_switch=True)
    from aiida_mad.export.archive import export_subset_archives
    from aiida_mad.export.dataset import quiet_archive_logger

    query = orm.QueryBuilder().append(orm.Group, filters={'label': group}, tag='group')
    query.append(orm.WorkflowNode, with_group='group', project=['uuid', 'id'])
    pks = [pk for _, pk in sorted(query.all())]
    count = len(pks)
    for name, options in (
        ('create_archive + scrub, level 6', {'writer': 'aiida', 'compression': 6}),
        ('bulk writer, level 1 (default)', {'writer': 'bulk', 'compression': 1}),
        ('bulk writer, level 6', {'writer': 'bulk', 'compression': 6}),
    ):
        with tempfile.TemporaryDirectory(dir=folder) as directory, quiet_archive_logger():
            start, cpu = time.perf_counter(), time.process_time()
            paths = export_subset_archives({'subset': pks}, directory, **options)
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu
            size = sum(path.stat().st_size for path in paths.values())
        print(
            f'  archives, {name:<32} N={count}: wall {wall:8.2f} s, CPU {cpu:7.2f} s, '
            f'{count / cpu:6.0f} frames per CPU second, {size / 1e6:.1f} MB',
            flush=True,
        )
    print(f'  peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB')


if __name__ == '__main__':
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--archives', type=pathlib.Path, metavar='FOLDER', help='a profile kept by bench_scale.py')
    parser.add_argument('--group', default='mad/dft/mc3d-rattled')
    arguments = parser.parse_args()
    if arguments.archives:
        archives_side_by_side(arguments.archives, arguments.group)
    else:
        run()
