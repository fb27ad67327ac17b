"""A self-contained HTML report of one dataset: elements, energies, forces, DFT convergence and splits.

The report is a pure function of plain data (:class:`ReportData`: NumPy columns with one row per frame, plus
per-subset DFT counts); nothing here imports AiiDA. The page has no external resource at all (no script, font or
stylesheet from a network): the figures are inline SVG or HTML with inline CSS, so that it opens offline and can be
attached to a Materials Cloud record as it is. Histograms are computed with one ``numpy.bincount`` per quantity, so a
report of 100 000 frames takes well under a second.
"""

from __future__ import annotations

import dataclasses
import html
import math
import pathlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from ase.data import atomic_numbers, chemical_symbols

from aiida_mad.structures.elements import MAD_ATOMIC_NUMBERS

__all__ = ('ReportData', 'render_report', 'write_report')

#: Number of histogram bins (shared by all subsets of one quantity).
HISTOGRAM_BINS = 40

#: The split names in the order of the split table; other split names found in the data are appended.
SPLITS = ('train', 'val', 'test')

#: DFT states that enter the convergence rate (``aiida_mad.controllers.dft.STATES``: outliers are finished results).
CONVERGENCE_STATES = ('finished', 'outlier', 'failed')

_N_Z = 119  # one column per atomic number 0..118 in per-frame element arrays (column 0 unused)

#: Subset colours: none of them is the green, yellow or red of :data:`_STATE_COLOURS` (finished, outlier, failed).
_SUBSET_COLOURS = (
    '#4e79a7',
    '#f28e2b',
    '#76b7b2',
    '#b07aa1',
    '#9c755f',
    '#17becf',
    '#6b6ecf',
    '#bab0ac',
    '#393b79',
    '#ce6dbd',
)

#: Sequential colour scale (ColorBrewer YlGnBu) for the periodic table, from few to many.
_SCALE = ('#ffffd9', '#edf8b1', '#c7e9b4', '#7fcdbb', '#41b6c4', '#1d91c0', '#225ea8', '#253494', '#081d58')

_STATE_COLOURS = {'finished': '#59a14f', 'outlier': '#edc948', 'failed': '#e15759'}


@dataclasses.dataclass
class ReportData:
    """Everything the report shows, as plain data: one row per frame plus per-subset DFT counts.

    :param name: the dataset name (page title).
    :param subset: MAD subset of each frame, shape ``(n,)``.
    :param split: split of each frame (``train``, ``val`` or ``test``), shape ``(n,)``.
    :param natoms: number of atoms of each frame, shape ``(n,)``.
    :param energy_per_atom: energy per atom of each frame in eV/atom, shape ``(n,)``.
    :param max_force: largest force magnitude over the atoms of each frame in eV/Å, shape ``(n,)``.
    :param element_counts: either per frame, as an integer array of shape ``(n, 119)`` (atoms of atomic number ``Z``
        in column ``Z``) or a sequence of ``n`` mappings ``{symbol: number of atoms}``, from which the report counts
        frames and atoms per element; or per dataset, as a mapping ``{symbol: number of frames containing it}``.
        ``None`` leaves the periodic table empty.
    :param fingerprint: the level-of-theory fingerprint of the dataset.
    :param level_of_theory: the level of theory in plain words
        (:func:`aiida_mad.fingerprint.describe_level_of_theory`).
    :param test_grade: the level of theory is not production grade: the report says so under the title.
    :param convergence: per-subset DFT counts ``{subset: {'finished': n, 'failed': m, 'outlier': k}}``; the three
        states are disjoint (an outlier is a converged result excluded from the dataset). Other keys (``pending``,
        ``running``) are shown but do not enter the rates.
    :param energy_label: what the energy column is, for axis labels (for example a baseline-subtracted energy).
    :param sections: more HTML ``<section>`` elements, shown after the built-in figures in the order given (the
        physicality benchmarks of the dataset's models: :func:`aiida_mad.export.physicality.dataset_sections`).
    """

    name: str
    subset: Any
    split: Any
    natoms: Any
    energy_per_atom: Any
    max_force: Any
    element_counts: Any = None
    fingerprint: str | None = None
    convergence: Mapping[str, Mapping[str, int]] | None = None
    energy_label: str = 'energy per atom'
    level_of_theory: str | None = None
    test_grade: bool = False
    sections: Sequence[str] = ()

    def __post_init__(self):
        self.subset = np.asarray(self.subset, dtype=str).reshape(-1)
        self.split = np.asarray(self.split, dtype=str).reshape(-1)
        self.natoms = np.asarray(self.natoms, dtype=np.int64).reshape(-1)
        self.energy_per_atom = np.asarray(self.energy_per_atom, dtype=float).reshape(-1)
        self.max_force = np.asarray(self.max_force, dtype=float).reshape(-1)
        lengths = {
            column: len(getattr(self, column))
            for column in ('subset', 'split', 'natoms', 'energy_per_atom', 'max_force')
        }
        if len(set(lengths.values())) > 1:
            raise ValueError(f'the per-frame columns differ in length: {lengths}')
        if self.convergence is not None:
            for subset, counts in self.convergence.items():
                bad = {state: count for state, count in counts.items() if int(count) < 0}
                if bad:
                    raise ValueError(f'negative DFT counts for subset {subset!r}: {bad}')

    @property
    def n_frames(self) -> int:
        """Return the number of frames."""
        return len(self.subset)

    @classmethod
    def from_columns(
        cls,
        name: str,
        columns: Mapping[str, Any],
        *,
        fingerprint: str | None = None,
        convergence: Mapping[str, Mapping[str, int]] | None = None,
    ) -> ReportData:
        """Build from a mapping of columns (keys as the field names; ``elements`` is accepted for ``element_counts``).

        :param name: the dataset name.
        :param columns: ``subset``, ``split``, ``natoms``, ``energy_per_atom``, ``max_force`` and optionally
            ``element_counts`` (or ``elements``) and ``energy_label``.
        :param fingerprint: the level-of-theory fingerprint.
        :param convergence: per-subset DFT counts.
        """
        columns = dict(columns)
        if 'elements' in columns and 'element_counts' not in columns:
            columns['element_counts'] = columns.pop('elements')
        required = ('subset', 'split', 'natoms', 'energy_per_atom', 'max_force')
        missing = [key for key in required if key not in columns]
        if missing:
            raise ValueError(f'frames summary lacks the columns {missing}')
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(columns) - known)
        if unknown:
            raise ValueError(f'frames summary has unknown columns {unknown}')
        return cls(name=name, fingerprint=fingerprint, convergence=convergence, **columns)


