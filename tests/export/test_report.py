"""The HTML dataset report, rendered in real headless Chromium (Debian's ``chromium``)."""

from __future__ import annotations

import collections
import html
import io
import os
import pathlib
import re
import shutil
import struct
import subprocess
import uuid
import zlib
from html.parser import HTMLParser

import numpy as np
import pytest

from aiida_mad.export.report import ReportData, render_report, write_report
from aiida_mad.structures.elements import MAD_ELEMENTS

CHROMIUM_TIMEOUT = 60
CHROMIUM_FLAGS = (
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
)
FIGURE_IDS = ('fig-periodic-table', 'fig-splits', 'fig-convergence', 'fig-energy-hist', 'fig-force-hist')
NAME = 'mad-demo <v1> & "test"'
FINGERPRINT = 'pbesol-sssp-1.3:3f9a0c1e'
CONVERGENCE = {
    'mc2d': {'finished': 58, 'outlier': 2, 'failed': 7},
    'mc3d': {'finished': 200, 'outlier': 0, 'failed': 11},
    'mc3d-rattled': {'finished': 120, 'outlier': 9, 'failed': 31},
    'shiftml-molfrags': {'finished': 0, 'outlier': 0, 'failed': 4},  # no frames in the dataset
}
SUBSET_SIZES = {'mc2d': 60, 'mc3d': 200, 'mc3d-rattled': 120}
POOL = ('H', 'Li', 'C', 'N', 'O', 'Si', 'Fe', 'Cu', 'La', 'Au', 'Rn')


def find_chromium() -> str | None:
    """Return Debian's Chromium (``/usr/bin/chromium``) or a ``chromium`` on ``PATH``, or ``None``."""
    if os.access('/usr/bin/chromium', os.X_OK):
        return '/usr/bin/chromium'
    return shutil.which('chromium')


@pytest.fixture(scope='module')
def chromium() -> str:
    executable = find_chromium()
    if executable is None:
        pytest.fail(
            "Chromium is not installed: the HTML report is tested in real headless Chromium. Install Debian's "
            'chromium (`apt-get install -y chromium`; the project test setup installs it).'
        )
    return executable


def run_chromium(
    chromium: str, workdir: pathlib.Path, page: pathlib.Path, *args: str, timeout: float = 0
) -> subprocess.CompletedProcess:
    """Run headless Chromium on ``page`` with a fresh profile folder under ``workdir``; fail on error or timeout."""
    timeout = timeout or CHROMIUM_TIMEOUT
    profile = workdir / f'chromium-profile-{uuid.uuid4().hex}'
    command = [chromium, *CHROMIUM_FLAGS, f'--user-data-dir={profile}', *args, page.resolve().as_uri()]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f'headless Chromium did not finish within {timeout} s: {command}')
    assert result.returncode == 0, f'chromium exited with {result.returncode}:\n{result.stderr[-3000:]}'
    return result


# ------------------------------------------------------------------------------------------- a small DOM from HTML

VOID = {'area', 'base', 'br', 'col', 'embed', 'hr', 'img', 'input', 'link', 'meta', 'source', 'track', 'wbr'}


class Node:
    def __init__(self, tag: str, attrs: dict[str, str], parent: Node | None):
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[Node | str] = []

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get('class', '').split())

    def text(self) -> str:
        return ''.join(child if isinstance(child, str) else child.text() for child in self.children)

    def iter(self):
        for child in self.children:
            if isinstance(child, Node):
                yield child
                yield from child.iter()

    def find_all(self, tag: str | None = None, cls: str | None = None, **attrs: str) -> list[Node]:
        return [
            node
            for node in self.iter()
            if (tag is None or node.tag == tag)
            and (cls is None or cls in node.classes)
            and all(node.attrs.get(key.replace('_', '-')) == value for key, value in attrs.items())
        ]

    def by_id(self, element_id: str) -> Node:
        found = self.find_all(id=element_id)
        assert len(found) == 1, f'expected one element with id {element_id!r}, found {len(found)}'
        return found[0]


