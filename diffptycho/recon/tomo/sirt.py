"""SIRT: simultaneous iterative reconstruction with row- and column-sum normalisation.

``x ← x + λ C⁻¹ S Pᵀ R⁻¹ (p − P x)`` with ray lengths ``R = P S 1`` and voxel sums
``C = Pᵀ 1``, both computed once with the shared projector on a single slice (as ASTRA's SIRT).
It converges for 0 < λ < 2 to the ``R⁻¹``-weighted least-squares solution; one iteration costs
one projection and one backprojection of all angles.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp

from diffptycho._typing import Array, Float, Int, Projections
from diffptycho.models.tomo import TomoProjections
from diffptycho.physics import tomography
from diffptycho.recon.solve import AbstractSolver
from diffptycho.recon.tomo import operators as ops

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

    def __check_init__(self):
        if not 0 < self.relaxation < 2:
            raise ValueError(f"relaxation={self.relaxation}: expected 0 < λ < 2 to converge")

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
        residual = data - tomography.project(volume, model.angles_rad, n_det=n_det)
        update = tomography.backproject(residual * state.ray_weights, model.angles_rad, n_z, n_x)
        volume = volume + self.relaxation * update * state.voxel_weights
        if self.nonnegative:
            volume = ops.clip_nonnegative(volume)
        loss = jnp.sum(jnp.abs(residual) ** 2) / jnp.maximum(jnp.sum(jnp.abs(data) ** 2), 1e-30)
        model = eqx.tree_at(lambda m: m.volume, model, volume)
        return model, eqx.tree_at(lambda s: s.iteration, state, state.iteration + 1), loss
