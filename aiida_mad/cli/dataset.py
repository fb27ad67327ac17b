"""``aiida-mad dataset``: build datasets from labelled groups, inspect them, export them, record and report them.

The same ``list``, ``show`` and ``export`` commands are mounted under ``verdi data mad`` (see :mod:`.data`).
"""

import click
from aiida.cmdline.utils import decorators, echo

from . import params


def write_error(path, exception: OSError) -> str:
    """Return a one-line message for an ``OSError`` met while writing ``path``."""
    where = f' ({exception.filename})' if exception.filename and str(exception.filename) != str(path) else ''
    return f'cannot write {path}: {exception.strerror or exception}{where}'


@click.group('dataset')
def cmd_dataset():
    """Build, inspect and export MAD datasets."""


@cmd_dataset.command('build')
@click.argument('name', type=params.types.DatasetNameParamType())
@click.option('--from', 'groups', multiple=True, required=True, metavar='GROUP', help='Group of DFT results (repeat).')
@click.option('--seed', type=click.IntRange(min=0), default=0, show_default=True, help='Seed of the splits.')
@click.option(
    '--split',
    'fractions',
    type=float,
    nargs=3,
    default=(0.8, 0.1, 0.1),
    show_default=True,
    help='Train, validation and test fractions (per subset); they must sum to 1.',
)
@click.option('--fingerprint', default=None, help='Level of theory to take when the groups mix several.')
@click.option(
    '--outlier-max-force',
    multiple=True,
    type=params.types.SubsetThresholdParamType(),
    metavar='SUBSET=F',
    help='Outlier threshold in eV/Å for a subset (`default` for the others), over those of the protocol.',
)
@click.option('--no-baseline', is_flag=True, help='Build without the isolated-atom baseline.')
@click.option('--with-dos', is_flag=True, help='Store the DOS of every frame (mad-dos results).')
@click.option('--frames-per-shard', type=click.IntRange(min=1), default=10_000, show_default=True)
@decorators.with_dbenv()
def dataset_build(
    name, groups, seed, fractions, fingerprint, outlier_max_force, no_baseline, with_dos, frames_per_shard
):
    """Build dataset NAME from the finished DFT results of the groups (workflow mad.dataset).

    The selection is checked before anything is stored: unknown groups, an empty selection, a mix of levels of
    theory, a missing baseline or an invalid split are refused with the reason.
    """
    from aiida import orm
    from aiida.engine import run_get_node

    from aiida_mad.dataset.splits import validate_fractions
    from aiida_mad.workflows.dataset import DatasetSelectionError, DatasetWorkChain, select_results

    thresholds = dict(outlier_max_force) or None
    try:
        validate_fractions(fractions)
        selection = select_results(
            groups,
            fingerprint=fingerprint,
            outlier_max_force=thresholds,
            baseline=not no_baseline,
            include_dos=with_dos,
        )
    except (DatasetSelectionError, ValueError) as exception:
        echo.echo_critical(str(exception))

    builder = DatasetWorkChain.get_builder()
    builder.name = orm.Str(name)
    builder.groups = orm.List(list(groups))
    builder.seed = orm.Int(seed)
    builder.fractions = orm.List(list(fractions))
    builder.fingerprint = orm.Str(selection.fingerprint)
    if thresholds:
        builder.outlier_max_force = orm.Dict(thresholds)
    builder.baseline = orm.Bool(not no_baseline)
    builder.include_dos = orm.Bool(with_dos)
    builder.frames_per_shard = orm.Int(frames_per_shard)
    _, node = run_get_node(builder)
    if not node.is_finished_ok:
        echo.echo_critical(
            f'{node.process_label}<{node.pk}> failed with exit status {node.exit_status}: {node.exit_message}'
        )
    dataset = node.outputs.dataset
    echo.echo_success(
        f'dataset {dataset.name}<{dataset.pk}>: {dataset.n_frames} frames, fingerprint {dataset.fingerprint[:16]}, '
        f'content hash {dataset.content_hash[:16]}'
    )


