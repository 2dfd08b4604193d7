"""Differentiable alignment: volume and per-projection similarity parameters by gradient.

The unknowns are the leaves ``volume`` and ``alignment`` of one
:class:`~diffptycho.models.tomo.TomoProjections` (measured = A_k(P f)), trained together by
:func:`~diffptycho.recon.solve.solve` with an :class:`~diffptycho.recon.solve.OptaxSolver`:
Adam, with its own step per kind of unknown (volume: relative to its largest value; shifts
in px; rotations in rad; log-scales), both decaying exponentially, and the volume clamped at
0 after every step. The loss is the squared misfit of Gaussian-smoothed projections,

    L = ‖G (A(P f) − m)‖² / ‖G m‖²,

with A resampled by Keys' cubic convolution by default (``interpolation="cubic"``): the
model's bilinear map blurs more at half-pixel offsets than at whole ones, which pulls shifts
towards integers and rotations towards zero; the smoothing (σ = ``smoothing_px``) removes
what is left of that. On the 64³, 60-view acceptance series (1 % noise) the cubic loss and
rotation/scale steps of 1e-3 reach 0.046° and 0.056 %, the noise floor of registering to the
true volume's projections; the bilinear loss with steps of 2e-4 stopped at 0.084°. The run
starts from the rough alignment (or ``initial``) and an ART volume, and ends by fixing the
gauge (:func:`~diffptycho.recon.align.gauge.fix_gauge`) and reconstructing the returned volume
with the final parameters (as :func:`~diffptycho.recon.align.reprojection.reprojection_align`
does, so the two methods' volumes compare directly).
"""

from __future__ import annotations

import time
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import optax

from diffptycho._typing import Angles, Array, Float, Projections
from diffptycho.models.tomo import TomoProjections
from diffptycho.physics.tomography import project
from diffptycho.recon.align.gauge import fix_gauge
from diffptycho.recon.align.registration import cubic_similarity_transform
from diffptycho.recon.align.reprojection import (
    AlignmentResult,
    parameter_change_px,
    reconstruct_dealigned,
    starting_params,
)
from diffptycho.recon.align.rough import _check_stack
from diffptycho.recon.solve import OptaxSolver, solve

__all__ = [
    "INTERPOLATIONS",
    "aligned_projections",
    "gaussian_smooth",
    "gradient_fit",
    "joint_align",
]

INTERPOLATIONS = ("linear", "cubic")
"""Resampling of the alignment transform in :func:`joint_align`'s loss."""


def aligned_projections(model: TomoProjections, interpolation: str = "linear") -> Array:
    """The projections of ``model``, with its alignment resampled as asked.

    Args:
        model: volume, angles and alignment rows.
        interpolation: ``"linear"`` (the model's own bilinear map, ``model()``) or ``"cubic"``
            (:func:`~diffptycho.recon.align.registration.cubic_similarity_transform`: Keys'
            cubic convolution, same geometry, nearly uniform blur at every sub-pixel offset).

    Returns:
        ``(angle, y, x)`` aligned line integrals (volume unit × m).
    """
    if interpolation == "linear":
        return model()
    proj = project(model.volume, model.angles_rad) * model.voxel_size_m
    return jax.vmap(cubic_similarity_transform)(proj, model.alignment)


def gaussian_smooth(images: Float[Array, "... y x"], sigma_px: float) -> Array:
    """Gaussian blur of the last two axes by σ px (FFT; zero background assumed, periodic).

    Args:
        images: ``(..., y, x)`` real.
        sigma_px: standard deviation in px (0: unchanged).

    Returns:
        The blurred array, same shape.
    """
    if sigma_px == 0:
        return images
    ny, nx = images.shape[-2:]
    fy = jnp.fft.fftfreq(ny)[:, None]
    fx = jnp.fft.rfftfreq(nx)[None, :]
    gain = jnp.exp(-2 * (jnp.pi * sigma_px) ** 2 * (fy**2 + fx**2)).astype(images.dtype)
    return jnp.fft.irfft2(jnp.fft.rfft2(images) * gain, s=(ny, nx)).astype(images.dtype)


def _scaled(step: Array) -> optax.GradientTransformation:
    """Multiply updates by a fixed array (per-column steps of the alignment)."""
    return optax.stateless(lambda updates, params=None: jtu.tree_map(lambda u: u * step, updates))


