"""Reusable arguments of the ``aiida-mad`` commands."""

from aiida.cmdline.params.arguments.overridable import OverridableArgument

from . import types

__all__ = ('DATASET', 'OUTPUT_DIRECTORY', 'OUTPUT_FILE', 'STRUCTURE_GROUP')

STRUCTURE_GROUP = OverridableArgument('group', type=types.StructureGroupParamType())

DATASET = OverridableArgument('dataset', metavar='NAME', type=types.DatasetParamType())

OUTPUT_DIRECTORY = OverridableArgument('directory', type=types.OutputPathParamType(file_okay=False))

OUTPUT_FILE = OverridableArgument('output', type=types.OutputPathParamType(dir_okay=False))
