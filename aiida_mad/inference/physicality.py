"""Physicality benchmarks of a potential: dimer curves, E-V scans and MD stability (pure: ASE and NumPy, no AiiDA).

Each benchmark takes an *engine*: a loaded :class:`~aiida_mad.inference.models.Model` (its batched ``predict`` serves
the single points, its ``ase_calculator()`` the MD) or any ASE calculator (the tests use ASE's ``LennardJones``), and
returns plain, JSON-ready dictionaries: the curve or trace, the metrics and a ``passed`` verdict.

Homonuclear dimers (PET-MAD, Fig. S4 and its text)
    Two atoms of one element in a box, non-periodic, at distances on a logarithmic grid of :data:`DIMER_POINTS` points
    from 0.9 to 5.0 times the element's covalent radius (``ase.data.covalent_radii``; PET-MAD's words "0.9 to 5.0 of
    the element's covalent radius" read as multiples of that radius). The energy is shifted to zero at the largest
    distance; the force is the one on the second atom along the bond (positive: the atoms are pushed apart). Checks:

    * **repulsion**: at the shortest distance the energy lies above the dissociation limit and the force pushes the
      atoms apart, and from the shortest distance up to the minimum the energy falls monotonically (Spearman
      coefficient of energy against distance -1 on that branch);
    * **smoothness**: the successive energy differences change sign at most once (one minimum, no wiggles; changes
      below 1 meV are ignored, as MLIP Arena does).

    Also reported: the distance and depth of the minimum, the number of sign changes of the force, the tortuosity
    (total variation of the energy over its rise from the minimum to both ends; 1 for a clean well) and the
    conservation deviation (mean |F + dE/dr|, with dE/dr by finite differences on the grid).

E-V scans (MP-ALOE Table I, the MLIP Arena task)
    The cell and the atoms' fractional positions are scaled uniformly, without relaxation, by linear factors from 0.8
    to 1.2 (:data:`EV_POINTS` points, the middle one the structure as given). Sorted by volume, the energy
    differences of neighbouring points give dE/dV at the midpoints. A structure **fails** when dE/dV changes sign
    more than once (changes below 1 meV ignored). Reported per structure and averaged: the Spearman coefficient of
    E against V under compression (the points below the given volume; ideal -1), of dE/dV against V under
    compression (ideal +1) and of E against V under expansion (ideal +1); the failure percentage over structures.

MD stability (MP-ALOE Fig. 5, the MLIP Arena task)
    NVT: Langevin dynamics (friction 0.01 /fs) with the target temperature ramped linearly from 300 K to 3000 K over
    the run; NPT: Berendsen NPT (``NPTBerendsen``, ``taut`` 100 fs, ``taup`` 1000 fs, compressibility of a 100 GPa
    bulk modulus) with the same temperature ramp and the pressure ramped linearly from 0 to 100 GPa (MP-ALOE's
    choice; MLIP Arena's original goes to 500 GPa). The run lasts 10 ps, 2 fs steps (0.5 fs when hydrogen is present).
    A frame is **valid**, as MP-ALOE defines it, when its energy is finite and within 100 eV/atom of the initial
    frame's, and no atom has a kinetic energy of 100 eV or more; under NPT the volume must also stay between a tenth
    and ten times the initial volume. The run stops at the first invalid frame (or when the model fails to give an
    energy); the result is the number of steps completed before it and their fraction of the scheduled steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from ase import Atoms, units
from ase.data import atomic_numbers, covalent_radii

__all__ = (
    'BENCHMARKS',
    'DEFAULT_PARAMETERS',
    'DIMER_POINTS',
    'EV_POINTS',
    'MD_DEFAULTS',
    'benchmark_parameters',
    'check_dimer',
    'check_ev_scan',
    'dimer_curve',
    'dimer_distances',
    'ev_scan',
    'evaluate',
    'md_stability',
    'md_supercell',
    'run_benchmark',
    'run_dimers',
    'run_ev_scans',
    'run_md_stability',
    'sign_changes',
    'spearman',
    'valid_frame',
)

#: The benchmarks, by the name the script, the CalcJob and the CLI use.
BENCHMARKS = ('dimers', 'ev_scan', 'md_stability')

#: Points of PET-MAD's dimer grid (logarithmic, 0.9 to 5.0 covalent radii).
DIMER_POINTS = 10
DIMER_RANGE = (0.9, 5.0)
#: Points of MLIP Arena's E-V scan (linear strain -20 % to +20 %).
EV_POINTS = 21
EV_MAX_STRAIN = 0.2
#: Energy differences below this (eV) count as flat when counting sign changes (MLIP Arena's 1 meV).
FLAT_ENERGY = 1e-3
#: Forces below this (eV/Å) count as zero when counting force sign changes (MLIP Arena's 10 meV/Å).
FLAT_FORCE = 1e-2
#: Side of the dimer's box (Å); the box is not periodic, it only gives the models a cell.
DIMER_BOX = 30.0

#: Defaults of the MD stability benchmark (MP-ALOE: 10 ps, 300 -> 3000 K, NPT 0 -> 100 GPa).
MD_DEFAULTS = {
    'ensembles': ['nvt', 'npt'],
    'total_time_fs': 10000.0,
    'timestep_fs': None,  # 2 fs, 0.5 fs with hydrogen
    'temperature_start_K': 300.0,
    'temperature_end_K': 3000.0,
    'pressure_start_GPa': 0.0,
    'pressure_end_GPa': 100.0,
    'friction_per_fs': 0.01,
    'taut_fs': 100.0,
    'taup_fs': 1000.0,
    'bulk_modulus_GPa': 100.0,
    'min_atoms': 64,
    'seed': 0,
    'trace_points': 200,
    'max_energy_change_per_atom': 100.0,
    'max_kinetic_energy': 100.0,
    'max_volume_ratio': 10.0,
}


# ---------------------------------------------------------------------------------------------------------- helpers


def evaluate(engine, frames: Sequence[Atoms]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Return the energies ``(n,)`` (eV) and forces (one ``(natoms, 3)`` array per frame, eV/Å) of ``frames``.

    :param engine: a :class:`~aiida_mad.inference.models.Model` (batched prediction) or an ASE calculator.
    """
    if hasattr(engine, 'predict'):
        prediction = engine.predict(frames)
        offsets = np.concatenate([[0], np.cumsum([len(frame) for frame in frames])])
        forces = [prediction.forces[offsets[i] : offsets[i + 1]] for i in range(len(frames))]
        return np.asarray(prediction.energy, dtype=float), forces
    energies, forces = [], []
    for frame in frames:
        atoms = frame.copy()
        atoms.calc = engine
        energies.append(float(atoms.get_potential_energy()))
        forces.append(np.asarray(atoms.get_forces(), dtype=float))
    return np.asarray(energies), forces


