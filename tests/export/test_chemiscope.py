"""The chemiscope export, checked against the real chemiscope package: its Python input code and its JS viewer."""

from __future__ import annotations

import gzip
import html
import json
import math
import pathlib
import re
import warnings

import chemiscope
import numpy as np
import pytest

from aiida_mad.dataset.frames import FrameError
from aiida_mad.export.chemiscope import (
    BASELINE_PER_ATOM,
    ENERGY,
    ENERGY_PER_ATOM,
    FORCE_MAGNITUDE,
    MAX_FORCE,
    N_ATOMS,
    SOURCE_UUID,
    SPLIT,
    SUBSET,
    read_chemiscope,
    write_chemiscope,
    write_chemiscope_per_subset,
)
from tests.export.test_report import find_chromium, run_chromium

CHEMISCOPE_JS = pathlib.Path(chemiscope.__file__).parent / 'sphinx' / 'static' / 'chemiscope.min.js'
NAME = 'mad <demo> & "test"'
# software WebGL in headless Chromium takes 10-20 s here, several times that on a loaded machine
VIEWER_TIMEOUT = 300


def kind(frame) -> str:
    return {0: '0D', 2: '2D', 3: '3D'}[int(np.sum(frame.pbc))]


def leftovers(directory: pathlib.Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir() if path.name.endswith('.partial'))


@pytest.fixture
def mixed(make_frames):
    """Nine frames, three each of 3D (mc3d), 0D (mc3d-cluster) and 2D (mc2d)."""
    frames = make_frames(9, seed=3)
    assert sorted(kind(frame) for frame in frames) == ['0D'] * 3 + ['2D'] * 3 + ['3D'] * 3
    return frames


@pytest.fixture
def written(mixed, tmp_path):
    path = write_chemiscope(
        mixed, tmp_path / 'mad.chemiscope.json.gz', name=NAME, authors=['A. Author'], references=['doi:10/x']
    )
    return path, read_chemiscope(path)


# ---------------------------------------------------------------------------------------------------- round trip


def test_file_is_gzip_json_with_the_documented_sections(written):
    path, data = written
    assert path.name == 'mad.chemiscope.json.gz'
    with gzip.open(path, 'rt', encoding='utf-8') as handle:
        assert json.load(handle) == data
    assert set(data) == {'meta', 'settings', 'structures', 'environments', 'properties'}
    assert data['meta'] == {
        'name': NAME,
        'description': f'9 structures, {sum(s["size"] for s in data["structures"])} atoms.',
        'authors': ['A. Author'],
        'references': ['doi:10/x'],
    }


def test_structures_round_trip_exactly(written, mixed):
    _, data = written
    assert len(data['structures']) == len(mixed)
    for frame, structure in zip(mixed, data['structures'], strict=True):
        assert structure['size'] == len(frame)
        assert structure['names'] == frame.get_chemical_symbols()
        positions = np.array([structure['x'], structure['y'], structure['z']]).T
        np.testing.assert_array_equal(positions, frame.positions)  # exact: shortest round-trip floats
        if kind(frame) == '0D':
            assert 'cell' not in structure
        else:
            assert len(structure['cell']) == 9
            np.testing.assert_array_equal(np.reshape(structure['cell'], (3, 3)), frame.cell.array)
    assert {kind(frame) for frame in mixed} == {'0D', '2D', '3D'}


def test_properties_round_trip(written, mixed):
    _, data = written
    properties = data['properties']
    structure_names = [ENERGY_PER_ATOM, ENERGY, BASELINE_PER_ATOM, MAX_FORCE, N_ATOMS, SUBSET, SPLIT, SOURCE_UUID]
    assert list(properties) == [*structure_names, FORCE_MAGNITUDE]
    for name in structure_names:
        assert properties[name]['target'] == 'structure'
        assert len(properties[name]['values']) == len(mixed)
    assert properties[FORCE_MAGNITUDE]['target'] == 'atom'
    units = {name: entry.get('units') for name, entry in properties.items()}
    assert units == {
        ENERGY_PER_ATOM: 'eV/atom',
        ENERGY: 'eV',
        BASELINE_PER_ATOM: 'eV/atom',
        MAX_FORCE: 'eV/Å',
        N_ATOMS: None,
        SUBSET: None,
        SPLIT: None,
        SOURCE_UUID: None,
        FORCE_MAGNITUDE: 'eV/Å',
    }

    def values(name):
        return properties[name]['values']

    assert values(ENERGY) == [frame.info['energy'] for frame in mixed]
    assert values(ENERGY_PER_ATOM) == [frame.info['energy'] / len(frame) for frame in mixed]
    assert values(BASELINE_PER_ATOM) == [frame.info['energy_baseline_subtracted'] / len(frame) for frame in mixed]
    assert values(N_ATOMS) == [len(frame) for frame in mixed]
    assert values(SUBSET) == [frame.info['subset'] for frame in mixed]
    assert values(SPLIT) == [frame.info['split'] for frame in mixed]
    assert values(SOURCE_UUID) == [frame.info['source_uuid'] for frame in mixed]
    per_atom = [np.linalg.norm(frame.arrays['forces'], axis=1) for frame in mixed]
    np.testing.assert_allclose(values(FORCE_MAGNITUDE), np.concatenate(per_atom), rtol=1e-15, atol=0)
    np.testing.assert_allclose(values(MAX_FORCE), [norms.max() for norms in per_atom], rtol=1e-15, atol=0)
    offsets = np.cumsum([0] + [len(frame) for frame in mixed])
    for index in range(len(mixed)):  # the max force is one of the structure's own atoms
        assert values(MAX_FORCE)[index] in values(FORCE_MAGNITUDE)[offsets[index] : offsets[index + 1]]


