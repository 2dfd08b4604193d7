"""One grid for all energies and cross-energy registration, against analytic images."""

import numpy as np
import pytest
from scipy.special import erf

from diffptycho.recon.align import (
    apply_offsets,
    register_energies,
    resample_to_grid,
    valid_mask,
)

# Gaussian blobs (y_m, x_m, sigma_m, amplitude): band-limited to well below the coarsest Nyquist.
BLOBS = [
    (-300e-9, 200e-9, 120e-9, 1.0),
    (250e-9, -150e-9, 90e-9, -0.7),
    (50e-9, 400e-9, 150e-9, 0.5),
    (-100e-9, -420e-9, 100e-9, 0.8),
]


def analytic(shape, pixel_m, phase_ramp=0.0):
    """Sum of Gaussians sampled at pixel ``pixel_m``, centre pixel (H//2, W//2) at the origin."""
    y = (np.arange(shape[0]) - shape[0] // 2)[:, None] * pixel_m
    x = (np.arange(shape[1]) - shape[1] // 2)[None, :] * pixel_m
    out = np.zeros(shape)
    for cy, cx, s, a in BLOBS:
        out += a * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * s * s))
    return out if not phase_ramp else np.exp(1j * (out + phase_ramp * x / 1e-6))


def test_resample_matches_analytic_function_on_target_grid():
    # far-field pixel ∝ λ ∝ 1/E: 2.2 % over 5420–5540 eV
    energies = np.array([5420.0, 5480.0, 5540.0])
    pixels = 30e-9 * 5420.0 / energies
    images = np.stack([analytic((71, 72), p) for p in pixels])
    target = pixels.max()
    out = resample_to_grid(images, pixels, target, (60, 61))
    truth = analytic((60, 61), target)
    assert out.images.shape == (3, 60, 61) and out.coverage.all()
    # cubic spline on blobs of σ ≥ 3 px: measured max error 4.1e-5 of a unit amplitude
    assert np.abs(out.images - truth).max() < 1e-3


def test_resample_complex_uses_real_and_imaginary_parts():
    pixels = np.array([20e-9, 20.4e-9])
    images = np.stack([analytic((64, 64), p, phase_ramp=3.0) for p in pixels])
    out = resample_to_grid(images, pixels, 20.4e-9, (56, 56))
    truth = analytic((56, 56), 20.4e-9, phase_ramp=3.0)
    assert np.iscomplexobj(out.images)
    assert np.abs(out.images - truth).max() < 1e-3  # measured 1.5e-4


def test_resample_identity_and_coverage():
    rng = np.random.default_rng(0)
    img = rng.normal(size=(2, 16, 17))
    out = resample_to_grid(img, [1e-8, 1e-8], 1e-8, (16, 17))
    np.testing.assert_allclose(out.images, img, atol=1e-12)
    # a larger target grid: coverage is the input field of view around the common centre
    big = resample_to_grid(img, [1e-8, 1e-8], 1e-8, (20, 21), cval=np.nan)
    assert big.coverage[0].sum() == 16 * 17
    assert np.all(np.isnan(big.images[~big.coverage]))
    np.testing.assert_allclose(big.images[0, 2:18, 2:19], img[0], atol=1e-12)


def test_resample_rejects_bad_input():
    img = np.zeros((2, 8, 8))
    with pytest.raises(ValueError, match="pixel_sizes_m"):
        resample_to_grid(img, [1e-8], 1e-8, (8, 8))
    with pytest.raises(ValueError, match="images"):
        resample_to_grid(np.zeros((8, 8)), [1e-8], 1e-8, (8, 8))
    with pytest.raises(ValueError, match="target_pixel_m"):
        resample_to_grid(img, [1e-8, 1e-8], -1.0, (8, 8))
    with pytest.raises(ValueError, match="offsets_px"):
        resample_to_grid(img, [1e-8, 1e-8], 1e-8, (8, 8), offsets_px=np.zeros((3, 2)))


def edge_stack(offsets_px, shape=(64, 64), noise=0.0, seed=0):
    """Phantom phase-like images: matrix + absorber whose contrast drops 20 % across an edge.

    (A phase image of a V oxide changes by about that much across the V K edge; with a 40 %
    change the same test measured 0.11 px RMS, the pairs across the edge being biased.)

    Each image is sampled analytically at its displaced coordinates (no interpolation).
    """
    rng = np.random.default_rng(seed)
    n = len(offsets_px)
    e = np.linspace(5420.0, 5540.0, n)
    step = 0.5 * (1 + erf((e - 5478.0) / (np.sqrt(2) * 3.0)))
    y, x = np.mgrid[: shape[0], : shape[1]].astype(float)
    lo, hi = 12, shape[0] - 12
    mat = [(*rng.uniform(lo, hi, 2), rng.uniform(3, 6), rng.uniform(0.2, 1)) for _ in range(5)]
    van = [(*rng.uniform(lo, hi, 2), rng.uniform(2, 4), rng.uniform(0.5, 1)) for _ in range(8)]

    def blobs(spec, d):
        return sum(
            a * np.exp(-((y - cy - d[0]) ** 2 + (x - cx - d[1]) ** 2) / (2 * s * s))
            for cy, cx, s, a in spec
        )

    imgs = np.stack(
        [
            0.3 * blobs(mat, d) + (1.0 - 0.2 * step[k]) * blobs(van, d)
            for k, d in enumerate(offsets_px)
        ]
    )
    return imgs + rng.normal(0, noise, imgs.shape)


def test_register_energies_recovers_offsets_across_an_edge():
    rng = np.random.default_rng(7)
    n, ref = 16, 8
    true = rng.normal(0, 1.0, (n, 2))
    stack = edge_stack(true, noise=0.02, seed=3)
    off = register_energies(stack, reference=ref)
    expected = true - true[ref]
    assert off.shape == (n, 2) and np.all(off[ref] == 0)
    rms = np.sqrt(np.mean((off - expected) ** 2))
    assert rms < 0.1, rms  # measured 0.044 px


def test_offset_sign_round_trip():
    true = np.array([[0.0, 0.0], [1.5, -0.7], [-0.4, 2.2]])
    stack = edge_stack(true, noise=0.0, seed=1)
    off = register_energies(stack, reference=0, chain=False)
    # images[k] holds the reference's content moved by +offsets[k] (to larger indices)
    np.testing.assert_allclose(off, true, atol=0.03)
    aligned = apply_offsets(stack, off)
    inner = (slice(6, -6), slice(6, -6))
    for k in range(3):
        err = np.abs(aligned[k][inner] - edge_stack(np.zeros((3, 2)), seed=1)[k][inner]).max()
        assert err < 0.01, (k, err)


def test_valid_mask_is_intersection_of_shifted_coverage():
    cov = np.ones((2, 20, 20), dtype=bool)
    m = valid_mask(cov, [[0.0, 0.0], [2.0, -3.0]])
    # image 1 removes (+2, −3): rows whose source index i + 2 > 19 and columns j − 3 < 0 drop
    assert m.shape == (20, 20)
    assert not m[18:].any() and not m[:, :3].any()
    assert m[:18, 3:].all()
    illum = np.zeros((20, 20))
    illum[5:15, 5:15] = 1.0
    m2 = valid_mask(cov, None, illumination=illum, margin_px=1)
    assert m2.sum() == 8 * 8
