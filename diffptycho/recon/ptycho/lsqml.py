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

Cost: per batch one forward and one inverse FFT per mode and position, plus passes over the
patches. On the CPU the probe sums (step 2) and the five inner products of step 3 run as loops
over the positions whose operands stay in cache (:func:`probe_sums`,
:func:`patch_step_products`; batched on accelerators), and the last, partial minibatch runs at
its own size rather than padded: 800 positions in batches of 128 are 6 × 128 + 32, not 7 × 128.
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
from diffptycho.recon.sharding import (
    device_count,
    over_positions,
    psum,
    set_rows,
    sharded_mean,
)
from diffptycho.recon.solve import AbstractSolver


class LSQMLState(eqx.Module):
    """Iteration counter, shuffle key and reference positions."""

    iteration: Int[Array, ""]
    key: Array
    positions0: Positions


def step_products(
    chi: Complex[Array, "b mode py px"],
    object_term: Complex[Array, "b mode py px"],
    probe_term: Complex[Array, "b mode py px"],
) -> Float[Array, "5 b"]:
    """Inner products ⟨a_O,a_O⟩, ⟨a_P,a_P⟩, ⟨a_O,a_P⟩, ⟨a_O,χ⟩, ⟨a_P,χ⟩ per position.

    Every product is Re Σ_m Σ_r conj(a)·b over the modes m and pixels r (photons).

    Args:
        chi: wanted exit-wave change χ_j.
        object_term: a_O = P ΔO_j.
        probe_term: a_P = O_j ΔP.

    Returns:
        ``(5, b)``: the five products in the order above.
    """

    def inner(a, b):
        return jnp.sum(jnp.real(jnp.conj(a) * b), axis=(1, 2, 3))

    a_o, a_p = object_term, probe_term
    return jnp.stack(
        [inner(a_o, a_o), inner(a_p, a_p), inner(a_o, a_p), inner(a_o, chi), inner(a_p, chi)]
    )


def solve_steps(
    products: Float[Array, "5 b"],
    probe_on: Array,
    regularization: float = 1e-3,
    axis_name: str | None = None,
) -> tuple[Float[Array, " b"], Float[Array, " b"]]:
    """The 2 × 2 least-squares solve of :func:`optimal_steps` from :func:`step_products`.

    Args:
        products: ``(5, b)`` from :func:`step_products`.
        probe_on: whether the probe step is solved for (else α_P = 0).
        regularization: Tikhonov weight relative to the diagonal mean, for stability.
        axis_name: mesh axis the batch is split over (the means are the whole batch's), or
            None.

    Returns:
        ``alpha_object (b,)`` and ``alpha_probe (b,)``.
    """
    aoo, app, aop, bo, bp = products
    app = jnp.where(probe_on, app, 1.0)
    aop, bp = jnp.where(probe_on, aop, 0.0), jnp.where(probe_on, bp, 0.0)
    tiny = jnp.finfo(aoo.dtype).tiny
    aoo = aoo + regularization * sharded_mean(aoo, axis_name) + tiny
    app = app + regularization * sharded_mean(app, axis_name) + tiny
    det = aoo * app - aop**2
    return (app * bo - aop * bp) / det, (aoo * bp - aop * bo) / det


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
    products = step_products(chi, object_term, probe_term)
    return solve_steps(products, probe_on, regularization, axis_name)


# ------------------------------------------------------------- per-batch sums, fused on CPU
# XLA's CPU backend materialises every complex intermediate of a batched reduction (its
# reduction kernels take real operands only) and re-reads the patches once per product: the
# batched forms below cost as much as the two FFTs of the batch. On the CPU the same sums run
# patch after patch in a loop whose operands stay in cache; elsewhere the batched forms.


def _probe_sums_batched(chi, patches, weights):
    return proj.probe_numerator(chi, patches), proj.probe_denominator(patches, weights)


def _probe_sums_loop(chi, patches, weights):
    def body(j, acc):
        num, den = acc
        o = patches[j]
        return num + jnp.conj(o)[None] * chi[j], den + weights[j] * jnp.real(jnp.conj(o) * o)

    zero = (jnp.zeros(chi.shape[1:], chi.dtype), jnp.zeros(patches.shape[1:], weights.dtype))
    return jax.lax.fori_loop(0, patches.shape[0], body, zero)


def probe_sums(
    chi: Complex[Array, "b mode py px"],
    patches: Complex[Array, "b py px"],
    weights: Float[Array, " b"],
) -> tuple[Complex[Array, "mode py px"], Float[Array, "py px"]]:
    """Σ_j O_j* χ_jm and Σ_j w_j |O_j|² (:func:`~.projections.probe_numerator`, ``_denominator``).

    One pass over the patches on the CPU (a loop over the positions), batched elsewhere.
    """
    return jax.lax.platform_dependent(
        chi, patches, weights, cpu=_probe_sums_loop, default=_probe_sums_batched
    )


def _products_batched(chi, probe, d_probe, patches, d_patches):
    return step_products(chi, probe[None] * d_patches[:, None], d_probe[None] * patches[:, None])


