"""Active learning on Slurm: one iteration of ``mad.active_learning`` whose DFT labelling runs through a real
single-node Slurm (``core.slurm`` computer), the rest as in ``tests/workflows/test_active_learning.py``.

The pretrained committee of two tiny MACE models of that module chooses two of four Si candidates (DIRECT, 2 clusters
of 1); each is labelled by the real pw.x (``fast``) as a Slurm job, one at a time; the dataset grows by the two new
frames at the level of theory of the local labels (the fingerprint does not depend on the computer).
"""

from __future__ import annotations

import uuid as uuid_module

from aiida import orm
from aiida.engine import run_get_node

from tests.workflows.test_active_learning import POOL, al_builder, committee  # noqa: F401 (the fixture)
from tests.workflows.test_dft_slurm import slurm_pw_code  # noqa: F401 (the fixture)

PW_PROCESS_TYPE = 'aiida.calculations:quantumespresso.pw'
DFT_PROCESS_TYPE = 'aiida.workflows:mad.dft'


def test_one_iteration_labels_through_slurm(
    dataset,
    committee,  # noqa: F811 (the fixture of tests/workflows/test_active_learning.py)
    mace,
    predictor,
    slurm_pw_code,  # noqa: F811 (the fixture of tests/workflows/test_dft_slurm.py)
    slurm_cluster,
):
    name = f'al-slurm-{uuid_module.uuid4().hex[:8]}'
    builder = al_builder(
        dataset,
        committee,
        mace,
        predictor,
        slurm_pw_code,
        name=name,
        pool=orm.Dict({**POOL, 'count': 4, 'element_pool': ['Si']}),
        max_iterations=orm.Int(1),
        max_concurrent=orm.Int(1),
        final_retrain=orm.Bool(False),
    )
    _, node = run_get_node(builder)
    assert node.is_finished_ok, f'{node.exit_status} {node.exit_message}'
    (entry,) = node.outputs.record.get_dict()['iterations']
    assert entry['downsampled'] == 2 and entry['labelled'] == 2 and entry['failed'] == 0, entry
    assert node.outputs.dataset.n_frames == dataset.n_frames + 2

    # Each new frame was labelled by one DFT work chain whose one pw.x calculation ran as a Slurm job.
    old = set(dataset.index()['source_uuid'].tolist())
    new = set(node.outputs.dataset.index()['source_uuid'].tolist()) - old
    assert len(new) == 2
    assert node.outputs.dataset.fingerprint == dataset.fingerprint
    workchains = [child for child in node.called_descendants if child.process_type == DFT_PROCESS_TYPE]
    assert {workchain.inputs.structure.uuid for workchain in workchains} == new
    for workchain in workchains:
        (calculation,) = [child for child in workchain.called_descendants if child.process_type == PW_PROCESS_TYPE]
        assert calculation.is_finished_ok, calculation.exit_message
        assert calculation.computer.uuid == slurm_pw_code.computer.uuid
        assert calculation.computer.scheduler_type == 'core.slurm'
        job_id = calculation.get_job_id()
        assert job_id is not None and job_id.isdigit(), job_id
        info = slurm_cluster.job_info(job_id)
        assert (info['JobState'], info['ExitCode']) == ('COMPLETED', '0:0'), info
        assert '#SBATCH' in calculation.base.repository.get_object_content('_aiidasubmit.sh')
