"""Feature drift: Mahalanobis scores (Lee et al., 2018), outlier share, MMD test, drift check."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.datasets import load_digits
from stemma.migration.drift import (
    DEFAULT_MAX_OUTLIER_SHARE,
    OUTLIER_LEVEL,
    drift_check,
    fit_class_gaussian,
    mahalanobis_scores,
    mmd_test,
)
from stemma.registry.errors import BuildError

DIM = 6
CLASS_MEANS = np.array([[0.0] * DIM, [4.0] + [0.0] * (DIM - 1), [0.0, 4.0] + [0.0] * (DIM - 2)])
SCALES = np.linspace(0.5, 2.0, DIM)


def gaussian_sample(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Three classes with shared anisotropic covariance: the model the score assumes."""
    labels = rng.integers(0, len(CLASS_MEANS), n)
    mixing = np.eye(DIM) + 0.3 * np.triu(np.ones((DIM, DIM)), 1)
    return CLASS_MEANS[labels] + (rng.normal(size=(n, DIM)) * SCALES) @ mixing, labels


@pytest.fixture(scope="module")
def source() -> tuple[np.ndarray, np.ndarray]:
    """3,000 source samples with labels."""
    return gaussian_sample(np.random.default_rng(1), 3000)


@pytest.fixture(scope="module")
def digits() -> dict[str, np.ndarray]:
    """Digits 0-4 as pixels: a source split, a held-out split and the held-out split rotated."""
    data = load_digits()
    keep = np.flatnonzero(data.target < 5)
    order = np.random.default_rng(0).permutation(keep)
    cut = int(0.7 * len(order))
    train, held = order[:cut], order[cut:]
    images = data.images
    return {
        "train": images[train].reshape(len(train), -1),
        "labels": data.target[train],
        "held": images[held].reshape(len(held), -1),
        "rotated": np.rot90(images[held], axes=(1, 2)).reshape(len(held), -1),
    }


def slow_scores(features: np.ndarray, labels: np.ndarray, shrinkage: float) -> np.ndarray:
    """The textbook formula, one sample and one class at a time."""
    classes = sorted(set(labels.tolist()))
    means = {k: features[labels == k].mean(axis=0) for k in classes}
    cov = np.zeros((features.shape[1], features.shape[1]))
    for x, k in zip(features, labels, strict=True):
        cov += np.outer(x - means[k], x - means[k])
    cov /= len(features)
    dim = cov.shape[0]
    shrunk = (1 - shrinkage) * cov + shrinkage * np.trace(cov) / dim * np.eye(dim)
    inverse = np.linalg.inv(shrunk)
    return np.array(
        [min((x - means[k]) @ inverse @ (x - means[k]) for k in classes) for x in features]
    )


def test_scores_match_the_direct_formula() -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(12, 3)) * [1.0, 3.0, 0.2]
    labels = np.array([0, 1, 2] * 4)
    for shrinkage in (0.01, 0.5):
        fit = fit_class_gaussian(features, labels, shrinkage=shrinkage)
        expected = slow_scores(features, labels, shrinkage)
        assert np.allclose(mahalanobis_scores(fit, features), expected, rtol=1e-9, atol=1e-12)
        assert np.allclose(fit.whitening @ fit.whitening.T, fit.precision)


def test_constant_features_keep_the_covariance_invertible() -> None:
    rng = np.random.default_rng(0)
    features = np.hstack([rng.normal(size=(40, 2)), np.zeros((40, 2))])  # two dead features
    fit = fit_class_gaussian(features, np.arange(40) % 2)
    assert np.isfinite(fit.precision).all()
    moved = features.copy()
    moved[:, 3] = 1.0  # a feature the source never used lights up: strongly penalised
    assert mahalanobis_scores(fit, moved).min() > 10 * mahalanobis_scores(fit, features).max()


def test_shifted_samples_score_higher(source: tuple[np.ndarray, np.ndarray]) -> None:
    fit = fit_class_gaussian(*source)
    same, _ = gaussian_sample(np.random.default_rng(2), 500)
    shifted = same + 3.0
    assert mahalanobis_scores(fit, shifted).mean() > 2 * mahalanobis_scores(fit, same).mean()


def test_outlier_share_is_about_five_percent_in_distribution(
    source: tuple[np.ndarray, np.ndarray],
) -> None:
    fit = fit_class_gaussian(*source)
    same, _ = gaussian_sample(np.random.default_rng(3), 2000)
    share = float(np.mean(mahalanobis_scores(fit, same) > fit.quantile(OUTLIER_LEVEL)))
    # binomial sd at n=2000 is 0.005 and the quantile's own error about as much: 5 sd each way
    assert 0.02 < share < 0.085
    shifted_share = np.mean(mahalanobis_scores(fit, same * 2.5 + 2.0) > fit.quantile(OUTLIER_LEVEL))
    assert shifted_share > 0.6
    assert fit.quantiles[0.5] < fit.quantiles[0.9] < fit.quantiles[0.95] < fit.quantiles[0.99]


