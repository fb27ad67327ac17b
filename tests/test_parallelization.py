"""Parallelization policy: irreducible k-points, ranks and pools, and what a real run records and uses."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
from aiida import orm
from aiida.engine import run_get_node
from ase import Atoms
from ase.build import bulk

from aiida_mad.parallelization import Parallelization, choose_parallelization, count_irreducible_kpoints


@pytest.mark.parametrize(
    ('kpoints', 'cores', 'npool'),
    [
        (10, 2, 2),  # bulk Si, fast protocol, on two cores
        (1, 2, 1),  # Γ only (0D): a second pool would idle
        (1, 16, 1),
        (200, 8, 8),  # more k-points than cores: one pool per rank
        (3, 4, 2),  # largest divisor of the ranks not above the k-points (3 does not divide 4)
        (5, 12, 4),
        (10, 7, 7),  # prime number of cores: 7 pools if there are enough k-points ...
        (6, 7, 1),  # ... otherwise the only other divisor, 1
        (13, 13, 13),
        (2, 1, 1),
    ],
)
def test_choose_parallelization(kpoints, cores, npool):
    choice = choose_parallelization(kpoints, cores)
    assert choice == Parallelization(mpiprocs=cores, npool=npool, irreducible_kpoints=kpoints, cores=cores)
    assert choice.mpiprocs % choice.npool == 0
    assert choice.npool <= kpoints
    assert choice.flags == ({'npool': npool} if npool > 1 else {})
    assert choice.as_dict() == {'mpiprocs': cores, 'npool': npool, 'irreducible_kpoints': kpoints, 'cores': cores}


@pytest.mark.parametrize(('kpoints', 'cores'), [(0, 2), (-1, 2), (4, 0)])
def test_choose_parallelization_refuses_non_positive_counts(kpoints, cores):
    with pytest.raises(ValueError, match='must be positive'):
        choose_parallelization(kpoints, cores)


@pytest.mark.parametrize(
    ('atoms', 'mesh', 'expected'),
    [
        (bulk('Si', 'diamond', a=5.43), (5, 5, 5), 10),
        (bulk('Si', 'diamond', a=5.43), (17, 17, 17), 165),  # the `mad` protocol's mesh
        (bulk('Si', 'diamond', a=5.43), (1, 1, 1), 1),
        (bulk('Al', 'fcc', a=4.05), (6, 6, 6), 16),
        (Atoms('H', cell=np.diag([3.0, 4.1, 5.3]), pbc=True), (2, 2, 2), 8),  # orthorhombic: no reduction left
        (Atoms('H', cell=np.diag([3.0, 4.1, 5.3]), pbc=True), (4, 4, 4), 27),
    ],
    ids=['si-5', 'si-17', 'si-gamma', 'al-6', 'ortho-2', 'ortho-4'],
)
def test_count_irreducible_kpoints(atoms, mesh, expected):
    assert count_irreducible_kpoints(atoms, mesh) == expected


def test_irreducible_kpoints_drop_with_symmetry():
    """A strained cell has fewer symmetries, hence more irreducible k-points on the same mesh."""
    cubic = bulk('Si', 'diamond', a=5.43)
    strained = cubic.copy()
    strained.set_cell(np.array(cubic.cell) @ np.diag([1.0, 1.0, 1.03]), scale_atoms=True)
    assert count_irreducible_kpoints(strained, (5, 5, 5)) > count_irreducible_kpoints(cubic, (5, 5, 5))


def test_real_run_uses_and_records_the_policy(pw_code, offline_family):
    """Strained Si: pw.x finds the same irreducible k-points, and the run uses the ranks and pools of the policy.

    The strain lowers the symmetry (more irreducible k-points than cubic Si), a less trivial comparison between the
    policy's spglib count and pw.x's own; bulk Si itself is compared in ``tests/workflows/test_dft.py``. The ranks are
    the cores of this machine (the ``pw_code`` computer's default), the pools what the policy makes of them.
    """
    from aiida_mad.workflows.dft import MadDftWorkChain

    atoms = bulk('Si', 'diamond', a=5.43)
    atoms.set_cell(np.array(atoms.cell) @ np.diag([1.0, 1.0, 1.03]), scale_atoms=True)
    builder = MadDftWorkChain.get_builder_from_protocol(pw_code, orm.StructureData(ase=atoms), 'fast')
    _, node = run_get_node(builder)
    assert node.is_finished_ok, node.exit_message

    (calc,) = [n for n in node.called_descendants if n.process_label == 'PwCalculation']
    mesh, _ = calc.inputs.kpoints.get_kpoints_mesh()
    reported = calc.outputs.output_parameters['number_of_k_points']
    expected = count_irreducible_kpoints(atoms, mesh)
    assert expected > 10
    assert reported == expected

    cores = pw_code.computer.get_default_mpiprocs_per_machine()
    assert cores == (os.cpu_count() or 1)
    policy = choose_parallelization(expected, cores)
    recorded = node.outputs.properties['parallelization']
    assert recorded == policy.as_dict()
    assert recorded == {'mpiprocs': cores, 'npool': policy.npool, 'irreducible_kpoints': expected, 'cores': cores}

    # What the calculation really ran with: one MPI rank per core, and the policy's pools on the pw.x command line.
    assert calc.base.attributes.get('resources')['num_mpiprocs_per_machine'] == cores
    assert calc.inputs.parallelization.get_dict() == policy.flags
    script = calc.base.repository.get_object_content('_aiidasubmit.sh')
    assert f"'-np' '{cores}'" in script
    assert (f"'-npool' '{policy.npool}'" in script) == (policy.npool > 1)
    output = calc.outputs.retrieved.get_object_content('aiida.out')
    assert re.search(rf'Parallel version \(MPI\), running on +{cores} processors', output)
    pools = re.search(r'K-points division: +npool += +(\d+)', output)
    assert (int(pools.group(1)) if pools else 1) == policy.npool
