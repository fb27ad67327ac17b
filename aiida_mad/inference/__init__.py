"""Batched inference with trained models, on the compute node (pure: no AiiDA import).

``PredictCalculation`` (``mad.predict``) runs :mod:`aiida_mad.inference.script` (the ``aiida-mad-predict`` console
script that the package installs) on the compute node: it needs torch and the model's own package, never an AiiDA
database.

:mod:`aiida_mad.inference.models`: loading one model file and running it on batches of structures.
    ``model_kind(path) -> 'metatomic' | 'mace'`` (raises ``ModelFileError`` for any other file);
    ``model_elements(path) -> list[str]`` (the elements the model was trained on);
    ``load_model(path, *, device='cpu') -> Model``; ``Model.predict(frames, batch_size)
    -> Prediction`` (energies in eV, forces in eV/Å, stresses in eV/Å³, NaN stress for a structure that is not
    periodic in all three directions); ``Model.ase_calculator()`` gives the model's own ASE calculator.

:mod:`aiida_mad.inference.predict`: one or N models on one ragged batch of structures.
    ``predict(model_paths, frames, *, batch_size=16, device='cpu') -> dict[str, np.ndarray]`` with ``uuids``,
    ``natoms``, ``offsets``, ``energy`` ``(M, n)``, ``energy_per_atom`` ``(M, n)``, ``forces`` ``(M, n_atoms, 3)``,
    ``stress`` ``(M, n, 3, 3)``, and for ``M >= 2`` the committee arrays of
    :func:`aiida_mad.learning.committee.committee_statistics`: ``energy_per_atom_mean``, ``energy_per_atom_std``,
    ``forces_mean``, ``stress_mean`` (Voigt), ``force_std_max``, ``stress_std_max``;
    ``check_elements(frames, elements, *, model=...)`` raises ``ValueError`` naming the structure and element a model
    was not trained on.

:mod:`aiida_mad.inference.script`: the console script, ``aiida-mad-predict predict.json``: reads the structure files
    and the models that ``predict.json`` names, and writes ``predictions.npz``.
"""
