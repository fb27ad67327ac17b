"""The pure physicality benchmarks on ASE calculators: Lennard-Jones passes, deliberately broken models fail."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.lj import LennardJones

from aiida_mad.inference.physicality import (
    check_dimer,
    dimer_distances,
    ev_scan,
    md_stability,
    md_supercell,
    run_dimers,
    run_ev_scans,
    run_md_stability,
    sign_changes,
    valid_frame,
)

SIGMA, EPSILON = 3.4, 0.0104  # argon


def lennard_jones():
    return LennardJones(sigma=SIGMA, epsilon=EPSILON, rc=10.0, smooth=True)


def argon():
    return bulk('Ar', 'fcc', a=5.26)


class AttractiveOnly(Calculator):
    """A pair potential -C/(r^2 + a^2)^3 between all atoms (not periodic): attraction at every distance."""

    implemented_properties = ('energy', 'forces')

    def calculate(self, atoms=None, properties=('energy',), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        positions = self.atoms.positions
        energy, forces = 0.0, np.zeros_like(positions)
        c, a2 = 4 * EPSILON * SIGMA**6, 1.0
        for i in range(len(positions)):
            for j in range(i + 1, len(positions)):
                vector = positions[j] - positions[i]
                s = vector @ vector + a2
                energy += -c / s**3
                force_j = -6 * c / s**4 * vector  # -dE/dr_j
                forces[j] += force_j
                forces[i] -= force_j
        self.results = {'energy': energy, 'forces': forces}


class Wiggly(LennardJones):
    """Lennard-Jones plus 0.2 eV/atom x sin(volume per atom / 2 Å³): a broken E-V curve."""

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        super().calculate(atoms, properties or self.implemented_properties, system_changes)
        natoms = len(self.atoms)
        self.results['energy'] += 0.2 * natoms * np.sin(self.atoms.get_volume() / natoms / 2.0)
        self.results['free_energy'] = self.results['energy']


class BreaksAfter(LennardJones):
    """Lennard-Jones whose energy jumps by 1000 eV/atom from its ``calls``-th evaluation on."""

    def __init__(self, calls: int, **kwargs):
        super().__init__(**kwargs)
        self.calls = calls
        self.count = 0

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        super().calculate(atoms, properties or self.implemented_properties, system_changes)
        self.count += 1
        if self.count >= self.calls:
            self.results['energy'] += 1000.0 * len(self.atoms)
            self.results['free_energy'] = self.results['energy']


def test_sign_changes_ignore_flat_values():
    assert sign_changes([-3, -2, 1e-4, -1, 2]) == 3
    assert sign_changes([-3, -2, 1e-4, -1, 2], flat=1e-3) == 1
    assert sign_changes([1, -1, 1, -1]) == 3


def test_dimer_grid_is_pet_mad_logarithmic_grid():
    distances = dimer_distances('Si')
    assert len(distances) == 10
    assert distances[0] == pytest.approx(0.9 * 1.11)
    assert distances[-1] == pytest.approx(5.0 * 1.11)
    np.testing.assert_allclose(np.diff(np.log(distances)), np.log(5.0 / 0.9) / 9)
    with pytest.raises(ValueError, match="unknown element 'Xx'"):
        dimer_distances('Xx')


def test_lennard_jones_dimer_is_repulsive_and_smooth():
    result = run_dimers(lennard_jones(), ['Ar'], points=20)
    (item,) = result['items']
    assert item['passed'] and item['repulsive'] and item['smooth'], item['reason']
    assert item['energy'][-1] == 0.0
    assert item['minimum_distance'] == pytest.approx(2 ** (1 / 6) * SIGMA, rel=0.1)
    assert item['well_depth'] == pytest.approx(EPSILON, rel=0.5)
    assert item['spearman_repulsion'] == pytest.approx(-1.0)
    assert item['force'][0] > 0
    assert result['summary']['n_failed'] == 0


def test_dimer_without_repulsion_is_flagged():
    result = run_dimers(AttractiveOnly(), ['Ar', 'Ne'])
    assert result['summary']['n_failed'] == 2
    assert result['summary']['failed'] == ['Ar', 'Ne']
    for item in result['items']:
        assert not item['repulsive'] and not item['passed']
        assert 'no short-range repulsion' in item['reason']
        assert item['smooth']  # one well, just without a wall


def test_wiggly_dimer_is_not_smooth():
    distance = np.linspace(1.0, 5.0, 12)
    energy = 5.0 / distance**6 - 0.5 * np.sin(3 * distance) - 1.0
    energy -= energy[-1]
    checks = check_dimer({'distance': distance, 'energy': energy, 'force': np.gradient(-energy, distance)})
    assert not checks['smooth'] and not checks['passed']
    assert checks['energy_diff_flips'] > 1


def test_ev_scan_of_lennard_jones_passes():
    result = run_ev_scans(lennard_jones(), [argon(), md_supercell(argon(), 8)])
    summary = result['summary']
    assert summary['failure_percentage'] == 0.0
    assert summary['spearman_compression_energy'] == pytest.approx(-1.0)
    assert summary['spearman_compression_derivative'] == pytest.approx(1.0)
    assert summary['spearman_expansion_energy'] == pytest.approx(1.0)
    item = result['items'][0]
    assert len(item['volume']) == 21
    assert item['volume'][10] == pytest.approx(argon().get_volume())
    assert item['volume'][0] == pytest.approx(0.8**3 * argon().get_volume())
    assert item['derivative_flips'] == 1


def test_ev_scan_of_broken_model_fails():
    result = run_ev_scans(Wiggly(sigma=SIGMA, epsilon=EPSILON, rc=10.0, smooth=True), [argon()])
    (item,) = result['items']
    assert not item['passed']
    assert item['derivative_flips'] > 1
    assert f'changes sign {item["derivative_flips"]} times' in item['reason']
    assert result['summary']['failure_percentage'] == 100.0
    assert result['summary']['spearman_compression_energy'] > -1.0


def test_ev_scan_refuses_a_molecule():
    molecule = argon()
    molecule.pbc = False
    with pytest.raises(ValueError, match='periodic in all directions'):
        ev_scan(lennard_jones(), molecule)


def test_valid_frame_follows_mp_aloe():
    kinetic = np.array([0.1, 0.2])
    assert valid_frame(-10.0, -10.0, kinetic, 2) is None
    assert 'not finite' in valid_frame(float('nan'), -10.0, kinetic, 2)
    assert 'eV/atom' in valid_frame(200.0, -10.0, kinetic, 2)
    assert valid_frame(180.0, -10.0, kinetic, 2) is None  # 95 eV/atom
    assert 'kinetic energy' in valid_frame(-10.0, -10.0, np.array([0.1, 100.0]), 2)
    assert 'volume' in valid_frame(-10.0, -10.0, kinetic, 2, volume=10.5, volume0=1.0)
    assert 'volume' in valid_frame(-10.0, -10.0, kinetic, 2, volume=0.09, volume0=1.0)
    assert valid_frame(-10.0, -10.0, kinetic, 2, volume=9.0, volume0=1.0) is None


def test_md_stability_of_lennard_jones_completes_every_step():
    settings = {'total_time_fs': 40.0, 'min_atoms': 32}
    result = run_md_stability(lennard_jones(), [argon()], settings)
    assert [item['ensemble'] for item in result['items']] == ['nvt', 'npt']
    for item in result['items']:
        assert item['natoms'] >= 32
        assert item['scheduled_steps'] == 20  # 2 fs steps without hydrogen
        assert item['completed_steps'] == 20 and item['passed'], item['stopped_because']
        assert item['trace']['step'][-1] == 20
    assert result['summary']['ensembles']['nvt']['completed_percentage'] == 100.0
    assert result['summary']['n_failed'] == 0


def test_md_stability_counts_the_steps_completed_before_the_model_breaks():
    # Langevin evaluates the model once per step: evaluation 1 is the initial frame, evaluation 8 is step 7
    calculator = BreaksAfter(8, sigma=SIGMA, epsilon=EPSILON, rc=10.0, smooth=True)
    result = md_stability(calculator, md_supercell(argon(), 32), 'nvt', {'total_time_fs': 40.0})
    assert result['scheduled_steps'] == 20
    assert result['completed_steps'] == 6
    assert result['completed_fraction'] == pytest.approx(6 / 20)
    assert not result['passed']
    assert result['stopped_because'].startswith('step 7: the energy moved')
    assert result['trace']['step'][-1] == 6


def test_npt_stability_stops_at_the_first_invalid_frame():
    calculator = BreaksAfter(8, sigma=SIGMA, epsilon=EPSILON, rc=10.0, smooth=True)
    result = md_stability(calculator, md_supercell(argon(), 32), 'npt', {'total_time_fs': 40.0})
    completed = result['completed_steps']
    assert 0 < completed < 7  # Berendsen NPT evaluates the model more than once per step
    assert result['stopped_because'].startswith(f'step {completed + 1}: the energy moved')
    assert result['completed_fraction'] == pytest.approx(completed / 20)


def test_md_stability_ramps_the_temperature():
    result = md_stability(
        lennard_jones(), md_supercell(argon(), 32), 'nvt', {'total_time_fs': 400.0, 'friction_per_fs': 0.1}
    )
    temperatures = np.array(result['trace']['temperature'])
    assert temperatures[-20:].mean() > 3 * temperatures[:5].mean()


def test_unknown_md_setting_refused():
    with pytest.raises(ValueError, match=r"unknown MD setting\(s\) \['temperature'\]"):
        run_md_stability(lennard_jones(), [argon()], {'temperature': 300})
