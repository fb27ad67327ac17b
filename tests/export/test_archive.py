"""Per-subset AiiDA archives: real provenance from a seed through generation to pw.x outputs, exported and re-imported.

One provenance graph is built per session (fixture ``nodes``): bulk Si as seed (group ``mad/seeds/test``, subset
``mc3d``), ``GenerateWorkChain`` making two rattled structures in two ``generate_structures`` batches (so each
calcfunction has a caller), ``MadDftWorkChain`` with the real pw.x and the `fast` protocol (coarser k-points and a
smaller box, see :data:`OVERRIDES`) on the seed and on both rattled structures, and ``IsolatedAtomsWorkChain`` for
Si. About 50 s on two cores.

The archives are checked against the provenance closure the module promises (every process's inputs, outputs and
called processes, and the creator of every data node), computed here by walking the links of the test profile; the
toggles of the traversal rules each change that set in this graph (callers, the seed's other uses, the seed returned
by the `mc3d` run), so a wrong rule fails the equality.
"""

from __future__ import annotations

import contextlib
import json
import os

import numpy as np
import pytest
from aiida import orm
from aiida.common.exceptions import NotExistent
from aiida.common.links import LinkType
from aiida.engine import run_get_node
from aiida.tools.archive.exceptions import ExportValidationError
from aiida.tools.groups import GroupPath
from ase.build import bulk

from aiida_mad.export.archive import TRAVERSAL_RULES, archive_summary, export_subset_archives
from aiida_mad.workflows.dft import MadDftWorkChain
from aiida_mad.workflows.generate import GenerateWorkChain
from aiida_mad.workflows.isolated_atoms import IsolatedAtomsWorkChain
from tests.fresh_profile import FreshProfile, FreshProfileError, run_in_fresh_profile

SEED_GROUP = 'mad/seeds/test'
RATTLED_GROUP = 'mad/structures/archive-test-rattled'

#: The `fast` protocol made cheaper still, the same for every run (one fingerprint): a 2x2x2 mesh for bulk Si instead
#: of 4x4x4 (63 k-points once rattled, 35 s of pw.x each), a 6 Å box for the atom instead of 12 Å (36 s of pw.x).
OVERRIDES = {'kpoints_distance': 1.0, 'vacuum': 6.0}

#: uuids of the provenance built once per session (rebuilt if another module wiped the profile).
_PROVENANCE: dict[str, list[str]] = {}
#: The exported archives, once per session.
_ARCHIVES: dict[str, object] = {}


def build_provenance(pw_code) -> dict[str, list[str]]:
    """Seed -> GenerateWorkChain (2 batches) -> rattled structures; DFT on seed and both; one isolated atom."""
    seed = orm.StructureData(ase=bulk('Si', 'diamond', a=5.43))
    seed.base.extras.set_many({'mad_source': 'seeds', 'mad_seed_name': 'test/Si', 'mad_subset': 'mc3d'})
    seed.store()
    GroupPath(SEED_GROUP).get_or_create_group()[0].add_nodes([seed])

    _, generation = run_get_node(
        GenerateWorkChain,
        subset=orm.Str('mc3d-rattled'),
        parent_groups=orm.List([SEED_GROUP]),
        count=orm.Int(2),
        seed=orm.Int(5),
        batch_size=1,
        group_label=orm.Str(RATTLED_GROUP),
    )
    assert generation.is_finished_ok, generation.exit_message
    rattled = sorted(orm.load_group(RATTLED_GROUP).nodes, key=lambda node: node.base.extras.get('mad_index'))
    assert len(rattled) == 2

    runs: dict[str, list[str]] = {'mc3d': [], 'mc3d-rattled': []}
    for structure in (seed, *rattled):
        _, node = run_get_node(MadDftWorkChain.get_builder_from_protocol(pw_code, structure, 'fast', OVERRIDES))
        assert node.is_finished_ok, f'{node.exit_status}: {node.exit_message}'
        runs[structure.base.extras.get('mad_subset')].append(node.uuid)
    _, isolated = run_get_node(IsolatedAtomsWorkChain.get_builder_from_protocol(pw_code, ['Si'], 'fast', OVERRIDES))
    assert isolated.is_finished_ok, f'{isolated.exit_status}: {isolated.exit_message}'
    runs['isolated-atom'] = [isolated.uuid]
    return {
        **runs,
        'seed': [seed.uuid],
        'rattled': [node.uuid for node in rattled],
        'generation': [generation.uuid],
    }


