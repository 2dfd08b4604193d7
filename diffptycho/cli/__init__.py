"""Command-line interface: ``diffptycho <command>``, one module per sub-command in this package.

Units on the command line are the beamline's (eV, nm, degrees); they are converted to SI at
this boundary and nowhere else.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``diffptycho`` command."""
    from diffptycho import __version__
    from diffptycho.cli import distributed

    parser = argparse.ArgumentParser(
        prog="diffptycho",
        description="Differentiable X-ray spectro-ptycho-tomography (JAX).",
    )
    parser.add_argument("--version", action="version", version=f"diffptycho {__version__}")
    parser.add_argument(
        "--no-compile-cache",
        action="store_true",
        help="do not keep compiled JAX code on disk between runs (also: DIFFPTYCHO_NO_CACHE=1; "
        "the cache lives in DIFFPTYCHO_CACHE_DIR or ~/.cache/diffptycho/jax)",
    )
    distributed.add_arguments(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    for module in _subcommand_modules():
        module.add_parser(sub).set_defaults(_run=module.run)
    return parser


def _subcommand_modules() -> list:
    """Modules that each add one sub-command: ``add_parser(subparsers)`` and ``run(args)``."""
    from diffptycho.cli import (
        align,
        chem,
        demo,
        inspect,
        ptycho,
        run,
        simulate,
        spectroptycho,
        spectrotomo,
        tomo,
    )

    return [simulate, demo, ptycho, tomo, chem, spectrotomo, spectroptycho, run, inspect, align]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``diffptycho`` command."""
    from diffptycho.cli.distributed import distributed_run

    args = build_parser().parse_args(argv)
    if not args.no_compile_cache:
        from diffptycho._runtime import enable_compilation_cache

        enable_compilation_cache()
    try:
        with distributed_run(args):
            return args._run(args)
    except (ValueError, FileNotFoundError, OSError) as err:
        print(f"diffptycho {args.command}: error: {err}", file=sys.stderr)
        return 2
