"""Several scans solved at once: an engine's ``init`` / ``step`` vmapped over a scan axis.

:func:`~diffptycho.recon.solve.solve` runs one scan. :func:`solve_scans` runs S scans with the
same number of positions and the same shapes (object, probe, frames) together: the models,
solver states and :class:`~diffptycho.recon.ptycho.data.PtychoData` are stacked along a new
leading axis (``jax.tree.map(jnp.stack, ...)``), and every iteration is one jitted call of the
engine's ``step`` vmapped over that axis (or, on CPUs, looped over it with ``lax.map``; see
``lanes``). With a 1-D device ``mesh`` the scan axis is split over its devices (``shard_map``
of that step, each device iterating its own scans with no communication): S is padded to a
multiple of the device count by repeating the last scan, whose copies are dropped at the end.

Every scan's result equals the one :func:`~diffptycho.recon.solve.solve` gives for it alone,
to rounding (the vmapped arithmetic is the same; the batched FFTs and sums may round
differently). A divergence (non-finite loss or model) freezes that scan at its last finite
model and state, as ``solve`` rolls the step back, and the other scans go on; each scan's
:class:`ScanHistory` says whether and when it diverged.

The position split of the engines (``mesh=`` of an engine, :mod:`~diffptycho.recon.sharding`)
and this scan split are alternatives: an engine given here must have no mesh of its own.

Examples:
    >>> import jax.numpy as jnp
    >>> from diffptycho.models import Ptycho2D
    >>> from diffptycho.recon.ptycho import PtychoData, epie
    >>> models = [Ptycho2D(jnp.ones((24, 24), complex), s * jnp.ones((1, 8, 8), complex),
    ...                    jnp.zeros((4, 2))) for s in (1.0, 2.0)]
    >>> datas = [PtychoData(m()) for m in models]
    >>> fitted, histories = solve_scans(models, epie(batch_size=2), datas, 3)
    >>> len(fitted), [len(h.loss) for h in histories], histories[0].converged
    (2, [3, 3], True)
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from diffptycho._typing import Array, Bool
from diffptycho.recon.interrupt import Interrupted, stop_agreed, stop_requested
from diffptycho.recon.ptycho.data import PtychoData
from diffptycho.recon.sharding import named_mesh
from diffptycho.recon.solve import AbstractSolver, History
from diffptycho.recon.watch import LossWatch

AXIS = "scans"
"""Name of the mesh axis of :func:`scan_mesh`."""

_SPEC = jax.sharding.PartitionSpec


def scan_mesh(devices: Sequence[jax.Device] | int | None = None) -> jax.sharding.Mesh:
    """A 1-D mesh with axis :data:`AXIS` over ``devices`` (a count, a list or None: all).

    Raises:
        ValueError: more devices asked for than there are.
    """
    return named_mesh(devices, AXIS)


@dataclasses.dataclass
class ScanHistory(History):
    """:class:`~diffptycho.recon.solve.History` of one scan of :func:`solve_scans`.

    ``loss`` holds the accepted iterations only: up to the divergence, if any.

    Attributes:
        diverged: the iteration whose step gave a non-finite loss or model (rolled back: the
            scan's model is the last finite one and it took no further step), or None.
    """

    diverged: int | None = None

    @property
    def converged(self) -> bool:
        """No step diverged."""
        return self.diverged is None


def _leaf_name(path) -> str:
    return jax.tree_util.keystr(path) or "(root)"


def _check_alike(trees: Sequence[Any], what: str) -> None:
    """Raise unless every tree has the first one's structure and leaf shapes."""
    first_def = jax.tree.structure(trees[0])
    first = jax.tree_util.tree_flatten_with_path(trees[0])[0]
    for s, tree in enumerate(trees[1:], start=1):
        if jax.tree.structure(tree) != first_def:
            raise ValueError(
                f"{what}: scan {s} is built differently from scan 0 (other fields, options or "
                "a mask/background present in one only); solve_scans stacks alike scans"
            )
        for (path, a), b in zip(first, jax.tree.leaves(tree), strict=True):
            if not eqx.is_array(a):
                continue
            if a.shape != b.shape:
                raise ValueError(
                    f"{what}: {_leaf_name(path)} has shape {b.shape} in scan {s} but "
                    f"{a.shape} in scan 0; solve_scans stacks scans of equal shapes"
                )


def _check_positions(models: Sequence[Any]) -> None:
    counts = [int(m.positions.shape[0]) for m in models]
    if len(set(counts)) > 1:
        groups: dict[int, list[int]] = {}
        for s, n in enumerate(counts):
            groups.setdefault(n, []).append(s)
        listed = "; ".join(f"scans {ids} have {n}" for n, ids in groups.items())
        raise ValueError(
            f"models: the scans' numbers of positions differ ({listed}); solve_scans needs "
            "the same number in every scan: group the scans by their number of positions"
        )


def _stack(trees: Sequence[Any]) -> Any:
    arrays = [eqx.filter(t, eqx.is_array) for t in trees]
    static = eqx.filter(trees[0], eqx.is_array, inverse=True)
    return eqx.combine(jax.tree.map(lambda *xs: jnp.stack(xs), *arrays), static)


def _unstack(tree: Any, s: int) -> Any:
    arrays, static = eqx.partition(tree, eqx.is_array)
    return eqx.combine(jax.tree.map(lambda x: x[s], arrays), static)


def _finite(tree) -> Bool[Array, ""]:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(eqx.filter(tree, eqx.is_array))]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def _select(keep: Bool[Array, ""], new: Any, old: Any) -> Any:
    new_arrays, static = eqx.partition(new, eqx.is_array)
    old_arrays = eqx.filter(old, eqx.is_array)
    return eqx.combine(
        jax.tree.map(lambda a, b: jnp.where(keep, a, b), new_arrays, old_arrays), static
    )


