"""k-means clustering of per-pixel descriptors, the elbow method, PCA and cluster statistics.

k-means (Lloyd) with k-means++ seeding and several restarts, keeping the lowest inertia
(within-cluster sum of squared distances). The elbow method chooses k where the inertia curve
W(k) lies farthest below the chord from its first to its last point, both axes scaled to [0, 1]
(the "kneedle" rule). Clusters are numbered by increasing first feature of their centre, so that
labels are reproducible across runs. Everything is NumPy: k-means on 10⁴ points in 2-D takes
milliseconds, and the elbow loop over k is a loop over models, not over pixels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = [
    "ClusterAnalysis",
    "KMeansResult",
    "PCAResult",
    "adjusted_rand_index",
    "cluster_descriptors",
    "cluster_fractions",
    "cluster_mean_spectra",
    "descriptor_densities",
    "elbow_curve",
    "elbow_k",
    "kmeans",
    "pca",
    "standardize",
]


def _features(x, name: str = "features") -> np.ndarray:
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
    x = _features(x)
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


def _plus_plus(x, k, rng):
    centers = [x[rng.integers(len(x))]]
    d2 = _sq_dist(x, centers[0][None])[:, 0]
    for _ in range(1, k):
        centers.append(x[rng.choice(len(x), p=d2 / d2.sum())])
        d2 = np.minimum(d2, _sq_dist(x, centers[-1][None])[:, 0])
    return np.array(centers)


def _lloyd(x, centers, max_iter, tol):
    n_iter = 0
    for n_iter in range(1, max_iter + 1):  # noqa: B007 (n_iter is returned)
        d2 = _sq_dist(x, centers)
        labels = d2.argmin(axis=1)
        counts = np.bincount(labels, minlength=len(centers))
        new = np.stack(
            [x[labels == j].mean(0) if counts[j] else centers[j] for j in range(len(centers))]
        )
        for j in np.flatnonzero(counts == 0):  # re-seed an empty cluster at the worst-fit point
            new[j] = x[d2[np.arange(len(x)), labels].argmax()]
        shift = np.sum((new - centers) ** 2)
        centers = new
        if shift <= tol:
            break
    d2 = _sq_dist(x, centers)
    labels = d2.argmin(axis=1)
    return labels, centers, float(d2[np.arange(len(x)), labels].sum()), n_iter


def kmeans(
    x, k: int, *, n_init: int = 10, max_iter: int = 300, tol: float = 1e-10, seed: int = 0
) -> KMeansResult:
    """k-means with k-means++ seeding, best of ``n_init`` restarts.

    Args:
        x: features (n, d), finite (standardise them first if their units differ).
        k: number of clusters, 1 ≤ k ≤ number of distinct points.
        n_init: restarts.
        max_iter: Lloyd iterations per restart.
        tol: stop when the squared centre shift falls below this.
        seed: random seed.

    Returns:
        :class:`KMeansResult`, clusters numbered by increasing first coordinate of the centre.

    Raises:
        ValueError: ``k`` out of range (e.g. more clusters than distinct points) or bad ``x``.

    Examples:
        >>> res = kmeans([[0.0], [0.1], [5.0], [5.1]], 2)
        >>> res.labels.tolist(), round(res.inertia, 6)
        ([0, 0, 1, 1], 0.01)
    """
    x = _features(x)
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise ValueError(f"k={k!r}: expected a positive integer number of clusters")
    distinct = len(np.unique(x, axis=0))
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
        run = _lloyd(x, _plus_plus(x, int(k), rng), max_iter, tol)
        if best is None or run[2] < best[2]:
            best = run
    labels, centers, inertia, n_iter = best
    order = np.lexsort(centers.T[::-1])
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return KMeansResult(rank[labels], centers[order], inertia, n_iter)


def elbow_curve(x, k_max: int = 8, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """Inertia W(k) for k = 1 … min(k_max, distinct points).

    Args:
        x: features (n, d).
        k_max: largest k tried.
        **kwargs: passed to :func:`kmeans`.

    Returns:
        ``(ks, inertias)``.
    """
    x = _features(x)
    top = min(int(k_max), len(np.unique(x, axis=0)))
    ks = np.arange(1, max(top, 1) + 1)
    return ks, np.array([kmeans(x, int(k), **kwargs).inertia for k in ks])


def elbow_k(ks, inertias) -> int:
    """The elbow: k of the point farthest below the chord of the normalised W(k) curve.

    Args:
        ks: the k values, increasing.
        inertias: W(k), non-increasing in a good run.

    Returns:
        The chosen k (``ks[0]`` when the curve is flat or has fewer than 3 points).

    Examples:
        >>> elbow_k([1, 2, 3, 4, 5, 6], [100.0, 60.0, 5.0, 4.0, 3.0, 2.5])
        3
    """
    ks, w = np.asarray(ks, dtype=np.float64), np.asarray(inertias, dtype=np.float64)
    if ks.shape != w.shape or ks.ndim != 1:
        raise ValueError(f"ks, inertias: expected equal 1-D shapes, got {ks.shape}, {w.shape}")
    if ks.size < 3 or not w[0] > w[-1]:
        return int(ks[0])
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


def cluster_fractions(labels, k: int, weights=None) -> np.ndarray:
    """Share of each cluster, optionally weighted (e.g. by the projected V density N_V).

    Args:
        labels: cluster labels (…), −1 for masked pixels (ignored).
        k: number of clusters.
        weights: non-negative weights (…), e.g. atoms/m²; NaN weights are ignored.

    Returns:
        Fractions (k,) summing to 1 (NaN if nothing is weighted).
    """
    labels = np.asarray(labels).ravel()
    w = np.ones(labels.shape) if weights is None else np.asarray(weights, float).ravel()
    if w.shape != labels.shape:
        raise ValueError(f"weights: expected shape of labels {labels.shape}, got {w.shape}")
    use = (labels >= 0) & (labels < k) & np.isfinite(w)
    sums = np.bincount(labels[use], weights=w[use], minlength=k)[:k]
    total = sums.sum()
    return sums / total if total > 0 else np.full(k, np.nan)


def descriptor_densities(values, labels, k: int, bins: int = 40, value_range=None):
    """Per-cluster probability densities (normalised histograms) of one descriptor.

    Args:
        values: descriptor (…), NaN where masked.
        labels: cluster labels (…), −1 masked.
        k: number of clusters.
        bins: histogram bins.
        value_range: (low, high); default the finite range of ``values``.

    Returns:
        ``(centres (bins,), densities (k, bins))``; each row integrates to 1 (zeros if empty).
    """
    v, lab = np.asarray(values, float).ravel(), np.asarray(labels).ravel()
    use = np.isfinite(v) & (lab >= 0)
    if value_range is None:
        value_range = (v[use].min(), v[use].max()) if use.any() else (0.0, 1.0)
        if value_range[0] == value_range[1]:
            value_range = (value_range[0] - 0.5, value_range[1] + 0.5)
    edges = np.linspace(*value_range, bins + 1)
    dens = np.zeros((k, bins))
    for j in range(k):  # k histograms, each vectorised over pixels
        sel = v[use & (lab == j)]
        if sel.size:
            dens[j] = np.histogram(sel, edges, density=True)[0]
    return 0.5 * (edges[1:] + edges[:-1]), dens


def cluster_mean_spectra(spectra, labels, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of the spectra of each cluster.

    Args:
        spectra: stack (energy, …) in μt.
        labels: cluster labels (…), −1 masked.
        k: number of clusters.

    Returns:
        ``(mean (k, energy), std (k, energy))``; NaN for empty clusters.
    """
    s = np.asarray(spectra, float)
    flat, lab = s.reshape(s.shape[0], -1), np.asarray(labels).ravel()
    if lab.size != flat.shape[1]:
        raise ValueError(f"labels: expected shape {s.shape[1:]}, got {np.shape(labels)}")
    mean, std = np.full((k, s.shape[0]), np.nan), np.full((k, s.shape[0]), np.nan)
    for j in range(k):
        sel = flat[:, lab == j]
        if sel.shape[1]:
            mean[j], std[j] = np.nanmean(sel, axis=1), np.nanstd(sel, axis=1)
    return mean, std


