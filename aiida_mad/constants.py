"""Names and numbers that several parts of aiida-mad share: group labels, subsets, splits, sizes, process types.

Pure (no AiiDA import), so that every layer can import it. A value that only one module uses stays in that module.

Process types: a process whose class (or calcfunction) is registered under an entry point is stored with the
process type ``<group>:<entry point name>`` (e.g. ``aiida.workflows:mad.dft``), so queries match those strings and
never a label or a module path. ``tests/test_entry_points.py`` checks that every process of the package has one.
"""

from __future__ import annotations

__all__ = (
    'ALL_SUBSETS',
    'DATASETS_GROUP_PREFIX',
    'DEFAULT_FRACTIONS',
    'DFT_GROUP_PREFIX',
    'FRAMES_PER_SHARD',
    'GENERATED_SUBSETS',
    'IMPORTED_SUBSETS',
    'ISOLATED_ATOM_SUBSET',
    'MODELS_GROUP_PREFIX',
    'PROCESS_ENTRY_POINTS',
    'PROCESS_TYPES',
    'QUERY_CHUNK_SIZE',
    'SEEDS_GROUP_PREFIX',
    'SPLITS',
    'STRUCTURES_GROUP_PREFIX',
    'dataset_group_label',
    'dft_group_label',
    'model_group_label',
    'process_type',
    'seed_group_label',
    'structure_group_label',
)

# -- groups (``aiida.tools.groups.GroupPath`` paths, without the trailing slash) ----------------------------------

#: Bundled seed structures, by source: ``mad/seeds/<source>``.
SEEDS_GROUP_PREFIX = 'mad/seeds'
#: Structures of a subset, imported or generated: ``mad/structures/<subset>``.
STRUCTURES_GROUP_PREFIX = 'mad/structures'
#: DFT work chains of a subset: ``mad/dft/<subset>``.
DFT_GROUP_PREFIX = 'mad/dft'
#: Datasets, one group per name: ``mad/datasets/<name>``.
DATASETS_GROUP_PREFIX = 'mad/datasets'
#: Trained models: ``mad/models/<name>``.
MODELS_GROUP_PREFIX = 'mad/models'


def seed_group_label(source: str) -> str:
    """Return ``mad/seeds/<source>``."""
    return f'{SEEDS_GROUP_PREFIX}/{source}'


def structure_group_label(subset: str) -> str:
    """Return ``mad/structures/<subset>``."""
    return f'{STRUCTURES_GROUP_PREFIX}/{subset}'


def dft_group_label(subset: str) -> str:
    """Return ``mad/dft/<subset>``."""
    return f'{DFT_GROUP_PREFIX}/{subset}'


def dataset_group_label(name: str) -> str:
    """Return ``mad/datasets/<name>``."""
    return f'{DATASETS_GROUP_PREFIX}/{name}'


def model_group_label(name: str) -> str:
    """Return ``mad/models/<name>``."""
    return f'{MODELS_GROUP_PREFIX}/{name}'


# -- subsets ------------------------------------------------------------------------------------------------------

#: Subsets whose structures are imported (files, ASE databases, OPTIMADE) or taken from the bundled seeds.
IMPORTED_SUBSETS: tuple[str, ...] = ('mc3d', 'mc2d', 'shiftml-molcrys')

#: Subsets made by a generator from parent structures, in the order of the MAD data descriptor, then MP-ALOE.
GENERATED_SUBSETS: tuple[str, ...] = (
    'mc3d-rattled',
    'mc3d-random',
    'mc3d-surface',
    'mc3d-cluster',
    'shiftml-molfrags',
    'mp-aloe',
)

#: Every structure subset, imported and generated, in the order of the MAD data descriptor.
ALL_SUBSETS: tuple[str, ...] = (
    'mc3d',
    'mc3d-rattled',
    'mc3d-random',
    'mc3d-surface',
    'mc3d-cluster',
    'mc2d',
    'shiftml-molcrys',
    'shiftml-molfrags',
    'mp-aloe',
)

#: The subset of the single-atom runs of the compositional baseline.
ISOLATED_ATOM_SUBSET = 'isolated-atom'

# -- datasets -----------------------------------------------------------------------------------------------------

#: The splits of a dataset, in this order everywhere (fractions, files, tables).
SPLITS: tuple[str, ...] = ('train', 'val', 'test')

#: Default ``(train, val, test)`` fractions: the stable 80:10:10 split of MAD.
DEFAULT_FRACTIONS: tuple[float, float, float] = (0.8, 0.1, 0.1)

#: Default number of frames per extended-XYZ shard of a stored dataset.
FRAMES_PER_SHARD = 10_000

#: Nodes per ``id IN (...)`` query: SQLite caps the number of variables of one statement.
QUERY_CHUNK_SIZE = 5_000

# -- processes ----------------------------------------------------------------------------------------------------

#: Entry-point group of every registered process class or calcfunction, by entry-point name (all ``mad.``).
PROCESS_ENTRY_POINTS: dict[str, str] = {
    # work chains
    'mad.generate': 'aiida.workflows',
    'mad.dft': 'aiida.workflows',
    'mad.dft.pw_base': 'aiida.workflows',
    'mad.dft.isolated_atoms': 'aiida.workflows',
    'mad.dataset': 'aiida.workflows',
    # calcfunctions
    'mad.generate_structures': 'aiida.calculations',
    'mad.prepare_structure': 'aiida.calculations',
    'mad.extract_dft_results': 'aiida.calculations',
    'mad.isolated_atom': 'aiida.calculations',
    'mad.collect_atomic_energies': 'aiida.calculations',
    'mad.build_dataset': 'aiida.calculations',
}


def process_type(entry_point: str) -> str:
    """Return the process type stored on the nodes of the process registered as ``entry_point``.

    :param entry_point: an entry-point name of :data:`PROCESS_ENTRY_POINTS`, e.g. ``mad.dft``.
    :raises KeyError: for a name that is not one of them.
    """
    try:
        group = PROCESS_ENTRY_POINTS[entry_point]
    except KeyError:
        raise KeyError(
            f'no process is registered as {entry_point!r}: known are {", ".join(PROCESS_ENTRY_POINTS)}'
        ) from None
    return f'{group}:{entry_point}'


#: The process type of every registered process, by entry-point name (``{'mad.dft': 'aiida.workflows:mad.dft'}``).
PROCESS_TYPES: dict[str, str] = {name: process_type(name) for name in PROCESS_ENTRY_POINTS}
