"""Calcfunctions of active learning: the selection of candidates and the calibration of the committee.

The entry points are ``mad.al.select`` and ``mad.al.calibrate``.

:func:`select_candidates` takes a pool, the committee output of ``mad.predict`` on it (the sigmas, keyed by candidate
id), the parameters (thresholds, DIRECT settings, iteration) and optionally the ``predictions`` output (for its
``descriptors``). It records the whole selection table, one row per
candidate (:data:`TABLE_COLUMNS`: its sigmas, effective thresholds, which criteria fired, whether it was selected,
its DIRECT cluster and whether DIRECT kept it) and creates ``StructureData`` nodes only for the candidates that are
kept, each an output of the calcfunction (so linked to the pool and the committee predictions) with extras
``mad_subset``, ``mad_candidate_id``, ``mad_pool``, ``mad_al_iteration``, ``mad_al_reason`` (``energy+force``, ...),
``mad_al_sigmas`` (eV/atom, eV/Å, eV/Å³) and ``mad_al_cluster``.

DIRECT features. When the ``predictions`` hold ``descriptors`` (``mad.predict`` with ``descriptors: true``: per model
and structure the mean over atoms of the model's last-layer features), DIRECT runs on the descriptors of the
committee's first member (the first model key; :data:`FEATURIZATION_DESCRIPTORS`). The first member's rather than the
committee mean: the members are trained independently (other seed, other split), so feature ``j`` of one member has
nothing to do with feature ``j`` of another and their mean would blur both; one model's feature space is what DIRECT
was made for. Otherwise DIRECT runs on a fallback featurization (:data:`FEATURIZATION_FALLBACK`,
:func:`aiida_mad.learning.pool.structure_features`): the composition over the pool's elements, the volume per atom,
the committee's mean energy per atom and the logarithms of the three sigmas, with the reason (parameter
``fallback_reason``, or the predictions have no descriptors). The featurization is recorded in the summary
(``featurization``, ``features``, ``descriptors`` or ``fallback_reason``) and in the table's attributes. When no
more candidates are selected than DIRECT would keep (``n_clusters × per_cluster``), all are kept and DIRECT is not run.

:func:`descriptor_parameters` decides, for a work chain, whether to ask ``mad.predict`` for descriptors: yes when
every model gives them (of one kind) and the parameters do not say ``descriptors: false``; otherwise it returns the
reason of the fallback.

:func:`calibrate` compares, for the labelled candidates, the committee's sigmas with its true errors against the new
DFT labels (:mod:`aiida_mad.learning.calibration`) and returns the report with the rescaled thresholds.
"""

from __future__ import annotations

import math

import numpy as np
from aiida import orm
from aiida.engine import calcfunction

from aiida_mad.data.pool import CandidatePoolData

__all__ = (
    'DEFAULT_DIRECT',
    'FEATURIZATION_DESCRIPTORS',
    'FEATURIZATION_FALLBACK',
    'TABLE_COLUMNS',
    'calibrate',
    'check_selection_parameters',
    'descriptor_parameters',
    'select_candidates',
    'selection_rows',
)

#: DIRECT defaults: clusters, structures per cluster, seed.
DEFAULT_DIRECT = {'n_clusters': 100, 'per_cluster': 5, 'seed': 0}

#: Featurization of DIRECT: the first committee member's descriptors (``mad.predict`` with ``descriptors: true``).
FEATURIZATION_DESCRIPTORS = 'descriptors'
#: Featurization of DIRECT without descriptors: :func:`aiida_mad.learning.pool.structure_features`.
FEATURIZATION_FALLBACK = 'fallback'
#: What the fallback features are.
FALLBACK_FEATURES = 'composition, volume per atom, committee mean energy per atom, log10 sigmas'

#: Columns of the selection table (arrays of the ``table`` output, besides ``ids``).
TABLE_COLUMNS = (
    'sigma_energy',
    'sigma_force',
    'sigma_stress',
    'threshold_energy',
    'threshold_force',
    'threshold_stress',
    'multiplied',
    'energy_exceeded',
    'force_exceeded',
    'stress_exceeded',
    'reasons',
    'selected',
    'cluster',
    'downsampled',
)


