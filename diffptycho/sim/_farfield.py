"""Far-field detector frames of exit waves sampled finer than the detector's object pixel.

Shared by the simulations that record data as an experiment would
(:mod:`diffptycho.sim.tiltseries`, :mod:`diffptycho.sim.spectroptycho`): the sample and probe
live on a grid finer than the reconstruction's, and the detector keeps the central frequencies
of the fine far field.
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Complex, Float

__all__ = ["far_field_frames"]


def far_field_frames(
    transmission: Complex[np.ndarray, "angle H W"],
    probe: Complex[np.ndarray, "wy wx"],
    centres: Float[np.ndarray, "angle n 2"],
    frame_shape: tuple[int, int],
) -> Float[np.ndarray, "angle n fy fx"]:
    """Far-field intensities of fine exit waves, cropped to the detector's central frequencies.

    The window starts at an integer fine pixel; the probe is moved by the rest of its position
    with a Fourier shift, which is exact for the band-limited zone-plate beam. The unitary FFT
    of the fine window (``wy × wx`` samples of pitch a) has frequency pitch 1/(wy·a); keeping its
    central ``frame_shape`` frequencies is a detector whose object pixel is ``wy/fy`` times a,
    which also misses the light scattered beyond its edge. Batched over scans and positions
    (host NumPy, no loop over positions).

    Args:
        transmission: complex transmission of each scan on the fine grid (scan, H, W).
        probe: complex probe on the fine grid (wy, wx), centred on pixel (wy // 2, wx // 2);
            its intensity Σ|ψ|² is in photons.
        centres: fine-grid index (y, x) of the probe centre at each position (scan, n, 2),
            sub-pixel.
        frame_shape: (fy, fx) detector pixels kept around zero frequency (fftshift-centred).

    Returns:
        Noiseless intensities (scan, n, fy, fx) in photons.

    Raises:
        ValueError: a probe window leaves the transmission array.
    """
    wy, wx = probe.shape
    start = centres - np.array([wy // 2, wx // 2])
    corner = np.floor(start).astype(int)
    frac = start - corner
    h, w = transmission.shape[-2:]
    if corner.min() < 0 or np.any(corner[..., 0] + wy > h) or np.any(corner[..., 1] + wx > w):
        raise ValueError(
            "positions: a fine probe window leaves the padded object; use fewer or smaller "
            "scan steps (ScanGeometry.fitted_to) or a larger padding"
        )
    fy = np.fft.fftfreq(wy)[:, None]
    fx = np.fft.fftfreq(wx)[None, :]
    ramp = np.exp(-2j * np.pi * (fy * frac[..., 0, None, None] + fx * frac[..., 1, None, None]))
    probes = np.fft.ifft2(np.fft.fft2(probe) * ramp)  # (angle, n, wy, wx)
    a = np.arange(transmission.shape[0])[:, None, None, None]
    rows = corner[..., 0, None, None] + np.arange(wy)[:, None]
    cols = corner[..., 1, None, None] + np.arange(wx)[None, :]
    waves = probes * transmission[a, rows, cols]
    far = np.fft.fftshift(
        np.fft.fft2(np.fft.ifftshift(waves, axes=(-2, -1)), norm="ortho"), axes=(-2, -1)
    )
    (py, px), (cy, cx) = frame_shape, (wy // 2, wx // 2)
    far = far[..., cy - py // 2 : cy - py // 2 + py, cx - px // 2 : cx - px // 2 + px]
    return far.real**2 + far.imag**2
