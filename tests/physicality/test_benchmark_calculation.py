"""``mad.benchmark`` and ``mad.physicality`` with real tiny models (PET by ``mtt train``, MACE by ``mace_run_train``).

The benchmarks run through the installed ``aiida-mad-benchmark`` script, as on a compute node; the energies they
report are compared with what each model's own ASE calculator gives.
"""

from __future__ import annotations

import csv
import html.parser

import numpy as np
import pytest
from aiida import orm
from aiida.engine import run_get_node
from ase.build import bulk

from aiida_mad.calculations.benchmark import BenchmarkCalculation
from aiida_mad.export.physicality import section
from aiida_mad.inference.models import Model
from aiida_mad.workflows.physicality import PhysicalityWorkChain, benchmark_results
from tests.training import BIN, installed_code


@pytest.fixture
def benchmarker(aiida_localhost, aiida_code_installed):
    """The real ``aiida-mad-benchmark`` code."""
    return installed_code(
        aiida_localhost,
        aiida_code_installed,
        label='aiida-mad-benchmark',
        plugin='mad.benchmark',
        executable=BIN / 'aiida-mad-benchmark',
    )


def builder_for(code, model, benchmark, parameters=None, **inputs):
    builder = PhysicalityWorkChain.get_builder()
    builder.model = model
    builder.benchmark = orm.Str(benchmark)
    if parameters is not None:
        builder.parameters = orm.Dict(parameters)
    builder.calculation.code = code
    builder.calculation.metadata.options.max_wallclock_seconds = 600
    for key, value in inputs.items():
        builder[key] = value
    return builder


def ase_energy(model, atoms) -> float:
    with model.as_path() as path:
        atoms = atoms.copy()
        atoms.calc = Model(path).ase_calculator()
        return float(atoms.get_potential_energy())


def test_dimers_of_every_element_of_a_mace_model(benchmarker, mace_model):
    _, node = run_get_node(builder_for(benchmarker, mace_model, 'dimers', {'points': 5}))
    assert node.is_finished_ok, node.exit_message
    results = node.outputs.results
    assert [item['symbol'] for item in results['items']] == ['H', 'Si']
    assert results['info']['model_kind'] == 'mace'
    assert results['model_uuid'] == mace_model.uuid
    assert results.base.extras.get('mad_benchmark') == 'dimers'
    assert [result.uuid for result in benchmark_results(mace_model, 'dimers')] == [results.uuid]
    silicon = results['items'][1]
    assert len(silicon['distance']) == 5 and silicon['energy'][-1] == 0.0
    for key in ('repulsive', 'smooth', 'passed', 'energy_diff_flips', 'force_flips', 'well_depth'):
        assert key in silicon
    # the curve is the model's own: energy differences equal those of its ASE calculator
    from aiida_mad.inference.physicality import _dimer

    first, last = (ase_energy(mace_model, _dimer('Si', silicon['distance'][i])) for i in (0, -1))
    assert silicon['energy'][0] == pytest.approx(first - last, abs=1e-6)
    assert results['summary']['n_items'] == 2


def test_ev_scan_of_a_pet_model_on_the_bundled_silicon(benchmarker, pet_model):
    _, node = run_get_node(builder_for(benchmarker, pet_model, 'ev_scan', {'points': 7}))
    assert node.is_finished_ok, node.exit_message
    results = node.outputs.results
    (item,) = results['items']  # the model knows H and Si: of the bundled seeds only Si-diamond
    assert item['name'] == 'Si-diamond'
    assert results['info']['model_kind'] == 'metatomic'
    silicon = bulk('Si', 'diamond', a=5.431)
    assert item['volume0'] == pytest.approx(silicon.get_volume())
    assert item['volume'][3] == pytest.approx(silicon.get_volume())
    assert item['energy'][3] == pytest.approx(ase_energy(pet_model, silicon), abs=1e-4)
    assert isinstance(item['derivative_flips'], int)
    assert item['passed'] == (item['derivative_flips'] <= 1)
    summary = results['summary']
    assert summary['failure_percentage'] == (0.0 if item['passed'] else 100.0)
    assert 'spearman_compression_energy' in summary


def test_md_stability_on_a_group_counts_the_scheduled_steps(benchmarker, mace_model):
    group, _ = orm.Group.collection.get_or_create('test-physicality-md')
    structure = orm.StructureData(ase=bulk('Si', 'diamond', a=5.431)).store()
    group.add_nodes([structure])
    parameters = {'total_time_fs': 40.0, 'min_atoms': 8}
    _, node = run_get_node(builder_for(benchmarker, mace_model, 'md_stability', parameters, group=orm.Str(group.label)))
    assert node.is_finished_ok, node.exit_message
    results = node.outputs.results
    assert [item['ensemble'] for item in results['items']] == ['nvt', 'npt']
    for item in results['items']:
        assert item['structure'] == f's{structure.pk}'
        assert item['natoms'] == 8
        assert item['scheduled_steps'] == 20
        assert 0 <= item['completed_steps'] <= 20
        assert item['completed_fraction'] == pytest.approx(item['completed_steps'] / 20)
        assert item['trace']['step'][0] == 0
    ensembles = results['summary']['ensembles']
    assert set(ensembles) == {'nvt', 'npt'}
    assert all(0.0 <= values['completed_percentage'] <= 100.0 for values in ensembles.values())
    calculation = node.called[0]
    assert calculation.inputs.model.uuid == mace_model.uuid
    assert 'structures' in calculation.inputs


