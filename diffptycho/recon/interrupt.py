"""Stopping a long run cleanly: SIGINT / SIGTERM end the current iteration, not the process.

Inside :func:`stop_on_signals`, the first SIGINT or SIGTERM only sets a flag; every loop of the
package (:func:`~diffptycho.recon.solve.solve`, the tomography slab loop, the alignment loops,
the staged pipeline's scan loop) checks :func:`stop_requested` after each iteration, writes its
checkpoint and raises :class:`Interrupted`. A second SIGINT stops at once
(:class:`KeyboardInterrupt`). Outside the context manager the flag is never set, so library
calls behave as before.

Several processes (:mod:`~diffptycho.recon.distributed`) must stop at the same iteration, or
the ones still running wait in their next collective until its timeout: a signal may reach
only one of them (``kill`` of one process, a node's own SIGTERM). :func:`stop_agreed` is the
check for such loops: the processes share their flags (a tiny all-gather) and all stop when
any was asked to. On one process it is :func:`stop_requested`, at no cost.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["Interrupted", "request_stop", "stop_agreed", "stop_on_signals", "stop_requested"]

_STOP = threading.Event()
_SIGNAL: list[int] = []


class Interrupted(Exception):  # noqa: N818 (a stop, not an error)
    """A run stopped on request after a finished iteration.

    Attributes:
        signum: the signal number that asked for the stop (0 when requested in code).
        iteration: iterations completed by the loop that stopped (None when unknown).
        snapshot: what that loop had when it stopped (e.g. a
            :class:`~diffptycho.recon.solve.Snapshot`), or None.
        checkpoint: path of the checkpoint written before stopping, or None.
    """

    def __init__(
        self,
        message: str,
        *,
        iteration: int | None = None,
        snapshot: Any = None,
        checkpoint: str | None = None,
    ):
        super().__init__(message)
        self.signum = _SIGNAL[-1] if _SIGNAL else 0
        self.iteration = iteration
        self.snapshot = snapshot
        self.checkpoint = checkpoint

    @property
    def exit_code(self) -> int:
        """Shell convention 128 + signal number (130 for SIGINT, 143 for SIGTERM); 1 otherwise."""
        return 128 + self.signum if self.signum else 1


def stop_requested() -> bool:
    """True once a stop was requested (a signal inside :func:`stop_on_signals`)."""
    return _STOP.is_set()


def request_stop(signum: int = 0) -> None:
    """Ask every running loop to stop after its current iteration (as a signal would)."""
    if signum:
        _SIGNAL.append(signum)
    _STOP.set()


_NO_SIGNAL = 255
"""Shared in place of a signal number by a process whose stop was requested in code."""


def stop_agreed(local: bool | None = None) -> bool:
    """:func:`stop_requested` agreed by every process: True on all when any was asked.

    A collective when ``jax.process_count() > 1``: every process must call it at the same
    point of the same loop (as every process runs the same program). The processes gather
    each one's flag (the signal number, 0 when not asked); when any is set, the others record
    the same request (:func:`request_stop` with that signal), so their outer loops, the
    :class:`Interrupted` they raise and its exit code agree too. On one process this is
    :func:`stop_requested` (no JAX call).

    Args:
        local: this process's own answer (default: :func:`stop_requested`).

    Returns:
        True when this or any other process was asked to stop.

    Examples:
        >>> stop_agreed()
        False
    """
    local = stop_requested() if local is None else bool(local)
    import jax  # here: this module stays importable without initialising JAX

    if jax.process_count() == 1:
        return local
    import numpy as np
    from jax.experimental import multihost_utils

    code = (_SIGNAL[-1] if _SIGNAL else _NO_SIGNAL) if local else 0
    codes = np.asarray(multihost_utils.process_allgather(np.int32(code))).reshape(-1)
    asked = codes[codes > 0]
    if asked.size and not local:
        signum = int(asked[0])
        request_stop(0 if signum == _NO_SIGNAL else signum)
    return bool(asked.size)


@contextlib.contextmanager
def stop_on_signals(
    signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM), *, announce: bool = True
) -> Iterator[None]:
    """Turn SIGINT / SIGTERM into a stop request for the duration of the block.

    Args:
        signals: signals to catch.
        announce: print one line on stderr when a signal arrives.

    Yields:
        Nothing; test :func:`stop_requested` in loops.

    Examples:
        >>> with stop_on_signals():
        ...     stop_requested()
        False
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # handlers can only be installed from the main thread
        return

    def handler(signum, frame):
        if _STOP.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        request_stop(signum)
        if announce:
            print(
                f"diffptycho: {signal.Signals(signum).name} received: finishing the current "
                "iteration and writing a checkpoint (press Ctrl-C again to stop at once)",
                file=sys.stderr,
                flush=True,
            )

    previous = {s: signal.signal(s, handler) for s in signals}
    _STOP.clear()
    _SIGNAL.clear()
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _STOP.clear()
        _SIGNAL.clear()
