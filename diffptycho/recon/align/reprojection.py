"""Iterative reprojection alignment with similarity transforms (Gürsoy et al. 2017 style).

Each loop

1. reconstructs the volume from the measured projections with the current alignment undone
   (:func:`~diffptycho.recon.tomo.reconstruct.reconstruct`, SIRT-100 with non-negativity by
   default, any of its algorithms);
2. reprojects it at the measured angles (:func:`~diffptycho.physics.tomography.project`);
3. registers every measured projection to its reprojection with a similarity transform
   (:func:`~diffptycho.recon.align.registration.register_similarity_stack`, started from the
   current parameters): ``measured_k ≈ A_k(reprojection_k)``, the model of
   :class:`~diffptycho.models.tomo.TomoProjections`;
4. fixes the gauge (:func:`~diffptycho.recon.align.gauge.fix_gauge`: zero-mean log-scales,
   volume translation chosen so the shifts are nearest a pure rotation-axis offset);

until the largest parameter change, in px at the edge of the image (rotation × radius,
log-scale × radius), drops below ``tolerance_px``. The rotation-axis offset is the constant of
the x shifts, the axis tilt the mean in-plane rotation; both are reported and both are
contained in ``params``.

Why SIRT in the loop. Some patterns of in-plane rotation and scale along the series
(``a + b cos θ + c sin θ`` of the rotations, smooth trends of the scales) are almost what a
slightly rotated or stretched volume would give, so the data pin them only weakly and the
loop corrects them slowly. ART (sequential Kaczmarz sweeps) is not a least-squares solver on
inconsistent data: its volume leans towards the last projections of each sweep, and that bias,
fed back loop after loop, walks along those weak patterns: from the true alignment, noise-free,
ART-20 loops drifted away (0.03° and 0.11 % per loop), SIRT-100 loops did not (0.025°,
0.036 %). The returned volume is still reconstructed with ``algorithm`` / ``iterations``.

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
from diffptycho.physics.tomography import project
from diffptycho.recon.align.gauge import fix_gauge
from diffptycho.recon.align.registration import register_similarity_stack, resample_similarity
from diffptycho.recon.align.rough import _check_stack, rough_align
from diffptycho.recon.interrupt import Interrupted, stop_requested
from diffptycho.recon.tomo.operators import inverse_alignment
from diffptycho.recon.tomo.reconstruct import ALGORITHMS, reconstruct
from diffptycho.recon.watch import LossWatch

__all__ = [
    "AlignmentResult",
    "bin_projections",
    "parameter_change_px",
    "reconstruct_dealigned",
    "reprojection_align",
]


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

    Returns:
        ``(n_x, y, n_x)`` volume (projection units per voxel).
    """
    inverse = np.asarray(inverse_alignment(jnp.asarray(params, float)))
    data = np.stack(
        [resample_similarity(im, q) for im, q in zip(projections, inverse, strict=True)]
    )
    res = reconstruct(
        data,
        angles_rad,
        algorithm,
        iterations,
        nonnegative=nonnegative,
        progress=False,
        dtype=np.float64 if jnp.result_type(float) == jnp.float64 else np.float32,
    )
    return np.asarray(res.volume)


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
        tolerance_px: stop a level when the largest change (:func:`parameter_change_px`) is
            below this, px (of the full-resolution grid).
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
        loop_iterations: its iterations.
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
    shape = meas.shape[1:]
    params = starting_params(meas, angles, initial)
    fixed = np.array([0, 0, 0, 0] if fit == "similarity" else [0, 0, 1, 1], float)
    angles_j = jnp.asarray(angles, jnp.result_type(float))

    hist: dict[str, list] = {k: [] for k in ("max_update_px", "rms_update_px", "residual")}
    hist.update(seconds=[], binning=[])

    def recon(data, p):
        return reconstruct_dealigned(data, angles, p, loop_algorithm, loop_iterations, nonnegative)

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

    def save(level: int, loop: int) -> None:
        arrays = {"params": params, **{f"history/{k}": np.asarray(v) for k, v in hist.items()}}
        meta = {"level": level, "loop": loop, "watch": watch.state()}
        checkpoint.save({}, meta, iteration=len(hist["residual"]), arrays=arrays)

    for level, factor in enumerate(binning):
        if level < position[0]:
            continue
        factor = int(factor)
        data = bin_projections(meas, factor)
        w = None if weights is None else bin_projections(np.asarray(weights)[None], factor)[0]
        first = position[1] if level == position[0] else 0
        for loop in range(first, max_loops):
            p_bin = _to_binned(params, shape, factor)
            try:
                volume = recon(data, p_bin)
            except Interrupted:
                if checkpoint is not None:
                    save(level, loop)
                raise
            reproj = np.asarray(project(jnp.asarray(volume), angles_j))
            q_bin, cost = register_similarity_stack(
                reproj,
                data,
                p_bin,
                weights=w,
                iterations=lm_iterations,
                fixed=fixed,
                smoothing_px=smoothing_px,
            )
            new = fix_gauge(_from_binned(q_bin, shape, factor), angles, shape).params
            change = parameter_change_px(params, new, shape)
            params = new
            hist["max_update_px"].append(float(change.max()))
            hist["rms_update_px"].append(float(np.sqrt(np.mean(change**2))))
            hist["residual"].append(float(cost.sum() / np.sum(data**2)))
            hist["seconds"].append(time.perf_counter() - t0)
            hist["binning"].append(factor)
            watch.update(len(hist["residual"]) - 1, hist["residual"][-1])
            if progress:
                print(
                    f"bin {factor} loop {loop + 1}: max update {change.max():.4f} px, "
                    f"residual {hist['residual'][-1]:.3e}"
                )
            converged = change.max() < tolerance_px
            # where a resumed run continues: the next loop, or the next level
            after = (level + 1, 0) if converged or loop + 1 == max_loops else (level, loop + 1)
            if checkpoint is not None:
                every = checkpoint.every
                if stop_requested() or (every and len(hist["residual"]) % every == 0):
                    save(*after)
                if stop_requested() and after[0] < len(binning):
                    raise Interrupted(
                        f"reprojection alignment: stopped after loop {len(hist['residual'])}",
                        iteration=len(hist["residual"]),
                    )
            if converged:
                break
    volume = reconstruct_dealigned(meas, angles, params, algorithm, iterations, nonnegative)
    gauge = fix_gauge(params, angles, shape)
    config = dict(
        method="reprojection",
        algorithm=algorithm,
        iterations=iterations,
        loop_algorithm=loop_algorithm,
        loop_iterations=loop_iterations,
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
        history={k: np.asarray(v, dtype=float) for k, v in hist.items()},
        seconds=time.perf_counter() - t0,
        config=dict(config, best_loop=watch.best_iteration, warnings=watch.warnings),
    )


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
