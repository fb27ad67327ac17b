"""The shared ``main()`` of the AiiDA-free console scripts that CalcJobs run on the compute node (pure: no AiiDA).

Each such script (``aiida-mad-benchmark``, ``aiida-mad-dos-cnn``) takes one argument, the JSON configuration that its
CalcJob wrote, runs on the files next to it and prints a summary line; bad input (a ``ValueError`` of the run) exits
with status 2 and the reason on standard error, prefixed with the script's name. :func:`run_script` is that
``main()``::

    def main(argv=None) -> int:
        return run_script(argv, prog='aiida-mad-x', doc=__doc__, config='the x.json written by mad.x', run=run,
                          summary=lambda info: f'{info["n"]} done')
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
    argv: Sequence[str] | None,
    *,
    prog: str,
    doc: str,
    config: str,
    run: Callable[[dict, pathlib.Path], dict],
    summary: Callable[[dict], str],
) -> int:
    """Parse ``argv``, run ``run(configuration, its folder)`` and print ``summary(result)``; return the exit status.

    :param argv: the arguments (``None``: those of the command line).
    :param prog: the script's name, in the usage and before each error.
    :param doc: the script module's docstring: its first line describes the script in ``--help``.
    :param config: the help of the configuration argument.
    :param run: runs the configuration, with paths relative to the configuration's folder, and returns its result;
        raises ``ValueError`` for bad input.
    :param summary: the line (or lines) printed after a successful run.
    :return: 0, or :data:`BAD_INPUT` when ``run`` raised a ``ValueError`` (the reason printed on standard error).
    """
    parser = argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0])
    parser.add_argument('config', type=pathlib.Path, help=config)
    args = parser.parse_args(argv)
    configuration = json.loads(args.config.read_text())
    try:
        result = run(configuration, args.config.resolve().parent)
    except ValueError as exception:
        print(f'{prog}: {exception}', file=sys.stderr)
        return BAD_INPUT
    print(summary(result))
    return 0
