"""Published archives: no computer setup, local path, submit script or email inside; import gives the same results.

One real pw.x run (``fast`` protocol, a one-atom Si cell) on a computer made for the test, whose description,
``prepend_text`` and work directory carry recognisable secrets, with the default user's email as a further one.
Every member of the archive is decompressed and searched; the archive is then imported into a brand-new profile.
"""

from __future__ import annotations

import json
import secrets
import zipfile

import numpy as np
import pytest
from aiida import orm
from aiida.engine import run_get_node
from ase.build import bulk

from aiida_mad.codes import pw_prepend_text
from aiida_mad.export.archive import ANONYMOUS_EMAIL, archive_summary, export_subset_archives
from aiida_mad.workflows.dft import CODE_VERSION_EXTRA, MadDftWorkChain
from tests.conftest import PW_EXECUTABLE
from tests.fresh_profile import run_in_fresh_profile

OVERRIDES = {'pseudo_family': 'offline', 'kpoints_distance': 1.0}


def members(path) -> dict[str, bytes]:
    """Return every member of a zip file, decompressed."""
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def holding(path, texts) -> dict[str, list[str]]:
    """Return ``{text: [members holding it]}`` for the texts found anywhere in the archive."""
    found = {}
    for name, content in members(path).items():
        for text in texts:
            if text.encode() in content:
                found.setdefault(text, []).append(name)
    return found


@pytest.fixture
def secret_run(aiida_localhost, pw_code, offline_family, tmp_path):
    """Return ``(work chain, secrets)``: a finished run on a computer whose setup holds recognisable secrets."""
    token = secrets.token_hex(8)
    workdir = tmp_path / f'private-scratch-{token}'
    computer = orm.Computer(
        label=f'secret-cluster-{token}',
        hostname='localhost',
        description=f'Cluster of the group, booked on grant {token}-grant',
        transport_type='core.local',
        scheduler_type='core.direct',
        workdir=str(workdir),
    ).store()
    computer.set_prepend_text(f'export MAD_SECRET_TOKEN=prepend-{token}')
    computer.set_default_mpiprocs_per_machine(1)
    computer.configure()
    code = orm.InstalledCode(
        label='pw-secret',
        computer=computer,
        filepath_executable=PW_EXECUTABLE,
        default_calc_job_plugin='quantumespresso.pw',
        with_mpi=True,
        prepend_text=f'{pw_prepend_text()}\nexport MAD_CODE_SECRET=code-{token}',
    ).store()
    code.base.extras.set(CODE_VERSION_EXTRA, pw_code.base.extras.get(CODE_VERSION_EXTRA))
    structure = orm.StructureData(ase=bulk('Si', 'fcc', a=3.85))
    structure.base.extras.set('mad_subset', 'mc3d')
    _, node = run_get_node(MadDftWorkChain.get_builder_from_protocol(code, structure.store(), 'fast', OVERRIDES))
    assert node.is_finished_ok, f'{node.exit_status}: {node.exit_message}'
    email = orm.User.collection.get_default().email
    texts = [f'prepend-{token}', f'{token}-grant', str(workdir), str(tmp_path), email, f'code-{token}']
    return node, texts


@pytest.mark.scenario('archives carry no secrets; import round trip')
def test_published_archive_holds_no_secrets_and_imports_to_the_same_results(secret_run, tmp_path, figures):
    node, texts = secret_run
    # The secrets are really in the profile's provenance: the submit script holds the prepend text.
    calculation = next(item for item in node.called_descendants if isinstance(item, orm.CalcJobNode))
    assert texts[0] in calculation.base.repository.get_object_content('_aiidasubmit.sh')

    private = export_subset_archives({'mc3d': [node]}, tmp_path / 'private', private_data=True)['mc3d']
    assert set(holding(private, texts)) == set(texts)  # without scrubbing every secret is in the archive

    public = export_subset_archives({'mc3d': [node]}, tmp_path / 'public')['mc3d']
    assert holding(public, texts) == {}
    summary, private_summary = archive_summary(public), archive_summary(private)
    assert summary['uuids'] == private_summary['uuids']  # the same nodes, only the private texts left out
    contents = members(public)

    energy = node.outputs.energy.value
    forces = node.outputs.forces.get_array('forces').tolist()
    script = f"""
import json
from aiida import orm
from aiida.tools.archive import import_archive
import_archive({str(public)!r})
node = orm.load_node({node.uuid!r})
calculation = next(item for item in node.called_descendants if isinstance(item, orm.CalcJobNode))
print(json.dumps({{
    'energy': node.outputs.energy.value,
    'forces': node.outputs.forces.get_array('forces').tolist(),
    'nodes': orm.QueryBuilder().append(orm.Node).count(),
    'emails': [user.email for user in orm.User.collection.all()],
    'prepend': calculation.computer.get_prepend_text(),
    'workdir': calculation.computer.get_workdir(),
    'files': calculation.base.repository.list_object_names(),
    'remote_workdir': calculation.get_remote_workdir(),
    'ok': node.is_finished_ok,
}}))
"""
    imported = json.loads(run_in_fresh_profile(script, tmp_path).strip().splitlines()[-1])
    assert imported['ok'] and imported['energy'] == energy
    np.testing.assert_array_equal(np.array(imported['forces']), np.array(forces))
    assert imported['nodes'] == summary['nodes']
    assert ANONYMOUS_EMAIL in imported['emails'] and texts[4] not in imported['emails']
    assert imported['prepend'] == '' and imported['workdir'] == ''
    assert '_aiidasubmit.sh' not in imported['files'] and '.aiida' not in imported['files']
    assert 'aiida.in' in imported['files']  # the pw.x input stays: it is provenance, not machine setup
    assert not imported['remote_workdir']
    figures['secrets looked for'] = len(texts)
    figures['archive members searched'] = len(contents)
    figures['secrets found'] = 0
    figures['nodes re-imported'] = imported['nodes']
