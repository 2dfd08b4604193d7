"""Joint mode (a) — one complex volume per energy — against staged and joint composition.

One two-energy LFP tilt series as an experiment records it (the sample on a 2× finer grid with
another projector, sub-pixel probe shifts, Poisson counts, no probe in the file, unrecorded
sample shifts σ = 1 px) goes through the staged pipeline once; the joint stage then runs twice
from that staged result (the staged stages are reused from the results file):

- ``volumes``: per-energy ptycho-tomography — optical density and phase volumes of each
  energy fitted to every frame, no spectral model; the composition is unmixed from its OD
  volumes as the staged chemistry does;
- ``composition``: spectro-ptycho-tomography — the species' volume fractions through the
  reference spectra.

Reported per method: relative error of each energy's OD volume against the truth (the
reference matrix applied to the true composition), composition RMSE over the occupied voxels
(after matching the volume's arbitrary position), and wall time.

    python experiments/joint_volumes.py [--dose 1e4] [--size 32] [--angles 24] [--out DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import time

import numpy as np
from experiment_report import composition_rmse, write_report
from scipy import ndimage

from diffptycho.analysis.composition import register_to_truth
from diffptycho.pipeline import (
    JointSettings,
    PipelineConfig,
    PtychographySettings,
    TomographySettings,
    run_pipeline,
)
from diffptycho.sim import datasets, tiltseries


def od_errors(od: np.ndarray, truth_od: np.ndarray, shift: np.ndarray) -> list[float]:
    """Relative error ‖od − truth‖/‖truth‖ per energy after the composition's registration."""
    out = []
    for v, t in zip(od, truth_od, strict=True):
        # the same Fourier shift register_to_truth applied to the composition
        moved = np.real(np.fft.ifftn(ndimage.fourier_shift(np.fft.fftn(v.astype(float)), shift)))
        out.append(float(np.linalg.norm(moved - t) / np.linalg.norm(t)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dose", type=float, default=1e4, help="photons per frame")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--angles", type=int, default=24)
    parser.add_argument("--iterations", type=int, default=32, help="joint Gauss–Newton steps")
    parser.add_argument("--tv-weight", type=float, default=JointSettings.tv_weight)
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--out", default="joint_volumes_out")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    geometry = datasets.ScanGeometry(photons_per_frame=args.dose, step_px=3.0)
    geometry = geometry.fitted_to((args.size, args.size))
    ds = tiltseries.simulate_lfp_tilt_series(
        (args.size,) * 3,
        angles_deg=np.linspace(-80.0, 77.0, args.angles),
        geometry=geometry,
        shift_sigma_px=1.0,
        seed=args.seed,
    )
    cxi = os.path.join(args.out, "series.cxi")
    refs = os.path.join(args.out, "references.csv")
    datasets.write_dataset(cxi, ds)
    datasets.write_lfp_references(refs)
    staged_path = os.path.join(args.out, "staged.h5")
    config = PipelineConfig(
        input=(cxi,),
        output=staged_path,
        references=refs,
        ptychography=PtychographySettings(iterations=50),
        tomography=TomographySettings(volume_shape=(args.size,) * 3),
    )
    if os.path.exists(staged_path):
        os.remove(staged_path)
    quiet = dict(progress=False, log=lambda line: None, figures=False)
    staged = run_pipeline(config, **quiet)
    staged_s = sum(staged.seconds.values())
    truth = ds.truth["composition"]
    matrix = staged.outputs["chemistry"]["reference_matrix"]
    truth_od = np.einsum("es,szyx->ezyx", matrix, truth)
    comp = staged.outputs["chemistry"]["composition"]
    moved, shift = register_to_truth(comp, truth)
    rows = [
        {
            "method": "staged",
            "od_relative_error": od_errors(
                staged.outputs["tomography"]["od_volumes"], truth_od, shift
            ),
            "composition_rmse": composition_rmse(moved, truth),
            "seconds": staged_s,
        }
    ]
    for model in ("volumes", "composition"):
        path = os.path.join(args.out, f"joint_{model}.h5")
        shutil.copy(staged_path, path)
        joint = JointSettings(iterations=args.iterations, tv_weight=args.tv_weight, model=model)
        cfg = dataclasses.replace(config, output=path, mode="joint", joint=joint)
        t0 = time.perf_counter()
        result = run_pipeline(cfg, **quiet)
        seconds = time.perf_counter() - t0
        out = result.outputs["joint"]
        moved, shift = register_to_truth(out["composition"], truth)
        od = (
            out["od_volumes"]
            if model == "volumes"
            else np.einsum("es,szyx->ezyx", matrix, out["composition"])
        )
        rows.append(
            {
                "method": f"joint {model}",
                "od_relative_error": od_errors(od, truth_od, shift),
                "composition_rmse": composition_rmse(moved, truth),
                "seconds": staged_s + seconds,
            }
        )
    lines = [
        f"dose {args.dose:g} photons/frame, {args.size}³, {args.angles} angles, "
        f"TV {args.tv_weight:g}, {args.iterations} joint steps",
        "",
        "| method | OD rel. error (E1 / E2) | composition RMSE | wall time s |",
        "|---|---|---|---|",
    ]
    for r in rows:
        od = " / ".join(f"{v:.3f}" for v in r["od_relative_error"])
        lines.append(f"| {r['method']} | {od} | {r['composition_rmse']:.4f} | {r['seconds']:.0f} |")
    text = "\n".join(lines)
    write_report(args.out, args, rows, text)


if __name__ == "__main__":
    main()
