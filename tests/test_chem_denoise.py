"""Tests of the OD-stack denoisers (diffptycho.recon.chem.denoise)."""

import numpy as np
import pytest

from diffptycho.recon.chem.denoise import (
    choose_rank,
    noise_sigma_from_differences,
    smooth_stack,
    svd_denoise,
)


def _low_rank(rank=3, energies=40, shape=(20, 20), sigma=0.01, seed=0):
    """Analytic rank-``rank`` stack (smooth spectra × random maps) plus white noise σ."""
    rng = np.random.default_rng(seed)
    e = np.linspace(0.0, 1.0, energies)
    spectra = np.stack([1.0 / (1.0 + np.exp(-(e - c) / 0.05)) + 0.2 * e for c in (0.3, 0.5, 0.7)])
    maps = rng.uniform(0.0, 1.0, (rank, *shape))
    clean = np.einsum("re,ryx->eyx", spectra[:rank], maps)
    return clean, clean + rng.normal(0.0, sigma, clean.shape)


def test_noise_sigma_from_differences_recovers_white_noise():
    clean, noisy = _low_rank(sigma=0.02)
    sigma = noise_sigma_from_differences(noisy.reshape(40, -1))
    assert sigma == pytest.approx(0.02, rel=0.1)


def test_svd_denoise_finds_rank_and_removes_noise():
    clean, noisy = _low_rank(rank=3, sigma=0.01)
    out = svd_denoise(noisy)
    assert out.rank == 3
    assert out.noise_sigma == pytest.approx(0.01, rel=0.15)
    # 3 of 40 spectral dimensions kept: residual noise ≈ σ√(3/40) (+ the spatial part)
    rms = np.sqrt(np.mean((out.stack - clean) ** 2))
    assert rms < 0.4 * 0.01
    assert out.explained[-1] == pytest.approx(1.0)
    assert out.components.shape == (3, 40)


def test_svd_denoise_mask_keeps_outside_and_given_rank():
    clean, noisy = _low_rank(rank=2, sigma=0.01)
    mask = np.zeros(clean.shape[1:], bool)
    mask[2:18, 2:18] = True
    out = svd_denoise(noisy, mask, rank=2)
    assert out.rank == 2 and np.isnan(out.noise_sigma)
    np.testing.assert_array_equal(out.stack[:, ~mask], noisy[:, ~mask])
    assert np.sqrt(np.mean((out.stack - clean)[:, mask] ** 2)) < 0.4 * 0.01
    with pytest.raises(ValueError, match="rank"):
        svd_denoise(noisy, rank=0)
    with pytest.raises(ValueError, match="mask"):
        svd_denoise(noisy, mask[:5])


def test_choose_rank_threshold():
    s = np.array([10.0, 5.0, 0.5, 0.4])
    assert choose_rank(s, (4, 100), sigma=0.05) == 2  # edge 0.05·(2 + 10) = 0.6
    assert choose_rank(s, (4, 100), sigma=10.0) == 1


def test_smooth_stack_constant_inside_mask_and_noise_reduction():
    mask = np.zeros((24, 24), bool)
    mask[4:20, 4:20] = True
    flat = np.where(mask, 2.0, 50.0)[None].repeat(3, 0)  # values outside must not leak in
    out = smooth_stack(flat, 1.0, mask)
    np.testing.assert_allclose(out[:, mask], 2.0, rtol=1e-12)
    assert np.all(out[:, ~mask] == 0.0)
    rng = np.random.default_rng(1)
    noisy = rng.normal(0.0, 1.0, (2, 64, 64))
    # Gaussian σ = 1 px: white-noise variance falls by 1/(4πσ²)
    assert np.std(smooth_stack(noisy, 1.0)) == pytest.approx(1 / np.sqrt(4 * np.pi), rel=0.1)
    np.testing.assert_array_equal(smooth_stack(noisy, 0.0), noisy)
    with pytest.raises(ValueError, match="sigma_px"):
        smooth_stack(noisy, -1.0)