def _over_scans(fn: Callable[..., Any], mesh: jax.sharding.Mesh | None, solver, *stacked) -> Any:
    """``fn(solver, *stacked)`` with the leading (scan) axis of ``stacked`` split over ``mesh``.

    Every array of ``stacked`` and of the result has the scan axis first; ``solver`` is
    passed whole to every device.
    """
    if mesh is None:
        return fn(solver, *stacked)
    axis = mesh.axis_names[0]
    solver_arrays, solver_static = eqx.partition(solver, eqx.is_array)
    arrays, static = eqx.partition(stacked, eqx.is_array)
    out_static = []

    def local(solver_arrays, arrays):
        out = fn(eqx.combine(solver_arrays, solver_static), *eqx.combine(arrays, static))
        dynamic, rest = eqx.partition(out, eqx.is_array)
        out_static.append(rest)
        return dynamic

    dynamic = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(_SPEC(), _SPEC(axis)),
        out_specs=_SPEC(axis),
        # the patch operators' custom linear_call transposes carry no varying-axis types
        check_vma=False,
    )(solver_arrays, arrays)
    return eqx.combine(dynamic, out_static[0])


def _over_lanes(fn: Callable[..., Any], lanes: str, *stacked) -> Any:
    """``fn`` on every scan of ``stacked`` (leading axis): batched, or one after another."""
    if lanes == "vmap":
        return eqx.filter_vmap(fn)(*stacked)
    arrays, static = eqx.partition(stacked, eqx.is_array)
    out_static = []

    def body(arrays):
        dynamic, rest = eqx.partition(fn(*eqx.combine(arrays, static)), eqx.is_array)
        out_static.append(rest)
        return dynamic

    dynamic = jax.lax.map(body, arrays)
    return eqx.combine(dynamic, out_static[0])


def _init_lanes(solver: AbstractSolver, lanes: str, models):
    return _over_lanes(solver.init, lanes, models)


def _step_lanes(solver: AbstractSolver, lanes: str, models, states, datas, active):
    def one(model, state, data, active):
        new_model, new_state, loss = solver.step(model, state, data)
        ok = jnp.isfinite(loss) & _finite(new_model)
        keep = active & ok
        return _select(keep, new_model, model), _select(keep, new_state, state), loss, ok, keep

    return _over_lanes(one, lanes, models, states, datas, active)