def write_report(
    path,
    *,
    name: str,
    frames_summary: ReportData | Mapping[str, Any],
    convergence: Mapping[str, Mapping[str, int]] | None = None,
    fingerprint: str | None = None,
) -> pathlib.Path:
    """Write the HTML report of a dataset to ``path`` and return the path.

    :param path: the output file (``.html``); its folder must exist.
    :param name: the dataset name.
    :param frames_summary: a :class:`ReportData`, or a mapping of per-frame columns (see
        :meth:`ReportData.from_columns`).
    :param convergence: per-subset DFT counts ``{subset: {'finished': n, 'failed': m, 'outlier': k}}``; overrides
        those of a :class:`ReportData`.
    :param fingerprint: the level-of-theory fingerprint; overrides that of a :class:`ReportData`.
    """
    if isinstance(frames_summary, ReportData):
        data = dataclasses.replace(
            frames_summary,
            name=name,
            convergence=frames_summary.convergence if convergence is None else convergence,
            fingerprint=frames_summary.fingerprint if fingerprint is None else fingerprint,
        )
    else:
        data = ReportData.from_columns(name, frames_summary, fingerprint=fingerprint, convergence=convergence)
    path = pathlib.Path(path)
    path.write_text(render_report(data), encoding='utf-8')
    return path


def _level_of_theory(data: ReportData) -> str:
    """Return the level of theory in words, with a warning when it is test grade."""
    text = _e(data.level_of_theory) if data.level_of_theory else 'not recorded'
    html = f'<p class="level">Level of theory: <span id="level-of-theory">{text}</span></p>'
    if data.test_grade:
        html += (
            '<p class="test-grade" id="test-grade"><strong>Test grade:</strong> not the production MAD level of theory '
            '(protocol mad or mad-dos with an SSSP family); for tests and demonstrations only.</p>'
        )
    return html


def render_report(data: ReportData) -> str:
    """Return the report of ``data`` as one self-contained HTML document.

    :param data: the dataset summary.
    """
    subsets = _subset_order(data)
    colours = {subset: _SUBSET_COLOURS[index % len(_SUBSET_COLOURS)] for index, subset in enumerate(subsets)}
    name = _e(data.name)
    fingerprint = _e(data.fingerprint) if data.fingerprint else 'not given'
    title = f'MAD dataset report: {name}' + (f' ({_e(data.fingerprint)})' if data.fingerprint else '')
    body = [
        '<header>',
        f'<h1>MAD dataset <span class="name">{name}</span></h1>',
        f'<p class="fingerprint">Level-of-theory fingerprint: <code id="fingerprint">{fingerprint}</code></p>',
        _level_of_theory(data),
        _summary(data, subsets),
        '</header>',
        '<main>',
        _periodic_table_figure(data),
        _splits_figure(data, subsets),
        _convergence_figure(data, subsets, colours),
        _histogram_figure(
            'fig-energy-hist',
            data.subset,
            data.energy_per_atom,
            subsets,
            colours,
            quantity=data.energy_label,
            unit='eV/atom',
            number=4,
            heading='Energies',
        ),
        _histogram_figure(
            'fig-force-hist',
            data.subset,
            data.max_force,
            subsets,
            colours,
            quantity='max force magnitude',
            unit='eV/Å',
            number=5,
            heading='Forces',
            lower=0.0,
        ),
        *data.sections,
        '</main>',
        '<footer>Written by aiida-mad. Self-contained page: no external resources.</footer>',
    ]
    return '\n'.join(
        [
            '<!DOCTYPE html>',
            '<html lang="en">',
            '<head>',
            '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f'<title>{title}</title>',
            f'<style>{_CSS}</style>',
            '</head>',
            '<body>',
            *body,
            '</body>',
            '</html>',
            '',
        ]
    )


