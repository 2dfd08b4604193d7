"""V K-edge 2-D spectro-ptychography simulated the way a beamline records it.

:func:`diffptycho.sim.datasets.simulate_vanadium_2d` makes frames with the package's own model on
one common pixel grid (an "inverse crime"). :func:`simulate_vanadium_spectroptycho` records the
same kind of experiment — vanadium-oxide particles with V2O3/VO2/V2O5 domains
(:func:`diffptycho.sim.phantoms.vanadium_field`) scanned at 40 energies across the V K edge —
as an instrument would:

- **a fixed detector**: one distance, pixel size and frame shape N × N at every energy, so the
  object pixel λz/(N·p) shrinks with energy (2.2 % from 5420 to 5540 eV);
- **one nominal scan in metres**, the same at every energy (what the file records), while the
  sample sits at an unrecorded stage offset that differs from energy to energy;
- **a finer sample**: the continuous phantom (a field ``2 × oversample`` times finer than the
  reference grid) is resampled, by linear interpolation, at ``oversample`` samples per object
  pixel of each energy; the exit waves are formed there and the detector keeps the central
  N × N frequencies of their far field (:func:`diffptycho.sim._farfield.far_field_frames`, the
  same detector as :mod:`diffptycho.sim.tiltseries`); sub-pixel positions move the probe by a
  Fourier shift;
- **a probe that drifts with energy**: the zone plate's focal length grows with E and the
  beamline's focus tracking misses a fraction of it, so the defocus (and beam size) changes
  slowly; the incident flux changes linearly across the scan;
- Poisson counts, and no probe in the file unless asked for.

Reference grid of the truth: the object pixel of the **lowest** energy, ``pixel_size_m``
(``truth/reference_pixel_size_m``), with ``image_shape`` pixels; pixel (i, j) is centred at
((i − H//2)·p, (j − W//2)·p) from the scan origin, the point that recorded position (0, 0)
names. A reconstruction of the lowest energy on the padded grid (H + 2·pad, W + 2·pad) with
``pad = truth/padding_px`` and the recorded positions therefore has truth pixel (i, j) at its
index (i + pad, j + pad), up to the unrecorded offset of that energy.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from jaxtyping import Complex, Float
from scipy import ndimage

from diffptycho.physics import optics, probe, spectra
from diffptycho.sim import datasets, patterns, phantoms
from diffptycho.sim._farfield import far_field_frames
from diffptycho.sim.tiltseries import bin_blocks

__all__ = [
    "SPECTRO_GEOMETRY",
    "VANADIUM_ENERGIES_EV",
    "SCANS",
    "fit_scan_to",
    "scan_positions",
    "simulate_vanadium_spectroptycho",
    "write_vanadium_references",
]

VANADIUM_ENERGIES_EV = tuple(np.linspace(5420.0, 5540.0, 40).tolist())
"""The published scan: 40 energies from 5420 to 5540 eV."""

SPECTRO_GEOMETRY = datasets.ScanGeometry(
    probe_shape=(16, 16),
    scan_shape=(9, 9),
    step_px=3.0,
    jitter_px=0.4,
    distance_m=0.1,
    zone_plate_diameter_m=240e-6,
    outer_zone_width_m=25e-9,
    central_stop_diameter_m=90e-6,
    defocus_m=13e-6,
    photons_per_frame=1e5,
)
"""Default geometry: 16 × 16 frames, 9 × 9 raster of 3 px steps (of the reference grid), a
25 nm zone plate 13 µm out of focus (a ≈ 120 nm annulus at 5.4 keV)."""

_PHANTOM_REFINE = 2
"""The continuous phantom is this many times finer than the finest simulation grid."""
_MIN_IMAGE_PX = 16
"""Smallest image edge (reference pixels): the phantom's particles and a 3 × 3 scan fit."""


SCANS = ("raster", "fermat")
"""Scan patterns of :func:`simulate_vanadium_spectroptycho`."""


