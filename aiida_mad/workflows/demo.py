"""The inputs of ``aiida-mad demo``: a small, fast pw.x calculation on bulk Si."""

from __future__ import annotations

#: Low cutoffs (Ry) so that the demo finishes in seconds; the ``mad`` protocol uses 110/1320 Ry.
DEMO_CUTOFFS = {'ecutwfc': 30.0, 'ecutrho': 240.0}


def silicon_structure():
    """Return an unstored ``StructureData`` of bulk diamond Si (2 atoms)."""
    from aiida import orm
    from ase.build import bulk

    return orm.StructureData(ase=bulk('Si', 'diamond', a=5.43))


def get_demo_builder(code, pseudo_family: str, *, num_mpiprocs: int | None = None):
    """Return a ``PwBaseWorkChain`` builder for bulk Si with the ``fast`` protocol and the demo cutoffs.

    :param code: the pw.x code.
    :param pseudo_family: label of an installed pseudopotential family that has Si.
    :param num_mpiprocs: MPI ranks; defaults to the computer's default number of ranks per machine.
    """
    from aiida_quantumespresso.workflows.pw.base import PwBaseWorkChain

    num_mpiprocs = num_mpiprocs or code.computer.get_default_mpiprocs_per_machine() or 1
    overrides = {'pseudo_family': pseudo_family, 'pw': {'parameters': {'SYSTEM': DEMO_CUTOFFS}}}
    options = {'resources': {'num_machines': 1, 'num_mpiprocs_per_machine': num_mpiprocs}}
    builder = PwBaseWorkChain.get_builder_from_protocol(
        code, silicon_structure(), protocol='fast', overrides=overrides, options=options
    )
    builder.metadata.label = 'aiida-mad demo: bulk Si'
    builder.pw.metadata.label = 'aiida-mad demo: bulk Si'
    return builder
