"""The same DFT labelling through a real single-node Slurm (``core.slurm`` computer), in-process and via the daemon."""

import pytest
from aiida import orm
from aiida.engine import run_get_node

from aiida_mad.codes import detect_pw_version, pw_prepend_text
from aiida_mad.parallelization import choose_parallelization
from aiida_mad.workflows.dft import CODE_VERSION_EXTRA, MadDftWorkChain


@pytest.fixture
def slurm_pw_code(slurm_computer, aiida_code_installed):
    from tests.conftest import PW_EXECUTABLE

    code = aiida_code_installed(
        label='pw-slurm',
        computer=slurm_computer,
        default_calc_job_plugin='quantumespresso.pw',
        filepath_executable=PW_EXECUTABLE,
        with_mpi=True,
        prepend_text=pw_prepend_text(),
    )
    code.base.extras.set(CODE_VERSION_EXTRA, detect_pw_version(PW_EXECUTABLE))
    return code


def check_went_through_slurm(workchain, slurm_cluster):
    assert workchain.is_finished_ok, workchain.exit_message
    (calculation,) = (
        orm.QueryBuilder()
        .append(
            orm.CalcJobNode,
            filters={
                'id': {'in': [node.pk for node in workchain.called_descendants if isinstance(node, orm.CalcJobNode)]}
            },
        )
        .all(flat=True)
    )
    assert calculation.computer.scheduler_type == 'core.slurm'
    job_id = calculation.get_job_id()
    assert job_id is not None and job_id.isdigit()
    info = slurm_cluster.job_info(job_id)
    assert info['JobState'] == 'COMPLETED'
    assert info['ExitCode'] == '0:0'
    assert '_scheduler-stdout.txt' in calculation.outputs.retrieved.base.repository.list_object_names()
    # One rank per CPU of the Slurm node, and the pools the policy makes of them for this structure.
    recorded = workchain.outputs.properties['parallelization']
    policy = choose_parallelization(recorded['irreducible_kpoints'], slurm_cluster.cpus)
    assert recorded == policy.as_dict()
    submit_script = calculation.base.repository.get_object_content('_aiidasubmit.sh')
    assert '#SBATCH' in submit_script
    assert (f"'-npool' '{policy.npool}'" in submit_script) == (policy.npool > 1)


@pytest.mark.usefixtures('aiida_profile_clean')
def test_labelling_through_slurm(slurm_cluster, slurm_pw_code, offline_family, silicon):
    builder = MadDftWorkChain.get_builder_from_protocol(slurm_pw_code, silicon, 'fast')
    _, node = run_get_node(builder)
    check_went_through_slurm(node, slurm_cluster)
    assert node.outputs.energy.value == pytest.approx(-230.22, abs=0.05)


@pytest.mark.usefixtures('aiida_profile_clean')
def test_controller_through_slurm_with_daemon(slurm_cluster, slurm_pw_code, offline_family, silicon, submit_and_await):
    from aiida_mad.controllers.dft import DftSubmissionController

    silicon.store()
    parent = orm.Group(label='mad/structures/mc3d').store()
    parent.add_nodes(silicon)
    orm.Group(label='mad/dft/mc3d').store()
    controller = DftSubmissionController(
        parent_group_label=parent.label,
        group_label='mad/dft/mc3d',
        code=slurm_pw_code.full_label,
        protocol='fast',
        max_concurrent=1,
    )
    (node,) = controller.submit_new_batch().values()
    node = submit_and_await(node, timeout=300)
    check_went_through_slurm(node, slurm_cluster)
    assert controller.is_done
