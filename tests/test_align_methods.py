"""Tilt-series alignment: rough, reprojection and joint recover known transforms (tiny series)."""

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from diffptycho.physics.alignment import align_projections
from diffptycho.physics.tomography import project
from diffptycho.recon.align import (
    bin_projections,
    fix_gauge,
    gauge_transform,
    joint_align,
    match_gauge,
    reconstruct_dealigned,
    reprojection_align,
    rough_align,
)
from diffptycho.recon.align.reprojection import anderson_step


def _phantom(n, seed=0):
    rng = np.random.default_rng(seed)
    z, y, x = (np.mgrid[:n, :n, :n] - (n - 1) / 2) / n
    vol = np.zeros((n, n, n))
    for _ in range(8):
        c = rng.uniform(-0.18, 0.18, 3)
        r = rng.uniform(0.06, 0.15, 3)
        vol += rng.uniform(0.3, 1) * (
            ((z - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((x - c[2]) / r[2]) ** 2 <= 1
        )
    return vol


def _series(n=24, n_angles=20, sigma_px=2.0, noise=0.01, seed=0):
    """Shift-only series made on a 2× finer grid (cubic spline shifts there), then binned."""
    rng = np.random.default_rng(seed)
    angles = np.deg2rad(np.linspace(-80, 77, n_angles))
    fine = np.asarray(project(jnp.asarray(_phantom(2 * n, seed)), jnp.asarray(angles))) / 2
    truth = np.zeros((n_angles, 4))
    truth[:, :2] = rng.normal(0, sigma_px, (n_angles, 2))
    # fine pixel i sits at binned (i − 1/2)/2, both grids transform about their centre pixel
    moved = np.stack(
        [ndimage.shift(im, 2 * t, order=3) for im, t in zip(fine, truth[:, :2], strict=True)]
    )
    meas = bin_projections(moved, 2)
    meas = meas + rng.normal(0, noise * meas.max(), meas.shape)
    return angles, truth, meas


def _shift_rms(params, truth, angles, shape):
    g = match_gauge(params, angles, shape, truth).params
    return float(np.sqrt(np.mean((g[:, :2] - truth[:, :2]) ** 2)))


@pytest.fixture(scope="module")
def series():
    return _series()


def test_gauge_transform_gives_identical_projections(rng):
    vol = np.zeros((24, 24, 24))
    vol[4:20, 4:20, 4:20] = _phantom(16)
    vol = jnp.asarray(vol)
    # views where the translation moves the projection by whole pixels: no interpolation
    angles = jnp.asarray([0.0, np.pi / 2, -np.pi / 2, np.pi])
    params = np.zeros((4, 4))
    params[:, :2] = rng.normal(0, 1, (4, 2))
    params[:, 2] = rng.uniform(-0.02, 0.02, 4)
    params[:, 3] = rng.uniform(-0.01, 0.01, 4)
    d = np.array([2.0, -1.0, 3.0])
    moved = jnp.roll(vol, d.astype(int), axis=(0, 1, 2))
    lhs = align_projections(project(moved, angles), jnp.asarray(params))
    new = gauge_transform(params, np.asarray(angles), (24, 24), d)
    rhs = align_projections(project(vol, angles), jnp.asarray(new))
    assert float(jnp.abs(lhs - rhs).max()) < 1e-9 * float(jnp.abs(lhs).max())


def test_fix_gauge_removes_volume_translation():
    angles = np.linspace(-1.4, 1.3, 30)
    p = np.zeros((30, 4))
    p[:, 0] = 1.7
    p[:, 1] = -0.8 + 2 * np.cos(angles) - 3 * np.sin(angles)
    p[:, 3] = 0.004
    g = fix_gauge(p, angles, (32, 32))
    # undoing the mean magnification e^0.004 about the projector centre (n − 1)/2, which is
    # half a pixel before the transform centre n // 2, moves the content by 0.5 · (e^0.004 − 1)
    offset = -0.8 - 0.5 * np.expm1(0.004)
    assert g.axis_offset_px == pytest.approx(offset, abs=1e-9)
    np.testing.assert_allclose(g.params[:, :2], np.tile([0.0, offset], (30, 1)), atol=1e-9)
    assert abs(g.params[:, 3].mean()) < 1e-12


def test_rough_alignment_reaches_a_fraction_of_a_pixel(series):
    angles, truth, meas = series
    rough = rough_align(meas, angles)
    # measured 0.037 px and 0.21 px when written; fail at 1.6× worse
    assert _shift_rms(rough.params, truth, angles, meas.shape[1:]) < 0.06
    chain = rough_align(meas, angles, x_method="chain")
    assert _shift_rms(chain.params, truth, angles, meas.shape[1:]) < 0.34


def test_reprojection_recovers_shifts(series):
    angles, truth, meas = series
    res = reprojection_align(meas, angles, fit="shift", max_loops=6, iterations=10)
    err = _shift_rms(res.params, truth, angles, meas.shape[1:])
    assert err < MEASURED["reprojection"] * 1.6, err
    assert res.history["max_update_px"][0] > res.history["max_update_px"][-1]
    assert res.volume.shape == (24, 24, 24)


def test_joint_recovers_shifts(series):
    angles, truth, meas = series
    res = joint_align(meas, angles, fit="shift", steps=150, iterations=10)
    err = _shift_rms(res.params, truth, angles, meas.shape[1:])
    assert err < MEASURED["joint"] * 1.6, err
    assert res.history["residual"][-1] < res.history["residual"][0]


MEASURED = {"reprojection": 0.016, "joint": 0.014}  # shift RMS (px) measured when written


@pytest.mark.parametrize("bad", ["nan", "blank", "shape", "angles"])
def test_degenerate_inputs_raise(series, bad):
    angles, _, meas = series
    meas = meas.copy()
    if bad == "nan":
        meas[3, 2, 2] = np.nan
        match = "projections: non-finite"
    elif bad == "blank":
        meas[5] = 0.0
        match = "projections: 1 blank"
    elif bad == "shape":
        meas = meas[0]
        match = "projections: expected"
    else:
        angles = angles[:-1]
        match = "angles_rad"
    for fn in (rough_align, reprojection_align, joint_align):
        with pytest.raises(ValueError, match=match):
            fn(meas, angles)


def test_unknown_resampling_or_loop_algorithm_raises(series):
    angles, _, meas = series
    with pytest.raises(ValueError, match="interpolation='quintic'"):
        joint_align(meas, angles, interpolation="quintic")
    with pytest.raises(ValueError, match="loop_algorithm='kaczmarz'"):
        reprojection_align(meas, angles, loop_algorithm="kaczmarz")


def test_anderson_step_solves_a_slowly_contracting_fixed_point(rng):
    # G(x) = A x + b with one direction contracting by 1 % per step, like the weakly
    # determined rotation/scale patterns of the reprojection loop
    basis, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    a = basis @ np.diag([0.99, 0.9, 0.5, 0.3, 0.1, 0.0]) @ basis.T
    fixed_point = rng.normal(size=6)
    b = fixed_point - a @ fixed_point
    plain = np.zeros(6)
    xs, fs = [np.zeros(6)], [b]
    for _ in range(8):
        plain = a @ plain + b
        xs.append(anderson_step(np.array(xs[-6:]), np.array(fs[-6:])))
        fs.append(a @ xs[-1] + b - xs[-1])
    assert np.linalg.norm(xs[-1] - fixed_point) < 1e-8 * np.linalg.norm(fixed_point)
    assert np.linalg.norm(plain - fixed_point) > 0.5 * np.linalg.norm(fixed_point @ basis[:, 0])
    np.testing.assert_allclose(anderson_step(xs[:1], fs[:1]), xs[0] + fs[0])  # plain first
    with pytest.raises(ValueError, match="fs: expected the shape"):
        anderson_step(np.zeros((2, 3)), np.zeros((2, 4)))


def test_warm_started_reconstruction_continues_the_cold_one(series):
    angles, truth, meas = series
    half = reconstruct_dealigned(meas, angles, truth, "sirt", 15)
    continued = reconstruct_dealigned(meas, angles, truth, "sirt", 15, initial=half)
    whole = reconstruct_dealigned(meas, angles, truth, "sirt", 30)
    np.testing.assert_allclose(continued, whole, rtol=0, atol=1e-4 * np.abs(whole).max())
    assert np.abs(continued - half).max() > 1e-2 * np.abs(whole).max()  # it did iterate
    with pytest.raises(ValueError, match="initial: expected shape"):
        reconstruct_dealigned(meas, angles, truth, "sirt", 2, initial=half[:-1])
    with pytest.raises(ValueError, match="initial: algorithm='fbp'"):
        reconstruct_dealigned(meas, angles, truth, "fbp", 2, initial=half)


def test_reprojection_rejects_bad_acceleration_options(series):
    angles, _, meas = series
    with pytest.raises(ValueError, match="anderson_depth=-1"):
        reprojection_align(meas, angles, anderson_depth=-1)
    with pytest.raises(ValueError, match="warm_start: loop_algorithm='fbp'"):
        reprojection_align(meas, angles, loop_algorithm="fbp")


class _MemoryCheckpoint:
    """In-memory stand-in for :class:`~diffptycho.io.checkpoint.Checkpoint`."""

    every = 0

    def __init__(self):
        self.saved = None

    def save(self, trees, meta, iteration, arrays):
        self.saved = ({k: np.array(v) for k, v in arrays.items()}, dict(meta), iteration)

    def load(self, like):
        arrays, meta, iteration = self.saved
        return {}, arrays, meta, iteration


def test_final_pass_is_logged_and_resumes_when_stopped_inside_it(series, monkeypatch):
    from diffptycho.recon import solve as solve_module
    from diffptycho.recon.interrupt import Interrupted

    angles, truth, meas = series
    opts = dict(fit="shift", max_loops=2, iterations=5, loop_iterations=10, tolerance_px=0)
    loops = reprojection_align(meas, angles, **opts)
    final = reprojection_align(meas, angles, final_iterations=10, **opts)
    np.testing.assert_array_equal(final.history["binning"], [1, 1, 0])
    np.testing.assert_allclose(final.history["residual"][:2], loops.history["residual"])
    assert final.config["final_iterations"] == 10
    # the final pass re-registers: new parameters, still as good as the loops'
    assert np.abs(final.params - loops.params).max() > 1e-4
    shape = meas.shape[1:]
    assert _shift_rms(final.params, truth, angles, shape) < 1.3 * _shift_rms(
        loops.params, truth, angles, shape
    )
    # a stop inside the final pass's reconstruction (solve steps 21–30), then a resume
    calls = []
    monkeypatch.setattr(solve_module, "stop_requested", lambda: calls.append(1) or len(calls) >= 25)
    ckpt = _MemoryCheckpoint()
    with pytest.raises(Interrupted):
        reprojection_align(meas, angles, final_iterations=10, checkpoint=ckpt, **opts)
    monkeypatch.undo()
    assert ckpt.saved[1]["level"] == 1 and "volume" in ckpt.saved[0]
    resumed = reprojection_align(
        meas, angles, final_iterations=10, checkpoint=ckpt, resume=True, **opts
    )
    np.testing.assert_allclose(resumed.params, final.params, rtol=0, atol=1e-6)
    np.testing.assert_allclose(resumed.history["residual"], final.history["residual"], rtol=1e-6)
    with pytest.raises(ValueError, match="final_iterations=-1"):
        reprojection_align(meas, angles, final_iterations=-1)


def test_refinement_lowers_the_misfit_and_resumes_when_stopped_inside_it(series, monkeypatch):
    from diffptycho.recon import solve as solve_module
    from diffptycho.recon.interrupt import Interrupted

    angles, truth, meas = series
    opts = dict(fit="shift", max_loops=2, iterations=5, loop_iterations=10, tolerance_px=0)
    loops = reprojection_align(meas, angles, refine_steps=0, **opts)
    refined = reprojection_align(meas, angles, refine_steps=6, **opts)
    loss = refined.history["refine_loss"]
    assert loops.history["refine_loss"].size == 0 and loss.size == 6
    assert loss[-1] < 0.9 * loss[0]  # the loop's volume and parameters, jointly improved
    np.testing.assert_allclose(refined.history["residual"], loops.history["residual"])
    assert np.abs(refined.params - loops.params).max() > 1e-4
    shape = meas.shape[1:]
    assert _shift_rms(refined.params, truth, angles, shape) < 1.2 * _shift_rms(
        loops.params, truth, angles, shape
    )
    # a stop inside the refinement (solve steps 21–26: the loops' SIRT took 1–20)
    calls = []
    monkeypatch.setattr(solve_module, "stop_requested", lambda: calls.append(1) or len(calls) >= 23)
    ckpt = _MemoryCheckpoint()
    with pytest.raises(Interrupted):
        reprojection_align(meas, angles, refine_steps=6, checkpoint=ckpt, **opts)
    monkeypatch.undo()
    assert ckpt.saved[1]["level"] == 2 and "volume" in ckpt.saved[0]
    resumed = reprojection_align(meas, angles, refine_steps=6, checkpoint=ckpt, resume=True, **opts)
    np.testing.assert_allclose(resumed.params, refined.params, rtol=0, atol=1e-6)
    np.testing.assert_allclose(resumed.history["refine_loss"], loss, rtol=1e-6)
    with pytest.raises(ValueError, match="refine_steps=-1"):
        reprojection_align(meas, angles, refine_steps=-1)
