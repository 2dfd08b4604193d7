"""``diffptycho demo``: the embedded end-to-end example."""

from __future__ import annotations

import argparse

from diffptycho.cli.ptycho import positive_int


def add_parser(sub) -> argparse.ArgumentParser:
    """Add ``demo`` to the sub-command parsers."""
    p = sub.add_parser(
        "demo",
        help="simulate a small LFP dataset and run every pipeline available",
        description="Runs on an embedded small default in a few minutes on 2 CPU cores: "
        "simulates two-energy ptycho-tomography of LiFePO4/FePO4 plates, reconstructs the "
        "chemical composition staged (ptychography, tomography, unmixing) and then jointly "
        "from the diffraction intensities, prints a table of errors against the truth and "
        "writes HDF5 results and PNG figures.",
    )
    p.add_argument("--out", default="demo_out", help="output directory (default: demo_out)")
    p.add_argument("--iterations", type=positive_int, default=32, help="joint Gauss-Newton steps")
    p.add_argument(
        "--seed", type=int, default=6, help="phantom/noise seed (6: one active, one inactive plate)"
    )
    return p


def run(args: argparse.Namespace) -> int:
    """``diffptycho demo``: see :mod:`diffptycho.demo`."""
    from diffptycho.demo import run_demo

    run_demo(args.out, joint_iterations=args.iterations, seed=args.seed)
    return 0
