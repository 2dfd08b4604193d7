"""Gradient engines on the likelihood: minibatch optax (Adam) and full-batch L-BFGS.

Both differentiate the model's own forward chain (``scan_intensities``) through
``jax.value_and_grad``; nothing is re-derived by hand. Unknowns are the object and, per the
:class:`.Refinement`, the probe, positions and background. Adam works in scaled units (the
probe in its initial peak amplitude, the object in transmission units) so one learning rate
serves both; L-BFGS in Gauss–Newton-preconditioned units (see :func:`_preconditioner`).

- :class:`MinibatchOptax`: one iteration is one pass over all positions in minibatches; every
  minibatch is one optax step (default Adam). Complex gradients are conjugated before optax.
- :class:`LBFGS`: one iteration is one ``optax.lbfgs`` step with its zoom line search on the
  full loss. The loss is a ``lax.scan`` over minibatches with a rematerialised body, so memory
  stays bounded by the batch even in the backward pass. Complex leaves are optimised as
  (real, imaginary) pairs, where L-BFGS's inner products are the right ones.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from diffptycho._typing import Array, Int, Positions
from diffptycho.models.ptycho import scan_intensities
from diffptycho.physics import scan
from diffptycho.recon.ptycho.constraints import Refinement, check_refinement, end_of_iteration
from diffptycho.recon.ptycho.data import (
    NativeLayout,
    PtychoData,
    batch_indices,
    frame_losses,
)
from diffptycho.recon.ptycho.projections import illumination
from diffptycho.recon.ptycho.projections import subpixel_of as proj_subpixel
from diffptycho.recon.sharding import over_positions, summed
from diffptycho.recon.solve import AbstractSolver

_LEAVES = ("object", "probe", "positions", "background")


def _trainable(model, refinement: Refinement) -> dict[str, bool]:
    return {
        "object": True,
        "probe": refinement.probe,
        "positions": refinement.positions is not None,
        "background": refinement.background and model.background is not None,
    }


def _scales(model, refinement: Refinement, position_scale: float) -> dict[str, Array]:
    """Units in which each leaf is optimised (x = leaf / scale)."""
    on = _trainable(model, refinement)
    scales = {
        "object": jnp.asarray(1.0),
        "probe": jnp.max(jnp.abs(model.probe)),
        "positions": jnp.asarray(position_scale),
        "background": jnp.maximum(jnp.max(model.background), 1.0) if on["background"] else None,
    }
    return {k: (v.astype(model.object.real.dtype) if on[k] else None) for k, v in scales.items()}


def _preconditioner(model, refinement: Refinement, position_scale: float) -> dict:
    """Diagonal Gauss–Newton scaling: x = leaf · √(curvature), so the Hessian in x is ≈ I.

    For the amplitude loss (mean over n frames) the curvature is ≈ Σ_j |P|²(r − r_j) / n for
    the object and ≈ Σ_j |O_j|² / n for the probe; a floor of 1 % of the maximum keeps
    unilluminated pixels from dominating.
    """
    scales = _scales(model, refinement, position_scale)
    n = model.positions.shape[0]
    shape = model.object.shape
    illum = illumination(model.probe, model.positions, shape) / n
    scales["object"] = 1 / jnp.sqrt(jnp.maximum(illum, 0.01 * jnp.max(illum)))
    if scales["probe"] is not None:
        patches = scan.extract_patches(model.object, model.positions, model.probe.shape[-2:])
        cover = jnp.sum(jnp.abs(patches) ** 2, axis=0) / n
        scales["probe"] = 1 / jnp.sqrt(jnp.maximum(cover, 0.01 * jnp.max(cover)))
    return jax.tree_util.tree_map(lambda x: x.astype(model.object.real.dtype), scales)


def _get(model, scales) -> dict[str, Array | None]:
    return {k: (None if s is None else getattr(model, k) / s) for k, s in scales.items()}


def _set(model, params, scales):
    names = [k for k in _LEAVES if scales[k] is not None]
    return eqx.tree_at(
        lambda m: tuple(getattr(m, k) for k in names),
        model,
        tuple(params[k] * scales[k] for k in names),
    )


def batch_loss(
    model,
    data: PtychoData,
    idx: Int[Array, " b"],
    weights: Array,
    loss: str,
    total_weight: Array | None = None,
) -> Array:
    """Weighted mean frame loss of the positions ``idx`` (padding has weight 0).

    ``total_weight`` replaces the batch's own weight in the mean: a device's share of a
    minibatch split over a mesh is normalised by the whole minibatch's.
    """
    frames, mask = data.take_native(idx, model.propagator)
    predicted = scan_intensities(
        model.object,
        model.probe,
        model.positions[idx],
        model.propagator,
        model.background,
        native=True,
        subpixel=proj_subpixel(model),
    )
    per_frame = frame_losses(predicted, frames, mask, loss)
    norm = jnp.sum(weights) if total_weight is None else total_weight
    return jnp.sum(weights * per_frame) / jnp.maximum(norm, 1)


class GradientState(eqx.Module):
    """Optimizer state, leaf scales, shuffle key, reference positions, iteration counter."""

    opt_state: Any
    scales: dict
    key: Array
    positions0: Positions
    iteration: Int[Array, ""]


def _finish(model, refinement: Refinement, state: GradientState):
    """Per-iteration constraints; a trained background is kept non-negative."""
    if refinement.background and model.background is not None:
        model = eqx.tree_at(lambda m: m.background, model, jnp.maximum(model.background, 0.0))
    return end_of_iteration(model, refinement, state.iteration, state.positions0, None)[0]


class MinibatchOptax(NativeLayout, AbstractSolver):
    """Stochastic gradient descent with an optax transformation, one step per minibatch.

    Attributes:
        optimizer: optax transformation (default ``optax.adam(learning_rate)``).
        loss: ``"poisson"`` or ``"amplitude"`` (the objective and the reported loss).
        batch_size: positions per optax step.
        refinement: which leaves besides the object are trained, and constraints.
        position_learning_rate: step scale of positions in pixels relative to the rest.
        seed: seed of the random order.
        mesh: split every minibatch over these devices
            (:func:`~diffptycho.recon.sharding.position_mesh`; ``batch_size`` a multiple of
            their number): each device differentiates its share, the losses and gradients
            are summed across devices. None: one device.

    Examples:
        >>> import optax
        >>> MinibatchOptax(optax.adam(0.01)).batch_size
        256
    """

    optimizer: optax.GradientTransformation = eqx.field(static=True)
    loss: str = eqx.field(static=True, default="amplitude")
    batch_size: int = eqx.field(static=True, default=256)
    refinement: Refinement = eqx.field(default_factory=Refinement)
    position_learning_rate: float = eqx.field(static=True, default=1.0)
    seed: int = eqx.field(static=True, default=0)
    mesh: jax.sharding.Mesh | None = eqx.field(static=True, default=None)

    def init(self, model) -> GradientState:
        """Optimizer state of the trainable leaves (in scaled units)."""
        check_refinement(model, self.refinement)
        scales = _scales(model, self.refinement, self.position_learning_rate)
        opt_state = self.optimizer.init(_get(model, scales))
        key = jax.random.PRNGKey(self.seed)
        return GradientState(opt_state, scales, key, model.positions, jnp.asarray(0))

    def step(self, model, state: GradientState, data: PtychoData):
        """One pass over all positions; returns the model, state and the mean batch loss."""
        n = model.positions.shape[0]
        key, sub = jax.random.split(state.key)
        idx, valid = batch_indices(n, self.batch_size, sub)
        scales, ref = state.scales, self.refinement
        params, opt_state, loss_sum = over_positions(
            lambda args, i, v, axis: args[0]._sweep(*args[1:], i, v, axis),
            self.mesh,
            (self, model, state, data),
            idx,
            valid,
        )
        model = _finish(_set(model, params, scales), ref, state)
        state = GradientState(opt_state, scales, key, state.positions0, state.iteration + 1)
        return model, state, loss_sum / n

    def _sweep(self, model, state: GradientState, data: PtychoData, idx, valid, axis):
        """The minibatch scan; with ``axis`` each device holds its share of every batch."""
        scales = state.scales
        probe_on = state.iteration >= self.refinement.probe_start
        real = model.object.real.dtype

        def objective(params, batch):
            i, w, total = batch
            return batch_loss(_set(model, params, scales), data, i, w, self.loss, total)

        objective = summed(objective, axis)

        def body(carry, xs):
            params, opt_state, loss_sum = carry
            i, v = xs
            w = v.astype(real)
            total = None if axis is None else jax.lax.psum(jnp.sum(w), axis)
            value, grads = jax.value_and_grad(objective)(params, (i, w, total))
            grads = jax.tree_util.tree_map(jnp.conj, grads)
            if grads["probe"] is not None:
                grads["probe"] = jnp.where(probe_on, grads["probe"], 0)
            updates, opt_state = self.optimizer.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            weight = jnp.sum(w) if total is None else total
            return (params, opt_state, loss_sum + value * weight), None

        init = (_get(model, scales), state.opt_state, jnp.zeros((), real))
        carry, _ = jax.lax.scan(body, init, (idx, valid))
        return carry


def adam(learning_rate: float = 0.05, batch_size: int = 256, **options) -> MinibatchOptax:
    """Minibatch Adam on the likelihood (object in transmission units, probe in peak units).

    ``learning_rate`` may also be an optax schedule (counted in minibatch steps).
    """
    return MinibatchOptax(optax.adam(learning_rate), batch_size=batch_size, **options)


def _split(tree):
    return jax.tree_util.tree_map(
        lambda x: jnp.stack([x.real, x.imag], -1) if jnp.iscomplexobj(x) else x, tree
    )


def _merge(tree, like):
    return jax.tree_util.tree_map(
        lambda x, ref: jax.lax.complex(x[..., 0], x[..., 1]) if jnp.iscomplexobj(ref) else x,
        tree,
        like,
    )


def full_loss(model, data: PtychoData, batch_size: int, loss: str) -> Array:
    """Mean frame loss over all positions, as a rematerialised scan over minibatches."""
    n = model.positions.shape[0]
    idx, valid = batch_indices(n, batch_size)
    return _loss_total(model, data, idx, valid, loss) / n


def _loss_total(model, data: PtychoData, idx, valid, loss: str) -> Array:
    """Sum of the frame losses of the minibatches ``idx`` (weights ``valid``)."""
    real = model.object.real.dtype

    @jax.checkpoint
    def body(total, xs):
        i, v = xs
        w = v.astype(real)
        return total + batch_loss(model, data, i, w, loss) * jnp.sum(w), None

    total, _ = jax.lax.scan(body, jnp.zeros((), real), (idx, valid))
    return total


class LBFGS(NativeLayout, AbstractSolver):
    """Full-batch L-BFGS (``optax.lbfgs`` with its zoom line search) on the likelihood.

    Attributes:
        memory_size: number of (step, gradient-change) pairs kept.
        loss: ``"poisson"`` or ``"amplitude"``.
        batch_size: positions per minibatch of the loss scan (memory bound only).
        refinement: which leaves besides the object are trained, and constraints. Constraints
            that move the iterate (support, power) make the curvature pairs inconsistent; keep
            them off unless needed. ``probe_start`` must be 0 (the curvature pairs need a fixed
            set of unknowns): run two stages instead.
        position_learning_rate: unit of positions in pixels relative to the rest.
        mesh: split every minibatch of the loss over these devices
            (:func:`~diffptycho.recon.sharding.position_mesh`; ``batch_size`` a multiple of
            their number): each device differentiates its share, the losses and gradients
            are summed across devices and every device takes the same step. None: one device.

    Examples:
        >>> LBFGS().memory_size
        10
    """

    memory_size: int = eqx.field(static=True, default=10)
    loss: str = eqx.field(static=True, default="amplitude")
    batch_size: int = eqx.field(static=True, default=64)
    refinement: Refinement = eqx.field(default_factory=Refinement)
    position_learning_rate: float = eqx.field(static=True, default=1.0)
    mesh: jax.sharding.Mesh | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        if self.refinement.probe_start != 0:
            raise ValueError(
                "LBFGS: refinement.probe_start must be 0; solve twice (probe=False, then True)"
            )

    def _optimizer(self) -> optax.GradientTransformationExtraArgs:
        return optax.lbfgs(memory_size=self.memory_size)

    def init(self, model) -> GradientState:
        """L-BFGS state of the trainable leaves (real pairs, preconditioned units)."""
        check_refinement(model, self.refinement)
        scales = _preconditioner(model, self.refinement, self.position_learning_rate)
        opt_state = self._optimizer().init(_split(_get(model, scales)))
        key = jax.random.PRNGKey(0)  # unused: L-BFGS is deterministic
        return GradientState(opt_state, scales, key, model.positions, jnp.asarray(0))

    def step(self, model, state: GradientState, data: PtychoData):
        """One L-BFGS step with line search; returns the model, state and the loss before it."""
        scales, ref = state.scales, self.refinement
        like = _get(model, scales)
        idx, valid = batch_indices(model.positions.shape[0], self.batch_size)
        x, opt_state, value = over_positions(
            lambda args, i, v, axis: args[0]._update(*args[1:], i, v, axis),
            self.mesh,
            (self, model, state, data),
            idx,
            valid,
        )
        model = _finish(_set(model, _merge(x, like), scales), ref, state)
        state = GradientState(opt_state, scales, state.key, state.positions0, state.iteration + 1)
        return model, state, value

    def _update(self, model, state: GradientState, data: PtychoData, idx, valid, axis):
        """The L-BFGS update; with ``axis`` each device sums the loss of its share."""
        scales = state.scales
        like = _get(model, scales)
        n = model.positions.shape[0]

        def partial_loss(x, batches):
            return _loss_total(_set(model, _merge(x, like), scales), data, *batches, self.loss) / n

        total_loss = summed(partial_loss, axis)

        def objective(x):
            return total_loss(x, (idx, valid))

        opt = self._optimizer()
        x = _split(like)
        value, grad = optax.value_and_grad_from_state(objective)(x, state=state.opt_state)
        updates, opt_state = opt.update(
            grad, state.opt_state, x, value=value, grad=grad, value_fn=objective
        )
        return optax.apply_updates(x, updates), opt_state, value


def lbfgs(**options) -> LBFGS:
    """Full-batch L-BFGS with zoom line search."""
    return LBFGS(**options)


__all__ = ["GradientState", "LBFGS", "MinibatchOptax", "adam", "batch_loss", "full_loss", "lbfgs"]