def _calculator(engine):
    """Return an ASE calculator for ``engine`` (a model's own calculator, or the calculator itself)."""
    return engine.ase_calculator() if hasattr(engine, 'ase_calculator') else engine


def sign_changes(values: Sequence[float], flat: float = 0.0) -> int:
    """Return how often the sign of ``values`` changes, ignoring values with ``|value| <= flat``."""
    values = np.asarray(values, dtype=float)
    signs = np.sign(values[np.abs(values) > flat])
    return int(np.count_nonzero(np.diff(signs)))


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Return Spearman's rank correlation of ``x`` and ``y``; ``None`` with fewer than 2 points or a constant side."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0 or not (np.isfinite(x).all() and np.isfinite(y).all()):
        return None
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


def _finite(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _tortuosity(energies: np.ndarray) -> float | None:
    """Return the energy's total variation over its rise from the minimum to both ends (1 for a single well)."""
    rise = abs(energies[0] - energies.min()) + abs(energies[-1] - energies.min())
    return _finite(np.abs(np.diff(energies)).sum() / rise) if rise > 0 else None


# ----------------------------------------------------------------------------------------------------------- dimers


def dimer_distances(symbol: str, points: int = DIMER_POINTS, span: Sequence[float] = DIMER_RANGE) -> np.ndarray:
    """Return PET-MAD's logarithmic grid of dimer distances (Å) for ``symbol``, from short to long.

    :raises ValueError: naming an unknown element or a grid of fewer than 3 points.
    """
    if symbol not in atomic_numbers:
        raise ValueError(f'unknown element {symbol!r}')
    if points < 3:
        raise ValueError(f'a dimer curve needs at least 3 distances, got {points}')
    radius = float(covalent_radii[atomic_numbers[symbol]])
    return radius * np.geomspace(float(span[0]), float(span[1]), int(points))


def _dimer(symbol: str, distance: float) -> Atoms:
    centre = DIMER_BOX / 2
    positions = [(centre - distance / 2, centre, centre), (centre + distance / 2, centre, centre)]
    return Atoms([symbol, symbol], positions=positions, cell=np.eye(3) * DIMER_BOX, pbc=False)


def dimer_curve(engine, symbol: str, distances: Sequence[float] | None = None) -> dict:
    """Return the dimer curve of ``symbol``: ``distance`` (Å), ``energy`` (eV, 0 at the largest distance), ``force``.

    ``force`` is the force on the second atom along the bond (eV/Å; positive pushes the atoms apart).
    """
    distances = np.sort(np.asarray(dimer_distances(symbol) if distances is None else distances, dtype=float))
    energies, forces = evaluate(engine, [_dimer(symbol, distance) for distance in distances])
    bond = np.array([force[1, 0] for force in forces])
    return {
        'name': symbol,
        'symbol': symbol,
        'distance': distances.tolist(),
        'energy': (energies - energies[-1]).tolist(),
        'force': bond.tolist(),
        'energy_far': float(energies[-1]),
    }


def check_dimer(curve: dict) -> dict:
    """Return the repulsion and smoothness checks and metrics of a :func:`dimer_curve` (see the module docstring)."""
    distance = np.asarray(curve['distance'], dtype=float)
    energy = np.asarray(curve['energy'], dtype=float)
    force = np.asarray(curve['force'], dtype=float)
    if not (np.isfinite(energy).all() and np.isfinite(force).all()):
        return {'repulsive': False, 'smooth': False, 'passed': False, 'reason': 'non-finite energy or force'}
    minimum = int(np.argmin(energy))
    branch = spearman(distance[: minimum + 1], energy[: minimum + 1])
    falling = bool(np.all(np.diff(energy[: minimum + 1]) < 0)) if minimum > 0 else False
    repulsive = bool(energy[0] > energy[-1] and force[0] > 0 and falling)
    flips = sign_changes(np.diff(energy), FLAT_ENERGY)
    smooth = flips <= 1
    derivative = np.gradient(energy, distance)
    reasons = []
    if not repulsive:
        reasons.append(
            'no short-range repulsion: '
            + (
                'the energy at the shortest distance is not above the dissociation limit'
                if energy[0] <= energy[-1]
                else 'the force at the shortest distance pulls the atoms together'
                if force[0] <= 0
                else 'the energy does not fall monotonically from the shortest distance to the minimum'
            )
        )
    if not smooth:
        reasons.append(f'not smooth: the energy differences change sign {flips} times')
    return {
        'repulsive': repulsive,
        'smooth': smooth,
        'passed': repulsive and smooth,
        'reason': '; '.join(reasons) or None,
        'minimum_distance': float(distance[minimum]),
        'well_depth': max(0.0, float(-energy[minimum])),
        'energy_shortest': float(energy[0]),
        'spearman_repulsion': branch,
        'energy_diff_flips': flips,
        'force_flips': sign_changes(force, FLAT_FORCE),
        'tortuosity': _tortuosity(energy),
        'conservation_deviation': _finite(np.mean(np.abs(force + derivative))),
    }


def run_dimers(engine, elements: Sequence[str], *, points: int = DIMER_POINTS, span=DIMER_RANGE) -> dict:
    """Return the dimer benchmark of ``elements``: one curve with its checks per element, and a summary."""
    if not elements:
        raise ValueError('no element to make dimers of')
    items = []
    for symbol in elements:
        curve = dimer_curve(engine, symbol, dimer_distances(symbol, points, span))
        items.append({**curve, **check_dimer(curve)})
    failed = [item['symbol'] for item in items if not item['passed']]
    return {
        'benchmark': 'dimers',
        'parameters': {'points': int(points), 'span_covalent_radii': [float(span[0]), float(span[1])]},
        'items': items,
        'summary': {
            'n_items': len(items),
            'n_failed': len(failed),
            'failed': failed,
            'failure_percentage': 100.0 * len(failed) / len(items),
            'n_not_repulsive': sum(not item['repulsive'] for item in items),
            'n_not_smooth': sum(not item['smooth'] for item in items),
        },
    }


# ---------------------------------------------------------------------------------------------------------- E-V scan


def ev_scan(engine, atoms: Atoms, *, points: int = EV_POINTS, max_strain: float = EV_MAX_STRAIN) -> dict:
    """Return the E-V scan of ``atoms``: ``volume`` (Å³) and ``energy`` (eV) at uniform linear strains, no relaxation.

    :raises ValueError: for a structure that is not periodic in all directions, or fewer than 5 points.
    """
    if not np.all(atoms.pbc):
        raise ValueError(f'{atoms.get_chemical_formula()}: an E-V scan needs a structure periodic in all directions')
    if points < 5:
        raise ValueError(f'an E-V scan needs at least 5 points, got {points}')
    factors = 1.0 + np.linspace(-max_strain, max_strain, int(points))
    frames = []
    for factor in factors:
        frame = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=True)
        frame.set_cell(atoms.cell * factor, scale_atoms=True)
        frames.append(frame)
    energies, _ = evaluate(engine, frames)
    return {
        'formula': atoms.get_chemical_formula(),
        'natoms': len(atoms),
        'strain': (factors - 1.0).tolist(),
        'volume': [float(frame.get_volume()) for frame in frames],
        'energy': energies.tolist(),
        'volume0': float(atoms.get_volume()),
    }


