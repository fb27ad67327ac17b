"""Error handling of the DFT labelling, proved with faults injected into the real pw.x.

The codes run ``tests/fixtures/fake_pw/pw_fault.sh``, which sets ``electron_maxstep = 1`` in the input before it execs
the real pw.x: pw.x itself fails to converge, prints its own error and the parser and handlers see a genuine failure.
The wrapper is what mpirun launches, once per rank (one per core), in the same directory at the same time; it edits
the input under ``flock`` and only once per calculation, so no rank starts pw.x before the edit is complete whichever
rank reads the input. (Running pw.x without MPI would avoid the race but not test the production launch line with its
pools.) The input AiiDA wrote stays untouched in the node's repository; the edited copy is in the remote folder.
"""

from __future__ import annotations

import pathlib
import re

import pytest
from aiida import orm
from aiida.engine import ProcessHandlerReport, process_handler, run_get_node
from aiida_quantumespresso.calculations.pw import PwCalculation

from aiida_mad.workflows.dft import MadDftWorkChain, MadPwBaseWorkChain, _locked_state
from tests.fixtures.fake_pw.utils import fault_code, parse_pw_input, written_input

#: What no handler may change: the namelist keys of the level of theory, and the k-points card.
LOCKED_SYSTEM = ('ecutwfc', 'ecutrho', 'occupations', 'smearing', 'degauss', 'nspin', 'assume_isolated', 'input_dft')

#: The wrapper's edit, as it appears in the input pw.x read.
MAXSTEP_1 = re.compile(r'^ *electron_maxstep = 1$', re.MULTILINE)

SCF_NOT_CONVERGED = PwCalculation.exit_codes.ERROR_ELECTRONIC_CONVERGENCE_NOT_REACHED.status  # 410


@pytest.fixture
def make_fault_code(pw_code, tmp_path):
    """Return ``make(fault)``: a code running the tests' real pw.x through the wrapper with ``fault`` injected."""
    return lambda fault: fault_code(pw_code, fault, directory=tmp_path)


def pw_calculations(node) -> list:
    """Return the ``PwCalculation`` nodes called under ``node``, oldest first."""
    return sorted((n for n in node.called_descendants if n.process_label == 'PwCalculation'), key=lambda n: n.ctime)


def remote_file(calc, name: str) -> str:
    """Return the content of a file in the remote working directory of a calculation on localhost."""
    return (pathlib.Path(calc.outputs.remote_folder.get_remote_path()) / name).read_text()


def locked(written: dict) -> dict:
    """Return the parts of a parsed pw.x input that make the level of theory."""
    system = written['namelists']['system']
    return {
        **{key: system.get(key) for key in LOCKED_SYSTEM},
        'kpoints': written['kpoints'],
        'cell': written['cell'].tolist(),
        'positions': written['positions'].tolist(),
    }


def test_scf_failure_then_restart_converges(make_fault_code, offline_family, silicon):
    """First pw.x run limited to one SCF step fails; the restart with reduced mixing converges."""
    builder = MadDftWorkChain.get_builder_from_protocol(make_fault_code('once'), silicon, 'fast')
    _, node = run_get_node(builder)

    assert node.is_finished_ok, f'{node.exit_status}: {node.exit_message}'
    assert {'energy', 'forces', 'stress', 'dos', 'properties'} <= set(node.outputs)
    first, second = pw_calculations(node)

    # The failure was pw.x's own: the edited input in the remote folder, pw.x's message, the parser's exit code.
    assert MAXSTEP_1.search(remote_file(first, 'aiida.in'))
    assert 'convergence NOT achieved after   1 iterations' in first.outputs.retrieved.get_object_content('aiida.out')
    assert first.exit_status == SCF_NOT_CONVERGED
    assert second.is_finished_ok
    assert not MAXSTEP_1.search(remote_file(second, 'aiida.in'))

    inputs = [parse_pw_input(written_input(calc)) for calc in (first, second)]
    electrons = [written['namelists']['electrons'] for written in inputs]
    assert electrons[0]['mixing_beta'] == pytest.approx(0.4)
    assert electrons[1]['mixing_beta'] == pytest.approx(0.4 * 0.8)
    assert inputs[1]['namelists']['control']['restart_mode'] == 'restart'
    # Restarting changes how SCF gets there, never where: the level of theory is identical in both inputs.
    assert locked(inputs[0]) == locked(inputs[1])
    assert inputs[0]['kpoints'] == ((5, 5, 5), (0, 0, 0))
    assert inputs[0]['namelists']['system']['ecutwfc'] == 30

    # The result is the converged energy of bulk Si at this level of theory (see test_dft.py).
    assert node.outputs.energy.value == pytest.approx(-230.22, abs=0.03)
    fingerprint = node.outputs.properties['fingerprint']
    assert node.inputs.structure.base.extras.get(f'mad_dft_{fingerprint[:16]}')['state'] == 'finished'


