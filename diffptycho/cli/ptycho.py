"""``diffptycho ptycho``: reconstruct one CXI scan with any ptychography engine.

::

    diffptycho ptycho DATA.cxi --algorithm raar --iterations 500 --output OUT.h5
        [--probe-modes M] [--refine-positions] [--background] [--batch-size B] [--entry K]
        [--devices N] [--stream | --memory-budget GB]
        [--checkpoint-every N] [--resume] [--keep-best]
        [--propagation near-field --focus-to-sample Z1]

The starting model is built from the file alone: the object is ones on the smallest grid that
holds every probe patch (:func:`~diffptycho.physics.scan.object_shape_for`), the probe is the
file's illumination or, without one, the back-propagated square root of the mean diffraction
pattern, scaled to the photon count of the brightest frames, and extended to M incoherent
modes (near field: the back-propagated square root of the mean hologram). Absolute motor
positions are centred (a whole-pixel offset, ``scan_centre_px`` in the results). Metre geometry
(distance, detector pixel, energy in J) and pixel-unit files (positions in object pixels, no
geometry) both work. ``--propagation near-field --focus-to-sample Z1`` (m) reconstructs
near-field (in-line holography) data of a divergent beam with the Fresnel scaling theorem
(:func:`~diffptycho.recon.ptycho.geometry.scan_geometry`); in the far field, frames that look
like holograms or a scan whose frames cannot overlap are reported as warnings on stderr (and in
the provenance). ``OUT.h5`` holds ``object`` (complex; array centre =
scan position (0, 0)), ``probe`` (modes, ny, nx), ``positions_px``, ``object_pixel_size_m``
(NaN for pixel-unit data), ``history/loss`` and provenance; ``OUT.png`` beside it shows the
amplitude and the phase with the linear ramp removed.

``--stream`` leaves the frames in the file: each minibatch's frames are read when the engine
needs them (:class:`~diffptycho.recon.ptycho.streaming.StreamedFrames`), so memory holds one
minibatch instead of the scan, and the starting model's statistics (mean frame, frame sums)
come from one chunked pass. The result equals the in-memory run's; each iteration reads the
frames from the file once more. ``--memory-budget GB`` streams only when the scan's frames
(float32) would take more than GB.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import numpy as np

from diffptycho.cli.checkpointing import add_checkpoint_arguments, checkpoint_for, interrupted

__all__ = [
    "add_parser",
    "nonnegative_float",
    "positive_float",
    "positive_int",
    "read_scan",
    "run",
    "unit_interval",
    "wants_stream",
]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``ptycho`` sub-command on an ``argparse`` sub-parser set.

    The engine, loss and propagation choices are the keys of the library's registries
    (``recon.ptycho.ENGINES``, ``recon.losses.LOSSES``, ``recon.ptycho.geometry.PROPAGATIONS``),
    copied in :mod:`diffptycho.cli._choices` so that building the parser imports no jax.
    """
    from diffptycho.cli._choices import LOSSES, PROPAGATIONS, PTYCHO_ENGINES

    p = subparsers.add_parser(
        "ptycho",
        help="reconstruct a CXI ptychography scan (object, probe, positions)",
        description="Reconstruct one scan (entry) of a CXI file with a classic or gradient "
        "engine; writes an HDF5 results file with provenance and a PNG figure beside it.",
    )
    p.add_argument("data", help="CXI file (one entry_k group per scan)")
    p.add_argument("--algorithm", "-a", choices=PTYCHO_ENGINES, default="raar", help="engine")
    p.add_argument("--iterations", "-n", type=positive_int, default=100, help="iterations")
    p.add_argument("--output", "-o", required=True, help="results HDF5 file to write")
    p.add_argument("--probe-modes", type=positive_int, default=1, help="incoherent modes M")
    p.add_argument("--refine-positions", action="store_true", help="refine scan positions")
    p.add_argument("--background", action="store_true", help="retrieve incoherent background")
    p.add_argument("--batch-size", type=positive_int, default=None, help="positions per batch")
    p.add_argument(
        "--devices",
        type=positive_int,
        default=None,
        help="split every minibatch's positions over the first N devices (the batch size "
        "must be a multiple of N; on CPU, more devices need XLA_FLAGS="
        "--xla_force_host_platform_device_count=N)",
    )
    p.add_argument(
        "--stream",
        action="store_true",
        help="leave the frames in the file and read each minibatch's frames when the engine "
        "needs them: memory holds one minibatch, not the scan (same result; each iteration "
        "reads the frames from the file again)",
    )
    p.add_argument(
        "--memory-budget",
        type=positive_float,
        default=None,
        metavar="GB",
        help="stream the frames (as --stream) when they would take more than GB gigabytes "
        "in memory as float32; default: never stream unless --stream",
    )
    p.add_argument(
        "--probe-search",
        action="store_true",
        help="without a probe in the file: start from the data-derived guess at the defocus "
        "that fits the scan best (9 runs of 10 iterations) instead of the guess at the focus "
        "(far field; for defocused probes)",
    )
    p.add_argument("--entry", type=positive_int, default=1, help="scan: entry_K (default 1)")
    p.add_argument(
        "--loss",
        choices=LOSSES,
        default=None,
        help="noise model (default: the engine's own)",
    )
    p.add_argument(
        "--propagation",
        choices=PROPAGATIONS,
        default="far-field",
        help="far field (Fraunhofer) or near field (Fresnel, divergent beam; needs "
        "--focus-to-sample)",
    )
    p.add_argument(
        "--focus-to-sample",
        type=positive_float,
        default=None,
        metavar="Z1",
        help="near field: focus-to-sample distance z1 in m (z2 is the file's detector distance)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-figure", action="store_true", help="do not write OUT.png")
    add_checkpoint_arguments(p)
    return p


