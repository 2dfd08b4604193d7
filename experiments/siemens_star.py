"""Measured data: reconstruct the APS Siemens-star scan, FRC resolution from two half-scans.

The 516 positions are split at random (seeded) into two disjoint halves; each half is
reconstructed on its own from the same starting model (object ones, the file's probe), so the
two reconstructions share no measured photon. After removing each one's global complex scale
and linear phase ramp (fitted on the commonly well-illuminated region, amplitude-weighted), the
Fourier ring correlation of the complex objects (Hann-windowed square crop of that region) is
compared with the ½-bit threshold (van Heel & Schatz 2005); the crossing gives the half-period
resolution in object pixels (the file stores no geometry, so no metres). The full scan is also
reconstructed for the figure, and its PRTF (model vs measured amplitudes) is reported.

Usage:
    python experiments/siemens_star.py [--algorithm mpie] [--iterations 150] [--out siemens_out]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax.numpy as jnp
import numpy as np

from diffptycho.analysis import figures
from diffptycho.analysis.phase import remove_phase_ramp
from diffptycho.analysis.prtf import detector_waves, prtf_model
from diffptycho.analysis.resolution import crossing, frc
from diffptycho.io.results import write_results
from diffptycho.io.scan import PtychoScan
from diffptycho.io.siemens import SIEMENS_STAR_FILE, read_siemens_star
from diffptycho.recon.ptycho.constraints import Refinement
from diffptycho.recon.ptycho.data import PtychoData
from diffptycho.recon.ptycho.metrics import illuminated_region
from diffptycho.recon.ptycho.start import make_engine, starting_model
from diffptycho.recon.solve import solve

DEFAULT_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


def reconstruct(scan: PtychoScan, index: np.ndarray, args, shape, label: str):
    """Reconstruct the frames ``index`` of the scan on an object grid of ``shape``."""
    sub = PtychoScan(
        scan.data[index], scan.positions_px[index], scan.energy_ev, illumination=scan.illumination
    )
    model = starting_model(sub, args.probe_modes)
    model = type(model)(
        object=jnp.ones(shape, jnp.complex64),
        probe=model.probe,
        positions=model.positions,
    )
    options = {"refinement": Refinement(probe=True), "batch_size": args.batch_size}
    solver = make_engine(args.algorithm, **options)
    t0 = time.perf_counter()
    model, history = solve(
        model, solver, PtychoData(jnp.asarray(sub.data)), args.iterations, description=label
    )
    seconds = time.perf_counter() - t0
    print(f"{label}: {len(index)} positions, {args.iterations} iterations in {seconds:.0f} s")
    return model, history, seconds


def flatten(obj: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Global complex scale and linear phase ramp removed (weighted on the region)."""
    flat = remove_phase_ramp(obj, weights)
    return flat / np.sqrt(np.sum(weights * np.abs(flat) ** 2) / np.sum(weights))


