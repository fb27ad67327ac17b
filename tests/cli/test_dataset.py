"""``aiida-mad dataset``, ``aiida-mad query`` and ``verdi data mad`` on real labelled data."""

from __future__ import annotations

import gzip
import json
import pathlib
import zipfile

import ase.io
import numpy as np
import pytest
import yaml
from aiida import orm
from aiida.engine import calcfunction

from aiida_mad.dataset.atomic_energies import read_atomic_energies_csv
from aiida_mad.export.chemiscope import read_chemiscope
from aiida_mad.workflows.dataset import load_dataset
from tests.dataset.test_extxyz import check_mace_reads, check_metatrain_energy, metatrain_read
from tests.labelled import DFT_GROUPS, RATTLED_GROUP, SEED_GROUP

NAME = 'cli-dataset'
GROUP_ARGS = [argument for label in DFT_GROUPS.values() for argument in ('--from', label)]
RECORD_ARGS = [
    '--title',
    'A tiny MAD-style dataset',
    '--keyword',
    'machine learning',
    '--keyword',
    'DFT',
    '--keyword',
    'MAD',
    '--author',
    'Ada Lovelace|Analytical Engine Lab;EPFL',
    '--reference',
    'Preprint|Mazitov et al., PET-MAD (2025)|https://arxiv.org/abs/2503.14118',
    '--allow-test-grade',  # the test data are computed with the `fast` protocol
]


def read_split(path: pathlib.Path) -> list:
    """Return the frames of a split file with ``ase.io.read`` (a split without frames is an empty file)."""
    return ase.io.read(path, ':') if path.stat().st_size else []


def node_count() -> int:
    return orm.QueryBuilder().append(orm.Node).count()


@pytest.fixture
def dataset(labelled, run_cli_command):
    """Return the dataset built through `aiida-mad dataset build` (once)."""
    try:
        return load_dataset(NAME)
    except ValueError:
        pass
    result = run_cli_command(['dataset', 'build', NAME, *GROUP_ARGS, '--seed', '3'])
    assert 'mc3d: 1 frame; excluded 1 failed (exit status 310: 1), 1 duplicate' in result.output
    assert f'dataset {NAME}<' in result.output
    return load_dataset(NAME)


@pytest.fixture
def exported(dataset, run_cli_command, tmp_path_factory) -> pathlib.Path:
    directory = tmp_path_factory.mktemp('export') / 'out'
    run_cli_command(['dataset', 'export', NAME, str(directory)])
    return directory


def test_list_and_show(dataset, run_cli_command):
    listed = run_cli_command(['dataset', 'list']).output
    assert NAME in listed and dataset.fingerprint[:16] in listed
    shown = run_cli_command(['dataset', 'show', NAME]).output
    assert dataset.content_hash in shown
    # The level of theory in words: the `fast` protocol of the test data, found from the stored results.
    assert dataset.theory['protocol'] == 'fast' and dataset.theory['production'] is False
    assert f'theory        {dataset.theory_description}' in shown
    assert 'protocol fast (test grade)' in dataset.theory_description
    assert ', 30/240 Ry, cold smearing 0.01 Ry, ' in dataset.theory_description
    assert 'mc3d: 1 frame; excluded 1 failed (exit status 310: 1), 1 duplicate' in shown
    assert 'mc3d-rattled: 2 frames' in shown
    assert 'H Si' in shown


