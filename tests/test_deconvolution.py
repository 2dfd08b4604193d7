"""Deconvolution by a known Gaussian PSF: operators, noise estimate, restoration of thin plates."""

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from diffptycho.analysis import deconvolution as dc

SIGMA_VOX = 0.7  # 11 nm FWHM at 6.7 nm voxels


def _plate(shape=(32, 32, 32), thickness=3.0, centre_shift=0.0):
    """Occupancy (5 × 5 × 5 samples per voxel) of a tilted 16 × 20 × ``thickness`` voxel plate."""
    normal = np.array([1.0, 0.3, 0.2]) / np.linalg.norm([1.0, 0.3, 0.2])
    u = np.cross(normal, [0.0, 0.0, 1.0])
    u /= np.linalg.norm(u)
    v = np.cross(normal, u)
    sub = (np.arange(5) + 0.5) / 5 - 0.5
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    centre = (np.array(shape) - 1) / 2 + centre_shift
    occ = np.zeros(shape)
    for dz in sub:
        for dy in sub:
            for dx in sub:
                r = grid + np.array([dz, dy, dx]) - centre
                inside = (np.abs(r @ normal) <= thickness / 2) & (np.abs(r @ u) <= 8)
                occ += inside & (np.abs(r @ v) <= 10)
    return occ / 125


def test_gradient_and_divergence_are_adjoint(rng):
    x = rng.normal(size=(7, 8, 9))
    p = rng.normal(size=(3, 7, 8, 9))
    lhs = float(jnp.vdot(dc._gradient(jnp.asarray(x)), jnp.asarray(p)))
    rhs = -float(jnp.vdot(jnp.asarray(x), dc._divergence(jnp.asarray(p))))
    np.testing.assert_allclose(lhs, rhs, rtol=1e-12)


def test_gaussian_transfer_blurs_a_point_to_the_psf():
    n = 32
    delta = np.zeros((n, n, n))
    delta[0, 0, 0] = 1.0
    t = dc.gaussian_transfer(delta.shape, 1.5)
    psf = np.fft.irfftn(np.fft.rfftn(delta) * t, s=delta.shape, axes=(0, 1, 2))
    np.testing.assert_allclose(psf.sum(), 1.0, rtol=1e-12)
    d = np.minimum(np.arange(n), n - np.arange(n))  # periodic distance from the origin
    # second moment along each axis = σ² (a unit Gaussian of σ = 1.5 voxels)
    np.testing.assert_allclose(np.sum(psf.sum((1, 2)) * d**2), 1.5**2, rtol=1e-4)
    assert t.shape == (n, n, n // 2 + 1) and t[0, 0, 0] == 1.0


def test_noise_sigma_of_white_noise_ignores_sparse_structure(rng):
    noise = rng.normal(0.0, 0.07, (64, 64, 64))
    structure = ndimage.gaussian_filter(_plate((64, 64, 64)), SIGMA_VOX)
    assert dc.noise_sigma(noise) == pytest.approx(0.07, rel=0.02)
    assert dc.noise_sigma(noise + structure) == pytest.approx(0.07, rel=0.03)
    assert dc.noise_sigma(structure) < 1e-3  # a smooth field is not noise


def test_noise_free_blurred_plate_is_restored():
    x = _plate()
    t = dc.gaussian_transfer(x.shape, SIGMA_VOX)
    y = np.fft.irfftn(np.fft.rfftn(x) * t, s=x.shape, axes=(0, 1, 2))
    truth = x >= 0.5
    lost = int(((y >= 0.5) != truth).sum())
    assert lost > 0.03 * truth.sum()  # the blurred 3-voxel plate loses its rim at half density
    d = dc.tv_deconvolve(y, SIGMA_VOX, sigma=0.0, n_iter=400)
    assert d.weight == 0.0 and d.residual_ratio == np.inf
    assert d.field.min() >= 0.0 and d.field.max() <= 1.0
    assert int(((d.field >= 0.5) != truth).sum()) <= 0.05 * lost
    np.testing.assert_allclose(d.field.sum(), x.sum(), rtol=1e-3)  # the PSF keeps the volume


def test_noisy_plate_mask_improves_and_residual_matches_the_noise(rng):
    x = _plate((48, 48, 48))
    x[30:33, 10:40, 10:30] = 1.0  # a second plate
    y = ndimage.gaussian_filter(x, SIGMA_VOX, mode="wrap") + rng.normal(0.0, 0.07, x.shape)
    d = dc.tv_deconvolve(y, SIGMA_VOX)
    assert d.noise_sigma == pytest.approx(0.07, rel=0.05)
    assert d.weight == pytest.approx(0.45 * d.noise_sigma)
    assert d.residual_ratio == pytest.approx(1.0, abs=0.05)  # discrepancy principle
    errors = lambda m: int((m != (x >= 0.5)).sum())  # noqa: E731
    assert errors(d.field >= 0.5) < 0.5 * errors(y >= 0.5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(psf_sigma_vox=-1.0), "psf_sigma_vox"),
        (dict(bounds=(1.0, 0.0)), "bounds"),
        (dict(weight=-1.0), "weight"),
    ],
)
def test_bad_inputs_are_named(kwargs, match):
    args = dict(psf_sigma_vox=SIGMA_VOX) | kwargs
    with pytest.raises(ValueError, match=match):
        dc.tv_deconvolve(np.zeros((8, 8, 8)), **args)
    with pytest.raises(ValueError, match="finite"):
        dc.tv_deconvolve(np.full((8, 8, 8), np.nan), SIGMA_VOX)
