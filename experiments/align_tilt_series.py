"""Acceptance of tilt-series alignment: reprojection vs joint on a simulated Fe L3-like series.

A 3-D phantom of overlapping ellipsoids is made on a 2× finer grid (128³ for 64³), projected
there at the study's angles (−80° … +77°), each fine projection moved by a random similarity
transform with a cubic spline (shifts σ = 5 px, rotations uniform ±1°, scale ±1 %), binned 2×2
and given 1 % Gaussian noise (σ = 1 % of the largest value). Neither the grid, the
interpolation nor the binning is the reconstruction's, so this is not an inverse crime.

Errors are measured after bringing each estimate to the truth's gauge
(:func:`diffptycho.recon.align.match_gauge`: volume translation and mean log-scale, which the
projections cannot determine); the volume error is ‖f − f_true‖/‖f_true‖ of an ART-20
reconstruction with those parameters, against the same reconstruction with the true ones.

Usage: python experiments/align_tilt_series.py [--size 64] [--angles 60] [--json out.json]
[--methods reprojection joint] [--loop-algorithm sirt] [--loop-iterations 100]
[--loop-relaxation 1.9]
[--no-warm-start] [--anderson-depth 5] [--interpolation cubic] [--steps 300] [--trace]
[--final-iterations 0] [--refine-steps N] [--initial-json previous.json] [--no-baselines]

``--json`` also stores the returned parameters (``params``: per method, and "loops only"
before a final pass), which ``--initial-json`` starts the reprojection loops from.
"""

from __future__ import annotations

import argparse
import json
import time

import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from diffptycho.physics.tomography import project
from diffptycho.recon.align import (
    bin_projections,
    joint_align,
    match_gauge,
    reconstruct_dealigned,
    reprojection_align,
    rough_align,
)
from diffptycho.recon.align.registration import register_similarity_stack
from diffptycho.recon.align.reprojection import _from_binned


