"""Export and record folders: ``--force`` replaces only an earlier export; disk full and unwritable places fail cleanly.

Real files in real folders throughout. The full disk and the read-only place are real file systems: a tmpfs of a few
hundred KiB and a read-only tmpfs, mounted in a private mount namespace (``unshare --user --map-root-user --mount``,
so neither root nor the host's mounts are touched); the writing runs in that namespace, in a subprocess.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from aiida_mad.export.folders import MARKER, OutputFolderError, read_marker, staged_folder
from aiida_mad.export.record import RecordError, write_record
from tests.export.test_record import METADATA

REPOSITORY = pathlib.Path(__file__).resolve().parents[2]


def snapshot(directory: pathlib.Path) -> dict[str, str]:
    """Return ``{relative path: sha256}`` of every file below ``directory`` (folders as ``<dir>``)."""
    result = {}
    for path in sorted(directory.rglob('*')):
        key = str(path.relative_to(directory))
        result[key] = '<dir>' if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return result


@pytest.fixture
def files(tmp_path) -> dict[str, pathlib.Path]:
    """Two small record files."""
    source = tmp_path / 'source'
    source.mkdir()
    (source / 'mad-train.xyz').write_text('1\nProperties=species:S:1:pos:R:3\nH 0 0 0\n')
    (source / 'atomic-energies.csv').write_text('element,atomic_number,energy_eV,fingerprint\nH,1,-13.6,abc\n')
    return {path.name: path for path in source.iterdir()}


@pytest.fixture
def thesis(tmp_path) -> pathlib.Path:
    """A user's folder: a thesis, figures in a subfolder, a hidden file."""
    folder = tmp_path / 'thesis'
    (folder / 'figures').mkdir(parents=True)
    (folder / 'thesis.tex').write_text('\\chapter{Four years of work}\n')
    (folder / 'figures' / 'fig1.pdf').write_bytes(os.urandom(2048))
    (folder / '.latexmkrc').write_text('$pdf_mode = 1;\n')
    return folder


@pytest.mark.scenario('force never deletes a user folder')
def test_force_refuses_a_folder_that_no_export_wrote(thesis, files, figures):
    before = snapshot(thesis)
    with pytest.raises(RecordError, match=rf'{thesis}: it holds no {MARKER}: not written by an aiida-mad export'):
        write_record(thesis, metadata=METADATA, files=files, force=True)
    with pytest.raises(OutputFolderError, match='not replaced') as excinfo, staged_folder(thesis, force=True):
        pass
    assert excinfo.value.path == thesis
    # A marker planted by hand does not help: the folder holds files the export did not write.
    (thesis / MARKER).write_text(json.dumps({'kind': 'record', 'files': ['README.md']}))
    with pytest.raises(RecordError, match=r'holds files the export did not write \(.latexmkrc, figures, thesis.tex\)'):
        write_record(thesis, metadata=METADATA, files=files, force=True)
    (thesis / MARKER).unlink()
    assert snapshot(thesis) == before
    assert sorted(path.name for path in thesis.parent.iterdir()) == ['source', 'thesis']  # no staging folder left
    figures['files kept'] = len(before)


@pytest.mark.scenario('force replaces an earlier export')
def test_force_replaces_an_earlier_record_and_only_it(tmp_path, files, figures):
    target = tmp_path / 'record'
    write_record(target, metadata=METADATA, files=files)
    marker = read_marker(target)
    assert marker['kind'] == 'record' and set(marker['files']) == {*files, 'metadata.yml', 'optimade.yaml', 'README.md'}
    first = snapshot(target)
    write_record(target, metadata={**METADATA, 'title': 'Second version of the record'}, files=files, force=True)
    assert 'Second version of the record' in (target / 'README.md').read_text()
    assert snapshot(target).keys() == first.keys()
    assert sorted(path.name for path in tmp_path.iterdir()) == ['record', 'source']  # the old one is gone, no leftovers
    # A file added to an export by the user makes it the user's: refused, and the file kept.
    (target / 'my-notes.txt').write_text('do not lose')
    with pytest.raises(RecordError, match=r'holds files the export did not write \(my-notes.txt\)'):
        write_record(target, metadata=METADATA, files=files, force=True)
    assert (target / 'my-notes.txt').read_text() == 'do not lose'
    figures['replaced'] = 1
    figures['refused'] = 1


