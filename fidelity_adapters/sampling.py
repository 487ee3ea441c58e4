"""Which candidate structures get the expensive high-fidelity label.

A multi-fidelity study labels all candidates at the cheap fidelity and only k of them at the
expensive one; how those k are chosen decides how much the high-fidelity data can teach
(Ko & Ong, npj Comput. Mater. 2025). Three choices, all returning sorted indices into the
candidate list:

- ``random``: the baseline, k candidates drawn uniformly with a seed.
- ``direct``: DIRECT sampling, which spreads the k picks over the structural diversity of the
  pool: standardised features, PCA (components with eigenvalue > 1), BIRCH clustering of the
  scores, and the structures nearest each cluster centre.
- ``narrow``: a deliberately unrepresentative set, the k structures nearest one point of the
  PC1-PC2 plane (by default a corner of the distribution), to show what a poor choice costs.

Features are one vector per structure, e.g. averaged per-atom descriptors from a model.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn.cluster import Birch

METHODS = ("random", "direct", "narrow")

# Eigenvalues within this of 1 count as "not above 1", so that a feature uncorrelated with all
# others (eigenvalue exactly 1 in exact arithmetic) is not kept or dropped by rounding.
_EIGENVALUE_TOLERANCE = 1e-9
# How many times the BIRCH threshold is halved, at most, looking for enough subclusters.
_MAX_HALVINGS = 60


def _check_k(k: int, n_candidates: int) -> None:
    if not 0 <= k <= n_candidates:
        raise ValueError(
            f"k must be between 0 and the number of candidates ({n_candidates}), got k = {k}"
        )


def _check_features(features: np.ndarray) -> np.ndarray:
    array = np.asarray(features, dtype=float)
    if array.ndim != 2:
        raise ValueError(
            f"features must be a 2-D array (n_candidates, n_features), got shape {array.shape}"
        )
    bad_rows = np.flatnonzero(~np.isfinite(array).all(axis=1))
    if bad_rows.size:
        raise ValueError(
            f"features row {bad_rows[0]} contains NaN or inf "
            f"({bad_rows.size} row(s) affected in all)"
        )
    return array


def _sorted_indices(indices: np.ndarray) -> np.ndarray:
    return np.sort(np.asarray(indices, dtype=np.int64))


def principal_components(features: np.ndarray, min_components: int = 1) -> np.ndarray:
    """PCA scores (n, n_kept) of the standardised features, keeping eigenvalues > 1.

    Standardising puts descriptors of different units on one footing, so the eigenvalues are
    those of the correlation matrix and sum to the number of varying features; a component
    with eigenvalue > 1 (Kaiser's rule) carries more variance than any single feature. At least
    `min_components` are kept where that many exist (at most min(n, varying features)).
    Constant features carry no information and are dropped; if none varies, every structure
    scores 0 on a single component. Signs are fixed (largest loading positive) so the scores
    are reproducible.
    """
    array = _check_features(features)
    n = array.shape[0]
    if n == 0:
        raise ValueError("features has no rows")
    if min_components < 0:
        raise ValueError(f"min_components must be >= 0, got {min_components}")
    varying = np.ptp(array, axis=0) > 0
    if not varying.any():
        return np.zeros((n, 1))
    kept = array[:, varying]
    standardised = (kept - kept.mean(axis=0)) / kept.std(axis=0)
    _, singular, vt = np.linalg.svd(standardised, full_matrices=False)
    eigenvalues = singular**2 / n
    n_above = int(np.count_nonzero(eigenvalues > 1 + _EIGENVALUE_TOLERANCE))
    n_keep = min(max(n_above, min_components), len(eigenvalues))
    loadings = vt[:n_keep]
    largest = np.abs(loadings).argmax(axis=1)
    loadings = loadings * np.sign(loadings[np.arange(n_keep), largest])[:, None]
    return standardised @ loadings.T


def select_random(n_candidates: int, k: int, seed: int) -> np.ndarray:
    """k distinct candidates drawn uniformly: the reference every other choice is judged by."""
    if n_candidates < 0:
        raise ValueError(f"n_candidates must be >= 0, got {n_candidates}")
    _check_k(k, n_candidates)
    rng = np.random.default_rng(seed)
    return _sorted_indices(rng.choice(n_candidates, size=k, replace=False))


def _default_threshold(scores: np.ndarray, n_clusters: int) -> float:
    """Half the radius of one of n_clusters equal cells filling the data's RMS ball.

    BIRCH's threshold bounds the radius of its subclusters; a cell this size gives roughly
    n_clusters or more subclusters for the global step to group, whatever the data's scale.
    """
    rms_radius = math.sqrt(float(np.mean(np.sum((scores - scores.mean(axis=0)) ** 2, axis=1))))
    if rms_radius == 0:
        return 1.0
    return 0.5 * rms_radius / n_clusters ** (1 / scores.shape[1])


def _cluster(scores: np.ndarray, n_clusters: int, threshold: float, seed: int) -> np.ndarray:
    """BIRCH labels for the scores, halving the threshold until there are enough subclusters.

    BIRCH builds its tree in the order it reads the data, so the seed fixes that order: the
    same seed gives the same clusters, other seeds other valid clusterings.
    """
    order = np.random.default_rng(seed).permutation(len(scores))
    wanted = min(n_clusters, len(np.unique(scores, axis=0)))
    for _ in range(_MAX_HALVINGS):
        birch = Birch(threshold=threshold, n_clusters=None, compute_labels=False)
        birch.fit(scores[order])
        if len(birch.subcluster_centers_) >= wanted:
            break
        threshold /= 2
    if len(birch.subcluster_centers_) >= n_clusters:
        birch.set_params(n_clusters=n_clusters)
        birch.partial_fit()  # only the global clustering of the subclusters
    return birch.predict(scores)


def _nearest_to_centres(scores: np.ndarray, labels: np.ndarray, per_cluster: int) -> list[int]:
    """Up to per_cluster members of each cluster nearest its centre, best-ranked first.

    Ordered by rank within the cluster, then distance to its centre, then index, so that cutting
    the list to k keeps every cluster's most central member before any cluster's second.
    """
    picks = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        centre = scores[members].mean(axis=0)
        distances = np.linalg.norm(scores[members] - centre, axis=1)
        ranked = np.argsort(distances, kind="stable")[:per_cluster]
        picks.extend((rank, distances[i], members[i]) for rank, i in enumerate(ranked))
    return [int(index) for _, _, index in sorted(picks)]


def _farthest_point_top_up(scores: np.ndarray, selected: list[int], k: int) -> list[int]:
    """Add the structures farthest from everything selected so far (never empty), up to k.

    Filling gaps left by small or merged clusters keeps the set spread out, as DIRECT intends;
    ties go to the lowest index.
    """
    chosen = list(selected)
    if len(chosen) >= k:
        return chosen
    gap = np.full(len(scores), np.inf)
    for index in chosen:
        gap = np.minimum(gap, np.linalg.norm(scores - scores[index], axis=1))
    gap[chosen] = -np.inf
    while len(chosen) < k:
        new = int(np.argmax(gap))
        chosen.append(new)
        gap = np.minimum(gap, np.linalg.norm(scores - scores[new], axis=1))
        gap[chosen] = -np.inf
    return chosen


def select_direct(
    features: np.ndarray,
    k: int,
    seed: int = 0,
    per_cluster: int = 1,
    threshold: float | None = None,
) -> np.ndarray:
    """DIRECT sampling: k structures that cover the feature space, one region per cluster.

    The PCA scores are clustered by BIRCH into ceil(k / per_cluster) clusters and the
    `per_cluster` structures nearest each cluster centre are taken. If that gives more than k
    (k not a multiple of per_cluster) the least central extra picks are dropped; if fewer
    (clusters smaller than per_cluster, or fewer clusters than asked for) the structures
    farthest from those already chosen are added. `threshold` is BIRCH's starting subcluster
    radius in PCA-score units (default: from the data's spread and the number of clusters); it
    is halved until BIRCH finds enough subclusters. `seed` fixes the order BIRCH reads the data.
    """
    array = _check_features(features)
    _check_k(k, array.shape[0])
    if per_cluster < 1:
        raise ValueError(f"per_cluster must be >= 1, got {per_cluster}")
    if threshold is not None and threshold <= 0:
        raise ValueError(f"threshold must be > 0, got {threshold}")
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    scores = principal_components(array)
    n_clusters = math.ceil(k / per_cluster)
    if threshold is None:
        threshold = _default_threshold(scores, n_clusters)
    labels = _cluster(scores, n_clusters, threshold, seed)
    picks = _nearest_to_centres(scores, labels, per_cluster)[:k]
    return _sorted_indices(_farthest_point_top_up(scores, picks, k))


def select_narrow(
    features: np.ndarray,
    k: int,
    quantile: float = 0.1,
    centre: tuple[float, float] | None = None,
) -> np.ndarray:
    """The k structures nearest one point of the PC1-PC2 plane: a deliberately narrow set.

    The point is `centre` if given, else the `quantile` of PC1 and of PC2 (0.1: a corner of the
    distribution), so the set samples one region and misses the rest, the worst case that
    representative sampling is compared with. With a single principal component the plane is
    a line and `centre` has one coordinate. Ties go to the lowest index.
    """
    array = _check_features(features)
    _check_k(k, array.shape[0])
    if not 0 <= quantile <= 1:
        raise ValueError(f"quantile must be between 0 and 1, got {quantile}")
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    scores = principal_components(array, min_components=2)[:, :2]
    if centre is None:
        point = np.quantile(scores, quantile, axis=0)
    else:
        point = np.asarray(centre, dtype=float).reshape(-1)
        if point.shape != (scores.shape[1],):
            raise ValueError(
                f"centre needs {scores.shape[1]} coordinate(s), one per principal component "
                f"of the plane, got {point.size}"
            )
    distances = np.linalg.norm(scores - point, axis=1)
    return _sorted_indices(np.argsort(distances, kind="stable")[:k])


def select(
    method: str,
    k: int,
    seed: int,
    features: np.ndarray | None = None,
    n_candidates: int | None = None,
    **options: Any,
) -> np.ndarray:
    """Dispatch by name, so a study's configuration can name its sampling method.

    `random` needs `n_candidates` or `features` (only their row count is used); `direct` and
    `narrow` need `features`. `options` go to the method's function (`per_cluster`,
    `threshold` for direct; `quantile`, `centre` for narrow). `narrow` ignores the seed.
    """
    if method not in METHODS:
        raise ValueError(f"unknown sampling method {method!r}; known methods: {', '.join(METHODS)}")
    if features is not None:
        features = _check_features(features)
        if n_candidates is not None and n_candidates != features.shape[0]:
            raise ValueError(
                f"n_candidates = {n_candidates} but features has {features.shape[0]} rows"
            )
        n_candidates = features.shape[0]
    if method == "random":
        if n_candidates is None:
            raise ValueError("method 'random' needs n_candidates or features")
        return select_random(n_candidates, k, seed, **options)
    if features is None:
        raise ValueError(f"method {method!r} needs features (one row per candidate)")
    if method == "direct":
        return select_direct(features, k, seed=seed, **options)
    return select_narrow(features, k, **options)
