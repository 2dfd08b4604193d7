"""Joint vs staged reconstruction of the same LFP tilt series, swept over dose, angles and overlap.

Every case simulates a two-energy LFP tilt series as an experiment records it (the sample on a
2× finer grid with another projector, sub-pixel probe shifts, Poisson counts, no probe in the
file, unrecorded sample shifts σ = 1 px) and runs ``diffptycho spectrotomo --mode joint`` on it:
the staged stages (ptychography with probe retrieval, projections, registration, reprojection
alignment, ART, unmixing) and then the joint stage started from their result. Both
compositions are compared with the truth after matching the volume's arbitrary position.

The sweep is one factor at a time around a central case: dose (photons per frame), number of
angles over −80°…+77°, and scan overlap (raster step against a 16-px probe window). Reported per
case and method: composition RMSE over the occupied voxels, Dice of the 30/70 % phase classes,
the FSC half-period against the truth (0.5 threshold), and wall time.

    python experiments/joint_vs_staged.py [--quick] [--out DIR]

``--quick`` runs a reduced sweep (smaller volume, three doses) in a few minutes and writes the
same JSON (rows with ``dose``, ``staged_composition_rmse``, ``joint_composition_rmse``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import numpy as np
from experiment_report import composition_rmse, write_report

from diffptycho.analysis.composition import composition_errors, register_to_truth
from diffptycho.analysis.resolution import crossing, fsc
from diffptycho.pipeline import (
    JointSettings,
    PipelineConfig,
    PtychographySettings,
    TomographySettings,
    run_pipeline,
)
from diffptycho.sim import datasets, tiltseries


@dataclasses.dataclass(frozen=True)
class Case:
    dose: float
    angles: int
    step_px: float


def half_period_nm(estimate: np.ndarray, truth: np.ndarray, voxel_m: float) -> float:
    """FSC (0.5) half-period of the total volume fraction against the truth, in nm.

    A curve that stays above 0.5 up to Nyquist gives the Nyquist half-period, one voxel
    (reported as such: the grid, not the data, limits it).
    """
    cross = crossing(fsc(estimate.sum(0), truth.sum(0)), "0.5", voxel_size_m=voxel_m)
    return float(cross.half_period_m * 1e9) if cross.crossed else voxel_m * 1e9


def run_case(case: Case, args, folder: str) -> dict:
    geometry = datasets.ScanGeometry(photons_per_frame=case.dose, step_px=case.step_px)
    geometry = geometry.fitted_to((args.size, args.size))
    t0 = time.perf_counter()
    ds = tiltseries.simulate_lfp_tilt_series(
        (args.size,) * 3,
        angles_deg=np.linspace(-80.0, 77.0, case.angles),
        geometry=geometry,
        shift_sigma_px=args.misalign,
        seed=args.seed,
    )
    tag = f"dose{case.dose:g}_a{case.angles}_s{case.step_px:g}"
    cxi = os.path.join(folder, f"{tag}.cxi")
    refs = os.path.join(folder, "references.csv")
    datasets.write_dataset(cxi, ds)
    datasets.write_lfp_references(refs)
    t_sim = time.perf_counter() - t0
    config = PipelineConfig(
        input=(cxi,),
        output=os.path.join(folder, f"{tag}.h5"),
        references=refs,
        mode="joint",
        ptychography=PtychographySettings(iterations=args.ptycho_iterations),
        tomography=TomographySettings(volume_shape=(args.size,) * 3),
        joint=JointSettings(
            iterations=args.joint_iterations, tv_weight=args.tv_weight, support=args.support
        ),
    )
    if os.path.exists(config.output):
        os.remove(config.output)
    result = run_pipeline(config, progress=False, log=lambda line: None, figures=False)
    truth = ds.truth["composition"]
    row = {"dose": case.dose, "angles": case.angles, "step_px": case.step_px, "simulate_s": t_sim}
    staged_s = sum(v for k, v in result.seconds.items() if k != "joint")
    for name, comp, seconds in (
        ("staged", result.outputs["chemistry"]["composition"], staged_s),
        ("joint", result.outputs["joint"]["composition"], staged_s + result.seconds["joint"]),
    ):
        moved, _ = register_to_truth(comp, truth)
        errors = composition_errors(moved, truth)
        row[f"{name}_composition_rmse"] = composition_rmse(moved, truth)
        row[f"{name}_relative_error"] = errors["relative_error"]
        for k in ("dice_first_rich", "dice_mixed", "dice_second_rich"):
            row[f"{name}_{k}"] = errors[k]
        row[f"{name}_fsc_half_period_nm"] = half_period_nm(moved, truth, ds.pixel_size_m)
        row[f"{name}_seconds"] = seconds
    row["joint_only_seconds"] = result.seconds["joint"]
    return row


def cases(args) -> list[Case]:
    centre = Case(
        args.doses[len(args.doses) // 2], args.angles[len(args.angles) // 2], args.steps[0]
    )
    out = [dataclasses.replace(centre, dose=d) for d in args.doses]
    out += [dataclasses.replace(centre, angles=a) for a in args.angles]
    out += [dataclasses.replace(centre, step_px=s) for s in args.steps]
    unique: list[Case] = []
    for case in out:
        if case not in unique:
            unique.append(case)
    return unique


def table(rows: list[dict]) -> str:
    lines = [
        "| dose | angles | step px | RMSE staged | RMSE joint | change | Dice mixed s / j "
        "| FSC ½-period nm s / j (1 voxel = Nyquist) | time s staged / staged+joint |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        change = r["joint_composition_rmse"] / r["staged_composition_rmse"] - 1
        lines.append(
            f"| {r['dose']:g} | {r['angles']} | {r['step_px']:g} | "
            f"{r['staged_composition_rmse']:.4f} | {r['joint_composition_rmse']:.4f} | "
            f"{100 * change:+.0f} % | {r['staged_dice_mixed']:.2f} / {r['joint_dice_mixed']:.2f} | "
            f"{r['staged_fsc_half_period_nm']:.1f} / {r['joint_fsc_half_period_nm']:.1f} | "
            f"{r['staged_seconds']:.0f} / {r['joint_seconds']:.0f} |"
        )
    return "\n".join(lines)


def figure(rows: list[dict], path: str) -> None:
    from diffptycho.analysis.figures import _pyplot, save_figure

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    by_dose = sorted({r["dose"] for r in rows})
    centre = [r for r in rows if r["dose"] in by_dose]
    for method, marker in (("staged", "o-"), ("joint", "s-")):
        xs = [
            r["dose"]
            for r in centre
            if r["angles"] == centre[0]["angles"] and r["step_px"] == centre[0]["step_px"]
        ]
        ys = [
            r[f"{method}_composition_rmse"]
            for r in centre
            if r["angles"] == centre[0]["angles"] and r["step_px"] == centre[0]["step_px"]
        ]
        order = np.argsort(xs)
        ax.plot(np.asarray(xs)[order], np.asarray(ys)[order], marker, label=method)
    ax.set(xscale="log", xlabel="photons per frame", ylabel="composition RMSE (occupied voxels)")
    ax.legend()
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="reduced sweep in a few minutes")
    parser.add_argument("--tv-weight", type=float, default=0.0, help="joint TV weight")
    parser.add_argument(
        "--single", type=float, default=None, help="run only the central case at this dose"
    )
    parser.add_argument(
        "--support", choices=("none", "staged"), default="none", help="joint support constraint"
    )
    parser.add_argument("--out", default="joint_vs_staged_out")
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--misalign", type=float, default=1.0, help="scan shift σ, px")
    args = parser.parse_args()
    if args.quick:
        args.size, args.doses, args.angles, args.steps = 24, [1e3, 1e4, 1e5], [16], [3.0]
        args.ptycho_iterations, args.joint_iterations = 30, 16
    else:
        args.size, args.doses, args.angles, args.steps = (
            32,
            [1e3, 1e4, 1e5],
            [12, 24, 48],
            [3.0, 4.5],
        )
        args.ptycho_iterations, args.joint_iterations = 50, 32
    if args.single is not None:
        args.doses = [args.single]
        args.angles = [args.angles[len(args.angles) // 2]]
        args.steps = [args.steps[0]]
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for case in cases(args):
        rows.append(run_case(case, args, args.out))
        print(f"done {case}", flush=True)
    text = table(rows)
    write_report(args.out, args, rows, text)
    figure(rows, os.path.join(args.out, "rmse_vs_dose.png"))


if __name__ == "__main__":
    main()
