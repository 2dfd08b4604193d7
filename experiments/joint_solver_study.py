"""Which solver makes joint reconstruction stand on its own: blank start vs staged start.

A 32³ LFP tilt series (24 angles over −80°…+77°, two energies at the Fe L3 edge) simulated
the way an experiment records it (:func:`~diffptycho.sim.tiltseries.simulate_lfp_tilt_series`:
finer grid, another projector, Poisson noise), with the probe and the scan positions known to
the model. Every candidate solver of :func:`~diffptycho.recon.joint.joint_reconstruct` (and
L-BFGS through the same solve loop) runs from a blank (zero) composition and from the staged
pipeline's composition (moved onto the truth's frame, so both starts share the known probe and
positions). Reported: relative composition error after
:func:`~diffptycho.analysis.composition.register_to_truth`, final loss, wall time (compilation
included) and its ratio to the staged pipeline's.

Run::

    PYTHONPATH=. python experiments/joint_solver_study.py [--seed 6] [--json out.json]
        [--methods adam-150 gn-8 ...] [--no-staged] [--unknown-probe]

``--unknown-probe`` starts from the data-derived probe guess instead of the true probe and
refines it with the composition (blank start only: the staged start would bring its own).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import equinox as eqx
import numpy as np
import optax

from diffptycho.analysis.composition import composition_errors, register_to_truth
from diffptycho.recon.chem.simplex import project_composition
from diffptycho.recon.joint import joint_loss, joint_reconstruct
from diffptycho.recon.ptycho.start import probe_guess
from diffptycho.recon.solve import OptaxSolver, solve
from diffptycho.sim import datasets, tiltseries

CANDIDATES = {
    # the demo's refinement: Adam, 150 steps of 0.03
    "adam-150": {"iterations": 150, "learning_rate": 0.03},
    "adam-600-lr0.1": {"iterations": 600, "learning_rate": 0.1},
    "lbfgs-60": {"iterations": 60, "lbfgs": True},
    "gn-4": {"iterations": 4, "solver": "gauss-newton"},
    "gn-8": {"iterations": 8, "solver": "gauss-newton"},
    "gn-16": {"iterations": 16, "solver": "gauss-newton"},
    "gn-32": {"iterations": 32, "solver": "gauss-newton"},
    "gn-8-cg20": {"iterations": 8, "solver": "gauss-newton", "cg_iterations": 20},
    "gn-8-damp0.1": {"iterations": 8, "solver": "gauss-newton", "damping": 0.1},
    "gn-8-damp1e-3": {"iterations": 8, "solver": "gauss-newton", "damping": 1e-3},
}
"""Candidate settings by name: keyword arguments of joint_reconstruct (``lbfgs``: optax.lbfgs)."""


def staged_composition(ds, workdir: str, progress: bool) -> tuple[np.ndarray, float]:
    """The staged pipeline's composition (as the demo runs it) and its wall time in s."""
    from diffptycho.pipeline import (
        AlignmentSettings,
        PipelineConfig,
        PtychographySettings,
        TomographySettings,
        run_pipeline,
    )

    cxi = os.path.join(workdir, "series.cxi")
    refs = os.path.join(workdir, "refs.csv")
    datasets.write_dataset(cxi, ds)
    datasets.write_lfp_references(refs)
    config = PipelineConfig(
        input=(cxi,),
        output=os.path.join(workdir, "staged.h5"),
        references=refs,
        ptychography=PtychographySettings(iterations=30),
        alignment=AlignmentSettings(method="reprojection"),
        tomography=TomographySettings(
            iterations=20, volume_shape=ds.truth["composition"].shape[1:]
        ),
    )
    t0 = time.perf_counter()
    result = run_pipeline(config, progress=progress, log=lambda line: None)
    return np.asarray(result.composition), time.perf_counter() - t0


