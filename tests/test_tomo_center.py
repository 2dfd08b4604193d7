"""Rotation-centre estimation: exact synthetic offsets, limited ranges, the measured tooth."""

import os

import jax.numpy as jnp
import numpy as np
import pytest

from diffptycho.io.dxchange import read_dxchange
from diffptycho.physics.tomography import project
from diffptycho.recon.align import (
    center_alignment,
    center_of_mass_center,
    estimate_center,
    fourier_shift,
)


def _sinogram(angles_deg, offset, n=48):
    vol = np.zeros((n, 2, n))
    vol[10:26, :, 14:40] = 1.0
    vol[26:34, :, 8:20] = 2.0
    p = project(jnp.asarray(vol), jnp.deg2rad(jnp.asarray(angles_deg)))
    return np.asarray(fourier_shift(p, offset)), (n - 1) / 2 + offset


def test_fourier_shift_is_exact_for_band_limited_rows(rng):
    t = np.arange(64.0)
    row = np.exp(-((t - 30.0) ** 2) / 18.0)
    np.testing.assert_allclose(
        fourier_shift(row, 2.5), np.exp(-((t - 32.5) ** 2) / 18.0), atol=1e-6
    )
    stack = rng.random((3, 2, 64))
    np.testing.assert_allclose(
        fourier_shift(fourier_shift(stack, 1.3), -1.3)[..., 8:-8], stack[..., 8:-8], atol=0.05
    )


@pytest.mark.parametrize("angles_deg", [np.linspace(0, 179, 90), np.linspace(-80, 77, 60)])
def test_estimates_recover_a_known_axis_for_full_and_limited_ranges(angles_deg):
    sino, axis = _sinogram(angles_deg, offset=-2.6)
    assert center_of_mass_center(sino, np.deg2rad(angles_deg)) == pytest.approx(axis, abs=0.05)
    found = estimate_center(sino, np.deg2rad(angles_deg), initial_px=axis + 3.0)
    assert found.center_px == pytest.approx(axis, abs=0.25)
    assert found.scores.shape == found.candidates_px.shape
    params = center_alignment(found.center_px, len(angles_deg), sino.shape[-1])
    assert params.shape == (len(angles_deg), 4) and np.all(params[:, [0, 2, 3]] == 0)


def test_errors():
    with pytest.raises(ValueError, match="metric"):
        estimate_center(np.ones((4, 1, 8)), np.arange(4.0), metric="variance")
    with pytest.raises(ValueError, match="real"):
        estimate_center(np.ones((4, 1, 8)) + 1j, np.arange(4.0))
    with pytest.raises(ValueError, match="zero total"):
        center_of_mass_center(np.zeros((4, 1, 8)), np.arange(4.0))


def _tooth(shared_data):
    raw = read_dxchange(os.path.join(shared_data, "tomo_tooth", "tooth.h5"))
    return raw.line_integrals(), np.deg2rad(raw.angles_deg)


def test_tooth_centre_of_mass_is_stable_across_angle_subsets(shared_data):
    p, angles = _tooth(shared_data)
    subsets = [slice(None), slice(None, None, 2), slice(1, None, 2), slice(0, 158), slice(20, None)]
    centres = [center_of_mass_center(p[s], angles[s]) for s in subsets]
    assert np.ptp(centres) <= 0.5
    assert 290 < np.mean(centres) < 300  # the tooth sits near the middle of 640 columns


@pytest.mark.slow
def test_tooth_centre_search_is_stable_and_plausible(shared_data):
    p, angles = _tooth(shared_data)
    subsets = [slice(None), slice(None, None, 2), slice(1, None, 2), slice(0, 158)]
    centres = [estimate_center(p[s], angles[s], rows=[0]).center_px for s in subsets]
    assert np.ptp(centres) <= 0.5  # re-runs on different halves and a 157° range agree
    assert abs(np.mean(centres) - center_of_mass_center(p, angles)) < 1.0
