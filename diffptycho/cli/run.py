"""``diffptycho run CONFIG.toml``: the staged pipeline described in a file.

The file names the inputs, the references, the output and the settings of every stage (see
:mod:`diffptycho.pipeline.config` for every key); an experiment is then a reproducible script.
"""

from __future__ import annotations

import argparse

from diffptycho.cli._choices import STAGE_NAMES
from diffptycho.cli.checkpointing import add_checkpoint_arguments
from diffptycho.cli.spectrotomo import execute

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``run`` sub-command."""
    p = subparsers.add_parser(
        "run",
        help="run the staged pipeline described in a TOML file",
        description="Run (or resume) the pipeline of CONFIG.toml: top-level input (files or "
        "globs), references (CSV), output (HDF5), and one table per stage: [tilt_series], "
        "[ptychography], [projections], [registration], [alignment], [tomography], "
        "[chemistry]. Relative paths are relative to the file. Unknown keys are errors.",
    )
    p.add_argument("config", help="TOML configuration file")
    p.add_argument("--restart-from", choices=STAGE_NAMES, default=None)
    p.add_argument("--stop-after", choices=STAGE_NAMES, default=None)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-figures", action="store_true")
    add_checkpoint_arguments(p, unit="scans (ptychography stage)", keep_best=False)
    return p


def run(args: argparse.Namespace) -> int:
    """``diffptycho run``."""
    import dataclasses

    from diffptycho.cli.distributed import process_output
    from diffptycho.pipeline import load_config

    config = load_config(args.config)
    config = dataclasses.replace(config, output=process_output(config.output))
    return execute(config, args, "run")
