"""SIRT: simultaneous iterative reconstruction with row- and column-sum normalisation.

``x ← x + λ C⁻¹ S Pᵀ R⁻¹ (p − P x)`` with ray lengths ``R = P S 1`` and voxel sums
``C = Pᵀ 1``, both computed once with the shared projector on a single slice (as ASTRA's SIRT).
It converges for 0 < λ < 2 to the ``R⁻¹``-weighted least-squares solution; one iteration costs
one projection and one backprojection of all angles.

With ``mesh`` (:func:`~diffptycho.recon.tomo.sharding.tomo_mesh`) the rows or the angles are
split over devices (:mod:`~diffptycho.recon.tomo.sharding`); over angles, each device
back-projects its share of the residuals and the shares are summed.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

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

__all__ = ["SIRT", "SIRTState"]


class SIRTState(eqx.Module):
    """Reciprocal ray sums (angle, 1, t), reciprocal voxel sums (z, 1, x), iteration count."""

    ray_weights: Float[Array, "angle 1 t"]
    voxel_weights: Float[Array, "z 1 x"]
    iteration: Int[Array, ""]


class SIRT(AbstractSolver):
    """SIRT on a :class:`~diffptycho.models.tomo.TomoProjections` model (module docstring).

    Attributes:
        relaxation: λ, 0 < λ < 2.
        nonnegative: clamp the volume at 0 after each iteration (real and imaginary parts).
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
        >>> model, hist = solve(start, SIRT(), project(truth, angles), 50, progress=False)
        >>> bool(hist.loss[-1] < 1e-2 * hist.loss[0])
        True
    """

    relaxation: float = 1.0
    nonnegative: bool = eqx.field(static=True, default=False)
    n_det: int | None = eqx.field(static=True, default=None)
    support: Array | None = None
    apply_alignment: bool = eqx.field(static=True, default=True)
    mesh: jax.sharding.Mesh | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        if not 0 < self.relaxation < 2:
            raise ValueError(f"relaxation={self.relaxation}: expected 0 < λ < 2 to converge")
        if self.mesh is not None:
            mesh_axis(self.mesh)

    def prepare(self, model: TomoProjections, batch: Projections) -> Projections:
        """The projections split over the mesh once (unchanged without one)."""
        return shard_projections(batch, self.mesh)

    def init(self, model: TomoProjections) -> SIRTState:
        """Ray and voxel sums of the model's geometry."""
        n_z, _, n_x = model.volume.shape
        n_det = n_x if self.n_det is None else self.n_det
        real = ops.real_dtype(model.volume)
        angles = model.angles_rad
        ray = ops.ray_sums(angles, n_z, n_x, n_det, self.support, real)
        voxel = ops.voxel_sums(angles, n_z, n_x, n_det, real)
        if self.support is not None:
            voxel = voxel * jnp.asarray(self.support, real)[:, None, :]
        return SIRTState(ops.safe_reciprocal(ray), ops.safe_reciprocal(voxel), jnp.asarray(0))

    def step(
        self, model: TomoProjections, state: SIRTState, batch: Projections
    ) -> tuple[TomoProjections, SIRTState, Array]:
        """One simultaneous update; the loss is ``‖p − P x‖² / ‖p‖²`` before it."""
        data = ops.model_data(model, batch, self.apply_alignment)
        volume = model.volume
        n_z, n_y, n_x = volume.shape
        n_det = n_x if self.n_det is None else self.n_det
        ops.check_data(data, model.angles_rad, n_det, n_y)
        volume, loss = over_mesh(
            self._update,
            self.mesh,
            [
                (volume, VOLUME),
                (data, PROJECTIONS),
                (model.angles_rad, PER_ANGLE),
                (state.ray_weights, PER_ANGLE),
                (state.voxel_weights, REPLICATED),
            ],
            [VOLUME, REPLICATED],
            rows=n_y,
            angles=data.shape[0],
        )
        model = eqx.tree_at(lambda m: m.volume, model, volume)
        return model, eqx.tree_at(lambda s: s.iteration, state, state.iteration + 1), loss

    def _update(
        self,
        split: Split,
        volume: Shaped[Array, "z y x"],
        data: Projections,
        angles: Angles,
        ray_weights: Float[Array, "angle 1 t"],
        voxel_weights: Float[Array, "z 1 x"],
    ) -> tuple[Shaped[Array, "z y x"], Float[Array, ""]]:
        """One update on one device's share (all of it without a mesh); returns it and the loss."""
        n_z, _, n_x = volume.shape
        residual = data - tomography.project(volume, angles, n_det=data.shape[2])
        valid = split.angle_mask(angles.shape[0])
        if valid is not None:  # padded angles
            residual = residual * valid[:, None, None]
        update = tomography.backproject(residual * ray_weights, angles, n_z, n_x)
        update = split.sums(update, PER_ANGLE)
        volume = volume + self.relaxation * update * voxel_weights
        if self.nonnegative:
            volume = ops.clip_nonnegative(volume)
        squares = split.sums(jnp.sum(jnp.abs(residual) ** 2), PROJECTIONS)
        norm = split.sums(jnp.sum(jnp.abs(data) ** 2), PROJECTIONS)
        return volume, squares / jnp.maximum(norm, 1e-30)
