"""DFT labelling: the parallelization policy against aiida-quantumespresso's default.

Bulk Si at the ``mad`` level of theory (110/1320 Ry, 17x17x17 k-points): ``MadDftWorkChain`` with the policy
   (all cores as MPI ranks, k-point pools) against ``PwBaseWorkChain`` with the same parameters and
aiida-quantumespresso's default parallelization (the same MPI ranks, no pools). pw.x's own wall time is compared.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from common import Row, temporary_profile

OFFLINE = {'pseudo_family': 'offline'}


def make_code():
    from aiida import orm

    from aiida_mad.codes import detect_pw_version, ensure_installed_code, pw_prepend_text
    from aiida_mad.workflows.dft import CODE_VERSION_EXTRA

    computer = orm.Computer(
        label='localhost',
        hostname='localhost',
        transport_type='core.local',
        scheduler_type='core.direct',
        # Inside the temporary profile's folder (AIIDA_PATH), so that the pw.x scratch goes with the profile.
        workdir=tempfile.mkdtemp(prefix='aiida-mad-bench-work-', dir=os.environ.get('AIIDA_PATH')),
    ).store()
    computer.configure(safe_interval=0.0)
    computer.set_default_mpiprocs_per_machine(os.cpu_count() or 1)
    # As `verdi presto` configures localhost (setup_profile.sh uses it): poll the scheduler at most once a second.
    computer.set_minimum_job_poll_interval(1)
    executable = shutil.which('pw.x') or '/usr/bin/pw.x'
    code, _ = ensure_installed_code(
        'pw',
        computer,
        executable,
        default_calc_job_plugin='quantumespresso.pw',
        with_mpi=True,
        prepend_text=pw_prepend_text(),
    )
    code.base.extras.set(CODE_VERSION_EXTRA, detect_pw_version(executable))
    return code


def wall_time(node) -> float:
    return (node.mtime - node.ctime).total_seconds()


def pw_wall_time(node) -> float:
    return float(node.outputs.output_parameters['wall_time_seconds'])


def run() -> list[Row]:
    with temporary_profile():
        from aiida import orm
        from aiida.engine import run_get_node
        from aiida_quantumespresso.workflows.pw.base import PwBaseWorkChain
        from ase.build import bulk

        from aiida_mad.pseudos import install_offline_family
        from aiida_mad.workflows.dft import MadDftWorkChain

        code = make_code()
        install_offline_family()
        silicon = orm.StructureData(ase=bulk('Si', 'diamond', a=5.43))

        builder = MadDftWorkChain.get_builder_from_protocol(code, silicon, 'mad', OFFLINE)
        _, ours = run_get_node(builder)
        scf = next(child for child in ours.called if child.process_label == 'MadPwBaseWorkChain')
        ours_pw = pw_wall_time(scf)
        parallelization = ours.outputs.properties['parallelization']

        # The same physics through aiida-quantumespresso's PwBaseWorkChain and its default parallelization.
        default = PwBaseWorkChain.get_builder()
        default.pw.code = code
        default.pw.structure = silicon
        default.pw.pseudos = scf.inputs.pw.pseudos
        default.pw.parameters = scf.inputs.pw.parameters
        default.pw.metadata.options = {
            'resources': {'num_machines': 1, 'num_mpiprocs_per_machine': parallelization['mpiprocs']},
            'max_wallclock_seconds': 3600,
            'withmpi': True,
        }
        default.kpoints_distance = orm.Float(0.125)
        _, baseline = run_get_node(default)
        baseline_pw = pw_wall_time(baseline)
        mesh = scf.called[-1].inputs.kpoints.get_kpoints_mesh()[0] if scf.called else None

        rows = [
            Row(
                'mad Si pw.x wall time: policy vs aiida-qe default',
                ours_pw,
                baseline_pw,
                's',
                higher_is_better=False,
                note=f'{parallelization["mpiprocs"]} MPI ranks both; policy uses -nk {parallelization["npool"]} for '
                f'{parallelization["irreducible_kpoints"]} irreducible k-points (mesh {mesh}); work chains: '
                f'{wall_time(ours):.1f} s vs {wall_time(baseline):.1f} s',
            )
        ]

        return rows
