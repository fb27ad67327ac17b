"""``aiida-mad-benchmark``: the console script that ``mad.benchmark`` runs on the compute node (pure: no AiiDA).

``aiida-mad-benchmark benchmark.json`` reads the configuration::

    {"benchmark": "ev_scan", "model": "model.pt", "structures": ["structures.xyz"], "seeds": ["Si-diamond"],
     "elements": [], "parameters": {"points": 21}, "device": "cpu", "output": "benchmark-results.json"}

loads the model (:class:`aiida_mad.inference.models.Model`, metatomic or MACE, on ``device``), the structures
(extended-XYZ files, each frame named by ``info['name']`` or its ``source_uuid``) and the bundled seeds named in
``seeds`` (:func:`aiida_mad.structures.seeds.bulk_seeds`), runs the benchmark
(:func:`aiida_mad.inference.physicality.run_benchmark`) and writes its result, with the model kind, the device and
the timings, to ``output`` (JSON). Progress lines go to standard output. Exit status 2 for bad input (a file that is
not a model, an element the model does not know, an unknown parameter), with the reason on standard error.
"""

from __future__ import annotations

import json
import math
import pathlib
import sys
import time

from aiida_mad.scripts import run_script

__all__ = ('DEFAULT_OUTPUT', 'main', 'run')

DEFAULT_OUTPUT = 'benchmark-results.json'


def _clean(value):
    """Return ``value`` with NaN and infinities as ``None`` and NumPy scalars as Python numbers (strict JSON)."""
    if isinstance(value, dict):
        return {str(key): _clean(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(item) for item in value]
    if hasattr(value, 'item') and not isinstance(value, str):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def load_structures(directory: pathlib.Path, files, seeds) -> list:
    """Return the structures of the extended-XYZ ``files`` (relative to ``directory``) and the named bundled seeds.

    :raises ValueError: naming an unknown seed.
    """
    import ase.io

    from aiida_mad.structures.seeds import bulk_seeds

    structures = []
    for name in files:
        structures.extend(ase.io.read(directory / name, index=':'))
    available = bulk_seeds()
    for seed in seeds:
        if seed not in available:
            raise ValueError(f'unknown bundled structure {seed!r}: choose among {", ".join(available)}')
        atoms = available[seed]
        atoms.info['name'] = seed
        structures.append(atoms)
    return structures


def run(config: dict, directory: pathlib.Path) -> dict:
    """Run the benchmark that ``config`` describes, with paths relative to ``directory``; return the result."""
    from aiida_mad.inference.models import Model
    from aiida_mad.inference.physicality import benchmark_parameters, run_benchmark
    from aiida_mad.inference.predict import check_elements

    start = time.perf_counter()
    benchmark = config.get('benchmark')
    parameters = benchmark_parameters(benchmark, config.get('parameters'))
    structures = load_structures(directory, config.get('structures', []), config.get('seeds', []))
    device = config.get('device', 'cpu')
    model = Model(directory / config['model'], device=device)
    elements = list(config.get('elements') or [])
    if benchmark == 'dimers':
        elements = elements or list(model.elements)
        unknown = [symbol for symbol in elements if symbol not in model.elements]
        if unknown:
            raise ValueError(
                f'model {model.path.name} was not trained on {", ".join(unknown)} '
                f'(it knows {", ".join(model.elements)})'
            )
    else:
        if not structures:
            raise ValueError(f'{benchmark} needs structures: none given')
        check_elements(structures, model.elements, model=f'model {model.path.name}')
    loaded = time.perf_counter()
    result = run_benchmark(
        benchmark,
        model,
        structures=structures,
        elements=elements,
        parameters=parameters,
        progress=lambda line: print(line, flush=True),
    )
    finished = time.perf_counter()
    result['info'] = {
        'model_file': model.path.name,
        'model_kind': model.kind,
        'model_elements': list(model.elements),
        'device': device,
        'seconds_loading': loaded - start,
        'seconds_running': finished - loaded,
    }
    result = _clean(result)
    (directory / config.get('output', DEFAULT_OUTPUT)).write_text(json.dumps(result, indent=1))
    return result


def summary(result: dict) -> str:
    """Return the line printed after a run: the benchmark, its items, those that failed, the time."""
    counts = result['summary']
    return (
        f'{result["benchmark"]}: {counts["n_items"]} item(s), {counts["n_failed"]} failed, '
        f'in {result["info"]["seconds_running"]:.3f} s'
    )


def main(argv=None) -> int:
    """Entry point of ``aiida-mad-benchmark``."""
    return run_script('benchmark', argv, doc=__doc__, run=run, summary=summary)


if __name__ == '__main__':  # pragma: no cover
    sys.exit(main())
