"""The pw.x version: declared on the code before the run, checked against what pw.x printed after it."""

import pytest
from aiida import orm
from aiida.engine import run_get_node

from aiida_mad.workflows.dft import CODE_VERSION_EXTRA, MadDftWorkChain


@pytest.mark.usefixtures('aiida_profile_clean')
def test_declared_major_version_must_match_the_run(pw_code, offline_family, silicon):
    pw_code.base.extras.set(CODE_VERSION_EXTRA, '7.2')  # pw.x here is 6.7
    silicon.store()
    builder = MadDftWorkChain.get_builder_from_protocol(pw_code, silicon, 'fast')
    _, node = run_get_node(builder)
    assert node.exit_status == MadDftWorkChain.exit_codes.ERROR_CODE_VERSION_MISMATCH.status
    assert 'declares major version 7 but pw.x 6.7' in node.exit_message
    # The calculation is kept, with its outputs; the structure is marked failed with the work chain's exit status.
    (scf,) = [child for child in node.called if child.process_label == 'MadPwBaseWorkChain']
    assert scf.is_finished_ok and 'output_parameters' in scf.outputs
    marks = {key: value for key, value in silicon.base.extras.all.items() if key.startswith('mad_dft_')}
    assert [mark['state'] for mark in marks.values()] == ['failed']
    assert [mark['exit_status'] for mark in marks.values()] == [node.exit_status]
    assert 'energy' not in node.outputs


def test_setup_code_version_command(run_cli_command, pw_code):
    result = run_cli_command(['setup', 'code-version', pw_code.full_label])
    assert '6.7' in result.output
    assert pw_code.base.extras.get(CODE_VERSION_EXTRA).startswith('6.7')
    result = run_cli_command(['setup', 'code-version', pw_code.full_label, 'seven'], raises=True)
    assert 'cannot read a major version' in result.output
    run_cli_command(['setup', 'code-version', pw_code.full_label, '7.2'])
    assert orm.load_code(pw_code.pk).base.extras.get(CODE_VERSION_EXTRA) == '7.2'