@pytest.fixture
def nodes(pw_code, offline_family) -> dict[str, list]:
    """Return the nodes of the session's provenance graph by key (lists of nodes), building it once."""
    if _PROVENANCE:
        try:
            return {key: [orm.load_node(uuid) for uuid in uuids] for key, uuids in _PROVENANCE.items()}
        except NotExistent:
            _PROVENANCE.clear()
            _ARCHIVES.clear()
    _PROVENANCE.update(build_provenance(pw_code))
    return {key: [orm.load_node(uuid) for uuid in uuids] for key, uuids in _PROVENANCE.items()}


SUBSETS = ('mc3d', 'mc3d-rattled', 'isolated-atom')


@pytest.fixture
def archives(nodes, tmp_path_factory) -> dict[str, object]:
    """Export the three subsets once; return ``{subset: path}``."""
    if not _ARCHIVES:
        directory = tmp_path_factory.mktemp('archives')
        _ARCHIVES.update(export_subset_archives({subset: nodes[subset] for subset in SUBSETS}, directory))
    return dict(_ARCHIVES)


def provenance_closure(starts) -> set[str]:
    """Return the uuids the archive must hold: processes with inputs, outputs and callees; creators of data."""
    todo, seen = list(starts), set()
    while todo:
        node = todo.pop()
        if node.uuid in seen:
            continue
        seen.add(node.uuid)
        if isinstance(node, orm.ProcessNode):
            incoming = node.base.links.get_incoming(link_type=(LinkType.INPUT_CALC, LinkType.INPUT_WORK))
            outgoing = node.base.links.get_outgoing(
                link_type=(LinkType.CREATE, LinkType.RETURN, LinkType.CALL_CALC, LinkType.CALL_WORK)
            )
            todo.extend(link.node for link in (*incoming.all(), *outgoing.all()))
        else:
            todo.extend(link.node for link in node.base.links.get_incoming(link_type=LinkType.CREATE).all())
    return seen


def descendants(workchain) -> set[str]:
    """Return the uuids of a work chain, the processes below it and their outputs."""
    uuids = {workchain.uuid}
    for process in (workchain, *workchain.called_descendants):
        uuids.add(process.uuid)
        uuids.update(link.node.uuid for link in process.base.links.get_outgoing().all())
    return uuids


def test_archives_hold_exactly_the_provenance_of_their_subset(nodes, archives):
    assert {subset: path.name for subset, path in archives.items()} == {
        'mc3d': 'mad-mc3d.aiida',
        'mc3d-rattled': 'mad-mc3d-rattled.aiida',
        'isolated-atom': 'mad-isolated-atom.aiida',
    }
    for subset, path in archives.items():
        summary = archive_summary(path)
        closure = provenance_closure(nodes[subset])
        assert summary['uuids'] == closure, subset
        outgoing = [link for uuid in closure for link in orm.load_node(uuid).base.links.get_outgoing().all()]
        links = sum(link.node.uuid in closure for link in outgoing)
        assert summary['links'] == links, subset
        assert summary['nodes'] == len(summary['uuids'])
        assert summary['starting_uuids'] == {node.uuid for node in nodes[subset]}
        assert summary['groups'] == {}
        rules = summary['traversal_rules']
        assert {name: rules[name] for name in TRAVERSAL_RULES} == TRAVERSAL_RULES
        assert rules['create_backward'] and rules['input_calc_backward'] and rules['call_work_forward']


def test_run_called_by_a_workflow_comes_without_its_caller(nodes, tmp_path):
    """A work chain exported on its own leaves out its caller (``call_work_backward``) and the caller's other runs."""
    (isolated,) = nodes['isolated-atom']
    (atom_run,) = [node for node in isolated.called if node.process_label == 'MadDftWorkChain']
    paths = export_subset_archives({'atom-si': [atom_run]}, tmp_path)
    summary = archive_summary(paths['atom-si'])
    assert summary['uuids'] == provenance_closure([atom_run])
    assert 'IsolatedAtomsWorkChain' not in summary['process_labels']
    assert 'collect_atomic_energies' not in summary['process_labels']
    assert summary['process_labels']['isolated_atom'] == 1  # the creator of its structure, called by the same caller