def test_export_files_round_trip(dataset, exported):
    names = sorted(path.name for path in exported.iterdir())
    subsets = sorted(dataset.counts)
    assert names == sorted(
        [
            'mad-train.xyz',
            'mad-val.xyz',
            'mad-test.xyz',
            'atomic-energies.csv',
            *(f'mad-{subset}.aiida' for subset in [*subsets, 'isolated-atom']),
            *(f'mad-{subset}.chemiscope.json.gz' for subset in subsets),
            '.aiida-mad-export.json',
        ]
    )
    stored = {frame.info['source_uuid']: frame for frame in dataset.frames()}
    read = [frame for split in ('train', 'val', 'test') for frame in read_split(exported / f'mad-{split}.xyz')]
    assert len(read) == len(stored) == 4
    for frame in read:
        original = stored[frame.info['source_uuid']]
        assert frame.info['REF_energy'] == original.info['energy']
        assert np.array_equal(frame.arrays['REF_forces'], original.arrays['forces'])
        assert np.array_equal(frame.positions, original.positions)
        for key in ('subset', 'split', 'fingerprint'):
            assert frame.info[key] == original.info[key]
        if 'stress' in original.info:
            assert np.array_equal(np.reshape(frame.info['REF_stress'], (3, 3)), original.info['stress'])
        else:
            assert np.isnan(frame.info['REF_stress']).all()
    energies, fingerprint = read_atomic_energies_csv(exported / 'atomic-energies.csv')
    assert energies == dataset.atomic_energies and fingerprint == dataset.fingerprint
    chemiscope = read_chemiscope(exported / 'mad-mc3d-rattled.chemiscope.json.gz')
    assert len(chemiscope['structures']) == 2


def test_metatrain_and_mace_read_the_exported_files(dataset, exported, run_cli_command, tmp_path):
    stored = {frame.info['source_uuid']: frame for frame in dataset.frames()}
    for split in ('train', 'val', 'test'):
        path = exported / f'mad-{split}.xyz'
        frames = [stored[frame.info['source_uuid']] for frame in read_split(path)]
        if not frames:
            continue
        systems, targets, _ = metatrain_read(path)
        check_metatrain_energy(systems, targets['energy'], frames)
    mace = tmp_path / 'mace'
    run_cli_command(
        ['dataset', 'export', NAME, str(mace), '--missing-stress', 'omit', '--no-archives', '--no-chemiscope']
    )
    for split in ('train', 'val', 'test'):
        path = mace / f'mad-{split}.xyz'
        frames = [stored[frame.info['source_uuid']] for frame in read_split(path)]
        if frames:
            check_mace_reads(path, frames, 'omit')


def test_export_refuses_an_existing_folder(dataset, run_cli_command, tmp_path):
    target = tmp_path / 'taken'
    target.mkdir()
    (target / 'keep.txt').write_text('mine')
    result = run_cli_command(['dataset', 'export', NAME, str(target)], raises=True)
    assert 'exists and is not empty' in result.output and '--force' in result.output
    assert [path.name for path in target.iterdir()] == ['keep.txt']
    result = run_cli_command(['dataset', 'export', NAME, str(target), '--force', '--no-archives'], raises=True)
    assert 'not written by an aiida-mad export' in result.output  # --force replaces only an earlier export
    assert [path.name for path in target.iterdir()] == ['keep.txt']
    (target / 'keep.txt').unlink()
    run_cli_command(['dataset', 'export', NAME, str(target), '--no-archives'])
    run_cli_command(['dataset', 'export', NAME, str(target), '--force', '--no-archives'])
    assert (target / 'mad-train.xyz').exists()


def test_colabfit_export(dataset, run_cli_command, tmp_path):
    target = tmp_path / 'colabfit'
    run_cli_command(['dataset', 'export', NAME, str(target), '--format', 'colabfit', '--author', 'Ada Lovelace'])
    dataset_json = json.loads((target / 'dataset.json').read_text())
    configurations = (target / 'configurations.jsonl').read_text().splitlines()
    assert len(configurations) == dataset.n_frames
    assert dataset_json['authors'] == ['Ada Lovelace']
    assert dataset_json['level_of_theory'] == dataset.theory_description
    sets = [json.loads(line) for line in (target / 'configuration_sets.jsonl').read_text().splitlines()]
    # One configuration set per subset, which together hold every configuration.
    assert sorted(item['name'] for item in sets) == sorted(dataset.counts)
    identifiers = {json.loads(line)['id'] for line in configurations}
    assert {identifier for item in sets for identifier in item['configuration_ids']} == identifiers


