"""Output folders that appear whole or not at all: every export that writes a folder goes through here."""

from __future__ import annotations

import contextlib
import pathlib
import shutil
import tempfile
from collections.abc import Iterator

__all__ = ('check_free', 'staged_folder')


def check_free(directory, *, force: bool, error: type[Exception] = FileExistsError) -> pathlib.Path:
    """Return ``directory`` as an absolute path; raise ``error`` if it exists and is not empty, unless ``force``."""
    directory = pathlib.Path(directory).absolute()
    if directory.exists() and not force and (not directory.is_dir() or any(directory.iterdir())):
        raise error(f'{directory} exists and is not empty: choose another folder or use --force (force=True)')
    return directory


@contextlib.contextmanager
def staged_folder(directory, *, force: bool, error: type[Exception] = FileExistsError) -> Iterator[pathlib.Path]:
    """Yield an empty staging folder next to ``directory``; move it into place when the block succeeds.

    A failure inside the block removes the staging folder and leaves ``directory`` untouched.

    :raises error: if ``directory`` exists and is not an empty folder, unless ``force`` (it is then replaced).
    """
    directory = check_free(directory, force=force, error=error)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f'.{directory.name}.', dir=directory.parent))
    try:
        staging.chmod(0o755)  # mkdtemp makes it private; exported folders are meant to be shared
        yield staging
        if directory.exists():
            if directory.is_dir():
                shutil.rmtree(directory)
            else:
                directory.unlink()
        staging.rename(directory)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
