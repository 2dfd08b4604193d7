"""Rough alignment of a tilt series without a volume: profiles, centres of mass, neighbours.

Parallel-beam facts used here, for an object inside the field of view on a zero background
(line integrals after −ln):

- the **vertical mass profile** ``Σ_x p_θ(y, x)`` is the projection of the volume onto the
  rotation axis, the same at every angle; shifting each profile onto a common one gives the
  y shifts (:func:`vertical_shifts`);
- the **centre of mass along x** moves on a sinusoid, ``m(θ) = c + a cos θ + b sin θ``: ``c`` is
  the rotation-axis column, ``(a, b)`` the object's position off the axis; what the sinusoid
  does not explain is the x shift of each projection (:func:`horizontal_shifts`, the fit is
  :func:`~diffptycho.recon.align.center.center_of_mass_center`'s);
- **neighbouring projections** differ little at small angular steps, so their relative shift
  by cross-correlation, summed along the series, follows the object and the jitter alike
  (:func:`neighbour_shifts`); the sinusoid fit then separates the two.

Each estimate runs twice: integer shifts first (the sums are biased by content that a large
shift pushes out of the field of view), then sub-pixel on the integer-corrected stack.

All shifts follow :class:`~diffptycho.models.tomo.TomoProjections`: the measured projection is
the ideal one moved by ``(shift_y, shift_x)`` px. Gauge: y shifts have zero mean; x shifts keep
the axis offset ``c − (n_x − 1)/2`` and have no cos θ / sin θ component (that component is a
translation of the volume, which the projections cannot tell apart).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from diffptycho._typing import Angles, Float, Projections
from diffptycho.recon.align.center import center_of_mass_center
from diffptycho.recon.align.registration import register_translation

__all__ = [
    "RoughAlignment",
    "axis_offset",
    "horizontal_shifts",
    "neighbour_shifts",
    "rough_align",
    "shift_stack",
    "vertical_shifts",
]


def _check_stack(projections, angles_rad=None) -> tuple[np.ndarray, np.ndarray | None]:
    p = np.asarray(projections)
    if np.iscomplexobj(p) or p.ndim != 3 or min(p.shape) < 2:
        raise ValueError(
            f"projections: expected a real (angle, y, x) stack with ≥ 2 of each, got shape "
            f"{p.shape} and dtype {p.dtype}"
        )
    p = p.astype(float)
    if not np.all(np.isfinite(p)):
        raise ValueError("projections: non-finite values (NaN or inf); fill or crop them")
    flat = np.ptp(p.reshape(p.shape[0], -1), axis=1) == 0
    if np.any(flat):
        raise ValueError(
            f"projections: {int(flat.sum())} blank (constant) projection(s), e.g. index "
            f"{int(np.flatnonzero(flat)[0])}; drop them before aligning"
        )
    if angles_rad is None:
        return p, None
    angles = np.asarray(angles_rad, dtype=float)
    if angles.shape != (p.shape[0],) or not np.all(np.isfinite(angles)):
        raise ValueError(
            f"angles_rad: expected {p.shape[0]} finite angles (one per projection), got "
            f"shape {angles.shape}"
        )
    return p, angles


def shift_stack(projections: Projections, shifts_px: Float[np.ndarray, "angle 2"]) -> np.ndarray:
    """Move every projection by its ``(shift_y, shift_x)`` px (cubic spline, zeros outside).

    Args:
        projections: ``(angle, y, x)``.
        shifts_px: ``(angle, 2)`` shifts in px; positive moves content to larger indices.

    Returns:
        The shifted ``(angle, y, x)`` stack (float64).
    """
    p = np.asarray(projections, dtype=float)
    s = np.asarray(shifts_px, dtype=float)
    return np.stack(
        [ndimage.shift(img, sh, order=3, mode="constant") for img, sh in zip(p, s, strict=True)]
    )


def _profile_shifts(profiles: np.ndarray, upsample: int) -> np.ndarray:
    """Shift of each 1-D profile against their mean, twice (the mean sharpens once aligned)."""
    shifts = np.zeros(profiles.shape[0])
    for _ in range(2):
        moved = np.stack(
            [ndimage.shift(pr, -s, order=3) for pr, s in zip(profiles, shifts, strict=True)]
        )
        reference = moved.mean(0)
        shifts = shifts + np.array(
            [register_translation(reference, m, upsample=upsample)[0] for m in moved]
        )
    return shifts - shifts.mean()


def vertical_shifts(projections: Projections, *, upsample: int = 100) -> np.ndarray:
    """y shift of each projection from its vertical mass profile (row sums).

    Args:
        projections: ``(angle, y, x)`` line integrals on a zero background.
        upsample: sub-pixel factor of the profile cross-correlation (1: integers).

    Returns:
        ``(angle,)`` y shifts in px with zero mean.

    Raises:
        ValueError: blank, non-finite or malformed projections.
    """
    p, _ = _check_stack(projections)
    integer = np.round(_profile_shifts(p.sum(2), upsample=1))
    profiles = np.stack([np.roll(pr, -int(s)) for pr, s in zip(p.sum(2), integer, strict=True)])
    shifts = integer + _profile_shifts(profiles, upsample)
    return shifts - shifts.mean()


def _remove_sinusoid(values: np.ndarray, angles: np.ndarray, center: float) -> np.ndarray:
    """``values − (a cos θ + b sin θ)`` with (a, b) the least-squares fit given ``center``."""
    design = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    coeffs, *_ = np.linalg.lstsq(design, values - center, rcond=None)
    return values - design @ coeffs


def axis_offset(shift_x_px, angles_rad: Angles) -> float:
    """Constant ``c`` of the least-squares fit ``shift_x ≈ c + a cos θ + b sin θ``, px.

    The rotation-axis column is ``(n_x − 1)/2 + c``; ``(a, b)`` is a volume translation.
    """
    angles = np.asarray(angles_rad, dtype=float)
    design = np.stack([np.ones_like(angles), np.cos(angles), np.sin(angles)], axis=1)
    coeffs, *_ = np.linalg.lstsq(design, np.asarray(shift_x_px, dtype=float), rcond=None)
    return float(coeffs[0])


def horizontal_shifts(projections: Projections, angles_rad: Angles) -> np.ndarray:
    """x shift of each projection from the centre-of-mass sinusoid.

    Args:
        projections: ``(angle, y, x)`` line integrals on a zero background, object inside the
            field of view.
        angles_rad: rotation angles in rad ``(angle,)``.

    Returns:
        ``(angle,)`` x shifts in px: the axis offset from the detector centre plus what the
        sinusoid does not explain (gauge in the module docstring).
    """
    p, angles = _check_stack(projections, angles_rad)
    n_x = p.shape[2]
    shifts = np.zeros(p.shape[0])
    for rounding in (np.round, lambda s: s):
        moved = shift_stack(p, np.stack([np.zeros_like(shifts), -shifts], 1))
        totals = moved.sum(1, keepdims=True)  # (angle, 1, x): one row, whole projection
        # centre of mass in the input frame, from the stack moved back near the axis
        com = (totals[:, 0] * np.arange(n_x)).sum(1) / totals[:, 0].sum(1) + shifts
        # the fit of center_of_mass_center, on the input-frame centres of mass
        center = (
            center_of_mass_center(totals, angles) if not shifts.any() else axis_offset(com, angles)
        )
        shifts = rounding(_remove_sinusoid(com, angles, center) - (n_x - 1) / 2)
    return shifts


def neighbour_shifts(projections: Projections, *, upsample: int = 100) -> np.ndarray:
    """Relative shift of each projection to the previous one, by cross-correlation.

    Args:
        projections: ``(angle, y, x)`` in acquisition (or angular) order.
        upsample: sub-pixel factor.

    Returns:
        ``(angle, 2)`` cumulative ``(y, x)`` shifts in px (the first projection at 0): the
        shift of projection k relative to projection 0 along the chain. Errors add up along
        the chain like a random walk.
    """
    p, _ = _check_stack(projections)
    steps = [
        register_translation(a, b, upsample=upsample) for a, b in zip(p[:-1], p[1:], strict=True)
    ]
    return np.concatenate([np.zeros((1, 2)), np.cumsum(steps, axis=0)])


@dataclasses.dataclass(frozen=True)
class RoughAlignment:
    """Result of :func:`rough_align`.

    Attributes:
        params: ``(angle, 4)`` TomoProjections alignment rows (shifts only, rotation and log
            scale 0).
        axis_offset_px: rotation-axis column minus the detector centre ``(n_x − 1)/2``, px.
        method: how the x shifts were found (``"com"`` or ``"chain"``).
    """

    params: np.ndarray
    axis_offset_px: float
    method: str


def rough_align(
    projections: Projections, angles_rad: Angles, *, x_method: str = "com"
) -> RoughAlignment:
    """Shifts from the vertical mass profile (y) and the centre-of-mass sinusoid or chain (x).

    Args:
        projections: ``(angle, y, x)`` line integrals on a zero background.
        angles_rad: rotation angles in rad ``(angle,)``.
        x_method: ``"com"`` (centre of mass against ``c + a cos θ + b sin θ``) or ``"chain"``
            (cumulative neighbour cross-correlation with the same sinusoid removed).

    Returns:
        A :class:`RoughAlignment`; ``params`` can be passed as ``alignment=`` to
        :func:`~diffptycho.recon.tomo.reconstruct.reconstruct`.

    Raises:
        ValueError: blank, non-finite or malformed projections or angles, unknown method.

    Examples:
        >>> import jax.numpy as jnp, numpy as np
        >>> from diffptycho.physics.tomography import project
        >>> vol = jnp.zeros((24, 24, 24)).at[8:15, 6:16, 9:17].set(1.0)
        >>> angles = jnp.linspace(-1.4, 1.35, 30)
        >>> truth = np.zeros((30, 2)); truth[:, 0] = np.linspace(-2, 2, 30); truth[:, 1] = 1.5
        >>> meas = shift_stack(project(vol, angles), truth)
        >>> rough = rough_align(meas, angles)
        >>> bool(np.abs(rough.params[:, :2] - truth).max() < 0.3)
        True
    """
    p, angles = _check_stack(projections, angles_rad)
    if x_method not in ("com", "chain"):
        raise ValueError(f"x_method={x_method!r}: expected 'com' or 'chain'")
    y = vertical_shifts(p)
    p_y = shift_stack(p, np.stack([-y, np.zeros_like(y)], 1))
    if x_method == "com":
        x = horizontal_shifts(p_y, angles)
    else:
        chain = neighbour_shifts(p_y)[:, 1]
        totals = p_y.sum(1)
        com0 = (totals[0] * np.arange(p.shape[2])).sum() / totals[0].sum()
        track = com0 + chain  # the object's column along the series
        center = center_of_mass_center(p_y.sum(1, keepdims=True), angles)
        x = _remove_sinusoid(track, angles, center) - (p.shape[2] - 1) / 2
    params = np.zeros((p.shape[0], 4))
    params[:, 0], params[:, 1] = y, x
    offset = axis_offset(x, angles)
    return RoughAlignment(params, offset, x_method)
