"""Command-line interface: ``diffptycho {simulate, demo}``.

Units on the command line are the beamline's (eV, nm, degrees); they are converted to SI at
this boundary and nowhere else.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

import numpy as np


def _add_simulate(sub) -> None:
    p = sub.add_parser(
        "simulate",
        help="simulate a dataset with ground truth and write it as CXI",
        description="Simulate ptychographic scans with Poisson noise; the truth is stored in the "
        "file's separate diffptycho_truth group.",
    )
    p.add_argument("kind", choices=["lfp", "vanadium"], help="which published workflow")
    p.add_argument("--output", "-o", required=True, help="CXI file to write")
    p.add_argument("--size", type=int, default=32, help="volume/image edge in voxels")
    p.add_argument("--angles", type=int, default=24, help="number of angles (lfp)")
    p.add_argument("--photons", type=float, default=1e5, help="incident photons per frame")
    p.add_argument("--pixel-nm", type=float, default=None, help="voxel/pixel size in nm")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(_run=cmd_simulate)


def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="simulate a small LFP dataset and run every pipeline available",
        description="Runs on an embedded small default in a few minutes on 2 CPU cores: "
        "simulates two-energy ptycho-tomography of LiFePO4/FePO4 plates, reconstructs the "
        "chemical composition jointly from the diffraction intensities, prints a summary "
        "table and writes HDF5 results and PNG figures.",
    )
    p.add_argument("--out", default="demo_out", help="output directory (default: demo_out)")
    p.add_argument("--iterations", type=int, default=400, help="joint-reconstruction steps")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(_run=cmd_demo)


def cmd_simulate(args: argparse.Namespace) -> int:
    """``diffptycho simulate``."""
    from diffptycho.sim import datasets

    geometry = datasets.ScanGeometry(photons_per_frame=args.photons)
    geometry = geometry.fitted_to((args.size, args.size))
    if args.kind == "lfp":
        ds = datasets.simulate_lfp_tomo(
            volume_shape=(args.size,) * 3,
            voxel_size_m=(args.pixel_nm or 6.7) * 1e-9,
            angles_deg=np.linspace(-80.0, 77.0, args.angles),
            geometry=geometry,
            seed=args.seed,
        )
    else:
        ds = datasets.simulate_vanadium_2d(
            image_shape=(args.size, args.size),
            pixel_size_m=(args.pixel_nm or 20.0) * 1e-9,
            seed=args.seed,
        )
    datasets.write_dataset(args.output, ds)
    n_e, n_a, n_f = ds.frames.shape[:3]
    print(
        f"wrote {args.output}: {n_e} energies × {n_a} angles × {n_f} frames of "
        f"{ds.frames.shape[-2]}×{ds.frames.shape[-1]} px"
    )
    return 0


def _table(rows: Sequence[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    line = "-" * (width + 3 + max(len(v) for _, v in rows))
    return "\n".join([line, *(f"{k:<{width}} | {v}" for k, v in rows), line])


def cmd_demo(args: argparse.Namespace) -> int:
    """``diffptycho demo``: simulate, reconstruct jointly, report, save."""
    from diffptycho.analysis import figures
    from diffptycho.io.results import write_results
    from diffptycho.recon.joint import joint_reconstruct
    from diffptycho.sim import datasets

    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()
    ds = datasets.simulate_lfp_tomo(seed=args.seed)
    datasets.write_dataset(os.path.join(args.out, "lfp_simulated.cxi"), ds)
    t_sim = time.perf_counter() - t0

    truth = ds.truth["composition"]
    start = ds.tomo_model()
    t1 = time.perf_counter()
    model, history = joint_reconstruct(start, ds.frames, args.iterations, learning_rate=0.1)
    t_joint = time.perf_counter() - t1

    comp = np.asarray(model.composition)
    inside = ds.truth["labels"] > 0
    rmse = np.sqrt(np.mean((comp - truth)[:, inside] ** 2, axis=1))
    total_t, total_r = truth.sum(0), comp.sum(0)
    frac_t = np.where(total_t > 0.2, truth[1] / np.maximum(total_t, 1e-12), np.nan)
    frac_r = np.where(total_t > 0.2, comp[1] / np.maximum(total_r, 1e-12), np.nan)
    frac_rmse = float(np.sqrt(np.nanmean((frac_t - frac_r) ** 2)))

    results = os.path.join(args.out, "results.h5")
    write_results(
        results,
        {"composition": comp, "composition_truth": truth, "fepo4_fraction": frac_r},
        units={"composition": "volume fraction", "fepo4_fraction": "1"},
        config={"command": "demo", "iterations": args.iterations, "seed": args.seed},
        history=history.as_arrays(),
        timings={"simulate_s": t_sim, "joint_s": t_joint, "compile_s": history.compile_seconds},
    )
    z = truth.shape[1] // 2
    figs = [
        figures.image_grid(
            {
                "LiFePO4 truth": truth[0, z],
                "LiFePO4 joint": comp[0, z],
                "FePO4 truth": truth[1, z],
                "FePO4 joint": comp[1, z],
            },
            os.path.join(args.out, "composition_slices.png"),
            shared_range=(0, 1),
            title=f"central z slice {z} (volume fraction)",
        ),
        figures.loss_curve({"joint": history.loss}, os.path.join(args.out, "loss.png")),
        figures.image_grid(
            {
                f"{e:.1f} eV, θ={ds.angles_deg[0]:.0f}°": np.log1p(ds.frames[i, 0, 0])
                for i, e in enumerate(ds.energies_ev)
            },
            os.path.join(args.out, "diffraction.png"),
            cmap="magma",
            title="log(1 + counts)",
        ),
    ]
    n_e, n_a, n_f, fy, fx = ds.frames.shape
    print(
        _table(
            [
                ("dataset", f"{n_e} energies × {n_a} angles × {n_f} frames of {fy}×{fx} px"),
                (
                    "volume",
                    f"{truth.shape[1]}×{truth.shape[2]}×{truth.shape[3]} voxels of "
                    f"{ds.pixel_size_m * 1e9:.1f} nm",
                ),
                ("simulation", f"{t_sim:.1f} s"),
                (
                    "joint reconstruction",
                    f"{args.iterations} Adam steps, {t_joint:.1f} s "
                    f"(compile {history.compile_seconds:.1f} s)",
                ),
                ("loss first → last", f"{history.loss[0]:.4g} → {history.loss[-1]:.4g}"),
                ("RMSE LiFePO4 / FePO4", f"{rmse[0]:.3f} / {rmse[1]:.3f} (in particles)"),
                ("FePO4 share RMSE", f"{frac_rmse:.3f}"),
                ("results", results),
                ("figures", ", ".join(os.path.basename(f) for f in figs)),
            ]
        )
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``diffptycho`` command."""
    from diffptycho import __version__

    parser = argparse.ArgumentParser(
        prog="diffptycho",
        description="Differentiable X-ray spectro-ptycho-tomography (JAX).",
    )
    parser.add_argument("--version", action="version", version=f"diffptycho {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_simulate(sub)
    _add_demo(sub)
    for module in _subcommand_modules():
        module.add_parser(sub).set_defaults(_run=module.run)
    return parser


def _subcommand_modules() -> list:
    """Modules that each add one sub-command: ``add_parser(subparsers)`` and ``run(args)``."""
    from diffptycho import cli_chem

    return [cli_chem]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``diffptycho`` command."""
    args = build_parser().parse_args(argv)
    try:
        return args._run(args)
    except (ValueError, FileNotFoundError, OSError) as err:
        print(f"diffptycho {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
