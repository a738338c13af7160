"""Feature drift between a source's training data and a target's data, in feature space.

Two complementary measures, both computed on features from the source model:

- Mahalanobis score (Lee et al., 2018, "A Simple Unified Framework for Detecting
  Out-of-Distribution Samples and Adversarial Attacks", NeurIPS): class-conditional Gaussians
  with a tied covariance fitted on the source; a sample's score is
  ``M(x) = min_k (x - mu_k)^T Sigma^-1 (x - mu_k)``. Reported as the target's mean score, its
  ratio to the source's own mean score, and the share of target samples beyond the source's
  own 95th percentile.
- MMD two-sample test: unbiased MMD^2 with an RBF kernel (median-heuristic bandwidth) and a
  permutation p-value.

Default gate: only ``outlier_share <= DEFAULT_MAX_OUTLIER_SHARE``. Under no shift about 5% of
target samples exceed the source's 95th percentile; more than half means the target mostly
lies outside the source's bulk. The mean-score ratio and the MMD p-value gate only when a
threshold is given: on thousands of samples the MMD test calls any shift significant, even a
harmless one, so a p-value gate is opt-in.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from stemma.registry.errors import BuildError
from stemma.registry.records.manifest import Check

DEFAULT_SHRINKAGE = 0.01
"""Weight of the scaled identity mixed into the tied covariance (see `fit_class_gaussian`)."""
DEFAULT_FOLDS = 5
"""Folds used to score the source out-of-fold for its reference score distribution."""
QUANTILE_LEVELS = (0.5, 0.9, 0.95, 0.99)
"""Quantiles of the source's own scores kept in a `GaussianFit`."""
OUTLIER_LEVEL = 0.95
"""A target sample is an outlier when its score exceeds this quantile of the source's scores."""
DEFAULT_MAX_OUTLIER_SHARE = 0.5
"""Default gate: at most half of the target may lie beyond the source's 95th percentile."""
DEFAULT_PERMUTATIONS = 200
"""Permutations of the MMD test; the smallest reachable p-value is 1 / (1 + permutations)."""
DEFAULT_MMD_MAX_SAMPLES = 500
"""Samples per side in the MMD test; the kernel matrix is (2 * this)^2."""
_PERMUTATION_BATCH = 256  # bounds memory at batch * (n + m) floats per matmul


@dataclass(frozen=True, eq=False)
class GaussianFit:
    """Class-conditional Gaussians with a tied, shrunk covariance, fitted on source features."""

    classes: np.ndarray  # (K,) class labels, sorted
    means: np.ndarray  # (K, D) class means
    precision: np.ndarray  # (D, D) inverse of the shrunk tied covariance
    whitening: np.ndarray  # (D, D) W with W @ W.T == precision
    shrinkage: float
    reference_mean: float  # mean of the source's own (out-of-fold) scores
    quantiles: dict[float, float] = field(default_factory=dict)  # level -> source score

    def quantile(self, level: float) -> float:
        """The source's own score at a stored quantile level (one of QUANTILE_LEVELS)."""
        if level not in self.quantiles:
            raise KeyError(f"quantile {level} not stored; stored: {sorted(self.quantiles)}")
        return self.quantiles[level]


def _as_features(name: str, values: Any, dim: int | None = None, rows: int = 2) -> np.ndarray:
    """A finite 2-D float64 array with at least `rows` rows, or a BuildError naming the input."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] < rows:
        raise BuildError(
            f"drift check: {name} must be a 2-D array of at least {rows} samples, "
            f"got shape {array.shape}"
        )
    if dim is not None and array.shape[1] != dim:
        raise BuildError(
            f"drift check: {name} have {array.shape[1]} features but the source has {dim}; "
            "extract both with the same source model"
        )
    if not np.isfinite(array).all():
        raise BuildError(f"drift check: {name} contain NaN or infinite values")
    return array


def _fit_moments(
    features: np.ndarray, labels: np.ndarray, shrinkage: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Classes, class means, precision and whitening of the shrunk tied covariance."""
    classes, index = np.unique(labels, return_inverse=True)
    counts = np.bincount(index, minlength=len(classes)).astype(np.float64)
    order = np.argsort(index, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts[:-1])]).astype(np.int64)
    means = np.add.reduceat(features[order], starts, axis=0) / counts[:, None]
    centered = features - means[index]
    covariance = centered.T @ centered / features.shape[0]
    # Shrink towards a scaled identity: features that never vary in the source (blank pixels,
    # dead units) would make the covariance singular; the mix keeps every eigenvalue at least
    # shrinkage * mean variance, so the inverse exists and stays well conditioned.
    dim = covariance.shape[0]
    scale = float(np.trace(covariance)) / dim
    if scale <= 0.0:
        scale = 1.0  # every feature is constant: fall back to Euclidean distance
    shrunk = (1.0 - shrinkage) * covariance + shrinkage * scale * np.eye(dim)
    eigenvalues, eigenvectors = np.linalg.eigh(shrunk)
    eigenvalues = np.maximum(eigenvalues, shrinkage * scale)
    whitening = eigenvectors / np.sqrt(eigenvalues)
    precision = whitening @ whitening.T
    return classes, means, precision, whitening


