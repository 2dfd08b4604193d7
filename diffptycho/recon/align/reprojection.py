"""Iterative reprojection alignment with similarity transforms (Gürsoy et al. 2017 style).

Each loop

1. reconstructs the volume from the measured projections with the current alignment undone
   (:func:`reconstruct_dealigned`: SIRT-100 with λ = 1.9 and non-negativity by default, any
   iterative algorithm), starting from the previous loop's volume (``warm_start``);
2. reprojects it at the measured angles (:func:`~diffptycho.physics.tomography.project`);
3. registers every measured projection to its reprojection with a similarity transform
   (:func:`~diffptycho.recon.align.registration.register_similarity_stack`, started from the
   current parameters): ``measured_k ≈ A_k(reprojection_k)``, the model of
   :class:`~diffptycho.models.tomo.TomoProjections`;
4. fixes the gauge (:func:`~diffptycho.recon.align.gauge.fix_gauge`: zero-mean log-scales,
   volume translation chosen so the shifts are nearest a pure rotation-axis offset);
5. extrapolates the parameters from the last loops (:func:`anderson_step`, ``anderson_depth``);

until the largest parameter change, in px at the edge of the image (rotation × radius,
log-scale × radius), has stayed below ``tolerance_px`` for two loops. The rotation-axis offset
is the constant of the x shifts, the axis tilt the mean in-plane rotation; both are reported
and both are contained in ``params``.

Why SIRT in the loop. Some patterns of in-plane rotation and scale along the series
(``a + b cos θ + c sin θ`` of the rotations, smooth trends of the scales) are almost what a
slightly rotated or stretched volume would give, so the data pin them only weakly and the
loop corrects them slowly. ART (sequential Kaczmarz sweeps) is not a least-squares solver on
inconsistent data: its volume leans towards the last projections of each sweep, and that bias,
fed back loop after loop, walks along those weak patterns: from the true alignment, noise-free,
ART-20 loops drifted away (0.03° and 0.11 % per loop), SIRT-100 loops did not (0.025°,
0.036 %). The returned volume is still reconstructed with ``algorithm`` / ``iterations``.

Why warm start and acceleration (``experiments/align_tilt_series.py``, shift σ 5 px,
rotations ±1°, scale ±1 %, angles −80…77°; errors RMS after gauge matching). Two things held
the plain loop (a fresh SIRT-100 every loop, parameters = the registration's) away from the
noise floor of registering to the true volume's projections:

- *bias*: SIRT-100 is far from converged, and its reprojections pull the registration. Noise
  free at 64³ and 60 angles, one loop from the true parameters gave 0.025°, 0.036 % with
  SIRT-100, 0.013°, 0.018 % with SIRT-300 and 0.0105°, 0.015 % with SIRT-1000 (true volume:
  0.013°, 0.016 %); the plain SIRT-100 loop settles at 0.0110 px, 0.038°, 0.052 %.
  Warm-starting makes loop k's volume a SIRT of k × ``loop_iterations`` steps for the cost of
  one (λ = 1.9 nearly doubles SIRT's progress per step);
- *slow convergence*: along the weak patterns a loop recovers only ``1 − ρ`` (ρ ≈ 1) of the
  error, so the change per loop is small long before the error is (cold SIRT-300, plain: the
  change fell below 0.01 px at loop 5 at 0.029°, which was 0.014° only after 12 loops). The
  Anderson step extrapolates those directions from the last loops' secants: cold SIRT-100
  reached its fixed point in 7 loops instead of 30, cold SIRT-300 in 6 instead of 12.

Measured (noise free, 64³, 60 angles, loop 9): warm + Anderson 0.0034 px, 0.0125°, 0.017 %
(warm alone: 0.022° at loop 7). 1 % noise, 64³: 0.0092 px, 0.048°, 0.068 % (the plain loop:
0.0135 px, 0.051°, 0.090 %; floor 0.0077 px, 0.044°, 0.058 %). 1 % noise, 128³, 158 angles
(floor 0.0065 px, 0.0173°, 0.026 %): the plain loop stopped at loop 6 at 0.0227 px, 0.054°,
0.079 %; warm + Anderson with λ = 1 reached 0.0078 px, 0.0248°, 0.043 % in 12 loops
(0.0284° at loop 9), with λ = 1.9 (the default) 0.0074 px, 0.0232°, 0.042 % at loop 13
(0.0247° at loop 9; the change stays below 0.01 px from loop 9, so the default tolerance stops
at loop 10 at 0.0235°), volume error +0.1 % of the perfectly aligned one, 1770 s on 2
shared cores. The rotations then plateau ~35 % above the floor, which the joint method
reaches (0.0176°): short of the 0.02° goal. On tiny series (32³, 30 angles) the rotations are
not determined (floor 0.2°): every variant drifts there, and the acceleration drifts faster;
use ``fit="shift"``.

Final pass (``final_iterations``, off by default): after the loops, continue the warm loop
reconstruction for that many more iterations, register every projection once to its
reprojection (no Anderson step) and fix the gauge. It does not help at the end of the
warm-started loop, whose volume is already a SIRT of ``loops × loop_iterations`` steps: at
128³, 158 angles, 1 % noise, after the default stop at loop 10 (0.0075 px, 0.0235°, 0.0428 %)
SIRT +300 (λ = 1.9) and one registration gave 0.0075 px, 0.0236°, 0.0426 %, volume +0.1 %,
+181 s (976 s in all, on a less loaded machine than the 1770 s above). The bias of an
under-converged volume, which the 64³ noise-free one-loop test showed, is gone by then; the
remaining 0.0235° vs the 0.0173° floor is not closed by converging the volume further. From
the true parameters the same pass (cold SIRT-600, λ = 1.9) gives 0.0070 px, 0.0174°, 0.032 %:
at the floor, so the map is accurate near the truth but barely contracts along the weak
patterns. Of the loop's 0.0235°, a fit ``a + b cos θ + c sin θ`` takes 0.012° (a ≈ 0.008°,
b ≈ −0.020°, c ≈ −0.015°, what a slightly tilted volume absorbs) and leaves 0.020°.

Refinement (``refine_steps``, default 80): after the loops, volume and parameters are refined
together by small, decaying Adam steps from the loop's own volume
(:func:`~diffptycho.recon.align.gradient.gradient_fit`, steps :data:`REFINE_STEPS`, a tenth of
:func:`~diffptycho.recon.align.gradient.joint_align`'s). The loop's fixed point is off along
the weak patterns, and its converged volume fits part of each projection's own misalignment
(registering to it under-corrects); a joint step moves volume and parameters together. At
128³, 158 angles, 1 % noise, from the default loop's 0.0075 px, 0.0235°, 0.0428 %: 40 steps
0.0067 px, 0.0200°, 0.0307 %; 80 steps 0.0066 px, 0.0184°, 0.0280 %, volume error +0.0 % of the
perfectly aligned one, +227 s (1108 s in all on 2 loaded cores). Larger steps (joint's own, or
its ART-20 start volume instead of the loop's) first walk away: from the loop's parameters
with joint's defaults and an ART start, 60 steps ended at 0.0395°. Two cheaper explicit
estimates of the pattern did not work: rotating the loop volume (its interpolation blur
dominated the residual) and a linearised Gauss–Newton on the axis tilt and the volume's tilts
with the volume held (0.0235° → 0.0222°: it found the cos θ part only).

Coarse to fine: ``binning=(2, 1)`` runs the first loops on 2 × 2-binned projections (shifts in
binned px are doubled back), which is faster and has a wider capture range.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax.numpy as jnp
import numpy as np

from diffptycho._typing import Angles, Projections
from diffptycho.models.tomo import TomoProjections
from diffptycho.physics.tomography import project
from diffptycho.recon.align.gauge import fix_gauge
from diffptycho.recon.align.registration import register_similarity_stack, resample_similarity
from diffptycho.recon.align.rough import _check_stack, rough_align
from diffptycho.recon.interrupt import Interrupted, stop_agreed, stop_requested
from diffptycho.recon.solve import solve
from diffptycho.recon.tomo.operators import inverse_alignment
from diffptycho.recon.tomo.reconstruct import ALGORITHMS, make_solver, reconstruct
from diffptycho.recon.watch import LossWatch

__all__ = [
    "REFINE_STEPS",
    "AlignmentResult",
    "anderson_step",
    "bin_projections",
    "parameter_change_px",
    "reconstruct_dealigned",
    "reprojection_align",
]


REFINE_STEPS = dict(
    volume_step=1e-3, shift_step_px=0.01, rotation_step_rad=1e-4, scale_step=1e-4, decay=0.05
)
"""Adam steps of :func:`reprojection_align`'s refinement (``refine_steps``): a tenth of
:func:`~diffptycho.recon.align.gradient.joint_align`'s (shifts a fifth), decaying to 5 %; the
loop's result is already near the optimum, larger steps first walk away from it."""


