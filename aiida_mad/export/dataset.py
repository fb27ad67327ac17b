"""Every export of a ``mad.dataset`` node: the files of ``aiida-mad dataset export``, ``record`` and ``report``.

The pure writers live next to this module (extended XYZ, ColabFit, chemiscope, the record folder, the report);
this module feeds them from the node (shards, index, selection record) and from the provenance graph (the DFT work
chains of the frames, for the per-subset AiiDA archives). Output folders are assembled under a temporary name next
to the target and moved into place at the end, so a failure leaves nothing half-written behind.
"""

from __future__ import annotations

import contextlib
import pathlib
import tempfile
from collections.abc import Mapping, Sequence

import numpy as np

from .folders import MARKER, check_free, staged_folder

__all__ = (
    'ExportError',
    'dataset_metadata_defaults',
    'export_dataset',
    'report_data',
    'write_dataset_record',
    'write_dataset_report',
)

FORMATS = ('xyz', 'colabfit')


class ExportError(ValueError):
    """An export cannot be written; the message says why and nothing was written."""


def dft_workchains_by_subset(dataset) -> dict[str, list[int]]:
    """Return ``{subset: [pks of the MadDftWorkChain nodes]}`` of the frames of ``dataset``, plus ``isolated-atom``.

    ``isolated-atom`` holds the ``IsolatedAtomsWorkChain`` nodes that returned the baseline tables. Each list is
    sorted by uuid. Pks, not nodes: loading 10⁵ ORM nodes costs more than the archives need
    (:func:`aiida_mad.export.archive.export_subset_archives` takes either).
    """
    from aiida import orm

    from .archive import workflow_pks

    index = dataset.index()
    by_subset: dict[str, list] = {}
    for subset in sorted(set(index['subset'].tolist())):
        uuids = sorted(set(index['dft_uuid'][index['subset'] == subset].tolist()) - {''})
        found = workflow_pks(uuids)  # plain values: 10⁵ work chains
        by_subset[subset] = [found[uuid] for uuid in uuids if uuid in found]
    tables = dataset.selection.get('atomic_energies', [])
    if tables:
        query = orm.QueryBuilder()
        query.append(orm.Dict, filters={'uuid': {'in': tables}}, tag='table')
        query.append(
            orm.WorkflowNode, with_outgoing='table', edge_filters={'label': 'energies'}, project=['uuid', 'id']
        )
        by_subset['isolated-atom'] = [pk for _, pk in sorted({(uuid, pk) for uuid, pk in query.all()})]
    return by_subset


def export_dataset(
    dataset,
    directory,
    *,
    fmt: str = 'xyz',
    force: bool = False,
    prefix: str = 'mad',
    missing_stress: str = 'nan',
    archives: bool = True,
    chemiscope: bool = True,
    colabfit_metadata: Mapping | None = None,
    private_data: bool = False,
) -> dict[str, pathlib.Path]:
    """Write the exports of ``dataset`` into the new folder ``directory``.

    ``xyz``: ``<prefix>-train.xyz``, ``-val.xyz``, ``-test.xyz``; ``atomic-energies.csv`` (with a baseline);
    ``<prefix>-<subset>.aiida`` per subset (and ``isolated-atom``); ``<prefix>-<subset>.chemiscope.json.gz``.
    ``colabfit``: the ColabFit data-standard files.

    :param missing_stress: ``'nan'`` (metatrain masks it) or ``'omit'`` (MACE) for frames without stress.
    :param private_data: keep computer setup texts, local paths, submit scripts and emails in the AiiDA archives
        (by default they are scrubbed for publication: :func:`aiida_mad.export.archive.scrub_archive`).
    :return: ``{file name: path}``.
    """
    if fmt not in FORMATS:
        raise ExportError(f'unknown export format {fmt!r}: choose one of {", ".join(FORMATS)}')
    if fmt == 'colabfit':
        from aiida_mad.export.colabfit import ColabfitError, build_colabfit, write_colabfit

        metadata = {**dataset_metadata_defaults(dataset), **(colabfit_metadata or {})}
        try:
            built = build_colabfit(dataset.frames(), metadata)
        except ColabfitError as exception:
            raise ExportError(str(exception)) from None
        with staged_folder(directory, force=force, error=ExportError) as staging:
            written = write_colabfit(built, staging / 'colabfit', force=True)
            for path in written.values():
                path.rename(staging / path.name)
            (staging / 'colabfit' / MARKER).unlink()
            (staging / 'colabfit').rmdir()
            names = sorted(path.name for path in written.values())
        return {name: pathlib.Path(directory).absolute() / name for name in names}

    with staged_folder(directory, force=force, error=ExportError) as staging:
        write_export_files(
            dataset,
            staging,
            prefix=prefix,
            missing_stress=missing_stress,
            archives=archives,
            chemiscope=chemiscope,
            private_data=private_data,
        )
        names = sorted(path.name for path in staging.iterdir())
    return {name: pathlib.Path(directory).absolute() / name for name in names}


