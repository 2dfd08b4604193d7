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


def joint_reconstruct(
    model: SpectroPtychoTomo,
    frames: np.ndarray,
    iterations: int,
    *,
    refine: Sequence[str] = ("composition",),
    learning_rate: float = 0.02,
    angles_per_batch: int | None = None,
    loss: str = "poisson",
    mask: np.ndarray | None = None,
    seed: int = 0,
    progress: bool = True,
) -> tuple[SpectroPtychoTomo, History]:
    """Fit the full chain to measured frames with Adam.

    Args:
        model: starting model (e.g. zero composition, known probe and positions).
        frames: measured counts (energy, angle, n, fy, fx).
        iterations: number of Adam steps.
        refine: names of the leaves to refine (keys of :data:`TRAINABLE`).
        learning_rate: Adam step in units of each leaf (volume fraction for composition).
        angles_per_batch: angles per minibatch (all when None); drawn without replacement.
        loss: ``"poisson"`` or ``"amplitude"``.
        mask: valid detector pixels (True) or None.
        seed: seed of the minibatch order.
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
    selectors = [TRAINABLE[name] for name in refine]
    solver = OptaxSolver(
        loss=joint_loss(loss, None if mask is None else jnp.asarray(mask)),
        optimizer=optax.adam(learning_rate),
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