def scan_positions(
    scan_shape: tuple[int, int], step_px: float, scan: str = "raster"
) -> Float[np.ndarray, "n 2"]:
    """Nominal scan positions (y, x) in reference pixels, centred on (0, 0), without jitter.

    Args:
        scan_shape: (rows, columns) of the raster; its point count and bounding box
            ((rows − 1)·step × (columns − 1)·step) are also those of the spiral.
        step_px: raster step in pixels.
        scan: ``"raster"``, or ``"fermat"``: the first rows·columns points of a Fermat spiral
            (:func:`~diffptycho.sim.patterns.fermat_spiral_positions`) that fall in the
            raster's bounding box, its step chosen for the raster's density (one point per
            box area / point count), so it has no grid period to trade with the probe.

    Returns:
        Positions (rows·columns, 2) in pixels.
    """
    if scan not in SCANS:
        raise ValueError(f"scan={scan!r}: choose from {list(SCANS)}")
    n = int(np.prod(scan_shape))
    if scan == "raster":
        return patterns.raster_positions(*scan_shape, step_px, 0.0)
    half = 0.5 * (np.asarray(scan_shape, np.float64) - 1.0) * step_px
    if np.any(half <= 0):
        raise ValueError(f"scan_shape={scan_shape}: a spiral needs ≥ 2 rows and columns")
    step = float(np.sqrt(4.0 * half[0] * half[1] / n))
    for _ in range(200):  # the spiral out to the box's corners; denser until n points fit
        total = int(np.ceil(np.pi * float(np.sum(half**2)) / step**2)) + 1
        pos = patterns.fermat_spiral_positions(total, step)
        inside = np.all(np.abs(pos) <= half + 1e-9, axis=1)
        if inside.sum() >= n:
            return pos[inside][:n]
        step *= 0.98
    raise ValueError(f"scan_shape={scan_shape}: no Fermat spiral of {n} points fits the box")


def _check_energies(energies_ev) -> np.ndarray:
    e = np.atleast_1d(np.asarray(energies_ev, dtype=np.float64))
    if e.ndim != 1 or e.size < 1 or not np.all(np.isfinite(e)) or np.any(e <= 0):
        raise ValueError(f"energies_ev: expected positive energies in eV, got {energies_ev!r}")
    if np.any(np.diff(e) <= 0):
        raise ValueError("energies_ev: expected strictly increasing energies in eV")
    return e


def _check_field(field: phantoms.VanadiumField, shape: tuple[int, int], pixel_m: float) -> int:
    """The integer refinement of ``field`` over the reference grid, or a clear error."""
    refine = int(round(pixel_m / field.pixel_size_m))
    expected = (len(field.species), refine * shape[0], refine * shape[1])
    if refine < 1 or not np.isclose(refine * field.pixel_size_m, pixel_m, rtol=1e-9):
        raise ValueError(
            f"field: pixel {field.pixel_size_m:g} m is not the reference pixel {pixel_m:g} m "
            "divided by an integer"
        )
    if field.thickness.shape != expected:
        raise ValueError(
            f"field: thickness has shape {field.thickness.shape}, expected {expected} (species "
            f"× image_shape × {refine}) to cover the reference grid"
        )
    return refine


def _scan_need_px(geometry: datasets.ScanGeometry, scale: float) -> list[float]:
    """Pixels per axis that the nominal raster's windows span, positions scaled by ``scale``.

    One more pixel for the bilinear patches of a reconstruction.
    """
    return [
        ((n - 1) * geometry.step_px + 2 * geometry.jitter_px) * scale + window + 1
        for n, window in zip(geometry.scan_shape, geometry.probe_shape, strict=True)
    ]