def test_rattled_archive_traces_every_output_back_to_the_seed(nodes, archives):
    summary = archive_summary(archives['mc3d-rattled'])
    uuids = summary['uuids']
    (seed,) = nodes['seed']
    assert summary['process_labels']['MadDftWorkChain'] == 2
    assert summary['process_labels']['MadPwBaseWorkChain'] == 2
    assert summary['process_labels']['PwCalculation'] >= 2
    assert summary['process_labels']['generate_structures'] == 2
    assert summary['process_types']['aiida.workflows:mad.dft'] == 2
    assert summary['node_types']['data.core.structure.StructureData.'] == 3  # the seed and the two rattled ones
    assert 'GenerateWorkChain' not in summary['process_labels']  # the calcfunctions' caller is not part of it

    for workchain in nodes['mc3d-rattled']:
        structure = workchain.inputs.structure
        creator = structure.creator
        assert creator.process_label == 'generate_structures'
        parameters = creator.inputs.parameters
        assert parameters['generator'] == 'rattle' and parameters['seed'] == 5
        parents = [link.node for link in creator.base.links.get_incoming(link_type=LinkType.INPUT_CALC).all()]
        assert seed in parents
        assert seed.creator is None
        pw_base = workchain.base.links.get_outgoing(link_label_filter='scf').one().node
        (calculation,) = [node for node in pw_base.called if node.process_label == 'PwCalculation']
        chain = [seed, creator, parameters, structure, workchain, pw_base, calculation]
        chain += [workchain.outputs[label] for label in ('energy', 'forces', 'stress', 'properties', 'bands', 'dos')]
        chain += [calculation.outputs.output_parameters, calculation.outputs.retrieved]
        missing = [f'{node.__class__.__name__}<{node.pk}>' for node in chain if node.uuid not in uuids]
        assert not missing

    for other in (*nodes['mc3d'], *nodes['isolated-atom']):
        foreign = descendants(other) - {seed.uuid} - {link.node.uuid for link in other.base.links.get_incoming().all()}
        assert not foreign & uuids, other.process_label


def test_seed_and_isolated_atom_archives_hold_nothing_of_the_rattled_runs(nodes, archives):
    (seed,) = nodes['seed']
    (mc3d,) = nodes['mc3d']
    rattled_runs = set().union(*(descendants(node) for node in nodes['mc3d-rattled']))
    rattled_runs |= {node.uuid for node in nodes['rattled']} | {node.uuid for node in nodes['generation']}

    summary = archive_summary(archives['mc3d'])
    assert {seed.uuid, mc3d.uuid, mc3d.outputs.energy.uuid, mc3d.outputs.forces.uuid} <= summary['uuids']
    assert mc3d.outputs.structure.uuid == seed.uuid  # a 3D structure is returned as it came: the seed itself
    assert not rattled_runs & summary['uuids']
    assert 'generate_structures' not in summary['process_labels']
    assert summary['process_labels']['MadDftWorkChain'] == 1

    summary = archive_summary(archives['isolated-atom'])
    (isolated,) = nodes['isolated-atom']
    assert {isolated.outputs.energies.uuid, isolated.outputs.fingerprint.uuid} <= summary['uuids']
    labels = summary['process_labels']
    assert labels['IsolatedAtomsWorkChain'] == 1 and labels['MadDftWorkChain'] == 1
    assert labels['isolated_atom'] == 1 and labels['collect_atomic_energies'] == 1
    assert not (rattled_runs | descendants(mc3d)) & summary['uuids']
    assert seed.uuid not in summary['uuids']


