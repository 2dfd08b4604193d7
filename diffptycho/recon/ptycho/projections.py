"""Pieces shared by the classic engines: exit waves, Fourier projection, overlap updates.

The Fourier-magnitude projection handles mixed modes, the detector mask and an incoherent
background; the overlap (object/probe) least-squares updates are built on the patch operators.

Everything here reuses the forward operators of the model (:func:`extract_patches`, its exact
adjoint :func:`insert_patches`, the model's propagator and its adjoint); nothing reimplements
the physics.

Mixed states: the measured intensity is n = Σ_m |Ψ_m|² + b (modes m, incoherent background
b). The Fourier projection scales every mode by the same factor √(n / I): the measured photons
are split between the coherent modes and the background in the model's proportions
(Thibault & Menzel 2013). Masked pixels keep the model's amplitudes (factor 1).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from diffptycho._typing import Array, Complex, Float, Positions
from diffptycho.models.propagators import AbstractPropagator
from diffptycho.physics import scan
from diffptycho.recon.ptycho.data import frame_losses

EPS = 1e-9
"""Floor (photons) under the model intensity in n / I, as in the losses."""


def subpixel_of(model) -> str:
    """The model's sub-pixel mode (:data:`~diffptycho.physics.scan.SUBPIXEL`).

    Models without a ``subpixel`` field are bilinear.
    """
    return getattr(model, "subpixel", "bilinear")


def position_probes(
    probe: Complex[Array, "mode py px"], positions: Positions, subpixel: str = "bilinear"
) -> tuple[Array, Complex[Array, "b mode py px"], Array | None]:
    """Where to read the patches, the probe seen at each position, and the probe's shifts.

    ``bilinear``: the positions, the probe itself (1, mode, py, px) and no shifts.
    ``fourier``: the integer parts, the probe moved by the fractions
    (:func:`~diffptycho.physics.scan.shift_probe`, (b, mode, py, px)) and the fractions (b, 2).
    """
    if subpixel == "bilinear":
        return positions, probe[None], None
    whole, frac = scan.split_positions(positions)
    return whole, scan.shift_probe(probe, frac), frac


def exit_waves(
    obj: Complex[Array, "H W"],
    probe: Complex[Array, "mode py px"],
    positions: Positions,
    subpixel: str = "bilinear",
    at: tuple | None = None,
) -> tuple[Complex[Array, "b py px"], Complex[Array, "b mode py px"]]:
    """Object patches O_j and exit waves ψ_jm = P_jm · O_j at the given positions.

    Args:
        obj: complex transmission ``(H, W)``.
        probe: probe modes ``(mode, py, px)``.
        positions: ``(b, 2)`` scan positions ``(y, x)`` in object pixels.
        subpixel: ``bilinear`` (P_j = P, patch interpolated) or ``fourier`` (patch at the
            integer position, P_j the probe moved by the fraction).
        at: :func:`position_probes` of these positions, when the caller has it already (the
            shifted probes cost an FFT pair each).

    Returns:
        ``patches (b, py, px)`` and ``waves (b, mode, py, px)``.
    """
    where, probes, _ = position_probes(probe, positions, subpixel) if at is None else at
    patches = scan.extract_patches(obj, where, probe.shape[-2:])
    return patches, probes * patches[:, None]


def model_intensity(
    detector_waves: Complex[Array, "b mode fy fx"], background: Float[Array, "fy fx"] | None
) -> Float[Array, "b fy fx"]:
    """Expected counts Σ_m |Ψ_m|² (+ background)."""
    i = jnp.sum(jnp.real(detector_waves) ** 2 + jnp.imag(detector_waves) ** 2, axis=1)
    return i if background is None else i + background


def intensity_ratio(
    intensity: Float[Array, "b fy fx"], frames: Float[Array, "b fy fx"], mask: Array | None
) -> Float[Array, "b fy fx"]:
    """n / I per pixel (1 on masked pixels): the Fourier projection's squared factor.

    It is also the multiplicative (EM) update factor of an incoherent background, see
    :func:`diffptycho.recon.ptycho.constraints.update_background`.
    """
    ratio = frames / (intensity + EPS)
    return ratio if mask is None else jnp.where(mask, ratio, 1.0)


def fourier_projection(
    detector_waves: Complex[Array, "b mode fy fx"],
    frames: Float[Array, "b fy fx"],
    mask: Array | None = None,
    background: Float[Array, "fy fx"] | None = None,
) -> Complex[Array, "b mode fy fx"]:
    """Project detector-plane waves onto the measured intensities (mixed states, background).

    Ψ'_m = Ψ_m · √(n / (Σ_k |Ψ_k|² + b)) on valid pixels, Ψ'_m = Ψ_m on masked pixels.

    Args:
        detector_waves: propagated exit waves ``(b, mode, fy, fx)``.
        frames: measured counts ``(b, fy, fx)`` (photons, ≥ 0).
        mask: valid pixels (True), ``(fy, fx)`` or ``(b, fy, fx)``, or None.
        background: incoherent background ``(fy, fx)`` in photons, or None.

    Returns:
        The projected waves, same shape as ``detector_waves``.

    Examples:
        >>> import jax.numpy as jnp
        >>> w = jnp.full((1, 1, 1, 2), 2.0 + 0j)
        >>> fourier_projection(w, jnp.asarray([[[9.0, 1.0]]])).real.round(4).tolist()
        [[[[3.0, 1.0]]]]
    """
    ratio = intensity_ratio(model_intensity(detector_waves, background), frames, mask)
    return detector_waves * jnp.sqrt(ratio)[:, None]


class Residual(NamedTuple):
    """What a position-wise engine needs from one minibatch.

    Attributes:
        patches: object patches O_j ``(b, py, px)``.
        waves: model exit waves ψ_j ``(b, mode, py, px)``.
        chi: exit-wave change to the Fourier projection, F⁻¹(Ψ' − Ψ), zero for padding.
        loss: weighted sum of the per-frame losses of the model before the update.
        ratio: weighted sum over the batch of n / I ``(fy, fx)`` (background update).
    """

    patches: Complex[Array, "b py px"]
    waves: Complex[Array, "b mode py px"]
    chi: Complex[Array, "b mode py px"]
    loss: Float[Array, ""]
    ratio: Float[Array, "fy fx"]


def exit_wave_residual(
    obj: Complex[Array, "H W"],
    probe: Complex[Array, "mode py px"],
    positions: Positions,
    propagator: AbstractPropagator,
    background: Float[Array, "fy fx"] | None,
    frames: Float[Array, "b fy fx"],
    mask: Array | None,
    weights: Float[Array, " b"],
    loss: str = "poisson",
    subpixel: str = "bilinear",
    at: tuple | None = None,
) -> Residual:
    """Exit waves, their Fourier-projection change χ and the batch loss (two FFTs per mode).

    Detector-plane inputs (``frames``, ``mask``, ``background``) and the returned ``ratio`` are
    in the propagator's native layout (:meth:`PtychoData.take_native`).

    Args:
        obj: object ``(H, W)``.
        probe: probe modes ``(mode, py, px)``.
        positions: ``(b, 2)`` positions in pixels.
        propagator: the model's propagator (far or near field).
        background: incoherent background in photons, or None.
        frames: measured counts ``(b, fy, fx)``.
        mask: valid pixels or None.
        weights: ``(b,)`` 1 for real positions, 0 for padding.
        loss: name of the reported loss.
        subpixel: see :func:`exit_waves`.
        at: see :func:`exit_waves`.

    Returns:
        A :class:`Residual`.
    """
    patches, waves = exit_waves(obj, probe, positions, subpixel, at)
    detector = propagator.native(waves)
    if mask is not None and mask.ndim == 2:
        mask = jnp.broadcast_to(mask, frames.shape)
    changed, loss_sum, ratio_sum = jax.lax.platform_dependent(
        detector,
        frames,
        mask,
        background,
        weights,
        cpu=functools.partial(_projected_change_loop, loss=loss),
        default=functools.partial(_projected_change_batched, loss=loss),
    )
    return Residual(
        patches=patches,
        waves=waves,
        chi=propagator.native_adjoint(changed),
        loss=loss_sum,
        ratio=ratio_sum,
    )


def _projected_change_batched(detector, frames, mask, background, weights, loss):
    """Ψ' − Ψ (weighted), the weighted loss and Σ_j w_j n_j / I_j of a batch, at once."""
    intensity = model_intensity(detector, background)
    ratio = intensity_ratio(intensity, frames, mask)
    factor = (jnp.sqrt(ratio) - 1) * weights[:, None, None]
    return (
        detector * factor[:, None].astype(detector.dtype),
        jnp.sum(weights * frame_losses(intensity, frames, mask, loss)),
        jnp.sum(weights[:, None, None] * ratio, axis=0),
    )


def _projected_change_loop(detector, frames, mask, background, weights, loss):
    """:func:`_projected_change_batched` frame after frame (CPU: one pass, in cache).

    XLA's CPU backend splits the batched form into several passes over the batch (its
    reduction kernels neither take complex operands nor fuse the logarithms of the loss).
    """

    def body(j, acc):
        changed, loss_sum, ratio_sum = acc
        one = _projected_change_batched(
            detector[j, None],
            frames[j, None],
            None if mask is None else mask[j, None],
            background,
            weights[j, None],
            loss,
        )
        changed = jax.lax.dynamic_update_index_in_dim(changed, one[0][0], j, 0)
        return changed, loss_sum + one[1], ratio_sum + one[2]

    zero = (
        jnp.zeros_like(detector),
        jnp.zeros((), weights.dtype),
        jnp.zeros(frames.shape[1:], weights.dtype),
    )
    return jax.lax.fori_loop(0, detector.shape[0], body, zero)


def object_numerator(
    waves: Complex[Array, "b mode py px"],
    probe: Complex[Array, "mode py px"],
    positions: Positions,
    obj_shape: tuple[int, int],
    subpixel: str = "bilinear",
    at: tuple | None = None,
) -> Complex[Array, "H W"]:
    """Σ_j Σ_m P_jm* ψ_jm placed at the positions (adjoint of the patch extraction).

    ``at``: see :func:`exit_waves`.
    """
    where, probes, _ = position_probes(probe, positions, subpixel) if at is None else at
    patches = jnp.sum(jnp.conj(probes) * waves, axis=1)
    return scan.insert_patches(patches, where, obj_shape)


def illumination(
    probe: Complex[Array, "mode py px"],
    positions: Positions,
    obj_shape: tuple[int, int],
    weights: Float[Array, " b"] | None = None,
    subpixel: str = "bilinear",
    at: tuple | None = None,
) -> Float[Array, "H W"]:
    """Σ_j w_j Σ_m |P_jm|²(r − r_j): the object-update normalisation.

    ``at``: see :func:`exit_waves`.
    """
    if subpixel != "bilinear":
        where, probes, _ = position_probes(probe, positions, subpixel) if at is None else at
        power = jnp.sum(jnp.real(probes) ** 2 + jnp.imag(probes) ** 2, axis=1)
        if weights is not None:
            power = weights[:, None, None] * power
        return scan.insert_patches(power, where, obj_shape)
    power = jnp.sum(jnp.real(probe) ** 2 + jnp.imag(probe) ** 2, axis=0)
    if weights is None:
        return scan.illumination_map(power, positions, obj_shape)
    return scan.insert_patches(weights[:, None, None] * power[None], positions, obj_shape)


def probe_numerator(
    waves: Complex[Array, "b mode py px"],
    patches: Complex[Array, "b py px"],
    shifts: Float[Array, "b 2"] | None = None,
) -> Complex[Array, "mode py px"]:
    """Σ_j O_j* ψ_jm for every mode.

    With the probe's ``shifts`` (``fourier`` sub-pixel positions, :func:`position_probes`)
    each term is moved back by its shift first: the adjoint of moving the probe.
    """
    terms = jnp.conj(patches)[:, None] * waves
    if shifts is None:
        return jnp.sum(terms, axis=0)
    back = jax.vmap(lambda t, s: scan.shift_probe(t, -s[None])[0])(terms, shifts)
    return jnp.sum(back, axis=0)


def probe_denominator(
    patches: Complex[Array, "b py px"], weights: Float[Array, " b"] | None = None
) -> Float[Array, "py px"]:
    """Σ_j w_j |O_j|²: the probe-update normalisation."""
    power = jnp.real(patches) ** 2 + jnp.imag(patches) ** 2
    if weights is not None:
        power = weights[:, None, None] * power
    return jnp.sum(power, axis=0)


def regularized_step(
    numerator: Complex[Array, "*s"], denominator: Float[Array, "*s"], regularization: float
) -> Complex[Array, "*s"]:
    """Least-squares correction num / (den + δ), δ = ``regularization`` · max(den).

    Exact where the object (probe) is well covered, vanishing where it is not covered at all.
    """
    delta = regularization * jnp.max(denominator) + jnp.finfo(denominator.dtype).tiny
    return numerator / (denominator + delta)


__all__ = [
    "EPS",
    "Residual",
    "exit_wave_residual",
    "exit_waves",
    "fourier_projection",
    "illumination",
    "intensity_ratio",
    "model_intensity",
    "object_numerator",
    "probe_denominator",
    "probe_numerator",
    "regularized_step",
]
