"""Materials Cloud Archive record folder: metadata checks, optimade.yaml served by optimade-maker, size limits."""

from __future__ import annotations

import os
import shutil
import warnings
import zipfile

import pytest
import yaml
from optimade_maker import config, convert

from aiida_mad.dataset.extxyz import read_extxyz, write_split_files
from aiida_mad.export.folders import MARKER
from aiida_mad.export.record import (
    AIIDA_LIMIT_BYTES,
    FILE_LIMIT_BYTES,
    RecordError,
    check_record_size,
    validate_metadata,
    write_record,
)

METADATA = {
    'title': 'MAD-style training set built with aiida-mad',
    'description': 'Energies, forces and stresses of diverse structures at one level of theory.',
    'keywords': ['machine learning', 'interatomic potentials', 'DFT', 'MARVEL'],
    'authors': [
        {
            'givennames': 'Ada',
            'familyname': 'Lovelace',
            'affiliations': ['THEOS, EPFL, CH-1015 Lausanne, Switzerland'],
            'orcid': '0000-0002-1825-0097',
        },
        {'name': 'Charles Babbage', 'affiliations': 'Analytical Engines Ltd, London, UK'},
    ],
    'license': 'cc-by-4.0',
    'references': [
        {
            'type': 'preprint',
            'citation': 'A. Mazitov et al., arXiv:2503.14118 (2025)',
            'doi': 'https://doi.org/10.48550/arXiv.2503.14118',
        },
        {'type': 'Software', 'citation': 'aiida-mad', 'url': 'https://github.com/example/aiida-mad'},
    ],
}


@pytest.fixture
def record_files(tmp_path, frames):
    source = tmp_path / 'source'
    source.mkdir()
    paths = write_split_files(frames, source)
    (source / 'atomic-energies.csv').write_text('element,atomic_number,energy_eV,fingerprint\nH,1,-13.6,abc\n')
    (source / 'mad-mc3d.aiida').write_bytes(b'not really an archive')
    (source / 'notes.txt').write_text('hello')
    files = {path.name: path for path in paths.values()}
    files['atomic-energies.csv'] = source / 'atomic-energies.csv'
    files['mad-mc3d.aiida'] = source / 'mad-mc3d.aiida'
    files['notes.txt'] = (source / 'notes.txt', 'Free-form notes of the authors.')
    return files


def test_record_folder_is_complete(tmp_path, frames, record_files):
    paths = write_record(tmp_path / 'record', metadata=METADATA, files=record_files, frames=frames)
    names = sorted(item.name for item in (tmp_path / 'record').iterdir())
    expected = sorted(
        [
            *record_files,
            'metadata.yml',
            'optimade.yaml',
            'README.md',
            'optimade-structures.zip',
            'optimade-properties.csv',
        ]
    )
    assert names == sorted([*expected, MARKER])
    assert sorted(paths) == expected
    metadata = yaml.safe_load((tmp_path / 'record' / 'metadata.yml').read_text())
    assert metadata == validate_metadata(METADATA)
    assert metadata['license'] == 'CC-BY-4.0'
    assert metadata['references'][0] == {
        'type': 'Preprint',
        'citation': 'A. Mazitov et al., arXiv:2503.14118 (2025)',
        'doi': '10.48550/arXiv.2503.14118',
    }
    assert metadata['authors'][1] == {'name': 'Charles Babbage', 'affiliations': ['Analytical Engines Ltd, London, UK']}
    readme = (tmp_path / 'record' / 'README.md').read_text()
    for name in expected:
        if name != 'README.md':
            assert f'`{name}`' in readme
    assert 'Free-form notes of the authors.' in readme
    assert 'Ada Lovelace (ORCID 0000-0002-1825-0097): THEOS, EPFL' in readme
    assert (tmp_path / 'record' / 'mad-mc3d.aiida').read_bytes() == b'not really an archive'
    with zipfile.ZipFile(tmp_path / 'record' / 'optimade-structures.zip') as archive:
        assert len(archive.namelist()) == len(frames)
    for split in ('train', 'val', 'test'):
        assert len(read_extxyz(tmp_path / 'record' / f'mad-{split}.xyz')) == 10


def test_optimade_maker_serves_every_frame_with_its_properties(tmp_path, frames, record_files):
    """The Archive's OPTIMADE integration (optimade-maker) turns the record into one entry per frame."""
    write_record(tmp_path / 'record', metadata=METADATA, files=record_files, frames=frames)
    parsed = config.Config.from_file(tmp_path / 'record' / 'optimade.yaml')
    assert parsed.entries[0].entry_type == 'structures'
    work = tmp_path / 'work'
    shutil.copytree(tmp_path / 'record', work)  # optimade-maker unpacks archives next to them
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        jsonl = convert.convert_archive(work, jsonl_path=tmp_path / 'optimade.jsonl')
    import json

    entries = [json.loads(line) for line in jsonl.read_text().splitlines()]
    structures = {entry['id']: entry for entry in entries if entry.get('type') == 'structures'}
    assert set(structures) == {frame.info['source_uuid'] for frame in frames}
    for frame in frames:
        attributes = structures[frame.info['source_uuid']]['attributes']
        assert attributes['nsites'] == len(frame)
        # optimade-maker reads the CSV with pandas' fast float parser: exact to the last digit or two
        assert attributes['_optimake_energy'] == pytest.approx(frame.info['energy'], rel=1e-15)
        assert attributes['_optimake_subset'] == frame.info['subset']
        assert attributes['_optimake_split'] == frame.info['split']
        assert attributes['nperiodic_dimensions'] == int(sum(frame.pbc))