def test_persistent_scf_failure_is_recorded_and_nothing_deleted(make_fault_code, offline_family, silicon):
    """pw.x never converges: three attempts (mixing, then cg with random start), an exit code, the structure marked."""
    builder = MadDftWorkChain.get_builder_from_protocol(make_fault_code('always'), silicon, 'fast')
    _, node = run_get_node(builder)

    assert node.exit_status == MadDftWorkChain.exit_codes.ERROR_SCF_FAILED.status == 310
    assert 'MadPwBaseWorkChain' in node.exit_message
    (scf,) = [child for child in node.called if child.process_label == 'MadPwBaseWorkChain']
    assert scf.exit_status == MadPwBaseWorkChain.exit_codes.ERROR_MAXIMUM_ITERATIONS_EXCEEDED.status
    assert not {'energy', 'forces', 'stress', 'dos', 'properties'} & set(node.outputs)

    # The structure says so, under the fingerprint of this level of theory.
    fingerprint = node.base.extras.get('mad_fingerprint')
    mark = silicon.base.extras.get(f'mad_dft_{fingerprint[:16]}')
    assert mark == {'state': 'failed', 'exit_status': 310, 'workchain': node.uuid}

    # Nothing deleted: every calculation is in the graph with its retrieved files, parsed output and remote folder.
    calcs = pw_calculations(node)
    assert len(calcs) == builder.scf.max_iterations.value == 3
    for calc in calcs:
        assert calc.exit_status == SCF_NOT_CONVERGED
        assert 'convergence NOT achieved' in calc.outputs.retrieved.get_object_content('aiida.out')
        assert 'output_parameters' in calc.outputs
        assert pathlib.Path(calc.outputs.remote_folder.get_remote_path(), 'aiida.out').is_file()

    inputs = [parse_pw_input(written_input(calc)) for calc in calcs]
    electrons = [written['namelists']['electrons'] for written in inputs]
    control = [written['namelists']['control'] for written in inputs]
    # 1st failure: the parent's handler reduces the mixing and restarts from the last run.
    assert electrons[1]['mixing_beta'] == pytest.approx(0.32)
    assert control[1]['restart_mode'] == 'restart'
    assert 'diagonalization' not in electrons[1]
    # 2nd failure: MadPwBaseWorkChain's handler changes the algorithm, from scratch with a random component.
    assert electrons[2]['diagonalization'] == 'cg'
    assert electrons[2]['startingwfc'] == 'atomic+random'
    assert electrons[2]['electron_maxstep'] == 200
    assert control[2]['restart_mode'] == 'from_scratch'
    assert 'startingpot' not in electrons[2]
    # ... and never the level of theory.
    assert locked(inputs[0]) == locked(inputs[1]) == locked(inputs[2])


class ChangesCutoffWorkChain(MadPwBaseWorkChain):
    """A restart work chain with a handler that breaks the rule: it raises ``ecutwfc`` when SCF fails."""

    @process_handler(priority=900, exit_codes=[PwCalculation.exit_codes.ERROR_ELECTRONIC_CONVERGENCE_NOT_REACHED])
    def handle_by_raising_the_cutoff(self, calculation):
        self.ctx.inputs.parameters['SYSTEM']['ecutwfc'] += 10.0
        self.report_error_handled(calculation, 'raised ecutwfc by 10 Ry')
        return ProcessHandlerReport(True)


def pw_base_inputs(code, structure, family, parameters) -> dict:
    """Return PwBaseWorkChain-style inputs at the `fast` level of theory, one MPI rank per core of the computer."""
    ranks = code.computer.get_default_mpiprocs_per_machine() or 1
    return {
        'pw': {
            'code': code,
            'structure': structure,
            'parameters': parameters,
            'pseudos': family.get_pseudos(structure=structure),
            'metadata': {
                'options': {'resources': {'num_machines': 1, 'num_mpiprocs_per_machine': ranks}, 'withmpi': True}
            },
        },
        'kpoints_distance': orm.Float(0.5),
        'max_iterations': orm.Int(3),
    }


