"""The pw.x version: declared on the code before the run, checked against what pw.x printed after it.

The version of the pw.x under test is read from pw.x itself, so these tests hold whatever Quantum ESPRESSO is installed.
"""

import pytest
from aiida import orm
from aiida.engine import run_get_node

from aiida_mad.codes import detect_pw_version
from aiida_mad.fingerprint import code_major_version
from aiida_mad.workflows.dft import CODE_VERSION_EXTRA, MadDftWorkChain


def other_major_version(version: str) -> str:
    """Return a version string of another major version than ``version``."""
    return f'{int(code_major_version(version)) + 1}.2'


@pytest.mark.usefixtures('aiida_profile_clean')
def test_declared_major_version_must_match_the_run(pw_code, offline_family, silicon):
    real = detect_pw_version(str(pw_code.filepath_executable))
    declared = other_major_version(real)
    pw_code.base.extras.set(CODE_VERSION_EXTRA, declared)
    silicon.store()
    builder = MadDftWorkChain.get_builder_from_protocol(pw_code, silicon, 'fast')
    _, node = run_get_node(builder)
    assert node.exit_status == MadDftWorkChain.exit_codes.ERROR_CODE_VERSION_MISMATCH.status
    # The calculation is kept, with its outputs; the structure is marked failed with the work chain's exit status.
    (scf,) = [child for child in node.called if child.process_label == 'MadPwBaseWorkChain']
    assert scf.is_finished_ok and 'output_parameters' in scf.outputs
    ran = scf.outputs.output_parameters['creator_version']
    assert code_major_version(ran) == code_major_version(real)
    assert f'declares major version {code_major_version(declared)} but pw.x {ran} ran' in node.exit_message
    marks = {key: value for key, value in silicon.base.extras.all.items() if key.startswith('mad_dft_')}
    assert [mark['state'] for mark in marks.values()] == ['failed']
    assert [mark['exit_status'] for mark in marks.values()] == [node.exit_status]
    assert 'energy' not in node.outputs


def test_setup_code_version_command(run_cli_command, pw_code):
    real = detect_pw_version(str(pw_code.filepath_executable))
    pw_code.base.extras.set(CODE_VERSION_EXTRA, other_major_version(real))
    result = run_cli_command(['setup', 'code-version', pw_code.full_label])
    assert real in result.output
    assert orm.load_code(pw_code.pk).base.extras.get(CODE_VERSION_EXTRA) == real
    result = run_cli_command(['setup', 'code-version', pw_code.full_label, 'seven'], raises=True)
    assert 'cannot read a major version' in result.output
    run_cli_command(['setup', 'code-version', pw_code.full_label, '7.2'])
    assert orm.load_code(pw_code.pk).base.extras.get(CODE_VERSION_EXTRA) == '7.2'
