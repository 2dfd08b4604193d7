"""Is an unmixing result physically plausible? Shares far outside [0, 1] say it is not.

A voxel's share of an end member is a fraction of its material: noise moves single voxels a
little outside [0, 1], but when more than a few per cent of the occupied voxels fall below
−0.2 or above 1.2 the inputs are inconsistent: references measured on another energy scale or
normalisation, energies that are not those of the data, or data that are not optical
densities. :func:`warn_if_implausible` then issues an :class:`ImplausibleUnmixingWarning` that
names these causes; the command line prints it.
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = [
    "LIKELY_CAUSES",
    "MAX_OUTSIDE",
    "SHARE_RANGE",
    "ImplausibleUnmixingWarning",
    "occupied",
    "outside_fraction",
    "warn_if_implausible",
]

SHARE_RANGE = (-0.2, 1.2)
"""Shares (dimensionless) outside this interval count as implausible."""

MAX_OUTSIDE = 0.02
"""Largest share of the occupied voxels allowed outside :data:`SHARE_RANGE` without a warning
(2 %: noise in thin edges of particles, not a systematic error)."""

LIKELY_CAUSES = (
    "likely causes: inconsistent references (another energy calibration or normalisation than "
    "the data), wrong energies (the data's energies differ from those the references were "
    "taken at), or data that are not normalised optical densities (transmission or counts "
    "instead of OD = −ln(I/I0))"
)


class ImplausibleUnmixingWarning(UserWarning):
    """Unmixed shares fall far outside [0, 1] in more than a few voxels."""


def occupied(total, fraction: float = 0.2, percentile: float = 99.5) -> np.ndarray:
    """Voxels with material: total amount ≥ ``fraction`` × its ``percentile``-th percentile.

    Args:
        total: total amount per voxel (any unit), any shape; NaN counts as empty.
        fraction: threshold relative to the high percentile.
        percentile: the percentile that stands for "full" voxels (robust to outliers).

    Returns:
        Boolean mask of the same shape.
    """
    t = np.asarray(total, dtype=np.float64)
    finite = t[np.isfinite(t)]
    if finite.size == 0:
        return np.zeros(t.shape, bool)
    top = float(np.percentile(finite, percentile))
    if top <= 0:
        return np.zeros(t.shape, bool)
    with np.errstate(invalid="ignore"):
        return np.isfinite(t) & (t >= fraction * top)


def outside_fraction(shares, mask=None, share_range: tuple[float, float] = SHARE_RANGE) -> float:
    """Share of the (masked, finite) voxels with any share outside ``share_range``.

    Args:
        shares: per-voxel shares (…) or (member, …) with ``mask`` of shape (…).
        mask: voxels to judge; None judges every finite one.
        share_range: the plausible interval.

    Returns:
        A number in [0, 1]; 0 when no voxel is judged.
    """
    s = np.asarray(shares, dtype=np.float64)
    spatial = s.shape if mask is None or np.shape(mask) == s.shape else s.shape[1:]
    s = s.reshape((-1, *spatial)) if s.shape != spatial else s[None]
    keep = np.all(np.isfinite(s), axis=0)
    if mask is not None:
        keep &= np.asarray(mask, bool)
    if not keep.any():
        return 0.0
    lo, hi = share_range
    bad = np.any((s < lo) | (s > hi), axis=0)
    return float(np.count_nonzero(bad & keep) / np.count_nonzero(keep))


def warn_if_implausible(
    shares,
    mask=None,
    *,
    what: str,
    share_range: tuple[float, float] = SHARE_RANGE,
    max_outside: float = MAX_OUTSIDE,
    stacklevel: int = 2,
) -> float:
    """Warn (:class:`ImplausibleUnmixingWarning`) when too many shares are implausible.

    Args:
        shares: per-voxel shares (…) or (member, …), dimensionless.
        mask: voxels to judge (…); None judges every finite one.
        what: what was unmixed, for the message (e.g. ``"two-energy unmixing"``).
        share_range: the plausible interval.
        max_outside: largest accepted share of judged voxels outside ``share_range``.
        stacklevel: passed to :func:`warnings.warn`.

    Returns:
        The share of judged voxels outside ``share_range``.

    Examples:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     round(warn_if_implausible(np.array([0.5, 1.63, -0.54, 0.2]), what="demo"), 2)
        0.5
        >>> caught[0].category.__name__
        'ImplausibleUnmixingWarning'
    """
    bad = outside_fraction(shares, mask, share_range)
    if bad > max_outside:
        s = np.asarray(shares, dtype=np.float64)
        if mask is not None and np.shape(mask) == s.shape[-np.ndim(mask) :]:
            s = s[..., np.asarray(mask, bool)]
        s = s[np.isfinite(s)]
        lo, hi = share_range
        warnings.warn(
            f"{what}: {100 * bad:.1f} % of the judged voxels have shares outside "
            f"[{lo:g}, {hi:g}] (shares span {s.min():.2f} to {s.max():.2f}; at most "
            f"{100 * max_outside:g} % expected from noise), so the result is not plausible; "
            f"{LIKELY_CAUSES}",
            ImplausibleUnmixingWarning,
            stacklevel=stacklevel,
        )
    return bad