def joint_align(
    projections: Projections,
    angles_rad: Angles,
    *,
    initial=None,
    steps: int = 300,
    volume_step: float = 0.01,
    shift_step_px: float = 0.05,
    rotation_step_rad: float = 1e-3,
    scale_step: float = 1e-3,
    decay: float = 0.05,
    smoothing_px: float = 1.0,
    interpolation: str = "cubic",
    fit: str = "similarity",
    algorithm: str = "art",
    iterations: int = 20,
    progress: bool = False,
    checkpoint: Any = None,
    resume: bool = False,
    keep_best: bool = False,
) -> AlignmentResult:
    """Align a tilt series by gradient descent on volume and alignment together.

    Args:
        projections: ``(angle, y, x)`` measured line integrals, real, zero background.
        angles_rad: ``(angle,)`` rotation angles in rad.
        initial: ``(angle, 4)`` starting rows; default
            :func:`~diffptycho.recon.align.rough.rough_align`.
        steps: optimizer steps.
        volume_step: Adam step of the volume, as a fraction of the starting volume's maximum.
        shift_step_px: Adam step of the shifts, px.
        rotation_step_rad: Adam step of the rotations, rad.
        scale_step: Adam step of the log-scales.
        decay: all steps decay exponentially to this fraction by the last step.
        smoothing_px: σ of the Gaussian applied to model and data in the loss, px.
        interpolation: resampling of the alignment in the loss, one of
            :data:`INTERPOLATIONS` (:func:`aligned_projections`).
        fit: ``"similarity"`` or ``"shift"`` (rotations and scales held at their start).
        algorithm: algorithm of the starting and final reconstructions.
        iterations: its iterations.
        progress: show a progress bar.
        checkpoint: a :class:`~diffptycho.io.checkpoint.Checkpoint` (any object with
            ``every``, ``save_snapshot`` and ``load_snapshot``): the optimisation's state is
            saved every ``checkpoint.every`` steps and when a stop is requested (see
            :func:`~diffptycho.recon.solve.solve`).
        resume: continue from ``checkpoint`` (same result as the uninterrupted run).
        keep_best: keep the volume and alignment of the lowest loss.

    Returns:
        An :class:`~diffptycho.recon.align.reprojection.AlignmentResult`; its history holds the
        loss per step (``residual``) and ``seconds``.

    Raises:
        ValueError: malformed, blank or non-finite projections or angles, unknown ``fit``.
    """
    t0 = time.perf_counter()
    meas, angles = _check_stack(projections, angles_rad)
    if fit not in ("similarity", "shift"):
        raise ValueError(f"fit={fit!r}: expected 'similarity' or 'shift'")
    if steps < 1:
        raise ValueError(f"steps={steps}: expected ≥ 1")
    if interpolation not in INTERPOLATIONS:
        raise ValueError(
            f"interpolation={interpolation!r}: expected one of {', '.join(INTERPOLATIONS)}"
        )
    shape = meas.shape[1:]
    params = starting_params(meas, angles, initial)
    volume = reconstruct_dealigned(meas, angles, params, algorithm, iterations)
    options = dict(
        steps=steps,
        volume_step=volume_step,
        shift_step_px=shift_step_px,
        rotation_step_rad=rotation_step_rad,
        scale_step=scale_step,
        decay=decay,
        smoothing_px=smoothing_px,
        interpolation=interpolation,
        fit=fit,
    )
    final, history = gradient_fit(
        meas,
        angles,
        params,
        volume,
        progress=progress,
        checkpoint=checkpoint,
        resume=resume,
        keep_best=keep_best,
        **options,
    )
    gauge = fix_gauge(final, angles, shape)
    change = parameter_change_px(params, gauge.params, shape)
    volume = reconstruct_dealigned(meas, angles, gauge.params, algorithm, iterations)
    config = dict(
        method="joint",
        **options,
        algorithm=algorithm,
        iterations=iterations,
        initial="given" if initial is not None else "rough_align",
        total_change_px=float(change.max()),
        best_step=history.best_iteration,
        keep_best=keep_best,
        warnings=history.warnings,
    )
    return AlignmentResult(
        params=gauge.params,
        volume=volume,
        axis_offset_px=gauge.axis_offset_px,
        axis_tilt_rad=float(np.mean(gauge.params[:, 2])),
        history={
            "residual": np.asarray(history.loss, dtype=float),
            "seconds": np.asarray(history.seconds, dtype=float),
        },
        seconds=time.perf_counter() - t0,
        config=config,
    )


