"""A watch on a loss history: the best iteration, a loss that keeps rising, a diverging loss.

:func:`~diffptycho.recon.solve.solve` feeds every engine's loss to a :class:`LossWatch`; the
tomography and alignment loops feed theirs. A warning is logged (logger ``diffptycho``, shown
on stderr) and kept in :attr:`LossWatch.warnings` for the run's summary and provenance; the run
goes on (a non-finite step is still stopped by the solve loop's roll-back).
"""

from __future__ import annotations

import dataclasses
import logging
import math

__all__ = ["LossWatch"]

log = logging.getLogger("diffptycho")


@dataclasses.dataclass
class LossWatch:
    """Tracks the best loss and warns when the loss rises or diverges.

    Rising: no new best for ``window`` iterations and the latest loss is more than ``rise``
    (relative) above both the loss ``window`` iterations ago and the best one. Diverging: the
    latest loss is non-finite or more than ``diverge_factor`` × the best one. Each kind is
    warned once per run.

    Attributes:
        window: W, iterations over which a rise is judged.
        rise: relative rise that counts (0.05: 5 %).
        diverge_factor: loss / best loss above which the run is diverging.
        label: name used in messages (e.g. the engine).
        quiet: record the warnings without logging them (a caller that runs many short
            solves, such as the pipeline's per-scan ptychography, reports them once).
        best_loss: lowest finite loss seen.
        best_iteration: its iteration (0-based), or -1 before any.
        warnings: the warnings issued, as text.

    Examples:
        >>> watch = LossWatch(window=3, label="demo")
        >>> for it, loss in enumerate([4.0, 2.0, 1.0, 1.5, 2.0, 3.0]):
        ...     _ = watch.update(it, loss)
        >>> watch.best_iteration, len(watch.warnings)
        (2, 1)
    """

    window: int = 20
    rise: float = 0.05
    diverge_factor: float = 1e3
    label: str = "loss"
    quiet: bool = False
    best_loss: float = math.inf
    best_iteration: int = -1
    warnings: list[str] = dataclasses.field(default_factory=list)
    _recent: list[float] = dataclasses.field(default_factory=list, repr=False)
    _warned: set[str] = dataclasses.field(default_factory=set, repr=False)

    def __post_init__(self):
        if self.window < 1:
            raise ValueError(f"LossWatch window={self.window}: expected ≥ 1 iterations")
        if self.rise < 0 or self.diverge_factor <= 1:
            raise ValueError(
                f"LossWatch rise={self.rise}, diverge_factor={self.diverge_factor}: expected "
                "rise ≥ 0 and diverge_factor > 1"
            )

    def update(self, iteration: int, loss: float) -> bool:
        """Record the loss of ``iteration``; returns True when it is a new best."""
        loss = float(loss)
        self._recent = (self._recent + [loss])[-(self.window + 1) :]
        if not math.isfinite(loss):
            self._warn("diverge", f"{self.label}: non-finite loss {loss} at iteration {iteration}")
            return False
        if loss < self.best_loss:
            self.best_loss, self.best_iteration = loss, iteration
            return True
        if self.best_loss > 0 and loss > self.diverge_factor * self.best_loss:
            self._warn(
                "diverge",
                f"{self.label}: loss {loss:.4g} at iteration {iteration} is more than "
                f"{self.diverge_factor:g} × the best {self.best_loss:.4g} (iteration "
                f"{self.best_iteration}): the run is diverging; lower the step size",
            )
        elif (
            iteration - self.best_iteration >= self.window
            and len(self._recent) > self.window
            and loss > (1 + self.rise) * abs(self._recent[0])
            and loss > (1 + self.rise) * abs(self.best_loss)
        ):
            self._warn(
                "rise",
                f"{self.label}: loss rose from {self._recent[0]:.4g} to {loss:.4g} over the "
                f"last {self.window} iterations (best {self.best_loss:.4g} at iteration "
                f"{self.best_iteration}); lower the step size or keep the best state "
                "(--keep-best)",
            )
        return False

    def _warn(self, kind: str, message: str) -> None:
        if kind in self._warned:
            return
        self._warned.add(kind)
        self.warnings.append(message)
        if not self.quiet:
            log.warning(message)

    def state(self) -> dict:
        """JSON-serialisable state, for checkpoints (see :meth:`restore`)."""
        return {
            "best_loss": self.best_loss if math.isfinite(self.best_loss) else None,
            "best_iteration": self.best_iteration,
            "warnings": list(self.warnings),
            "recent": list(self._recent),
            "warned": sorted(self._warned),
        }

    def restore(self, state: dict) -> None:
        """Continue from :meth:`state` (a resumed run warns as the uninterrupted one would)."""
        best = state.get("best_loss")
        self.best_loss = math.inf if best is None else float(best)
        self.best_iteration = int(state.get("best_iteration", -1))
        self.warnings = list(state.get("warnings", []))
        self._recent = [float(x) for x in state.get("recent", [])]
        self._warned = set(state.get("warned", []))