def test_guard_refuses_a_restart_that_changes_the_level_of_theory(make_fault_code, pw_code, offline_family, silicon):
    parameters = MadDftWorkChain.get_builder_from_protocol(pw_code, silicon, 'fast').scf.pw.parameters
    inputs = pw_base_inputs(make_fault_code('once'), silicon, offline_family, parameters)
    _, node = run_get_node(ChangesCutoffWorkChain, **inputs)

    assert node.exit_status == MadPwBaseWorkChain.exit_codes.ERROR_LEVEL_OF_THEORY_CHANGED.status == 350
    assert '`SYSTEM.ecutwfc` would change from 30.0 to 40.0' in node.exit_message
    # The first (failed) calculation ran; the second was never launched.
    (calc,) = [n for n in node.called if n.process_label == 'PwCalculation']
    assert calc.exit_status == SCF_NOT_CONVERGED


def test_level_of_theory_refusal_reaches_the_labelling(make_fault_code, offline_family, silicon, monkeypatch):
    """MadDftWorkChain turns the refusal into its own exit code and marks the structure."""
    original = MadDftWorkChain.submit

    def submit(self, process, inputs=None, **kwargs):
        return original(self, ChangesCutoffWorkChain if process is MadPwBaseWorkChain else process, inputs, **kwargs)

    monkeypatch.setattr(MadDftWorkChain, 'submit', submit)
    builder = MadDftWorkChain.get_builder_from_protocol(make_fault_code('once'), silicon, 'fast')
    _, node = run_get_node(builder)

    assert node.exit_status == MadDftWorkChain.exit_codes.ERROR_LEVEL_OF_THEORY_CHANGED.status == 330
    assert 'SYSTEM.ecutwfc' in node.exit_message
    assert len(pw_calculations(node)) == 1
    fingerprint = node.base.extras.get('mad_fingerprint')
    mark = silicon.base.extras.get(f'mad_dft_{fingerprint[:16]}')
    assert mark == {'state': 'failed', 'exit_status': 330, 'workchain': node.uuid}


# ------------------------------------------------------------------------------------------------------------------
# The locked state itself (no pw.x)


@pytest.fixture
def locked_inputs(offline_family, silicon):
    parameters = {
        'SYSTEM': {'ecutwfc': 30.0, 'ecutrho': 240.0, 'occupations': 'smearing', 'smearing': 'cold', 'degauss': 0.01},
        'ELECTRONS': {'mixing_beta': 0.4},
    }
    kpoints = orm.KpointsData()
    kpoints.set_kpoints_mesh([5, 5, 5])
    return parameters, kpoints, silicon, offline_family.get_pseudos(structure=silicon)


@pytest.mark.parametrize(
    ('section', 'key', 'value'),
    [
        ('SYSTEM', 'ecutwfc', 35.0),
        ('SYSTEM', 'ecutrho', 300.0),
        ('SYSTEM', 'smearing', 'gaussian'),
        ('SYSTEM', 'degauss', 0.02),
        ('SYSTEM', 'occupations', 'fixed'),
        ('SYSTEM', 'nspin', 2),
        ('SYSTEM', 'input_dft', 'PBE'),
        ('SYSTEM', 'assume_isolated', 'mt'),
        ('SYSTEM', 'starting_magnetization', {'Si': 0.5}),
    ],
)
def test_locked_state_changes_with_the_level_of_theory(locked_inputs, section, key, value):
    parameters, kpoints, structure, pseudos = locked_inputs
    before = _locked_state(parameters, kpoints, structure, pseudos)
    parameters[section][key] = value
    after = _locked_state(parameters, kpoints, structure, pseudos)
    assert {k for k in before if before[k] != after[k]} == {f'{section}.{key}'}


@pytest.mark.parametrize(
    ('section', 'key', 'value'),
    [
        ('ELECTRONS', 'mixing_beta', 0.1),
        ('ELECTRONS', 'diagonalization', 'cg'),
        ('ELECTRONS', 'startingwfc', 'atomic+random'),
        ('ELECTRONS', 'electron_maxstep', 400),
        ('CONTROL', 'restart_mode', 'restart'),
    ],
)
def test_locked_state_ignores_how_scf_converges(locked_inputs, section, key, value):
    parameters, kpoints, structure, pseudos = locked_inputs
    before = _locked_state(parameters, kpoints, structure, pseudos)
    parameters.setdefault(section, {})[key] = value
    assert _locked_state(parameters, kpoints, structure, pseudos) == before


