"""docs/tutorial.md's offline pipeline, run as written: every shell command of the section, in order, fresh profile.

The commands are read from the fenced ``bash`` blocks of the section "The offline pipeline, command by command" and
run through click's runner with the test profile in place of the tutorial's ``-p mad``: ``verdi`` commands through
``verdi``, the others through ``aiida-mad``, in a temporary working directory (the relative output paths land
there). Real pw.x through a real daemon. The tutorial says that the first ``dataset build`` stops for the missing
isolated-atom baseline and prints the command to compute it; the test checks exactly that, runs the printed command
in place of the block that shows its form (the only one with a ``<placeholder>``), and goes on.
"""

import pathlib
import re
import shlex

import pytest
from aiida import orm

TUTORIAL = pathlib.Path(__file__).resolve().parents[1] / 'docs' / 'tutorial.md'
SECTION = '## The offline pipeline, command by command'


def tutorial_commands() -> list[list[str]]:
    """Return the commands of the section, split like a shell would, backslash continuations joined."""
    text = TUTORIAL.read_text()
    section = text[text.index(SECTION) :]
    section = section[: section.find('\n## ', len(SECTION))] if '\n## ' in section[len(SECTION) :] else section
    commands = []
    for block in re.findall(r'```bash\n(.*?)```', section, re.DOTALL):
        for command in block.replace('\\\n', ' ').splitlines():
            if command.strip():
                commands.append(shlex.split(command))
    return commands


def test_tutorial_commands_are_read():
    """The parsing itself: every command is `verdi` or `aiida-mad` on the tutorial's profile `mad`."""
    commands = tutorial_commands()
    assert len(commands) >= 12
    for command in commands:
        assert command[0] in ('verdi', 'aiida-mad'), command
        assert command[1:3] == ['-p', 'mad'], command
    assert sum('<' in ' '.join(command) for command in commands) == 1


def run_verdi(args: list[str]):
    """Run ``verdi`` with ``args`` in the test profile; fail with its output on a non-zero exit."""
    from aiida.cmdline.commands.cmd_verdi import verdi
    from aiida.manage import get_manager
    from click.testing import CliRunner

    result = CliRunner().invoke(verdi, ['-p', get_manager().get_profile().name, *args])
    assert result.exit_code == 0, f'verdi {" ".join(args)}: exit code {result.exit_code}:\n{result.output}'
    return result


# Real pw.x at the `demo` protocol for 3 structures and their isolated atoms: minutes on 2 idle cores, more on a loaded
# machine than the suite's default timeout allows.
@pytest.mark.timeout(2400)
@pytest.mark.usefixtures('aiida_profile_clean', 'offline_family')
def test_tutorial_runs_as_written(run_cli_command, pw_code, stopped_daemon_client, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert pw_code.full_label == 'pw@localhost'  # the code the tutorial names
    printed = None
    builds = 0
    for command in tutorial_commands():
        args = command[3:]
        line = ' '.join(command)
        print(f'$ {line}')
        if command[0] == 'verdi':
            print(run_verdi(args).output)
            continue
        if '<' in line:
            # The form of the command that the failed build printed: that one runs instead.
            assert printed is not None, 'the tutorial shows the isolated-atoms command before a build printed it'
            assert args[:2] == printed[:2] == ['dft', 'isolated-atoms']
            assert [arg for arg in args if arg.startswith('-')] == [arg for arg in printed if arg.startswith('-')]
            assert args[args.index('--protocol') + 1] == printed[printed.index('--protocol') + 1]
            args = printed
        if args[:2] == ['dataset', 'build'] and builds == 0:
            builds += 1
            result = run_cli_command(args, raises=True)
            print(result.output)
            match = re.search(r'`aiida-mad (dft isolated-atoms [^`]+)`', result.output)
            assert match, f'the first build printed no isolated-atoms command:\n{result.output}'
            printed = shlex.split(match.group(1))
            continue
        result = run_cli_command(args)
        print(result.output)

    # What the tutorial promises at the end.
    from aiida_mad.workflows.dataset import load_dataset

    dataset = load_dataset('tutorial')
    assert dataset.n_frames == 3
    assert dataset.atomic_energies
    assert dataset.selection['theory']['protocol'] == 'demo'
    assert (tmp_path / 'tutorial.report.html').is_file()
    assert (tmp_path / 'tutorial-export' / 'mad-train.xyz').is_file()
    readme = (tmp_path / 'tutorial-record' / 'README.md').read_text()
    assert 'Test grade' in readme
    assert 'protocol demo' in readme
    runs = orm.QueryBuilder().append(orm.WorkflowNode, filters={'attributes.process_label': 'MadDftWorkChain'})
    assert all(node.is_finished_ok for node in runs.all(flat=True))
