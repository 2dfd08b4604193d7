"""The one solve loop, and gradient solvers as values with ``init`` / ``step``.

A reconstruction is ``(model, data, loss)``; a stage is ``(solver, which model leaves are
trainable)``. Every solver, gradient or classic, implements :class:`AbstractSolver`:
``state = solver.init(model)`` and ``model, state, loss = solver.step(model, state, batch)``.
:func:`solve` owns the Python loop: one ``eqx.filter_jit`` step per iteration, loss history,
NaN rollback, progress bar, the loss watch (:mod:`~diffptycho.recon.watch`), the best state,
checkpoints (:class:`Snapshot`) and a clean stop on SIGINT/SIGTERM
(:mod:`~diffptycho.recon.interrupt`).
"""

from __future__ import annotations

import abc
import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import optax

from diffptycho._typing import Array
from diffptycho.recon.interrupt import Interrupted, stop_agreed, stop_requested
from diffptycho.recon.watch import LossWatch


class DivergenceError(RuntimeError):
    """A solver step produced a non-finite loss or model; the step was rolled back."""


class AbstractSolver(eqx.Module):
    """A solver is a value: ``init`` builds its state, ``step`` does one iteration."""

    @abc.abstractmethod
    def init(self, model: eqx.Module) -> Any:
        """Solver state for ``model`` (a pytree)."""

    @abc.abstractmethod
    def step(self, model: eqx.Module, state: Any, batch: Any) -> tuple[eqx.Module, Any, Array]:
        """One iteration on ``batch``; returns the new model, state and the loss before it."""

    def prepare(self, model: eqx.Module, batch: Any) -> Any:
        """``batch`` as :meth:`step` works on it fastest (e.g. re-laid once); default: as is.

        :func:`solve` calls it once per batch object; ``step`` must also accept the batch
        unprepared.
        """
        return batch


def trainable_spec(model: eqx.Module, where: Callable[[Any], Any]) -> Any:
    """Boolean filter tree that marks the leaves selected by ``where`` as trainable.

    Args:
        model: the model.
        where: ``lambda m: (m.object, m.probe)`` style selector, as for ``eqx.tree_at``.

    Returns:
        A pytree prefix of ``model`` for ``eqx.partition``.
    """
    spec = jtu.tree_map(lambda _: False, model)
    return eqx.tree_at(where, spec, replace_fn=lambda _: True)


def _conjugate(tree):
    # JAX returns ∂L/∂x − i∂L/∂y for a complex leaf; optax expects the ascent direction
    # ∂L/∂x + i∂L/∂y (optax contrib/_complex_valued.py explains why).
    return jtu.tree_map(lambda g: jnp.conj(g) if jnp.iscomplexobj(g) else g, tree)


