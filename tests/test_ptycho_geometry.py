"""Scan geometry: Fresnel scaling, far/near-field propagators, centring, far-field plausibility."""

import numpy as np
import pytest

from diffptycho.io.scan import PtychoScan
from diffptycho.models import FarField, NearField
from diffptycho.physics import optics
from diffptycho.recon.ptycho.geometry import (
    far_field_warnings,
    fresnel_scaling,
    hologram_score,
    scan_centre,
    scan_geometry,
)
from diffptycho.recon.ptycho.start import near_field_probe_guess, starting_model
from tests._near_field_sim import (
    DETECTOR_PIXEL_M,
    ENERGY_EV,
    Z1_M,
    Z2_M,
    simulate_far_field,
    simulate_near_field,
)


@pytest.fixture(scope="module")
def near():
    return simulate_near_field(seed=1, photons=1e4)


@pytest.fixture(scope="module")
def far():
    return simulate_far_field(seed=1, photons=1e4)


def _scan(sim, offset_m=(0.0, 0.0), **kw):
    fields = dict(
        data=sim.frames,
        positions_m=sim.positions_px * sim.object_pixel_m + np.asarray(offset_m),
        energy_ev=ENERGY_EV,
        distance_m=Z2_M,
        pixel_size_m=DETECTOR_PIXEL_M,
    )
    fields.update(kw)
    return PtychoScan(**fields)


def test_fresnel_scaling_by_hand():
    # z1 = 2 cm, z2 = 3 m: M = 151, z_eff = 3/151 m, pixel 6.5 µm / 151
    g = fresnel_scaling(0.02, 3.0, (6.5e-6, 13e-6))
    assert g.magnification == pytest.approx(151.0, rel=1e-14)
    assert g.effective_distance_m == pytest.approx(3.0 / 151.0, rel=1e-14)
    assert g.object_pixel_size_m == pytest.approx((6.5e-6 / 151, 13e-6 / 151), rel=1e-14)
    # the effective distance is the series combination z1 z2 / (z1 + z2)
    assert g.effective_distance_m == pytest.approx(0.02 * 3.0 / 3.02, rel=1e-14)


@pytest.mark.parametrize("z1, z2, pixel", [(0.0, 1.0, 1e-6), (0.1, -1.0, 1e-6), (0.1, 1.0, 0)])
def test_fresnel_scaling_refuses_non_positive_lengths(z1, z2, pixel):
    with pytest.raises(ValueError, match="positive length in m"):
        fresnel_scaling(z1, z2, pixel)


def test_scan_geometry_far_and_near(near):
    scan = _scan(near)
    far_g = scan_geometry(scan)
    assert isinstance(far_g.propagator, FarField) and far_g.fresnel is None
    assert far_g.object_pixel_size_m == scan.object_pixel_size_m
    lam = float(optics.wavelength(ENERGY_EV))
    assert far_g.object_pixel_size_m[0] == pytest.approx(lam * Z2_M / (64 * DETECTOR_PIXEL_M))
    g = scan_geometry(scan, "near-field", Z1_M)
    assert isinstance(g.propagator, NearField)
    m = (Z1_M + Z2_M) / Z1_M
    assert g.object_pixel_size_m == pytest.approx((DETECTOR_PIXEL_M / m,) * 2, rel=1e-12)
    assert g.propagator.distance_m == pytest.approx(Z2_M / m, rel=1e-12)
    assert g.propagator.wavelength_m == pytest.approx(lam, rel=1e-12)


def test_scan_geometry_errors(near):
    scan = _scan(near)
    with pytest.raises(ValueError, match="focus-to-sample distance z1"):
        scan_geometry(scan, "near-field")
    with pytest.raises(ValueError, match="only sets the near-field"):
        scan_geometry(scan, "far-field", Z1_M)
    with pytest.raises(ValueError, match="expected one of"):
        scan_geometry(scan, "fresnel")
    pixel_units = PtychoScan(near.frames, near.positions_px, ENERGY_EV)
    with pytest.raises(ValueError, match="pixel-unit data"):
        scan_geometry(pixel_units, "near-field", Z1_M)
    rect = _scan(near, pixel_size_m=(6.5e-6, 13e-6))
    with pytest.raises(ValueError, match="square pixels"):
        scan_geometry(rect, "near-field", Z1_M)


