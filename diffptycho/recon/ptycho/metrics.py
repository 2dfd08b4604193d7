"""Reconstruction quality against a known truth (simulations)."""

from __future__ import annotations

import jax.numpy as jnp

from diffptycho._typing import Array, Bool, Complex, Float, Positions
from diffptycho.recon.ptycho.projections import illumination


def object_error(
    estimate: Complex[Array, "H W"],
    truth: Complex[Array, "H W"],
    region: Bool[Array, "H W"] | None = None,
) -> Float[Array, ""]:
    """Relative error of an object after removing the global complex scale (phase and amplitude).

    err = min_c ‖c · estimate − truth‖ / ‖truth‖ over complex c, on ``region``; the optimum is
    c = ⟨estimate, truth⟩ / ⟨estimate, estimate⟩. Ptychography determines the object only up to
    this factor (traded against the probe).

    Args:
        estimate: reconstructed transmission.
        truth: true transmission, same shape.
        region: pixels to compare (True), e.g. :func:`illuminated_region`, or None for all.

    Returns:
        The relative error (0 for a perfect reconstruction, 1 for a zero estimate).

    Examples:
        >>> import jax.numpy as jnp
        >>> t = jnp.exp(1j * jnp.linspace(0, 1, 16)).reshape(4, 4)
        >>> float(object_error(0.5j * t, t)) < 1e-6
        True
    """
    e = jnp.asarray(estimate)
    t = jnp.asarray(truth).astype(e.dtype)
    if e.shape != t.shape:
        raise ValueError(f"estimate {e.shape} and truth {t.shape} differ in shape")
    if region is not None:
        e = jnp.where(region, e, 0)
        t = jnp.where(region, t, 0)
    c = jnp.vdot(e, t) / jnp.maximum(jnp.vdot(e, e).real, 1e-30)
    return jnp.linalg.norm(c * e - t) / jnp.linalg.norm(t)


def illuminated_region(
    probe: Complex[Array, "mode py px"],
    positions: Positions,
    obj_shape: tuple[int, int],
    threshold: float = 0.1,
) -> Bool[Array, "H W"]:
    """Object pixels whose total illumination exceeds ``threshold`` × its maximum.

    Args:
        probe: probe modes ``(mode, py, px)``.
        positions: ``(n, 2)`` scan positions in pixels.
        obj_shape: ``(H, W)``.
        threshold: fraction of the maximum illumination.

    Returns:
        ``(H, W)`` boolean mask.
    """
    illum = illumination(jnp.asarray(probe), jnp.asarray(positions), obj_shape)
    return illum > threshold * jnp.max(illum)


__all__ = ["illuminated_region", "object_error"]