@cmd_dataset.command('list')
@decorators.with_dbenv()
def dataset_list():
    """List the datasets: name, pk, frames per split, subsets, fingerprint."""
    from aiida import orm
    from tabulate import tabulate

    from aiida_mad.data.dataset import DatasetData

    query = orm.QueryBuilder().append(
        DatasetData,
        project=[
            'id',
            'attributes.name',
            'attributes.n_frames',
            'attributes.split_counts',
            'attributes.subsets',
            'attributes.fingerprint',
            'ctime',
        ],
        tag='dataset',
    )
    query.order_by({'dataset': 'ctime'})
    rows = [
        [
            name,
            pk,
            frames,
            '/'.join(str(splits[key]) for key in ('train', 'val', 'test')),
            len(subsets),
            fingerprint[:16],
        ]
        for pk, name, frames, splits, subsets, fingerprint, _ in query.iterall()
    ]
    if not rows:
        echo.echo_report('no dataset yet: build one with `aiida-mad dataset build NAME --from GROUP`')
        return
    echo.echo(tabulate(rows, headers=['Name', 'PK', 'Frames', 'Train/val/test', 'Subsets', 'Fingerprint']))


@cmd_dataset.command('show')
@params.DATASET()
@decorators.with_dbenv()
def dataset_show(dataset):
    """Show a dataset: counts per subset and split, exclusions, elements, fingerprint and content hash."""
    from tabulate import tabulate

    from aiida_mad.workflows.dataset import describe_record

    node = dataset
    attributes = node.base.attributes.all
    echo.echo(f'Dataset {node.name}<{node.pk}> (uuid {node.uuid})')
    echo.echo(f'  theory        {node.theory_description}')
    echo.echo(f'  fingerprint   {node.fingerprint}')
    echo.echo(f'  content hash  {node.content_hash}')
    echo.echo(f'  frames        {node.n_frames} ({attributes["n_atoms"]} atoms)')
    echo.echo(f'  seed, split   {attributes["seed"]}, {attributes["fractions"]}')
    echo.echo(f'  elements      {" ".join(node.elements)}')
    echo.echo(f'  baseline      {"isolated atoms of the same fingerprint" if node.atomic_energies else "none"}')
    rows = [[subset, *counts.values(), sum(counts.values())] for subset, counts in node.counts.items()]
    echo.echo('')
    echo.echo(tabulate(rows, headers=['Subset', 'Train', 'Val', 'Test', 'Total']))
    selection = node.selection
    if selection.get('subsets'):
        echo.echo('')
        echo.echo(f'Selection from {", ".join(selection.get("groups", []))}:')
        for line in describe_record(selection['subsets'], selection.get('outlier_max_force', {'default': 10.0})):
            echo.echo(f'  {line}')


@cmd_dataset.command('export')
@params.DATASET()
@params.OUTPUT_DIRECTORY()
@click.option(
    '--format',
    'fmt',
    type=click.Choice(['xyz', 'colabfit']),
    default='xyz',
    show_default=True,
    help='xyz: split files, atomic energies, per-subset AiiDA archives and chemiscope files; colabfit: ColabFit data.',
)
@click.option(
    '--missing-stress',
    type=click.Choice(['nan', 'omit']),
    default='nan',
    show_default=True,
    help='Frames without stress (0D): nine NaN (metatrain masks them) or no REF_stress key (for MACE).',
)
@click.option('--no-archives', is_flag=True, help='Skip the per-subset AiiDA archives.')
@click.option('--no-chemiscope', is_flag=True, help='Skip the chemiscope files.')
@click.option('--author', 'authors', multiple=True, help='ColabFit: an author (repeat; default: the profile user).')
@click.option('--license', 'license_', default=None, help='ColabFit: the license (default CC-BY-4.0).')
@click.option('--description', default=None, help='ColabFit: the description.')
@click.option('--link', 'links', multiple=True, help='ColabFit: a link (repeat).')
@params.FORCE()
@decorators.with_dbenv()
def dataset_export(
    dataset, directory, fmt, missing_stress, no_archives, no_chemiscope, authors, license_, description, links, force
):
    """Write the exports of dataset NAME into the new folder DIRECTORY."""
    from aiida_mad.dataset.frames import FrameError
    from aiida_mad.export.dataset import ExportError, export_dataset

    node = dataset
    metadata = {
        key: value
        for key, value in (
            ('authors', list(authors)),
            ('license', license_),
            ('description', description),
            ('links', list(links)),
        )
        if value
    }
    try:
        written = export_dataset(
            node,
            directory,
            fmt=fmt,
            force=force,
            missing_stress=missing_stress,
            archives=not no_archives,
            chemiscope=not no_chemiscope,
            colabfit_metadata=metadata,
        )
    except (ExportError, FrameError) as exception:
        echo.echo_critical(str(exception))
    except OSError as exception:
        echo.echo_critical(write_error(directory, exception))
    for name, path in written.items():
        echo.echo(f'{path.stat().st_size:>14,d}  {name}')
    echo.echo_success(f'wrote {len(written)} files of dataset {node.name} to {directory}')