@dataclasses.dataclass(frozen=True)
class PCAResult:
    """Result of :func:`pca`.

    Attributes:
        mean: mean spectrum (E,).
        components: orthonormal principal components (c, E).
        explained_variance_ratio: share of the variance of each component (c,).
        scores: (spectra − mean) @ componentsᵀ, shape (n, c).
    """

    mean: np.ndarray
    components: np.ndarray
    explained_variance_ratio: np.ndarray
    scores: np.ndarray


def pca(spectra, n_components: int | None = None) -> PCAResult:
    """Principal components of spectra (n, E) by SVD of the centred data.

    Args:
        spectra: one spectrum per row (n, E), finite.
        n_components: components kept (default min(n, E)).

    Returns:
        :class:`PCAResult`; component signs make the largest |loading| positive.
    """
    x = _features(spectra, "spectra")
    mean = x.mean(axis=0)
    u, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    c = len(s) if n_components is None else int(n_components)
    if not 1 <= c <= len(s):
        raise ValueError(f"n_components={n_components!r}: expected 1 … {len(s)}")
    sign = np.sign(vt[np.arange(len(s)), np.abs(vt).argmax(axis=1)])
    vt, u = vt * sign[:, None], u * sign[None]
    var = s**2
    ratio = var / var.sum() if var.sum() > 0 else np.zeros_like(var)
    return PCAResult(mean, vt[:c], ratio[:c], u[:, :c] * s[:c])


