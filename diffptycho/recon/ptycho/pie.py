"""The PIE family: ePIE (Maiden & Rodenburg 2009), rPIE and mPIE (Maiden, Johnson & Li 2017).

Position-wise updates, processed in minibatches: every minibatch computes its exit-wave changes
χ_j = F⁻¹(Ψ'_j − Ψ_j) with the same object and probe (``vmap``), then updates them at once;
minibatches follow one another in a ``lax.scan``. With one position per batch this is exactly
the sequential algorithm. For a batch B:

    O ← O + s_O · Σ_j Σ_m P_m* χ_jm / ((1 − α_O) I_B + α_O max I_B),   I_B = Σ_{j∈B} Σ_m |P_m|²
    P_m ← P_m + s_P · Σ_j O_j* χ_jm / ((1 − α_P) D_B + α_P max D_B),   D_B = Σ_{j∈B} |O_j|²

(patches placed at their positions). α = 1 is ePIE with steps s_O, s_P (its α, β); α < 1 is
rPIE's regularised update. mPIE adds momentum once per iteration:
v ← ΔX + friction · v, X ← X + η · v, with ΔX the change over the iteration (PtyLab's form).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from diffptycho._typing import Array, Complex, Int, Positions
from diffptycho.recon.ptycho import projections as proj
from diffptycho.recon.ptycho.constraints import (
    Refinement,
    check_bilinear_positions,
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
from diffptycho.recon.sharding import over_positions, psum, set_rows
from diffptycho.recon.solve import AbstractSolver


class PIEState(eqx.Module):
    """Iteration counter, shuffle key, reference positions and mPIE momentum buffers."""

    iteration: Int[Array, ""]
    key: Array
    positions0: Positions
    object_buffer: Complex[Array, "H W"] | None = None
    object_velocity: Complex[Array, "H W"] | None = None
    probe_buffer: Complex[Array, "mode py px"] | None = None
    probe_velocity: Complex[Array, "mode py px"] | None = None


class PIE(NativeLayout, AbstractSolver):
    """ePIE / rPIE / mPIE as one minibatched engine (see the module docstring).

    Attributes:
        object_step: object step s_O (ePIE's α).
        probe_step: probe step s_P (ePIE's β).
        object_alpha: rPIE regularisation α_O in (0, 1]; 1 is ePIE.
        probe_alpha: rPIE regularisation α_P in (0, 1]; 1 is ePIE.
        momentum: mPIE feedback η (0: no momentum).
        friction: mPIE friction of the velocity.
        batch_size: positions updated together (1: the sequential algorithm).
        shuffle: visit positions in a new random order every iteration.
        refinement: probe, background, positions and constraints.
        loss: noise model of the reported loss (``"poisson"`` or ``"amplitude"``).
        seed: seed of the random order.
        mesh: split every minibatch over these devices
            (:func:`~diffptycho.recon.sharding.position_mesh`; ``batch_size`` a multiple of
            their number); None: one device.

    Examples:
        >>> solver = PIE(object_alpha=0.1, probe_alpha=0.1)  # rPIE
        >>> solver.batch_size
        16
    """

    object_step: float = 1.0
    probe_step: float = 1.0
    object_alpha: float = 1.0
    probe_alpha: float = 1.0
    momentum: float = 0.0
    friction: float = 0.7
    batch_size: int = eqx.field(static=True, default=16)
    shuffle: bool = eqx.field(static=True, default=True)
    refinement: Refinement = eqx.field(default_factory=Refinement)
    loss: str = eqx.field(static=True, default="poisson")
    seed: int = eqx.field(static=True, default=0)
    mesh: jax.sharding.Mesh | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        if not (0 < self.object_alpha <= 1 and 0 < self.probe_alpha <= 1):
            raise ValueError("PIE: object_alpha and probe_alpha must lie in (0, 1]")

    def init(self, model) -> PIEState:
        """State for ``model`` (momentum buffers only when ``momentum > 0``)."""
        check_refinement(model, self.refinement)
        check_bilinear_positions(model, self.refinement, "PIE")
        state = PIEState(jnp.asarray(0), jax.random.PRNGKey(self.seed), model.positions)
        if self.momentum > 0:
            state = eqx.tree_at(
                lambda s: (s.object_buffer, s.object_velocity, s.probe_buffer, s.probe_velocity),
                state,
                (
                    model.object,
                    jnp.zeros_like(model.object),
                    model.probe,
                    jnp.zeros_like(model.probe),
                ),
                is_leaf=lambda x: x is None,
            )
        return state

    def _divide(self, num, den, step, alpha):
        return step * num / ((1 - alpha) * den + alpha * jnp.max(den) + 1e-30)

    def step(self, model, state: PIEState, data: PtychoData):
        """One pass over all positions; returns the model, state and the mean frame loss."""
        n = model.positions.shape[0]
        key, sub = jax.random.split(state.key)
        idx, valid = batch_indices(n, self.batch_size, sub if self.shuffle else None)
        it, ref = state.iteration, self.refinement
        probe_on = jnp.asarray(ref.probe) & (it >= ref.probe_start)
        prop = model.propagator
        obj, probe, pos, ratio_sum, loss_sum = over_positions(
            lambda args, i, v, axis: args[0]._sweep(*args[1:], i, v, axis),
            self.mesh,
            (self, model, data, it),
            idx,
            valid,
        )
        if self.momentum > 0:
            obj, probe, state = self._momentum(obj, probe, state, probe_on)
        model = eqx.tree_at(lambda m: (m.object, m.probe, m.positions), model, (obj, probe, pos))
        ratio = prop.from_native(ratio_sum / n)
        model, mixing = end_of_iteration(model, ref, it, state.positions0, ratio)
        if self.momentum > 0:
            state = eqx.tree_at(
                lambda s: (s.probe_buffer, s.probe_velocity),
                state,
                (model.probe, jnp.einsum("mk,kyx->myx", mixing, state.probe_velocity)),
            )
            state = eqx.tree_at(lambda s: s.object_buffer, state, model.object)
        state = eqx.tree_at(lambda s: (s.iteration, s.key), state, (it + 1, key))
        return model, state, loss_sum / n

    def _sweep(self, model, data: PtychoData, it, idx, valid, axis: str | None):
        """The minibatch scan; with ``axis`` each device holds its share of every batch."""
        ref = self.refinement
        probe_on = jnp.asarray(ref.probe) & (it >= ref.probe_start)
        shape = model.object.shape
        real = model.object.real.dtype
        prop, bg = model.propagator, native_background(model)
        sub = proj.subpixel_of(model)

        def body(carry, xs):
            obj, probe, pos, ratio_sum, loss_sum = carry
            i, v = xs
            w = v.astype(real)
            frames, mask = data.take_native(i, prop)
            at = proj.position_probes(probe, pos[i], sub)  # the shifted probes, once
            r = proj.exit_wave_residual(
                obj, probe, pos[i], prop, bg, frames, mask, w, self.loss, sub, at
            )
            num, den, pnum, pden = psum(
                (
                    proj.object_numerator(r.chi, probe, pos[i], shape, sub, at),
                    proj.illumination(probe, pos[i], shape, w, sub, at),
                    proj.probe_numerator(r.chi, r.patches, at[2]),
                    proj.probe_denominator(r.patches, w),
                ),
                axis,
            )
            new_obj = obj + self._divide(num, den, self.object_step, self.object_alpha)
            dprobe = self._divide(pnum, pden, self.probe_step, self.probe_alpha)
            new_probe = probe + jnp.where(probe_on, dprobe, 0)
            new_pos = pos
            if ref.positions is not None:
                new_pos = set_rows(
                    pos,
                    i,
                    refine_positions(obj, probe, pos[i], r.chi, w, ref.positions, it, axis),
                    axis,
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

    def _momentum(self, obj, probe, state: PIEState, probe_on):
        v_obj = (obj - state.object_buffer) + self.friction * state.object_velocity
        v_probe = (probe - state.probe_buffer) + self.friction * state.probe_velocity
        v_probe = jnp.where(probe_on, v_probe, 0)
        obj = obj + self.momentum * v_obj
        probe = probe + self.momentum * v_probe
        state = eqx.tree_at(
            lambda s: (s.object_velocity, s.probe_velocity), state, (v_obj, v_probe)
        )
        return obj, probe, state


def epie(object_step: float = 1.0, probe_step: float = 1.0, **options) -> PIE:
    """ePIE (Maiden & Rodenburg 2009): steps α = ``object_step``, β = ``probe_step``."""
    return PIE(object_step=object_step, probe_step=probe_step, **options)


def rpie(
    object_alpha: float = 0.1,
    probe_alpha: float = 0.1,
    object_step: float = 0.5,
    probe_step: float = 0.5,
    **options,
) -> PIE:
    """rPIE (Maiden et al. 2017): regularised PIE with weights α_O, α_P.

    The steps default to 0.5 (PtyLab uses 0.25): with α = 0.1 full steps amplify the
    Poisson noise of weakly illuminated pixels.
    """
    return PIE(
        object_alpha=object_alpha,
        probe_alpha=probe_alpha,
        object_step=object_step,
        probe_step=probe_step,
        **options,
    )


def mpie(
    object_alpha: float = 0.1,
    probe_alpha: float = 0.1,
    object_step: float = 0.5,
    probe_step: float = 0.5,
    momentum: float = 0.3,
    friction: float = 0.7,
    **options,
) -> PIE:
    """mPIE (Maiden et al. 2017): rPIE with momentum once per iteration."""
    return PIE(
        object_alpha=object_alpha,
        probe_alpha=probe_alpha,
        object_step=object_step,
        probe_step=probe_step,
        momentum=momentum,
        friction=friction,
        **options,
    )


__all__ = ["PIE", "PIEState", "epie", "mpie", "rpie"]
