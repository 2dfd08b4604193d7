"""Scan geometry: sub-pixel patch extraction from an object and its exact adjoint.

Convention (promised by our output files, as in CXI/ptychography codes): a scan position
``(y, x)`` in pixels places the patch's centre pixel, index ``(py // 2, px // 2)``, on the object
index ``(H // 2 + y, W // 2 + x)``; position ``(0, 0)`` is the object array centre. Positive
``y`` moves the patch towards larger row indices. Positions are float; the sub-pixel part is
handled by bilinear interpolation, so :func:`extract_patch` is differentiable with respect to
both the object and the position.

The sub-pixel part can instead move the probe (``subpixel="fourier"``, :func:`split_positions`,
:func:`shift_probe`): the patch is read at the integer part of the position and the probe is
moved by the rest with a Fourier shift inside its window. For a probe band-limited within the
detector's frequencies this is exact, where the bilinear patch low-passes the object by an
amount that depends on the fraction (on the V K-edge simulation with 32-pixel frames: a model
error of 1.36 Poisson σ at 10⁸ photons per frame, 0.87 with the probe shifted). The window is
periodic, so the probe should decay inside it.

``lax.dynamic_slice`` silently clamps out-of-range starts, so a patch that leaves the object
would be read from the wrong place without any error. Validate positions once on the host with
:func:`check_positions` (or size the object with :func:`object_shape_for`).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_derivatives import SymbolicZero, linear_call

from diffptycho._typing import Array, Complex, Float, Int, Positions, Shaped
from diffptycho.physics._linear import sum_terms  # importing it registers linear_call batching


def _block_shape(
    obj_shape: tuple[int, int], patch_shape: tuple[int, int]
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Object shape padded so a ``(py + 1, px + 1)`` interpolation block always fits."""
    (h, w), (py, px) = obj_shape, patch_shape
    if py < 1 or px < 1:
        raise ValueError(f"shape={patch_shape}: patch sides must be positive")
    if py > h or px > w:
        raise ValueError(f"patch shape {patch_shape} is larger than the object {obj_shape}")
    return (max(h, py + 1), max(w, px + 1)), (py + 1, px + 1)


