"""The shared ``main()`` of the AiiDA-free console scripts that CalcJobs run on the compute node (pure: no AiiDA).

Each such script, ``aiida-mad-<name>`` (``aiida-mad-predict``, ``aiida-mad-benchmark``, ``aiida-mad-dos-cnn``),
takes one argument, the JSON configuration ``<name>.json`` that its CalcJob ``mad.<name>`` wrote, runs on the files
next to it and prints a summary; bad input (a ``ValueError`` of the run) exits with status 2 and the reason on
standard error, prefixed with the script's name. :func:`run_script` is that ``main()``::

    def main(argv=None) -> int:
        return run_script('benchmark', argv, doc=__doc__, run=run, summary=summary)
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Callable, Sequence

__all__ = ('BAD_INPUT', 'run_script')

#: The exit status for bad input.
BAD_INPUT = 2


def run_script(
    name: str,
    argv: Sequence[str] | None,
    *,
    doc: str,
    run: Callable[[dict, pathlib.Path], dict],
    summary: Callable[[dict], str],
) -> int:
    """Parse ``argv``, run ``run(configuration, its folder)`` and print ``summary(result)``; return the exit status.

    :param name: the script is ``aiida-mad-<name>``; its configuration ``<name>.json``, written by ``mad.<name>``
        (``-`` as ``_``).
    :param argv: the arguments (``None``: those of the command line).
    :param doc: the script module's docstring: its first line describes the script in ``--help``.
    :param run: runs the configuration, with paths relative to the configuration's folder, and returns its result;
        raises ``ValueError`` for bad input.
    :param summary: the line (or lines) printed after a successful run.
    :return: 0, or :data:`BAD_INPUT` when ``run`` raised a ``ValueError`` (the reason printed on standard error).
    """
    prog = f'aiida-mad-{name}'
    parser = argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0])
    parser.add_argument('config', type=pathlib.Path, help=f'the {name}.json written by mad.{name.replace("-", "_")}')
    args = parser.parse_args(argv)
    configuration = json.loads(args.config.read_text())
    try:
        result = run(configuration, args.config.resolve().parent)
    except ValueError as exception:
        print(f'{prog}: {exception}', file=sys.stderr)
        return BAD_INPUT
    print(summary(result))
    return 0