def test_mmd_pvalue_large_for_same_small_for_shifted() -> None:
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(150, 5)), rng.normal(size=(150, 5))
    mmd2_same, p_same = mmd_test(x, y, permutations=200)
    mmd2_shift, p_shift = mmd_test(x, y + 0.6, permutations=200)
    assert p_same > 0.1
    assert p_shift == pytest.approx(1 / 201)  # no permutation reaches the observed statistic
    assert mmd2_shift > 10 * abs(mmd2_same)


def test_mmd_is_symmetric_and_deterministic() -> None:
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(80, 4)), rng.normal(size=(60, 4)) + 0.2
    first = mmd_test(x, y, permutations=100, seed=7)
    assert mmd_test(y, x, permutations=100, seed=7) == first
    assert mmd_test(x, y, permutations=100, seed=7) == first
    assert mmd_test(x, y, permutations=100, seed=8)[0] == first[0]  # only the p-value is random
    # subsampling is seeded too: large inputs give the same answer twice
    big_x, big_y = rng.normal(size=(900, 4)), rng.normal(size=(700, 4))
    assert mmd_test(big_x, big_y, permutations=50, max_samples=100) == mmd_test(
        big_x, big_y, permutations=50, max_samples=100
    )


def test_mmd_unbiased_statistic_matches_direct_formula() -> None:
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(7, 2)), rng.normal(size=(5, 2)) + 1.0
    pooled = np.vstack([x, y])
    d2 = ((pooled[:, None] - pooled[None]) ** 2).sum(-1)
    sigma = np.median(np.sqrt(d2[np.triu_indices(12, 1)]))
    k = np.exp(-d2 / (2 * sigma**2))
    kxx, kyy, kxy = k[:7, :7], k[7:, 7:], k[:7, 7:]
    expected = (kxx.sum() - 7) / 42 + (kyy.sum() - 5) / 20 - 2 * kxy.mean()
    assert mmd_test(x, y, permutations=0)[0] == pytest.approx(expected, rel=1e-12)
    assert mmd_test(x, y, permutations=0)[1] == 1.0


def test_drift_check_on_rotated_digits_is_higher_than_held_out(
    digits: dict[str, np.ndarray],
) -> None:
    held = drift_check(digits["train"], digits["labels"], digits["held"], permutations=100)
    rotated = drift_check(digits["train"], digits["labels"], digits["rotated"], permutations=100)
    assert held.passed and not rotated.passed
    h, r = held.figures, rotated.figures
    assert r["mahalanobis_mean"] > 5 * h["mahalanobis_mean"]
    assert r["mahalanobis_ratio"] > 5 * h["mahalanobis_ratio"]
    assert h["outlier_share"] < 0.2 < DEFAULT_MAX_OUTLIER_SHARE < r["outlier_share"]
    assert r["mmd2"] > h["mmd2"] and r["mmd_pvalue"] < 0.05 < h["mmd_pvalue"]
    assert rotated.violations and not held.violations


def test_drift_check_gates_and_record(source: tuple[np.ndarray, np.ndarray]) -> None:
    features, labels = source
    target, _ = gaussian_sample(np.random.default_rng(8), 400)
    target = target + 0.4  # a mild shift: few outliers, but a large MMD sample detects it
    default = drift_check(features, labels, target, permutations=50)
    assert default.passed
    assert default.thresholds == {
        "max_mahalanobis": None,
        "max_outlier_share": DEFAULT_MAX_OUTLIER_SHARE,
        "min_mmd_pvalue": None,
        "outlier_level": OUTLIER_LEVEL,
    }
    assert default.inputs["source_samples"] == 3000
    assert default.inputs["mmd_samples"] == {"source": 500, "target": 400}
    strict = drift_check(
        features, labels, target, permutations=50, min_mmd_pvalue=0.05, max_mahalanobis=1.0
    )
    assert not strict.passed and len(strict.violations) == 2
    assert strict.figures == default.figures  # thresholds never change the figures
    json.dumps(default.to_dict(), allow_nan=False)  # a manifest can hold it
    ungated = drift_check(features, labels, target * 5, max_outlier_share=None, permutations=10)
    assert ungated.passed and ungated.figures["outlier_share"] > 0.5


def test_drift_check_reuses_a_fit_and_fails_on_non_finite(
    source: tuple[np.ndarray, np.ndarray],
) -> None:
    features, labels = source
    fit = fit_class_gaussian(features, labels)
    target = features[:300] + 0.1
    assert drift_check(features, labels, target, fit=fit, permutations=20) == drift_check(
        features, labels, target, permutations=20
    )
    broken = target.copy()
    broken[3, 2] = np.nan
    result = drift_check(features, labels, broken)
    assert result.passed is False and "target" in result.violations[0]
    json.dumps(result.to_dict(), allow_nan=False)


def test_bad_inputs_raise_one_clear_error(source: tuple[np.ndarray, np.ndarray]) -> None:
    features, labels = source
    fit = fit_class_gaussian(features, labels)
    with pytest.raises(BuildError, match="3 features but the source has 6"):
        mahalanobis_scores(fit, np.zeros((4, 3)))
    with pytest.raises(BuildError, match="labels"):
        fit_class_gaussian(features, labels[:-1])
    with pytest.raises(BuildError, match="2-D"):
        mmd_test(np.zeros(5), np.zeros(5))
