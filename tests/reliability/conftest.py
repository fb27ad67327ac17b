"""The reliability suite: every test names its scenario and reports its figures; a table closes the pytest run.

A test declares its scenario with ``@pytest.mark.scenario('...')`` and fills the ``figures`` fixture (a dict, e.g.
``figures['structures'] = 4``). At the end of the run, ``pytest_terminal_summary`` prints one row per test:
scenario, result (passed, failed, skipped) and figures. ``docs/reliability.md`` quotes the table of the last run.

Scenarios whose tests live elsewhere (the training faults, next to the other training tests, so that their trainings
are not run twice) are listed in :data:`REFERENCED` by node id; the table shows their results when they ran in the
same session, and says ``not run`` otherwise.
"""

from __future__ import annotations

import pytest

#: ``(scenario, test name, result, figures)`` of every reliability test that ran in this session.
_ROWS: list[tuple[str, str, str, dict]] = []

#: ``(scenario, node id)`` of reliability scenarios tested outside this folder.
REFERENCED = (
    (
        'training killed mid-run (metatrain)',
        'tests/workflows/test_train.py::test_killed_training_restarts_from_its_checkpoint_and_finishes',
    ),
    (
        'training killed mid-run (MACE)',
        'tests/workflows/test_mace.py::test_killed_training_restarts_from_its_checkpoint',
    ),
    (
        'training without a checkpoint',
        'tests/workflows/test_train.py::test_no_checkpoint_means_no_silent_restart_from_scratch',
    ),
    ('training NaN loss (exit code)', 'tests/parsers/test_metatrain.py::test_nan_loss'),
    (
        'training interrupted: newest checkpoint',
        'tests/parsers/test_metatrain.py::test_interrupted_run_keeps_the_newest_intermediate_checkpoint',
    ),
)


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


def referenced_rows(terminalreporter) -> list[tuple[str, str, str, dict]]:
    """Return the rows of :data:`REFERENCED`, with the results of this session (``not run`` if a test did not run)."""
    outcomes = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, 'when', None) == 'call' or (
                getattr(report, 'when', None) == 'setup' and getattr(report, 'outcome', 'passed') != 'passed'
            ):
                outcomes[report.nodeid] = report.outcome
    return [
        (scenario, nodeid.split('::')[-1], outcomes.get(nodeid, 'not run'), {'test': nodeid.split('::')[0]})
        for scenario, nodeid in REFERENCED
    ]


def pytest_terminal_summary(terminalreporter):
    if not _ROWS:
        return
    rows = _ROWS + referenced_rows(terminalreporter)
    terminalreporter.section('reliability scenarios')
    width = max(len(scenario) for scenario, *_ in rows)
    for scenario, name, result, figures in rows:
        shown = ', '.join(f'{key}={value}' for key, value in figures.items()) or '-'
        terminalreporter.write_line(f'{scenario:<{width}}  {result:<7}  {shown}  ({name})')
