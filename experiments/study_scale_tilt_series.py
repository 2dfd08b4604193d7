"""The staged pipeline at the battery study's scan count: 2 energies × 158 angles, 128³ voxels.

Simulates a two-energy LFP tilt series of the study's size — 316 ptychographic scans over
−80°…+77°, 64² frames, an 11 × 11 raster per scan, scans misaligned by σ = 2 px — writes it
as one CXI file (one entry per scan), then runs ``diffptycho spectrotomo`` on it in a fresh
process and reports each stage's wall time and the pipeline process's peak resident memory
(VmHWM from /proc, the process's own high-water mark).

The probe starts from the one written in the file (``file_probe``): the data-derived guess
(back-propagated √mean pattern) has no defocus and collapses to a focused spot with these
64² frames and a 5 µm defocused zone-plate probe (the pipeline then scans an object of
isolated spots). The simulation uses ``oversample=1`` by default: the 2× finer sample of the
accuracy experiments would take > 15 CPU-minutes to project at this size here; the data are
still not the model's own (another projector, Fourier-shifted scans, Poisson counts). This run
is about scale — time and memory — not accuracy.

Projected time on N devices: the ptychography stage is one independent solve per scan, so it
divides by N when the scans are spread over devices (or over N processes of
``diffptycho spectrotomo`` on subsets of the scans); the other stages are counted as they ran
here, an upper bound (they split over slabs and angles too, see ``bench_scale.py``).

    PYTHONPATH=. python experiments/study_scale_tilt_series.py --out scale_out [--angles 158]
        [--size 128] [--align reprojection|rough] [--skip-simulation]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
from experiment_report import peak_rss_mb


def simulate(args) -> None:
    from diffptycho.sim import datasets, tiltseries

    geometry = datasets.ScanGeometry(
        probe_shape=(64, 64), scan_shape=(11, 11), step_px=12.0, defocus_m=args.defocus_m
    ).fitted_to((args.size, args.size))
    t0 = time.perf_counter()
    ds = tiltseries.simulate_lfp_tilt_series(
        (args.size,) * 3,
        angles_deg=np.linspace(-80.0, 77.0, args.angles),
        geometry=geometry,
        shift_sigma_px=2.0,
        seed=1,
        oversample=args.oversample,
        known_probe=True,
    )
    t_sim = time.perf_counter() - t0
    datasets.write_dataset(os.path.join(args.out, "series.cxi"), ds)
    datasets.write_lfp_references(os.path.join(args.out, "references.csv"))
    info = {
        "simulate_s": t_sim,
        "write_s": time.perf_counter() - t0 - t_sim,
        "frames_shape": list(ds.frames.shape),
        "frames_gib": ds.frames.nbytes / 2**30,
        "scan_shape": list(geometry.scan_shape),
        "step_px": geometry.step_px,
    }
    with open(os.path.join(args.out, "simulation.json"), "w") as f:
        json.dump(info, f, indent=1)
    print("simulation", info, flush=True)


def pipeline(args) -> None:
    """Run in its own process: the pipeline, then this process's peak memory."""
    from diffptycho.pipeline import (
        AlignmentSettings,
        PipelineConfig,
        PtychographySettings,
        TomographySettings,
        run_pipeline,
    )

    config = PipelineConfig(
        input=(os.path.join(args.out, "series.cxi"),),
        output=os.path.join(args.out, "volumes.h5"),
        references=os.path.join(args.out, "references.csv"),
        ptychography=PtychographySettings(iterations=args.ptycho_iterations, file_probe=True),
        alignment=AlignmentSettings(method=args.align, max_loops=args.align_loops),
        tomography=TomographySettings(volume_shape=(args.size,) * 3),
    )
    t0 = time.perf_counter()
    result = run_pipeline(config, progress=False, figures=False)
    total = time.perf_counter() - t0
    out = {"stage_s": result.seconds, "total_s": total, "peak_rss_mib": peak_rss_mb()}
    with open(os.path.join(args.out, "pipeline.json"), "w") as f:
        json.dump(out, f, indent=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="scale_out")
    parser.add_argument("--angles", type=int, default=158)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--oversample", type=int, default=1)
    parser.add_argument(
        "--defocus-m", type=float, default=5e-6, help="probe ≈ 47 px wide in the 64² window"
    )
    parser.add_argument("--ptycho-iterations", type=int, default=50)
    parser.add_argument("--align", default="reprojection")
    parser.add_argument("--align-loops", type=int, default=5)
    parser.add_argument("--skip-simulation", action="store_true")
    parser.add_argument("--pipeline-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.pipeline_only:
        pipeline(args)
        return
    if not args.skip_simulation:
        simulate(args)
    cmd = [sys.executable, os.path.abspath(__file__), "--pipeline-only", *sys.argv[1:]]
    subprocess.run(cmd, check=True)
    with open(os.path.join(args.out, "pipeline.json")) as f:
        run = json.load(f)
    with open(os.path.join(args.out, "simulation.json")) as f:
        sim = json.load(f)
    stages = run["stage_s"]
    ptycho = stages.get("ptychography", 0.0)
    rest = run["total_s"] - ptycho
    lines = [
        f"{2 * args.angles} scans (2 energies × {args.angles} angles), {args.size}³ voxels, "
        f"64² frames, {sim['scan_shape'][0]} × {sim['scan_shape'][1]} positions per scan",
        "",
        "| stage | wall s |",
        "|---|---|",
        *(f"| {k} | {v:.0f} |" for k, v in stages.items()),
        f"| **total** | **{run['total_s']:.0f}** |",
        "",
        f"peak resident memory of the pipeline process: {run['peak_rss_mib']:.0f} MiB",
        "",
        "| devices N | projected wall s (ptychography / N + the rest as measured) |",
        "|---|---|",
        *(f"| {n} | {ptycho / n + rest:.0f} |" for n in (1, 2, 4, 8)),
    ]
    text = "\n".join(lines)
    print(text)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
