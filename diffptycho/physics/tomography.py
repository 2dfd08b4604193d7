"""Parallel-beam tomography: the projector pair :func:`project` / :func:`backproject`.

Geometry. A volume ``f[z, y, x]`` rotates about the y axis; the beam runs along +z at θ = 0.
Coordinates are centred on the array, ``x_c = x − (n_x − 1)/2`` and likewise for z and for the
detector coordinate t (``n_det`` pixels). Rotating the sample by θ right-handedly about +y puts
the voxel centre ``(z_c, x_c)`` at the detector coordinate

    t_c = x_c cos θ + z_c sin θ,

so θ = 0 projects along z and θ = 90° projects along x with +z landing at +t. Projections are
stored ``(angle, y, t)``, detector pixel = voxel, and values are line integrals in voxel units
(multiply by the voxel size in m for a physical path length).

Discretisation (Joseph's method). With ``m = max(|cos θ|, |sin θ|)``, the projection matrix is

    P_θ[t, (z, x)] = Λ((x_c cos θ + z_c sin θ − t_c) / m) / m,       Λ(d) = max(0, 1 − |d|),

which is exactly ray-driven linear interpolation along x (stepping along z, |cos θ| ≥ |sin θ|)
or along z (stepping along x otherwise), with the 1/m path length per step. The same formula read
per voxel gives the transpose: a voxel touches only the two detector pixels around its own t_c.
So both directions are gathers of two neighbours of a contiguous y-vector (y is the trailing
"channel" axis of every lookup table), cost the same, and need no scatter-add — autodiff of a
gather would produce one, measured 5x slower than the forward on CPU.

Differentiation. :func:`project` and :func:`backproject` are ``jax.custom_jvp`` functions whose
value and data tangent are ``linear_call`` s paired with the other operator, so ``jax.grad``,
``jax.vjp`` and ``jax.linear_transpose`` run the hand-written gather, never a scatter. Forward
mode is the operator itself. Angles may be traced (jit leaves); their tangent is the exact
(almost everywhere) derivative of the kernel above, for angle refinement. It costs one more
projection, so keep angles that are data out of the differentiated leaves (``lax.stop_gradient``
or an equinox filter). Second derivatives that involve the angles are not supported. Importing
:mod:`diffptycho.physics._linear` gives ``linear_call`` a batching rule (JAX 0.10 has none), so
``vmap`` (e.g. over energies) composes with all of this.

The kernel is the one of ASTRA's CPU ``'linear'`` parallel projector at ASTRA angle φ = −θ
(ASTRA's detector coordinate is x cos φ − z sin φ): they agree to float32 rounding
(``experiments/benchmarks/bench_projector.py``).
"""

from __future__ import annotations

import functools
import math
import operator

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero, linear_call

from diffptycho._typing import Angles, Array, Shaped, Volume
from diffptycho.physics._linear import LINEAR_CALL_BATCHES as _LINEAR_CALL_BATCHES
from diffptycho.physics._linear import sum_terms as _sum_terms

__all__ = ["project", "backproject"]

_GATHER_BYTES = 4 * 2**20
"""Bound (bytes) on one gathered block, which sets the loop structure: small problems run as one
vmapped pass, large ones as a map over views (z-rows for the adjoint) with an inner scan over
chunks of the sum. 4 MiB was fastest for 128³ × 158 views here (1–16 MiB within noise)."""


# ----------------------------------------------------------------------------- public API


def project(
    volume: Shaped[Array, "z y x"], angles_rad: Angles, *, n_det: int | None = None
) -> Shaped[Array, "angle y t"]:
    """Parallel-beam projections (line integrals) of a volume rotating about y.

    Args:
        volume: real or complex volume ``(z, y, x)``, e.g. δ + iβ per voxel (unitless).
        angles_rad: rotation angles θ in rad ``(angle,)``; may be a traced array.
        n_det: detector pixels along t (default ``n_x``); detector pixel = voxel, centred.

    Returns:
        Projections ``(angle, y, t)`` in voxel units: multiply by the voxel size (m) to get
        ∫ f dz in m. Same dtype as ``volume``.

    Raises:
        ValueError: if ``volume`` is not 3-D, ``angles_rad`` not 1-D or ``n_det`` < 1.

    Examples:
        >>> import jax.numpy as jnp
        >>> vol = jnp.zeros((4, 2, 4)).at[0, :, 3].set(1.0)  # z_c = -1.5, x_c = 1.5
        >>> p = project(vol, jnp.array([0.0, jnp.pi / 2]))
        >>> p.shape, int(p[0, 0].argmax()), int(p[1, 0].argmax())  # t_c = 1.5, then -1.5
        ((2, 2, 4), 3, 0)
    """
    volume = _as_inexact(volume)
    if volume.ndim != 3:
        raise ValueError(f"`volume` must have shape (z, y, x), got shape {volume.shape}")
    angles = _check_angles(angles_rad, volume.dtype)
    n_det = volume.shape[2] if n_det is None else _check_size(n_det, "n_det")
    return _project(volume, angles, n_det)


