"""Tests for DIRECT downsampling and the per-structure mean of per-atom features."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

from aiida_mad.learning import direct
from aiida_mad.learning.direct import direct_sample, mean_features, principal_components, standardize


def _blobs(n_blobs=6, per_blob=80, dimensions=12, seed=0, spread=0.3):
    """Well separated Gaussian blobs in a space whose features have very different scales; return features, blob."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4.0, size=(n_blobs, dimensions))
    blob = np.repeat(np.arange(n_blobs), per_blob)
    features = centres[blob] + rng.normal(scale=spread, size=(len(blob), dimensions))
    features *= np.logspace(-3, 3, dimensions)  # standardization must undo this
    shuffle = rng.permutation(len(blob))
    return features[shuffle], blob[shuffle]


def _brute_force(features, labels, per_cluster, weighted=True):
    """The m members of each cluster closest to its centroid, in a PCA space computed independently with sklearn."""
    scaled = StandardScaler().fit_transform(features)
    pca = PCA().fit(scaled)
    kept = max(int((pca.explained_variance_ > 1).sum()), 1)
    points = pca.transform(scaled)[:, :kept]
    if weighted:
        points = points * pca.explained_variance_ratio_[:kept]
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        centroid = points[members].mean(axis=0)
        distance = [np.linalg.norm(points[i] - centroid) for i in members]
        chosen.extend(members[np.argsort(distance, kind='stable')[:per_cluster]])
    return np.sort(chosen)


def test_mean_features_matches_a_loop():
    rng = np.random.default_rng(0)
    sizes = [3, 1, 5, 2]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    features = rng.normal(size=(offsets[-1], 7))
    means = mean_features(features, offsets)
    expected = [features[offsets[i] : offsets[i + 1]].mean(axis=0) for i in range(4)]
    np.testing.assert_allclose(means, expected, rtol=1e-12)
    with pytest.raises(ValueError, match='structure 1 has 0 atoms'):
        mean_features(features, [0, 3, 3, 11])
    with pytest.raises(ValueError, match='features must have shape'):
        mean_features(features[:, 0], offsets)


def test_principal_components_keep_eigenvalues_above_one():
    features, _ = _blobs()
    scaled = standardize(features)
    np.testing.assert_allclose(scaled, StandardScaler().fit_transform(features), atol=1e-10)
    points, eigenvalues, explained = principal_components(scaled, weighted=False)
    reference = PCA().fit(scaled)
    kept = int((reference.explained_variance_ > 1).sum())
    assert 1 <= kept < features.shape[1]
    assert points.shape == (len(features), kept)
    np.testing.assert_allclose(eigenvalues, reference.explained_variance_[:kept], rtol=1e-8)
    assert explained == pytest.approx(reference.explained_variance_ratio_[:kept].sum())
    # The projections agree up to the sign of each component.
    projected = reference.transform(scaled)[:, :kept]
    np.testing.assert_allclose(np.abs(points), np.abs(projected), atol=1e-8)
    weighted, _, _ = principal_components(scaled)
    np.testing.assert_allclose(np.abs(weighted), np.abs(projected) * reference.explained_variance_ratio_[:kept])


def test_principal_components_keep_at_least_one():
    # Independent standardized features: every eigenvalue is close to 1; with a constant feature all can be <= 1.
    rng = np.random.default_rng(1)
    features = np.column_stack([rng.normal(size=50), np.ones(50)])
    points, eigenvalues, _ = principal_components(standardize(features))
    assert points.shape == (50, 1)
    assert len(eigenvalues) == 1


def test_picks_m_closest_from_every_cluster():
    features, blob = _blobs()
    result = direct_sample(features, n_clusters=6, per_cluster=3, seed=0)
    # Every blob is one cluster, and every cluster gives 3 structures.
    assert len(result.indices) == 18
    assert np.array_equal(result.indices, np.sort(result.indices))
    assert sorted(np.bincount(blob[result.indices]).tolist()) == [3] * 6
    assert sorted(np.bincount(result.labels).tolist()) == [3] * 6
    assert np.array_equal(result.labels, result.cluster_labels[result.indices])
    assert sorted(result.cluster_sizes.tolist()) == [80] * 6
    for label in range(6):
        assert len(np.unique(blob[result.cluster_labels == label])) == 1
    np.testing.assert_array_equal(result.indices, _brute_force(features, result.cluster_labels, 3))
    assert result.n_subclusters >= 6


def test_more_clusters_than_blobs_and_small_clusters():
    features, _ = _blobs(n_blobs=3, per_blob=40, seed=2, spread=1.0)
    result = direct_sample(features, n_clusters=12, per_cluster=5, seed=3)
    sizes = result.cluster_sizes
    assert (sizes > 0).all()
    # m per cluster, or the whole cluster when it is smaller.
    assert len(result.indices) == np.minimum(sizes, 5).sum()
    assert np.array_equal(np.bincount(result.labels, minlength=12), np.minimum(sizes, 5))
    np.testing.assert_array_equal(result.indices, _brute_force(features, result.cluster_labels, 5))
    unweighted = direct_sample(features, n_clusters=12, per_cluster=5, seed=3, weighted=False)
    np.testing.assert_array_equal(
        unweighted.indices, _brute_force(features, unweighted.cluster_labels, 5, weighted=False)
    )