class DomBuilder(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = Node('#document', {}, None)
        self.current = self.root

    def handle_starttag(self, tag, attrs):
        node = Node(tag, {key: value or '' for key, value in attrs}, self.current)
        self.current.children.append(node)
        if tag not in VOID:
            self.current = node

    def handle_startendtag(self, tag, attrs):
        self.current.children.append(Node(tag, {key: value or '' for key, value in attrs}, self.current))

    def handle_endtag(self, tag):
        node = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.current = node.parent

    def handle_data(self, data):
        self.current.children.append(data)


def parse(text: str) -> Node:
    builder = DomBuilder()
    builder.feed(text)
    builder.close()
    return builder.root


# ------------------------------------------------------------------------------------------------- synthetic data


def synthetic_frames(seed: int = 7) -> tuple[ReportData, list[dict[str, int]]]:
    """Return a report of three subsets (380 frames) and a fourth subset with DFT counts but no frames."""
    rng = np.random.default_rng(seed)
    subset = np.repeat(list(SUBSET_SIZES), list(SUBSET_SIZES.values()))
    n = len(subset)
    split = np.asarray(['train', 'val', 'test'])[rng.choice(3, size=n, p=[0.8, 0.1, 0.1])]
    compositions = []
    for _ in range(n):
        symbols = rng.choice(POOL, size=rng.integers(1, 4), replace=False)
        compositions.append({str(symbol): int(rng.integers(1, 9)) for symbol in symbols})
    natoms = np.asarray([sum(composition.values()) for composition in compositions])
    energy = rng.normal(-5.0, 1.2, n)
    force = rng.lognormal(0.0, 1.0, n) * np.where(subset == 'mc3d-rattled', 5.0, 1.0)
    data = ReportData(
        name=NAME,
        subset=subset,
        split=split,
        natoms=natoms,
        energy_per_atom=energy,
        max_force=force,
        element_counts=compositions,
        fingerprint=FINGERPRINT,
        convergence=CONVERGENCE,
    )
    return data, compositions


@pytest.fixture(scope='module')
def report(tmp_path_factory) -> tuple[pathlib.Path, ReportData, list[dict[str, int]]]:
    data, compositions = synthetic_frames()
    path = write_report(
        tmp_path_factory.mktemp('report') / 'report.html',
        name=NAME,
        frames_summary=data,
        convergence=CONVERGENCE,
        fingerprint=FINGERPRINT,
    )
    return path, data, compositions


@pytest.fixture(scope='module')
def dom(report, chromium, tmp_path_factory) -> Node:
    """The DOM of the report as headless Chromium built it (``--dump-dom``)."""
    path, _, _ = report
    result = run_chromium(chromium, tmp_path_factory.mktemp('chromium'), path, '--dump-dom')
    assert '<figure' in result.stdout, f'no page in the dumped DOM:\n{result.stdout[:2000]}\n{result.stderr[-2000:]}'
    return parse(result.stdout)


# ---------------------------------------------------------------------------------------------- tests in Chromium


def test_dom_title_and_figures(dom):
    title = dom.find_all('head')[0].find_all('title')  # the SVG bars hold <title> tooltips too
    assert len(title) == 1
    assert NAME in title[0].text()
    assert FINGERPRINT in title[0].text()
    assert dom.by_id('fingerprint').text() == FINGERPRINT
    assert NAME in dom.find_all('h1')[0].text()
    for figure_id in FIGURE_IDS:
        figure = dom.by_id(figure_id)
        assert figure.tag == 'figure'
        captions = figure.find_all('figcaption')
        assert len(captions) == 1
        assert captions[0].text().strip()
    assert dom.by_id('summary-frames').text().startswith('380')


def test_dom_periodic_table(dom, report):
    _, _, compositions = report
    frames = collections.Counter(symbol for composition in compositions for symbol in composition)
    atoms = collections.Counter()
    for composition in compositions:
        atoms.update(composition)
    table = dom.by_id('periodic-table')
    cells = [node for node in table.iter() if 'data-z' in node.attrs]
    assert len(cells) == 86  # the 85 MAD elements and astatine, marked as outside the pool
    assert {node.attrs['id'][3:] for node in cells} == {*MAD_ELEMENTS, 'At'}
    assert 'excluded' in dom.by_id('pt-At').classes
    for symbol in MAD_ELEMENTS:
        cell = dom.by_id(f'pt-{symbol}')
        count_text = cell.find_all('span', cls='count')[0].text()
        assert cell.find_all('span', cls='sym')[0].text() == symbol
        if symbol in frames:
            assert 'present' in cell.classes
            assert int(cell.attrs['data-count']) == frames[symbol]
            assert int(cell.attrs['data-atoms']) == atoms[symbol]
            assert count_text == str(frames[symbol])
            assert 'background:#' in cell.attrs['style']
        else:
            assert 'absent' in cell.classes
            assert cell.attrs['data-count'] == '0'
            assert count_text == ''
    # La sits in the lanthanide row below the main table, Rn at the end of period 6
    assert 'grid-row:8' in dom.by_id('pt-La').attrs['style']
    assert 'grid-row:6;grid-column:18' in dom.by_id('pt-Rn').attrs['style']
    legend = dom.by_id('periodic-table-legend')
    assert str(max(frames.values())) in legend.text()


@pytest.mark.parametrize(('figure_id', 'unit'), [('fig-energy-hist', 'eV/atom'), ('fig-force-hist', 'eV/Å')])
def test_dom_histograms(dom, figure_id, unit):
    figure = dom.by_id(figure_id)
    panels = figure.find_all('svg', cls='hist')
    assert {panel.attrs['data-subset'] for panel in panels} == set(CONVERGENCE)
    for panel in panels:
        subset = panel.attrs['data-subset']
        bars = panel.find_all('rect', cls='bar')
        expected = SUBSET_SIZES.get(subset, 0)
        assert int(panel.attrs['data-frames']) == expected
        assert f'({unit})' in panel.text()
        if expected == 0:
            assert bars == []
            assert 'no frames in this subset' in panel.text()
            continue
        assert len(bars) > 0
        assert all(float(bar.attrs['height']) > 0 for bar in bars)
        # every bar says how many frames it holds: together, all frames of the subset
        in_bars = [int(re.search(r': ([\d,]+) frames', bar.text()).group(1).replace(',', '')) for bar in bars]
        assert sum(in_bars) == expected


def test_dom_convergence_table(dom):
    table = dom.by_id('table-convergence')
    rows = {row.attrs['data-subset']: row for row in table.find_all('tr') if 'data-subset' in row.attrs}
    assert set(rows) == set(CONVERGENCE)
    for subset, counts in CONVERGENCE.items():
        cells = {cell.attrs['data-state']: cell for cell in rows[subset].find_all('td') if 'data-state' in cell.attrs}
        for state, count in counts.items():
            assert int(cells[state].attrs['data-count']) == count
            assert cells[state].text() == f'{count:,}'
        total = sum(counts.values())
        rate = rows[subset].find_all('td', cls='rate')[0]
        expected = (counts['finished'] + counts['outlier']) / total
        assert float(rate.attrs['data-rate']) == pytest.approx(expected, abs=1e-6)
        assert rate.text() == f'{100 * expected:.1f}%'
    bars = dom.by_id('convergence-bars').find_all('rect', cls='conv-bar')
    drawn = {(bar.attrs['data-subset'], bar.attrs['data-state']) for bar in bars}
    expected_bars = {(s, state) for s, counts in CONVERGENCE.items() for state, n in counts.items() if n}
    assert drawn == expected_bars


def test_dom_split_table(dom, report):
    _, data, _ = report
    table = dom.by_id('table-splits')
    rows = {row.attrs['data-subset']: row for row in table.find_all('tr') if 'data-subset' in row.attrs}
    assert set(rows) == {*CONVERGENCE, 'total'}
    for subset in [*CONVERGENCE, 'total']:
        mask = np.ones(data.n_frames, bool) if subset == 'total' else data.subset == subset
        cells = {cell.attrs['data-split']: cell for cell in rows[subset].find_all('td') if 'data-split' in cell.attrs}
        assert set(cells) == {'train', 'val', 'test'}
        for split, cell in cells.items():
            expected = int(np.count_nonzero(mask & (data.split == split)))
            assert int(cell.attrs['data-count']) == expected
            assert cell.text().startswith(f'{expected:,}')
    assert rows['shiftml-molfrags'].find_all('td')[3].attrs['data-count'] == '0'
    assert rows['total'].find_all('td')[3].attrs['data-count'] == '380'


def test_screenshot(report, chromium, tmp_path):
    path, _, _ = report
    png = tmp_path / 'report.png'
    run_chromium(chromium, tmp_path, path, f'--screenshot={png}', '--window-size=1400,2400', '--hide-scrollbars')
    assert png.is_file()
    raw = png.read_bytes()
    assert len(raw) > 50_000, f'screenshot suspiciously small: {len(raw)} bytes'
    width, height, pixels = read_png(raw)
    assert (width, height) == (1400, 2400)
    colours = np.unique(pixels.reshape(-1, pixels.shape[-1])[::7], axis=0)
    assert len(colours) > 50, f'screenshot has only {len(colours)} colours'
    # the header area is not blank, and the saturated blues of the periodic table are on the page
    assert np.any(pixels[:200].std(axis=(0, 1)) > 10)
    blue = (pixels[..., 2].astype(int) - pixels[..., 0].astype(int)) > 80
    assert np.count_nonzero(blue) > 2000
    if os.environ.get('MAD_REPORT_SCREENSHOT'):
        shutil.copy(png, os.environ['MAD_REPORT_SCREENSHOT'])


def read_png(raw: bytes) -> tuple[int, int, np.ndarray]:
    """Return (width, height, RGB(A) pixels) of a PNG: checks the signature and IHDR here, decodes with Pillow.

    Pillow comes with the project's dependencies (pymatgen -> matplotlib); the IHDR check does not need it.
    """
    assert raw[:8] == b'\x89PNG\r\n\x1a\n', 'not a PNG file'
    length, kind = struct.unpack('>I4s', raw[8:16])
    assert kind == b'IHDR'
    ihdr = raw[16 : 16 + length]
    assert zlib.crc32(raw[12 : 16 + length]) == struct.unpack('>I', raw[16 + length : 20 + length])[0]
    width, height = struct.unpack('>II', ihdr[:8])
    from PIL import Image

    with Image.open(io.BytesIO(raw)) as image:
        pixels = np.asarray(image.convert('RGB'))
    assert pixels.shape[:2] == (height, width)
    return width, height, pixels


def test_empty_dataset_in_chromium(chromium, tmp_path):
    """No frames, no convergence counts: every figure is still there, with a sentence instead of a plot."""
    path = write_report(
        tmp_path / 'empty.html',
        name='empty',
        frames_summary={'subset': [], 'split': [], 'natoms': [], 'energy_per_atom': [], 'max_force': []},
    )
    root = parse(run_chromium(chromium, tmp_path, path, '--dump-dom').stdout)
    for figure_id in FIGURE_IDS:
        assert root.by_id(figure_id).find_all('figcaption')
    assert 'No DFT convergence counts' in root.by_id('fig-convergence').text()
    assert 'No frames' in root.by_id('fig-energy-hist').text()
    assert root.find_all('rect', cls='bar') == []
    assert root.by_id('fingerprint').text() == 'not given'


# ------------------------------------------------------------------------------------------- tests of the HTML file


def test_self_contained(report):
    path, _, _ = report
    text = path.read_text(encoding='utf-8')
    assert not re.search(r'<script[^>]*\bsrc\s*=', text, re.IGNORECASE)
    assert not re.search(r'\b(?:src|href|xlink:href)\s*=\s*["\']?\s*(?:https?:)?//', text, re.IGNORECASE)
    assert 'http://' not in text
    assert 'https://' not in text
    assert '<link' not in text.lower()
    assert '@import' not in text
    assert 'url(' not in text


def test_text_is_escaped(report):
    path, _, _ = report
    text = path.read_text(encoding='utf-8')
    assert NAME not in text
    assert html.escape(NAME, quote=True) in text
    assert '<v1>' not in text


def test_single_subset_and_per_dataset_counts(tmp_path):
    data = ReportData(
        name='one',
        subset=['mc3d'] * 5,
        split=['train', 'train', 'train', 'val', 'test'],
        natoms=[2, 3, 4, 5, 6],
        energy_per_atom=[-3.0] * 5,  # a single value: the histogram gets a padded range
        max_force=[0.1, 0.2, np.nan, 0.4, 0.5],
        element_counts={'Si': 5, 'O': 3},
    )
    root = parse(render_report(data))
    assert len(root.by_id('fig-energy-hist').find_all('svg', cls='hist')) == 1
    assert len(root.by_id('fig-energy-hist').find_all('rect', cls='bar')) == 1
    assert 'non-finite values left out' in root.by_id('fig-force-hist').text()
    assert root.by_id('pt-Si').attrs['data-count'] == '5'
    assert 'data-atoms' not in root.by_id('pt-Si').attrs
    assert root.by_id('summary-elements').text().startswith('2')


def test_mapping_input_and_errors(tmp_path):
    columns = {
        'subset': ['a', 'b'],
        'split': ['train', 'test'],
        'natoms': [1, 2],
        'energy_per_atom': [-1.0, -2.0],
        'max_force': [0.0, 1.0],
        'elements': np.eye(2, 119, k=1, dtype=int),  # H in frame 1, He in frame 2
    }
    path = write_report(tmp_path / 'r.html', name='m', frames_summary=columns, fingerprint='fp')
    root = parse(path.read_text(encoding='utf-8'))
    assert root.by_id('pt-H').attrs['data-count'] == '1'
    assert root.by_id('pt-He').attrs['data-count'] == '1'
    with pytest.raises(ValueError, match='differ in length'):
        ReportData(name='x', subset=['a'], split=[], natoms=[1], energy_per_atom=[0.0], max_force=[0.0])
    with pytest.raises(ValueError, match='lacks the columns'):
        write_report(tmp_path / 'x.html', name='x', frames_summary={'subset': []})
    with pytest.raises(ValueError, match='not a chemical element'):
        render_report(
            ReportData(
                name='x',
                subset=['a'],
                split=['train'],
                natoms=[1],
                energy_per_atom=[0.0],
                max_force=[0.0],
                element_counts={'Xx': 1},
            )
        )


def _large_report_data(n: int, seed: int = 0) -> ReportData:
    rng = np.random.default_rng(seed)
    elements = np.zeros((n, 119), dtype=np.int64)
    elements[np.arange(n), rng.integers(1, 87, n)] = rng.integers(1, 20, n)
    return ReportData(
        name='big',
        subset=np.asarray(['mc3d', 'mc3d-rattled', 'mc2d', 'mc3d-cluster'])[rng.integers(0, 4, n)],
        split=np.asarray(['train', 'val', 'test'])[rng.choice(3, size=n, p=[0.8, 0.1, 0.1])],
        natoms=rng.integers(1, 100, n),
        energy_per_atom=rng.normal(-5, 2, n),
        max_force=rng.lognormal(0, 1, n),
        element_counts=elements,
        convergence={'mc3d': {'finished': n, 'failed': 0, 'outlier': 0}},
    )


def test_report_of_100k_frames_is_aggregated(tmp_path):
    # The report summarises: its size depends on the bins and tables, not on the number of frames (ten times the
    # frames add digits to the counts and a few sparse bins, not ten times the bytes), and every frame is counted.
    sizes = {}
    for n in (10_000, 100_000):
        path = write_report(tmp_path / f'big-{n}.html', name='big', frames_summary=_large_report_data(n))
        sizes[n] = path.stat().st_size
        root = parse(path.read_text(encoding='utf-8'))
        histograms = root.by_id('fig-force-hist').find_all('svg', cls='hist')
        assert sum(int(p.attrs['data-frames']) for p in histograms) == n
    assert sizes[100_000] < 1_000_000
    assert sizes[100_000] < 1.2 * sizes[10_000], sizes