def test_record_folder_is_complete(dataset, run_cli_command, tmp_path):
    target = tmp_path / 'record'
    run_cli_command(['dataset', 'record', NAME, str(target), *RECORD_ARGS])
    names = {path.name for path in target.iterdir()}
    expected = {
        'metadata.yml',
        'optimade.yaml',
        'README.md',
        'mad-train.xyz',
        'mad-val.xyz',
        'mad-test.xyz',
        'atomic-energies.csv',
        'mad-colabfit.zip',
        'mad.report.html',
        'optimade-structures.zip',
        'optimade-properties.csv',
        '.aiida-mad-export.json',
    }
    assert expected <= names
    assert {f'mad-{subset}.aiida' for subset in dataset.counts} <= names
    metadata = yaml.safe_load((target / 'metadata.yml').read_text())
    assert metadata['authors'][0] == {'name': 'Ada Lovelace', 'affiliations': ['Analytical Engine Lab', 'EPFL']}
    assert len(metadata['keywords']) == 3
    assert metadata['level_of_theory'] == dataset.theory_description and metadata['test_grade'] is True
    assert dataset.theory_description in metadata['description']
    readme = (target / 'README.md').read_text()
    assert '## Level of theory' in readme and '**Test grade.**' in readme
    with zipfile.ZipFile(target / 'mad-colabfit.zip') as archive:
        colabfit = json.loads(archive.read('dataset.json'))
    assert colabfit['level_of_theory'] == dataset.theory_description
    report = (target / 'mad.report.html').read_text()
    assert 'id="test-grade"' in report and 'protocol fast (test grade)' in report
    for name in names - {'README.md', '.aiida-mad-export.json'}:  # the marker of the folder is not record content
        assert name in readme, name


def test_record_refuses_test_grade_data_without_the_flag(dataset, run_cli_command, tmp_path):
    target = tmp_path / 'record'
    result = run_cli_command(['dataset', 'record', NAME, str(target), *RECORD_ARGS[:-1]], raises=True)
    assert 'not at a production level of theory' in result.output and '--allow-test-grade' in result.output
    assert 'protocol fast (test grade)' in result.output
    assert not target.exists()


def test_record_refuses_incomplete_metadata_and_writes_nothing(dataset, run_cli_command, tmp_path):
    tmp_path = tmp_path / 'clean'
    tmp_path.mkdir()
    target = tmp_path / 'record'
    result = run_cli_command(['dataset', 'record', NAME, str(target), *RECORD_ARGS[:6]], raises=True)
    assert 'keywords' in result.output
    assert not target.exists()
    assert not list(tmp_path.iterdir())


def test_record_refuses_to_exceed_the_archive_limits(dataset, tmp_path):
    from aiida_mad.export.dataset import ExportError, write_dataset_record

    metadata = {
        'title': 'x',
        'description': 'y',
        'keywords': ['a', 'b', 'c'],
        'authors': [{'name': 'A', 'affiliations': ['B']}],
        'license': 'CC-BY-4.0',
        'references': [{'type': 'Preprint', 'citation': 'z'}],
    }
    with pytest.raises(ExportError, match='limit'):
        write_dataset_record(dataset, tmp_path / 'record', metadata=metadata, file_limit=1000, allow_test_grade=True)
    assert not (tmp_path / 'record').exists()


def test_report_renders(dataset, run_cli_command, tmp_path):
    from tests.export.test_report import find_chromium, parse, run_chromium

    output = tmp_path / 'report.html'
    run_cli_command(['dataset', 'report', NAME, str(output)])
    chromium = find_chromium()
    assert chromium, 'Debian chromium is needed (make test installs it)'
    result = run_chromium(chromium, tmp_path, output, '--dump-dom')
    dom = parse(result.stdout)
    assert dom.find_all('svg'), 'the report has no figure'
    text = dom.text()
    for subset in dataset.counts:
        assert subset in text
    assert run_cli_command(['dataset', 'report', NAME, str(output)], raises=True).output.count('exists') == 1


