"""The physicality sections of the HTML report, from real benchmark results, rendered in headless Chromium."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.lj import LennardJones

from aiida_mad.export.physicality import section, summary_line, table
from aiida_mad.export.report import ReportData, render_report
from aiida_mad.inference.physicality import run_dimers, run_ev_scans, run_md_stability
from tests.export.test_report import find_chromium, parse, read_png, run_chromium
from tests.physicality.test_physicality import AttractiveOnly


@pytest.fixture(scope='module')
def chromium() -> str:
    executable = find_chromium()
    assert executable, 'no chromium (`apt-get install -y chromium`; the project test setup installs it)'
    return executable


@pytest.fixture(scope='module')
def results() -> list[dict]:
    lj = LennardJones(sigma=3.4, epsilon=0.0104, rc=10.0, smooth=True)
    argon = bulk('Ar', 'fcc', a=5.26)
    argon.info['name'] = 'Ar-fcc'
    dimers = run_dimers(lj, ['Ar'])
    dimers['items'] += run_dimers(AttractiveOnly(), ['Ne'])['items']
    dimers['summary'].update({'n_items': 2, 'n_failed': 1, 'failed': ['Ne'], 'n_not_repulsive': 1})
    ev = run_ev_scans(lj, [argon])
    md = run_md_stability(lj, [argon], {'total_time_fs': 20.0, 'min_atoms': 8})
    return [dimers, ev, md]


def test_tables_and_summaries(results):
    dimers, ev, md = results
    headers, rows = table(dimers)
    assert headers[0] == 'element' and [row[0] for row in rows] == ['Ar', 'Ne']
    assert [row[-1] for row in rows] == [True, False]
    assert summary_line(ev).startswith('E-V scans: failures 0.0% of 1; Spearman E under compression -1.000')
    _, rows = table(md)
    assert [row[3] for row in rows] == ['NVT', 'NPT']
    assert rows[0][4] == '10/10'
    assert 'NVT 100.0% of scheduled steps completed (1/1 runs complete)' in summary_line(md)


def test_sections_in_chromium(results, chromium, tmp_path):
    data = ReportData(
        name='tiny',
        subset=['a'],
        split=['test'],
        natoms=[2],
        energy_per_atom=[-1.0],
        max_force=[0.1],
        sections=[section(result, model='model 7 (pet)', number=6 + index) for index, result in enumerate(results)],
    )
    page = tmp_path / 'report.html'
    page.write_text(render_report(data), encoding='utf-8')
    root = parse(run_chromium(chromium, tmp_path, page, '--dump-dom').stdout)
    dimers = root.by_id('fig-dimers-6')
    assert dimers.attrs['data-benchmark'] == 'dimers'
    panels = dimers.find_all(tag='svg')
    assert len(panels) == 2
    lines = [panel.find_all(tag='polyline')[0] for panel in panels]
    assert [line.attrs['stroke'] for line in lines] == ['#4e79a7', '#e15759']  # Ne has no repulsion: red
    assert all(len(line.attrs['points'].split()) == 10 for line in lines)
    ev = root.by_id('fig-ev-scan-7').find_all(tag='polyline')
    assert len(ev) == 1 and len(ev[0].attrs['points'].split()) == 21
    assert 'Ar-fcc' in ev[0].attrs['data-label']
    md = root.by_id('fig-md-stability-8').find_all(tag='polyline')
    assert [line.attrs['data-label'] for line in md] == ['NVT (1 runs)', 'NPT (1 runs)']
    headings = [heading.text() for heading in root.find_all(tag='h2')]
    assert 'MD stability of model 7 (pet)' in headings
    png = tmp_path / 'report.png'
    run_chromium(chromium, tmp_path, page, f'--screenshot={png}', '--window-size=1400,2600', '--hide-scrollbars')
    _, _, pixels = read_png(png.read_bytes())
    red = (pixels[..., 0].astype(int) > 200) & (pixels[..., 1] < 120) & (pixels[..., 2] < 120)
    assert np.count_nonzero(red) > 50  # the failed dimer curve is drawn
