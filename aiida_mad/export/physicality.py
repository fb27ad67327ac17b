"""Tables, CSV rows and report figures of the physicality benchmarks (pure rendering of their result dictionaries).

The results are those of :mod:`aiida_mad.inference.physicality` (as stored by ``mad.benchmark``): :func:`table`
gives the rows the CLI prints and writes as CSV, :func:`summary_line` one line per benchmark, and :func:`section` an
HTML section with an inline SVG figure for the report (:class:`aiida_mad.export.report.ReportData` ``sections``):

* dimers: energy against distance, one panel per element, the failed ones marked;
* E-V scans: energy per atom above the minimum against V/V0, one line per structure;
* MD stability: the percentage of runs still valid against the fraction of the scheduled steps, per ensemble (the
  layout of MP-ALOE's Fig. 5).

:func:`dataset_sections` collects the sections of every model trained on a dataset (it queries the AiiDA database;
everything else here is pure).
"""

from __future__ import annotations

import csv
import math
import pathlib
from collections.abc import Sequence

import numpy as np

from aiida_mad.export.report import _e, _fmt, _nice_ticks

__all__ = ('dataset_sections', 'section', 'summary_line', 'table', 'write_csv')

_COLOURS = ('#4e79a7', '#f28e2b', '#76b7b2', '#b07aa1', '#9c755f', '#17becf', '#6b6ecf', '#393b79', '#ce6dbd')
_FAIL = '#e15759'
_TITLES = {'dimers': 'Dimer curves', 'ev_scan': 'E-V scans', 'md_stability': 'MD stability'}


def _number(value, digits: int = 3) -> str:
    return '' if value is None else f'{value:.{digits}f}'


def table(results: dict) -> tuple[list[str], list[list]]:
    """Return ``(headers, rows)`` of a benchmark result: one row per element, structure or MD run."""
    benchmark = results['benchmark']
    rows = []
    if benchmark == 'dimers':
        headers = ['element', 'r_min (Å)', 'well depth (eV)', 'E(r_0) (eV)', 'repulsive', 'smooth', 'ΔE flips']
        headers += ['F flips', 'passed']
        for item in results['items']:
            rows.append(
                [
                    item['symbol'],
                    _number(item.get('minimum_distance')),
                    _number(item.get('well_depth'), 4),
                    _number(item.get('energy_shortest'), 3),
                    item['repulsive'],
                    item['smooth'],
                    item.get('energy_diff_flips'),
                    item.get('force_flips'),
                    item['passed'],
                ]
            )
    elif benchmark == 'ev_scan':
        headers = ['structure', 'formula', 'atoms', 'dE/dV flips', 'ρ E compr.', 'ρ dE/dV compr.', 'ρ E expan.']
        headers += ['V_min/V0', 'passed']
        for item in results['items']:
            rows.append(
                [
                    item['name'],
                    item['formula'],
                    item['natoms'],
                    item.get('derivative_flips'),
                    _number(item.get('spearman_compression_energy')),
                    _number(item.get('spearman_compression_derivative')),
                    _number(item.get('spearman_expansion_energy')),
                    _number(item.get('volume_ratio_minimum')),
                    item['passed'],
                ]
            )
    elif benchmark == 'md_stability':
        headers = ['run', 'formula', 'atoms', 'ensemble', 'steps', 'completed (%)', 'stopped because']
        for item in results['items']:
            rows.append(
                [
                    item['name'],
                    item['formula'],
                    item['natoms'],
                    item['ensemble'].upper(),
                    f'{item["completed_steps"]}/{item["scheduled_steps"]}',
                    f'{100 * item["completed_fraction"]:.1f}',
                    item.get('stopped_because') or '',
                ]
            )
    else:
        raise ValueError(f'unknown benchmark {benchmark!r}')
    return headers, rows