def check_ev_scan(scan: dict) -> dict:
    """Return the checks of an :func:`ev_scan`: sign changes of dE/dV, Spearman coefficients, ``passed``."""
    volume = np.asarray(scan['volume'], dtype=float)
    energy = np.asarray(scan['energy'], dtype=float)
    order = np.argsort(volume)
    volume, energy = volume[order], energy[order]
    if not np.isfinite(energy).all():
        return {'passed': False, 'reason': 'non-finite energy', 'derivative_flips': None}
    middle = len(volume) // 2  # the structure as given
    midpoints = (volume[1:] + volume[:-1]) / 2
    derivative = np.diff(energy) / np.diff(volume)
    flips = sign_changes(np.diff(energy), FLAT_ENERGY)
    passed = flips <= 1
    return {
        'passed': passed,
        'reason': None if passed else f'dE/dV changes sign {flips} times',
        'derivative_flips': flips,
        'spearman_compression_energy': spearman(volume[:middle], energy[:middle]),
        'spearman_compression_derivative': spearman(midpoints[:middle], derivative[:middle]),
        'spearman_expansion_energy': spearman(volume[middle:], energy[middle:]),
        'tortuosity': _tortuosity(energy),
        'energy_per_atom_minimum': float(energy.min() / scan['natoms']),
        'volume_ratio_minimum': float(volume[int(np.argmin(energy))] / scan['volume0']),
        'dE_dV': derivative.tolist(),
    }


