"""``diffptycho spectroptycho``: 2-D spectro-ptychography from diffraction frames.

::

    diffptycho spectroptycho DATA.cxi --output OUT.h5 [--references REFS.csv] [--kk]
        [--mode {per-energy,joint}] [--engine raar] [--iterations 180] [--kk-sigma 0.01]

A thin front-end of :func:`~diffptycho.pipeline.spectroptycho.run_spectroptycho`. OUT.h5
holds ``optical_density`` and ``phase`` (energy, y, x) on one grid, ``energies_ev``,
``pixel_size_m``, ``valid_mask``, ``offsets_px`` (energy, 2: the sample against the beam),
``registration_offsets_px`` (the objects' shifts onto the grid) and, with references,
``thickness`` (species, y, x) in m and ``species``. It feeds ``chem xanes-fit`` and
``chem cluster`` directly.
"""

from __future__ import annotations

import argparse
import os
import sys

from diffptycho.cli.ptycho import nonnegative_int, positive_float, positive_int

__all__ = ["add_parser", "run", "settings_from_args"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``spectroptycho`` sub-command.

    The defaults are those of :class:`~diffptycho.pipeline.spectroptycho.
    SpectroPtychoSettings`, written out so that building the parser imports no jax
    (``tests/test_cli_lazy.py`` holds them equal).
    """
    from diffptycho.cli._choices import PTYCHO_ENGINES, SPECTROPTYCHO_MODES

    p = subparsers.add_parser(
        "spectroptycho",
        help="spectro-ptychography (CXI, one entry per energy) → registered μt and φ stacks",
        description="Reconstructs every energy of a spectro-ptychography dataset (probe "
        "retrieved from the data, each energy started from its neighbour's probe) on an "
        "object grid finer than the detector's λz/(N·dx) (--object-refine; the exit wave "
        "aliases on the detector's grid, differently at every energy), "
        "normalises each transmission to vacuum, resamples every energy to one pixel size "
        "(a fixed detector makes the object pixel follow the wavelength), registers the "
        "energies to sub-pixel accuracy and, with --kk, alternates ptychography with a "
        "projection of each pixel's (μt, φ) spectrum onto Kramers–Kronig-consistent pairs. "
        "With --references, species thickness maps are fitted per pixel. --mode joint fits "
        "all frames at once (each energy's pixel size and offset in the model): thickness "
        "maps with --references, per-pixel spectra without. The output feeds "
        "'diffptycho chem xanes-fit' and 'chem cluster' directly.",
    )
    p.add_argument("data", help="CXI file, one entry per energy")
    p.add_argument("--output", "-o", required=True, help="results HDF5 file to write")
    p.add_argument(
        "--references",
        "-r",
        default=None,
        help="reference spectra (CSV energy_ev, delta_<species>, beta_<species>; the same "
        "format as spectrotomo) for thickness maps",
    )
    p.add_argument("--kk", action="store_true", help="apply the Kramers–Kronig constraint")
    p.add_argument(
        "--mode",
        choices=SPECTROPTYCHO_MODES,
        default="per-energy",
        help="per-energy (default), or joint: every frame of every energy fitted at once from "
        "the per-energy result, thickness maps with --references, per-pixel spectra "
        "(with --kk: a Kramers–Kronig penalty) without",
    )
    p.add_argument(
        "--joint-iterations", type=positive_int, default=20, help="Gauss–Newton steps of joint"
    )
    p.add_argument(
        "--kk-sigma",
        type=positive_float,
        default=0.01,
        help="joint without references, --kk: spread (OD) the KK penalty allows (0.01)",
    )
    p.add_argument("--engine", "-a", choices=PTYCHO_ENGINES, default="raar", help="default raar")
    p.add_argument(
        "--iterations", "-n", type=positive_int, default=180, help="per energy (default 180)"
    )
    p.add_argument(
        "--probe-iterations",
        type=positive_int,
        default=None,
        help="iterations of the first energy, which retrieves the probe (default 3×)",
    )
    p.add_argument(
        "--probe-revisit",
        type=nonnegative_int,
        default=4,
        help="with a refined probe, run the first N energies again backwards from their "
        "successor's probe after the sweep (default 4; 0: no revisit)",
    )
    p.add_argument(
        "--no-probe-band",
        action="store_true",
        help="with --object-refine > 1, let the refined probe's far field leave the detector "
        "(by default it is kept on the measured pixels after every iteration)",
    )
    p.add_argument("--probe-modes", type=positive_int, default=1)
    p.add_argument(
        "--fixed-probe",
        action="store_true",
        help="keep each energy's probe from the file (no probe refinement; avoids the raster "
        "grid pathology of a refined probe on a raster scan)",
    )
    p.add_argument(
        "--probe-search",
        action="store_true",
        help="without a probe in the file, start the first energy from the data-derived guess "
        "at the defocus that fits its frames best (9 candidates × 10 iterations) instead of "
        "the guess at the focus",
    )
    p.add_argument("--kk-rounds", type=positive_int, default=4)
    p.add_argument("--kk-iterations", type=positive_int, default=10)
    p.add_argument(
        "--kk-final-iterations",
        type=nonnegative_int,
        default=40,
        help="ptychography iterations of every energy after the last KK projection",
    )
    p.add_argument(
        "--object-refine",
        type=positive_int,
        default=2,
        help="object grid this many times finer than the detector's λz/(N·dx); outputs "
        "are binned back to the detector pixel (1: the detector's grid)",
    )
    p.add_argument(
        "--subpixel",
        choices=("bilinear", "fourier"),
        default="bilinear",
        help="sub-pixel scan positions: bilinear patches (default), or fourier: the patch at "
        "the integer position and the probe moved by the rest (exact for a probe that fits "
        "its frame; not with --engine lsqml)",
    )
    p.add_argument("--element", default="V", help="absorber of the KK constraint (V)")
    p.add_argument("--edge", default="K", help="its edge (K)")
    p.add_argument(
        "--reference-energy",
        type=int,
        default=0,
        help="index (increasing energy) of the energy that defines the common grid",
    )
    p.add_argument("--no-registration", action="store_true", help="do not register energies")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    from diffptycho.cli.checkpointing import add_checkpoint_arguments

    add_checkpoint_arguments(p, unit="energies (of the per-energy pass)", keep_best=False)
    return p


def settings_from_args(args: argparse.Namespace):
    """The :class:`~diffptycho.pipeline.spectroptycho.SpectroPtychoSettings` of the arguments."""
    from diffptycho.pipeline.spectroptycho import SpectroPtychoSettings

    return SpectroPtychoSettings(
        engine=args.engine,
        iterations=args.iterations,
        probe_iterations=args.probe_iterations,
        probe_revisit=args.probe_revisit,
        probe_band=not args.no_probe_band,
        probe_modes=args.probe_modes,
        refine_probe=not args.fixed_probe,
        kk=args.kk,
        kk_rounds=args.kk_rounds,
        kk_iterations=args.kk_iterations,
        kk_final_iterations=args.kk_final_iterations,
        object_refine=args.object_refine,
        subpixel=args.subpixel,
        probe_search=args.probe_search,
        element=args.element,
        edge=args.edge,
        reference_energy=args.reference_energy,
        register=not args.no_registration,
        mode=args.mode,
        joint_iterations=args.joint_iterations,
        kk_sigma=args.kk_sigma,
    )


def run(args: argparse.Namespace) -> int:
    """Run ``diffptycho spectroptycho``."""
    from diffptycho.io.references import read_reference_csv
    from diffptycho.io.results import write_results
    from diffptycho.pipeline.spectroptycho import run_spectroptycho

    if not os.path.isfile(args.data):
        raise FileNotFoundError(f"{args.data}: no such file (expected a CXI file)")
    out_dir = os.path.dirname(os.path.abspath(args.output))
    if not os.access(out_dir, os.W_OK):
        raise OSError(f"--output {args.output}: directory {out_dir} is not writable")
    from diffptycho.cli.checkpointing import checkpoint_for, interrupted
    from diffptycho.recon.interrupt import Interrupted, stop_on_signals

    settings = settings_from_args(args)
    files = [args.data] + ([args.references] if args.references else [])
    checkpoint = checkpoint_for(args, args.output, vars(settings), files)
    references = None
    if args.references:
        species, ref_e, spectra = read_reference_csv(args.references)
        references = (ref_e, {s: spectra[:, i] for i, s in enumerate(species)})
    try:
        with stop_on_signals():
            result = run_spectroptycho(
                args.data,
                settings,
                references=references,
                progress=not args.no_progress,
                log=lambda msg: print(msg, file=sys.stderr),
                checkpoint=checkpoint,
                resume=args.resume,
            )
    except Interrupted as err:
        return interrupted("spectroptycho", err, err.checkpoint)
    data, units = result.datasets()
    write_results(
        args.output,
        data,
        units=units,
        config={"command": "spectroptycho", "data": args.data, **vars(settings)},
        timings=result.timings,
    )
    checkpoint.remove()
    n_e, h, w = result.optical_density.shape
    print(
        f"wrote {args.output}: {n_e} energies on one {h}×{w} grid of "
        f"{result.pixel_size_m * 1e9:.2f} nm, {int(result.valid_mask.sum())} valid pixels, "
        f"offsets RMS {float((result.offsets_px**2).sum(1).mean() ** 0.5):.2f} px"
    )
    return 0