def fit_scan_to(
    image_shape: tuple[int, int],
    geometry: datasets.ScanGeometry = SPECTRO_GEOMETRY,
    energies_ev: Float[np.ndarray, " energy"] | tuple[float, ...] = VANADIUM_ENERGIES_EV,
) -> datasets.ScanGeometry:
    """The geometry with the largest raster (≤ its own) whose frames stay inside the image.

    The image is padded by ``geometry.padding_px`` and must hold every frame at every energy,
    in that energy's object pixels (positions in pixels grow by λ(E₀)/λ(E) with energy).

    Args:
        image_shape: (y, x) reference pixels.
        geometry: the scan geometry to shrink.
        energies_ev: the photon energies in eV.

    Returns:
        The geometry with a smaller ``scan_shape`` where needed.

    Raises:
        ValueError: not even a 3 × 3 raster fits (the message says which size does).
    """
    energies = _check_energies(energies_ev)
    scale = float(energies[-1] / energies[0])  # λ(E₀)/λ(E_max): positions in pixels grow
    room = [n + 2 * geometry.padding_px for n in image_shape]
    fit = []
    for n, size, window in zip(geometry.scan_shape, room, geometry.probe_shape, strict=True):
        free = (size - window - 1) / scale - 2 * geometry.jitter_px
        fit.append(max(1, min(n, int(np.floor(free / geometry.step_px + 1e-9)) + 1)))
    fitted = dataclasses.replace(geometry, scan_shape=(fit[0], fit[1]))
    _check_scan(fitted, tuple(int(n) for n in image_shape), scale)
    return fitted


def _check_scan(geometry: datasets.ScanGeometry, shape: tuple[int, ...], scale: float) -> None:
    """Raise a clear error unless a ≥ 3 × 3 raster fits the padded reference grid."""
    if min(geometry.scan_shape) < 3:
        three = dataclasses.replace(geometry, scan_shape=(3, 3))
        need = max(_scan_need_px(three, scale)) - 2 * geometry.padding_px
        raise ValueError(
            f"image_shape={shape}: room for a {geometry.scan_shape[0]} × "
            f"{geometry.scan_shape[1]} raster only; a 3 × 3 raster of {geometry.step_px:g}-px "
            f"steps with {geometry.probe_shape[0]}-px frames needs an image of at least "
            f"{int(np.ceil(need))} px per side"
        )
    for axis, (need, size) in enumerate(zip(_scan_need_px(geometry, scale), shape, strict=True)):
        if need > size + 2 * geometry.padding_px:
            raise ValueError(
                f"image_shape={shape}: the {geometry.scan_shape} raster of "
                f"{geometry.step_px:g}-px steps spans {need:.1f} px along axis {axis} at the "
                f"highest energy, the padded image {size + 2 * geometry.padding_px}; use a "
                "larger image or fewer positions (fit_scan_to)"
            )


def _check_probe_sampling(
    geometry: datasets.ScanGeometry, pixel_m: float, factor: int, energies: np.ndarray
) -> None:
    """Refuse pixels that cannot sample the zone-plate beam, before simulating anything."""
    fine = pixel_m / factor
    if fine > geometry.outer_zone_width_m:
        raise ValueError(
            f"pixel_size_m={pixel_m:g} with oversample={factor}: the simulation pixel "
            f"{fine * 1e9:.3g} nm exceeds the zone plate's outer zone width "
            f"{geometry.outer_zone_width_m * 1e9:.3g} nm, so the focused beam cannot be sampled; "
            "use a smaller pixel or a larger oversample"
        )
    lam = optics.wavelength(energies)
    beam = float(np.max(lam * abs(geometry.defocus_m) / geometry.outer_zone_width_m))
    window = min(geometry.probe_shape) * pixel_m * float(lam[-1] / lam[0])
    if beam > window:
        raise ValueError(
            f"pixel_size_m={pixel_m:g}: the {min(geometry.probe_shape)}-px frames span "
            f"{window * 1e9:.3g} nm at the highest energy, less than the defocused beam "
            f"(≈ {beam * 1e9:.3g} nm); use a larger pixel or less defocus"
        )


