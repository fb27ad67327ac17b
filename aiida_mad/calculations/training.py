"""What the training CalcJobs (``mad.metatrain``, ``mad.mace``) and ``mad.predict`` share.

The two training calculations have the same exit codes (same numbers and meanings, the program's name in the
messages: :func:`define_training_exit_codes`), so that one set of work chain handlers (``workflows/training.py``)
serves both; the same checks of a dataset's splits and of a settings dictionary; and the same way of building the
calculation info of one code.
"""

from __future__ import annotations

from aiida.common import CalcInfo, CodeInfo

__all__ = (
    'STOPPED_EARLY_STATUSES',
    'UNRECOVERABLE_STATUSES',
    'calculation_info',
    'check_training_splits',
    'checked_keys',
    'define_training_exit_codes',
    'set_option_defaults',
)

#: Exit statuses of a training that stopped early and may leave a checkpoint to continue from: walltime (400),
#: interrupted (420), and the scheduler's out-of-walltime (120) and node failure (140).
STOPPED_EARLY_STATUSES = (400, 420, 120, 140)
#: Exit statuses of a training that would fail the same way again: missing files (301), refused options (302),
#: unreadable metrics (303), import error (310), NaN loss (320), failed (350), out of memory (410).
UNRECOVERABLE_STATUSES = (301, 302, 303, 310, 320, 350, 410)


def checked_keys(values: dict | None, defaults: dict, what: str) -> dict:
    """Return ``values`` merged over ``defaults``, after refusing keys that ``defaults`` lacks.

    :param what: the name of the input, for the message (``settings``, ``parameters``).
    :raises ValueError: naming the unknown keys and the allowed ones.
    """
    values = dict(values or {})
    unknown = sorted(set(values) - set(defaults))
    if unknown:
        raise ValueError(f'unknown {what} key(s) {unknown}: allowed are {sorted(defaults)}')
    return {**defaults, **values}


def check_training_splits(dataset, program: str) -> None:
    """Check that ``dataset`` has training and validation frames.

    :param program: the training program, for the message.
    :raises ValueError: naming the dataset and the split it lacks.
    """
    attributes = dataset.base.attributes.all
    counts = attributes.get('split_counts') or {}
    for split, what in (('train', 'training'), ('val', 'validation')):
        if not counts.get(split):
            raise ValueError(
                f'dataset {attributes.get("name")} (pk {dataset.pk}) has no {what} frames (split counts {counts}): '
                f'{program} needs both'
            )


def set_option_defaults(spec, parser: str, output_filename: str) -> None:
    """Set the ``metadata.options`` defaults of a one-rank calculation: parser, one machine, no MPI, stdout file."""
    options = spec.inputs['metadata']['options']
    options['parser_name'].default = parser
    options['resources'].default = {'num_machines': 1, 'num_mpiprocs_per_machine': 1}
    options['withmpi'].default = False
    options['output_filename'].default = output_filename


def define_training_exit_codes(spec, program: str, import_failure: str) -> None:
    """Define the exit codes of a training calculation (301-350 failures, 400-420 stopped early).

    :param program: the training command, for the messages (``mtt train``, ``mace_run_train``).
    :param import_failure: the message of ``ERROR_ARCHITECTURE_IMPORT`` (before ``: {message}``).
    """
    spec.exit_code(
        301,
        'ERROR_MISSING_OUTPUT_FILES',
        message=f'{program} finished without writing {{files}}.',
        invalidates_cache=True,
    )
    spec.exit_code(302, 'ERROR_INVALID_OPTIONS', message=f'{program} refused the options: {{message}}')
    spec.exit_code(303, 'ERROR_READING_METRICS', message='could not read the metrics: {message}')
    spec.exit_code(310, 'ERROR_ARCHITECTURE_IMPORT', message=f'{import_failure}: {{message}}')
    spec.exit_code(320, 'ERROR_NAN_LOSS', message='the loss became NaN (epoch {epoch}): {message}')
    spec.exit_code(350, 'ERROR_TRAINING_FAILED', message=f'{program} failed: {{message}}')
    spec.exit_code(
        400,
        'ERROR_OUT_OF_WALLTIME',
        message='walltime reached after epoch {epoch}; restart from checkpoint {checkpoint}',
        invalidates_cache=True,
    )
    spec.exit_code(
        410,
        'ERROR_OUT_OF_MEMORY',
        message='out of memory: {message}; checkpoint {checkpoint}',
        invalidates_cache=True,
    )
    spec.exit_code(
        420,
        'ERROR_TRAINING_INTERRUPTED',
        message=f'{program} stopped after epoch {{epoch}} without an error (killed or node failure); '
        'restart from checkpoint {checkpoint}',
        invalidates_cache=True,
    )


def calculation_info(
    calculation,
    cmdline: list[str],
    *,
    stderr: str | None = None,
    local_copy_list: list | None = None,
    retrieve_list: list | None = None,
    retrieve_temporary_list: list | None = None,
) -> CalcInfo:
    """Return the ``CalcInfo`` of a calculation that runs its one code with ``cmdline``, stdout to its output file."""
    codeinfo = CodeInfo()
    codeinfo.code_uuid = calculation.inputs.code.uuid
    codeinfo.cmdline_params = cmdline
    codeinfo.stdout_name = calculation.metadata.options.output_filename
    if stderr is not None:
        codeinfo.stderr_name = stderr
    calcinfo = CalcInfo()
    calcinfo.codes_info = [codeinfo]
    calcinfo.local_copy_list = local_copy_list or []
    calcinfo.retrieve_list = retrieve_list or []
    calcinfo.retrieve_temporary_list = retrieve_temporary_list or []
    return calcinfo