def test_environments_cover_every_atom(written, mixed):
    _, data = written
    expected = [
        {'structure': index, 'center': center, 'cutoff': 3.5}
        for index, frame in enumerate(mixed)
        for center in range(len(frame))
    ]
    assert data['environments'] == expected


def test_default_map_settings(written):
    _, data = written
    assert data['settings'] == {
        'target': 'structure',
        'map': {
            'x': {'property': ENERGY_PER_ATOM, 'scale': 'linear'},
            'y': {'property': MAX_FORCE, 'scale': 'log'},
            'color': {'property': SUBSET, 'palette': 'tab10'},
            'symbol': SPLIT,
        },
    }


def test_optional_parts_follow_the_frames(make_frames, tmp_path):
    frames = make_frames(6, seed=5, subsets=('mc3d',))
    del frames[2].info['energy_baseline_subtracted']
    frames[4].arrays['forces'][:] = 0.0  # a max force of zero cannot go on a log axis
    data = read_chemiscope(
        write_chemiscope(frames, tmp_path / 'a.chemiscope.json.gz', name='a', description='d', environment_cutoff=None)
    )
    assert BASELINE_PER_ATOM not in data['properties']  # not every frame has it
    assert FORCE_MAGNITUDE not in data['properties']  # no environments, no atom property
    assert 'environments' not in data
    assert data['meta'] == {'name': 'a', 'description': 'd'}
    assert data['properties'][MAX_FORCE]['values'][4] == 0.0
    assert data['settings']['map']['y'] == {'property': MAX_FORCE, 'scale': 'linear'}
    assert data['settings']['map']['color'] == {'property': N_ATOMS}  # one subset: colour by size instead


def test_periodic_frame_with_a_zero_cell_vector_gets_no_cell(mixed, tmp_path):
    frame = mixed[2]
    assert kind(frame) == '2D'
    frame.cell[2] = 0.0  # allowed along the non-periodic direction, but chemiscope needs three vectors
    data = read_chemiscope(write_chemiscope(mixed, tmp_path / 'a.chemiscope.json.gz', name='a'))
    assert 'cell' not in data['structures'][2]
    assert 'cell' in data['structures'][5]  # the other 2D frames keep theirs


def test_output_is_deterministic(mixed, tmp_path):
    first = write_chemiscope(mixed, tmp_path / 'a.chemiscope.json.gz', name='x')
    second = write_chemiscope(mixed, tmp_path / 'b.chemiscope.json.gz', name='x')
    assert first.read_bytes() == second.read_bytes()
    assert first.stat().st_mode & 0o777 == 0o644


# ------------------------------------------------------------------------------------ chemiscope's own Python code


def test_chemiscope_create_input_reproduces_the_file(written):
    """Feeding our file through ``chemiscope.create_input`` (its validation path) gives the same dataset back."""
    _, data = written
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # chemiscope warns about unexpected metadata, property keys, NaN values
        rebuilt = chemiscope.create_input(
            structures=data['structures'],
            metadata=data['meta'],
            properties=data['properties'],
            environments=[(env['structure'], env['center'], env['cutoff']) for env in data['environments']],
            settings=data['settings'],
        )
    assert rebuilt == data