def backproject(
    projections: Shaped[Array, "angle y t"], angles_rad: Angles, n_z: int, n_x: int
) -> Volume:
    """Exact adjoint (transpose) of :func:`project`: smear projections back into a volume.

    Args:
        projections: ``(angle, y, t)`` real or complex, in the units of :func:`project`'s output.
        angles_rad: rotation angles θ in rad ``(angle,)``; may be a traced array.
        n_z: volume size along z (voxels).
        n_x: volume size along x (voxels).

    Returns:
        Volume ``(n_z, y, n_x)`` with ``⟨project(v), p⟩ = ⟨v, backproject(p)⟩``; same dtype as
        ``projections``. Not a filtered backprojection (no ramp filter, no 1/n_angles).

    Raises:
        ValueError: if ``projections`` is not 3-D, its angle axis does not match
            ``angles_rad``, or ``n_z``/``n_x`` < 1.

    Examples:
        >>> import jax.numpy as jnp
        >>> bp = backproject(jnp.ones((3, 2, 4)), jnp.array([0.0, 1.0, 2.0]), n_z=4, n_x=4)
        >>> bp.shape
        (4, 2, 4)
    """
    projections = _as_inexact(projections)
    if projections.ndim != 3:
        raise ValueError(
            f"`projections` must have shape (angle, y, t), got shape {projections.shape}"
        )
    angles = _check_angles(angles_rad, projections.dtype)
    if angles.shape[0] != projections.shape[0]:
        raise ValueError(
            f"`angles_rad` has {angles.shape[0]} angles but `projections` has "
            f"{projections.shape[0]}"
        )
    return _backproject(projections, angles, _check_size(n_z, "n_z"), _check_size(n_x, "n_x"))


def _as_inexact(x: Array) -> Array:
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.inexact) else x.astype(jnp.result_type(float))


def _check_angles(angles_rad: Array, dtype: jnp.dtype) -> Array:
    angles = jnp.asarray(angles_rad)
    if angles.ndim != 1:
        raise ValueError(f"`angles_rad` must have shape (angle,), got shape {angles.shape}")
    # Geometry in the data's real precision keeps tangent and cotangent dtypes consistent.
    return angles.astype(jnp.finfo(dtype).dtype)


def _check_size(n: int, name: str) -> int:
    try:
        value = operator.index(n)
    except TypeError:
        value = 0
    if isinstance(n, bool) or value < 1:
        raise ValueError(f"`{name}` must be a positive int, got {n!r}")
    return value


# ----------------------------------------------------------------------------- autodiff


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _project(volume: Array, angles: Array, n_det: int) -> Array:
    return _project_linear(volume, angles, n_det)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _backproject(projections: Array, angles: Array, n_z: int, n_x: int) -> Array:
    return _backproject_linear(projections, angles, n_z, n_x)


def _project_linear(volume: Array, angles: Array, n_det: int) -> Array:
    """P_θ v, transposing to the gather-based backprojection (jvp, vjp, linear_transpose)."""
    n_z, _, n_x = volume.shape
    if not _LINEAR_CALL_BATCHES:  # pragma: no cover - keep plain vmap working regardless
        return _project_impl(volume, angles, n_det, derivative=False)
    return linear_call(
        lambda a, v: _project_impl(v, a, n_det, derivative=False),
        lambda a, p: _backproject_impl(p, a, n_z, n_x, derivative=False),
        angles,
        volume,
    )