@pytest.mark.parametrize(
    ('arguments', 'message'),
    [
        (['build', 'x', '--from', 'no/such/group'], 'unknown group(s): no/such/group'),
        (['build', 'x', '--from', SEED_GROUP + '-empty'], 'hold no MadDftWorkChain'),
        (['build', 'x', *GROUP_ARGS, '--split', '0.8', '0.1', '0.2'], 'sum to 1'),
        (['build', 'bad name', *GROUP_ARGS], 'invalid dataset name'),
        (['build', 'x', *GROUP_ARGS, '--outlier-max-force', 'mc3d'], 'SUBSET=EV_PER_ANGSTROM'),
        (['show', 'no-such-dataset'], "unknown dataset 'no-such-dataset'"),
        (['export', 'no-such-dataset', '/tmp/never-written'], "unknown dataset 'no-such-dataset'"),
    ],
)
def test_bad_input_stores_and_writes_nothing(labelled, run_cli_command, arguments, message):
    orm.Group.collection.get_or_create(SEED_GROUP + '-empty')
    before = node_count()
    result = run_cli_command(['dataset', *arguments], raises=True)
    assert message in result.output
    assert node_count() == before
    assert not pathlib.Path('/tmp/never-written').exists()


def test_existing_name_refused(dataset, run_cli_command):
    before = node_count()
    result = run_cli_command(['dataset', 'build', NAME, *GROUP_ARGS], raises=True)
    assert 'exists already' in result.output
    assert node_count() == before


def test_verdi_data_mad(dataset, exported, tmp_path):
    from aiida.cmdline.commands.cmd_verdi import verdi
    from aiida.manage import get_manager
    from click.testing import CliRunner

    profile = get_manager().get_profile().name
    runner = CliRunner()
    for arguments, expected in (
        (['list'], NAME),
        (['show', NAME], dataset.content_hash),
        (['export', NAME, str(tmp_path / 'verdi'), '--no-archives', '--no-chemiscope'], 'wrote'),
    ):
        result = runner.invoke(verdi, ['-p', profile, 'data', 'mad', *arguments])
        assert result.exit_code == 0, result.output
        assert expected in result.output
    assert (tmp_path / 'verdi' / 'mad-train.xyz').read_bytes() == (exported / 'mad-train.xyz').read_bytes()


# ------------------------------------------------------------------------------------------------------------------
# Queries


def test_query_frames_filters(dataset, run_cli_command):
    from aiida_mad.query import query_frames

    assert len(query_frames(dataset)) == 4
    assert len(query_frames(dataset, subsets=['mc3d-rattled'])) == 2
    assert len(query_frames(dataset, elements=['H'])) == 1
    assert len(query_frames(dataset, elements=['H', 'Si'])) == 0
    assert len(query_frames(dataset, elements=['H', 'Si'], any_element=True)) == 4
    forces = query_frames(dataset).column('max_force')
    cut = float(np.median(forces))
    assert (
        len(query_frames(dataset, max_force_max=cut))
        + len(query_frames(dataset, max_force_min=np.nextafter(cut, np.inf)))
        == 4
    )
    for split in ('train', 'val', 'test'):
        found = query_frames(dataset, splits=[split])
        assert set(found.column('split').tolist()) <= {split}
    result = run_cli_command(['query', 'frames', NAME, '--element', 'H', '--format', 'uuids'])
    (molecule,) = query_frames(dataset, elements=['H']).column('source_uuid').tolist()
    assert molecule in result.output
    bad = run_cli_command(['query', 'frames', NAME, '--subset', 'nope'], raises=True)
    assert 'has no subset nope' in bad.output


@calcfunction
def pretend_training(dataset: orm.Data) -> orm.Dict:
    """A stand-in consumer of a dataset, as a training CalcJob will be (its output plays the model)."""
    return orm.Dict({'trained_on': dataset.uuid})


