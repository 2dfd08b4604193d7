"""How well can a model on the reconstruction grid explain the simulated V K-edge frames?

The V K-edge study's frames (``simulate_vanadium_spectroptycho``) are exit waves formed on a
grid ``--oversample`` (4) times finer than the detector's object pixel, in a window of the
frame's size around each position, the probe moved by a Fourier shift. The reconstruction
works on a grid ``object_refine`` (2) times finer, with the patch interpolated bilinearly at
sub-pixel positions. This script puts the true object of one energy on the reconstruction's
grid (band-limited from a grid twice as fine) and the file's probe through three forward
models at the true positions and compares their frames with the simulator's noiseless ones,
as the RMS of (model − truth)/√truth, i.e. in units of the Poisson noise of one pixel at
``--photons`` photons per frame:

- ``bilinear``: the package's model (:func:`~diffptycho.physics.scan.extract_patches`);
- ``fourier``: patch at the integer position, probe moved by a Fourier shift of the rest;
- ``window``: the simulator's own physics on its own fine grid, but with each window placed
  where the reconstruction grid places it (what the placement of the window alone costs when
  the probe's tails reach the edge of the frame and wrap around).

A model error of x σ adds ≈ x² to the normalised misfit the engines can reach, and it does
not fall with dose. Also printed: the share of the probe's power in the outer 2 pixels of the
frame, and the amplitude there relative to the peak. Run from the repository root::

    PYTHONPATH=. python experiments/spectro_model_error.py [--frames 16 24 32] [--seed 3]
"""

from __future__ import annotations

import argparse
import dataclasses

import jax.numpy as jnp
import numpy as np

from diffptycho.physics import optics, scan, spectra
from diffptycho.pipeline.spectroptycho import fourier_upsample
from diffptycho.sim import spectroptycho as ss
from diffptycho.sim.phantoms import vanadium_field

REFINE = 2
"""The reconstruction's object grid: this many times finer than the detector's object pixel."""