def positive_int(text: str) -> int:
    """``argparse`` type: an integer ≥ 1, with a message naming the value otherwise."""
    return _int_at_least(text, 1)


def nonnegative_int(text: str) -> int:
    """``argparse`` type: an integer ≥ 0, with a message naming the value otherwise."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"{value} must be ≥ {low}")
    return value


def positive_float(text: str) -> float:
    """``argparse`` type: a finite number > 0, with a message naming the value otherwise."""
    return _float_where(text, lambda v: np.isfinite(v) and v > 0, "a finite number > 0")


def nonnegative_float(text: str) -> float:
    """``argparse`` type: a finite number ≥ 0, with a message naming the value otherwise."""
    return _float_where(text, lambda v: np.isfinite(v) and v >= 0, "a finite number ≥ 0")


def unit_interval(text: str) -> float:
    """``argparse`` type: a number in [0, 1], with a message naming the value otherwise."""
    return _float_where(text, lambda v: 0.0 <= v <= 1.0, "in [0, 1]")


def _float_where(text: str, ok, expected: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"{value} must be {expected}")
    return value


def read_scan(path: str, entry: int = 1, stream: bool = False):
    """The scan ``entry_<entry>`` of a CXI file (1-based); only that entry's frames are read.

    Args:
        path: the CXI file.
        entry: the entry number.
        stream: leave the frames in the file (a
            :class:`~diffptycho.recon.ptycho.streaming.StreamedScan`) instead of reading them.
    """
    from diffptycho.io.cxi import read_cxi_entry, read_cxi_headers

    n = len(read_cxi_headers(path))
    if not 1 <= entry <= n:
        raise ValueError(
            f"{path}: --entry {entry} does not exist; the file holds {n} scan(s) "
            f"(entry_1 … entry_{n})"
        )
    if stream:
        from diffptycho.recon.ptycho.streaming import read_streamed_cxi_entry

        return read_streamed_cxi_entry(path, entry)
    return read_cxi_entry(path, entry)


def wants_stream(args: argparse.Namespace) -> bool:
    """``--stream``, or ``--memory-budget GB`` below the scan's frames in float32."""
    if getattr(args, "stream", False):
        return True
    budget = getattr(args, "memory_budget", None)
    if budget is None:
        return False
    from diffptycho.io.cxi import read_cxi_headers

    headers = read_cxi_headers(args.data)
    if not 1 <= args.entry <= len(headers):
        return False  # read_scan reports the missing entry
    header = headers[args.entry - 1]
    return header.n_frames * int(np.prod(header.frame_shape)) * 4 > budget * 1e9


def engine_options(args: argparse.Namespace) -> dict[str, Any]:
    """Engine options from the command line (batch size and loss only when given)."""
    from diffptycho.recon.ptycho.constraints import PositionRefinement, Refinement

    refinement = Refinement(
        probe=True,
        background=bool(args.background),
        positions=PositionRefinement() if args.refine_positions else None,
    )
    options: dict[str, Any] = {"refinement": refinement}
    if args.loss is not None:
        options["loss"] = args.loss
    if args.batch_size is not None:
        options["batch_size"] = int(args.batch_size)
    if getattr(args, "devices", None):
        from diffptycho.recon.sharding import position_mesh

        options["mesh"] = position_mesh(int(args.devices))
    return options


