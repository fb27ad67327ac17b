"""``verdi data mad``: the dataset commands of ``aiida-mad dataset`` that inspect and export, under ``verdi data``."""

import click

from .dataset import dataset_export, dataset_list, dataset_show


@click.group('mad')
def cmd_mad():
    """Inspect and export MAD datasets (`mad.dataset` nodes)."""


cmd_mad.add_command(dataset_list)
cmd_mad.add_command(dataset_show)
cmd_mad.add_command(dataset_export)
