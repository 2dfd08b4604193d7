"""ART and SART: block-iterative (row-action) reconstruction, one projection per block.

One **iteration is one full sweep** over all projections. Within a sweep, projections are
visited in acquisition order (the order of ``angles_rad``) or in a fresh random permutation per
sweep (``order="random"``, seeded), and each projection θ updates the volume at once:

- **ART** (block Kaczmarz): ``x ← x + λ S P_θᵀ D_θ⁻¹ (p_θ − P_θ x)`` with
  ``D_θ = P_θ S P_θᵀ 1`` the row sums of the block's Gram matrix. For rays that share no voxel
  this *is* Kaczmarz's ray-by-ray ART (their updates commute and ``D`` is the ray norm ``‖a_i‖²``);
  for the overlapping rays of a linear-interpolation projector it is the diagonal majoriser
  that keeps every block update a contraction for 0 < λ < 2.
- **SART** (Andersen & Kak 1984, as in ASTRA): ``x ← x + λ C_θ⁻¹ P_θᵀ R_θ⁻¹ (p_θ − P_θ x)`` with
  ray lengths ``R_θ = P_θ S 1`` and per-projection voxel sums ``C_θ = P_θᵀ 1``.

Both use the shared projector pair and run a sweep as one ``lax.scan`` over projections (one
compiled step per sweep). Inside the scan the volume is kept y-last, ``(z, x, y)``, the layout
the projector gathers from, so the per-projection transposes cancel out.

The loss reported per sweep is ``Σ_θ ‖p_θ − P_θ x‖² / ‖p‖²`` accumulated *during* the sweep
(each residual is taken just before its projection's update), which costs nothing extra.

With ``mesh`` (:func:`~diffptycho.recon.tomo.sharding.tomo_mesh` with axis ``"slab"``) the
rows are split over devices and only the loss is summed over them. The angles cannot be
split: each block update needs the volume left by the previous one.
"""

from __future__ import annotations

import abc

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
    ANGLE,
    PROJECTIONS,
    REPLICATED,
    VOLUME,
    Split,
    mesh_axis,
    over_mesh,
    shard_projections,
)

__all__ = ["ART", "SART", "BlockState", "kaczmarz_sweep"]

_PER_VIEW_BYTES = 512 * 2**20
"""Above this size, SART's per-projection voxel sums are recomputed in the sweep, not stored."""


class BlockState(eqx.Module):
    """State of :class:`ART` / :class:`SART`.

    Attributes:
        ray_weights: reciprocal normalisation of each ray (angle, 1, t).
        voxel_weights: SART's reciprocal per-projection voxel sums (angle, z, x, 1), or None
            (ART, or recomputed on the fly for large problems).
        key: PRNG key of the random order.
        sweep: number of completed sweeps.
    """

    ray_weights: Float[Array, "angle 1 t"]
    voxel_weights: Float[Array, "angle z x 1"] | None
    key: Array
    sweep: Int[Array, ""]


def kaczmarz_sweep(
    volume_zxy: Shaped[Array, "z x y"],
    data: Projections,
    angles_rad: Angles,
    order: Int[Array, " angle"],
    ray_weights: Float[Array, "angle 1 t"],
    voxel_weights: Float[Array, "angle z x 1"] | None,
    *,
    relaxation: float,
    nonnegative: bool = False,
    support: Float[Array, "z x"] | None = None,
    per_view_voxel_sums: bool = False,
) -> tuple[Shaped[Array, "z x y"], Float[Array, " angle"]]:
    """One sweep of block updates ``x ← x + λ W_θ P_θᵀ V_θ (p_θ − P_θ x)`` (pure function).

    Args:
        volume_zxy: current volume with y last (z, x, y), real or complex.
        data: measured projections in volume units × voxels (angle, y, t).
        angles_rad: rotation angles in rad (angle,).
        order: projection indices in the order visited (a permutation of range(angle)).
        ray_weights: ``V_θ`` (angle, 1, t), applied to the residual.
        voxel_weights: ``W_θ`` (angle, z, x, 1) applied to the update, or None for none.
        relaxation: λ (dimensionless), 0 < λ < 2.
        nonnegative: clamp the volume at 0 after each block (real and imaginary parts).
        support: (z, x) mask; updates outside it are zeroed.
        per_view_voxel_sums: compute ``W_θ = 1 / P_θᵀ 1`` inside the sweep instead of reading
            ``voxel_weights`` (saves memory, costs one single-slice backprojection per block).

    Returns:
        ``(volume_zxy, squared residual norm of each visited projection)``.
    """
    n_z, n_x, _ = volume_zxy.shape
    n_det = data.shape[2]
    real = ops.real_dtype(volume_zxy)
    mask = None if support is None else jnp.asarray(support, real)[:, :, None]

    def block(volume, k):
        theta = angles_rad[k][None]
        residual = data[k] - tomography.project(jnp.swapaxes(volume, 1, 2), theta, n_det=n_det)[0]
        scaled = (residual * ray_weights[k])[None]
        update = jnp.swapaxes(tomography.backproject(scaled, theta, n_z, n_x), 1, 2)
        if per_view_voxel_sums:
            ones = jnp.ones((1, 1, n_det), real)
            sums = tomography.backproject(ones, theta, n_z, n_x)
            update = update * ops.safe_reciprocal(jnp.swapaxes(sums, 1, 2))
        elif voxel_weights is not None:
            update = update * voxel_weights[k]
        if mask is not None:
            update = update * mask
        volume = volume + relaxation * update
        if nonnegative:
            volume = ops.clip_nonnegative(volume)
        return volume, jnp.sum(jnp.abs(residual) ** 2)

    return lax.scan(block, volume_zxy, order)


