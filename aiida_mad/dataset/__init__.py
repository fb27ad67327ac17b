"""The dataset's own format: frames, stable splits and extended-XYZ files (pure: no AiiDA import).

The stored dataset (:mod:`aiida_mad.data.dataset`), the exports (:mod:`aiida_mad.export`) and the training
CalcJobs all read and write datasets through this package. Nothing here imports AiiDA.

:mod:`aiida_mad.dataset.frames`: the frame model, an :class:`ase.Atoms` carrying one DFT result.
    ``make_frame(numbers, positions, *, energy, forces, subset, split, source_uuid, fingerprint, cell=None,
    pbc=False, stress=None, energy_baseline_subtracted=None, dos=None, validate=True) -> Atoms``;
    ``validate_frame(frame, index=None)``, ``check_frames(frames)``,
    ``validate_frames(frames, *, single_fingerprint=True, unique_sources=True)`` (all raise ``FrameError``);
    ``sorted_frames(frames) -> list[Atoms]``, ``summarize(frames) -> dict``, ``content_hash(frames) -> str``;
    ``FrameSummary()`` (``add(frames)`` block by block, then ``summary()`` and ``content_hash()``);
    ``SPLITS = ('train', 'val', 'test')``.

:mod:`aiida_mad.dataset.splits`: stable splits from the source uuid and the dataset seed.
    ``assign_split(uuid, seed, fractions=DEFAULT_FRACTIONS) -> str``, ``apply_splits(frames, seed, fractions)``,
    ``validate_fractions(fractions) -> tuple``, ``split_counts(frames) -> dict``,
    ``check_proportions(counts, fractions, sigmas=5.0)``; ``DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)``.

:mod:`aiida_mad.dataset.extxyz`: the extended-XYZ files (``REF_*`` keys) and the compressed shards.
    ``write_extxyz(frames, path, *, missing_stress='nan', validate=True, compresslevel=6) -> int``
    (``path`` a file, ``.gz`` compressed, or an open text stream);
    ``read_extxyz(path) -> list[Atoms]``;
    ``write_shards(frames, directory, frames_per_shard=10_000, *, prefix='frames', compresslevel=6)
    -> list[Path]`` (``<prefix>-00000.extxyz.gz``, ...); ``ShardWriter(directory, frames_per_shard=10_000)``, a
    context manager whose ``write(frames)`` appends a block at a time (the same files);
    ``read_shards(source) -> list[Atoms]`` (a folder of shards, name order, or a list of paths);
    ``split_file_names(prefix='mad') -> dict[str, str]`` (``{'train': 'mad-train.xyz', ...}``);
    ``write_split_files(frames, directory, *, prefix='mad', missing_stress='nan') -> dict[str, Path]``;
    ``write_split_files_from_shards(shards, directory, *, prefix='mad', missing_stress='nan')
    -> dict[str, tuple[Path, int]]`` (the fast route from shards to the train/val/test files, no parsing);
    ``missing_stress='nan'`` for metatrain (it masks NaN), ``'omit'`` for MACE.

:mod:`aiida_mad.dataset.atomic_energies`: ``atomic-energies.csv``, the isolated-atom energies of one level of theory.
    ``write_atomic_energies_csv(energies, path, *, fingerprint) -> Path``;
    ``read_atomic_energies_csv(path) -> tuple[dict[str, float], str]`` (energies by element, fingerprint).
"""
