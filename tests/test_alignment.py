"""Similarity transforms: conventions against NumPy, adjoint, gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from diffptycho.physics.alignment import (
    align_projections,
    similarity_transform,
    similarity_transform_adjoint,
)
from tests.conftest import dot_test


def _image(rng, shape=(24, 30), dtype=complex):
    img = rng.normal(size=shape) + (1j * rng.normal(size=shape) if dtype is complex else 0)
    return jnp.asarray(img)


def _smooth_image(shape=(20, 22)):
    """Smooth blob that vanishes at the borders (finite differences see no interpolation kinks)."""
    y, x = np.indices(shape)
    y, x = (y - shape[0] / 2) / 4.0, (x - shape[1] / 2) / 5.0
    return jnp.asarray(np.exp(-(y**2) - x**2) * (1 + 0.3 * x) * np.exp(1j * 0.4 * y))


@pytest.mark.parametrize("dtype", [float, complex])
def test_identity(rng, dtype):
    img = _image(rng, dtype=dtype)
    out = similarity_transform(img, jnp.zeros(4))
    assert out.dtype == img.dtype
    np.testing.assert_array_equal(out, img)


@pytest.mark.parametrize("shift", [(1, 0), (0, 1), (-3, 2), (2, -5)])
def test_integer_shift_equals_roll(rng, shift):
    img = _image(rng)
    out = np.asarray(similarity_transform(img, jnp.asarray([*shift, 0.0, 0.0], float)))
    rolled = np.roll(np.asarray(img), shift, axis=(0, 1))
    # Positive shift_y moves content to larger row indices; vacated pixels are zero.
    np.testing.assert_allclose(out[5:-5, 5:-5], rolled[5:-5, 5:-5], atol=1e-12)
    if shift[0] > 0:
        np.testing.assert_array_equal(out[: shift[0]], 0)


def test_half_pixel_shift_is_mean_of_neighbours(rng):
    img = _image(rng)
    out = np.asarray(similarity_transform(img, jnp.array([0.5, 0.0, 0.0, 0.0])))
    a = np.asarray(img)
    np.testing.assert_allclose(out[1:], 0.5 * (a[1:] + a[:-1]), atol=1e-12)


@pytest.mark.parametrize("k", [1, 2, 3, -1])
def test_rotation_by_quarter_turns_equals_rot90(rng, k):
    n = 21  # odd: the centre pixel n // 2 is the geometric centre that np.rot90 uses
    img = _image(rng, (n, n))
    out = np.asarray(similarity_transform(img, jnp.array([0.0, 0.0, k * np.pi / 2, 0.0])))
    np.testing.assert_allclose(
        out[1:-1, 1:-1], np.rot90(np.asarray(img), k)[1:-1, 1:-1], atol=1e-12
    )


def test_rotation_centre_on_even_grid():
    # Content at (c, c + 3) rotated by +90° goes to (c − 3, c) about c = n // 2, also for even n.
    n = 16
    c = n // 2
    img = jnp.zeros((n, n)).at[c, c + 3].set(1.0)
    out = similarity_transform(img, jnp.array([0.0, 0.0, np.pi / 2, 0.0]))
    assert abs(float(out[c - 3, c]) - 1.0) < 1e-12
    assert abs(float(jnp.sum(out)) - 1.0) < 1e-12


def test_scale_magnifies_about_centre():
    n = 33
    c = n // 2
    img = jnp.zeros((n, n)).at[c + 4, c - 2].set(1.0)
    out = similarity_transform(img, jnp.array([0.0, 0.0, 0.0, np.log(2.0)]))
    # A point at offset (4, −2) moves to (8, −4); bilinear spreading of a delta halves each axis.
    assert abs(float(out[c + 8, c - 4]) - 1.0) < 1e-12
    assert float(out[c, c]) == 0.0


def test_transform_then_inverse_params(rng):
    img = _smooth_image((40, 40))
    p = jnp.array([1.3, -0.7, 0.2, 0.1])
    fwd = similarity_transform(img, p)
    # Inverse of r' = sR r + t is r = s⁻¹R(−θ)(r' − t): parameters (−s⁻¹R(−θ)t, −θ, −log s).
    s, th = np.exp(0.1), 0.2
    rot_inv = np.array([[np.cos(th), np.sin(th)], [-np.sin(th), np.cos(th)]])
    t_inv = -(rot_inv @ np.array([1.3, -0.7])) / s
    back = similarity_transform(fwd, jnp.array([*t_inv, -th, -0.1]))
    # Two bilinear resamplings of a smooth image: agreement to interpolation accuracy.
    assert float(jnp.max(jnp.abs(back - img)) / jnp.max(jnp.abs(img))) < 0.05


def test_dot_test(rng):
    p = jnp.array([0.7, -1.4, 0.3, 0.05])
    x, y = _image(rng), _image(rng)
    err = dot_test(
        lambda u: similarity_transform(u, p), lambda v: similarity_transform_adjoint(v, p), x, y
    )
    assert err < 1e-10


def test_align_projections_is_vmap(rng):
    stack = jnp.stack([_image(rng) for _ in range(3)])
    params = jnp.asarray(rng.normal(scale=[1.0, 1.0, 0.1, 0.05], size=(3, 4)))
    out = jax.jit(align_projections)(stack, params)
    for a in range(3):
        np.testing.assert_allclose(out[a], similarity_transform(stack[a], params[a]), atol=1e-12)


def test_grads_params_and_image():
    img = _smooth_image()
    p = jnp.array([0.37, -0.61, 0.13, 0.04])
    check_grads(similarity_transform, (img, p), order=1, modes=("fwd", "rev"), eps=1e-6)
    # Between samples out[i] = 0.75·img[i] + 0.25·img[i − 1] at shift_y = 0.25, so
    # ∂out/∂shift_y = img[i − 1] − img[i]: content moves towards larger y.
    d_shift = jax.jacfwd(lambda t: similarity_transform(img, jnp.array([t, 0.0, 0.0, 0.0])))(0.25)
    np.testing.assert_allclose(d_shift[1:], img[:-1] - img[1:], atol=1e-12)
