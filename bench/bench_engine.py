"""Engine overhead per structure: ``MadDftWorkChain`` wall time minus pw.x's own wall time on fast-protocol runs."""

from __future__ import annotations

from bench_dft import make_code, pw_wall_time, wall_time
from common import Row, temporary_profile


def run() -> list[Row]:
    with temporary_profile():
        from aiida import orm
        from aiida.engine import run_get_node
        from ase.build import bulk

        from aiida_mad.pseudos import install_offline_family
        from aiida_mad.workflows.dft import MadDftWorkChain

        code = make_code()
        install_offline_family()
        rows = []
        overheads, pw_times = [], []
        for a in (5.38, 5.43, 5.48, 5.53):
            structure = orm.StructureData(ase=bulk('Si', 'diamond', a=a))
            _, node = run_get_node(MadDftWorkChain.get_builder_from_protocol(code, structure, 'fast'))
            pw_time = pw_wall_time(next(child for child in node.called if child.process_label == 'MadPwBaseWorkChain'))
            overheads.append(wall_time(node) - pw_time)
            pw_times.append(pw_time)
        mean_overhead = sum(overheads) / len(overheads)
        mean_pw = sum(pw_times) / len(pw_times)
        rows.append(
            Row(
                'fast Si: work chain wall vs pw.x alone',
                mean_pw + mean_overhead,
                mean_pw,
                's',
                higher_is_better=False,
                note=f'engine overhead per structure {mean_overhead:.2f} s (work chain minus pw.x; '
                f'{len(overheads)} runs, in-process runner)',
            )
        )
        return rows
