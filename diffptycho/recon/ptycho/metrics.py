"""Reconstruction quality against a known truth (simulations)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from diffptycho._typing import Array, Bool, Complex, Float, Positions
from diffptycho.recon.ptycho.projections import illumination


@functools.partial(jax.jit, static_argnames=("remove_ramp",))
def object_error(
    estimate: Complex[Array, "H W"],
    truth: Complex[Array, "H W"],
    region: Bool[Array, "H W"] | None = None,
    remove_ramp: bool = True,
) -> Float[Array, ""]:
    """Relative error of an object after removing the global complex scale and phase ramp.

    err = min ‖c · e^{i(a y + b x)} · estimate − truth‖ / ‖truth‖ over complex c (and real
    a, b in rad/pixel when ``remove_ramp``), on ``region``. Blind ptychography determines the
    object only up to these: c trades against the probe's scale and phase, and a linear
    phase ramp on the object is undone by the opposite ramp on the probe (the diffraction
    patterns do not change). For given (a, b) the best c is closed-form; the best ramp
    maximises |Σ conj(estimate) · truth · e^{−i(a y + b x)}|, found on a 4× zero-padded FFT
    and refined by Newton steps.

    Args:
        estimate: reconstructed transmission.
        truth: true transmission, same shape.
        region: pixels to compare (True), e.g. :func:`illuminated_region`, or None for all.
        remove_ramp: also remove the best linear phase ramp.

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
    if remove_ramp:
        e = e * jnp.exp(1j * _phase_ramp(jnp.conj(e) * t)).astype(e.dtype)
    c = jnp.vdot(e, t) / jnp.maximum(jnp.vdot(e, e).real, 1e-30)
    return jnp.linalg.norm(c * e - t) / jnp.linalg.norm(t)


def _phase_ramp(z: Complex[Array, "H W"], newton_steps: int = 6) -> Float[Array, "H W"]:
    """Phase a·y + b·x maximising |Σ z e^{−i(a y + b x)}| (the peak of z's spectrum)."""
    h, w = z.shape
    real = z.real.dtype
    spectrum = jnp.abs(jnp.fft.fft2(z, s=(4 * h, 4 * w)))
    k = jnp.unravel_index(jnp.argmax(spectrum), spectrum.shape)
    freq = [jnp.fft.fftfreq(4 * h)[k[0]], jnp.fft.fftfreq(4 * w)[k[1]]]
    ab = 2 * jnp.pi * jnp.stack(freq).astype(real)
    yy, xx = jnp.meshgrid(jnp.arange(h, dtype=real), jnp.arange(w, dtype=real), indexing="ij")

    def power(v):
        s = jnp.sum(z * jnp.exp(-1j * (v[0] * yy + v[1] * xx)))
        return jnp.real(s) ** 2 + jnp.imag(s) ** 2

    for _ in range(newton_steps):
        g = jax.grad(power)(ab)
        hess = jax.hessian(power)(ab)
        step = jnp.linalg.solve(hess, g)
        # accept only an ascent step inside the FFT bin (Newton may head to a saddle)
        ok = jnp.all(jnp.isfinite(step)) & (jnp.max(jnp.abs(step)) < jnp.pi / max(h, w))
        ab = jnp.where(ok & (power(ab - step) >= power(ab)), ab - step, ab)
    return ab[0] * yy + ab[1] * xx


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
    shape = (int(obj_shape[0]), int(obj_shape[1]))
    return _illuminated(jnp.asarray(probe), jnp.asarray(positions), shape, threshold)


@functools.partial(jax.jit, static_argnums=2)
def _illuminated(probe, positions, obj_shape, threshold):
    # jitted: op-by-op dispatch of the scatter-add is slow on CPU
    illum = illumination(probe, positions, obj_shape)
    return illum > threshold * jnp.max(illum)


__all__ = ["illuminated_region", "object_error"]