def test_deterministic_with_a_seed():
    features, _ = _blobs(n_blobs=4, per_blob=100, seed=4, spread=1.5)
    first = direct_sample(features, n_clusters=20, per_cluster=2, seed=7)
    second = direct_sample(features, n_clusters=20, per_cluster=2, seed=7)
    np.testing.assert_array_equal(first.indices, second.indices)
    np.testing.assert_array_equal(first.cluster_labels, second.cluster_labels)
    assert first.threshold == second.threshold


def test_threshold_search_with_a_small_subcluster_limit():
    features, _ = _blobs(n_blobs=4, per_blob=150, seed=5, spread=2.0)
    result = direct_sample(features, n_clusters=10, per_cluster=1, max_subclusters=25)
    assert result.n_subclusters >= 10
    assert (result.cluster_sizes > 0).all()
    np.testing.assert_array_equal(result.indices, _brute_force(features, result.cluster_labels, 1))


def test_sparse_ward_above_the_dense_limit(monkeypatch):
    # The nearest-neighbour Ward step that large pools use, exercised on a small pool by lowering the limit.
    monkeypatch.setattr(direct, 'DENSE_WARD_LIMIT', 5)
    features, blob = _blobs(n_blobs=5, per_blob=60, seed=6)
    result = direct_sample(features, n_clusters=5, per_cluster=2, threshold=0.01)
    assert result.n_subclusters > 5
    assert sorted(np.bincount(blob[result.indices]).tolist()) == [2] * 5
    np.testing.assert_array_equal(result.indices, _brute_force(features, result.cluster_labels, 2))


def test_a_coarse_threshold_gives_fewer_clusters():
    features, _ = _blobs(n_blobs=2, per_blob=30, seed=8)
    result = direct_sample(features, n_clusters=5, per_cluster=1, threshold=1e3)
    assert result.n_subclusters < 5
    assert (result.cluster_sizes == 0).sum() == 5 - result.n_subclusters
    assert len(result.indices) == result.n_subclusters


def test_single_structure_one_cluster_and_k_equals_n():
    result = direct_sample([[1.0, 2.0]], n_clusters=1)
    assert result.indices.tolist() == [0]
    assert direct_sample(np.ones((5, 3)), n_clusters=1, per_cluster=2).indices.tolist() == [0, 1]
    features, _ = _blobs(n_blobs=2, per_blob=20, seed=11)
    result = direct_sample(features, n_clusters=1, per_cluster=4)
    assert result.cluster_sizes.tolist() == [40]
    np.testing.assert_array_equal(result.indices, _brute_force(features, np.zeros(40, dtype=int), 4))
    features = np.arange(20.0).reshape(10, 2) ** 1.5
    result = direct_sample(features, n_clusters=10, per_cluster=3)
    assert result.indices.tolist() == list(range(10))


@pytest.mark.parametrize(
    ('kwargs', 'message'),
    [
        ({'n_clusters': 0}, r'n_clusters \(k\) must be a positive integer, got 0'),
        ({'n_clusters': -2}, r'n_clusters \(k\) must be a positive integer, got -2'),
        ({'n_clusters': 2.0}, r'n_clusters \(k\) must be a positive integer, got 2.0'),
        ({'n_clusters': True}, r'n_clusters \(k\) must be a positive integer, got True'),
        ({'n_clusters': 2, 'per_cluster': 0}, r'per_cluster \(m\) must be a positive integer, got 0'),
        ({'n_clusters': 11}, r'n_clusters \(k\) = 11 exceeds the number of structures, 10'),
        ({'n_clusters': 2, 'threshold': 0.0}, 'threshold must be finite and > 0, got 0.0'),
        ({'n_clusters': 2, 'threshold': np.inf}, 'threshold must be finite and > 0, got inf'),
        ({'n_clusters': 5, 'max_subclusters': 4}, 'max_subclusters = 4 is smaller than n_clusters'),
        ({'n_clusters': 2, 'branching_factor': 1}, 'branching_factor must be at least 2'),
    ],
)
def test_bad_parameters(kwargs, message):
    features = np.random.default_rng(9).normal(size=(10, 3))
    with pytest.raises(ValueError, match=message):
        direct_sample(features, **kwargs)


def test_bad_features():
    features = np.random.default_rng(10).normal(size=(10, 3))
    features[7, 1] = np.nan
    with pytest.raises(ValueError, match=r'features of structure \(row\) 7 are not finite'):
        direct_sample(features, 2)
    with pytest.raises(ValueError, match='features must have shape'):
        direct_sample(np.zeros((0, 3)), 1)
    duplicated = np.repeat([[0.0, 1.0], [2.0, 5.0]], 10, axis=0)
    with pytest.raises(ValueError, match='cannot form 3 clusters: the features have only 2 distinct'):
        direct_sample(duplicated, 3)


def test_learning_does_not_import_aiida():
    code = (
        'import sys, aiida_mad.learning.committee, aiida_mad.learning.selection, aiida_mad.learning.direct; '
        "sys.exit(any(m == 'aiida' or m.startswith('aiida.') for m in sys.modules))"
    )
    assert subprocess.run([sys.executable, '-c', code], check=False).returncode == 0
