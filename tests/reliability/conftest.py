"""The reliability suite: every test names its scenario and reports its figures; a table closes the pytest run.

A test declares its scenario with ``@pytest.mark.scenario('...')`` and fills the ``figures`` fixture (a dict, e.g.
``figures['structures'] = 4``). At the end of the run, ``pytest_terminal_summary`` prints one row per test:
scenario, result (passed, failed, skipped) and figures. ``docs/reliability.md`` quotes the table of the last run.
"""

from __future__ import annotations

import pytest

#: ``(scenario, test name, result, figures)`` of every reliability test that ran in this session.
_ROWS: list[tuple[str, str, str, dict]] = []


def pytest_configure(config):
    config.addinivalue_line('markers', 'scenario(name): the reliability scenario a test checks (summary table)')


@pytest.fixture
def figures(request) -> dict:
    """Return the dict of figures of this test (structures, kills, inputs tried...), printed in the summary table."""
    values: dict = {}
    request.node.mad_figures = values
    return values


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    marker = item.get_closest_marker('scenario')
    if marker is None:
        return
    if report.when == 'call' or (report.when == 'setup' and report.outcome != 'passed'):
        figures = getattr(item, 'mad_figures', {})
        _ROWS.append((marker.args[0], item.name, report.outcome, dict(figures)))


def pytest_terminal_summary(terminalreporter):
    if not _ROWS:
        return
    terminalreporter.section('reliability scenarios')
    width = max(len(scenario) for scenario, *_ in _ROWS)
    for scenario, name, result, figures in _ROWS:
        shown = ', '.join(f'{key}={value}' for key, value in figures.items()) or '-'
        terminalreporter.write_line(f'{scenario:<{width}}  {result:<7}  {shown}  ({name})')