@dataclasses.dataclass
class AlignmentResult:
    """An aligned tilt series: parameters, volume, convergence.

    Attributes:
        params: ``(angle, 4)`` rows ``(shift_y_px, shift_x_px, rotation_rad, log_scale)`` of the
            transform that maps the ideal projection onto the measured one (measured =
            A_k(P f), :class:`~diffptycho.models.tomo.TomoProjections`); pass them as
            ``alignment=`` to :func:`~diffptycho.recon.tomo.reconstruct.reconstruct`.
        volume: ``(z, y, x)`` volume reconstructed with ``params`` (projection units per voxel).
        axis_offset_px: rotation-axis column minus the detector centre ``(n_x − 1)/2``, px.
        axis_tilt_rad: mean in-plane rotation (tilt of the axis in the detector plane), rad.
        history: per loop (or per logged step): ``max_update_px``, ``rms_update_px``,
            ``residual`` (relative squared misfit ‖measured − A(P f)‖² / ‖measured‖²),
            ``seconds`` since the start, ``binning``.
        seconds: wall time of the whole alignment, s.
        config: the options used (JSON-serialisable).
    """

    params: np.ndarray
    volume: np.ndarray
    axis_offset_px: float
    axis_tilt_rad: float
    history: dict[str, np.ndarray]
    seconds: float
    config: dict