# ----------------------------------------------------------------------------------------------------------- helpers


def _e(value) -> str:
    """Return ``value`` as HTML-escaped text (quotes included, so that it is safe in attributes too)."""
    return html.escape(str(value), quote=True)


def _slug(text: str, index: int) -> str:
    """Return an HTML id fragment for ``text``, made unique by ``index``."""
    return f'{re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-").lower() or "subset"}-{index}'


def _fmt(value: float) -> str:
    """Return a short number for tick labels and tables."""
    if value == 0:
        return '0'
    magnitude = abs(value)
    if magnitude >= 1e5 or magnitude < 1e-3:
        return f'{value:.2g}'
    return f'{value:.4g}'


def _compact(count: int) -> str:
    """Return a count that fits a periodic-table cell: exact below 100 000, else ``123k`` or ``1.2M``."""
    if count < 100_000:
        return str(count)
    if count < 10_000_000:
        return f'{count / 1000:.0f}k'
    return f'{count / 1e6:.1f}M'


def _tick_count(count: int) -> str:
    """Return a count for an axis tick: ``950``, ``1k``, ``2.5k``, ``10k``, ``1M``."""
    if count < 1000:
        return str(count)
    if count < 1_000_000:
        return f'{count / 1000:g}k'
    return f'{count / 1e6:g}M'


def _percent(part: int, whole: int) -> str:
    """Return ``part / whole`` as a percentage with one decimal, or an en dash when ``whole`` is 0."""
    return f'{100.0 * part / whole:.1f}%' if whole else '&ndash;'


def _subset_order(data: ReportData) -> list[str]:
    """Return the subsets of the frames and of the convergence counts, sorted by name."""
    names = set(np.unique(data.subset).tolist()) if data.n_frames else set()
    names |= set(data.convergence or {})
    return sorted(names)


def _summary(data: ReportData, subsets: list[str]) -> str:
    """Return the row of headline numbers."""
    frames, _ = _element_totals(data)
    cards = [
        ('frames', f'{data.n_frames:,}'),
        ('atoms', f'{int(data.natoms.sum()):,}'),
        ('subsets', str(len(subsets))),
        ('elements', str(int(np.count_nonzero(frames)))),
    ]
    items = ''.join(
        f'<div class="card" id="summary-{key}"><span class="value">{value}</span><span class="key">{key}</span></div>'
        for key, value in cards
    )
    return f'<div class="cards">{items}</div>'


# --------------------------------------------------------------------------------------------------- periodic table


def _element_totals(data: ReportData) -> tuple[np.ndarray, np.ndarray | None]:
    """Return (frames containing Z, atoms of Z or ``None`` when only per-dataset counts are known), indexed by Z."""
    counts = data.element_counts
    frames = np.zeros(_N_Z, dtype=np.int64)
    if counts is None:
        return frames, None
    if isinstance(counts, Mapping):
        for symbol, count in counts.items():
            frames[_atomic_number(symbol)] += int(count)
        return frames, None
    if not isinstance(counts, Sequence | np.ndarray):
        raise TypeError(f'element_counts: expected a mapping, an array or a sequence of mappings, not {type(counts)}')
    if len(counts) and not isinstance(counts[0], Mapping):
        array = np.asarray(counts, dtype=np.int64)
        if array.ndim != 2:
            raise ValueError(f'element_counts: expected a 2-D array (frames, Z), got shape {array.shape}')
    else:
        array = np.zeros((len(counts), _N_Z), dtype=np.int64)
        for row, composition in enumerate(counts):
            for symbol, count in composition.items():
                array[row, _atomic_number(symbol)] += int(count)
    if array.shape[0] != data.n_frames:
        raise ValueError(f'element_counts has {array.shape[0]} rows for {data.n_frames} frames')
    if array.shape[1] > _N_Z:
        raise ValueError(f'element_counts has {array.shape[1]} columns; at most {_N_Z} (Z = 0..118)')
    atoms = np.zeros(_N_Z, dtype=np.int64)
    atoms[: array.shape[1]] = array.sum(axis=0)
    frames[: array.shape[1]] = np.count_nonzero(array, axis=0)
    return frames, atoms


def _atomic_number(symbol: str) -> int:
    """Return the atomic number of ``symbol`` or raise a ``ValueError`` naming it."""
    try:
        return atomic_numbers[symbol]
    except KeyError:
        raise ValueError(f'element_counts: {symbol!r} is not a chemical element') from None


