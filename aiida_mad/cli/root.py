"""The root command group of ``aiida-mad``."""

import click
from aiida.cmdline.groups.verdi import VerdiCommandGroup

from . import params


@click.group('aiida-mad', cls=VerdiCommandGroup, context_settings={'help_option_names': ['-h', '--help']})
@params.PROFILE()
def cmd_root():
    """Build MAD-style training sets for universal machine-learning potentials with AiiDA."""
