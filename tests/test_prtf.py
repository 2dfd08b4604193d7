"""PRTF: perfect, random-phase and model-vs-data cases with known answers."""

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest

from diffptycho.analysis.prtf import PRTF_THRESHOLD, detector_waves, prtf, prtf_model
from diffptycho.models.ptycho import Ptycho2D


def _ring_of(shape):
    fy, fx = shape
    qy = (np.arange(fy) - fy // 2)[:, None] / fy
    qx = (np.arange(fx) - fx // 2)[None, :] / fx
    return np.rint(np.hypot(qy, qx) * min(shape))


def test_reproducible_phases_give_one(rng):
    amp = rng.random((5, 32, 32)) + 0.1
    phases = rng.uniform(-np.pi, np.pi, (5, 32, 32))
    recons = np.stack([amp * np.exp(1j * (phases + g)) for g in (0.0, 1.0, -2.5, 3.0)])
    curve = prtf(recons, amp**2)
    np.testing.assert_allclose(curve.prtf, 1.0, atol=1e-12)
    res = curve.resolution()
    assert not res.crossed and res.half_period_px == pytest.approx(1.0)


def test_random_high_frequency_phases_cross_at_the_cut(rng):
    k, n, cut = 32, 64, 12
    ring = _ring_of((n, n))
    amp = 1.0 + rng.random((4, n, n))
    fixed = rng.uniform(-np.pi, np.pi, (4, n, n))
    recons = []
    for _ in range(k):
        random = rng.uniform(-np.pi, np.pi, (4, n, n))
        recons.append(amp * np.exp(1j * np.where(ring < cut, fixed, random)))
    curve = prtf(np.stack(recons), amp**2)
    # the global-phase alignment sees the random rings too: slightly below 1
    np.testing.assert_allclose(curve.prtf[:cut], 1.0, atol=0.01)
    # |mean of K random unit phasors| ≈ √π / (2√K) ≈ 0.16 for K = 32
    assert np.all(curve.prtf[cut + 1 :] < 0.25)
    res = curve.resolution(pixel_size_m=10e-9)
    assert res.crossed and res.threshold == f"{PRTF_THRESHOLD:g}"
    assert cut - 1 < res.shell <= cut
    assert res.half_period_px == pytest.approx(n / (2 * res.shell))
    assert res.half_period_m == pytest.approx(res.half_period_px * 10e-9)


def test_model_prtf_is_the_ring_amplitude_ratio(rng):
    meas = rng.poisson(50.0, (6, 16, 24)).astype(float)
    ring = _ring_of((16, 24))
    scale = np.where(ring < 5, 1.0, 0.25)  # the model keeps a quarter of the intensity
    curve = prtf_model(meas * scale, meas)
    np.testing.assert_allclose(curve.prtf[:5], 1.0, atol=1e-12)
    np.testing.assert_allclose(curve.prtf[5:], 0.5, atol=1e-12)
    assert curve.frequency[-1] == pytest.approx(0.5)
    assert curve.n_points[1] == np.sum(ring == 1)


def test_mask_excludes_pixels(rng):
    meas = rng.random((2, 16, 16)) + 1.0
    pred = meas.copy()
    pred[:, 8, 9] = 100.0  # a hot model pixel under the mask
    mask = np.ones((16, 16), bool)
    mask[8, 9] = False
    np.testing.assert_allclose(prtf_model(pred, meas, mask).prtf, 1.0, atol=1e-12)
    assert prtf_model(pred, meas).prtf[1] > 1.5


def test_detector_waves_match_the_forward_model(rng):
    obj = jnp.asarray(np.exp(1j * rng.random((40, 40))) * (0.5 + rng.random((40, 40))))
    probe = jnp.asarray(rng.standard_normal((2, 16, 16)) + 1j * rng.standard_normal((2, 16, 16)))
    positions = jnp.asarray(rng.uniform(-8, 8, (7, 2)))
    waves = detector_waves(obj, probe, positions, batch_size=3)
    assert waves.shape == (7, 2, 16, 16)
    expected = np.asarray(eqx.filter_jit(lambda m: m())(Ptycho2D(obj, probe, positions)))
    np.testing.assert_allclose(np.sum(np.abs(waves) ** 2, axis=1), expected, rtol=1e-9)


def test_shape_errors():
    with pytest.raises(ValueError, match="measured"):
        prtf(np.ones((2, 3, 8, 8), complex), np.ones((3, 8, 9)))
    with pytest.raises(ValueError, match="mask"):
        prtf_model(np.ones((3, 8, 8)), np.ones((3, 8, 8)), np.ones((4, 4), bool))
    with pytest.raises(ValueError, match="NaN"):
        prtf_model(np.ones((3, 8, 8)), np.full((3, 8, 8), np.nan))


def test_model_prtf_is_unbiased_at_low_counts(rng):
    """A perfect model of Poisson data gives 1 even at 0.3 photons per pixel."""
    expected = np.full((400, 32, 32), 0.3)
    counts = rng.poisson(expected).astype(float)
    curve = prtf_model(expected, counts)
    np.testing.assert_allclose(curve.prtf[1:], 1.0, atol=0.03)
    # (ring-averaged amplitudes would give E√n / √E n ≈ 0.5 here)
    assert np.sqrt(counts).mean() / np.sqrt(0.3) < 0.6
