"""Fourier ring/shell correlation, thresholds, crossings and edge widths against theory."""

import numpy as np
import pytest
from scipy.special import erf

from diffptycho.analysis.resolution import (
    FourierCorrelation,
    crossing,
    edge_width,
    fourier_correlation,
    frc,
    fsc,
    half_bit_threshold,
    line_profile,
)


def _gaussian_transfer(shape, sigma_px):
    """Transfer function exp(−2π²σ²|f|²) of a Gaussian blur of σ voxels on the FFT grid."""
    grids = np.meshgrid(*[np.fft.fftfreq(n) for n in shape], indexing="ij", sparse=True)
    return np.exp(-2 * np.pi**2 * sigma_px**2 * sum(g**2 for g in grids))


def test_fsc_of_a_volume_with_itself_is_one(rng):
    vol = rng.standard_normal((24, 20, 28))
    curve = fsc(vol, vol)
    np.testing.assert_allclose(curve.correlation, 1.0, atol=1e-12)
    assert curve.shell[-1] == 10 and curve.frequency[-1] == pytest.approx(0.5)
    c = crossing(curve, "half_bit", voxel_size_m=6.7e-9)
    assert not c.crossed and c.half_period_px == pytest.approx(1.0)  # Nyquist bound
    complex_vol = vol + 1j * rng.standard_normal(vol.shape)
    np.testing.assert_allclose(fsc(complex_vol, complex_vol).correlation, 1.0, atol=1e-12)


def test_half_bit_curve_matches_the_formula_and_shell_counts_are_exact():
    n = np.array([1.0, 10.0, 100.0, 1e4])
    expected = (0.2071 + 1.9102 / np.sqrt(n)) / (1.2071 + 0.9102 / np.sqrt(n))
    np.testing.assert_allclose(half_bit_threshold(n), expected, rtol=1e-15)
    assert half_bit_threshold([1e16])[0] == pytest.approx(0.2071 / 1.2071, rel=1e-6)
    shape = (16, 12, 14)
    curve = fsc(np.ones(shape), np.ones(shape))
    radius = np.sqrt(
        sum(g**2 for g in np.meshgrid(*[np.fft.fftfreq(s) for s in shape], indexing="ij"))
    )
    counts = np.bincount(np.rint(radius * 12).astype(int).ravel())[: curve.shell.size]
    np.testing.assert_array_equal(curve.n_points, counts)  # rfft halves counted twice
    np.testing.assert_allclose(curve.half_bit(), half_bit_threshold(counts))


def test_real_and_complex_paths_agree(rng):
    a, b = rng.standard_normal((2, 18, 18, 18))
    real = fourier_correlation(a, b)
    cplx = fourier_correlation(a + 0j, b + 0j)
    np.testing.assert_allclose(real.correlation, cplx.correlation, atol=1e-12)
    np.testing.assert_array_equal(real.n_points, cplx.n_points)


@pytest.mark.parametrize("threshold", ["0.5", "half_bit"])
def test_fsc_of_a_blurred_noisy_phantom_crosses_where_theory_says(rng, threshold):
    n, sigma_blur, snr = 48, 1.5, 100.0  # signal variance / noise variance per voxel
    phantom = rng.standard_normal((n, n, n))  # white: flat power spectrum, variance 1
    blurred = np.real(np.fft.ifftn(np.fft.fftn(phantom) * _gaussian_transfer(phantom.shape, 1.5)))
    noise = rng.standard_normal((2, n, n, n)) / np.sqrt(snr)
    curve = fsc(blurred + noise[0], blurred + noise[1])
    # theory: FSC = S/(S + N) with S = SNR·|G(f)|² per voxel (N = 1), evaluated per shell
    g2 = np.exp(-4 * np.pi**2 * sigma_blur**2 * curve.frequency**2)
    theory = FourierCorrelation(
        curve.shell, curve.frequency, snr * g2 / (1 + snr * g2), curve.n_points, curve.shape
    )
    measured, expected = crossing(curve, threshold), crossing(theory, threshold)
    assert measured.crossed and expected.crossed
    assert abs(measured.shell - expected.shell) <= 1.0
    if threshold == "0.5":  # closed form: SNR·G² = 1
        f_half = np.sqrt(np.log(snr)) / (2 * np.pi * sigma_blur)
        assert expected.frequency == pytest.approx(f_half, abs=0.5 / n)


def test_crossing_interpolates_and_reports_metres():
    shells = np.arange(33)
    curve = FourierCorrelation(shells, shells / 64, 1 - shells / 32, np.full(33, 1e9), (64, 64))
    c = crossing(curve, 0.25, voxel_size_m=10e-9)
    assert c.shell == pytest.approx(24.0) and c.frequency == pytest.approx(0.375)
    assert c.period_px == pytest.approx(64 / 24) and c.half_period_m == pytest.approx(
        10e-9 * 32 / 24
    )
    assert crossing(curve, np.full(33, 0.25)).shell == pytest.approx(24.0)
    assert np.isnan(crossing(curve, "0.5").period_m)
    with pytest.raises(ValueError, match="threshold"):
        crossing(curve, "one-bit")


def test_frc_for_images_and_errors(rng):
    img = rng.standard_normal((32, 40))
    assert frc(img, img).shell[-1] == 16
    noisy = img + rng.standard_normal(img.shape)
    windowed = frc(img, noisy, window="hann")
    assert 0.3 < windowed.correlation[5:].mean() < 0.9  # SNR 1: C ≈ 0.7
    with pytest.raises(ValueError, match="shapes differ"):
        fourier_correlation(img, img[:-1])
    with pytest.raises(ValueError, match="frc"):
        fsc(img, img)
    with pytest.raises(ValueError, match="fsc"):
        frc(np.ones((8, 8, 8)), np.ones((8, 8, 8)))
    with pytest.raises(ValueError, match="window"):
        frc(img, img, window="kaiser")


@pytest.mark.parametrize("method", ["interp", "erf"])
def test_edge_width_of_an_erf_edge_is_2_563_sigma(method, rng):
    sigma = 2.5
    x = np.arange(-30, 31.0)
    edge = 3.0 - 2.0 * 0.5 * (1 + erf((x - 0.3) / (np.sqrt(2) * sigma)))  # falling edge
    width = edge_width(edge, spacing=6.7e-9, method=method)
    assert width == pytest.approx(2.5631 * sigma * 6.7e-9, rel=0.03)
    if method == "erf":
        noisy = edge + 0.02 * rng.standard_normal(edge.shape)
        assert edge_width(noisy, method="erf") == pytest.approx(2.5631 * sigma, rel=0.1)
    with pytest.raises(ValueError, match="flat"):
        edge_width(np.ones(20), method=method)


def test_line_profile_across_an_image():
    img = np.tile(np.arange(10.0), (6, 1))
    dist, values = line_profile(img, (2, 1), (2, 7))
    np.testing.assert_allclose(dist, np.arange(7))
    np.testing.assert_allclose(values, np.arange(1.0, 8.0))
    with pytest.raises(ValueError, match="coordinates"):
        line_profile(img, (1, 2, 3), (2, 7))
