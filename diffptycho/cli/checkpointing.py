"""Command-line side of checkpoints: the shared flags, the checkpoint of a command, the exit.

Every long-running command adds :func:`add_checkpoint_arguments` (``--checkpoint-every N``,
``--resume``, ``--keep-best``), builds its :class:`~diffptycho.io.checkpoint.Checkpoint` with
:func:`checkpoint_for` and runs inside :func:`~diffptycho.recon.interrupt.stop_on_signals`;
when a signal stops it, :func:`interrupted` prints how to resume and gives the exit status.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["add_checkpoint_arguments", "checkpoint_for", "interrupted"]


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be ≥ 0 (0: only when interrupted)")
    return value


def add_checkpoint_arguments(
    parser: argparse.ArgumentParser, unit: str = "iterations", keep_best: bool = True
) -> None:
    """Add ``--checkpoint-every``, ``--resume`` and (optionally) ``--keep-best``."""
    parser.add_argument(
        "--checkpoint-every",
        type=_count,
        default=0,
        metavar="N",
        help=f"write a checkpoint (OUT.ckpt.h5) every N {unit}; one is always written when "
        "SIGINT/SIGTERM stops the run (default 0: only then)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the checkpoint of an interrupted run with the same inputs and "
        "settings (same result as an uninterrupted run)",
    )
    if keep_best:
        parser.add_argument(
            "--keep-best",
            action="store_true",
            help="write the state of the lowest loss instead of the last one",
        )


def checkpoint_for(
    args: argparse.Namespace,
    output: str,
    settings: Mapping[str, Any],
    files: Sequence[str] = (),
):
    """The :class:`~diffptycho.io.checkpoint.Checkpoint` of a command writing ``output``.

    Args:
        args: parsed arguments with ``checkpoint_every``.
        output: the results file; the checkpoint goes beside it.
        settings: the options that change the result (fingerprinted).
        files: input files (fingerprinted by path, size and date).
    """
    from diffptycho.io.checkpoint import Checkpoint, checkpoint_path, fingerprint

    return Checkpoint(
        checkpoint_path(output), fingerprint(settings, files), args.checkpoint_every or 0
    )


def interrupted(command: str, err: Exception, path: str | None) -> int:
    """Print that ``command`` stopped, where its checkpoint is and how to resume; exit status.

    Args:
        command: the sub-command's name.
        err: the :class:`~diffptycho.recon.interrupt.Interrupted` raised.
        path: the checkpoint written (None: nothing to resume from).

    Returns:
        128 + signal number (130 for SIGINT, 143 for SIGTERM).
    """
    from diffptycho.io.checkpoint import resume_hint

    where = f"checkpoint written to {path}; resume with:\n  {resume_hint()}" if path else ""
    print(f"diffptycho {command}: interrupted ({err}); {where}", file=sys.stderr, flush=True)
    return getattr(err, "exit_code", 1)
