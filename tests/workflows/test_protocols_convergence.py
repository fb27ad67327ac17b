"""The `demo` protocol's convergence table, reproduced on its cheapest system (bulk Si) with the real pw.x.

The table (``aiida_mad/workflows/protocols/dft.yaml``, ``docs/dft.md``) comes from ``bench/convergence.py``; this
test runs that script's Si row at the cutoffs the protocol file holds now and at the table's reference cutoffs,
so a change of the cutoffs, of the offline pseudopotentials or of pw.x that breaks the row shows here.
"""

import importlib.util
import pathlib
import shutil
import sys

import numpy as np
import pytest

from aiida_mad.workflows.dft import MadDftWorkChain

_PATH = pathlib.Path(__file__).resolve().parents[2] / 'bench' / 'convergence.py'
_SPEC = importlib.util.spec_from_file_location('_aiida_mad_bench_convergence', _PATH)
convergence = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = convergence  # its dataclasses look their module up
_SPEC.loader.exec_module(convergence)

#: The table's Si row of the `demo` protocol (85/340 Ry against 160/640 Ry): pressure and its error in GPa.
TABLE_PRESSURE = 0.35
TABLE_PRESSURE_ERROR = 0.01
#: The tolerance the protocol file states for `demo`: pressure within 2 GPa, forces within 0.01 eV/Å.
PRESSURE_TOLERANCE = 2.0
FORCE_TOLERANCE = 0.01
#: The reference cutoffs of the table.
REFERENCE = (160.0, 640.0)


def test_demo_protocol_reproduces_the_si_row(tmp_path):
    if shutil.which('pw.x') is None:
        pytest.fail('pw.x not found: install the Debian package quantum-espresso (make setup)')
    inputs = MadDftWorkChain.get_protocol_inputs('demo')
    system = inputs['pw']['parameters']['SYSTEM']
    # The script runs the protocol's settings: check that they still are the protocol's.
    assert (inputs['kpoints_distance'], system['smearing'], system['degauss']) == (
        convergence.KPOINTS_DISTANCE,
        'cold',
        convergence.DEGAUSS,
    )
    assert inputs['meta_parameters']['conv_thr_per_atom'] == convergence.CONV_THR_PER_ATOM
    silicon = convergence.systems()['Si']

    row = convergence.Row(
        'Si',
        convergence.run_pw(silicon, system['ecutwfc'], system['ecutrho'], workdir=tmp_path),
        convergence.run_pw(silicon, *REFERENCE, workdir=tmp_path),
    )
    print('| ' + ' | '.join(row.cells()) + ' |')

    # The forces are not zero by symmetry (one atom moved along [111]): the comparison means something.
    assert 0.5 < np.linalg.norm(row.reference.forces, axis=1).max() < 5.0
    assert row.result.pressure == pytest.approx(TABLE_PRESSURE, abs=0.05)
    assert row.pressure_error == pytest.approx(TABLE_PRESSURE_ERROR, abs=0.05)
    assert row.pressure_error < PRESSURE_TOLERANCE
    assert row.stress_error < PRESSURE_TOLERANCE
    assert row.force_error < FORCE_TOLERANCE
