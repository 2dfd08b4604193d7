"""The full-chain model of a tilt series started from a staged run, for joint refinement.

The staged pipeline leaves everything the joint model needs: the composition, each scan's
retrieved probe and positions, and the alignment. Per-scan sample shifts (which differ between
energies) are folded into the scan positions — a sample moved by s is the same exit wave as the
probe moved by −s — and the per-angle in-plane rotation and scale stay in the model's alignment.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from diffptycho.models import SpectroPtychoTomo

__all__ = ["joint_model_from_staged"]


def joint_model_from_staged(result, series) -> tuple[SpectroPtychoTomo, np.ndarray]:
    """Build :class:`~diffptycho.models.SpectroPtychoTomo` and its frames from a staged run.

    Args:
        result: a :class:`~diffptycho.pipeline.runner.PipelineResult` with every stage
            (chemistry included), whose scans all have the same number of positions.
        series: its tilt series (frames are read from it).

    Returns:
        ``(model, frames)``: the model (composition clipped to [0, 1], probe per energy from the
        middle scan, scaled to the normalised objects) and the measured frames
        (energy, angle, n, fy, fx).

    Raises:
        ValueError: a stage is missing, or the scans differ in their number of positions.
    """
    out = result.outputs
    for stage in ("ptychography", "alignment", "tomography", "chemistry"):
        if stage not in out:
            raise ValueError(f"joint_model_from_staged: the run has no '{stage}' stage")
    positions = out["ptychography"]["positions_px"]
    if not np.all(np.isfinite(positions)):
        raise ValueError("joint_model_from_staged: scans differ in their number of positions")
    n_e, n_a = positions.shape[:2]
    comp = np.clip(out["chemistry"]["composition"], 0.0, 1.0)
    field = out["ptychography"]["objects"].shape[-2:]
    pad_y, pad_x = ((f - n) // 2 for f, n in zip(field, comp.shape[2:], strict=True))
    if pad_y != pad_x or any((f - n) % 2 for f, n in zip(field, comp.shape[2:], strict=True)):
        raise ValueError(
            f"joint_model_from_staged: the volume {comp.shape[2:]} must sit in the ptychography "
            f"field {field} with the same even margin on every side"
        )
    params = out["alignment"]["params"]
    angle_params = np.array(out["alignment"]["angle_params"])
    angle_params[:, :2] = 0.0  # the shifts go into the positions, per scan
    # the object normalisation divided the vacuum level out of T; the probe takes it back
    mid = n_a // 2
    objects = out["ptychography"]["objects"]
    vacuum = out["projections"]["vacuum"]
    probes = np.stack(
        [
            out["ptychography"]["probes"][e, mid] * np.mean(np.abs(objects[e, mid][vacuum[e, mid]]))
            for e in range(n_e)
        ]
    )
    frames = np.stack([np.stack([series.frames(e, a) for a in range(n_a)]) for e in range(n_e)])
    model = SpectroPtychoTomo(
        composition=jnp.asarray(comp, jnp.float32),
        spectra=jnp.asarray(result.spectra),
        energies_ev=jnp.asarray(series.energies_ev),
        angles_rad=jnp.asarray(np.deg2rad(series.angles_deg)),
        alignment=jnp.asarray(angle_params, jnp.float32),
        probe=jnp.asarray(probes),
        positions=jnp.asarray(positions - params[..., None, :2], jnp.float32),
        voxel_size_m=result.voxel_size_m,
        # the shifted positions may reach past the ptychography field: widen the vacuum margin
        padding_px=int(pad_y) + int(np.ceil(np.abs(params[..., :2]).max())),
    )
    model.check_scan_geometry()
    return model, frames
