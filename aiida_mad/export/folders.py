"""Output folders that appear whole or not at all: every export that writes a folder goes through here.

A folder is assembled under a hidden staging name next to its target and renamed into place when complete. Its
last file, written just before the rename, is the marker :data:`MARKER` (JSON: ``kind``, ``time``, ``version``
and the names of the files written): a folder without it was not written by aiida-mad, or not completely.

``force`` replaces only such a folder: one that holds the marker and nothing besides the files the marker lists.
Anything else (a thesis folder, the home folder, the current working directory or one of its parents, ``/``) is
refused with a message that names the folder and the reason, and nothing is deleted. The old folder is moved
aside first and removed only once the new one is in place.

Failures of the file system (the parent is a regular file, a read-only place, a name longer than the system allows,
a full disk or quota) raise the caller's error class (default :class:`OutputFolderError`) with the path and the
reason, and leave no staging folder behind.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import pathlib
import secrets
import shutil
from collections.abc import Iterator

__all__ = ('MARKER', 'OutputFolderError', 'check_free', 'read_marker', 'staged_folder')

#: The marker file of every folder that :func:`staged_folder` writes.
MARKER = '.aiida-mad-export.json'

#: Longest file name most file systems allow (bytes); staging names stay below it.
_NAME_MAX = 255

#: Reasons of the file-system errors worth naming.
_REASONS = {
    errno.ENOSPC: 'no space left on the device',
    errno.EDQUOT: 'disk quota exceeded',
    errno.EACCES: 'permission denied (a read-only place?)',
    errno.EPERM: 'operation not permitted',
    errno.EROFS: 'read-only file system',
    errno.ENAMETOOLONG: 'file name too long for this file system',
    errno.ENOTDIR: 'a part of the path is a regular file, not a folder',
    errno.EEXIST: 'a part of the path exists and is not a folder',
}


class OutputFolderError(ValueError):
    """An output folder cannot be written or replaced; ``path`` is the folder and ``reason`` says why."""

    def __init__(self, message: str, *, path: os.PathLike | str | None = None, reason: str | None = None):
        super().__init__(message)
        self.path = pathlib.Path(path) if path is not None else None
        self.reason = reason or message


def _fail(error: type[Exception], path: pathlib.Path, reason: str, hint: str = '') -> Exception:
    """Return ``error`` with a message naming ``path`` and ``reason``; the instance carries both as attributes."""
    message = f'{path}: {reason}' + (f': {hint}' if hint else '')
    exception = error(message, path=path, reason=reason) if issubclass(error, OutputFolderError) else error(message)
    exception.path = path
    exception.reason = reason
    return exception


def _os_reason(exception: OSError) -> str:
    reason = _REASONS.get(exception.errno, exception.strerror or str(exception))
    return f'cannot write ({reason})'


def read_marker(directory) -> dict | None:
    """Return the marker of ``directory`` (a dict with ``kind``, ``time``, ``version``, ``files``), or ``None``."""
    path = pathlib.Path(directory) / MARKER
    try:
        marker = json.loads(path.read_text(encoding='utf-8'))
    except (OSError, ValueError):
        return None
    if (
        not isinstance(marker, dict)
        or not isinstance(marker.get('kind'), str)
        or not isinstance(marker.get('files'), list)
    ):
        return None
    return marker


def _protected(directory: pathlib.Path) -> str | None:
    """Return why ``directory`` may never be replaced (``/``, home, the working directory or a parent), or None."""
    resolved = directory.resolve()
    if resolved == pathlib.Path(resolved.anchor):
        return 'it is the root of the file system'
    with contextlib.suppress(RuntimeError, KeyError):
        if resolved == pathlib.Path.home().resolve():
            return 'it is the home folder'
    with contextlib.suppress(OSError):
        cwd = pathlib.Path.cwd().resolve()
        if cwd == resolved or resolved in cwd.parents:
            return 'it holds the current working directory'
    return None


def _check_replaceable(directory: pathlib.Path, error: type[Exception]) -> None:
    """Raise ``error`` unless ``directory`` is a complete folder written by :func:`staged_folder`."""
    hint = 'choose another folder; --force (force=True) only replaces a folder written by an aiida-mad export'
    if directory.is_symlink():
        raise _fail(error, directory, 'it is a symbolic link, not replaced', hint)
    if not directory.is_dir():
        raise _fail(error, directory, 'it exists and is a file, not replaced', hint)
    reason = _protected(directory)
    if reason:
        raise _fail(error, directory, f'{reason}, not replaced', hint)
    marker = read_marker(directory)
    if marker is None:
        raise _fail(error, directory, f'it holds no {MARKER}: not written by an aiida-mad export, not replaced', hint)
    foreign = sorted({item.name for item in directory.iterdir()} - {MARKER, *marker['files']})
    if foreign:
        shown = ', '.join(foreign[:5]) + (f' and {len(foreign) - 5} more' if len(foreign) > 5 else '')
        raise _fail(error, directory, f'it holds files the export did not write ({shown}), not replaced', hint)


def check_free(directory, *, force: bool, error: type[Exception] = OutputFolderError) -> pathlib.Path:
    """Return ``directory`` as an absolute path if a new export may go there; else raise ``error``.

    Free: missing, or an empty folder; with ``force`` also a complete folder of an earlier export (see the module
    documentation). The message names the folder and why it is refused.
    """
    directory = pathlib.Path(directory).absolute()
    if len(os.fsencode(directory.name)) > _NAME_MAX:
        raise _fail(error, directory, f'the name is {len(os.fsencode(directory.name))} bytes long, over {_NAME_MAX}')
    try:
        exists = directory.exists() or directory.is_symlink()
    except OSError as exception:
        raise _fail(error, directory, _os_reason(exception)) from exception
    if not exists:
        for parent in directory.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise _fail(error, directory, f'{parent} is a regular file, not a folder')
                break
        return directory
    if directory.is_dir() and not directory.is_symlink() and not any(directory.iterdir()):
        return directory
    if not force:
        raise _fail(error, directory, 'exists and is not empty', 'choose another folder or use --force (force=True)')
    _check_replaceable(directory, error)
    return directory


def _staging_name(directory: pathlib.Path, suffix: str) -> pathlib.Path:
    name = directory.name
    while len(os.fsencode(f'.{name}.{suffix}.0123456789ab')) > _NAME_MAX:
        name = name[: len(name) // 2]
    return directory.parent / f'.{name}.{suffix}.{secrets.token_hex(6)}'


@contextlib.contextmanager
def staged_folder(
    directory, *, force: bool, error: type[Exception] = OutputFolderError, kind: str = 'export'
) -> Iterator[pathlib.Path]:
    """Yield an empty staging folder next to ``directory``; move it into place when the block succeeds.

    The block writes the files; the marker :data:`MARKER` is written last, then the staging folder is renamed.
    A failure inside the block removes the staging folder and leaves ``directory`` untouched.

    :param kind: what the folder holds (``export``, ``record``, ``colabfit``), recorded in the marker.
    :raises error: if ``directory`` is not free (see :func:`check_free`), or for a failure of the file system
        (read-only place, full disk, name too long, a regular file in the path): the message names the path and
        the reason.
    """
    from aiida_mad import __version__

    directory = check_free(directory, force=force, error=error)
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = _staging_name(directory, 'partial')
        staging.mkdir(mode=0o755)
        staging.chmod(0o755)  # exported folders are meant to be shared, whatever the umask
    except OSError as exception:
        raise _fail(error, directory, _os_reason(exception)) from exception
    old = None
    try:
        try:
            yield staging
            files = sorted(item.name for item in staging.iterdir())
            marker = {
                'kind': kind,
                'time': datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds'),
                'version': __version__,
                'files': files,
            }
            (staging / MARKER).write_text(json.dumps(marker, indent=2) + '\n', encoding='utf-8')
            if directory.exists() or directory.is_symlink():
                if any(directory.iterdir()):
                    _check_replaceable(directory, error)  # again: it may have changed while the files were written
                old = _staging_name(directory, 'old')
                directory.rename(old)
            staging.rename(directory)
        except OSError as exception:
            if old is not None and not directory.exists():
                old.rename(directory)
                old = None
            raise _fail(error, directory, _os_reason(exception)) from exception
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