class OptaxSolver(AbstractSolver):
    """Gradient descent with any optax transformation on the selected leaves.

    Attributes:
        loss: ``loss(model, batch) -> scalar``.
        optimizer: an optax transformation, e.g. ``optax.adam(1e-2)``.
        where: selector of the trainable leaves (see :func:`trainable_spec`).
        constraint: optional projection applied to the model after each update
            (non-negativity, support, probe power …).

    Examples:
        >>> import optax, equinox as eqx, jax.numpy as jnp
        >>> class Line(eqx.Module):
        ...     a: jnp.ndarray
        >>> solver = OptaxSolver(lambda m, b: jnp.sum((m.a - b) ** 2), optax.sgd(0.25),
        ...                      lambda m: m.a)
        >>> model, _ = solve(Line(jnp.zeros(2)), solver, jnp.ones(2), 20, progress=False)
        >>> bool(jnp.allclose(model.a, 1.0, atol=1e-3))
        True
    """

    loss: Callable[[Any, Any], Array] = eqx.field(static=True)
    optimizer: optax.GradientTransformation = eqx.field(static=True)
    where: Callable[[Any], Any] = eqx.field(static=True)
    constraint: Callable[[Any], Any] | None = eqx.field(static=True, default=None)

    def init(self, model: eqx.Module) -> Any:
        """Optimizer state of the trainable leaves."""
        params, _ = eqx.partition(model, trainable_spec(model, self.where))
        return self.optimizer.init(eqx.filter(params, eqx.is_inexact_array))

    def step(self, model: eqx.Module, state: Any, batch: Any) -> tuple[eqx.Module, Any, Array]:
        """Loss, gradient and update of the trainable leaves."""
        params, static = eqx.partition(model, trainable_spec(model, self.where))

        def objective(p):
            return self.loss(eqx.combine(p, static), batch)

        value, grads = eqx.filter_value_and_grad(objective)(params)
        grads = _conjugate(grads)
        # extra arguments feed line searches (optax.lbfgs); other transformations ignore them
        updates, state = optax.with_extra_args_support(self.optimizer).update(
            grads,
            state,
            eqx.filter(params, eqx.is_array),
            value=value,
            grad=grads,
            value_fn=lambda p: objective(
                eqx.combine(p, eqx.filter(params, eqx.is_array, inverse=True))
            ),
        )
        model = eqx.combine(eqx.apply_updates(params, updates), static)
        if self.constraint is not None:
            model = self.constraint(model)
        return model, state, value


@dataclasses.dataclass
class History:
    """What :func:`solve` records: loss per iteration, wall-clock times and the loss watch.

    Attributes:
        loss: loss of the model entering each iteration (the engine's own measure).
        seconds: wall-clock time at the end of each iteration, in s since the solve began
            (a resumed solve continues the interrupted one's clock).
        compile_seconds: compilation time of the step in s, estimated as the first call's
            time minus the second call's (the first call traces and compiles, the second
            only runs); with a single iteration, the first call's whole time.
        best_iteration: iteration of the lowest loss (-1 before any).
        best_loss: that loss.
        warnings: the loss watch's warnings (rising or diverging loss).
    """

    loss: list[float] = dataclasses.field(default_factory=list)
    seconds: list[float] = dataclasses.field(default_factory=list)
    compile_seconds: float = 0.0
    best_iteration: int = -1
    best_loss: float = math.inf
    warnings: list[str] = dataclasses.field(default_factory=list)

    def as_arrays(self) -> dict[str, np.ndarray]:
        """History as arrays for a results file."""
        return {"loss": np.asarray(self.loss), "seconds": np.asarray(self.seconds)}

    def summary(self) -> str:
        """One line: best iteration and any warnings, for a command's report."""
        if self.best_iteration < 0:
            return "no finite loss"
        text = f"best loss {self.best_loss:.4g} at iteration {self.best_iteration}"
        return "; ".join([text, *self.warnings])


@dataclasses.dataclass
class Snapshot:
    """Everything :func:`solve` needs to continue a run exactly where it stopped.

    Attributes:
        model: the model after ``iteration`` steps.
        state: the solver state (a pytree: optax state, shuffle keys, counters …).
        iteration: steps done.
        history: the history so far.
        watch: the loss watch's state (:meth:`~diffptycho.recon.watch.LossWatch.state`).
        best_model: the model of the lowest loss (kept with ``keep_best``), or None.
        extra: further trees a caller saved with the snapshot (e.g. an outer loop's state).
    """

    model: Any
    state: Any
    iteration: int
    history: History
    watch: dict = dataclasses.field(default_factory=dict)
    best_model: Any = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def trees(self) -> dict[str, Any]:
        """The pytrees to store: ``model``, ``state`` and, if kept, ``best_model``."""
        trees = {"model": self.model, "state": self.state}
        if self.best_model is not None:
            trees["best_model"] = self.best_model
        return trees

    def arrays(self) -> dict[str, np.ndarray]:
        """The loss history as arrays."""
        return {
            "loss": np.asarray(self.history.loss, np.float64),
            "seconds": np.asarray(self.history.seconds, np.float64),
        }

    def meta(self) -> dict[str, Any]:
        """JSON-serialisable scalars: iteration, compile time, the loss watch's state."""
        return {
            "iteration": self.iteration,
            "compile_seconds": self.history.compile_seconds,
            "watch": self.watch,
        }

    @classmethod
    def restore(cls, trees: dict[str, Any], arrays: dict[str, np.ndarray], meta: dict) -> Snapshot:
        """The snapshot whose :meth:`trees`, :meth:`arrays` and :meth:`meta` these are."""
        watch = dict(meta.get("watch", {}))
        best = watch.get("best_loss")
        history = History(
            loss=[float(x) for x in arrays["loss"]],
            seconds=[float(x) for x in arrays["seconds"]],
            compile_seconds=float(meta.get("compile_seconds", 0.0)),
            best_iteration=int(watch.get("best_iteration", -1)),
            best_loss=math.inf if best is None else float(best),
            warnings=list(watch.get("warnings", [])),
        )
        return cls(
            trees["model"],
            trees["state"],
            int(meta["iteration"]),
            history,
            watch,
            trees.get("best_model"),
        )


