"""``diffptycho simulate``: datasets with ground truth, written as an experiment writes them."""

from __future__ import annotations

import argparse
import os

import numpy as np

from diffptycho.cli.ptycho import positive_int

_V_FIRST_EV, _V_LAST_EV = 5420.0, 5540.0  # the published V K-edge scan
_V_MIN_SIZE = 16  # sim.spectroptycho: smallest image edge in reference pixels


def add_parser(sub) -> argparse.ArgumentParser:
    """Add ``simulate`` to the sub-command parsers."""
    p = sub.add_parser(
        "simulate",
        help="simulate a dataset with ground truth and write it as CXI",
        description="Simulate ptychographic scans with Poisson noise as a beamline records them "
        "(sample finer than the reconstruction grid, unrecorded sample shifts, no probe in the "
        "file); the truth is stored in the file's separate diffptycho_truth group, and the "
        "reference spectra of the species in <output stem>_references.csv.",
    )
    p.add_argument(
        "kind",
        choices=["lfp", "vanadium"],
        help="lfp: two-energy Fe L3 tilt series of LiFePO4/FePO4 plates; vanadium: V K-edge 2-D "
        "spectro-ptychography of V2O3/VO2/V2O5 domains (one CXI entry per energy)",
    )
    p.add_argument("--output", "-o", required=True, help="CXI file to write")
    p.add_argument(
        "--size",
        type=positive_int,
        default=32,
        help="volume/image edge in voxels (vanadium: reference pixels of the lowest energy, "
        f"≥ {_V_MIN_SIZE})",
    )
    p.add_argument("--angles", type=positive_int, default=24, help="number of angles (lfp)")
    p.add_argument(
        "--energies",
        type=int,
        default=40,
        help=f"vanadium: number of energies from {_V_FIRST_EV:g} to {_V_LAST_EV:g} eV",
    )
    p.add_argument("--photons", type=float, default=1e5, help="incident photons per frame")
    p.add_argument(
        "--pixel-nm",
        type=float,
        default=None,
        help="voxel/pixel size in nm (lfp: 6.7; vanadium: object pixel at the lowest energy, 20)",
    )
    p.add_argument(
        "--misalign-px",
        type=float,
        default=0.0,
        help="lfp: standard deviation in pixels of the unrecorded sample shift of each scan",
    )
    p.add_argument(
        "--offset-px",
        type=float,
        default=0.5,
        help="vanadium: standard deviation in reference pixels of the unrecorded stage offset "
        "of each energy (default 0.5)",
    )
    p.add_argument(
        "--oversample",
        type=positive_int,
        default=2,
        help="the sample is simulated this many times finer than the reconstruction pixels "
        "(default 2)",
    )
    p.add_argument(
        "--known-probe",
        action="store_true",
        help="write the true probe as the illumination (default: no probe in the file)",
    )
    p.add_argument(
        "--frame-px",
        type=positive_int,
        default=None,
        help="vanadium: detector frame side in pixels (default 16). The object pixel is kept, "
        "so a larger frame is a finer detector pixel: a wider window around the probe, whose "
        "tails otherwise wrap into the frame (2 %% of the beam's power lies in the outer 2 px of "
        "16, 0.3 %% of 32)",
    )
    p.add_argument(
        "--scan",
        choices=("raster", "fermat"),
        default="raster",
        help="vanadium: scan pattern, a jittered raster (default, as published) or a Fermat "
        "spiral with the same count and extent",
    )
    p.add_argument("--seed", type=int, default=0)
    return p


