"""What the engines refine besides the object, and the constraints applied once per iteration.

:class:`Refinement` is the one configuration every engine takes: probe refinement (start
iteration, support, power), mode orthogonalisation every k iterations, incoherent background
retrieval, scan-position refinement (:class:`PositionRefinement`) and object amplitude clipping.

Position refinement is a Gauss–Newton step on the positions: with the exit-wave change χ_j the
model should explain and J_j = ∂ψ_j/∂r_j (through the differentiable bilinear extraction),
δr_j = argmin ‖χ_j − J_j δr‖², the cross-correlation-free gradient method of PtychoShelves
(Odstrčil et al. 2018) with the derivative of our own interpolation.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from diffptycho._typing import Array, Complex, Float, Int, Positions, ProbeModes
from diffptycho.physics import scan
from diffptycho.physics.propagation import far_field, far_field_adjoint


class PositionRefinement(eqx.Module):
    """Scan-position refinement settings.

    Attributes:
        start: first iteration (0-based) at which positions move; the object must first be
            roughly right for the shift estimate to mean anything.
        max_step_px: largest shift of a position per iteration, in object pixels.
        relaxation: fraction of the Gauss–Newton shift applied (0 < r ≤ 1).
        fix_mean: keep the mean position of every scan fixed (removes the global-shift
            ambiguity between object and positions).
        group_sizes: sizes of consecutive position groups (scans) whose means are fixed
            separately, or None for one group (see :mod:`.multiscan`).
    """

    start: int = eqx.field(static=True, default=5)
    max_step_px: float = eqx.field(static=True, default=0.5)
    relaxation: float = eqx.field(static=True, default=1.0)
    fix_mean: bool = eqx.field(static=True, default=True)
    group_sizes: tuple[int, ...] | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        if not (self.max_step_px > 0 and 0 < self.relaxation <= 1):
            raise ValueError("PositionRefinement: need max_step_px > 0 and 0 < relaxation ≤ 1")


class Refinement(eqx.Module):
    """Which unknowns besides the object an engine refines, and the constraints it applies.

    Attributes:
        probe: refine the probe.
        probe_start: first iteration at which the probe is updated.
        probe_support: real window ``(py, px)`` multiplied onto every mode after each
            iteration (e.g. :func:`circular_support`), or None.
        probe_band: real window ``(py, px)`` on the probe's far field, in the centred layout
            of the frames (zero frequency at pixel ``(py // 2, px // 2)``), multiplied onto
            the spectrum of every mode after each iteration (e.g. :func:`detector_band`), or
            None. The probe's far field is the bright field the detector records in vacuum:
            on an object grid finer than the detector's (frames embedded in a larger array
            whose outer pixels are unmeasured) the probe's spectrum outside the detector is
            otherwise free, and its refinement fills it.
        probe_power: total probe power Σ_m Σ|P_m|² in photons per frame imposed after each
            iteration (e.g. :func:`probe_power_from_frames`), or None to leave it free.
        orthogonalize_every: orthogonalise the probe modes every k iterations (0: never).
        background: retrieve the incoherent background of the model (its ``background`` must
            be an array; start it positive, the update is multiplicative).
        positions: position refinement settings, or None.
        object_max_amplitude: clip |O| to this value after each iteration (1 for a
            non-amplifying sample), or None.
    """

    probe: bool = eqx.field(static=True, default=True)
    probe_start: int = eqx.field(static=True, default=0)
    probe_support: Float[Array, "py px"] | None = None
    probe_band: Float[Array, "py px"] | None = None
    probe_power: float | None = eqx.field(static=True, default=None)
    orthogonalize_every: int = eqx.field(static=True, default=1)
    background: bool = eqx.field(static=True, default=False)
    positions: PositionRefinement | None = None
    object_max_amplitude: float | None = eqx.field(static=True, default=None)


def circular_support(shape: tuple[int, int], radius_px: float, edge_px: float = 2.0) -> Array:
    """Soft-edged disc window centred on pixel ``(py // 2, px // 2)``.

    Args:
        shape: ``(py, px)`` of the probe.
        radius_px: radius in pixels where the window starts to fall.
        edge_px: width in pixels of the cosine roll-off to zero.

    Returns:
        ``(py, px)`` real window in [0, 1].

    Examples:
        >>> w = circular_support((8, 8), 2.0, 1.0)
        >>> float(w[4, 4]), float(w[0, 0])
        (1.0, 0.0)
    """
    y = np.arange(shape[0]) - shape[0] // 2
    x = np.arange(shape[1]) - shape[1] // 2
    r = np.hypot(y[:, None], x[None, :])
    t = np.clip((r - radius_px) / max(edge_px, 1e-12), 0.0, 1.0)
    return jnp.asarray(0.5 * (1 + np.cos(np.pi * t)))


def detector_band(shape: tuple[int, int], measured: tuple[int, int]) -> Array:
    """The far-field window of a detector of ``measured`` pixels centred in ``shape`` frames.

    Args:
        shape: ``(py, px)`` of the (refined) frames and probe.
        measured: ``(ny, nx)`` measured pixels of the detector, centred like the frames
            (its zero frequency at ``(py // 2, px // 2)``, its first pixel at
            ``py // 2 − ny // 2``).

    Returns:
        ``(py, px)`` window: 1 on the detector, 0 outside (centred layout).

    Examples:
        >>> w = detector_band((8, 8), (4, 4))
        >>> float(w.sum()), float(w[4, 4]), float(w[1, 4])
        (16.0, 1.0, 0.0)
    """
    (py, px), (ny, nx) = shape, measured
    if not (0 < ny <= py and 0 < nx <= px):
        raise ValueError(f"detector_band: measured {measured} must fit in the frame {shape}")
    w = np.zeros((py, px), np.float32)
    cy, cx = py // 2 - ny // 2, px // 2 - nx // 2
    w[cy : cy + ny, cx : cx + nx] = 1.0
    return jnp.asarray(w)


def band_limit(probe: ProbeModes, band: Float[Array, "py px"]) -> ProbeModes:
    """Every mode's far field (centred layout, see :func:`detector_band`) times ``band``."""
    spectrum = far_field(probe) * band.astype(probe.real.dtype)
    return far_field_adjoint(spectrum).astype(probe.dtype)


def probe_power_from_frames(frames, mask=None) -> float:
    """Probe power (photons per frame) estimated from the brightest frames (host side).

    The frame with the most counts sees the most transparent part of the sample; the mean of
    the top 5 % of frame sums estimates Σ_m Σ|P_m|² for a far-field scan (counts under the
    mask are not measured and are missing from the estimate).

    Args:
        frames: ``(n, fy, fx)`` counts, in memory or
            :class:`~diffptycho.recon.ptycho.streaming.StreamedFrames` (one chunked pass).
        mask: valid pixels or None.

    Returns:
        Photons per frame.
    """
    from diffptycho.recon.ptycho.streaming import frame_sums

    sums = np.sort(frame_sums(frames, mask))
    return float(sums[-max(1, len(sums) // 20) :].mean())


def orthogonalize_with_mixing(
    modes: ProbeModes,
) -> tuple[ProbeModes, Complex[Array, "mode mode"]]:
    """Orthogonal probe modes and the unitary mixing W with ``new = W @ modes``.

    Same result as :func:`diffptycho.physics.probe.orthogonalize_modes`; the mixing matrix is
    also returned so that exit waves stored per mode (RAAR/DM) can be rotated consistently.
    """
    m = modes.shape[0]
    a = modes.reshape(m, -1)
    u, s, vh = jnp.linalg.svd(a, full_matrices=False)
    new = s[:, None] * vh
    overlap = jnp.sum(jnp.conj(new) * a, axis=-1)
    mag = jnp.abs(overlap)
    phase = jnp.where(mag > 0, overlap / jnp.where(mag > 0, mag, 1.0), 1.0)
    return (new * phase[:, None]).reshape(modes.shape), phase[:, None] * jnp.conj(u).T


def update_background(
    background: Float[Array, "fy fx"], mean_ratio: Float[Array, "fy fx"]
) -> Float[Array, "fy fx"]:
    """Multiplicative (EM) update of an incoherent background shared by all frames.

    b ← b · ⟨n_j / I_j⟩_j, the expectation–maximisation step of the Poisson likelihood for an
    additive component; its fixed point is ∂L/∂b = 0 and it keeps b ≥ 0.

    Args:
        background: current background in photons per pixel.
        mean_ratio: mean over frames of n / I (1 on masked pixels), see
            :func:`.projections.intensity_ratio`.

    Returns:
        The updated background.
    """
    return background * mean_ratio


def patch_derivatives(
    obj: Complex[Array, "H W"], positions: Positions, shape: tuple[int, int]
) -> tuple[Complex[Array, "b py px"], Complex[Array, "b py px"]]:
    """∂O_j/∂y and ∂O_j/∂x of the bilinear patch extraction (forward-mode derivative)."""

    def one(p):
        def f(q):
            return scan.extract_patch(obj, q, shape)

        _, dy = jax.jvp(f, (p,), (jnp.asarray([1.0, 0.0], p.dtype),))
        _, dx = jax.jvp(f, (p,), (jnp.asarray([0.0, 1.0], p.dtype),))
        return dy, dx

    return jax.vmap(one)(positions)


def position_shifts(
    obj: Complex[Array, "H W"],
    probe: ProbeModes,
    positions: Positions,
    chi: Complex[Array, "b mode py px"],
    max_step_px: float,
    axis_name: str | None = None,
) -> Float[Array, "b 2"]:
    """Gauss–Newton shift of each position explaining the exit-wave change χ.

    Solves the 2 × 2 normal equations Re⟨J_a, J_b⟩ δr = Re⟨J_a, χ⟩ per position, with
    J_y = P ∂O/∂y, J_x = P ∂O/∂x, and clips each component to ±``max_step_px``.

    Args:
        obj: object ``(H, W)``.
        probe: probe modes ``(mode, py, px)``.
        positions: ``(b, 2)`` positions in pixels.
        chi: wanted exit-wave change ``(b, mode, py, px)``.
        max_step_px: largest shift per component, in pixels.
        axis_name: mesh axis the batch is split over (the damping uses the whole batch's
            largest curvature), or None.

    Returns:
        ``(b, 2)`` shifts ``(dy, dx)`` in pixels.
    """
    dy, dx = patch_derivatives(obj, positions, probe.shape[-2:])
    jy = probe[None] * dy[:, None]
    jx = probe[None] * dx[:, None]

    def inner(a, b):
        return jnp.sum(jnp.real(jnp.conj(a) * b), axis=(1, 2, 3))

    ayy, axx, axy = inner(jy, jy), inner(jx, jx), inner(jy, jx)
    by, bx = inner(jy, chi), inner(jx, chi)
    largest = jnp.max(ayy + axx)
    if axis_name is not None:
        largest = jax.lax.pmax(largest, axis_name)
    lam = 1e-6 * largest + jnp.finfo(ayy.dtype).tiny
    ayy, axx = ayy + lam, axx + lam
    det = ayy * axx - axy**2
    shift = jnp.stack([axx * by - axy * bx, ayy * bx - axy * by], axis=-1) / det[:, None]
    return jnp.clip(shift, -max_step_px, max_step_px)


def refine_positions(
    obj: Complex[Array, "H W"],
    probe: ProbeModes,
    positions: Positions,
    chi: Complex[Array, "b mode py px"],
    weights: Float[Array, " b"],
    settings: PositionRefinement | None,
    iteration: Int[Array, ""],
    axis_name: str | None = None,
) -> Positions:
    """Positions moved by the relaxed Gauss–Newton shift (unchanged before ``start``).

    Args:
        obj: object used to compute χ.
        probe: probe used to compute χ.
        positions: ``(b, 2)`` positions of the batch in pixels.
        chi: exit-wave change ``(b, mode, py, px)`` to explain.
        weights: ``(b,)`` 1 for real entries, 0 for padding.
        settings: the refinement settings, or None (positions are returned unchanged).
        iteration: current 0-based iteration.
        axis_name: mesh axis the batch is split over, or None (see :func:`position_shifts`).

    Returns:
        ``(b, 2)`` new positions.
    """
    if settings is None:
        return positions
    shift = settings.relaxation * position_shifts(
        obj, probe, positions, chi, settings.max_step_px, axis_name
    )
    on = (iteration >= settings.start) & (weights > 0)
    return positions + jnp.where(on[:, None], shift, 0.0).astype(positions.dtype)


def clip_positions(
    positions: Positions, obj_shape: tuple[int, int], patch_shape: tuple[int, int]
) -> Positions:
    """Keep refined positions where their patch stays inside the object.

    The bounds are those of :func:`diffptycho.physics.scan.check_positions`; inside ``jit`` a
    patch leaving the object would otherwise be clamped silently.
    """
    (h, w), (py, px) = obj_shape, patch_shape
    lo = jnp.asarray([py // 2 - h // 2, px // 2 - w // 2], positions.dtype)
    hi = jnp.asarray([h - py - h // 2 + py // 2, w - px - w // 2 + px // 2], positions.dtype)
    return jnp.clip(positions, lo, hi)


def check_refinement(model, refinement: Refinement) -> None:
    """Host-side check that the model has what the refinement asks for (call in ``init``).

    Raises:
        ValueError: background retrieval without a background array, or a probe support of
            the wrong shape.
    """
    if refinement.background and model.background is None:
        raise ValueError(
            "Refinement(background=True) needs a model with a background array: start it "
            "positive, e.g. Ptycho2D(..., background=jnp.full(frame_shape, 0.1))"
        )
    for name in ("probe_support", "probe_band"):
        window = getattr(refinement, name)
        if window is not None and window.shape != model.probe.shape[-2:]:
            raise ValueError(
                f"{name}: shape {window.shape} differs from the probe's {model.probe.shape[-2:]}"
            )


def check_bilinear_positions(model, refinement: Refinement, engine: str) -> None:
    """Host-side: the classic engines' position update needs bilinear patches.

    Raises:
        ValueError: position refinement with ``subpixel="fourier"`` (the update differentiates
            the interpolated patch).
    """
    sub = getattr(model, "subpixel", "bilinear")
    if refinement.positions is not None and sub != "bilinear":
        raise ValueError(
            f"{engine}: position refinement needs subpixel='bilinear' (the model has "
            f"subpixel={sub!r}): its update differentiates the interpolated patch; refine the "
            "positions with bilinear patches first, or use a gradient engine (adam, lbfgs)"
        )


def fix_mean_positions(
    positions: Positions, reference: Positions, group_sizes: tuple[int, ...] | None
) -> Positions:
    """Remove the mean drift from ``reference`` of every group of consecutive positions."""
    n = positions.shape[0]
    sizes = (n,) if group_sizes is None else tuple(group_sizes)
    if sum(sizes) != n:
        raise ValueError(f"group_sizes={sizes} do not add up to {n} positions")
    seg = jnp.asarray(np.repeat(np.arange(len(sizes)), sizes))
    drift = positions - reference
    mean = jax.ops.segment_sum(drift, seg, len(sizes)) / jnp.asarray(sizes, drift.dtype)[:, None]
    return positions - mean[seg]


def constrain_probe(probe: ProbeModes, refinement: Refinement) -> ProbeModes:
    """Support window, far-field band and total power of the probe (no orthogonalisation)."""
    if refinement.probe_support is not None:
        probe = probe * refinement.probe_support.astype(probe.real.dtype)
    if refinement.probe_band is not None:
        probe = band_limit(probe, refinement.probe_band)
    if refinement.probe_power is not None:
        power = jnp.sum(jnp.real(probe) ** 2 + jnp.imag(probe) ** 2)
        probe = probe * jnp.sqrt(refinement.probe_power / jnp.maximum(power, 1e-30))
    return probe


def clip_amplitude(obj: Complex[Array, "H W"], max_amplitude: float) -> Complex[Array, "H W"]:
    """Scale down object pixels whose amplitude exceeds ``max_amplitude``."""
    mag = jnp.abs(obj)
    return obj * jnp.minimum(1.0, max_amplitude / jnp.maximum(mag, 1e-30))


def end_of_iteration(
    model,
    refinement: Refinement,
    iteration: Int[Array, ""],
    positions0: Positions,
    mean_ratio: Float[Array, "fy fx"] | None,
):
    """Apply the per-iteration constraints to a ``Ptycho2D``-like model.

    Order: background EM update, position mean fixing and clipping into the object, object
    clipping, probe support and power, then mode orthogonalisation (every
    ``orthogonalize_every`` iterations).

    Args:
        model: model with ``object``, ``probe``, ``positions``, ``background`` leaves.
        refinement: the settings.
        iteration: 0-based index of the iteration that just ended.
        positions0: positions at the start of the reconstruction (mean reference).
        mean_ratio: mean n / I over the frames of this iteration, for the background.

    Returns:
        ``(model, mixing)`` where ``mixing`` is the ``(mode, mode)`` matrix the probe modes
        were rotated by (identity when not orthogonalised).
    """
    if refinement.background and model.background is not None and mean_ratio is not None:
        bg = update_background(model.background, mean_ratio.astype(model.background.dtype))
        model = eqx.tree_at(lambda m: m.background, model, bg)
    pr = refinement.positions
    if pr is not None:
        pos = model.positions
        if pr.fix_mean:
            pos = fix_mean_positions(pos, positions0, pr.group_sizes)
        pos = clip_positions(pos, model.object.shape, model.probe.shape[-2:])
        model = eqx.tree_at(lambda m: m.positions, model, pos)
    if refinement.object_max_amplitude is not None:
        obj = clip_amplitude(model.object, refinement.object_max_amplitude)
        model = eqx.tree_at(lambda m: m.object, model, obj)
    probe = model.probe
    n_modes = probe.shape[0]
    eye = jnp.eye(n_modes, dtype=probe.dtype)
    if refinement.probe:
        active = iteration >= refinement.probe_start
        probe = jnp.where(active, constrain_probe(probe, refinement), probe)
    mixing = eye
    k = refinement.orthogonalize_every
    if n_modes > 1 and k > 0:
        probe, mixing = jax.lax.cond(
            (iteration + 1) % k == 0,
            orthogonalize_with_mixing,
            lambda p: (p, eye),
            probe,
        )
    return eqx.tree_at(lambda m: m.probe, model, probe), mixing


__all__ = [
    "PositionRefinement",
    "Refinement",
    "band_limit",
    "detector_band",
    "check_refinement",
    "circular_support",
    "clip_positions",
    "clip_amplitude",
    "constrain_probe",
    "end_of_iteration",
    "fix_mean_positions",
    "orthogonalize_with_mixing",
    "patch_derivatives",
    "position_shifts",
    "probe_power_from_frames",
    "refine_positions",
    "update_background",
]
