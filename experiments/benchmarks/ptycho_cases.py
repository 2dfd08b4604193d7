"""Simulated cases of bench_ptycho.py: sizes, probe, object, frames and PtyLab's input file."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Case:
    """A simulated benchmark case (sizes in pixels)."""

    name: str
    positions: int
    frame: int
    probe_diameter_px: float
    iterations: int
    photons: float = 1e5
    overlap_step: float = 0.3  # scan step / probe diameter


CASES = {
    "small": Case("small", 1000, 64, 22.0, 100),
    "large": Case("large", 800, 128, 44.0, 50),
}
QUICK = {
    "small": Case("small", 200, 64, 22.0, 30),
    "large": Case("large", 120, 128, 44.0, 15),
}


def probe_true(case: Case) -> np.ndarray:
    """Defocused pinhole: soft disc × quadratic phase (≤ 1 rad/px at the edge), in photons^½."""
    n, d = case.frame, case.probe_diameter_px
    y, x = np.mgrid[:n, :n] - n // 2
    r = np.hypot(y, x)
    disc = np.clip((d / 2 - r) / 1.5 + 0.5, 0, 1)
    probe = disc * np.exp(1j * (r**2) / d)
    return (probe * np.sqrt(case.photons / np.sum(np.abs(probe) ** 2))).astype(np.complex64)


def object_true(shape: tuple[int, int], seed: int) -> np.ndarray:
    """Siemens star (32 spokes) with smooth random amplitude and phase texture."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[: shape[0], : shape[1]]
    y, x = y - shape[0] // 2, x - shape[1] // 2
    r, theta = np.hypot(y, x), np.arctan2(y, x)
    star = ndimage.gaussian_filter((np.sin(16 * theta) > 0).astype(float), 0.7)
    star *= r < 0.45 * min(shape)
    texture = ndimage.gaussian_filter(rng.standard_normal(shape), 4.0)
    texture /= texture.std()
    amp = 0.95 - 0.2 * star + 0.03 * texture
    return (amp * np.exp(1j * (0.9 * star + 0.3 * texture))).astype(np.complex64)


def simulate(case: Case, seed: int = 0) -> dict[str, np.ndarray]:
    """Frames, positions, probe, truth and the illuminated region of a case."""
    import equinox as eqx
    import jax.numpy as jnp

    from diffptycho.models import Ptycho2D
    from diffptycho.physics.scan import object_shape_for
    from diffptycho.sim.patterns import fermat_spiral_positions

    step = case.overlap_step * case.probe_diameter_px
    pos = np.round(fermat_spiral_positions(case.positions, step))
    side = max(object_shape_for(pos, (case.frame, case.frame)))
    obj = object_true((side, side), seed)
    probe = probe_true(case)
    model = Ptycho2D(jnp.asarray(obj), jnp.asarray(probe[None]), jnp.asarray(pos))
    expected = np.asarray(eqx.filter_jit(lambda m: m())(model))
    frames = np.random.default_rng(seed + 1).poisson(expected).astype(np.float32)
    illum = np.zeros((side, side))
    corner = (pos + side // 2 - case.frame // 2).astype(int)
    for cy, cx in corner:
        illum[cy : cy + case.frame, cx : cx + case.frame] += np.abs(probe) ** 2
    return {
        "frames": frames,
        "positions_px": pos,
        "probe_init": probe,
        "object_true": obj,
        "region": illum > 0.2 * illum.max(),
    }


def write_ptylab_input(path: str, case: dict[str, np.ndarray], dxp_m: float = 1e-8) -> None:
    """PtyLab's CPM HDF5 input: ptychogram, wavelength, encoder (row, col) m, dxd, zo."""
    import h5py

    wavelength, zo = 1e-9, 0.05
    nd = case["frames"].shape[-1]
    with h5py.File(path, "w") as f:
        f["ptychogram"] = case["frames"]
        f["wavelength"] = wavelength
        f["zo"] = zo
        f["dxd"] = wavelength * zo / (nd * dxp_m)  # so that PtyLab's dxp = λ zo / (Nd dxd)
        f["encoder"] = case["positions_px"] * dxp_m
