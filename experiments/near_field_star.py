"""Near-field Siemens star through the CLI, from a CXI file written as an instrument writes it.

Reproduces the situation of issue 12 on a simulated star: a divergent beam (focus-to-sample z1,
sample-to-detector z2), absolute motor translations millimetres from the origin, both detector
axes flipped (``basis_vectors`` rows +y, columns +x, frames stored flipped), no probe in the
file. Simulated at twice the sampling (object pixel Δ/2, detector pixel p/2, 2× frames) with a
diffuser beam and random sub-pixel positions, intensities binned 2 × 2 and Poisson-sampled, so
the reconstruction grid is not the simulation grid.

Then runs ``diffptycho ptycho`` twice: far field (what the CLI did before: prints the warning,
and the object array and pixel it would use) and ``--propagation near-field --focus-to-sample
Z1``; reports object shape, pixel, time and the object error against the truth binned to the
reconstruction grid.

    python experiments/near_field_star.py [--iterations 100] [--positions 100] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import equinox as eqx
import h5py
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from diffptycho.io.results import read_results
from diffptycho.models import NearField, Ptycho2D
from diffptycho.physics import optics
from diffptycho.physics.scan import object_shape_for
from diffptycho.recon.ptycho.geometry import fresnel_scaling
from diffptycho.recon.ptycho.metrics import illuminated_region, object_error

ENERGY_EV = 8000.0
Z1_M, Z2_M = 1.2e-3, 0.3
PIXEL_M = 6.5e-6
FRAME = 128


def siemens_star(shape, spokes=36, radius_px=None, phase_rad=1.0, seed=0):
    """Binary Siemens star: phase ``phase_rad`` and amplitude 0.9 on the spokes."""
    h, w = shape
    y, x = np.mgrid[:h, :w] - np.array([h / 2, w / 2])[:, None, None]
    r, theta = np.hypot(x, y), np.arctan2(y, x)
    radius = radius_px or 0.45 * min(h, w)
    on = (np.sin(spokes / 2 * theta) > 0) & (r < radius) & (r > 0.04 * radius)
    return np.where(on, 0.9 * np.exp(1j * phase_rad), 1.0 + 0j)


def simulate(n_positions: int, photons: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    g = fresnel_scaling(Z1_M, Z2_M, PIXEL_M)
    dx = g.object_pixel_size_m[0]
    lam = float(optics.wavelength(ENERGY_EV))
    # scan: random positions in a disc covering the star's centre (object pixels, coarse grid)
    side = int(np.ceil(np.sqrt(n_positions)))
    yy, xx = np.mgrid[:side, :side] * 12.0
    pos = np.stack([yy.ravel(), xx.ravel()], 1)[:n_positions]
    pos = pos + rng.uniform(-3, 3, pos.shape)
    pos -= (pos.max(0) + pos.min(0)) / 2
    shape = object_shape_for(pos, (FRAME, FRAME))
    # fine grid: twice the sampling everywhere
    fine_shape = (2 * shape[0], 2 * shape[1])
    star = siemens_star(fine_shape, radius_px=0.45 * min(fine_shape))
    yf, xf = np.mgrid[: 2 * FRAME, : 2 * FRAME] - FRAME
    amp = np.exp(-(((xf**2 + yf**2) / (2 * (0.42 * 2 * FRAME) ** 2)) ** 2))
    phase = ndimage.gaussian_filter(rng.standard_normal((2 * FRAME, 2 * FRAME)), 5.0)
    probe = amp * np.exp(1j * 1.0 * phase / phase.std())
    prop = NearField(pixel_size_m=dx / 2, wavelength_m=lam, distance_m=g.effective_distance_m)
    fine = Ptycho2D(
        jnp.asarray(star, jnp.complex64),
        jnp.asarray(probe[None], jnp.complex64),
        jnp.asarray(2 * pos, jnp.float32),
        propagator=prop,
    )
    intens = np.asarray(eqx.filter_jit(lambda m: m())(fine), np.float64)
    intens = intens.reshape(len(pos), FRAME, 2, FRAME, 2).sum((2, 4))
    intens *= photons / intens.sum((1, 2)).mean()
    frames = rng.poisson(intens).astype(np.float32)
    truth = star.reshape(shape[0], 2, shape[1], 2).mean((1, 3))
    probe_c = probe.reshape(FRAME, 2, FRAME, 2).mean((1, 3))
    return frames, pos, truth, probe_c, g


def write_instrument_cxi(path, frames, pos, dx):
    """Absolute (x, y, 0) translations in m and frames stored with both axes flipped."""
    offset = np.array([3.2101e-3, -1.7043e-3])  # motor origin (x, y), not whole pixels
    y, x = (pos * dx).T
    with h5py.File(path, "w") as f:
        e = f.create_group("entry_1")
        e["instrument_1/detector_1/data"] = frames[:, ::-1, ::-1]
        e["data_1/data"] = h5py.SoftLink("/entry_1/instrument_1/detector_1/data")
        e["instrument_1/detector_1/basis_vectors"] = [[0, PIXEL_M, 0], [PIXEL_M, 0, 0]]
        e["instrument_1/detector_1/distance"] = Z2_M
        e["instrument_1/detector_1/x_pixel_size"] = PIXEL_M
        e["instrument_1/detector_1/y_pixel_size"] = PIXEL_M
        e["instrument_1/source_1/energy"] = ENERGY_EV * optics.EV_TO_J
        e["sample_1/geometry_1/translation"] = np.stack(
            [x + offset[0], y + offset[1], np.zeros_like(x)], 1
        )


def on_truth_grid(obj, positions_px, true_px, shape):
    """The CLI's object resampled (bilinear) onto the truth's grid.

    The file's motor offset is not a whole number of pixels, so the CLI's centred positions
    differ from the truth's by a constant sub-pixel vector, and its array may differ in size.
    """
    delta = np.mean(np.asarray(positions_px) - true_px, axis=0)
    shift = (np.asarray(obj.shape) // 2 - np.asarray(shape) // 2) + delta
    moved = ndimage.shift(obj.real, -shift, order=1) + 1j * ndimage.shift(obj.imag, -shift, order=1)
    return moved[: shape[0], : shape[1]]


def run_cli(*argv) -> tuple[int, str, float]:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "diffptycho.cli", "ptycho", *map(str, argv), "--no-progress"],
        capture_output=True,
        text=True,
    )
    return proc.returncode, proc.stdout + proc.stderr, time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iterations", type=int, default=100)
    p.add_argument("--positions", type=int, default=100)
    p.add_argument("--photons", type=float, default=1e7)
    p.add_argument("--out", default=None, help="output directory (default: a temporary one)")
    args = p.parse_args(argv)
    out = args.out or tempfile.mkdtemp(prefix="near_field_star_")
    os.makedirs(out, exist_ok=True)

    frames, pos, truth, probe, g = simulate(args.positions, args.photons)
    dx = g.object_pixel_size_m[0]
    path = os.path.join(out, "star_nearfield.cxi")
    write_instrument_cxi(path, frames, pos, dx)
    print(
        f"geometry: M = {g.magnification:.1f}, z_eff = {1e3 * g.effective_distance_m:.4f} mm, "
        f"object pixel {1e9 * dx:.2f} nm; {len(pos)} frames of {FRAME}²"
    )

    code, text, sec = run_cli(path, "-a", "raar", "-n", 1, "-o", os.path.join(out, "ff.h5"))
    ff = read_results(os.path.join(out, "ff.h5"))
    print(
        f"far field (1 iteration, {sec:.1f} s): pixel "
        f"{1e9 * ff['object_pixel_size_m'][0]:.2f} nm, object {ff['object'].shape}; "
        f"warnings: {ff['provenance']['config']['geometry_warnings']}"
    )

    nf_out = os.path.join(out, "nf.h5")
    code, text, sec = run_cli(
        path, "-a", "raar", "-n", args.iterations, "-o", nf_out,
        "--propagation", "near-field", "--focus-to-sample", Z1_M,
    )  # fmt: skip
    if code != 0:
        print(text)
        return code
    nf = read_results(nf_out)
    obj = on_truth_grid(nf["object"], nf["positions_px_initial"], pos, truth.shape)
    region = illuminated_region(jnp.asarray(probe[None]), jnp.asarray(pos), truth.shape, 0.3)
    err = float(object_error(jnp.asarray(obj), jnp.asarray(truth), region))
    start = float(object_error(jnp.ones(truth.shape, jnp.complex64), jnp.asarray(truth), region))
    print(
        f"near field ({args.iterations} RAAR iterations, {sec:.1f} s whole process): pixel "
        f"{1e9 * nf['object_pixel_size_m'][0]:.2f} nm, object {nf['object'].shape}, "
        f"object error {err:.4f} (start {start:.4f}); figure {os.path.splitext(nf_out)[0]}.png"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
