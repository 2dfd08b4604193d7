"""Joint reconstruction from a blank start against joint from the staged start.

One simulated LFP tilt series as an experiment records it (sample 2× finer than the voxels,
unknown probe, unrecorded per-scan shifts of σ = ``--misalign`` px) goes through the pipeline
twice in joint mode: started from the staged result (``JointSettings(start="staged")``) and
from scratch (``start="blank"``: zero composition, data-derived probes, nominal positions, no
alignment), each refining the leaves given. Reported: composition RMSE and relative error
against the truth (after registering the volume to it), and wall time.

    PYTHONPATH=. python experiments/joint_blank_start.py [--dose 1e4] [--misalign 1]
        [--blank-iterations 64] [--blank-refine composition probe alignment energy_offsets]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
from experiment_report import composition_rmse

from diffptycho.analysis.composition import composition_errors, register_to_truth
from diffptycho.pipeline import run_pipeline
from diffptycho.pipeline.config import (
    JointSettings,
    PipelineConfig,
    PtychographySettings,
    TomographySettings,
)
from diffptycho.sim import datasets, tiltseries


def _errors(composition: np.ndarray, truth: np.ndarray) -> dict:
    moved, _ = register_to_truth(composition, truth)
    rmse = composition_rmse(moved, truth)
    return {"rmse": rmse, "relative_error": composition_errors(moved, truth)["relative_error"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--angles", type=int, default=24)
    p.add_argument("--dose", type=float, default=1e4)
    p.add_argument("--misalign", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=6)
    p.add_argument("--staged-iterations", type=int, default=32)
    p.add_argument("--blank-iterations", type=int, default=64)
    p.add_argument(
        "--blank-refine",
        nargs="+",
        default=["composition", "probe", "energy_offsets"],
    )
    p.add_argument(
        "--blank-coarse",
        nargs="*",
        default=[],
        metavar="BINNING:STEPS",
        help="coarse-to-fine levels of the blank start, e.g. 2:16 (run as an extra row)",
    )
    p.add_argument("--skip-staged", action="store_true", help="only the blank-start rows")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    geometry = datasets.ScanGeometry(photons_per_frame=args.dose).fitted_to((args.size,) * 2)
    ds = tiltseries.simulate_lfp_tilt_series(
        (args.size,) * 3,
        angles_deg=np.linspace(-80.0, 77.0, args.angles),
        geometry=geometry,
        shift_sigma_px=args.misalign,
        seed=args.seed,
    )
    truth = ds.truth["composition"]
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        cxi, refs = os.path.join(tmp, "tilt.cxi"), os.path.join(tmp, "refs.csv")
        datasets.write_dataset(cxi, ds)
        datasets.write_lfp_references(refs)
        runs = {
            "staged start": JointSettings(iterations=args.staged_iterations),
            "blank start": JointSettings(
                start="blank", iterations=args.blank_iterations, refine=tuple(args.blank_refine)
            ),
        }
        if args.skip_staged:
            del runs["staged start"]
        if args.blank_coarse:
            levels = tuple(tuple(int(x) for x in c.split(":")) for c in args.blank_coarse)
            fine = args.blank_iterations - sum(n for _, n in levels)
            runs["blank start, coarse-to-fine " + " ".join(args.blank_coarse)] = JointSettings(
                start="blank", iterations=fine, refine=tuple(args.blank_refine),
                coarse_levels=levels,
            )  # fmt: skip
        for name, joint in runs.items():
            config = PipelineConfig(
                input=(cxi,),
                output=os.path.join(tmp, name.replace(" ", "_") + ".h5"),
                references=refs,
                mode="joint",
                ptychography=PtychographySettings(iterations=50),
                tomography=TomographySettings(volume_shape=(args.size,) * 3),
                joint=joint,
            )
            t0 = time.perf_counter()
            result = run_pipeline(config, progress=False, log=lambda line: None, figures=False)
            rows[name] = {**_errors(result.composition, truth), "seconds": time.perf_counter() - t0}
            if name == "staged start":
                rows["staged"] = _errors(result.outputs["chemistry"]["composition"], truth)
            print(name, rows[name], flush=True)
    reference = rows.get("staged start", rows["blank start"])
    ratio = rows["blank start"]["rmse"] / reference["rmse"]
    print("| start | composition RMSE | relative error | wall s |\n|---|---|---|---|")
    for name, r in rows.items():
        print(
            f"| {name} | {r['rmse']:.4f} | {r['relative_error']:.4f} | {r.get('seconds', 0):.0f} |"
        )
    print(f"blank / staged-start RMSE = {ratio:.3f} (acceptance: ≤ 1.05)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows, "ratio": ratio}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
