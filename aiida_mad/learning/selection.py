"""Query-by-committee selection (MP-ALOE): which candidates the committee disagrees on, and why.

A candidate is selected when any of its committee sigmas (:mod:`aiida_mad.learning.committee`) exceeds its threshold:
``sigma_energy > energy`` **or** ``sigma_force > force`` **or** ``sigma_stress > stress``. MP-ALOE uses 100 meV/atom,
100 meV/Å and 100 meV/Å³, the defaults here (in eV units: 0.1 each). A NaN sigma (a stress no member predicted)
never fires.

MP-ALOE raises the thresholds by "a heuristic factor" for elements that should not be over-represented: the noble
gases and technetium (which rarely bond) and the f-block (poorly described by frozen-core pseudopotentials). The
paper gives no value for the factor; the default here, :data:`DEFAULT_MULTIPLIER`, is this project's choice. The rule:
if **any** atom of a candidate is one of :data:`MULTIPLIER_ELEMENTS`, all three of its thresholds are multiplied by
the multiplier, once (several such elements do not compound).

The result is a table with one row per candidate (:data:`SELECTION_DTYPE`, a numpy structured array) holding the
sigmas, the effective thresholds, which criteria fired and the decision, ready to be stored or written as CSV.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable

import numpy as np
from ase.data import atomic_numbers, chemical_symbols

from aiida_mad.learning.committee import CommitteeStatistics, validate_offsets
from aiida_mad.structures.elements import HARD_ELEMENTS, validate_symbols

__all__ = (
    'DEFAULT_MULTIPLIER',
    'MULTIPLIER_ELEMENTS',
    'REASON_BITS',
    'SELECTION_DTYPE',
    'SelectionThresholds',
    'reason_labels',
    'select',
    'select_candidates',
)

#: Elements whose presence multiplies a candidate's thresholds: the noble gases He-Rn, Tc and the f-block, here the
#: lanthanides La-Lu (the project's ``HARD_ELEMENTS``) and the actinides Ac-Lr (outside the MAD pool, listed so that
#: candidates from other generators are treated alike).
MULTIPLIER_ELEMENTS: frozenset[str] = frozenset(HARD_ELEMENTS | {chemical_symbols[z] for z in range(89, 104)})

#: Default threshold multiplier for :data:`MULTIPLIER_ELEMENTS` (MP-ALOE states a factor but not its value).
DEFAULT_MULTIPLIER = 2.0

#: Bits of the ``reasons`` column: which criteria fired.
REASON_BITS = {'energy': 1, 'force': 2, 'stress': 4}

#: One row per candidate. Sigmas and thresholds in eV/atom, eV/Å, eV/Å³.
SELECTION_DTYPE = np.dtype(
    [
        ('sigma_energy', 'f8'),
        ('sigma_force', 'f8'),
        ('sigma_stress', 'f8'),
        ('threshold_energy', 'f8'),
        ('threshold_force', 'f8'),
        ('threshold_stress', 'f8'),
        ('multiplied', '?'),
        ('energy_exceeded', '?'),
        ('force_exceeded', '?'),
        ('stress_exceeded', '?'),
        ('reasons', 'u1'),
        ('selected', '?'),
    ]
)


def _positive_finite(name: str, value) -> float:
    """Return ``value`` as a float, raising a ``ValueError`` naming ``name`` unless it is finite and positive."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f'{name} must be a number, got {value!r}')
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f'{name} must be finite and > 0, got {value!r}')
    return float(value)


@dataclasses.dataclass(frozen=True)
class SelectionThresholds:
    """Selection thresholds and the element multiplier, validated on creation.

    :raises ValueError: naming the parameter and its value if a threshold is not finite and > 0, the multiplier is
        not finite and >= 1, or an element is not a chemical element.
    """

    energy: float = 0.1
    """Threshold on ``sigma_energy``, eV/atom (MP-ALOE: 100 meV/atom)."""
    force: float = 0.1
    """Threshold on ``sigma_force``, eV/Å (MP-ALOE: 100 meV/Å)."""
    stress: float = 0.1
    """Threshold on ``sigma_stress``, eV/Å³ (MP-ALOE: 100 meV/Å³)."""
    multiplier: float = DEFAULT_MULTIPLIER
    """Factor applied to all three thresholds of a candidate containing any of ``multiplier_elements``."""
    multiplier_elements: Iterable[str] = MULTIPLIER_ELEMENTS
    """Chemical symbols that trigger the multiplier."""

    def __post_init__(self):
        for name in ('energy', 'force', 'stress'):
            object.__setattr__(self, name, _positive_finite(name, getattr(self, name)))
        multiplier = _positive_finite('multiplier', self.multiplier)
        if multiplier < 1:
            raise ValueError(f'multiplier must be >= 1, got {self.multiplier!r}')
        object.__setattr__(self, 'multiplier', multiplier)
        elements = self.multiplier_elements
        if isinstance(elements, str):
            raise ValueError(f'multiplier_elements must be a collection of symbols, got the string {elements!r}')
        try:
            symbols = validate_symbols(elements)
        except ValueError as exception:
            raise ValueError(f'multiplier_elements: {exception}') from exception
        object.__setattr__(self, 'multiplier_elements', frozenset(symbols))

    def element_mask(self) -> np.ndarray:
        """Return a boolean array over atomic numbers 0-118, true for the multiplier elements."""
        mask = np.zeros(len(chemical_symbols), dtype=bool)
        mask[[atomic_numbers[symbol] for symbol in self.multiplier_elements]] = True
        return mask


