"""The evaluation section of the HTML report, rendered in real headless Chromium (Debian's ``chromium``)."""

from __future__ import annotations

import numpy as np
import pytest

from aiida_mad.export.evaluation import section
from aiida_mad.export.report import ReportData, render_report
from aiida_mad.learning.evaluation import error_table
from tests.evaluation.test_metrics import three_frames
from tests.export.test_report import find_chromium, parse, run_chromium


@pytest.fixture(scope='module')
def chromium() -> str:
    executable = find_chromium()
    assert executable, 'no chromium (`apt-get install -y chromium`; the project test setup installs it)'
    return executable


def evaluation_table() -> dict:
    table = error_table(three_frames(rotation_std=np.array([0.0002, np.nan, 0.0004])))
    table.update(
        {
            'model': 'c0ffee00-0000-0000-0000-000000000000',
            'model_architecture': 'pet',
            'dataset': 'da7a0000-0000-0000-0000-000000000000',
            'dataset_name': 'tiny <set>',
            'split': 'test',
            'same_level_of_theory': False,
            'rotations': {'n_rotations': 38, 'order': 9, 'in_plane': 1},
        }
    )
    return table


def test_evaluation_section_in_chromium(chromium, tmp_path):
    table = evaluation_table()
    data = ReportData(
        name='tiny',
        subset=['a', 'b', 'a'],
        split=['test', 'test', 'test'],
        natoms=[2, 1, 3],
        energy_per_atom=[-1.0, -2.0, -1.0],
        max_force=[0.1, 0.2, 0.3],
        sections=[section(table, number=6, model='model 7 (pet)')],
    )
    page = tmp_path / 'report.html'
    page.write_text(render_report(data), encoding='utf-8')
    root = parse(run_chromium(chromium, tmp_path, page, '--dump-dom').stdout)
    figure = root.by_id('fig-evaluation-6')
    assert figure.attrs['data-model'] == table['model']
    rows = root.by_id('fig-evaluation-6-table').find_all(tag='tr')
    assert [row.attrs.get('data-subset') for row in rows[1:]] == ['a', 'b', 'overall']
    overall = rows[-1].text()
    assert '23.3 | 26.5' in overall  # energy MAE | RMSE of the three frames, meV/atom
    assert '0.300 (0.400)' in overall  # rotational std mean (max), meV/atom
    panels = {panel.attrs['data-quantity']: panel for panel in figure.find_all(tag='svg')}
    assert sorted(panels) == ['energy_mae', 'forces_mae', 'rotation_std', 'stress_mae']
    bars = panels['energy_mae'].find_all(tag='rect')
    assert [bar.attrs['data-subset'] for bar in bars] == ['a', 'b', 'overall']
    assert float(bars[-1].attrs['data-value']) == pytest.approx(table['overall']['energy_mae'], rel=1e-5)
    widths = [float(bar.attrs['width']) for bar in bars]
    assert widths[0] > widths[2] > widths[1]  # 25, 23.3 and 20 meV/atom
    assert [bar.attrs['data-subset'] for bar in panels['rotation_std'].find_all(tag='rect')] == ['a', 'overall']
    caption = figure.find_all(tag='figcaption')[0].text()
    assert 'the test split of tiny <set>' in caption
    assert '38 rotations' in caption
    assert 'another level of theory' in caption