def _mean(values) -> float | None:
    values = [value for value in values if value is not None]
    return float(np.mean(values)) if values else None


def run_ev_scans(
    engine, structures: Sequence[Atoms], *, points: int = EV_POINTS, max_strain: float = EV_MAX_STRAIN
) -> dict:
    """Return the E-V benchmark of ``structures``: one scan with its checks each, and MP-ALOE's Table I summary."""
    if not structures:
        raise ValueError('no structure to scan')
    items = []
    for index, atoms in enumerate(structures):
        scan = ev_scan(engine, atoms, points=points, max_strain=max_strain)
        items.append({'name': _name(atoms, index), **scan, **check_ev_scan(scan)})
    failed = [item['name'] for item in items if not item['passed']]
    return {
        'benchmark': 'ev_scan',
        'parameters': {'points': int(points), 'max_strain': float(max_strain)},
        'items': items,
        'summary': {
            'n_items': len(items),
            'n_failed': len(failed),
            'failed': failed,
            'failure_percentage': 100.0 * len(failed) / len(items),
            'spearman_compression_energy': _mean(item.get('spearman_compression_energy') for item in items),
            'spearman_compression_derivative': _mean(item.get('spearman_compression_derivative') for item in items),
            'spearman_expansion_energy': _mean(item.get('spearman_expansion_energy') for item in items),
        },
    }