@eqx.filter_jit
def _init_scans(solver: AbstractSolver, mesh, lanes: str, models):
    return _over_scans(lambda s, m: _init_lanes(s, lanes, m), mesh, solver, models)


@eqx.filter_jit
def _step_scans(solver: AbstractSolver, mesh, lanes: str, models, states, datas, active):
    # module level, with the solver and mesh as arguments: repeated groups of scans with the
    # same engine (a staged pipeline's energies) reuse the compiled step
    def step(solver, *stacked):
        return _step_lanes(solver, lanes, *stacked)

    return _over_scans(step, mesh, solver, models, states, datas, active)


def _check_engine(engine: AbstractSolver) -> None:
    if not isinstance(engine, AbstractSolver):
        raise TypeError(f"engine: expected an AbstractSolver, got {type(engine).__name__}")
    if getattr(engine, "mesh", None) is not None:
        raise ValueError(
            "engine: has a position mesh (mesh=...); solve_scans splits the scans over "
            "devices instead: build the engine without mesh and pass mesh=scan_mesh(...)"
        )


def solve_scans(
    models: Sequence[eqx.Module],
    engine: AbstractSolver,
    datas: Sequence[PtychoData],
    iterations: int,
    *,
    mesh: jax.sharding.Mesh | None = None,
    lanes: str | None = None,
    progress: bool = False,
    description: str = "scans",
    quiet: bool = False,
) -> tuple[list[eqx.Module], list[ScanHistory]]:
    """Solve several alike scans at once, each as :func:`~diffptycho.recon.solve.solve` would.

    Args:
        models: one starting model per scan (e.g. :class:`~diffptycho.models.Ptycho2D`),
            all with the same number of positions and the same object, probe and other
            shapes.
        engine: a ptychography engine whose ``step`` is a pure function: the PIE family,
            LSQML, RAAR / DM, minibatch Adam, L-BFGS (:data:`~diffptycho.recon.ptycho.
            ENGINES`), without a ``mesh`` of its own. The same engine (options, seed) runs
            every scan. L-BFGS's line search is a loop whose vmapped form runs until the
            slowest scan's search ends (the others' results are kept as they were), so a
            step costs the most evaluations any scan needs.
        datas: the scans' measured frames, in memory (not streamed), all ``(n, fy, fx)``;
            masks either all None or all of one shape.
        iterations: steps per scan.
        mesh: a 1-D device mesh (:func:`scan_mesh`) to split the scans over, or None for
            the default device. The scans are padded to a multiple of its size.
        lanes: how a device runs its scans within each (compiled) step: ``"vmap"``, all
            at once as one batched step (for accelerators), or ``"loop"``, one after
            another (``lax.map``). None: ``"loop"`` on CPUs, where the batched step measured
            slower than one scan at a time (8 scans of 200 positions, 64² frames, ePIE:
            1.6×), ``"vmap"`` elsewhere. Same results either way, to rounding.
        progress: show a progress bar over the iterations.
        description: label of the progress bar and of the loss watch's warnings (scan s
            is ``f"{description}[{s}]"``).
        quiet: record the loss watch's warnings in each history without logging them.

    Returns:
        Per scan: the final model (the last finite one for a scan that diverged) and its
        :class:`ScanHistory` (loss of the model entering each accepted step, wall-clock
        seconds shared by all scans, best iteration, warnings, ``diverged``).

    Raises:
        Interrupted: a stop was requested (SIGINT/SIGTERM inside
            :func:`~diffptycho.recon.interrupt.stop_on_signals`, agreed by every process);
            the current iteration was finished. No snapshot: the scans start again.
        ValueError: different numbers of positions (the scans of each count are named) or
            shapes, streamed frames, an engine with a position mesh, or a mesh that is not
            1-D.
    """
    if iterations < 0:
        raise ValueError(f"iterations={iterations}: expected a non-negative count")
    models, datas = list(models), list(datas)
    if not models or len(models) != len(datas):
        raise ValueError(
            f"models, datas: expected one data per model and at least one scan, got "
            f"{len(models)} models and {len(datas)} datas"
        )
    _check_engine(engine)
    if lanes is None:
        platform = (jax.devices()[0] if mesh is None else mesh.devices.flat[0]).platform
        lanes = "loop" if platform == "cpu" else "vmap"
    if lanes not in ("vmap", "loop"):
        raise ValueError(f"lanes={lanes!r}: expected 'vmap', 'loop' or None")
    if mesh is not None and len(mesh.axis_names) != 1:
        raise ValueError(f"mesh: expected a 1-D mesh (scan_mesh), got axes {mesh.axis_names}")
    streamed = [s for s, d in enumerate(datas) if d.streamed]
    if streamed:
        raise ValueError(
            f"datas: scans {streamed} have streamed frames; solve_scans stacks the frames in "
            "memory: read them whole or solve those scans one by one"
        )
    _check_positions(models)
    _check_alike(models, "models")
    datas = [engine.prepare(m, d) for m, d in zip(models, datas, strict=True)]
    _check_alike(datas, "datas")
    for s, (m, d) in enumerate(zip(models, datas, strict=True)):
        if d.frames.shape[0] != m.positions.shape[0]:
            raise ValueError(
                f"datas: scan {s} has {d.frames.shape[0]} frames for "
                f"{m.positions.shape[0]} positions"
            )

    count = len(models)
    devices = 1 if mesh is None else int(mesh.devices.size)
    padded = -(-count // devices) * devices
    fill = padded - count
    stacked_models = _stack(models + [models[-1]] * fill)
    stacked_data = _stack(datas + [datas[-1]] * fill)
    active = jnp.ones(padded, bool)
    if mesh is not None:
        sharding = jax.sharding.NamedSharding(mesh, _SPEC(mesh.axis_names[0]))
        stacked_models, stacked_data, active = eqx.filter_shard(
            (stacked_models, stacked_data, active), sharding
        )

    states = _init_scans(engine, mesh, lanes, stacked_models)
    histories = [ScanHistory() for _ in range(count)]
    watches = [LossWatch(label=f"{description}[{s}]", quiet=quiet) for s in range(count)]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=iterations, desc=description, leave=False)
    start = time.perf_counter()
    first_call = None
    try:
        for it in range(iterations):
            t0 = time.perf_counter()
            stacked_models, states, loss, ok, active = _step_scans(
                engine, mesh, lanes, stacked_models, states, stacked_data, active
            )
            loss, ok, kept = (np.asarray(x)[:count] for x in (loss, ok, active))
            call = time.perf_counter() - t0
            if it == 0:
                first_call = call
                for h in histories:
                    h.compile_seconds = call
            elif it == 1 and first_call is not None:
                for h in histories:
                    h.compile_seconds = max(first_call - call, 0.0)
            now = time.perf_counter() - start
            for s, h in enumerate(histories):
                if kept[s]:
                    watches[s].update(it, float(loss[s]))
                    h.loss.append(float(loss[s]))
                    h.seconds.append(now)
                elif h.diverged is None and not ok[s]:
                    h.diverged = it
            if bar is not None:
                finite = loss[kept]
                bar.set_postfix(
                    loss=f"{float(np.mean(finite)) if finite.size else math.nan:.4g}",
                    diverged=int(count - kept.sum()),
                )
                bar.update()
            if not kept.any():  # every scan diverged: nothing moves any more
                break
            if stop_agreed(stop_requested()) and it + 1 < iterations:
                raise Interrupted(
                    f"{description}: stopped after iteration {it + 1} of {iterations}",
                    iteration=it + 1,
                )
    finally:
        if bar is not None:
            bar.close()
    for h, w in zip(histories, watches, strict=True):
        h.best_iteration, h.best_loss, h.warnings = w.best_iteration, w.best_loss, list(w.warnings)
    return [_unstack(stacked_models, s) for s in range(count)], histories


__all__ = ["AXIS", "ScanHistory", "scan_mesh", "solve_scans"]