def count_calculations() -> int:
    return orm.QueryBuilder().append(orm.CalcJobNode).count()


def test_refusals_name_the_problem_and_store_nothing(benchmarker, mace_model):
    before = count_calculations()
    with pytest.raises(ValueError, match=r'was not trained on O \(it knows H, Si\)'):
        run_get_node(builder_for(benchmarker, mace_model, 'dimers', elements=orm.List(['O'])))
    with pytest.raises(ValueError, match=r"unknown dimers parameter\(s\) \['distance'\]"):
        run_get_node(builder_for(benchmarker, mace_model, 'dimers', {'distance': 3}))
    copper = orm.StructureData(ase=bulk('Cu', 'fcc', a=3.6)).store()
    with pytest.raises(ValueError, match=rf'structure {copper.uuid} has Cu, which model {mace_model.pk}'):
        run_get_node(builder_for(benchmarker, mace_model, 'ev_scan', structures={'copper': copper}))
    with pytest.raises(ValueError, match="unknown bundled structure 'Xx-fcc'"):
        run_get_node(builder_for(benchmarker, mace_model, 'ev_scan', seeds=orm.List(['Xx-fcc'])))
    with pytest.raises(ValueError, match="no group 'no-such-group'"):
        run_get_node(builder_for(benchmarker, mace_model, 'md_stability', group=orm.Str('no-such-group')))
    with pytest.raises(ValueError, match="unknown benchmark 'phonons'"):
        builder = BenchmarkCalculation.get_builder()
        builder.benchmark = orm.Str('phonons')
        builder.model = mace_model
        builder.code = benchmarker
        run_get_node(builder)
    assert count_calculations() == before


class _Ids(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids = set()
        self.polylines = 0

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if 'id' in attributes:
            self.ids.add(attributes['id'])
        self.polylines += tag == 'polyline'


def test_cli_ev_scan_prints_the_table_writes_csv_and_the_dataset_report_shows_it(
    run_cli_command, benchmarker, pet_model, dataset, tmp_path
):
    code = f'{benchmarker.label}@{benchmarker.computer.label}'
    path = tmp_path / 'ev.csv'
    args = ['model', 'ev-scan', pet_model.pk, '--seed', 'Si-diamond', '--points', 5, '-X', code, '--csv', path]
    result = run_cli_command(args)
    assert 'Si-diamond' in result.output
    assert 'E-V scans: failures' in result.output
    with path.open() as handle:
        rows = list(csv.reader(handle))
    assert rows[0][:3] == ['structure', 'formula', 'atoms']
    assert rows[1][:3] == ['Si-diamond', 'Si2', '2']
    result = run_cli_command(args, raises=True)
    assert 'exists already' in result.output
    result = run_cli_command(['model', 'dimers', pet_model.pk, '-e', 'Fe', '-X', code], raises=True)
    assert 'was not trained on Fe' in result.output
    empty, _ = orm.Group.collection.get_or_create('test-physicality-empty')
    result = run_cli_command(['model', 'md-stability', pet_model.pk, '-G', empty.label, '-X', code], raises=True)
    assert "group 'test-physicality-empty' holds no structure" in result.output

    from aiida_mad.export.dataset import write_dataset_report

    report = write_dataset_report(dataset, tmp_path / 'report.html')
    parser = _Ids()
    parser.feed(report.read_text())
    assert any(name.startswith('fig-ev-scan') for name in parser.ids)
    assert parser.polylines >= 1


def test_sections_of_every_benchmark_render_their_figures():
    distance = np.geomspace(1.0, 5.0, 6).tolist()
    dimers = {
        'benchmark': 'dimers',
        'items': [
            {'symbol': 'Ar', 'distance': distance, 'energy': [9.0, 1.0, -0.5, -0.2, -0.1, 0.0], 'passed': True,
             'repulsive': True, 'smooth': True, 'reason': None},
            {'symbol': 'Ne', 'distance': distance, 'energy': [-9.0, -1.0, -0.5, -0.2, -0.1, 0.0], 'passed': False,
             'repulsive': False, 'smooth': True, 'reason': 'no short-range repulsion'},
        ],
        'summary': {'n_items': 2, 'n_failed': 1, 'n_not_repulsive': 1, 'n_not_smooth': 0},
    }  # fmt: skip
    md = {
        'benchmark': 'md_stability',
        'items': [
            {'name': 'a NVT', 'formula': 'Ar4', 'natoms': 4, 'ensemble': 'nvt', 'completed_steps': 10,
             'scheduled_steps': 10, 'completed_fraction': 1.0, 'stopped_because': None},
            {'name': 'a NPT', 'formula': 'Ar4', 'natoms': 4, 'ensemble': 'npt', 'completed_steps': 4,
             'scheduled_steps': 10, 'completed_fraction': 0.4, 'stopped_because': 'step 5: the energy moved'},
        ],
        'summary': {'ensembles': {'nvt': {'n_runs': 1, 'n_complete': 1, 'completed_percentage': 100.0},
                                  'npt': {'n_runs': 1, 'n_complete': 0, 'completed_percentage': 40.0}}},
    }  # fmt: skip
    text = section(dimers, model='model 1', number=6) + section(md, number=7)
    parser = _Ids()
    parser.feed(text)
    assert {'fig-dimers-6', 'fig-dimers-6-Ar-0', 'fig-dimers-6-Ne-1', 'fig-md-stability-7'} <= parser.ids
    assert parser.polylines == 4
    assert 'data-passed="false"' in text
    assert 'NPT 40.0% of scheduled steps completed (0/1 runs complete)' in text