def square_crop(region: np.ndarray, fill: float = 0.99) -> tuple[slice, slice]:
    """Largest centred square of which at least ``fill`` of the pixels lie in the region."""
    cy, cx = (np.asarray(region.shape) // 2).tolist()
    half = 4
    while (
        half < min(cy, cx) and region[cy - half : cy + half, cx - half : cx + half].mean() >= fill
    ):
        half += 2
    half = max(half - 2, 4)
    return slice(cy - half, cy + half), slice(cx - half, cx + half)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.path.join(DEFAULT_DATA, SIEMENS_STAR_FILE))
    parser.add_argument("--algorithm", default="mpie")
    parser.add_argument("--iterations", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--probe-modes", type=int, default=1)
    parser.add_argument("--out", default="siemens_out")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    scan = read_siemens_star(args.data)
    n = scan.data.shape[0]
    shape = starting_model(scan).object.shape
    halves = np.array_split(np.random.default_rng(args.seed).permutation(n), 2)
    full, history, t_full = reconstruct(scan, np.arange(n), args, shape, "full scan")
    half_models = [
        reconstruct(scan, np.sort(h), args, shape, f"half {k + 1}")[0] for k, h in enumerate(halves)
    ]
    # where both halves are well illuminated
    regions = [
        np.asarray(illuminated_region(m.probe, m.positions, shape, threshold=0.1))
        for m in half_models
    ]
    common = regions[0] & regions[1]
    weights = common * np.abs(np.asarray(full.object))
    a, b = (flatten(np.asarray(m.object), weights) for m in half_models)
    b = b * np.exp(-1j * np.angle(np.vdot(b[common], a[common])))  # common global phase
    crop = square_crop(common)
    curve = frc(a[crop], b[crop], window="hann")
    res = crossing(curve, "half_bit")
    frames = scan.data
    waves = detector_waves(full.object, full.probe, full.positions)
    curve_prtf = prtf_model(np.sum(np.abs(waves) ** 2, axis=1), frames)
    res_prtf = curve_prtf.resolution()
    flat_full = flatten(np.asarray(full.object), weights)
    rows, cols = np.nonzero(common)
    view = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    figures.image_grid(
        {
            "amplitude (full scan)": np.abs(flat_full[view]),
            "phase, ramp removed (rad)": np.angle(flat_full[view]),
            "phase, half 1": np.angle(a[view]),
            "phase, half 2": np.angle(b[view]),
        },
        os.path.join(args.out, "siemens_star.png"),
        columns=4,
        cmap="gray",
        title=f"Siemens star, {args.algorithm}, {args.iterations} iterations",
    )
    _frc_figure(curve, res, curve_prtf, res_prtf, os.path.join(args.out, "siemens_frc.png"))
    numbers = {
        "positions": n,
        "half_sizes": [len(h) for h in halves],
        "object_shape": list(shape),
        "frc_crop_px": crop[0].stop - crop[0].start,
        "frc_half_bit_shell": res.shell,
        "frc_half_bit_half_period_px": res.half_period_px,
        "frc_crossed": res.crossed,
        "prtf_1_over_e_half_period_px": res_prtf.half_period_px,
        "prtf_crossed": res_prtf.crossed,
        "full_scan_seconds": t_full,
        "final_loss": history.loss[-1],
    }
    write_results(
        os.path.join(args.out, "siemens_star.h5"),
        {
            "object": np.asarray(full.object),
            "probe": np.asarray(full.probe),
            "positions_px": np.asarray(full.positions),
            "object_pixel_size_m": np.full(2, np.nan),
            "frc/correlation": curve.correlation,
            "frc/frequency": curve.frequency,
            "frc/half_bit": curve.half_bit(),
            "prtf/prtf": curve_prtf.prtf,
        },
        units={"positions_px": "pixel", "frc/frequency": "cycles/pixel"},
        config=dict(vars(args), command="experiments/siemens_star.py", **numbers),
        history=history.as_arrays(),
        timings={"full_scan_s": t_full},
    )
    print(json.dumps(numbers, indent=1))
    return 0


def _frc_figure(curve, res, curve_prtf, res_prtf, path: str) -> str:
    plt = figures._pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(curve.frequency, curve.correlation, label="FRC (two half-scans)")
    ax.plot(curve.frequency, curve.half_bit(), "--", label="½-bit threshold")
    ax.plot(curve_prtf.frequency, curve_prtf.prtf, label="PRTF (full scan)")
    ax.axhline(np.exp(-1), color="gray", lw=0.8, ls=":", label="1/e")
    ax.axvline(res.frequency, color="C0", lw=0.8, ls=":")
    ax.set_xlabel("spatial frequency (cycles / pixel)")
    ax.set_ylim(-0.1, 1.05)
    ax.set_title(
        f"½-bit: {res.half_period_px:.2f} px half-period; "
        f"PRTF 1/e: {res_prtf.half_period_px:.2f} px"
    )
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return figures.save_figure(fig, path)


if __name__ == "__main__":
    sys.exit(main())
