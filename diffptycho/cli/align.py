"""``diffptycho align``: rotation-axis alignment of a tilt series (reprojection or joint).

Reads a projections or Data Exchange file (as ``diffptycho tomo`` does), aligns it and writes
an HDF5 results file (:mod:`diffptycho.io.results`, atomic, with provenance) and PNG figures.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from diffptycho.cli.checkpointing import add_checkpoint_arguments, checkpoint_for, interrupted
from diffptycho.cli.ptycho import nonnegative_int, positive_int

__all__ = ["add_parser", "run"]

_CONVENTION = (
    "Sign convention: each measured projection is the ideal projection of the volume moved by "
    "shift_px = (y, x) (positive: towards larger row/column indices), rotated by rotation_deg "
    "(positive: counter-clockwise as displayed with row 0 on top, i.e. np.rot90's sense) and "
    "magnified by scale, about pixel (ny // 2, nx // 2); 'projections' in the output have "
    "this transform removed. Gauge: log-scales have zero mean and the volume position is "
    "chosen so the shifts are nearest a pure rotation-axis offset (y mean 0, x shifts "
    "without a cos/sin component); axis_offset_px is the axis column minus (nx − 1)/2."
)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``align`` sub-command to a ``subparsers`` object; returns its parser."""
    from diffptycho.cli._choices import ALIGN_METHODS, TOMO_ALGORITHMS

    p = subparsers.add_parser(
        "align",
        help="align a tomographic tilt series (shifts, rotation, scale per projection)",
        description="Align the projections of a tilt series: rough alignment (vertical mass "
        "profile, centre-of-mass sinusoid), then iterative reprojection with similarity "
        "transforms (as in the 3D battery-chemistry study) or joint gradient descent on the "
        "volume and the alignment. " + _CONVENTION,
    )
    p.add_argument("input", metavar="PROJ.h5", help="projections or Data Exchange file")
    p.add_argument("--method", "-m", choices=ALIGN_METHODS, default="reprojection")
    p.add_argument("--output", "-o", required=True, metavar="ALIGNED.h5", help="results file")
    p.add_argument(
        "--fit", choices=["similarity", "shift"], default="similarity", help="what to fit"
    )
    p.add_argument("--algorithm", "-a", choices=TOMO_ALGORITHMS, default="art", help="tomography")
    p.add_argument(
        "--iterations", "-n", type=positive_int, default=20, help="reconstruction iterations"
    )
    p.add_argument("--loops", type=positive_int, default=10, help="reprojection loops at most")
    p.add_argument("--tolerance-px", type=float, default=0.01, help="reprojection stop, px")
    p.add_argument(
        "--refine-steps",
        type=nonnegative_int,
        default=80,
        help="reprojection: gradient steps on volume and alignment together after the loop "
        "(0: none)",
    )
    p.add_argument("--steps", type=positive_int, default=300, help="joint optimizer steps")
    p.add_argument(
        "--figures", default=None, metavar="DIR", help="PNG directory (default: beside the output)"
    )
    p.add_argument("--no-figures", action="store_true", help="write no PNG figures")
    p.add_argument("--progress", action="store_true", help="report progress")
    add_checkpoint_arguments(p, unit="loops (reprojection) or steps (joint)")
    p.set_defaults(func=run)
    return p


