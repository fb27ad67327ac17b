"""Every process of aiida-mad has a ``mad.`` entry point that loads the very same object.

A stored process node records its process type; when the class or calcfunction has an entry point, that is the entry
point (``aiida.workflows:mad.dft``), otherwise the module path, which breaks as soon as the module moves. The walk
imports every module of the package (an import error fails the test: nothing is skipped) and finds every ``Process``
subclass and every process function defined in it.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from importlib.metadata import entry_points

from aiida.engine import CalcJob, Process, WorkChain
from aiida.plugins.entry_point import load_entry_point_from_string

import aiida_mad
from aiida_mad.constants import PROCESS_ENTRY_POINTS, PROCESS_TYPES

PROCESS_GROUPS = ('aiida.calculations', 'aiida.workflows')


def walk_package() -> list:
    """Import and return every module of aiida-mad."""
    failed = []
    modules = [
        importlib.import_module(info.name)
        for info in pkgutil.walk_packages(aiida_mad.__path__, 'aiida_mad.', onerror=failed.append)
    ]
    assert not failed, f'these packages could not be imported: {failed}'
    return [aiida_mad, *modules]


def is_process_function(value) -> bool:
    """Return whether ``value`` is a calcfunction or workfunction (``aiida.engine`` itself has the helper's name)."""
    return inspect.isfunction(value) and getattr(value, 'is_process_function', False) is True


def find_processes() -> dict[str, object]:
    """Return ``{where it is defined: process class or process function}`` for every process of the package."""
    found = {}
    for module in walk_package():
        for name, value in vars(module).items():
            if is_process_function(value):
                if value.__module__ == module.__name__:
                    found[f'{value.__module__}.{value.__name__}'] = value
            elif inspect.isclass(value) and issubclass(value, Process) and value.__module__.startswith('aiida_mad'):
                # Classes made by a factory (the bulk-linked calcfunctions) are found where they are bound.
                found[f'{module.__name__}.{name}'] = value
    return found


def expected_group(process) -> str:
    if is_process_function(process):
        return 'aiida.calculations' if process.node_class.__name__ == 'CalcFunctionNode' else 'aiida.workflows'
    if issubclass(process, CalcJob) or hasattr(process, 'bulk_linked_function'):
        return 'aiida.calculations'
    assert issubclass(process, WorkChain), f'{process} is neither a CalcJob nor a WorkChain: decide its group here'
    return 'aiida.workflows'


def test_every_process_has_an_entry_point_that_loads_it():
    processes = find_processes()
    problems = []
    for where, process in sorted(processes.items()):
        process_class = process.process_class if is_process_function(process) else process
        process_type = process_class.build_process_type()
        group, _, name = process_type.partition(':')
        if group != expected_group(process) or not name.startswith('mad.'):
            problems.append(
                f'{where}: process type {process_type!r} is no `mad.` entry point of {expected_group(process)}'
            )
            continue
        # A bulk-linked class stores the process type of its calcfunction, and its nodes load back as that function.
        expected = getattr(process, 'bulk_linked_function', process)
        loaded = load_entry_point_from_string(process_type)
        if loaded is not expected:
            problems.append(f'{where}: entry point {process_type} loads {loaded!r}, not {expected!r}')
    assert not problems, '\n'.join(problems)
    # The known processes were found, so the walk is not empty.
    found_types = {
        (process.process_class if is_process_function(process) else process).build_process_type()
        for process in processes.values()
    }
    assert set(PROCESS_TYPES.values()) <= found_types


def test_every_registered_process_is_part_of_the_package():
    for group in PROCESS_GROUPS:
        for entry_point in entry_points(group=group):
            if not entry_point.name.startswith('mad.'):
                assert not entry_point.value.startswith('aiida_mad'), f'{entry_point} lacks the `mad.` prefix'
                continue
            assert entry_point.value.startswith('aiida_mad.'), entry_point
            loaded = entry_point.load()
            assert is_process_function(loaded) or issubclass(loaded, Process), entry_point


def test_the_shared_process_types_are_registered():
    for name, group in PROCESS_ENTRY_POINTS.items():
        registered = {entry_point.name for entry_point in entry_points(group=group)}
        assert name in registered, f'{name} is in aiida_mad.constants but not registered under {group}'
