"""Fixtures of the CLI tests: the loopback OPTIMADE reference server, shared with the importer tests.

The tests run with ``--import-mode=importlib``, so ``tests.structures.test_importers`` is no importable package
path; the module is loaded from its file instead and its module-scoped ``optimade_server`` fixture re-exported.
"""

import importlib.util
import pathlib

_PATH = pathlib.Path(__file__).resolve().parents[1] / 'structures' / 'test_importers.py'
_SPEC = importlib.util.spec_from_file_location('_aiida_mad_test_importers', _PATH)
_IMPORTER_TESTS = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(_IMPORTER_TESTS)

optimade_server = _IMPORTER_TESTS.optimade_server