def summary_line(results: dict) -> str:
    """Return the benchmark's headline numbers in one line (MP-ALOE's Table I and Fig. 5 numbers)."""
    summary = results['summary']
    benchmark = results['benchmark']
    if benchmark == 'dimers':
        return (
            f'dimers: {summary["n_failed"]} of {summary["n_items"]} elements failed '
            f'({summary["n_not_repulsive"]} without short-range repulsion, {summary["n_not_smooth"]} not smooth)'
        )
    if benchmark == 'ev_scan':
        return (
            f'E-V scans: failures {summary["failure_percentage"]:.1f}% of {summary["n_items"]}; Spearman E under '
            f'compression {_number(summary.get("spearman_compression_energy"))} (ideal -1), dE/dV under compression '
            f'{_number(summary.get("spearman_compression_derivative"))} (ideal +1), E under expansion '
            f'{_number(summary.get("spearman_expansion_energy"))} (ideal +1)'
        )
    parts = [
        f'{ensemble.upper()} {_number(values["completed_percentage"], 1)}% of scheduled steps completed '
        f'({values["n_complete"]}/{values["n_runs"]} runs complete)'
        for ensemble, values in summary['ensembles'].items()
    ]
    return 'MD stability: ' + '; '.join(parts)


def write_csv(results: dict, path) -> pathlib.Path:
    """Write the rows of :func:`table` to ``path`` (CSV with a header line) and return the path."""
    headers, rows = table(results)
    path = pathlib.Path(path)
    with path.open('w', newline='', encoding='utf-8') as handle:
        writer = csv.writer(handle)
        writer.writerow(headers)
        writer.writerows(rows)
    return path


# ------------------------------------------------------------------------------------------------------------ figures


class _Axes:
    """A plot area mapping data coordinates to SVG coordinates."""

    def __init__(self, x_range, y_range, *, width=420, height=260, left=62, right=14, top=30, bottom=46):
        self.width, self.height = width, height
        self.left, self.top = left, top
        self.plot_w, self.plot_h = width - left - right, height - top - bottom
        self.x0, self.x1 = x_range
        self.y0, self.y1 = y_range
        if self.x1 <= self.x0:
            self.x0, self.x1 = self.x0 - 0.5, self.x1 + 0.5
        if self.y1 <= self.y0:
            self.y0, self.y1 = self.y0 - 0.5, self.y1 + 0.5

    def x(self, value: float) -> float:
        return self.left + (value - self.x0) / (self.x1 - self.x0) * self.plot_w

    def y(self, value: float) -> float:
        value = min(max(value, self.y0), self.y1)
        return self.top + self.plot_h * (1 - (value - self.y0) / (self.y1 - self.y0))

    def frame(self, panel_id: str, title: str, x_label: str, y_label: str, *, note: str = '') -> list[str]:
        parts = [
            f'<svg id="{_e(panel_id)}" class="hist" viewBox="0 0 {self.width} {self.height}" role="img" '
            f'aria-label="{_e(title)}">',
            f'<text class="panel-title" x="{self.left}" y="18">{_e(title)}</text>',
            f'<text class="muted" x="{self.width - 14}" y="18" text-anchor="end">{_e(note)}</text>',
            f'<rect class="plot-bg" x="{self.left}" y="{self.top}" width="{self.plot_w}" height="{self.plot_h}"/>',
        ]
        bottom = self.top + self.plot_h
        for tick in _nice_ticks(self.y0, self.y1, 4):
            y = self.y(tick)
            parts.append(
                f'<line class="grid" x1="{self.left}" x2="{self.left + self.plot_w}" y1="{y:.1f}" y2="{y:.1f}"/>'
            )
            parts.append(
                f'<text class="tick" x="{self.left - 5}" y="{y + 4:.1f}" text-anchor="end">{_fmt(tick)}</text>'
            )
        for tick in _nice_ticks(self.x0, self.x1, 5):
            x = self.x(tick)
            parts.append(f'<line class="axis" x1="{x:.1f}" x2="{x:.1f}" y1="{bottom}" y2="{bottom + 4}"/>')
            parts.append(f'<text class="tick" x="{x:.1f}" y="{bottom + 16}" text-anchor="middle">{_fmt(tick)}</text>')
        parts.append(
            f'<line class="axis" x1="{self.left}" x2="{self.left + self.plot_w}" y1="{bottom}" y2="{bottom}"/>'
        )
        parts.append(f'<line class="axis" x1="{self.left}" x2="{self.left}" y1="{self.top}" y2="{bottom}"/>')
        parts.append(
            f'<text class="axis-label" x="{self.left + self.plot_w / 2}" y="{self.height - 8}" '
            f'text-anchor="middle">{_e(x_label)}</text>'
        )
        parts.append(
            f'<text class="axis-label" transform="translate(14 {self.top + self.plot_h / 2}) rotate(-90)" '
            f'text-anchor="middle">{_e(y_label)}</text>'
        )
        return parts

    def line(self, xs, ys, colour: str, label: str, *, dash: str = '') -> str:
        points = ' '.join(
            f'{self.x(x):.2f},{self.y(y):.2f}'
            for x, y in zip(xs, ys, strict=True)
            if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)
        )
        style = f' stroke-dasharray="{dash}"' if dash else ''
        return (
            f'<polyline class="curve" data-label="{_e(label)}" points="{points}" fill="none" stroke="{colour}" '
            f'stroke-width="1.8"{style}><title>{_e(label)}</title></polyline>'
        )


