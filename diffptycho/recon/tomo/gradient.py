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
import jax.numpy as jnp
import optax

from diffptycho._typing import Array, Float, Projections, Shaped
from diffptycho.models.tomo import TomoProjections
from diffptycho.recon.solve import History, OptaxSolver, solve
from diffptycho.recon.tomo import operators as ops

__all__ = [
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
        optimizer: an optax transformation overriding the default Adam schedule.
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
) -> tuple[OptaxSolver, TomoProjections]:
    """The solver of :func:`gradient_reconstruct` and its starting model (support applied).

    Arguments as for :func:`gradient_reconstruct`; for callers that run
    :func:`~diffptycho.recon.solve.solve` themselves (e.g. to checkpoint it).
    """
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
    return solver, model