def parameter_change_px(old, new, shape: tuple[int, int]) -> np.ndarray:
    """Per-projection parameter change expressed in px at the image edge.

    ``max(|Δshift_y|, |Δshift_x|, |Δrotation| · r, |Δlog_scale| · r)`` with ``r`` half the
    larger image side: what the change moves the farthest pixel by.

    Args:
        old: ``(angle, 4)`` rows.
        new: ``(angle, 4)`` rows.
        shape: ``(n_y, n_x)`` in px.

    Returns:
        ``(angle,)`` changes in px.
    """
    d = np.abs(np.asarray(new, float) - np.asarray(old, float))
    radius = max(shape) / 2
    return np.max(np.concatenate([d[:, :2], d[:, 2:] * radius], axis=1), axis=1)


def bin_projections(projections: Projections, factor: int) -> np.ndarray:
    """Average ``factor × factor`` pixel blocks (trailing rows/columns dropped).

    Args:
        projections: ``(angle, y, x)``.
        factor: binning factor ≥ 1.

    Returns:
        ``(angle, y // factor, x // factor)`` stack.
    """
    p = np.asarray(projections, dtype=float)
    if factor == 1:
        return p
    n_a, n_y, n_x = p.shape
    ny, nx = n_y // factor, n_x // factor
    return p[:, : ny * factor, : nx * factor].reshape(n_a, ny, factor, nx, factor).mean((2, 4))


