"""``aiida-mad setup``: idempotent setup of codes and the offline pseudopotential family in a profile."""

import os
import pathlib
import shutil
import sys

import click
from aiida.cmdline.params import types as core_types
from aiida.cmdline.utils import decorators, echo

from . import params


@click.group('setup')
def cmd_setup():
    """Set up the codes and pseudopotentials aiida-mad needs in the current profile."""


@cmd_setup.command('localhost')
@params.COMPUTER()
@click.option(
    '--pw-executable',
    type=click.Path(dir_okay=False),
    default=lambda: shutil.which('pw.x') or '/usr/bin/pw.x',
    show_default='pw.x on the PATH',
    help='Absolute path of pw.x.',
)
@click.option(
    '--bin-dir',
    type=click.Path(file_okay=False),
    default=lambda: str(pathlib.Path(sys.executable).parent),
    show_default="this Python's bin folder",
    help='Folder holding the mtt and mace_run_train executables.',
)
@decorators.with_dbenv()
def cmd_setup_localhost(computer, pw_executable, bin_dir):
    """Create codes pw, mtt, mace, aiida-mad-predict on COMPUTER, install the offline PBEsol family; idempotent.

    Also aiida-mad-dos-cnn (mad.dos_cnn). Codes that exist are kept (and checked to point at the same executable);
    nothing is replaced.
    """
    from aiida_mad.codes import detect_pw_version, ensure_installed_code, pw_prepend_text
    from aiida_mad.pseudos import install_offline_family
    from aiida_mad.workflows.dft import CODE_VERSION_EXTRA

    if not os.path.isabs(pw_executable) or not os.access(pw_executable, os.X_OK):
        raise click.BadParameter(f'`{pw_executable}` is not an executable file', param_hint='--pw-executable')

    codes = [
        ('pw', pw_executable, 'quantumespresso.pw', True, pw_prepend_text(), 'Quantum ESPRESSO pw.x'),
        (
            'mtt',
            str(pathlib.Path(bin_dir) / 'mtt'),
            'mad.metatrain',
            False,
            'export OMP_NUM_THREADS=1',
            'metatrain `mtt`',
        ),
        ('mace', str(pathlib.Path(bin_dir) / 'mace_run_train'), 'mad.mace', False, '', 'MACE training'),
        (
            'aiida-mad-predict',
            str(pathlib.Path(bin_dir) / 'aiida-mad-predict'),
            'mad.predict',
            False,
            '',
            'batched prediction with trained models (mad.predict)',
        ),
        (
            'aiida-mad-dos-cnn',
            str(pathlib.Path(bin_dir) / 'aiida-mad-dos-cnn'),
            'mad.dos_cnn',
            False,
            '',
            'bandgap and Fermi-level CNNs on a predicted DOS (mad.dos_cnn)',
        ),
    ]
    changed = False
    cores = os.cpu_count() or 1
    # `verdi presto` configures localhost with one MPI rank per machine; pw.x wants one rank per core.
    if computer.scheduler_type == 'core.direct' and (computer.get_default_mpiprocs_per_machine() or 1) < cores:
        computer.set_default_mpiprocs_per_machine(cores)
        changed = True
        echo.echo_report(f'computer {computer.label}: default MPI ranks per machine set to {cores}')
    for label, executable, plugin, with_mpi, prepend, description in codes:
        if not os.access(executable, os.X_OK):
            echo.echo_warning(f'{label}@{computer.label}: `{executable}` not found, code not created')
            continue
        try:
            code, created = ensure_installed_code(
                label,
                computer,
                executable,
                default_calc_job_plugin=plugin,
                with_mpi=with_mpi,
                prepend_text=prepend,
                description=description,
            )
        except ValueError as exception:
            echo.echo_critical(str(exception))
        changed |= created
        state = 'created' if created else 'exists'
        echo.echo_report(f'code {code.full_label} (pk {code.pk}): {state}')
        if label == 'pw' and not code.base.extras.get(CODE_VERSION_EXTRA, None):
            code.base.extras.set(CODE_VERSION_EXTRA, detect_pw_version(executable))
            changed = True
            echo.echo_report(f'code {code.full_label}: pw.x version {code.base.extras.get(CODE_VERSION_EXTRA)}')

    family, created = install_offline_family()
    changed |= created
    echo.echo_report(f'pseudo family {family.label} ({family.count()} elements): {"created" if created else "exists"}')
    if created:
        echo.echo_warning(f'{family.label} serves offline demos and tests, not production MAD data (use SSSP).')
    echo.echo_success('setup changed something' if changed else 'nothing to do: everything was already set up')


@cmd_setup.command('code-version')
@click.argument('code', type=core_types.CodeParamType(entry_point='quantumespresso.pw'))
@click.argument('version', required=False)
@decorators.with_dbenv()
def cmd_setup_code_version(code, version):
    """Declare the pw.x VERSION that CODE runs (its major version enters the level-of-theory fingerprint).

    Without VERSION, a code on a local computer is run once with an empty input to read the version it prints.
    After every calculation the version pw.x printed is compared with the declared one.
    """
    from aiida_mad.codes import detect_pw_version
    from aiida_mad.fingerprint import code_major_version
    from aiida_mad.workflows.dft import CODE_VERSION_EXTRA

    if version is None:
        if code.computer.transport_type != 'core.local':
            raise click.BadParameter(
                f'`{code.full_label}` runs on a remote computer: give the VERSION, e.g. 7.2', param_hint='VERSION'
            )
        try:
            version = detect_pw_version(str(code.filepath_executable))
        except ValueError as exception:
            echo.echo_critical(str(exception))
    try:
        code_major_version(version)
    except ValueError as exception:
        raise click.BadParameter(str(exception), param_hint='VERSION') from exception
    previous = code.base.extras.get(CODE_VERSION_EXTRA, None)
    code.base.extras.set(CODE_VERSION_EXTRA, version)
    echo.echo_success(f'{code.full_label}: pw.x version {version}' + (f' (was {previous})' if previous else ''))