def check_selection_parameters(parameters: dict) -> tuple:
    """Return ``(SelectionThresholds, direct settings)`` of the parameters, raising ``ValueError`` naming a bad one.

    ``parameters``: ``thresholds`` (``energy``, ``force``, ``stress`` in eV/atom, eV/Å, eV/Å³, ``multiplier``,
    ``multiplier_elements``), ``direct`` (``n_clusters``, ``per_cluster``, ``seed``), ``iteration``,
    ``fallback_reason`` (why no descriptors were asked for, recorded when DIRECT falls back).
    """
    from aiida_mad.learning.selection import SelectionThresholds

    unknown = sorted(set(parameters) - {'thresholds', 'direct', 'iteration', 'fallback_reason'})
    if unknown:
        raise ValueError(f'unknown selection parameter(s): {", ".join(unknown)}')
    thresholds = SelectionThresholds(**(parameters.get('thresholds') or {}))
    direct = {**DEFAULT_DIRECT, **(parameters.get('direct') or {})}
    unknown = sorted(set(direct) - set(DEFAULT_DIRECT))
    if unknown:
        raise ValueError(f'unknown DIRECT setting(s): {", ".join(unknown)}')
    for key in ('n_clusters', 'per_cluster'):
        value = direct[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f'DIRECT {key} must be a positive integer, got {value!r}')
    return thresholds, direct


def descriptor_parameters(models: dict, parameters: dict | None = None) -> tuple[dict, str | None]:
    """Return the ``mad.predict`` parameters for a pool, with ``descriptors`` when the models give them.

    :param models: the committee's ``mad.model`` nodes by key.
    :param parameters: the ``mad.predict`` parameters given (``descriptors`` unset: decided here; ``false``: kept).
    :return: the parameters and ``None``, or the parameters with ``descriptors: false`` and the reason (a model that
        gives no descriptors, naming it; models that give descriptors of different kinds; ``descriptors: false``
        given).
    """
    from aiida_mad.calculations.predict import model_descriptors

    parameters = dict(parameters or {})
    if parameters.get('descriptors') is False:
        return parameters, 'descriptors: false in the prediction parameters'
    kinds = {}
    for key, model in sorted(models.items()):
        try:
            kinds[key] = model_descriptors(model, key=key)
        except ValueError as exception:
            return {**parameters, 'descriptors': False}, str(exception)
    if len(set(kinds.values())) > 1:
        return {**parameters, 'descriptors': False}, f'the models give descriptors of different kinds: {kinds}'
    return {**parameters, 'descriptors': True}, None


def _order(pool_ids: np.ndarray, predicted: orm.ArrayData) -> np.ndarray:
    """Return the rows of ``predicted`` in the order of ``pool_ids`` (every candidate must have been predicted)."""
    uuids = predicted.get_array('uuids')
    position = {str(uuid): index for index, uuid in enumerate(uuids)}
    missing = [str(i) for i in pool_ids if str(i) not in position]
    if missing:
        raise ValueError(f'{len(missing)} candidates of the pool have no prediction, e.g. {missing[0]}')
    return np.array([position[str(i)] for i in pool_ids], dtype=np.int64)


def _aligned(pool_ids: np.ndarray, committee: orm.ArrayData) -> dict[str, np.ndarray]:
    """Return the committee arrays in the order of ``pool_ids`` (every candidate must have been predicted)."""
    order = _order(pool_ids, committee)
    return {
        'sigma_energy': committee.get_array('energy_per_atom_std')[order],
        'sigma_force': committee.get_array('force_std_max')[order],
        'sigma_stress': committee.get_array('stress_std_max')[order],
        'energy_mean': committee.get_array('energy_per_atom_mean')[order],
    }


def _features(index: dict, sigmas: dict, rows: np.ndarray, elements: list[str]) -> np.ndarray:
    """Return the fallback DIRECT features of the candidates ``rows`` (see the module docstring)."""
    from aiida_mad.learning.pool import structure_features

    offsets = index['offsets']
    numbers = np.concatenate([index['numbers'][offsets[r] : offsets[r + 1]] for r in rows])
    sub_offsets = np.concatenate([[0], np.cumsum(np.diff(offsets)[rows])])
    volume = np.nan_to_num(index['volume_per_atom'][rows], nan=0.0)
    extra = [volume, sigmas['energy_mean'][rows]]
    for name in ('sigma_energy', 'sigma_force', 'sigma_stress'):
        extra.append(np.log10(np.nan_to_num(sigmas[name][rows], nan=0.0) + 1e-6))
    return structure_features(numbers, sub_offsets, elements, extra=np.stack(extra, axis=1))


