"""Similarity transforms (shift, rotation, scale) of projections for tomographic alignment.

Parameters per projection are ``(shift_y_px, shift_x_px, rotation_rad, log_scale)``. The
transform acts about the array centre, pixel ``(ny // 2, nx // 2)`` (the same centre as the
scan and far-field conventions), and maps content at centred coordinates r = (y, x) to

    r' = exp(log_scale) · R(θ) r + (shift_y, shift_x),   R(θ) = [[cos θ, −sin θ], [sin θ, cos θ]]

in (y, x) order. Hence a positive ``shift_y_px`` moves content to larger row indices, a
positive ``shift_x_px`` to larger column indices, ``log_scale > 0`` magnifies, and
``rotation_rad = π/2`` equals ``np.rot90`` (k = 1: counter-clockwise as displayed with row 0
on top) about the centre pixel. :func:`similarity_transform` resamples by bilinear
interpolation, :func:`cubic_similarity_transform` by Keys' cubic convolution, both with zeros
outside the input; the maps are linear in the image and differentiable in the parameters.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.ndimage import map_coordinates

from diffptycho._typing import Array, Float, Image, Projections, Shaped


def _source_coordinates(
    shape: tuple[int, int], params: Float[Array, " 4"]
) -> tuple[Float[Array, "y x"], Float[Array, "y x"]]:
    """Input coordinates sampled by each output pixel (inverse transform)."""
    ny, nx = shape
    dtype = params.dtype
    shift_y, shift_x, theta, log_scale = params[0], params[1], params[2], params[3]
    cy, cx = ny // 2, nx // 2
    yo = jnp.arange(ny, dtype=dtype)[:, None] - cy - shift_y
    xo = jnp.arange(nx, dtype=dtype)[None, :] - cx - shift_x
    inv = jnp.exp(-log_scale)
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    # r = exp(−s) · R(−θ) (r' − t)
    yi = inv * (cos * yo + sin * xo) + cy
    xi = inv * (-sin * yo + cos * xo) + cx
    return yi, xi


def similarity_transform(image: Image, params: Float[Array, " 4"]) -> Image:
    """Resample an image under a similarity transform about its centre pixel.

    Args:
        image: ``(ny, nx)`` real or complex image (e.g. a projection).
        params: ``(shift_y_px, shift_x_px, rotation_rad, log_scale)``: shifts in pixels
            (positive moves content to larger indices), rotation in rad (π/2 = ``np.rot90``),
            natural log of the magnification (dimensionless).

    Returns:
        The transformed image, same shape and dtype; zeros where the source is outside.

    Examples:
        >>> import jax.numpy as jnp
        >>> img = jnp.zeros((5, 5)).at[2, 2].set(1.0)
        >>> out = similarity_transform(img, jnp.array([1.0, -2.0, 0.0, 0.0]))
        >>> [int(i) for i in jnp.unravel_index(jnp.argmax(out), out.shape)]
        [3, 0]
    """
    image = jnp.asarray(image)
    params = jnp.asarray(params)
    if params.shape != (4,):
        raise ValueError(
            f"params: expected shape (4,) = (shift_y_px, shift_x_px, rotation_rad, log_scale), "
            f"got {params.shape}"
        )
    if not jnp.issubdtype(params.dtype, jnp.floating):
        params = params.astype(jnp.result_type(float))
    if not jnp.issubdtype(image.dtype, jnp.inexact):
        image = image.astype(params.dtype)
    yi, xi = _source_coordinates(image.shape, params)
    real = jnp.finfo(image.dtype).dtype
    out = map_coordinates(image, [yi.astype(real), xi.astype(real)], order=1, mode="constant")
    return out.astype(image.dtype)


def similarity_transform_adjoint(image: Image, params: Float[Array, " 4"]) -> Image:
    """Adjoint (transpose) of :func:`similarity_transform` in the image, for fixed ``params``.

    The interpolation weights are real, so the transpose is also the Hermitian adjoint.

    Args:
        image: ``(ny, nx)`` array on the output grid.
        params: transform parameters, see :func:`similarity_transform`.

    Returns:
        ``(ny, nx)`` array on the input grid.
    """
    image = jnp.asarray(image)
    if not jnp.issubdtype(image.dtype, jnp.inexact):
        image = image.astype(jnp.result_type(float))
    transpose = jax.linear_transpose(
        lambda x: similarity_transform(x, params), jax.ShapeDtypeStruct(image.shape, image.dtype)
    )
    return transpose(image)[0]


def _keys(t: Array) -> Array:
    """Keys' cubic convolution kernel (a = −1/2) at the 4 taps ``t + 1, t, 1 − t, 2 − t``."""
    a = -0.5
    d = jnp.stack([1 + t, t, 1 - t, 2 - t])

    def near(x):
        return (a + 2) * x**3 - (a + 3) * x**2 + 1

    def far(x):
        return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a

    return jnp.stack([far(d[0]), near(d[1]), near(d[2]), far(d[3])])


def cubic_similarity_transform(image: Image, params: Float[Array, " 4"]) -> Image:
    """:func:`~diffptycho.physics.alignment.similarity_transform` with cubic convolution.

    Same geometry and signs; Keys' cubic kernel (a = −1/2) instead of bilinear weights, zeros
    outside. Bilinear resampling blurs most at half-pixel offsets, which biases least-squares
    registration towards whole-pixel shifts and zero rotation; the cubic kernel is nearly
    uniform in blur, so registration uses it. Differentiable in ``params`` (jit, vmap).

    Args:
        image: ``(ny, nx)`` real image.
        params: ``(shift_y_px, shift_x_px, rotation_rad, log_scale)``.

    Returns:
        The transformed ``(ny, nx)`` image.
    """
    ny, nx = image.shape
    dtype = image.dtype
    yi, xi = _source_coordinates(image.shape, jnp.asarray(params).astype(dtype))
    y0, x0 = jnp.floor(yi), jnp.floor(xi)
    wy, wx = _keys(yi - y0), _keys(xi - x0)  # (4, ny, nx)
    pad = 3
    padded = jnp.pad(image, pad)
    iy = jnp.clip(y0.astype(jnp.int32) + pad - 1, 0, ny + 2 * pad - 4)
    ix = jnp.clip(x0.astype(jnp.int32) + pad - 1, 0, nx + 2 * pad - 4)
    # taps beyond the padding read zeros only if the clip did not move them
    inside = (y0 >= -pad + 1) & (y0 <= ny + pad - 3) & (x0 >= -pad + 1) & (x0 <= nx + pad - 3)
    out = jnp.zeros_like(yi)
    for j in range(4):
        for k in range(4):
            out = out + wy[j] * wx[k] * padded[iy + j, ix + k]
    return jnp.where(inside, out, 0).astype(dtype)


def align_projections(
    projections: Projections, params: Float[Array, "angle 4"]
) -> Shaped[Array, "angle y x"]:
    """:func:`similarity_transform` of every projection with its own parameters (``vmap``).

    Args:
        projections: ``(angle, y, x)`` stack.
        params: ``(angle, 4)`` rows of ``(shift_y_px, shift_x_px, rotation_rad, log_scale)``.

    Returns:
        ``(angle, y, x)`` aligned stack.
    """
    return jax.vmap(similarity_transform)(projections, params)


__all__ = [
    "align_projections",
    "cubic_similarity_transform",
    "similarity_transform",
    "similarity_transform_adjoint",
]