def reconstruct_dealigned(
    projections: Projections,
    angles_rad: Angles,
    params,
    algorithm: str = "art",
    iterations: int = 20,
    nonnegative: bool = True,
    initial=None,
    relaxation: float = 1.0,
) -> np.ndarray:
    """Volume from projections whose alignment is undone with a cubic spline first.

    :func:`~diffptycho.recon.tomo.reconstruct.reconstruct` with ``alignment=`` undoes it
    bilinearly, which on sharp, binned projections costs several percent of error (a 0.3/0.7 px
    shift: 7 %); alignment loops undo it with
    :func:`~diffptycho.recon.align.registration.resample_similarity` instead.

    Args:
        projections: ``(angle, y, x)`` measured.
        angles_rad: ``(angle,)`` in rad.
        params: ``(angle, 4)`` TomoProjections alignment rows to undo.
        algorithm: any of :data:`~diffptycho.recon.tomo.reconstruct.ALGORITHMS`.
        iterations: its iterations.
        nonnegative: clamp at 0.
        initial: ``(n_x, y, n_x)`` volume to start the iterations from (``art``, ``sart``,
            ``sirt``, ``cgls``; default zeros), e.g. the previous loop's of an alignment.
        relaxation: λ of ``art``, ``sart`` and ``sirt`` (0 < λ < 2).

    Returns:
        ``(n_x, y, n_x)`` volume (projection units per voxel).

    Raises:
        ValueError: ``initial`` of another shape, or given to ``fbp`` / ``adam``.
    """
    inverse = np.asarray(inverse_alignment(jnp.asarray(params, float)))
    data = np.stack(
        [resample_similarity(im, q) for im, q in zip(projections, inverse, strict=True)]
    )
    dtype = np.float64 if jnp.result_type(float) == jnp.float64 else np.float32
    if initial is None:
        res = reconstruct(
            data,
            angles_rad,
            algorithm,
            iterations,
            nonnegative=nonnegative,
            relaxation=relaxation,
            progress=False,
            dtype=dtype,
        )
        return np.asarray(res.volume)
    n_a, n_y, n_x = data.shape
    if np.shape(initial) != (n_x, n_y, n_x):
        raise ValueError(f"initial: expected shape {(n_x, n_y, n_x)}, got {np.shape(initial)}")
    if algorithm in ("fbp", "adam"):
        raise ValueError(f"initial: algorithm={algorithm!r} cannot start from a volume")
    solver = make_solver(
        algorithm,
        relaxation=relaxation,
        nonnegative=nonnegative,
        n_det=n_x,
        apply_alignment=False,
    )
    model = TomoProjections(
        jnp.asarray(initial, dtype), jnp.asarray(angles_rad, dtype), jnp.zeros((n_a, 4), dtype)
    )
    model, _ = solve(
        model,
        solver,
        jnp.asarray(data, dtype),
        iterations,
        progress=False,
        description=f"tomo {algorithm} (from a given volume)",
    )
    return np.asarray(model.volume)


