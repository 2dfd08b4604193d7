"""Levenberg–Marquardt for the XANES model on many pixels at once, pixels on the last axis.

Why not ``vmap(optimistix.least_squares)``: measured on 2 CPU cores for 10⁴ pixels × 40
energies, one optimistix LM step costs ~190 ms, dominated by per-matrix LAPACK Cholesky calls
(10⁴ factorisations of 10×10 matrices, ~36 ms) and by the batched small matrix products of the
linearisation and of JᵀJ (≥ 50 ms), for which XLA's CPU layouts are poor when the batch axis
leads. Here every quantity is a stack of (E, n) or (n,) arrays: the Jacobian is closed-form
(:func:`model_and_jacobian`, tested against ``jax.jacfwd``), JᵀJ is 55 reductions over energy,
and the 10×10 Cholesky factorisation is unrolled into elementwise operations across pixels.
The result is the same fit (same optimum as optimistix to float precision on converged pixels)
at a fraction of the cost per step.

Parameters u are unconstrained: p = lo + (hi − lo)·sigmoid(u), except the background
a = a₀ + R·u; residuals are (model − data)/R with R the pixel's amplitude scale.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.special import erf

from diffptycho._typing import Array, Float

__all__ = ["cholesky_solve_unrolled", "levenberg_marquardt", "model_and_jacobian", "to_params"]


def model_and_jacobian(
    p: Float[Array, "10 n"], e: Float[Array, "energy 1"]
) -> tuple[Float[Array, "energy n"], Float[Array, "10 energy n"]]:
    """μt(E) of the erf + 2-Lorentzian model and its closed-form derivatives ∂μt/∂p.

    Args:
        p: parameters (10, n) in the order ``a, b1, b2, b3, c11, c12, c13, c21, c22, c23``.
        e: energies (E, 1) in the same unit and origin as the energy parameters (eV).

    Returns:
        ``(mu, jac)``: μt (E, n) and ∂μt/∂p_k stacked as (10, E, n).
    """
    a, b1, b2, b3, c11, c12, c13, c21, c22, c23 = p
    x = (e - b2) / b3
    step = 0.5 * (1.0 + erf(x))
    gauss = jnp.exp(-x * x) / jnp.sqrt(jnp.pi)
    mu = a + b1 * step
    cols = [jnp.ones_like(x), step, -b1 * gauss / b3, -b1 * gauss * x / b3]
    for h, c, w in ((c11, c12, c13), (c21, c22, c23)):
        q = (e - c) / w
        d = 1.0 / (1.0 + q * q)
        mu = mu + h * d
        cols += [d, 2.0 * h * q * d * d / w, 2.0 * h * q * q * d * d / w]
    return mu, jnp.stack(cols)


def to_params(u, lo, hi, a0, scale):
    """Bounded parameters from unconstrained ones (10, n): sigmoid map, affine background."""
    bounded = lo + (hi - lo) * jax.nn.sigmoid(u)
    return bounded.at[0].set(a0 + scale * u[0])


def _dp_du(u, lo, hi, scale):
    s = jax.nn.sigmoid(u)
    return ((hi - lo) * s * (1.0 - s)).at[0].set(scale)


def cholesky_solve_unrolled(h, b):
    """Solve H x = b for n small SPD systems; H (k, k, n), b (k, n), pixels on the last axis.

    The factorisation is unrolled over the k(k+1)/2 entries, each an elementwise operation on
    (n,) rows: no per-matrix library call.
    """
    k = b.shape[0]
    tiny = jnp.finfo(b.dtype).tiny
    low: list[list] = [[None] * k for _ in range(k)]
    for j in range(k):
        low[j][j] = jnp.sqrt(jnp.maximum(h[j, j] - sum(low[j][m] ** 2 for m in range(j)), tiny))
        for i in range(j + 1, k):
            low[i][j] = (h[i, j] - sum(low[i][m] * low[j][m] for m in range(j))) / low[j][j]
    z: list = []
    for i in range(k):
        z.append((b[i] - sum(low[i][m] * z[m] for m in range(i))) / low[i][i])
    x: list = [None] * k
    for i in reversed(range(k)):
        x[i] = (z[i] - sum(low[m][i] * x[m] for m in range(i + 1, k))) / low[i][i]
    return jnp.stack(x)


def levenberg_marquardt(u0, lo, hi, a0, scale, y, e, *, max_steps: int, gtol: float):
    """Fit n pixels in lockstep (each with its own damping) until all stop or ``max_steps``.

    Marquardt's scaling (damping λ·diag(JᵀJ)) and Nielsen's λ update. A pixel stops when the
    largest cosine between its residual vector and a Jacobian column is ≤ ``gtol`` (MINPACK's
    scale-free optimality test) or when λ > 10¹⁰ (no descent left at this precision).

    Args:
        u0: starting unconstrained parameters (10, n).
        lo: lower bounds (10, n).
        hi: upper bounds (10, n).
        a0: background offset (n,).
        scale: amplitude scale R (n,), μt.
        y: data μt (E, n).
        e: energies (E,), same origin as the energy bounds (eV).
        max_steps: iterations at most.
        gtol: optimality tolerance (cosine).

    Returns:
        ``(u, rms, steps, converged)``: parameters (10, n), RMS residual in μt (n,), steps taken
        (n,), and whether each pixel met ``gtol``.
    """
    e = e[:, None]
    diag_idx = jnp.arange(10)

    def residual(u):
        mu, jac = model_and_jacobian(to_params(u, lo, hi, a0, scale), e)
        return (mu - y) / scale, jac * (_dp_du(u, lo, hi, scale) / scale)[:, None, :]

    def cost(u):
        mu, _ = model_and_jacobian(to_params(u, lo, hi, a0, scale), e)
        return 0.5 * jnp.sum(((mu - y) / scale) ** 2, axis=0)

    def body(state):
        u, lam, nu, f, steps, done = state
        r, jac = residual(u)
        grad = jnp.einsum("ken,en->kn", jac, r)
        hess = jnp.einsum("ien,jen->ijn", jac, jac)
        diag = hess[diag_idx, diag_idx]
        cosine = jnp.abs(grad) / (jnp.sqrt(diag * jnp.sum(r * r, axis=0)) + 1e-30)
        done = done | (jnp.max(cosine, axis=0) <= gtol) | (lam > 1e10)
        damp = jnp.maximum(diag, 1e-9 * jnp.max(diag, axis=0) + 1e-30)
        delta = cholesky_solve_unrolled(hess.at[diag_idx, diag_idx].add(lam * damp), -grad)
        u_new = jnp.clip(u + delta, -25.0, 25.0)  # sigmoid saturates in float32 beyond ±17
        f_new = cost(u_new)
        predicted = -jnp.sum(delta * (grad + 0.5 * jnp.einsum("ijn,jn->in", hess, delta)), 0)
        rho = (f - f_new) / jnp.maximum(predicted, 1e-30)
        ok = (rho > 0) & jnp.isfinite(f_new) & ~done
        return (
            jnp.where(ok, u_new, u),
            jnp.where(ok, lam * jnp.maximum(1 / 3, 1 - (2 * rho - 1) ** 3), lam * nu),
            jnp.where(ok, 2.0, 2.0 * nu),
            jnp.where(ok, f_new, f),
            steps + ~done,
            done,
        )

    def cond(state):
        return (jnp.max(state[4]) < max_steps) & ~jnp.all(state[5])

    n = u0.shape[1]
    ones = jnp.ones(n, u0.dtype)
    state = (u0, 1e-3 * ones, 2.0 * ones, cost(u0), jnp.zeros(n, jnp.int32), jnp.zeros(n, bool))
    u, _, _, f, steps, done = jax.lax.while_loop(cond, body, state)
    return u, jnp.sqrt(2.0 * f / y.shape[0]) * scale, steps, done
