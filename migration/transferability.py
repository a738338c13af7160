"""Transferability scores: how well a source model's outputs suit a target task, without training.

Each score reads what a candidate source produces on the target's training data (penultimate
features, or source-head probabilities) together with the target labels, and returns one float.
**Higher is better for every score**, so candidates rank by descending value.

| name     | input          | score                                              |
| -------- | -------------- | -------------------------------------------------- |
| `logme`  | features (N,D) | LogME, You et al., ICML 2021                       |
| `hscore` | features (N,D) | H-score, Bao et al., ICIP 2019                     |
| `knn`    | features (N,D) | leave-fold-out k-NN accuracy (cosine), a baseline  |
| `leep`   | probs (N,Z)    | LEEP, Nguyen et al., ICML 2020                     |
| `nce`    | probs (N,Z)    | NCE, Tran et al., ICCV 2019 (on argmax of probs)   |

Labels may be any 1-D array of class ids; only the classes present count, so every score is
invariant to renaming the classes. Everything is computed in float64 with numpy / scipy.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from scipy import stats
from scipy.linalg import lapack

__all__ = [
    "SCORES",
    "SCORE_INPUTS",
    "hscore",
    "knn_accuracy",
    "leep",
    "logme",
    "logme_multilabel",
    "logme_regression",
    "nce",
    "score_all",
    "stratified_sample",
    "weighted_tau",
]

_EPS = float(np.finfo(np.float64).eps)
_EPS32 = float(np.finfo(np.float32).eps)
_KNN_CHUNK = 256  # query rows per similarity block: chunk * N float32 stays a few MB


def _labels(labels: Any, n: int | None = None, name: str = "labels") -> tuple[np.ndarray, int]:
    """Validate class ids; return (class index in [0, C) per sample, C)."""
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array, got shape {y.shape}")
    if y.shape[0] < 2:
        raise ValueError(f"transferability scores need at least 2 samples, got {y.shape[0]}")
    if n is not None and y.shape[0] != n:
        raise ValueError(f"{name} have {y.shape[0]} entries but the inputs have {n} rows")
    _, index = np.unique(y, return_inverse=True)
    index = index.reshape(-1)
    return index, int(index.max()) + 1


def _matrix(name: str, values: Any) -> np.ndarray:
    """Validate a finite 2-D array with at least 2 rows and 1 column; return it as float64."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (samples, dims), got shape {x.shape}")
    if x.shape[0] < 2 or x.shape[1] < 1:
        raise ValueError(f"{name} need at least 2 samples and 1 dimension, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contain NaN or infinite values")
    return x


def _probs(source_probs: Any) -> np.ndarray:
    """Validate source-head probabilities (N, Z); rows are renormalised to sum to 1."""
    p = _matrix("source_probs", source_probs)
    if (p < 0).any():
        raise ValueError("source_probs must be non-negative (pass softmax outputs, not logits)")
    total = p.sum(axis=1, keepdims=True)
    if (total <= 0).any():
        raise ValueError("source_probs has a row that sums to 0")
    normalised: np.ndarray = p / total
    return normalised


def _one_hot(index: np.ndarray, classes: int) -> np.ndarray:
    """(N, C) float64 indicator matrix of class indices."""
    out = np.zeros((index.shape[0], classes))
    out[np.arange(index.shape[0]), index] = 1.0
    return out