def test_lineage_from_frame_to_seed_and_forward(dataset, labelled, run_cli_command):
    from aiida_mad.query import lineage

    model = pretend_training(dataset)
    rattled = orm.load_node(labelled.used['mc3d-rattled'][0])
    structure = rattled.inputs.structure
    result = lineage(structure.uuid)
    seed = orm.load_group(SEED_GROUP).nodes[0]
    assert result['seed']['uuid'] == seed.uuid
    assert SEED_GROUP in result['seed']['groups']
    (step,) = result['generation']
    assert step['generator'] == 'rattle' and step['seed'] == 11 and step['subset'] == 'mc3d-rattled'
    assert step['index'] == structure.base.extras.get('mad_index')
    assert RATTLED_GROUP in result['structure']['groups']
    (dft,) = result['dft']
    assert dft['uuid'] == rattled.uuid and dft['fingerprint'] == dataset.fingerprint
    names = {entry['name']: entry for entry in result['datasets']}
    entry = names[NAME]
    frame = next(frame for frame in dataset.frames() if frame.info['source_uuid'] == structure.uuid)
    assert entry['split'] == frame.info['split'] and entry['dft_uuid'] == rattled.uuid
    consumers = {consumer['uuid']: consumer for consumer in entry['consumers']}
    trained = consumers[model.creator.uuid]
    assert [output['uuid'] for output in trained['outputs']] == [model.uuid]
    # The same lineage from the DFT work chain's uuid, and through the CLI.
    assert lineage(rattled.uuid)['seed']['uuid'] == seed.uuid
    text = run_cli_command(['query', 'lineage', structure.uuid]).output
    assert 'generator rattle, subset mc3d-rattled, seed 11' in text
    assert f'Dataset {NAME}<' in text and 'pretend_training' in text
    assert (
        json.loads(run_cli_command(['query', 'lineage', structure.uuid, '--json']).output)['seed']['uuid'] == seed.uuid
    )
    bad = run_cli_command(['query', 'lineage', orm.load_node(labelled.isolated_atoms).uuid], raises=True)
    assert 'neither a structure nor a MadDftWorkChain' in bad.output


def test_chemiscope_file_is_gzip_json(exported):
    with gzip.open(exported / 'mad-mc3d.chemiscope.json.gz', 'rt') as handle:
        assert json.load(handle)['meta']['name']


def test_querybuilder_recipes_of_the_docs_run(dataset, labelled):
    """Every Python block of docs/queries.md runs on real data, and the recipes that should find something do."""
    import re

    text = (pathlib.Path(__file__).parents[2] / 'docs' / 'queries.md').read_text(encoding='utf-8')
    text = text.replace("'mad/dft/mc3d'", repr(DFT_GROUPS['mc3d'])).replace("'mad-v1'", repr(NAME))
    blocks = re.findall(r'```python\n(.*?)```', text, re.S)
    assert len(blocks) >= 8
    structure = orm.load_node(labelled.used['mc3d-rattled'][0]).inputs.structure
    empty = []
    # One namespace for all blocks, as in one `verdi shell` session: later recipes use earlier imports.
    namespace = {'fingerprint': dataset.fingerprint, 'uuid': structure.uuid}
    for number, block in enumerate(blocks):
        namespace.pop('qb', None)
        exec(compile(block, f'docs/queries.md block {number}', 'exec'), namespace)
        if 'qb' in namespace and not namespace['qb'].all():
            empty.append(number)
    # Only the outlier recipe finds nothing: the test data has no outlier at the default thresholds.
    assert len(empty) == 1, f'recipes that found nothing: {empty}'


def test_archives_reimport_into_a_fresh_profile_and_rebuild_the_same_dataset(dataset, exported, tmp_path):
    """Export -> import into an empty profile -> `aiida-mad dataset build` there gives the same content hash."""
    from tests.fresh_profile import run_in_fresh_profile

    subsets = [str(exported / f'mad-{subset}.aiida') for subset in dataset.counts]
    baseline = str(exported / 'mad-isolated-atom.aiida')
    script = f"""
import json
from aiida import orm
from aiida.tools.archive import import_archive
from click.testing import CliRunner
from aiida.manage import get_manager
from aiida_mad.cli import cmd_root
from aiida_mad.workflows.dataset import load_dataset

group = orm.Group(label='reimported').store()
for path in {subsets!r}:
    import_archive(path, group=group)
import_archive({baseline!r})  # the isolated atoms, outside the group: they are the baseline, not frames
profile = get_manager().get_profile().name
arguments = ['-p', profile, 'dataset', 'build', {NAME!r}, '--from', 'reimported', '--seed', '3']
result = CliRunner().invoke(cmd_root, arguments)
assert result.exit_code == 0, result.output
node = load_dataset({NAME!r})
print(json.dumps({{'hash': node.content_hash, 'counts': node.counts, 'atomic': node.atomic_energies}}))
"""
    output = run_in_fresh_profile(script, tmp_path)
    rebuilt = json.loads(output.strip().splitlines()[-1])
    assert rebuilt['hash'] == dataset.content_hash
    assert rebuilt['counts'] == dataset.counts
    assert rebuilt['atomic'] == dataset.atomic_energies


