"""Simulated ptychographic datasets with their ground truth.

Both published workflows are simulated through the package's own forward models:

- :func:`simulate_lfp_tomo`: two-energy ptychographic tomography of LiFePO4/FePO4 plates at the
  Fe L3 edge (one far-field scan per energy and angle);
- :func:`simulate_vanadium_2d`: multi-energy 2-D spectro-ptychography across the V K edge.

Frames are Poisson-distributed photon counts at the chosen dose. Results are plain dataclasses
of NumPy arrays; :func:`write_dataset` stores them as CXI (one entry per scan) with the truth in
the separate ``diffptycho_truth`` group. A simulation may instead hand its frames over as
:class:`StreamedFrames`, produced block by block while :func:`write_dataset` writes them, so
that the peak memory does not grow with the number of positions.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from diffptycho.models import SpectroPtycho2D, SpectroPtychoTomo
from diffptycho.physics import optics, probe, scan, spectra
from diffptycho.sim import patterns, phantoms


@dataclasses.dataclass(frozen=True)
class ScanGeometry:
    """Far-field geometry shared by the simulated scans.

    Attributes:
        probe_shape: detector frame / probe array shape in pixels; the projections are padded
            with vacuum by half of it, so the probe can scan the edges of the field.
        scan_shape: raster of positions (rows, columns).
        step_px: raster step in object pixels.
        jitter_px: random offset of each raster point in pixels.
        distance_m: sample–detector distance in m.
        zone_plate_diameter_m: zone-plate diameter in m.
        outer_zone_width_m: outermost zone width in m (sets the focus size).
        central_stop_diameter_m: central stop diameter in m.
        defocus_m: sample distance from the focus in m (enlarges the probe).
        photons_per_frame: incident photons per exposure (sets the dose).
    """

    probe_shape: tuple[int, int] = (16, 16)
    scan_shape: tuple[int, int] = (9, 9)
    step_px: float = 3.0
    jitter_px: float = 0.4
    distance_m: float = 0.1
    zone_plate_diameter_m: float = 240e-6
    outer_zone_width_m: float = 25e-9
    central_stop_diameter_m: float = 90e-6
    defocus_m: float = 0.6e-6
    photons_per_frame: float = 1e5

    @property
    def padding_px(self) -> int:
        """Vacuum margin around the projections, in pixels (half the probe window)."""
        return max(self.probe_shape) // 2

    def fitted_to(self, object_shape: tuple[int, int]) -> ScanGeometry:
        """The same geometry with the largest raster (≤ the current one) that fits the object.

        Args:
            object_shape: (H, W) of the object (or projections, before padding) in pixels.
        """
        margin = 2 + 2 * self.jitter_px  # bilinear interpolation needs one extra pixel
        fit = [
            max(1, min(n, int((size + 2 * self.padding_px - probe - margin) // self.step_px) + 1))
            for n, size, probe in zip(self.scan_shape, object_shape, self.probe_shape, strict=True)
        ]
        return dataclasses.replace(self, scan_shape=(fit[0], fit[1]))


@dataclasses.dataclass(frozen=True)
class FrameBlock:
    """Consecutive frames of one scan of a simulated dataset.

    Attributes:
        energy: energy index e.
        angle: angle index a.
        start: index of the block's first frame in scan (e, a).
        counts: (n, fy, fx) float32 photon counts.
        expected: (n, fy, fx) float32 noiseless intensities in photons (the counts' mean).
    """

    energy: int
    angle: int
    start: int
    counts: np.ndarray
    expected: np.ndarray


@dataclasses.dataclass(frozen=True)
class StreamedFrames:
    """The frames of a simulated dataset, computed block by block when they are read.

    Stands for :attr:`SimulatedDataset.frames` (and the truth ``expected_frames``) when they
    are not to be held in memory at once: :func:`write_dataset` writes each block as it is
    produced. Every call of ``blocks`` starts again and yields the same blocks.

    Attributes:
        shape: (energy, angle, n, fy, fx) of the whole array of counts.
        blocks: ``blocks()`` yields the :class:`FrameBlock` of every scan in the order
            (energy, angle, start), covering each scan's frames once in order.
    """

    shape: tuple[int, int, int, int, int]
    blocks: Callable[[], Iterator[FrameBlock]]

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """All blocks gathered: counts and expected intensities, (energy, angle, n, fy, fx)."""
        counts = np.empty(self.shape, np.float32)
        expected = np.empty(self.shape, np.float32)
        for b in self.blocks():
            stop = b.start + len(b.counts)
            counts[b.energy, b.angle, b.start : stop] = b.counts
            expected[b.energy, b.angle, b.start : stop] = b.expected
        return counts, expected


@dataclasses.dataclass(frozen=True)
class SimulatedDataset:
    """A simulated multi-scan dataset and its ground truth.

    Attributes:
        frames: photon counts (energy, angle, n, fy, fx); angle axis has length 1 in 2-D. Or
            :class:`StreamedFrames` computed as they are written (then the truth's
            ``expected_frames`` come from them too).
        positions_px: scan positions (energy, angle, n, 2) in object pixels (y, x).
        padding_px: vacuum margin around each projection in pixels (see ScanGeometry).
        energies_ev: photon energies in eV.
        angles_deg: rotation angles in degrees (0 only for 2-D data).
        pixel_size_m: object pixel (= voxel) size in m; or one per energy, (energy,), for a
            fixed detector, where the object pixel λz/(N·p) follows the wavelength.
        distance_m: sample–detector distance in m.
        probe: probe modes per energy (energy, mode, py, px).
        truth: ground-truth arrays (composition or thickness, spectra, labels …).
        illumination_known: whether :func:`write_dataset` writes ``probe`` into the file as
            the illumination (False: the probe is unknown, as from a beamline, and the truth
            holds it).
        detector_pixel_m: detector pixel in m when the detector is fixed (then
            ``pixel_size_m`` holds the object pixel of each energy); None: the detector pixel
            of each energy is the one that makes the object pixel ``pixel_size_m``.
    """

    frames: np.ndarray | StreamedFrames
    positions_px: np.ndarray
    padding_px: int
    energies_ev: np.ndarray
    angles_deg: np.ndarray
    pixel_size_m: float | np.ndarray
    distance_m: float
    probe: np.ndarray
    truth: dict[str, np.ndarray]
    illumination_known: bool = True
    detector_pixel_m: float | None = None

    def tomo_model(self, composition: np.ndarray | None = None) -> SpectroPtychoTomo:
        """The full-chain model of this dataset's geometry (known probe, positions, spectra).

        Args:
            composition: (species, z, y, x) volume fractions; zeros (a blank start for a
                reconstruction) when None.
        """
        if "composition" not in self.truth:
            raise ValueError("tomo_model: this dataset has no volume (it is 2-D)")
        comp = np.zeros_like(self.truth["composition"]) if composition is None else composition
        return SpectroPtychoTomo(
            composition=jnp.asarray(comp),
            spectra=jnp.asarray(self.truth["spectra"]),
            energies_ev=jnp.asarray(self.energies_ev),
            angles_rad=jnp.asarray(np.deg2rad(self.angles_deg)),
            alignment=jnp.zeros((self.angles_deg.size, 4)),
            probe=jnp.asarray(self.probe),
            positions=jnp.asarray(self.positions_px),
            voxel_size_m=self.pixel_size_m,
            padding_px=self.padding_px,
        )

    def detector_pixel_size_m(self) -> np.ndarray:
        """Detector pixel per energy (m) for which object pixels equal ``pixel_size_m``.

        Far field: Δx_object = λ z / (N p), so p = λ z / (N Δx_object). A fixed detector
        (``detector_pixel_m``) gives its own pixel at every energy.
        """
        if self.detector_pixel_m is not None:
            return np.full(self.energies_ev.shape, float(self.detector_pixel_m))
        n = self.frames.shape[-1]
        return optics.wavelength(self.energies_ev) * self.distance_m / (n * self.pixel_size_m)


def make_probe(geometry: ScanGeometry, pixel_size_m: float, energy_ev: float) -> np.ndarray:
    """Zone-plate probe (1, py, px) scaled to ``photons_per_frame``."""
    p = probe.zone_plate_probe(
        geometry.probe_shape,
        pixel_size_m,
        energy_ev,
        diameter_m=geometry.zone_plate_diameter_m,
        outer_zone_width_m=geometry.outer_zone_width_m,
        central_stop_diameter_m=geometry.central_stop_diameter_m,
        defocus_m=geometry.defocus_m,
    )
    p = np.asarray(p) * np.sqrt(geometry.photons_per_frame / np.sum(np.abs(p) ** 2))
    return p[None].astype(np.complex128)


def _positions(geometry: ScanGeometry, n_energy: int, n_angle: int, seed: int) -> np.ndarray:
    out = np.empty((n_energy, n_angle, int(np.prod(geometry.scan_shape)), 2))
    for e in range(n_energy):
        for a in range(n_angle):
            out[e, a] = patterns.raster_positions(
                *geometry.scan_shape, geometry.step_px, geometry.jitter_px, seed + 1000 * e + a
            )
    return out


def _poisson(expected: np.ndarray, seed: int) -> np.ndarray:
    expected = np.clip(np.asarray(expected, dtype=np.float64), 0.0, None)
    return np.random.default_rng(seed).poisson(expected).astype(np.float32)


def simulate_lfp_tomo(
    volume_shape: tuple[int, int, int] = (32, 32, 32),
    voxel_size_m: float = 6.7e-9,
    energies_ev: tuple[float, ...] = (spectra.LFP_E1_EV, spectra.LFP_E2_EV),
    angles_deg: np.ndarray | None = None,
    n_particles: int = 2,
    geometry: ScanGeometry = ScanGeometry(),
    seed: int = 0,
) -> SimulatedDataset:
    """Two-energy ptychographic tomography of LiFePO4/FePO4 nano-plates.

    Args:
        volume_shape: (z, y, x) voxels.
        voxel_size_m: voxel edge in m (the study used 6.7 nm).
        energies_ev: photon energies in eV (the study: 708.2 and 710.2).
        angles_deg: rotation angles in degrees (default: 24 angles from −80° to +77°, the
            study's range with its 23° missing wedge; the study had 158).
        n_particles: number of plates.
        geometry: scan and probe geometry.
        seed: seed of phantom, positions and noise.

    Returns:
        The dataset, with truth ``composition`` (2, z, y, x), ``labels``, ``spectra``
        (energy, 2) and the per-particle truth of the phantom.
    """
    if angles_deg is None:
        angles_deg = np.linspace(-80.0, 77.0, 24)
    angles_deg = np.asarray(angles_deg, dtype=np.float64)
    energies = np.asarray(energies_ev, dtype=np.float64)
    field = phantoms.lfp_field(volume_shape, voxel_size_m, n_particles=n_particles, seed=seed)
    ref = spectra.lfp_reference_spectra(energies)
    spec = np.stack([ref[name] for name in field.species], axis=1)
    probes = np.stack([make_probe(geometry, voxel_size_m, e) for e in energies])
    pos = _positions(geometry, len(energies), len(angles_deg), seed)
    model = SpectroPtychoTomo(
        composition=jnp.asarray(field.composition),
        spectra=jnp.asarray(spec),
        energies_ev=jnp.asarray(energies),
        angles_rad=jnp.asarray(np.deg2rad(angles_deg)),
        alignment=jnp.zeros((len(angles_deg), 4)),
        probe=jnp.asarray(probes),
        positions=jnp.asarray(pos),
        voxel_size_m=voxel_size_m,
        padding_px=geometry.padding_px,
    )
    model.check_scan_geometry()
    expected = jax.jit(SpectroPtychoTomo.all_intensities)(model)
    truth = {
        "composition": field.composition,
        "labels": field.labels,
        "spectra": spec,
        "species": np.asarray(field.species, dtype="S"),
        "expected_frames": np.asarray(expected, dtype=np.float32),
    }
    truth.update({f"particles/{k}": np.asarray(v) for k, v in field.particle_truth().items()})
    return SimulatedDataset(
        frames=_poisson(expected, seed + 1),
        positions_px=pos,
        padding_px=geometry.padding_px,
        energies_ev=energies,
        angles_deg=angles_deg,
        pixel_size_m=voxel_size_m,
        distance_m=geometry.distance_m,
        probe=probes,
        truth=truth,
    )


VANADIUM_GEOMETRY = ScanGeometry(scan_shape=(8, 8), step_px=4.0)
"""Default scan geometry of :func:`simulate_vanadium_2d`."""


def simulate_vanadium_2d(
    image_shape: tuple[int, int] = (48, 48),
    pixel_size_m: float = 20e-9,
    energies_ev: np.ndarray | None = None,
    geometry: ScanGeometry = VANADIUM_GEOMETRY,
    seed: int = 0,
) -> SimulatedDataset:
    """Multi-energy 2-D spectro-ptychography of vanadium-oxide particles (V K edge).

    Args:
        image_shape: (y, x) object pixels.
        pixel_size_m: object pixel size in m.
        energies_ev: photon energies in eV (default: 40 from 5420 to 5540 eV, as published).
        geometry: scan and probe geometry.
        seed: seed of phantom, positions and noise.

    Returns:
        The dataset (angle axis of length 1), with truth ``thickness`` (species, y, x),
        ``domain`` (y, x), ``spectra`` (energy, species) and the species' descriptors.
    """
    energies = np.linspace(5420.0, 5540.0, 40) if energies_ev is None else energies_ev
    energies = np.asarray(energies, dtype=np.float64)
    field = phantoms.vanadium_field(image_shape, pixel_size_m, seed=seed)
    ref, descriptors = spectra.vanadium_reference_spectra(energies)
    spec = np.stack([ref[name] for name in field.species], axis=1)
    probes = np.stack([make_probe(geometry, pixel_size_m, e) for e in energies])
    pos = _positions(geometry, len(energies), 1, seed)
    model = SpectroPtycho2D(
        thickness=jnp.asarray(field.thickness),
        spectra=jnp.asarray(spec),
        energies_ev=jnp.asarray(energies),
        probe=jnp.asarray(probes),
        positions=jnp.asarray(pos[:, 0]),
    )
    scan.check_positions(pos.reshape(-1, 2), image_shape, geometry.probe_shape)
    expected = np.asarray(jax.jit(SpectroPtycho2D.__call__)(model))[:, None]
    truth = {
        "thickness": field.thickness,
        "domain": field.domain,
        "spectra": spec,
        "species": np.asarray(field.species, dtype="S"),
    }
    for name, values in descriptors.items():
        for key, value in values.items():
            truth[f"descriptors/{name}/{key}"] = np.asarray(value)
    return SimulatedDataset(
        frames=_poisson(expected, seed + 1),
        positions_px=pos,
        padding_px=0,
        energies_ev=energies,
        angles_deg=np.zeros(1),
        pixel_size_m=pixel_size_m,
        distance_m=geometry.distance_m,
        probe=probes,
        truth=truth,
    )


def write_dataset(path, dataset: SimulatedDataset) -> None:
    """Write a simulated dataset as CXI: one entry per (energy, angle) scan, truth apart.

    :class:`StreamedFrames` are computed and written block by block (each scan's counts, and
    the truth ``expected_frames`` beside them), never all in memory; the file is the one
    their gathered arrays give.

    Args:
        path: output file (written atomically).
        dataset: the simulated dataset.
    """
    from diffptycho.io.cxi import BlockScan, PtychoScan, cxi_writer

    det_px = dataset.detector_pixel_size_m()
    object_px = np.broadcast_to(np.asarray(dataset.pixel_size_m, float), det_px.shape)
    truth = dict(dataset.truth)
    truth["pixel_size_m"] = np.asarray(dataset.pixel_size_m)
    truth["padding_px"] = np.asarray(dataset.padding_px)
    if not dataset.illumination_known:
        truth["probe"] = dataset.probe
    streamed = isinstance(dataset.frames, StreamedFrames)
    with cxi_writer(path) as writer:
        if streamed:
            shape = dataset.frames.shape
            expected = writer.truth_dataset("expected_frames", shape, np.float32)
            blocks = itertools.groupby(dataset.frames.blocks(), lambda b: (b.energy, b.angle))
        for e, energy in enumerate(dataset.energies_ev):
            for a, angle in enumerate(dataset.angles_deg):
                scan = {
                    "positions_m": dataset.positions_px[e, a] * object_px[e],
                    "energy_ev": float(energy),
                    "distance_m": dataset.distance_m,
                    "pixel_size_m": (float(det_px[e]), float(det_px[e])),
                    "mask": None,
                    "illumination": dataset.probe[e] if dataset.illumination_known else None,
                    "angle_deg": float(angle),
                    "name": f"E{energy:.2f}eV_theta{angle:+.2f}deg",
                }
                if not streamed:
                    writer.add_scan(PtychoScan(data=dataset.frames[e, a], **scan))
                    continue
                key, group = next(blocks, ((None, None), iter(())))
                if key != (e, a):
                    raise ValueError(
                        f"dataset.frames: the blocks give scan {key} where scan {(e, a)} is "
                        "due; StreamedFrames.blocks must yield scans in (energy, angle) order"
                    )
                writer.add_scan(BlockScan(_counts(group, expected), shape[-2:], **scan))
        writer.add_truth(truth)


def _counts(group: Iterator[FrameBlock], expected) -> Iterator[np.ndarray]:
    """The counts of a scan's blocks, writing their expected intensities to ``expected``."""
    for b in group:
        expected[b.energy, b.angle, b.start : b.start + len(b.expected)] = b.expected
        yield b.counts


def write_lfp_references(
    path, energies_ev: np.ndarray | None = None, species: tuple[str, ...] = ("LiFePO4", "FePO4")
) -> None:
    """Write the LFP/FP reference spectra (δ, β of each pure species) as a references CSV.

    The layout is the one ``diffptycho spectrotomo --references`` reads
    (:func:`diffptycho.io.references.read_reference_csv`).

    Args:
        path: CSV file to write.
        energies_ev: energies in eV (default: 700–720 eV in 0.05 eV steps, around the Fe L3
            edge).
        species: which species, in the order of the columns.
    """
    from diffptycho.io.references import write_reference_csv

    energies = np.arange(700.0, 720.0 + 1e-9, 0.05) if energies_ev is None else energies_ev
    energies = np.asarray(energies, dtype=np.float64)
    ref = spectra.lfp_reference_spectra(energies)
    write_reference_csv(path, energies, species, np.stack([ref[s] for s in species], axis=1))