def _figures(directory: str, stem: str, projections, aligned, result) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffptycho.analysis.figures import image_grid, save_figure

    os.makedirs(directory, exist_ok=True)
    params = result.params
    fig, axes = plt.subplots(1, 3, figsize=(11, 3), squeeze=False)
    k = np.arange(len(params))
    axes[0, 0].plot(k, params[:, 0], label="y")
    axes[0, 0].plot(k, params[:, 1], label="x")
    axes[0, 0].set_ylabel("shift (px)")
    axes[0, 0].legend()
    axes[0, 1].plot(k, np.rad2deg(params[:, 2]))
    axes[0, 1].set_ylabel("rotation (°)")
    axes[0, 2].plot(k, 100 * np.expm1(params[:, 3]))
    axes[0, 2].set_ylabel("scale − 1 (%)")
    for ax in axes[0]:
        ax.set_xlabel("projection")
        ax.grid(alpha=0.3)
    paths = [save_figure(fig, os.path.join(directory, f"{stem}_params.png"))]
    mid = projections.shape[1] // 2
    vol = np.asarray(result.volume)
    paths.append(
        image_grid(
            {
                "sinogram before (row ny/2)": projections[:, mid, :],
                "sinogram after": aligned[:, mid, :],
                "slice y = ny/2 (aligned)": vol[:, vol.shape[1] // 2, :],
                "slice z = nz/2 (aligned)": vol[vol.shape[0] // 2],
            },
            os.path.join(directory, f"{stem}_before_after.png"),
            columns=4,
        )
    )
    return paths


def _best(result) -> str:
    residual = result.history.get("residual", np.zeros(0))
    if not residual.size:
        return "no residual"
    unit = "loop" if result.config.get("method") == "reprojection" else "step"
    best = int(np.argmin(residual))
    text = f"lowest residual {residual[best]:.4g} at {unit} {best}"
    return "; ".join([text, *result.config.get("warnings", [])])


def run(args: argparse.Namespace) -> int:
    """Run ``diffptycho align``; returns the exit status (0 on success)."""
    from diffptycho.io.dxchange import load_projections
    from diffptycho.io.results import write_results
    from diffptycho.recon.align import align_tilt_series, resample_similarity
    from diffptycho.recon.interrupt import Interrupted, stop_on_signals
    from diffptycho.recon.tomo.operators import inverse_alignment

    t0 = time.perf_counter()
    projections, angles_rad, voxel_size_m = load_projections(args.input)
    if np.iscomplexobj(projections):
        raise ValueError(f"{args.input}: align needs real projections (e.g. optical density)")
    projections = np.asarray(projections, dtype=float)
    t_read = time.perf_counter() - t0
    if args.method == "reprojection":
        options = dict(
            algorithm=args.algorithm,
            iterations=args.iterations,
            max_loops=args.loops,
            tolerance_px=args.tolerance_px,
            refine_steps=args.refine_steps,
            fit=args.fit,
            progress=args.progress,
        )
    else:
        options = dict(
            steps=args.steps,
            fit=args.fit,
            algorithm=args.algorithm,
            iterations=args.iterations,
            progress=args.progress,
        )
    if args.keep_best:
        if args.method != "joint":
            raise ValueError("--keep-best applies to --method joint (a loss per step) only")
        options["keep_best"] = True
    skip = {"output", "progress", "checkpoint_every", "resume", "figures", "no_figures"}
    settings = {k: v for k, v in vars(args).items() if k not in skip | {"func", "_run"}}
    ckpt = checkpoint_for(args, args.output, dict(settings, command="align"), [args.input])
    try:
        with stop_on_signals():
            result = align_tilt_series(
                projections,
                angles_rad,
                args.method,
                checkpoint=ckpt,
                resume=args.resume,
                **options,
            )
    except Interrupted as err:
        return interrupted("align", err, ckpt.path if ckpt.exists() else None)
    inverse = np.asarray(inverse_alignment(result.params))
    aligned = np.stack(
        [resample_similarity(im, q) for im, q in zip(projections, inverse, strict=True)]
    )
    params = result.params
    datasets = {
        "projections": aligned,
        "angles_deg": np.rad2deg(angles_rad),
        "shift_px": params[:, :2],
        "rotation_deg": np.rad2deg(params[:, 2]),
        "scale": np.exp(params[:, 3]),
        "volume": result.volume,
        "axis_offset_px": result.axis_offset_px,
        "axis_tilt_deg": np.rad2deg(result.axis_tilt_rad),
    }
    units = {
        "projections": "as input",
        "angles_deg": "degrees",
        "shift_px": "px (y, x)",
        "rotation_deg": "degrees",
        "scale": "dimensionless",
        "volume": "input units per voxel",
        "axis_offset_px": "px",
        "axis_tilt_deg": "degrees",
    }
    for name in result.history:
        units[f"history/{name}"] = {
            "max_update_px": "px",
            "rms_update_px": "px",
            "residual": "relative squared misfit",
            "seconds": "s",
            "binning": "px per pixel",
        }.get(name, "")
    config = dict(
        result.config, input=args.input, voxel_size_m=voxel_size_m, convention=_CONVENTION
    )
    write_results(
        args.output,
        datasets,
        units=units,
        config=config,
        history=result.history,
        timings={"read_s": t_read, "align_s": result.seconds},
    )
    ckpt.remove()
    written = [args.output]
    if not args.no_figures:
        directory = args.figures or os.path.dirname(os.path.abspath(args.output))
        stem = os.path.splitext(os.path.basename(args.output))[0]
        written += _figures(directory, stem, projections, aligned, result)
    print(
        f"wrote {', '.join(written)}: {args.method} alignment of {len(angles_rad)} projections "
        f"in {result.seconds:.1f} s, axis offset {result.axis_offset_px:+.2f} px, tilt "
        f"{np.rad2deg(result.axis_tilt_rad):+.3f}°; {_best(result)}"
    )
    return 0