def run(args: argparse.Namespace) -> int:
    """``diffptycho ptycho``: read, reconstruct, write results and figure.

    Returns:
        0 on success, 1 if the reconstruction diverged (the last finite model is written,
        flagged in the provenance, and the non-finite step never is), 130 / 143 when SIGINT /
        SIGTERM stopped it (after writing the checkpoint OUT.ckpt.h5; ``--resume`` continues).

    Raises:
        FileNotFoundError: the data file does not exist.
        ValueError: the file breaks the CXI conventions (the message names the dataset), the
            entry does not exist, or the engine is not available.
    """
    import equinox as eqx
    import jax.numpy as jnp

    from diffptycho.io.results import check_output_path
    from diffptycho.recon.interrupt import Interrupted, stop_on_signals
    from diffptycho.recon.ptycho.data import ptycho_data
    from diffptycho.recon.ptycho.geometry import far_field_warnings, scan_geometry
    from diffptycho.recon.ptycho.start import make_engine, starting_model
    from diffptycho.recon.solve import DivergenceError, solve

    t0 = time.perf_counter()
    if not os.path.exists(args.data):
        raise FileNotFoundError(f"{args.data}: no such file")
    check_output_path(args.output)  # before the reconstruction, not after it
    stream = wants_stream(args)
    scan = read_scan(args.data, args.entry, stream)
    geometry = scan_geometry(scan, args.propagation, args.focus_to_sample)
    warnings = far_field_warnings(scan, geometry) if args.propagation == "far-field" else []
    for warning in warnings:
        print(f"diffptycho ptycho: warning: {warning}", file=sys.stderr)
    model = starting_model(scan, args.probe_modes, args.background, geometry=geometry)
    start_positions = np.asarray(model.positions, dtype=np.float64)
    solver = make_engine(args.algorithm, **engine_options(args))
    searched = args.probe_search and scan.illumination is None and args.propagation == "far-field"
    if searched and not args.resume:
        from diffptycho.recon.ptycho.start import describe_defocus_search, probe_by_defocus_search

        probe, table = probe_by_defocus_search(
            scan.data,
            start_positions,
            tuple(model.object.shape),
            solver,
            mask=scan.mask,
            probe_modes=args.probe_modes,
        )
        model = eqx.tree_at(lambda m: m.probe, model, jnp.asarray(probe, model.probe.dtype))
        print(f"diffptycho ptycho: {describe_defocus_search(table)}")
    data = ptycho_data(scan.data, scan.mask)
    settings = {
        k: getattr(args, k)
        for k in ("entry", "algorithm", "probe_modes", "refine_positions", "background")
    }
    settings.update(batch_size=args.batch_size, loss=args.loss, keep_best=args.keep_best)
    settings.update(propagation=args.propagation, focus_to_sample_m=args.focus_to_sample)
    if args.probe_search:
        settings["probe_search"] = True
    ckpt = checkpoint_for(args, args.output, dict(settings, command="ptycho"), [args.data])
    resume = None
    if args.resume:
        resume = ckpt.load_snapshot(model, eqx.filter_eval_shape(solver.init, model))
    t_setup = time.perf_counter() - t0
    status, code = "completed", 0
    try:
        with stop_on_signals():
            model, history = solve(
                model,
                solver,
                data,
                args.iterations,
                progress=not args.no_progress,
                description=f"{args.algorithm} {os.path.basename(args.data)}",
                resume=resume,
                checkpoint=ckpt.save_snapshot,
                checkpoint_every=ckpt.every,
                keep_best=args.keep_best,
            )
    except Interrupted as err:
        return interrupted("ptycho", err, ckpt.path)
    except DivergenceError as err:
        print(f"diffptycho ptycho: {err}", file=sys.stderr)
        model, history = err.model, err.history
        status, code = f"diverged after {len(history.loss)} iterations: {err}", 1
    finally:
        if stream:
            scan.data.close()
    t_solve = time.perf_counter() - t0 - t_setup
    timings = {"setup_s": t_setup, "solve_s": t_solve}
    _write(args, scan, model, history, status, timings, geometry, start_positions, warnings)
    ckpt.remove()
    loss = f"{history.loss[0]:.4g} → {history.loss[-1]:.4g}" if history.loss else "none"
    print(
        f"{args.algorithm}: {len(history.loss)} iterations in {t_solve:.1f} s "
        f"(compile {history.compile_seconds:.1f} s), loss {loss}; {history.summary()}; "
        f"wrote {args.output}"
    )
    return code


