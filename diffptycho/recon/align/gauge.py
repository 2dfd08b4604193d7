"""What the projections cannot tell apart: volume translation and magnification (the gauge).

Alignment rows follow :class:`~diffptycho.models.tomo.TomoProjections`, measured projection
``k`` = ``A_k(P_θk f)`` with ``A_k(r) = s_k R(φ_k) r + t_k`` about the centre pixel. Two
families of (volume, alignment) pairs give identical projections:

- **translation** of the volume by ``d = (d_z, d_y, d_x)`` voxels moves projection k by
  ``u_k = (d_y, d_x cos θ_k + d_z sin θ_k)``; the alignment ``t_k + s_k R(φ_k) u_k`` undoes it.
  So the y shifts are known up to a constant, the x shifts up to ``a cos θ + b sin θ``.
  The constant of the x shifts is **not** a gauge: it is the rotation-axis offset
  (``axis column = (n_x − 1)/2 + c``), fixed by tomographic consistency;
- **magnification** of the volume by ``e^σ`` about its centre (with values ÷ ``e^σ``)
  magnifies every projection, so only the log-scales relative to their mean are measured.

In-plane rotations are not a gauge: their mean is the tilt of the rotation axis in the
detector plane.

:func:`fix_gauge` picks the representative used throughout :mod:`diffptycho.recon.align`:
log-scales with zero mean, and the volume translation that brings the shifts closest (least
squares) to a pure axis offset ``(0, c)`` — i.e. y shifts with zero mean and x shifts with no
cos θ / sin θ component, exactly so for small rotations. :func:`match_gauge` instead brings a
result closest to a reference set of parameters (e.g. a simulation's truth) for comparison.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from diffptycho._typing import Angles, Float

__all__ = ["GaugeFix", "fix_gauge", "gauge_transform", "match_gauge"]


@dataclasses.dataclass(frozen=True)
class GaugeFix:
    """Result of :func:`fix_gauge` / :func:`match_gauge`.

    Attributes:
        params: ``(angle, 4)`` alignment rows in the chosen gauge.
        translation_vox: volume translation ``(d_z, d_y, d_x)`` in voxels that was applied.
        log_magnification: volume log-magnification σ that was applied.
        axis_offset_px: rotation-axis column minus ``(n_x − 1)/2``, px (:func:`fix_gauge`).
    """

    params: np.ndarray
    translation_vox: np.ndarray
    log_magnification: float
    axis_offset_px: float


def _offset_from_centre(shape: tuple[int, int]) -> np.ndarray:
    """Projector centre ``(n − 1)/2`` minus the similarity centre ``n // 2``, per axis (y, x)."""
    return np.array([(n - 1) / 2 - n // 2 for n in shape], dtype=float)


def _linear_terms(params: np.ndarray, angles: np.ndarray, sigma: float) -> np.ndarray:
    """``e^σ s_k R(φ_k) U_k`` (angle, 2, 3): how shifts change per voxel of ``(d_z, d_y, d_x)``."""
    s = np.exp(params[:, 3] + sigma)
    cos, sin = np.cos(params[:, 2]), np.sin(params[:, 2])
    rot = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)  # (angle, 2, 2)
    u = np.zeros((len(angles), 2, 3))
    u[:, 0, 1] = 1.0
    u[:, 1, 0], u[:, 1, 2] = np.sin(angles), np.cos(angles)
    return s[:, None, None] * rot @ u


def gauge_transform(
    params: Float[np.ndarray, "angle 4"],
    angles_rad: Angles,
    shape: tuple[int, int],
    translation_vox=(0.0, 0.0, 0.0),
    log_magnification: float = 0.0,
) -> np.ndarray:
    """Alignment rows that give the same projections after moving the volume.

    Args:
        params: ``(angle, 4)`` rows ``(shift_y_px, shift_x_px, rotation_rad, log_scale)``.
        angles_rad: ``(angle,)`` rotation angles in rad.
        shape: ``(n_y, n_x)`` of the projections in px.
        translation_vox: ``(d_z, d_y, d_x)`` voxels by which the volume is translated.
        log_magnification: σ, the volume is magnified by ``e^σ`` about its centre.

    Returns:
        ``(angle, 4)`` rows ``p'`` with ``A_{p'}(P f) = A_p(P f')``, f' the moved volume.
    """
    p = np.array(params, dtype=float)
    angles = np.asarray(angles_rad, dtype=float)
    s = np.exp(p[:, 3])
    cos, sin = np.cos(p[:, 2]), np.sin(p[:, 2])
    delta = _offset_from_centre(shape)
    # magnification about the projector centre = about the similarity centre + a shift
    fixed = (1 - np.exp(log_magnification)) * delta
    shift = np.stack([cos * fixed[0] - sin * fixed[1], sin * fixed[0] + cos * fixed[1]], -1)
    shift = s[:, None] * shift
    shift += _linear_terms(p, angles, log_magnification) @ np.asarray(translation_vox, float)
    p[:, :2] += shift
    p[:, 3] += log_magnification
    return p


def _solve(params, angles, shape, sigma, target_xy, free_axis: bool):
    base = gauge_transform(params, angles, shape, (0.0, 0.0, 0.0), sigma)
    jac = _linear_terms(params, angles, sigma)  # (angle, 2, 3)
    rows = jac.reshape(-1, 3)
    if free_axis:
        axis = np.zeros((len(angles), 2, 1))
        axis[:, 1, 0] = -1.0
        rows = np.concatenate([rows, axis.reshape(-1, 1)], axis=1)
    rhs = (target_xy - base[:, :2]).reshape(-1)
    sol, *_ = np.linalg.lstsq(rows, rhs, rcond=None)
    d = sol[:3]
    offset = float(sol[3]) if free_axis else float("nan")
    return gauge_transform(params, angles, shape, d, sigma), d, offset


def fix_gauge(
    params: Float[np.ndarray, "angle 4"], angles_rad: Angles, shape: tuple[int, int]
) -> GaugeFix:
    """The representative of ``params`` with zero-mean log-scales and shifts nearest ``(0, c)``.

    Args:
        params: ``(angle, 4)`` alignment rows.
        angles_rad: ``(angle,)`` in rad.
        shape: ``(n_y, n_x)`` of the projections.

    Returns:
        A :class:`GaugeFix` with the rotation-axis offset ``c`` in px.

    Examples:
        >>> import numpy as np
        >>> angles = np.linspace(-1.4, 1.3, 40)
        >>> p = np.zeros((40, 4)); p[:, 0] = 2.0; p[:, 1] = 1.5 + 3 * np.sin(angles)
        >>> g = fix_gauge(p, angles, (32, 32))
        >>> round(g.axis_offset_px, 6), bool(np.allclose(g.params[:, :2], [0, 1.5]))
        (1.5, True)
    """
    p = np.asarray(params, dtype=float)
    angles = np.asarray(angles_rad, dtype=float)
    sigma = -float(np.mean(p[:, 3]))
    target = np.zeros((len(angles), 2))
    fixed, d, offset = _solve(p, angles, shape, sigma, target, free_axis=True)
    return GaugeFix(fixed, d, sigma, offset)


def match_gauge(
    params: Float[np.ndarray, "angle 4"],
    angles_rad: Angles,
    shape: tuple[int, int],
    reference: Float[np.ndarray, "angle 4"],
) -> GaugeFix:
    """The representative of ``params`` nearest ``reference`` (e.g. to compare with a truth).

    Matches the mean log-scale and, by least squares, the shifts; rotations are unchanged.

    Args:
        params: ``(angle, 4)`` estimated rows.
        angles_rad: ``(angle,)`` in rad.
        shape: ``(n_y, n_x)`` of the projections.
        reference: ``(angle, 4)`` rows to match.

    Returns:
        A :class:`GaugeFix` (``axis_offset_px`` is NaN: the axis is not a gauge).
    """
    p = np.asarray(params, dtype=float)
    ref = np.asarray(reference, dtype=float)
    angles = np.asarray(angles_rad, dtype=float)
    sigma = float(np.mean(ref[:, 3]) - np.mean(p[:, 3]))
    fixed, d, offset = _solve(p, angles, shape, sigma, ref[:, :2], free_axis=False)
    return GaugeFix(fixed, d, sigma, offset)
