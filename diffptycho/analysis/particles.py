"""Per-particle statistics of labelled chemical volumes (battery-chemistry workflow).

For each labelled particle: volume, mean composition (share of the second end member, FePO4,
weighted by concentration), the plate normal (axis of largest moment of the inertia tensor),
facet area (area of the particle's footprint on the plane normal to it) and thickness. The
thickness is the FWHM of the density (or OD) profile along the normal, the profile being the mean
over the facet (voxels binned by their distance along the normal). The half maximum is
*absolute*: measured from zero, not from a baseline, and by default half of a given full density
(e.g. 1 for volume fractions) rather than half of the profile's own peak, so that a blurred thin
plate is not widened to the resolution.

A particle is **active** when its FePO4 share exceeds a threshold (15 % and 25 % in the study);
the active fraction p of N particles carries the binomial error √(p(1 − p)/N).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

__all__ = [
    "ActiveFraction",
    "ParticleTable",
    "active_fraction",
    "activity_by_bins",
    "binomial_error",
    "fwhm",
    "inertia_tensor",
    "particle_properties",
    "plate_normal",
    "thickness_profile",
]


def binomial_error(p, n):
    """Standard error √(p(1 − p)/N) of a fraction p measured on N particles (NaN for N = 0).

    Examples:
        >>> round(float(binomial_error(0.5, 100)), 6)
        0.05
    """
    p, n = np.asarray(p, dtype=np.float64), np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, np.sqrt(p * (1.0 - p) / np.where(n > 0, n, 1.0)), np.nan)


@dataclasses.dataclass(frozen=True)
class ActiveFraction:
    """Fraction of active particles at one threshold.

    Attributes:
        threshold: FePO4 share above which a particle is active (dimensionless).
        fraction: active fraction p (NaN without particles).
        error: binomial standard error √(p(1 − p)/N).
        n_active: number of active particles.
        n: number of particles.
    """

    threshold: float
    fraction: float
    error: float
    n_active: int
    n: int


def active_fraction(share_second, threshold: float) -> ActiveFraction:
    """Share of particles whose FePO4 fraction exceeds ``threshold``, with binomial error.

    Args:
        share_second: per-particle share of the second end member (n,); NaN entries skipped.
        threshold: activity threshold (e.g. 0.15 or 0.25).

    Returns:
        :class:`ActiveFraction`.

    Examples:
        >>> a = active_fraction([0.1, 0.2, 0.3, 0.9], 0.25)
        >>> (a.fraction, round(a.error, 4), a.n)
        (0.5, 0.25, 4)
    """
    s = np.asarray(share_second, dtype=np.float64).ravel()
    s = s[np.isfinite(s)]
    n, k = int(s.size), int(np.sum(s > threshold))
    p = k / n if n else float("nan")
    return ActiveFraction(float(threshold), p, float(binomial_error(p, n)), k, n)


def activity_by_bins(values, share_second, threshold: float, bins) -> dict[str, np.ndarray]:
    """Active fraction of particles binned by a size measure (volume, facet area, …).

    Args:
        values: per-particle size measure (n,).
        share_second: per-particle FePO4 share (n,).
        threshold: activity threshold.
        bins: bin edges (k + 1,) in the unit of ``values``, or a number of quantile bins.

    Returns:
        ``{"edges", "centres", "fraction", "error", "n"}``; empty bins give NaN.
    """
    v = np.asarray(values, dtype=np.float64)
    s = np.asarray(share_second, dtype=np.float64)
    ok = np.isfinite(v) & np.isfinite(s)
    v, s = v[ok], s[ok]
    if np.isscalar(bins):
        edges = np.quantile(v, np.linspace(0, 1, int(bins) + 1)) if v.size else np.zeros(2)
    else:
        edges = np.asarray(bins, dtype=np.float64)
    which = np.clip(np.searchsorted(edges, v, side="right") - 1, 0, edges.size - 2)
    n = np.bincount(which, minlength=edges.size - 1).astype(float)
    k = np.bincount(which, weights=(s > threshold).astype(float), minlength=edges.size - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(n > 0, k / np.where(n > 0, n, 1), np.nan)
    return {
        "edges": edges,
        "centres": 0.5 * (edges[1:] + edges[:-1]),
        "fraction": p,
        "error": binomial_error(p, n),
        "n": n,
    }


def inertia_tensor(coords, weights=None) -> np.ndarray:
    """Inertia tensor Σ w (|r|² 𝟙 − r rᵀ) about the weighted centroid.

    Args:
        coords: point coordinates (n, 3), any length unit.
        weights: masses (n,), default 1.

    Returns:
        (3, 3) tensor in mass × unit².
    """
    r = np.asarray(coords, dtype=np.float64)
    w = np.ones(r.shape[0]) if weights is None else np.asarray(weights, dtype=np.float64)
    r = r - np.average(r, axis=0, weights=w)
    second = (w[:, None, None] * r[:, :, None] * r[:, None, :]).sum(axis=0)
    return np.trace(second) * np.eye(r.shape[1]) - second


def plate_normal(coords, weights=None) -> np.ndarray:
    """Plate normal: the principal axis of the largest moment of inertia (unit vector).

    Args:
        coords: voxel coordinates (n, 3) in (z, y, x) order.
        weights: voxel masses (n,), default 1.

    Returns:
        Unit normal (3,) in (z, y, x), sign chosen so its largest component is positive.
    """
    _, vectors = np.linalg.eigh(inertia_tensor(coords, weights))
    n = vectors[:, -1]
    return n if n[np.argmax(np.abs(n))] > 0 else -n


def fwhm(profile, spacing: float = 1.0, half_maximum: float | None = None, positions=None) -> float:
    """Full width at half maximum of a single-peaked profile, with an absolute half maximum.

    The crossings on either side of the peak are linearly interpolated; NaN samples are skipped.

    Args:
        profile: samples (n,).
        spacing: sample spacing when ``positions`` is None (any length unit; the width has it).
        half_maximum: the level, absolute (from zero); default half the profile's maximum.
        positions: increasing sample positions (n,), for non-uniform sampling.

    Returns:
        The width; NaN if the profile does not fall below the level on both sides or never
        reaches it.

    Examples:
        >>> fwhm([0, 0, 1, 2, 2, 2, 1, 0, 0])
        4.0
    """
    y = np.asarray(profile, dtype=np.float64)
    x = np.arange(y.size) * spacing if positions is None else np.asarray(positions, float)
    if x.shape != y.shape:
        raise ValueError(f"positions: expected shape {y.shape}, got {x.shape}")
    ok = np.isfinite(y)
    x, y = x[ok], y[ok]
    if y.size < 3:
        return float("nan")
    peak = int(np.argmax(y))
    level = 0.5 * y[peak] if half_maximum is None else float(half_maximum)
    if y[peak] < level or y[peak] <= 0:
        return float("nan")
    below_left = np.nonzero(y[:peak] < level)[0]
    below_right = np.nonzero(y[peak:] < level)[0]
    if below_left.size == 0 or below_right.size == 0:
        return float("nan")
    i = below_left[-1]  # y[i] < level ≤ y[i + 1]
    left = x[i] + (level - y[i]) / (y[i + 1] - y[i]) * (x[i + 1] - x[i])
    j = peak + below_right[0]  # y[j - 1] ≥ level > y[j]
    right = x[j - 1] + (y[j - 1] - level) / (y[j - 1] - y[j]) * (x[j] - x[j - 1])
    return float(right - left)


def _in_plane_basis(normal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    helper = np.eye(3)[np.argmin(np.abs(normal))]
    e1 = np.cross(normal, helper)
    e1 /= np.linalg.norm(e1)
    return e1, np.cross(normal, e1)


def thickness_profile(
    density,
    labels,
    label: int,
    normal,
    *,
    margin: int = 4,
    rim: int = 1,
    step: float = 0.5,
    box: tuple[slice, ...] | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Density profile along the plate normal, averaged over the facet, and the facet area.

    Voxels of a box around the particle (grown by ``margin``) are binned by their distance s
    along the normal; only voxels whose in-plane position falls on the particle's footprint
    (eroded by ``rim`` to leave out the blurred edges) and that belong to no other particle count.

    Args:
        density: density or OD per voxel (z, y, x).
        labels: particle labels (z, y, x).
        label: the particle.
        normal: unit plate normal (3,) in (z, y, x).
        margin: voxels added around the particle's bounding box.
        rim: footprint erosion in voxels.
        step: bin width along the normal in voxels.
        box: the particle's bounding box (from ``ndimage.find_objects``), if known.

    Returns:
        ``(s, profile, facet_area)``: centres of the non-empty bins (voxels), the mean density
        in each, and the footprint area in voxel².
    """
    if box is None:
        boxes = ndimage.find_objects((np.asarray(labels) == label).astype(np.int8))
        if not boxes:
            raise ValueError(f"label={label}: no such particle")
        box = boxes[0]
    shape = np.shape(labels)
    box = tuple(
        slice(max(b.start - margin, 0), min(b.stop + margin, n))
        for b, n in zip(box, shape, strict=True)
    )
    lab, dens = np.asarray(labels)[box], np.asarray(density, dtype=np.float64)[box]
    coords = np.stack(np.meshgrid(*[np.arange(b.start, b.stop) for b in box], indexing="ij"), -1)
    mine = lab == label
    centre = coords[mine].mean(axis=0)
    n = np.asarray(normal, dtype=np.float64)
    e1, e2 = _in_plane_basis(n)
    r = coords - centre
    s, u, v = r @ n, np.rint(r @ e1).astype(int), np.rint(r @ e2).astype(int)
    u0, v0 = u[mine].min() - 1, v[mine].min() - 1
    grid = np.zeros((u[mine].max() - u0 + 2, v[mine].max() - v0 + 2), bool)
    grid[u[mine] - u0, v[mine] - v0] = True
    grid = ndimage.binary_closing(grid, border_value=0) | grid
    area = float(grid.sum())
    inner = ndimage.binary_erosion(grid, iterations=rim) if rim > 0 else grid
    if not inner.any():
        inner = grid
    inside = (u - u0 >= 0) & (u - u0 < grid.shape[0]) & (v - v0 >= 0) & (v - v0 < grid.shape[1])
    uu, vv = np.clip(u - u0, 0, grid.shape[0] - 1), np.clip(v - v0, 0, grid.shape[1] - 1)
    use = inside & inner[uu, vv] & ((lab == label) | (lab == 0)) & np.isfinite(dens)
    edges = np.arange(np.floor(s[use].min() / step) * step, s[use].max() + 2 * step, step)
    which = np.digitize(s[use], edges) - 1
    counts = np.bincount(which, minlength=edges.size - 1)[: edges.size - 1]
    sums = np.bincount(which, weights=dens[use], minlength=edges.size - 1)[: edges.size - 1]
    full = counts > 0
    return 0.5 * (edges[1:] + edges[:-1])[full], sums[full] / counts[full], area


