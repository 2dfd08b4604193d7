"""Ground-truth fields of the two published workflows (host NumPy, seeded).

- :func:`lfp_field`: LiFePO4/FePO4 nano-plates in a (z, y, x) volume for Fe L3 tomography;
- :func:`vanadium_field`: vanadium-oxide particles with chemical domains in a (y, x) image for
  V K-edge spectro-ptychography.

Species names match the keys of :func:`diffptycho.physics.spectra.lfp_reference_spectra` and
:func:`diffptycho.physics.spectra.vanadium_reference_spectra`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["LFPField", "VanadiumField", "lfp_field", "vanadium_field"]

_SUPERSAMPLE = 3  # sub-voxel samples per axis; odd, so that no voxel is exactly half occupied
_MAX_FAILURES = 500  # consecutive rejected placements before giving up
_FULL_FRACTION = 0.1  # share of the active LiFePO4 plates that are fully delithiated


def _check_shape(shape, ndim: int, name: str) -> tuple[int, ...]:
    try:
        out = tuple(int(n) for n in shape)
    except TypeError as err:
        raise ValueError(f"{name}={shape!r}: expected {ndim} positive integers") from err
    if len(out) != ndim or min(out) < 8:
        raise ValueError(f"{name}={shape!r}: expected {ndim} integers ≥ 8")
    return out


def _check_positive(value, name: str) -> float:
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"{name}={value!r}: expected a positive length in m")
    return float(value)


@dataclasses.dataclass(frozen=True)
class LFPField:
    """LiFePO4/FePO4 nano-plates: composition volumes and per-particle truth.

    Per-particle arrays are indexed by ``label − 1``. Vectors are (z, y, x) components.

    Attributes:
        composition: (2, z, y, x) volume fractions of ``species`` (sum ≤ 1, 0 outside particles;
            partial at particle surfaces).
        labels: (z, y, x) int32 particle id, 0 = background (voxels at least half occupied).
        normal: (P, 3) unit plate normals.
        axes: (P, 2, 3) unit in-plane axes along the plate length and width.
        center_m: (P, 3) plate centres in m, from the volume's corner voxel centre.
        size_m: (P, 3) length, width and thickness in m.
        thickness_m: (P,) plate thickness in m (= ``size_m[:, 2]``).
        fepo4_fraction: (P,) volume-weighted FePO4 fraction of each particle.
        volume_m3: (P,) particle volume in m³ (sum of occupancies × voxel volume).
        kind: (P,) domain layout: "inactive" (all LiFePO4), "front" (LiFePO4 | mixed band |
            FePO4 across a planar front), "solid_solution" (uniformly mixed) or "full" (all
            FePO4).
        voxel_size_m: voxel edge in m.
        species: names of the composition channels.
    """

    composition: np.ndarray
    labels: np.ndarray
    normal: np.ndarray
    axes: np.ndarray
    center_m: np.ndarray
    size_m: np.ndarray
    thickness_m: np.ndarray
    fepo4_fraction: np.ndarray
    volume_m3: np.ndarray
    kind: tuple[str, ...]
    voxel_size_m: float
    species: tuple[str, ...] = ("LiFePO4", "FePO4")

    @property
    def n_particles(self) -> int:
        """Number of plates."""
        return len(self.thickness_m)

    def particle_truth(self) -> dict[str, np.ndarray]:
        """Per-particle truth as named arrays (for files), indexed by ``label − 1``."""
        return {
            "normal": self.normal,
            "center_m": self.center_m,
            "size_m": self.size_m,
            "thickness_m": self.thickness_m,
            "fepo4_fraction": self.fepo4_fraction,
            "volume_m3": self.volume_m3,
            "kind": np.asarray(self.kind, dtype="S"),
        }


def _random_frame(rng: np.random.Generator) -> np.ndarray:
    """Rows: length axis, width axis, normal; a uniformly random orientation."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q.T


