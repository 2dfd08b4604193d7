"""Tilt series simulated as an experiment records them: same physics, not the model's grid."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from diffptycho import cli
from diffptycho.io.cxi import read_cxi, read_cxi_truth
from diffptycho.models import SpectroPtychoTomo
from diffptycho.physics import optics, tomography
from diffptycho.sim import datasets, tiltseries

# 8×8 frames at 6.7 nm span 54 nm: a finer zone plate and less defocus keep the beam inside
SMALL = datasets.ScanGeometry(
    probe_shape=(8, 8),
    scan_shape=(5, 5),
    step_px=2.5,
    jitter_px=0.3,
    outer_zone_width_m=10e-9,
    defocus_m=0.2e-6,
    photons_per_frame=1e4,
)
ANGLES = np.array([-80.0, -30.0, 20.0, 77.0])


def _simulate(**kwargs):
    return tiltseries.simulate_lfp_tilt_series(
        (16, 16, 16), angles_deg=ANGLES, n_particles=1, geometry=SMALL, seed=3, **kwargs
    )


@pytest.fixture(scope="module")
def aligned():
    return _simulate()


@pytest.fixture(scope="module")
def misaligned():
    return _simulate(shift_sigma_px=1.5)


def _centroid(profile):
    t = np.arange(profile.shape[-1])
    return np.sum(profile * t, axis=-1) / np.sum(profile, axis=-1)


def _package_frames(ds, energy, alignment):
    """Frames of the package's own model on the coarse grid, at one energy."""
    e = slice(energy, energy + 1)
    model = SpectroPtychoTomo(
        composition=jnp.asarray(ds.truth["composition"]),
        spectra=jnp.asarray(ds.truth["spectra"][e]),
        energies_ev=jnp.asarray(ds.energies_ev[e]),
        angles_rad=jnp.asarray(np.deg2rad(ds.angles_deg)),
        alignment=jnp.asarray(alignment),
        probe=jnp.asarray(ds.probe[e]),
        positions=jnp.asarray(ds.positions_px[e]),
        voxel_size_m=ds.pixel_size_m,
        padding_px=ds.padding_px,
    )
    return np.asarray(model.all_intensities())[0]


def _relative(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_projector_places_a_voxel_where_the_package_does():
    vol = np.zeros((12, 3, 12))
    vol[2, 1, 9] = 1.0  # z_c = −3.5, x_c = 3.5: lands at t_c = 3.5 (cos θ − sin θ)
    theta = np.deg2rad(np.linspace(-80.0, 77.0, 7))
    ours = tiltseries.project_by_interpolation(vol, theta)[:, 1]
    package = np.asarray(tomography.project(jnp.asarray(vol), jnp.asarray(theta)))[:, 1]
    np.testing.assert_allclose(_centroid(ours), _centroid(package), atol=0.1)
    expected = 3.5 * (np.cos(theta) - np.sin(theta)) + 5.5
    np.testing.assert_allclose(_centroid(ours), expected, atol=0.1)
    np.testing.assert_allclose(ours.sum(-1), 1.0, rtol=0.05)  # the voxel's mass


def test_projector_matches_package_after_binning():
    """Fine projections with the other projector, binned, ≈ the package's on the coarse grid."""
    z, y, x = np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in (32, 8, 32)], indexing="ij")
    fine = np.exp(-((z - 5) ** 2 + (y - 1) ** 2 + (x + 3) ** 2) / 18.0)
    fine += 0.5 * np.exp(-((z + 6) ** 2 + y**2 + (x - 4) ** 2) / 8.0)
    coarse = tiltseries.bin_blocks(fine, 2, (0, 1, 2))
    theta = np.deg2rad(ANGLES)
    ours = tiltseries.bin_blocks(
        tiltseries.project_by_interpolation(fine, theta, order=3), 2, (1, 2)
    )
    package = np.asarray(tomography.project(jnp.asarray(coarse), jnp.asarray(theta)))
    # fine voxel units → coarse: half the path length per voxel
    assert _relative(ours / 2, package) < 0.03


