"""Tomography solvers on the shared projector: analytic references, convergence, options."""

import equinox as eqx
import h5py
import jax.numpy as jnp
import numpy as np
import pytest

from diffptycho.models.tomo import TomoProjections
from diffptycho.physics import alignment
from diffptycho.physics.tomography import project
from diffptycho.recon.solve import solve
from diffptycho.recon.tomo import (
    ART,
    CGLS,
    SART,
    SIRT,
    angular_weights,
    dealign,
    fbp,
    gradient_reconstruct,
    kaczmarz_sweep,
    reconstruct,
)


def _blobs(n):
    """Gaussian blobs (amplitude, z, x, σ) in voxels from the rotation axis."""
    return [(1.0, 0.0, 0.0, n / 6), (0.5, n / 8, -n / 10, n / 16), (-0.3, -n / 6, n / 7, n / 20)]


def _blob_image(n, blobs):
    zz, xx = np.mgrid[:n, :n] - (n - 1) / 2
    return sum(
        a * np.exp(-((zz - z0) ** 2 + (xx - x0) ** 2) / (2 * s * s)) for a, z0, x0, s in blobs
    )


def _blob_sinogram(n, angles, blobs):
    """Exact line integrals: a 2-D Gaussian projects to a 1-D Gaussian of mass a·√(2π)·σ."""
    t = np.arange(n) - (n - 1) / 2
    sino = np.zeros((len(angles), 1, n))
    for a, z0, x0, s in blobs:
        tc = x0 * np.cos(angles) + z0 * np.sin(angles)
        sino[:, 0] += a * np.sqrt(2 * np.pi) * s * np.exp(-((t - tc[:, None]) ** 2) / (2 * s * s))
    return sino


