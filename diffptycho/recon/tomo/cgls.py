"""CGLS: conjugate gradients on the normal equations ``(P S)ᴴ (P S) x = (P S)ᴴ p``.

The classic recurrence (Björck) with one projection and one backprojection per iteration. It
minimises ``‖p − P S x‖²`` over the Krylov space and is the fastest of the linear solvers per
iteration; it cannot enforce non-negativity (a clamp breaks conjugacy), so use SIRT, ART or the
gradient solver for that. Complex volumes are solved as they are (the operator has real
weights). The solver state carries the residual of the data it was stepped with: start a new
state for new data.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jax import lax

from diffptycho._typing import Array, Float, Int, Projections, Shaped
from diffptycho.models.tomo import TomoProjections
from diffptycho.physics import tomography
from diffptycho.recon.solve import AbstractSolver
from diffptycho.recon.tomo import operators as ops

__all__ = ["CGLS", "CGLSState"]


class CGLSState(eqx.Module):
    """Residual ``r = p − P S x``, search direction ``d``, ``γ = ‖(P S)ᴴ r‖²``, iteration."""

    residual: Shaped[Array, "angle y t"]
    direction: Shaped[Array, "z y x"]
    gamma: Float[Array, ""]
    iteration: Int[Array, ""]


def _norm2(x: Array) -> Array:
    return jnp.sum(jnp.abs(x) ** 2)


class CGLS(AbstractSolver):
    """CGLS on a :class:`~diffptycho.models.tomo.TomoProjections` model (module docstring).

    Attributes:
        n_det: detector pixels (default: the volume's n_x).
        support: optional (z, x) mask of voxels that may be non-zero.
        apply_alignment: undo the model's alignment on the data in every step (set False when
            the data were dealigned already).

    Examples:
        >>> import jax.numpy as jnp
        >>> from diffptycho.models.tomo import TomoProjections
        >>> from diffptycho.physics.tomography import project
        >>> from diffptycho.recon.solve import solve
        >>> truth = jnp.zeros((16, 1, 16)).at[5:11, :, 4:9].set(1.0)
        >>> angles = jnp.linspace(0, jnp.pi, 24, endpoint=False)
        >>> start = TomoProjections(jnp.zeros_like(truth), angles, jnp.zeros((24, 4)))
        >>> model, hist = solve(start, CGLS(), project(truth, angles), 20, progress=False)
        >>> bool(hist.loss[-1] < 1e-3 * hist.loss[0])
        True
    """

    n_det: int | None = eqx.field(static=True, default=None)
    support: Array | None = None
    apply_alignment: bool = eqx.field(static=True, default=True)

    def init(self, model: TomoProjections) -> CGLSState:
        """Empty state; the first step computes the initial residual."""
        n_z, n_y, n_x = model.volume.shape
        n_det = n_x if self.n_det is None else self.n_det
        real = ops.real_dtype(model.volume)
        residual = jnp.zeros((model.angles_rad.shape[0], n_y, n_det), model.volume.dtype)
        return CGLSState(
            residual, jnp.zeros_like(model.volume), jnp.zeros((), real), jnp.asarray(0)
        )

    def step(
        self, model: TomoProjections, state: CGLSState, batch: Projections
    ) -> tuple[TomoProjections, CGLSState, Array]:
        """One CG iteration; the loss is ``‖p − P x‖² / ‖p‖²`` before it."""
        data = ops.model_data(model, batch, self.apply_alignment)
        angles = model.angles_rad
        n_z, n_y, n_x = model.volume.shape
        n_det = n_x if self.n_det is None else self.n_det
        ops.check_data(data, angles, n_det, n_y)

        def forward(v):
            return tomography.project(ops.apply_support(v, self.support), angles, n_det=n_det)

        def adjoint(p):
            return ops.apply_support(tomography.backproject(p, angles, n_z, n_x), self.support)

        def fresh(volume):
            residual = data - forward(volume)
            grad = adjoint(residual)
            return residual, grad, _norm2(grad).astype(state.gamma.dtype)

        def carried(volume):
            return state.residual, state.direction, state.gamma

        volume = ops.apply_support(model.volume, self.support)
        residual, direction, gamma = lax.cond(state.iteration == 0, fresh, carried, volume)
        q = forward(direction)
        qq = _norm2(q)
        alpha = jnp.where(qq > 0, gamma / jnp.where(qq > 0, qq, 1.0), 0.0)
        volume = volume + alpha * direction
        new_residual = residual - alpha * q
        grad = adjoint(new_residual)
        new_gamma = _norm2(grad).astype(gamma.dtype)
        beta = jnp.where(gamma > 0, new_gamma / jnp.where(gamma > 0, gamma, 1.0), 0.0)
        loss = _norm2(residual) / jnp.maximum(_norm2(data), 1e-30)
        state = CGLSState(new_residual, grad + beta * direction, new_gamma, state.iteration + 1)
        return eqx.tree_at(lambda m: m.volume, model, volume), state, loss
