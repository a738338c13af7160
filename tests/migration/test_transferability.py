"""Tests for stemma.migration.transferability: values checked against independent derivations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from stemma.migration.transferability import (
    SCORE_INPUTS,
    SCORES,
    hscore,
    knn_accuracy,
    leep,
    logme,
    nce,
    score_all,
    weighted_tau,
)

FEATURE_SCORES = {"logme": logme, "hscore": hscore, "knn": knn_accuracy}


def _blobs(
    n: int = 300, d: int = 16, classes: int = 4, shift: float = 3.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian features whose class c is shifted by `shift` along axis c."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    features = rng.normal(size=(n, d)) + shift * np.eye(classes, d)[labels]
    return features, labels


def _unit_rms(features: np.ndarray) -> np.ndarray:
    return features / np.sqrt(np.mean(features**2))


# ---------------------------------------------------------------- independent reference versions


def _logme_dense(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME straight from the definitions: D x D matrices, one class at a time, no SVD tricks.

    Same iteration as the reference code: alpha = beta = 1, at most 11 steps, stop when
    alpha / beta moves by <= 1e-3 relative; the evidence uses the last m and residual with the
    updated alpha and beta; log|A| is the exact determinant of alpha I + beta F^T F.
    """
    n, d = features.shape
    gram = features.T @ features
    eig = np.clip(np.linalg.eigvalsh(gram), 0.0, None)
    evidences = []
    for cls in np.unique(labels):
        y = (labels == cls).astype(np.float64)
        alpha, beta = 1.0, 1.0
        for _ in range(11):
            a_mat = alpha * np.eye(d) + beta * gram
            m = beta * np.linalg.solve(a_mat, features.T @ y)
            gamma = float(np.sum(beta * eig / (alpha + beta * eig)))
            m2 = float(m @ m)
            res2 = float(np.sum((features @ m - y) ** 2))
            t = alpha / beta
            alpha = gamma / (m2 + 1e-5)
            beta = (n - gamma) / (res2 + 1e-5)
            if abs(alpha / beta - t) / t <= 1e-3:
                break
        _, logdet = np.linalg.slogdet(alpha * np.eye(d) + beta * gram)
        evidence = (
            d / 2 * math.log(alpha)
            + n / 2 * math.log(beta)
            - alpha / 2 * m2
            - beta / 2 * res2
            - logdet / 2
            - n / 2 * math.log(2 * math.pi)
        )
        evidences.append(evidence / n)
    return float(np.mean(evidences))


def _hscore_loop(features: np.ndarray, labels: np.ndarray) -> float:
    """H-score as in the paper's code: replace each sample by its class mean, then a trace."""
    g = np.zeros_like(features)
    for i in range(features.shape[0]):
        g[i] = features[labels == labels[i]].mean(axis=0)
    cov_f = np.cov(features, rowvar=False)
    cov_g = np.cov(g, rowvar=False)
    return float(np.trace(np.linalg.pinv(cov_f, rcond=1e-10) @ cov_g))


def _leep_loop(probs: np.ndarray, labels: np.ndarray) -> float:
    """LEEP with explicit sums over samples, target classes and source classes."""
    n, z = probs.shape
    classes = sorted(set(labels.tolist()))
    joint = {(y, j): sum(probs[i, j] for i in range(n) if labels[i] == y) / n
             for y in classes for j in range(z)}  # fmt: skip
    marginal = [sum(joint[(y, j)] for y in classes) for j in range(z)]
    total = 0.0
    for i in range(n):
        eep = sum(joint[(labels[i], j)] / marginal[j] * probs[i, j] for j in range(z))
        total += math.log(eep)
    return total / n


