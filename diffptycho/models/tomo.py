"""Tomographic forward models: volumes → aligned projections → ptychographic scans.

The full chain of the package (README):
composition c_s(r) ──spectra──▶ index u(E, r) ──rotate, project──▶ ∫u dz ──align A_k──▶
transmission T(E, θ) ──patch × probe──▶ propagate ──▶ intensities.

Alignment acts on the projected images (shift y/x, in-plane tilt, scale about the image centre):
for parallel beams these commute with the projection for shifts and scale, and the in-plane
rotation models a detector/axis tilt, so applying them after projection is both exact for the
cases measured in practice and much cheaper than resampling the volume per angle.

An optional per-scan shift (``energy_offsets``) on top of the shared alignment models drift
between the energies of one angle; it is folded into that scan's similarity parameters, so
nothing is resampled twice.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from diffptycho._typing import Array, Complex, Float, Int, Shaped
from diffptycho.models.propagators import AbstractPropagator, FarField
from diffptycho.models.ptycho import scan_intensities
from diffptycho.physics import alignment, optics, scan, tomography


class TomoProjections(eqx.Module):
    """Projections of a (real or complex) volume with per-projection alignment.

    Attributes:
        volume: (z, y, x) quantity per m of path, e.g. δ+iβ or linear attenuation in 1/m; use
            ``voxel_size_m=1`` to integrate in voxel units.
        angles_rad: rotation angles about y in rad (angle,).
        alignment: similarity parameters (angle, 4) = (shift_y px, shift_x px, rotation rad,
            log scale), zeros for a perfectly aligned scan.
        voxel_size_m: voxel edge length in m (static).
    """

    volume: Shaped[Array, "z y x"]
    angles_rad: Float[Array, " angle"]
    alignment: Float[Array, "angle 4"]
    voxel_size_m: float = eqx.field(static=True, default=1.0)

    def __check_init__(self):
        if self.volume.ndim != 3:
            raise ValueError(f"volume: expected (z, y, x), got shape {self.volume.shape}")
        if self.alignment.shape != (self.angles_rad.shape[0], 4):
            raise ValueError(
                f"alignment: expected ({self.angles_rad.shape[0]}, 4), got {self.alignment.shape}"
            )

    def __call__(self) -> Shaped[Array, "angle y x"]:
        """Aligned line integrals ∫ volume dz (unit of volume × m)."""
        proj = tomography.project(self.volume, self.angles_rad) * self.voxel_size_m
        return alignment.align_projections(proj, self.alignment)


class SpectroPtychoTomo(eqx.Module):
    """The full chain: chemical composition volumes to far-field intensities.

    Attributes:
        composition: volume fraction of each species (species, z, y, x), dimensionless.
        spectra: δ + iβ of each pure species (energy, species).
        energies_ev: photon energies in eV (energy,).
        angles_rad: rotation angles in rad (angle,).
        alignment: per-projection similarity parameters (angle, 4), shared by all energies.
        probe: probe modes per energy (energy, mode, py, px).
        positions: scan positions (energy, angle, n, 2) in object pixels (y, x).
        background: background per energy (energy, py, px) or None.
        energy_offsets: per-scan sample shift (energy, angle, 2) in pixels (y, x), applied
            after the shared alignment of its angle (thermal drift between energies), or
            None for none (the cheaper path: species are aligned once, before mixing).
        voxel_size_m: voxel size in m (static); object pixels equal voxels.
        propagator: far field by default.
        padding_px: vacuum (T = 1) added around each projection, in pixels (static), so the
            probe can scan the edges of the field of view: the probe window must lie inside
            the object array, the sample need not fill it.
        volume_binning: b ≥ 1 (static): the composition lives on a grid b× coarser than the
            object pixels (voxel edge b·``voxel_size_m``); each species' projection is
            upsampled by b (linear interpolation) to the object grid before alignment. The
            coarse levels of a coarse-to-fine fit use it; 1 (default) is the plain model.
    """

    composition: Float[Array, "species z y x"]
    spectra: Complex[Array, "energy species"]
    energies_ev: Float[Array, " energy"]
    angles_rad: Float[Array, " angle"]
    alignment: Float[Array, "angle 4"]
    probe: Complex[Array, "energy mode py px"]
    positions: Float[Array, "energy angle n 2"]
    background: Float[Array, "energy py px"] | None = None
    voxel_size_m: float = eqx.field(static=True, default=1.0)
    propagator: AbstractPropagator = FarField()
    padding_px: int = eqx.field(static=True, default=0)
    energy_offsets: Float[Array, "energy angle 2"] | None = None
    volume_binning: int = eqx.field(static=True, default=1)

    def __check_init__(self):
        if self.padding_px < 0:
            raise ValueError(f"padding_px={self.padding_px}: expected ≥ 0 pixels")
        if self.volume_binning < 1:
            raise ValueError(f"volume_binning={self.volume_binning}: expected an integer ≥ 1")
        n_e, n_s = self.spectra.shape
        n_a = self.angles_rad.shape[0]
        if self.composition.ndim != 4 or self.composition.shape[0] != n_s:
            raise ValueError(
                f"composition: expected ({n_s}, z, y, x), got {self.composition.shape}"
            )
        if self.positions.shape[:2] != (n_e, n_a) or self.positions.shape[-1] != 2:
            raise ValueError(
                f"positions: expected ({n_e}, {n_a}, n, 2), got {self.positions.shape}"
            )
        if self.probe.shape[0] != n_e:
            raise ValueError(f"probe: leading axis {self.probe.shape[0]} != {n_e} energies")
        if self.energy_offsets is not None and self.energy_offsets.shape != (n_e, n_a, 2):
            raise ValueError(
                f"energy_offsets: expected ({n_e}, {n_a}, 2) shifts (y, x) in pixels, "
                f"got {self.energy_offsets.shape}"
            )

    def check_scan_geometry(self) -> None:
        """Host-side check that every probe patch lies inside the projections.

        Inside ``jit`` a patch that leaves the object would be clamped silently; call this
        once (outside ``jit``) wherever positions enter from a file or a user.

        Raises:
            ValueError: naming ``positions`` and the object shape that would hold them.
        """
        b = self.volume_binning
        obj_shape = tuple(b * n + 2 * self.padding_px for n in self.composition.shape[2:4])
        scan.check_positions(
            np.asarray(self.positions).reshape(-1, 2), obj_shape, self.probe.shape[-2:]
        )

    def projected_index(self) -> Complex[Array, "energy angle y x"]:
        """Aligned ∫(δ + iβ) dz in m at every energy and angle, vacuum-padded.

        The projector is linear, so the species are projected once each and mixed per energy
        afterwards: S real projections instead of E complex ones. Without ``energy_offsets``
        the species are also aligned once each, before mixing. With them, the shift of scan
        (e, a) is folded into the similarity parameters of angle a — a shift applied after
        r ↦ s·R r + t is the similarity transform with translation t + offset — so each
        image is resampled once (no double interpolation) and the mixed energies are aligned
        with their own parameters.
        """
        per_species = jax.vmap(lambda c: tomography.project(c, self.angles_rad))(self.composition)
        b = self.volume_binning
        if b > 1:
            # coarse voxels b·Δ long: b× the path per voxel, and b× more pixels per side
            n_s, n_a, ny, nx = per_species.shape
            per_species = b * jax.image.resize(
                per_species, (n_s, n_a, b * ny, b * nx), "linear", antialias=False
            )
        p = self.padding_px
        if self.energy_offsets is None:
            per_species = jax.vmap(lambda q: alignment.align_projections(q, self.alignment))(
                per_species
            )
            per_species = jnp.pad(per_species, ((0, 0), (0, 0), (p, p), (p, p)))
            return self.voxel_size_m * jnp.einsum(
                "es,sayx->eayx", self.spectra, per_species.astype(self.spectra.dtype)
            )
        mixed = jnp.einsum("es,sayx->eayx", self.spectra, per_species.astype(self.spectra.dtype))
        params = jnp.broadcast_to(self.alignment, self.energy_offsets.shape[:2] + (4,))
        params = params.at[..., :2].add(self.energy_offsets.astype(params.dtype))
        aligned = jax.vmap(alignment.align_projections)(mixed, params)
        return self.voxel_size_m * jnp.pad(aligned, ((0, 0), (0, 0), (p, p), (p, p)))

    def transmission(self) -> Complex[Array, "energy angle y x"]:
        """T(E, θ) = exp(−k∫β dz) · exp(−ik∫δ dz)."""
        integral = self.projected_index()
        k = optics.wavenumber(self.energies_ev)[:, None, None, None]
        return jnp.exp(-k * (jnp.imag(integral) + 1j * jnp.real(integral)))

    def __call__(
        self,
        energy_index: Int[Array, ""],
        angle_index: Int[Array, ""],
        indices: Int[Array, " b"] | None = None,
    ) -> Float[Array, "b py px"]:
        """Intensities of frames ``indices`` of the scan at one (energy, angle)."""
        t = self.transmission()[energy_index, angle_index]
        pos = self.positions[energy_index, angle_index]
        pos = pos if indices is None else pos[indices]
        bg = None if self.background is None else self.background[energy_index]
        return scan_intensities(t, self.probe[energy_index], pos, self.propagator, bg)

    def all_intensities(self) -> Float[Array, "energy angle n py px"]:
        """Every frame of every scan (for simulation and small problems)."""
        t = self.transmission()

        def per_energy(t_e, probe_e, pos_e, bg_e):
            return jax.vmap(
                lambda t_a, p_a: scan_intensities(t_a, probe_e, p_a, self.propagator, bg_e)
            )(t_e, pos_e)

        if self.background is None:
            return jax.vmap(lambda a, b, c: per_energy(a, b, c, None))(
                t, self.probe, self.positions
            )
        return jax.vmap(per_energy)(t, self.probe, self.positions, self.background)


def composition_to_index(
    composition: Float[Array, "species ..."], spectra: Complex[Array, "energy species"]
) -> Complex[Array, "energy ..."]:
    """Complex index decrement u(E, r) = Σ_s c_s(r) (δ_s(E) + iβ_s(E))."""
    return jnp.tensordot(spectra, composition.astype(spectra.dtype), axes=(1, 0))