def _corner_and_fraction(
    position: Float[Array, " 2"],
    obj_shape: tuple[int, int],
    patch_shape: tuple[int, int],
    padded_shape: tuple[int, int],
    dtype,
) -> tuple[Int[Array, " 2"], Float[Array, " 2"]]:
    """Integer top-left corner of the interpolation block and the sub-pixel weights (y, x)."""
    (h, w), (py, px), (hp, wp) = obj_shape, patch_shape, padded_shape
    if not jnp.issubdtype(position.dtype, jnp.floating):
        position = position.astype(dtype)
    top_left = position + jnp.asarray([h // 2 - py // 2, w // 2 - px // 2], position.dtype)
    # Clipping keeps the (py+1, px+1) block inside the array; at the last valid integer start
    # the fraction then becomes exactly 1, which still reads the right pixels.
    corner = jnp.clip(jnp.floor(top_left), 0, jnp.asarray([hp - py - 1, wp - px - 1]))
    corner = lax.stop_gradient(corner)
    return corner.astype(jnp.int32), (top_left - corner).astype(dtype)


def _padded_object(obj, shape) -> tuple[Array, tuple[int, int], tuple[int, int]]:
    """``(object, its shape, patch shape)``: inexact, padded when exactly as large as a patch.

    An object exactly as large as the patch gets one zero row/column for the bilinear block.
    """
    obj = jnp.asarray(obj)
    if not jnp.issubdtype(obj.dtype, jnp.inexact):
        obj = obj.astype(jnp.result_type(float))
    obj_shape, shape = obj.shape, (int(shape[0]), int(shape[1]))
    padded, _ = _block_shape(obj_shape, shape)
    if padded != obj_shape:
        obj = jnp.pad(obj, ((0, padded[0] - obj_shape[0]), (0, padded[1] - obj_shape[1])))
    return obj, obj_shape, shape


def _real_dtype(dtype):
    return jnp.finfo(dtype).dtype


def extract_patch(
    obj: Shaped[Array, "H W"], position: Float[Array, " 2"], shape: tuple[int, int]
) -> Shaped[Array, "py px"]:
    """Bilinearly interpolated patch of the object at a sub-pixel scan position.

    Args:
        obj: object (transmission) array, complex or real, shape ``(H, W)``.
        position: ``(y, x)`` in object pixels; ``(0, 0)`` puts the patch centre pixel
            ``(py // 2, px // 2)`` on the object centre ``(H // 2, W // 2)``.
        shape: patch shape ``(py, px)`` in pixels (static).

    Returns:
        The patch, shape ``(py, px)``, dtype of ``obj``.

    Examples:
        >>> import jax.numpy as jnp
        >>> obj = jnp.arange(36.0).reshape(6, 6)
        >>> extract_patch(obj, jnp.array([0.0, 0.5]), (2, 2)).tolist()
        [[14.5, 15.5], [20.5, 21.5]]
    """
    obj, obj_shape, shape = _padded_object(obj, shape)
    padded, block_shape = _block_shape(obj_shape, shape)
    corner, frac = _corner_and_fraction(
        jnp.asarray(position), obj_shape, shape, padded, _real_dtype(obj.dtype)
    )
    block = lax.dynamic_slice(obj, (corner[0], corner[1]), block_shape)
    fy, fx = frac[0], frac[1]
    rows = block[:-1] * (1 - fy) + block[1:] * fy
    return rows[:, :-1] * (1 - fx) + rows[:, 1:] * fx


def extract_patches(
    obj: Shaped[Array, "H W"], positions: Positions, shape: tuple[int, int]
) -> Shaped[Array, "n py px"]:
    """:func:`extract_patch` at every scan position, as one batched gather.

    The same numbers as ``vmap(extract_patch)``. Its derivatives are written out: with respect
    to the object it transposes to :func:`insert_patches`' own scatter (a ``linear_call``
    pair) instead of XLA's generic scatter, which is several times slower on the CPU; with
    respect to the positions it is the exact derivative of the bilinear weights.

    Args:
        obj: object array ``(H, W)``.
        positions: ``(n, 2)`` scan positions ``(y, x)`` in pixels, see :func:`extract_patch`.
        shape: patch shape ``(py, px)`` in pixels.

    Returns:
        Patches, shape ``(n, py, px)``.
    """
    obj, obj_shape, shape = _padded_object(obj, shape)
    return _extract(obj, jnp.asarray(positions), obj_shape, shape)


def insert_patches(
    patches: Shaped[Array, "n py px"], positions: Positions, obj_shape: tuple[int, int]
) -> Shaped[Array, "H W"]:
    """Exact adjoint of :func:`extract_patches` with respect to the object.

    Each patch is spread back with the same bilinear weights and overlapping contributions are
    summed: on the CPU by a loop of in-place window additions (XLA's CPU scatter and padding
    of complex arrays are several times slower), elsewhere by one windowed scatter-add. The
    weights are real, so this is both the transpose and the Hermitian adjoint. Differentiable
    with respect to the patches and the positions.

    Args:
        patches: ``(n, py, px)`` arrays living on the patch grid (e.g. gradients).
        positions: ``(n, 2)`` scan positions ``(y, x)`` in pixels.
        obj_shape: ``(H, W)`` of the object (static).

    Returns:
        ``(H, W)`` sum of the re-inserted patches.

    Examples:
        >>> import jax.numpy as jnp
        >>> out = insert_patches(jnp.ones((2, 2, 2)), jnp.array([[0.0, 0.0], [0.0, 0.5]]), (4, 4))
        >>> out[1:3].tolist()
        [[0.0, 1.5, 2.0, 0.5], [0.0, 1.5, 2.0, 0.5]]
    """
    patches = jnp.asarray(patches)
    if not jnp.issubdtype(patches.dtype, jnp.inexact):
        patches = patches.astype(jnp.result_type(float))
    obj_shape = (int(obj_shape[0]), int(obj_shape[1]))
    _block_shape(obj_shape, patches.shape[-2:])  # validates the shapes
    return _insert(patches, jnp.asarray(positions), obj_shape)


# ------------------------------------------------------------------ patch operator internals
# ``d`` selects the bilinear weights: "" the interpolation (1 − f, f) on both axes, "y" or
# "x" their derivative (−1, 1) along that axis (the derivative with respect to the position).


def _corners(positions, obj_shape, shape, padded, dtype):
    return jax.vmap(lambda p: _corner_and_fraction(p, obj_shape, shape, padded, dtype))(positions)


def _axis_weights(f: Array, derivative: bool) -> tuple[Array | int, Array | int]:
    return (-1, 1) if derivative else (1 - f, f)


def _extract_impl(obj: Array, corners: Array, frac: Array, shape, d: str = "") -> Array:
    block_shape = (shape[0] + 1, shape[1] + 1)
    blocks = jax.vmap(lambda c: lax.dynamic_slice(obj, (c[0], c[1]), block_shape))(corners)
    wy0, wy1 = _axis_weights(frac[:, 0, None, None], d == "y")
    wx0, wx1 = _axis_weights(frac[:, 1, None, None], d == "x")
    rows = blocks[:, :-1] * wy0 + blocks[:, 1:] * wy1
    return rows[:, :, :-1] * wx0 + rows[:, :, 1:] * wx1


def _insert_loop(patches: Array, corners: Array, frac: Array, padded, d: str = "") -> Array:
    """CPU: four in-place window additions per patch, patch after patch."""

    def body(acc, xs):
        patch, c, f = xs
        wy, wx = _axis_weights(f[0], d == "y"), _axis_weights(f[1], d == "x")
        for dy in (0, 1):
            for dx in (0, 1):
                at = (c[0] + dy, c[1] + dx)
                window = lax.dynamic_slice(acc, at, patch.shape)
                acc = lax.dynamic_update_slice(acc, window + (wy[dy] * wx[dx]) * patch, at)
        return acc, None

    return lax.scan(body, jnp.zeros(padded, patches.dtype), (patches, corners, frac))[0]


def _insert_scatter(patches: Array, corners: Array, frac: Array, padded, d: str = "") -> Array:
    """Accelerators: one windowed scatter-add of the (py + 1, px + 1) bilinear blocks."""
    wy0, wy1 = _axis_weights(frac[:, 0, None, None], d == "y")
    wx0, wx1 = _axis_weights(frac[:, 1, None, None], d == "x")
    rows = _pad_last(patches * wx0, -1, (0, 1)) + _pad_last(patches * wx1, -1, (1, 0))
    blocks = _pad_last(rows * wy0, -2, (0, 1)) + _pad_last(rows * wy1, -2, (1, 0))
    dnums = lax.ScatterDimensionNumbers(
        update_window_dims=(1, 2), inserted_window_dims=(), scatter_dims_to_operand_dims=(0, 1)
    )
    zeros = jnp.zeros(padded, patches.dtype)
    return lax.scatter_add(zeros, corners, blocks, dnums, mode=lax.GatherScatterMode.CLIP)


def _insert_impl(patches: Array, corners: Array, frac: Array, padded, d: str = "") -> Array:
    return lax.platform_dependent(
        patches,
        corners,
        frac,
        cpu=functools.partial(_insert_loop, padded=padded, d=d),
        default=functools.partial(_insert_scatter, padded=padded, d=d),
    )


def _extract_linear(obj: Array, corners: Array, frac: Array, shape) -> Array:
    padded = obj.shape
    return linear_call(
        lambda r, o: _extract_impl(o, *r, shape),
        lambda r, p: _insert_impl(p, *r, padded),
        (corners, frac),
        obj,
    )


def _insert_linear(patches: Array, corners: Array, frac: Array, padded) -> Array:
    shape = patches.shape[-2:]
    return linear_call(
        lambda r, p: _insert_impl(p, *r, padded),
        lambda r, o: _extract_impl(o, *r, shape),
        (corners, frac),
        patches,
    )


def _position_tangent(d_pos: Array, positions: Array) -> Array | None:
    if isinstance(d_pos, SymbolicZero) or not jnp.issubdtype(positions.dtype, jnp.floating):
        return None
    return d_pos


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _extract(obj: Array, positions: Array, obj_shape, shape) -> Array:
    corners, frac = _corners(positions, obj_shape, shape, obj.shape, _real_dtype(obj.dtype))
    return _extract_linear(obj, corners, frac, shape)


def _extract_jvp(obj_shape, shape, primals, tangents):
    obj, positions = primals
    d_obj, d_pos = tangents
    corners, frac = _corners(positions, obj_shape, shape, obj.shape, _real_dtype(obj.dtype))
    out = _extract_linear(obj, corners, frac, shape)
    terms = []
    if not isinstance(d_obj, SymbolicZero):
        terms.append(_extract_linear(d_obj, corners, frac, shape))
    d_pos = _position_tangent(d_pos, positions)
    if d_pos is not None:
        d_pos = d_pos.astype(frac.dtype)[:, :, None, None]
        terms.append(d_pos[:, 0] * _extract_impl(obj, corners, frac, shape, "y"))
        terms.append(d_pos[:, 1] * _extract_impl(obj, corners, frac, shape, "x"))
    return out, sum_terms(terms, out)


_extract.defjvp(_extract_jvp, symbolic_zeros=True)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _insert(patches: Array, positions: Array, obj_shape) -> Array:
    padded, _ = _block_shape(obj_shape, patches.shape[-2:])
    corners, frac = _corners(
        positions, obj_shape, patches.shape[-2:], padded, _real_dtype(patches.dtype)
    )
    return _insert_linear(patches, corners, frac, padded)[: obj_shape[0], : obj_shape[1]]


def _insert_jvp(obj_shape, primals, tangents):
    patches, positions = primals
    d_patches, d_pos = tangents
    shape = patches.shape[-2:]
    padded, _ = _block_shape(obj_shape, shape)
    corners, frac = _corners(positions, obj_shape, shape, padded, _real_dtype(patches.dtype))
    out = _insert_linear(patches, corners, frac, padded)
    terms = []
    if not isinstance(d_patches, SymbolicZero):
        terms.append(_insert_linear(d_patches, corners, frac, padded))
    d_pos = _position_tangent(d_pos, positions)
    if d_pos is not None:
        # Σ_j d_j · ∂(insert patch_j)/∂f_j; its transpose pairs the cotangent's derivative
        # patches with the patches (Re Σ a·b: JAX's transpose of a real-to-complex scaling).
        def fun(res, d):
            p, c, f = res
            d = d.astype(f.dtype)[:, :, None, None]
            return _insert_impl(p * d[:, 0], c, f, padded, "y") + _insert_impl(
                p * d[:, 1], c, f, padded, "x"
            )

        def fun_t(res, ct):
            p, c, f = res
            pair = [
                jnp.real(jnp.sum(p * _extract_impl(ct, c, f, shape, axis), axis=(1, 2)))
                for axis in ("y", "x")
            ]
            return jnp.stack(pair, axis=1).astype(positions.dtype)

        terms.append(linear_call(fun, fun_t, (patches, corners, frac), d_pos))
    full = sum_terms(terms, out)
    return out[: obj_shape[0], : obj_shape[1]], full[: obj_shape[0], : obj_shape[1]]


_insert.defjvp(_insert_jvp, symbolic_zeros=True)


def _pad_last(x: Array, axis: int, widths: tuple[int, int]) -> Array:
    pad = [(0, 0)] * x.ndim
    pad[axis] = widths
    return jnp.pad(x, pad)


SUBPIXEL = ("bilinear", "fourier")
"""How sub-pixel scan positions are modelled: ``bilinear`` interpolation of the object patch,
or ``fourier``: the patch at the integer position and the probe moved by the rest."""


def check_subpixel(subpixel: str) -> str:
    """``subpixel`` if it is one of :data:`SUBPIXEL`, else a ValueError naming it."""
    if subpixel not in SUBPIXEL:
        raise ValueError(f"subpixel={subpixel!r}: expected one of {', '.join(SUBPIXEL)}")
    return subpixel


def split_positions(positions: Positions) -> tuple[Array, Array]:
    """Integer parts (⌊y⌋, ⌊x⌋) and the fractions in [0, 1) of positions (n, 2), in pixels."""
    positions = jnp.asarray(positions)
    whole = jnp.floor(positions)
    return whole, positions - whole


def shift_probe(
    probe: Complex[Array, "mode py px"], shifts: Float[Array, "n 2"]
) -> Complex[Array, "n mode py px"]:
    """The probe moved by ``shifts`` (y, x) pixels towards larger indices (Fourier shift).

    P_j(r) = P(r − s_j), periodic in the probe's window: exact for a band-limited probe that
    decays inside its window. Negative shifts move it back (the adjoint of a shift).

    Args:
        probe: probe modes (mode, py, px).
        shifts: (n, 2) shifts in pixels.

    Returns:
        (n, mode, py, px), the dtype of ``probe``.

    Examples:
        >>> import jax.numpy as jnp
        >>> p = jnp.zeros((1, 1, 8), complex).at[0, 0, 2].set(1.0)
        >>> int(jnp.argmax(jnp.abs(shift_probe(p, jnp.array([[0.0, 3.0]]))[0, 0, 0])))
        5
    """
    probe = jnp.asarray(probe)
    shifts = jnp.asarray(shifts, _real_dtype(probe.dtype))
    fy = jnp.fft.fftfreq(probe.shape[-2]).astype(shifts.dtype)
    fx = jnp.fft.fftfreq(probe.shape[-1]).astype(shifts.dtype)
    phase = (
        fy[None, :, None] * shifts[:, 0, None, None] + fx[None, None, :] * shifts[:, 1, None, None]
    )
    ramp = jnp.exp(-2j * jnp.pi * phase).astype(probe.dtype)
    return jnp.fft.ifft2(jnp.fft.fft2(probe)[None] * ramp[:, None]).astype(probe.dtype)


def illumination_map(
    probe_intensity: Float[Array, "py px"], positions: Positions, obj_shape: tuple[int, int]
) -> Float[Array, "H W"]:
    """Total illumination Σ_j |P|²(r − r_j) of the object, for PIE/RAAR normalisation.

    Args:
        probe_intensity: |P|² summed over probe modes, shape ``(py, px)`` (photons or arbitrary
            units per pixel).
        positions: ``(n, 2)`` scan positions ``(y, x)`` in pixels.
        obj_shape: ``(H, W)`` of the object.

    Returns:
        ``(H, W)`` illumination map (same units as ``probe_intensity``).
    """
    n = jnp.shape(positions)[0]
    patches = jnp.broadcast_to(probe_intensity, (n, *jnp.shape(probe_intensity)))
    return insert_patches(patches, positions, obj_shape)


def _shape2(value, name: str) -> tuple[int, int]:
    try:
        a, b = (int(v) for v in value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name}={value!r}: expected two integers (y, x)") from err
    if a < 1 or b < 1:
        raise ValueError(f"{name}={value!r}: expected positive sizes in pixels")
    return a, b


def check_positions(
    positions,
    obj_shape: tuple[int, int],
    patch_shape: tuple[int, int],
    name: str = "positions",
) -> np.ndarray:
    """Host-side validation of scan positions (call once, outside ``jit``).

    Inside ``jit`` a patch that leaves the object is silently clamped to the border; this
    function turns that into a clear error instead.

    Args:
        positions: ``(n, 2)`` scan positions ``(y, x)`` in pixels.
        obj_shape: ``(H, W)`` of the object in pixels.
        patch_shape: ``(py, px)`` of the patch (probe) in pixels.
        name: argument name used in error messages.

    Returns:
        The positions as a float64 NumPy array.

    Raises:
        ValueError: wrong shape, non-finite values, or a patch outside the object.

    Examples:
        >>> check_positions([[0.0, 0.0]], (8, 8), (4, 4)).shape
        (1, 2)
    """
    h, w = _shape2(obj_shape, "obj_shape")
    py, px = _shape2(patch_shape, "patch_shape")
    pos = np.asarray(positions, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 2:
        raise ValueError(f"{name}: expected shape (n, 2) as (y, x) in pixels, got {pos.shape}")
    bad = ~np.isfinite(pos).all(axis=1)
    if bad.any():
        idx = np.flatnonzero(bad)
        raise ValueError(
            f"{name}: {idx.size} position(s) are not finite (NaN/inf), first at index {idx[0]}"
        )
    if py > h or px > w:
        raise ValueError(f"patch_shape={(py, px)} is larger than obj_shape={(h, w)}")
    lo = np.array([py // 2 - h // 2, px // 2 - w // 2], dtype=np.float64)
    hi = np.array([h - py - h // 2 + py // 2, w - px - w // 2 + px // 2], dtype=np.float64)
    outside = ((pos < lo) | (pos > hi)).any(axis=1)
    if outside.any():
        idx = np.flatnonzero(outside)
        need = object_shape_for(pos, (py, px), margin=0)
        raise ValueError(
            f"{name}: {idx.size} patch(es) of shape {(py, px)} leave the object {(h, w)}; "
            f"first at index {idx[0]}, (y, x) = {tuple(pos[idx[0]].tolist())} px. Allowed "
            f"y in [{lo[0]:g}, {hi[0]:g}], x in [{lo[1]:g}, {hi[1]:g}] (position (0, 0) is the "
            f"object centre). An object of shape {need} would hold every patch."
        )
    return pos


def object_shape_for(positions, patch_shape: tuple[int, int], margin: int = 2) -> tuple[int, int]:
    """Smallest even object shape that holds every patch (host side).

    Args:
        positions: ``(n, 2)`` scan positions ``(y, x)`` in pixels (centre convention of
            :func:`extract_patch`).
        patch_shape: ``(py, px)`` in pixels.
        margin: extra pixels kept free on every side.

    Returns:
        ``(H, W)``, both even.

    Examples:
        >>> object_shape_for([[-3.0, 0.0], [3.0, 0.5]], (8, 8), margin=0)
        (14, 10)
    """
    py, px = _shape2(patch_shape, "patch_shape")
    pos = np.asarray(positions, dtype=np.float64).reshape(-1, 2)
    if not np.isfinite(pos).all():
        raise ValueError("positions: expected finite (y, x) values in pixels")
    if margin < 0:
        raise ValueError(f"margin={margin!r}: expected a non-negative number of pixels")
    out = []
    for axis, p in enumerate((py, px)):
        # For even H the corner H/2 - p//2 + y must lie in [margin, H - p - margin].
        half = max(
            p // 2 - pos[:, axis].min() + margin,
            p - p // 2 + pos[:, axis].max() + margin,
        )
        out.append(2 * max(math.ceil(half), 1))
    return out[0], out[1]


__all__ = [
    "check_positions",
    "extract_patch",
    "extract_patches",
    "illumination_map",
    "insert_patches",
    "object_shape_for",
]
