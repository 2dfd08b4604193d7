"""Tomography split over devices: y slabs or angles on a 1-D mesh.

Parallel-beam rotation about y makes every detector row y the projection of the volume slice
y alone, so the slices are independent 2-D problems. Two ways to split a reconstruction over
the devices of a mesh built with :func:`tomo_mesh`:

- **slab** (axis :data:`SLAB`): the volume (z, y, x) and the projections (angle, y, t) are
  split along y; each device reconstructs its rows. Every algorithm supports it. What couples
  the rows is summed with ``psum``: the loss (all algorithms) and CGLS's step lengths
  ``α = γ / ‖P d‖²``, ``β``. The total variation of the gradient solver differentiates along
  y, so each device receives the first row of the next device's slab (a one-row halo,
  ``ppermute``) and its gradient sends the halo's share back.
- **angle** (axis :data:`ANGLE`): the projections and the angles are split, the volume is
  replicated; each device projects the volume to its angles and back-projects its residuals,
  and the back-projections are summed. For the simultaneous algorithms (SIRT, CGLS, the
  gradient solver, FBP). ART and SART update the volume after each projection in turn, so
  their angles cannot be processed at once: they refuse an angle mesh.

A dimension that the device count does not divide is zero-padded to the next multiple before
the split and cropped after it: padded rows hold zero data and stay zero, padded angles are
masked out of every sum. The single-device code runs unchanged without a mesh; with one, the
results equal it up to the order of floating-point sums.

On CPU, more than one device needs ``XLA_FLAGS=--xla_force_host_platform_device_count=N``
before jax is imported (fake devices that share the cores).

Examples:
    >>> tomo_mesh(1, axis="angle").axis_names
    ('angle',)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from diffptycho._typing import Array, Bool, Float, Shaped
from diffptycho.recon.sharding import _zero_cotangent, named_mesh, summed

__all__ = [
    "ANGLE",
    "AXES",
    "PER_ANGLE",
    "PROJECTIONS",
    "REPLICATED",
    "SLAB",
    "VOLUME",
    "Layout",
    "Split",
    "mesh_axis",
    "over_mesh",
    "shard_projections",
    "slab_total_variation",
    "split_total",
    "tomo_mesh",
]

SLAB = "slab"
"""Mesh axis that splits the volume's and the projections' y rows."""
ANGLE = "angle"
"""Mesh axis that splits the projections' angles."""
AXES = (SLAB, ANGLE)

_SPEC = jax.sharding.PartitionSpec


def tomo_mesh(
    devices: Sequence[jax.Device] | int | None = None, axis: str = SLAB
) -> jax.sharding.Mesh:
    """A 1-D mesh over ``devices`` whose axis splits y slabs (``"slab"``) or angles.

    Args:
        devices: the devices, a count of the first local devices, or None for all of them.
        axis: :data:`SLAB` (every algorithm) or :data:`ANGLE` (SIRT, CGLS, adam, FBP).

    Raises:
        ValueError: an unknown axis, or more devices asked for than there are.
    """
    if axis not in AXES:
        raise ValueError(f"axis={axis!r}: expected {SLAB!r} (y rows) or {ANGLE!r}")
    return named_mesh(devices, axis)


def mesh_axis(mesh: jax.sharding.Mesh) -> tuple[str, int]:
    """``(axis name, devices along it)`` of a tomography mesh.

    Raises:
        ValueError: the mesh has not exactly one of the axes :data:`SLAB`, :data:`ANGLE`.
    """
    names = [a for a in mesh.axis_names if a in AXES]
    if len(names) != 1:
        raise ValueError(
            f"mesh: axes {mesh.axis_names} need exactly one of {AXES} to split the tomography "
            "over; build it with diffptycho.recon.tomo.sharding.tomo_mesh"
        )
    return names[0], int(mesh.shape[names[0]])


@dataclasses.dataclass(frozen=True)
class Layout:
    """Which dimension of an array each mesh axis splits (None: replicated)."""

    slab: int | None = None
    angle: int | None = None

    def dim(self, axis: str) -> int | None:
        """The dimension split by mesh axis ``axis``."""
        return self.slab if axis == SLAB else self.angle


VOLUME = Layout(slab=1)
"""(z, y, x) arrays: split along y over slabs, replicated over angles."""
PROJECTIONS = Layout(slab=1, angle=0)
"""(angle, y, t) arrays: split along y over slabs, along angle over angles."""
PER_ANGLE = Layout(angle=0)
"""(angle, ...) arrays without a y axis (angles, ray weights, alignment)."""
REPLICATED = Layout()
"""Arrays every device holds whole."""