@dataclasses.dataclass(frozen=True)
class ParticleTable:
    """Per-particle properties (one row per label, arrays of length n).

    Attributes:
        label: particle labels (n,).
        volume_m3: volume in m³ (voxel count × voxel volume) (n,).
        voxels: voxel count (n,).
        centroid_vox: centroid (n, 3) in voxels (z, y, x).
        share_second: concentration-weighted share of the second end member (FePO4) (n,).
        normal: unit plate normal (n, 3) in (z, y, x).
        facet_area_m2: footprint area on the plane normal to the plate, in m² (n,).
        thickness_m: FWHM of the facet-averaged profile along the normal, in m (n,).
    """

    label: np.ndarray
    volume_m3: np.ndarray
    voxels: np.ndarray
    centroid_vox: np.ndarray
    share_second: np.ndarray
    normal: np.ndarray
    facet_area_m2: np.ndarray
    thickness_m: np.ndarray

    def __len__(self) -> int:
        return int(self.label.size)

    def as_datasets(self, prefix: str = "particles") -> dict[str, np.ndarray]:
        """The table as ``{f"{prefix}/{column}": array}`` for results files."""
        return {f"{prefix}/{f.name}": getattr(self, f.name) for f in dataclasses.fields(self)}


def particle_properties(
    labels,
    concentrations,
    voxel_size_m: float,
    *,
    density=None,
    full_density: float | None = None,
    margin: int = 4,
    rim: int = 1,
    step: float = 0.5,
) -> ParticleTable:
    """Volume, composition, plate normal, facet area and thickness of each labelled particle.

    Args:
        labels: particle labels (z, y, x), 0 = background.
        concentrations: (C_first, C_second) per voxel, shape (2, z, y, x).
        voxel_size_m: voxel edge length in m.
        density: density/OD per voxel for the normal and the thickness profile (z, y, x);
            default C_first + C_second.
        full_density: density of fully dense material; the thickness is measured at the
            absolute level ``full_density / 2``. None: half of each profile's maximum.
        margin: see :func:`thickness_profile`.
        rim: see :func:`thickness_profile`.
        step: see :func:`thickness_profile`.

    Returns:
        :class:`ParticleTable` (empty arrays when there are no particles).
    """
    lab = np.asarray(labels)
    c = np.asarray(concentrations, dtype=np.float64)
    if lab.ndim != 3 or c.shape != (2, *lab.shape):
        raise ValueError(
            f"expected labels (z, y, x) and concentrations (2, z, y, x), got {lab.shape} and "
            f"{c.shape}"
        )
    dens = c.sum(axis=0) if density is None else np.asarray(density, dtype=np.float64)
    rows = []
    half = None if full_density is None else 0.5 * full_density
    for i, box in enumerate(ndimage.find_objects(lab), start=1):
        if box is None:
            continue
        where = lab[box] == i
        offset = np.array([b.start for b in box], dtype=np.float64)
        coords = np.argwhere(where) + offset
        mass = np.clip(dens[box][where], 0.0, None)
        normal = plate_normal(coords, mass if mass.sum() > 0 else None)
        c1, c2 = c[0][box][where].sum(), c[1][box][where].sum()
        share = c2 / (c1 + c2) if (c1 + c2) != 0 else np.nan
        s_vox, profile, area = thickness_profile(
            dens, lab, i, normal, margin=margin, rim=rim, step=step, box=box
        )
        rows.append(
            (
                i,
                where.sum(),
                coords.mean(0),
                share,
                normal,
                area,
                fwhm(profile, half_maximum=half, positions=s_vox),
            )
        )
    v3, v2 = voxel_size_m**3, voxel_size_m**2
    col = list(zip(*rows, strict=True)) if rows else [[] for _ in range(7)]
    return ParticleTable(
        label=np.asarray(col[0], dtype=np.int64),
        volume_m3=np.asarray(col[1], dtype=np.float64) * v3,
        voxels=np.asarray(col[1], dtype=np.int64),
        centroid_vox=np.asarray(col[2], dtype=np.float64).reshape(-1, 3),
        share_second=np.asarray(col[3], dtype=np.float64),
        normal=np.asarray(col[4], dtype=np.float64).reshape(-1, 3),
        facet_area_m2=np.asarray(col[5], dtype=np.float64) * v2,
        thickness_m=np.asarray(col[6], dtype=np.float64) * voxel_size_m,
    )
