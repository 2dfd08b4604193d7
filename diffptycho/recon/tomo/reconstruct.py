"""One entry point for every tomography algorithm, slab by slab along the rotation axis.

In parallel-beam geometry every detector row y sees only the volume slice y, so a volume can
be reconstructed in independent slabs of ``slab_size`` rows: only one slab of projections and
one slab of volume are in memory at a time. Projections may be any array-like that supports
``projections[:, a:b, :]`` (NumPy, JAX, an open ``h5py.Dataset``), and the result can be
written into any array-like ``out`` (e.g. an ``h5py.Dataset``), so volumes larger than memory
stream through. The last slab is zero-padded to ``slab_size`` rows so every slab has the same
shape. Per-projection alignment (shifts along y mix rows) is undone on the whole stack first.

Region of interest: ``roi = (z_slice, y_slice, x_slice)`` in voxels. Rows outside the y range
are neither read nor reconstructed; the z and x ranges crop the output (every voxel on a ray
contributes to the data, so iterative methods still solve for the whole slice — pass
``shape`` larger than the detector for interior tomography, or ``support`` to restrict the
unknowns to a (z, x) mask).

Devices: ``mesh`` (:func:`~diffptycho.recon.tomo.sharding.tomo_mesh`) splits every slab's
rows (axis ``"slab"``, all algorithms) or its angles (``"angle"``: SIRT, CGLS, FBP, adam)
over devices (:mod:`~diffptycho.recon.tomo.sharding`); the result equals the single-device
one up to the order of floating-point sums.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from diffptycho._typing import Angles, Array, Float
from diffptycho.models.tomo import TomoProjections
from diffptycho.recon.distributed import to_host
from diffptycho.recon.interrupt import Interrupted, stop_agreed, stop_requested
from diffptycho.recon.solve import AbstractSolver, Snapshot, solve
from diffptycho.recon.tomo import operators as ops
from diffptycho.recon.tomo.art import ART, SART
from diffptycho.recon.tomo.cgls import CGLS
from diffptycho.recon.tomo.fbp import fbp
from diffptycho.recon.tomo.gradient import gradient_solver
from diffptycho.recon.tomo.sharding import mesh_axis
from diffptycho.recon.tomo.sirt import SIRT

__all__ = ["ALGORITHMS", "TomoResult", "make_solver", "reconstruct"]

ALGORITHMS = ("art", "sart", "sirt", "cgls", "fbp", "adam")
"""Names accepted by :func:`reconstruct` (``fbp`` ignores ``iterations``)."""


@dataclasses.dataclass
class TomoResult:
    """A reconstruction and how it was obtained.

    Attributes:
        volume: (z, y, x) volume in the projections' units per m (per voxel when
            ``voxel_size_m`` = 1), cropped to the region of interest.
        loss: (slab, iteration) loss history (relative squared residual; empty for FBP).
        seconds: wall-clock time of the whole reconstruction in s.
        compile_seconds: time of the first step of every slab (compilation included) in s.
        config: the options used (JSON-serialisable).
    """

    volume: Any
    loss: np.ndarray
    seconds: float
    compile_seconds: float
    config: dict


def make_solver(
    algorithm: str,
    *,
    relaxation: float = 1.0,
    order: str = "acquisition",
    nonnegative: bool = False,
    seed: int = 0,
    n_det: int | None = None,
    support: Array | None = None,
    apply_alignment: bool = True,
    mesh: jax.sharding.Mesh | None = None,
) -> AbstractSolver:
    """The classic solver called ``algorithm`` (``art``, ``sart``, ``sirt`` or ``cgls``).

    ``mesh`` splits its rows or angles over devices (:mod:`~diffptycho.recon.tomo.sharding`).
    """
    if algorithm in ("art", "sart"):
        cls = ART if algorithm == "art" else SART
        return cls(relaxation, order, nonnegative, seed, n_det, support, apply_alignment, mesh)
    if algorithm == "sirt":
        return SIRT(relaxation, nonnegative, n_det, support, apply_alignment, mesh)
    if algorithm == "cgls":
        if nonnegative:
            raise ValueError("cgls cannot enforce non-negativity; use sirt, art or adam")
        return CGLS(n_det, support, apply_alignment, mesh)
    raise ValueError(f"algorithm={algorithm!r}: expected one of {', '.join(ALGORITHMS)}")


def _rows(roi, n_rows: int) -> range:
    ys = slice(None) if roi is None else roi[1]
    rows = range(n_rows)[ys]
    if rows.step != 1 or len(rows) == 0:
        raise ValueError(f"roi y range {ys}: expected a non-empty slice with step 1")
    return rows


def reconstruct(
    projections: Any,
    angles_rad: Angles,
    algorithm: str = "art",
    iterations: int = 20,
    *,
    voxel_size_m: float = 1.0,
    alignment: Float[Array, "angle 4"] | None = None,
    shape: tuple[int, int] | None = None,
    roi: tuple[slice, slice, slice] | None = None,
    support: Array | None = None,
    slab_size: int | None = None,
    relaxation: float = 1.0,
    order: str = "acquisition",
    nonnegative: bool = False,
    seed: int = 0,
    filter: str = "ramp",
    cutoff: float = 1.0,
    learning_rate: float = 0.2,
    tv_weight: float = 0.0,
    dtype: Any = np.float32,
    out: Any = None,
    progress: bool = True,
    checkpoint: Any = None,
    resume: bool = False,
    keep_best: bool = False,
    mesh: jax.sharding.Mesh | None = None,
) -> TomoResult:
    """Reconstruct a volume from parallel-beam projections with any of :data:`ALGORITHMS`.

    Args:
        projections: (angle, y, t) measured line integrals (∫u dz, e.g. optical density, or
            complex ∫(δ + iβ) dz in m with ``voxel_size_m``); array-like, read slab by slab.
        angles_rad: rotation angles in rad (angle,), any order, spacing and range.
        algorithm: ``art``, ``sart``, ``sirt``, ``cgls``, ``fbp`` or ``adam``.
        iterations: sweeps (ART, SART), iterations (SIRT, CGLS) or optimizer steps (adam).
        voxel_size_m: voxel edge in m; the volume is returned per m of path (1: per voxel).
        alignment: (angle, 4) similarity parameters of the measured projections (as in
            :class:`~diffptycho.models.tomo.TomoProjections`), undone before reconstruction.
        shape: (n_z, n_x) of the reconstructed slices (default: detector width for both).
        roi: (z, y, x) slices of the volume to return (see module docstring).
        support: (z, x) mask of voxels allowed to be non-zero (iterative algorithms).
        slab_size: rows per slab (default: all rows at once).
        relaxation: λ of ART, SART and SIRT.
        order: ``acquisition`` or ``random`` projection order of ART and SART.
        nonnegative: clamp the volume at 0 (not for CGLS and FBP).
        seed: seed of the random order.
        filter: FBP filter (see :data:`~diffptycho.recon.tomo.fbp.FILTERS`).
        cutoff: FBP cutoff, fraction of Nyquist.
        learning_rate: adam step relative to the typical voxel value.
        tv_weight: adam total-variation weight τ.
        dtype: real working precision (complex data use the matching complex type).
        out: array-like (z, y, x) of the output shape to write into (e.g. an h5py dataset);
            default a new NumPy array.
        progress: show a progress bar over slabs × iterations with the current loss.
        checkpoint: a :class:`~diffptycho.io.checkpoint.Checkpoint` (or any object with
            ``every``, ``save`` and ``load``): the volume so far, the slab and the current
            slab's solver state are saved every ``checkpoint.every`` iterations, at the end
            of every slab, and when a stop is requested (SIGINT/SIGTERM, see
            :mod:`diffptycho.recon.interrupt`), which then raises
            :class:`~diffptycho.recon.interrupt.Interrupted`.
        resume: continue from ``checkpoint`` (same result as the uninterrupted run).
        keep_best: keep, per slab, the volume of the lowest loss instead of the last one.
        mesh: split each slab's rows (axis ``"slab"``) or angles (``"angle"``; not ART and
            SART) over the mesh's devices (:func:`~diffptycho.recon.tomo.sharding.tomo_mesh`);
            rows or angles the device count does not divide are padded and cropped.

    Returns:
        A :class:`TomoResult`.

    Examples:
        >>> import jax.numpy as jnp
        >>> from diffptycho.physics.tomography import project
        >>> truth = jnp.zeros((16, 4, 16)).at[5:11, :, 4:9].set(1.0)
        >>> angles = jnp.linspace(0, jnp.pi, 24, endpoint=False)
        >>> res = reconstruct(project(truth, angles), angles, "sirt", 200, slab_size=3,
        ...                   progress=False)
        >>> err = float(jnp.linalg.norm(res.volume - truth) / jnp.linalg.norm(truth))
        >>> res.volume.shape, err < 0.1
        ((16, 4, 16), True)
    """
    t_start = time.perf_counter()
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm={algorithm!r}: expected one of {', '.join(ALGORITHMS)}")
    if iterations < 0:
        raise ValueError(f"iterations={iterations}: expected ≥ 0")
    split, devices = (None, 1) if mesh is None else mesh_axis(mesh)
    n_angles, n_rows, n_det = np.shape(projections)
    angles = np.asarray(angles_rad, dtype=float)
    if angles.shape != (n_angles,):
        raise ValueError(f"{angles.shape[0]} angles for {n_angles} projections (angle, y, t)")
    is_complex = np.iscomplexobj(projections[:1, :1, :1])
    work = np.result_type(dtype, np.complex64) if is_complex else np.dtype(dtype)
    real = np.finfo(work).dtype
    n_z, n_x = (n_det, n_det) if shape is None else shape
    rows = _rows(roi, n_rows)
    slab = len(rows) if slab_size is None else min(int(slab_size), len(rows))
    if slab < 1:
        raise ValueError(f"slab_size={slab_size}: expected ≥ 1")
    zs, xs = (slice(None), slice(None)) if roi is None else (roi[0], roi[2])
    out_shape = (len(range(n_z)[zs]), len(rows), len(range(n_x)[xs]))
    if out is None:
        out = np.zeros(out_shape, work)
    elif tuple(np.shape(out)) != out_shape:
        raise ValueError(f"out has shape {np.shape(out)}; expected {out_shape}")

    if alignment is not None:  # y shifts mix rows: dealign the whole stack, in memory
        stack = jnp.asarray(np.asarray(projections), work)
        projections = np.asarray(ops.dealign(stack, jnp.asarray(alignment, real)))

    angles_j = jnp.asarray(angles, real)
    support_j = None if support is None else jnp.asarray(support, real)
    solver, state = None, None
    if algorithm not in ("fbp", "adam"):
        solver = make_solver(
            algorithm,
            relaxation=relaxation,
            order=order,
            nonnegative=nonnegative,
            seed=seed,
            n_det=n_det,
            support=support_j,
            apply_alignment=False,
            mesh=mesh,
        )
    starts = list(range(rows.start, rows.stop, slab))
    n_steps = 0 if algorithm == "fbp" else iterations
    losses, compile_s, first_slab, seconds_before = [], 0.0, 0, 0.0
    saved: dict = {}
    if resume:
        if checkpoint is None:
            raise ValueError("resume=True needs a checkpoint to resume from")
        trees, arrays, saved, _ = checkpoint.load({"volume": np.zeros(out_shape, work)})
        out[...] = trees["volume"]
        first_slab = int(saved["slab"])
        losses = [list(row) for row in arrays.get("slab_losses", np.zeros((first_slab, 0)))]
        compile_s = float(saved.get("slab_compile_seconds", 0.0))
        seconds_before = float(saved.get("elapsed_seconds", 0.0))

    def save(i: int, snap: Any = None) -> None:
        trees = {"volume": np.asarray(out)}
        meta = {
            "slab": i,
            "slab_compile_seconds": compile_s,
            "elapsed_seconds": seconds_before + time.perf_counter() - t_start,
        }
        done_losses = np.asarray(losses, dtype=float) if losses else np.zeros((0, n_steps))
        arrays = {"slab_losses": done_losses}
        if snap is not None:
            trees.update(snap.trees())
            meta.update(snap.meta())
            arrays.update(snap.arrays())
        done = i * n_steps + (snap.iteration if snap is not None else 0)
        checkpoint.save(trees, meta, iteration=done, arrays=arrays)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=len(starts) * max(n_steps, 1),
            initial=first_slab * max(n_steps, 1),
            desc=f"tomo {algorithm}",
            leave=False,
        )
    try:
        for i, y0 in enumerate(starts):
            if i < first_slab:
                continue
            y1 = min(y0 + slab, rows.stop)
            data = np.asarray(projections[:, y0:y1, :]).astype(work) / voxel_size_m
            if y1 - y0 < slab:  # same shape for every slab: compiled once per slab shape
                data = np.pad(data, ((0, 0), (0, slab - (y1 - y0)), (0, 0)))
            data = jnp.asarray(data)
            if algorithm == "fbp":
                volume = fbp(
                    data, angles_j, filter=filter, cutoff=cutoff, n_z=n_z, n_x=n_x, mesh=mesh
                )
                history = None
                if bar is not None:
                    bar.update()
            else:
                model = TomoProjections(
                    jnp.zeros((n_z, slab, n_x), work), angles_j, jnp.zeros((n_angles, 4), real)
                )

                def tick(it, _model, loss, i=i):
                    if bar is not None:
                        bar.set_postfix(slab=f"{i + 1}/{len(starts)}", loss=f"{loss:.4g}")
                        bar.update()

                if algorithm == "adam":
                    step_solver, model = gradient_solver(
                        model,
                        data,
                        iterations,
                        learning_rate=learning_rate,
                        tv_weight=tv_weight,
                        nonnegative=nonnegative,
                        support=support_j,
                        mesh=mesh,
                    )
                    state = None
                else:
                    step_solver = solver
                    if state is None or algorithm == "cgls":
                        state = solver.init(model)
                inner = None
                if resume and i == first_slab and "iteration" in saved:
                    like = {
                        "model": model,
                        "state": eqx.filter_eval_shape(step_solver.init, model),
                        "best_model": model,
                    }
                    trees, arrays, meta, _ = checkpoint.load(like)
                    inner = Snapshot.restore(trees, arrays, meta)
                model, history = solve(
                    model,
                    step_solver,
                    data,
                    iterations,
                    state=state,
                    progress=False,
                    callback=tick,
                    description=f"tomo {algorithm} slab {i + 1}/{len(starts)}",
                    resume=inner,
                    checkpoint=None if checkpoint is None else (lambda snap, i=i: save(i, snap)),
                    checkpoint_every=0 if checkpoint is None else checkpoint.every,
                    keep_best=keep_best,
                )
                volume = model.volume
                losses.append(history.loss)
                compile_s += history.compile_seconds
            out[:, y0 - rows.start : y1 - rows.start, :] = to_host(volume)[zs, : y1 - y0, xs]
            if checkpoint is not None and i + 1 < len(starts):
                save(i + 1)  # a finished slab is never recomputed
                if stop_agreed(stop_requested()):
                    raise Interrupted(
                        f"tomo {algorithm}: stopped after slab {i + 1} of {len(starts)}",
                        iteration=(i + 1) * n_steps,
                    )
    finally:
        if bar is not None:
            bar.close()
    config = dict(
        algorithm=algorithm,
        iterations=n_steps,
        voxel_size_m=voxel_size_m,
        shape=[n_z, n_x],
        rows=[rows.start, rows.stop],
        slab_size=slab,
        relaxation=relaxation,
        order=order,
        nonnegative=nonnegative,
        seed=seed,
        filter=filter,
        cutoff=cutoff,
        learning_rate=learning_rate,
        tv_weight=tv_weight,
        dtype=str(np.dtype(work)),
        aligned=alignment is not None,
        support=support is not None,
        devices=devices,
        split=split,
    )
    return TomoResult(
        volume=out,
        loss=np.asarray(losses, dtype=float).reshape(len(losses), -1)
        if losses
        else np.zeros((len(starts), 0)),
        seconds=seconds_before + time.perf_counter() - t_start,
        compile_seconds=compile_s,
        config=config,
    )
