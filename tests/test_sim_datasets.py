"""Simulated datasets: physics of the frames, ground truth and the CXI written for them."""

import h5py
import numpy as np
import pytest

from diffptycho.io.cxi import read_cxi, read_cxi_truth
from diffptycho.physics import optics
from diffptycho.sim import datasets

SMALL = datasets.ScanGeometry(scan_shape=(3, 3), step_px=3.0, photons_per_frame=1e4)


@pytest.fixture(scope="module")
def lfp():
    return datasets.simulate_lfp_tomo(
        volume_shape=(24, 24, 24), angles_deg=np.array([-80.0, 0.0, 45.0]), geometry=SMALL
    )


def test_lfp_frames_are_poisson_counts_at_the_dose(lfp):
    n_e, n_a, n, fy, fx = lfp.frames.shape
    assert (n_e, n_a, n, fy, fx) == (2, 3, 9, 16, 16)
    assert np.all(lfp.frames == np.round(lfp.frames)) and lfp.frames.min() >= 0
    expected = lfp.truth["expected_frames"]
    # an absorbing sample transmits at most the incident dose (FFT is unitary)
    assert np.all(expected.sum(axis=(-1, -2)) <= SMALL.photons_per_frame * (1 + 1e-5))
    # Poisson: mean matches the expectation, variance ≈ mean
    resid = (lfp.frames - expected) / np.sqrt(np.maximum(expected, 1.0))
    bright = resid[expected > 50]
    assert abs(bright.mean()) < 4.0 / np.sqrt(bright.size)  # 4 standard errors of the mean
    assert resid[expected > 50].std() == pytest.approx(1.0, abs=0.1)


def test_lfp_truth_holds_both_species(lfp):
    comp = lfp.truth["composition"]
    assert comp.shape == (2, 24, 24, 24)
    assert comp.min() >= 0 and comp.sum(0).max() <= 1 + 1e-9
    assert lfp.truth["spectra"].shape == (2, 2)
    # OD ratio of the end members at the two energies: the published 0.52 and 2.14
    od = np.imag(lfp.truth["spectra"]) * optics.wavenumber(lfp.energies_ev)[:, None]
    np.testing.assert_allclose(od[1] / od[0], [0.52, 2.14], rtol=0.01)


def test_detector_pixel_matches_object_pixel(lfp):
    det = lfp.detector_pixel_size_m()
    lam = optics.wavelength(lfp.energies_ev)
    np.testing.assert_allclose(lam * lfp.distance_m / (16 * det), lfp.pixel_size_m, rtol=1e-12)


def test_cxi_written_per_scan_with_truth_apart(tmp_path, lfp):
    path = tmp_path / "lfp.cxi"
    datasets.write_dataset(path, lfp)
    scans = read_cxi(path)
    assert len(scans) == 6
    s = scans[4]  # energy 1, angle 1
    assert s.energy_ev == pytest.approx(lfp.energies_ev[1], rel=1e-12)
    assert s.angle_deg == pytest.approx(0.0)
    np.testing.assert_array_equal(s.data, lfp.frames[1, 1])
    np.testing.assert_allclose(s.positions_px, lfp.positions_px[1, 1], rtol=1e-9, atol=1e-9)
    truth = read_cxi_truth(path)
    np.testing.assert_array_equal(truth["composition"], lfp.truth["composition"])
    with h5py.File(path, "r") as f:
        assert f["entry_1/instrument_1/source_1/energy"][()] == pytest.approx(
            lfp.energies_ev[0] * optics.EV_TO_J, rel=1e-12
        )
        assert "composition" not in f["entry_1"]


def test_vanadium_stack_spans_the_edge():
    ds = datasets.simulate_vanadium_2d(
        image_shape=(24, 24),
        energies_ev=np.linspace(5420, 5540, 5),
        geometry=datasets.ScanGeometry(scan_shape=(2, 2), step_px=3.0, photons_per_frame=1e4),
    )
    assert ds.frames.shape == (5, 1, 4, 16, 16)
    beta = np.imag(ds.truth["spectra"])
    assert np.all(beta[-1] > beta[0])  # above the V K edge every species absorbs more
    assert set(np.unique(ds.truth["domain"])) >= {-1, 0}


def test_patches_outside_the_projection_are_refused():
    with pytest.raises(ValueError, match="positions"):
        datasets.simulate_lfp_tomo(
            volume_shape=(24, 16, 24),
            angles_deg=np.array([0.0]),
            geometry=datasets.ScanGeometry(scan_shape=(9, 9), step_px=3.0),
        )


def test_scan_patterns():
    from diffptycho.sim.patterns import fermat_spiral_positions, raster_positions

    r = raster_positions(3, 4, 2.0)
    assert r.shape == (12, 2)
    np.testing.assert_allclose(r.mean(0), 0.0, atol=1e-12)
    np.testing.assert_allclose(np.unique(r[:, 1]), [-3, -1, 1, 3])
    s = fermat_spiral_positions(500, 2.0)
    d = np.sqrt(((s[:, None] - s[None]) ** 2).sum(-1)) + np.eye(500) * 1e9
    assert 1.5 < np.median(d.min(1)) < 3.0
    with pytest.raises(ValueError, match="step_px"):
        raster_positions(2, 2, 0.0)
