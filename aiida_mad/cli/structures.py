"""``aiida-mad structures``: store the bundled seeds, import structures, generate subsets and list their groups."""

from __future__ import annotations

import re

import click
from aiida.cmdline.params import options as core_options
from aiida.cmdline.utils import decorators, echo

from aiida_mad.constants import ALL_SUBSETS, GENERATED_SUBSETS
from aiida_mad.structures.registry import DEFAULT_BATCH_SIZE, DEFAULT_MIN_DISTANCE_FACTOR, MAX_BATCH_SIZE

from . import params

#: Sources of ``aiida-mad structures seeds``; kept here so that ``--help`` needs no heavy import.
SEED_SOURCES = ('bulk', '2d', 'molcrys', 'molecules', 'prototypes')

#: At most this many skipped or refused structures are listed one by one.
MAX_LISTED = 10

ELEMENT_POOL = core_options.OverridableOption(
    '-e',
    '--element-pool',
    'element_pool',
    multiple=True,
    help='Restrict the element pool to these elements (repeat the option or separate symbols by commas); '
    'default: the 85 MAD elements.',
)


def _shorten(text: str, width: int = 300) -> str:
    """Return ``text`` cut to ``width`` characters: a collapsed structure can have hundreds of close pairs."""
    return text if len(text) <= width else text[: width - 3] + '...'


def _parse_element_pool(values: tuple[str, ...]) -> list[str] | None:
    """Return the symbols of repeated, comma- or space-separated ``--element-pool`` values, or ``None``."""
    symbols = [symbol for value in values for symbol in re.split(r'[,\s]+', value) if symbol]
    return symbols or None


def _validated_pool(values: tuple[str, ...], family) -> tuple[list[str] | None, list[str] | None]:
    """Return ``(element_pool, available_elements)`` of the options, raising ``click.BadParameter`` naming bad ones."""
    from aiida_mad.structures.elements import element_pool

    pool = _parse_element_pool(values)
    available = family.elements if family is not None else None
    try:
        element_pool(available, include=pool)
    except ValueError as exception:
        hint = '--element-pool' if pool is not None else '--pseudo-family'
        raise click.BadParameter(str(exception), param_hint=hint) from exception
    return pool, available


def labelling_family(family):
    """Return ``(family, why)``: the family the labelling will use, to intersect the element pool with.

    The one given with -F; else the default protocol's family if installed; else the offline family if installed;
    else ``None`` (no family installed: the pool is not restricted).
    """
    from aiida_pseudo.groups.family import PseudoPotentialFamily

    from aiida_mad.pseudos import offline_family_label
    from aiida_mad.workflows.dft import MadDftWorkChain

    if family is not None:
        return family, 'given with -F'
    default = MadDftWorkChain.get_protocol_inputs()['pseudo_family']
    for label, why in ((default, "the default protocol's"), (offline_family_label(), 'the offline family')):
        found = PseudoPotentialFamily.collection.find(filters={'label': label})
        if found:
            return found[0], why
    return None, None


@click.group('structures')
def cmd_structures():
    """Store seeds, import structures and generate the MAD and MP-ALOE subsets into groups."""


@cmd_structures.command('seeds')
@click.option(
    '-s',
    '--source',
    'sources',
    type=click.Choice(SEED_SOURCES),
    multiple=True,
    help='Store only these sources (repeatable); default: all.',
)
@click.option(
    '--subsets/--no-subsets',
    default=True,
    show_default=True,
    help='Also put the bulk, 2d and molcrys seeds in the mc3d, mc2d and shiftml-molcrys groups.',
)
@decorators.with_dbenv()
def cmd_structures_seeds(sources, subsets):
    """Store the bundled seed structures in mad/seeds/<source>; a second run stores nothing.

    Sources: bulk crystals, a 2D crystal, a molecular crystal, molecules (built in code from ASE) and the MP-ALOE
    prototypes (pymatgen's AFLOW library, 2-8 atoms, at most 3 species; the default parents of mp-aloe).
    """
    from aiida_mad.constants import seed_group_label
    from aiida_mad.storage import store_seeds

    result = store_seeds(sources or None, subsets=subsets)
    for source, (stored, existing) in result.items():
        echo.echo_report(f'{seed_group_label(source)}: {stored} stored, {existing} already there')
    echo.echo_success(f'{sum(stored for stored, _ in result.values())} seed structure(s) stored')