def _author(value: str) -> dict:
    name, _, affiliations = value.partition('|')
    return {'name': name.strip(), 'affiliations': [item.strip() for item in affiliations.split(';') if item.strip()]}


def _reference(value: str) -> dict:
    parts = [part.strip() for part in value.split('|')]
    reference = {'type': parts[0], 'citation': parts[1] if len(parts) > 1 else ''}
    for extra in parts[2:]:
        reference['doi' if extra.startswith('10.') else 'url'] = extra
    return reference


@cmd_dataset.command('record')
@params.DATASET()
@params.OUTPUT_DIRECTORY()
@click.option(
    '--metadata',
    'metadata',
    type=params.types.MetadataFileParamType(),
    default=None,
    help='metadata.yml to start from (a YAML mapping).',
)
@click.option('--title', default=None, help='Record title.')
@click.option('--description', default=None, help='Record description.')
@click.option('--keyword', 'keywords', multiple=True, help='A keyword (at least 3 in all).')
@click.option('--author', 'authors', multiple=True, metavar='"NAME|AFFILIATION[;AFFILIATION]"', help='An author.')
@click.option('--license', 'license_', default=None, help='License (default CC-BY-4.0).')
@click.option('--reference', 'references', multiple=True, metavar='"TYPE|CITATION[|DOI or URL]"', help='A reference.')
@click.option(
    '--allow-test-grade',
    is_flag=True,
    help='Write the record of a dataset that is not at a production level of theory (anything but the mad/mad-dos '
    'protocols with an SSSP family); the README and metadata.yml then say it is test grade.',
)
@params.FORCE()
@decorators.with_dbenv()
def dataset_record(
    dataset, directory, metadata, title, description, keywords, authors, license_, references, allow_test_grade, force
):
    """Write the Materials Cloud Archive record folder of dataset NAME into DIRECTORY.

    The folder holds every export (split files, atomic energies, per-subset AiiDA archives, chemiscope files,
    ColabFit zip, HTML report) plus metadata.yml, optimade.yaml and a README, all stating the level of theory in
    words. The metadata and the Archive's size limits (5 GB of files, 50 GB of AiiDA databases) are checked before
    anything is written. A dataset at a test-grade level of theory (e.g. protocol fast, offline pseudopotentials) is
    refused unless --allow-test-grade.
    """
    from aiida_mad.export.dataset import ExportError, write_dataset_record

    node = dataset
    metadata = dict(metadata or {})
    split = ':'.join(f'{100 * fraction:g}' for fraction in node.base.attributes.get('fractions'))
    metadata.setdefault('license', 'CC-BY-4.0')
    metadata.setdefault(
        'description',
        f'Dataset {node.name}: {node.n_frames} structures labelled at one DFT level of theory '
        f'({node.theory_description}; fingerprint {node.fingerprint}), split {split} (train:val:test) per subset, '
        'with the full AiiDA provenance.',
    )
    for key, value in (('title', title), ('description', description), ('license', license_)):
        if value:
            metadata[key] = value
    if keywords:
        metadata['keywords'] = list(keywords)
    if authors:
        metadata['authors'] = [_author(value) for value in authors]
    if references:
        metadata['references'] = [_reference(value) for value in references]
    try:
        written = write_dataset_record(
            node, directory, metadata=metadata, force=force, allow_test_grade=allow_test_grade
        )
    except ExportError as exception:
        echo.echo_critical(str(exception))
    except OSError as exception:
        echo.echo_critical(write_error(directory, exception))
    for name, path in written.items():
        echo.echo(f'{path.stat().st_size:>14,d}  {name}')
    echo.echo_success(f'wrote the record of dataset {node.name} to {directory}')


@cmd_dataset.command('report')
@params.DATASET()
@params.OUTPUT_FILE()
@params.FORCE()
@decorators.with_dbenv()
def dataset_report(dataset, output, force):
    """Write the HTML report of dataset NAME to OUTPUT (elements, histograms, convergence, splits)."""
    from aiida_mad.export.dataset import ExportError, write_dataset_report

    node = dataset
    try:
        path = write_dataset_report(node, output, force=force)
    except ExportError as exception:
        echo.echo_critical(str(exception))
    except OSError as exception:
        echo.echo_critical(write_error(output, exception))
    echo.echo_success(f'wrote the report of dataset {node.name} to {path}')
