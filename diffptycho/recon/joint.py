"""Joint reconstruction: chemical composition volumes straight from diffraction intensities.

One gradient-based optimisation of the full chain (composition → spectra → projection →
transmission → probe → far field) against the measured counts of every (energy, angle) scan.
Which leaves move is a choice of the stage: composition alone, or with probe, positions and
alignment.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from diffptycho.models import SpectroPtychoTomo
from diffptycho.recon.losses import LOSSES
from diffptycho.recon.solve import History, OptaxSolver, solve

TRAINABLE: dict[str, Callable[[SpectroPtychoTomo], Any]] = {
    "composition": lambda m: m.composition,
    "probe": lambda m: m.probe,
    "positions": lambda m: m.positions,
    "alignment": lambda m: m.alignment,
    "background": lambda m: m.background,
}
"""Selectors of the leaves a joint stage may refine, by name."""


def clip_composition(model: SpectroPtychoTomo) -> SpectroPtychoTomo:
    """Project volume fractions onto [0, 1] (a voxel cannot hold more than itself)."""
    return eqx.tree_at(lambda m: m.composition, model, jnp.clip(model.composition, 0.0, 1.0))


def joint_loss(loss_name: str = "poisson", mask=None) -> Callable:
    """Loss of a whole-dataset batch ``(frames, angle_indices)`` for the full chain.

    The batch holds the measured frames of a subset of angles (all energies) and their
    indices, so minibatches over angles bound the memory of a step.
    """
    loss = LOSSES[loss_name]

    def objective(model: SpectroPtychoTomo, batch) -> jax.Array:
        frames, angle_idx = batch
        sub = eqx.tree_at(
            lambda m: (m.angles_rad, m.alignment, m.positions),
            model,
            (
                model.angles_rad[angle_idx],
                model.alignment[angle_idx],
                model.positions[:, angle_idx],
            ),
        )
        return loss(sub.all_intensities(), frames, mask)

    return objective


def sharded_joint_loss(mesh: jax.sharding.Mesh, loss_name: str = "poisson", mask=None) -> Callable:
    """:func:`joint_loss` with the angles of a batch split over the devices of ``mesh``.

    Each device simulates and compares only its share of the scans (``shard_map`` over the
    mesh axis ``"angle"``); the model is replicated, and the partial losses (and, through
    autodiff of the ``psum``, the gradients) are summed across devices. The batch's angle
    count must be a multiple of the number of devices.

    Args:
        mesh: a 1-D mesh with axis name ``"angle"`` (see :func:`angle_mesh`).
        loss_name: ``"poisson"`` or ``"amplitude"``.
        mask: valid detector pixels (True) or None.
    """
    local = joint_loss(loss_name, mask)
    n_dev = mesh.shape["angle"]
    spec = jax.sharding.PartitionSpec

    def objective(model: SpectroPtychoTomo, batch) -> jax.Array:
        frames, angle_idx = batch
        if angle_idx.shape[0] % n_dev:
            raise ValueError(
                f"angles_per_batch={angle_idx.shape[0]} is not a multiple of the {n_dev} devices"
            )

        def part(model, frames, angle_idx):
            # local mean over this device's scans, weighted back to the global mean
            return jax.lax.psum(local(model, (frames, angle_idx)) / n_dev, "angle")

        return jax.shard_map(
            part,
            mesh=mesh,
            in_specs=(spec(), spec(None, "angle"), spec("angle")),
            out_specs=spec(),
            # the projector's custom linear_call transpose carries no varying-axis types
            check_vma=False,
        )(model, frames, angle_idx)

    return objective


def angle_mesh(devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
    """A 1-D device mesh named ``"angle"`` over ``devices`` (default: all local devices)."""
    devices = jax.devices() if devices is None else list(devices)
    return jax.sharding.Mesh(np.asarray(devices), ("angle",))


def joint_reconstruct(
    model: SpectroPtychoTomo,
    frames: np.ndarray,
    iterations: int,
    *,
    refine: Sequence[str] = ("composition",),
    learning_rate: float = 0.05,
    adam_eps: float | None = None,
    angles_per_batch: int | None = None,
    loss: str = "poisson",
    mask: np.ndarray | None = None,
    seed: int = 0,
    mesh: jax.sharding.Mesh | None = None,
    progress: bool = True,
) -> tuple[SpectroPtychoTomo, History]:
    """Fit the full chain to measured frames with Adam.

    Args:
        model: starting model (e.g. zero composition, known probe and positions).
        frames: measured counts (energy, angle, n, fy, fx).
        iterations: number of Adam steps.
        refine: names of the leaves to refine (keys of :data:`TRAINABLE`).
        learning_rate: Adam step in units of each leaf (volume fraction for composition).
        adam_eps: Adam's ε, the gradient scale below which a leaf barely moves. Limited-angle
            data leave many voxels with tiny gradients that plain Adam (ε = 1e-8) would move
            at full step, amplifying noise; the default, 1e-5 × the mean counts per frame,
            scales with the dose like the Poisson gradient does.
        angles_per_batch: angles per minibatch (all when None); drawn without replacement.
        loss: ``"poisson"`` or ``"amplitude"``.
        mask: valid detector pixels (True) or None.
        seed: seed of the minibatch order.
        mesh: split each batch's angles over this device mesh (see :func:`angle_mesh`);
            None runs on the default device.
        progress: show a progress bar.

    Returns:
        The refined model and the loss history.
    """
    unknown = sorted(set(refine) - set(TRAINABLE))
    if unknown:
        raise ValueError(f"refine: unknown leaves {unknown}; choose from {sorted(TRAINABLE)}")
    if loss not in LOSSES:
        raise ValueError(f"loss={loss!r}: choose from {sorted(LOSSES)}")
    n_angle = frames.shape[1]
    if frames.shape[:2] != model.positions.shape[:2]:
        raise ValueError(
            f"frames: leading axes {frames.shape[:2]} != (energy, angle) "
            f"{model.positions.shape[:2]} of the model"
        )
    model.check_scan_geometry()
    if adam_eps is None:
        adam_eps = 1e-5 * float(np.mean(np.sum(frames, axis=(-1, -2))))
    selectors = [TRAINABLE[name] for name in refine]
    mask_j = None if mask is None else jnp.asarray(mask)
    objective = joint_loss(loss, mask_j) if mesh is None else sharded_joint_loss(mesh, loss, mask_j)
    solver = OptaxSolver(
        loss=objective,
        optimizer=optax.adam(learning_rate, eps=adam_eps),
        where=lambda m: tuple(sel(m) for sel in selectors),
        constraint=clip_composition if "composition" in refine else None,
    )
    frames_j = jnp.asarray(frames)
    per_batch = n_angle if angles_per_batch is None else min(angles_per_batch, n_angle)
    rng = np.random.default_rng(seed)
    order: list[int] = []

    def batches(_: int):
        nonlocal order
        if per_batch == n_angle:
            idx = np.arange(n_angle)
        else:
            if len(order) < per_batch:
                order = list(rng.permutation(n_angle))
            idx, order = np.asarray(order[:per_batch]), order[per_batch:]
        idx = jnp.asarray(idx)
        return frames_j[:, idx], idx

    return solve(model, solver, batches, iterations, progress=progress, description="joint")