def _backproject_linear(projections: Array, angles: Array, n_z: int, n_x: int) -> Array:
    """P_θᵀ p, transposing to the gather-based projection."""
    n_det = projections.shape[2]
    if not _LINEAR_CALL_BATCHES:  # pragma: no cover
        return _backproject_impl(projections, angles, n_z, n_x, derivative=False)
    return linear_call(
        lambda a, p: _backproject_impl(p, a, n_z, n_x, derivative=False),
        lambda a, v: _project_impl(v, a, n_det, derivative=False),
        angles,
        projections,
    )


def _project_jvp(n_det, primals, tangents):
    volume, angles = primals
    d_volume, d_angles = tangents
    out = _project(volume, angles, n_det)
    terms = []
    if not isinstance(d_volume, SymbolicZero):
        terms.append(_project_linear(d_volume, angles, n_det))
    if not isinstance(d_angles, SymbolicZero):
        # ∂P/∂θ f is one projection with differentiated weights; its transpose w.r.t. the real
        # angle tangents is the real part of the per-view bilinear pairing with the cotangent.
        def fun(res, d_theta):
            vol, theta = res
            return d_theta[:, None, None] * _project_impl(vol, theta, n_det, derivative=True)

        def fun_t(res, ct):
            vol, theta = res
            return _pair(ct, _project_impl(vol, theta, n_det, derivative=True), theta.dtype)

        terms.append(linear_call(fun, fun_t, (volume, angles), d_angles))
    return out, _sum_terms(terms, out)


def _backproject_jvp(n_z, n_x, primals, tangents):
    projections, angles = primals
    d_projections, d_angles = tangents
    n_det = projections.shape[2]
    out = _backproject(projections, angles, n_z, n_x)
    terms = []
    if not isinstance(d_projections, SymbolicZero):
        terms.append(_backproject_linear(d_projections, angles, n_z, n_x))
    if not isinstance(d_angles, SymbolicZero):

        def fun(res, d_theta):
            proj, theta = res
            scaled = proj * d_theta[:, None, None]
            return _backproject_impl(scaled, theta, n_z, n_x, derivative=True)

        def fun_t(res, ct):
            proj, theta = res
            return _pair(proj, _project_impl(ct, theta, n_det, derivative=True), theta.dtype)

        terms.append(linear_call(fun, fun_t, (projections, angles), d_angles))
    return out, _sum_terms(terms, out)


_project.defjvp(_project_jvp, symbolic_zeros=True)
_backproject.defjvp(_backproject_jvp, symbolic_zeros=True)


def _pair(a: Array, b: Array, dtype: jnp.dtype) -> Array:
    """Per-view bilinear pairing Re Σ a·b: JAX's transpose of a real-to-complex scaling."""
    return jnp.real(jnp.sum(a * b, axis=(1, 2))).astype(dtype)


# ----------------------------------------------------------------------------- weights


def _centred(n: int | Array, dtype: jnp.dtype) -> Array:
    return jnp.asarray((n - 1) / 2, dtype)


def _ray_weights(theta: Array, n_z: int, n_x: int, n_det: int, n_steps: int):
    """Joseph weights of one view, enumerated per detector pixel and step along the ray.

    The ray steps one voxel at a time along z (when |cos θ| ≥ |sin θ|) or along x, and at each
    step interpolates linearly between two neighbours along the other axis.

    Returns:
        ``(weights (n_det, n_steps, 2), rows (n_det, n_steps))``: ``rows`` is the table row of
        the lower neighbour (see :func:`_volume_table`); out-of-volume neighbours weigh 0.
    """
    dtype = theta.dtype
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    along_z = jnp.abs(cos) >= jnp.abs(sin)
    # t_c = x_c cos + z_c sin = (interpolated coord)·a + (stepping coord)·b.
    a = jnp.where(along_z, cos, sin)
    b = jnp.where(along_z, sin, cos)
    n_step_axis = jnp.where(along_z, n_z, n_x)
    n_interp = jnp.where(along_z, n_x, n_z)
    step = jnp.arange(n_steps)
    step_c = step.astype(dtype) - _centred(n_step_axis, dtype)
    t_c = jnp.arange(n_det, dtype=dtype) - _centred(n_det, dtype)
    pos = (t_c[:, None] - b * step_c[None, :]) / a + _centred(n_interp, dtype)
    lower = jnp.floor(pos)
    frac = pos - lower
    i0 = lower.astype(jnp.int32)
    inside = (step < n_step_axis)[None, :]
    w0 = jnp.where(inside & (i0 >= 0) & (i0 < n_interp), (1 - frac) / jnp.abs(a), 0)
    w1 = jnp.where(inside & (i0 >= -1) & (i0 < n_interp - 1), frac / jnp.abs(a), 0)
    # Stepping along z reads the (z, x) table, along x the (x, z) one; +1 skips the zero row.
    offset = jnp.where(along_z, 0, n_z * n_x)
    rows = jnp.clip(1 + offset + step[None, :] * n_interp + i0, 0, 2 * n_z * n_x)
    return jnp.stack([w0, w1], axis=-1), rows