def _scores(means: np.ndarray, whitening: np.ndarray, features: np.ndarray) -> np.ndarray:
    """Minimum over classes of the squared Mahalanobis distance, via whitened coordinates."""
    from scipy.spatial.distance import cdist  # 0.24 s to import: only builds that check drift

    # Whitening then Euclidean distance avoids the cancellation of x'Px - 2x'Pmu + mu'Pmu.
    distances = cdist(features @ whitening, means @ whitening, metric="sqeuclidean")
    return np.asarray(distances.min(axis=1))


def _fold_ids(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Seeded fold assignment, stratified by class so every fold sees every common class."""
    order = np.random.default_rng(seed).permutation(len(labels))
    order = order[np.argsort(labels[order], kind="stable")]
    ids = np.empty(len(labels), dtype=np.int64)
    ids[order] = np.arange(len(labels)) % folds
    return ids


def fit_class_gaussian(
    features: Any,
    labels: Any,
    *,
    shrinkage: float = DEFAULT_SHRINKAGE,
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
) -> GaussianFit:
    """Fit class means and a tied covariance (Lee et al., 2018) on source features (N, D).

    The covariance is ``(1 - shrinkage) * S + shrinkage * (trace(S) / D) * I`` where S is the
    pooled within-class covariance (divided by N). The source's reference score distribution
    (its quantiles and mean) is computed out-of-fold with `folds` seeded, class-stratified
    folds: in-sample scores are biased low, which would inflate every target's outlier share.
    With fewer than two samples per fold, or ``folds < 2``, in-sample scores are used.
    """
    data = _as_features("source features", features)
    target = np.asarray(labels).reshape(-1)
    if target.shape[0] != data.shape[0]:
        raise BuildError(
            f"drift check: {data.shape[0]} source features but {target.shape[0]} labels"
        )
    if not 0.0 < shrinkage <= 1.0:
        raise BuildError(f"drift check: shrinkage must be in (0, 1], got {shrinkage}")
    classes, means, precision, whitening = _fit_moments(data, target, shrinkage)
    if folds >= 2 and data.shape[0] >= 2 * folds:
        reference = np.empty(data.shape[0])
        fold_of = _fold_ids(target, folds, seed)
        for fold in range(folds):
            held = fold_of == fold
            _, fold_means, _, fold_whitening = _fit_moments(data[~held], target[~held], shrinkage)
            reference[held] = _scores(fold_means, fold_whitening, data[held])
    else:
        reference = _scores(means, whitening, data)
    levels = np.quantile(reference, QUANTILE_LEVELS)
    return GaussianFit(
        classes=classes,
        means=means,
        precision=precision,
        whitening=whitening,
        shrinkage=float(shrinkage),
        reference_mean=float(reference.mean()),
        quantiles={lvl: float(v) for lvl, v in zip(QUANTILE_LEVELS, levels, strict=True)},
    )


def mahalanobis_scores(fit: GaussianFit, features: Any) -> np.ndarray:
    """Mahalanobis score ``min_k (x - mu_k)^T Sigma^-1 (x - mu_k)`` of each row of (N, D)."""
    data = _as_features("features", features, dim=fit.means.shape[1], rows=1)
    return _scores(fit.means, fit.whitening, data)


def _sample_key(sample: np.ndarray) -> tuple[int, str]:
    """Order key of a sample: size, then content hash (makes the MMD test exactly symmetric)."""
    blob = np.ascontiguousarray(sample).tobytes() + repr(sample.shape).encode()
    return sample.shape[0], hashlib.sha256(blob).hexdigest()


def _subsample(sample: np.ndarray, max_samples: int, rng: np.random.Generator) -> np.ndarray:
    """At most `max_samples` rows, drawn without replacement, kept in their original order."""
    if sample.shape[0] <= max_samples:
        return sample
    return sample[np.sort(rng.choice(sample.shape[0], size=max_samples, replace=False))]


def _mmd2_of_assignments(
    kernel: np.ndarray, row_sums: np.ndarray, assign: np.ndarray, n: int, m: int
) -> np.ndarray:
    """Unbiased MMD^2 for each row of `assign` (1 marks the first sample) over the pooled kernel."""
    # With a 0/1 indicator a and b = 1 - a, each block sum is a quadratic form in a; the RBF
    # diagonal is 1, so the i != j sums subtract n and m.
    a_k_a = np.einsum("rp,rp->r", assign @ kernel, assign)
    a_k_1 = assign @ row_sums
    total = float(row_sums.sum())
    s_xx = a_k_a - n
    s_xy = a_k_1 - a_k_a
    s_yy = total - 2.0 * a_k_1 + a_k_a - m
    return np.asarray(s_xx / (n * (n - 1)) + s_yy / (m * (m - 1)) - 2.0 * s_xy / (n * m))


def _mmd_test(
    x: Any, y: Any, permutations: int, seed: int, max_samples: int
) -> tuple[float, float, float]:
    """MMD^2, its p-value and the kernel bandwidth."""
    from scipy.spatial.distance import pdist, squareform  # see _scores

    first = _as_features("first MMD sample", x)
    second = _as_features("second MMD sample", y, dim=first.shape[1])
    if permutations < 0 or max_samples < 2:
        raise BuildError("drift check: permutations must be >= 0 and max_samples >= 2")
    if _sample_key(first) > _sample_key(second):
        first, second = second, first  # MMD^2 is symmetric; a canonical order makes p too
    rng = np.random.default_rng(seed)
    first = _subsample(first, max_samples, rng)
    second = _subsample(second, max_samples, rng)
    n, m = first.shape[0], second.shape[0]
    distances = pdist(np.vstack([first, second]))
    bandwidth = float(np.median(distances))
    if bandwidth <= 0.0:  # most pairs coincide: fall back to the typical non-zero distance
        positive = distances[distances > 0]
        bandwidth = float(positive.mean()) if positive.size else 1.0
    kernel = np.exp(-(squareform(distances) ** 2) / (2.0 * bandwidth**2))  # diagonal is exp(0) = 1
    row_sums = kernel.sum(axis=1)
    pooled = n + m
    observed_assign = np.zeros((1, pooled))
    observed_assign[0, :n] = 1.0
    observed = float(_mmd2_of_assignments(kernel, row_sums, observed_assign, n, m)[0])
    tolerance = 1e-12 * max(1.0, abs(observed))  # a permutation equal to the split is a tie
    exceed = 0
    for start in range(0, permutations, _PERMUTATION_BATCH):
        batch = min(_PERMUTATION_BATCH, permutations - start)
        order = rng.permuted(np.tile(np.arange(pooled), (batch, 1)), axis=1)
        assign = np.zeros((batch, pooled))
        np.put_along_axis(assign, order[:, :n], 1.0, axis=1)
        stats = _mmd2_of_assignments(kernel, row_sums, assign, n, m)
        exceed += int(np.count_nonzero(stats >= observed - tolerance))
    pvalue = (1.0 + exceed) / (1.0 + permutations)
    return observed, pvalue, bandwidth


def mmd_test(
    x: Any,
    y: Any,
    permutations: int = DEFAULT_PERMUTATIONS,
    seed: int = 0,
    max_samples: int = DEFAULT_MMD_MAX_SAMPLES,
) -> tuple[float, float]:
    """Unbiased MMD^2 of samples x (N, D) and y (M, D) and its permutation p-value.

    RBF kernel ``exp(-||a - b||^2 / (2 s^2))`` with s the median pairwise distance of the
    pooled sample; each side is first subsampled (seeded) to `max_samples` rows. The p-value is
    ``(1 + #{permuted MMD^2 >= observed}) / (1 + permutations)``. Symmetric in x and y and
    deterministic given `seed`.
    """
    mmd2, pvalue, _ = _mmd_test(x, y, permutations, seed, max_samples)
    return mmd2, pvalue


def _failed_for_nonfinite(which: str, thresholds: dict[str, Any]) -> Check:
    """A failed drift result for features that are not finite (a diverged model)."""
    figures: dict[str, Any] = dict.fromkeys(
        [
            "mahalanobis_mean",
            "mahalanobis_ratio",
            "source_mahalanobis_mean",
            "source_p95",
            "outlier_share",
            "mmd2",
            "mmd_pvalue",
            "mmd_bandwidth",
        ]
    )
    why = f"{which} features contain NaN or infinite values (did training diverge?)"
    return Check.of(
        False, extra={"figures": figures, "thresholds": thresholds, "violations": [why]}
    )


def drift_check(
    source_feats: Any,
    source_labels: Any,
    target_feats: Any,
    *,
    max_mahalanobis: float | None = None,
    max_outlier_share: float | None = DEFAULT_MAX_OUTLIER_SHARE,
    min_mmd_pvalue: float | None = None,
    permutations: int = DEFAULT_PERMUTATIONS,
    seed: int = 0,
    max_samples: int = DEFAULT_MMD_MAX_SAMPLES,
    fit: GaussianFit | None = None,
) -> Check:
    """How far target features sit from the source's: figures, thresholds and pass / fail.

    Gates (each skipped when None): ``outlier_share <= max_outlier_share`` (default 0.5);
    ``mahalanobis_ratio <= max_mahalanobis``, the target's mean score over the source's own
    out-of-fold mean score (a ratio, because absolute scores grow with the feature dimension);
    ``mmd_pvalue >= min_mmd_pvalue``. Pass `fit` to reuse a fit of the same source features.
    Non-finite features give a failed result rather than an error. Floats are rounded to 6
    decimals so manifests are stable.
    """
    thresholds: dict[str, Any] = {
        "max_mahalanobis": max_mahalanobis,
        "max_outlier_share": max_outlier_share,
        "min_mmd_pvalue": min_mmd_pvalue,
        "outlier_level": OUTLIER_LEVEL,
    }
    source = np.asarray(source_feats, dtype=np.float64)
    target = np.asarray(target_feats, dtype=np.float64)
    for which, values in (("source", source), ("target", target)):
        if values.size and not np.isfinite(values).all():
            return _failed_for_nonfinite(which, thresholds)
    if fit is None:
        fit = fit_class_gaussian(source, source_labels, seed=seed)
    scores = mahalanobis_scores(fit, target)
    source_p95 = fit.quantile(OUTLIER_LEVEL)
    mean = float(scores.mean())
    ratio = mean / fit.reference_mean if fit.reference_mean > 0 else float("inf")
    share = float(np.mean(scores > source_p95))
    mmd2, pvalue, bandwidth = _mmd_test(source, target, permutations, seed, max_samples)
    violations = []
    if max_outlier_share is not None and share > max_outlier_share:
        violations.append(f"outlier share {share:.3f} > {max_outlier_share}")
    if max_mahalanobis is not None and ratio > max_mahalanobis:
        violations.append(f"Mahalanobis ratio {ratio:.3f} > {max_mahalanobis}")
    if min_mmd_pvalue is not None and pvalue < min_mmd_pvalue:
        violations.append(f"MMD p-value {pvalue:.4f} < {min_mmd_pvalue}")
    return Check.of(
        not violations,
        extra={
            "figures": {
                "mahalanobis_mean": round(mean, 6),
                "mahalanobis_ratio": round(ratio, 6) if np.isfinite(ratio) else None,
                "source_mahalanobis_mean": round(fit.reference_mean, 6),
                "source_p95": round(source_p95, 6),
                "outlier_share": round(share, 6),
                "mmd2": round(mmd2, 6),
                "mmd_pvalue": round(pvalue, 6),
                "mmd_bandwidth": round(bandwidth, 6),
            },
            "thresholds": thresholds,
            "inputs": {
                "source_samples": int(source.shape[0]),
                "target_samples": int(target.shape[0]),
                "features": int(source.shape[1]),
                "mmd_samples": {
                    "source": min(int(source.shape[0]), max_samples),
                    "target": min(int(target.shape[0]), max_samples),
                },
                "permutations": permutations,
                "seed": seed,
            },
            "violations": violations,
        },
    )
