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
    subpixel: str = "bilinear",
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
        subpixel: ``bilinear`` (the patch interpolated at sub-pixel positions) or
            ``fourier`` (the patch at the integer position, the probe moved by the rest; see
            :mod:`diffptycho.physics.scan`).

    Returns:
        Expected photon counts per detector pixel, one frame per position.
    """
    if subpixel == "bilinear":
        probes = probe[None]
    else:
        positions, frac = scan.split_positions(positions)
        probes = scan.shift_probe(probe, frac)
    patches = scan.extract_patches(transmission, positions, probe.shape[-2:])
    waves = probes * patches[:, None, :, :]
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
        subpixel: how sub-pixel positions are modelled (static): ``bilinear`` interpolation
            of the object patch, or ``fourier``: the patch at the integer position and the
            probe moved by the rest (exact for a band-limited probe that fits its window; see
            :mod:`diffptycho.physics.scan`).
    """

    object: Complex[Array, "H W"]
    probe: Complex[Array, "mode py px"]
    positions: Float[Array, "n 2"]
    background: Float[Array, "py px"] | None = None
    propagator: AbstractPropagator = FarField()
    subpixel: str = eqx.field(static=True, default="bilinear")

    def __check_init__(self):
        scan.check_subpixel(self.subpixel)
        if self.object.ndim != 2:
            raise ValueError(f"object: expected (H, W), got shape {self.object.shape}")
        if self.probe.ndim != 3:
            raise ValueError(f"probe: expected (mode, py, px), got shape {self.probe.shape}")
        if self.positions.ndim != 2 or self.positions.shape[1] != 2:
            raise ValueError(f"positions: expected (n, 2) as (y, x), got {self.positions.shape}")

    def __call__(self, indices: Int[Array, " b"] | None = None) -> Float[Array, "b py px"]:
        """Expected intensities of the frames ``indices`` (all frames when None)."""
        pos = self.positions if indices is None else self.positions[indices]
        return scan_intensities(
            self.object,
            self.probe,
            pos,
            self.propagator,
            self.background,
            subpixel=self.subpixel,
        )


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
        subpixel: how sub-pixel positions are modelled (static), as in :class:`Ptycho2D`.
    """

    thickness: Float[Array, "species H W"]
    spectra: Complex[Array, "energy species"]
    energies_ev: Float[Array, " energy"]
    probe: Complex[Array, "energy mode py px"]
    positions: Float[Array, "energy n 2"]
    background: Float[Array, "energy py px"] | None = None
    propagator: AbstractPropagator = FarField()
    grid: Float[Array, "energy 4"] | None = None
    subpixel: str = eqx.field(static=True, default="bilinear")

    def __check_init__(self):
        scan.check_subpixel(self.subpixel)
        n_e, n_s = self.spectra.shape
        if self.thickness.shape[0] != n_s:
            raise ValueError(
                f"thickness: {self.thickness.shape[0]} species but spectra has {n_s} columns"
            )
        _check_spectral(
            n_e, self.grid, self.energies_ev, self.probe, self.positions, self.background
        )

    def transmission(self) -> Complex[Array, "energy H W"]:
        """Object transmission at every energy (on that energy's grid when ``grid`` is set)."""
        if self.grid is None:
            return spectral_transmission(self.thickness, self.spectra, self.energies_ev)
        integral = jnp.einsum(
            "es,shw->ehw", self.spectra, self.thickness.astype(self.spectra.dtype)
        )
        moved = _on_energy_grids(integral.real, self.grid) + 1j * _on_energy_grids(
            integral.imag, self.grid
        )
        return _transmission(moved, self.energies_ev)

    def __call__(self, indices: Int[Array, " b"] | None = None) -> Float[Array, "energy b py px"]:
        """Expected intensities of frames ``indices`` at every energy."""
        return _spectral_frames(
            self.transmission(),
            self.probe,
            self.positions,
            self.propagator,
            self.background,
            indices,
            self.subpixel,
        )


def _on_energy_grids(
    images: Float[Array, "energy H W"], grid: Float[Array, "energy 4"]
) -> Float[Array, "energy H W"]:
    """Each energy's common-grid image moved onto that energy's object grid.

    Cubic convolution (:func:`~diffptycho.physics.alignment.cubic_similarity_transform`):
    bilinear weights would blur sub-pixel moves unevenly between energies.
    """
    return jax.vmap(cubic_similarity_transform)(images, grid.astype(images.dtype))


def _check_spectral(n_e: int, grid, energies_ev, probe, positions, background) -> None:
    """Shapes of the per-energy leaves of a spectral model (energy axis first)."""
    if grid is not None and grid.shape != (n_e, 4):
        raise ValueError(f"grid: expected shape ({n_e}, 4), got {grid.shape}")
    if probe.ndim != 4:
        raise ValueError(f"probe: expected (energy, mode, py, px), got shape {probe.shape}")
    if positions.ndim != 3 or positions.shape[-1] != 2:
        raise ValueError(f"positions: expected (energy, n, 2) as (y, x), got {positions.shape}")
    if background is not None and background.shape != (n_e, *probe.shape[-2:]):
        raise ValueError(
            f"background: expected shape ({n_e}, {probe.shape[-2]}, {probe.shape[-1]}), "
            f"got {background.shape}"
        )
    for name, arr in (("energies_ev", energies_ev), ("probe", probe), ("positions", positions)):
        if arr.shape[0] != n_e:
            raise ValueError(f"{name}: leading axis {arr.shape[0]} != {n_e} energies")


def _spectral_frames(
    transmission, probe, positions, propagator, background, indices, subpixel="bilinear"
):
    """Expected intensities (energy, b, py, px) of frames ``indices`` at every energy."""
    pos = positions if indices is None else positions[:, indices]

    def one(t, p, x, b):
        return scan_intensities(t, p, x, propagator, b, subpixel=subpixel)

    if background is None:
        return jax.vmap(lambda t, p, x: one(t, p, x, None))(transmission, probe, pos)
    return jax.vmap(one)(transmission, probe, pos, background)


class PixelSpectra2D(eqx.Module):
    """2-D spectro-ptychography with a free spectrum in every pixel (no reference spectra).

    The unknowns are the optical density μt = −ln|T|² and the phase φ = arg T of every
    pixel at every energy, on one common grid; T = exp(−μt/2 + iφ). ``grid`` moves each
    energy's images onto that energy's object grid exactly as in :class:`SpectroPtycho2D`
    (per-energy pixel size and sample offset in the model, nothing resampled upstream).
    The spectra of a pixel are tied together only by what the caller adds to the loss
    (e.g. a Kramers–Kronig penalty,
    :meth:`~diffptycho.recon.chem.kk_projection.KKProjector.weighted_difference`).

    Attributes:
        optical_density: μt per energy (energy, H, W), dimensionless.
        phase: φ per energy (energy, H, W) in rad.
        energies_ev: photon energies in eV (energy,).
        probe: probe modes per energy (energy, mode, py, px).
        positions: scan positions per energy (energy, n, 2) in object pixels.
        background: background per energy (energy, py, px) or None.
        propagator: far field by default.
        grid: (energy, 4) similarity parameters (shift_y_px, shift_x_px, 0, log_scale) from
            the common grid to each energy's object grid, or None.
        subpixel: how sub-pixel positions are modelled (static), as in :class:`Ptycho2D`.
    """

    optical_density: Float[Array, "energy H W"]
    phase: Float[Array, "energy H W"]
    energies_ev: Float[Array, " energy"]
    probe: Complex[Array, "energy mode py px"]
    positions: Float[Array, "energy n 2"]
    background: Float[Array, "energy py px"] | None = None
    propagator: AbstractPropagator = FarField()
    grid: Float[Array, "energy 4"] | None = None
    subpixel: str = eqx.field(static=True, default="bilinear")

    def __check_init__(self):
        scan.check_subpixel(self.subpixel)
        if self.optical_density.ndim != 3 or self.phase.shape != self.optical_density.shape:
            raise ValueError(
                f"optical_density {self.optical_density.shape} and phase {self.phase.shape}: "
                "expected the same (energy, H, W) shape"
            )
        n_e = self.optical_density.shape[0]
        _check_spectral(
            n_e, self.grid, self.energies_ev, self.probe, self.positions, self.background
        )

    def transmission(self) -> Complex[Array, "energy H W"]:
        """Object transmission at every energy (on that energy's grid when ``grid`` is set)."""
        od, phase = self.optical_density, self.phase
        if self.grid is not None:
            od, phase = _on_energy_grids(od, self.grid), _on_energy_grids(phase, self.grid)
        return jnp.exp(-0.5 * od + 1j * phase)

    def __call__(self, indices: Int[Array, " b"] | None = None) -> Float[Array, "energy b py px"]:
        """Expected intensities of frames ``indices`` at every energy."""
        return _spectral_frames(
            self.transmission(),
            self.probe,
            self.positions,
            self.propagator,
            self.background,
            indices,
            self.subpixel,
        )


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