def far_field(waves: np.ndarray, n_out: int) -> np.ndarray:
    """Intensities of the central ``n_out`` frequencies of centred windows (unitary FFT)."""
    far = np.fft.fftshift(
        np.fft.fft2(np.fft.ifftshift(waves, axes=(-2, -1)), norm="ortho"), axes=(-2, -1)
    )
    c = waves.shape[-1] // 2
    return np.abs(far[..., c - n_out // 2 : c + n_out // 2, c - n_out // 2 : c + n_out // 2]) ** 2


def shifted(probe: np.ndarray, frac: np.ndarray) -> np.ndarray:
    """``probe`` (w, w) moved by ``frac`` (n, 2) pixels towards larger indices (Fourier)."""
    f = np.fft.fftfreq(probe.shape[-1])
    ramp = np.exp(
        -2j
        * np.pi
        * (f[None, :, None] * frac[:, 0, None, None] + f[None, None, :] * frac[:, 1, None, None])
    )
    return np.fft.ifft2(np.fft.fft2(probe)[None] * ramp)


def one_frame_size(frame: int, args) -> dict:
    size, refine_field = args.size, 2 * args.oversample
    field = vanadium_field(
        (refine_field * size,) * 2,
        20e-9 / refine_field,
        3,
        seed=args.seed,
        max_thickness_m=args.max_thickness_nm * 1e-9,
        domains_per_particle=2,
    )
    energies = np.linspace(5420.0, 5540.0, 40)[[0, 20]]
    geometry = dataclasses.replace(
        ss.SPECTRO_GEOMETRY, photons_per_frame=args.photons, probe_shape=(frame, frame)
    )
    geometry = ss.fit_scan_to((size, size), geometry, energies)
    ds = ss.simulate_vanadium_spectroptycho(
        (size, size),
        energies_ev=energies,
        geometry=geometry,
        seed=args.seed,
        known_probe=True,
        field=field,
        oversample=args.oversample,
    )
    truth = ds.truth
    expected = np.asarray(truth["expected_frames"])
    ref, _ = spectra.vanadium_reference_spectra(energies)
    rows = {"bilinear": [], "fourier": [], "window": [], "edge_power": [], "edge_amplitude": []}
    for e in range(energies.size):
        pixel = float(np.asarray(ds.pixel_size_m)[e]) / REFINE  # the reconstruction's pixel
        true_m = np.asarray(ds.positions_px)[e, 0] * pixel * REFINE
        true_m = true_m - 20e-9 * np.asarray(truth["offsets_px"])[e][None]
        pos = true_m / pixel
        n = REFINE * frame
        h = 2 * int(np.ceil(np.abs(pos).max() + n)) + 2
        # the true transmission twice finer, band-limited onto the reconstruction grid
        coords = [(np.arange(2 * h) - h) * pixel / 2] * 2
        thickness = ss._sample_field(field.thickness, refine_field, (size, size), 20e-9, coords)
        spec = np.stack([ref[s] for s in field.species], axis=1)[e]
        integral = np.einsum("s,syx->yx", spec, thickness)
        k = optics.wavenumber(energies)[e]
        fine = np.exp(-k * (integral.imag + 1j * integral.real))
        band = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(fine - 1.0)))[
            h - h // 2 : h - h // 2 + h, h - h // 2 : h - h // 2 + h
        ]
        obj = 1.0 + np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(band))) / 4.0
        coarse_probe = np.asarray(ds.probe)[e, 0]
        probe = fourier_upsample(coarse_probe, REFINE)
        truth_frames = expected[e].reshape(-1, frame, frame)
        sigma = np.sqrt(np.maximum(truth_frames, 1.0))

        def score(frames, truth_frames=truth_frames, sigma=sigma):
            return float(np.sqrt(np.mean(((frames - truth_frames) / sigma) ** 2)))

        patches = np.asarray(scan.extract_patches(jnp.asarray(obj), jnp.asarray(pos), (n, n)))
        rows["bilinear"].append(score(far_field(probe[None] * patches, frame)))
        whole = np.floor(pos)
        patches = np.asarray(scan.extract_patches(jnp.asarray(obj), jnp.asarray(whole), (n, n)))
        rows["fourier"].append(score(far_field(shifted(probe, pos - whole) * patches, frame)))
        # the simulator's physics on its own grid, windows placed as on the reconstruction's
        top_left = pos + h // 2 - n // 2
        corner = 2 * np.floor(top_left).astype(int)
        probe2 = fourier_upsample(coarse_probe, 2 * REFINE)
        windows = np.stack([fine[a : a + 2 * n, b : b + 2 * n] for a, b in corner])
        waves = shifted(probe2, 2 * top_left - corner) * windows
        rows["window"].append(score(far_field(waves, frame)))
        power = np.abs(coarse_probe) ** 2
        border = np.ones(power.shape, bool)
        border[2:-2, 2:-2] = False
        rows["edge_power"].append(float(power[border].sum() / power.sum()))
        rows["edge_amplitude"].append(float(np.sqrt(power[border].max() / power.max())))
    return {key: float(np.mean(v)) for key, v in rows.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, nargs="+", default=[16, 24, 32])
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--size", type=int, default=40, help="reference-grid field in pixels")
    p.add_argument("--oversample", type=int, default=4)
    p.add_argument("--photons", type=float, default=1e8, help="photons per frame")
    p.add_argument("--max-thickness-nm", type=float, default=1000.0, help="as the study")
    args = p.parse_args(argv)
    print(f"photons per frame {args.photons:.0e}, seed {args.seed}; model error in σ of Poisson")
    print("| frame px | bilinear | fourier | window only | probe power in outer 2 px | "
          "edge / peak amplitude |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for frame in args.frames:
        r = one_frame_size(frame, args)
        print(
            f"| {frame} | {r['bilinear']:.2f} | {r['fourier']:.2f} | {r['window']:.2f} | "
            f"{r['edge_power']:.4f} | {r['edge_amplitude']:.3f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