def _phantom(n=24, rows=2):
    vol = np.zeros((n, rows, n))
    vol[n // 4 : n // 2, :, n // 3 : 3 * n // 4] = 1.0
    vol[n // 2 : 3 * n // 4, :, n // 5 : n // 2] = 0.5
    return jnp.asarray(vol)


def _model(volume, angles, params=None):
    params = jnp.zeros((angles.shape[0], 4)) if params is None else params
    return TomoProjections(jnp.zeros_like(volume), angles, params)


def test_projection_of_a_disc_is_the_chord_length():
    n, radius, z0, x0 = 64, 14.0, 6.0, -9.0
    sub = 8  # supersample the disc so voxel values are area fractions
    fine = (np.arange(n * sub) + 0.5) / sub - 0.5 - (n - 1) / 2
    inside = ((fine[:, None] - z0) ** 2 + (fine[None, :] - x0) ** 2) < radius**2
    disc = inside.reshape(n, sub, n, sub).mean(axis=(1, 3))
    angles = np.deg2rad([0.0, 30.0, 90.0, 135.0, 200.0])
    p = np.asarray(project(jnp.asarray(disc)[:, None, :], jnp.asarray(angles)))[:, 0]
    t = np.arange(n) - (n - 1) / 2
    tc = x0 * np.cos(angles) + z0 * np.sin(angles)  # t = x cos θ + z sin θ
    chord = 2 * np.sqrt(np.clip(radius**2 - (t[None] - tc[:, None]) ** 2, 0, None))
    away_from_rim = np.abs(np.abs(t[None] - tc[:, None]) - radius) > 1.5
    np.testing.assert_allclose(p[away_from_rim], chord[away_from_rim], atol=0.02 * 2 * radius)
    np.testing.assert_allclose(p.sum(1), np.pi * radius**2, rtol=2e-3)  # mass at every angle


def test_fbp_recovers_a_full_range_noiseless_phantom_to_two_percent():
    n = 64
    angles = np.linspace(0, np.pi, 180, endpoint=False)
    blobs = _blobs(n)
    rec = np.asarray(fbp(jnp.asarray(_blob_sinogram(n, angles, blobs)), jnp.asarray(angles)))
    truth = _blob_image(n, blobs)
    zz, xx = np.mgrid[:n, :n] - (n - 1) / 2
    interior = zz**2 + xx**2 < (0.8 * n / 2) ** 2  # the inscribed disc, 80 % of its radius
    err = np.linalg.norm((rec[:, 0] - truth)[interior]) / np.linalg.norm(truth[interior])
    assert err < 0.02
    for name in ("shepp-logan", "cosine", "hamming", "hann"):
        smooth = np.asarray(fbp(jnp.asarray(_blob_sinogram(n, angles, blobs)), angles, filter=name))
        assert (
            np.linalg.norm((smooth[:, 0] - truth)[interior]) / np.linalg.norm(truth[interior])
            < 0.03
        )


def test_fbp_with_uneven_angles_and_their_weights(rng):
    angles = np.sort(rng.uniform(0, np.pi, 150))
    w = np.asarray(angular_weights(jnp.asarray(angles)))
    np.testing.assert_allclose(w.sum(), np.pi, rtol=1e-12)
    wedge = np.deg2rad(np.linspace(-80, 77, 158))  # the study's 23° missing wedge
    w = np.asarray(angular_weights(jnp.asarray(wedge)))
    np.testing.assert_allclose(w, np.deg2rad(1.0), rtol=1e-9)  # no weight piles up at the wedge
    n = 48
    rec = fbp(jnp.asarray(_blob_sinogram(n, angles, _blobs(n))), jnp.asarray(angles))
    truth = _blob_image(n, _blobs(n))
    zz, xx = np.mgrid[:n, :n] - (n - 1) / 2
    interior = zz**2 + xx**2 < (0.8 * n / 2) ** 2
    err = np.linalg.norm((rec[:, 0] - truth)[interior]) / np.linalg.norm(truth[interior])
    assert err < 0.02


@pytest.mark.parametrize("solver", [ART(), SART(), SIRT(), CGLS(), ART(order="random")])
def test_iterative_solvers_reduce_the_residual_and_converge(solver):
    truth = _phantom()
    angles = jnp.linspace(0, jnp.pi, 36, endpoint=False)
    data = project(truth, angles)
    iterations = 40 if isinstance(solver, SIRT) else 15
    model, hist = solve(_model(truth, angles), solver, data, iterations, progress=False)
    loss = np.asarray(hist.loss)
    assert np.all(loss[1:] <= loss[:-1] * 1.05)  # monotone up to 5 %
    assert loss[-1] < 1e-3 * loss[0]
    err = float(jnp.linalg.norm(model.volume - truth) / jnp.linalg.norm(truth))
    assert err < 0.15


def test_complex_volumes_reconstruct_phase_and_absorption_together():
    delta, beta = _phantom(), 0.3 * jnp.flip(_phantom(), axis=2)
    angles = jnp.linspace(0, jnp.pi, 30, endpoint=False)
    data = project((delta + 1j * beta).astype(jnp.complex128), angles)
    start = TomoProjections(jnp.zeros(delta.shape, jnp.complex128), angles, jnp.zeros((30, 4)))
    model, _ = solve(start, ART(), data, 5, progress=False)
    real_part, _ = solve(_model(delta, angles), ART(), project(delta, angles), 5, progress=False)
    imag_part, _ = solve(_model(beta, angles), ART(), project(beta, angles), 5, progress=False)
    np.testing.assert_allclose(model.volume.real, real_part.volume, atol=1e-10)
    np.testing.assert_allclose(model.volume.imag, imag_part.volume, atol=1e-10)
    with pytest.raises(ValueError, match="complex volume"):
        solve(_model(delta, angles), ART(), data, 1, progress=False)


def test_nonnegativity_support_and_random_order_are_honoured(rng):
    truth = _phantom()
    angles = jnp.linspace(0, jnp.pi, 24, endpoint=False)
    noisy = project(truth, angles) + 0.3 * rng.standard_normal((24, 2, 24))
    model, _ = solve(_model(truth, angles), SART(nonnegative=True), noisy, 3, progress=False)
    assert float(model.volume.min()) >= 0.0
    support = np.zeros((24, 24))
    support[4:20, 3:21] = 1
    model, _ = solve(
        _model(truth, angles), SIRT(support=jnp.asarray(support)), noisy, 3, progress=False
    )
    assert float(jnp.abs(model.volume * (1 - support)[:, None, :]).max()) == 0.0
    runs = [
        solve(_model(truth, angles), ART(order="random", seed=s), noisy, 2, progress=False)[0]
        for s in (3, 4)
    ]
    assert not np.allclose(runs[0].volume, runs[1].volume)  # the seed sets the order
    with pytest.raises(ValueError, match="relaxation"):
        ART(relaxation=2.5)
    with pytest.raises(ValueError, match="order"):
        SART(order="golden")


def test_alignment_from_the_model_is_undone():
    truth = _phantom(n=24, rows=6)
    angles = jnp.linspace(0, jnp.pi, 30, endpoint=False)
    rng = np.random.default_rng(0)
    params = jnp.asarray(np.c_[rng.uniform(-1.5, 1.5, (30, 2)), np.zeros((30, 2))])
    measured = alignment.align_projections(project(truth, angles), params)
    aligned, _ = solve(_model(truth, angles, params), ART(), measured, 20, progress=False)
    ignored, _ = solve(_model(truth, angles), ART(), measured, 20, progress=False)
    rows = slice(2, 4)  # y shifts move the edge rows' content out of the detector
    err = [
        float(jnp.linalg.norm((m.volume - truth)[:, rows]) / jnp.linalg.norm(truth[:, rows]))
        for m in (aligned, ignored)
    ]
    assert err[0] < 0.4 * err[1]
    yy, xx = np.mgrid[:32, :32] - 16.0
    blob = jnp.asarray(np.exp(-(yy**2 + xx**2) / 80.0))[None].repeat(3, axis=0)
    similarity = jnp.asarray([[1.3, -0.7, 0.0, 0.0], [0.0, 2.0, 0.2, 0.0], [-1.0, 0.5, -0.1, 0.1]])
    round_trip = alignment.align_projections(dealign(blob, similarity), similarity)
    inner = (slice(None), slice(5, -5), slice(5, -5))  # away from what shifts out
    np.testing.assert_allclose(round_trip[inner], blob[inner], atol=0.015)


def test_slabs_rows_and_roi_match_the_whole_volume(tmp_path):
    truth = _phantom(n=20, rows=5)
    angles = jnp.linspace(0, jnp.pi, 24, endpoint=False)
    data = np.asarray(project(truth, angles))
    whole = reconstruct(data, angles, "sirt", 10, progress=False)
    slabs = reconstruct(data, angles, "sirt", 10, slab_size=2, progress=False)
    np.testing.assert_allclose(slabs.volume, whole.volume, atol=1e-6)
    assert slabs.loss.shape == (3, 10)
    with h5py.File(tmp_path / "stream.h5", "w") as f:  # out of core: read and write per slab
        f["projections"] = data
        out = f.create_dataset("volume", whole.volume.shape, "f4")
        reconstruct(f["projections"], angles, "sirt", 10, slab_size=2, out=out, progress=False)
        np.testing.assert_allclose(out[()], whole.volume, atol=1e-6)
    roi = (slice(2, 18), slice(1, 4), slice(5, 15))
    part = reconstruct(data, angles, "sirt", 10, roi=roi, voxel_size_m=2.0, progress=False)
    np.testing.assert_allclose(part.volume, whole.volume[roi] / 2.0, atol=1e-6)
    with pytest.raises(ValueError, match="algorithm"):
        reconstruct(data, angles, "mlem", 1, progress=False)
    with pytest.raises(ValueError, match="angles"):
        reconstruct(data, angles[:-1], "fbp", 1, progress=False)
    with pytest.raises(ValueError, match="non-negativity"):
        reconstruct(data, angles, "cgls", 1, nonnegative=True, progress=False)


def test_a_sweep_compiles_once():
    truth = _phantom()
    angles = jnp.linspace(0, jnp.pi, 12, endpoint=False)
    data = project(truth, angles)
    weights = jnp.ones((12, 1, 24))

    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def sweep(volume, data):
        return kaczmarz_sweep(volume, data, angles, jnp.arange(12), weights, None, relaxation=0.1)

    volume = jnp.swapaxes(jnp.zeros_like(truth), 1, 2)
    for _ in range(3):
        volume, _ = sweep(volume, data)


def test_gradient_reconstruction_with_nonnegativity_and_tv(rng):
    truth = _phantom(n=24, rows=3)
    angles = jnp.linspace(0, jnp.pi, 24, endpoint=False)
    noisy = project(truth, angles) + 0.5 * rng.standard_normal((24, 3, 24))
    plain, hist = gradient_reconstruct(
        _model(truth, angles), noisy, 60, nonnegative=True, progress=False
    )
    assert float(plain.volume.min()) >= 0 and hist.loss[-1] < 0.05 * hist.loss[0]
    smooth, _ = gradient_reconstruct(
        _model(truth, angles), noisy, 60, nonnegative=True, tv_weight=0.02, progress=False
    )
    errors = [float(jnp.linalg.norm(m.volume - truth)) for m in (plain, smooth)]
    assert errors[1] < errors[0]  # TV suppresses the noise


def test_adam_through_reconstruct_and_fbp_slabs_agree():
    truth = _phantom(n=20, rows=2)
    angles = jnp.linspace(0, jnp.pi, 30, endpoint=False)
    data = np.asarray(project(truth, angles))
    res = reconstruct(data, angles, "adam", 80, nonnegative=True, progress=False)
    assert np.linalg.norm(res.volume - truth) / np.linalg.norm(truth) < 0.3
    one = reconstruct(data, angles, "fbp", progress=False)
    two = reconstruct(data, angles, "fbp", slab_size=1, progress=False)
    np.testing.assert_allclose(one.volume, two.volume, atol=1e-6)
    assert one.loss.shape == (1, 0)


def test_sart_recomputes_voxel_weights_when_storing_them_would_not_fit(monkeypatch):
    from diffptycho.recon.tomo import art

    truth = _phantom()
    angles = jnp.linspace(0, jnp.pi, 16, endpoint=False)
    data = project(truth, angles)
    stored, _ = solve(_model(truth, angles), SART(), data, 2, progress=False)
    monkeypatch.setattr(art, "_PER_VIEW_BYTES", 0)
    assert SART().init(_model(truth, angles)).voxel_weights is None
    recomputed, _ = solve(_model(truth, angles), SART(), data, 2, progress=False)
    np.testing.assert_allclose(recomputed.volume, stored.volume, atol=1e-10)