@cmd_structures.command('import')
@click.argument('files', nargs=-1, type=click.Path(dir_okay=False, path_type=str))
@click.option(
    '-S', '--subset', type=click.Choice(ALL_SUBSETS), required=True, help='The subset the structures belong to.'
)
@params.STRUCTURE_GROUP_LABEL(help='Group to put them in; default: mad/structures/<subset>.')
@click.option('--format', 'file_format', help='ase.io format of the FILES; default: guessed per file.')
@click.option('--ase-db', type=click.Path(dir_okay=False, path_type=str), help='Import the rows of an ASE database.')
@click.option('--select', 'selection', help='ASE selection of the database rows, e.g. "natoms<20,subset=mc3d".')
@click.option('--optimade', 'optimade_url', help='Import from this OPTIMADE provider (base URL).')
@click.option('--filter', 'optimade_filter', help='OPTIMADE filter, e.g. \'elements HAS ALL "Si" AND nsites<=8\'.')
@click.option('--max-structures', type=click.IntRange(min=1), help='Stop after this many OPTIMADE structures.')
@click.option('--page-limit', type=click.IntRange(min=1), default=100, show_default=True, help='OPTIMADE page size.')
@decorators.with_dbenv()
def cmd_structures_import(
    files,
    subset,
    group_label,
    file_format,
    ase_db,
    selection,
    optimade_url,
    optimade_filter,
    max_structures,
    page_limit,
):
    """Import structures from FILES (CIF, POSCAR, extended XYZ, ...), an ASE database or an OPTIMADE provider.

    Everything is read and checked before anything is stored. A file or database row that cannot be read or is
    implausible fails the whole import; OPTIMADE entries that are disordered or implausible are skipped and listed.
    Structures imported before (same file content and frame, database row, or provider entry) are not stored again.
    """
    from aiida_mad.storage import store_imported_structures
    from aiida_mad.structures.importers import OptimadeClient, read_ase_db, read_structure_files
    from aiida_mad.structures.registry import GenerationError

    given = [name for name, value in (('FILES', files), ('--ase-db', ase_db), ('--optimade', optimade_url)) if value]
    if len(given) != 1:
        what = 'none was given' if not given else f'got {" and ".join(given)}'
        raise click.BadParameter(f'give exactly one source: FILES, --ase-db or --optimade; {what}', param_hint='source')
    if selection is not None and not ase_db:
        raise click.BadParameter('--select only applies to --ase-db', param_hint='--select')
    if (optimade_filter is not None or max_structures is not None) and not optimade_url:
        raise click.BadParameter('--filter and --max-structures only apply to --optimade', param_hint='--filter')
    if file_format is not None and not files:
        raise click.BadParameter('--format only applies to FILES', param_hint='--format')

    skipped = []
    try:
        if files:
            imported = read_structure_files(files, format=file_format)
        elif ase_db:
            imported = read_ase_db(ase_db, selection=selection)
        else:
            from rich.console import Console

            client = OptimadeClient(optimade_url, page_limit=page_limit, max_structures=max_structures)
            with Console(stderr=True).status(f'fetching structures from {client.base_url}'):
                # Every page is fetched before anything is stored, so a failing page leaves nothing behind.
                imported = list(client.fetch(optimade_filter))
            skipped = [(entry.url, entry.reason) for entry in client.skipped]
    # StructureImportError (OptimadeError included) names the file, row, URL or filter; a plain ValueError comes from
    # the argument checks of OptimadeClient. Both are ValueErrors.
    except ValueError as exception:
        echo.echo_critical(str(exception))

    if not imported:
        echo.echo_critical(f'nothing to import: {"every entry was skipped" if skipped else "no structures found"}')
    try:
        result = store_imported_structures(
            imported, subset=subset, group_label=group_label, skip_implausible=bool(optimade_url)
        )
    except GenerationError as exception:
        echo.echo_critical(str(exception))

    skipped.extend((item, '; '.join(reasons)) for item, reasons in result.refused)
    for item, reason in skipped[:MAX_LISTED]:
        echo.echo_warning(f'skipped {item}: {_shorten(reason)}')
    if len(skipped) > MAX_LISTED:
        echo.echo_warning(f'... and {len(skipped) - MAX_LISTED} more skipped')
    echo.echo_success(
        f'{len(result.stored)} structure(s) imported into {result.group_label} '
        f'({result.existing} already there, {len(skipped)} skipped)'
    )