def reprojection_align(
    projections: Projections,
    angles_rad: Angles,
    *,
    initial=None,
    algorithm: str = "art",
    iterations: int = 20,
    max_loops: int = 20,
    tolerance_px: float = 0.01,
    fit: str = "similarity",
    binning: tuple[int, ...] = (1,),
    lm_iterations: int = 10,
    smoothing_px: float = 1.0,
    weights=None,
    nonnegative: bool = True,
    loop_algorithm: str = "sirt",
    loop_iterations: int = 100,
    loop_relaxation: float = 1.9,
    warm_start: bool = True,
    anderson_depth: int = 5,
    final_iterations: int = 0,
    refine_steps: int = 80,
    progress: bool = False,
    checkpoint: Any = None,
    resume: bool = False,
) -> AlignmentResult:
    """Align a tilt series by iterative reprojection (module docstring).

    Args:
        projections: ``(angle, y, x)`` measured line integrals, real, on a zero background.
        angles_rad: ``(angle,)`` rotation angles in rad.
        initial: ``(angle, 4)`` starting rows; default :func:`~diffptycho.recon.align.rough.
            rough_align` (mass profile and centre-of-mass sinusoid).
        algorithm: algorithm of the returned volume, one of
            :data:`~diffptycho.recon.tomo.reconstruct.ALGORITHMS` (``art`` as in the study).
        iterations: its iterations (ART sweeps).
        max_loops: reconstruct–register loops per binning level at most.
        tolerance_px: stop a level when the largest change of the parameters
            (:func:`parameter_change_px`) has been below this in two loops in a row, px (of the
            full-resolution grid).
        fit: ``"similarity"`` (shift, rotation, scale) or ``"shift"`` (shifts only).
        binning: binning factors, coarse to fine, e.g. ``(2, 1)``.
        lm_iterations: Levenberg–Marquardt steps per registration.
        smoothing_px: Gaussian σ in px applied to both images before registering (see
            :func:`~diffptycho.recon.align.registration.register_similarity_stack`).
        weights: ``(y, x)`` weights of the registration (full resolution), e.g. a mask.
        nonnegative: clamp the volume at 0 in the reconstructions.
        loop_algorithm: algorithm of the reconstructions inside the loop (module docstring:
            a least-squares one such as ``sirt``; ``art`` biases the weakly determined
            rotations and scales).
        loop_iterations: its iterations per loop.
        loop_relaxation: its λ (``art``, ``sart``, ``sirt``; 0 < λ < 2); SIRT's converges
            about λ times faster.
        warm_start: start each loop's reconstruction from the previous loop's volume (within a
            binning level), so the loop volume keeps converging instead of being rebuilt from
            zero (module docstring); ``loop_algorithm`` must then be iterative (not ``fbp``,
            ``adam``).
        anderson_depth: extrapolate the parameters from this many previous loops by
            :func:`anderson_step` (0: plain iteration, the parameters are the registration's).
        final_iterations: after the loops, continue the (full-resolution, warm) loop
            reconstruction for this many more ``loop_algorithm`` iterations, register every
            projection once to its reprojection (no Anderson step), fix the gauge and return
            those parameters; logged as one more ``history`` entry with ``binning`` 0
            (0: no final pass, the parameters are the last loop's).
        refine_steps: after the loops (and the final pass), refine volume and parameters
            together by this many small, decaying gradient steps from the loop's volume
            (:func:`~diffptycho.recon.align.gradient.gradient_fit`, module docstring: the
            loop barely contracts along the weak patterns and its volume fits part of each
            projection's misalignment; 0: none). Logged as ``history["refine_loss"]``.
        progress: print one line per loop.
        checkpoint: a :class:`~diffptycho.io.checkpoint.Checkpoint` (any object with
            ``every``, ``save`` and ``load``): the parameters and history are saved every
            ``checkpoint.every`` loops and when a stop is requested (SIGINT/SIGTERM, see
            :mod:`diffptycho.recon.interrupt`), which then raises
            :class:`~diffptycho.recon.interrupt.Interrupted`.
        resume: continue from ``checkpoint`` (same result as the uninterrupted run).

    Returns:
        An :class:`AlignmentResult` in the gauge of
        :func:`~diffptycho.recon.align.gauge.fix_gauge`.

    Raises:
        ValueError: malformed, blank or non-finite projections or angles, unknown options.
    """
    t0 = time.perf_counter()
    meas, angles = _check_stack(projections, angles_rad)
    for name, alg in (("algorithm", algorithm), ("loop_algorithm", loop_algorithm)):
        if alg not in ALGORITHMS:
            raise ValueError(f"{name}={alg!r}: expected one of {', '.join(ALGORITHMS)}")
    if fit not in ("similarity", "shift"):
        raise ValueError(f"fit={fit!r}: expected 'similarity' or 'shift'")
    if not binning or any(int(b) < 1 for b in binning):
        raise ValueError(f"binning={binning!r}: expected factors ≥ 1, coarse to fine")
    if final_iterations < 0:
        raise ValueError(f"final_iterations={final_iterations}: expected ≥ 0 (0: no final pass)")
    if refine_steps < 0:
        raise ValueError(f"refine_steps={refine_steps}: expected ≥ 0 (0: no refinement)")
    if anderson_depth < 0:
        raise ValueError(f"anderson_depth={anderson_depth}: expected ≥ 0 (0: no acceleration)")
    if warm_start and loop_algorithm in ("fbp", "adam"):
        raise ValueError(
            f"warm_start: loop_algorithm={loop_algorithm!r} cannot start from a volume; "
            "use art, sart, sirt or cgls, or warm_start=False"
        )
    shape = meas.shape[1:]
    params = starting_params(meas, angles, initial)
    fixed = np.array([0, 0, 0, 0] if fit == "similarity" else [0, 0, 1, 1], float)
    angles_j = jnp.asarray(angles, jnp.result_type(float))

    keys = ("max_update_px", "rms_update_px", "max_correction_px", "residual", "seconds")
    hist: dict[str, list] = {k: [] for k in (*keys, "binning")}
    # per level: the previous loop's volume (warm start) and the Anderson memory
    volume, xs, fs = None, [], []
    radius = max(shape) / 2
    px_weights = np.tile([1.0, 1.0, radius, radius], len(angles))  # parameters in edge px

    watch = LossWatch(window=3, label="reprojection alignment residual")
    position = (0, 0)  # (binning level, loop) of the next loop to run
    if resume:
        if checkpoint is None:
            raise ValueError("resume=True needs a checkpoint to resume from")
        _, arrays, meta, _ = checkpoint.load({})
        params = np.asarray(arrays["params"], float)
        hist = {k: [float(x) for x in arrays[f"history/{k}"]] for k in hist}
        position = (int(meta["level"]), int(meta["loop"]))
        watch.restore(meta["watch"])
        if position[1] > 0 or position[0] >= len(binning):  # the level's memory continues
            # (after the last level: the final pass warm-starts from its volume)
            volume = arrays.get("volume")
            xs = list(arrays.get("anderson/x", []))
            fs = list(arrays.get("anderson/f", []))

    def save(level: int, loop: int) -> None:
        arrays = {"params": params, **{f"history/{k}": np.asarray(v) for k, v in hist.items()}}
        if volume is not None:
            arrays["volume"] = np.asarray(volume)
        if xs:
            arrays.update({"anderson/x": np.asarray(xs), "anderson/f": np.asarray(fs)})
        meta = {"level": level, "loop": loop, "watch": watch.state()}
        checkpoint.save({}, meta, iteration=len(hist["residual"]), arrays=arrays)

    def reconstruct_and_register(data, w, factor: int, n_iterations: int, at: tuple[int, int]):
        """Reconstruct, register every projection to its reprojection, fix the gauge.

        ``data`` is binned by ``factor``; the current alignment is undone. Returns (volume,
        full-resolution rows, cost); a stop inside the reconstruction saves to resume at ``at``.
        """
        p_bin = _to_binned(params, shape, factor)
        try:
            vol = reconstruct_dealigned(
                data,
                angles,
                p_bin,
                loop_algorithm,
                n_iterations,
                nonnegative,
                initial=volume if warm_start else None,
                relaxation=loop_relaxation,
            )
        except Interrupted:
            if checkpoint is not None:
                save(*at)
            raise
        reproj = np.asarray(project(jnp.asarray(vol), angles_j))
        q_bin, cost = register_similarity_stack(
            reproj,
            data,
            p_bin,
            weights=w,
            iterations=lm_iterations,
            fixed=fixed,
            smoothing_px=smoothing_px,
        )
        return vol, fix_gauge(_from_binned(q_bin, shape, factor), angles, shape).params, cost

    def record(change, correction, cost, data, factor: int) -> None:
        """One loop's (or the final pass's, binning 0) entry of the history."""
        hist["max_update_px"].append(float(change.max()))
        hist["rms_update_px"].append(float(np.sqrt(np.mean(change**2))))
        hist["max_correction_px"].append(float(correction.max()))
        hist["residual"].append(float(cost.sum() / np.sum(data**2)))
        hist["seconds"].append(time.perf_counter() - t0)
        hist["binning"].append(factor)

    for level, factor in enumerate(binning):
        if level < position[0]:
            continue
        factor = int(factor)
        data = bin_projections(meas, factor)
        w = None if weights is None else bin_projections(np.asarray(weights)[None], factor)[0]
        first = position[1] if level == position[0] else 0
        if first == 0:
            volume, xs, fs = None, [], []
        for loop in range(first, max_loops):
            vol, registered, cost = reconstruct_and_register(
                data, w, factor, loop_iterations, (level, loop)
            )
            if warm_start:
                volume = vol
            correction = parameter_change_px(params, registered, shape)
            new = registered
            if anderson_depth > 0:
                xs = [*xs, params.ravel()][-(anderson_depth + 1) :]
                fs = [*fs, (registered - params).ravel()][-(anderson_depth + 1) :]
                mixed = fix_gauge(
                    anderson_step(np.asarray(xs), np.asarray(fs), px_weights).reshape(params.shape),
                    angles,
                    shape,
                ).params
                if parameter_change_px(params, mixed, shape).max() <= 10 * correction.max():
                    new = mixed
                else:  # an extrapolation far beyond the correction: distrust the memory
                    xs, fs = xs[-1:], fs[-1:]
            change = parameter_change_px(params, new, shape)
            params = new
            record(change, correction, cost, data, factor)
            watch.update(len(hist["residual"]) - 1, hist["residual"][-1])
            if progress:
                print(
                    f"bin {factor} loop {loop + 1}: max update {change.max():.4f} px "
                    f"(registration {correction.max():.4f} px), "
                    f"residual {hist['residual'][-1]:.3e}"
                )
            # two loops in a row below the tolerance (an accelerated step can be small once)
            converged = loop > 0 and max(hist["max_update_px"][-2:]) < tolerance_px
            # where a resumed run continues: the next loop, or the next level
            after = (level + 1, 0) if converged or loop + 1 == max_loops else (level, loop + 1)
            if checkpoint is not None:
                every = checkpoint.every
                stop = stop_agreed(stop_requested())  # the same answer on every process
                if stop or (every and len(hist["residual"]) % every == 0):
                    save(*after)
                if stop and after[0] < len(binning):
                    raise Interrupted(
                        f"reprojection alignment: stopped after loop {len(hist['residual'])}",
                        iteration=len(hist["residual"]),
                    )
            if converged:
                break
    if volume is not None and np.shape(volume)[1] != shape[0]:
        volume = None  # the last level was binned: the final pass / refinement start cold
    if final_iterations and position[0] <= len(binning):
        _, registered, cost = reconstruct_and_register(
            meas, weights, 1, final_iterations, (len(binning), 0)
        )
        change = parameter_change_px(params, registered, shape)
        params = registered
        record(change, change, cost, meas, 0)
        if progress:
            print(
                f"final pass ({loop_algorithm} +{final_iterations}): max update "
                f"{change.max():.4f} px, residual {hist['residual'][-1]:.3e}"
            )
    refine_loss = np.zeros(0)
    if refine_steps:
        from diffptycho.recon.align.gradient import gradient_fit  # (gradient imports this)

        start = volume
        if start is None:  # no warm loop volume at full resolution
            start = reconstruct_dealigned(
                meas,
                angles,
                params,
                loop_algorithm,
                loop_iterations,
                nonnegative,
                relaxation=loop_relaxation,
            )
        try:
            refined, refine_history = gradient_fit(
                meas,
                angles,
                params,
                start,
                steps=refine_steps,
                smoothing_px=smoothing_px,
                fit=fit,
                description="reprojection alignment refinement",
                **REFINE_STEPS,
            )
        except Interrupted:
            if checkpoint is not None:
                save(len(binning) + 1, 0)
            raise
        refined = fix_gauge(refined, angles, shape).params
        change = parameter_change_px(params, refined, shape)
        params = refined
        refine_loss = np.asarray(refine_history.loss, dtype=float)
        if progress:
            print(
                f"refinement ({refine_steps} gradient steps): max change {change.max():.4f} px, "
                f"loss {refine_loss[0]:.4e} -> {refine_loss[-1]:.4e}"
            )
    volume = reconstruct_dealigned(meas, angles, params, algorithm, iterations, nonnegative)
    gauge = fix_gauge(params, angles, shape)
    config = dict(
        method="reprojection",
        algorithm=algorithm,
        iterations=iterations,
        loop_algorithm=loop_algorithm,
        loop_iterations=loop_iterations,
        loop_relaxation=loop_relaxation,
        warm_start=warm_start,
        anderson_depth=anderson_depth,
        final_iterations=final_iterations,
        refine_steps=refine_steps,
        max_loops=max_loops,
        tolerance_px=tolerance_px,
        fit=fit,
        binning=list(binning),
        lm_iterations=lm_iterations,
        smoothing_px=smoothing_px,
        nonnegative=nonnegative,
        initial="given" if initial is not None else "rough_align",
    )
    return AlignmentResult(
        params=gauge.params,
        volume=volume,
        axis_offset_px=gauge.axis_offset_px,
        axis_tilt_rad=float(np.mean(gauge.params[:, 2])),
        history={
            **{k: np.asarray(v, dtype=float) for k, v in hist.items()},
            "refine_loss": refine_loss,
        },
        seconds=time.perf_counter() - t0,
        config=dict(config, best_loop=watch.best_iteration, warnings=watch.warnings),
    )