def _featurization(ids: np.ndarray, predictions: orm.ArrayData | None, reason: str | None) -> dict:
    """Return how DIRECT featurizes the candidates: the first member's descriptors (in pool order) or the fallback."""
    if predictions is not None and 'descriptors' in predictions.get_arraynames():
        descriptors = predictions.get_array('descriptors')[0][_order(ids, predictions)]
        recorded = predictions.base.attributes.get('descriptors', {}) or {}
        models = predictions.base.attributes.get('models', []) or [None]
        return {
            'featurization': FEATURIZATION_DESCRIPTORS,
            'features': f'descriptors of the first committee member ({recorded.get("kind", "unknown kind")})',
            'descriptors': {
                'kind': (recorded.get('kinds') or [recorded.get('kind')])[0],
                'dimension': int(descriptors.shape[1]),
                'model': models[0],
                'predictions': predictions.uuid,
            },
            'array': descriptors,
        }
    if reason is None:
        reason = 'no predictions given' if predictions is None else 'the predictions have no descriptors'
    return {
        'featurization': FEATURIZATION_FALLBACK,
        'features': f'fallback: {FALLBACK_FEATURES}',
        'fallback_reason': reason,
    }


@calcfunction
def select_candidates(
    pool: CandidatePoolData,
    committee: orm.ArrayData,
    parameters: orm.Dict,
    predictions: orm.ArrayData | None = None,
) -> dict:
    """Select the candidates of ``pool`` the committee disagrees on, downsample them with DIRECT, store the kept ones.

    ``predictions`` (optional): the ``predictions`` output of ``mad.predict`` on the pool; with its ``descriptors``
    DIRECT runs on the first member's descriptors, else on the fallback features (see the module docstring).

    Outputs: ``table`` (``ArrayData``: ``ids`` and :data:`TABLE_COLUMNS`, one row per candidate; attributes
    ``featurization`` and ``features``), ``summary`` (``Dict``: counts, thresholds, DIRECT settings and result, the
    featurization used) and ``structure_<n>``, one ``StructureData`` per kept candidate.
    """
    from ase.data import chemical_symbols

    from aiida_mad.learning.direct import direct_sample
    from aiida_mad.learning.selection import reason_labels, select

    thresholds, direct = check_selection_parameters(parameters.get_dict())
    iteration = parameters.get_dict().get('iteration')
    index = pool.index()
    ids = index['ids']
    sigmas = _aligned(ids, committee)
    featurization = _featurization(ids, predictions, parameters.get_dict().get('fallback_reason'))
    descriptors = featurization.pop('array', None)
    table = select(
        sigmas['sigma_energy'],
        sigmas['sigma_force'],
        sigmas['sigma_stress'],
        index['numbers'].astype(np.int64),
        index['offsets'],
        thresholds,
    )
    selected = np.flatnonzero(table['selected'])
    cluster = np.full(len(ids), -1, dtype=np.int64)
    downsampled = np.zeros(len(ids), dtype=bool)
    capacity = direct['n_clusters'] * direct['per_cluster']
    direct_record = {**direct, 'run': False}
    if len(selected) > capacity:
        elements = [chemical_symbols[z] for z in sorted(set(index['numbers'].tolist()))]
        features = _features(index, sigmas, selected, elements) if descriptors is None else descriptors[selected]
        result = direct_sample(
            features, n_clusters=direct['n_clusters'], per_cluster=direct['per_cluster'], seed=direct['seed']
        )
        kept = selected[result.indices]
        cluster[selected] = result.cluster_labels
        direct_record.update(
            run=True,
            n_components=len(result.eigenvalues),
            explained_variance=result.explained_variance,
            n_subclusters=result.n_subclusters,
            cluster_sizes=result.cluster_sizes.tolist(),
        )
    else:
        kept = selected
    downsampled[kept] = True

    array = orm.ArrayData()
    array.set_array('ids', ids)
    array.base.attributes.set_many(
        {'featurization': featurization['featurization'], 'features': featurization['features']}
    )
    for name in TABLE_COLUMNS:
        array.set_array(name, cluster if name == 'cluster' else downsampled if name == 'downsampled' else table[name])
    reasons = reason_labels(table)
    summary = {
        'iteration': iteration,
        'n_candidates': len(ids),
        'n_selected': len(selected),
        'n_downsampled': len(kept),
        'selected_fraction': len(selected) / len(ids) if len(ids) else 0.0,
        'reasons': {label: int(np.sum(reasons[selected] == label)) for label in sorted(set(reasons[selected]))},
        'thresholds': {
            'energy': thresholds.energy,
            'force': thresholds.force,
            'stress': thresholds.stress,
            'multiplier': thresholds.multiplier,
        },
        'direct': direct_record,
        **featurization,
        'pool': pool.uuid,
    }
    outputs = {'table': array, 'summary': orm.Dict(summary)}
    frames = {atoms.info['source_uuid']: atoms for atoms in pool.candidates(ids[kept].tolist())}
    for number, row in enumerate(kept):
        identifier = str(ids[row])
        structure = orm.StructureData(ase=frames[identifier])
        structure.base.extras.set_many(
            {
                'mad_subset': pool.settings['subset'],
                'mad_candidate_id': identifier,
                'mad_pool': pool.uuid,
                'mad_al_iteration': iteration,
                'mad_al_reason': str(reasons[row]),
                'mad_al_sigmas': {
                    name: _finite_or_none(table[f'sigma_{name}'][row]) for name in ('energy', 'force', 'stress')
                },
                'mad_al_cluster': int(cluster[row]),
            }
        )
        outputs[f'structure_{number:05d}'] = structure
    return outputs