def _check(args: argparse.Namespace) -> None:
    """Refuse values no simulation can use, naming the option."""
    if args.photons <= 0 or not np.isfinite(args.photons):
        raise ValueError(f"--photons {args.photons:g}: expected a positive number of photons")
    if args.pixel_nm is not None and not (np.isfinite(args.pixel_nm) and args.pixel_nm > 0):
        raise ValueError(f"--pixel-nm {args.pixel_nm:g}: expected a positive size in nm")
    if args.kind == "vanadium":
        if args.size < _V_MIN_SIZE:
            raise ValueError(
                f"--size {args.size}: vanadium needs an image of at least {_V_MIN_SIZE} pixels "
                "per side (its particles and a 3 × 3 scan must fit)"
            )
        if args.energies < 1:
            raise ValueError(f"--energies {args.energies}: expected at least 1 energy")
        if not (np.isfinite(args.offset_px) and args.offset_px >= 0):
            raise ValueError(f"--offset-px {args.offset_px:g}: expected a width ≥ 0 in pixels")
        if args.frame_px is not None and (args.frame_px < 8 or args.frame_px % 2):
            raise ValueError(
                f"--frame-px {args.frame_px}: expected an even frame side of at least 8 pixels"
            )
    elif args.angles < 1:
        raise ValueError(f"--angles {args.angles}: expected at least 1 angle")


def run(args: argparse.Namespace) -> int:
    """``diffptycho simulate``.

    Both kinds are simulated as an experiment records them: lfp with a finer sample, another
    projector and unrecorded sample shifts; vanadium with a fixed detector (the object pixel
    follows λ), a finer sample, unrecorded stage offsets and a probe that drifts with energy.
    """
    from diffptycho.sim import datasets, spectroptycho, tiltseries

    _check(args)
    if args.kind == "lfp":
        geometry = datasets.ScanGeometry(photons_per_frame=args.photons)
        ds = tiltseries.simulate_lfp_tilt_series(
            volume_shape=(args.size,) * 3,
            voxel_size_m=(args.pixel_nm or 6.7) * 1e-9,
            angles_deg=np.linspace(*tiltseries.STUDY_ANGLES_DEG, args.angles),
            geometry=geometry.fitted_to((args.size, args.size)),
            oversample=args.oversample,
            shift_sigma_px=args.misalign_px,
            seed=args.seed,
            known_probe=args.known_probe,
            stream=True,  # frames computed while they are written (memory ∝ one block)
        )
    else:
        import dataclasses

        energies = np.linspace(_V_FIRST_EV, _V_LAST_EV, args.energies)
        shape = (args.size, args.size)
        geometry = dataclasses.replace(
            spectroptycho.SPECTRO_GEOMETRY, photons_per_frame=args.photons
        )
        if args.frame_px is not None:
            geometry = dataclasses.replace(geometry, probe_shape=(args.frame_px, args.frame_px))
        try:
            geometry = spectroptycho.fit_scan_to(shape, geometry, energies)
        except ValueError as err:
            raise ValueError(f"--size {args.size}: {err}") from None
        pixel_nm = args.pixel_nm or 20.0
        try:
            ds = spectroptycho.simulate_vanadium_spectroptycho(
                image_shape=shape,
                pixel_size_m=pixel_nm * 1e-9,
                energies_ev=energies,
                geometry=geometry,
                oversample=args.oversample,
                offset_sigma_px=args.offset_px,
                seed=args.seed,
                known_probe=args.known_probe,
                scan=args.scan,
            )
        except ValueError as err:
            raise ValueError(
                f"--pixel-nm {pixel_nm:g} --oversample {args.oversample} --size {args.size}: {err}"
            ) from None
    datasets.write_dataset(args.output, ds)
    n_e, n_a, n_f = ds.frames.shape[:3]
    print(
        f"wrote {args.output}: {n_e} energies × {n_a} angles × {n_f} frames of "
        f"{ds.frames.shape[-2]}×{ds.frames.shape[-1]} px"
    )
    refs = os.path.splitext(args.output)[0] + "_references.csv"
    if args.kind == "lfp":
        datasets.write_lfp_references(refs)
        print(f"wrote {refs} (δ, β of LiFePO4 and FePO4 for spectrotomo --references)")
    else:
        spectroptycho.write_vanadium_references(refs, include_ev=ds.energies_ev)
        print(f"wrote {refs} (δ, β of V2O3, VO2 and V2O5)")
    return 0
