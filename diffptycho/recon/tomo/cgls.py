"""CGLS: conjugate gradients on the normal equations ``(P S)ᴴ (P S) x = (P S)ᴴ p``.

The classic recurrence (Björck) with one projection and one backprojection per iteration. It
minimises ``‖p − P S x‖²`` over the Krylov space and is the fastest of the linear solvers per
iteration; it cannot enforce non-negativity (a clamp breaks conjugacy), so use SIRT, ART or the
gradient solver for that. Complex volumes are solved as they are (the operator has real
weights). The solver state carries the residual of the data it was stepped with: start a new
state for new data.

With ``mesh`` (:func:`~diffptycho.recon.tomo.sharding.tomo_mesh`) the rows or the angles are
split over devices (:mod:`~diffptycho.recon.tomo.sharding`): the norms behind the step lengths
``α`` and ``β`` are summed over the devices, and over angles so are the back-projections.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax

from diffptycho._typing import Angles, Array, Float, Int, Projections, Shaped
from diffptycho.models.tomo import TomoProjections
from diffptycho.physics import tomography
from diffptycho.recon.solve import AbstractSolver
from diffptycho.recon.tomo import operators as ops
from diffptycho.recon.tomo.sharding import (
    PER_ANGLE,
    PROJECTIONS,
    REPLICATED,
    VOLUME,
    Split,
    mesh_axis,
    over_mesh,
    shard_projections,
)

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
        mesh: split the rows (axis ``"slab"``) or the angles (``"angle"``) over its devices
            (:func:`~diffptycho.recon.tomo.sharding.tomo_mesh`); None runs on one device.

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
    mesh: jax.sharding.Mesh | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        if self.mesh is not None:
            mesh_axis(self.mesh)

    def prepare(self, model: TomoProjections, batch: Projections) -> Projections:
        """The projections split over the mesh once (unchanged without one)."""
        return shard_projections(batch, self.mesh)

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

        model_volume, state, loss = over_mesh(
            self._update,
            self.mesh,
            [
                (model.volume, VOLUME),
                (data, PROJECTIONS),
                (angles, PER_ANGLE),
                (self.support, REPLICATED),
                (state.residual, PROJECTIONS),
                (state.direction, VOLUME),
                ((state.gamma, state.iteration), REPLICATED),
            ],
            [VOLUME, (state, _STATE_LAYOUTS), REPLICATED],
            rows=n_y,
            angles=data.shape[0],
        )
        return eqx.tree_at(lambda m: m.volume, model, model_volume), state, loss

    def _update(
        self,
        split: Split,
        volume: Shaped[Array, "z y x"],
        data: Projections,
        angles: Angles,
        support: Float[Array, "z x"] | None,
        residual: Shaped[Array, "angle y t"],
        direction: Shaped[Array, "z y x"],
        scalars: tuple[Float[Array, ""], Int[Array, ""]],
    ) -> tuple[Shaped[Array, "z y x"], CGLSState, Float[Array, ""]]:
        """One iteration on one device's share (all of it without a mesh)."""
        gamma, iteration = scalars
        n_z, _, n_x = volume.shape
        n_det = data.shape[2]
        valid = split.angle_mask(angles.shape[0])

        def forward(v):
            p = tomography.project(ops.apply_support(v, support), angles, n_det=n_det)
            return p if valid is None else p * valid[:, None, None]  # padded angles

        def adjoint(p):
            v = ops.apply_support(tomography.backproject(p, angles, n_z, n_x), support)
            return split.sums(v, PER_ANGLE)

        def norm2(x, layout):
            return split.sums(_norm2(x), layout)

        def fresh(volume):
            residual = data - forward(volume)
            grad = adjoint(residual)
            return residual, grad, norm2(grad, VOLUME).astype(gamma.dtype)

        def carried(volume):
            return residual, direction, gamma

        volume = ops.apply_support(volume, support)
        residual, direction, gamma = lax.cond(iteration == 0, fresh, carried, volume)
        q = forward(direction)
        qq = norm2(q, PROJECTIONS)
        alpha = jnp.where(qq > 0, gamma / jnp.where(qq > 0, qq, 1.0), 0.0)
        volume = volume + alpha * direction
        new_residual = residual - alpha * q
        grad = adjoint(new_residual)
        new_gamma = norm2(grad, VOLUME).astype(gamma.dtype)
        beta = jnp.where(gamma > 0, new_gamma / jnp.where(gamma > 0, gamma, 1.0), 0.0)
        loss = norm2(residual, PROJECTIONS) / jnp.maximum(norm2(data, PROJECTIONS), 1e-30)
        state = CGLSState(new_residual, grad + beta * direction, new_gamma, iteration + 1)
        return volume, state, loss


_STATE_LAYOUTS = CGLSState(PROJECTIONS, VOLUME, REPLICATED, REPLICATED)
"""Layouts of :class:`CGLSState`'s leaves."""