def _finite_or_none(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def selection_rows(table: orm.ArrayData) -> list[dict]:
    """Return the selection table as one dictionary per candidate (for the CLI and CSV)."""
    columns = {name: table.get_array(name) for name in ('ids', *TABLE_COLUMNS)}
    from aiida_mad.learning.selection import REASON_BITS

    rows = []
    for position, identifier in enumerate(columns['ids']):
        row = {'id': str(identifier)}
        for name in TABLE_COLUMNS:
            value = columns[name][position]
            row[name] = value.item() if hasattr(value, 'item') else value
        code = int(row['reasons'])
        row['reasons'] = '+'.join(name for name, bit in REASON_BITS.items() if code & bit)
        rows.append(row)
    return rows


@calcfunction
def calibrate(committee: orm.ArrayData, parameters: orm.Dict, **labels) -> dict:
    """Compare the committee's sigmas with its true errors on newly labelled candidates.

    :param committee: the committee output of ``mad.predict`` on the pool (means and sigmas by candidate id).
    :param parameters: ``thresholds`` (the thresholds used), ``candidates`` (``{label key: candidate id}``),
        ``energy_reference`` (``total`` or ``baseline_subtracted``), ``atomic_energies`` (eV, for the latter),
        ``rescale`` (whether to return rescaled thresholds).
    :param labels: per labelled candidate ``energy_<key>`` (``Float``, eV) and ``forces_<key>`` (``ArrayData``).
    :return: ``report`` (``Dict``: the calibration per quantity, the thresholds and the next thresholds).
    """
    from aiida_mad.learning.calibration import calibrate as calibrate_arrays
    from aiida_mad.learning.calibration import rescaled_thresholds

    settings = parameters.get_dict()
    uuids = committee.get_array('uuids')
    position = {str(uuid): index for index, uuid in enumerate(uuids)}
    offsets = committee.get_array('offsets')
    energy_mean = committee.get_array('energy_per_atom_mean')
    forces_mean = committee.get_array('forces_mean')
    sigma_energy = committee.get_array('energy_per_atom_std')
    sigma_force = committee.get_array('force_std_max')
    atomic = settings.get('atomic_energies') or {}
    baseline = settings.get('energy_reference') == 'baseline_subtracted'
    sigmas = {'energy': [], 'force': []}
    errors = {'energy': [], 'force': []}
    for key, identifier in sorted(settings.get('candidates', {}).items()):
        if f'energy_{key}' not in labels:
            continue
        row = position[identifier]
        atoms = slice(int(offsets[row]), int(offsets[row + 1]))
        natoms = atoms.stop - atoms.start
        energy = labels[f'energy_{key}'].value
        if baseline:
            symbols = settings['symbols'][key]
            energy -= sum(atomic[symbol] for symbol in symbols)
        forces = labels[f'forces_{key}'].get_array('forces')
        sigmas['energy'].append(sigma_energy[row])
        errors['energy'].append(abs(energy / natoms - energy_mean[row]))
        sigmas['force'].append(sigma_force[row])
        errors['force'].append(float(np.linalg.norm(forces - forces_mean[atoms], axis=1).max()))
    report = calibrate_arrays(sigmas, errors)
    thresholds = dict(settings.get('thresholds') or {})
    nxt = rescaled_thresholds(thresholds, report) if settings.get('rescale') else thresholds
    record = {'calibration': report, 'thresholds': thresholds, 'next_thresholds': nxt}
    return {'report': orm.Dict(_without_nan(record))}


def _without_nan(value):
    """Return ``value`` with every NaN float replaced by ``None`` (the database stores no NaN)."""
    if isinstance(value, dict):
        return {key: _without_nan(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_without_nan(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