def _finite(values) -> np.ndarray:
    array = np.array([np.nan if value is None else value for value in values], dtype=float)
    return array[np.isfinite(array)]


def _dimer_panels(results: dict, prefix: str) -> list[str]:
    panels = []
    for index, item in enumerate(results['items']):
        distance = np.asarray(item['distance'], dtype=float)
        energy = np.array([np.nan if value is None else value for value in item['energy']], dtype=float)
        finite = energy[np.isfinite(energy)]
        depth = max(float(-finite.min()) if finite.size else 0.0, 0.0)
        # the short-range wall rises far beyond the well: the plot shows the well and clips the wall at the top
        high = 3.0 * depth if depth > 0 else (min(float(finite.max()), 2.0) if finite.size else 1.0)
        low = -1.2 * depth if depth > 0 else -0.1 * max(high, 0.1)
        axes = _Axes((float(distance.min()), float(distance.max())), (low, high))
        status = 'passed' if item['passed'] else 'FAILED: ' + (item.get('reason') or '')
        parts = axes.frame(f'{prefix}-{item["symbol"]}-{index}', f'{item["symbol"]}₂', 'distance (Å)', 'energy (eV)')
        parts.insert(1, f'<title>{_e(item["symbol"])} dimer: {_e(status)}</title>')
        parts.append(axes.line(distance, energy, _COLOURS[0] if item['passed'] else _FAIL, f'{item["symbol"]}₂'))
        parts.append(
            f'<text class="muted verdict" x="{axes.left + axes.plot_w - 4}" y="{axes.top + 14}" text-anchor="end" '
            f'data-passed="{str(item["passed"]).lower()}">{"passed" if item["passed"] else "failed"}</text>'
        )
        parts.append('</svg>')
        panels.append(''.join(parts))
    return panels


def _ev_panel(results: dict, prefix: str) -> list[str]:
    curves = []
    for item in results['items']:
        volume = np.asarray(item['volume'], dtype=float) / float(item['volume0'])
        energy = np.array([np.nan if value is None else value for value in item['energy']], dtype=float)
        finite = energy[np.isfinite(energy)]
        if not finite.size:
            continue
        curves.append((item, volume, (energy - finite.min()) / item['natoms']))
    if not curves:
        return []
    values = np.concatenate([_finite(curve[2]) for curve in curves])
    axes = _Axes(
        (min(float(curve[1].min()) for curve in curves), max(float(curve[1].max()) for curve in curves)),
        (0.0, float(values.max()) if values.size else 1.0),
    )
    parts = axes.frame(
        f'{prefix}-curves', 'E-V scans', 'V / V0', 'E - E_min (eV/atom)', note=f'{len(curves)} structures'
    )
    for index, (item, volume, energy) in enumerate(curves):
        colour = _COLOURS[index % len(_COLOURS)] if item['passed'] else _FAIL
        label = f'{item["name"]} ({item["formula"]}): ' + (
            'passed' if item['passed'] else item.get('reason') or 'failed'
        )
        parts.append(axes.line(volume, energy, colour, label, dash='' if item['passed'] else '4 3'))
    parts.append('</svg>')
    return [''.join(parts)]