@pytest.mark.scenario('force never replaces cwd, home or /')
def test_force_never_replaces_the_working_directory_home_or_root(tmp_path, files, monkeypatch, figures):
    export = tmp_path / 'export'
    write_record(export, metadata=METADATA, files=files)
    (export / 'sub').mkdir()  # the user works inside the export; `sub` is not the export's
    before = snapshot(export)
    refused = 0
    monkeypatch.chdir(export / 'sub')
    for target in (pathlib.Path('..'), pathlib.Path('..') / '..' / 'export', export):
        with pytest.raises(RecordError, match='not replaced'):
            write_record(target, metadata=METADATA, files=files, force=True)
        refused += 1
    monkeypatch.chdir(tmp_path)
    (export / 'sub').rmdir()
    monkeypatch.chdir(export)  # a complete export, but it holds the working directory
    with pytest.raises(RecordError, match='it holds the current working directory, not replaced'):
        write_record('.', metadata=METADATA, files=files, force=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv('HOME', str(export))
    with pytest.raises(RecordError, match='it is the home folder, not replaced'):
        write_record(export, metadata=METADATA, files=files, force=True)
    root = staged_folder('/', force=True, error=RecordError)
    with pytest.raises(RecordError, match='it is the root of the file system, not replaced'), root:
        pass
    refused += 3
    link = tmp_path / 'link'
    link.symlink_to(export)
    with pytest.raises(RecordError, match='symbolic link, not replaced'):
        write_record(link, metadata=METADATA, files=files, force=True)
    refused += 1
    assert snapshot(export).keys() == before.keys() - {'sub'}
    figures['refused'] = refused


@pytest.mark.scenario('unwritable export paths')
def test_unwritable_paths_fail_with_the_path_and_the_reason(tmp_path, files, figures):
    regular = tmp_path / 'a-file'
    regular.write_text('x')
    cases = {
        regular / 'record': f'{regular} is a regular file, not a folder',
        tmp_path / ('x' * 300): 'the name is 300 bytes long, over 255',
        regular: 'exists and is not empty',
    }
    for target, message in cases.items():
        with pytest.raises(RecordError) as excinfo:
            write_record(target, metadata=METADATA, files=files)
        assert message in str(excinfo.value) and str(target) in str(excinfo.value)
        assert excinfo.value.path == target
    # A name that fits, however long: the staging name is shortened, the folder gets its full name.
    long_name = tmp_path / ('y' * 250)
    write_record(long_name, metadata=METADATA, files=files)
    assert (long_name / MARKER).is_file()
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(['a-file', 'source', 'y' * 250])
    figures['paths tried'] = len(cases) + 1


#: Run inside the private mount namespace: a full tmpfs and a read-only one; prints one JSON line.
DISK_SCRIPT = """
import json, pathlib, subprocess, sys
from aiida_mad.export.record import RecordError, write_record

METADATA = json.loads(sys.argv[2])

root = pathlib.Path(sys.argv[1])
small, read_only = root / 'small', root / 'read-only'
small.mkdir(); read_only.mkdir()
subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=256k', 'tmpfs', str(small)], check=True)
subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=256k,ro', 'tmpfs', str(read_only)], check=True)
source = root / 'source'
source.mkdir()
(source / 'atomic-energies.csv').write_text('element,atomic_number,energy_eV,fingerprint\\nH,1,-13.6,abc\\n')
(source / 'mad-train.xyz').write_text('1\\nProperties=species:S:1:pos:R:3\\nH 0 0 0\\n')
(source / 'mad-big-train.xyz').write_bytes(b'0' * 1_000_000)
small_files = {name: source / name for name in ('atomic-energies.csv', 'mad-train.xyz')}
result = {}
write_record(small / 'record', metadata=METADATA, files=small_files)
before = sorted(path.name for path in (small / 'record').iterdir())
for name, target, files, force in [
    ('full', small / 'new-record', {**small_files, 'mad-big-train.xyz': source / 'mad-big-train.xyz'}, False),
    ('full-replace', small / 'record', {**small_files, 'mad-big-train.xyz': source / 'mad-big-train.xyz'}, True),
    ('read-only', read_only / 'record', small_files, False),
]:
    try:
        write_record(target, metadata=METADATA, files=files, force=force)
        result[name] = 'written'
    except RecordError as exception:
        result[name] = str(exception)
result['small'] = sorted(path.name for path in small.iterdir())
result['old record'] = sorted(path.name for path in (small / 'record').iterdir())
result['old record before'] = before
result['read-only listing'] = sorted(path.name for path in read_only.iterdir())
print(json.dumps(result))
"""


@pytest.mark.scenario('disk full / read-only during export')
def test_disk_full_and_read_only_leave_no_folder_that_looks_complete(tmp_path, figures):
    script = tmp_path / 'disk.py'
    script.write_text(textwrap.dedent(DISK_SCRIPT))
    root = tmp_path / 'mounts'
    root.mkdir()
    completed = subprocess.run(
        [
            'unshare',
            '--user',
            '--map-root-user',
            '--mount',
            sys.executable,
            str(script),
            str(root),
            json.dumps(METADATA),
        ],
        capture_output=True,
        text=True,
        cwd=REPOSITORY,
        check=False,
        timeout=300,
    )
    assert completed.returncode == 0, f'{completed.stdout}\n{completed.stderr}'
    result = json.loads(completed.stdout.splitlines()[-1])
    assert 'new-record: cannot write (no space left on the device)' in result['full']
    assert 'record: cannot write (no space left on the device)' in result['full-replace']
    assert 'read-only' in result['read-only'] and 'cannot write' in result['read-only']
    # Nothing half-written: no new folder, no staging folder; the earlier record is whole, marker included.
    assert result['small'] == ['record']
    assert result['old record'] == result['old record before']
    assert MARKER in result['old record']
    assert result['read-only listing'] == []
    figures['failures'] = 3
    figures['half-written folders'] = 0