def _name(atoms: Atoms, index: int) -> str:
    return str(atoms.info.get('name') or atoms.info.get('source_uuid') or f'{index}:{atoms.get_chemical_formula()}')


# ----------------------------------------------------------------------------------------------------- MD stability


def md_supercell(atoms: Atoms, min_atoms: int) -> Atoms:
    """Return ``atoms`` repeated along its periodic directions, as evenly as possible, to at least ``min_atoms``."""
    repeat = [1, 1, 1]
    lengths = atoms.cell.lengths()
    while len(atoms) * int(np.prod(repeat)) < min_atoms:
        candidates = [axis for axis in range(3) if atoms.pbc[axis]]
        if not candidates:
            break
        axis = min(candidates, key=lambda k: lengths[k] * repeat[k])
        repeat[axis] += 1
    return atoms.repeat(repeat)


def valid_frame(
    energy: float,
    energy0: float,
    kinetic_energies: np.ndarray,
    natoms: int,
    *,
    volume: float | None = None,
    volume0: float | None = None,
    max_energy_change_per_atom: float = 100.0,
    max_kinetic_energy: float = 100.0,
    max_volume_ratio: float = 10.0,
) -> str | None:
    """Return why an MD frame is invalid (MP-ALOE's criteria), or ``None`` for a valid frame.

    :param energy: the frame's potential energy (eV); ``energy0`` the initial frame's.
    :param kinetic_energies: per-atom kinetic energies (eV).
    :param volume: the frame's volume (Å³), checked against ``volume0`` (NPT only).
    """
    if not math.isfinite(energy):
        return 'the energy is not finite'
    change = abs(energy - energy0) / natoms
    if change >= max_energy_change_per_atom:
        return f'the energy moved {change:.4g} eV/atom from the initial frame'
    largest = float(np.max(kinetic_energies)) if len(kinetic_energies) else 0.0
    if not math.isfinite(largest) or largest >= max_kinetic_energy:
        return f'an atom has a kinetic energy of {largest:.4g} eV'
    if volume is not None and volume0:
        ratio = volume / volume0
        if not (1.0 / max_volume_ratio < ratio < max_volume_ratio):
            return f'the volume changed by a factor {ratio:.4g}'
    return None


