"""Two-energy LFP ptychographic tilt series simulated the way an experiment records them.

:func:`diffptycho.sim.datasets.simulate_lfp_tomo` produces frames with the package's own forward
model on its own grid, so any reconstruction with that model starts from an exact fit (an
"inverse crime"). :func:`simulate_lfp_tilt_series` avoids that, for testing and benchmarking the
staged pipeline (probe retrieval, alignment, tomography) and the joint reconstruction:

- the sample is generated ``oversample``× finer than the model grid, and everything up to the
  detector happens on the fine grid; the truth composition is the fine phantom binned back;
- the projector is another one: the volume is resampled along rotated rays with
  :func:`scipy.ndimage.map_coordinates` (:func:`project_by_interpolation`), not the package's
  Joseph projector;
- every scan has its own sample shift (``scan_shift_px``, different at each energy), applied by
  an exact Fourier shift, which the files do not record;
- sub-pixel scan positions move the probe by a Fourier shift (a band-limited beam), not by
  bilinear interpolation of the object;
- the exit waves are propagated with a unitary FFT of the fine window, of which the detector
  keeps the central frequencies: a detector of the model's frame size at the model's object
  pixel, whose frames also miss the light scattered beyond its edge;
- the file holds what a beamline writes: counts, nominal positions in m, energies, detector
  distance and pixel size, the tilt angle of each scan, and no illumination unless asked for.

The true probe at the model pixel, the shifts and the noiseless, aligned optical-density
projections (``od_projections``) are stored as truth, to check each stage on its own.

The frames of each scan are computed in blocks of ``block_frames`` positions; with
``stream=True`` they are not kept but computed while
:func:`~diffptycho.sim.datasets.write_dataset` writes them
(:class:`~diffptycho.sim.datasets.StreamedFrames`), so the memory of a simulation does not grow
with the number of positions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
from jaxtyping import Float, Int
from scipy import ndimage

from diffptycho.physics import optics, scan, spectra
from diffptycho.sim import datasets, patterns, phantoms
from diffptycho.sim._farfield import far_field_frames

__all__ = [
    "STUDY_ANGLES_DEG",
    "bin_blocks",
    "fourier_shift",
    "project_by_interpolation",
    "simulate_lfp_tilt_series",
]

STUDY_ANGLES_DEG = (-80.0, 77.0)
"""Tilt range of the LFP study in degrees (158 projections, a 23° missing wedge)."""

_RAY_STEP_VOXELS = 0.5
"""Sample spacing along each ray, in voxels: two samples per voxel for the rectangle rule."""


def project_by_interpolation(
    volume: Float[np.ndarray, "z y x"], angles_rad: Float[np.ndarray, " angle"], order: int = 1
) -> Float[np.ndarray, "angle y t"]:
    """Parallel-beam projections by resampling the volume along rotated rays.

    The same geometry as :func:`diffptycho.physics.tomography.project` (rotation about y, beam
    along +z at θ = 0, centred detector coordinate t_c = x_c cos θ + z_c sin θ, detector pixel =
    voxel) with another discretisation: the volume is interpolated with splines of ``order``
    (:func:`scipy.ndimage.map_coordinates`, zero outside) at points half a voxel apart along
    each ray, and the samples are summed (rectangle rule). Host NumPy, not differentiable: for
    simulating data, not for reconstructing.

    Args:
        volume: real volume (z, y, x), per voxel of path (e.g. volume fractions).
        angles_rad: rotation angles θ in rad.
        order: spline order of the interpolation, 1 (trilinear) to 3.

    Returns:
        Line integrals (angle, y, t) in voxel units, t with ``n_x`` pixels.

    Examples:
        >>> vol = np.zeros((4, 2, 4)); vol[0, :, 3] = 1.0  # z_c = -1.5, x_c = 1.5
        >>> p = project_by_interpolation(vol, np.array([0.0, np.pi / 2]))
        >>> int(p[0, 0].argmax()), int(p[1, 0].argmax())  # t_c = 1.5, then -1.5
        (3, 0)
    """
    volume = np.asarray(volume, dtype=np.float64)
    if volume.ndim != 3:
        raise ValueError(f"volume: expected (z, y, x), got shape {volume.shape}")
    if order not in (1, 2, 3):
        raise ValueError(f"order={order!r}: expected a spline order 1, 2 or 3")
    angles = np.atleast_1d(np.asarray(angles_rad, dtype=np.float64))
    nz, ny, nx = volume.shape
    n_ray = int(np.ceil(np.hypot(nz, nx) / _RAY_STEP_VOXELS)) + 2
    u = (np.arange(n_ray) - (n_ray - 1) / 2) * _RAY_STEP_VOXELS
    t = np.arange(nx) - (nx - 1) / 2
    y = np.broadcast_to(np.arange(ny, dtype=np.float64)[None, :, None], (n_ray, ny, nx))
    coeffs = volume if order == 1 else ndimage.spline_filter(volume, order=order)
    out = np.empty((angles.size, ny, nx))
    for i, theta in enumerate(angles):
        cos, sin = np.cos(theta), np.sin(theta)
        # ray point (t along the detector, u along the beam) in the sample's centred frame
        x = (t[None, :] * cos - u[:, None] * sin)[:, None, :] + (nx - 1) / 2
        z = (t[None, :] * sin + u[:, None] * cos)[:, None, :] + (nz - 1) / 2
        coords = np.stack(np.broadcast_arrays(z, y, x))
        samples = ndimage.map_coordinates(
            coeffs, coords, order=order, mode="constant", cval=0.0, prefilter=False
        )
        out[i] = samples.sum(axis=0) * _RAY_STEP_VOXELS
    return out


def fourier_shift(
    images: Float[np.ndarray, "*batch y x"], shifts_px: Float[np.ndarray, "*batch 2"]
) -> Float[np.ndarray, "*batch y x"]:
    """Shift real images by sub-pixel amounts with the Fourier shift theorem (periodic).

    Exact for band-limited periodic images; pad with enough zeros first so that nothing wraps
    around.

    Args:
        images: real images (..., y, x).
        shifts_px: (..., 2) shifts (y, x) in pixels, broadcast against the leading axes;
            positive moves content to larger indices.

    Returns:
        The shifted images, real, same shape.

    Examples:
        >>> img = np.zeros((8, 8)); img[2, 3] = 1.0
        >>> out = fourier_shift(img, np.array([1.0, -2.0]))
        >>> [int(i) for i in np.unravel_index(out.argmax(), out.shape)]
        [3, 1]
    """
    images = np.asarray(images, dtype=np.float64)
    shifts = np.asarray(shifts_px, dtype=np.float64)
    ny, nx = images.shape[-2:]
    fy = np.fft.fftfreq(ny)[:, None]
    fx = np.fft.rfftfreq(nx)[None, :]
    ramp = np.exp(-2j * np.pi * (fy * shifts[..., 0, None, None] + fx * shifts[..., 1, None, None]))
    # irfft2 keeps the real part at the Nyquist frequencies, so a real image stays real
    return np.fft.irfft2(np.fft.rfft2(images) * ramp, s=(ny, nx))


def bin_blocks(array: np.ndarray, factor: int, axes: tuple[int, ...]) -> np.ndarray:
    """Mean over ``factor``-wide blocks along ``axes`` (each length a multiple of ``factor``).

    Args:
        array: the array.
        factor: block size in samples.
        axes: the axes to bin.

    Returns:
        The array with each of ``axes`` ``factor`` times shorter.

    Examples:
        >>> bin_blocks(np.arange(8.0).reshape(2, 4), 2, (1,))
        array([[0.5, 2.5],
               [4.5, 6.5]])
    """
    array = np.asarray(array)
    for axis in sorted(a % array.ndim for a in axes):
        n = array.shape[axis]
        if n % factor:
            raise ValueError(f"axis {axis} of length {n} is not a multiple of {factor}")
        shape = array.shape[:axis] + (n // factor, factor) + array.shape[axis + 1 :]
        array = array.reshape(shape).mean(axis=axis + 1)
    return array


def _binned_labels(labels: Int[np.ndarray, "z y x"], factor: int, occupancy: np.ndarray):
    """Per coarse voxel, the particle covering most of its block where it is ≥ half occupied."""
    n = int(labels.max())
    counts = np.stack([bin_blocks(labels == p, factor, (0, 1, 2)) for p in range(1, n + 1)])
    best = np.argmax(counts, axis=0) + 1
    return np.where(occupancy >= 0.5, best, 0).astype(np.int32)


def _fine_geometry(geometry: datasets.ScanGeometry, factor: int) -> datasets.ScanGeometry:
    return dataclasses.replace(
        geometry, probe_shape=tuple(factor * n for n in geometry.probe_shape)
    )


def _fine_positions(
    positions_px: Float[np.ndarray, "... 2"],
    shape: tuple[int, int],
    padding_px: int,
    factor: int,
) -> Float[np.ndarray, "... 2"]:
    """Fine-grid object index of each probe centre (the physical point the coarse model uses).

    A coarse position puts the probe centre on padded coarse index ``W // 2 + x``; coarse
    projection index t is centred at ``(n − 1)/2`` and its block of fine pixels at
    ``factor·t + (factor − 1)/2``.
    """
    out = np.empty_like(positions_px, dtype=np.float64)
    for axis, n in enumerate(shape):
        coarse = (n + 2 * padding_px) // 2 + positions_px[..., axis] - padding_px
        out[..., axis] = factor * coarse + (factor - 1) / 2 + factor * padding_px
    return out


def simulate_lfp_tilt_series(
    volume_shape: tuple[int, int, int] = (32, 32, 32),
    voxel_size_m: float = 6.7e-9,
    energies_ev: tuple[float, ...] = (spectra.LFP_E1_EV, spectra.LFP_E2_EV),
    angles_deg: Float[np.ndarray, " angle"] | None = None,
    n_particles: int = 2,
    geometry: datasets.ScanGeometry = datasets.ScanGeometry(),  # noqa: B008 (frozen dataclass)
    oversample: int = 2,
    shift_sigma_px: float = 0.0,
    seed: int = 0,
    *,
    known_probe: bool = False,
    interpolation_order: int = 1,
    mixed_band_m: tuple[float, float] | None = None,
    block_frames: int = 256,
    stream: bool = False,
) -> datasets.SimulatedDataset:
    """Two-energy ptychographic tilt series of LiFePO4/FePO4 plates, without inverse crime.

    See the module docstring for the chain. The model grid is ``volume_shape`` at
    ``voxel_size_m``, with frames of ``geometry.probe_shape`` at object pixel = voxel; the
    sample, its projections, transmissions and exit waves live on a grid ``oversample`` times
    finer. Random streams (phantom, positions, shifts, noise) are independent, so that
    ``shift_sigma_px=0`` with the same ``seed`` is the same experiment perfectly aligned.

    Args:
        volume_shape: (z, y, x) voxels of the model grid.
        voxel_size_m: model voxel edge in m (the study: 6.7 nm).
        energies_ev: photon energies in eV (the study: 708.2 and 710.2).
        angles_deg: tilt angles in degrees (default: 24 angles over the study's −80°…+77°).
        n_particles: number of plates.
        geometry: scan and probe geometry on the model grid (positions, step, jitter in model
            pixels; probe window = detector frame).
        oversample: fine samples per model voxel along each axis (≥ 1; 1 still uses the other
            projector and shifts, but the same grid).
        shift_sigma_px: standard deviation in model pixels of the sample shift (y, x) of each
            (energy, angle) scan; 0 for perfectly aligned scans.
        seed: seed of every random stream.
        known_probe: write the true probe into the file as the illumination (for runs with the
            probe known); by default the file has none, as from a beamline.
        interpolation_order: spline order of the projector's interpolation (1–3).
        mixed_band_m: width range in m of the mixed band of "front" plates (default: that of
            :func:`diffptycho.sim.phantoms.lfp_field`).
        block_frames: positions whose far field is computed at once (memory: a few times
            ``block_frames × (oversample·fy) × (oversample·fx)`` complex numbers); the
            result does not depend on it.
        stream: return the frames as :class:`~diffptycho.sim.datasets.StreamedFrames`,
            computed (with the truth ``expected_frames``) only while
            :func:`~diffptycho.sim.datasets.write_dataset` writes them; the file is the same.

    Returns:
        The dataset: ``frames`` (energy, angle, n, fy, fx) counts, nominal ``positions_px``,
        ``probe`` the true probe at the model pixel (energy, 1, fy, fx), and truth
        ``composition`` (2, z, y, x), ``labels``, ``spectra`` (energy, 2), ``species``,
        ``scan_shift_px`` (energy, angle, 2), ``probe``, ``od_projections`` (energy, angle, y,
        x) (aligned, noiseless, model grid), ``expected_frames``, ``oversample`` and the
        per-particle truth of the phantom. With ``stream``, ``frames`` are
        :class:`~diffptycho.sim.datasets.StreamedFrames` and ``expected_frames`` is not in
        the truth (the stream gives both).

    Raises:
        ValueError: for invalid arguments or a raster that leaves the padded projections.

    Examples:
        >>> g = datasets.ScanGeometry(probe_shape=(8, 8), scan_shape=(2, 2),
        ...                           outer_zone_width_m=10e-9, defocus_m=0.2e-6)
        >>> ds = simulate_lfp_tilt_series((16, 16, 16), angles_deg=np.array([0.0, 45.0]),
        ...                               n_particles=1, geometry=g, shift_sigma_px=1.0)
        >>> ds.frames.shape, ds.truth["scan_shift_px"].shape
        ((2, 2, 4, 8, 8), (2, 2, 2))
    """
    factor = int(oversample)
    if factor != oversample or factor < 1:
        raise ValueError(f"oversample={oversample!r}: expected a positive integer")
    if isinstance(block_frames, bool) or int(block_frames) != block_frames or block_frames < 1:
        raise ValueError(f"block_frames={block_frames!r}: expected a positive number of frames")
    if not (np.isfinite(shift_sigma_px) and shift_sigma_px >= 0):
        raise ValueError(f"shift_sigma_px={shift_sigma_px!r}: expected a width ≥ 0 in pixels")
    if angles_deg is None:
        angles_deg = np.linspace(*STUDY_ANGLES_DEG, 24)
    angles = np.atleast_1d(np.asarray(angles_deg, dtype=np.float64))
    energies = np.atleast_1d(np.asarray(energies_ev, dtype=np.float64))
    shape = tuple(int(n) for n in volume_shape)
    seed_pos, seed_shift, seed_noise = np.random.SeedSequence(seed).spawn(3)
    rng_pos, rng_shift = np.random.default_rng(seed_pos), np.random.default_rng(seed_shift)

    # sample: fine phantom, truth binned back to the model grid
    fine_voxel = voxel_size_m / factor
    kwargs = {} if mixed_band_m is None else {"mixed_band_m": mixed_band_m}
    field = phantoms.lfp_field(
        tuple(factor * n for n in shape), fine_voxel, n_particles=n_particles, seed=seed, **kwargs
    )
    composition = bin_blocks(field.composition, factor, (1, 2, 3))
    ref = spectra.lfp_reference_spectra(energies)
    spec = np.stack([ref[name] for name in field.species], axis=1)  # (energy, species)

    # scans: nominal positions on the model grid, the probe at both samplings
    pad = geometry.padding_px
    n_pos = int(np.prod(geometry.scan_shape))
    positions = np.stack(
        [
            patterns.raster_positions(*geometry.scan_shape, geometry.step_px, 0.0)
            + rng_pos.uniform(-geometry.jitter_px, geometry.jitter_px, (n_pos, 2))
            for _ in range(energies.size * angles.size)
        ]
    ).reshape(energies.size, angles.size, n_pos, 2)
    scan.check_positions(
        positions.reshape(-1, 2), (shape[1] + 2 * pad, shape[2] + 2 * pad), geometry.probe_shape
    )
    probes = np.stack([datasets.make_probe(geometry, voxel_size_m, e) for e in energies])
    fine_probes = [
        datasets.make_probe(_fine_geometry(geometry, factor), fine_voxel, e)[0] for e in energies
    ]
    shifts = rng_shift.normal(0.0, 1.0, (energies.size, angles.size, 2)) * shift_sigma_px

    # projections of each species on the fine grid with the other projector
    theta = np.deg2rad(angles)
    per_species = np.stack(
        [project_by_interpolation(c, theta, interpolation_order) for c in field.composition]
    )  # (species, angle, y, t), fine voxels
    beta_proj = np.einsum("es,sayx->eayx", spec.imag, per_species)
    k = optics.wavenumber(energies)
    od = 2 * k[:, None, None, None] * fine_voxel * bin_blocks(beta_proj, factor, (2, 3))

    # misalign, pad with vacuum, transmit, scan, detect: block by block
    margin = int(np.ceil(np.abs(shifts).max(initial=0.0) * factor)) + 2
    fine_pad = factor * pad
    centres = _fine_positions(positions, shape[1:], pad, factor)

    def blocks() -> Iterator[datasets.FrameBlock]:
        # one noise stream drawn in the order of the frames (energy, angle, position)
        rng_noise = np.random.default_rng(seed_noise)
        w = fine_pad + margin
        for e in range(energies.size):
            for a in range(angles.size):  # one transmission at a time
                padded = np.pad(per_species[:, a : a + 1], ((0, 0), (0, 0), (w, w), (w, w)))
                moved = fourier_shift(padded, factor * shifts[e, a : a + 1][None])
                moved = moved[..., margin:-margin, margin:-margin]
                integral = fine_voxel * np.einsum("s,sayx->ayx", spec[e], moved)
                transmission = np.exp(-k[e] * (integral.imag + 1j * integral.real))
                for start in range(0, n_pos, block_frames):
                    stop = min(start + block_frames, n_pos)
                    far = far_field_frames(
                        transmission,
                        fine_probes[e],
                        centres[e, a : a + 1, start:stop],
                        geometry.probe_shape,
                    )[0]
                    counts = rng_noise.poisson(far).astype(np.float32)
                    yield datasets.FrameBlock(e, a, start, counts, far.astype(np.float32))

    frame_shape = (energies.size, angles.size, n_pos, *geometry.probe_shape)
    frames = datasets.StreamedFrames(frame_shape, blocks)

    truth = {
        "composition": composition,
        "labels": _binned_labels(field.labels, factor, composition.sum(axis=0)),
        "spectra": spec,
        "species": np.asarray(field.species, dtype="S"),
        "scan_shift_px": shifts,
        "probe": probes,
        "od_projections": od.astype(np.float32),
        "oversample": np.asarray(factor),
    }
    truth.update({f"particles/{name}": np.asarray(v) for name, v in field.particle_truth().items()})
    if not stream:
        frames, truth["expected_frames"] = frames.arrays()
    return datasets.SimulatedDataset(
        frames=frames,
        positions_px=positions,
        padding_px=pad,
        energies_ev=energies,
        angles_deg=angles,
        pixel_size_m=float(voxel_size_m),
        distance_m=geometry.distance_m,
        probe=probes,
        truth=truth,
        illumination_known=known_probe,
    )