def _md_panel(results: dict, prefix: str) -> list[str]:
    ensembles = list(results['summary']['ensembles'])
    axes = _Axes((0.0, 1.0), (0.0, 100.0))
    parts = axes.frame(
        f'{prefix}-survival', 'Valid MD runs', 'fraction of the scheduled steps', 'valid runs (%)', note=''
    )
    for index, ensemble in enumerate(ensembles):
        fractions = sorted(item['completed_fraction'] for item in results['items'] if item['ensemble'] == ensemble)
        if not fractions:
            continue
        xs, ys = [0.0], [100.0]
        for position, fraction in enumerate(fractions):
            alive = 100.0 * (len(fractions) - position) / len(fractions)
            xs += [fraction, fraction]
            ys += [alive, 100.0 * (len(fractions) - position - 1) / len(fractions) if fraction < 1 else alive]
        xs.append(1.0)
        ys.append(ys[-1])
        parts.append(axes.line(xs, ys, _COLOURS[index % len(_COLOURS)], f'{ensemble.upper()} ({len(fractions)} runs)'))
        parts.append(
            f'<text class="tick" x="{axes.left + 8}" y="{axes.top + axes.plot_h - 10 - 14 * index}" '
            f'fill="{_COLOURS[index % len(_COLOURS)]}">{ensemble.upper()}</text>'
        )
    parts.append('</svg>')
    return [''.join(parts)]


def section(results: dict, *, model: str = '', number: int | None = None) -> str:
    """Return an HTML ``<section>`` with the benchmark's figure, table and summary line.

    :param model: how to name the model in the heading (e.g. ``model 42 (pet)``).
    :param number: the figure number for the caption.
    """
    benchmark = results['benchmark']
    prefix = f'fig-{benchmark.replace("_", "-")}' + (f'-{number}' if number is not None else '')
    if benchmark == 'dimers':
        panels = _dimer_panels(results, prefix)
        what = 'energy against distance of each homonuclear dimer (0 at the largest distance; red: failed)'
    elif benchmark == 'ev_scan':
        panels = _ev_panel(results, prefix)
        what = 'energy per atom above the minimum against V/V0 under uniform strain, no relaxation (red: failed)'
    else:
        panels = _md_panel(results, prefix)
        what = 'percentage of MD runs still valid against the fraction of their scheduled steps, per ensemble'
    headers, rows = table(results)
    head = ''.join(f'<th>{_e(header)}</th>' for header in headers)
    body = ''.join('<tr>' + ''.join(f'<td>{_e(value)}</td>' for value in row) + '</tr>' for row in rows)
    label = f'<b>Figure {number}.</b> ' if number is not None else ''
    title = f'{_TITLES[benchmark]}' + (f' of {_e(model)}' if model else '')
    return (
        f'<section><h2>{title}</h2><figure id="{prefix}" data-benchmark="{benchmark}">'
        f'<div class="panels">{"".join(panels)}</div>'
        f'<table class="benchmark"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
        f'<figcaption>{label}{_e(what)}. {_e(summary_line(results))}.</figcaption></figure></section>'
    )


def dataset_sections(dataset, *, first_number: int = 6) -> list[str]:
    """Return the report sections of the newest benchmark results of every model trained on ``dataset``."""
    from aiida import orm

    from aiida_mad.data.model import ModelData
    from aiida_mad.workflows.physicality import benchmark_results

    query = orm.QueryBuilder().append(ModelData, filters={'attributes.dataset_uuid': dataset.uuid})
    query.order_by({ModelData: {'id': 'asc'}})
    sections: list[str] = []
    for (model,) in query.iterall():
        seen: set[str] = set()
        for node in benchmark_results(model):
            results = node.get_dict()
            if results['benchmark'] in seen:
                continue
            seen.add(results['benchmark'])
            name = f'model {model.pk} ({model.base.attributes.get("architecture", "?")})'
            sections.append(section(results, model=name, number=first_number + len(sections)))
    return sections


def sections_for(results: Sequence[dict], *, model: str = '', first_number: int = 6) -> list[str]:
    """Return one report section per result dictionary, numbered from ``first_number``."""
    return [section(result, model=model, number=first_number + index) for index, result in enumerate(results)]
