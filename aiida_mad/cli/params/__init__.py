"""Options, arguments and parameter types of the ``aiida-mad`` commands (``params.PW_CODE()``, ``params.DATASET()``).

The types load and check what a command works on (pseudopotential families with the ``offline`` alias, codes,
groups, datasets, output paths, metadata files) and never create anything, so that the commands stay thin.
"""

from . import arguments, options, types
from .arguments import DATASET, OUTPUT_DIRECTORY, OUTPUT_FILE, STRUCTURE_GROUP
from .options import (
    COMPUTER,
    FORCE,
    PROCESS_GROUP,
    PROFILE,
    PSEUDO_FAMILY,
    PW_CODE,
    STRUCTURE_GROUP_LABEL,
    TIMEOUT,
)

__all__ = (
    'COMPUTER',
    'DATASET',
    'FORCE',
    'OUTPUT_DIRECTORY',
    'OUTPUT_FILE',
    'PROCESS_GROUP',
    'PROFILE',
    'PSEUDO_FAMILY',
    'PW_CODE',
    'STRUCTURE_GROUP',
    'STRUCTURE_GROUP_LABEL',
    'TIMEOUT',
    'arguments',
    'options',
    'types',
)
