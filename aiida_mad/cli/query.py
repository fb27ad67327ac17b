"""``aiida-mad query``: frames of a dataset by subset, element, split and force; the lineage of one frame."""

import json

import click
from aiida.cmdline.utils import decorators, echo

from . import params


@click.group('query')
def cmd_query():
    """Query datasets and the provenance of their frames."""


@cmd_query.command('frames')
@params.DATASET()
@click.option('--subset', 'subsets', multiple=True, help='Only this subset (repeat for several).')
@click.option('--split', 'splits', multiple=True, type=click.Choice(['train', 'val', 'test']), help='Only this split.')
@click.option('--element', 'elements', multiple=True, help='Frames containing this element (repeat: all of them).')
@click.option('--any-element', is_flag=True, help='Frames containing any, not all, of the --element elements.')
@click.option('--max-force-min', type=float, default=None, help='Largest force magnitude at least this (eV/Å).')
@click.option('--max-force-max', type=float, default=None, help='Largest force magnitude at most this (eV/Å).')
@click.option(
    '--format',
    'fmt',
    type=click.Choice(['table', 'uuids', 'json']),
    default='table',
    show_default=True,
    help='table, source uuids one a line, or JSON rows.',
)
@click.option('--limit', type=click.IntRange(min=0), default=50, show_default=True, help='Rows to print (0: all).')
@click.option(
    '--xyz',
    type=params.types.OutputPathParamType(dir_okay=False),
    default=None,
    help='Also write the frames to this new extended-XYZ file.',
)
@decorators.with_dbenv()
def query_frames_command(
    dataset, subsets, splits, elements, any_element, max_force_min, max_force_max, fmt, limit, xyz
):
    """List the frames of dataset NAME that match every filter."""
    from tabulate import tabulate

    from aiida_mad.cli.dataset import write_error
    from aiida_mad.dataset.extxyz import write_extxyz
    from aiida_mad.query import query_frames

    node = dataset
    try:
        found = query_frames(
            node,
            subsets=subsets,
            splits=splits,
            elements=elements,
            any_element=any_element,
            max_force_min=max_force_min,
            max_force_max=max_force_max,
        )
    except ValueError as exception:
        echo.echo_critical(str(exception))
    if xyz is not None:
        if xyz.exists():
            echo.echo_critical(f'{xyz} exists: choose another file')
        try:
            write_extxyz(found.frames(), xyz)
        except OSError as exception:
            echo.echo_critical(write_error(xyz, exception))
    rows = found.rows()
    shown = rows if limit == 0 else rows[:limit]
    if fmt == 'uuids':
        for row in shown:
            echo.echo(row['source_uuid'])
    elif fmt == 'json':
        echo.echo(json.dumps(shown, indent=1))
    else:
        table = [
            [
                row['source_uuid'],
                row['subset'],
                row['split'],
                row['natoms'],
                f'{row["energy_per_atom"]:.4f}',
                f'{row["max_force"]:.3f}',
            ]
            for row in shown
        ]
        echo.echo(tabulate(table, headers=['Source uuid', 'Subset', 'Split', 'Atoms', 'E/atom (eV)', 'max |F| (eV/Å)']))
    echo.echo_report(
        f'{len(rows)} of {node.n_frames} frame{"s" * (node.n_frames != 1)} match'
        + (f' (showing {len(shown)})' if len(shown) < len(rows) else '')
    )


def describe_generator_info(info: dict) -> str:
    """Return the generator's notes on a structure (its ``mad_info`` extra) in words, or an empty string."""
    parts = []
    if 'miller_index' in info:
        parts.append(f'Miller index ({" ".join(str(index) for index in info["miller_index"])})')
    if 'termination' in info:
        total = info.get('n_terminations')
        parts.append(f'termination {info["termination"]}' + (f' of {total}' if total is not None else ''))
    if 'prototype' in info:
        parts.append(f'prototype {info["prototype"]}')
    if 'substitution' in info:
        parts.append('substitution ' + ', '.join(f'{old}->{new}' for old, new in info['substitution'].items()))
    if 'parent_formula' in info:
        parts.append(f'from {info["parent_formula"]}')
    return ('generator notes: ' + ', '.join(parts)) if parts else ''


@cmd_query.command('lineage')
@click.argument('uuid')
@click.option('--json', 'as_json', is_flag=True, help='Print the lineage as JSON.')
@decorators.with_dbenv()
def query_lineage_command(uuid, as_json):
    """Show where the frame UUID comes from and where it went.

    UUID is a frame's source uuid (the labelled structure) or its DFT work chain: back to the seed structure through
    every generator (with its seed), the DFT work chains and their fingerprint, and forward to the datasets that hold
    the frame and the processes (trainings) that used them.
    """
    from aiida import orm
    from aiida.common.exceptions import MultipleObjectsError, NotExistent

    from aiida_mad.query import lineage

    try:
        result = lineage(uuid)
    except (NotExistent, MultipleObjectsError, ValueError) as exception:
        echo.echo_critical(f'{uuid}: {exception}')
    # What the generator noted about the structure (surface plane and termination, prototype, fragment...).
    result['structure']['info'] = orm.load_node(result['structure']['uuid']).base.extras.get('mad_info', None) or {}
    if as_json:
        echo.echo(json.dumps(result, indent=1, default=str))
        return
    structure, seed = result['structure'], result['seed']
    echo.echo(f'Structure {structure["formula"]}<{structure["pk"]}> {structure["uuid"]} subset {structure["subset"]}')
    notes = describe_generator_info(structure.get('info') or {})
    if notes:
        echo.echo(f'  {notes}')
    for step in result['generation']:
        if 'generator' in step:
            echo.echo(
                f'  made by {step["calculation"]["process_label"]}<{step["calculation"]["pk"]}>: generator '
                f'{step["generator"]}, subset {step["subset"]}, seed {step["seed"]}, index {step["index"]}'
            )
        else:
            echo.echo(f'  made by {step["calculation"]["process_label"]}<{step["calculation"]["pk"]}>')
    echo.echo(f'Seed {seed["formula"]}<{seed["pk"]}> {seed["uuid"]} in {", ".join(seed["groups"]) or "no group"}')
    for entry in result['dft']:
        energy = f', energy {entry["energy"]:.6f} eV' if 'energy' in entry else ''
        echo.echo(
            f'DFT MadDftWorkChain<{entry["pk"]}> {entry["process_state"]} (exit status {entry["exit_status"]}), '
            f'fingerprint {(entry["fingerprint"] or "?")[:16]}{energy}'
        )
    for dataset in result['datasets']:
        echo.echo(f'Dataset {dataset["name"]}<{dataset["pk"]}>: split {dataset["split"]}, subset {dataset["subset"]}')
        for consumer in dataset['consumers']:
            outputs = ', '.join(f'{out["label"]}<{out["pk"]}>' for out in consumer['outputs'])
            echo.echo(f'  used by {consumer["process_label"]}<{consumer["pk"]}> -> {outputs or "no output yet"}')
    if not result['datasets']:
        echo.echo('In no dataset yet.')
