"""The ``mp-aloe`` generator: random elements on prototype crystals, then a lattice guess, scrambling and strain.

The prototypes are the AFLOW library of crystallographic prototypes that pymatgen ships with its source
(``pymatgen.analysis.prototypes.AFLOW_PROTOTYPE_LIBRARY``, read from a gzipped JSON file inside the installed
package, so nothing is downloaded), optionally extended with the user's own files. MP-ALOE used 2-8 atom prototypes
with at most three species from the ICSD and the Materials Project; the AFLOW set is the one that comes with the
software and needs no account or network.

The steps follow the MP-ALOE paper: every species of the prototype is replaced by an element drawn uniformly from
the pool; the cell is scaled isotropically so that no pair of atoms is closer than the sum of their atomic radii
(pymatgen ``Element.atomic_radius``); each atom is displaced along each lattice vector by N(0, 0.02) times that
vector's length; finally the cell is deformed by a symmetric strain with six independent N(0, 0.02) components.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers, chemical_symbols
from ase.neighborlist import neighbor_list

from .elements import covalent_radius, validate_symbols

__all__ = (
    'DEFAULT_SCRAMBLE_SIGMA',
    'DEFAULT_STRAIN_SIGMA',
    'atomic_radius',
    'generate_mp_aloe',
    'lattice_guess',
    'load_prototypes',
    'scramble',
    'strain',
    'substitute',
)

#: Standard deviation of the fractional displacement along each lattice vector (MP-ALOE).
DEFAULT_SCRAMBLE_SIGMA = 0.02

#: Standard deviation of each of the six independent strain components (MP-ALOE).
DEFAULT_STRAIN_SIGMA = 0.02

#: Tolerance in Å for reducing a prototype to its primitive cell (spglib ``symprec``).
_PRIMITIVE_TOLERANCE = 0.01


@functools.cache
def atomic_radius(symbol: str) -> float:
    """Return the atomic radius of ``symbol`` in Å used by the lattice guess.

    This is pymatgen's ``Element(symbol).atomic_radius`` (the radius MP-ALOE chose because it gave volumes closest to
    the relaxed ones). pymatgen has none for He, Ne, Kr, Xe and Rn; for those, and any other element without one, the
    covalent radius of ``ase.data.covalent_radii`` is used instead.

    :param symbol: a chemical symbol.
    :raises UnknownElementError: if ``symbol`` is not a chemical element.
    """
    from pymatgen.core import Element

    validate_symbols([symbol])
    radius = Element(symbol).atomic_radius
    return covalent_radius(symbol) if radius is None else float(radius)


#: Names under which pymatgen has shipped the AFLOW prototype library (newer releases: gzipped, in a sub-package).
_AFLOW_FILES = ('aflow_prototypes.json.gz', 'aflow_prototypes.json')


def _aflow_raw_entries() -> list[tuple[str, list[int], list[list[float]], list[list[float]]]]:
    """Return (AFLOW label, atomic numbers, cell, scaled positions) for every ordered entry of pymatgen's library.

    The JSON file is read directly: deserialising it through ``pymatgen.analysis.prototypes`` builds a pymatgen
    ``StructureNL`` per entry and takes several seconds, parsing the plain JSON a tenth of a second.
    """
    import gzip
    import importlib.util
    import json

    directories = []
    for package in ('pymatgen.analysis.prototypes', 'pymatgen.analysis'):
        # find_spec locates the package without executing it (its __init__ is the slow deserialisation).
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.submodule_search_locations:
            directories.extend(Path(location) for location in spec.submodule_search_locations)
    for directory in directories:
        for name in _AFLOW_FILES:
            path = directory / name
            if not path.is_file():
                continue
            opener = gzip.open if name.endswith('.gz') else open
            with opener(path, 'rt', encoding='utf-8') as handle:
                library = json.load(handle)
            entries = []
            for entry in library:
                sites = entry['snl']['sites']
                if any(len(site['species']) != 1 or site['species'][0].get('occu', 1.0) != 1.0 for site in sites):
                    continue  # a disordered entry has no single species per site to substitute
                entries.append(
                    (
                        entry['tags']['aflow'],
                        [atomic_numbers[site['species'][0]['element']] for site in sites],
                        entry['snl']['lattice']['matrix'],
                        [site['abc'] for site in sites],
                    )
                )
            return entries

    # No file where it used to be: let pymatgen find and deserialise its own data (slow, but always right).
    from pymatgen.analysis.prototypes import AFLOW_PROTOTYPE_LIBRARY

    return [
        (
            entry['tags']['aflow'],
            [int(site.specie.Z) for site in entry['snl'].structure],
            entry['snl'].structure.lattice.matrix.tolist(),
            entry['snl'].structure.frac_coords.tolist(),
        )
        for entry in AFLOW_PROTOTYPE_LIBRARY
        if entry['snl'].structure.is_ordered
    ]


def _alphabetical_formula(numbers: Iterable[int]) -> str:
    """Return the reduced formula with elements in alphabetical order, the order of the letters in AFLOW labels."""
    counts: dict[str, int] = {}
    for number in numbers:
        symbol = chemical_symbols[number]
        counts[symbol] = counts.get(symbol, 0) + 1
    divisor = math.gcd(*counts.values())
    return ''.join(
        f'{symbol}{count // divisor if count != divisor else ""}' for symbol, count in sorted(counts.items())
    )


def _primitive(numbers: Sequence[int], cell: np.ndarray, scaled: np.ndarray) -> tuple[np.ndarray, ...]:
    """Return (numbers, cell, scaled positions) of the primitive cell; the input itself when it is primitive."""
    import spglib

    numbers = np.asarray(numbers, dtype=int)
    cell = np.asarray(cell, dtype=float)
    scaled = np.asarray(scaled, dtype=float)
    try:
        with warnings.catch_warnings():
            # spglib 2.5+ warns on every call about its future error handling; nothing for us to act on.
            warnings.simplefilter('ignore', DeprecationWarning)
            reduced = spglib.standardize_cell(
                (cell, scaled, numbers), to_primitive=True, no_idealize=True, symprec=_PRIMITIVE_TOLERANCE
            )
    except Exception:  # spglib versions differ: some return None, some raise, when they find no cell
        reduced = None
    if reduced is None or len(reduced[2]) >= len(numbers):
        return numbers, cell, scaled
    primitive_cell, primitive_scaled, primitive_numbers = reduced
    return np.asarray(primitive_numbers, dtype=int), np.asarray(primitive_cell), np.asarray(primitive_scaled)


@functools.cache
def _aflow_library() -> tuple[tuple[str, tuple[int, ...], tuple[float, ...], tuple[float, ...]], ...]:
    """Return the bundled AFLOW prototypes as (label, numbers, flat cell, flat scaled positions), primitive cells."""
    entries = []
    counts: dict[str, int] = {}
    for aflow_label, raw_numbers, raw_cell, raw_scaled in _aflow_raw_entries():
        numbers, cell, scaled = _primitive(raw_numbers, raw_cell, raw_scaled)
        # The AFLOW label alone is not unique (A_oC8_64_f is alpha-Ga, black P and I); with the formula it is.
        label = f'{aflow_label}:{_alphabetical_formula(numbers.tolist())}'
        counts[label] = counts.get(label, 0) + 1
        if counts[label] > 1:
            # Library order is fixed for a pymatgen release, so the occurrence number is a stable tie-breaker.
            label = f'{label}#{counts[label]}'
        entries.append((label, tuple(numbers.tolist()), tuple(cell.ravel().tolist()), tuple(scaled.ravel().tolist())))
    return tuple(entries)


def _fits(atoms: Atoms, min_atoms: int, max_atoms: int, max_species: int) -> bool:
    return min_atoms <= len(atoms) <= max_atoms and len(set(atoms.numbers.tolist())) <= max_species


def load_prototypes(
    max_atoms: int = 8,
    max_species: int = 3,
    paths: Iterable[str | os.PathLike] | None = None,
    *,
    min_atoms: int = 2,
    aflow: bool = True,
) -> list[Atoms]:
    """Return the prototypes with ``min_atoms`` to ``max_atoms`` sites in the primitive cell and few species.

    The bundled AFLOW prototypes (see the module docstring) come first, in library order, labelled
    ``'<AFLOW label>:<reduced formula>'`` in ``info['prototype']`` (for example ``'AB_cF8_225_a_b:NaCl'``). Then come
    the structures of ``paths``, read with ``ase.io.read`` (every frame of every file, so any ASE-readable format
    works), reduced to their primitive cell and labelled ``'<file name>'`` or, for files with several frames,
    ``'<file name>@<frame>'``. Both kinds pass the same filter: ``min_atoms`` to ``max_atoms`` sites after reduction
    and at most ``max_species`` distinct species. ``info['prototype_source']`` says ``'aflow'`` or gives the path.

    :param max_atoms: the largest number of sites of the primitive cell.
    :param max_species: the largest number of distinct species.
    :param paths: files with more prototypes.
    :param min_atoms: the smallest number of sites of the primitive cell.
    :param aflow: whether to include the bundled AFLOW prototypes.
    :return: fresh ``Atoms`` objects (the cached library is never handed out).
    :raises ValueError: if a user structure is not periodic along all three axes, or the bounds are inconsistent.
    """
    import ase.io

    if min_atoms < 1 or max_atoms < min_atoms or max_species < 1:
        raise ValueError(
            f'inconsistent bounds: min_atoms={min_atoms}, max_atoms={max_atoms}, max_species={max_species}'
        )
    prototypes = []
    if aflow:
        for label, numbers, cell, scaled in _aflow_library():
            atoms = Atoms(
                numbers=numbers,
                cell=np.reshape(cell, (3, 3)),
                scaled_positions=np.reshape(scaled, (-1, 3)),
                pbc=True,
            )
            if _fits(atoms, min_atoms, max_atoms, max_species):
                atoms.info.update({'prototype': label, 'prototype_source': 'aflow'})
                prototypes.append(atoms)

    for path in paths or ():
        frames = ase.io.read(path, index=':')
        name = Path(path).name
        for frame_index, frame in enumerate(frames):
            if not all(frame.pbc):
                raise ValueError(f'prototype {name} frame {frame_index} is not periodic along all three axes')
            numbers, cell, scaled = _primitive(frame.numbers, frame.cell.array, frame.get_scaled_positions())
            atoms = Atoms(numbers=numbers, cell=cell, scaled_positions=scaled, pbc=True)
            if _fits(atoms, min_atoms, max_atoms, max_species):
                label = name if len(frames) == 1 else f'{name}@{frame_index}'
                atoms.info.update({'prototype': label, 'prototype_source': os.fspath(path)})
                prototypes.append(atoms)
    return prototypes


def _distinct_species(atoms: Atoms) -> list[str]:
    """Return the chemical symbols of ``atoms`` in order of first appearance."""
    return list(dict.fromkeys(atoms.get_chemical_symbols()))


def substitute(prototype: Atoms, rng: np.random.Generator, pool: Sequence[str]) -> Atoms:
    """Return ``prototype`` with each of its species replaced by an element drawn uniformly from ``pool``.

    Distinct species of the prototype get distinct elements (a draw without replacement, ``rng.choice(...,
    replace=False)``): a binary prototype stays a binary, as MP-ALOE counted its prototypes as binaries and
    ternaries, and a draw that merged two sites' species would give a unary in a strained, usually unphysical
    arrangement. Each element is still equally likely on each site. The pool is sorted by atomic number first, so the
    result does not depend on the order in which the pool is given. ``info['substitution']`` maps old to new
    symbols; other ``info`` entries are kept.

    :param prototype: the prototype.
    :param rng: the random generator.
    :param pool: the elements to draw from, for example :func:`aiida_mad.structures.elements.element_pool`.
    :raises UnknownElementError: if the pool names something that is not an element.
    :raises ValueError: if the pool has fewer elements than the prototype has species.
    """
    elements = sorted(set(validate_symbols(pool)), key=lambda symbol: atomic_numbers[symbol])
    species = _distinct_species(prototype)
    if len(elements) < len(species):
        raise ValueError(
            f'the pool has {len(elements)} element(s), the prototype {prototype.get_chemical_formula()} needs '
            f'{len(species)} distinct ones'
        )
    drawn = rng.choice(len(elements), size=len(species), replace=False)
    mapping = {old: elements[int(index)] for old, index in zip(species, drawn, strict=True)}
    result = prototype.copy()
    result.numbers = [atomic_numbers[mapping[symbol]] for symbol in prototype.get_chemical_symbols()]
    result.info['substitution'] = mapping
    return result


def _tightest_ratio(atoms: Atoms, radii: np.ndarray) -> float:
    """Return the smallest distance / (r_i + r_j) over all pairs, periodic images (also of an atom itself) included."""
    largest_sum = 2.0 * float(radii.max())
    cutoff = largest_sum
    while True:
        i, j, distances = neighbor_list('ijd', atoms, cutoff, self_interaction=False)
        if len(distances):
            best = float(np.min(distances / (radii[i] + radii[j])))
            # A pair not found is at least `cutoff` apart, so its ratio is at least cutoff / largest_sum: once that
            # reaches `best`, no pair beyond the cutoff can be tighter.
            if cutoff >= best * largest_sum:
                return best
            cutoff = best * largest_sum * (1.0 + 1e-9)
        elif cutoff > 1e3 * largest_sum:
            raise ValueError(f'{atoms.get_chemical_formula()} has no pair of atoms within {cutoff:.1f} Å')
        else:
            cutoff *= 2.0


def lattice_guess(atoms: Atoms) -> Atoms:
    """Return a copy of ``atoms`` scaled isotropically so that its tightest pair just touches.

    For every pair of atoms, periodic images (of an atom itself too) included, the ratio of their distance to the
    sum of their atomic radii (:func:`atomic_radius`) is computed; the cell and the positions are scaled by one
    factor that brings the smallest ratio to exactly 1. Afterwards no pair is closer than the sum of its radii and at
    least one is at exactly that distance; scaled positions are unchanged. ``info['lattice_scale']`` records the
    factor.

    :param atoms: the structure, usually a substituted prototype.
    :raises ValueError: if two atoms coincide or no pair of atoms is found at all.
    """
    radii = np.array([atomic_radius(symbol) for symbol in atoms.get_chemical_symbols()])
    best = _tightest_ratio(atoms, radii)
    if not best > 0.0:
        raise ValueError(f'{atoms.get_chemical_formula()} has coinciding atoms; no scaling can separate them')
    scale = 1.0 / best
    result = atoms.copy()
    result.set_cell(atoms.cell.array * scale, scale_atoms=True)
    result.info['lattice_scale'] = scale
    return result


def scramble(atoms: Atoms, rng: np.random.Generator, sigma: float = DEFAULT_SCRAMBLE_SIGMA) -> Atoms:
    """Return a copy of ``atoms`` with every atom displaced along each lattice vector by N(0, ``sigma``) of its length.

    That is, each scaled (fractional) coordinate gets independent Gaussian noise of zero mean and standard deviation
    ``sigma``; ``3 * len(atoms)`` numbers are drawn, atom by atom. Positions are not wrapped into the cell.

    :param atoms: the structure.
    :param rng: the random generator.
    :param sigma: the standard deviation of the fractional displacement.
    :raises ValueError: if ``sigma`` is negative or not finite.
    """
    if not np.isfinite(sigma) or sigma < 0:
        raise ValueError(f'sigma must be a finite non-negative number, got {sigma!r}')
    fractional = rng.standard_normal((len(atoms), 3)) * sigma
    result = atoms.copy()
    result.positions = atoms.positions + fractional @ atoms.cell.array
    return result


def strain(atoms: Atoms, rng: np.random.Generator, sigma: float = DEFAULT_STRAIN_SIGMA) -> Atoms:
    """Return a copy of ``atoms`` deformed by a random symmetric strain.

    Six independent components are drawn from N(0, ``sigma``), in Voigt order xx, yy, zz, yz, xz, xy, and form the
    symmetric tensor ``eps`` (tensor components, not engineering shear strains). The cell (rows are lattice vectors)
    becomes ``cell @ (I + eps)``; scaled positions are kept. ``info['strain']`` records ``eps`` as nested lists.

    :param atoms: the structure.
    :param rng: the random generator.
    :param sigma: the standard deviation of each strain component.
    :raises ValueError: if ``sigma`` is negative or not finite.
    """
    if not np.isfinite(sigma) or sigma < 0:
        raise ValueError(f'sigma must be a finite non-negative number, got {sigma!r}')
    xx, yy, zz, yz, xz, xy = rng.standard_normal(6) * sigma
    eps = np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    result = atoms.copy()
    result.set_cell(atoms.cell.array @ (np.eye(3) + eps), scale_atoms=True)
    result.info['strain'] = eps.tolist()
    return result


def generate_mp_aloe(
    prototype: Atoms,
    rng: np.random.Generator,
    pool: Sequence[str],
    *,
    scramble_sigma: float = DEFAULT_SCRAMBLE_SIGMA,
    strain_sigma: float = DEFAULT_STRAIN_SIGMA,
) -> Atoms:
    """Return one ``mp-aloe`` structure: :func:`substitute`, :func:`lattice_guess`, :func:`scramble`, :func:`strain`.

    The random numbers are drawn in that order from ``rng``. ``info`` holds ``prototype`` (the label, or the
    prototype's formula when it has none), ``substitution`` (old symbol -> new symbol), ``lattice_scale`` and
    ``strain`` (the 3x3 tensor).

    :param prototype: the prototype, for example one of :func:`load_prototypes`.
    :param rng: the random generator.
    :param pool: the elements to draw from.
    :param scramble_sigma: the standard deviation of the fractional displacements.
    :param strain_sigma: the standard deviation of the strain components.
    """
    label = prototype.info.get('prototype', prototype.get_chemical_formula())
    result = substitute(prototype, rng, pool)
    result = lattice_guess(result)
    result = scramble(result, rng, scramble_sigma)
    result = strain(result, rng, strain_sigma)
    result.info['prototype'] = label
    return result