def test_chemiscope_converts_the_same_structures(written, mixed):
    """``chemiscope.create_input`` on the ase.Atoms gives the same coordinates, names and periodic cells."""
    _, data = written
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # its ASE adapter warns about our info keys it cannot use
        reference = chemiscope.create_input(
            structures=mixed,
            properties=chemiscope.extract_properties(mixed, only=['energy', 'subset', 'split']),
        )
    for frame, ours, theirs in zip(mixed, data['structures'], reference['structures'], strict=True):
        for key in ('size', 'names', 'x', 'y', 'z'):
            assert ours[key] == theirs[key], key
        if kind(frame) != '0D':  # chemiscope's adapter also writes the DFT box of 0D frames; we leave it out
            assert ours['cell'] == [float(value) for value in theirs['cell']]
    for name, ours in ((ENERGY, ENERGY), (SUBSET, 'subset'), (SPLIT, 'split')):
        assert data['properties'][name]['values'] == reference['properties'][ours]['values']


# ----------------------------------------------------------------------------------- the chemiscope JS viewer

PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>chemiscope export</title><script src="__SCRIPT__"></script></head>
<body>
<div id="meta"></div>
<!-- small panels: Chromium renders WebGL in software (SwiftShader), its cost grows with the canvas area -->
<div id="map" style="width: 240px; height: 200px"></div>
<div id="structure" style="width: 200px; height: 200px"></div>
<div id="info"></div>
<pre id="result">pending</pre>
<script type="application/json" id="dataset">__DATASET__</script>
<script>
const result = document.getElementById('result');
const messages = [];
window.addEventListener('error', (event) => messages.push('error: ' + event.message));
window.addEventListener('unhandledrejection', (event) => messages.push('unhandled: ' + event.reason));

function shadowNodes(root, selector) {
    // the viewer puts the map, the structure viewer and the info panel in shadow roots
    const found = [...root.querySelectorAll(selector)];
    for (const element of root.querySelectorAll('*')) {
        if (element.shadowRoot) found.push(...shadowNodes(element.shadowRoot, selector));
    }
    return found;
}

function allText(id) {
    // the text of an element and of every shadow root below it, with the values of its inputs
    const root = document.getElementById(id);
    const parts = [root.textContent];
    for (const node of shadowNodes(root, '*')) {
        if (node.shadowRoot) parts.push(node.shadowRoot.textContent);
        if (node.value !== undefined && node.value !== '') parts.push(String(node.value));
    }
    return parts.join(' ');
}

function report(status, extra) {
    result.textContent = JSON.stringify(Object.assign({status, messages}, extra));
}

async function main() {
    const dataset = JSON.parse(document.getElementById('dataset').textContent);
    const warnings = new Chemiscope.Warnings();
    warnings.addHandler((message) => messages.push('warning: ' + message));
    const config = {meta: 'meta', map: 'map', info: 'info', structure: 'structure'};
    const viewer = await Chemiscope.DefaultVisualizer.load(config, dataset, warnings);
    const shown = [];
    const infoTexts = [];
    for (let index = 0; index < viewer.indexer.structuresCount(); index++) {
        const indexes = viewer.indexer.fromStructure(index, 'structure');
        await viewer.structure.show(indexes);
        viewer.info.show(indexes);
        viewer.map.select(indexes);
        shown.push(index);
        infoTexts.push(allText('info'));
    }
    viewer.structure.applySettings([{color: {property: 'force magnitude'}}]);
    const canvases = shadowNodes(document.getElementById('structure'), 'canvas');
    const webgl = canvases.some((canvas) => (canvas.getContext('webgl2') || canvas.getContext('webgl')) !== null);
    report('ok', {
        version: Chemiscope.version(),
        structures: viewer.indexer.structuresCount(),
        shown,
        settings: viewer.saveSettings(),
        structureCanvases: canvases.length,
        webgl,
        mapPlots: shadowNodes(document.getElementById('map'), '.js-plotly-plot').length,
        meta: allText('meta'),
        infoTexts,
    });
}

main().catch((error) => report('error', {error: String((error && error.stack) || error)}));
</script>
</body></html>
"""


@pytest.fixture(scope='module')
def chromium() -> str:
    executable = find_chromium()
    if executable is None:
        pytest.fail(
            'Chromium is not installed: the chemiscope export is tested in the real viewer in headless Chromium. '
            "Install Debian's chromium (`apt-get install -y chromium`; the project test setup installs it)."
        )
    return executable


def load_in_viewer(chromium: str, path: pathlib.Path, workdir: pathlib.Path) -> dict:
    """Open ``path`` in chemiscope's DefaultVisualizer in headless Chromium; return what the page reported."""
    text = json.dumps(read_chemiscope(path)).replace('</', '<\\/')
    page = workdir / 'viewer.html'
    page.write_text(PAGE.replace('__SCRIPT__', CHEMISCOPE_JS.as_uri()).replace('__DATASET__', text), encoding='utf-8')
    process = run_chromium(
        chromium,
        workdir,
        page,
        '--enable-unsafe-swiftshader',  # software WebGL for the 3D structure viewer (3Dmol.js)
        '--virtual-time-budget=3000',
        '--dump-dom',
        timeout=VIEWER_TIMEOUT,
    )
    match = re.search(r'<pre id="result">(.*?)</pre>', process.stdout, re.DOTALL)
    assert match is not None, f'no result element in the DOM:\n{process.stdout[:2000]}\n{process.stderr[-2000:]}'
    raw = match.group(1)
    assert raw != 'pending', f'the viewer never finished loading:\n{process.stderr[-3000:]}'
    return json.loads(html.unescape(raw))


