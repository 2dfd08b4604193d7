"""Starting models of the joint stage: from a staged run, or from scratch.

The staged pipeline leaves everything the full-chain model needs: the composition, each scan's
retrieved probe and positions, and the alignment. Per-scan sample shifts (which differ between
energies) are folded into the scan positions — a sample moved by s is the same exit wave as the
probe moved by −s — and the per-angle in-plane rotation and scale stay in the model's alignment.
From scratch, the composition is zero, each energy's probe is the data-derived guess of its
middle scan and the positions are the nominal ones, centred as the ptychography stage centres
them.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from diffptycho.models import SpectroPtychoTomo

__all__ = ["blank_joint_model", "joint_model_from_outputs", "joint_model_from_staged", "all_frames"]


def all_frames(series) -> np.ndarray:
    """Every scan's frames stacked (energy, angle, n, fy, fx); scans must have equal n."""
    n_e, n_a = series.shape
    counts = {int(n) for n in np.asarray(series.n_positions).reshape(-1)}
    if len(counts) != 1:
        raise ValueError(
            f"the joint model needs the same number of positions in every scan; found {counts}"
        )
    return np.stack([np.stack([series.frames(e, a) for a in range(n_a)]) for e in range(n_e)])


def joint_model_from_outputs(
    outputs: dict,
    series,
    spectra: np.ndarray,
    voxel_size_m: float,
    composition: np.ndarray | None = None,
) -> SpectroPtychoTomo:
    """The full-chain model started from the staged stages' outputs.

    Args:
        outputs: ``{stage: {name: array}}`` with ptychography, projections, alignment and
            (unless ``composition`` is given) chemistry.
        series: the tilt series (energies, angles).
        spectra: δ + iβ (energy, species) of the references (or of a
            :class:`~diffptycho.recon.joint.VolumeBasis`).
        voxel_size_m: voxel edge in m.
        composition: (species, z, y, x) starting species instead of the chemistry stage's
            volume fractions (e.g. :meth:`~diffptycho.recon.joint.VolumeBasis.to_composition`
            of the staged volumes), used as given.

    Returns:
        The model (composition clipped to [0, 1], probe per energy from the middle scan, scaled
        to the vacuum-normalised objects).

    Raises:
        ValueError: a stage is missing, or the volume does not sit centred in the field.
    """
    needed = ("ptychography", "projections", "alignment")
    for stage in needed if composition is not None else (*needed, "chemistry"):
        if stage not in outputs:
            raise ValueError(f"the joint start from the staged result needs the '{stage}' stage")
    positions = outputs["ptychography"]["positions_px"]
    if not np.all(np.isfinite(positions)):
        raise ValueError("the joint model needs the same number of positions in every scan")
    n_e, n_a = positions.shape[:2]
    if composition is None:
        comp = np.clip(outputs["chemistry"]["composition"], 0.0, 1.0)
    else:
        comp = np.asarray(composition, np.float32)
    field = outputs["ptychography"]["objects"].shape[-2:]
    params = outputs["alignment"]["params"]
    angle_params = np.array(outputs["alignment"]["angle_params"])
    angle_params[:, :2] = 0.0  # the shifts go into the positions, per scan
    # the object normalisation divided the vacuum level out of T; the probe takes it back
    mid = n_a // 2
    objects = outputs["ptychography"]["objects"]
    vacuum = outputs["projections"]["vacuum"]
    probes = np.stack(
        [
            outputs["ptychography"]["probes"][e, mid]
            * np.mean(np.abs(objects[e, mid][vacuum[e, mid]]))
            for e in range(n_e)
        ]
    )
    shifted = positions - params[..., None, :2]
    return _model(comp, spectra, series, angle_params, probes, shifted, voxel_size_m, field)


def joint_model_from_staged(result, series) -> tuple[SpectroPtychoTomo, np.ndarray]:
    """:func:`joint_model_from_outputs` of a :class:`~diffptycho.pipeline.PipelineResult`.

    Returns:
        ``(model, frames)`` with the measured frames (energy, angle, n, fy, fx).
    """
    model = joint_model_from_outputs(result.outputs, series, result.spectra, result.voxel_size_m)
    return model, all_frames(series)


def blank_joint_model(
    series,
    spectra: np.ndarray,
    voxel_size_m: float,
    volume_shape: tuple[int, int, int] | None = None,
) -> SpectroPtychoTomo:
    """The full-chain model from scratch: nothing but the files.

    Args:
        series: the tilt series.
        spectra: δ + iβ (energy, species).
        voxel_size_m: voxel edge in m.
        volume_shape: (z, y, x) voxels (default: the scanned field, (x, y, x)).

    Returns:
        Zero composition, each energy's probe guessed from its middle scan, centred nominal
        positions, zero alignment.
    """
    from diffptycho.physics import scan as scans
    from diffptycho.pipeline.stages import centred_positions
    from diffptycho.recon.ptycho.start import probe_guess, scaled_probe

    n_e, n_a = series.shape
    positions = centred_positions(series)
    frame = tuple(series.frame_shapes[0])
    field = scans.object_shape_for(np.concatenate([p for row in positions for p in row]), frame)
    nz, ny, nx = volume_shape or (field[1], field[0], field[1])
    probes = []
    for e in range(n_e):
        scan = series.scan(e, n_a // 2)
        probes.append(scaled_probe(probe_guess(scan.data, scan.mask), scan.data, scan.mask))
    comp = np.zeros((spectra.shape[1], nz, ny, nx), np.float32)
    stacked = np.stack([np.stack(row) for row in positions])
    return _model(
        comp, spectra, series, np.zeros((n_a, 4)), np.stack(probes), stacked, voxel_size_m, field
    )


def _model(comp, spectra, series, alignment, probes, positions, voxel_size_m, field):
    ny, nx = comp.shape[2:]
    # vacuum margin: enough for the scanned field and for every (shifted) probe window
    reach = np.abs(positions).max(axis=(0, 1, 2)) + np.asarray(probes.shape[-2:]) / 2 + 2
    need = max(
        math.ceil((field[0] - ny) / 2),
        math.ceil((field[1] - nx) / 2),
        math.ceil(reach[0] - ny / 2),
        math.ceil(reach[1] - nx / 2),
        0,
    )
    model = SpectroPtychoTomo(
        composition=jnp.asarray(comp, jnp.float32),
        spectra=jnp.asarray(spectra, jnp.complex64),  # the model's precision: float32
        energies_ev=jnp.asarray(series.energies_ev),
        angles_rad=jnp.asarray(np.deg2rad(series.angles_deg)),
        alignment=jnp.asarray(alignment, jnp.float32),
        probe=jnp.asarray(probes, jnp.complex64),
        positions=jnp.asarray(positions, jnp.float32),
        voxel_size_m=voxel_size_m,
        padding_px=int(need),
    )
    model.check_scan_geometry()
    return model