def _table_position(z: int) -> tuple[int, int]:
    """Return the (grid row, grid column) of element ``z`` (1..86); the lanthanides La-Lu go to row 8."""
    if z == 1:
        return 1, 1
    if z == 2:
        return 1, 18
    starts = ((3, 2), (11, 3), (19, 4), (37, 5), (55, 6))
    period_start, period = max(start for start in starts if start[0] <= z)
    offset = z - period_start
    if period in (2, 3):
        return period, offset + 1 if offset < 2 else offset + 11
    if period in (4, 5):
        return period, offset + 1
    if z <= 56:
        return 6, z - 54
    if z <= 71:
        return 8, z - 54
    return 6, z - 68


def _scale_colour(fraction: float) -> str:
    """Return the colour of the sequential scale at ``fraction`` in [0, 1]."""
    position = min(max(fraction, 0.0), 1.0) * (len(_SCALE) - 1)
    low = math.floor(position)
    high = min(low + 1, len(_SCALE) - 1)
    weight = position - low
    rgb_low = [int(_SCALE[low][i : i + 2], 16) for i in (1, 3, 5)]
    rgb_high = [int(_SCALE[high][i : i + 2], 16) for i in (1, 3, 5)]
    rgb = [round(a + (b - a) * weight) for a, b in zip(rgb_low, rgb_high, strict=True)]
    return '#{:02x}{:02x}{:02x}'.format(*rgb)


def _is_dark(colour: str) -> bool:
    """Return whether white text reads better than black on ``colour``."""
    red, green, blue = (int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5))
    return 0.2126 * red + 0.7152 * green + 0.0722 * blue < 0.5


def _periodic_table_figure(data: ReportData) -> str:
    """Return the periodic-table figure: one cell per MAD element, coloured by the number of frames (log scale)."""
    frames, atoms = _element_totals(data)
    top = int(frames.max())
    log_top = math.log10(top) if top > 1 else 1.0
    cells = []
    for z in MAD_ATOMIC_NUMBERS:
        symbol = chemical_symbols[z]
        row, column = _table_position(z)
        count = int(frames[z])
        style = f'grid-row:{row};grid-column:{column};'
        tooltip = f'{symbol} (Z = {z}): {count:,} frames'
        if atoms is not None:
            tooltip += f', {int(atoms[z]):,} atoms'
        if count:
            colour = _scale_colour(math.log10(count) / log_top if top > 1 else 1.0)
            style += f'background:{colour};color:{"#fff" if _is_dark(colour) else "#111"};'
            number = f'<span class="count">{_compact(count)}</span>'
            css = 'el present'
        else:
            number = '<span class="count"></span>'
            css = 'el absent'
        atoms_attr = f' data-atoms="{int(atoms[z])}"' if atoms is not None else ''
        cells.append(
            f'<div class="{css}" id="pt-{symbol}" data-z="{z}" data-count="{count}"{atoms_attr} style="{style}" '
            f'title="{_e(tooltip)}"><span class="z">{z}</span><span class="sym">{symbol}</span>{number}</div>'
        )
    astatine_row, astatine_column = _table_position(85)
    cells.append(
        f'<div class="el excluded" id="pt-At" data-z="85" style="grid-row:{astatine_row};'
        f'grid-column:{astatine_column};" title="At (Z = 85): not in the MAD element pool">'
        '<span class="z">85</span><span class="sym">At</span><span class="count">n/a</span></div>'
    )
    cells.append('<div class="el placeholder" style="grid-row:6;grid-column:3;">57&ndash;71</div>')
    cells.append('<div class="spacer" style="grid-row:7;grid-column:1 / span 18;"></div>')
    cells.append(_periodic_table_legend(top))
    outside = [
        f'{chemical_symbols[z]} ({int(frames[z]):,})' for z in np.flatnonzero(frames) if z not in MAD_ATOMIC_NUMBERS
    ]
    outside_note = f' Elements outside the MAD pool also present: {_e(", ".join(outside))}.' if outside else ''
    what = (
        'per-frame counts; hover a cell for the number of atoms' if atoms is not None else 'per-dataset counts as given'
    )
    caption = (
        '<b>Figure 1.</b> Number of frames containing each element, on the periodic table of the 85 MAD elements '
        f'(H to Rn without At; lanthanides La&ndash;Lu in the lower row). Colour on a log scale; {what}; empty cells: '
        f'element absent.{outside_note}'
    )
    return (
        '<section><h2>Elements</h2><figure id="fig-periodic-table">'
        f'<div class="ptable" id="periodic-table">{"".join(cells)}</div>'
        f'<figcaption>{caption}</figcaption></figure></section>'
    )


def _periodic_table_legend(top: int) -> str:
    """Return the colour legend of the periodic table, placed in the empty area above the transition metals."""
    stops = ', '.join(_scale_colour(i / 8) for i in range(9))
    if top > 1:
        ticks = [1] + [10**k for k in range(1, int(math.log10(top)) + 1) if 10**k < top] + [top]
        ticks = sorted(set(ticks))
        log_top = math.log10(top)
        labels = ''.join(f'<span style="left:{100 * math.log10(t) / log_top:.1f}%">{_compact(t)}</span>' for t in ticks)
    else:
        labels = f'<span style="left:100%">{top}</span>' if top else '<span style="left:0%">no elements</span>'
    return (
        '<div class="legend" id="periodic-table-legend" style="grid-row:1 / span 3;grid-column:4 / span 9;">'
        '<div class="legend-title">frames containing the element (log scale)</div>'
        f'<div class="legend-bar" style="background:linear-gradient(to right, {stops});"></div>'
        f'<div class="legend-ticks">{labels}</div>'
        '<div class="legend-keys"><span class="swatch absent"></span>absent'
        '<span class="swatch excluded"></span>not in MAD</div></div>'
    )