def test_locked_state_covers_kpoints_structure_and_pseudos(locked_inputs, offline_family):
    parameters, kpoints, structure, pseudos = locked_inputs
    before = _locked_state(parameters, kpoints, structure, pseudos)
    denser = orm.KpointsData()
    denser.set_kpoints_mesh([6, 6, 6])
    assert _locked_state(parameters, denser, structure, pseudos)['kpoints'] != before['kpoints']
    shifted = orm.KpointsData()
    shifted.set_kpoints_mesh([5, 5, 5], offset=[0.5, 0.5, 0.5])
    assert _locked_state(parameters, shifted, structure, pseudos)['kpoints'] != before['kpoints']
    other = orm.StructureData(ase=structure.get_ase())
    assert _locked_state(parameters, kpoints, other, pseudos)['structure'] != before['structure']
    swapped = {'Si': offline_family.get_pseudo('Ge')}
    assert _locked_state(parameters, kpoints, structure, swapped)['pseudos'] != before['pseudos']


def restart_reports(node) -> str:
    """Return the reports of the ``MadPwBaseWorkChain`` called by a ``MadDftWorkChain``, joined."""
    (base,) = [child for child in node.called if child.process_label == 'MadPwBaseWorkChain']
    return ' '.join(log.message for log in orm.Log.collection.get_logs_for(base))


def test_fermi_energy_not_bracketed_restarts_with_more_bands(make_fault_code, offline_family):
    """pw.x stops with `cannot bracket Ef` on an isolated atom; the restart with more bands finishes it."""
    from ase import Atoms

    from aiida_mad.workflows.dft import BRACKET_MESSAGE

    atom = orm.StructureData(ase=Atoms('Si', positions=[[0.0, 0.0, 0.0]], pbc=False))
    builder = MadDftWorkChain.get_builder_from_protocol(make_fault_code('bracket'), atom, 'fast')
    _, node = run_get_node(builder)

    assert node.is_finished_ok, f'{node.exit_status}: {node.exit_message}'
    first, second = pw_calculations(node)
    assert first.is_failed
    assert BRACKET_MESSAGE in first.outputs.retrieved.base.repository.get_object_content('aiida.out')
    assert second.is_finished_ok
    inputs = [parse_pw_input(written_input(calc)) for calc in (first, second)]
    system = [written['namelists']['system'] for written in inputs]
    electrons = [written['namelists']['electrons'] for written in inputs]
    # How pw.x gets there changed: more bands than pw.x's default (4 valence electrons: 2 occupied bands, default
    # max(1.2 x 2, 2 + 4) = 6), an atomic+random start, half the mixing.
    assert 'nbnd' not in system[0] and system[1]['nbnd'] == 10
    assert electrons[1]['startingwfc'] == 'atomic+random'
    assert electrons[1]['mixing_beta'] == pytest.approx(0.5 * electrons[0]['mixing_beta'])
    # What it converges to did not: the level of theory of both runs is the same.
    assert locked(inputs[0]) == locked(inputs[1])
    assert 'cannot bracket Ef: nbnd 10' in restart_reports(node)


def test_fermi_energy_never_bracketed_is_given_up(make_fault_code, offline_family):
    """Every run stops with `cannot bracket Ef`: after two restarts the labelling fails, with every run kept."""
    from ase import Atoms

    atom = orm.StructureData(ase=Atoms('Si', positions=[[0.0, 0.0, 0.0]], pbc=False))
    builder = MadDftWorkChain.get_builder_from_protocol(make_fault_code('bracket-always'), atom, 'fast')
    _, node = run_get_node(builder)
    assert node.exit_status == MadDftWorkChain.exit_codes.ERROR_SCF_FAILED.status
    calculations = pw_calculations(node)
    assert len(calculations) == 3 and all(calc.is_failed for calc in calculations)  # the first run and two restarts
    last = parse_pw_input(written_input(calculations[-1]))['namelists']
    assert last['system']['nbnd'] == 20 and last['electrons']['diagonalization'] == 'cg'
    assert 'Ef still not bracketed after 2 restarts' in restart_reports(node)