def _voxel_weights(theta: Array, z_c: Array, x_c: Array, n_det: int):
    """Transposed Joseph weights: the two detector pixels around each voxel's t_c.

    Returns:
        ``(weights (..., 2), t0 (...))`` with ``t0`` the lower detector pixel index;
        off-detector pixels weigh 0.
    """
    dtype = theta.dtype
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    m = jnp.maximum(jnp.abs(cos), jnp.abs(sin))
    u = x_c * cos + z_c * sin + _centred(n_det, dtype)
    lower = jnp.floor(u)
    d = u - lower
    t0 = lower.astype(jnp.int32)
    # Λ((t − u)/m)/m at t = t0, t0 + 1; m < 1 narrows the kernel, so both may be needed.
    w0 = jnp.where((t0 >= 0) & (t0 < n_det), jnp.maximum(0, 1 - d / m) / m, 0)
    w1 = jnp.where((t0 >= -1) & (t0 < n_det - 1), jnp.maximum(0, 1 - (1 - d) / m) / m, 0)
    return jnp.stack([w0, w1], axis=-1), t0


def _with_derivative(weights_fn, theta: Array, *args, derivative: bool):
    """``weights_fn`` itself, or its ∂/∂θ (same enumeration, differentiated weights)."""
    if not derivative:
        return weights_fn(theta, *args)
    (_, rows), (d_weights, _) = jax.jvp(
        lambda th: weights_fn(th, *args), (theta,), (jnp.ones_like(theta),)
    )
    return d_weights, rows


# ----------------------------------------------------------------------------- kernels


def _to_channels(x: Array, axis: int) -> tuple[Array, bool]:
    """Move ``axis`` last; complex data becomes real and imaginary halves of that channel axis."""
    x = jnp.moveaxis(x, axis, -1)
    if jnp.iscomplexobj(x):
        return jnp.concatenate([x.real, x.imag], axis=-1), True
    return x, False


def _from_channels(x: Array, is_complex: bool) -> Array:
    if is_complex:
        half = x.shape[-1] // 2
        return lax.complex(x[..., :half], x[..., half:])
    return x


def _gather_pairs(table: Array, rows: Array) -> Array:
    """``table[rows + k]`` for k = 0, 1 as one gather of contiguous (2, channel) slices."""
    dnums = lax.GatherDimensionNumbers(
        offset_dims=(rows.ndim, rows.ndim + 1), collapsed_slice_dims=(), start_index_map=(0,)
    )
    return lax.gather(
        table,
        rows[..., None],
        dnums,
        slice_sizes=(2, table.shape[1]),
        mode=lax.GatherScatterMode.PROMISE_IN_BOUNDS,
    )


def _blocking(n_sum: int, bytes_per_term: int) -> tuple[int, int, int]:
    """Split a sum of ``n_sum`` gathered terms into blocks of at most ``_GATHER_BYTES``.

    Returns:
        ``(outputs per map step, chunks of the sum, terms per chunk)``.
    """
    total = n_sum * bytes_per_term
    if total <= _GATHER_BYTES:
        return _GATHER_BYTES // total, 1, n_sum
    chunks = math.ceil(total / _GATHER_BYTES)
    return 1, chunks, math.ceil(n_sum / chunks)


def _map(fn, xs: Array, batch: int) -> Array:
    """``lax.map`` in batches; a plain ``vmap`` (no loop to compile) when one batch holds all."""
    if batch >= xs.shape[0]:
        return jax.vmap(fn)(xs)
    return lax.map(fn, xs, batch_size=batch)


