"""Scan patterns: probe positions in object pixels, (y, x), centred on (0, 0)."""

from __future__ import annotations

import numpy as np


def raster_positions(n_y: int, n_x: int, step_px: float, jitter_px: float = 0.0, seed: int = 0):
    """A rectangular raster centred on the object centre.

    Args:
        n_y: number of rows.
        n_x: number of columns.
        step_px: step between neighbours in object pixels.
        jitter_px: uniform random offset amplitude in pixels; breaks the raster-grid
            pathology of ptychography (periodic artefacts) as real scans do.
        seed: seed of the jitter.

    Returns:
        Positions (n_y·n_x, 2) as (y, x) in pixels.
    """
    if n_y < 1 or n_x < 1 or not step_px > 0:
        raise ValueError("raster_positions: n_y, n_x ≥ 1 and step_px > 0 are required")
    y = (np.arange(n_y) - (n_y - 1) / 2) * step_px
    x = (np.arange(n_x) - (n_x - 1) / 2) * step_px
    pos = np.stack(np.meshgrid(y, x, indexing="ij"), axis=-1).reshape(-1, 2)
    if jitter_px:
        pos = pos + np.random.default_rng(seed).uniform(-jitter_px, jitter_px, pos.shape)
    return pos


def fermat_spiral_positions(n: int, step_px: float):
    """Fermat spiral scan (uniform density, no grid periodicity).

    Args:
        n: number of positions.
        step_px: mean distance between neighbours in pixels.

    Returns:
        Positions (n, 2) as (y, x) in pixels.
    """
    if n < 1 or not step_px > 0:
        raise ValueError("fermat_spiral_positions: n ≥ 1 and step_px > 0 are required")
    golden = np.pi * (3.0 - np.sqrt(5.0))
    k = np.arange(n)
    # one point per step² of area: π r_k² = k · step²
    r = step_px * np.sqrt(k / np.pi)
    return np.stack([r * np.sin(k * golden), r * np.cos(k * golden)], axis=-1)