def _write(
    args, scan, model, history, status: str, timings, geometry, start_positions, warnings
) -> None:
    from diffptycho.io.results import write_results

    obj = np.asarray(model.object)
    size = geometry.object_pixel_size_m
    in_px = scan.positions_m if size is None else scan.positions_m / np.asarray(size)
    datasets = {
        "object": obj.astype(np.complex64),
        "probe": np.asarray(model.probe).astype(np.complex64),
        "positions_px": np.asarray(model.positions, dtype=np.float64),
        "positions_px_initial": start_positions,
        "scan_centre_px": np.mean(in_px - start_positions, axis=0),
        "object_pixel_size_m": np.full(2, np.nan) if size is None else np.asarray(size),
    }
    units = {
        "object": "1 (complex transmission)",
        "probe": "photons^0.5 per pixel",
        "positions_px": "pixel",
        "positions_px_initial": "pixel",
        "scan_centre_px": "pixel",
        "object_pixel_size_m": "m",
        "history/loss": "per frame",
        "history/seconds": "s",
    }
    if model.background is not None:
        datasets["background"] = np.asarray(model.background, dtype=np.float32)
        units["background"] = "photons per pixel"
    config = {
        "command": "ptycho",
        "data": os.path.abspath(args.data),
        "entry": args.entry,
        "scan_name": scan.name,
        "energy_ev": scan.energy_ev,
        "pixel_units": size is None,
        "algorithm": args.algorithm,
        "iterations": args.iterations,
        "probe_modes": args.probe_modes,
        "refine_positions": args.refine_positions,
        "background": args.background,
        "batch_size": args.batch_size,
        "devices": args.devices or 1,
        "streamed": data_streamed(scan),
        "loss": args.loss,
        "status": status,
        "keep_best": args.keep_best,
        "best_iteration": history.best_iteration,
        "loss_warnings": history.warnings,
        "propagation": geometry.propagation,
        "focus_to_sample_m": args.focus_to_sample,
        "geometry_warnings": warnings,
        "probe_search": bool(getattr(args, "probe_search", False)),
    }
    if geometry.fresnel is not None:
        config["magnification"] = geometry.fresnel.magnification
        config["effective_distance_m"] = geometry.fresnel.effective_distance_m
    timings = dict(timings, compile_s=history.compile_seconds)
    write_results(
        args.output,
        datasets,
        units=units,
        config=config,
        history=history.as_arrays(),
        timings=timings,
    )
    if not args.no_figure:
        figure_path = os.path.splitext(args.output)[0] + ".png"
        object_figure(obj, np.asarray(model.probe), np.asarray(model.positions), figure_path)


def data_streamed(scan) -> bool:
    """The scan's frames were streamed from the file (``--stream`` / ``--memory-budget``)."""
    from diffptycho.recon.ptycho.streaming import StreamedFrames

    return isinstance(scan.data, StreamedFrames)


def object_figure(obj, probe, positions, path: str, title: str | None = None) -> str:
    """PNG of the object amplitude and phase (offset and linear ramp removed), and the probe.

    The ramp is fitted on the illuminated region, weighted by the amplitude; the panels are
    cropped to that region.

    Returns:
        The written path.
    """
    import jax

    from diffptycho.analysis import figures
    from diffptycho.analysis.phase import remove_phase_ramp
    from diffptycho.recon.ptycho.metrics import illuminated_region

    # jitted: op-by-op dispatch of the scatter-add is slow on CPU
    region = np.asarray(jax.jit(illuminated_region, static_argnums=2)(probe, positions, obj.shape))
    weights = np.where(region, np.abs(obj), 0.0)
    flat = remove_phase_ramp(obj, weights if np.any(weights > 0) else None)
    rows, cols = np.nonzero(region) if region.any() else np.nonzero(np.ones(obj.shape))
    crop = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    return figures.image_grid(
        {
            "object amplitude": np.abs(flat[crop]),
            "object phase (ramp removed), rad": np.angle(flat[crop]),
            "probe amplitude (mode 0)": np.abs(probe[0]),
        },
        path,
        columns=3,
        cmap="gray",
        title=title,
    )


def main(argv=None) -> int:
    """Stand-alone entry point (``python -m diffptycho.cli.ptycho``), same as the sub-command."""
    parser = argparse.ArgumentParser(prog="diffptycho")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ValueError, FileNotFoundError, OSError) as err:
        print(f"diffptycho ptycho: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