# ------------------------------------------------------------------------------------------------------------ splits


def _splits_figure(data: ReportData, subsets: list[str]) -> str:
    """Return the split table: frames per subset and split, with fractions, and a total row."""
    found = np.unique(data.split).tolist() if data.n_frames else []
    splits = list(SPLITS) + sorted(set(found) - set(SPLITS))
    counts = _cross_counts(data.subset, data.split, subsets, splits)
    atoms = np.zeros(len(subsets), dtype=np.int64)
    if data.n_frames:
        index = np.searchsorted(np.asarray(subsets), data.subset)
        atoms = np.bincount(index, weights=data.natoms, minlength=len(subsets)).astype(np.int64)
    head = ''.join(f'<th>{_e(split)}</th>' for split in splits)
    rows = []
    for i, subset in enumerate([*subsets, 'total']):
        row = counts.sum(axis=0) if subset == 'total' else counts[i]
        n_atoms = int(atoms.sum()) if subset == 'total' else int(atoms[i])
        total = int(row.sum())
        cells = ''.join(
            f'<td class="num" data-split="{_e(split)}" data-count="{int(count)}">{int(count):,}'
            f'<small>{_percent(int(count), total)}</small></td>'
            for split, count in zip(splits, row, strict=True)
        )
        css = ' class="total"' if subset == 'total' else ''
        rows.append(
            f'<tr{css} data-subset="{_e(subset)}"><th scope="row">{_e(subset)}</th>{cells}'
            f'<td class="num" data-count="{total}">{total:,}</td><td class="num">{n_atoms:,}</td></tr>'
        )
    caption = (
        '<b>Figure 2.</b> Frames per subset and split (the split of a frame depends only on its structure and the '
        'dataset seed; 80:10:10 per subset), with the fraction of the subset in each split.'
    )
    return (
        '<section><h2>Splits</h2><figure id="fig-splits"><table id="table-splits"><thead><tr><th>subset</th>'
        f'{head}<th>frames</th><th>atoms</th></tr></thead><tbody>{"".join(rows)}</tbody></table>'
        f'<figcaption>{caption}</figcaption></figure></section>'
    )


def _cross_counts(rows: np.ndarray, columns: np.ndarray, row_names: list[str], column_names: list[str]) -> np.ndarray:
    """Return the contingency table of two label columns, in the given name orders (vectorised)."""
    table = np.zeros((len(row_names), len(column_names)), dtype=np.int64)
    if len(rows) == 0:
        return table
    row_index = np.searchsorted(np.asarray(row_names), rows)
    column_lookup = {name: i for i, name in enumerate(column_names)}
    unique_columns, inverse = np.unique(columns, return_inverse=True)
    column_index = np.asarray([column_lookup[name] for name in unique_columns.tolist()])[inverse]
    flat = np.bincount(row_index * len(column_names) + column_index, minlength=table.size)
    return flat.reshape(table.shape)


# ------------------------------------------------------------------------------------------------------ convergence


