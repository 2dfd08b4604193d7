"""Registration primitives against known transforms of smooth analytic images."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffptycho.physics.alignment import similarity_transform
from diffptycho.recon.align import (
    cubic_similarity_transform,
    register_similarity,
    register_similarity_stack,
    register_translation,
    resample_similarity,
)


def _blobs(params, shape=(48, 48), seed=1):
    """Gaussian blobs evaluated analytically after a similarity transform (no resampling)."""
    ny, nx = shape
    y, x = np.mgrid[:ny, :nx].astype(float)
    sy, sx, th, s = params
    yo, xo = y - ny // 2 - sy, x - nx // 2 - sx
    yi = np.exp(-s) * (np.cos(th) * yo + np.sin(th) * xo)
    xi = np.exp(-s) * (-np.sin(th) * yo + np.cos(th) * xo)
    rng = np.random.default_rng(seed)
    img = np.zeros(shape)
    for _ in range(8):
        py, px = rng.uniform(-12, 12, 2)
        w = rng.uniform(2, 4)
        img += rng.uniform(0.5, 1) * np.exp(-((yi - py) ** 2 + (xi - px) ** 2) / (2 * w**2))
    return img


@pytest.mark.parametrize("shift", [(0.37, -1.73), (3.52, 2.25), (-4.1, 0.06)])
def test_translation_subpixel(shift):
    ref = _blobs((0, 0, 0, 0))
    mov = _blobs((*shift, 0, 0))
    np.testing.assert_allclose(register_translation(ref, mov), shift, atol=0.02)


def test_translation_weights_and_1d():
    ref = _blobs((0, 0, 0, 0))
    mov = _blobs((1.25, -0.5, 0, 0))
    w = np.zeros_like(ref)
    w[4:-4, 4:-4] = 1
    np.testing.assert_allclose(register_translation(ref, mov, weights=w), (1.25, -0.5), atol=0.05)
    t = np.arange(64.0)
    np.testing.assert_allclose(
        register_translation(np.exp(-((t - 30) ** 2) / 18), np.exp(-((t - 32.4) ** 2) / 18)),
        [2.4],
        atol=0.02,
    )


@pytest.mark.parametrize(
    "true",
    [(0.37, -1.73, np.deg2rad(0.8), 0.008), (1.3, 2.1, np.deg2rad(-1.0), -0.01)],
)
def test_similarity_small(true):
    q = register_similarity(_blobs((0, 0, 0, 0)), _blobs(true))
    np.testing.assert_allclose(q[:2], true[:2], atol=0.02)
    assert abs(np.rad2deg(q[2] - true[2])) < 0.02
    assert abs(q[3] - true[3]) < 5e-4


def test_similarity_large_rotation_with_grid():
    true = (0.5, -1.0, np.deg2rad(25), 0.08)
    q = register_similarity(_blobs((0, 0, 0, 0)), _blobs(true), coarse="grid")
    assert np.all(np.abs(q - np.asarray(true)) < [0.02, 0.02, 3e-4, 5e-4])


def test_stack_is_vmapped_and_matches_single(rng):
    ref = _blobs((0, 0, 0, 0))
    truths = np.array([[0.4, -0.3, 0.01, 0.005], [-1.1, 0.8, -0.015, -0.004]])
    movs = np.stack([_blobs(t) for t in truths])
    q, cost = register_similarity_stack(np.stack([ref, ref]), movs, np.zeros((2, 4)))
    assert np.all(np.abs(q - truths) < [0.02, 0.02, 3e-4, 5e-4])
    assert cost.shape == (2,)


def test_cubic_transform_matches_spline_and_bilinear_geometry():
    img = _blobs((0, 0, 0, 0), shape=(40, 36))
    q = np.array([0.7, -1.2, 0.2, 0.05])
    spline = resample_similarity(img, q)
    cubic = np.asarray(cubic_similarity_transform(jnp.asarray(img), jnp.asarray(q)))
    linear = np.asarray(similarity_transform(jnp.asarray(img), jnp.asarray(q)))
    inner = (slice(6, -6), slice(6, -6))  # the kernels treat the zero border differently
    assert np.abs(cubic - spline)[inner].max() < 5e-3 * img.max()
    assert np.abs(linear - spline)[inner].max() < 5e-2 * img.max()  # same geometry
    zero = np.asarray(cubic_similarity_transform(jnp.asarray(img), jnp.zeros(4)))
    np.testing.assert_allclose(zero, img, atol=1e-12)
    grad = jax.grad(lambda p: jnp.sum(cubic_similarity_transform(jnp.asarray(img), p) ** 2))
    assert np.all(np.isfinite(np.asarray(grad(jnp.asarray(q)))))


@pytest.mark.parametrize(
    ("reference", "moving", "match"),
    [
        (np.zeros((8, 8)), np.ones((8, 8)), "reference: the image is constant"),
        (np.full((8, 8), np.nan), np.ones((8, 8)), "reference: 64 non-finite"),
        (np.eye(8), np.eye(9), "moving: shape"),
        (np.eye(8), np.ones((8, 8)), "moving: the image is constant"),
        (np.eye(8), np.eye(8)[0], "moving: expected 2-D"),
    ],
)
def test_degenerate_images_raise(reference, moving, match):
    with pytest.raises(ValueError, match=match):
        register_similarity(reference, moving)
    if "2-D" not in match:
        with pytest.raises(ValueError, match=match.split(":")[0]):
            register_translation(reference, moving)