@dataclasses.dataclass(frozen=True)
class Split:
    """Where a solver's arithmetic runs: one device (``axis`` None) or a share of a mesh.

    Attributes:
        axis: mesh axis (:data:`SLAB` or :data:`ANGLE`) inside ``shard_map``, or None.
        size: rows (slab) or angles (angle) of the whole problem, before any padding.
    """

    axis: str | None = None
    size: int = 0

    def sums(self, x: Any, layout: Layout) -> Any:
        """``x`` summed over the devices when it is a partial sum over ``layout``'s split."""
        if self.axis is None or layout.dim(self.axis) is None:
            return x
        return jax.lax.psum(x, self.axis)

    def maximum(self, x: Array, layout: Layout) -> Array:
        """``x`` maximised over the devices when it is a partial maximum over ``layout``."""
        if self.axis is None or layout.dim(self.axis) is None:
            return x
        return jax.lax.pmax(x, self.axis)

    def valid(self, n_local: int) -> Bool[Array, " n_local"] | None:
        """Which of this device's ``n_local`` rows or angles are real (None: all are)."""
        if self.axis is None:
            return None
        first = jax.lax.axis_index(self.axis) * n_local
        return first + jnp.arange(n_local) < self.size

    def angle_mask(self, n_local: int) -> Bool[Array, " n_local"] | None:
        """Real (not padded) angles of this device's share, or None when angles are whole."""
        return self.valid(n_local) if self.axis == ANGLE else None


def _pad(x: Array, dim: int | None, devices: int) -> Array:
    if dim is None or x.shape[dim] % devices == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[dim] = (0, -x.shape[dim] % devices)
    return jnp.pad(x, widths)


def _crop(x: Array, dim: int | None, size: int) -> Array:
    if dim is None or x.shape[dim] == size:
        return x
    return jax.lax.slice_in_dim(x, 0, size, axis=dim)


def _spec(layout: Layout, axis: str) -> jax.sharding.PartitionSpec:
    dim = layout.dim(axis)
    if dim is None:
        return _SPEC()
    return _SPEC(*([None] * dim), axis)


def _leaf_layouts(tree: Any, layout: Any) -> Any:
    """One :class:`Layout` per array leaf of ``tree`` (see :func:`over_mesh`)."""
    if isinstance(layout, Layout):
        return jax.tree.map(lambda _: layout, tree)
    if callable(layout):
        return jax.tree.map(layout, tree)
    return jax.tree.map(lambda _, lay: lay, tree, layout)


def over_mesh(
    fn: Callable[..., Any],
    mesh: jax.sharding.Mesh | None,
    inputs: Sequence[tuple[Any, Any]],
    outputs: Sequence[Layout | tuple[Any, Any]],
    *,
    rows: int,
    angles: int,
) -> Any:
    """``fn(split, *args)`` with every array of ``args`` split over ``mesh`` by its layout.

    Without a mesh this is ``fn(Split(), *args)``, the single-device code. With one, arrays
    split along a dimension that the device count does not divide are zero-padded for the
    call, and the outputs cropped back. ``fn`` must make its replicated outputs equal on all
    devices (:meth:`Split.sums`).

    Args:
        fn: ``fn(split, *args) -> tuple`` on one device's share (``split`` a :class:`Split`).
        mesh: a mesh from :func:`tomo_mesh`, or None.
        inputs: ``(pytree, layout)`` per argument; the layout is one :class:`Layout` for
            every array leaf, a function of the leaf giving its layout, or a pytree of the
            same structure with a layout per leaf.
        outputs: per output, its layout (a single array) or ``(pytree like it, layout)``.
        rows: the volume's and projections' y rows (split by :data:`SLAB`).
        angles: the projections' angles (split by :data:`ANGLE`).

    Returns:
        ``fn``'s outputs (a tuple), as global arrays of the unpadded sizes.
    """
    args = [tree for tree, _ in inputs]
    if mesh is None:
        return fn(Split(), *args)
    axis, devices = mesh_axis(mesh)
    size = rows if axis == SLAB else angles
    arrays, statics, specs = [], [], []
    for tree, layout in inputs:
        dynamic, static = eqx.partition(tree, eqx.is_array)
        layouts = _leaf_layouts(dynamic, layout)
        arrays.append(
            jax.tree.map(lambda x, lay: _pad(x, lay.dim(axis), devices), dynamic, layouts)
        )
        statics.append(static)
        specs.append(jax.tree.map(lambda lay: _spec(lay, axis), layouts))
    out_layouts = []
    for entry in outputs:
        tree, layout = (jnp.zeros(()), entry) if isinstance(entry, Layout) else entry
        out_layouts.append(_leaf_layouts(eqx.filter(tree, eqx.is_array), layout))
    out_specs = [jax.tree.map(lambda lay: _spec(lay, axis), lay) for lay in out_layouts]
    out_static = []

    def local(*dynamic):
        local_args = [eqx.combine(d, s) for d, s in zip(dynamic, statics, strict=True)]
        out_arrays, static = eqx.partition(tuple(fn(Split(axis, size), *local_args)), eqx.is_array)
        out_static.append(static)
        return out_arrays

    out = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=tuple(specs),
        out_specs=tuple(out_specs),
        # the projector's linear_call transposes carry no varying-axis types
        check_vma=False,
    )(*arrays)
    out = [
        jax.tree.map(lambda x, lay: _crop(x, lay.dim(axis), size), o, lay)
        for o, lay in zip(out, out_layouts, strict=True)
    ]
    return eqx.combine(tuple(out), out_static[0])