def phantom(n: int, seed: int = 0, count: int = 14) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z, y, x = (np.mgrid[:n, :n, :n] - (n - 1) / 2) / n
    vol = np.zeros((n, n, n))
    for _ in range(count):
        c = rng.uniform(-0.2, 0.2, 3)
        r = rng.uniform(0.04, 0.14, 3)
        v = rng.uniform(0.3, 1.0)
        inside = ((z - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((x - c[2]) / r[2]) ** 2
        vol += v * (inside <= 1)
    return vol


def transform_spline(img: np.ndarray, q: np.ndarray) -> np.ndarray:
    """similarity_transform's geometry with a cubic spline (scipy), zeros outside."""
    cy, cx = img.shape[0] // 2, img.shape[1] // 2
    sy, sx, th, ls = q
    m = np.exp(-ls) * np.array([[np.cos(th), np.sin(th)], [-np.sin(th), np.cos(th)]])
    off = np.array([cy, cx]) - m @ (np.array([cy, cx]) + np.array([sy, sx]))
    return ndimage.affine_transform(img, m, offset=off, order=3, mode="constant")


def simulate(n, n_angles, sigma_px, rot_deg, scale, noise, seed):
    rng = np.random.default_rng(seed)
    fine = phantom(2 * n, seed)
    angles = np.deg2rad(np.linspace(-80, 77, n_angles))
    p_fine = np.asarray(project(jnp.asarray(fine, jnp.float32), jnp.asarray(angles))) / 2
    truth = np.zeros((n_angles, 4))
    truth[:, :2] = rng.normal(0, sigma_px, (n_angles, 2))
    truth[:, 2] = np.deg2rad(rng.uniform(-rot_deg, rot_deg, n_angles))
    truth[:, 3] = np.log1p(rng.uniform(-scale, scale, n_angles))
    fine_params = _from_binned(truth, (n, n), 2)
    moved = np.stack([transform_spline(im, q) for im, q in zip(p_fine, fine_params, strict=True)])
    meas = bin_projections(moved, 2)
    meas = meas + rng.normal(0, noise * meas.max(), meas.shape)
    volume = fine.reshape(n, 2, n, 2, n, 2).mean((1, 3, 5))
    return angles, truth, meas, volume


def errors(params, truth, angles, shape):
    g = match_gauge(params, angles, shape, truth).params
    e = g - truth
    return g, dict(
        shift_rms_px=float(np.sqrt(np.mean(e[:, :2] ** 2))),
        rotation_rms_deg=float(np.rad2deg(np.sqrt(np.mean(e[:, 2] ** 2)))),
        scale_rms_pct=float(100 * np.sqrt(np.mean(np.expm1(e[:, 3]) ** 2))),
    )


class ParamsTrace:
    """A stand-in checkpoint (``every``, ``save``, ``load``) keeping every loop's parameters.

    Prints each loop's errors as it ends and writes its parameters to ``path`` (JSON with
    ``params.reprojection``, which ``--initial-json`` reads).
    """

    every = 1

    def __init__(self, truth, angles, shape, path: str | None = None) -> None:
        self.params: list[np.ndarray] = []
        self.truth, self.angles, self.shape, self.path = truth, angles, shape, path

    def save(self, trees, meta, iteration, arrays) -> None:
        p = np.array(arrays["params"])
        self.params.append(p)
        e = errors(p, self.truth, self.angles, self.shape)[1]
        print(
            f"  loop {len(self.params)}: shift {e['shift_rms_px']:.4f} px, "
            f"rotation {e['rotation_rms_deg']:.4f}°, scale {e['scale_rms_pct']:.4f} %",
            flush=True,
        )
        if self.path:  # the latest loop's parameters, for --initial-json
            with open(self.path, "w") as f:
                json.dump(dict(params=dict(reprojection=p.tolist()), loop=len(self.params)), f)

    def load(self, like):
        raise RuntimeError("ParamsTrace keeps no checkpoint to resume from")


def baselines(rows, meas, angles, truth, vol_true, vol_error) -> None:
    """Rows "rough" (rough_align) and "known volume" (the noise floor: each projection
    registered to the true volume's projection)."""
    shape = meas.shape[1:]
    t = time.perf_counter()
    rough = rough_align(meas, angles)
    g, rows["rough"] = errors(rough.params, truth, angles, shape)
    rows["rough"]["seconds"] = time.perf_counter() - t
    rows["rough"]["volume_error"] = vol_error(g)
    t = time.perf_counter()
    ideal = np.asarray(project(jnp.asarray(vol_true), jnp.asarray(angles)))
    known, _ = register_similarity_stack(ideal, meas, truth, iterations=10, smoothing_px=1.0)
    g, rows["known volume"] = errors(known, truth, angles, shape)
    rows["known volume"]["seconds"] = time.perf_counter() - t
    rows["known volume"]["volume_error"] = vol_error(g)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--angles", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--loops", type=int, default=10, help="reprojection loops at most")
    ap.add_argument("--steps", type=int, default=300, help="joint optimizer steps")
    ap.add_argument("--methods", nargs="+", default=["reprojection", "joint"])
    ap.add_argument("--loop-algorithm", default="sirt", help="reprojection loop reconstruction")
    ap.add_argument("--loop-iterations", type=int, default=100)
    ap.add_argument("--loop-relaxation", type=float, default=1.9, help="its λ")
    ap.add_argument("--no-warm-start", action="store_true", help="cold SIRT every loop")
    ap.add_argument("--anderson-depth", type=int, default=5, help="0: plain iteration")
    ap.add_argument(
        "--final-iterations", type=int, default=0, help="reprojection final pass (0: none)"
    )
    ap.add_argument(
        "--initial-json",
        default=None,
        help="start reprojection from its params ('truth': the true ones)",
    )
    ap.add_argument(
        "--refine-steps", type=int, default=None, help="reprojection refinement (default: its own)"
    )
    ap.add_argument("--no-baselines", action="store_true", help="skip rough and known rows")
    ap.add_argument("--tolerance", type=float, default=0.01, help="reprojection stop, px")
    ap.add_argument("--interpolation", default="cubic", help="joint loss resampling")
    ap.add_argument("--noise", type=float, default=0.01, help="σ as a fraction of the maximum")
    ap.add_argument("--rotation-step", type=float, default=None, help="joint Adam step, rad")
    ap.add_argument("--scale-step", type=float, default=None, help="joint Adam step, log-scale")
    ap.add_argument("--trace", action="store_true", help="errors after every reprojection loop")
    ap.add_argument("--json", default="align_tilt_series.json")
    args = ap.parse_args()
    n = args.size
    angles, truth, meas, vol_true = simulate(n, args.angles, 5.0, 1.0, 0.01, args.noise, args.seed)
    shape = meas.shape[1:]

    def vol_error(params):
        v = reconstruct_dealigned(meas, angles, params, "art", 20)
        return float(np.linalg.norm(v - vol_true) / np.linalg.norm(vol_true))

    perfect = vol_error(truth)
    rows, history, saved = {}, {}, {}
    initial = None
    if args.initial_json == "truth":  # diagnostic: the bias at the true parameters
        initial = truth
    elif args.initial_json:
        with open(args.initial_json) as f:
            initial = np.asarray(json.load(f)["params"]["reprojection"])
    if not args.no_baselines:
        baselines(rows, meas, angles, truth, vol_true, vol_error)

    joint_steps = {
        k: v
        for k, v in (("rotation_step_rad", args.rotation_step), ("scale_step", args.scale_step))
        if v is not None
    }
    loops_json = args.json.removesuffix(".json") + ".loops.json"
    trace = ParamsTrace(truth, angles, shape, loops_json) if args.trace else None
    runs = {
        "reprojection": lambda: reprojection_align(
            meas,
            angles,
            initial=initial,
            max_loops=args.loops,
            tolerance_px=args.tolerance,
            loop_algorithm=args.loop_algorithm,
            loop_iterations=args.loop_iterations,
            loop_relaxation=args.loop_relaxation,
            warm_start=not args.no_warm_start,
            anderson_depth=args.anderson_depth,
            final_iterations=args.final_iterations,
            checkpoint=trace,
            **({} if args.refine_steps is None else {"refine_steps": args.refine_steps}),
        ),
        "joint": lambda: joint_align(
            meas, angles, steps=args.steps, interpolation=args.interpolation, **joint_steps
        ),
    }
    for name in args.methods:
        run = runs[name]
        res = run()
        g, rows[name] = errors(res.params, truth, angles, shape)
        rows[name]["seconds"] = res.seconds
        rows[name]["volume_error"] = vol_error(g)
        history[name] = {k: v.tolist() for k, v in res.history.items()}
        saved[name] = res.params.tolist()
        if name == "reprojection" and trace is not None and args.final_iterations and trace.params:
            # the last checkpoint holds the loops' parameters, before the final pass
            g, rows["loops only"] = errors(trace.params[-1], truth, angles, shape)
            rows["loops only"]["seconds"] = res.history["seconds"][-2]
            rows["loops only"]["volume_error"] = vol_error(g)
            saved["loops only"] = trace.params[-1].tolist()
        if name == "reprojection" and trace is not None:
            per_loop = [errors(p, truth, angles, shape)[1] for p in trace.params]
            history[name]["errors"] = per_loop
            for k, (e, step) in enumerate(
                zip(per_loop, res.history["max_update_px"][: len(per_loop)], strict=True)
            ):
                print(
                    f"loop {k + 1:2d}: max update {step:.4f} px, shift {e['shift_rms_px']:.4f} px, "
                    f"rotation {e['rotation_rms_deg']:.4f}°, scale {e['scale_rms_pct']:.4f} %"
                )
    print(
        f"{n}³ voxels, {args.angles} angles −80…77°, shifts σ 5 px, rotations ±1°, scale ±1 %, "
        f"{100 * args.noise:g} % noise; perfect-alignment ART-20 volume error {perfect:.4f}"
    )
    header = f"{'method':<14}{'shift px':>10}{'rot °':>10}{'scale %':>10}{'vol err':>10}"
    print(header + f"{'vs perfect':>12}{'time s':>9}")
    for name, row in rows.items():
        ve = row.get("volume_error", float("nan"))
        print(
            f"{name:<14}{row['shift_rms_px']:>10.4f}{row['rotation_rms_deg']:>10.4f}"
            f"{row['scale_rms_pct']:>10.4f}{ve:>10.4f}{ve / perfect - 1:>+12.1%}"
            f"{row['seconds']:>9.1f}"
        )
    targets = dict(shift_rms_px=0.05, rotation_rms_deg=0.02, scale_rms_pct=0.05)
    out = dict(
        config=vars(args),
        perfect_volume_error=perfect,
        results=rows,
        targets=targets,
        history=history,
        params=saved,
    )
    with open(args.json, "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
