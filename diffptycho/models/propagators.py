"""Propagators from the exit-wave plane to the detector, as thin Modules over physics functions."""

from __future__ import annotations

import abc

import equinox as eqx
import jax.numpy as jnp

from diffptycho._typing import Array, Complex, Shaped
from diffptycho.physics import propagation


class AbstractPropagator(eqx.Module):
    """Maps exit waves (…, y, x) to detector-plane amplitudes; linear and unitary."""

    @abc.abstractmethod
    def __call__(self, wave: Complex[Array, "*b y x"]) -> Complex[Array, "*b y x"]:
        """Propagate ``wave`` to the detector."""

    @abc.abstractmethod
    def adjoint(self, wave: Complex[Array, "*b y x"]) -> Complex[Array, "*b y x"]:
        """Back-propagate detector amplitudes to the exit-wave plane."""

    # The native layout: iterative engines only ever use detector amplitudes through their
    # moduli and through round trips adjoint(self(x) · M) with a real multiplier M (Fourier
    # projection, likelihood gradients). A propagator may do those in a cheaper layout of its
    # own, provided that for every wave x and real detector image M
    #     |native(x)|² = to_native(|self(x)|²),
    #     native_adjoint(native(x) · to_native(M)) = adjoint(self(x) · M).
    # Data are moved to that layout once (``to_native``), model images back (``from_native``).

    def native(self, wave: Complex[Array, "*b y x"]) -> Complex[Array, "*b y x"]:
        """Detector amplitudes in the native layout (see the class comment); default: self."""
        return self(wave)

    def native_adjoint(self, wave: Complex[Array, "*b y x"]) -> Complex[Array, "*b y x"]:
        """Adjoint of :meth:`native`; default: :meth:`adjoint`."""
        return self.adjoint(wave)

    def to_native(self, image: Shaped[Array, "*b y x"]) -> Shaped[Array, "*b y x"]:
        """Detector-plane image (frames, mask, background) → native layout; default: as is."""
        return image

    def from_native(self, image: Shaped[Array, "*b y x"]) -> Shaped[Array, "*b y x"]:
        """Inverse of :meth:`to_native`."""
        return image


class FarField(AbstractPropagator):
    """Fraunhofer geometry: a unitary FFT onto centred detector frames."""

    def __call__(self, wave: Complex[Array, "*b y x"]) -> Complex[Array, "*b y x"]:
        """See :func:`diffptycho.physics.propagation.far_field`."""
        return propagation.far_field(wave)

    def adjoint(self, wave: Complex[Array, "*b y x"]) -> Complex[Array, "*b y x"]:
        """See :func:`diffptycho.physics.propagation.far_field_adjoint`."""
        return propagation.far_field_adjoint(wave)

    # Native layout for even frame sides: the unshifted FFT. For even N the input shift only
    # multiplies the spectrum by (−1)^k, which a real multiplier commutes with and the adjoint
    # undoes, and the output shift is a fixed permutation moved onto the data once: the engines
    # then do no fftshift at all (on the CPU the two shifts cost as much as the FFTs).

    def native(self, wave: Complex[Array, "*b y x"]) -> Complex[Array, "*b y x"]:
        """Unshifted unitary FFT (even sides), else :meth:`__call__`."""
        if _even(wave):
            return jnp.fft.fft2(wave, norm="ortho")
        return self(wave)

    def native_adjoint(self, wave: Complex[Array, "*b y x"]) -> Complex[Array, "*b y x"]:
        """Unshifted unitary inverse FFT (even sides), else :meth:`adjoint`."""
        if _even(wave):
            return jnp.fft.ifft2(wave, norm="ortho")
        return self.adjoint(wave)

    def to_native(self, image: Shaped[Array, "*b y x"]) -> Shaped[Array, "*b y x"]:
        """Centred frames → FFT order (``ifftshift``, even sides)."""
        return jnp.fft.ifftshift(image, axes=(-2, -1)) if _even(image) else image

    def from_native(self, image: Shaped[Array, "*b y x"]) -> Shaped[Array, "*b y x"]:
        """FFT order → centred frames (``fftshift``, even sides)."""
        return jnp.fft.fftshift(image, axes=(-2, -1)) if _even(image) else image


def _even(array: Array) -> bool:
    return all(n % 2 == 0 for n in array.shape[-2:])


class NearField(AbstractPropagator):
    """Fresnel (near-field) geometry: paraxial transfer function over ``distance_m``.

    Attributes:
        pixel_size_m: sample-plane pixel size in m.
        wavelength_m: wavelength in m.
        distance_m: sample-to-detector distance in m (plane-wave illumination; for a
            divergent beam pass the effective distance of the Fresnel scaling theorem).
    """

    pixel_size_m: float = eqx.field(static=True)
    wavelength_m: float = eqx.field(static=True)
    distance_m: float = eqx.field(static=True)

    def __check_init__(self):
        if not (self.pixel_size_m > 0 and self.wavelength_m > 0):
            raise ValueError("NearField: pixel_size_m and wavelength_m must be positive (m)")

    def __call__(self, wave: Complex[Array, "*b y x"]) -> Complex[Array, "*b y x"]:
        """Propagate forward by ``distance_m``."""
        return propagation.fresnel_propagate(
            wave, self.pixel_size_m, self.wavelength_m, self.distance_m
        )

    def adjoint(self, wave: Complex[Array, "*b y x"]) -> Complex[Array, "*b y x"]:
        """Propagate backward by ``distance_m`` (the adjoint of a unitary propagation)."""
        return propagation.fresnel_propagate(
            wave, self.pixel_size_m, self.wavelength_m, -self.distance_m
        )
