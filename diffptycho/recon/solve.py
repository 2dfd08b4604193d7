"""The one solve loop, and gradient solvers as values with ``init`` / ``step``.

A reconstruction is ``(model, data, loss)``; a stage is ``(solver, which model leaves are
trainable)``. Every solver, gradient or classic, implements :class:`AbstractSolver`:
``state = solver.init(model)`` and ``model, state, loss = solver.step(model, state, batch)``.
:func:`solve` owns the Python loop: one ``eqx.filter_jit`` step per iteration, loss history,
NaN rollback, progress bar and optional checkpoints.
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
    """What :func:`solve` records: loss per iteration and wall-clock times in s."""

    loss: list[float] = dataclasses.field(default_factory=list)
    seconds: list[float] = dataclasses.field(default_factory=list)
    compile_seconds: float = 0.0

    def as_arrays(self) -> dict[str, np.ndarray]:
        """History as arrays for a results file."""
        return {"loss": np.asarray(self.loss), "seconds": np.asarray(self.seconds)}


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
) -> tuple[eqx.Module, History]:
    """Run ``iterations`` steps of ``solver`` from ``model``: the package's only solve loop.

    Args:
        model: starting model.
        solver: any :class:`AbstractSolver`.
        batches: the batch passed to every step, or ``batches(iteration)`` returning it
            (minibatches; shapes must not change between iterations, to avoid recompiling).
        iterations: number of steps.
        state: solver state to resume from (default: ``solver.init(model)``).
        progress: show a progress bar with the loss and ETA.
        description: label of the progress bar.
        callback: ``callback(iteration, model, loss)`` after each accepted step.

    Returns:
        The final model and its :class:`History`.

    Raises:
        DivergenceError: a step produced a non-finite loss or model; the model returned in
            the exception's ``model`` attribute is the last finite one (the step is rolled
            back, never written out).
    """
    if iterations < 0:
        raise ValueError(f"iterations={iterations}: expected a non-negative count")
    state = _init(solver, model) if state is None else state
    if not callable(batches):
        batches = solver.prepare(model, batches)

    history = History()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=iterations, desc=description, leave=False)
    start = time.perf_counter()
    try:
        for it in range(iterations):
            batch = solver.prepare(model, batches(it)) if callable(batches) else batches
            t0 = time.perf_counter()
            new_model, new_state, loss, ok = _checked_step(solver, model, state, batch)
            loss = float(loss)
            if it == 0:
                history.compile_seconds = time.perf_counter() - t0
            if not bool(ok):
                err = DivergenceError(
                    f"{description}: iteration {it} gave a non-finite "
                    f"{'loss' if not math.isfinite(loss) else 'model'} (loss={loss}); "
                    "the step was rolled back. Lower the step size or check the data "
                    "(NaN counts, masked pixels, probe power)."
                )
                err.model, err.history = model, history
                raise err
            model, state = new_model, new_state
            history.loss.append(loss)
            history.seconds.append(time.perf_counter() - start)
            if bar is not None:
                bar.set_postfix(loss=f"{loss:.4g}")
                bar.update()
            if callback is not None:
                callback(it, model, loss)
    finally:
        if bar is not None:
            bar.close()
    return model, history