def test_fresh_profile_gets_the_same_nodes_outputs_and_extras(nodes, archives, tmp_path):
    """Import the archives one after another into one fresh profile; after each, the nodes are the union so far."""
    script = """
        import json

        from aiida import orm
        from aiida.tools.archive import import_archive

        paths, workchains = json.loads({arguments!r})
        after = []
        for path in paths:
            group = orm.load_group(import_archive(path))
            after.append(
                {{
                    'all': orm.QueryBuilder().append(orm.Node, project='uuid').all(flat=True),
                    'group': [node.uuid for node in group.nodes],
                    'group_label': group.label,
                }}
            )
        runs = {{}}
        for uuid in workchains:
            node = orm.load_node(uuid)
            runs[uuid] = {{
                'energy': node.outputs.energy.value,
                'forces': node.outputs.forces.get_array('forces').tolist(),
                'extras': {{k: v for k, v in node.base.extras.all.items() if k.startswith('mad_')}},
                'structure_extras': {{
                    k: v for k, v in node.inputs.structure.base.extras.all.items() if k.startswith('mad_')
                }},
                'process_class': node.process_class.__name__,
            }}
        print(json.dumps({{'after': after, 'runs': runs}}))
    """
    workchains = [node.uuid for subset in ('mc3d', 'mc3d-rattled') for node in nodes[subset]]
    (isolated,) = nodes['isolated-atom']
    workchains += [node.uuid for node in isolated.called if node.process_label == 'MadDftWorkChain']
    paths = [str(archives[subset]) for subset in SUBSETS]
    output = FreshProfile(tmp_path / 'fresh').run(script.format(arguments=json.dumps([paths, workchains])))
    result = json.loads(output.strip().splitlines()[-1])

    expected: set[str] = set()
    for subset, after in zip(SUBSETS, result['after'], strict=True):
        summary = archive_summary(archives[subset])
        expected |= summary['uuids']
        assert set(after['all']) == expected, subset
        assert set(after['group']) == summary['uuids'], subset  # the auto-created import group holds the archive

    for uuid, run in result['runs'].items():
        original = orm.load_node(uuid)
        assert run['energy'] == original.outputs.energy.value
        np.testing.assert_array_equal(np.array(run['forces']), original.outputs.forces.get_array('forces'))
        expected_extras = {k: v for k, v in original.base.extras.all.items() if k.startswith('mad_')}
        assert run['extras'] == expected_extras
        assert {'mad_fingerprint', 'mad_source_uuid', 'mad_outlier'} <= set(run['extras'])
        structure = original.inputs.structure
        assert run['structure_extras'] == {k: v for k, v in structure.base.extras.all.items() if k.startswith('mad_')}
        assert run['process_class'] == 'MadDftWorkChain'


def listing(directory) -> dict[str, bytes]:
    """Return every file under ``directory`` (hidden ones included) with its content."""
    return {
        os.path.relpath(os.path.join(root, name), directory): open(os.path.join(root, name), 'rb').read()
        for root, _, files in os.walk(directory)
        for name in files
    }


def test_existing_file_is_refused_without_force_and_replaced_with_it(nodes, tmp_path):
    (tmp_path / 'mad-mc3d.aiida').write_bytes(b'old')
    before = listing(tmp_path)
    subsets = {'mc3d-rattled': nodes['mc3d-rattled'], 'mc3d': nodes['mc3d']}
    with pytest.raises(ValueError, match=r'mad-mc3d\.aiida exists already: pass force=True'):
        export_subset_archives(subsets, tmp_path)
    assert listing(tmp_path) == before

    paths = export_subset_archives(subsets, tmp_path, force=True)
    assert sorted(os.listdir(tmp_path)) == ['mad-mc3d-rattled.aiida', 'mad-mc3d.aiida']
    umask = os.umask(0o022)
    os.umask(umask)
    assert all(path.stat().st_mode & 0o777 == 0o666 & ~umask for path in paths.values())  # not private temp files
    assert archive_summary(paths['mc3d'])['starting_uuids'] == {nodes['mc3d'][0].uuid}


@pytest.mark.parametrize(
    ('subsets', 'message'),
    [
        (lambda: {}, 'no subsets given'),
        (lambda: {'mc3d': []}, 'subset `mc3d`: no work chains given'),
        (lambda: {'mc3d': 'mc3d-rattled'}, 'subset `mc3d`: work chains must be a sequence of nodes'),
        (lambda: {'mc3d': [orm.WorkflowNode()]}, 'subset `mc3d`: work chains include an unstored node'),
        (lambda: {'mc3d': [orm.Int(1).store()]}, 'subset `mc3d`: work chains must be WorkflowNode instances'),
        (lambda: {'../mc3d': []}, 'cannot be part of a file name'),
    ],
    ids=['none', 'empty', 'string', 'unstored', 'not-a-workflow', 'path'],
)
def test_bad_input_is_refused_before_anything_is_written(subsets, message, tmp_path):
    subsets = subsets()
    (tmp_path / 'keep.txt').write_text('untouched')
    before = listing(tmp_path)
    with pytest.raises(ValueError, match=message):
        export_subset_archives(subsets, tmp_path / 'archives')
    with pytest.raises(ValueError, match=message):
        export_subset_archives(subsets, tmp_path)
    assert listing(tmp_path) == before
    assert not (tmp_path / 'archives').exists()


