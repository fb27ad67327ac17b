"""DIRECT downsampling: a diverse subset of a large pool of structures (Qi et al., used by MP-ALOE).

The steps, on one descriptor vector per structure (for example :func:`mean_features` of a model's last-layer
per-atom features):

1. **Standardize** every feature to zero mean and unit variance (constant features become 0).
2. **PCA** on the standardized features, keeping the components whose eigenvalue (variance, covariance of the
   standardized data with an ``n - 1`` denominator) exceeds 1, Kaiser's rule, and at least one. As in DIRECT's
   reference implementation (maml), the kept components are weighted by their explained-variance ratio by default
   (``weighted=False`` keeps them unweighted).
3. **BIRCH** (``sklearn.cluster.Birch``) builds its tree of subclusters, then groups the subclusters into ``k``
   clusters with Ward agglomerative clustering (sklearn's default global step for ``n_clusters=k``); every structure
   takes the cluster of its nearest subcluster.
4. **Per cluster**, the ``m`` structures closest (Euclidean, in the clustering space) to the cluster's centroid, the
   mean of its members; all of them if the cluster has fewer. Ties go to the lower index.

Scaling and the BIRCH threshold. The global step costs memory quadratic in the number ``S`` of subclusters, and a
threshold small for the data shatters it into one subcluster per structure (10^5 structures would need tens of GB),
while a large one leaves fewer than ``k`` subclusters. With ``threshold=None`` the threshold is searched: starting
from the root-mean-square radius of the whole pool, it is halved while the tree has fewer than ``k`` subclusters and
bisected (geometrically) between the last too-coarse and too-fine values; a tree that passes ``max_subclusters``
(default ``max(5 k, 2000)``) is abandoned at once, so a too-fine try costs little. When ``S`` exceeds
:data:`DENSE_WARD_LIMIT`, Ward's step is restricted to a 10-nearest-neighbour graph of the subclusters, whose memory
is linear in ``S``. A given ``threshold`` is used as is (``S`` may then be below ``k``: fewer clusters come out).

Determinism. Structures enter the BIRCH tree in a random order drawn from ``seed``, so that a pool sorted by
prototype or composition does not bias the tree; the same features and seed give the same selection.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import warnings

import numpy as np

from aiida_mad.learning.committee import validate_offsets

__all__ = ('DENSE_WARD_LIMIT', 'DirectResult', 'direct_sample', 'mean_features', 'principal_components', 'standardize')

#: Above this many subclusters, BIRCH's Ward step uses a nearest-neighbour connectivity graph (linear memory).
DENSE_WARD_LIMIT = 5000

#: Number of structures inserted into the BIRCH tree between two checks of its size.
_CHUNK = 2048

#: Limit on threshold tries of the search.
_MAX_TRIES = 60


@dataclasses.dataclass(frozen=True)
class DirectResult:
    """Result of :func:`direct_sample`."""

    indices: np.ndarray
    """Sorted indices of the selected structures."""
    labels: np.ndarray
    """Cluster label (``0 .. k - 1``) of every selected structure, in the order of ``indices``."""
    cluster_labels: np.ndarray
    """Cluster label of every input structure."""
    cluster_sizes: np.ndarray
    """``(k,)`` number of structures in each cluster (0 for a cluster that lost all its members)."""
    eigenvalues: np.ndarray
    """Eigenvalues of the kept principal components, in decreasing order."""
    explained_variance: float
    """Fraction of the standardized variance that the kept components explain."""
    threshold: float
    """The BIRCH threshold used (NaN for ``k = 1``, where nothing is clustered)."""
    n_subclusters: int
    """Number of BIRCH subclusters (0 for ``k = 1``)."""


def mean_features(features, offsets) -> np.ndarray:
    """Return the ``(n, d)`` per-structure means of ragged ``(n_atoms, d)`` per-atom features.

    :param features: per-atom features of all structures, concatenated.
    :param offsets: ``(n + 1,)`` atom offsets (see :mod:`aiida_mad.learning.committee`).
    :raises ValueError: for an empty structure or a mismatch between offsets and rows.
    """
    features = np.asarray(features, dtype=float)
    if features.ndim != 2:
        raise ValueError(f'features must have shape (atoms, dimensions), got {features.shape}')
    offsets = validate_offsets(offsets, len(features))
    return np.add.reduceat(features, offsets[:-1], axis=0) / np.diff(offsets)[:, None]


def _check_features(features) -> np.ndarray:
    """Return ``features`` as a 2-D float array, raising a ``ValueError`` naming the first non-finite row."""
    array = np.asarray(features, dtype=float)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f'features must have shape (structures, dimensions), both > 0, got {array.shape}')
    finite = np.isfinite(array).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        values = array[row][~np.isfinite(array[row])][:3]
        raise ValueError(f'features of structure (row) {row} are not finite: {values}')
    return array


def standardize(features) -> np.ndarray:
    """Return features scaled to zero mean and unit (population) variance per column; constant columns become 0."""
    features = _check_features(features)
    std = features.std(axis=0)
    scaled = features - features.mean(axis=0)
    scaled /= np.where(std > 0, std, 1.0)
    return scaled


def principal_components(standardized, *, weighted: bool = True) -> tuple[np.ndarray, np.ndarray, float]:
    """Return the projections on the components of eigenvalue > 1, their eigenvalues, and the variance they explain.

    At least one component is kept; the explained variance is a fraction of the total.

    :param standardized: ``(n, d)`` standardized features, ``n >= 2``.
    :param weighted: multiply each kept projection by its explained-variance ratio (DIRECT's reference).
    """
    return _principal_components(np.array(standardized, dtype=float), weighted)


def _principal_components(centred: np.ndarray, weighted: bool) -> tuple[np.ndarray, np.ndarray, float]:
    """Do :func:`principal_components`, centring ``centred`` in place."""
    n = len(centred)
    centred -= centred.mean(axis=0)
    covariance = centred.T @ centred / (n - 1)
    eigenvalues, vectors = np.linalg.eigh(covariance)
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues, vectors = np.clip(eigenvalues[order], 0.0, None), vectors[:, order]
    kept = max(int(np.count_nonzero(eigenvalues > 1.0)), 1)
    total = eigenvalues.sum()
    ratio = eigenvalues[:kept] / total if total > 0 else np.ones(kept)
    projections = centred @ vectors[:, :kept]
    if weighted:
        projections *= ratio
    return projections, eigenvalues[:kept], float(ratio.sum()) if total > 0 else 0.0


def _positive_int(name: str, value) -> int:
    """Return ``value`` as an int, raising a ``ValueError`` naming ``name`` unless it is a positive integer."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f'{name} must be a positive integer, got {value!r}')
    return int(value)


def _build_tree(points: np.ndarray, threshold: float, branching_factor: int, limit: float):
    """Insert ``points`` into a BIRCH tree; return it and its number of subclusters, or ``None`` past ``limit``."""
    from sklearn.cluster import Birch

    birch = Birch(threshold=threshold, branching_factor=branching_factor, n_clusters=None, compute_labels=False)
    for start in range(0, len(points), _CHUNK):
        birch.partial_fit(points[start : start + _CHUNK])
        if len(birch.subcluster_centers_) > limit:
            return None, len(birch.subcluster_centers_)
    return birch, len(birch.subcluster_centers_)


def _search_tree(points: np.ndarray, n_clusters: int, branching_factor: int, limit: int):
    """Return a BIRCH tree with ``n_clusters`` to ``limit`` subclusters (or the finest past it) and its threshold.

    The threshold is searched as the module docstring describes.
    """
    radius = math.sqrt(float(((points - points.mean(axis=0)) ** 2).sum(axis=1).mean()))
    threshold = radius if radius > 0 else 1.0
    coarse, fine = None, None  # thresholds known to give fewer than k subclusters, and more than the limit
    for _ in range(_MAX_TRIES):
        tree, count = _build_tree(points, threshold, branching_factor, limit)
        if tree is not None and count >= n_clusters:
            return tree, threshold
        if tree is None:
            fine = threshold
            threshold = threshold * 2 if coarse is None else math.sqrt(threshold * coarse)
        else:
            coarse = threshold
            threshold = threshold / 2 if fine is None else math.sqrt(threshold * fine)
        if coarse is not None and fine is not None and coarse / fine < 1 + 1e-6:
            break
    if fine is None:
        raise ValueError(f'no BIRCH threshold gives {n_clusters} subclusters; the features are too degenerate')
    # No threshold gives a subcluster count in range: take the finest tree, which has at least k subclusters.
    tree, _ = _build_tree(points, fine, branching_factor, math.inf)
    return tree, fine


def _global_step(tree, points: np.ndarray, n_clusters: int) -> np.ndarray:
    """Group the tree's subclusters into ``n_clusters`` with Ward's method and return every point's label."""
    from sklearn.cluster import AgglomerativeClustering
    from sklearn.neighbors import kneighbors_graph

    count = len(tree.subcluster_centers_)
    if count < n_clusters:
        clusterer = None
    elif count > DENSE_WARD_LIMIT:
        connectivity = functools.partial(kneighbors_graph, n_neighbors=min(10, count - 1), include_self=False)
        clusterer = AgglomerativeClustering(n_clusters=n_clusters, connectivity=connectivity)
    else:
        clusterer = AgglomerativeClustering(n_clusters=n_clusters)
    tree.set_params(n_clusters=clusterer)
    with warnings.catch_warnings():
        # A k-nearest-neighbour graph may have several components; sklearn joins them and says so.
        warnings.filterwarnings('ignore', message='the number of connected components', category=UserWarning)
        tree.partial_fit()
    return tree.predict(points)


def _closest_per_cluster(points: np.ndarray, labels: np.ndarray, n_clusters: int, per_cluster: int):
    """Return the sorted indices of the ``per_cluster`` points closest to their cluster's centroid, and the sizes."""
    sizes = np.bincount(labels, minlength=n_clusters)
    sums = np.zeros((n_clusters, points.shape[1]))
    np.add.at(sums, labels, points)
    centroids = sums / np.maximum(sizes, 1)[:, None]
    distance = np.linalg.norm(points - centroids[labels], axis=1)
    index = np.arange(len(points))
    order = np.lexsort((index, distance, labels))
    sorted_labels = labels[order]
    first = np.searchsorted(sorted_labels, sorted_labels, side='left')
    rank = np.arange(len(order)) - first
    return np.sort(order[rank < per_cluster]), sizes


def direct_sample(
    features,
    n_clusters: int,
    per_cluster: int = 1,
    *,
    seed: int = 0,
    threshold: float | None = None,
    weighted: bool = True,
    branching_factor: int = 50,
    max_subclusters: int | None = None,
) -> DirectResult:
    """Select a diverse subset of structures by DIRECT: standardize, PCA, BIRCH into ``k`` clusters, ``m`` per cluster.

    :param features: ``(n, d)`` one descriptor vector per structure.
    :param n_clusters: ``k``, the number of clusters, ``1 <= k <= n``.
    :param per_cluster: ``m``, the number of structures taken from each cluster (closest to its centroid).
    :param seed: seed of the order in which structures enter the BIRCH tree.
    :param threshold: BIRCH threshold in the (weighted) principal-component space; searched if ``None``.
    :param weighted: weight the kept components by their explained-variance ratio.
    :param branching_factor: BIRCH's branching factor.
    :param max_subclusters: the threshold search's upper bound on the subcluster count (default ``max(5 k, 2000)``).
    :raises ValueError: for ``k`` or ``m`` not positive integers, ``k > n``, non-finite features (naming the row), a
        threshold that is not finite and > 0, or fewer than ``k`` distinct feature vectors.
    """
    features = _check_features(features)
    n = len(features)
    n_clusters = _positive_int('n_clusters (k)', n_clusters)
    per_cluster = _positive_int('per_cluster (m)', per_cluster)
    branching_factor = _positive_int('branching_factor', branching_factor)
    if branching_factor < 2:
        raise ValueError(f'branching_factor must be at least 2, got {branching_factor}')
    if n_clusters > n:
        raise ValueError(f'n_clusters (k) = {n_clusters} exceeds the number of structures, {n}')
    if threshold is not None and (
        isinstance(threshold, bool)
        or not isinstance(threshold, numbers.Real)
        or not math.isfinite(threshold)
        or threshold <= 0
    ):
        raise ValueError(f'threshold must be finite and > 0, got {threshold!r}')
    limit = max(5 * n_clusters, 2000) if max_subclusters is None else _positive_int('max_subclusters', max_subclusters)
    if limit < n_clusters:
        raise ValueError(f'max_subclusters = {limit} is smaller than n_clusters (k) = {n_clusters}')

    if n == 1:
        zero = np.zeros(1, dtype=np.int64)
        return DirectResult(zero, zero, zero, np.ones(1, dtype=np.int64), np.zeros(0), 0.0, math.nan, 0)

    points, eigenvalues, explained = _principal_components(standardize(features), weighted)
    points = np.ascontiguousarray(points)
    if n_clusters > 1:
        distinct = len(np.unique(points, axis=0))
        if distinct < n_clusters:
            raise ValueError(
                f'cannot form {n_clusters} clusters: the features have only {distinct} distinct principal-component '
                'vectors'
            )
    if n_clusters == 1:
        # One cluster: nothing to cluster, no tree (threshold NaN, no subclusters).
        labels, threshold, subclusters = np.zeros(n, dtype=np.int64), math.nan, 0
    else:
        order = np.random.default_rng(seed).permutation(n)
        if threshold is None:
            tree, threshold = _search_tree(points[order], n_clusters, branching_factor, limit)
        else:
            tree, _ = _build_tree(points[order], float(threshold), branching_factor, math.inf)
        labels = _global_step(tree, points, n_clusters).astype(np.int64)
        subclusters = len(tree.subcluster_centers_)
    indices, sizes = _closest_per_cluster(points, labels, n_clusters, per_cluster)
    return DirectResult(
        indices=indices,
        labels=labels[indices],
        cluster_labels=labels,
        cluster_sizes=sizes,
        eigenvalues=eigenvalues,
        explained_variance=explained,
        threshold=float(threshold),
        n_subclusters=subclusters,
    )