def md_stability(calculator, atoms: Atoms, ensemble: str, settings: dict | None = None) -> dict:
    """Run one MD stability run of ``atoms`` with ``calculator`` and return what it completed.

    :param ensemble: ``nvt`` (Langevin, temperature ramp) or ``npt`` (Berendsen, temperature and pressure ramps).
    :param settings: overrides of :data:`MD_DEFAULTS` (``total_time_fs``, ``timestep_fs``, ...).
    :return: ``scheduled_steps``, ``completed_steps``, ``completed_fraction``, ``stopped_because`` (``None`` if all
        steps were valid), and a trace sampled at most ``trace_points`` times: ``step``, ``temperature`` (K),
        ``energy_per_atom`` (eV/atom, relative to the initial frame), ``volume_ratio``.
    """
    from ase.md import velocitydistribution
    from ase.md.langevin import Langevin
    from ase.md.nptberendsen import NPTBerendsen

    settings = {**MD_DEFAULTS, **(settings or {})}
    if ensemble not in ('nvt', 'npt'):
        raise ValueError(f"ensemble must be 'nvt' or 'npt', got {ensemble!r}")
    if ensemble == 'npt' and not np.all(atoms.pbc):
        raise ValueError(f'{atoms.get_chemical_formula()}: NPT needs a structure periodic in all directions')
    timestep = settings['timestep_fs'] or (0.5 if 'H' in atoms.get_chemical_symbols() else 2.0)
    n_steps = max(1, round(float(settings['total_time_fs']) / timestep))
    t_start, t_end = float(settings['temperature_start_K']), float(settings['temperature_end_K'])
    p_start, p_end = float(settings['pressure_start_GPa']), float(settings['pressure_end_GPa'])

    def ramp(start: float, end: float, step: int) -> float:
        return start + (end - start) * min(step, n_steps) / n_steps

    atoms = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    atoms.calc = calculator
    rng = np.random.default_rng(int(settings['seed']))
    # thermalize_momenta is the name of ASE >= 3.28 for MaxwellBoltzmannDistribution
    thermalize = getattr(velocitydistribution, 'thermalize_momenta', None)
    thermalize = thermalize or velocitydistribution.MaxwellBoltzmannDistribution
    thermalize(atoms, temperature_K=t_start, rng=rng)
    velocitydistribution.Stationary(atoms)
    if ensemble == 'nvt':
        dynamics = Langevin(
            atoms,
            timestep * units.fs,
            temperature_K=t_start,
            friction=float(settings['friction_per_fs']) / units.fs,
            fixcm=False,
            rng=rng,
        )
    else:
        dynamics = NPTBerendsen(
            atoms,
            timestep * units.fs,
            temperature_K=t_start,
            pressure_au=p_start * units.GPa,
            taut=float(settings['taut_fs']) * units.fs,
            taup=float(settings['taup_fs']) * units.fs,
            compressibility_au=1.0 / (float(settings['bulk_modulus_GPa']) * units.GPa),
        )
    natoms = len(atoms)
    stride = max(1, n_steps // max(1, int(settings['trace_points'])))
    trace = {'step': [], 'temperature': [], 'energy_per_atom': [], 'volume_ratio': []}
    completed, reason = 0, None
    volume0 = atoms.get_volume() if np.all(atoms.pbc) else None
    energy0 = None
    steps = dynamics.irun(steps=n_steps)
    while True:
        try:
            next(steps)
        except StopIteration:
            break
        except Exception as exception:  # the model itself failed (NaN, a neighbour list blown up, ...)
            reason = f'step {completed + 1}: the model failed ({type(exception).__name__}: {str(exception)[:200]})'
            break
        step = dynamics.nsteps
        energy = float(atoms.get_potential_energy())
        energy0 = energy if energy0 is None else energy0
        volume = atoms.get_volume() if volume0 is not None else None
        reason = valid_frame(
            energy,
            energy0,
            0.5 * atoms.get_masses() * np.sum(atoms.get_velocities() ** 2, axis=1),
            natoms,
            volume=volume if ensemble == 'npt' else None,
            volume0=volume0,
            max_energy_change_per_atom=float(settings['max_energy_change_per_atom']),
            max_kinetic_energy=float(settings['max_kinetic_energy']),
            max_volume_ratio=float(settings['max_volume_ratio']),
        )
        if reason is not None:
            reason = f'step {step}: {reason}'
            break
        completed = step
        if step % stride == 0 or step == n_steps:
            trace['step'].append(step)
            trace['temperature'].append(float(atoms.get_temperature()))
            trace['energy_per_atom'].append((energy - energy0) / natoms)
            trace['volume_ratio'].append(volume / volume0 if volume0 else None)
        dynamics.set_temperature(temperature_K=ramp(t_start, t_end, step + 1))
        if ensemble == 'npt':
            # NPTBerendsen.set_pressure of ASE 3.29 passes one argument too many: set the attribute it sets
            dynamics.pressure = ramp(p_start, p_end, step + 1) * units.GPa
    return {
        'ensemble': ensemble,
        'formula': atoms.get_chemical_formula(),
        'natoms': natoms,
        'timestep_fs': timestep,
        'scheduled_steps': n_steps,
        'completed_steps': completed,
        'completed_fraction': completed / n_steps,
        'passed': completed == n_steps,
        'stopped_because': reason,
        'trace': trace,
    }


def run_md_stability(
    engine,
    structures: Sequence[Atoms],
    settings: dict | None = None,
    *,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Return the MD stability benchmark: every structure (repeated to ``min_atoms``) in every ensemble, and a summary.

    The summary gives, per ensemble, the percentage of scheduled steps completed over all runs (MP-ALOE's number)
    and the number of runs that completed every step.
    """
    if not structures:
        raise ValueError('no structure to run')
    settings = {**MD_DEFAULTS, **(settings or {})}
    unknown = sorted(set(settings) - set(MD_DEFAULTS))
    if unknown:
        raise ValueError(f'unknown MD setting(s) {unknown}: allowed are {sorted(MD_DEFAULTS)}')
    ensembles = list(settings['ensembles'])
    for ensemble in ensembles:
        if ensemble not in ('nvt', 'npt'):
            raise ValueError(f"ensemble must be 'nvt' or 'npt', got {ensemble!r}")
    calculator = _calculator(engine)
    items = []
    for index, atoms in enumerate(structures):
        cell = md_supercell(atoms, int(settings['min_atoms']))
        for ensemble in ensembles:
            result = md_stability(calculator, cell, ensemble, {**settings, 'seed': int(settings['seed']) + index})
            items.append(
                {'name': f'{_name(atoms, index)} {ensemble.upper()}', 'structure': _name(atoms, index), **result}
            )
            if progress is not None:
                progress(
                    f'{items[-1]["name"]}: {result["completed_steps"]}/{result["scheduled_steps"]} steps'
                    + (f' ({result["stopped_because"]})' if result['stopped_because'] else '')
                )
    summary = {'n_items': len(items), 'ensembles': {}}
    for ensemble in ensembles:
        runs = [item for item in items if item['ensemble'] == ensemble]
        scheduled = sum(item['scheduled_steps'] for item in runs)
        completed = sum(item['completed_steps'] for item in runs)
        summary['ensembles'][ensemble] = {
            'n_runs': len(runs),
            'n_complete': sum(item['passed'] for item in runs),
            'completed_percentage': 100.0 * completed / scheduled if scheduled else None,
        }
    summary['n_failed'] = sum(not item['passed'] for item in items)
    summary['failed'] = [item['name'] for item in items if not item['passed']]
    return {'benchmark': 'md_stability', 'parameters': settings, 'items': items, 'summary': summary}


# ------------------------------------------------------------------------------------------------------ one entry


#: The parameters of each benchmark and their defaults (``device`` is the script's, for every benchmark).
DEFAULT_PARAMETERS = {
    'dimers': {'points': DIMER_POINTS, 'span': list(DIMER_RANGE)},
    'ev_scan': {'points': EV_POINTS, 'max_strain': EV_MAX_STRAIN},
    'md_stability': dict(MD_DEFAULTS),
}


def benchmark_parameters(benchmark: str, parameters: dict | None) -> dict:
    """Return the parameters of ``benchmark`` merged over its defaults, after checking the name and the keys.

    :raises ValueError: naming an unknown benchmark or unknown parameter keys (with the allowed ones).
    """
    if benchmark not in BENCHMARKS:
        raise ValueError(f'unknown benchmark {benchmark!r}: choose one of {", ".join(BENCHMARKS)}')
    defaults = DEFAULT_PARAMETERS[benchmark]
    parameters = dict(parameters or {})
    unknown = sorted(set(parameters) - set(defaults))
    if unknown:
        raise ValueError(f'unknown {benchmark} parameter(s) {unknown}: allowed are {sorted(defaults)}')
    return {**defaults, **parameters}


def run_benchmark(
    benchmark: str,
    engine,
    *,
    structures: Sequence[Atoms] = (),
    elements: Sequence[str] = (),
    parameters: dict | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Run one benchmark by name (:data:`BENCHMARKS`) and return its result.

    :param structures: the structures of ``ev_scan`` and ``md_stability``.
    :param elements: the elements of ``dimers``.
    """
    parameters = benchmark_parameters(benchmark, parameters)
    if benchmark == 'dimers':
        return run_dimers(engine, list(elements), points=int(parameters['points']), span=parameters['span'])
    if benchmark == 'ev_scan':
        return run_ev_scans(
            engine, list(structures), points=int(parameters['points']), max_strain=float(parameters['max_strain'])
        )
    return run_md_stability(engine, list(structures), parameters, progress=progress)