def test_fourier_shift_moves_the_centre_of_mass():
    yy, xx = np.mgrid[:32, :32]
    img = np.exp(-((yy - 14.0) ** 2 + (xx - 17.0) ** 2) / 6.0)
    out = tiltseries.fourier_shift(img, np.array([1.3, -2.6]))
    assert out.dtype == np.float64
    com = [np.sum(out * g) / np.sum(out) for g in (yy, xx)]
    np.testing.assert_allclose(com, [15.3, 14.4], atol=1e-6)


def test_scan_shifts_move_the_sample_as_stored(misaligned):
    """Frames match the package model aligned by +shift, not by 0 or −shift."""
    shifts = misaligned.truth["scan_shift_px"]
    assert shifts.shape == (2, 4, 2) and np.abs(shifts).max() > 0.5
    assert not np.allclose(shifts[0], shifts[1])  # a different shift at each energy
    for e in range(2):
        params = np.zeros((4, 4))
        errors = {}
        for sign in (1, 0, -1):
            params[:, :2] = sign * shifts[e]
            errors[sign] = _relative(
                misaligned.truth["expected_frames"][e], _package_frames(misaligned, e, params)
            )
        assert errors[1] < 0.5 * min(errors[0], errors[-1]), errors


def test_truth_probe_is_the_same_beam_at_both_samplings(aligned):
    photons = SMALL.photons_per_frame
    power = np.sum(np.abs(aligned.probe) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(power, photons, rtol=1e-9)
    # the zone plate is chromatic: 2 eV apart, its focal length changes by 0.3 %
    assert _relative(aligned.probe[1], aligned.probe[0]) > 1e-3
    np.testing.assert_array_equal(aligned.truth["probe"], aligned.probe)
    fine = dataclasses.replace(SMALL, probe_shape=(16, 16))
    fine_probe = datasets.make_probe(fine, aligned.pixel_size_m / 2, aligned.energies_ev[0])
    # band-limited beam: every other fine sample is the coarse probe (amplitude per pixel × 2)
    np.testing.assert_allclose(
        2 * fine_probe[:, ::2, ::2], aligned.probe[0], atol=1e-6 * np.abs(aligned.probe).max()
    )


def test_frames_are_poisson_counts_at_the_dose(aligned):
    frames, expected = aligned.frames, aligned.truth["expected_frames"]
    assert frames.shape == (2, 4, 25, 8, 8)
    assert np.all(frames == np.round(frames)) and frames.min() >= 0
    # absorbing sample, unitary FFT, a detector that misses some scattering: at most the dose
    assert np.all(expected.sum(axis=(-1, -2)) <= SMALL.photons_per_frame * (1 + 1e-6))
    assert expected.sum(axis=(-1, -2)).min() < 0.97 * SMALL.photons_per_frame  # sample seen
    resid = (frames - expected) / np.sqrt(np.maximum(expected, 1.0))
    bright = resid[expected > 50]
    assert abs(bright.mean()) < 4.0 / np.sqrt(bright.size)
    assert bright.std() == pytest.approx(1.0, abs=0.1)


def test_frames_are_the_same_physics_on_another_grid(aligned):
    """Close to the package's model on the coarse grid, but not equal (no inverse crime)."""
    for e in range(2):
        package = _package_frames(aligned, e, np.zeros((4, 4)))
        rel = _relative(aligned.truth["expected_frames"][e], package)
        assert 1e-4 < rel < 0.03, rel
    # and placed exactly: moving the model's sample by 0.2 px in any direction fits worse
    expected = aligned.truth["expected_frames"][0]
    best = _relative(expected, _package_frames(aligned, 0, np.zeros((4, 4))))
    for step in ([0.2, 0.0], [-0.2, 0.0], [0.0, 0.2], [0.0, -0.2]):
        params = np.zeros((4, 4))
        params[:, :2] = step
        assert _relative(expected, _package_frames(aligned, 0, params)) > 1.1 * best, step


def test_od_projections_are_aligned_optical_densities(aligned, misaligned):
    od = aligned.truth["od_projections"]
    assert od.shape == (2, 4, 16, 16) and od.min() >= 0
    np.testing.assert_array_equal(od, misaligned.truth["od_projections"])
    comp = aligned.truth["composition"]
    proj = np.stack(
        [tomography.project(jnp.asarray(c), jnp.asarray(np.deg2rad(ANGLES))) for c in comp]
    )
    k = optics.wavenumber(aligned.energies_ev)
    beta = np.imag(aligned.truth["spectra"])
    package = (
        2 * k[:, None, None, None] * aligned.pixel_size_m * np.einsum("es,sayx->eayx", beta, proj)
    )
    assert 1e-4 < _relative(od, package) < 0.1


def test_aligned_and_misaligned_share_sample_and_scan(aligned, misaligned):
    np.testing.assert_array_equal(aligned.truth["scan_shift_px"], 0.0)
    np.testing.assert_array_equal(aligned.truth["composition"], misaligned.truth["composition"])
    np.testing.assert_array_equal(aligned.positions_px, misaligned.positions_px)
    comp = aligned.truth["composition"]
    assert comp.shape == (2, 16, 16, 16) and comp.min() >= 0 and comp.sum(0).max() <= 1 + 1e-9
    assert set(np.unique(aligned.truth["labels"])) == {0, 1}


def test_cxi_is_written_as_a_beamline_would(tmp_path, misaligned):
    path = tmp_path / "tilt.cxi"
    datasets.write_dataset(path, misaligned)
    scans = read_cxi(path)
    assert len(scans) == 8
    for i, s in enumerate(scans):
        e, a = divmod(i, 4)
        assert s.energy_ev == pytest.approx(misaligned.energies_ev[e], rel=1e-12)
        assert s.angle_deg == pytest.approx(ANGLES[a])
        assert s.illumination is None  # the probe is unknown
        np.testing.assert_allclose(s.object_pixel_size_m, misaligned.pixel_size_m, rtol=1e-9)
        # nominal positions: the sample shifts are not recorded
        np.testing.assert_allclose(
            s.positions_m, misaligned.positions_px[e, a] * misaligned.pixel_size_m, rtol=1e-12
        )
        np.testing.assert_array_equal(s.data, misaligned.frames[e, a])
    truth = read_cxi_truth(path)
    np.testing.assert_array_equal(truth["scan_shift_px"], misaligned.truth["scan_shift_px"])
    np.testing.assert_array_equal(truth["probe"], misaligned.probe)
    assert truth["od_projections"].shape == (2, 4, 16, 16)

    known = tmp_path / "known.cxi"
    datasets.write_dataset(known, dataclasses.replace(misaligned, illumination_known=True))
    np.testing.assert_allclose(read_cxi(known)[5].illumination, misaligned.probe[1])


def test_cli_simulates_an_lfp_tilt_series(tmp_path, capsys):
    out = tmp_path / "s.cxi"
    args = ["simulate", "lfp", "-o", str(out), "--size", "16", "--angles", "2"]
    assert cli.main([*args, "--misalign-px", "1", "--photons", "1e4", "--known-probe"]) == 0
    scans = read_cxi(out)
    assert len(scans) == 4 and scans[0].illumination is not None
    np.testing.assert_allclose(sorted({s.angle_deg for s in scans}), [-80.0, 77.0])
    truth = read_cxi_truth(out)
    assert np.abs(truth["scan_shift_px"]).max() > 0
    assert truth["expected_frames"].sum(axis=(-1, -2)).max() <= 1e4 * (1 + 1e-6)
    assert "wrote" in capsys.readouterr().out