def _products_loop(chi, probe, d_probe, patches, d_patches):
    # The products of step_products, with the mode sums taken once per batch:
    # |a_O|² = Σ|P|²·|ΔO_j|², |a_P|² = Σ|ΔP|²·|O_j|², ⟨a_O, a_P⟩ = Re Σ ΔO_j*·O_j·(Σ_m P_m*·ΔP_m),
    # ⟨a_O, χ⟩ = Re Σ ΔO_j*·(Σ_m P_m*·χ_jm), ⟨a_P, χ⟩ = Re Σ O_j*·(Σ_m ΔP_m*·χ_jm).
    def power(x):
        return jnp.real(x) ** 2 + jnp.imag(x) ** 2

    p_power, d_power = jnp.sum(power(probe), axis=0), jnp.sum(power(d_probe), axis=0)
    cross = jnp.sum(jnp.conj(probe) * d_probe, axis=0)

    def re_sum(x):
        return jnp.sum(jnp.real(x))

    def body(j, out):
        d, o, c = jnp.conj(d_patches[j]), patches[j], chi[j]
        one = jnp.stack(
            [
                jnp.sum(p_power * jnp.real(d * d_patches[j])),
                jnp.sum(d_power * jnp.real(jnp.conj(o) * o)),
                re_sum(d * o * cross),
                re_sum(d * jnp.sum(jnp.conj(probe) * c, axis=0)),
                re_sum(jnp.conj(o) * jnp.sum(jnp.conj(d_probe) * c, axis=0)),
            ]
        )
        return jax.lax.dynamic_update_slice_in_dim(out, one[:, None], j, axis=1)

    zero = jnp.zeros((5, patches.shape[0]), p_power.dtype)
    return jax.lax.fori_loop(0, patches.shape[0], body, zero)


def patch_step_products(
    chi: Complex[Array, "b mode py px"],
    probe: Complex[Array, "mode py px"],
    d_probe: Complex[Array, "mode py px"],
    patches: Complex[Array, "b py px"],
    d_patches: Complex[Array, "b py px"],
) -> Float[Array, "5 b"]:
    """:func:`step_products` with a_O = P ΔO_j and a_P = O_j ΔP built per position.

    Args:
        chi: wanted exit-wave changes χ_j.
        probe: probe modes P.
        d_probe: probe update direction ΔP.
        patches: object patches O_j.
        d_patches: object update direction at the positions, ΔO_j.

    Returns:
        ``(5, b)`` as :func:`step_products`; one pass over the patches on the CPU.
    """
    return jax.lax.platform_dependent(
        chi,
        probe,
        d_probe,
        patches,
        d_patches,
        cpu=_products_loop,
        default=_products_batched,
    )


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
        """State for ``model``.

        Raises:
            ValueError: a model with ``subpixel="fourier"`` (the step products assume one
                probe for all positions).
        """
        check_refinement(model, self.refinement)
        if proj.subpixel_of(model) != "bilinear":
            raise ValueError(
                "LSQML models sub-pixel positions with bilinear patches only; the model has "
                f"subpixel={proj.subpixel_of(model)!r}: use RAAR, ePIE/rPIE/mPIE or a gradient "
                "engine, or subpixel='bilinear'"
            )
        return LSQMLState(jnp.asarray(0), jax.random.PRNGKey(self.seed), model.positions)

    def step(self, model, state: LSQMLState, data: PtychoData):
        """One pass over all positions; returns the model, state and the mean frame loss."""
        n = model.positions.shape[0]
        key, sub = jax.random.split(state.key)
        idx, valid = batch_indices(n, self.batch_size, sub if self.shuffle else None)
        it, ref = state.iteration, self.refinement
        # The full minibatches in one scan, then the last, partial one at its own (smaller)
        # size instead of padded with weight-0 positions that would cost as much as real ones.
        full, size = n // idx.shape[1], idx.shape[1]
        rest = n - full * size
        parts = [(idx[:full], valid[:full])] if full else []
        if rest:
            width = min(size, -(-rest // device_count(self.mesh)) * device_count(self.mesh))
            parts.append((idx[full:, :width], valid[full:, :width]))
        ratio_sum = loss_sum = 0.0
        for i, v in parts:
            obj, probe, pos, ratio_part, loss_part = over_positions(
                lambda args, i, v, axis: args[0]._sweep(*args[1:], i, v, axis),
                self.mesh,
                (self, model, data, it),
                i,
                v,
            )
            model = eqx.tree_at(
                lambda m: (m.object, m.probe, m.positions), model, (obj, probe, pos)
            )
            ratio_sum, loss_sum = ratio_sum + ratio_part, loss_sum + loss_part
        ratio = model.propagator.from_native(ratio_sum / n)
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
        # n / I summed over the frames feeds only the background update: skipped without it
        keep_ratio = ref.background and model.background is not None

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
                    *probe_sums(r.chi, r.patches, w),
                ),
                axis,
            )
            tiny = jnp.finfo(real).tiny
            d_obj = onum / (illum + reg * jnp.max(illum) + tiny)
            d_probe = pnum / (pden + reg * jnp.max(pden) + tiny)
            d_patches = scan.extract_patches(d_obj, p, probe.shape[-2:])
            products = patch_step_products(r.chi, probe, d_probe, r.patches, d_patches)
            alpha_o, alpha_p = solve_steps(products, probe_on, axis_name=axis)
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
            if keep_ratio:
                ratio_sum = ratio_sum + r.ratio
            return (new_obj, new_probe, new_pos, ratio_sum, loss_sum + r.loss), None

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


__all__ = [
    "LSQML",
    "LSQMLState",
    "lsqml",
    "optimal_steps",
    "patch_step_products",
    "probe_sums",
    "solve_steps",
    "step_products",
]
