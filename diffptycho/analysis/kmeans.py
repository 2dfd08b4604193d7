"""k-means with k-means++ seeding and restarts, the elbow rule, and the adjusted Rand index.

k-means (Lloyd) keeps the lowest inertia (weighted within-cluster sum of squared distances) of
several k-means++ restarts. The elbow rule chooses k where the (log) inertia curve W(k) lies
farthest below the chord from its first to its last point, both axes scaled to [0, 1] (the
"kneedle" rule). Clusters are numbered by increasing first coordinate of their centre, so that
labels are reproducible. NumPy: k-means on 10⁴ points in 2-D takes milliseconds, and the elbow
loop over k is a loop over models, not over pixels.

k-means assigns a point to the nearest centre, as if every feature of every point were equally
precise. Per-pixel descriptors are not: their noise scales as σ/Δμt, and differently per
descriptor (a pre-edge peak ratio is far noisier than the edge energy on a thin pixel).
:func:`noise_aware_assign` refines a k-means partition with a per-point, per-feature noise
model fitted to the data, variance = a_f + b_f/SNR² (spread within a cluster + measurement
noise), assigning each point to the centre of the smallest variance-weighted distance: the
maximum-likelihood (hard) assignment of a Gaussian mixture with known heteroscedastic
measurement noise (Bovy, Hogg & Roweis, Ann. Appl. Stat. 5, 1657 (2011), "extreme
deconvolution"). The model is shared by all clusters, so no log-determinant term enters.

The elbow counts clusters by how much each split lowers the inertia, and a broad cluster whose
spread is noise (thin pixels of one species) lowers it when split too. :func:`noise_stability`
asks instead whether a partition survives a fresh draw of that noise: it adds noise of the
fitted measurement variance to every point, partitions again and scores the agreement (ARI).
A split of one noisy cluster moves with the draw; clusters apart by more than their noise do not
(resampling stability, Lange, Roth, Braun & Buhmann, Neural Comput. 16, 1299 (2004)).
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = [
    "KMeansResult",
    "NoiseAwareResult",
    "adjusted_rand_index",
    "check_features",
    "elbow_curve",
    "elbow_k",
    "kmeans",
    "noise_aware_assign",
    "noise_stability",
    "standardize",
]


def check_features(x, name: str = "features") -> np.ndarray:
    """Validate features as a finite, non-empty (n, d) float64 array (1-D → one column)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"{name}: expected a non-empty (n, d) array, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name}: non-finite values; drop masked (NaN) pixels first")
    return x


