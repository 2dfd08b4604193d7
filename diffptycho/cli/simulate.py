"""``diffptycho simulate``: datasets with ground truth, written as an experiment writes them."""

from __future__ import annotations

import argparse
import os

import numpy as np


def add_parser(sub) -> argparse.ArgumentParser:
    """Add ``simulate`` to the sub-command parsers."""
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
    p.add_argument(
        "--misalign-px",
        type=float,
        default=0.0,
        help="lfp: standard deviation in pixels of the unrecorded sample shift of each scan",
    )
    p.add_argument(
        "--oversample",
        type=int,
        default=2,
        help="lfp: the sample is simulated this many times finer than the voxels (default 2)",
    )
    p.add_argument(
        "--known-probe",
        action="store_true",
        help="lfp: write the true probe as the illumination (default: no probe in the file)",
    )
    p.add_argument("--seed", type=int, default=0)
    return p


def run(args: argparse.Namespace) -> int:
    """``diffptycho simulate``.

    lfp is simulated as an experiment records it (finer sample, another projector, unrecorded
    sample shifts, probe not in the file); vanadium with the package's own forward model.
    """
    import dataclasses

    from diffptycho.sim import datasets, tiltseries

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
        )
    else:
        ds = datasets.simulate_vanadium_2d(
            image_shape=(args.size, args.size),
            pixel_size_m=(args.pixel_nm or 20.0) * 1e-9,
            geometry=dataclasses.replace(
                datasets.VANADIUM_GEOMETRY, photons_per_frame=args.photons
            ),
            seed=args.seed,
        )
    datasets.write_dataset(args.output, ds)
    n_e, n_a, n_f = ds.frames.shape[:3]
    print(
        f"wrote {args.output}: {n_e} energies × {n_a} angles × {n_f} frames of "
        f"{ds.frames.shape[-2]}×{ds.frames.shape[-1]} px"
    )
    if args.kind == "lfp":
        refs = os.path.splitext(args.output)[0] + "_references.csv"
        datasets.write_lfp_references(refs)
        print(f"wrote {refs} (δ, β of LiFePO4 and FePO4 for spectrotomo --references)")
    return 0