def test_without_frames_optimade_yaml_points_at_the_xyz_files(tmp_path, record_files):
    write_record(tmp_path / 'record', metadata=METADATA, files=record_files)
    config = yaml.safe_load((tmp_path / 'record' / 'optimade.yaml').read_text())
    assert config['config_version'] == '0.1.0'
    paths = [item['file'] for item in config['entries'][0]['entry_paths']]
    assert paths == ['mad-train.xyz', 'mad-val.xyz', 'mad-test.xyz']


@pytest.mark.parametrize(
    ('change', 'message'),
    [
        ({'title': ''}, "'title' is missing"),
        ({'description': None}, "'description' is missing"),
        ({'keywords': ['a', 'b']}, 'at least 3 distinct keywords'),
        ({'keywords': ['DFT', 'dft', 'Dft', 'ML']}, 'at least 3 distinct keywords, got 4'),
        ({'keywords': 'a, b, c'}, "'keywords' must be a list"),
        ({'authors': []}, "'authors' must be a non-empty list"),
        ({'authors': [{'name': 'X'}]}, "author 1: 'affiliations' must list at least one affiliation"),
        ({'authors': [{'givennames': 'X', 'affiliations': ['Y']}]}, "author 1: 'familyname' is missing"),
        ({'authors': [{'name': 'X', 'affiliations': ['Y'], 'orcid': '1234'}]}, "author 1: 'orcid'"),
        ({'license': 'WTFPL'}, "'license' 'WTFPL' is not one of"),
        ({'references': []}, "'references' must be a non-empty list"),
        ({'references': [{'type': 'Preprint'}]}, "reference 1: 'citation' is missing"),
        ({'references': [{'type': 'Blog', 'citation': 'x'}]}, "reference 1: 'type' 'Blog' is not one of"),
        ({'references': [{'type': 'Software', 'citation': 'x'}]}, 'at least one journal article or preprint'),
        ({'references': [{'type': 'Preprint', 'citation': 'x', 'doi': 'doi:123'}]}, "reference 1: 'doi'"),
        ({'references': [{'type': 'Preprint', 'citation': 'x', 'url': 'www.x.org'}]}, "reference 1: 'url'"),
        ({'funding': 'MARVEL'}, "unknown fields ['funding']"),
    ],
)
def test_metadata_errors_name_the_field(tmp_path, record_files, change, message):
    with pytest.raises(RecordError, match=message.replace('(', r'\(').replace(')', r'\)').replace('[', r'\[')):
        write_record(tmp_path / 'record', metadata={**METADATA, **change}, files=record_files)
    assert not (tmp_path / 'record').exists()
    assert [item.name for item in tmp_path.iterdir()] == ['source']  # no staging folder left behind


def test_existing_folder_needs_force(tmp_path, record_files):
    target = tmp_path / 'record'
    target.mkdir()
    (target / 'old.txt').write_text('old')
    with pytest.raises(RecordError, match='exists and is not empty'):
        write_record(target, metadata=METADATA, files=record_files)
    assert [item.name for item in target.iterdir()] == ['old.txt']
    with pytest.raises(RecordError, match='not written by an aiida-mad export, not replaced'):
        write_record(target, metadata=METADATA, files=record_files, force=True)
    assert [item.name for item in target.iterdir()] == ['old.txt']
    (target / 'old.txt').unlink()
    write_record(target, metadata=METADATA, files=record_files)
    write_record(target, metadata=METADATA, files=record_files, force=True)  # an earlier record is replaced
    assert (target / 'metadata.yml').is_file()
    empty = tmp_path / 'empty'
    empty.mkdir()
    write_record(empty, metadata=METADATA, files=record_files)  # an empty folder is fine
    assert oct(empty.stat().st_mode & 0o777) == '0o755'


def test_file_names_and_descriptions_are_checked(tmp_path, record_files):
    undocumented = {**record_files, 'extra.dat': record_files['notes.txt'][0]}
    with pytest.raises(RecordError, match=r"'extra\.dat' has no description"):
        write_record(tmp_path / 'r1', metadata=METADATA, files=undocumented)
    with pytest.raises(RecordError, match=r"'metadata\.yml' is reserved"):
        write_record(
            tmp_path / 'r2', metadata=METADATA, files={**record_files, 'metadata.yml': record_files['notes.txt'][0]}
        )
    with pytest.raises(RecordError, match='does not exist'):
        write_record(tmp_path / 'r3', metadata=METADATA, files={**record_files, 'x.xyz': tmp_path / 'missing.xyz'})
    with pytest.raises(RecordError, match='plain file name'):
        write_record(tmp_path / 'r4', metadata=METADATA, files={'sub/x.xyz': record_files['mad-train.xyz']})
    assert not any(tmp_path.glob('r*'))