def shard_projections(projections: Any, mesh: jax.sharding.Mesh | None) -> Any:
    """Projections (angle, y, t) placed split over ``mesh`` once, so steps do not re-split them.

    Returned unchanged without a mesh or when the device count does not divide the split
    dimension (:func:`over_mesh` then pads them in every call).
    """
    if mesh is None:
        return projections
    axis, devices = mesh_axis(mesh)
    p = jnp.asarray(projections)
    dim = PROJECTIONS.dim(axis)
    if p.ndim != 3 or p.shape[dim] % devices:
        return projections
    return jax.device_put(p, jax.sharding.NamedSharding(mesh, _spec(PROJECTIONS, axis)))


def split_total(
    fn: Callable[[Any, Any], Array], axis: str | None, sum_grads: bool
) -> Callable[[Any, Any], Array]:
    """``fn(x, args)`` summed over the devices, differentiable without differentiating a psum.

    The value is the sum of every device's ``fn``; the gradient in ``x`` is taken on each
    device and summed when ``x`` is replicated (``sum_grads``: every device's term depends on
    all of ``x``; this is :func:`~diffptycho.recon.sharding.summed`) or kept when ``x`` is the
    device's own share (its term depends on its share, plus halos whose gradients ``fn``'s
    own ``ppermute`` sends back to their devices).

    Args:
        fn: ``fn(x, args) -> scalar``, the device's part; ``args`` is not differentiated.
        axis: mesh axis, or None to return ``fn`` itself.
        sum_grads: sum the gradient over the devices (``x`` replicated) or not (``x`` split).
    """
    if axis is None or sum_grads:
        return summed(fn, axis)

    @jax.custom_vjp
    def total(x, args):
        return jax.lax.psum(fn(x, args), axis)

    def forward(x, args):
        value, grad = jax.value_and_grad(fn)(x, args)
        return jax.lax.psum(value, axis), (grad, args)

    def backward(residual, cotangent):
        grad, args = residual
        return jax.tree.map(lambda g: cotangent * g, grad), _zero_cotangent(args)

    total.defvjp(forward, backward)
    return total


def slab_total_variation(
    volume: Shaped[Array, "z y x"], eps: float | Array, split: Split
) -> Float[Array, ""]:
    """This device's part of :func:`~diffptycho.recon.tomo.gradient.total_variation`.

    The forward difference along y of a slab's last row needs the next slab's first row: it
    comes from the next device (``ppermute``). Rows past ``split.size`` (padding) are left
    out, and the last real row has no y difference, as on one device.

    Args:
        volume: this device's (z, y_local, x) share of a volume split over :data:`SLAB`.
        eps: TV smoothing in the volume's units.
        split: the :class:`Split` of the call (axis :data:`SLAB`).

    Returns:
        The part of the TV of this device's rows (volume units × voxels²); the devices'
        parts sum to the TV of the whole volume.
    """
    n_local = volume.shape[1]
    devices = jax.lax.axis_size(split.axis)
    halo = jax.lax.ppermute(volume[:, :1], split.axis, [(d, d - 1) for d in range(1, devices)])
    following = jnp.concatenate([volume[:, 1:], halo], axis=1)
    rows = jax.lax.axis_index(split.axis) * n_local + jnp.arange(n_local)
    last = (rows + 1 >= split.size)[None, :, None]
    dy = jnp.where(last, 0, following - volume)
    dz = jnp.diff(volume, axis=0, append=volume[-1:])
    dx = jnp.diff(volume, axis=2, append=volume[:, :, -1:])
    squared = jnp.abs(dz) ** 2 + jnp.abs(dy) ** 2 + jnp.abs(dx) ** 2
    terms = jnp.sqrt(squared + jnp.asarray(eps) ** 2)
    return jnp.sum(jnp.where((rows < split.size)[None, :, None], terms, 0))