def anderson_step(xs, fs, weights=None) -> np.ndarray:
    """Next iterate of a fixed-point iteration ``x ← G(x)`` by Anderson acceleration (type II).

    With residuals ``f_i = G(x_i) − x_i``, finds the combination of the last differences that
    best cancels the newest residual, ``γ = argmin ‖W (f_k − ΔF γ)‖``, and returns
    ``x_k + f_k − (ΔX + ΔF) γ`` (Walker & Ni 2011): a secant (multi-direction quasi-Newton)
    step. Along a direction where ``G`` barely contracts (``G(x) − x ≈ −(1 − ρ) e``, ρ near 1)
    the plain step ``x + f`` recovers ``1 − ρ`` of the error per iteration; the secant step
    takes all of it. With a single iterate it is the plain step ``x + f``.

    Args:
        xs: ``(k, n)`` iterates, oldest first.
        fs: ``(k, n)`` their residuals ``G(x) − x``.
        weights: ``(n,)`` scale of each coordinate in the least squares (default 1).

    Returns:
        ``(n,)`` next iterate.

    Examples:
        >>> import numpy as np
        >>> a = np.array([[0.99, 0.0], [0.0, 0.5]])  # G(x) = a x + b, a slow direction
        >>> b = np.array([0.01, 0.5])  # fixed point (1, 1)
        >>> xs, fs = [np.zeros(2)], [b]
        >>> for _ in range(3):
        ...     xs.append(anderson_step(np.array(xs), np.array(fs)))
        ...     fs.append(a @ xs[-1] + b - xs[-1])
        >>> np.round(xs[-1], 6).tolist()
        [1.0, 1.0]
    """
    xs = np.atleast_2d(np.asarray(xs, float))
    fs = np.atleast_2d(np.asarray(fs, float))
    if xs.shape != fs.shape:
        raise ValueError(f"fs: expected the shape of xs {xs.shape}, got {fs.shape}")
    x, f = xs[-1], fs[-1]
    if len(xs) < 2:
        return x + f
    w = np.ones(xs.shape[1]) if weights is None else np.asarray(weights, float)
    dx, df = np.diff(xs, axis=0).T, np.diff(fs, axis=0).T
    gamma, *_ = np.linalg.lstsq(df * w[:, None], f * w, rcond=1e-10)
    return x + f - (dx + df) @ gamma


