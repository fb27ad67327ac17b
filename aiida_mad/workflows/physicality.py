"""``PhysicalityWorkChain`` (``mad.physicality``): a physicality benchmark of a model, its result next to the model.

One work chain serves the three benchmarks of :mod:`aiida_mad.inference.physicality`, chosen by the ``benchmark``
input: ``dimers`` (homonuclear dimer curves, PET-MAD), ``ev_scan`` (E-V scans, MP-ALOE Table I) and
``md_stability`` (NVT and NPT runs with temperature and pressure ramps, MP-ALOE Fig. 5). It runs one
:class:`~aiida_mad.calculations.benchmark.BenchmarkCalculation` (``mad.benchmark``) on the compute node (namespace
``calculation``: the code and the options; GPU with ``parameters.device = 'cuda'``) and returns its ``results``.

Structures: the ``structures`` namespace and/or every structure of the group ``group`` (loaded, never created), and/or
the bundled bulk seeds named in ``seeds``; with none of them, the bundled seeds made only of the model's elements.

The result (``Dict``) is an output of the calculation, whose input is the model, so the graph links every result to
its model; its extras ``mad_benchmark`` and ``mad_model`` make it easy to find (:func:`benchmark_results`).
"""

from __future__ import annotations

from aiida import orm
from aiida.common import AttributeDict
from aiida.engine import WorkChain

from aiida_mad.calculations.benchmark import BenchmarkCalculation
from aiida_mad.data.model import ModelData

__all__ = ('PhysicalityWorkChain', 'benchmark_results', 'group_structures')

#: Inputs of the calculation that the work chain takes at its top level.
_OWN = ('model', 'benchmark', 'structures', 'seeds', 'elements', 'parameters')


def group_structures(label: str) -> dict[str, orm.StructureData]:
    """Return ``{'s<pk>': structure}`` of every ``StructureData`` in the group ``label``.

    :raises ValueError: naming a group that does not exist or holds no structure.
    """
    from aiida.common.exceptions import NotExistent

    try:
        group = orm.load_group(label)
    except NotExistent:
        raise ValueError(f'no group {label!r}') from None
    structures = {f's{node.pk}': node for node in group.nodes if isinstance(node, orm.StructureData)}
    if not structures:
        raise ValueError(f'group {label!r} holds no structure')
    return structures


class PhysicalityWorkChain(WorkChain):
    """Run one physicality benchmark (dimers, E-V scans or MD stability) of a model and keep its result."""

    @classmethod
    def define(cls, spec):
        """Define the process specification."""
        super().define(spec)
        spec.expose_inputs(BenchmarkCalculation, include=_OWN)
        spec.expose_inputs(
            BenchmarkCalculation,
            namespace='calculation',
            exclude=_OWN,
            namespace_options={'help': 'The code and the options of the `mad.benchmark` calculation.'},
        )
        spec.input('group', valid_type=orm.Str, required=False, help='Label of a group of structures to run on.')
        spec.inputs.validator = cls.validate_inputs
        spec.outline(cls.run_benchmark, cls.results)
        spec.output('results', valid_type=orm.Dict, help='Items (curves, traces, metrics, verdicts) and summary.')
        spec.exit_code(400, 'ERROR_BENCHMARK_FAILED', message='the benchmark calculation failed: {message}')

    @staticmethod
    def validate_inputs(value, ctx):
        """Check the group, then the calculation's inputs with the group's structures, before anything runs."""
        from aiida_mad.calculations.benchmark import validate_inputs

        inputs = {key: value[key] for key in _OWN if key in value}
        if 'group' in value:
            try:
                structures = group_structures(value['group'].value)
            except ValueError as exception:
                return str(exception)
            inputs['structures'] = {**structures, **dict(value.get('structures') or {})}
        return validate_inputs(inputs, None)

    def run_benchmark(self):
        """Submit the benchmark calculation."""
        inputs = AttributeDict(self.exposed_inputs(BenchmarkCalculation, 'calculation'))
        inputs.update(self.exposed_inputs(BenchmarkCalculation))
        if 'group' in self.inputs:
            inputs.structures = {**group_structures(self.inputs.group.value), **dict(inputs.get('structures') or {})}
        benchmark = self.inputs.benchmark.value
        model = self.inputs.model
        inputs.metadata = {**dict(inputs.get('metadata', {})), 'label': f'{benchmark} of model {model.pk}'}
        node = self.submit(BenchmarkCalculation, **inputs)
        self.report(f'{benchmark} of model {model.pk}: {BenchmarkCalculation.__name__}<{node.pk}>')
        self.to_context(calculation=node)

    def results(self):
        """Return the calculation's results, tagged with the benchmark and the model."""
        node = self.ctx.calculation
        if not node.is_finished_ok:
            return self.exit_codes.ERROR_BENCHMARK_FAILED.format(
                message=f'{node.process_label}<{node.pk}>: [{node.exit_status}] {node.exit_message}'
            )
        results = node.outputs.results
        results.base.extras.set_many(
            {'mad_benchmark': self.inputs.benchmark.value, 'mad_model': self.inputs.model.uuid}
        )
        self.out('results', results)
        summary = results['summary']
        self.report(f'{summary["n_items"]} item(s), {summary["n_failed"]} failed')
        return None


def benchmark_results(model: ModelData, benchmark: str | None = None) -> list[orm.Dict]:
    """Return the results of the finished ``mad.benchmark`` calculations of ``model`` (of ``benchmark`` only if given).

    The newest result of each benchmark comes first.
    """
    query = orm.QueryBuilder()
    query.append(ModelData, filters={'id': model.pk}, tag='model')
    query.append(
        orm.CalcJobNode,
        with_incoming='model',
        filters={'process_type': 'aiida.calculations:mad.benchmark', 'attributes.exit_status': 0},
        tag='calculation',
    )
    query.append(orm.Dict, with_incoming='calculation', edge_filters={'label': 'results'}, project='*')
    query.order_by({orm.Dict: {'id': 'desc'}})
    results = [node for (node,) in query.iterall()]
    if benchmark is not None:
        results = [node for node in results if node.get('benchmark') == benchmark]
    return results
