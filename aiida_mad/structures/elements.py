"""The MAD element pool and the atomic radii the generators use."""

from __future__ import annotations

from collections.abc import Iterable

from ase.data import atomic_numbers, chemical_symbols, covalent_radii

#: Atomic numbers of the 85 MAD elements: hydrogen to radon, without astatine (MAD data descriptor).
MAD_ATOMIC_NUMBERS: tuple[int, ...] = tuple(z for z in range(1, 87) if z != 85)

#: Chemical symbols of the 85 MAD elements, in order of atomic number.
MAD_ELEMENTS: tuple[str, ...] = tuple(chemical_symbols[z] for z in MAD_ATOMIC_NUMBERS)

#: Noble gases, technetium and the f-block (La-Lu): elements that get larger committee thresholds in MP-ALOE.
HARD_ELEMENTS: frozenset[str] = frozenset(
    ['He', 'Ne', 'Ar', 'Kr', 'Xe', 'Rn', 'Tc'] + [chemical_symbols[z] for z in range(57, 72)]
)


class UnknownElementError(ValueError):
    """Raised when a symbol is not a chemical element or not in the pool it is checked against."""


def covalent_radius(symbol: str) -> float:
    """Return the covalent radius of ``symbol`` in Å (``ase.data.covalent_radii``)."""
    return float(covalent_radii[atomic_numbers[symbol]])


def validate_symbols(symbols: Iterable[str]) -> list[str]:
    """Return ``symbols`` as a list, raising :class:`UnknownElementError` naming every symbol that is no element."""
    symbols = list(symbols)
    unknown = sorted({symbol for symbol in symbols if symbol not in atomic_numbers or symbol == 'X'})
    if unknown:
        raise UnknownElementError(f'not chemical elements: {", ".join(unknown)}')
    return symbols


def element_pool(
    available: Iterable[str] | None = None, *, include: Iterable[str] | None = None, exclude: Iterable[str] = ()
) -> tuple[str, ...]:
    """Return the element pool: the MAD elements, restricted as asked, in order of atomic number.

    :param available: elements that can be computed, for example those of a pseudopotential family; the pool is
        the intersection of the MAD elements with these.
    :param include: if given, keep only these elements (each must be a MAD element).
    :param exclude: elements to leave out.
    :raises UnknownElementError: if ``include`` or ``exclude`` names a symbol that is no element, or ``include``
        names an element outside the MAD set.
    :raises ValueError: if the resulting pool is empty.
    """
    pool = set(MAD_ELEMENTS)
    if available is not None:
        pool &= set(validate_symbols(available))
    if include is not None:
        include = set(validate_symbols(include))
        outside = sorted(include - set(MAD_ELEMENTS), key=lambda s: atomic_numbers[s])
        if outside:
            raise UnknownElementError(f'not MAD elements (Z 1-86 except At): {", ".join(outside)}')
        pool &= include
    pool -= set(validate_symbols(exclude))
    if not pool:
        raise ValueError('the element pool is empty after applying the restrictions')
    return tuple(sorted(pool, key=lambda s: atomic_numbers[s]))
