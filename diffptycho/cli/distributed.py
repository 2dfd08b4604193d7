"""``diffptycho --distributed COMMAND``: one command run by several processes as one.

Every process (one per node, or one per GPU; started by ``srun`` or ``mpirun``) runs the
same command line. :func:`distributed_run` joins them with
:func:`~diffptycho.recon.distributed.initialize_distributed`, after which ``--devices``
counts the devices of all processes (default: all of them) and the meshes span them. Every
process reads the inputs and computes; only process 0 writes where the command line says.
The others write their copy of the results, figures and checkpoints into a private
temporary directory, removed at the end: every code path (resuming included, from a copy
of the existing output and checkpoint) runs unchanged on every process, so all processes
take the same decisions and meet at the same collectives. They print nothing to stdout
and show no progress bar; errors still go to stderr.

This module imports no jax until a distributed run starts.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator

from diffptycho.cli.ptycho import nonnegative_int, positive_int

__all__ = [
    "COMMANDS",
    "ENVIRONMENT",
    "add_arguments",
    "distributed_run",
    "process_output",
    "requested",
]

COMMANDS = ("ptycho", "tomo", "spectrotomo", "run")
"""Sub-commands that can run on several processes (those that split work over devices)."""
ENVIRONMENT = "DIFFPTYCHO_DISTRIBUTED"
"""Set to ``1`` to run the commands of :data:`COMMANDS` distributed (as ``--distributed``)."""

_private_dir: str | None = None
"""This process's directory for the outputs it does not own (None on process 0)."""
_distributed = False
"""True while a distributed command runs."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--distributed``, ``--coordinator``, ``--num-processes``, ``--process-id``."""
    group = parser.add_argument_group(
        "several processes (jax.distributed; see the documentation's page on it)"
    )
    group.add_argument(
        "--distributed",
        action="store_true",
        help=f"join the other processes of the run before the command ({', '.join(COMMANDS)}; "
        f"also: {ENVIRONMENT}=1): --devices then counts the devices of every process (default "
        "all) and only process 0 writes files. Under SLURM (srun) or Open MPI (mpirun) the "
        "processes are found from the environment; elsewhere give the three options below",
    )
    group.add_argument(
        "--coordinator",
        default=None,
        metavar="HOST:PORT",
        help="process 0's address and a free port (default: from SLURM / Open MPI or "
        "JAX_COORDINATOR_ADDRESS)",
    )
    group.add_argument(
        "--num-processes", type=positive_int, default=None, metavar="N", help="processes of the run"
    )
    group.add_argument(
        "--process-id",
        type=nonnegative_int,
        default=None,
        metavar="I",
        help="this process, 0 … N − 1",
    )


def requested(args: argparse.Namespace) -> bool:
    """Whether this command runs distributed: ``--distributed``, or the environment variable.

    Raises:
        ValueError: ``--distributed`` (or a process option) with a command not in
            :data:`COMMANDS`. The environment variable alone leaves such commands on one
            process, so a batch script may set it once for all its commands.
    """
    flagged = args.distributed or any(
        getattr(args, name) is not None for name in ("coordinator", "num_processes", "process_id")
    )
    from_env = os.environ.get(ENVIRONMENT, "").strip().lower() not in ("", "0", "false", "no")
    if args.command not in COMMANDS:
        if flagged:
            raise ValueError(
                f"--distributed: the {args.command!r} command runs on one process; expected "
                f"one of {', '.join(COMMANDS)}"
            )
        return False
    return flagged or from_env


@contextlib.contextmanager
def distributed_run(args: argparse.Namespace) -> Iterator[None]:
    """Run the command of ``args`` distributed if :func:`requested` (else do nothing).

    Joins the processes, defaults ``args.devices`` to every device of every process,
    points ``args.output`` of the processes other than 0 into their private directory
    (:func:`process_output`), and silences their stdout and progress bars.

    Raises:
        ValueError, RuntimeError: from
            :func:`~diffptycho.recon.distributed.initialize_distributed`.
    """
    global _private_dir, _distributed
    if not requested(args):
        yield
        return
    from diffptycho.recon.distributed import initialize_distributed

    group = initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    if getattr(args, "devices", False) is None:
        args.devices = group.devices
    quiet = contextlib.ExitStack()
    if not group.main:
        _private_dir = tempfile.mkdtemp(prefix=f"diffptycho-process{group.index}-")
        if hasattr(args, "no_progress"):
            args.no_progress = True
        quiet.enter_context(contextlib.redirect_stdout(quiet.enter_context(open(os.devnull, "w"))))
    _distributed = True
    print(
        f"diffptycho {args.command}: process {group.index} of {group.count}, "
        f"{group.local_devices} of {group.devices} devices",
        file=sys.stderr,
        flush=True,
    )
    try:
        with quiet:
            if args.command != "run":  # run's output is in its TOML file: cli.run asks
                args.output = process_output(args.output)
            yield
    finally:
        _distributed = False
        if _private_dir is not None:
            shutil.rmtree(_private_dir, ignore_errors=True)
            _private_dir = None


def process_output(path: str) -> str:
    """Where this process writes the results file ``path`` (call it once, on every process).

    ``path`` on process 0 and outside a distributed run; on the others the same name in
    their private directory, holding a copy of ``path`` and of its checkpoint if they exist
    (so that a resumed run resumes alike on every process). All processes then wait for
    each other, so process 0 writes nothing before the copies are taken.
    """
    if not _distributed:
        return path
    from diffptycho.io.checkpoint import checkpoint_path
    from diffptycho.recon.distributed import barrier

    private = path
    if _private_dir is not None:
        private = os.path.join(_private_dir, os.path.basename(path))
        for source, target in ((path, private), (checkpoint_path(path), checkpoint_path(private))):
            if os.path.exists(source):
                shutil.copy2(source, target)
    barrier("diffptycho.cli.process_output")
    return private