def _reduce(gram: np.ndarray, b: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tridiagonal form of the symmetric `gram` (k, k), k >= 1, read from its lower triangle
    and overwritten: gram = Q T Q^T; returns (diagonal (k,), off-diagonal (k - 1,), Q^T b)."""
    k = gram.shape[0]
    qb = np.array(b, dtype=np.float64, order="F")
    if k == 1:
        return gram[0].astype(np.float64), np.zeros(0), qb
    # lwork: the blocked reduction (BLAS 3); the default workspace falls back to the unblocked
    # one, ten times slower at k = 512. 8 * k measured fastest (16 to 64 * k: about twice as
    # slow at k of 359 and 512)
    packed, diag, off, tau, info = lapack.dsytrd(gram, lower=1, lwork=8 * k, overwrite_a=1)
    if info != 0:  # pragma: no cover - dsytrd fails only on invalid arguments
        raise np.linalg.LinAlgError(f"dsytrd failed ({info})")
    # Q = H(1) ... H(k-1); reflector i is stored below the subdiagonal of column i (LAPACK
    # dormtr with uplo='L' is exactly this dormqr on the shifted block)
    rotated, _, info = lapack.dormqr(
        "L", "T", packed[1:, :-1], tau[: k - 1], qb[1:], lwork=max(1, 64 * qb.shape[1])
    )
    if info != 0:  # pragma: no cover
        raise np.linalg.LinAlgError(f"dormqr failed ({info})")
    qb[1:] = rotated
    return diag, off, qb


def _eig_project(gram: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues w (ascending) of the symmetric `gram` (k, k) and V^T b for its eigenvectors V.

    What np.linalg.eigh gives, without forming V: LAPACK reduces gram = Q T Q^T to tridiagonal
    T (dsytrd), applies Q^T to the few columns of b (dormqr), and decomposes T = Z diag(w) Z^T
    by divide and conquer (dstevd), so V^T b = Z^T Q^T b. The scores need only the projections
    of a handful of target columns, and this skips the (k, k) back-transformation of V.
    `gram` is overwritten.
    """
    k = gram.shape[0]
    if k == 0:
        return np.zeros(0), np.zeros((0, *np.shape(b)[1:]))
    diag, off, qb = _reduce(gram, b)
    if k == 1:
        return diag, qb
    w, z, info = lapack.dstevd(diag, off, compute_v=1)
    if info != 0:  # pragma: no cover - divide and conquer did not converge
        raise np.linalg.LinAlgError(f"dstevd failed ({info})")
    projected: np.ndarray = z.T @ qb
    return w, projected


# Constants of the reference implementation (thuml/LogME, LogME._fit_fixed_point).
_LOGME_MAX_ITER = 11
_LOGME_TOL = 1e-3  # relative change of t = alpha / beta
_LOGME_EPS = 1e-5  # added to m^T m and ||F m - y||^2 in the updates


def _tridiagonal(
    f: np.ndarray, targets: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """The Gram matrix of the features F scaled to unit root-mean-square, reduced to
    tridiagonal form T = Q^T G Q: (diagonal (k,), off-diagonal (k - 1,), Q^T B (k, C), wide).

    Only the smaller Gram matrix is reduced: F F^T (N, N) with B = Y when N < D ("wide"), else
    F^T F (D, D) with B = F^T Y. LogME needs only the eigenvalues of G (from T, O(k^2)) and
    sums over them of rational functions of the eigenvalues weighted by the squared
    projections of B, which are quadratic forms in (T + t I)^-1 Q^T B: tridiagonal solves,
    O(k) each. No eigenvector is ever formed. All-zero columns (dead units) are left out:
    they add nothing to either Gram matrix. Empty (k = 0) for all-zero features.
    """
    n, d = f.shape  # the mean square counts every column, dead or not
    column_peak = np.maximum(f.max(axis=0), -f.min(axis=0))
    peak = float(column_peak.max())
    if peak == 0:
        return np.zeros(0), np.zeros(0), np.zeros((0, targets.shape[1])), False
    # A copy (`f` may be the caller's; `take` by index: a boolean mask on columns copies ten
    # times slower), scaled by the peak first so that squaring can neither overflow nor
    # underflow.
    live = f.take(np.flatnonzero(column_peak > 0), axis=1)
    live /= peak
    wide = n < live.shape[1]
    # numpy's full product: measured several times faster than scipy's BLAS syrk here,
    # although syrk computes only the lower triangle that dsytrd reads
    gram = live @ live.T if wide else live.T @ live
    # unit RMS: F / sqrt(ms) has the Gram matrix gram / ms and F^T Y / sqrt(ms)
    ms = float(np.trace(gram)) / (n * d)
    gram /= ms
    b = targets if wide else (live.T @ targets) / np.sqrt(ms)
    # gram is symmetric: its transpose is the same matrix in the Fortran order LAPACK works
    # in, so dsytrd reduces it in place instead of on a copy
    diag, off, qb = _reduce(gram.T, b)
    return diag, off, qb, wide


def _block_system(off: np.ndarray, qb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The parts of `_shifted_solves`' system that no shift changes: (the block-diagonal
    system's off-diagonal (C k - 1,), its right-hand side (C k, 1)). Built once per LogME, not
    once per iteration: at a small sample they cost a third of the score."""
    classes = qb.shape[1]
    return np.tile(np.append(off, 0.0), classes)[:-1], qb.T.reshape(-1, 1)


def _shifted_solves(
    diag: np.ndarray,
    off: np.ndarray,
    qb: np.ndarray,
    t: np.ndarray,
    fixed: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(b_c . z_c, z_c . z_c) per column c of qb (k, C), where z_c = (T + t_c I)^-1 b_c.

    The C systems are one block-diagonal tridiagonal system of size C k (a zero off-diagonal
    between blocks, where partial pivoting never swaps rows), solved by one LAPACK call.
    `fixed`: `_block_system(off, qb)`, when the caller solves for several shifts (dgtsv
    works on copies: the arrays are read, never changed).
    """
    k, classes = qb.shape
    if k == 0:
        return np.zeros(classes), np.zeros(classes)
    big_diag = (diag[None, :] + t[:, None]).reshape(-1)
    big_off, rhs = _block_system(off, qb) if fixed is None else fixed
    if k == 1:  # diagonal (and f2py refuses an empty off-diagonal)
        z = rhs / big_diag[:, None]
    else:
        *_, z, info = lapack.dgtsv(big_off, big_diag, big_off, rhs)
        if info != 0:  # pragma: no cover - T + t I is positive definite for t > 0
            raise np.linalg.LinAlgError(f"dgtsv failed ({info})")
    z = z.reshape(classes, k)
    return np.einsum("ck,kc->c", z, qb), np.einsum("ck,ck->c", z, z)


def logme_regression(features: Any, targets: Any) -> float:
    """LogME's regression form: the same evidence with the target columns themselves in place
    of the one-hot class indicators (You et al., ICML 2021, section 4.2). Targets (N,) or
    (N, K) are standardised per column first, so the score does not depend on their units."""
    y = np.asarray(targets, dtype=np.float64)
    y = y.reshape(len(y), -1)
    spread = y.std(axis=0)
    y = (y - y.mean(axis=0)) / np.where(spread > 0, spread, 1.0)
    return _logme(_matrix("features", features), y)


def logme_multilabel(features: Any, labels: Any) -> float:
    """LogME of 0/1 label columns (N, K), each taken as a regression target as the one-hot
    columns of `logme` are."""
    return _logme(_matrix("features", features), np.asarray(labels, dtype=np.float64))


def logme(features: Any, labels: Any) -> float:
    """LogME, the log of maximum evidence (You, Liu, Wang, Long, ICML 2021).

    Per target class k, Bayesian linear regression of the one-hot target y_k on the features F
    (N, D) with prior w ~ N(0, alpha^-1 I) and noise N(0, beta^-1). With s_i the eigenvalues of
    F^T F and m = beta (alpha I + beta F^T F)^-1 F^T y_k, the fixed-point iteration of the
    reference code (thuml/LogME) starts at alpha = beta = 1 and repeats at most 11 times, until
    t = alpha / beta changes by at most 1e-3 relative::

        gamma = sum_i beta s_i / (alpha + beta s_i)
        alpha = gamma / (m^T m + 1e-5),   beta = (N - gamma) / (||F m - y_k||^2 + 1e-5)

    then ``L_k = D/2 log alpha + N/2 log beta - alpha/2 m^T m - beta/2 ||F m - y_k||^2
    - 1/2 log|alpha I + beta F^T F| - N/2 log(2 pi)`` (m from the last step's t, alpha and beta
    updated, as in the reference), and ``LogME = mean_k L_k / N``. Typically in about [-2, 2].

    Departures from the reference, all of which leave well-scaled full-rank features unchanged:
    the log-determinant includes the D - rank(F) zero eigenvalues (each adds log alpha, so the
    score neither rewards dead feature dimensions nor depends on the rank tolerance); features
    are first scaled to unit root-mean-square, which leaves the exact evidence unchanged but
    makes the 1e-5 guards and the start at t = 1 mean the same at any feature scale; the rank
    tolerance is relative (max(N, D) * eps * largest eigenvalue) rather than absolute; only the
    classes present in ``labels`` are averaged.
    """
    f = _matrix("features", features)
    y, classes = _labels(labels, f.shape[0])
    return _logme(f, _one_hot(y, classes))


def _logme(f: np.ndarray, targets: np.ndarray) -> float:
    """Mean per-column log evidence / N of regressing each target column on the features."""
    n, classes = f.shape[0], targets.shape[1]
    if targets.shape[0] != n:
        raise ValueError(f"targets have {targets.shape[0]} rows but the features have {n}")
    diag, off, qb, wide = _tridiagonal(f, targets)
    k = diag.shape[0]
    sigma = diag.copy()
    if k > 1:
        sigma, info = lapack.dsterf(diag, off)
        if info != 0:  # pragma: no cover - QL/QR did not converge
            raise np.linalg.LinAlgError(f"dsterf failed ({info})")
        sigma = np.sort(sigma)
    # eigenvalues below the rank tolerance count as zero in gamma and the determinant
    keep = sigma > max(n, f.shape[1]) * _EPS * max(float(sigma[-1]) if k else 0.0, 0.0)
    rank = int(keep.sum())
    sigma = sigma[keep][:, None]  # (rank, 1) against the per-class columns
    y2 = (targets * targets).sum(axis=0)
    alpha, beta = np.ones(classes), np.ones(classes)
    m2, res2 = np.zeros(classes), y2.copy()
    active = np.ones(classes, dtype=bool)  # classes still iterating, vectorised over classes
    fixed = _block_system(off, qb) if k else None
    for _ in range(_LOGME_MAX_ITER):
        t = alpha / beta
        gamma = np.sum(sigma / (sigma + t), axis=0)
        # With x_i the projections of y on F's left singular vectors and s_i the eigenvalues:
        # m^T m = sum s_i x_i^2 / (t + s_i)^2, ||F m - y||^2 = sum x_i^2 t^2 / (t + s_i)^2 plus
        # ||y||^2 off F's span. With z = (T + t I)^-1 Q^T b, both are quadratic forms in z:
        # wide (b = y):        m^T m = b.z - t z.z,   ||F m - y||^2 = t^2 z.z
        # tall (b = F^T y):    m^T m = z.z,           ||F m - y||^2 = ||y||^2 - b.z - t z.z
        bz, zz = _shifted_solves(diag, off, qb, t, fixed)
        if wide:
            new_m2, new_res2 = bz - t * zz, t * t * zz
        else:
            new_m2, new_res2 = zz, y2 - bz - t * zz
        new_m2, new_res2 = np.maximum(new_m2, 0.0), np.maximum(new_res2, 0.0)
        m2 = np.where(active, new_m2, m2)
        res2 = np.where(active, new_res2, res2)
        # rank 0 (all-zero features): gamma = 0 and alpha drops out of the evidence; keep it 1.
        alpha = np.where(active & (rank > 0), gamma / (new_m2 + _LOGME_EPS), alpha)
        beta = np.where(active, (n - gamma) / (new_res2 + _LOGME_EPS), beta)
        active &= np.abs(alpha / beta - t) / t > _LOGME_TOL
        if not active.any():
            break
    # log|alpha I + beta F^T F| = sum_i log(alpha + beta s_i) + (D - rank) log alpha
    evidence = (
        rank / 2.0 * np.log(alpha)
        + n / 2.0 * np.log(beta)
        - 0.5 * np.sum(np.log(alpha + beta * sigma), axis=0)
        - beta / 2.0 * res2
        - alpha / 2.0 * m2
        - n / 2.0 * np.log(2.0 * np.pi)
    )
    return float(np.mean(evidence) / n)


def leep(source_probs: Any, labels: Any) -> float:
    """LEEP, the log expected empirical prediction (Nguyen, Hassner, Seeger, Archambeau, ICML 2020).

    With theta(x)_z the source head's probability of source class z:
    ``P(y, z) = 1/N sum_i theta(x_i)_z 1[y_i = y]``, ``P(y | z) = P(y, z) / sum_y P(y, z)``,
    ``LEEP = 1/N sum_i log sum_z P(y_i | z) theta(x_i)_z``. In (-inf, 0]; 0 when the source's
    classes determine the target's. A source class with no mass gets no weight.
    """
    p = _probs(source_probs)
    y, classes = _labels(labels, p.shape[0])
    joint = _one_hot(y, classes).T @ p / p.shape[0]  # (C, Z)
    mass = joint.sum(axis=0)
    # An unused source class has theta_z = 0 on every sample, so its column never counts.
    conditional = np.divide(joint, mass, out=np.zeros_like(joint), where=mass > 0)
    eep = np.einsum("iz,iz->i", p, conditional[y])
    # eep_i >= theta_iz^2 / (N P(z)) > 0 for the z where theta_iz >= 1/Z: the log is finite.
    return float(np.mean(np.log(eep)))


def nce(source_pred: Any, labels: Any) -> float:
    """NCE, negative conditional entropy (Tran, Nguyen, Hassner, ICCV 2019).

    With z_i the source's hard label of sample i and the empirical joint
    ``P(y, z) = #{i: y_i = y, z_i = z} / N``: ``NCE = -H(Y | Z) = sum_{y,z} P(y, z) log P(y | z)``.
    In [-log C, 0]; 0 when z determines y, -H(Y) when z is independent of y.
    """
    z, sources = _labels(source_pred, name="source_pred")
    y, classes = _labels(labels, z.shape[0])
    counts = np.bincount(y * sources + z, minlength=classes * sources).reshape(classes, sources)
    per_source = counts.sum(axis=0)
    used = counts > 0
    # n_yz log(n_yz / n_z) over non-empty cells; empty cells contribute 0 log 0 = 0.
    terms = counts[used] * np.log(counts[used] / np.broadcast_to(per_source, counts.shape)[used])
    return float(terms.sum() / z.shape[0])


def hscore(features: Any, labels: Any) -> float:
    """H-score (Bao, Li, Huang, Wang, Zheng, Zhong, ICIP 2019).

    ``H(f) = tr(cov(f)^+ cov(E[f | y]))``: the between-class covariance of the features measured
    in the metric of their total covariance, i.e. sum_c (n_c / N) ||W (mu_c - mu)||^2 with W the
    whitening of cov(f). ``^+`` is the Moore-Penrose pseudo-inverse (no shrinkage, as in the
    paper's code): eigenvalues of cov(f) below max(N, D) * eps * max(largest eigenvalue,
    mean squared feature) count as zero, so constant or duplicated dimensions are ignored.
    In [0, min(rank, C - 1)]; invariant to any invertible affine map of the features.
    """
    x = _matrix("features", features)
    y, classes = _labels(labels, x.shape[0])
    n, d = x.shape
    high, low = x.max(axis=0), x.min(axis=0)
    peak = float(max(high.max(), -low.min()))
    # a constant feature has no variance to whiten and no class-mean offset: leave it out
    live = high > low
    if peak == 0 or classes == 1 or not live.any():
        return 0.0  # no variance, or no between-class variance
    # H-score is scale-free; by the peak first, so that squares neither overflow nor underflow
    centred = x.take(np.flatnonzero(live), axis=1)  # a copy, centred in place
    centred /= peak
    # the mean square of x / peak, every column counted (a constant one is its value)
    constant = high[~live] / peak
    mean_square = float(np.einsum("ij,ij->", centred, centred)) + n * float(constant @ constant)
    mean_square /= n * d
    counts = np.bincount(y, minlength=classes).astype(np.float64)
    class_means = (_one_hot(y, classes).T @ centred) / counts[:, None]
    mean = centred.mean(axis=0)
    centred -= mean
    # the eigenvalues of cov and the class-mean offsets in its eigenbasis, (live,) and (live, C)
    eigval, offsets = _eig_project(centred.T @ centred / n, (class_means - mean).T)
    tol = max(n, d) * _EPS * max(float(eigval[-1]), mean_square)
    keep = eigval > tol
    if not keep.any():
        return 0.0
    whitened2 = offsets[keep] ** 2 / eigval[keep, None]  # (kept, C)
    return float(np.sum(counts / n * np.sum(whitened2, axis=0)))


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), safe for any magnitude."""
    peak = np.abs(x).max(axis=1, keepdims=True)
    x = np.divide(x, peak, out=np.zeros_like(x), where=peak > 0)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    unit: np.ndarray = np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)
    return unit


def knn_accuracy(features: Any, labels: Any, k: int = 5, folds: int = 5, seed: int = 0) -> float:
    """Leave-fold-out k-nearest-neighbour accuracy, a simple transferability baseline.

    Samples are shuffled with ``seed`` and split into ``folds`` folds; each fold is classified
    by majority vote of its k most cosine-similar samples among the other folds (cosine, so the
    score ignores each sample's feature norm); ties go to the class whose tied neighbours are
    more similar in total (an exact tie for the k-th neighbour goes to the earlier sample).
    Returns the fraction classified correctly, in [0, 1].
    Deterministic given the seed. ``folds`` above N means leave-one-out.
    """
    x = _matrix("features", features)
    y, classes = _labels(labels, x.shape[0])
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}")
    n, d = x.shape
    unit = _unit_rows(x)
    unit32 = unit.astype(np.float32)
    # |float32 cosine - float64 cosine| of unit rows: each row rounded to float32, then a
    # float32 dot product of length d; this is at least twice the worst case
    slack = (d + 2) * _EPS32
    order = np.random.default_rng(seed).permutation(n)
    correct = 0
    for fold in np.array_split(order, min(folds, n)):
        held_out = np.zeros(n, dtype=bool)
        held_out[fold] = True
        kept = np.flatnonzero(~held_out)
        kk = min(k, kept.shape[0])
        for start in range(0, fold.shape[0], _KNN_CHUNK):
            query = fold[start : start + _KNN_CHUNK]
            nearest, near_sims = _nearest(unit, unit32, query, kept, kk, slack)
            hits = y[nearest][:, :, None] == np.arange(classes)  # (q, kk, C)
            votes = hits.sum(axis=1)
            # (summed similarity + kk) / (2 kk + 1) lies in [0, 1): it breaks ties, never votes.
            tie_break = (np.einsum("qkc,qk->qc", hits, near_sims) + kk) / (2 * kk + 1)
            predicted = np.argmax(votes + tie_break, axis=1)
            correct += int(np.sum(predicted == y[query]))
    return float(correct / n)


def _nearest(
    unit: np.ndarray,
    unit32: np.ndarray,
    query: np.ndarray,
    kept: np.ndarray,
    kk: int,
    slack: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (q, kk) into `unit` of each query row's kk most cosine-similar rows of `kept`,
    most similar first (an exact tie goes to the earlier row), and their float64 similarities.

    The similarities are screened in float32 (half the time of float64): the kk-th largest of
    the maxima of disjoint groups of columns is at most the kk-th largest similarity, and every
    row whose float32 similarity is within 2 * slack of it is a candidate. Only candidates get
    their float64 similarity, so the choice is that of float64 similarities throughout.
    """
    q, groups = query.shape[0], min(kept.shape[0], max(64, 8 * kk))
    width = kept.shape[0] // groups
    sims = unit32[query] @ unit32[kept].T  # (q, len(kept)) float32
    maxima = sims[:, : groups * width].reshape(q, groups, width).max(axis=2)
    floor = np.partition(maxima, groups - kk, axis=1)[:, groups - kk]
    rows, cols = np.nonzero(sims >= (floor - 2 * slack)[:, None])
    if rows.shape[0] > 64 * kk * q:  # many near-equal similarities (duplicated samples)
        rows, cols = np.nonzero(np.ones(sims.shape, dtype=bool))
        exact = (unit[query] @ unit[kept].T).reshape(-1)
    else:
        exact = np.einsum("ij,ij->i", unit[query[rows]], unit[kept[cols]])
    ranked = np.lexsort((-exact, rows))  # by query row, then most similar first (stable)
    rows, cols, exact = rows[ranked], cols[ranked], exact[ranked]
    pick = np.searchsorted(rows, np.arange(q))[:, None] + np.arange(kk)
    return kept[cols[pick]], exact[pick]


def _nce_from_probs(source_probs: Any, labels: Any) -> float:
    """NCE on the source head's hard labels, the argmax of its probabilities."""
    return nce(np.argmax(_probs(source_probs), axis=1), labels)


SCORES: dict[str, Callable[[Any, Any], float]] = {
    "logme": logme,
    "leep": leep,
    "nce": _nce_from_probs,
    "hscore": hscore,
    "knn": knn_accuracy,
}
"""Every score as ``score(inputs, labels) -> float``; `SCORE_INPUTS` says what ``inputs`` is."""

SCORE_INPUTS: dict[str, str] = {
    "logme": "features",
    "leep": "probs",
    "nce": "probs",
    "hscore": "features",
    "knn": "features",
}
"""What each score reads: penultimate ``features`` (N, D) or source-head ``probs`` (N, Z)."""


def score_all(
    features: Any,
    labels: Any,
    source_probs: Any | None = None,
    names: Iterable[str] | None = None,
) -> dict[str, dict[str, float]]:
    """Compute the scores that have their inputs; return ``{name: {"value": v, "seconds": t}}``.

    ``names`` restricts the scores (default: all of `SCORES`; those needing ``source_probs`` are
    skipped when it is None). Naming a score whose inputs are missing, or an unknown score, raises
    ValueError. ``seconds`` is each score's own wall time.
    """
    inputs = {"features": features, "probs": source_probs}
    if names is None:
        chosen = [name for name in SCORES if inputs[SCORE_INPUTS[name]] is not None]
    else:
        chosen = list(dict.fromkeys(names))
        unknown = [name for name in chosen if name not in SCORES]
        if unknown:
            raise ValueError(f"unknown score(s) {unknown}; known: {sorted(SCORES)}")
        missing = [name for name in chosen if inputs[SCORE_INPUTS[name]] is None]
        if missing:
            raise ValueError(f"score(s) {missing} need source probabilities; pass source_probs")
    results: dict[str, dict[str, float]] = {}
    for name in chosen:
        start = time.perf_counter()
        value = SCORES[name](inputs[SCORE_INPUTS[name]], labels)
        results[name] = {"value": float(value), "seconds": time.perf_counter() - start}
    return results


def stratified_sample(labels: Any, cap: int, seed: int = 0) -> np.ndarray:
    """Sorted row indices of at most `cap` samples, drawn with `seed`, each class keeping its
    share of the rows (largest remainders; every class present keeps at least one row).

    Scoring a candidate costs a forward pass over the rows plus LogME's decomposition of a
    Gram matrix of min(rows, dims) squared: a bounded sample bounds both. Integer class ids are
    stratified; continuous targets (regression) and label matrices (multi-label) are drawn
    uniformly. Every row is kept when there are at most `cap`.
    """
    if cap < 2:
        raise ValueError(f"a sample needs at least 2 rows, got a cap of {cap}")
    y = np.asarray(labels)
    n = int(y.shape[0])
    if n <= cap:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        return np.sort(rng.choice(n, size=cap, replace=False))
    _, index = np.unique(y, return_inverse=True)
    counts = np.bincount(index.reshape(-1))
    share = cap * counts / n
    take = np.maximum(np.floor(share).astype(np.int64), 1)
    while take.sum() > cap:  # more classes than the cap leaves rows for: trim the largest
        take[int(np.argmax(take))] -= 1
    # the rows left over go to the largest fractional shares (ties: the lower class index)
    spare = cap - int(take.sum())
    for k in np.argsort(-(share - np.floor(share)), kind="stable"):
        if spare == 0:
            break
        if take[k] < counts[k]:
            take[k] += 1
            spare -= 1
    picked = [rng.permutation(np.flatnonzero(index == k))[: take[k]] for k in range(len(counts))]
    return np.sort(np.concatenate(picked))


def weighted_tau(scores: Any, accuracies: Any) -> float:
    """Weighted Kendall tau between scores and fine-tuned accuracies (higher = better ranking).

    ``scipy.stats.weightedtau`` with its defaults (hyperbolic weights by rank, so agreement
    among the best-scored candidates counts most), as in the LogME paper's benchmark. In
    [-1, 1]; NaN when either side is constant, since a ranking is then undefined.
    """
    a = np.asarray(scores, dtype=np.float64).reshape(-1)
    b = np.asarray(accuracies, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"{a.shape[0]} scores but {b.shape[0]} accuracies")
    if a.shape[0] < 2:
        raise ValueError("weighted tau needs at least 2 candidates")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("scores and accuracies must be finite")
    return float(stats.weightedtau(a, b)[0])
