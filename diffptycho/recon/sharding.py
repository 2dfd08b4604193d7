"""Scan positions split over devices: a 1-D mesh and the collectives the engines sum with.

A ptychography iteration walks the positions in minibatches; with a mesh each minibatch is
split over the devices along its position axis (``shard_map``). Every device computes the
exit waves, Fourier projections and propagations of its share only; the object and probe are
replicated, and what the update needs from the whole minibatch (numerators, denominators,
loss, gradients) is summed across devices with ``psum``. The devices then apply the same
update, so the result equals the single-device one up to the order of floating-point sums.

The engines take ``mesh=position_mesh()`` (or ``position_mesh(jax.devices()[:k])``); without
a mesh they run their single-device code, unchanged. Frames are passed replicated: the
mesh divides the arithmetic, not the memory of the measured data.

Examples:
    >>> import jax
    >>> position_mesh(jax.devices()[:1]).axis_names
    ('positions',)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from diffptycho._typing import Array, Bool, Int

AXIS = "positions"
"""Name of the mesh axis the positions of a minibatch are split over."""

_SPEC = jax.sharding.PartitionSpec


def position_mesh(devices: Sequence[jax.Device] | int | None = None) -> jax.sharding.Mesh:
    """A 1-D mesh with axis :data:`AXIS` over ``devices``.

    ``jax.devices()`` lists the devices of every process once
    :func:`~diffptycho.recon.distributed.initialize_distributed` has joined several, so
    None spans them all, and a count takes the same number of devices from each process
    (every process must hold a share of the mesh to run its part).

    Args:
        devices: the devices, a count (the first ones; with several processes a multiple
            of the process count, the first ``devices / processes`` of each), or None for
            all of them.

    Raises:
        ValueError: more devices asked for than there are, or a count that the processes
            cannot share equally.
    """
    return jax.sharding.Mesh(np.asarray(mesh_devices(devices)), (AXIS,))


def mesh_devices(devices: Sequence[jax.Device] | int | None = None) -> list[jax.Device]:
    """The devices a mesh over ``devices`` spans (see :func:`position_mesh`).

    Raises:
        ValueError: more devices asked for than there are, or a count that the processes
            cannot share equally.
    """
    available = jax.devices()
    if devices is None:
        return list(available)
    if not isinstance(devices, int):
        return list(devices)
    processes = jax.process_count()
    if processes == 1:
        if not 1 <= devices <= len(available):
            raise ValueError(
                f"devices={devices}: expected 1 to {len(available)} (the local "
                f"{available[0].platform} devices; on CPU set XLA_FLAGS="
                "--xla_force_host_platform_device_count=N before jax is imported for more)"
            )
        return list(available[:devices])
    per_process = [[d for d in available if d.process_index == p] for p in range(processes)]
    fewest = min(len(local) for local in per_process)
    if devices % processes or not 1 <= devices // processes <= fewest:
        raise ValueError(
            f"devices={devices}: with {processes} processes expected a multiple of "
            f"{processes} up to {processes * fewest} (the same number of devices from each "
            f"process; they hold {[len(local) for local in per_process]})"
        )
    return [d for local in per_process for d in local[: devices // processes]]


def device_count(mesh: jax.sharding.Mesh | None) -> int:
    """Devices along :data:`AXIS` (1 without a mesh).

    Raises:
        ValueError: the mesh has no axis named :data:`AXIS`.
    """
    if mesh is None:
        return 1
    if AXIS not in mesh.axis_names:
        raise ValueError(
            f"mesh: axes {mesh.axis_names} have no {AXIS!r} axis to split positions over; "
            "build it with diffptycho.recon.sharding.position_mesh"
        )
    return int(mesh.shape[AXIS])


def psum(tree: Any, axis: str | None) -> Any:
    """``lax.psum`` over ``axis``; the identity when ``axis`` is None (single device)."""
    return tree if axis is None else jax.lax.psum(tree, axis)


def sharded_mean(x: Array, axis: str | None) -> Array:
    """Mean of all entries of ``x`` across the devices (``jnp.mean`` when ``axis`` is None)."""
    if axis is None:
        return jnp.mean(x)
    total, count = jax.lax.psum((jnp.sum(x), jnp.asarray(x.size, x.dtype)), axis)
    return total / count


def set_rows(rows: Array, idx: Int[Array, " b"], new: Array, axis: str | None) -> Array:
    """``rows.at[idx].set(new)`` with ``idx`` and ``new`` gathered from every device.

    The devices' shares are concatenated in mesh order, which is the order of the minibatch
    they were split from, so the writes are exactly those of the single-device engine.
    """
    if axis is not None:
        idx = jax.lax.all_gather(idx, axis, tiled=True)
        new = jax.lax.all_gather(new, axis, tiled=True)
    return rows.at[idx].set(new)


def owned_rows(
    n: int, idx: Int[Array, "batches b"], valid: Bool[Array, "batches b"]
) -> Bool[Array, " n"]:
    """Which of the ``n`` rows this device wrote (a valid entry of its share of ``idx``)."""
    return jnp.zeros(n, jnp.int32).at[idx.ravel()].max(valid.ravel().astype(jnp.int32)) > 0


def merge_rows(rows: Array, owned: Bool[Array, " n"], axis: str | None) -> Array:
    """Every device's own rows of a per-position array, combined into the full array.

    Each row is owned by exactly one device, so the sum adds zeros to it: exact.
    """
    if axis is None:
        return rows
    mask = owned.reshape(owned.shape + (1,) * (rows.ndim - 1))
    return jax.lax.psum(jnp.where(mask, rows, jnp.zeros_like(rows)), axis)


def summed(fn: Callable[..., Array], axis: str | None) -> Callable[..., Array]:
    """``fn(x, args)`` summed across devices, with its gradient in ``x`` summed as well.

    The gradient is taken on each device and then summed (a custom VJP), so differentiating
    the result never differentiates a collective: ``jax.value_and_grad`` of it, and line
    searches that call it, see the global loss and gradient.

    Args:
        fn: ``fn(x, args) -> scalar``, the device's partial sum; ``args`` is not
            differentiated.
        axis: mesh axis, or None to return ``fn`` itself.
    """
    if axis is None:
        return fn

    @jax.custom_vjp
    def total(x, args):
        return jax.lax.psum(fn(x, args), axis)

    def forward(x, args):
        value, grad = jax.value_and_grad(fn)(x, args)
        value, grad = jax.lax.psum((value, grad), axis)
        return value, (grad, args)

    def backward(residual, cotangent):
        grad, args = residual
        return jax.tree_util.tree_map(lambda g: cotangent * g, grad), _zero_cotangent(args)

    total.defvjp(forward, backward)
    return total


def _zero_cotangent(tree: Any) -> Any:
    def zero(x):
        if jnp.issubdtype(x.dtype, jnp.inexact):
            return jnp.zeros_like(x)
        return np.zeros(x.shape, jax.dtypes.float0)

    return jax.tree_util.tree_map(zero, tree)


def over_positions(
    fn: Callable[..., Any],
    mesh: jax.sharding.Mesh | None,
    replicated: Any,
    idx: Int[Array, "batches size"],
    valid: Bool[Array, "batches size"],
    slots: Any = None,
) -> Any:
    """Run ``fn(replicated, idx, valid, axis)`` with each minibatch split over ``mesh``.

    Without a mesh this is ``fn(replicated, idx, valid, None)``. With one, every device gets
    ``replicated`` whole and its share of each minibatch's columns of ``idx`` and ``valid``;
    ``fn`` must make its outputs equal on all devices (sum with :func:`psum`, write rows with
    :func:`set_rows` or :func:`merge_rows`).

    Per-position state that stays split (an engine's exit waves) goes in ``slots``: arrays
    laid out like ``idx`` in their first two axes, ``(batches, size, ...)``, and split the
    same way. ``fn`` is then called as ``fn(replicated, idx, valid, axis, slots)`` and returns
    ``(outputs, new_slots)``; ``new_slots`` stay split over the mesh.

    Args:
        fn: the sweep over the minibatches.
        mesh: a mesh from :func:`position_mesh`, or None.
        replicated: pytree every device gets whole (model, data, solver state, …).
        idx: ``(batches, size)`` position indices (:func:`~diffptycho.recon.ptycho.data.
            batch_indices`).
        valid: ``(batches, size)`` False for padding.
        slots: optional per-slot state, see above.

    Raises:
        ValueError: the minibatch size is not a multiple of the number of devices.
    """
    extra = () if slots is None else (slots,)
    if mesh is None:
        return fn(replicated, idx, valid, None, *extra)
    devices = device_count(mesh)
    if idx.shape[1] % devices:
        raise ValueError(
            f"batch_size: {idx.shape[1]} positions per minibatch cannot be split over "
            f"{devices} devices; use a multiple of {devices}"
        )
    arrays, static = eqx.partition(replicated, eqx.is_array)

    def local(arrays, idx, valid, *extra):
        return fn(eqx.combine(arrays, static), idx, valid, AXIS, *extra)

    split = _SPEC(None, AXIS)
    return jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(_SPEC(), split, split, *((split,) * len(extra))),
        out_specs=_SPEC() if slots is None else (_SPEC(), split),
        # the patch operators' custom linear_call transposes carry no varying-axis types
        check_vma=False,
    )(arrays, idx, valid, *extra)


def slot_sharding(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
    """Sharding of per-slot state ``(batches, size, ...)`` split along ``size``."""
    return jax.sharding.NamedSharding(mesh, _SPEC(None, AXIS))


__all__ = [
    "AXIS",
    "device_count",
    "merge_rows",
    "mesh_devices",
    "named_mesh",
    "over_positions",
    "owned_rows",
    "position_mesh",
    "psum",
    "set_rows",
    "sharded_mean",
    "slot_sharding",
    "summed",
]


def named_mesh(devices: Sequence[jax.Device] | int | None, axis: str) -> jax.sharding.Mesh:
    """A 1-D mesh with axis ``axis`` over ``devices`` (as :func:`position_mesh` for positions).

    Args:
        devices: the devices, a count (see :func:`position_mesh`), or None for all of them.
        axis: the mesh axis name (e.g. ``"slab"`` or ``"angle"`` for tomography).

    Raises:
        ValueError: more devices asked for than there are.
    """
    mesh = position_mesh(devices)
    return jax.sharding.Mesh(mesh.devices, (axis,))
