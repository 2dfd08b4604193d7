"""Tiny simulated ptychography scans (near field and far field) for the geometry and CXI tests.

Near field: a divergent beam, focus-to-sample z1 = 0.5 mm, sample-to-detector z2 = 0.1 m,
6.5 µm detector pixels at 8 keV, so M = 201, effective distance z2 / M ≈ 0.50 mm and object
pixel ≈ 32.3 nm (Fresnel number ≈ 0.013 per pixel: fringes of a few pixels on 64² frames).
The probe is a broad beam with a smooth random phase (a diffuser), as near-field ptychography
needs; positions are a jittered raster whose bounding box is centred on (0, 0) within half a
pixel, so :func:`~diffptycho.recon.ptycho.geometry.scan_centre` of the truth positions is 0.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from diffptycho.models import FarField, NearField, Ptycho2D
from diffptycho.physics import optics
from diffptycho.physics.scan import object_shape_for
from diffptycho.recon.ptycho.geometry import fresnel_scaling

ENERGY_EV = 8000.0
Z1_M = 0.5e-3
Z2_M = 0.1
DETECTOR_PIXEL_M = 6.5e-6
FRAME = 64


@dataclasses.dataclass
class Sim:
    """Ground truth and Poisson frames of one simulated scan (reference detector orientation)."""

    obj: np.ndarray  # (H, W) complex transmission
    probe: np.ndarray  # (fy, fx) complex
    positions_px: np.ndarray  # (n, 2) (y, x) object pixels, bounding box centred on 0
    frames: np.ndarray  # (n, fy, fx) counts
    object_pixel_m: float
    propagator: object


def near_field_geometry():
    """(FresnelScaling, NearField propagator) of the near-field simulation."""
    g = fresnel_scaling(Z1_M, Z2_M, DETECTOR_PIXEL_M)
    prop = NearField(
        pixel_size_m=g.object_pixel_size_m[1],
        wavelength_m=float(optics.wavelength(ENERGY_EV)),
        distance_m=g.effective_distance_m,
    )
    return g, prop


def _positions(n_side: int, step: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:n_side, :n_side] * step
    pos = np.stack([yy.ravel(), xx.ravel()], 1) + rng.uniform(-1.5, 1.5, (n_side * n_side, 2))
    return pos - (pos.max(0) + pos.min(0)) / 2


def _object(shape, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 100)
    y, x = np.mgrid[: shape[0], : shape[1]]
    smooth = ndimage.gaussian_filter(rng.standard_normal(shape), 2.0)
    pattern = np.sin(x / 3.0) * np.cos(y / 4.0) + smooth / smooth.std()
    return (0.85 + 0.1 * pattern) * np.exp(0.6j * pattern)


def simulate_near_field(
    seed: int = 0, photons: float = 1e6, n_side: int = 5, diffuser_rad: float = 1.0
) -> Sim:
    """A near-field scan: broad diffuser-like beam, n_side² positions, 8-px steps."""
    g, prop = near_field_geometry()
    rng = np.random.default_rng(seed)
    pos = _positions(n_side, 8.0, seed)
    shape = object_shape_for(pos, (FRAME, FRAME))
    obj = _object(shape, seed)
    py, px = np.mgrid[:FRAME, :FRAME] - FRAME / 2
    amp = np.exp(-(((px**2 + py**2) / (2 * 26.0**2)) ** 2))  # super-Gaussian, fills the frame
    phase = ndimage.gaussian_filter(rng.standard_normal((FRAME, FRAME)), 2.5)
    probe = amp * np.exp(1j * diffuser_rad * phase / phase.std())
    probe = probe * np.sqrt(photons / np.sum(np.abs(probe) ** 2))
    model = Ptycho2D(jnp.asarray(obj), jnp.asarray(probe[None]), jnp.asarray(pos), propagator=prop)
    expected = np.asarray(eqx.filter_jit(lambda m: m())(model))
    frames = rng.poisson(np.clip(expected, 0, None)).astype(np.float32)
    return Sim(obj, probe, pos, frames, g.object_pixel_size_m[1], prop)


def simulate_far_field(seed: int = 0, photons: float = 1e6, n_side: int = 5) -> Sim:
    """A far-field scan of the same object style: focused probe (σ = 5 px), 5-px steps."""
    rng = np.random.default_rng(seed)
    pos = _positions(n_side, 5.0, seed)
    frame = 32
    shape = object_shape_for(pos, (frame, frame))
    obj = _object(shape, seed)
    py, px = np.mgrid[:frame, :frame] - frame // 2
    probe = np.exp(-(px**2 + py**2) / (2 * 5.0**2) + 0.02j * (px**2 + py**2))
    probe = probe * np.sqrt(photons / np.sum(np.abs(probe) ** 2))
    model = Ptycho2D(jnp.asarray(obj), jnp.asarray(probe[None]), jnp.asarray(pos))
    expected = np.asarray(eqx.filter_jit(lambda m: m())(model))
    frames = rng.poisson(expected).astype(np.float32)
    return Sim(obj, probe, pos, frames, np.nan, FarField())
