"""Calcfunctions of the DFT labelling: the cell pw.x sees, the results in the project's units, isolated atoms.

Entry points ``mad.prepare_structure``, ``mad.extract_dft_results``, ``mad.isolated_atom`` and
``mad.collect_atomic_energies`` (group ``aiida.calculations``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from aiida import orm
from aiida.engine import calcfunction
from ase import Atoms

from aiida_mad.dos import band_edges, compute_dos
from aiida_mad.structures.cells import prepare_cell
from aiida_mad.units import qe_stress_to_ase

__all__ = ('UNITS', 'collect_atomic_energies', 'extract_dft_results', 'isolated_atom', 'prepare_structure')

#: Units of the outputs, stored with them in ``properties``.
UNITS = {'energy': 'eV', 'forces': 'eV/Å', 'stress': 'eV/Å^3 (ASE sign: positive = tensile)', 'dos': 'states/eV'}


@calcfunction
def prepare_structure(structure: orm.StructureData, vacuum: orm.Float) -> orm.StructureData:
    """Return the structure with the cell pw.x uses: vacuum and orientation for 2D and 0D (see ``structures.cells``)."""
    return orm.StructureData(ase=prepare_cell(structure.get_ase(), vacuum=vacuum.value))


@calcfunction
def extract_dft_results(
    structure: orm.StructureData,
    output_parameters: orm.Dict,
    output_trajectory: orm.TrajectoryData,
    output_band: orm.BandsData,
    context: orm.Dict,
    level_of_theory: orm.Dict | None = None,
) -> dict:
    """Return energy, forces, stress, DOS and a properties table in Å / eV units from a finished pw.x run.

    ``context`` carries what the work chain decided before the run (fingerprint, dimensionality, parallelization,
    outlier threshold, subset) so that it is stored next to the numbers it qualifies. ``level_of_theory`` is the
    level of theory of the fingerprint: one node per fingerprint, shared by every run (see
    :func:`aiida_mad.workflows.dft.level_of_theory_node`), so that its table of pseudopotential md5s is stored once
    per campaign, not per result: ``properties`` carries its ``fingerprint`` only, and
    :func:`aiida_mad.workflows.dft.result_level_of_theory` reads it back. The input is unused here; it is the
    provenance of the fingerprint. Results stored before it was shared carry the level of theory in ``context``,
    and that layout still copies it into ``properties``, as those results have it.
    """
    parameters = output_parameters.get_dict()
    info = context.get_dict()
    natoms = len(structure.sites)

    energy = float(parameters['energy'])
    forces = np.asarray(output_trajectory.get_array('forces')[-1], dtype=float)
    max_force = float(np.linalg.norm(forces, axis=1).max())

    eigenvalues = np.asarray(output_band.get_bands(), dtype=float)
    weights = np.asarray(output_band.get_array('weights'), dtype=float)
    fermi = float(parameters['fermi_energy'])
    dos = compute_dos(eigenvalues, weights, fermi)
    edges = band_edges(eigenvalues, fermi, weights=weights)

    results = {'energy': orm.Float(energy), 'forces': orm.ArrayData({'forces': forces})}

    dos_node = orm.ArrayData({'energies': dos.energies, 'dos': dos.dos})
    dos_node.base.attributes.set_many(
        {'e_max': dos.e_max, 'sigma': dos.sigma, 'fermi_energy': fermi, 'units': 'states/eV per cell, E - E_F in eV'}
    )
    results['dos'] = dos_node

    if 'stress' in output_trajectory.get_arraynames():
        results['stress'] = orm.ArrayData({'stress': qe_stress_to_ase(output_trajectory.get_array('stress')[-1])})

    outlier_threshold = float(info['outlier_max_force'])
    properties = {
        'natoms': natoms,
        'energy': energy,
        'energy_per_atom': energy / natoms,
        'n_electrons': float(parameters['number_of_electrons']),
        'n_bands': int(eigenvalues.shape[-1]),
        'fermi_energy': fermi,
        'homo': edges['homo'],
        'lumo': edges['lumo'],
        'gap': edges['gap'],
        'is_metal': bool(edges['is_metal']),
        'dos_e_max': float(dos.e_max),
        'max_force': max_force,
        'outlier_max_force': outlier_threshold,
        'outlier': max_force > outlier_threshold,
        'has_stress': 'stress' in results,
        'code_version': parameters.get('creator_version'),
        'wall_time_seconds': parameters.get('wall_time_seconds'),
        'units': dict(UNITS),
        **{key: info[key] for key in ('fingerprint', 'dimensionality', 'parallelization', 'subset')},
    }
    if 'level_of_theory' in info:  # the layout before the shared node: as those results were stored
        properties['level_of_theory'] = info['level_of_theory']
    results['properties'] = orm.Dict(properties)
    return results


@calcfunction
def isolated_atom(element: orm.Str) -> orm.StructureData:
    """Return one atom of ``element``, non-periodic (the DFT step puts it in its box)."""
    return orm.StructureData(ase=Atoms(element.value, positions=[[0.0, 0.0, 0.0]], pbc=False))


@calcfunction
def collect_atomic_energies(**inputs: Any) -> dict[str, orm.Data]:
    """Return the table ``{element: energy in eV}`` of the single-atom runs and the fingerprint they share.

    The inputs are two namespaces keyed by element: ``energies`` (the ``energy`` output of each run) and
    ``properties`` (its ``properties`` output, which holds the fingerprint), so that the fingerprint output traces back
    to the runs it comes from.

    :return: ``energies`` (a Dict) and ``fingerprint`` (a Str).
    :raises ValueError: if the namespaces name different elements, or the runs have different fingerprints.
    """
    energies, properties = inputs.get('energies', {}), inputs.get('properties', {})
    unexpected = sorted(set(inputs) - {'energies', 'properties'})
    if unexpected:
        raise ValueError(f'unexpected inputs {", ".join(unexpected)}: expected the namespaces energies and properties')
    if not energies or set(energies) != set(properties):
        raise ValueError(
            f'energies ({", ".join(sorted(energies)) or "none"}) and properties ({", ".join(sorted(properties))}) '
            'must name the same elements, at least one'
        )
    fingerprints = {element: properties[element]['fingerprint'] for element in sorted(properties)}
    if len(set(fingerprints.values())) > 1:
        raise ValueError(f'the atoms were computed at different levels of theory: {fingerprints}')
    return {
        'energies': orm.Dict({element: energies[element].value for element in sorted(energies)}),
        'fingerprint': orm.Str(next(iter(fingerprints.values()))),
    }
