"""Sub-pixel patch extraction, its adjoint, illumination and position validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from diffptycho.physics.scan import (
    check_positions,
    extract_patch,
    extract_patches,
    illumination_map,
    insert_patches,
    object_shape_for,
)
from tests.conftest import dot_test

OBJ_SHAPE = (40, 36)
PATCH = (12, 10)


def _obj(rng, shape=OBJ_SHAPE):
    return jnp.asarray(rng.normal(size=shape) + 1j * rng.normal(size=shape))


@pytest.mark.parametrize("position", [(0, 0), (-14, -13), (14, 13), (3, -7)])
def test_integer_positions_equal_slicing(rng, position):
    obj = _obj(rng)
    (h, w), (py, px) = OBJ_SHAPE, PATCH
    y0 = h // 2 + position[0] - py // 2
    x0 = w // 2 + position[1] - px // 2
    expected = np.asarray(obj)[y0 : y0 + py, x0 : x0 + px]
    got = extract_patch(obj, jnp.asarray(position, float), PATCH)
    np.testing.assert_array_equal(got, expected)


def test_position_zero_centres_patch_on_object_centre(rng):
    obj = jnp.zeros(OBJ_SHAPE).at[OBJ_SHAPE[0] // 2 + 2, OBJ_SHAPE[1] // 2 - 3].set(1.0)
    patch = extract_patch(obj, jnp.array([2.0, -3.0]), PATCH)
    assert patch[PATCH[0] // 2, PATCH[1] // 2] == 1.0
    assert float(jnp.sum(patch)) == 1.0


def test_patch_as_large_as_object(rng):
    obj = _obj(rng, PATCH)
    np.testing.assert_array_equal(extract_patch(obj, jnp.zeros(2), PATCH), obj)


@pytest.mark.parametrize("axis", [0, 1])
def test_half_pixel_shift_is_mean_of_neighbours(rng, axis):
    obj = _obj(rng)
    pos = np.array([1.0, -2.0])
    step = np.zeros(2)
    step[axis] = 1.0
    half = extract_patch(obj, jnp.asarray(pos + 0.5 * step), PATCH)
    a = extract_patch(obj, jnp.asarray(pos), PATCH)
    b = extract_patch(obj, jnp.asarray(pos + step), PATCH)
    np.testing.assert_allclose(half, 0.5 * (a + b), atol=1e-14)


def test_bilinear_weights_for_general_fraction(rng):
    obj = _obj(rng)
    fy, fx = 0.3, 0.8
    corners = [
        extract_patch(obj, jnp.array([dy, dx], float), PATCH) for dy in (0, 1) for dx in (0, 1)
    ]
    expected = (
        (1 - fy) * (1 - fx) * corners[0]
        + (1 - fy) * fx * corners[1]
        + fy * (1 - fx) * corners[2]
        + fy * fx * corners[3]
    )
    np.testing.assert_allclose(extract_patch(obj, jnp.array([fy, fx]), PATCH), expected, atol=1e-14)


def _positions(rng, n=7):
    # Away from integers (check_grads uses finite differences) and inside the object.
    return jnp.asarray(np.round(rng.uniform(-12, 12, size=(n, 2))) + rng.uniform(0.2, 0.8, (n, 2)))


def test_extract_insert_dot_test(rng):
    pos = _positions(rng)
    check_positions(pos, OBJ_SHAPE, PATCH)
    obj = _obj(rng)
    patches = _obj(rng, (pos.shape[0], *PATCH))
    err = dot_test(
        lambda o: extract_patches(o, pos, PATCH),
        lambda p: insert_patches(p, pos, OBJ_SHAPE),
        obj,
        patches,
    )
    assert err < 1e-10


def test_insert_equals_autodiff_transpose(rng):
    pos = jnp.concatenate([_positions(rng), jnp.asarray([[14.0, 13.0], [-14.0, -13.0]])])
    patches = _obj(rng, (pos.shape[0], *PATCH))
    transpose = jax.linear_transpose(
        lambda o: extract_patches(o, pos, PATCH), jnp.zeros(OBJ_SHAPE, complex)
    )
    np.testing.assert_allclose(
        insert_patches(patches, pos, OBJ_SHAPE), transpose(patches)[0], atol=1e-13
    )


def test_illumination_map_sums_shifted_intensity(rng):
    probe_i = jnp.asarray(rng.uniform(size=PATCH))
    pos = jnp.asarray([[0.0, 0.0], [3.0, -2.0]])
    expected = np.zeros(OBJ_SHAPE)
    for y, x in np.asarray(pos, int):
        y0, x0 = OBJ_SHAPE[0] // 2 + y - PATCH[0] // 2, OBJ_SHAPE[1] // 2 + x - PATCH[1] // 2
        expected[y0 : y0 + PATCH[0], x0 : x0 + PATCH[1]] += np.asarray(probe_i)
    np.testing.assert_allclose(illumination_map(probe_i, pos, OBJ_SHAPE), expected, atol=1e-14)
    # Sub-pixel shifts redistribute but conserve the total dose.
    sub = illumination_map(probe_i, _positions(rng), OBJ_SHAPE)
    np.testing.assert_allclose(jnp.sum(sub), 7 * jnp.sum(probe_i), rtol=1e-12)


def test_extract_grads_object_and_positions(rng):
    pos = _positions(rng, n=3)
    obj = _obj(rng)
    check_grads(
        lambda o, p: extract_patches(o, p, PATCH), (obj, pos), order=1, modes=("fwd", "rev")
    )


def test_insert_grads_patches_and_positions(rng):
    pos = _positions(rng, n=3)
    patches = _obj(rng, (3, *PATCH))
    check_grads(
        lambda q, p: insert_patches(q, p, OBJ_SHAPE), (patches, pos), order=1, modes=("fwd", "rev")
    )


def test_jit_and_float32(rng):
    obj = _obj(rng).astype(jnp.complex64)
    pos = _positions(rng).astype(jnp.float32)
    f = jax.jit(extract_patches, static_argnums=2)
    out = f(obj, pos, PATCH)
    assert out.dtype == jnp.complex64
    np.testing.assert_allclose(out, extract_patches(obj.astype(complex), pos, PATCH), atol=1e-5)
    assert insert_patches(out, pos, OBJ_SHAPE).dtype == jnp.complex64


def test_check_positions_accepts_extremes():
    (h, w), (py, px) = OBJ_SHAPE, PATCH
    lo = (py // 2 - h // 2, px // 2 - w // 2)
    hi = (h - py - h // 2 + py // 2, w - px - w // 2 + px // 2)
    pos = check_positions([lo, hi, (0.5, -0.5)], OBJ_SHAPE, PATCH)
    assert pos.dtype == np.float64
    # At the extremes the patch touches the object border and extraction is exact slicing.
    obj = jnp.arange(h * w, dtype=float).reshape(h, w)
    np.testing.assert_array_equal(
        extract_patch(obj, jnp.asarray(hi, float), PATCH), obj[-py:, -px:]
    )
    np.testing.assert_array_equal(extract_patch(obj, jnp.asarray(lo, float), PATCH), obj[:py, :px])


@pytest.mark.parametrize(
    ("positions", "match"),
    [
        (np.zeros((3, 3)), r"positions: expected shape \(n, 2\)"),
        (np.zeros(2), r"expected shape \(n, 2\)"),
        ([[0.0, np.nan]], "not finite"),
        ([[0.0, 0.0], [14.5, 0.0]], r"leave the object .* first at index 1"),
        ([[-14.01, 0.0]], "leave the object"),
    ],
)
def test_check_positions_errors(positions, match):
    with pytest.raises(ValueError, match=match):
        check_positions(positions, OBJ_SHAPE, PATCH)


def test_check_positions_bad_shapes():
    with pytest.raises(ValueError, match="larger than obj_shape"):
        check_positions([[0.0, 0.0]], (8, 8), (10, 4))
    with pytest.raises(ValueError, match="patch_shape"):
        check_positions([[0.0, 0.0]], (8, 8), (0, 4))
    with pytest.raises(ValueError, match="scan_pos"):
        check_positions([[0.0, 0.0, 0.0]], (8, 8), (4, 4), name="scan_pos")


def test_object_shape_for_is_minimal_and_even(rng):
    pos = rng.uniform(-20, 15, size=(30, 2))
    for margin in (0, 2):
        h, w = object_shape_for(pos, PATCH, margin=margin)
        assert h % 2 == 0 and w % 2 == 0
        check_positions(pos, (h - 2 * margin, w - 2 * margin), PATCH)
        with pytest.raises(ValueError):
            check_positions(pos, (h - 2 * margin - 2, w - 2 * margin), PATCH)
        with pytest.raises(ValueError):
            check_positions(pos, (h - 2 * margin, w - 2 * margin - 2), PATCH)


@pytest.mark.parametrize("d", ["", "y", "x"])
def test_cpu_loop_and_accelerator_scatter_agree(rng, d):
    # insert_patches runs the loop on the CPU and the scatter elsewhere: both must agree.
    from diffptycho.physics import scan

    pos = jnp.concatenate([_positions(rng), jnp.asarray([[14.0, 13.0], [-14.0, -13.0]])])
    patches = _obj(rng, (pos.shape[0], *PATCH))
    padded, _ = scan._block_shape(OBJ_SHAPE, PATCH)
    corners, frac = scan._corners(pos, OBJ_SHAPE, PATCH, padded, jnp.float64)
    loop = scan._insert_loop(patches, corners, frac, padded, d)
    scatter = scan._insert_scatter(patches, corners, frac, padded, d)
    np.testing.assert_allclose(loop, scatter, atol=1e-13)