def standardize(x) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Z-scores per feature (a constant feature is centred, not scaled).

    Args:
        x: features (n, d), finite.

    Returns:
        ``(z, mean, std)`` with ``z = (x − mean) / std``.
    """
    x = check_features(x)
    mean, std = x.mean(axis=0), x.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return (x - mean) / std, mean, std


@dataclasses.dataclass(frozen=True)
class KMeansResult:
    """Result of :func:`kmeans`: ``labels`` (n,), ``centers`` (k, d), ``inertia``, ``n_iter``."""

    labels: np.ndarray
    centers: np.ndarray
    inertia: float
    n_iter: int


def _sq_dist(x, c):
    return np.maximum((x**2).sum(1)[:, None] - 2.0 * x @ c.T + (c**2).sum(1)[None], 0.0)


def _plus_plus(x, w, k, rng):
    centers = [x[rng.choice(len(x), p=w / w.sum())]]
    d2 = _sq_dist(x, centers[0][None])[:, 0]
    for _ in range(1, k):
        centers.append(x[rng.choice(len(x), p=w * d2 / np.sum(w * d2))])
        d2 = np.minimum(d2, _sq_dist(x, centers[-1][None])[:, 0])
    return np.array(centers)


def _lloyd(x, w, centers, max_iter, tol):
    k = len(centers)
    n_iter = 0
    for n_iter in range(1, max_iter + 1):  # noqa: B007 (n_iter is returned)
        d2 = _sq_dist(x, centers)
        labels = d2.argmin(axis=1)
        mass = np.bincount(labels, weights=w, minlength=k)
        sums = np.stack([np.bincount(labels, weights=w * col, minlength=k) for col in x.T], 1)
        new = np.where(mass[:, None] > 0, sums / np.where(mass > 0, mass, 1.0)[:, None], centers)
        for j in np.flatnonzero(mass == 0):  # re-seed an empty cluster at the worst-fit point
            new[j] = x[np.argmax(w * d2[np.arange(len(x)), labels])]
        shift = np.sum((new - centers) ** 2)
        centers = new
        if shift <= tol:
            break
    d2 = _sq_dist(x, centers)
    labels = d2.argmin(axis=1)
    return labels, centers, float(np.sum(w * d2[np.arange(len(x)), labels])), n_iter


def kmeans(
    x,
    k: int,
    *,
    sample_weight=None,
    n_init: int = 10,
    max_iter: int = 300,
    tol: float = 1e-10,
    seed: int = 0,
) -> KMeansResult:
    """k-means with k-means++ seeding, best of ``n_init`` restarts.

    Args:
        x: features (n, d), finite (standardise them first if their units differ).
        k: number of clusters, 1 ≤ k ≤ number of distinct points.
        sample_weight: non-negative weight per point (n,); the inertia is Σ wᵢ‖xᵢ − c‖² and
            centres are weighted means. With descriptor noise ∝ 1/SNR, w = SNR² is the
            inverse-variance (χ²) choice. None weighs all points equally.
        n_init: restarts.
        max_iter: Lloyd iterations per restart.
        tol: stop when the squared centre shift falls below this.
        seed: random seed.

    Returns:
        :class:`KMeansResult`, clusters numbered by increasing first coordinate of the centre.

    Raises:
        ValueError: ``k`` out of range (e.g. more clusters than distinct points), bad ``x`` or
            ``sample_weight``.

    Examples:
        >>> res = kmeans([[0.0], [0.1], [5.0], [5.1]], 2)
        >>> res.labels.tolist(), round(res.inertia, 6)
        ([0, 0, 1, 1], 0.01)
    """
    x = check_features(x)
    w = np.ones(len(x)) if sample_weight is None else np.asarray(sample_weight, float)
    if w.shape != (len(x),) or not np.all(np.isfinite(w)) or np.any(w < 0) or not w.sum() > 0:
        raise ValueError(
            f"sample_weight: expected {len(x)} finite non-negative weights, not all zero"
        )
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise ValueError(f"k={k!r}: expected a positive integer number of clusters")
    distinct = len(np.unique(x[w > 0], axis=0))
    if k > distinct:
        raise ValueError(
            f"k={k}: larger than the {distinct} distinct points in the features; choose k ≤ "
            f"{distinct}"
        )
    if n_init < 1:
        raise ValueError(f"n_init={n_init!r}: expected ≥ 1 restarts")
    rng = np.random.default_rng(seed)
    best = None
    for _ in range(n_init):
        run = _lloyd(x, w, _plus_plus(x, w, int(k), rng), max_iter, tol)
        if best is None or run[2] < best[2]:
            best = run
    labels, centers, inertia, n_iter = best
    order = np.lexsort(centers.T[::-1])
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return KMeansResult(rank[labels], centers[order], inertia, n_iter)


@dataclasses.dataclass(frozen=True)
class NoiseAwareResult:
    """Result of :func:`noise_aware_assign`.

    Attributes:
        labels: cluster of each point (n,), numbered as the given centres.
        centers: (k, d) inverse-variance weighted means of the clusters.
        variance: (n, d) variance of each point's features under the fitted model.
        coefficients: (d, 2) per feature: the spread within a cluster a_f and the noise
            coefficient b_f of variance = a_f + b_f / SNR², in squared feature units.
        n_iter: reassignment rounds run.
    """

    labels: np.ndarray
    centers: np.ndarray
    variance: np.ndarray
    coefficients: np.ndarray
    n_iter: int


def _noise_model(residual2, inv_snr2) -> tuple[np.ndarray, np.ndarray]:
    """Fit residual² ≈ a_f + b_f/SNR² per feature (NNLS): (a_f, b_f) (d, 2), variances (n, d)."""
    from scipy.optimize import nnls

    design = np.stack([np.ones_like(inv_snr2), inv_snr2], axis=1)
    scale = np.sqrt(np.sum(design**2, axis=0))  # equilibrated columns
    coef = np.stack([nnls(design / scale, r2)[0] / scale for r2 in residual2.T])
    floor = 1e-6 * np.maximum(residual2.mean(axis=0), np.finfo(float).tiny)
    coef[:, 0] = np.maximum(coef[:, 0], floor)  # never a zero variance
    return coef, coef[:, 0] + inv_snr2[:, None] * coef[:, 1]


def noise_aware_assign(x, centers, snr, *, max_iter: int = 50) -> NoiseAwareResult:
    """Refine a partition with per-point, per-feature noise variance a_f + b_f/SNR².

    Starting from the nearest-centre labels, alternately fit (a_f, b_f) to the squared
    residuals about the centres (non-negative least squares, per feature), assign each point
    to the centre minimising Σ_f (x_f − c_f)²/var_f, and move each centre to the
    inverse-variance weighted mean of its points, until no label changes. Points with a high
    SNR (thick pixels) then decide the clusters by all features, points with a low SNR by
    the features that stay precise on them.

    Args:
        x: features (n, d), finite (standardised or in any consistent units).
        centers: (k, d) starting centres, e.g. :attr:`KMeansResult.centers`.
        snr: (n,) positive signal-to-noise ratio of each point (e.g. edge jump / σ).
        max_iter: largest number of reassignment rounds.

    Returns:
        :class:`NoiseAwareResult`; an emptied cluster keeps its centre.

    Raises:
        ValueError: bad ``x``, ``centers`` (wrong width, non-finite) or ``snr`` (wrong length,
            not finite and positive), or ``max_iter`` < 1.

    """
    x = check_features(x)
    c = np.asarray(centers, np.float64)
    if c.ndim != 2 or c.shape[1] != x.shape[1] or not np.all(np.isfinite(c)) or not len(c):
        raise ValueError(
            f"centers: expected finite (k ≥ 1, {x.shape[1]}) centres, got shape {c.shape}"
        )
    s = np.asarray(snr, np.float64)
    if s.shape != (len(x),) or not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError(f"snr: expected {len(x)} finite positive values, got shape {s.shape}")
    if isinstance(max_iter, bool) or int(max_iter) != max_iter or max_iter < 1:
        raise ValueError(f"max_iter={max_iter!r}: expected a positive integer")
    inv_snr2 = 1.0 / s**2
    labels = _sq_dist(x, c).argmin(axis=1)
    n_iter = 0
    for n_iter in range(1, int(max_iter) + 1):  # noqa: B007 (n_iter is returned)
        _, var = _noise_model((x - c[labels]) ** 2, inv_snr2)
        inv = 1.0 / var
        d = np.stack([np.sum((x - cj) ** 2 * inv, axis=1) for cj in c], axis=1)
        new = d.argmin(axis=1)
        for j in range(len(c)):
            mine = new == j
            if mine.any():
                c[j] = np.sum(inv[mine] * x[mine], axis=0) / np.sum(inv[mine], axis=0)
        if np.array_equal(new, labels):
            break
        labels = new
    coef, var = _noise_model((x - c[labels]) ** 2, inv_snr2)
    return NoiseAwareResult(labels, c, var, coef, n_iter)


def noise_stability(
    x,
    k: int,
    snr,
    *,
    sample_weight=None,
    n_resamples: int = 16,
    n_init: int = 10,
    seed: int = 0,
) -> tuple[NoiseAwareResult, float]:
    """A noise-aware k-partition and its stability under a fresh draw of the noise.

    Partitions ``x`` by :func:`kmeans` + :func:`noise_aware_assign`, then ``n_resamples``
    times adds Gaussian noise of the fitted measurement variance b_f/SNR² to every point (not
    the spread a_f within a cluster: that is signal), partitions the perturbed points the same
    way (new k-means restarts) and scores the agreement with the first partition by the
    adjusted Rand index. The draw adds to the noise already in ``x``, so the perturbed points
    carry twice its variance: a split that noise can move shows at once. Simulated V K-edge
    descriptor maps (eight phantoms reconstructed from frames, raw and SVD, and 12 noisy-map
    cases): the true k = 3 scores 0.94–1.00 in all 28; the elbow's spurious k = 4 (one
    species' thin pixels split) 0.61 and 0.85.

    Args:
        x: features (n, d), finite (standardised).
        k: number of clusters.
        snr: (n,) positive signal-to-noise ratio of each point.
        sample_weight: (n,) k-means weights, or None.
        n_resamples: number of noise draws.
        n_init: k-means restarts per partition.
        seed: random seed (noise draws and restarts).

    Returns:
        ``(partition, stability)``: the noise-aware partition of ``x`` and the median ARI
        over the draws (1: every draw reproduces it).

    Raises:
        ValueError: bad ``x``, ``snr`` or ``k``, or ``n_resamples`` < 1.
    """
    x = check_features(x)
    if (
        not isinstance(n_resamples, int | np.integer)
        or isinstance(n_resamples, bool)
        or n_resamples < 1
    ):
        raise ValueError(f"n_resamples={n_resamples!r}: expected a positive integer")

    def partition(points, restart_seed):
        start = kmeans(points, k, n_init=n_init, seed=restart_seed, sample_weight=sample_weight)
        return noise_aware_assign(points, start.centers, snr)

    base = partition(x, seed)
    rng = np.random.default_rng(seed)
    scale = np.sqrt(base.coefficients[:, 1] / np.asarray(snr, np.float64)[:, None] ** 2)
    scores = [
        adjusted_rand_index(
            base.labels, partition(x + rng.standard_normal(x.shape) * scale, seed + r + 1).labels
        )
        for r in range(int(n_resamples))
    ]
    return base, float(np.median(scores))


def elbow_curve(x, k_max: int = 8, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """Inertia W(k) for k = 1 … min(k_max, distinct points).

    Args:
        x: features (n, d).
        k_max: largest k tried.
        **kwargs: passed to :func:`kmeans`.

    Returns:
        ``(ks, inertias)``.
    """
    x = check_features(x)
    w = kwargs.get("sample_weight")
    top = min(int(k_max), len(np.unique(x if w is None else x[np.asarray(w) > 0], axis=0)))
    ks = np.arange(1, max(top, 1) + 1)
    return ks, np.array([kmeans(x, int(k), **kwargs).inertia for k in ks])


def elbow_k(ks, inertias, scale: str = "log") -> int:
    """The elbow: k of the point farthest below the chord of the normalised W(k) curve.

    Both axes are scaled to [0, 1] and k maximises (1 − x − y), the distance below the chord
    from (k_first, W_first) to (k_last, W_last). With ``scale="log"`` the curve is log W(k), so
    the rule weighs *relative* drops: a linear W misses the true k when the first split already
    removes most of the inertia (one far cluster) and later drops look small in absolute terms.
    On simulated V K-edge maps (3 domain types, 3 phantoms × 4 noise levels, SNR²-weighted
    k-means) the log rule found k = 3 in 12/12 cases, the linear rule in 11/12.

    Args:
        ks: the k values, increasing.
        inertias: W(k), non-increasing in a good run (non-negative).
        scale: ``"log"`` (default) or ``"linear"``.

    Returns:
        The chosen k (``ks[0]`` when the curve is flat or has fewer than 3 points).

    Examples:
        >>> elbow_k([1, 2, 3, 4, 5, 6], [100.0, 60.0, 5.0, 4.0, 3.0, 2.5])
        3
        >>> elbow_k([1, 2, 3, 4, 5, 6, 7, 8], [1.0, 0.14, 0.006, 0.004, 0.003, 0.0025, 0.002,
        ...         0.0018], "linear"), elbow_k([1, 2, 3, 4, 5, 6, 7, 8], [1.0, 0.14, 0.006,
        ...         0.004, 0.003, 0.0025, 0.002, 0.0018])
        (2, 3)
    """
    ks, w = np.asarray(ks, dtype=np.float64), np.asarray(inertias, dtype=np.float64)
    if ks.shape != w.shape or ks.ndim != 1:
        raise ValueError(f"ks, inertias: expected equal 1-D shapes, got {ks.shape}, {w.shape}")
    if scale not in ("log", "linear"):
        raise ValueError(f"scale={scale!r}: expected 'log' or 'linear'")
    if ks.size < 3 or not w[0] > w[-1]:
        return int(ks[0])
    if scale == "log":  # a perfect split (W = 0) counts as 10⁻¹² of W(first)
        w = np.log(np.maximum(w, 1e-12 * w[0]))
    xn = (ks - ks[0]) / (ks[-1] - ks[0])
    yn = (w - w[-1]) / (w[0] - w[-1])
    return int(ks[np.argmax(1.0 - xn - yn)])


def adjusted_rand_index(labels_true, labels_pred) -> float:
    """Adjusted Rand index (Hubert & Arabie 1985) of two partitions of the same points.

    ARI = (Σ_ij C(n_ij, 2) − E) / (½(Σ_i C(a_i, 2) + Σ_j C(b_j, 2)) − E), with E =
    Σ_i C(a_i, 2) Σ_j C(b_j, 2) / C(n, 2): 1 for identical partitions (up to renaming), ≈ 0 for
    random ones.

    Args:
        labels_true: labels (n,), any integers.
        labels_pred: labels (n,).

    Returns:
        The index (1.0 when both partitions are trivial in the same way).

    Examples:
        >>> round(adjusted_rand_index([0, 0, 1, 1], [0, 0, 1, 2]), 4)
        0.5714
    """
    a, b = np.asarray(labels_true).ravel(), np.asarray(labels_pred).ravel()
    if a.shape != b.shape:
        raise ValueError(f"labels_true, labels_pred: shapes differ ({a.shape} vs {b.shape})")
    _, ia = np.unique(a, return_inverse=True)
    _, ib = np.unique(b, return_inverse=True)
    table = np.zeros((ia.max(initial=-1) + 1, ib.max(initial=-1) + 1))
    np.add.at(table, (ia, ib), 1.0)

    def pairs(n):
        return float(np.sum(n * (n - 1) / 2.0))

    index, sa, sb = pairs(table), pairs(table.sum(1)), pairs(table.sum(0))
    total = a.size * (a.size - 1) / 2.0
    expected = sa * sb / total if total > 0 else 0.0
    maximum = 0.5 * (sa + sb)
    if maximum == expected:
        return 1.0
    return (index - expected) / (maximum - expected)
