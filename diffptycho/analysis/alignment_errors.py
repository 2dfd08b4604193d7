"""How far found per-scan alignment is from a simulation's truth, up to the gauge.

Tomographic data fix the per-scan shifts only up to a translation of the volume: a constant in
y and ``a cos θ + b sin θ`` in x (the constant of the x shifts is the rotation-axis position,
which the data do fix). One volume per energy is reconstructed from co-registered scans, so the
translation is common to all energies.
"""

from __future__ import annotations

import numpy as np

__all__ = ["scan_shift_error_px"]


def scan_shift_error_px(
    params: np.ndarray, true_shift_px: np.ndarray, angles_rad: np.ndarray, shape: tuple[int, int]
) -> float:
    """RMS (px) of the found scan shifts minus the true ones, the gauge matched first.

    Args:
        params: (energy, angle, 4) found alignment rows (shift_y, shift_x, rotation, log scale).
        true_shift_px: (energy, angle, 2) true (y, x) sample shifts in px.
        angles_rad: (angle,) tilt angles in rad.
        shape: (y, x) of the projections the rows apply to.

    Returns:
        Root-mean-square shift error over every scan and both axes, px.
    """
    from diffptycho.recon.align.gauge import match_gauge

    params = np.asarray(params, np.float64)
    true_shift_px = np.asarray(true_shift_px, np.float64)
    if params.shape[:2] != true_shift_px.shape[:2] or params.shape[-1] != 4:
        raise ValueError(
            f"params {params.shape} and true_shift_px {true_shift_px.shape}: expected "
            "(energy, angle, 4) and (energy, angle, 2)"
        )
    n_e = params.shape[0]
    reference = np.zeros((params.shape[0] * params.shape[1], 4))
    reference[:, :2] = true_shift_px.reshape(-1, 2)
    found = params.reshape(-1, 4).copy()
    found[:, 3] -= found[:, 3].mean()  # energies' magnifications are known, not fitted
    matched = match_gauge(found, np.tile(np.asarray(angles_rad), n_e), shape, reference).params
    return float(np.sqrt(np.mean((matched[:, :2] - reference[:, :2]) ** 2)))
