"""Unit conversions between Quantum ESPRESSO / aiida-quantumespresso conventions and the project's (Å, eV)."""

from __future__ import annotations

import numpy as np
from ase.units import GPa

#: eV/Å³ per GPa.
EV_PER_ANGSTROM3_PER_GPA = float(GPa)


def qe_stress_to_ase(stress_gpa) -> np.ndarray:
    """Convert a stress tensor as stored by aiida-quantumespresso (GPa, QE sign) to eV/Å³ in ASE's sign convention.

    QE prints the stress as the negative derivative of the energy with respect to strain divided by the volume
    (positive = compressive), while ASE uses ``(1/V) dE/dε`` (positive = tensile): the sign flips.
    """
    return -np.asarray(stress_gpa, dtype=float) * EV_PER_ANGSTROM3_PER_GPA
