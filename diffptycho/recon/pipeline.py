"""The staged (classic beamline) pipeline on the same operators as the joint reconstruction.

ptychography per (energy, angle) ──▶ optical-density projections ──▶ tomography per energy
──▶ two-energy chemical unmixing per voxel. Each stage is a solver run by the one solve loop;
the joint reconstruction (:mod:`diffptycho.recon.joint`) replaces the whole list with one stage.
"""

from __future__ import annotations

import dataclasses
import time

import jax.numpy as jnp
import numpy as np

from diffptycho.models import Ptycho2D
from diffptycho.physics import optics
from diffptycho.recon.chem.two_energy import check_reference_matrix, unmix_two_energy
from diffptycho.recon.ptycho import ENGINES, PtychoData, Refinement
from diffptycho.recon.solve import solve
from diffptycho.recon.tomo.reconstruct import reconstruct


@dataclasses.dataclass
class StagedResult:
    """What each stage produced, for inspection and comparison with the joint result.

    Attributes:
        objects: complex transmissions (energy, angle, H, W) from ptychography.
        od_projections: optical density −ln|T|² (energy, angle, y, x), padding cropped.
        od_volumes: OD per voxel (energy, z, y, x) from tomography.
        composition: volume fractions (2, z, y, x) from the two-energy unmixing.
        ptycho_loss: final ptychography loss per scan (energy, angle).
        seconds: wall-clock time of each stage in s.
    """

    objects: np.ndarray
    od_projections: np.ndarray
    od_volumes: np.ndarray
    composition: np.ndarray
    ptycho_loss: np.ndarray
    seconds: dict[str, float]


def reference_od_per_voxel(spectra: np.ndarray, energies_ev, voxel_size_m: float) -> np.ndarray:
    """OD of one voxel full of each species at each energy: I[i, j] = 2 k_i β_j(E_i) Δ.

    Args:
        spectra: δ + iβ (energy, species) per unit volume fraction.
        energies_ev: photon energies in eV.
        voxel_size_m: voxel edge in m.

    Returns:
        (energy, species) matrix, the reference matrix of the unmixing.
    """
    k = optics.wavenumber(np.asarray(energies_ev, dtype=np.float64))
    return 2.0 * k[:, None] * np.imag(np.asarray(spectra)) * voxel_size_m


def staged_reconstruct(
    frames: np.ndarray,
    positions_px: np.ndarray,
    probe: np.ndarray,
    energies_ev: np.ndarray,
    angles_deg: np.ndarray,
    volume_shape: tuple[int, int, int],
    spectra: np.ndarray,
    voxel_size_m: float,
    *,
    padding_px: int = 0,
    ptycho_engine: str = "raar",
    ptycho_iterations: int = 50,
    batch_size: int = 64,
    refine_probe: bool = False,
    tomo_algorithm: str = "art",
    tomo_iterations: int = 20,
    progress: bool = True,
) -> StagedResult:
    """Reconstruct chemical composition stage by stage.

    Args:
        frames: measured counts (energy, angle, n, fy, fx).
        positions_px: scan positions (energy, angle, n, 2) in object pixels (y, x).
        probe: probe modes per energy (energy, mode, py, px).
        energies_ev: photon energies in eV (exactly two for the unmixing).
        angles_deg: rotation angles in degrees.
        volume_shape: (z, y, x) of the reconstructed volume in voxels.
        spectra: δ + iβ of the two end members (energy, 2), for the reference matrix.
        voxel_size_m: voxel edge in m (= object pixel size).
        padding_px: vacuum margin of the ptychographic field around the projections.
        ptycho_engine: a key of :data:`~diffptycho.recon.ptycho.ENGINES`.
        ptycho_iterations: iterations per scan.
        batch_size: positions per minibatch of the ptychography engine.
        refine_probe: refine the probe per scan (the known probe is used as is otherwise).
        tomo_algorithm: ``art``, ``sart``, ``sirt``, ``cgls``, ``fbp`` or ``adam``.
        tomo_iterations: sweeps / iterations of the tomography.
        progress: show progress bars.

    Returns:
        The :class:`StagedResult`.
    """
    n_e, n_a = frames.shape[:2]
    if len(energies_ev) != 2 or spectra.shape != (2, 2):
        raise ValueError("energies_ev/spectra: the two-energy unmixing needs exactly 2 energies")
    if ptycho_engine not in ENGINES:
        raise ValueError(f"ptycho_engine={ptycho_engine!r}: choose from {sorted(ENGINES)}")
    nz, ny, nx = volume_shape
    field = (ny + 2 * padding_px, nx + 2 * padding_px)
    engine = ENGINES[ptycho_engine](
        batch_size=batch_size, refinement=Refinement(probe=refine_probe)
    )
    seconds: dict[str, float] = {}

    t0 = time.perf_counter()
    objects = np.empty((n_e, n_a, *field), np.complex64)
    final_loss = np.empty((n_e, n_a))
    for e in range(n_e):
        for a in range(n_a):
            start = Ptycho2D(
                jnp.ones(field, jnp.complex64),
                jnp.asarray(probe[e], jnp.complex64),
                jnp.asarray(positions_px[e, a], jnp.float32),
            )
            model, history = solve(
                start,
                engine,
                PtychoData(jnp.asarray(frames[e, a], jnp.float32)),
                ptycho_iterations,
                progress=progress,
                description=f"ptycho E{e} θ{a}",
            )
            objects[e, a] = np.asarray(model.object)
            final_loss[e, a] = history.loss[-1]
    seconds["ptychography"] = time.perf_counter() - t0

    crop = (slice(None), slice(None)) + (
        slice(padding_px, padding_px + ny),
        slice(padding_px, padding_px + nx),
    )
    od = -np.log(np.maximum(np.abs(objects[crop]) ** 2, 1e-12))

    t0 = time.perf_counter()
    angles = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    volumes = np.stack(
        [
            np.asarray(
                reconstruct(
                    od[e],
                    angles,
                    tomo_algorithm,
                    tomo_iterations,
                    shape=(nz, nx),
                    nonnegative=tomo_algorithm not in ("cgls", "fbp"),
                    progress=progress,
                ).volume
            )
            for e in range(n_e)
        ]
    )
    seconds["tomography"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    matrix = check_reference_matrix(reference_od_per_voxel(spectra, energies_ev, voxel_size_m))
    composition = np.asarray(unmix_two_energy(jnp.asarray(volumes), matrix))
    seconds["chemistry"] = time.perf_counter() - t0
    return StagedResult(objects, od, volumes, composition, final_loss, seconds)