def _knn_loo_loop(features: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Leave-one-out cosine k-NN by explicit loops (no ties in the data it is used on)."""
    n = features.shape[0]
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    correct = 0
    for i in range(n):
        sims = [(float(unit[i] @ unit[j]), j) for j in range(n) if j != i]
        nearest = [j for _, j in sorted(sims, reverse=True)[:k]]
        votes: dict[int, int] = {}
        for j in nearest:
            votes[int(labels[j])] = votes.get(int(labels[j]), 0) + 1
        correct += max(votes, key=lambda c: votes[c]) == labels[i]
    return correct / n


# ---------------------------------------------------------------------------------- LogME


@pytest.mark.parametrize(("n", "d", "classes"), [(400, 12, 3), (200, 40, 6), (30, 80, 3)])
def test_logme_matches_dense_definition(n: int, d: int, classes: int) -> None:
    features, labels = _blobs(n, d, classes, shift=1.5, seed=n)
    features = _unit_rms(features)  # the implementation's rescaling is then a no-op
    # the same iteration in exact arithmetic: only rounding differs
    assert logme(features, labels) == pytest.approx(_logme_dense(features, labels), rel=1e-10)


def test_logme_rank_deficient_features_use_exact_determinant() -> None:
    features, labels = _blobs(200, 6, 3, seed=1)
    features = _unit_rms(np.hstack([features, np.zeros((200, 10)), features[:, :2]]))
    assert logme(features, labels) == pytest.approx(_logme_dense(features, labels), rel=1e-9)


def test_logme_wide_relu_features_with_dead_units_match_dense_definition() -> None:
    """The shapes exploration scores: fewer samples than dimensions, non-negative (ReLU)
    features with dead units, so the N x N Gram matrix is the one decomposed."""
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 5, 60)
    features = np.maximum(rng.normal(size=(60, 160)) + np.eye(5, 160)[labels], 0.0)
    features[:, 100:120] = 0.0
    features = _unit_rms(features)
    assert logme(features, labels) == pytest.approx(_logme_dense(features, labels), rel=1e-10)


def test_logme_single_dimension_and_single_class_match_dense_definition() -> None:
    """A Gram matrix of size 1 (one feature column, or N = 1 after nothing else) and one class."""
    rng = np.random.default_rng(8)
    labels = rng.integers(0, 3, 40)
    for features, y in (
        (rng.normal(size=(40, 1)), labels),
        (np.ones((40, 1)), np.zeros(40, dtype=int)),
        (_unit_rms(rng.normal(size=(40, 5))), np.zeros(40, dtype=int)),
    ):
        features = _unit_rms(features)
        assert logme(features, y) == pytest.approx(_logme_dense(features, y), rel=1e-10)


def test_logme_seeded_random_shapes_match_dense_definition() -> None:
    """Seeded shapes on both sides of N = D, with dead, duplicated and non-negative units."""
    rng = np.random.default_rng(9)
    for trial in range(40):
        n, d, classes = int(rng.integers(2, 60)), int(rng.integers(1, 80)), int(rng.integers(1, 6))
        features = rng.normal(size=(n, d))
        if trial % 2:
            features = np.maximum(features, 0.0)
        if trial % 3 == 0:
            features[:, : d // 2] = 0.0
        if trial % 4 == 0 and d > 2:
            features[:, 1] = features[:, 0]
        if not features.any():
            continue
        labels = rng.integers(0, classes, n)
        features = _unit_rms(features)
        expected = _logme_dense(features, labels)
        assert logme(features, labels) == pytest.approx(expected, rel=1e-9), (n, d, classes)


def test_logme_is_scale_invariant_and_finite_at_extreme_scales() -> None:
    features, labels = _blobs(seed=2)
    base = logme(features, labels)
    for scale in (1e-300, 1e-150, 1e-6, 1e6, 1e150, 1e300):
        assert logme(features * scale, labels) == pytest.approx(base, rel=1e-9)


def test_logme_prefers_features_that_fit_the_labels() -> None:
    features, labels = _blobs(seed=3)
    perfect = np.eye(4)[labels]
    assert logme(perfect, labels) > logme(features, labels)


# ----------------------------------------------------------------------------- LEEP and NCE


def test_leep_matches_loop_on_random_probabilities() -> None:
    rng = np.random.default_rng(4)
    probs = rng.dirichlet(np.ones(5), size=40)
    labels = rng.integers(0, 3, 40)
    assert leep(probs, labels) == pytest.approx(_leep_loop(probs, labels), rel=1e-12)


def test_leep_closed_forms() -> None:
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 2])
    assert leep(np.eye(3)[labels], labels) == pytest.approx(0.0, abs=1e-12)
    p = np.bincount(labels) / labels.size
    uniform = np.full((labels.size, 7), 1 / 7)
    assert leep(uniform, labels) == pytest.approx(float(np.sum(p * np.log(p))), rel=1e-12)


def test_leep_ignores_unused_source_classes_and_renormalises_rows() -> None:
    rng = np.random.default_rng(5)
    probs = rng.dirichlet(np.ones(3), size=30)
    labels = rng.integers(0, 2, 30)
    padded = np.hstack([probs, np.zeros((30, 2))]) * 4.0  # unused classes, unnormalised rows
    assert leep(padded, labels) == pytest.approx(leep(probs, labels), rel=1e-12)


def test_nce_closed_forms() -> None:
    source = np.array([0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5])
    assert nce(source, source // 2) == pytest.approx(0.0, abs=1e-12)  # z determines y
    # independent by construction: both source classes see the same label mix
    target = np.array([0, 0, 1, 2, 2, 2] * 2)
    halves = np.repeat([0, 1], 6)
    p = np.array([2, 1, 3]) / 6
    assert nce(halves, target) == pytest.approx(float(np.sum(p * np.log(p))), rel=1e-12)


def test_nce_hand_computed_case() -> None:
    # z=0 -> y = (0, 0, 1); z=1 -> y = (1,): H(Y|Z) = 3/4 * H(2/3, 1/3) + 1/4 * 0
    source = np.array([0, 0, 0, 1])
    target = np.array([0, 0, 1, 1])
    expected = 0.75 * (2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    assert nce(source, target) == pytest.approx(expected, rel=1e-12)


# ---------------------------------------------------------------------------------- H-score


def test_hscore_matches_loop() -> None:
    features, labels = _blobs(60, 5, 3, shift=1.0, seed=6)
    assert hscore(features, labels) == pytest.approx(_hscore_loop(features, labels), rel=1e-8)


def test_hscore_with_fewer_samples_than_dimensions_matches_loop() -> None:
    # fewer samples than dimensions: a rank-deficient covariance, its pseudo-inverse
    features, labels = _blobs(30, 6, 3, shift=1.0, seed=8)
    wide = np.hstack([features, np.random.default_rng(8).normal(size=(30, 44))])
    assert hscore(wide, labels) == pytest.approx(_hscore_loop(wide, labels), rel=1e-6)
    tall = np.vstack([wide, wide])  # same covariance and class means, now N > D
    assert hscore(wide, labels) == pytest.approx(hscore(tall, np.tile(labels, 2)), rel=1e-9)


def test_hscore_bounds_and_affine_invariance() -> None:
    features, labels = _blobs(200, 8, 4, seed=7)
    assert hscore(np.eye(4)[labels], labels) == pytest.approx(3.0, rel=1e-9)  # C - 1
    rng = np.random.default_rng(7)
    mixing = rng.normal(size=(8, 8))
    moved = features @ mixing + rng.normal(size=8) * 100
    assert hscore(moved, labels) == pytest.approx(hscore(features, labels), rel=1e-6)
    assert 0.0 < hscore(features, labels) < 3.0


def test_hscore_ignores_redundant_and_constant_dimensions() -> None:
    features, labels = _blobs(60, 5, 3, seed=3)
    constants = np.tile([0.1, 0.3, 3.7], (60, 1))
    padded = np.hstack(
        [features, 2 * features[:, :2], constants, features[:, [0]] + features[:, [1]]]
    )
    assert hscore(padded, labels) == pytest.approx(hscore(features, labels), rel=1e-9)


# -------------------------------------------------------------------------------------- kNN


def test_knn_leave_one_out_matches_loop() -> None:
    features, labels = _blobs(50, 6, 2, shift=1.0, seed=8)
    features = features + 0.5  # away from the origin so cosine neighbours are meaningful
    expected = _knn_loo_loop(features, labels, k=3)
    assert knn_accuracy(features, labels, k=3, folds=50) == pytest.approx(expected)
    assert 0.5 < expected < 1.0  # a case where the check has teeth


def test_knn_separated_clusters_and_determinism() -> None:
    features, labels = _blobs(300, 8, 4, shift=20.0, seed=9)
    assert knn_accuracy(features, labels) == 1.0
    noisy, labels = _blobs(300, 8, 4, shift=0.5, seed=9)
    assert knn_accuracy(noisy, labels, seed=3) == knn_accuracy(noisy, labels, seed=3)


def _knn_reference(features: np.ndarray, labels: np.ndarray, k: int, folds: int) -> float:
    """The docstring's definition in float64 throughout, ties included: the k most similar
    kept samples (an exact tie to the earlier one), majority vote, then summed similarity."""
    n = features.shape[0]
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    order = np.random.default_rng(0).permutation(n)
    correct = 0
    for fold in np.array_split(order, folds):
        kept = np.setdiff1d(np.arange(n), fold)
        for i in fold:
            sims = unit[kept] @ unit[i]
            pick = np.lexsort((kept, -sims))[:k]  # by similarity, then by sample index
            votes: dict[int, tuple[int, float]] = {}
            for j, sim in zip(kept[pick], sims[pick], strict=True):
                count, total = votes.get(int(labels[j]), (0, 0.0))
                votes[int(labels[j])] = (count + 1, total + float(sim))
            correct += max(votes, key=lambda c: (votes[c], -c)) == labels[i]
    return correct / n


def test_knn_with_many_duplicate_samples_matches_the_definition() -> None:
    """Repeated rows make exact ties for the k-th neighbour, which a float32 screen cannot
    order: the result must still be the float64 definition's."""
    rng = np.random.default_rng(12)
    prototypes = rng.normal(size=(6, 9)) + 0.5
    picks = rng.integers(0, 6, 240)
    features = prototypes[picks] + (rng.random((240, 1)) < 0.3) * rng.normal(size=(240, 9)) * 0.4
    labels = (picks + (rng.random(240) < 0.25)) % 3  # duplicates that disagree on the label
    assert len(np.unique(features, axis=0)) < 120
    expected = _knn_reference(features, labels, k=5, folds=5)
    assert knn_accuracy(features, labels, k=5, folds=5, seed=0) == pytest.approx(expected)
    assert 0.3 < expected < 1.0


# --------------------------------------------------------------------------------- together


def test_label_permutation_leaves_every_score_unchanged() -> None:
    features, labels = _blobs(150, 10, 4, shift=1.0, seed=10)
    probs = np.random.default_rng(10).dirichlet(np.ones(6), size=150)
    renamed = np.array([70, 12, 99, 3])[labels]  # a permutation, with gaps, of the class ids
    for name, score in SCORES.items():
        inputs = features if SCORE_INPUTS[name] == "features" else probs
        assert score(inputs, renamed) == pytest.approx(score(inputs, labels), rel=1e-10), name


def test_sample_permutation_leaves_logme_and_hscore_unchanged() -> None:
    features, labels = _blobs(150, 10, 4, shift=1.0, seed=11)
    order = np.random.default_rng(11).permutation(150)
    for score in (logme, hscore):
        assert score(features[order], labels[order]) == pytest.approx(
            score(features, labels), rel=1e-10
        )


def test_informative_inputs_rank_above_noise() -> None:
    features, labels = _blobs(400, 16, 4, shift=2.0, seed=12)
    noise = np.random.default_rng(13).normal(size=features.shape)
    for name, score in FEATURE_SCORES.items():
        assert score(features, labels) > score(noise, labels), name
    rng = np.random.default_rng(14)
    informative = 0.6 * np.eye(4)[labels] + 0.4 * rng.dirichlet(np.ones(4), size=400)
    random_probs = rng.dirichlet(np.ones(4), size=400)
    for name in ("leep", "nce"):
        assert SCORES[name](informative, labels) > SCORES[name](random_probs, labels), name


def test_degenerate_inputs_give_finite_sensible_values() -> None:
    rng = np.random.default_rng(15)
    labels = rng.integers(0, 3, 60)
    one_class = np.zeros(60, dtype=int)
    probs = rng.dirichlet(np.ones(4), size=60)
    for features in (np.full((60, 8), 3.7), np.zeros((60, 8)), rng.normal(size=(60, 8))):
        for score in FEATURE_SCORES.values():
            assert np.isfinite(score(features, labels))
            assert np.isfinite(score(features, one_class))
    assert hscore(np.full((60, 8), 3.7), labels) == 0.0
    assert hscore(rng.normal(size=(60, 8)), one_class) == 0.0
    assert knn_accuracy(rng.normal(size=(60, 8)), one_class) == 1.0
    assert leep(probs, one_class) == pytest.approx(0.0, abs=1e-12)
    assert nce(rng.integers(0, 4, 60), one_class) == 0.0
    for scale in (1e-300, 1e300):
        for score in FEATURE_SCORES.values():
            assert np.isfinite(score(rng.normal(size=(60, 8)) * scale, labels))
    assert np.isfinite(logme(rng.normal(size=(20, 300)), labels[:20]))  # N < D


def test_invalid_inputs_raise_value_error() -> None:
    features, labels = _blobs(20, 4, 2)
    probs = np.full((20, 3), 1 / 3)
    bad_calls = [
        lambda: logme(features[:1], labels[:1]),
        lambda: hscore(features, labels[:-1]),
        lambda: knn_accuracy(features[:, 0], labels),
        lambda: logme(np.where(features > 1, np.nan, features), labels),
        lambda: leep(probs[:-1], labels),
        lambda: leep(-probs, labels),
        lambda: nce(labels[:-1], labels),
        lambda: knn_accuracy(features, labels, k=0),
        lambda: knn_accuracy(features, labels, folds=1),
        lambda: score_all(features, labels, names=["nope"]),
        lambda: score_all(features, labels, names=["leep"]),
        lambda: weighted_tau([1.0, 2.0], [1.0]),
    ]
    for call in bad_calls:
        with pytest.raises(ValueError):
            call()


def test_score_all_returns_values_and_timings() -> None:
    features, labels = _blobs(120, 8, 3, seed=16)
    probs = np.random.default_rng(16).dirichlet(np.ones(5), size=120)
    result = score_all(features, labels, probs)
    assert set(result) == set(SCORES)
    assert result["logme"]["value"] == logme(features, labels)
    assert result["nce"]["value"] == nce(np.argmax(probs, axis=1), labels)
    assert all(entry["seconds"] >= 0.0 for entry in result.values())
    assert set(score_all(features, labels)) == {"logme", "hscore", "knn"}
    assert set(score_all(features, labels, probs, names=["leep", "knn"])) == {"leep", "knn"}


def test_weighted_tau() -> None:
    accuracies = [0.9, 0.7, 0.8, 0.5]
    assert weighted_tau([4.0, 2.0, 3.0, 1.0], accuracies) == pytest.approx(1.0)
    assert weighted_tau([1.0, 3.0, 2.0, 4.0], accuracies) == pytest.approx(-1.0)
    # a swap among the top candidates costs more than the same swap at the bottom
    top_swap = weighted_tau([3.0, 2.0, 4.0, 1.0], accuracies)
    bottom_swap = weighted_tau([4.0, 1.0, 3.0, 2.0], accuracies)
    assert -1.0 < top_swap < bottom_swap < 1.0


def test_stratified_sample_is_bounded_seeded_and_keeps_class_shares() -> None:
    from stemma.migration.transferability import stratified_sample

    labels = np.repeat(np.arange(4), [400, 200, 100, 3])
    picked = stratified_sample(labels, 100, seed=7)
    assert picked.shape[0] == 100 and np.all(np.diff(picked) > 0)  # sorted, no repeats
    counts = np.bincount(labels[picked], minlength=4)
    assert list(counts) == [57, 28, 14, 1]  # shares kept; the rare class is not dropped
    assert np.array_equal(picked, stratified_sample(labels, 100, seed=7))
    assert not np.array_equal(picked, stratified_sample(labels, 100, seed=8))
    # at or under the cap nothing is dropped; continuous targets draw uniformly
    assert np.array_equal(stratified_sample(labels, 10_000, seed=0), np.arange(703))
    uniform = stratified_sample(np.linspace(0, 1, 500), 50, seed=0)
    assert uniform.shape[0] == 50 and len(set(uniform.tolist())) == 50
    with pytest.raises(ValueError):
        stratified_sample(labels, 1, seed=0)
