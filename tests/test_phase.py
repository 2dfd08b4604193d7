"""Phase post-processing: offset and ramp removal, unwrapping, OD and δ/β against analytic truth."""

import numpy as np
import pytest

from diffptycho.analysis import phase
from diffptycho.physics import optics


def _grid(n=48, m=40):
    y = np.arange(n)[:, None] - n // 2
    x = np.arange(m)[None, :] - m // 2
    return np.broadcast_arrays(y.astype(float), x.astype(float))


def _object(rng, n=48, m=40):
    """A transmission with structured amplitude and phase (wrapping, no ramp added)."""
    y, x = _grid(n, m)
    amp = 0.6 + 0.3 * np.exp(-((y - 5) ** 2 + (x + 3) ** 2) / 60.0) + 0.05 * rng.random((n, m))
    ph = 2.5 * np.exp(-((y + 8) ** 2 + (x - 6) ** 2) / 40.0) + 0.3 * rng.standard_normal((n, m))
    return amp * np.exp(1j * ph)


def test_ramp_on_amplitude_image_is_recovered_exactly(rng):
    y, x = _grid()
    amp = 0.2 + rng.random(y.shape)  # amplitude weights vary; the phase is the ramp only
    a, gy, gx = 0.4, 1.3, -2.2  # > π/2 per pixel: the phase wraps many times
    t = amp * np.exp(1j * (a + gy * y + gx * x))
    fit = phase.fit_phase_ramp(t)
    np.testing.assert_allclose(fit, (a, gy, gx), atol=1e-12)
    np.testing.assert_allclose(phase.remove_phase_ramp(t), amp, atol=1e-12)


def test_added_ramp_is_recovered_exactly_on_a_structured_object(rng):
    t = _object(rng)
    y, x = _grid()
    ramp = (-0.9, 0.35, 0.6)
    base = np.asarray(phase.fit_phase_ramp(t))
    fit = np.asarray(phase.fit_phase_ramp(t * np.exp(1j * (ramp[0] + ramp[1] * y + ramp[2] * x))))
    # wrap the offset difference: the offset is defined modulo 2π
    diff = fit - base
    diff[0] = np.angle(np.exp(1j * diff[0]))
    np.testing.assert_allclose(diff, ramp, atol=1e-10)
    # and removing it gives back the same image as removing the object's own plane
    np.testing.assert_allclose(
        phase.remove_phase_ramp(t * np.exp(1j * (ramp[1] * y + ramp[2] * x))),
        phase.remove_phase_ramp(t),
        atol=1e-10,
    )


def test_ramp_fit_uses_only_the_region(rng):
    y, x = _grid()
    region = (y**2 + x**2) < 15**2
    t = np.exp(1j * (0.2 * y - 0.45 * x + 1.0))
    t = np.where(region, t, np.exp(2j * np.pi * rng.random(y.shape)))  # garbage outside
    np.testing.assert_allclose(phase.fit_phase_ramp(t, region), (1.0, 0.2, -0.45), atol=1e-12)


def test_real_phase_plane_fit_is_weighted_least_squares(rng):
    y, x = _grid()
    w = rng.random(y.shape)
    ph = 0.1 + 0.02 * y - 0.03 * x + 0.5 * rng.standard_normal(y.shape)
    basis = np.stack([np.ones(y.size), y.ravel(), x.ravel()], 1)
    sw = np.sqrt(w.ravel())
    expected, *_ = np.linalg.lstsq(basis * sw[:, None], ph.ravel() * sw, rcond=None)
    np.testing.assert_allclose(phase.fit_phase_ramp(ph, w), expected, atol=1e-12)
    resid = phase.remove_phase_ramp(ph, w)
    assert abs(np.sum(w * resid)) < 1e-9  # normal equations: residual ⟂ the constant


def test_phase_offset_removal(rng):
    t = _object(rng) * np.exp(1j * 2.9)
    out = phase.remove_phase_offset(t)
    assert abs(np.angle(np.sum(np.abs(t) * np.exp(1j * np.angle(out))))) < 1e-12
    np.testing.assert_allclose(np.abs(out), np.abs(t))


def _smooth_truth(shape=(64, 56)):
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]].astype(float)
    return (
        25.0 * np.exp(-((y - 30) ** 2 + (x - 20) ** 2) / 300.0)
        + 0.4 * x
        - 0.25 * y
        + 3.0 * np.sin(y / 9.0)
    )


def _assert_equal_up_to_2pi_k(out, truth, where=None):
    diff = (out - truth) if where is None else (out - truth)[where]
    k = np.round(diff.mean() / (2 * np.pi))
    np.testing.assert_allclose(diff, 2 * np.pi * k, atol=1e-9)


