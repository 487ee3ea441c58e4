"""Choosing which candidates get the high-fidelity label: random, DIRECT and narrow."""

from __future__ import annotations

import re

import numpy as np
import pytest

from fidelity_adapters.sampling import (
    METHODS,
    principal_components,
    select,
    select_direct,
    select_narrow,
    select_random,
)


def orthonormal_columns(n: int, m: int, seed: int = 0) -> np.ndarray:
    """m zero-mean, unit-variance, mutually uncorrelated columns, exactly (not just on average)."""
    raw = np.random.default_rng(seed).normal(size=(n, m))
    q, _ = np.linalg.qr(raw - raw.mean(axis=0))
    return q * np.sqrt(n)


def blobs(seed: int, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Five well-separated blobs, one holding 80 % of the points; features and blob labels."""
    rng = np.random.default_rng(seed)
    sizes = [int(0.8 * n)] + [int(0.05 * n)] * 4
    angles = 2 * np.pi * np.arange(5) / 5
    centres = 10 * np.c_[np.cos(angles), np.sin(angles)]
    labels = np.repeat(np.arange(5), sizes)
    xy = centres[labels] + rng.normal(size=(len(labels), 2))
    noisy_copy = xy + 0.1 * rng.normal(size=xy.shape)
    features = np.c_[xy, noisy_copy, 3 * xy[:, :1] - 1 + 0.1 * rng.normal(size=(len(labels), 1))]
    return features, labels


def gaussian_cloud(n: int = 300, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 2)) * [3.0, 1.0]
    mixing = rng.normal(size=(2, 5))
    return latent @ mixing + 0.05 * rng.normal(size=(n, 5))


FEATURES = gaussian_cloud(60)


def run(method: str, k: int, seed: int = 0) -> np.ndarray:
    return select(method, k, seed, features=FEATURES)


# ---------------------------------------------------------------- shape of the answer


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("k", [0, 1, 5, 17, 59, 60])
def test_exactly_k_distinct_sorted_indices(method, k):
    indices = run(method, k)
    assert indices.dtype == np.int64
    assert len(indices) == k
    assert np.all(np.diff(indices) > 0)  # sorted and distinct
    if k:
        assert indices[0] >= 0 and indices[-1] < len(FEATURES)


@pytest.mark.parametrize("method", METHODS)
def test_same_seed_same_selection(method):
    np.testing.assert_array_equal(run(method, 12, seed=3), run(method, 12, seed=3))


def test_random_depends_on_seed():
    draws = {tuple(select_random(100, 10, seed)) for seed in range(5)}
    assert len(draws) == 5


def test_random_without_features_uses_n_candidates():
    np.testing.assert_array_equal(select("random", 4, 7, n_candidates=30), select_random(30, 4, 7))
    np.testing.assert_array_equal(
        select("random", 4, 7, features=FEATURES), select_random(len(FEATURES), 4, 7)
    )


def test_select_passes_options_on():
    np.testing.assert_array_equal(
        select("direct", 9, 2, features=FEATURES, per_cluster=3),
        select_direct(FEATURES, 9, seed=2, per_cluster=3),
    )
    np.testing.assert_array_equal(
        select("narrow", 9, 2, features=FEATURES, quantile=0.8),
        select_narrow(FEATURES, 9, quantile=0.8),
    )
    assert not np.array_equal(
        select_narrow(FEATURES, 9, quantile=0.8), select_narrow(FEATURES, 9, quantile=0.2)
    )


# ---------------------------------------------------------------- principal components


def test_keeps_exactly_the_components_with_eigenvalue_above_one():
    # Built so the correlation matrix is block diagonal with known eigenvalues:
    # pair rho=0.9 -> 1.9, 0.1; pair rho=-0.5 -> 1.5, 0.5; three features with pairwise
    # correlation 0.05 -> 1.1, 0.95, 0.95; one uncorrelated feature -> exactly 1 (not kept).
    n = 500
    q = orthonormal_columns(n, 9)
    columns = [
        q[:, 0],
        0.9 * q[:, 0] + np.sqrt(1 - 0.81) * q[:, 1],
        q[:, 2],
        -0.5 * q[:, 2] + np.sqrt(1 - 0.25) * q[:, 3],
        *(np.sqrt(0.05) * q[:, 4] + np.sqrt(0.95) * q[:, i] for i in (5, 6, 7)),
        q[:, 8],
    ]
    features = np.column_stack(columns)
    # Units and offsets must not matter, and a constant feature is dropped.
    features = features * np.arange(1, 9) * 7.0 + np.arange(8) * 100.0
    features = np.c_[features, np.full(n, 3.0)]

    scores = principal_components(features)
    assert scores.shape == (n, 3)
    np.testing.assert_allclose(scores.var(axis=0), [1.9, 1.5, 1.1], rtol=1e-9)
    covariance = np.cov(scores.T, bias=True)
    np.testing.assert_allclose(covariance - np.diag(np.diag(covariance)), 0, atol=1e-9)


def test_three_correlated_features_among_independent_noise_give_one_component():
    n = 400
    q = orthonormal_columns(n, 8, seed=2)
    correlated = np.sqrt(0.9) * q[:, :1] + np.sqrt(0.1) * q[:, 1:4]  # pairwise 0.9: 2.8, 0.1, 0.1
    noise = q[:, 4:]  # uncorrelated with everything: eigenvalue 1 each, not above 1
    scores = principal_components(np.c_[correlated, noise])
    assert scores.shape == (n, 1)
    np.testing.assert_allclose(scores.var(), 2.8, rtol=1e-9)


def test_min_components_when_no_eigenvalue_exceeds_one():
    independent = orthonormal_columns(200, 4, seed=3)
    assert principal_components(independent).shape == (200, 1)
    assert principal_components(independent, min_components=3).shape == (200, 3)
    assert principal_components(independent, min_components=9).shape == (200, 4)  # all there are


def test_scores_do_not_depend_on_units_or_constant_features():
    reference = principal_components(FEATURES)
    rescaled = FEATURES * [1e3, 1e-3, 1.0, 5.0, 2.0] + 17.0
    np.testing.assert_allclose(principal_components(rescaled), reference, atol=1e-9)
    with_constant = np.c_[FEATURES[:, :2], np.full(len(FEATURES), -4.0), FEATURES[:, 2:]]
    np.testing.assert_allclose(principal_components(with_constant), reference, atol=1e-9)


def test_no_varying_feature_gives_one_zero_component():
    np.testing.assert_array_equal(principal_components(np.ones((6, 3))), np.zeros((6, 1)))


# ---------------------------------------------------------------- DIRECT


@pytest.mark.parametrize("data_seed", [0, 1, 2])
def test_direct_takes_one_structure_from_each_blob(data_seed):
    features, blob = blobs(data_seed)
    for seed in range(3):
        chosen = select_direct(features, 5, seed=seed)
        assert sorted(blob[chosen]) == [0, 1, 2, 3, 4]


def test_random_usually_misses_small_blobs():
    # The premise of the DIRECT test: with one blob holding 80 %, 5 random picks rarely cover
    # all five blobs (probability about 6e-4).
    _, blob = blobs(0)
    full_cover = sum(len(set(blob[select_random(len(blob), 5, s)])) == 5 for s in range(20))
    assert full_cover <= 1


def test_direct_picks_the_most_central_member_of_each_blob():
    features, blob = blobs(0)
    for index in select_direct(features, 5):
        members = features[blob == blob[index]]
        to_centre = np.linalg.norm(members[:, :2] - members[:, :2].mean(axis=0), axis=1)
        assert np.linalg.norm(features[index, :2] - members[:, :2].mean(axis=0)) < np.quantile(
            to_centre, 0.2
        )


def test_direct_per_cluster_spreads_picks_over_clusters():
    features, blob = blobs(1)
    assert np.bincount(blob[select_direct(features, 10, per_cluster=2)]).tolist() == [2] * 5
    # k not a multiple of per_cluster: 4 clusters of 2, trimmed to 7; each cluster keeps one.
    counts = np.bincount(blob[select_direct(features, 7, per_cluster=2)], minlength=5)
    assert counts.sum() == 7 and counts.max() == 2


def test_direct_trims_the_least_central_extra_picks():
    # k=4 with per_cluster=3 gives 2 clusters and 6 picks: the 2 dropped are third-ranked, one per
    # cluster, so both blobs keep 2.
    rng = np.random.default_rng(5)
    xy = np.repeat([[0.0, 0.0], [20.0, 5.0]], 30, axis=0) + rng.normal(size=(60, 2))
    features = np.c_[xy, xy + 0.1 * rng.normal(size=xy.shape)]
    blob = np.repeat([0, 1], 30)
    for seed in range(3):
        chosen = select_direct(features, 4, seed=seed, per_cluster=3)
        assert np.bincount(blob[chosen]).tolist() == [2, 2]


def test_direct_seed_changes_the_order_birch_reads_and_so_the_result():
    assert len({tuple(select_direct(FEATURES, 12, seed=seed)) for seed in range(5)}) > 1


def test_direct_tops_up_when_clusters_are_too_few():
    # Three distinct points, four copies each: at most three clusters, yet 7 picks are asked for;
    # the top-up must still give every distinct point.
    distinct = np.array([[0.0, 0.0, 1.0], [1.0, 2.0, 0.0], [2.0, 1.0, 5.0]])
    features = np.repeat(distinct, 4, axis=0)
    chosen = select_direct(features, 7)
    assert len(chosen) == 7 and len(np.unique(chosen)) == 7
    assert {tuple(row) for row in features[chosen]} == {tuple(row) for row in distinct}


def test_direct_tops_up_small_clusters_with_the_farthest_structure():
    # A blob of 50 and a lone outlier; per_cluster=2 asks 2 of each of 2 clusters, the outlier
    # gives only 1, so the fourth pick is the blob member farthest from the three chosen.
    x = np.append(np.random.default_rng(4).normal(size=50), 100.0)
    features = np.c_[x, 2 * x + 3]
    central = np.argsort(np.abs(x[:50] - x[:50].mean()))[:2]
    chosen = [*central, 50]
    gap = np.min(np.abs(x[:, None] - x[chosen][None]), axis=1)
    expected = np.sort([*chosen, int(np.argmax(gap))])
    np.testing.assert_array_equal(select_direct(features, 4, per_cluster=2), expected)


def test_direct_with_a_large_threshold_still_covers_the_blobs():
    features, blob = blobs(2)
    assert sorted(blob[select_direct(features, 5, threshold=100.0)]) == [0, 1, 2, 3, 4]


# ---------------------------------------------------------------- narrow


def test_narrow_picks_one_corner_of_the_distribution():
    features = gaussian_cloud(600)
    plane = principal_components(features, min_components=2)[:, :2]
    chosen = select_narrow(features, 30)
    corner = np.quantile(plane, 0.1, axis=0)
    assert plane[chosen, 0].std() < 0.25 * plane[:, 0].std()
    assert plane[chosen, 1].std() < 0.35 * plane[:, 1].std()
    # A representative subset would sit about 1.3 standard deviations from this corner.
    offset = np.abs(plane[chosen].mean(axis=0) - corner)
    np.testing.assert_array_less(offset, 0.5 * plane.std(axis=0))
    assert np.all(plane[chosen] < np.median(plane, axis=0))  # all in the low-low quadrant
    opposite = select_narrow(features, 30, quantile=0.9)
    assert not set(chosen) & set(opposite)


def test_narrow_with_explicit_centre_is_the_k_nearest():
    features = gaussian_cloud(200)
    plane = principal_components(features, min_components=2)[:, :2]
    centre = tuple(plane[17])
    chosen = select_narrow(features, 12, centre=centre)
    nearest = np.argsort(np.linalg.norm(plane - plane[17], axis=1))[:12]
    np.testing.assert_array_equal(chosen, np.sort(nearest))
    assert 17 in chosen


def test_narrow_on_a_single_component_is_one_dimensional():
    x = np.arange(50, dtype=float)
    features = np.c_[x, np.zeros(50)]
    np.testing.assert_array_equal(select_narrow(features, 5, quantile=0.5), [22, 23, 24, 25, 26])
    np.testing.assert_array_equal(select_narrow(features, 3, quantile=0.0), [0, 1, 2])
    standardised_40 = (40 - x.mean()) / x.std()
    np.testing.assert_array_equal(
        select_narrow(features, 3, centre=(standardised_40,)), [39, 40, 41]
    )


# ---------------------------------------------------------------- errors


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(ValueError, match="'bogus'.*random, direct, narrow"):
        select("bogus", 3, 0, features=FEATURES)


@pytest.mark.parametrize("method", METHODS)
def test_k_out_of_range_names_both_numbers(method):
    with pytest.raises(ValueError, match=r"\(60\), got k = 61"):
        run(method, 61)
    with pytest.raises(ValueError, match=r"\(60\), got k = -1"):
        run(method, -1)


@pytest.mark.parametrize("method", ["direct", "narrow"])
def test_features_are_required_for_feature_based_methods(method):
    with pytest.raises(ValueError, match=f"'{method}' needs features"):
        select(method, 3, 0, n_candidates=10)


def test_random_needs_a_candidate_count():
    with pytest.raises(ValueError, match="n_candidates or features"):
        select("random", 3, 0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("method", METHODS)
def test_non_finite_features_name_the_row(method, bad):
    features = FEATURES.copy()
    features[3, 2] = bad
    with pytest.raises(ValueError, match="features row 3 contains NaN or inf"):
        select(method, 3, 0, features=features)
    with pytest.raises(ValueError, match="features row 3"):
        principal_components(features)


@pytest.mark.parametrize("shape", [(10,), (2, 3, 4)])
def test_features_must_be_two_dimensional(shape):
    message = re.escape(f"2-D array (n_candidates, n_features), got shape {shape}")
    with pytest.raises(ValueError, match=message):
        select("direct", 1, 0, features=np.zeros(shape))
    with pytest.raises(ValueError, match="2-D"):
        select_narrow(np.zeros(shape), 1)


def test_n_candidates_must_match_the_features():
    with pytest.raises(ValueError, match="n_candidates = 7 but features has 60 rows"):
        select("random", 3, 0, features=FEATURES, n_candidates=7)


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="per_cluster must be >= 1, got 0"):
        select_direct(FEATURES, 3, per_cluster=0)
    with pytest.raises(ValueError, match="threshold must be > 0, got -1"):
        select_direct(FEATURES, 3, threshold=-1.0)
    with pytest.raises(ValueError, match="quantile must be between 0 and 1, got 1.5"):
        select_narrow(FEATURES, 3, quantile=1.5)
    with pytest.raises(ValueError, match="centre needs 2 coordinate"):
        select_narrow(FEATURES, 3, centre=(0.0, 1.0, 2.0))
    with pytest.raises(ValueError, match="n_candidates must be >= 0, got -2"):
        select_random(-2, 0, 0)