def _finite(tree) -> Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jtu.tree_leaves(eqx.filter(tree, eqx.is_array))]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


@eqx.filter_jit
def _init(solver: AbstractSolver, model):
    # jitted too: an engine's init may scan over all positions, which eagerly would be traced
    # and compiled on every call (seconds per scan in a staged pipeline)
    return solver.init(model)


@eqx.filter_jit
def _checked_step(solver: AbstractSolver, model, state, batch):
    # module level, with the solver as an argument: repeated solves with the same solver
    # (a staged pipeline runs one per scan) reuse the compiled step instead of retracing
    new_model, new_state, loss = solver.step(model, state, batch)
    ok = jnp.isfinite(loss) & _finite(new_model)
    return new_model, new_state, loss, ok


def solve(
    model: eqx.Module,
    solver: AbstractSolver,
    batches: Any | Callable[[int], Any],
    iterations: int,
    *,
    state: Any = None,
    progress: bool = True,
    description: str = "solve",
    callback: Callable[[int, eqx.Module, float], None] | None = None,
    resume: Snapshot | None = None,
    checkpoint: Callable[[Snapshot], None] | None = None,
    checkpoint_every: int = 0,
    keep_best: bool = False,
    watch: LossWatch | None = None,
) -> tuple[eqx.Module, History]:
    """Run ``iterations`` steps of ``solver`` from ``model``: the package's only solve loop.

    Args:
        model: starting model.
        solver: any :class:`AbstractSolver`.
        batches: the batch passed to every step, or ``batches(iteration)`` returning it
            (minibatches; shapes must not change between iterations, to avoid recompiling;
            a function of the iteration, so that a resumed run replays the same batches).
        iterations: total number of steps (a resumed run does the ones left).
        state: solver state to start from (default: ``solver.init(model)``).
        progress: show a progress bar with the loss and ETA.
        description: label of the progress bar and of the loss watch's warnings.
        callback: ``callback(iteration, model, loss)`` after each accepted step.
        resume: a :class:`Snapshot` of an interrupted run (its model and state replace
            ``model`` and ``state``); the result equals that of the uninterrupted run.
        checkpoint: ``checkpoint(snapshot)`` called every ``checkpoint_every`` steps and
            before stopping on a signal (see :mod:`diffptycho.recon.interrupt`); e.g. a
            :class:`~diffptycho.io.checkpoint.Checkpoint`'s ``save_snapshot``.
        checkpoint_every: steps between checkpoints (0: only when stopping).
        keep_best: return the model of the lowest loss instead of the last one.
        watch: the :class:`~diffptycho.recon.watch.LossWatch` (default: window 20, 5 % rise).

    Returns:
        The final (or, with ``keep_best``, the best) model and its :class:`History`
        (``best_iteration``, ``best_loss``, ``warnings``).

    Raises:
        DivergenceError: a step produced a non-finite loss or model; the model returned in
            the exception's ``model`` attribute is the last finite one (the step is rolled
            back, never written out), or the best one with ``keep_best``.
        Interrupted: a stop was requested (SIGINT/SIGTERM inside
            :func:`~diffptycho.recon.interrupt.stop_on_signals`); the current step was
            finished and ``checkpoint`` called; the exception's ``snapshot`` holds the state.
            In a multi-process run the processes agree after each step
            (:func:`~diffptycho.recon.interrupt.stop_agreed`), so a signal to any one of
            them stops all at the same iteration.
    """
    if iterations < 0:
        raise ValueError(f"iterations={iterations}: expected a non-negative count")
    if checkpoint_every < 0:
        raise ValueError(f"checkpoint_every={checkpoint_every}: expected ≥ 0 (0: never)")
    watch = LossWatch(label=description) if watch is None else watch
    best_model = None
    if resume is not None:
        model, state, first = resume.model, resume.state, resume.iteration
        history = dataclasses.replace(
            resume.history,
            loss=list(resume.history.loss),
            seconds=list(resume.history.seconds),
            warnings=[],
        )
        watch.restore(resume.watch)
        best_model = resume.best_model
        if keep_best and best_model is None and first > 0:
            raise ValueError(
                "keep_best: the snapshot to resume from has no best model; resume without "
                "keep_best or start again"
            )
    else:
        state = _init(solver, model) if state is None else state
        history, first = History(), 0
    if not callable(batches):
        batches = solver.prepare(model, batches)

    def snapshot(it: int) -> Snapshot:
        _sync_watch(history, watch)
        return Snapshot(model, state, it, history, watch.state(), best_model)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=iterations, initial=min(first, iterations), desc=description, leave=False)
    offset = history.seconds[-1] if history.seconds else 0.0
    start = time.perf_counter() - offset
    first_call = None
    try:
        for it in range(first, iterations):
            batch = solver.prepare(model, batches(it)) if callable(batches) else batches
            t0 = time.perf_counter()
            new_model, new_state, loss, ok = _checked_step(solver, model, state, batch)
            loss = float(loss)
            call = time.perf_counter() - t0
            if it == first:
                first_call = call
                history.compile_seconds = call
            elif it == first + 1 and first_call is not None:
                history.compile_seconds = max(first_call - call, 0.0)
            if not bool(ok):
                _sync_watch(history, watch)
                err = DivergenceError(
                    f"{description}: iteration {it} gave a non-finite "
                    f"{'loss' if not math.isfinite(loss) else 'model'} (loss={loss}); "
                    "the step was rolled back. Lower the step size or check the data "
                    "(NaN counts, masked pixels, probe power)."
                )
                err.model = best_model if keep_best and best_model is not None else model
                err.history = history
                raise err
            # the loss is that of the model entering this step
            if watch.update(it, loss) and keep_best:
                best_model = model
            model, state = new_model, new_state
            history.loss.append(loss)
            history.seconds.append(time.perf_counter() - start)
            if bar is not None:
                bar.set_postfix(loss=f"{loss:.4g}")
                bar.update()
            if callback is not None:
                callback(it, model, loss)
            done = it + 1
            # agreed by every process of a multi-process run (one process: a flag test)
            stopping = stop_agreed(stop_requested()) and done < iterations
            if checkpoint is not None and (
                stopping or (checkpoint_every and done % checkpoint_every == 0)
            ):
                checkpoint(snapshot(done))
            if stopping:
                raise Interrupted(
                    f"{description}: stopped after iteration {done} of {iterations}",
                    iteration=done,
                    snapshot=snapshot(done),
                )
    finally:
        if bar is not None:
            bar.close()
    _sync_watch(history, watch)
    if keep_best and best_model is not None:
        return best_model, history
    return model, history


def _sync_watch(history: History, watch: LossWatch) -> None:
    history.best_iteration, history.best_loss = watch.best_iteration, watch.best_loss
    history.warnings = list(watch.warnings)