def starting_params(meas: np.ndarray, angles: np.ndarray, initial=None) -> np.ndarray:
    """``(angle, 4)`` starting rows in the gauge of :func:`fix_gauge`: ``initial`` or rough.

    Raises:
        ValueError: ``initial`` is not ``(angle, 4)``.
    """
    if initial is None:
        params = rough_align(meas, angles).params
    else:
        params = np.array(initial, dtype=float)
        if params.shape != (meas.shape[0], 4):
            raise ValueError(f"initial: expected shape ({meas.shape[0]}, 4), got {params.shape}")
    return fix_gauge(params, angles, meas.shape[1:]).params


def _binning_offsets(params: np.ndarray, shape: tuple[int, int], factor: int):
    """``e`` (the offset between the centred fine and binned grids) and ``s R e`` per row."""
    c_fine = np.array([n // 2 for n in shape], float)
    c_bin = np.array([(n // factor) // 2 for n in shape], float)
    # a point at fine centred coordinate r sits at binned centred coordinate
    # (r + c_fine − (f − 1)/2)/f − c_bin = r/f + e, with e constant
    e = (c_fine - (factor - 1) / 2) / factor - c_bin
    s = np.exp(params[:, 3])
    cos, sin = np.cos(params[:, 2]), np.sin(params[:, 2])
    re = np.stack([cos * e[0] - sin * e[1], sin * e[0] + cos * e[1]], -1)
    return e, s[:, None] * re


def _to_binned(params: np.ndarray, shape: tuple[int, int], factor: int) -> np.ndarray:
    """Full-resolution rows → rows of the ``factor``-binned grid.

    Fine pixel i lies at binned coordinate ``(i − (f − 1)/2) / f``; both grids transform about
    their own centre pixel ``n // 2``, so the shift picks up the offset between the centres.
    """
    if factor == 1:
        return np.array(params, dtype=float)
    p = np.array(params, dtype=float)
    e, sre = _binning_offsets(p, shape, factor)
    # A_bin(r_b) = s R r_b + t_b must equal (A(r) in binned coordinates):
    # s R (r_b − e) f / f + t/f + e  →  t_b = t/f + e − s R e
    p[:, :2] = p[:, :2] / factor + e - sre
    return p


def _from_binned(params: np.ndarray, shape: tuple[int, int], factor: int) -> np.ndarray:
    """Inverse of :func:`_to_binned`."""
    if factor == 1:
        return np.array(params, dtype=float)
    p = np.array(params, dtype=float)
    e, sre = _binning_offsets(p, shape, factor)
    p[:, :2] = (p[:, :2] - e + sre) * factor
    return p