def test_chemiscope_viewer_loads_the_file(written, mixed, chromium, tmp_path):
    path, _ = written
    result = load_in_viewer(chromium, path, tmp_path)
    assert result['status'] == 'ok', result.get('error')
    assert result['messages'] == []  # no warning from chemiscope, no JS error
    assert result['version'] == f'v{chemiscope.__version__}'
    assert result['structures'] == len(mixed)
    assert result['shown'] == list(range(len(mixed)))  # every structure (3D, 0D, 2D) displayed without error
    settings = result['settings']
    assert settings['target'] == 'structure'
    assert settings['map']['x']['property'] == ENERGY_PER_ATOM
    assert settings['map']['y']['property'] == MAX_FORCE
    assert settings['map']['y']['scale'] == 'log'
    assert settings['map']['color']['property'] == SUBSET
    assert settings['map']['symbol'] == SPLIT
    assert settings['structure'][0]['color']['property'] == FORCE_MAGNITUDE  # the atom property is usable
    assert result['mapPlots'] >= 1
    assert result['structureCanvases'] >= 1
    assert result['webgl'] is True
    assert NAME in result['meta']
    for index, (frame, text) in enumerate(zip(mixed, result['infoTexts'], strict=True)):
        assert f'Properties for structure {index}' in text
        assert frame.info['source_uuid'] in text
        assert frame.info['subset'] in text


# --------------------------------------------------------------------------------------------------- per subset


def test_per_subset_files(make_frames, tmp_path):
    frames = make_frames(12, seed=4, subsets=('mc3d', 'mc2d', 'mc3d-rattled'))
    directory = tmp_path / 'export'
    paths = write_chemiscope_per_subset(frames, directory)
    assert list(paths) == ['mc2d', 'mc3d', 'mc3d-rattled']
    assert sorted(path.name for path in directory.iterdir()) == [
        'mad-mc2d.chemiscope.json.gz',
        'mad-mc3d-rattled.chemiscope.json.gz',
        'mad-mc3d.chemiscope.json.gz',
    ]
    for subset, path in paths.items():
        data = read_chemiscope(path)
        expected = [frame for frame in frames if frame.info['subset'] == subset]
        assert data['meta']['name'] == f'mad-{subset}'
        assert data['properties'][SUBSET]['values'] == [subset] * len(expected)
        assert data['properties'][SOURCE_UUID]['values'] == [frame.info['source_uuid'] for frame in expected]
        assert [structure['size'] for structure in data['structures']] == [len(frame) for frame in expected]

    # one file already there: without force nothing is written, not even the other subsets
    other = tmp_path / 'other'
    other.mkdir()
    (other / 'mad-mc3d.chemiscope.json.gz').write_bytes(b'keep')
    with pytest.raises(FileExistsError, match=r'mad-mc3d\.chemiscope\.json\.gz'):
        write_chemiscope_per_subset(frames, other)
    assert sorted(path.name for path in other.iterdir()) == ['mad-mc3d.chemiscope.json.gz']
    assert (other / 'mad-mc3d.chemiscope.json.gz').read_bytes() == b'keep'
    paths = write_chemiscope_per_subset(frames, other, name_prefix='run1', force=True)
    assert sorted(path.name for path in other.iterdir()) == [
        'mad-mc3d.chemiscope.json.gz',
        'run1-mc2d.chemiscope.json.gz',
        'run1-mc3d-rattled.chemiscope.json.gz',
        'run1-mc3d.chemiscope.json.gz',
    ]
    assert read_chemiscope(paths['mc2d'])['meta']['name'] == 'run1-mc2d'


# --------------------------------------------------------------------------------------------------- bad input


def test_empty_frame_list_is_refused(tmp_path):
    with pytest.raises(ValueError, match='frame list is empty'):
        write_chemiscope([], tmp_path / 'a.chemiscope.json.gz', name='a')
    with pytest.raises(ValueError, match='frame list is empty'):
        write_chemiscope_per_subset([], tmp_path / 'sub')
    assert list(tmp_path.iterdir()) == []