def test_unstored_extra_and_running_work_chain_are_refused(nodes, tmp_path):
    with pytest.raises(ValueError, match='subset `mc3d-rattled`: extra nodes include an unstored node'):
        export_subset_archives(
            {'mc3d': nodes['mc3d'], 'mc3d-rattled': nodes['mc3d-rattled']},
            tmp_path,
            extra_by_subset={'mc3d-rattled': [orm.Int(1)]},
        )
    running = orm.WorkflowNode().store()  # stored, never sealed: what a running work chain looks like
    with pytest.raises(ValueError, match=r'subset `mc3d`: .* is not sealed'):
        export_subset_archives({'mc3d': [*nodes['mc3d'], running]}, tmp_path)
    with pytest.raises(ValueError, match='extra nodes given for subsets without work chains: mc3d-random'):
        export_subset_archives({'mc3d': nodes['mc3d']}, tmp_path, extra_by_subset={'mc3d-random': nodes['mc3d']})
    assert listing(tmp_path) == {}


def test_failure_while_writing_leaves_the_directory_unchanged(nodes, tmp_path):
    """The second archive fails inside ``create_archive``: the first, already written, must not appear either."""
    unsealed = orm.CalcFunctionNode()
    unsealed.store()
    output = orm.Int(7)
    output.base.links.add_incoming(unsealed, link_type=LinkType.CREATE, link_label='result')
    output.store()
    (tmp_path / 'mad-mc3d.aiida').write_bytes(b'old')
    before = listing(tmp_path)
    with pytest.raises(ExportValidationError, match='must be sealed') as info:
        export_subset_archives(
            {'mc3d': nodes['mc3d'], 'mc3d-rattled': nodes['mc3d-rattled']},
            tmp_path,
            force=True,
            extra_by_subset={'mc3d-rattled': [output]},  # its creator is reached by the traversal, and is unsealed
        )
    assert any('subset `mc3d-rattled`' in note for note in info.value.__notes__)
    assert listing(tmp_path) == before


def test_archive_summary_refuses_what_is_no_archive(tmp_path):
    with pytest.raises(FileNotFoundError, match='no archive at'):
        archive_summary(tmp_path / 'missing.aiida')
    (tmp_path / 'bogus.aiida').write_bytes(b'not a zip file')
    with pytest.raises(ValueError, match=r'bogus\.aiida'):
        archive_summary(tmp_path / 'bogus.aiida')


def test_fresh_profile_is_empty_and_reports_failures(tmp_path):
    profile = FreshProfile(tmp_path / 'fresh')
    output = profile.run(
        """
        from aiida import orm
        from aiida.manage import get_manager
        print(get_manager().get_profile().name, orm.QueryBuilder().append(orm.Node).count())
        print(orm.QueryBuilder().append(orm.Computer).count(), orm.QueryBuilder().append(orm.Group).count())
        orm.Int(1).store()
        """
    )
    assert output.split() == ['fresh', '0', '0', '0']
    assert profile.run('from aiida import orm; print(orm.QueryBuilder().append(orm.Int).count())').split() == ['1']
    with pytest.raises(FreshProfileError, match=r'(?s)exit status 1.*printed first.*ZeroDivisionError'):
        profile.run('print("printed first"); 1 / 0')
    # The test session's profile is untouched, and a new directory means a new, empty profile.
    count = run_in_fresh_profile('from aiida import orm; print(orm.QueryBuilder().append(orm.Int).count())', tmp_path)
    assert count.split() == ['0']


