"""Ptychography forward models: 2-D objects and 2-D spectral (multi-energy) objects.

One scan is: transmission T(r) ──patch at r_j──▶ × probe modes ψ_m ──▶ propagate ──▶
I_j = Σ_m |·|² + background. :func:`scan_intensities` is that chain as a pure function; the
Modules hold the unknowns and call it.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from diffptycho._typing import Array, Complex, Float, Int
from diffptycho.models.propagators import AbstractPropagator, FarField
from diffptycho.physics import optics, propagation, scan
from diffptycho.physics.alignment import cubic_similarity_transform


def scan_intensities(
    transmission: Complex[Array, "H W"],
    probe: Complex[Array, "mode py px"],
    positions: Float[Array, "n 2"],
    propagator: AbstractPropagator,
    background: Float[Array, "py px"] | None = None,
    *,
    native: bool = False,
) -> Float[Array, "n py px"]:
    """Far-field (or near-field) intensities of a ptychographic scan.

    Args:
        transmission: complex object transmission; position (0, 0) is the array centre.
        probe: incoherent probe modes, sampled at the object pixel size.
        positions: probe positions (y, x) in object pixels relative to the object centre.
        propagator: exit-wave → detector propagator.
        background: incoherent background added to every frame (photons), or None.
        native: frames in the propagator's native layout (``propagator.to_native`` of the
            centred ones; the engines' fast path, see ``AbstractPropagator``).

    Returns:
        Expected photon counts per detector pixel, one frame per position.
    """
    patches = scan.extract_patches(transmission, positions, probe.shape[-2:])
    waves = probe[None, :, :, :] * patches[:, None, :, :]
    frames = propagation.intensity(
        propagator.native(waves) if native else propagator(waves), axis=1
    )
    if background is not None:
        frames = frames + (propagator.to_native(background) if native else background)[None]
    return frames


class Ptycho2D(eqx.Module):
    """2-D ptychography: the object transmission itself is the unknown.

    Attributes:
        object: complex transmission (H, W); array centre = scan position (0, 0).
        probe: probe modes (mode, py, px), photons^½ per pixel.
        positions: scan positions (n, 2) as (y, x) in object pixels.
        background: incoherent background (py, px) in photons, or None.
        propagator: far field by default.
    """

    object: Complex[Array, "H W"]
    probe: Complex[Array, "mode py px"]
    positions: Float[Array, "n 2"]
    background: Float[Array, "py px"] | None = None
    propagator: AbstractPropagator = FarField()

    def __check_init__(self):
        if self.object.ndim != 2:
            raise ValueError(f"object: expected (H, W), got shape {self.object.shape}")
        if self.probe.ndim != 3:
            raise ValueError(f"probe: expected (mode, py, px), got shape {self.probe.shape}")
        if self.positions.ndim != 2 or self.positions.shape[1] != 2:
            raise ValueError(f"positions: expected (n, 2) as (y, x), got {self.positions.shape}")

    def __call__(self, indices: Int[Array, " b"] | None = None) -> Float[Array, "b py px"]:
        """Expected intensities of the frames ``indices`` (all frames when None)."""
        pos = self.positions if indices is None else self.positions[indices]
        return scan_intensities(self.object, self.probe, pos, self.propagator, self.background)


def spectral_transmission(
    thickness: Float[Array, "species H W"],
    spectra: Complex[Array, "energy species"],
    energies_ev: Float[Array, " energy"],
) -> Complex[Array, "energy H W"]:
    """Transmission per energy of a mixture of species of known spectra.

    Args:
        thickness: projected thickness of each species in m (∫ volume fraction dz).
        spectra: δ + iβ of each species at each energy (dimensionless, per unit fraction).
        energies_ev: photon energies in eV.

    Returns:
        T(E, r) = exp(−k ∫β dz) · exp(−ik ∫δ dz).
    """
    integral = jnp.einsum("es,shw->ehw", spectra, thickness.astype(spectra.dtype))
    return _transmission(integral, energies_ev)


def _transmission(integral, energies_ev):
    """T = exp(−k(∫β + i∫δ)) of per-energy integrals ∫(δ + iβ) dz (energy, H, W) in m."""
    k = optics.wavenumber(energies_ev)[:, None, None]
    return jnp.exp(-k * (jnp.imag(integral) + 1j * jnp.real(integral)))


class SpectroPtycho2D(eqx.Module):
    """2-D spectro-ptychography: species thickness maps seen at several energies.

    The thickness maps live on one common grid. With a fixed detector the object pixel
    λz/(N·dx) of each energy differs from it, and each energy's scan may see the sample at a
    small offset: ``grid`` holds, per energy, the similarity transform (cubic convolution, see
    :func:`~diffptycho.physics.alignment.cubic_similarity_transform`) from the common grid to that
    energy's object grid — shift (y, x) in that energy's pixels and log(p_common/p_energy) —,
    so nothing has to be resampled upstream. Without it every energy uses the common grid.

    Attributes:
        thickness: projected thickness per species (species, H, W) in m.
        spectra: δ + iβ per species and energy (energy, species).
        energies_ev: photon energies in eV (energy,).
        probe: probe modes per energy (energy, mode, py, px).
        positions: scan positions per energy (energy, n, 2) in object pixels.
        background: background per energy (energy, py, px) or None.
        propagator: far field by default.
        grid: (energy, 4) similarity parameters (shift_y_px, shift_x_px, 0, log_scale) from
            the common grid to each energy's object grid, or None.
    """

    thickness: Float[Array, "species H W"]
    spectra: Complex[Array, "energy species"]
    energies_ev: Float[Array, " energy"]
    probe: Complex[Array, "energy mode py px"]
    positions: Float[Array, "energy n 2"]
    background: Float[Array, "energy py px"] | None = None
    propagator: AbstractPropagator = FarField()
    grid: Float[Array, "energy 4"] | None = None

    def __check_init__(self):
        n_e, n_s = self.spectra.shape
        if self.grid is not None and self.grid.shape != (n_e, 4):
            raise ValueError(f"grid: expected shape ({n_e}, 4), got {self.grid.shape}")
        if self.thickness.shape[0] != n_s:
            raise ValueError(
                f"thickness: {self.thickness.shape[0]} species but spectra has {n_s} columns"
            )
        for name, arr in (("energies_ev", self.energies_ev), ("probe", self.probe)):
            if arr.shape[0] != n_e:
                raise ValueError(f"{name}: leading axis {arr.shape[0]} != {n_e} energies")
        if self.positions.shape[0] != n_e:
            raise ValueError(f"positions: leading axis {self.positions.shape[0]} != {n_e}")

    def transmission(self) -> Complex[Array, "energy H W"]:
        """Object transmission at every energy (on that energy's grid when ``grid`` is set)."""
        if self.grid is None:
            return spectral_transmission(self.thickness, self.spectra, self.energies_ev)
        integral = jnp.einsum(
            "es,shw->ehw", self.spectra, self.thickness.astype(self.spectra.dtype)
        )

        def moved(image, params):  # cubic: bilinear weights blur sub-pixel moves unevenly
            return cubic_similarity_transform(image.real, params) + 1j * cubic_similarity_transform(
                image.imag, params
            )

        integral = jax.vmap(moved)(integral, self.grid.astype(integral.real.dtype))
        return _transmission(integral, self.energies_ev)

    def __call__(self, indices: Int[Array, " b"] | None = None) -> Float[Array, "energy b py px"]:
        """Expected intensities of frames ``indices`` at every energy."""
        pos = self.positions if indices is None else self.positions[:, indices]
        bg = self.background

        def one(t, p, x, b):
            return scan_intensities(t, p, x, self.propagator, b)

        if bg is None:
            return jax.vmap(lambda t, p, x: one(t, p, x, None))(
                self.transmission(), self.probe, pos
            )
        return jax.vmap(one)(self.transmission(), self.probe, pos, bg)


def as_energies(energies_ev) -> np.ndarray:
    """Validate a 1-D array of photon energies in eV (host side)."""
    e = np.atleast_1d(np.asarray(energies_ev, dtype=np.float64))
    if e.ndim != 1 or np.any(~np.isfinite(e)) or np.any(e <= 0):
        raise ValueError(f"energies_ev: expected positive energies in eV, got {energies_ev!r}")
    if np.any(e < 1.0):
        raise ValueError(
            f"energies_ev: values below 1 eV ({e.min():.3g}) look like joules; pass eV "
            "(divide joules by 1.602176634e-19)"
        )
    if np.any(e > 1e6):
        raise ValueError("energies_ev: values above 1 MeV; did you pass meV?")
    return e
