"""Gradient-based tomography (optax) through the model, with non-negativity and total variation.

The loss of a :class:`~diffptycho.models.tomo.TomoProjections` model against measured
projections ``p`` is

    L(x) = ‖A(x) − p‖² / ‖p‖²  +  τ · TV(s x) / ⟨Σ|p_θ|⟩_θ

with ``A`` the model's full forward chain (projection × voxel size, then its alignment — so
alignment parameters are honoured exactly, no dealigning), ``s`` the voxel size, ``TV`` the
isotropic total variation over (z, y, x) (smoothed by ``ε``) and ``⟨Σ|p_θ|⟩_θ`` the mean total
of one projection, which equals ``Σ|s x|`` for a non-negative object: both terms are
dimensionless and independent of the data's scale, so ``τ`` (``tv_weight``) transfers between
data sets. Non-negativity is a projection after each update (real and imaginary parts of a
complex volume separately). Each step costs one projection and one backprojection (the
projector's reverse mode is its hand-written adjoint).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from diffptycho._typing import Array, Float, Projections, Shaped
from diffptycho.models.tomo import TomoProjections
from diffptycho.physics import tomography
from diffptycho.recon.solve import AbstractSolver, History, OptaxSolver, solve
from diffptycho.recon.tomo import operators as ops
from diffptycho.recon.tomo.sharding import (
    ANGLE,
    PER_ANGLE,
    PROJECTIONS,
    REPLICATED,
    SLAB,
    VOLUME,
    Split,
    mesh_axis,
    over_mesh,
    shard_projections,
    slab_total_variation,
    split_total,
)

__all__ = [
    "MeshGradientSolver",
    "TomoLoss",
    "gradient_reconstruct",
    "gradient_solver",
    "squared_gradient",
    "total_variation",
    "volume_scale",
]


def total_variation(volume: Shaped[Array, "z y x"], eps: float | Array = 0.0) -> Float[Array, ""]:
    """Isotropic total variation ``Σ √(|∇u|² + ε²)`` with forward differences.

    Args:
        volume: (z, y, x) real or complex volume (complex: real and imaginary gradients
            together).
        eps: smoothing in the volume's units, keeps the gradient finite at ∇u = 0.

    Returns:
        Scalar TV in volume units × voxels².

    Examples:
        >>> import jax.numpy as jnp
        >>> step = jnp.zeros((4, 4, 4)).at[:, :, 2:].set(1.0)
        >>> float(total_variation(step))  # a unit step across a 4 × 4 face
        16.0
    """
    return jnp.sum(jnp.sqrt(squared_gradient(volume) + jnp.asarray(eps) ** 2))


def squared_gradient(volume: Shaped[Array, "z y x"]) -> Float[Array, "z y x"]:
    """Per-voxel ``|∇u|²`` of :func:`total_variation` (forward differences, zero at the end).

    Args:
        volume: (z, y, x) real or complex volume.

    Returns:
        (z, y, x) squared gradient magnitude.
    """
    v = jnp.asarray(volume)
    diffs = [jnp.diff(v, axis=a, append=jnp.take(v, jnp.array([-1]), axis=a)) for a in range(3)]
    return sum(jnp.abs(d) ** 2 for d in diffs)


def volume_scale(projections: Projections) -> Float[Array, ""]:
    """Typical voxel value implied by the data, ``2 max|p| / n_det`` (volume units × voxels).

    It is the value of a uniform object spanning half the detector that would give ``max|p|``.
    """
    p = jnp.asarray(projections)
    return 2 * jnp.max(jnp.abs(p)) / p.shape[-1]


class TomoLoss(eqx.Module):
    """The loss in the module docstring, ``loss(model, projections) -> scalar``.

    Attributes:
        tv_weight: τ ≥ 0 (dimensionless).
        tv_eps: TV smoothing relative to :func:`volume_scale`.
    """

    tv_weight: float = 0.0
    tv_eps: float = 1e-3

    def __call__(self, model: TomoProjections, projections: Projections) -> Float[Array, ""]:
        """Relative data misfit plus the scaled total variation."""
        p = jnp.asarray(projections)
        misfit = jnp.sum(jnp.abs(model() - p) ** 2) / jnp.maximum(jnp.sum(jnp.abs(p) ** 2), 1e-30)
        if self.tv_weight == 0:
            return misfit
        mass = jnp.maximum(jnp.sum(jnp.abs(p)) / p.shape[0], 1e-30)
        eps = self.tv_eps * volume_scale(p)
        tv = total_variation(model.volume * model.voxel_size_m, eps)
        return misfit + self.tv_weight * tv / mass


def gradient_reconstruct(
    model: TomoProjections,
    projections: Projections,
    iterations: int,
    *,
    learning_rate: float = 0.2,
    tv_weight: float = 0.0,
    nonnegative: bool = False,
    support: Float[Array, "z x"] | None = None,
    optimizer: optax.GradientTransformation | None = None,
    mesh: jax.sharding.Mesh | None = None,
    progress: bool = True,
    description: str = "adam",
    callback: Callable[[int, TomoProjections, float], None] | None = None,
    **solve_options: Any,
) -> tuple[TomoProjections, History]:
    """Fit the model's volume to measured projections with Adam (or any optax optimizer).

    Args:
        model: starting model (its volume is the unknown; angles and alignment stay fixed).
        projections: measured (angle, y, t) projections, ∫u dz in the units of ``model()``.
        iterations: number of optimizer steps (each one projection + one backprojection).
        learning_rate: Adam step relative to the typical voxel value :func:`volume_scale`
            (dimensionless); decays with a cosine schedule to 5 % of it at the end.
        tv_weight: τ of the total-variation term (0 disables it).
        nonnegative: project the volume on ≥ 0 after each step.
        support: (z, x) mask of voxels allowed to be non-zero (applied after each step).
        optimizer: an optax transformation overriding the default Adam schedule (its
            update must act voxel by voxel to be split over slabs, as Adam's does).
        mesh: split the rows (axis ``"slab"``) or the angles (``"angle"``) over its devices
            (:func:`~diffptycho.recon.tomo.sharding.tomo_mesh`); None runs on one device.
        progress: show a progress bar.
        description: progress-bar label.
        callback: ``callback(iteration, model, loss)`` after each step (see ``solve``).
        solve_options: further options of :func:`~diffptycho.recon.solve.solve`
            (``resume``, ``checkpoint``, ``checkpoint_every``, ``keep_best``, ``watch``).

    Returns:
        The fitted model and the loss :class:`~diffptycho.recon.solve.History`.

    Examples:
        >>> import jax.numpy as jnp
        >>> from diffptycho.physics.tomography import project
        >>> truth = jnp.zeros((16, 1, 16)).at[5:11, :, 4:9].set(1.0)
        >>> angles = jnp.linspace(0, jnp.pi, 24, endpoint=False)
        >>> start = TomoProjections(jnp.zeros_like(truth), angles, jnp.zeros((24, 4)))
        >>> model, hist = gradient_reconstruct(start, project(truth, angles), 100,
        ...                                    nonnegative=True, progress=False)
        >>> bool(hist.loss[-1] < 1e-2 * hist.loss[0])
        True
    """
    solver, model = gradient_solver(
        model,
        projections,
        iterations,
        learning_rate=learning_rate,
        tv_weight=tv_weight,
        nonnegative=nonnegative,
        support=support,
        optimizer=optimizer,
        mesh=mesh,
    )
    return solve(
        model,
        solver,
        jnp.asarray(projections),
        iterations,
        progress=progress,
        description=description,
        callback=callback,
        **solve_options,
    )


def gradient_solver(
    model: TomoProjections,
    projections: Projections,
    iterations: int,
    *,
    learning_rate: float = 0.2,
    tv_weight: float = 0.0,
    nonnegative: bool = False,
    support: Float[Array, "z x"] | None = None,
    optimizer: optax.GradientTransformation | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> tuple[AbstractSolver, TomoProjections]:
    """The solver of :func:`gradient_reconstruct` and its starting model (support applied).

    Arguments as for :func:`gradient_reconstruct`; for callers that run
    :func:`~diffptycho.recon.solve.solve` themselves (e.g. to checkpoint it). The solver is
    an :class:`~diffptycho.recon.solve.OptaxSolver`, or with a mesh a
    :class:`MeshGradientSolver` around one.

    Raises:
        ValueError: a slab mesh with a model whose alignment is not zero (y shifts mix the
            rows of different devices: dealign the data first).
    """
    if mesh is not None and mesh_axis(mesh)[0] == SLAB:
        try:
            aligned = bool(np.any(np.asarray(model.alignment) != 0))
        except jax.errors.TracerArrayConversionError:  # traced: the caller's responsibility
            aligned = False
        if aligned:
            raise ValueError(
                "mesh: a slab split needs a model without alignment (y shifts mix rows of "
                "different devices); dealign the projections first "
                "(diffptycho.recon.tomo.dealign) or split the angles"
            )
    p = jnp.asarray(projections)
    if jnp.iscomplexobj(p) and not jnp.iscomplexobj(model.volume):
        raise ValueError("complex projections need a complex volume (phase and absorption)")
    if optimizer is None:
        scale = float(volume_scale(p)) / model.voxel_size_m
        schedule = optax.cosine_decay_schedule(
            learning_rate * scale, max(iterations, 1), alpha=0.05
        )
        optimizer = optax.adam(schedule)

    def constraint(m: TomoProjections) -> TomoProjections:
        volume = ops.apply_support(m.volume, support)
        volume = ops.clip_nonnegative(volume) if nonnegative else volume
        return eqx.tree_at(lambda mm: mm.volume, m, volume)

    if support is not None:
        model = constraint(model)
    solver = OptaxSolver(
        TomoLoss(tv_weight=tv_weight),
        optimizer,
        lambda m: m.volume,
        constraint if nonnegative or support is not None else None,
    )
    if mesh is not None:
        solver = MeshGradientSolver(solver, mesh)
    return solver, model


class MeshGradientSolver(AbstractSolver):
    """A gradient solver's steps on every device's share of a mesh (module docstring).

    Over slabs the volume, the optimizer's per-voxel state and the projections are split
    along y; over angles the projections, angles and alignment are split and the volume is
    replicated. The model's alignment is ignored over slabs (:func:`gradient_solver` refuses
    a non-zero one).

    Attributes:
        solver: the single-device solver (an :class:`~diffptycho.recon.solve.OptaxSolver`
            with a :class:`TomoLoss`; its optimizer must act voxel by voxel over slabs).
        mesh: a mesh from :func:`~diffptycho.recon.tomo.sharding.tomo_mesh`.
    """

    solver: OptaxSolver
    mesh: jax.sharding.Mesh = eqx.field(static=True)

    def __check_init__(self):
        mesh_axis(self.mesh)
        if not isinstance(self.solver.loss, TomoLoss):
            raise ValueError(
                f"solver: expected an OptaxSolver with a TomoLoss, got loss {self.solver.loss!r}"
            )

    def init(self, model: TomoProjections) -> Any:
        """The optimizer state of the single-device solver."""
        return self.solver.init(model)

    def prepare(self, model: TomoProjections, batch: Projections) -> Projections:
        """The projections split over the mesh once."""
        return shard_projections(batch, self.mesh)

    def step(
        self, model: TomoProjections, state: Any, batch: Projections
    ) -> tuple[TomoProjections, Any, Array]:
        """One optimizer step with the loss and gradient summed over the devices."""
        p = jnp.asarray(batch)
        shape = model.volume.shape
        n_angles, _, n_det = p.shape

        def local(split: Split, model, state, p):
            loss = _SplitLoss(self.solver.loss, split, n_det, n_angles)
            inner = OptaxSolver(
                loss, self.solver.optimizer, self.solver.where, self.solver.constraint
            )
            return inner.step(model, state, p)

        def model_layout(x):
            return VOLUME if x.ndim == 3 else PER_ANGLE

        def state_layout(x):
            return VOLUME if x.shape == shape else REPLICATED

        return over_mesh(
            local,
            self.mesh,
            [(model, model_layout), (state, state_layout), (p, PROJECTIONS)],
            [(model, model_layout), (state, state_layout), REPLICATED],
            rows=shape[1],
            angles=n_angles,
        )


class _SplitLoss(eqx.Module):
    """:class:`TomoLoss` on one device's share: data norms and the loss summed over devices."""

    loss: TomoLoss
    split: Split = eqx.field(static=True)
    n_det: int = eqx.field(static=True)
    n_angles: int = eqx.field(static=True)

    def __call__(self, model: TomoProjections, p: Projections) -> Float[Array, ""]:
        split = self.split
        norm = split.sums(jnp.sum(jnp.abs(p) ** 2), PROJECTIONS)
        over_angles = split.axis == ANGLE

        def misfit(volume, args):
            model, p, norm = args
            if over_angles:
                predicted = eqx.tree_at(lambda m: m.volume, model, volume)()
                valid = split.angle_mask(p.shape[0])[:, None, None]  # padded angles
            else:
                predicted = tomography.project(volume, model.angles_rad) * model.voxel_size_m
                valid = 1
            return jnp.sum(valid * jnp.abs(predicted - p) ** 2) / jnp.maximum(norm, 1e-30)

        value = split_total(misfit, split.axis, sum_grads=over_angles)(
            model.volume, (model, p, norm)
        )
        if self.loss.tv_weight == 0:
            return value
        mass = jnp.maximum(split.sums(jnp.sum(jnp.abs(p)), PROJECTIONS) / self.n_angles, 1e-30)
        eps = self.loss.tv_eps * 2 * split.maximum(jnp.max(jnp.abs(p)), PROJECTIONS) / self.n_det
        volume = model.volume * model.voxel_size_m
        if over_angles:
            tv = total_variation(volume, eps)
        else:
            tv = split_total(lambda v, e: slab_total_variation(v, e, split), split.axis, False)(
                volume, eps
            )
        return value + self.loss.tv_weight * tv / mass