def _band_limited(
    fine: Complex[np.ndarray, "wy wx"], frame_shape: tuple[int, int]
) -> tuple[Complex[np.ndarray, "fy fx"], float]:
    """The probe at the detector's object pixel (its central frequencies) and their power.

    Unitary FFTs: Σ|coarse|² equals the power of the kept frequencies, i.e. the photons of a
    vacuum frame.
    """
    (wy, wx), (py, px) = fine.shape, frame_shape
    spec = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(fine), norm="ortho"))
    cy, cx = wy // 2 - py // 2, wx // 2 - px // 2
    kept = spec[cy : cy + py, cx : cx + px]
    coarse = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(kept), norm="ortho"))
    return coarse, float(np.sum(np.abs(kept) ** 2))


def _sample_field(
    thickness: Float[np.ndarray, "species Y X"],
    refine: int,
    shape: tuple[int, int],
    pixel_m: float,
    coords_m: tuple[np.ndarray, np.ndarray],
) -> Float[np.ndarray, "species h w"]:
    """Thickness of each species at physical points (y, x) in m, linear interpolation.

    Field sample j is centred at ((j + ½)/refine − ½ − n//2)·pixel_m on each axis; vacuum outside.
    """
    idx = [
        refine * (c / pixel_m + n // 2 + 0.5) - 0.5 for c, n in zip(coords_m, shape, strict=True)
    ]
    grid = np.stack(np.meshgrid(*idx, indexing="ij"))
    return np.stack(
        [ndimage.map_coordinates(t, grid, order=1, mode="constant", cval=0.0) for t in thickness]
    )


def _binned_domain(domain: np.ndarray, refine: int, n_species: int) -> np.ndarray:
    """Per reference pixel the domain covering most of it where it is ≥ half occupied, else −1."""
    counts = np.stack([bin_blocks(domain == s, refine, (0, 1)) for s in range(n_species)])
    occupied = bin_blocks(domain >= 0, refine, (0, 1))
    return np.where(occupied >= 0.5, np.argmax(counts, axis=0), -1).astype(np.int32)


def simulate_vanadium_spectroptycho(
    image_shape: tuple[int, int] = (32, 32),
    pixel_size_m: float = 20e-9,
    energies_ev: Float[np.ndarray, " energy"] | tuple[float, ...] = VANADIUM_ENERGIES_EV,
    geometry: datasets.ScanGeometry = SPECTRO_GEOMETRY,
    oversample: int = 2,
    offset_sigma_px: float = 0.5,
    seed: int = 0,
    *,
    known_probe: bool = False,
    focus_tracking_error: float = 0.003,
    flux_change: float = 0.05,
    n_particles: int = 3,
    domains_per_particle: int = 2,
    field: phantoms.VanadiumField | None = None,
    scan: str = "raster",
) -> datasets.SimulatedDataset:
    """Multi-energy V K-edge ptychography as a beamline records it, without inverse crime.

    See the module docstring for the chain and the reference grid. The detector pixel is
    λ₀z/(N·``pixel_size_m``) at the lowest energy E₀ and stays fixed; at energy E the object
    pixel is p(E) = λ(E)·z/(N·p_det). Random streams (phantom, jitter, offsets, noise) are
    independent, so ``offset_sigma_px=0`` with the same ``seed`` is the same experiment
    without offsets.

    Args:
        image_shape: (y, x) reference pixels of the phantom's field (≥ 16 each); the scan
            covers it with a vacuum margin of half a frame (``geometry.padding_px``).
        pixel_size_m: object pixel at the lowest energy in m (the reference grid's pixel).
        energies_ev: strictly increasing photon energies in eV (default: 40 from 5420 to
            5540 eV, as published).
        geometry: frame shape N × N, raster (``step_px`` and ``jitter_px`` in reference
            pixels), detector distance in m, zone plate (``defocus_m`` at E₀) and
            ``photons_per_frame`` (the mean over energies of the incident photons per frame).
        oversample: simulation samples per object pixel of each energy along each axis (≥ 1).
            A reconstruction on an object grid as fine as this (the pipeline's
            ``object_refine``, default 2) shares the simulation's grid up to each energy's
            stage offset; use a larger value (e.g. 4) to keep the simulation finer.
        offset_sigma_px: standard deviation, in reference pixels, of the unrecorded stage
            offset (y, x) of each energy; 0 for none.
        seed: seed of every random stream.
        known_probe: write the true probes into the file as the illumination; by default the
            file has none, as from a beamline.
        focus_tracking_error: fraction of the zone plate's focal-length change f(E) − f(E₀)
            that the focus tracking misses: defocus(E) = defocus(E₀) − error·(f(E) − f(E₀)).
        flux_change: relative change of the incident flux from the first to the last energy
            (linear in E).
        n_particles: particles of the default phantom.
        domains_per_particle: Voronoi domains per particle of the default phantom. The
            defaults (3 particles of 2 domains each) keep domains large relative to the
            pixel, as in the study's micrometre particles: on the 32² field 92–95 % of the
            particle pixels are ≥ 90 % one species (4 × 3 domains: 84–88 %), and six
            domains give every species a fair share.
        field: the sample, on a grid an integer number of times finer than the reference
            grid and covering it (shape (species, k·H, k·W) at ``pixel_size_m / k``); default:
            :func:`~diffptycho.sim.phantoms.vanadium_field` ``2·oversample`` times finer.
        scan: ``"raster"`` (the geometry's raster, as published) or ``"fermat"`` (as many
            positions on a Fermat spiral filling the raster's bounding box, no grid period;
            see :func:`scan_positions`); ``geometry.jitter_px`` is added to either.

    Returns:
        The dataset: ``frames`` (energy, 1, n, N, N) counts, ``positions_px`` (energy, 1, n, 2)
        the recorded (nominal) positions in each energy's object pixels (one scan in metres),
        ``pixel_size_m`` (energy,) object pixels in m, ``detector_pixel_m``, ``probe`` the true
        probes (energy, 1, N, N) at each energy's object pixel, and ``truth``: ``thickness``
        (species, H, W) in m and ``domain`` (H, W) (−1 = vacuum) on the reference grid,
        ``offsets_px`` (energy, 2) the unrecorded stage offsets: the displacement (y, x) of the
        sample in reference pixels, positive towards larger indices (a feature at truth pixel
        s appears at s + offset in that energy's image made with the recorded positions; the
        beam hits the sample at recorded − offset·``reference_pixel_size_m``), ``spectra``
        (energy, species) δ + iβ,
        ``species``, ``mu_t`` and ``phase`` (energy, H, W) the noiseless optical density
        −ln|T|² and phase arg T on the reference grid, ``defocus_m`` and
        ``photons_per_frame`` (energy,), ``expected_frames``, ``reference_energy_ev``,
        ``reference_pixel_size_m``, ``oversample`` and the species' descriptors.

    Raises:
        ValueError: for invalid arguments, or an image too small for the scan (the message
            names the size that fits).

    Examples:
        >>> e = (5420.0, 5540.0)
        >>> ds = simulate_vanadium_spectroptycho(
        ...     (16, 16), energies_ev=e, geometry=fit_scan_to((16, 16), energies_ev=e))
        >>> ds.frames.shape, round(float(ds.pixel_size_m[1] / ds.pixel_size_m[0]), 4)
        ((2, 1, 25, 16, 16), 0.9783)
    """
    if scan not in SCANS:
        raise ValueError(f"scan={scan!r}: choose from {list(SCANS)}")
    factor = int(oversample)
    if factor != oversample or factor < 1:
        raise ValueError(f"oversample={oversample!r}: expected a positive integer")
    if not (np.isfinite(offset_sigma_px) and offset_sigma_px >= 0):
        raise ValueError(f"offset_sigma_px={offset_sigma_px!r}: expected a width ≥ 0 in pixels")
    if not (np.isfinite(pixel_size_m) and pixel_size_m > 0):
        raise ValueError(f"pixel_size_m={pixel_size_m!r}: expected a positive length in m")
    if not (np.isfinite(flux_change) and abs(flux_change) < 2):
        raise ValueError(f"flux_change={flux_change!r}: expected a relative change in (−2, 2)")
    if not np.isfinite(focus_tracking_error):
        raise ValueError(f"focus_tracking_error={focus_tracking_error!r}: expected a number")
    shape = tuple(int(n) for n in image_shape)
    if len(shape) != 2 or min(shape) < _MIN_IMAGE_PX:
        raise ValueError(
            f"image_shape={image_shape!r}: expected two sides of ≥ {_MIN_IMAGE_PX} reference "
            "pixels (the phantom's particles and a 3 × 3 scan must fit)"
        )
    energies = _check_energies(energies_ev)
    frame = tuple(int(n) for n in geometry.probe_shape)
    _check_scan(geometry, shape, float(energies[-1] / energies[0]))
    _check_probe_sampling(geometry, pixel_size_m, factor, energies)
    rng_jitter, rng_offset, rng_noise = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)
    )

    # the instrument: a fixed detector, object pixels following λ
    lam = optics.wavelength(energies)
    det_px = float(lam[0] * geometry.distance_m / (frame[1] * pixel_size_m))
    pixels = lam * geometry.distance_m / (frame[1] * det_px)  # (energy,), m
    focal = probe.zone_plate_focal_length(
        geometry.zone_plate_diameter_m, geometry.outer_zone_width_m, energies
    )
    defocus = geometry.defocus_m - focus_tracking_error * (focal - focal[0])
    span = energies[-1] - energies[0]
    ramp = (energies - energies.mean()) / span if span > 0 else np.zeros_like(energies)
    photons = geometry.photons_per_frame * (1.0 + flux_change * ramp)

    # the sample: a continuous phantom, truth on the reference grid
    if field is None:
        refine = _PHANTOM_REFINE * factor
        field = phantoms.vanadium_field(
            tuple(refine * n for n in shape),
            pixel_size_m / refine,
            n_particles,
            seed=seed,
            domains_per_particle=domains_per_particle,
        )
    else:
        refine = _check_field(field, shape, pixel_size_m)
    thickness = bin_blocks(field.thickness, refine, (1, 2))
    ref, descriptors = spectra.vanadium_reference_spectra(energies)
    spec = np.stack([ref[name] for name in field.species], axis=1)  # (energy, species)

    # the scan: one nominal raster in metres; the unrecorded offsets move the sample, so the
    # beam hits it at nominal − offset
    n_pos = int(np.prod(geometry.scan_shape))
    nominal_m = pixel_size_m * scan_positions(
        geometry.scan_shape, geometry.step_px, scan
    ) + pixel_size_m * rng_jitter.uniform(-geometry.jitter_px, geometry.jitter_px, (n_pos, 2))
    offsets = rng_offset.normal(0.0, 1.0, (energies.size, 2)) * offset_sigma_px
    true_m = nominal_m[None] - pixel_size_m * offsets[:, None, :]  # (energy, n, 2)

    window = (factor * frame[0], factor * frame[1])
    frames = np.empty((energies.size, n_pos, *frame))
    probes = np.empty((energies.size, 1, *frame), dtype=np.complex128)
    k = optics.wavenumber(energies)
    for e in range(energies.size):
        fine_px = pixels[e] / factor
        fine = np.asarray(
            probe.zone_plate_probe(
                window,
                fine_px,
                energies[e],
                diameter_m=geometry.zone_plate_diameter_m,
                outer_zone_width_m=geometry.outer_zone_width_m,
                central_stop_diameter_m=geometry.central_stop_diameter_m,
                defocus_m=defocus[e],
            )
        )
        coarse, power = _band_limited(fine, frame)
        scale = np.sqrt(photons[e] / power)
        probes[e, 0] = scale * coarse
        # fine object array holding every probe window, centred on the scan origin
        half = np.abs(true_m[e]).max(axis=0) / fine_px + np.array(window) / 2 + 2
        size = 2 * np.ceil(half).astype(int)
        coords = [(np.arange(n) - n // 2) * fine_px for n in size]
        t_fine = _sample_field(field.thickness, refine, shape, pixel_size_m, coords)
        integral = np.einsum("s,syx->yx", spec[e], t_fine)  # ∫(δ + iβ) dz, m
        transmission = np.exp(-k[e] * (integral.imag + 1j * integral.real))
        centres = size // 2 + true_m[e] / fine_px
        frames[e] = far_field_frames(transmission[None], scale * fine, centres[None], frame)[0]

    od = 2 * k[:, None, None] * np.einsum("es,syx->eyx", spec.imag, thickness)
    phase = -k[:, None, None] * np.einsum("es,syx->eyx", spec.real, thickness)
    truth = {
        "thickness": thickness,
        "domain": _binned_domain(field.domain, refine, len(field.species)),
        "offsets_px": offsets,
        "spectra": spec,
        "species": np.asarray(field.species, dtype="S"),
        "mu_t": od.astype(np.float32),
        "phase": phase.astype(np.float32),
        "defocus_m": defocus,
        "photons_per_frame": photons,
        "expected_frames": frames.astype(np.float32),
        "reference_energy_ev": np.asarray(energies[0]),
        "reference_pixel_size_m": np.asarray(pixel_size_m),
        "oversample": np.asarray(factor),
    }
    for name, values in descriptors.items():
        for key, value in values.items():
            truth[f"descriptors/{name}/{key}"] = np.asarray(value)
    return datasets.SimulatedDataset(
        frames=rng_noise.poisson(frames).astype(np.float32)[:, None],
        positions_px=(nominal_m[None] / pixels[:, None, None])[:, None],
        padding_px=geometry.padding_px,
        energies_ev=energies,
        angles_deg=np.zeros(1),
        pixel_size_m=pixels,
        distance_m=geometry.distance_m,
        probe=probes,
        truth=truth,
        illumination_known=known_probe,
        detector_pixel_m=det_px,
    )


def write_vanadium_references(
    path,
    energies_ev: Float[np.ndarray, " energy"] | None = None,
    include_ev: Float[np.ndarray, " energy"] | None = None,
) -> None:
    """Write δ, β of V2O3, VO2 and V2O5 as a references CSV.

    The layout of :func:`diffptycho.io.references.write_reference_csv`; the spectra are those
    of :func:`diffptycho.physics.spectra.vanadium_reference_spectra` that the simulation uses.

    Args:
        path: CSV file to write (atomically).
        energies_ev: increasing energies in eV (default: 5400–5560 eV in 0.5 eV steps, around
            the V K edge and beyond the published 5420–5540 eV).
        include_ev: energies to add to the table, e.g. those of a dataset, where the spectra
            are then exact rather than interpolated (2 eV wide pre-edge lines).
    """
    from diffptycho.io.references import write_reference_csv

    energies = np.arange(5400.0, 5560.0 + 1e-9, 0.5) if energies_ev is None else energies_ev
    if include_ev is not None:
        energies = np.union1d(energies, np.asarray(include_ev, dtype=np.float64))
    energies = _check_energies(energies)
    ref, _ = spectra.vanadium_reference_spectra(energies)
    species = tuple(spectra.VANADIUM_SPECIES)
    write_reference_csv(path, energies, species, np.stack([ref[s] for s in species], axis=1))
