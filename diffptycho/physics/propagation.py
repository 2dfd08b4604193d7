"""Free-space propagation of a complex wavefield sampled on a 2-D grid.

Far field: unitary FFT (``norm="ortho"``) with centred frames, so a field centred in the array
maps to a diffraction pattern centred in the array and energy is conserved (Parseval).
Near field: paraxial Fresnel transfer function H(f) = exp(−iπλz|f|²) for the wave convention
exp(i(kz − ωt)); the global phase exp(ikz) is dropped.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from diffptycho._typing import Array, Complex, Float

_AXES = (-2, -1)


def far_field(field: Complex[Array, "*b y x"]) -> Complex[Array, "*b y x"]:
    """Fraunhofer propagation to a centred detector frame (unitary FFT).

    Args:
        field: exit wave, centred in the array.

    Returns:
        Far-field amplitude, zero frequency at the array centre.
    """
    return jnp.fft.fftshift(
        jnp.fft.fft2(jnp.fft.ifftshift(field, axes=_AXES), norm="ortho"), axes=_AXES
    )


def far_field_adjoint(wave: Complex[Array, "*b y x"]) -> Complex[Array, "*b y x"]:
    """Adjoint (= inverse, the FFT being unitary) of :func:`far_field`."""
    return jnp.fft.fftshift(
        jnp.fft.ifft2(jnp.fft.ifftshift(wave, axes=_AXES), norm="ortho"), axes=_AXES
    )


def fresnel_transfer_function(
    shape: tuple[int, int], pixel_size_m: float, wavelength_m: float, distance_m: float
) -> Complex[Array, "y x"]:
    """Paraxial Fresnel transfer function on the FFT grid (unshifted frequencies).

    Args:
        shape: ``(ny, nx)`` of the field.
        pixel_size_m: sample spacing in m (square pixels).
        wavelength_m: wavelength in m.
        distance_m: propagation distance in m (negative propagates backwards).

    Returns:
        H(f_y, f_x) = exp(−iπ λ z (f_x² + f_y²)), laid out like ``fft2`` output.
    """
    fy = np.fft.fftfreq(shape[0], d=pixel_size_m)
    fx = np.fft.fftfreq(shape[1], d=pixel_size_m)
    f2 = fy[:, None] ** 2 + fx[None, :] ** 2
    return jnp.asarray(np.exp(-1j * np.pi * wavelength_m * distance_m * f2))


def fresnel_propagate(
    field: Complex[Array, "*b y x"],
    pixel_size_m: float,
    wavelength_m: float,
    distance_m: float,
) -> Complex[Array, "*b y x"]:
    """Near-field (Fresnel) propagation by the angular-spectrum transfer function.

    Unitary; its adjoint is propagation by ``-distance_m``. The result has the field's
    precision (a complex64 wave stays complex64 with x64 enabled).

    Args:
        field: input wavefield.
        pixel_size_m: sample spacing in m.
        wavelength_m: wavelength in m.
        distance_m: propagation distance in m.

    Returns:
        The propagated field on the same grid.
    """
    h = fresnel_transfer_function(field.shape[-2:], pixel_size_m, wavelength_m, distance_m)
    return fresnel_propagate_tf(field, h)


def fresnel_propagate_tf(
    field: Complex[Array, "*b y x"], transfer: Complex[Array, "y x"]
) -> Complex[Array, "*b y x"]:
    """Apply a precomputed transfer function (see :func:`fresnel_transfer_function`).

    The transfer function is cast to the field's complex dtype, so that the (complex128)
    function of an x64 session does not promote a complex64 wave.
    """
    dtype = jnp.result_type(field.dtype, jnp.complex64)
    spectrum = jnp.fft.fft2(field.astype(dtype), axes=_AXES)
    return jnp.fft.ifft2(spectrum * transfer.astype(dtype), axes=_AXES)


def intensity(wave: Complex[Array, "*m y x"], axis: int | None = 0) -> Float[Array, "..."]:
    """Incoherent sum of |wave|² over mixed-state modes (``axis``; None: no sum)."""
    i = jnp.real(wave) ** 2 + jnp.imag(wave) ** 2
    return i if axis is None else jnp.sum(i, axis=axis)
