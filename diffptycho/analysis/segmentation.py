"""Phase and particle segmentation of chemical maps and volumes.

- :func:`phase_classes`: the battery study's three chemical phase groups by the share of the first
  end member f (LiFePO4): first-rich (f > 70 %) → 0, mixed (30 % ≤ f ≤ 70 %) → 1, second-rich
  (f < 30 %, i.e. > 70 % FePO4) → 2, and −1 for empty voxels (below an OD/density threshold).
- :func:`label_particles`: connected components of the occupied voxels, with touching particles
  split on the distance transform (depth below the surface). Markers are the "cores" of each
  component, the voxels deeper than ``marker_fraction`` × the component's largest depth; two plates
  joined by a neck thinner than that have two cores, and every voxel joins its nearest core, which
  cuts the neck in its middle (a watershed whose basins are the cores' Voronoi cells). Pieces of
  one thin plate (whose deepest sheet the voxel grid breaks up) are merged back when their union
  is as flat as they are and they touch over a wide contact. Plates meeting face-on or in a
  T-junction are as thick at the contact as inside and stay merged.
- :func:`dice` and :func:`dice_per_class` score a segmentation against the truth.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = [
    "EMPTY",
    "FIRST_RICH",
    "MIXED",
    "SECOND_RICH",
    "dice",
    "dice_per_class",
    "label_particles",
    "occupied_mask",
    "phase_classes",
]

EMPTY, FIRST_RICH, MIXED, SECOND_RICH = -1, 0, 1, 2
"""Phase class labels of :func:`phase_classes`."""


def occupied_mask(density, threshold: float) -> np.ndarray:
    """Voxels with material: density (or total OD) ≥ ``threshold``; NaN counts as empty.

    Args:
        density: total concentration, OD sum or any density-like map (…).
        threshold: smallest occupied value, in the unit of ``density``.

    Returns:
        Boolean mask (…).
    """
    d = np.asarray(density, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return np.isfinite(d) & (d >= threshold)


def phase_classes(
    fraction_first,
    mask=None,
    *,
    low: float = 0.3,
    high: float = 0.7,
) -> np.ndarray:
    """Three-class phase segmentation by the share of the first end member.

    Args:
        fraction_first: share f of the first end member (dimensionless), any shape.
        mask: occupied voxels (same shape); others are :data:`EMPTY`. None: all occupied.
        low: below this share a voxel is second-rich (default 0.3, i.e. > 70 % second).
        high: above this share a voxel is first-rich (default 0.7).

    Returns:
        int8 array: 0 first-rich, 1 mixed, 2 second-rich, −1 empty (or NaN share).

    Examples:
        >>> phase_classes(np.array([0.9, 0.5, 0.1, np.nan])).tolist()
        [0, 1, 2, -1]
    """
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"low={low}, high={high}: expected 0 ≤ low ≤ high ≤ 1")
    f = np.asarray(fraction_first, dtype=np.float64)
    out = np.full(f.shape, MIXED, dtype=np.int8)
    with np.errstate(invalid="ignore"):
        out[f > high] = FIRST_RICH
        out[f < low] = SECOND_RICH
    empty = ~np.isfinite(f)
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.shape != f.shape:
            raise ValueError(f"mask: expected shape {f.shape}, got {m.shape}")
        empty |= ~m
    out[empty] = EMPTY
    return out


def dice(prediction, truth) -> float:
    """Dice coefficient 2|A ∩ B| / (|A| + |B|) of two boolean masks; NaN if both are empty.

    Examples:
        >>> dice(np.array([1, 1, 0, 0], bool), np.array([1, 0, 0, 0], bool))
        0.6666666666666666
    """
    a, b = np.asarray(prediction, dtype=bool), np.asarray(truth, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"dice: shapes differ, {a.shape} vs {b.shape}")
    total = int(a.sum()) + int(b.sum())
    return float("nan") if total == 0 else 2.0 * int((a & b).sum()) / total


def dice_per_class(prediction, truth, classes=(FIRST_RICH, MIXED, SECOND_RICH)) -> dict:
    """Dice of each class present in ``truth`` (classes absent from the truth are skipped).

    Args:
        prediction: class labels (…).
        truth: true class labels (…).
        classes: the class labels to score.

    Returns:
        ``{class: dice}``.
    """
    p, t = np.asarray(prediction), np.asarray(truth)
    return {int(c): dice(p == c, t == c) for c in classes if np.any(t == c)}


def _thin_stds(coords: np.ndarray) -> np.ndarray | None:
    """Principal standard deviations (ascending) of a point cloud; None if too few points."""
    if coords.shape[0] <= coords.shape[1]:
        return None
    return np.sqrt(np.clip(np.linalg.eigvalsh(np.cov(coords.T)), 0.0, None))


def _contacts(regions: np.ndarray, spacing: np.ndarray) -> dict[tuple[int, int], float]:
    """Contact area between every pair of face-adjacent regions (unit of spacing²)."""
    out: dict[tuple[int, int], float] = {}
    for axis in range(regions.ndim):
        a = np.moveaxis(regions, axis, 0)
        lo, hi = a[:-1].ravel(), a[1:].ravel()
        sel = (lo > 0) & (hi > 0) & (lo != hi)
        pairs = np.stack([np.minimum(lo[sel], hi[sel]), np.maximum(lo[sel], hi[sel])], axis=1)
        face = float(np.prod(np.delete(spacing, axis)))
        for (p, q), n in zip(*np.unique(pairs, axis=0, return_counts=True), strict=True):
            out[int(p), int(q)] = out.get((int(p), int(q)), 0.0) + n * face
    return out


def _merge_plate_fragments(
    regions: np.ndarray, spacing: np.ndarray, flat_ratio: float, neck_fraction: float
) -> tuple[np.ndarray, int]:
    """Merge adjacent pieces that are parts of one plate rather than plates joined by a neck.

    In a thin, tilted plate the deepest voxels form a sheet that the voxel grid breaks into
    several cores. Two pieces are merged when their union is as flat as the pieces (thinnest
    principal width ≤ ``flat_ratio`` × the pieces') and they touch over a wide contact
    (≥ ``neck_fraction`` × thickness × width of the smaller piece), unlike a neck.
    """
    sqrt12 = np.sqrt(12.0)  # principal std → full width of a uniform slab
    while True:
        ids = [k for k in np.unique(regions) if k > 0]
        coords = {k: np.argwhere(regions == k) * spacing for k in ids}
        merged = False
        for (p, q), area in sorted(_contacts(regions, spacing).items(), key=lambda kv: -kv[1]):
            sp, sq = _thin_stds(coords[p]), _thin_stds(coords[q])
            su = _thin_stds(np.concatenate([coords[p], coords[q]]))
            if sp is not None and sq is not None:
                small = sp if coords[p].shape[0] <= coords[q].shape[0] else sq
                cross = np.prod(sqrt12 * small[: regions.ndim - 1])
                if su[0] > flat_ratio * max(sp[0], sq[0]) or area < neck_fraction * cross:
                    continue
            regions = np.where(regions == q, p, regions)
            merged = True
            break
        if not merged:
            break
    ids = np.unique(regions[regions > 0])
    relabel = np.zeros(int(regions.max()) + 1, dtype=np.int32)
    relabel[ids] = np.arange(1, ids.size + 1)
    return relabel[regions], int(ids.size)


def _split_component(
    component: np.ndarray,
    depth: np.ndarray,
    marker_fraction: float,
    min_marker_voxels: int,
    spacing: np.ndarray,
    flat_ratio: float,
    neck_fraction: float,
) -> tuple[np.ndarray, int]:
    """Split one connected component (cropped to its bounding box) at its necks."""
    core = component & (depth > marker_fraction * depth[component].max())
    markers, n = ndimage.label(core)
    if n > 1 and min_marker_voxels > 1:
        big = ndimage.sum_labels(core, markers, np.arange(1, n + 1)) >= min_marker_voxels
        relabel = np.zeros(n + 1, dtype=np.int32)
        relabel[1:][big] = np.arange(1, int(big.sum()) + 1)
        markers, n = relabel[markers], int(big.sum())
    if n <= 1:
        return component.astype(np.int32), 1
    # Each remaining voxel joins its nearest core: a Voronoi split of the component by its cores.
    # (An IFT watershed on the inverted depth ties on the depth plateaus of flat plates and
    # then leaks through the neck; the nearest-core rule cuts a neck in its middle.)
    _, nearest = ndimage.distance_transform_edt(markers == 0, sampling=spacing, return_indices=True)
    regions = np.where(component, markers[tuple(nearest)], 0).astype(np.int32)
    return _merge_plate_fragments(regions, spacing, flat_ratio, neck_fraction)


def label_particles(
    mask,
    *,
    split: bool = True,
    marker_fraction: float = 0.6,
    min_voxels: int = 8,
    min_marker_voxels: int = 4,
    flat_ratio: float = 1.5,
    neck_fraction: float = 0.25,
    spacing=None,
) -> tuple[np.ndarray, int]:
    """Label particles: connected components, touching ones split by a distance watershed.

    Args:
        mask: occupied voxels (z, y, x) or pixels (y, x).
        split: split components with several cores (see the module docstring).
        marker_fraction: a core is deeper than this fraction of its component's largest depth.
        min_voxels: particles smaller than this are dropped (noise specks).
        min_marker_voxels: cores smaller than this do not start a particle.
        flat_ratio: pieces whose union is at most this much thicker than they are, and that
            touch over a wide contact, are one plate and are merged back.
        neck_fraction: a contact narrower than this fraction of the smaller piece's
            cross-section (thickness × width) is a neck.
        spacing: voxel size per axis for the distance transform (any unit; default 1).

    Returns:
        ``(labels, n)``: int32 labels 1…n (0 = background), numbered component by component.

    Examples:
        >>> m = np.zeros((1, 3, 7), bool); m[0, :, :3] = m[0, :, 4:] = True
        >>> label_particles(m, min_voxels=1)[1]
        2
    """
    m = np.asarray(mask, dtype=bool)
    if not 0.0 < marker_fraction < 1.0:
        raise ValueError(f"marker_fraction={marker_fraction}: expected a value in (0, 1)")
    labels, n = ndimage.label(m)
    if n == 0:
        return labels.astype(np.int32), 0
    out = np.zeros(m.shape, dtype=np.int32)
    sampling = np.broadcast_to(np.asarray(1.0 if spacing is None else spacing, float), (m.ndim,))
    depth = ndimage.distance_transform_edt(m, sampling=sampling) if split else None
    next_label = 1
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        component = labels[box] == index
        if component.sum() < min_voxels:
            continue
        if split:
            pieces, k = _split_component(
                component,
                depth[box],
                marker_fraction,
                min_marker_voxels,
                sampling,
                flat_ratio,
                neck_fraction,
            )
        else:
            pieces, k = component.astype(np.int32), 1
        for piece in range(1, k + 1):
            where = pieces == piece
            if where.sum() >= min_voxels:
                out[box][where] = next_label
                next_label += 1
    return out, next_label - 1
