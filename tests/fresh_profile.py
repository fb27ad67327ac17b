"""Run Python code in a brand-new, empty AiiDA profile, in a subprocess, e.g. to import archives and rebuild from them.

The test session has its own loaded profile; importing an archive there would merge with the nodes already present
and prove nothing. :class:`FreshProfile` makes a separate AiiDA configuration (its own ``AIIDA_PATH``) holding one
SQLite profile (``core.sqlite_dos``, no broker, no computer: as empty as a profile gets) and runs scripts in it with
the profile loaded. Creating the profile needs nothing from the network. Scripts run with the test session's
interpreter (the virtual environment, so ``aiida_mad`` and the plugins are importable), in the repository root, and
report through stdout (AiiDA's log messages and progress bars go to stderr).

Usage::

    output = run_in_fresh_profile('from aiida import orm; print(orm.QueryBuilder().append(orm.Node).count())', tmp_path)

    profile = FreshProfile(tmp_path / 'fresh')   # several scripts in the same profile
    profile.run(f'from aiida.tools.archive import import_archive; import_archive({str(path)!r})')
    data = json.loads(profile.run('...; print(json.dumps(result))').splitlines()[-1])
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import tempfile
import textwrap

__all__ = ['FreshProfile', 'FreshProfileError', 'run_in_fresh_profile']

#: The repository root: scripts run there.
REPOSITORY = pathlib.Path(__file__).resolve().parent.parent

#: Prepended to every script: create the profile on first use, then load it.
_BOOTSTRAP = """\
import pathlib
import runpy
import sys

from aiida.manage.configuration import create_profile, get_config, load_profile

_name, _storage, _script = sys.argv[1:4]
_config = get_config(create=True)
if _name not in _config.profile_names:
    create_profile(
        _config,
        storage_backend='core.sqlite_dos',
        storage_config={'filepath': _storage},
        name=_name,
        email='fresh-profile@aiida-mad.test',
    )
    _config.set_default_profile(_name, overwrite=True)
    _config.store()
load_profile(_name, allow_switch=True)
sys.argv = [_script]
runpy.run_path(_script, run_name='__main__')
"""


class FreshProfileError(RuntimeError):
    """A script failed in the fresh profile; the message holds its exit status, stdout and stderr."""


class FreshProfile:
    """An empty AiiDA profile of its own in ``directory``, created on the first :meth:`run`, kept for later runs.

    :param directory: holds the configuration (``AIIDA_PATH``), the storage and the scripts; created if missing.
        It must not hold another profile's configuration: give each fresh profile its own directory.
    :param name: the profile's name.
    """

    def __init__(self, directory: str | os.PathLike, name: str = 'fresh'):
        self.directory = pathlib.Path(directory).resolve()
        self.name = name
        self.directory.mkdir(parents=True, exist_ok=True)
        self._count = 0

    @property
    def storage(self) -> pathlib.Path:
        """The directory of the profile's SQLite database and file repository."""
        return self.directory / 'storage'

    def environment(self) -> dict[str, str]:
        """Return the subprocess environment: this profile's ``AIIDA_PATH``, no inherited profile selection."""
        env = {key: value for key, value in os.environ.items() if key not in ('AIIDA_PROFILE', 'AIIDA_PATH')}
        env['AIIDA_PATH'] = str(self.directory)
        return env

    def run(self, script: str, *, timeout: float = 600) -> str:
        """Run ``script`` (Python source, dedented) with this profile loaded; return its stdout.

        :raises FreshProfileError: if the script exits with a non-zero status (or raises), with stdout and stderr.
        :raises subprocess.TimeoutExpired: if it runs longer than ``timeout`` seconds.
        """
        self._count += 1
        handle, name = tempfile.mkstemp(prefix=f'script-{self._count:03d}-', suffix='.py', dir=self.directory)
        with os.fdopen(handle, 'w') as stream:
            stream.write(textwrap.dedent(script))
        command = [sys.executable, '-c', _BOOTSTRAP, self.name, str(self.storage), name]
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            cwd=REPOSITORY,
            env=self.environment(),
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise FreshProfileError(
                f'script {name} failed in fresh profile `{self.name}` ({self.directory}) with exit status '
                f'{result.returncode}\n--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}'
            )
        return result.stdout


def run_in_fresh_profile(script: str, tmp_path: str | os.PathLike, *, timeout: float = 600) -> str:
    """Run ``script`` in a new empty profile (in a new directory under ``tmp_path``); return its stdout.

    Every call gets a profile of its own; use :class:`FreshProfile` to run several scripts in the same one.

    :raises FreshProfileError: if the script fails, with its stdout and stderr.
    """
    directory = tempfile.mkdtemp(prefix='aiida-fresh-', dir=tmp_path)
    return FreshProfile(directory).run(script, timeout=timeout)