class AbstractBlockIterative(AbstractSolver):
    """One sweep of block updates per ``step``; subclasses choose the normalisation."""

    relaxation: eqx.AbstractVar[float]
    order: eqx.AbstractVar[str]
    nonnegative: eqx.AbstractVar[bool]
    seed: eqx.AbstractVar[int]
    n_det: eqx.AbstractVar[int | None]
    support: eqx.AbstractVar[Array | None]
    apply_alignment: eqx.AbstractVar[bool]
    mesh: eqx.AbstractVar[jax.sharding.Mesh | None]

    def __check_init__(self):
        if self.order not in ("acquisition", "random"):
            raise ValueError(f"order={self.order!r}: expected 'acquisition' or 'random'")
        if not 0 < self.relaxation < 2:
            raise ValueError(f"relaxation={self.relaxation}: expected 0 < λ < 2 to converge")
        if self.mesh is not None and mesh_axis(self.mesh)[0] == ANGLE:
            raise ValueError(
                f"mesh: {type(self).__name__} updates the volume after each projection in "
                "turn, so its angles cannot be split over devices; split the rows instead "
                "(tomo_mesh(devices, axis='slab'))"
            )

    def prepare(self, model: TomoProjections, batch: Projections) -> Projections:
        """The projections split over the mesh once (unchanged without one)."""
        return shard_projections(batch, self.mesh)

    @abc.abstractmethod
    def _weights(
        self, angles: Angles, n_z: int, n_x: int, n_det: int, dtype
    ) -> tuple[Array, Array | None]:
        """``(ray weights (angle, 1, t), voxel weights (angle, z, x, 1) or None)``."""

    def init(self, model: TomoProjections) -> BlockState:
        """Normalisation weights from the model's geometry (computed on one slice)."""
        n_z, _, n_x = model.volume.shape
        n_det = n_x if self.n_det is None else self.n_det
        real = ops.real_dtype(model.volume)
        ray_w, voxel_w = self._weights(model.angles_rad, n_z, n_x, n_det, real)
        return BlockState(ray_w, voxel_w, jax.random.key(self.seed), jnp.asarray(0))

    def step(
        self, model: TomoProjections, state: BlockState, batch: Projections
    ) -> tuple[TomoProjections, BlockState, Array]:
        """One sweep over all projections; the loss is the in-sweep relative residual."""
        data = ops.model_data(model, batch, self.apply_alignment)
        n_z, n_y, n_x = model.volume.shape
        n_det = n_x if self.n_det is None else self.n_det
        ops.check_data(data, model.angles_rad, n_det, n_y)
        n_angles = data.shape[0]
        if self.order == "random":
            order = jax.random.permutation(jax.random.fold_in(state.key, state.sweep), n_angles)
        else:
            order = jnp.arange(n_angles)
        on_the_fly = self._weights_on_the_fly(n_angles, n_z, n_x)

        def sweep(split: Split, volume, data, replicated):
            angles, order, ray_weights, voxel_weights, support = replicated
            volume, squares = kaczmarz_sweep(
                jnp.swapaxes(volume, 1, 2),
                data,
                angles,
                order,
                ray_weights,
                voxel_weights,
                relaxation=self.relaxation,
                nonnegative=self.nonnegative,
                support=support,
                per_view_voxel_sums=on_the_fly,
            )
            squares = split.sums(jnp.sum(squares), PROJECTIONS)
            norm = split.sums(jnp.sum(jnp.abs(data) ** 2), PROJECTIONS)
            return jnp.swapaxes(volume, 1, 2), squares / jnp.maximum(norm, 1e-30)

        volume, loss = over_mesh(
            sweep,
            self.mesh,
            [
                (model.volume, VOLUME),
                (data, PROJECTIONS),
                (
                    (model.angles_rad, order, state.ray_weights, state.voxel_weights, self.support),
                    REPLICATED,
                ),
            ],
            [VOLUME, REPLICATED],
            rows=n_y,
            angles=n_angles,
        )
        model = eqx.tree_at(lambda m: m.volume, model, volume)
        return model, eqx.tree_at(lambda s: s.sweep, state, state.sweep + 1), loss

    def _weights_on_the_fly(self, n_angles: int, n_z: int, n_x: int) -> bool:
        return False