def test_unwrap_smooth_phase_equals_truth_up_to_2pi_k():
    truth = _smooth_truth()
    wrapped = np.angle(np.exp(1j * truth))
    assert np.ptp(truth) > 8 * np.pi  # many wraps
    out = phase.unwrap_phase(wrapped)
    _assert_equal_up_to_2pi_k(out, truth)
    # congruent with the input: exact multiples of 2π apart
    k = (out - wrapped) / (2 * np.pi)
    np.testing.assert_allclose(k, np.round(k), atol=1e-9)


def test_weighted_unwrap_ignores_pixels_outside_the_region(rng):
    truth = _smooth_truth()
    y, x = np.mgrid[0:64, 0:56]
    region = (y - 32) ** 2 + (x - 28) ** 2 < 26**2
    wrapped = np.where(region, np.angle(np.exp(1j * truth)), rng.uniform(-np.pi, np.pi, y.shape))
    out = phase.unwrap_phase(wrapped, region)
    _assert_equal_up_to_2pi_k(out, truth, region)
    # smooth quality weights inside the region give the same answer
    quality = np.where(region, 0.2 + rng.random(y.shape), 0.0)
    _assert_equal_up_to_2pi_k(phase.unwrap_phase(wrapped, quality), truth, region)


def test_unwrap_rejects_complex_input():
    with pytest.raises(ValueError, match="np.angle"):
        phase.unwrap_phase(np.ones((8, 8), complex))


def test_optical_density_and_delta_beta_against_analytic():
    energy = 708.2
    k = float(optics.wavenumber(energy))
    truth = _smooth_truth((40, 40))
    delta = truth / k * 0.5  # k∫δ dz up to ~15 rad: wraps
    delta = delta - delta.min()
    y, x = np.mgrid[0:40, 0:40]
    beta = 1e-9 * (1.0 + np.cos(x / 7.0) ** 2 + y / 40.0)
    t = np.asarray(optics.transmission(delta, beta, energy))
    np.testing.assert_allclose(phase.optical_density(t), 2 * k * beta, rtol=1e-10)
    assert np.all(phase.optical_density(np.zeros(3)) > 27)  # floored, finite
    d_est, b_est = phase.delta_beta_integrals(t, energy)
    np.testing.assert_allclose(b_est, beta, rtol=1e-10)
    # δ is known up to a constant (the phase offset) and one 2π/k
    offset = d_est - delta
    np.testing.assert_allclose(offset, offset.mean(), atol=1e-9 / k)
    # the projected phase of a phase-advancing sample (δ > 0) is positive
    pp = phase.projected_phase(t)
    np.testing.assert_allclose(pp - pp.mean(), k * (delta - delta.mean()), atol=1e-8)


@pytest.mark.parametrize(
    ("weights", "match"),
    [(np.ones((3, 3)), "shape"), (np.zeros((8, 8)), "zero"), (-np.ones((8, 8)), "non-negative")],
)
def test_bad_weights(weights, match):
    with pytest.raises(ValueError, match=match):
        phase.fit_phase_ramp(np.ones((8, 8), complex), weights)


def test_rejects_non_2d():
    with pytest.raises(ValueError, match="2-D"):
        phase.fit_phase_ramp(np.ones((2, 8, 8), complex))


def test_unwrap_of_a_phase_without_wraps_is_the_phase_itself(rng):
    """No jump > π between neighbours (in the region): ψ is the exact least-squares answer."""
    from diffptycho.analysis.phase import unwrap_phase

    y, x = np.mgrid[0:40, 0:40]
    psi = 0.8 * np.sin(x / 7.0) * np.cos(y / 9.0) + 0.05 * rng.standard_normal((40, 40))
    np.testing.assert_allclose(unwrap_phase(psi), psi, rtol=0, atol=1e-12)
    region = (x - 20) ** 2 + (y - 20) ** 2 < 150
    outside = np.where(region, psi, rng.uniform(-np.pi, np.pi, psi.shape))  # noise outside
    np.testing.assert_allclose(unwrap_phase(outside, region)[region], psi[region], atol=1e-12)
    ramp = 0.45 * x  # wraps several times: the solver runs and recovers it up to 2πk
    out = unwrap_phase(np.angle(np.exp(1j * ramp)))
    k = np.round((out - ramp).mean() / (2 * np.pi))
    np.testing.assert_allclose(out, ramp + 2 * np.pi * k, atol=1e-9)