def write_export_files(
    dataset,
    folder: pathlib.Path,
    *,
    prefix: str,
    missing_stress: str,
    archives: bool,
    chemiscope: bool,
    private_data: bool = False,
) -> None:
    """Write the ``xyz`` exports of ``dataset`` into the existing, empty ``folder``."""
    from aiida_mad.dataset.atomic_energies import write_atomic_energies_csv

    dataset.write_split_files(folder, prefix=prefix, missing_stress=missing_stress)
    if dataset.atomic_energies:
        write_atomic_energies_csv(
            dataset.atomic_energies, folder / 'atomic-energies.csv', fingerprint=dataset.fingerprint
        )
    if chemiscope:
        from aiida_mad.export.chemiscope import write_chemiscope_per_subset

        write_chemiscope_per_subset(dataset.frames(), folder, name_prefix=prefix)
    if archives:
        from aiida_mad.export.archive import export_subset_archives

        with quiet_archive_logger():
            export_subset_archives(dft_workchains_by_subset(dataset), folder, prefix=prefix, private_data=private_data)


@contextlib.contextmanager
def quiet_archive_logger():
    """Silence aiida-core's archive logger (its parameter tables name temporary paths) for the block.

    The commands print their own summary (files and sizes); warnings and errors of the archive still show.
    """
    import logging

    from aiida.tools.archive.create import EXPORT_LOGGER

    level = EXPORT_LOGGER.level
    EXPORT_LOGGER.setLevel(logging.WARNING)
    try:
        yield
    finally:
        EXPORT_LOGGER.setLevel(level)


def dataset_metadata_defaults(dataset) -> dict:
    """Return ColabFit metadata filled from the dataset and the profile's default user (name only, never the email)."""
    from aiida import orm

    user = orm.User.collection.get_default()
    author = ' '.join(part for part in (user.first_name, user.last_name) if part) if user is not None else ''
    counts = ', '.join(f'{subset} ({sum(splits.values())})' for subset, splits in dataset.counts.items())
    return {
        'name': dataset.name,
        'authors': [author] if author else [],
        'license': 'CC-BY-4.0',
        'description': (
            f'MAD-style dataset {dataset.name}: {dataset.n_frames} structures with energies, forces and stresses '
            f'at one level of theory ({dataset.theory_description}; fingerprint {dataset.fingerprint}); '
            f'subsets: {counts}.'
        ),
        'level_of_theory': dataset.theory_description,
    }


# ----------------------------------------------------------------------------------------------------------------
# Report


def element_count_matrix(index: Mapping[str, np.ndarray]) -> np.ndarray:
    """Return the ``(n_frames, 119)`` atom counts per atomic number from the index's ``numbers`` and ``offsets``."""
    offsets = index['offsets']
    frame_of_atom = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    counts = np.zeros((len(offsets) - 1, 119), dtype=np.int32)
    np.add.at(counts, (frame_of_atom, index['numbers'].astype(np.int64)), 1)
    return counts


def convergence_counts(selection: Mapping) -> dict[str, dict[str, int]]:
    """Return the report's per-subset DFT counts from a dataset's selection record."""
    result = {}
    for subset, counts in selection.get('subsets', {}).items():
        result[subset] = {
            'finished': int(counts.get('used', 0)),
            'outlier': int(counts.get('outlier', 0)),
            'failed': int(counts.get('failed', 0)),
        }
        if counts.get('not_finished'):
            result[subset]['running'] = int(counts['not_finished'])
    return result


def report_data(dataset):
    """Return the :class:`~aiida_mad.export.report.ReportData` of ``dataset`` (from its index, no shard parsing)."""
    from aiida_mad.export.evaluation import dataset_sections as evaluation_sections
    from aiida_mad.export.physicality import dataset_sections
    from aiida_mad.export.report import ReportData

    index = dataset.index()
    baseline = index['energy_baseline_subtracted']
    use_baseline = len(baseline) > 0 and bool(np.isfinite(baseline).all())
    energy = baseline / np.maximum(index['natoms'], 1) if use_baseline else index['energy_per_atom']
    evaluations = evaluation_sections(dataset)
    return ReportData(
        name=dataset.name,
        subset=index['subset'],
        split=index['split'],
        natoms=index['natoms'],
        energy_per_atom=energy,
        max_force=index['max_force'],
        element_counts=element_count_matrix(index),
        fingerprint=dataset.fingerprint,
        level_of_theory=dataset.theory_description,
        test_grade=not dataset.theory.get('production', False),
        convergence=convergence_counts(dataset.selection),
        energy_label='energy per atom minus the isolated atoms' if use_baseline else 'energy per atom',
        sections=[*evaluations, *dataset_sections(dataset, first_number=6 + len(evaluations))],
    )