@dataclasses.dataclass(frozen=True)
class ClusterAnalysis:
    """Result of :func:`cluster_descriptors`.

    Attributes:
        labels: cluster map (…), −1 where masked or not clustered.
        k: number of clusters.
        ks: k values of the elbow curve (empty if k was given).
        inertias: W(k) of the elbow curve, standardised-feature units.
        centers: cluster centres (k, d) in the descriptors' own units.
        features: names of the descriptors used.
        fractions: share of each cluster, weighted as asked.
    """

    labels: np.ndarray
    k: int
    ks: np.ndarray
    inertias: np.ndarray
    centers: np.ndarray
    features: tuple[str, ...]
    fractions: np.ndarray


def cluster_descriptors(
    descriptors: Mapping[str, np.ndarray],
    features: Sequence[str] = ("edge_energy_ev", "pre_edge_ratio"),
    *,
    k: int | None = None,
    k_max: int = 8,
    weights=None,
    mask=None,
    n_init: int = 10,
    seed: int = 0,
) -> ClusterAnalysis:
    """Standardise descriptor maps, choose k by the elbow (unless given), run k-means.

    Args:
        descriptors: ``{name: map (…)}``, NaN where masked (e.g. ``XanesFit.descriptors()``).
        features: descriptor names to cluster on.
        k: number of clusters; None chooses it by :func:`elbow_k` over 1 … ``k_max``.
        k_max: largest k of the elbow curve.
        weights: map (…) weighting the fractions (e.g. N_V in atoms/m²); None counts pixels.
        mask: map (…) of pixels to cluster (e.g. Δμt ≥ 5σ: k-means is not robust to the
            unstable ratios of barely-valid pixels); None clusters every finite pixel.
        n_init: k-means restarts.
        seed: random seed.

    Returns:
        :class:`ClusterAnalysis`.
    """
    missing = [f for f in features if f not in descriptors]
    if missing or not features:
        raise ValueError(f"features: {missing or 'none'} not among {sorted(descriptors)}")
    maps = np.stack([np.asarray(descriptors[f], float) for f in features], axis=-1)
    use = np.all(np.isfinite(maps), axis=-1)
    if mask is not None:
        if np.shape(mask) != use.shape:
            raise ValueError(f"mask: expected the maps' shape {use.shape}, got {np.shape(mask)}")
        use &= np.asarray(mask, bool)
    if not use.any():
        raise ValueError("descriptors: every pixel is masked (NaN); nothing to cluster")
    z, mean, std = standardize(maps[use])
    ks, inertias = np.arange(0), np.zeros(0)
    if k is None:
        ks, inertias = elbow_curve(z, k_max, n_init=n_init, seed=seed)
        k = elbow_k(ks, inertias)
    res = kmeans(z, k, n_init=n_init, seed=seed)
    labels = np.full(use.shape, -1, dtype=np.int32)
    labels[use] = res.labels
    return ClusterAnalysis(
        labels=labels,
        k=int(k),
        ks=ks,
        inertias=inertias,
        centers=res.centers * std + mean,
        features=tuple(features),
        fractions=cluster_fractions(labels, int(k), weights),
    )