def test_a_folder_becomes_a_deterministic_zip(tmp_path, record_files):
    folder = tmp_path / 'colabfit'
    folder.mkdir()
    (folder / 'dataset.json').write_text('{}')
    (folder / 'configurations.jsonl').write_text('{"id": "CO_1"}\n')
    files = {**record_files, 'mad-colabfit.zip': folder}
    write_record(tmp_path / 'a', metadata=METADATA, files=files)
    write_record(tmp_path / 'b', metadata=METADATA, files=files)
    first = (tmp_path / 'a' / 'mad-colabfit.zip').read_bytes()
    assert first == (tmp_path / 'b' / 'mad-colabfit.zip').read_bytes()
    with zipfile.ZipFile(tmp_path / 'a' / 'mad-colabfit.zip') as archive:
        assert sorted(archive.namelist()) == ['configurations.jsonl', 'dataset.json']
    with pytest.raises(RecordError, match=r'is a folder; give it a name ending in \.zip'):
        check_record_size({'colabfit': folder})


def sparse(path, size):
    with open(path, 'wb') as handle:
        handle.truncate(size)
    return path


def test_size_limits_of_the_archive(tmp_path, record_files):
    """Sparse files: the sizes are real to the checks, the disk stays empty."""
    big = sparse(tmp_path / 'big.xyz', FILE_LIMIT_BYTES + 300 * 1000**2)
    with pytest.raises(RecordError) as excinfo:
        write_record(tmp_path / 'record', metadata=METADATA, files={**record_files, 'big.xyz': (big, 'big file')})
    message = str(excinfo.value)
    assert 'limit of 5.000 GB per record by 0.300 GB' in message
    assert not (tmp_path / 'record').exists()

    # AiiDA archives do not count towards the 5 GB, but towards their own 50 GB
    archive = sparse(tmp_path / 'mad-mc3d-rattled.aiida', 10 * 1000**3)
    sizes = check_record_size({'mad-train.xyz': record_files['mad-train.xyz'], 'mad-mc3d-rattled.aiida': archive})
    assert sizes['aiida_bytes'] == 10 * 1000**3
    assert sizes['files_bytes'] == os.path.getsize(record_files['mad-train.xyz'])
    at_limit = sparse(tmp_path / 'mad-mc3d.aiida', AIIDA_LIMIT_BYTES - 10 * 1000**3)
    assert check_record_size([archive, at_limit])['aiida_bytes'] == AIIDA_LIMIT_BYTES  # exactly at the limit is fine
    huge = sparse(tmp_path / 'mad-mc3d.aiida', AIIDA_LIMIT_BYTES - 5 * 1000**3)
    with pytest.raises(RecordError) as excinfo:
        check_record_size([archive, huge])
    assert str(excinfo.value) == (
        'AiiDA archives (*.aiida) total 55.000 GB, over the Materials Cloud Archive limit of 50.000 GB for AiiDA '
        'databases by 5.000 GB'
    )
    # a custom limit, e.g. for an agreed exception
    assert check_record_size({'big.xyz': big}, file_limit=6 * 1000**3)['files_bytes'] == big.stat().st_size


def test_readme_escapes_html_and_quotes_the_real_split_fractions(tmp_path, record_files):
    metadata = {
        **METADATA,
        'title': 'Data <script>alert(1)</script>',
        'description': 'A & B <img src=x onerror=alert(2)>',
        'keywords': ['<b>bold</b>', 'DFT', 'MLIP'],
    }
    write_record(tmp_path / 'record', metadata=metadata, files=record_files, fractions=(0.7, 0.2, 0.1))
    readme = (tmp_path / 'record' / 'README.md').read_text()
    assert '<script>' not in readme and '<img' not in readme and '<b>' not in readme
    assert '# Data &lt;script&gt;alert(1)&lt;/script&gt;' in readme
    assert 'A &amp; B &lt;img src=x onerror=alert(2)&gt;' in readme
    assert 'training split (70 % of every subset)' in readme
    assert 'validation split (20 % of every subset)' in readme and 'test split (10 % of every subset)' in readme
    assert '80 %' not in readme
    # metadata.yml keeps the text as given: it is data, not markup
    assert yaml.safe_load((tmp_path / 'record' / 'metadata.yml').read_text())['title'] == metadata['title']
    with pytest.raises(RecordError, match='fractions must be three numbers'):
        write_record(tmp_path / 'other', metadata=METADATA, files=record_files, fractions=(0.8, 0.2))
