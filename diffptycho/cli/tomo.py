"""``diffptycho tomo``: reconstruct a volume from a projections or Data Exchange HDF5 file.

Units on the command line are the beamline's (nm, degrees in files); they are converted to SI
here. The output holds ``volume`` (z, y, x) per m of path (per voxel without a voxel size),
``voxel_size_m``, ``center_px``, the loss history and provenance (:mod:`diffptycho.io.results`).

``--devices N`` splits the reconstruction over the first N devices: the rows of every slab
(``--split slab``, any algorithm) or the angles (``--split angle``: sirt, cgls, fbp, adam),
see :mod:`diffptycho.recon.tomo.sharding`. On CPU, more than one device needs
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` before the command starts.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from diffptycho.cli.checkpointing import add_checkpoint_arguments, checkpoint_for, interrupted
from diffptycho.cli.ptycho import positive_int

__all__ = ["add_parser", "run"]


def _center(value: str) -> str | float:
    if value in ("auto", "none"):
        return value
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--center {value!r}: expected 'auto', 'none' or a column in px"
        ) from None


def _rows(value: str) -> slice:
    try:
        start, stop = (int(v) if v else None for v in value.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--rows {value!r}: expected START:STOP") from None
    return slice(start, stop)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``tomo`` sub-command to a ``subparsers`` object; returns its parser."""
    from diffptycho.cli._choices import TOMO_ALGORITHMS, TOMO_FILTERS

    p = subparsers.add_parser(
        "tomo",
        help="tomographic reconstruction (ART, SART, SIRT, CGLS, FBP, Adam)",
        description="Reconstruct a volume from parallel-beam projections: a plain HDF5 "
        "('projections' (angle, y, x) line integrals, 'angles_deg') or a Data Exchange file "
        "(flat/dark corrected and −ln'd here). ART/SART iterations are full sweeps over all "
        "projections.",
    )
    p.add_argument("input", metavar="PROJ.h5", help="projections or Data Exchange file")
    p.add_argument("--algorithm", "-a", choices=TOMO_ALGORITHMS, default="art")
    p.add_argument(
        "--iterations",
        "-n",
        type=positive_int,
        default=20,
        help="sweeps/iterations, ≥ 1 (ignored by fbp)",
    )
    p.add_argument("--output", "-o", required=True, metavar="VOL.h5", help="volume file")
    p.add_argument("--relaxation", type=float, default=1.0, help="λ of art/sart/sirt")
    p.add_argument("--order", choices=["acquisition", "random"], default="acquisition")
    p.add_argument("--nonnegative", action="store_true", help="clamp the volume at 0")
    p.add_argument("--seed", type=int, default=0, help="seed of the random order")
    p.add_argument("--filter", choices=TOMO_FILTERS, default="ramp", help="fbp filter")
    p.add_argument("--cutoff", type=float, default=1.0, help="fbp cutoff (fraction of Nyquist)")
    p.add_argument("--learning-rate", type=float, default=0.2, help="adam step (relative)")
    p.add_argument("--tv-weight", type=float, default=0.0, help="adam total-variation weight")
    p.add_argument(
        "--slab-size", type=positive_int, default=None, help="rows per slab (memory bound)"
    )
    p.add_argument("--rows", type=_rows, default=None, help="detector rows START:STOP")
    p.add_argument(
        "--center",
        type=_center,
        default=None,
        help="rotation-axis column in px, 'auto' (estimate) or 'none' (already centred); "
        "default auto for Data Exchange input, none for plain projections",
    )
    p.add_argument("--voxel-size-nm", type=float, default=None, help="voxel edge in nm")
    p.add_argument(
        "--devices",
        type=positive_int,
        default=None,
        help="split the reconstruction over the first N devices (on CPU, more devices need "
        "XLA_FLAGS=--xla_force_host_platform_device_count=N)",
    )
    p.add_argument(
        "--split",
        choices=["slab", "angle"],
        default="slab",
        help="with --devices: split the rows of each slab (any algorithm) or the angles "
        "(sirt, cgls, fbp, adam)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_checkpoint_arguments(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``diffptycho tomo``; returns the exit status (0 on success)."""
    import h5py

    from diffptycho.io.dxchange import load_projections
    from diffptycho.io.results import check_output_path, write_results
    from diffptycho.recon.align import estimate_center, fourier_shift
    from diffptycho.recon.interrupt import Interrupted, stop_on_signals
    from diffptycho.recon.tomo import reconstruct

    t0 = time.perf_counter()
    check_output_path(args.output)
    projections, angles_rad, voxel_size_m = load_projections(args.input)
    with h5py.File(args.input, "r") as f:
        is_exchange = "exchange/data" in f and "projections" not in f
    if args.voxel_size_nm is not None:
        voxel_size_m = args.voxel_size_nm * 1e-9
    t_read = time.perf_counter() - t0

    center = args.center if args.center is not None else ("auto" if is_exchange else "none")
    n_det = projections.shape[-1]
    t1 = time.perf_counter()
    if center == "auto":
        if np.iscomplexobj(projections):
            raise ValueError("--center auto needs real projections; pass --center PX")
        center = estimate_center(projections, angles_rad).center_px
    if center != "none":
        shift = (n_det - 1) / 2 - float(center)
        projections = np.asarray(fourier_shift(projections, shift))
    t_center = time.perf_counter() - t1

    mesh = None
    if getattr(args, "devices", None):
        from diffptycho.recon.tomo.sharding import tomo_mesh

        mesh = tomo_mesh(int(args.devices), axis=args.split)
    roi = None if args.rows is None else (slice(None), args.rows, slice(None))
    skip = {"output", "no_progress", "checkpoint_every", "resume", "iterations", "func", "_run"}
    skip |= {"devices", "split"}  # a run may resume on other devices: same result
    settings = {k: v for k, v in vars(args).items() if k not in skip}
    settings.update(command="tomo", center=center, rows=str(args.rows))
    ckpt = checkpoint_for(args, args.output, settings, [args.input])
    try:
        with stop_on_signals():
            result = reconstruct(
                projections,
                angles_rad,
                args.algorithm,
                args.iterations,
                voxel_size_m=voxel_size_m or 1.0,
                roi=roi,
                slab_size=args.slab_size,
                relaxation=args.relaxation,
                order=args.order,
                nonnegative=args.nonnegative,
                seed=args.seed,
                filter=args.filter,
                cutoff=args.cutoff,
                learning_rate=args.learning_rate,
                tv_weight=args.tv_weight,
                progress=not args.no_progress,
                checkpoint=None if args.algorithm == "fbp" else ckpt,
                resume=args.resume,
                keep_best=args.keep_best,
                mesh=mesh,
            )
    except Interrupted as err:
        return interrupted("tomo", err, ckpt.path if ckpt.exists() else None)
    config = dict(result.config)
    config.update(
        input=args.input,
        center_px=None if center == "none" else float(center),
        voxel_size_m=voxel_size_m,
        input_layout="data exchange" if is_exchange else "projections",
    )
    datasets = {"volume": result.volume, "voxel_size_m": float(voxel_size_m or np.nan)}
    units = {
        "volume": "1/m" if voxel_size_m else "1/voxel",
        "voxel_size_m": "m",
        "history/loss": "relative squared residual",
    }
    if center != "none":
        datasets["center_px"] = float(center)
        units["center_px"] = "px"
    write_results(
        args.output,
        datasets,
        units=units,
        config=config,
        history={"loss": result.loss},
        timings={
            "read_s": t_read,
            "center_s": t_center,
            "reconstruct_s": result.seconds,
            "compile_s": result.compile_seconds,
        },
    )
    ckpt.remove()
    shape = "×".join(str(n) for n in np.shape(result.volume))
    last = ""
    if result.loss.size:
        best = np.argmin(result.loss, axis=1)
        where = f"iteration {best[0]}" if len(best) == 1 else f"iterations {best.tolist()}"
        last = f", final loss {result.loss[0, -1]:.4g}, best at {where}"
    axis = "" if center == "none" else f", axis at column {float(center):.2f}"
    print(
        f"wrote {args.output}: {args.algorithm} volume {shape} in {result.seconds:.1f} s"
        f"{axis}{last}"
    )
    return 0
