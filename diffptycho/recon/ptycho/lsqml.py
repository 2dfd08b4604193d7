"""LSQML: least-squares maximum-likelihood ptychography (Odstrčil, Menzel & Guizar-Sicairos 2018).

Per minibatch B (positions processed together, minibatches in sequence):

1. χ_j = F⁻¹(Ψ'_j − Ψ_j), the exit-wave update of the Gaussian (amplitude) likelihood, i.e.
   the Fourier projection of the current exit waves (mixed modes, mask, background).
2. Update directions: ΔO = Σ_j Σ_m P_m* χ_jm / (Σ_j Σ_m |P_m|² + δ_O) (patches placed at their
   positions) and ΔP_m = Σ_j O_j* χ_jm / (Σ_j |O_j|² + δ_P).
3. Optimal steps per position, from the closed-form least squares
   min_{α_O, α_P} ‖χ_j − α_O P ΔO_j − α_P O_j ΔP‖² (a 2 × 2 real system per position).
4. O ← O + β α_O(r) ΔO with α_O(r) the illumination-weighted mean of the α_O,j covering r;
   P ← P + β ⟨α_P,j⟩ ΔP.

Two propagations per mode and position, like the PIE family, but the steps adapt to the data.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from diffptycho._typing import Array, Complex, Float, Int, Positions
from diffptycho.physics import scan
from diffptycho.recon.ptycho import projections as proj
from diffptycho.recon.ptycho.constraints import (
    Refinement,
    check_refinement,
    end_of_iteration,
    refine_positions,
)
from diffptycho.recon.ptycho.data import (
    NativeLayout,
    PtychoData,
    batch_indices,
    native_background,
)
from diffptycho.recon.sharding import over_positions, psum, set_rows, sharded_mean
from diffptycho.recon.solve import AbstractSolver


class LSQMLState(eqx.Module):
    """Iteration counter, shuffle key and reference positions."""

    iteration: Int[Array, ""]
    key: Array
    positions0: Positions


def optimal_steps(
    chi: Complex[Array, "b mode py px"],
    object_term: Complex[Array, "b mode py px"],
    probe_term: Complex[Array, "b mode py px"],
    probe_on: Array,
    regularization: float = 1e-3,
    axis_name: str | None = None,
) -> tuple[Float[Array, " b"], Float[Array, " b"]]:
    """Closed-form steps (α_O, α_P) per position minimising ‖χ − α_O a_O − α_P a_P‖².

    Args:
        chi: wanted exit-wave change χ_j.
        object_term: a_O = P ΔO_j, the exit-wave change of a unit object step.
        probe_term: a_P = O_j ΔP, the exit-wave change of a unit probe step.
        probe_on: whether the probe step is solved for (else α_P = 0).
        regularization: Tikhonov weight relative to the diagonal mean, for stability.
        axis_name: mesh axis the batch is split over (the means are the whole batch's), or
            None.

    Returns:
        ``alpha_object (b,)`` and ``alpha_probe (b,)``.
    """

    def inner(a, b):
        return jnp.sum(jnp.real(jnp.conj(a) * b), axis=(1, 2, 3))

    aoo, app = inner(object_term, object_term), inner(probe_term, probe_term)
    aop = inner(object_term, probe_term)
    bo, bp = inner(object_term, chi), inner(probe_term, chi)
    app = jnp.where(probe_on, app, 1.0)
    aop, bp = jnp.where(probe_on, aop, 0.0), jnp.where(probe_on, bp, 0.0)
    tiny = jnp.finfo(aoo.dtype).tiny
    aoo = aoo + regularization * sharded_mean(aoo, axis_name) + tiny
    app = app + regularization * sharded_mean(app, axis_name) + tiny
    det = aoo * app - aop**2
    return (app * bo - aop * bp) / det, (aoo * bp - aop * bo) / det


class LSQML(NativeLayout, AbstractSolver):
    """Least-squares maximum likelihood with an optimal step per position.

    Attributes:
        relaxation: β, the fraction of the optimal step taken (Odstrčil's β_LSQ).
        regularization: δ / max(denominator) in the update directions.
        batch_size: positions per minibatch. Large sets (a quarter of the scan or more)
            reach the likelihood optimum; small ones stall at a noise-dependent error.
        shuffle: new random order every iteration.
        refinement: probe, background, positions and constraints.
        loss: noise model of the reported loss (``"poisson"`` or ``"amplitude"``).
        seed: seed of the random order.
        mesh: split every minibatch over these devices
            (:func:`~diffptycho.recon.sharding.position_mesh`; ``batch_size`` a multiple of
            their number); None: one device.

    Examples:
        >>> LSQML().relaxation
        0.9
    """

    relaxation: float = 0.9
    regularization: float = 0.05
    batch_size: int = eqx.field(static=True, default=128)
    shuffle: bool = eqx.field(static=True, default=True)
    refinement: Refinement = eqx.field(default_factory=Refinement)
    loss: str = eqx.field(static=True, default="poisson")
    seed: int = eqx.field(static=True, default=0)
    mesh: jax.sharding.Mesh | None = eqx.field(static=True, default=None)

    def init(self, model) -> LSQMLState:
        """State for ``model``."""
        check_refinement(model, self.refinement)
        return LSQMLState(jnp.asarray(0), jax.random.PRNGKey(self.seed), model.positions)

    def step(self, model, state: LSQMLState, data: PtychoData):
        """One pass over all positions; returns the model, state and the mean frame loss."""
        n = model.positions.shape[0]
        key, sub = jax.random.split(state.key)
        idx, valid = batch_indices(n, self.batch_size, sub if self.shuffle else None)
        it, ref = state.iteration, self.refinement
        obj, probe, pos, ratio_sum, loss_sum = over_positions(
            lambda args, i, v, axis: args[0]._sweep(*args[1:], i, v, axis),
            self.mesh,
            (self, model, data, it),
            idx,
            valid,
        )
        prop = model.propagator
        model = eqx.tree_at(lambda m: (m.object, m.probe, m.positions), model, (obj, probe, pos))
        ratio = prop.from_native(ratio_sum / n)
        model, _ = end_of_iteration(model, ref, it, state.positions0, ratio)
        return model, LSQMLState(it + 1, key, state.positions0), loss_sum / n

    def _sweep(self, model, data: PtychoData, it, idx, valid, axis: str | None):
        """The minibatch scan; with ``axis`` each device holds its share of every batch."""
        ref = self.refinement
        probe_on = jnp.asarray(ref.probe) & (it >= ref.probe_start)
        shape = model.object.shape
        real = model.object.real.dtype
        reg, beta = self.regularization, self.relaxation
        prop, bg = model.propagator, native_background(model)

        def body(carry, xs):
            obj, probe, pos, ratio_sum, loss_sum = carry
            i, v = xs
            w = v.astype(real)
            frames, mask = data.take_native(i, prop)
            p = pos[i]
            r = proj.exit_wave_residual(obj, probe, p, prop, bg, frames, mask, w, self.loss)
            illum, onum, pnum, pden = psum(
                (
                    proj.illumination(probe, p, shape, w),
                    proj.object_numerator(r.chi, probe, p, shape),
                    proj.probe_numerator(r.chi, r.patches),
                    proj.probe_denominator(r.patches, w),
                ),
                axis,
            )
            tiny = jnp.finfo(real).tiny
            d_obj = onum / (illum + reg * jnp.max(illum) + tiny)
            d_probe = pnum / (pden + reg * jnp.max(pden) + tiny)
            d_patches = scan.extract_patches(d_obj, p, probe.shape[-2:])
            a_obj = probe[None] * d_patches[:, None]
            a_probe = d_probe[None] * r.patches[:, None]
            alpha_o, alpha_p = optimal_steps(r.chi, a_obj, a_probe, probe_on, axis_name=axis)
            power = jnp.sum(jnp.abs(probe) ** 2, axis=0)
            weight, alpha_p_sum, w_sum = psum(
                (
                    scan.insert_patches((w * alpha_o)[:, None, None] * power[None], p, shape),
                    jnp.sum(w * alpha_p),
                    jnp.sum(w),
                ),
                axis,
            )
            alpha_map = weight / (illum + reg * jnp.max(illum) + tiny)
            new_obj = obj + beta * alpha_map * d_obj
            mean_alpha_p = alpha_p_sum / jnp.maximum(w_sum, 1)
            new_probe = probe + jnp.where(probe_on, beta * mean_alpha_p * d_probe, 0)
            new_pos = pos
            if ref.positions is not None:
                new_pos = set_rows(
                    pos, i, refine_positions(obj, probe, p, r.chi, w, ref.positions, it, axis), axis
                )
            return (new_obj, new_probe, new_pos, ratio_sum + r.ratio, loss_sum + r.loss), None

        init = (
            model.object,
            model.probe,
            model.positions,
            jnp.zeros(data.frames.shape[-2:], real),
            jnp.zeros((), real),
        )
        (obj, probe, pos, ratio_sum, loss_sum), _ = jax.lax.scan(body, init, (idx, valid))
        ratio_sum, loss_sum = psum((ratio_sum, loss_sum), axis)
        return obj, probe, pos, ratio_sum, loss_sum


def lsqml(**options) -> LSQML:
    """LSQML (Odstrčil et al. 2018) with default settings."""
    return LSQML(**options)


__all__ = ["LSQML", "LSQMLState", "lsqml", "optimal_steps"]