def gradient_fit(
    meas: Float[np.ndarray, "angle y x"],
    angles: Float[np.ndarray, " angle"],
    params: Float[np.ndarray, "angle 4"],
    volume: Float[np.ndarray, "x y x"],
    *,
    steps: int,
    volume_step: float,
    shift_step_px: float,
    rotation_step_rad: float,
    scale_step: float,
    decay: float,
    smoothing_px: float,
    interpolation: str = "cubic",
    fit: str = "similarity",
    progress: bool = False,
    checkpoint: Any = None,
    resume: bool = False,
    keep_best: bool = False,
    description: str = "joint align",
):
    """Adam on volume and alignment from a given start: the optimisation of :func:`joint_align`.

    Args:
        meas: ``(angle, y, x)`` checked measured projections.
        angles: ``(angle,)`` in rad.
        params: ``(angle, 4)`` starting alignment rows.
        volume: ``(n_x, y, n_x)`` starting volume (projection units per voxel).
        steps: optimizer steps.
        volume_step: Adam step of the volume, as a fraction of ``volume``'s maximum.
        shift_step_px: Adam step of the shifts, px.
        rotation_step_rad: Adam step of the rotations, rad.
        scale_step: Adam step of the log-scales.
        decay: all steps decay exponentially to this fraction by the last step.
        smoothing_px: σ of the Gaussian applied to model and data in the loss, px.
        interpolation: resampling of the alignment in the loss (:data:`INTERPOLATIONS`).
        fit: ``"similarity"`` or ``"shift"`` (rotations and scales held).
        progress: show a progress bar.
        checkpoint: as in :func:`joint_align`.
        resume: continue from ``checkpoint``.
        keep_best: keep the volume and alignment of the lowest loss.
        description: label of the progress bar and of a stop's message.

    Returns:
        ``(params, history)``: the final ``(angle, 4)`` rows (gauge not fixed) and the
        :func:`~diffptycho.recon.solve.solve` history (loss per step).
    """
    dtype = jnp.result_type(float)
    model = TomoProjections(
        jnp.asarray(volume, dtype), jnp.asarray(angles, dtype), jnp.asarray(params, dtype)
    )
    data = jnp.asarray(meas, dtype)
    smooth_data = gaussian_smooth(data, smoothing_px)
    norm = jnp.sum(smooth_data**2)

    def loss(m: TomoProjections, batch) -> Array:
        model_proj = aligned_projections(m, interpolation)
        return jnp.sum((gaussian_smooth(model_proj, smoothing_px) - batch) ** 2) / norm

    rot_scale = (1.0, 1.0) if fit == "similarity" else (0.0, 0.0)
    column_steps = jnp.asarray(
        [shift_step_px, shift_step_px, rotation_step_rad * rot_scale[0], scale_step * rot_scale[1]],
        dtype,
    )
    schedule = optax.exponential_decay(1.0, steps, decay)
    v_max = float(np.max(volume)) or 1.0
    optimizer = optax.multi_transform(
        {
            "volume": optax.chain(
                optax.scale_by_adam(),
                optax.scale_by_schedule(schedule),
                optax.scale(-volume_step * v_max),
            ),
            "alignment": optax.chain(
                optax.scale_by_adam(),
                optax.scale_by_schedule(schedule),
                optax.scale(-1.0),
                _scaled(column_steps),
            ),
        },
        lambda tree: eqx.tree_at(
            lambda m: (m.volume, m.alignment),
            jtu.tree_map(lambda _: "alignment", tree),
            ("volume", "alignment"),
        ),
    )

    def nonnegative(m: TomoProjections) -> TomoProjections:
        return eqx.tree_at(lambda t: t.volume, m, jnp.maximum(m.volume, 0))

    solver = OptaxSolver(loss, optimizer, lambda m: (m.volume, m.alignment), nonnegative)
    snapshot = None
    if resume:
        if checkpoint is None:
            raise ValueError("resume=True needs a checkpoint to resume from")
        snapshot = checkpoint.load_snapshot(model, eqx.filter_eval_shape(solver.init, model))
    model, history = solve(
        model,
        solver,
        smooth_data,
        steps,
        progress=progress,
        description=description,
        resume=snapshot,
        checkpoint=None if checkpoint is None else checkpoint.save_snapshot,
        checkpoint_every=0 if checkpoint is None else checkpoint.every,
        keep_best=keep_best,
    )
    final = np.asarray(jax.device_get(model.alignment), dtype=float)
    return final, history
