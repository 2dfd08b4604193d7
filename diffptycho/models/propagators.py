"""Propagators from the exit-wave plane to the detector, as thin Modules over physics functions."""

from __future__ import annotations

import abc

import equinox as eqx

from diffptycho._typing import Array, Complex
from diffptycho.physics import propagation


class AbstractPropagator(eqx.Module):
    """Maps exit waves (…, y, x) to detector-plane amplitudes; linear and unitary."""

    @abc.abstractmethod
    def __call__(self, wave: Complex[Array, "*b y x"]) -> Complex[Array, "*b y x"]:
        """Propagate ``wave`` to the detector."""

    @abc.abstractmethod
    def adjoint(self, wave: Complex[Array, "*b y x"]) -> Complex[Array, "*b y x"]:
        """Back-propagate detector amplitudes to the exit-wave plane."""


class FarField(AbstractPropagator):
    """Fraunhofer geometry: a unitary FFT onto centred detector frames."""

    def __call__(self, wave: Complex[Array, "*b y x"]) -> Complex[Array, "*b y x"]:
        """See :func:`diffptycho.physics.propagation.far_field`."""
        return propagation.far_field(wave)

    def adjoint(self, wave: Complex[Array, "*b y x"]) -> Complex[Array, "*b y x"]:
        """See :func:`diffptycho.physics.propagation.far_field_adjoint`."""
        return propagation.far_field_adjoint(wave)


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