def _convergence_figure(data: ReportData, subsets: list[str], colours: dict[str, str]) -> str:
    """Return the DFT convergence table and a stacked bar per subset (finished, outlier, failed)."""
    caption = (
        '<b>Figure 3.</b> DFT results per subset: finished (converged, used), outlier (converged, excluded by the '
        'max-force threshold of the subset) and failed (not converged). Converged = (finished + outlier) / '
        '(finished + outlier + failed); used = finished / the same total.'
    )
    if not data.convergence:
        return (
            '<section><h2>DFT convergence</h2><figure id="fig-convergence"><p class="empty">No DFT convergence '
            f'counts were given.</p><figcaption>{caption}</figcaption></figure></section>'
        )
    extra = sorted({state for counts in data.convergence.values() for state in counts} - set(CONVERGENCE_STATES))
    states = [*CONVERGENCE_STATES, *extra]
    head = ''.join(f'<th>{_e(state)}</th>' for state in states)
    rows = []
    bars = []
    bar_height, label_width, bar_width = 22, 190, 560
    shown = [subset for subset in subsets if subset in data.convergence]
    for i, subset in enumerate(shown):
        counts = {state: int(data.convergence[subset].get(state, 0)) for state in states}
        done = sum(counts[state] for state in CONVERGENCE_STATES)
        converged = counts['finished'] + counts['outlier']
        cells = ''.join(
            f'<td class="num" data-state="{_e(state)}" data-count="{counts[state]}">{counts[state]:,}</td>'
            for state in states
        )
        rows.append(
            f'<tr data-subset="{_e(subset)}"><th scope="row">{_e(subset)}</th>{cells}'
            f'<td class="num" data-count="{done}">{done:,}</td>'
            f'<td class="num rate" data-rate="{converged / done if done else 0:.6f}">{_percent(converged, done)}</td>'
            f'<td class="num">{_percent(counts["finished"], done)}</td></tr>'
        )
        y = 8 + i * (bar_height + 8)
        bars.append(
            f'<text x="{label_width - 8}" y="{y + bar_height / 2 + 4:.1f}" text-anchor="end">{_e(subset)}</text>'
        )
        x = float(label_width)
        if done == 0:
            bars.append(
                f'<rect x="{x}" y="{y}" width="{bar_width}" height="{bar_height}" fill="#eee"/>'
                f'<text x="{x + 6}" y="{y + bar_height / 2 + 4:.1f}" class="muted">no finished DFT results</text>'
            )
        for state in CONVERGENCE_STATES:
            if done == 0 or counts[state] == 0:
                continue
            width = bar_width * counts[state] / done
            bars.append(
                f'<rect class="conv-bar" data-subset="{_e(subset)}" data-state="{state}" x="{x:.1f}" y="{y}" '
                f'width="{width:.1f}" height="{bar_height}" fill="{_STATE_COLOURS[state]}">'
                f'<title>{_e(subset)}: {counts[state]:,} {state}</title></rect>'
            )
            x += width
        bars.append(
            f'<text x="{label_width + bar_width + 8}" y="{y + bar_height / 2 + 4:.1f}">'
            f'{_percent(converged, done)} converged</text>'
        )
    height = 8 + len(shown) * (bar_height + 8) + 30
    legend_y = height - 14
    legend = ''.join(
        f'<rect x="{label_width + 110 * k}" y="{legend_y - 10}" width="12" height="12" fill="{_STATE_COLOURS[s]}"/>'
        f'<text x="{label_width + 110 * k + 17}" y="{legend_y}">{s}</text>'
        for k, s in enumerate(CONVERGENCE_STATES)
    )
    width = label_width + bar_width + 140
    svg = (
        f'<svg id="convergence-bars" class="chart" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" aria-label="DFT convergence per subset">{"".join(bars)}{legend}</svg>'
    )
    table = (
        f'<table id="table-convergence"><thead><tr><th>subset</th>{head}<th>total</th><th>converged</th>'
        f'<th>used</th></tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )
    return (
        f'<section><h2>DFT convergence</h2><figure id="fig-convergence">{table}{svg}'
        f'<figcaption>{caption}</figcaption></figure></section>'
    )


# ------------------------------------------------------------------------------------------------------- histograms


def _nice_ticks(low: float, high: float, target: int = 5, *, integer: bool = False) -> list[float]:
    """Return round tick values covering [low, high].

    :param low: the lower end.
    :param high: the upper end.
    :param target: about how many intervals.
    :param integer: only integer ticks (for counts).
    """
    if not high > low:
        return [low]
    raw = (high - low) / target
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    if integer:
        step = max(1.0, float(math.ceil(step)))
    first = math.ceil(low / step - 1e-9) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(0.0 if abs(value) < step * 1e-9 else value)
        value += step
    return ticks


def _histograms(labels: np.ndarray, values: np.ndarray, subsets: list[str], lower: float | None):
    """Return (counts per subset and bin, bin edges, non-finite values per subset) with one ``bincount``."""
    finite = np.isfinite(values)
    index = np.searchsorted(np.asarray(subsets), labels) if len(labels) else np.zeros(0, dtype=np.int64)
    dropped = np.bincount(index[~finite], minlength=len(subsets))
    good = values[finite]
    if good.size == 0:
        return np.zeros((len(subsets), HISTOGRAM_BINS), dtype=np.int64), None, dropped
    low = float(good.min()) if lower is None else min(lower, float(good.min()))
    high = float(good.max())
    if high <= low:
        pad = max(abs(low) * 0.01, 0.5)
        low, high = low - pad, high + pad
    edges = np.linspace(low, high, HISTOGRAM_BINS + 1)
    bins = np.clip(((good - low) / (high - low) * HISTOGRAM_BINS).astype(np.int64), 0, HISTOGRAM_BINS - 1)
    flat = np.bincount(index[finite] * HISTOGRAM_BINS + bins, minlength=len(subsets) * HISTOGRAM_BINS)
    return flat.reshape(len(subsets), HISTOGRAM_BINS), edges, dropped


def _histogram_figure(
    figure_id: str,
    labels: np.ndarray,
    values: np.ndarray,
    subsets: list[str],
    colours: dict[str, str],
    *,
    quantity: str,
    unit: str,
    number: int,
    heading: str,
    lower: float | None = None,
) -> str:
    """Return a figure with one histogram panel per subset, all on the same bins."""
    counts, edges, dropped = _histograms(labels, values, subsets, lower)
    nonzero = counts[counts > 0]
    log_y = nonzero.size > 0 and nonzero.max() / nonzero.min() >= 100
    panels = []
    if edges is not None:
        for i, subset in enumerate(subsets):
            panels.append(
                _histogram_panel(
                    f'{figure_id}-{_slug(subset, i)}',
                    subset,
                    counts[i],
                    edges,
                    colours[subset],
                    int(dropped[i]),
                    quantity=quantity,
                    unit=unit,
                    log_y=log_y,
                )
            )
        body = f'<div class="panels">{"".join(panels)}</div>'
        width = edges[1] - edges[0]
        bins_text = f'{HISTOGRAM_BINS} bins of {_fmt(width)} {_e(unit)} shared by all subsets'
    else:
        body = f'<p class="empty">No frames with a finite {_e(quantity)}.</p>'
        bins_text = 'no data'
    scale = 'log scale' if log_y else 'linear scale'
    caption = (
        f'<b>Figure {number}.</b> Distribution of the {_e(quantity)} ({_e(unit)}) per subset: {bins_text}; '
        f'y axis: number of frames ({scale}).'
    )
    return (
        f'<section><h2>{_e(heading)}</h2><figure id="{figure_id}">{body}'
        f'<figcaption>{caption}</figcaption></figure></section>'
    )


def _histogram_panel(
    panel_id: str,
    subset: str,
    counts: np.ndarray,
    edges: np.ndarray,
    colour: str,
    dropped: int,
    *,
    quantity: str,
    unit: str,
    log_y: bool,
) -> str:
    """Return one histogram as an SVG with axes, ticks, axis labels and one ``rect.bar`` per non-empty bin."""
    width, height = 420, 250
    left, right, top, bottom = 58, 14, 30, 48
    plot_w, plot_h = width - left - right, height - top - bottom
    low, high = float(edges[0]), float(edges[-1])
    total = int(counts.sum())
    peak = int(counts.max()) if total else 0

    def x_of(value: float) -> float:
        return left + (value - low) / (high - low) * plot_w

    if log_y:
        y_low, y_high = math.log10(0.5), math.log10(10 ** math.ceil(math.log10(max(peak, 10))))

        def y_of(count: float) -> float:
            return top + plot_h * (1 - (math.log10(max(count, 0.5)) - y_low) / (y_high - y_low))

        y_ticks = [10**k for k in range(round(y_high) + 1)]
    else:
        y_ticks = _nice_ticks(0, max(peak, 1), 4, integer=True)
        y_max = max(y_ticks[-1], peak, 1)

        def y_of(count: float) -> float:
            return top + plot_h * (1 - count / y_max)

    parts = [
        f'<svg id="{panel_id}" class="hist" data-subset="{_e(subset)}" data-frames="{total}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(quantity)} histogram of {_e(subset)}">',
        f'<text class="panel-title" x="{left}" y="18">{_e(subset)}</text>',
        f'<text class="muted" x="{width - right}" y="18" text-anchor="end">{total:,} frames</text>',
        f'<rect class="plot-bg" x="{left}" y="{top}" width="{plot_w}" height="{plot_h}"/>',
    ]
    for tick in y_ticks:
        y = y_of(tick)
        parts.append(f'<line class="grid" x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}"/>')
        label = _tick_count(int(tick))
        parts.append(f'<text class="tick" x="{left - 5}" y="{y + 4:.1f}" text-anchor="end">{label}</text>')
    for tick in _nice_ticks(low, high, 5):
        x = x_of(tick)
        parts.append(f'<line class="axis" x1="{x:.1f}" x2="{x:.1f}" y1="{top + plot_h}" y2="{top + plot_h + 4}"/>')
        parts.append(f'<text class="tick" x="{x:.1f}" y="{top + plot_h + 16}" text-anchor="middle">{_fmt(tick)}</text>')
    baseline = top + plot_h
    for k in np.flatnonzero(counts):
        x0, x1 = x_of(float(edges[k])), x_of(float(edges[k + 1]))
        y = y_of(float(counts[k]))
        parts.append(
            f'<rect class="bar" x="{x0:.2f}" y="{y:.2f}" width="{max(x1 - x0 - 0.6, 0.6):.2f}" '
            f'height="{baseline - y:.2f}" fill="{colour}"><title>{_fmt(float(edges[k]))} to '
            f'{_fmt(float(edges[k + 1]))} {_e(unit)}: {int(counts[k]):,} frames</title></rect>'
        )
    if total == 0:
        parts.append(
            f'<text class="muted" x="{left + plot_w / 2}" y="{top + plot_h / 2}" text-anchor="middle">'
            'no frames in this subset</text>'
        )
    if dropped:
        parts.append(
            f'<text class="muted" x="{left + plot_w - 4}" y="{top + 14}" text-anchor="end">'
            f'{dropped:,} non-finite values left out</text>'
        )
    parts.append(f'<line class="axis" x1="{left}" x2="{left + plot_w}" y1="{baseline}" y2="{baseline}"/>')
    parts.append(f'<line class="axis" x1="{left}" x2="{left}" y1="{top}" y2="{baseline}"/>')
    parts.append(
        f'<text class="axis-label" x="{left + plot_w / 2}" y="{height - 8}" text-anchor="middle">'
        f'{_e(quantity)} ({_e(unit)})</text>'
    )
    y_label = 'frames (log scale)' if log_y else 'frames'
    parts.append(
        f'<text class="axis-label" transform="translate(14 {top + plot_h / 2}) rotate(-90)" text-anchor="middle">'
        f'{y_label}</text>'
    )
    parts.append('</svg>')
    return ''.join(parts)


_CSS = """
:root { --ink: #1d2330; --muted: #6b7280; --line: #d9dde5; --accent: #225ea8; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, 'Segoe UI', Roboto, 'DejaVu Sans', sans-serif;
       color: var(--ink); background: #f5f6f8; }
header, main, footer { max-width: 1320px; margin: 0 auto; padding: 0 24px; }
header { padding-top: 20px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h1 .name { color: var(--accent); }
h2 { font-size: 18px; margin: 0 0 10px; }
.fingerprint { margin: 0 0 12px; color: var(--muted); }
.level { margin: 0 0 12px; }
.test-grade { margin: 0 0 12px; padding: 6px 10px; border-left: 4px solid #b07aa1; background: #f6eef4; }
.fingerprint code { color: var(--ink); background: #e8ebf0; padding: 1px 6px; border-radius: 4px;
                    word-break: break-all; }
.cards { display: flex; gap: 12px; flex-wrap: wrap; margin-bottom: 12px; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 8px 16px; min-width: 120px; }
.card .value { display: block; font-size: 20px; font-weight: 600; }
.card .key { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
section { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 16px 18px;
          margin: 14px 0; }
figure { margin: 0; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 10px; }
.empty { color: var(--muted); font-style: italic; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; margin-bottom: 12px; }
th, td { padding: 5px 12px; border-bottom: 1px solid var(--line); text-align: left; }
thead th { background: #eef1f5; font-weight: 600; }
td.num { text-align: right; }
td small { color: var(--muted); margin-left: 6px; }
tr.total th, tr.total td { font-weight: 600; border-top: 2px solid var(--ink); }
.ptable { display: grid; grid-template-columns: repeat(18, minmax(0, 1fr));
          grid-template-rows: repeat(6, 56px) 12px 56px; gap: 3px; max-width: 1180px; }
.el { position: relative; border: 1px solid #c9ced8; border-radius: 4px; background: #fff; padding: 2px 4px;
      overflow: hidden; }
.el .z { position: absolute; top: 2px; left: 4px; font-size: 9px; opacity: .75; }
.el .sym { display: block; text-align: center; font-weight: 700; font-size: 16px; margin-top: 9px; }
.el .count { display: block; text-align: center; font-size: 11px; font-variant-numeric: tabular-nums; }
.el.absent { background: #fafafa; color: #9aa1ad; }
.el.excluded { background: repeating-linear-gradient(45deg, #eceef2, #eceef2 4px, #dfe2e8 4px, #dfe2e8 8px);
               color: #9aa1ad; }
.el.placeholder { border-style: dashed; color: var(--muted); font-size: 11px; display: flex; align-items: center;
                  justify-content: center; background: transparent; }
.legend { align-self: center; padding: 0 18px; font-size: 12px; }
.legend-title { color: var(--muted); margin-bottom: 4px; }
.legend-bar { height: 14px; border: 1px solid #c9ced8; border-radius: 3px; }
.legend-ticks { position: relative; height: 16px; }
.legend-ticks span { position: absolute; transform: translateX(-50%); top: 2px; font-variant-numeric: tabular-nums; }
.legend-keys { margin-top: 6px; color: var(--muted); display: flex; align-items: center; gap: 6px; }
.swatch { display: inline-block; width: 14px; height: 14px; border: 1px solid #c9ced8; border-radius: 3px;
          margin-left: 8px; }
.swatch.absent { background: #fafafa; }
.swatch.excluded { background: repeating-linear-gradient(45deg, #eceef2, #eceef2 3px, #dfe2e8 3px, #dfe2e8 6px); }
.panels { display: grid; grid-template-columns: repeat(auto-fill, minmax(380px, 1fr)); gap: 10px; }
svg { font: 12px system-ui, -apple-system, 'Segoe UI', Roboto, 'DejaVu Sans', sans-serif; fill: var(--ink); }
svg.hist { width: 100%; height: auto; }
svg.chart { max-width: 100%; height: auto; }
svg .plot-bg { fill: #fafbfc; }
svg .grid { stroke: #e6e9ee; }
svg .axis { stroke: #4b5563; }
svg .tick { font-size: 10px; fill: #4b5563; }
svg .axis-label { font-size: 11px; fill: #374151; }
svg .panel-title { font-weight: 600; font-size: 13px; }
svg .muted { fill: var(--muted); font-size: 11px; }
footer { color: var(--muted); font-size: 12px; padding-bottom: 24px; }
"""
