"""Codes on AiiDA computers: the environment pw.x needs and an idempotent way to set codes up."""

from __future__ import annotations

import os


def pw_prepend_text(*, as_root: bool | None = None) -> str:
    """Return the prepend text for a ``pw.x`` code.

    One OpenMP thread per MPI rank, since pw.x is run with one rank per core. OpenMPI refuses to start as root
    unless told otherwise, so those variables are added only when the code will run as root.
    """
    if as_root is None:
        as_root = os.geteuid() == 0
    lines = ['export OMP_NUM_THREADS=1']
    if as_root:
        lines += ['export OMPI_ALLOW_RUN_AS_ROOT=1', 'export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1']
    return '\n'.join(lines)


def ensure_installed_code(
    label: str,
    computer,
    filepath_executable: str,
    *,
    default_calc_job_plugin: str | None = None,
    with_mpi: bool = False,
    prepend_text: str = '',
    description: str = '',
):
    """Return ``(code, created)``: the code ``label@computer``, created unless one with that label exists.

    An existing code is returned as is when it points at the same executable; otherwise a ``ValueError`` says so,
    since silently reusing a code that runs something else would break reproducibility.
    """
    from aiida import orm
    from aiida.common.exceptions import NotExistent

    try:
        code = orm.load_code(f'{label}@{computer.label}')
    except NotExistent:
        pass
    else:
        if str(code.filepath_executable) != str(filepath_executable):
            raise ValueError(
                f'code `{label}@{computer.label}` exists but runs `{code.filepath_executable}`, '
                f'not `{filepath_executable}`: relabel or delete it first'
            )
        return code, False

    code = orm.InstalledCode(
        label=label,
        computer=computer,
        filepath_executable=filepath_executable,
        default_calc_job_plugin=default_calc_job_plugin,
        with_mpi=with_mpi,
        prepend_text=prepend_text,
        description=description,
    )
    return code.store(), True


def detect_pw_version(executable: str, *, timeout: float = 60) -> str:
    """Return the version pw.x prints in its header (``'6.7MaX'``), by running it with an empty input.

    Only for executables on this machine; for codes on remote computers declare the version instead.
    """
    import re
    import subprocess
    import tempfile

    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    if os.geteuid() == 0:
        env.update(OMPI_ALLOW_RUN_AS_ROOT='1', OMPI_ALLOW_RUN_AS_ROOT_CONFIRM='1')
    try:
        # pw.x writes a CRASH file into its working directory when the input is empty: keep it out of the user's.
        with tempfile.TemporaryDirectory() as workdir:
            result = subprocess.run(
                [executable],
                input='',
                capture_output=True,
                text=True,
                timeout=timeout,
                env=env,
                check=False,
                cwd=workdir,
            )
    except (OSError, subprocess.TimeoutExpired) as exception:
        raise ValueError(f'could not run `{executable}` to read its version: {exception}') from exception
    match = re.search(r'Program PWSCF v\.?(\S+) starts', result.stdout + result.stderr)
    if not match:
        raise ValueError(f'`{executable}` printed no PWSCF version header: is it pw.x?')
    return match.group(1)