def select(
    sigma_energy, sigma_force, sigma_stress, numbers, offsets, thresholds: SelectionThresholds | None = None
) -> np.ndarray:
    """Return the selection table (:data:`SELECTION_DTYPE`) of ``n`` candidates from their sigmas.

    :param sigma_energy: ``(n,)`` committee sigmas of the energy per atom, eV/atom.
    :param sigma_force: ``(n,)`` largest per-atom force deviations, eV/Å.
    :param sigma_stress: ``(n,)`` largest stress-component sigmas, eV/Å³ (NaN: no stress criterion).
    :param numbers: ``(n_atoms,)`` atomic numbers of all candidates' atoms, concatenated.
    :param offsets: ``(n + 1,)`` atom offsets of the candidates.
    :param thresholds: the thresholds; MP-ALOE's defaults if ``None``.
    :raises ValueError: for inconsistent lengths, negative or infinite sigmas (naming the candidate), or atomic
        numbers that are not elements.
    """
    thresholds = SelectionThresholds() if thresholds is None else thresholds
    numbers = np.asarray(numbers)
    offsets = validate_offsets(offsets, len(numbers))
    n = len(offsets) - 1
    sigmas = {}
    for name, values in (('sigma_energy', sigma_energy), ('sigma_force', sigma_force), ('sigma_stress', sigma_stress)):
        values = np.asarray(values, dtype=float)
        if values.shape != (n,):
            raise ValueError(f'{name} must have shape ({n},) for {n} candidates, got {values.shape}')
        bad = np.isinf(values) | (values < 0)
        if name != 'sigma_stress':
            bad |= np.isnan(values)
        if np.any(bad):
            index = int(np.flatnonzero(bad)[0])
            raise ValueError(f'{name} of candidate {index} is {values[index]}: sigmas must be finite and >= 0')
        sigmas[name] = values
    if numbers.ndim != 1 or not np.issubdtype(numbers.dtype, np.integer):
        raise ValueError(f'numbers must be a 1-D array of atomic numbers, got {numbers.dtype} of shape {numbers.shape}')
    outside = (numbers < 1) | (numbers >= len(chemical_symbols))
    if np.any(outside):
        atom = int(np.flatnonzero(outside)[0])
        raise ValueError(f'atom {atom} has atomic number {numbers[atom]}, which is no element')

    flagged = thresholds.element_mask()[numbers].astype(np.int8)
    multiplied = np.maximum.reduceat(flagged, offsets[:-1]).astype(bool)
    factor = np.where(multiplied, thresholds.multiplier, 1.0)

    table = np.zeros(n, dtype=SELECTION_DTYPE)
    table['multiplied'] = multiplied
    reasons = np.zeros(n, dtype=np.uint8)
    for name, bit in REASON_BITS.items():
        sigma = sigmas[f'sigma_{name}']
        threshold = getattr(thresholds, name) * factor
        exceeded = sigma > threshold  # NaN compares false
        table[f'sigma_{name}'] = sigma
        table[f'threshold_{name}'] = threshold
        table[f'{name}_exceeded'] = exceeded
        reasons |= np.where(exceeded, np.uint8(bit), np.uint8(0))
    table['reasons'] = reasons
    table['selected'] = reasons != 0
    return table


def select_candidates(
    statistics: CommitteeStatistics, numbers, thresholds: SelectionThresholds | None = None
) -> np.ndarray:
    """Return the selection table of the candidates whose committee statistics are ``statistics``.

    :param statistics: from :func:`aiida_mad.learning.committee.committee_statistics`.
    :param numbers: ``(n_atoms,)`` atomic numbers in the order of the statistics' atoms.
    :param thresholds: the thresholds; MP-ALOE's defaults if ``None``.
    """
    return select(
        statistics.sigma_energy,
        statistics.sigma_force,
        statistics.sigma_stress,
        numbers,
        statistics.offsets,
        thresholds,
    )


def reason_labels(table: np.ndarray) -> np.ndarray:
    """Return, for every row of a selection table, the criteria that fired joined by ``+`` (``''`` if none)."""
    reasons = np.asarray(table['reasons'])
    labels = np.array(['+'.join(n for n, b in REASON_BITS.items() if code & b) for code in range(8)], dtype=object)
    return labels[reasons]
