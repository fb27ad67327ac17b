"""``BenchmarkCalculation`` (``mad.benchmark``): one physicality benchmark of one model, as a CalcJob.

The calculation runs the ``aiida-mad-benchmark`` console script (:mod:`aiida_mad.inference.benchmark`, installed
with the package; it needs no AiiDA database) on the compute node, on CPU or GPU (``parameters.device``), through the
model's own code (metatomic or MACE). The benchmarks are those of :mod:`aiida_mad.inference.physicality`:

``dimers``
    Homonuclear dimer curves of ``elements`` (default: every element the model was trained on).
``ev_scan``
    E-V scans (+-20 % isotropic strain, no relaxation) of the structures.
``md_stability``
    NVT and NPT runs with temperature (and pressure) ramps on the structures, each repeated to ``min_atoms``.

Structures: namespace ``structures`` (any ``StructureData``) and/or ``seeds``, names of the bundled bulk seeds
(:func:`aiida_mad.structures.seeds.bulk_seeds`, built on the compute node). With neither, the bundled seeds made only
of elements the model knows are used; when there is none, the calculation is refused before anything is stored.

Output ``results`` (``Dict``): the benchmark's items (curves, traces, metrics, verdicts) and summary, the model
kind, the device and the timings. Before anything is stored or submitted (:func:`validate_inputs`): the benchmark
name and parameter keys are checked, the model file is a model of a known kind, and no structure or dimer element
is one the model was not trained on (refused naming the structure or the element).
"""

from __future__ import annotations

import json

from aiida import orm
from aiida.engine import CalcJob

from aiida_mad.calculations.predict import model_elements
from aiida_mad.calculations.training import calculation_info, set_option_defaults
from aiida_mad.data.model import ModelData

__all__ = ('CONFIG_FILE', 'OUTPUT_FILE', 'BenchmarkCalculation', 'default_seeds', 'get_parameters')

CONFIG_FILE = 'benchmark.json'
OUTPUT_FILE = 'benchmark-results.json'
STRUCTURES_FILE = 'structures.xyz'
STDOUT_FILE = 'benchmark.out'
STDERR_FILE = 'benchmark.err'
#: Benchmarks that run on structures (the dimers make their own).
STRUCTURE_BENCHMARKS = ('ev_scan', 'md_stability')


def get_parameters(benchmark: str, parameters: dict | None) -> tuple[dict, str]:
    """Return ``(benchmark parameters merged over their defaults, device)``; ``device`` is taken out of ``parameters``.

    :raises ValueError: naming an unknown benchmark, an unknown key or a bad device.
    """
    from aiida_mad.inference.physicality import benchmark_parameters

    parameters = dict(parameters or {})
    device = parameters.pop('device', 'cpu')
    if not isinstance(device, str) or device.split(':')[0] not in ('cpu', 'cuda'):
        raise ValueError(f"parameters.device must be 'cpu' or 'cuda', got {device!r}")
    return benchmark_parameters(benchmark, parameters), device


def default_seeds(elements) -> list[str]:
    """Return the names of the bundled bulk seeds made only of ``elements``."""
    from aiida_mad.structures.seeds import bulk_seeds

    known = set(elements)
    return [name for name, atoms in bulk_seeds().items() if set(atoms.get_chemical_symbols()) <= known]


def _chosen_seeds(value, elements) -> list[str]:
    if 'seeds' in value:
        return list(value['seeds'].get_list())
    if value.get('structures'):
        return []
    return default_seeds(elements)


def validate_inputs(value, _):
    """Check the benchmark, its parameters, the model and the structures before anything is stored or submitted."""
    if 'benchmark' not in value or 'model' not in value:
        return None
    benchmark = value['benchmark'].value
    model = value['model']
    try:
        get_parameters(benchmark, value['parameters'].get_dict() if 'parameters' in value else None)
        known = model_elements(model)
    except ValueError as exception:
        return str(exception)
    if benchmark == 'dimers':
        if value.get('structures') or 'seeds' in value:
            return 'the dimers benchmark makes its own structures: give `elements`, not `structures` or `seeds`'
        elements = value['elements'].get_list() if 'elements' in value else known
        unknown = [symbol for symbol in elements if symbol not in known]
        if unknown:
            return f'model {model.pk} was not trained on {", ".join(unknown)} (it knows {", ".join(known)})'
        return None
    if 'elements' in value:
        return f'`elements` is for the dimers benchmark; {benchmark} runs on `structures` or `seeds`'
    from aiida_mad.structures.seeds import bulk_seeds

    available = bulk_seeds()
    seeds = _chosen_seeds(value, known)
    if not seeds and not value.get('structures'):
        return (
            f'no bundled structure is made only of the elements of model {model.pk} ({", ".join(known)}): give '
            '`structures`'
        )
    targets = {
        f'structure {node.uuid}': set(node.get_symbols_set()) for node in (value.get('structures') or {}).values()
    }
    for seed in seeds:
        if seed not in available:
            return f'unknown bundled structure {seed!r}: choose among {", ".join(available)}'
        targets[f'bundled structure {seed}'] = set(available[seed].get_chemical_symbols())
    for label, present in targets.items():
        unknown = sorted(present - set(known))
        if unknown:
            return (
                f'{label} has {", ".join(unknown)}, which model {model.pk} was not trained on (it knows '
                f'{", ".join(known)})'
            )
    if benchmark in STRUCTURE_BENCHMARKS:
        for key, node in (value.get('structures') or {}).items():
            if not all(node.pbc):
                return f'structure `{key}` ({node.get_formula()}, uuid {node.uuid}) is not periodic in all directions'
    return None