def run_candidate(model, frames, settings: dict, progress: bool, refine=("composition",)):
    """Fit ``model`` with one candidate; returns the model, its history and the wall time."""
    settings = dict(settings)
    t0 = time.perf_counter()
    if settings.pop("lbfgs", False):
        solver = OptaxSolver(
            loss=joint_loss(),
            optimizer=optax.lbfgs(),
            where=lambda m: tuple(getattr(m, name) for name in refine),
            constraint=project_composition,
        )
        batch = (np.asarray(frames), np.arange(frames.shape[1]))
        fit, history = solve(model, solver, batch, settings["iterations"], progress=progress)
    else:
        iterations = settings.pop("iterations")
        fit, history = joint_reconstruct(
            model, frames, iterations, refine=refine, progress=progress, **settings
        )
    return fit, history, time.perf_counter() - t0


def main() -> None:
    """Run the study and print its table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=6)
    ap.add_argument("--methods", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    ap.add_argument("--no-staged", action="store_true", help="blank starts only")
    ap.add_argument("--json", default="joint_solver_study.json", help="results file")
    ap.add_argument("--unknown-probe", action="store_true", help="probe guess, refined")
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args()

    ds = tiltseries.simulate_lfp_tilt_series(seed=args.seed, known_probe=True)
    truth = ds.truth["composition"]
    frames = ds.frames
    starts = {"blank": ds.tomo_model()}
    refine: tuple[str, ...] = ("composition",)
    if args.unknown_probe:
        guess = np.stack([probe_guess(frames[e, 0])[None] for e in range(frames.shape[0])])
        starts = {"blank, probe guess": eqx.tree_at(lambda m: m.probe, starts["blank"], guess)}
        refine = ("composition", "probe")
        args.no_staged = True
    rows, t_staged = [], float("nan")

    def error(comp):
        moved, _ = register_to_truth(np.asarray(comp), truth)
        return composition_errors(moved, truth)["relative_error"]

    if not args.no_staged:
        with tempfile.TemporaryDirectory() as work:
            comp, t_staged = staged_composition(ds, work, args.progress)
        rows.append(
            {"start": "-", "method": "staged pipeline", "error": error(comp), "seconds": t_staged}
        )
        moved, _ = register_to_truth(comp, truth)
        starts["staged"] = ds.tomo_model(np.clip(moved, 0.0, 1.0).astype(np.float32))

    loss = joint_loss()
    batch = (frames, np.arange(frames.shape[1]))
    rows.append(
        {
            "start": "-",
            "method": "truth",
            "error": 0.0,
            "loss": float(loss(ds.tomo_model(truth.astype(np.float32)), batch)),
        }
    )
    for start, model in starts.items():
        for name in args.methods:
            fit, history, seconds = run_candidate(
                model, frames, CANDIDATES[name], args.progress, refine
            )
            rows.append(
                {
                    "start": start,
                    "method": name,
                    "error": error(fit.composition),
                    "loss": float(loss(fit, batch)),
                    "seconds": seconds,
                    "time_ratio": seconds / t_staged,
                }
            )
            r = rows[-1]
            print(
                f"{start:18s} {name:16s} error {r['error']:.3f} loss {r['loss']:.2f} "
                f"{seconds:.1f} s",
                flush=True,
            )

    print(
        f"\n32³, {frames.shape[1]} angles, {frames.shape[0]} energies, seed {args.seed}, "
        f"positions known, probe {'guessed and refined' if args.unknown_probe else 'known'}"
    )
    print(f"{'start':18s} | {'method':16s} | rel. error | loss    | time s | × staged")
    for r in rows:
        print(
            f"{r['start']:18s} | {r['method']:16s} | {r['error']:10.3f} | "
            f"{r.get('loss', float('nan')):7.2f} | {r.get('seconds', float('nan')):6.1f} | "
            f"{r.get('time_ratio', float('nan')):.2f}"
        )
    with open(args.json, "w") as f:
        json.dump({"seed": args.seed, "rows": rows}, f, indent=1)
    print(f"results: {args.json}")


if __name__ == "__main__":
    main()
