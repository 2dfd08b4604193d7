"""Tests of the parallel-beam projector pair (physics/tomography.py): adjointness, derivatives,
the geometric convention, the Radon transform of a ball, jit/vmap behaviour and validation."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from diffptycho.physics import tomography
from diffptycho.physics.tomography import backproject, project
from tests.conftest import dot_test

DEG = np.pi / 180

ANGLE_SETS = {
    "within_45": np.array([0.0, 10.0, -30.0, 44.9, 45.0]) * DEG,
    "beyond_45": np.array([46.0, 60.0, -75.0, 89.0, 120.0, -135.0]) * DEG,
    "right_angles": np.array([90.0, -90.0, 180.0, 270.0, -180.0]) * DEG,
    "negative_uneven_wrapped": np.array([-80.0, -13.7, 2.2, 77.0, 200.0, -400.0, 731.0]) * DEG,
}
ALL_ANGLES = np.concatenate(list(ANGLE_SETS.values()))
SET_OF_VIEW = np.concatenate([[name] * len(a) for name, a in ANGLE_SETS.items()])

# (n_z, n_y, n_x, n_det): square, non-square with a wide detector, non-square with a narrow one.
SHAPES = [(7, 2, 7, None), (5, 2, 8, 11), (9, 1, 6, 4)]

# Compiled once per shape: eager calls would recompile the inner loops on every call.
project_jit = jax.jit(project, static_argnames="n_det")
backproject_jit = jax.jit(backproject, static_argnums=(2, 3))


def _centred(n):
    return np.arange(n) - (n - 1) / 2


def _complex_normal(rng, shape):
    return rng.standard_normal(shape) + 1j * rng.standard_normal(shape)


def _dense_reference(n_z, n_x, n_det, angles):
    """P[a, t, z, x] = Λ((x_c cos θ + z_c sin θ − t_c)/m)/m, m = max(|cos θ|, |sin θ|)."""
    z_c, x_c, t_c = _centred(n_z), _centred(n_x), _centred(n_det)
    mats = []
    for theta in angles:
        m = max(abs(np.cos(theta)), abs(np.sin(theta)))
        u = x_c[None, :] * np.cos(theta) + z_c[:, None] * np.sin(theta)
        mats.append(np.maximum(0.0, 1.0 - np.abs(u[None] - t_c[:, None, None]) / m) / m)
    return np.stack(mats)


@pytest.mark.parametrize("shape", SHAPES)
def test_dot_test_complex128(rng, shape):
    n_z, n_y, n_x, n_det = shape
    nd = n_x if n_det is None else n_det
    angles = jnp.asarray(ALL_ANGLES)
    x = jnp.asarray(_complex_normal(rng, (n_z, n_y, n_x)))
    y = jnp.asarray(_complex_normal(rng, (angles.size, n_y, nd)))
    px = project_jit(x, angles, n_det=n_det)
    errors = {}
    for name in [*ANGLE_SETS, "all"]:
        # y vanishes outside one angle set: same shapes, so no recompilation per set.
        keep = (SET_OF_VIEW == name) | (name == "all")
        y_set = jnp.where(jnp.asarray(keep)[:, None, None], y, 0)
        errors[name] = dot_test(
            lambda _: px, lambda ys: backproject_jit(ys, angles, n_z, n_x), x, y_set
        )
    assert max(errors.values()) <= 1e-10, errors


@pytest.mark.parametrize("shape", SHAPES)
def test_matches_joseph_kernel(rng, shape):
    n_z, n_y, n_x, n_det = shape
    nd = n_x if n_det is None else n_det
    dense = _dense_reference(n_z, n_x, nd, ALL_ANGLES)
    vol = _complex_normal(rng, (n_z, n_y, n_x))
    proj = _complex_normal(rng, (ALL_ANGLES.size, n_y, nd))
    angles = jnp.asarray(ALL_ANGLES)
    out = project_jit(jnp.asarray(vol), angles, n_det=n_det)
    np.testing.assert_allclose(out, np.einsum("atzx,zyx->ayt", dense, vol), rtol=0, atol=1e-12)
    back = backproject_jit(jnp.asarray(proj), angles, n_z, n_x)
    np.testing.assert_allclose(back, np.einsum("atzx,ayt->zyx", dense, proj), rtol=0, atol=1e-12)


@pytest.fixture(scope="module")
def loop_case():
    """A small non-square case and a runner that re-traces, so it reads the current gather
    budget: projections and backprojections, with their jvps (data and angles) if asked."""
    rng = np.random.default_rng(7)
    n_z, n_y, n_x, n_det = 9, 2, 6, 7
    angles = jnp.asarray(ALL_ANGLES)
    vol = jnp.asarray(_complex_normal(rng, (n_z, n_y, n_x)))
    proj = jnp.asarray(_complex_normal(rng, (angles.size, n_y, n_det)))
    d_angles = jnp.asarray(rng.standard_normal(angles.size))

    def fwd(v, a):
        return project(v, a, n_det=n_det)

    def adj(p, a):
        return backproject(p, a, n_z, n_x)

    def run(tangents):
        if not tangents:
            return jax.jit(lambda: (fwd(vol, angles), adj(proj, angles)))()
        return jax.jit(
            lambda: (
                *jax.jvp(fwd, (vol, angles), (vol, d_angles)),
                *jax.jvp(adj, (proj, angles), (proj, d_angles)),
            )
        )()

    return run, run(tangents=True)  # (P v, dP, Pᵀ p, dPᵀ) with the default budget


@pytest.mark.parametrize("budget", [512, 18000])
def test_memory_bounded_loops_match_single_pass(loop_case, monkeypatch, budget):
    # Tiny gather budgets force the large-problem loops. 512 B: every sum is chunked with a scan
    # (padded steps and views), the path of 128³ volumes, checked with derivatives. 18000 B:
    # maps over views and z-rows in batches of 4 and 2 with remainders, values only.
    run, (p, dp, b, db) = loop_case
    monkeypatch.setattr(tomography, "_GATHER_BYTES", budget)
    expected = (p, dp, b, db) if budget == 512 else (p, b)
    for got, want in zip(run(tangents=budget == 512), expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, pytest.param(np.complex128, marks=pytest.mark.slow)])
def test_check_grads_data_and_angles(rng, dtype):
    # Directional derivatives along random (volume, projections, angles) directions. The kernel
    # is piecewise linear in θ: generic angles and a small step stay off its kinks.
    angles = jnp.asarray([0.13, 0.97, -2.71, 4.07])
    vol = jnp.asarray(rng.standard_normal((5, 2, 6)).astype(dtype))
    proj = jnp.asarray(rng.standard_normal((4, 2, 7)).astype(dtype))

    @jax.jit
    def both(v, p, a):  # one compilation checks the two operators
        return project(v, a, n_det=7), backproject(p, a, 5, 6)

    check_grads(both, (vol, proj, angles), order=1, modes=("fwd", "rev"), eps=1e-6)


@pytest.mark.parametrize("theta_deg", [0.0, 17.0, 30.0, 60.0, 90.0, 135.0, -100.0, 180.0, 270.0])
def test_point_voxel_lands_at_rotated_coordinate(theta_deg):
    n, z0, x0 = 16, 3, 11
    theta = theta_deg * DEG
    vol = jnp.zeros((n, 1, n)).at[z0, 0, x0].set(1.0)
    p = np.asarray(project_jit(vol, jnp.asarray([theta])))[0, 0]
    t_expected = _centred(n)[x0] * np.cos(theta) + _centred(n)[z0] * np.sin(theta)
    t_peak = _centred(n)[int(np.argmax(p))]
    assert abs(t_peak - t_expected) <= 0.5 + 1e-9
    centroid = float(np.sum(_centred(n) * p) / np.sum(p))
    if theta_deg % 90 == 0:
        # Axis-aligned rays: plain linear interpolation, exact centroid and unit path length.
        assert centroid == pytest.approx(t_expected, abs=1e-12)
        assert p.sum() == pytest.approx(1.0, abs=1e-12)
    else:
        assert abs(centroid - t_expected) < 0.5


def test_opposite_views_mirror(rng):
    vol = jnp.asarray(rng.standard_normal((9, 2, 9)))
    theta = np.array([0.2, 0.9, -1.3, 2.4])
    both = np.asarray(project_jit(vol, jnp.asarray(np.concatenate([theta, theta + np.pi]))))
    p, q = both[:4], both[4:]
    np.testing.assert_allclose(q, p[..., ::-1], atol=1e-12)


def _ball(n, radius, supersample=4):
    """Partial-volume ball of `radius` voxels, centred (occupancy by sub-voxel sampling)."""
    sub = (np.arange(supersample) + 0.5) / supersample - 0.5
    c = (_centred(n)[:, None] + sub[None, :]).ravel()
    inside = (c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2) <= radius**2
    return inside.reshape(n, supersample, n, supersample, n, supersample).mean(axis=(1, 3, 5))


def test_ball_projection_matches_chord_lengths():
    n, radius = 32, 11.0
    vol = jnp.asarray(_ball(n, radius))
    angles = np.array([30.0, 60.0, 90.0, 135.0]) * DEG
    p = np.asarray(project_jit(vol, jnp.asarray(angles)))
    r2 = _centred(n)[:, None] ** 2 + _centred(n)[None, :] ** 2  # (y, t)
    chord = 2 * np.sqrt(np.clip(radius**2 - r2, 0, None))
    interior = r2 <= (0.8 * radius) ** 2
    for view in p:
        err = np.abs(view - chord)[interior]
        # Errors come from partial-volume voxelisation and the ≤ 1-voxel Joseph blur of a chord
        # with small curvature inside 0.8 R. Measured (fraction of the diameter): mean 0.1–0.5 %,
        # max 0.3–1.4 %, worst at 135° where the kernel is narrowest; 2x margin on both.
        assert err.mean() <= 0.01 * 2 * radius
        assert err.max() <= 0.03 * 2 * radius


def test_jit_with_traced_angles_does_not_retrace(rng):
    class Views(eqx.Module):
        angles: jax.Array

    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def forward(views, vol):
        return project(vol, views.angles)

    vol = jnp.asarray(rng.standard_normal((6, 2, 6)))
    first = jnp.asarray([0.1, 1.0, 2.5])
    second = jnp.asarray([-0.4, 0.7, 3.9])
    out1 = forward(Views(first), vol)
    out2 = forward(Views(second), vol)  # new values, same shape: must reuse the trace
    both = project_jit(vol, jnp.concatenate([first, second]))
    np.testing.assert_allclose(out1, both[:3], atol=1e-12)
    np.testing.assert_allclose(out2, both[3:], atol=1e-12)


def test_vmap_composes_with_derivatives(rng):
    angles_np = np.array([0.3, 1.2, -2.0])
    angles = jnp.asarray(angles_np)
    vols = rng.standard_normal((3, 5, 2, 5))  # e.g. one volume per energy

    def loss(v):
        return jnp.sum(project(v, angles) ** 2)

    @jax.jit
    def grads(vs):
        return jax.vmap(jax.grad(loss))(vs), jax.grad(lambda v: jnp.sum(jax.vmap(loss)(v)))(vs)

    # d/dv Σ|Pv|² = 2 PᵀP v for each energy.
    dense = _dense_reference(5, 5, 5, angles_np)
    expected = 2 * np.einsum("atzx,atZX,eZyX->ezyx", dense, dense, vols, optimize=True)
    for g in grads(jnp.asarray(vols)):
        np.testing.assert_allclose(g, expected, atol=1e-12)


def test_transposes_are_gathers_not_scatters(rng):
    # Autodiff of a gather is a scatter-add, 5x slower than the forward on CPU (DESIGN.md): the
    # reverse pass and jax.linear_transpose must run the hand-written gathers instead.
    angles_np = np.array([0.3, 1.0, 2.2])
    angles = jnp.asarray(angles_np)
    vol = jnp.asarray(rng.standard_normal((5, 2, 5)))
    proj = jnp.asarray(rng.standard_normal((3, 2, 5)))
    to_vol = jax.linear_transpose(lambda p: project(p, angles), vol)
    to_proj = jax.linear_transpose(lambda v: backproject(v, angles, 5, 5), proj)
    dense = _dense_reference(5, 5, 5, angles_np)
    back = np.einsum("atzx,ayt->zyx", dense, proj)
    np.testing.assert_allclose(jax.jit(to_vol)(proj)[0], back, atol=1e-12)
    forward = np.einsum("atzx,zyx->ayt", dense, vol)
    np.testing.assert_allclose(jax.jit(to_proj)(vol)[0], forward, atol=1e-12)
    grads = jax.grad(
        lambda v, p, a: jnp.sum(project(v, a) ** 2) + jnp.sum(backproject(p, a, 5, 5) ** 2),
        argnums=(0, 1, 2),
    )
    for jaxpr in (
        jax.make_jaxpr(grads)(vol, proj, angles),
        jax.make_jaxpr(to_vol)(proj),
        jax.make_jaxpr(to_proj)(vol),
    ):
        assert "scatter" not in str(jaxpr)


def test_dtype_preserved_float32():
    vol = jnp.ones((4, 2, 4), jnp.float32)
    angles = jnp.asarray([0.0, 1.0], jnp.float32)
    p = project_jit(vol, angles)
    assert p.dtype == jnp.float32 and p.shape == (2, 2, 4)
    assert backproject_jit(p, angles, 4, 4).dtype == jnp.float32


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="volume"):
        project(jnp.ones((4, 4)), jnp.zeros(2))
    with pytest.raises(ValueError, match="angles_rad"):
        project(jnp.ones((4, 2, 4)), jnp.zeros((2, 1)))
    with pytest.raises(ValueError, match="n_det"):
        project(jnp.ones((4, 2, 4)), jnp.zeros(2), n_det=0)
    with pytest.raises(ValueError, match="projections"):
        backproject(jnp.ones((2, 4)), jnp.zeros(2), 4, 4)
    with pytest.raises(ValueError, match="angles_rad"):
        backproject(jnp.ones((3, 2, 4)), jnp.zeros(2), 4, 4)
    with pytest.raises(ValueError, match="n_x"):
        backproject(jnp.ones((2, 2, 4)), jnp.zeros(2), 4, -1)