def _domains(kind: str, s: np.ndarray, front: float, band: float, mixed: float) -> np.ndarray:
    """FePO4 fraction at signed in-plane distances ``s`` (voxels) across a plate of one layout.

    A "front" plate is LiFePO4 for s < front − band/2, FePO4 for s > front + band/2 and of
    composition ``mixed`` in between (the band where the two phases meet).
    """
    if kind == "inactive":
        return np.zeros_like(s)
    if kind == "full":
        return np.ones_like(s)
    if kind == "solid_solution":
        return np.full_like(s, mixed)
    return np.where(s < front - band / 2, 0.0, np.where(s > front + band / 2, 1.0, mixed))


def lfp_field(
    shape: tuple[int, int, int] = (64, 64, 64),
    voxel_size_m: float = 6.7e-9,
    n_particles: int = 6,
    seed: int = 0,
    *,
    plate_size_m: tuple[float, float, float] = (100e-9, 80e-9, 20e-9),
    inactive_fraction: float = 0.3,
    mixed_band_m: tuple[float, float] = (30e-9, 60e-9),
    solid_solution_fraction: float = 0.1,
) -> LFPField:
    """LiFePO4/FePO4 nano-plates at random positions and tilts, with chemical domains.

    Plates are boxes of about ``plate_size_m`` (±10 % per dimension), uniformly random in
    orientation, non-overlapping (at least one voxel apart) and inside the cylinder inscribed in
    the (z, x) plane, so that they stay in the field of view at every angle about y. In-plane
    dimensions are clamped to fit the volume; the thickness is kept at ≥ 1.5 voxels (no holes).
    A fraction ``inactive_fraction`` of the plates is all LiFePO4. Of the active ones, 10 % are
    fully delithiated (all FePO4), a fraction ``solid_solution_fraction`` is uniformly mixed (a
    solid-solution plate) and the others have a planar front across the plate, perpendicular to a
    random in-plane direction: LiFePO4 | mixed band | FePO4. The band is the intermediate region
    where the two phases meet; its width is uniform in ``mixed_band_m`` (clipped by the plate's
    edges, as is the front, which lies anywhere in the central 80 % of the plate). Mixed regions
    hold one composition per plate, uniform in 30–70 % FePO4. The default bands, 30–60 nm, are
    domains several resolution elements across, as the intermediate regions seen in the LiFePO4
    studies; a band about as narrow as the point-spread function (≲ 11 nm) is blurred into the
    ramp from LiFePO4 to FePO4 and is segmented poorly from noisy data. Occupancy is sampled
    3 × 3 × 3 per voxel, so surface voxels hold partial volume (and voxels across a domain
    boundary, partial composition); with an odd number of samples no voxel is exactly half
    occupied, so ``labels`` (voxels at least half occupied) has no ties at its threshold.

    Geometry (positions, sizes, orientations) and chemistry come from two independent random
    streams of ``seed``, and every plate draws the same random numbers for its chemistry, so that
    changing ``mixed_band_m``, ``solid_solution_fraction`` or ``inactive_fraction`` keeps the
    plates where they are and changes only their domains.

    Args:
        shape: (z, y, x) voxels.
        voxel_size_m: voxel edge in m.
        n_particles: number of plates.
        seed: random seed.
        plate_size_m: mean length, width and thickness in m.
        inactive_fraction: probability that a plate is all LiFePO4.
        mixed_band_m: (smallest, largest) width in m of the mixed band across a "front" plate.
        solid_solution_fraction: probability that an active plate is uniformly mixed (≤ 0.9).

    Returns:
        The field with its per-particle truth.

    Examples:
        >>> f = lfp_field((32, 32, 32), n_particles=2, seed=1)
        >>> f.composition.shape, int(f.labels.max())
        ((2, 32, 32, 32), 2)
    """
    shape = _check_shape(shape, 3, "shape")
    vox = _check_positive(voxel_size_m, "voxel_size_m")
    if int(n_particles) != n_particles or n_particles < 1:
        raise ValueError(f"n_particles={n_particles!r}: expected a positive integer")
    mean = np.array([_check_positive(s, "plate_size_m") for s in plate_size_m]) / vox
    if not 0.0 <= inactive_fraction <= 1.0:
        raise ValueError(f"inactive_fraction={inactive_fraction!r}: expected a value in [0, 1]")
    if not 0.0 <= solid_solution_fraction <= 1.0 - _FULL_FRACTION:
        raise ValueError(
            f"solid_solution_fraction={solid_solution_fraction!r}: expected a value in "
            f"[0, {1.0 - _FULL_FRACTION:g}]"
        )
    band_m = np.asarray(mixed_band_m, dtype=np.float64)
    if band_m.shape != (2,) or not (np.all(np.isfinite(band_m)) and 0 <= band_m[0] <= band_m[1]):
        raise ValueError(
            f"mixed_band_m={mixed_band_m!r}: expected (smallest, largest) widths in m, "
            "0 ≤ smallest ≤ largest"
        )
    rng, chem_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    radius = 0.5 * min(shape[0], shape[2]) - 1.0  # cylinder about y, in voxels
    mean[:2] = np.minimum(mean[:2], 0.6 * min(radius, 0.5 * shape[1] - 1.0))
    mean[2] = min(max(mean[2], 1.5), mean[1])
    if n_particles * np.prod(mean) > 0.3 * np.pi * radius**2 * shape[1]:
        raise ValueError(
            f"n_particles={n_particles}: {n_particles} plates of {mean * vox} m fill more than "
            f"30 % of the rotation cylinder of shape={shape}"
        )

    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    centre_vol = (np.array(shape) - 1) / 2.0
    sub = (np.arange(_SUPERSAMPLE) + 0.5) / _SUPERSAMPLE - 0.5
    sub = np.stack(np.meshgrid(sub, sub, sub, indexing="ij"), -1).reshape(-1, 3)

    occupied = np.zeros(shape, dtype=bool)  # dilated by one voxel: plates never touch
    frac_fp = np.zeros(shape)
    occupancy = np.zeros(shape)
    labels = np.zeros(shape, dtype=np.int32)
    truth = {k: [] for k in ("normal", "axes", "center", "size", "fp", "occ", "kind")}
    failures = 0  # consecutive rejections: the volume is full
    while len(truth["kind"]) < n_particles:
        failures += 1
        if failures > _MAX_FAILURES:
            raise ValueError(
                f"n_particles={n_particles}: only {len(truth['kind'])} plates of "
                f"{mean * vox} m fit in shape={shape}"
            )
        size = mean * rng.uniform(0.9, 1.1, 3)
        size[2] = max(size[2], 1.5)
        frame = _random_frame(rng)
        half_diag = 0.5 * np.linalg.norm(size)
        r = max(radius - half_diag, 0.0) * np.sqrt(rng.uniform())  # uniform over the disc
        ang = rng.uniform(0, 2 * np.pi)
        y = rng.uniform(-1, 1) * max(0.5 * shape[1] - 1 - half_diag, 0.0)
        centre = centre_vol + np.array([r * np.cos(ang), y, r * np.sin(ang)])
        lo = np.maximum(np.floor(centre - half_diag).astype(int) - 1, 0)
        hi = np.minimum(np.ceil(centre + half_diag).astype(int) + 2, shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        local = grid[box].reshape(-1, 1, 3) + sub[None] - centre  # (voxels, samples, 3)
        coords = local @ frame.T  # (u, v, w) along length, width, normal
        inside = np.all(np.abs(coords) <= size / 2, axis=-1)
        occ = inside.mean(axis=1).reshape(hi - lo)
        if not occ.any() or np.any(occupied[box] & (occ > 0)):
            continue
        failures = 0
        # the same six draws for every plate (see the docstring)
        u_kind, u_active, phi, u_front, u_band, mixed = chem_rng.uniform(size=6)
        if u_kind < inactive_fraction:
            kind = "inactive"
        elif u_active < _FULL_FRACTION:
            kind = "full"
        elif u_active < _FULL_FRACTION + solid_solution_fraction:
            kind = "solid_solution"
        else:
            kind = "front"
        phi *= 2 * np.pi
        s = coords[..., 0] * np.cos(phi) + coords[..., 1] * np.sin(phi)
        extent = abs(size[0] * np.cos(phi)) + abs(size[1] * np.sin(phi))  # along s, voxels
        front = (u_front - 0.5) * 0.8 * extent
        band = (band_m[0] + u_band * (band_m[1] - band_m[0])) / vox
        x_fp = _domains(kind, s, front, band, 0.3 + 0.4 * mixed)
        x_fp = (np.where(inside, x_fp, 0.0).sum(1) / np.maximum(inside.sum(1), 1)).reshape(hi - lo)
        label = len(truth["kind"]) + 1
        occupancy[box] += occ
        frac_fp[box] += np.where(occ > 0, x_fp, 0.0)
        labels[box] = np.where(occ >= 0.5, label, labels[box])
        grown = occ > 0
        for axis in range(3):  # one-voxel dilation along each axis (and so diagonals over calls)
            grown = grown | np.roll(grown, 1, axis) | np.roll(grown, -1, axis)
        occupied[box] |= grown
        truth["normal"].append(frame[2])
        truth["axes"].append(frame[:2])
        truth["center"].append(centre * vox)
        truth["size"].append(size * vox)
        truth["fp"].append(float(np.sum(occ * x_fp) / np.sum(occ)))
        truth["occ"].append(float(np.sum(occ)) * vox**3)
        truth["kind"].append(kind)

    composition = np.stack([occupancy * (1.0 - frac_fp), occupancy * frac_fp])
    size_m = np.array(truth["size"])
    return LFPField(
        composition=composition,
        labels=labels,
        normal=np.array(truth["normal"]),
        axes=np.array(truth["axes"]),
        center_m=np.array(truth["center"]),
        size_m=size_m,
        thickness_m=size_m[:, 2].copy(),
        fepo4_fraction=np.array(truth["fp"]),
        volume_m3=np.array(truth["occ"]),
        kind=tuple(truth["kind"]),
        voxel_size_m=vox,
    )


@dataclasses.dataclass(frozen=True)
class VanadiumField:
    """Vanadium-oxide particles with chemical domains, as projected thickness per species.

    Attributes:
        thickness: (S, y, x) projected thickness in m of each species (one species per pixel).
        domain: (y, x) int32 index into ``species`` of the domain type, −1 = background.
        particles: (y, x) int32 particle id, 0 = background.
        pixel_size_m: pixel edge in m.
        species: names of the domain types (keys of the vanadium reference spectra).
    """

    thickness: np.ndarray
    domain: np.ndarray
    particles: np.ndarray
    pixel_size_m: float
    species: tuple[str, ...] = ("V2O3", "VO2", "V2O5")


def vanadium_field(
    shape: tuple[int, int] = (64, 64),
    pixel_size_m: float = 20e-9,
    n_particles: int = 4,
    seed: int = 0,
    *,
    species: tuple[str, ...] = ("V2O3", "VO2", "V2O5"),
    max_thickness_m: float = 300e-9,
    domains_per_particle: int = 3,
) -> VanadiumField:
    """Elliptical vanadium-oxide particles split into Voronoi domains of different oxides.

    Each particle is an ellipsoidal cap (projected thickness t = t_max·√(1 − ρ²)) of random
    semi-axes (25–45 % of the image side / √n_particles; smaller after 250 rejected placements
    in a row), orientation and height (50–100 % of ``max_thickness_m``); particles do not
    overlap. Each is cut into ``domains_per_particle``
    Voronoi cells, and the domain types are dealt from shuffled copies of ``species`` so that
    every type occurs when there are enough cells. Domain types differ in edge energy,
    pre-edge height and composition through their reference spectra.

    Args:
        shape: (y, x) pixels.
        pixel_size_m: pixel edge in m.
        n_particles: number of particles.
        seed: random seed.
        species: names of the domain types.
        max_thickness_m: largest particle thickness in m.
        domains_per_particle: Voronoi cells per particle.

    Returns:
        The field.

    Examples:
        >>> f = vanadium_field((48, 48), 20e-9, seed=0)
        >>> f.thickness.shape, sorted(set(f.domain.ravel().tolist()))
        ((3, 48, 48), [-1, 0, 1, 2])
    """
    shape = _check_shape(shape, 2, "shape")
    _check_positive(pixel_size_m, "pixel_size_m")
    t_max = _check_positive(max_thickness_m, "max_thickness_m")
    if int(n_particles) != n_particles or n_particles < 1:
        raise ValueError(f"n_particles={n_particles!r}: expected a positive integer")
    if int(domains_per_particle) != domains_per_particle or domains_per_particle < 1:
        raise ValueError(f"domains_per_particle={domains_per_particle!r}: expected an integer ≥ 1")
    if len(species) < 1:
        raise ValueError("species: expected at least one domain type")
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")
    height = np.zeros(shape)
    particles = np.zeros(shape, dtype=np.int32)
    domain = np.full(shape, -1, dtype=np.int32)
    deck: list[int] = []
    placed, failures = 0, 0
    while placed < n_particles:
        failures += 1
        if failures > _MAX_FAILURES:
            raise ValueError(f"n_particles={n_particles}: only {placed} particles fit in {shape}")
        # after many rejections in a row the particle is drawn smaller (phantoms placed
        # before that are unchanged), so large particles still fit on a small field
        shrink = 0.98 ** max(0, failures - _MAX_FAILURES // 2)
        semi = np.maximum(
            shrink * rng.uniform(0.5, 0.9, 2) * min(shape) / (2 * np.sqrt(n_particles)), 3
        )
        centre = np.array([rng.uniform(semi.max() + 1, n - semi.max() - 2) for n in shape])
        ang = rng.uniform(0, np.pi)
        dy, dx = yy - centre[0], xx - centre[1]
        a = (dy * np.cos(ang) + dx * np.sin(ang)) / semi[0]
        b = (-dy * np.sin(ang) + dx * np.cos(ang)) / semi[1]
        rho2 = a**2 + b**2
        inside = rho2 < 1.0
        grown = rho2 < (1.0 + 2.0 / semi.min()) ** 2  # one pixel of clearance
        if not inside.any() or np.any(grown & (particles > 0)):
            continue
        placed, failures = placed + 1, 0
        height = np.where(
            inside, t_max * rng.uniform(0.5, 1.0) * np.sqrt(np.clip(1 - rho2, 0, 1)), height
        )
        particles[inside] = placed
        seeds = np.argwhere(inside)[
            rng.choice(inside.sum(), min(domains_per_particle, inside.sum()), replace=False)
        ]
        cell = np.argmin(
            (yy[inside, None] - seeds[None, :, 0]) ** 2
            + (xx[inside, None] - seeds[None, :, 1]) ** 2,
            axis=1,
        )
        kinds = []
        for _ in range(len(seeds)):
            if not deck:
                deck = list(rng.permutation(len(species)))
            kinds.append(deck.pop())
        domain[inside] = np.asarray(kinds, dtype=np.int32)[cell]
    thickness = np.stack([np.where(domain == s, height, 0.0) for s in range(len(species))])
    return VanadiumField(
        thickness=thickness,
        domain=domain,
        particles=particles,
        pixel_size_m=float(pixel_size_m),
        species=tuple(species),
    )