class ART(AbstractBlockIterative):
    """Block-Kaczmarz ART: one sweep over all projections per iteration (module docstring).

    Attributes:
        relaxation: λ, 0 < λ < 2 (1 = full Kaczmarz projection).
        order: ``"acquisition"`` (order of the angles) or ``"random"`` (new permutation each
            sweep, from ``seed``).
        nonnegative: clamp the volume at 0 after each block update.
        seed: seed of the random order.
        n_det: detector pixels (default: the volume's n_x).
        support: optional (z, x) mask of voxels that may be non-zero (a region of interest).
        apply_alignment: undo the model's alignment on the measured projections in every step;
            set False when the data were dealigned already (:func:`~diffptycho.recon.tomo.
            operators.dealign`).
        mesh: split the rows over its devices (:func:`~diffptycho.recon.tomo.sharding.
            tomo_mesh` with axis ``"slab"``); None runs on one device.

    Examples:
        >>> import jax.numpy as jnp
        >>> from diffptycho.models.tomo import TomoProjections
        >>> from diffptycho.physics.tomography import project
        >>> from diffptycho.recon.solve import solve
        >>> truth = jnp.zeros((16, 1, 16)).at[5:11, :, 4:9].set(1.0)
        >>> angles = jnp.linspace(0, jnp.pi, 24, endpoint=False)
        >>> start = TomoProjections(jnp.zeros_like(truth), angles, jnp.zeros((24, 4)))
        >>> model, hist = solve(start, ART(), project(truth, angles), 10, progress=False)
        >>> bool(hist.loss[-1] < 1e-3 * hist.loss[0])
        True
    """

    relaxation: float = 1.0
    order: str = eqx.field(static=True, default="acquisition")
    nonnegative: bool = eqx.field(static=True, default=False)
    seed: int = eqx.field(static=True, default=0)
    n_det: int | None = eqx.field(static=True, default=None)
    support: Array | None = None
    apply_alignment: bool = eqx.field(static=True, default=True)
    mesh: jax.sharding.Mesh | None = eqx.field(static=True, default=None)

    def _weights(self, angles, n_z, n_x, n_det, dtype):
        d = ops.gram_sums(angles, n_z, n_x, n_det, self.support, dtype)
        return ops.safe_reciprocal(d), None


class SART(AbstractBlockIterative):
    """SART (Andersen & Kak 1984): ART with ray-length and voxel-sum normalisation.

    Attributes are those of :class:`ART`. The per-projection voxel sums ``C_θ`` (angle, z, x)
    are stored when they take less than 512 MiB, and otherwise recomputed in every block.
    """

    relaxation: float = 1.0
    order: str = eqx.field(static=True, default="acquisition")
    nonnegative: bool = eqx.field(static=True, default=False)
    seed: int = eqx.field(static=True, default=0)
    n_det: int | None = eqx.field(static=True, default=None)
    support: Array | None = None
    apply_alignment: bool = eqx.field(static=True, default=True)
    mesh: jax.sharding.Mesh | None = eqx.field(static=True, default=None)

    def _weights(self, angles, n_z, n_x, n_det, dtype):
        ray_w = ops.safe_reciprocal(ops.ray_sums(angles, n_z, n_x, n_det, self.support, dtype))
        if self._weights_on_the_fly(angles.shape[0], n_z, n_x):
            return ray_w, None
        sums = ops.per_view_voxel_sums(angles, n_z, n_x, n_det, dtype)
        return ray_w, ops.safe_reciprocal(jnp.swapaxes(sums, 2, 3))  # (angle, z, x, 1)

    def _weights_on_the_fly(self, n_angles: int, n_z: int, n_x: int) -> bool:
        return n_angles * n_z * n_x * 4 > _PER_VIEW_BYTES