def write_dataset_report(dataset, path, *, force: bool = False) -> pathlib.Path:
    """Write the HTML report of ``dataset`` to ``path`` (refused if it exists, unless ``force``)."""
    from aiida_mad.export.report import render_report

    path = pathlib.Path(path).absolute()
    if path.exists() and not force:
        raise ExportError(f'{path} exists: choose another file or use --force')
    if not path.parent.is_dir():
        raise ExportError(f'the folder of {path} does not exist')
    text = render_report(report_data(dataset))
    partial = path.with_name(f'.{path.name}.partial')
    try:
        partial.write_text(text, encoding='utf-8')
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return path


# ----------------------------------------------------------------------------------------------------------------
# Materials Cloud record


def write_dataset_record(
    dataset,
    directory,
    *,
    metadata: Mapping,
    force: bool = False,
    prefix: str = 'mad',
    file_limit: int | None = None,
    aiida_limit: int | None = None,
    extra_files: Sequence | None = None,
    allow_test_grade: bool = False,
) -> dict[str, pathlib.Path]:
    """Write the Materials Cloud Archive record folder of ``dataset``.

    A dataset whose level of theory is not production grade (the ``mad``/``mad-dos`` protocols with an SSSP
    family, :func:`aiida_mad.fingerprint.is_production`) is refused unless ``allow_test_grade``; its record then says
    so in the README and ``metadata.yml``.

    The record holds the ``xyz`` exports (split files, atomic energies, per-subset AiiDA archives, chemiscope files),
    the ColabFit files as a zip, the HTML report, ``metadata.yml``, ``optimade.yaml`` (with the OPTIMADE structure
    files it serves) and a README describing every file. The metadata and the Archive's size limits are checked
    before anything is written.
    """
    from aiida_mad.export import record as record_module
    from aiida_mad.export.colabfit import ColabfitError, build_colabfit, write_colabfit

    try:
        checked = record_module.validate_metadata(metadata)
    except record_module.RecordError as exception:
        raise ExportError(str(exception)) from None
    production = bool(dataset.theory.get('production', False))
    if not production and not allow_test_grade:
        raise ExportError(
            f'dataset {dataset.name} is not at a production level of theory ({dataset.theory_description}): a record '
            'is for publication; pass --allow-test-grade to write it anyway (the record then says it is test grade)'
        )
    directory = check_free(directory, force=force, error=ExportError)
    limits = {}
    if file_limit is not None:
        limits['file_limit'] = file_limit
    if aiida_limit is not None:
        limits['aiida_limit'] = aiida_limit
    frames = dataset.frames()
    authors = [author.get('name') or f'{author["givennames"]} {author["familyname"]}' for author in checked['authors']]
    colabfit_metadata = {
        'name': dataset.name,
        'authors': authors,
        'license': checked['license'],
        'description': checked['description'],
        'links': [reference['url'] for reference in checked['references'] if 'url' in reference],
        'level_of_theory': dataset.theory_description,
    }
    with tempfile.TemporaryDirectory(
        prefix='mad-record-', dir=directory.parent if directory.parent.exists() else None
    ) as scratch:
        scratch = pathlib.Path(scratch)
        write_export_files(dataset, scratch, prefix=prefix, missing_stress='nan', archives=True, chemiscope=True)
        try:
            write_colabfit(build_colabfit(frames, colabfit_metadata), scratch / f'{prefix}-colabfit.zip', force=True)
        except ColabfitError as exception:
            raise ExportError(str(exception)) from None
        write_dataset_report(dataset, scratch / f'{prefix}.report.html')
        files = {path.name: path for path in sorted(scratch.iterdir())}
        for extra in extra_files or ():
            extra = pathlib.Path(extra)
            files[extra.name] = extra
        try:
            return record_module.write_record(
                directory,
                metadata=checked,
                files=files,
                frames=frames,
                force=force,
                link=True,
                fractions=dataset.base.attributes.get('fractions', None),
                level_of_theory=dataset.theory_description,
                test_grade=not production,
                **limits,
            )
        except record_module.RecordError as exception:
            raise ExportError(str(exception)) from None
