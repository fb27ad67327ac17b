"""``aiida_mad.scripts.run_script``: the shared ``main()`` of the AiiDA-free console scripts."""

import json

import pytest

from aiida_mad.scripts import BAD_INPUT, run_script

DOC = """``aiida-mad-x-y``: a script for the test.

More text that --help does not show.
"""


def run_x(config, directory):
    """Read the file the configuration names, relative to the configuration's folder; refuse a negative count."""
    if config['count'] < 0:
        raise ValueError(f'count must not be negative, got {config["count"]}')
    return {'count': config['count'], 'text': (directory / config['file']).read_text()}


def main(argv):
    return run_script('x-y', argv, doc=DOC, run=run_x, summary=lambda result: f'{result["count"]}: {result["text"]}')


def test_runs_the_configuration_next_to_it_and_prints_the_summary(tmp_path, monkeypatch, capsys):
    (tmp_path / 'input.txt').write_text('hello')
    (tmp_path / 'x-y.json').write_text(json.dumps({'count': 3, 'file': 'input.txt'}))
    monkeypatch.chdir(tmp_path.parent)
    assert main([f'{tmp_path.name}/x-y.json']) == 0
    captured = capsys.readouterr()
    assert captured.out == '3: hello\n'
    assert captured.err == ''


def test_bad_input_exits_2_with_the_reason_on_stderr(tmp_path, capsys):
    (tmp_path / 'x-y.json').write_text(json.dumps({'count': -1, 'file': 'input.txt'}))
    assert main([str(tmp_path / 'x-y.json')]) == BAD_INPUT == 2
    captured = capsys.readouterr()
    assert captured.out == ''
    assert captured.err == 'aiida-mad-x-y: count must not be negative, got -1\n'


def test_help_shows_the_first_line_of_the_docstring(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(['--help'])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert 'usage: aiida-mad-x-y [-h] config' in out
    assert '``aiida-mad-x-y``: a script for the test.' in out and 'More text' not in out
    assert 'the x-y.json written by mad.x_y' in out
