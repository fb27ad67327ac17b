"""Fixtures of the CLI tests: refused commands, and the loopback OPTIMADE reference server of the importer tests.

The tests run with ``--import-mode=importlib``, so ``tests.structures.test_importers`` is no importable package
path; the module is loaded from its file instead and its module-scoped ``optimade_server`` fixture re-exported.
"""

import importlib.util
import pathlib

import pytest

_PATH = pathlib.Path(__file__).resolve().parents[1] / 'structures' / 'test_importers.py'
_SPEC = importlib.util.spec_from_file_location('_aiida_mad_test_importers', _PATH)
_IMPORTER_TESTS = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(_IMPORTER_TESTS)

optimade_server = _IMPORTER_TESTS.optimade_server


def database_state() -> tuple[int, int, int]:
    """Return the numbers of nodes, groups and group memberships: refused input must change none of them."""
    from aiida import orm

    memberships = orm.QueryBuilder().append(orm.Group, tag='group').append(orm.Node, with_group='group').count()
    return orm.QueryBuilder().append(orm.Node).count(), orm.QueryBuilder().append(orm.Group).count(), memberships


@pytest.fixture
def run_refused(run_cli_command):
    """Return a function that runs a command that must be refused: non-zero exit, a message, nothing stored.

    The command must end through a clean exit (no traceback) whose output contains every one of ``expected``, and
    the numbers of nodes, groups and group memberships must not change.
    """

    def factory(args, *expected):
        before = database_state()
        result = run_cli_command(args, raises=True)
        assert isinstance(result.exception, SystemExit), f'a traceback, not a message: {result.exception!r}'
        assert 'Traceback' not in result.output, result.output
        for text in expected:
            assert text in result.output, f'{text!r} not in:\n{result.output}'
        assert database_state() == before, 'refused input stored something'
        return result

    return factory