def test_scan_centre_whole_units():
    pos = np.array([[1000.2, -50.0], [1010.2, -40.3], [1004.0, -45.0]])
    np.testing.assert_array_equal(scan_centre(pos), [1005.0, -45.0])


def test_absolute_positions_give_the_same_starting_object(near):
    """Motor positions millimetres from the origin: the object still spans only the scan."""
    g = scan_geometry(_scan(near), "near-field", Z1_M)
    dx = g.object_pixel_size_m[0]
    offset = np.round(np.array([1.7e-3, -3.1e-3]) / dx) * dx  # whole pixels, ~5e4 px away
    relative = starting_model(_scan(near), geometry=g)
    absolute = starting_model(_scan(near, offset_m=offset), geometry=g)
    assert absolute.object.shape == relative.object.shape == near.obj.shape
    np.testing.assert_allclose(absolute.positions, relative.positions, atol=1e-3)
    np.testing.assert_allclose(relative.positions, near.positions_px, atol=1e-4)
    assert isinstance(absolute.propagator, NearField)


def test_hologram_score_separates_near_from_far(near, far):
    n, f = hologram_score(near.frames), hologram_score(far.frames)
    assert n["hologram_like"] == 1.0 and f["hologram_like"] == 0.0
    assert n["median_level"] > 0.1 > 1e-3 > f["median_level"]
    assert n["edge_level"] > 0.05 > 1e-3 > f["edge_level"]


def test_far_field_warnings(near, far):
    # near-field frames read as far field: the hologram warning
    warnings = far_field_warnings(_scan(near))
    assert any("in-line holography" in w for w in warnings), warnings
    # far-field frames: nothing to say
    lam = float(optics.wavelength(ENERGY_EV))
    pixel = 2e-8
    det = lam * 0.1 / (32 * pixel)  # detector pixel giving a 20 nm far-field object pixel
    ff = PtychoScan(far.frames, far.positions_px * pixel, ENERGY_EV, 0.1, det)
    assert far_field_warnings(ff) == []
    # scan steps of 100 far-field pixels on 32-px frames: no overlap
    sparse = PtychoScan(far.frames, far.positions_px * 20 * pixel, ENERGY_EV, 0.1, det)
    warnings = far_field_warnings(sparse)
    assert len(warnings) == 1 and "cannot overlap" in warnings[0], warnings


def test_near_field_probe_guess_has_the_beam_footprint():
    """A flat object and a real, smooth beam: the guess is the beam within a few percent."""
    n = 64
    y, x = np.mgrid[:n, :n] - n / 2
    beam = np.exp(-(((x**2 + y**2) / (2 * 16.0**2)) ** 2))  # smooth: weak self-diffraction
    prop = NearField(pixel_size_m=50e-9, wavelength_m=1e-10, distance_m=1e-4)
    hologram = np.abs(np.asarray(prop(beam.astype(np.complex128)))) ** 2
    guess = near_field_probe_guess(np.stack([hologram] * 3), prop)
    assert np.sum(np.abs(guess) ** 2) == pytest.approx(np.sum(hologram), rel=1e-10)
    err = np.linalg.norm(np.abs(guess) - beam) / np.linalg.norm(beam)
    assert err < 0.05, err


@pytest.mark.slow
def test_measured_far_field_siemens_star_is_not_flagged(shared_data):
    """The measured far-field Siemens star (APS): far below both hologram thresholds.

    Slow (5 s: the bzip2 file is decompressed); the simulated frames of
    test_hologram_score_separates_near_from_far are the fast check.
    """
    import os

    from diffptycho.io.siemens import SIEMENS_STAR_FILE, read_siemens_star

    path = os.path.join(shared_data, SIEMENS_STAR_FILE)
    if not os.path.exists(path):
        pytest.skip(f"{path} not found")
    scan = read_siemens_star(path)
    score = hologram_score(scan.data, scan.mask)
    assert score["hologram_like"] == 0.0
    assert score["median_level"] < 0.01 and score["edge_level"] < 0.005, score
    assert far_field_warnings(scan) == []
