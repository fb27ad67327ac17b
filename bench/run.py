"""Run every benchmark in ``bench/`` and print one side-by-side table (``make bench``).

Each ``bench/bench_*.py`` module (except :data:`SEPARATE`) defines ``run() -> list[Row]``, e.g. ``bench_storage``
(bytes per labelled structure); a row compares the project's way with the naive or default way, measured in the same
run. Results also go to ``bench/results/latest.json``. Timings are never asserted.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import Row  # noqa: E402

#: Benchmarks with their own make target, not part of ``make bench`` (``make bench-scale``).
SEPARATE = {'scale'}


def load(path: pathlib.Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # dataclasses with string annotations look their module up there
    spec.loader.exec_module(module)
    return module


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('names', nargs='*', help='run only these benchmarks (file stems without bench_)')
    args = parser.parse_args()

    rows: list[Row] = []
    for path in sorted(HERE.glob('bench_*.py')):
        name = path.stem.removeprefix('bench_')
        if name in SEPARATE or (args.names and name not in args.names):
            continue
        print(f'running {name} ...', flush=True)
        start = time.perf_counter()
        rows.extend(load(path).run())
        print(f'  done in {time.perf_counter() - start:.1f} s', flush=True)

    header = ('benchmark', 'ours', 'baseline', 'unit', 'ratio')
    table = [header] + [row.cells() for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    print()
    for index, line in enumerate(table):
        print('  '.join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))
        if index == 0:
            print('  '.join('-' * width for width in widths))
    for row in rows:
        if row.note:
            print(f'- {row.name}: {row.note}')
    (HERE / 'results').mkdir(exist_ok=True)
    (HERE / 'results' / 'latest.json').write_text(json.dumps([row.as_dict() for row in rows], indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