def _chunked_sum(step_fn, init: Array, xs, n_chunks: int) -> Array:
    """Σ over chunks of ``step_fn(chunk)``; a scan only when the sum does not fit one block."""
    if n_chunks == 1:
        return init + step_fn(jax.tree.map(lambda x: x[0], xs))

    def body(acc, chunk):
        return acc + step_fn(chunk), None

    return lax.scan(body, init, xs)[0]


def _project_impl(volume: Array, angles: Array, n_det: int, *, derivative: bool) -> Array:
    n_z, n_y, n_x = volume.shape
    table, is_complex = _volume_table(volume)
    n_ch = table.shape[1]
    n_steps = max(n_z, n_x)
    batch, chunks, per_chunk = _blocking(n_steps, n_det * 2 * n_ch * table.dtype.itemsize)

    def one_view(theta: Array) -> Array:
        w, rows = _with_derivative(
            _ray_weights, theta, n_z, n_x, n_det, chunks * per_chunk, derivative=derivative
        )
        w = w.astype(table.dtype).reshape(n_det, chunks, per_chunk, 2).swapaxes(0, 1)
        rows = rows.reshape(n_det, chunks, per_chunk).swapaxes(0, 1)

        def step(chunk):
            w_c, rows_c = chunk
            return jnp.einsum("tjk,tjkc->tc", w_c, _gather_pairs(table, rows_c))

        return _chunked_sum(step, jnp.zeros((n_det, n_ch), table.dtype), (w, rows), chunks)

    out = _map(one_view, angles, batch)  # (angle, t, channel)
    return jnp.swapaxes(_from_channels(out, is_complex), 1, 2)


def _volume_table(volume: Array) -> tuple[Array, bool]:
    """Rows: zero, the (z, x) raster, the (x, z) raster, zero; y (channels) contiguous.

    Both rasters make the two interpolation neighbours adjacent rows whichever axis the ray
    steps along; the zero rows keep edge pairs in bounds (their weights are 0 anyway).
    """
    vol, is_complex = _to_channels(volume, 1)  # (z, x, channel)
    n_ch = vol.shape[-1]
    zero = jnp.zeros((1, n_ch), vol.dtype)
    zx = vol.reshape(-1, n_ch)
    xz = jnp.swapaxes(vol, 0, 1).reshape(-1, n_ch)
    return jnp.concatenate([zero, zx, xz, zero]), is_complex


def _backproject_impl(
    projections: Array, angles: Array, n_z: int, n_x: int, *, derivative: bool
) -> Array:
    n_angles, _, n_det = projections.shape
    proj, is_complex = _to_channels(projections, 1)  # (angle, t, channel)
    n_ch = proj.shape[-1]
    zero = jnp.zeros((1, n_ch), proj.dtype)
    table = jnp.concatenate([zero, proj.reshape(-1, n_ch), zero])
    dtype = angles.dtype
    x_c = jnp.arange(n_x, dtype=dtype) - _centred(n_x, dtype)
    z_c = jnp.arange(n_z, dtype=dtype) - _centred(n_z, dtype)

    # Voxel-driven: each z-row of the output sums over all views, so no accumulator over the
    # whole volume is read and written per view; views are chunked to bound the gather.
    batch, chunks, per_chunk = _blocking(n_angles, n_x * 2 * n_ch * table.dtype.itemsize)
    pad = chunks * per_chunk - n_angles
    view = jnp.arange(chunks * per_chunk)
    theta = jnp.pad(angles, (0, pad)).reshape(chunks, per_chunk)
    first_row = (1 + view * n_det).reshape(chunks, per_chunk)
    real = (view < n_angles).reshape(chunks, per_chunk)

    def one_row(z: Array) -> Array:
        def step(chunk):
            th, first, ok = chunk
            # (x, view) order makes x the leading batch axis of the contraction: no transpose.
            w, t0 = _with_derivative(
                _voxel_weights, th[None, :], z, x_c[:, None], n_det, derivative=derivative
            )
            w = jnp.where(ok[None, :, None], w, 0).astype(table.dtype)
            rows = jnp.clip(first[None, :] + t0, 0, n_angles * n_det)
            return jnp.einsum("xak,xakc->xc", w, _gather_pairs(table, rows))

        init = jnp.zeros((n_x, n_ch), table.dtype)
        return _chunked_sum(step, init, (theta, first_row, real), chunks)

    out = _map(one_row, z_c, batch)  # (z, x, channel)
    return jnp.swapaxes(_from_channels(out, is_complex), 1, 2)
