"""The evaluation tables of a dataset's models in the HTML report (rendering of ``mad.evaluate``'s ``table``).

:func:`section` renders one table (a ``mad.evaluate`` ``table`` dictionary) as an HTML ``<section>``: the table in
the layout of PET-MAD's Table I (rows: subsets, then overall; cells ``MAE | RMSE``) and an inline SVG figure with one
panel of horizontal bars per error (energy MAE, force MAE and, when measured, the rotational symmetry error; the
layout of PET-MAD's Fig. 2). :func:`dataset_sections` collects the newest table of every model evaluated on a dataset
(it queries the AiiDA database; the rest is pure). The sections go into
:class:`aiida_mad.export.report.ReportData` ``sections``.
"""

from __future__ import annotations

from aiida_mad.export.report import _e, _fmt, _nice_ticks

__all__ = ('dataset_sections', 'section')

_PANELS = (
    ('energy_mae', 'energy MAE', 'meV/atom', '#4e79a7'),
    ('forces_mae', 'force MAE', 'meV/Å', '#f28e2b'),
    ('stress_mae', 'stress MAE', 'meV/Å³', '#76b7b2'),
    ('rotation_std', 'rotational std', 'meV/atom', '#b07aa1'),
    ('dos_rmse', 'DOS RMSE', 'eV^-½ e^-1 states', '#9c755f'),
)
_WIDTH, _ROW, _LEFT, _TOP = 230, 18, 110, 24


def _panel(rows: list[tuple[str, dict]], key: str, title: str, unit: str, colour: str, prefix: str) -> str:
    """Return one SVG panel of horizontal bars (one per row with a value)."""
    values = [row.get(key) for _, row in rows]
    top = max((value for value in values if value is not None), default=0.0) or 1.0
    ticks = _nice_ticks(0.0, top)
    scale = (_WIDTH - _LEFT - 12) / max(ticks[-1], top)
    height = _TOP + _ROW * len(rows) + 28
    parts = [
        f'<svg class="panel" id="{prefix}-{key.replace("_", "-")}" data-quantity="{key}" width="{_WIDTH}" '
        f'height="{height}" viewBox="0 0 {_WIDTH} {height}" role="img"><title>{_e(title)} ({_e(unit)})</title>',
        f'<text x="{_WIDTH / 2}" y="14" text-anchor="middle" font-size="12">{_e(title)} [{_e(unit)}]</text>',
    ]
    for position, ((name, _), value) in enumerate(zip(rows, values, strict=True)):
        y = _TOP + _ROW * position
        weight = ' font-weight="bold"' if name == 'overall' else ''
        parts.append(f'<text x="{_LEFT - 4}" y="{y + 12}" text-anchor="end" font-size="11"{weight}>{_e(name)}</text>')
        if value is None:
            parts.append(f'<text x="{_LEFT + 2}" y="{y + 12}" font-size="11" fill="#888">—</text>')
            continue
        width = max(value * scale, 0.5)
        parts.append(
            f'<rect class="bar" data-subset="{_e(name)}" data-value="{value:.6g}" x="{_LEFT}" y="{y + 2}" '
            f'width="{width:.2f}" height="{_ROW - 5}" fill="{colour}"><title>{_e(name)}: {_fmt(value)} '
            f'{_e(unit)}</title></rect>'
        )
    axis = _TOP + _ROW * len(rows) + 4
    parts.append(f'<line x1="{_LEFT}" y1="{axis}" x2="{_WIDTH - 12}" y2="{axis}" stroke="#444"/>')
    for tick in ticks:
        x = _LEFT + tick * scale
        if x <= _WIDTH - 10:
            parts.append(f'<text x="{x:.1f}" y="{axis + 14}" text-anchor="middle" font-size="10">{_fmt(tick)}</text>')
    parts.append('</svg>')
    return ''.join(parts)


def section(table: dict, *, number: int | None = None, model: str = '') -> str:
    """Return an HTML ``<section>`` with the evaluation ``table``: the Table-I-style table and the bar panels.

    :param number: the figure number of the caption.
    :param model: how to name the model in the heading (e.g. ``model 42 (pet)``).
    """
    from aiida_mad.learning.evaluation import table_rows

    prefix = 'fig-evaluation' + (f'-{number}' if number is not None else '')
    rows = [*table['subsets'].items(), ('overall', table['overall'])]
    panels = [
        _panel(rows, key, title, unit, colour, prefix)
        for key, title, unit, colour in _PANELS
        if any(row.get(key) is not None for _, row in rows)
    ]
    header, lines = table_rows(table)
    head = ''.join(f'<th>{_e(name)}</th>' for name in header)
    body = ''.join(
        f'<tr data-subset="{_e(line[0])}">' + ''.join(f'<td>{_e(cell)}</td>' for cell in line) + '</tr>'
        for line in lines
    )
    split = table.get('split')
    where = f'the {split} split of {table["dataset_name"]}' if table.get('dataset') else 'structures'
    rotations = table.get('rotations', {})
    grid = (
        f'rotational std over {rotations["n_rotations"]} rotations (Lebedev-Laikov order {rotations.get("order")})'
        if rotations.get('n_rotations')
        else 'no rotations'
    )
    caption = f'<b>Figure {number}.</b> ' if number is not None else ''
    theory = '' if table.get('same_level_of_theory', True) else ' The model was trained at another level of theory.'
    title = 'Model evaluation' + (f' of {_e(model)}' if model else '')
    return (
        f'<section><h2>{title}</h2><figure id="{prefix}" data-model="{_e(table.get("model", ""))}">'
        f'<table class="evaluation" id="{prefix}-table"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
        f'<div class="panels">{"".join(panels)}</div>'
        f'<figcaption>{caption}Errors on {_e(where)} per subset (PET-MAD Table I layout: MAE | RMSE), '
        f'{_e(grid)}.{_e(theory)}</figcaption></figure></section>'
    )


def dataset_sections(dataset, *, first_number: int = 6) -> list[str]:
    """Return one section per model evaluated on ``dataset``: its newest table (of any split), oldest model first."""
    from aiida import orm

    from aiida_mad.workflows.evaluate import evaluation_tables

    sections: list[str] = []
    seen: set[str] = set()
    for node in evaluation_tables(dataset=dataset):
        table = node.get_dict()
        if table['model'] in seen:
            continue
        seen.add(table['model'])
        model = orm.load_node(table['model'])
        name = f'model {model.pk} ({table.get("model_architecture") or "?"})'
        sections.append(section(table, number=first_number + len(sections), model=name))
    return sections
