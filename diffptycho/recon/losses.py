"""Data-fidelity losses between expected and measured diffraction intensities.

Both take expected counts ``predicted`` (≥ 0) and measured counts, with an optional detector
mask (True = valid pixel), and return the mean over frames of the sum over valid pixels, so the
value does not depend on the minibatch size.
"""

from __future__ import annotations

import jax.numpy as jnp

from diffptycho._typing import Array, Bool, Float

_EPS = 1e-9


def _masked_sum(per_pixel: Float[Array, "*b fy fx"], mask) -> Float[Array, ""]:
    if mask is not None:
        per_pixel = jnp.where(mask, per_pixel, 0.0)
    frames = per_pixel.reshape((-1,) + per_pixel.shape[-2:]).shape[0]
    return jnp.sum(per_pixel) / frames


def poisson_nll(
    predicted: Float[Array, "*b fy fx"],
    measured: Float[Array, "*b fy fx"],
    mask: Bool[Array, "fy fx"] | None = None,
    eps: float = _EPS,
) -> Float[Array, ""]:
    """Poisson negative log-likelihood up to a data-only constant.

    L = Σ (I − n log(I + ε)) + n log(n + ε) − n, which is ≥ 0 and zero at I = n.

    Args:
        predicted: expected photon counts I.
        measured: measured photon counts n.
        mask: valid detector pixels (True) or None for all.
        eps: floor in photons that keeps log finite where I = 0.

    Returns:
        Scalar loss (mean over frames of the sum over valid pixels).
    """
    # counts often arrive as float32: promote them, or the data-only terms n·log n (≈ 1e5 per
    # pixel) cancel in float32 and swamp a loss of order 1 per pixel
    n = jnp.asarray(measured).astype(jnp.result_type(predicted, measured))
    per_pixel = predicted - n + n * (jnp.log(n + eps) - jnp.log(predicted + eps))
    return _masked_sum(per_pixel, mask)


def amplitude_gaussian(
    predicted: Float[Array, "*b fy fx"],
    measured: Float[Array, "*b fy fx"],
    mask: Bool[Array, "fy fx"] | None = None,
    eps: float = _EPS,
) -> Float[Array, ""]:
    """Gaussian likelihood on amplitudes: Σ (√I − √n)² (variance-stabilised Poisson).

    Args:
        predicted: expected photon counts I.
        measured: measured photon counts n.
        mask: valid detector pixels (True) or None for all.
        eps: floor in photons inside the square root, so the gradient stays finite at I = 0.

    Returns:
        Scalar loss (mean over frames of the sum over valid pixels).
    """
    n = jnp.asarray(measured).astype(jnp.result_type(predicted, measured))
    per_pixel = (jnp.sqrt(predicted + eps) - jnp.sqrt(n)) ** 2
    return _masked_sum(per_pixel, mask)


LOSSES = {"poisson": poisson_nll, "amplitude": amplitude_gaussian}
"""Losses by the names the CLI and configs use."""