def archive_content(path) -> dict[str, object]:
    """Return everything an archive holds, order-free: the rows of every table (JSON parsed; link ids, which the
    import ignores, left out), the repository objects by name with their sha256, the metadata (without its time)."""
    import hashlib
    import sqlite3
    import tempfile
    import zipfile

    with zipfile.ZipFile(path) as archive, tempfile.TemporaryDirectory() as work:
        names = archive.namelist()
        assert names[:2] == ['metadata.json', 'db.sqlite3']  # where aiida-core looks for them
        metadata = json.loads(archive.read('metadata.json'))
        database = os.path.join(work, 'db.sqlite3')
        with open(database, 'wb') as handle:
            handle.write(archive.read('db.sqlite3'))
        connection = sqlite3.connect(database)
        content: dict[str, object] = {}
        for (table,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
            columns = [row[1] for row in connection.execute(f'PRAGMA table_info("{table}")').fetchall()]
            rows = []
            for values in connection.execute(f'SELECT * FROM "{table}"').fetchall():
                row = dict(zip(columns, values, strict=True))
                if table == 'db_dblink':
                    row.pop('id')
                for key, value in row.items():
                    if isinstance(value, str) and value[:1] in '{[':
                        with contextlib.suppress(ValueError):  # JSON columns; a text such as `[scrubbed]` stays
                            row[key] = json.loads(value)
                rows.append(json.dumps(row, sort_keys=True))
            content[table] = sorted(rows)
        content['indexes'] = sorted(
            sql for (sql,) in connection.execute("SELECT sql FROM sqlite_master WHERE type = 'index'") if sql
        )
        connection.close()
        content['repository'] = sorted(
            (name, hashlib.sha256(archive.read(name)).hexdigest()) for name in names if name.startswith('repo/')
        )
    metadata.pop('ctime')
    metadata['creation_parameters']['entities_starting_set']['node'].sort()
    content['metadata'] = metadata
    return content


#: Dumps every node of the profile after importing the archives given as arguments (JSON on the last line).
IMPORTED_CONTENT = """
    import json

    from aiida import orm
    from aiida.tools.archive import import_archive

    for path in json.loads({paths!r}):
        import_archive(path)
    nodes = {{}}
    for node in orm.QueryBuilder().append(orm.Node).all(flat=True):
        nodes[node.uuid] = {{
            'class': type(node).__name__,
            'process_type': node.process_type,
            'label': node.label,
            'description': node.description,
            'ctime': node.ctime.isoformat(),
            'mtime': node.mtime.isoformat(),
            'attributes': node.base.attributes.all,
            'extras': node.base.extras.all,
            'repository': node.base.repository.serialize(),  # object keys: the sha256 of their content
            'computer': node.computer.label if node.computer else None,
            'user': node.user.email,
            'logs': sorted(log.message for log in orm.Log.collection.get_logs_for(node)),
            'comments': sorted(comment.content for comment in node.base.comments.all()),
        }}
    query = orm.QueryBuilder().append(orm.Node, project='uuid', tag='in')
    query.append(orm.Node, with_incoming='in', project='uuid', edge_project=['type', 'label'])
    computers = [
        [computer.label, computer.hostname, computer.description, computer.metadata]
        for computer in orm.Computer.collection.all()
    ]
    users = sorted([user.email, user.first_name, user.last_name] for user in orm.User.collection.all())
    print(json.dumps({{'nodes': nodes, 'links': sorted(query.all()), 'computers': computers, 'users': users}}))
"""


def test_bulk_writer_gives_what_create_archive_gives(nodes, tmp_path, monkeypatch):
    """The bulk writer against aiida-core's ``create_archive`` + ``scrub_archive`` (``writer='aiida'``): the same
    rows, repository objects and metadata in the archives (published and private), and a fresh profile importing
    either set of published archives holds the same nodes, links, attributes, extras and repository content.

    The bulk writer copies the rows of a SQLite profile inside SQLite; ``bulk-rows`` is its other way, the rows
    through Python (as on PostgreSQL), on the same profile.
    """
    from aiida_mad.export import archive

    subsets = {subset: nodes[subset] for subset in SUBSETS}
    written = {}
    for writer in ('aiida', 'bulk', 'bulk-rows'):
        monkeypatch.setattr(archive, '_ATTACH_SQLITE', writer != 'bulk-rows')
        for private_data in (False, True):
            paths = export_subset_archives(
                subsets, tmp_path / f'{writer}-{private_data}', writer=writer.split('-')[0], private_data=private_data
            )
            written[writer, private_data] = paths
    for private_data in (False, True):
        for subset in SUBSETS:
            reference = archive_content(written['aiida', private_data][subset])
            for writer in ('bulk', 'bulk-rows'):
                bulk = archive_content(written[writer, private_data][subset])
                assert bulk.keys() == reference.keys()
                for key in reference:
                    assert bulk[key] == reference[key], (writer, subset, private_data, key)
            assert len(reference['db_dbnode']) > 10 and reference['repository'], subset
    scrubbed = archive_content(written['bulk', False]['mc3d'])
    private = archive_content(written['bulk', True]['mc3d'])
    assert scrubbed['db_dbuser'] != private['db_dbuser'] and scrubbed['repository'] != private['repository']

    imported = {}
    for writer in ('aiida', 'bulk'):
        paths = json.dumps([str(written[writer, False][subset]) for subset in SUBSETS])
        output = FreshProfile(tmp_path / f'fresh-{writer}').run(IMPORTED_CONTENT.format(paths=paths))
        imported[writer] = json.loads(output.strip().splitlines()[-1])
    reference, bulk = imported['aiida'], imported['bulk']
    assert bulk['nodes'].keys() == reference['nodes'].keys()
    assert set().union(*(archive_summary(path)['uuids'] for path in written['bulk', False].values())) == set(
        bulk['nodes']
    )
    for uuid, node in reference['nodes'].items():
        assert bulk['nodes'][uuid] == node, (uuid, node['class'])
    assert bulk['links'] == reference['links'] and len(bulk['links']) > len(bulk['nodes'])
    assert bulk['computers'] == reference['computers'] and bulk['users'] == reference['users']


#: In a PostgreSQL profile: import the archives ``{subset: path}`` of ``argv[1]``, then write each subset's archive of
#: the same work chains (the starting set of its archive) with the bulk writer and with ``create_archive``, published
#: and private, into ``argv[2]/<writer>-<private>``. Prints ``{"<writer>-<private>": {subset: path}}``.
POSTGRES_EXPORT = """
    import json, pathlib, zipfile
    from aiida import orm
    from aiida.tools.archive import import_archive
    from aiida_mad.export.archive import export_subset_archives

    paths, target = json.loads(sys.argv[1]), pathlib.Path(sys.argv[2])
    subsets = {}
    for subset, path in paths.items():
        import_archive(path)
        with zipfile.ZipFile(path) as archive:
            starting = json.loads(archive.read('metadata.json'))['creation_parameters']['entities_starting_set']
        subsets[subset] = [orm.load_node(uuid) for uuid in starting['node']]
    written = {}
    for writer in ('aiida', 'bulk'):
        for private_data in (False, True):
            folder = target / f'{writer}-{private_data}'
            found = export_subset_archives(subsets, folder, writer=writer, private_data=private_data)
            written[f'{writer}-{private_data}'] = {subset: str(path) for subset, path in found.items()}
    print(json.dumps(written))
"""


def test_bulk_writer_on_postgresql_gives_what_create_archive_gives(nodes, tmp_path):
    """On PostgreSQL (the rows come as text from the server, fetched by a second thread, the graph walked with array
    parameters), the bulk writer's archives hold what ``create_archive`` + ``scrub_archive`` give: the same rows,
    repository objects and metadata, published and private. The profile holds the private archives of the three
    subsets, imported (so the private texts are there to be scrubbed)."""
    from tests.reliability.postgres import PostgresProfile, postgres_cluster

    private = export_subset_archives(
        {subset: nodes[subset] for subset in SUBSETS}, tmp_path / 'source', private_data=True
    )
    with postgres_cluster():
        profile = PostgresProfile(tmp_path / 'postgres')
        try:
            profile.create(daemon=False)
            output = profile.run(
                POSTGRES_EXPORT, json.dumps({subset: str(path) for subset, path in private.items()}), str(tmp_path)
            )
        finally:
            profile.delete()
    written = json.loads(output.strip().splitlines()[-1])
    for private_data in (False, True):
        for subset in SUBSETS:
            reference = archive_content(written[f'aiida-{private_data}'][subset])
            bulk = archive_content(written[f'bulk-{private_data}'][subset])
            assert bulk.keys() == reference.keys()
            for key in reference:
                assert bulk[key] == reference[key], (subset, private_data, key)
            assert len(reference['db_dbnode']) > 10 and reference['repository'], subset
    published = archive_content(written['bulk-False']['mc3d'])
    kept = archive_content(written['bulk-True']['mc3d'])
    assert published['db_dbuser'] != kept['db_dbuser'] and published['repository'] != kept['repository']