@pytest.mark.parametrize('command', [['export', NAME], ['record', NAME, *RECORD_ARGS]])
def test_unwritable_export_paths_are_refused_with_a_message(dataset, run_refused, tmp_path, command):
    tmp_path = tmp_path / 'clean'  # the labelled fixture may keep its fault-injecting pw.x in tmp_path
    tmp_path.mkdir()
    regular = tmp_path / 'a-file'
    regular.write_text('mine')
    under_file = regular / 'out'
    run_refused(['dataset', command[0], command[1], under_file, *command[2:]], f"'{regular}' is a file, not a folder")
    assert regular.read_text() == 'mine'

    too_long = tmp_path / ('n' * 300)
    run_refused(['dataset', command[0], command[1], too_long, *command[2:]], 'has 300 bytes', 'allows 255')

    # sysfs refuses new folders even to root: the OSError becomes a one-line message naming the path.
    run_refused(
        ['dataset', command[0], command[1], '/sys/mad-export', *command[2:]], '/sys/mad-export', 'not permitted'
    )
    assert not pathlib.Path('/sys/mad-export').exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ['a-file']


@pytest.mark.parametrize(
    ('content', 'expected'),
    [
        ('title: [unclosed\n', 'is not valid YAML (line 2, column 1)'),
        ('- a\n- list\n', 'holds a YAML list, not a mapping'),
        ('just text', 'holds a YAML str, not a mapping'),
        (b'\xff\xfe title', 'is not UTF-8 text'),
    ],
)
def test_record_refuses_a_broken_metadata_file(dataset, run_refused, tmp_path, content, expected):
    metadata = tmp_path / 'metadata.yml'
    metadata.write_bytes(content if isinstance(content, bytes) else content.encode())
    target = tmp_path / 'record'
    run_refused(['dataset', 'record', NAME, target, '--metadata', metadata], str(metadata), expected)
    assert not target.exists()


def test_report_and_query_refuse_unwritable_files(dataset, run_refused, tmp_path):
    tmp_path = tmp_path / 'clean'
    tmp_path.mkdir()
    regular = tmp_path / 'a-file'
    regular.write_text('mine')
    run_refused(['dataset', 'report', NAME, regular / 'report.html'], 'is a file, not a folder')
    run_refused(['query', 'frames', NAME, '--xyz', regular / 'frames.xyz'], 'is a file, not a folder')
    run_refused(['query', 'frames', NAME, '--xyz', tmp_path / ('x' * 300)], 'has 300 bytes')
    assert sorted(path.name for path in tmp_path.iterdir()) == ['a-file']


def test_record_describes_the_fractions_of_the_dataset(labelled, run_cli_command, tmp_path):
    name = 'cli-dataset-halves'
    try:
        load_dataset(name)
    except ValueError:
        run_cli_command(['dataset', 'build', name, *GROUP_ARGS, '--split', '0.5', '0.25', '0.25'])
    target = tmp_path / 'record'
    run_cli_command(['dataset', 'record', name, target, *RECORD_ARGS])
    metadata = yaml.safe_load((target / 'metadata.yml').read_text())
    assert 'split 50:25:25 (train:val:test)' in metadata['description']


@pytest.mark.parametrize(
    ('arguments', 'expected'),
    [
        (['build', 'x', *GROUP_ARGS, '--outlier-max-force', 'mc3d=nan'], 'a positive number'),
        (['build', 'x', *GROUP_ARGS, '--outlier-max-force', 'mc3d=-1'], 'a positive number'),
        (['build', 'x' * 5000, *GROUP_ARGS], 'invalid dataset name'),
        (['build', 'a;rm -rf ~', *GROUP_ARGS], 'invalid dataset name'),
        (['show', ''], "unknown dataset ''"),
    ],
)
def test_more_bad_input_is_refused(labelled, run_refused, arguments, expected):
    run_refused(['dataset', *arguments], expected)