def test_existing_file_needs_force(mixed, tmp_path):
    path = tmp_path / 'a.chemiscope.json.gz'
    path.write_bytes(b'previous export')
    with pytest.raises(FileExistsError, match='force=True'):
        write_chemiscope(mixed, path, name='a')
    assert path.read_bytes() == b'previous export'
    write_chemiscope(mixed, path, name='a', force=True)
    assert read_chemiscope(path)['meta']['name'] == 'a'
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ('spoil', 'problem'),
    [
        (lambda frame: frame.info.__setitem__('energy', math.nan), r"info\['energy'\] is not finite"),
        (
            lambda frame: frame.info.__setitem__('energy_baseline_subtracted', math.inf),
            r"info\['energy_baseline_subtracted'\] is not finite",
        ),
        (lambda frame: frame.arrays['forces'].__setitem__((0, 1), math.nan), r"arrays\['forces'\] is not all finite"),
        (lambda frame: frame.arrays['positions'].__setitem__((1, 2), -math.inf), 'positions are not all finite'),
    ],
    ids=['nan-energy', 'inf-baseline', 'nan-force', 'inf-position'],
)
def test_non_finite_values_are_refused_naming_the_frame(mixed, tmp_path, spoil, problem):
    path = tmp_path / 'a.chemiscope.json.gz'
    path.write_bytes(b'previous export')
    spoil(mixed[4])
    uuid = mixed[4].info['source_uuid']
    with pytest.raises(FrameError, match=rf'frame 4 \(source_uuid {uuid}\): {problem}'):
        write_chemiscope(mixed, path, name='a', force=True)
    assert path.read_bytes() == b'previous export'  # force=True, but nothing replaced it
    assert leftovers(tmp_path) == []
    with pytest.raises(FrameError, match=rf'frame 4 \(source_uuid {uuid}\)'):
        write_chemiscope_per_subset(mixed, tmp_path / 'sub')
    assert not (tmp_path / 'sub').exists()


def test_overflowing_force_magnitude_is_refused_naming_the_frame(mixed, tmp_path):
    mixed[5].arrays['forces'][2] = [1e200, 0.0, 0.0]  # finite, so a valid frame, but |F|² overflows to infinity
    with pytest.raises(
        ValueError, match=rf'frame 5 \(source_uuid {mixed[5].info["source_uuid"]}\): its force magnitude'
    ):
        write_chemiscope(mixed, tmp_path / 'a.chemiscope.json.gz', name='a')
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_are_refused(mixed, tmp_path):
    path = tmp_path / 'a.chemiscope.json.gz'
    with pytest.raises(ValueError, match='non-empty name'):
        write_chemiscope(mixed, path, name='  ')
    with pytest.raises(ValueError, match='environment_cutoff'):
        write_chemiscope(mixed, path, name='a', environment_cutoff=-1.0)
    with pytest.raises(ValueError, match='authors must be a sequence of strings'):
        write_chemiscope(mixed, path, name='a', authors='A. Author')
    with pytest.raises(ValueError, match='references must be a sequence of strings'):
        write_chemiscope_per_subset(mixed, tmp_path, references=[10.1])
    with pytest.raises(ValueError, match='environment_cutoff'):
        write_chemiscope(mixed, path, name='a', environment_cutoff=True)
    with pytest.raises(ValueError, match='name_prefix'):
        write_chemiscope_per_subset(mixed, tmp_path, name_prefix='a/b')
    with pytest.raises(FileNotFoundError):
        write_chemiscope(mixed, tmp_path / 'missing' / 'a.chemiscope.json.gz', name='a')
    assert list(tmp_path.iterdir()) == []


# -------------------------------------------------------------------------------------------------- scale


def test_many_frames_keep_their_order_and_atoms(make_frames, tmp_path):
    # Throughput is measured by `make bench`, not asserted here; this checks that block-wise writing keeps every frame.
    frames = make_frames(2000, seed=6) * 10  # 20 000 frames, ~100 000 atoms (distinct objects are not needed)
    path = write_chemiscope(frames, tmp_path / 'big.chemiscope.json.gz', name='big')
    data = read_chemiscope(path)
    assert len(data['structures']) == len(frames)
    assert len(data['environments']) == sum(len(frame) for frame in frames)
    assert data['properties'][SOURCE_UUID]['values'][-1] == frames[-1].info['source_uuid']
    assert [structure['size'] for structure in data['structures']] == [len(frame) for frame in frames]