@cmd_structures.command('generate')
@click.argument('subset', type=click.Choice(GENERATED_SUBSETS))
@click.option(
    '-f',
    '--from',
    'parent_groups',
    multiple=True,
    type=params.types.StructureGroupParamType(),
    help='Group of parent structures (repeatable). Default: mad/structures/mc3d (mc3d-cluster also mc3d-rattled, '
    'shiftml-molfrags: shiftml-molcrys, mp-aloe: mad/seeds/prototypes).',
)
@click.option(
    '-n',
    '--count',
    type=click.IntRange(min=1),
    help='Structures to have in the group (for shiftml-molfrags: parent crystals to fragment, default all).',
)
@click.option('-s', '--seed', type=click.IntRange(min=0), default=0, show_default=True, help='Random seed.')
@ELEMENT_POOL()
@params.PSEUDO_FAMILY(
    help='Intersect the element pool with the elements of the family the labelling will use (default: the default '
    "protocol's family, SSSP/1.2/PBEsol/efficiency, if installed, else the offline family if installed)."
)
@click.option(
    '--batch-size',
    type=click.IntRange(1, MAX_BATCH_SIZE),
    default=DEFAULT_BATCH_SIZE,
    show_default=True,
    help='Structures per calcfunction call; does not change the structures.',
)
@click.option('--max-attempts', type=click.IntRange(min=1), help='Draws per structure before it is refused.')
@click.option(
    '--min-distance-factor',
    type=click.FloatRange(min=0),
    default=DEFAULT_MIN_DISTANCE_FACTOR,
    show_default=True,
    help='Refuse structures with a pair closer than this times the sum of covalent radii.',
)
@params.STRUCTURE_GROUP_LABEL(help='Target group; default: mad/structures/<SUBSET>.')
@decorators.with_dbenv()
def cmd_structures_generate(
    subset,
    parent_groups,
    count,
    seed,
    element_pool,
    pseudo_family,
    batch_size,
    max_attempts,
    min_distance_factor,
    group_label,
):
    """Generate structures of SUBSET from parent structures, with provenance, into mad/structures/SUBSET.

    Every structure comes out of a calcfunction whose inputs are its parent and a Dict with the parameters and the
    seed. The same command run twice adds nothing the second time; a larger --count with the same seed adds the
    missing structures. Draws refused by the plausibility checks are retried, then replaced by further draws.
    """
    import sys

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from aiida_mad.structures.elements import element_pool as resolve_pool
    from aiida_mad.structures.registry import GenerationError
    from aiida_mad.workflows.generate import StructureGeneration

    from .dft import ProgressLines

    pseudo_family, why = labelling_family(pseudo_family)
    pool, available = _validated_pool(element_pool, pseudo_family)
    if pseudo_family is None:
        echo.echo_warning(
            'no pseudopotential family installed: the element pool is not restricted to one; run '
            '`aiida-mad setup localhost` (offline family) or install SSSP before labelling'
        )
    else:
        size = len(resolve_pool(available, include=pool))
        echo.echo_report(
            f'element pool: {size} element{"s" * (size != 1)}, those of {pseudo_family.label} ({why}) '
            + ('among --element-pool' if pool is not None else 'among the MAD elements')
        )
    try:
        generation = StructureGeneration(
            subset,
            parent_groups=[group.label for group in parent_groups] or None,
            count=count,
            seed=seed,
            element_pool=pool,
            available_elements=available,
            min_distance_factor=min_distance_factor,
            max_attempts=max_attempts,
            batch_size=batch_size,
            group_label=group_label,
        )
    except GenerationError as exception:
        echo.echo_critical(str(exception))

    echo.echo_report(
        f'{subset}: {generation.target} item(s) from {len(generation.candidates)} eligible parent(s), seed {seed}'
    )
    if sys.stdout.isatty():
        columns = (TextColumn('{task.description}'), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns) as bar:
            task = bar.add_task(subset, total=generation.target)

            def advance(progress):
                bar.update(task, completed=progress.done, description=f'{subset} ({progress.refused} refused)')

            progress = generation.run(advance)
    else:
        # Not a terminal (a log, a pipe): a line at most every 10 seconds, whatever the batch size.
        lines = ProgressLines(interval=10)

        def advance(progress):
            lines.update(
                f'{subset}: {progress.done}/{generation.target} stored ({progress.refused} refused)', force=False
            )

        progress = generation.run(advance)

    for example in progress.examples[:MAX_LISTED]:
        echo.echo_warning(f'refused {_shorten(example)}')
    summary = generation.summary(progress)
    if progress.done < generation.target and not generation.generator.per_parent:
        echo.echo_warning(f'{summary}: too many refusals, stopped early')
    else:
        echo.echo_success(summary)


@cmd_structures.command('list')
@decorators.with_dbenv()
def cmd_structures_list():
    """List the seed and structure groups with their subset and number of structures."""
    from tabulate import tabulate

    from aiida_mad.storage import list_structure_groups

    rows = list_structure_groups()
    if not rows:
        echo.echo_report('no mad/seeds or mad/structures groups yet: run `aiida-mad structures seeds` or import')
        return
    echo.echo(tabulate(rows, headers=['group', 'subset', 'structures']))