class BenchmarkCalculation(CalcJob):
    """Run one physicality benchmark (dimers, E-V scans, MD stability) of a model on the compute node."""

    _DEFAULT_PARSER = 'mad.benchmark'

    @classmethod
    def define(cls, spec):
        """Define the process specification."""
        from aiida_mad.inference.physicality import BENCHMARKS

        super().define(spec)
        spec.input('model', valid_type=ModelData, help='The model (`mad.model`).')
        spec.input(
            'benchmark',
            valid_type=orm.Str,
            validator=lambda value, _: (
                None
                if value.value in BENCHMARKS
                else f'unknown benchmark {value.value!r}: choose one of {", ".join(BENCHMARKS)}'
            ),
            help=f'One of {", ".join(BENCHMARKS)}.',
        )
        spec.input_namespace(
            'structures',
            valid_type=orm.StructureData,
            dynamic=True,
            required=False,
            help='Structures of the E-V scans or MD runs.',
        )
        spec.input('seeds', valid_type=orm.List, required=False, help='Names of bundled bulk seeds to run on.')
        spec.input('elements', valid_type=orm.List, required=False, help='Elements of the dimers (default: all).')
        spec.input(
            'parameters',
            valid_type=orm.Dict,
            required=False,
            help='The benchmark parameters (aiida_mad.inference.physicality.DEFAULT_PARAMETERS) and `device`.',
        )
        spec.inputs.validator = validate_inputs
        set_option_defaults(spec, cls._DEFAULT_PARSER, STDOUT_FILE)

        spec.output('results', valid_type=orm.Dict, help='Items (curves, traces, metrics, verdicts) and summary.')
        spec.default_output_node = 'results'

        spec.exit_code(301, 'ERROR_MISSING_OUTPUT_FILES', message='aiida-mad-benchmark wrote no {files}.')
        spec.exit_code(302, 'ERROR_INVALID_INPUT', message='aiida-mad-benchmark refused the input: {message}')
        spec.exit_code(350, 'ERROR_BENCHMARK_FAILED', message='aiida-mad-benchmark failed: {message}')

    def prepare_for_submission(self, folder):
        """Write ``benchmark.json`` (and the structures), copy the model, and return the calculation info."""
        import ase.io

        benchmark = self.inputs.benchmark.value
        parameters, device = get_parameters(
            benchmark, self.inputs.parameters.get_dict() if 'parameters' in self.inputs else None
        )
        model = self.inputs.model
        name = 'model.model' if model.base.attributes.get('architecture', None) == 'mace' else 'model.pt'
        config = {
            'benchmark': benchmark,
            'model': name,
            'structures': [],
            'seeds': [],
            'elements': self.inputs.elements.get_list() if 'elements' in self.inputs else [],
            'parameters': parameters,
            'device': device,
            'output': OUTPUT_FILE,
        }
        if benchmark in STRUCTURE_BENCHMARKS:
            config['seeds'] = _chosen_seeds(self.inputs, model_elements(model))
            structures = self.inputs.get('structures') or {}
            if structures:
                frames = []
                for key, node in sorted(structures.items()):
                    atoms = node.get_ase()
                    atoms.info = {'name': key, 'source_uuid': node.uuid}
                    frames.append(atoms)
                with folder.open(STRUCTURES_FILE, 'w') as handle:
                    ase.io.write(handle, frames, format='extxyz')
                config['structures'] = [STRUCTURES_FILE]
        with folder.open(CONFIG_FILE, 'w') as handle:
            json.dump(config, handle, indent=2)
        return calculation_info(
            self,
            [CONFIG_FILE],
            stderr=STDERR_FILE,
            local_copy_list=[(model.uuid, model.filename, name)],
            retrieve_list=[STDOUT_FILE, STDERR_FILE, OUTPUT_FILE],
        )
