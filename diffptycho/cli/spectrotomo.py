"""``diffptycho spectrotomo``: an experiment's tilt series to composition volumes.

::

    diffptycho spectrotomo DATA.cxi [MORE.cxi | 'scans/*.cxi' ...] --references REFS.csv
        --output OUT.h5 [--mode staged] [--engine raar] [--iterations 100] [--align reprojection]
        [--tomo-algorithm art] [--tomo-iterations 20] [--restart-from STAGE]

A thin front-end: it builds a :class:`~diffptycho.pipeline.PipelineConfig` and runs
:func:`~diffptycho.pipeline.run_pipeline`, exactly as ``diffptycho run CONFIG.toml`` does.
"""

from __future__ import annotations

import argparse
import os

from diffptycho.cli._choices import JOINT_SOLVERS, PTYCHO_ENGINES, STAGE_NAMES, TOMO_ALGORITHMS
from diffptycho.cli.checkpointing import add_checkpoint_arguments, interrupted
from diffptycho.cli.ptycho import positive_int

__all__ = ["add_parser", "config_from_args", "execute", "report", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``spectrotomo`` sub-command.

    The defaults are those of the :mod:`diffptycho.pipeline.config` dataclasses, written out
    so that building the parser imports no jax (``tests/test_cli_lazy.py`` holds them equal).
    """
    p = subparsers.add_parser(
        "spectrotomo",
        help="tilt series (CXI, one entry per scan) → composition volumes, staged",
        description="Staged reconstruction of a multi-energy ptychographic tilt series: "
        "ptychography per scan with probe retrieval (no known probe needed), OD and phase "
        "projections normalised to vacuum, registration of the energies (on the phase), "
        "rotation-axis alignment, tomography per energy and per-voxel unmixing with the "
        "reference spectra. Every stage is saved in OUT.h5 (stages/<name>/); rerunning the "
        "same command resumes, --restart-from recomputes from a stage. OUT.h5 holds "
        "composition (species, z, y, x) volume fractions, species, voxel_size_m, od_volumes "
        "and alignment/shift_px (energy, angle, 2) as (y, x): the shift of the sample found in "
        "each scan, positive towards larger row/column indices. --mode joint adds one "
        "optimisation of the whole chain against every diffraction frame: by default it "
        "starts from the staged result (the staged stages run first; --joint-start staged), "
        "with --joint-start blank it starts from scratch (zero composition, the data-derived "
        "probe, nominal positions, no alignment) and skips the staged stages. The same "
        "layout is written; composition is then the joint result and the staged one stays "
        "in stages/chemistry. --joint-model volumes fits one complex volume per energy "
        "instead (ptycho-tomography at each energy, no spectral model; needs no references): "
        "od_volumes and phase_volumes (energy, z, y, x) per voxel, and with references a "
        "composition unmixed from its OD volumes.",
    )
    p.add_argument("data", nargs="+", help="CXI files or glob patterns (one entry per scan)")
    p.add_argument(
        "--references",
        "-r",
        default=None,
        help="CSV: energy_ev, delta_<species>, beta_<species>, ... (without it the "
        "run stops after tomography)",
    )
    p.add_argument("--output", "-o", required=True, help="results HDF5 file")
    p.add_argument(
        "--mode",
        choices=("staged", "joint"),
        default="staged",
        help="staged (default) or joint (see --joint-start)",
    )
    p.add_argument(
        "--joint-start",
        choices=("staged", "blank"),
        default="staged",
        help="joint mode: start from the staged result (default) or from scratch",
    )
    p.add_argument(
        "--joint-model",
        choices=("composition", "volumes"),
        default="composition",
        help="joint mode: fit the species' volume fractions through the references "
        "(composition, default) or one complex volume per energy (volumes)",
    )
    p.add_argument(
        "--joint-solver",
        choices=JOINT_SOLVERS,
        default="gauss-newton",
        help="joint solver (default gauss-newton: damped Gauss-Newton with CG inner solves)",
    )
    p.add_argument(
        "--joint-iterations",
        type=positive_int,
        default=None,
        help="joint steps: Gauss-Newton (default 32 from the staged start, 64 from a blank "
        "one) or Adam (~150)",
    )
    p.add_argument(
        "--joint-learning-rate",
        type=float,
        default=0.03,
        help="joint step size (Adam)",
    )
    p.add_argument(
        "--joint-tv-weight",
        type=float,
        default=5e-5,
        help="weight of the composition's total variation in the joint fit (per frame; "
        "default 5e-05, 0: none)",
    )
    p.add_argument(
        "--joint-angles-per-batch",
        type=positive_int,
        default=None,
        help="joint minibatch: angles per step (default all)",
    )
    p.add_argument(
        "--joint-energies-per-batch",
        type=positive_int,
        default=None,
        help="joint minibatch: energies per step (default all); with --joint-angles-per-batch "
        "the scans held per step do not grow with the dataset",
    )
    p.add_argument(
        "--joint-support",
        choices=("none", "staged"),
        default="none",
        help="joint mode: hold the volumes at 0 outside an envelope of the staged OD volumes "
        "(staged; needs --joint-start staged) or not (none, default)",
    )
    p.add_argument(
        "--joint-coarse",
        nargs="+",
        type=_coarse_level,
        default=(),
        metavar="BINNING:STEPS",
        help="joint mode: coarse-to-fine levels run before the full-resolution steps, e.g. "
        "2:16 (16 steps on 2x coarser voxels); the volume's sides must be multiples of BINNING",
    )
    p.add_argument(
        "--joint-refine",
        nargs="+",
        default=None,
        help="leaves refined jointly (composition and any of probe, positions, alignment, "
        "background, energy_offsets; default composition probe from the staged start, "
        "composition probe energy_offsets from a blank one)",
    )
    p.add_argument("--engine", choices=PTYCHO_ENGINES, default="raar", help="ptychography engine")
    p.add_argument("--iterations", "-n", type=positive_int, default=100, help="per scan")
    p.add_argument(
        "--first-scan-iterations",
        type=positive_int,
        default=None,
        help="iterations of the first scan of each energy, which retrieves the probe "
        "(default 3 × --iterations)",
    )
    p.add_argument("--probe-modes", type=positive_int, default=1, help="incoherent modes")
    p.add_argument(
        "--shared-probe", action="store_true", help="one probe per energy shared by all its scans"
    )
    p.add_argument("--refine-positions", action="store_true", help="refine scan positions")
    p.add_argument(
        "--batch-size", type=positive_int, default=None, help="ptychography: positions per batch"
    )
    p.add_argument(
        "--devices",
        type=positive_int,
        default=None,
        help="split every ptychography minibatch's positions and every tomography's y slabs "
        "over the first N devices (the ptychography batch size must be a multiple of N; on "
        "CPU, more devices need XLA_FLAGS=--xla_force_host_platform_device_count=N)",
    )
    p.add_argument(
        "--file-probe", action="store_true", help="start from the file's illumination where present"
    )
    p.add_argument(
        "--probe-search",
        action="store_true",
        help="start each energy's first scan from the probe guess at the defocus that fits "
        "it best (9 short runs) instead of the guess at the focus: for defocused probes",
    )
    p.add_argument(
        "--scans-per-step",
        type=positive_int,
        default=None,
        metavar="N",
        help="after each energy's first scan, start every other scan of that energy from its "
        "probe and solve N at once (split over --devices) instead of the chain in which each "
        "scan starts from the previous scan's probe",
    )
    p.add_argument(
        "--stream",
        action="store_true",
        help="leave each scan's frames in its file and read every minibatch's frames when the "
        "engine needs it (memory holds one minibatch, not a scan; not with --shared-probe)",
    )
    p.add_argument(
        "--align",
        choices=("reprojection", "joint", "rough", "none"),
        default="reprojection",
        help="rotation-axis alignment method",
    )
    p.add_argument(
        "--align-loops",
        type=positive_int,
        default=10,
        help="most alignment loops",
    )
    p.add_argument(
        "--shifts-only",
        action="store_true",
        help="align shifts only (no in-plane rotation or scale)",
    )
    p.add_argument(
        "--register-on",
        choices=("phase", "od"),
        default="phase",
        help="signal of the cross-energy registration (default phase)",
    )
    p.add_argument("--tomo-algorithm", choices=TOMO_ALGORITHMS, default="art")
    p.add_argument("--tomo-iterations", type=positive_int, default=20)
    p.add_argument(
        "--volume-shape",
        type=positive_int,
        nargs=3,
        metavar=("Z", "Y", "X"),
        default=None,
        help="volume size in voxels, centred in the field (default: whole field)",
    )
    p.add_argument("--energy-tolerance-ev", type=float, default=0.05)
    p.add_argument("--angle-tolerance-deg", type=float, default=0.05)
    p.add_argument(
        "--restart-from",
        choices=STAGE_NAMES,
        default=None,
        help="recompute from this stage, reusing the earlier ones from OUT.h5",
    )
    p.add_argument("--stop-after", choices=STAGE_NAMES, default=None)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-figures", action="store_true")
    add_checkpoint_arguments(p, unit="scans (ptychography stage)", keep_best=False)
    return p


def _coarse_level(text: str) -> tuple[int, int]:
    """``BINNING:STEPS`` → (binning, steps)."""
    try:
        binning, steps = (int(x) for x in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected BINNING:STEPS, e.g. 2:16") from None
    if binning < 2 or steps < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected BINNING ≥ 2 and STEPS ≥ 1")
    return binning, steps


def config_from_args(args: argparse.Namespace):
    """The :class:`~diffptycho.pipeline.PipelineConfig` the command line describes."""
    from diffptycho.pipeline import config as cfg

    return cfg.PipelineConfig(
        input=tuple(args.data),
        output=args.output,
        references=args.references,
        mode=args.mode,
        joint=cfg.JointSettings(
            start=args.joint_start,
            solver=args.joint_solver,
            iterations=args.joint_iterations,
            learning_rate=args.joint_learning_rate,
            refine=tuple(args.joint_refine) if args.joint_refine else None,
            tv_weight=args.joint_tv_weight,
            model=args.joint_model,
            angles_per_batch=args.joint_angles_per_batch,
            energies_per_batch=args.joint_energies_per_batch,
            support=args.joint_support,
            coarse_levels=tuple(args.joint_coarse),
        ),
        tilt_series=cfg.TiltSeriesSettings(args.energy_tolerance_ev, args.angle_tolerance_deg),
        ptychography=cfg.PtychographySettings(
            engine=args.engine,
            iterations=args.iterations,
            first_scan_iterations=args.first_scan_iterations,
            probe_modes=args.probe_modes,
            shared_probe=args.shared_probe,
            refine_positions=args.refine_positions,
            file_probe=args.file_probe,
            batch_size=args.batch_size,
            devices=args.devices,
            probe_search=args.probe_search,
            stream=args.stream,
            scans_per_step=args.scans_per_step,
        ),
        registration=cfg.RegistrationSettings(signal=args.register_on),
        alignment=cfg.AlignmentSettings(
            method=args.align, similarity=not args.shifts_only, max_loops=args.align_loops
        ),
        tomography=cfg.TomographySettings(
            algorithm=args.tomo_algorithm,
            iterations=args.tomo_iterations,
            volume_shape=None if args.volume_shape is None else tuple(args.volume_shape),
            devices=args.devices,
        ),
    )


def run(args: argparse.Namespace) -> int:
    """``diffptycho spectrotomo``."""
    from diffptycho.io.results import check_output_path

    check_output_path(args.output)  # before any stage runs, not after them
    return execute(config_from_args(args), args, "spectrotomo")


def execute(config, args: argparse.Namespace, command: str) -> int:
    """Run the pipeline of ``config`` with the command's run options; the exit status.

    Shared by ``spectrotomo`` and ``run``: restart/stop stages, progress, figures, resume and
    checkpoints from ``args``; SIGINT/SIGTERM stop it with the results file as checkpoint.
    """
    from diffptycho.pipeline import run_pipeline
    from diffptycho.recon.interrupt import Interrupted, stop_on_signals

    try:
        with stop_on_signals():
            result = run_pipeline(
                config,
                restart_from=args.restart_from,
                stop_after=args.stop_after,
                progress=not args.no_progress,
                figures=not args.no_figures,
                resume=True if args.resume else None,
                checkpoint_every=args.checkpoint_every,
            )
    except Interrupted as err:
        saved = config.output if os.path.exists(config.output) else None
        return interrupted(command, err, saved)
    return report(result)


def report(result) -> int:
    """Print what a run produced; 0."""
    comp = result.composition
    times = ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items())
    print(f"stages run: {times or 'none'}; reused: {', '.join(result.reused) or 'none'}")
    if comp is not None:
        share = ", ".join(
            f"{name} {float(comp[s].mean()):.3f}" for s, name in enumerate(result.species)
        )
        print(f"composition {comp.shape} (mean volume fraction: {share})")
    print(f"wrote {result.path}")
    return 0
