"""V K-edge spectro-ptychography simulated as a beamline records it: fixed detector, fine sample."""

import dataclasses
import os

import numpy as np
import pytest

from diffptycho import cli
from diffptycho.io.cxi import read_cxi_entry, read_cxi_headers, read_cxi_truth
from diffptycho.io.references import read_reference_csv
from diffptycho.physics import optics, probe, spectra
from diffptycho.sim import datasets, phantoms
from diffptycho.sim import spectroptycho as sp

E3 = (5420.0, 5480.0, 5540.0)
SHAPE = (16, 16)
GEOMETRY = sp.fit_scan_to(SHAPE, sp.SPECTRO_GEOMETRY, E3)
REFINE = 8  # analytic field sampled 8× finer than the reference grid


def _blob_field(pixel_m: float, refine: int = REFINE, scale: float = 1.0, shift_px=(0.0, 0.0)):
    """Smooth Gaussian bumps (one per species) given at ``refine``× the reference grid."""
    n = refine * SHAPE[0]
    c = (np.arange(n) + 0.5) / refine - 0.5 - SHAPE[0] // 2  # reference pixels from origin
    yy, xx = np.meshgrid(c - shift_px[0], c - shift_px[1], indexing="ij")
    thickness = scale * _blobs_m(yy * pixel_m, xx * pixel_m, pixel_m)
    domain = np.where(thickness.max(axis=0) > 1e-9, np.argmax(thickness, axis=0), -1)
    return phantoms.VanadiumField(
        thickness=thickness,
        domain=domain.astype(np.int32),
        particles=(domain >= 0).astype(np.int32),
        pixel_size_m=pixel_m / refine,
    )


def _blobs_m(y, x, pixel_m):
    """Thickness (3, …) in m of three Gaussian bumps at physical points (y, x) in m."""
    centres = [(-2.0, -1.5), (1.5, 2.5), (2.5, -2.5)]  # reference pixels, ≥ 4.5 σ inside
    heights = [400e-9, 300e-9, 500e-9]
    s = 1.2 * pixel_m
    return np.stack(
        [
            h * np.exp(-((y - cy * pixel_m) ** 2 + (x - cx * pixel_m) ** 2) / (2 * s**2))
            for (cy, cx), h in zip(centres, heights, strict=True)
        ]
    )


@pytest.fixture(scope="module")
def blobs():
    return sp.simulate_vanadium_spectroptycho(
        SHAPE,
        energies_ev=E3,
        geometry=GEOMETRY,
        offset_sigma_px=1.5,
        seed=4,
        field=_blob_field(20e-9),
    )


def test_object_pixel_follows_wavelength_with_a_fixed_detector(blobs, tmp_path):
    lam = optics.wavelength(np.asarray(E3))
    np.testing.assert_allclose(blobs.pixel_size_m / lam, blobs.pixel_size_m[0] / lam[0])
    assert blobs.pixel_size_m[0] == pytest.approx(20e-9, rel=1e-12)
    assert 1 - blobs.pixel_size_m[-1] / blobs.pixel_size_m[0] == pytest.approx(0.0217, abs=2e-4)
    path = tmp_path / "v.cxi"
    datasets.write_dataset(path, blobs)
    headers = read_cxi_headers(path)
    assert len(headers) == 3
    assert {h.pixel_size_m for h in headers} == {(blobs.detector_pixel_m,) * 2}
    assert {h.distance_m for h in headers} == {GEOMETRY.distance_m}
    for e in range(len(headers)):
        scan = read_cxi_entry(path, e + 1)
        assert scan.energy_ev == pytest.approx(E3[e], rel=1e-12)
        np.testing.assert_allclose(scan.object_pixel_size_m, blobs.pixel_size_m[e], rtol=1e-12)
        # one nominal scan in metres, in each energy's own pixels in the dataset
        np.testing.assert_allclose(scan.positions_m, headers[0].positions_m, rtol=0, atol=1e-20)
        np.testing.assert_allclose(scan.positions_px, blobs.positions_px[e, 0], rtol=1e-12)
        assert scan.illumination is None
    truth = read_cxi_truth(path)
    np.testing.assert_allclose(truth["pixel_size_m"], blobs.pixel_size_m)
    assert truth["probe"].shape == (3, 1, 16, 16)
    assert truth["thickness"].shape == (3, *SHAPE) and truth["domain"].shape == SHAPE


def test_truth_on_the_reference_grid_is_the_field_averaged(blobs):
    lam0 = optics.wavelength(E3[0])
    t = blobs.truth["thickness"]
    # pixel (i, j) of the reference grid is centred at ((i − H//2)·p, (j − W//2)·p)
    c = (np.arange(SHAPE[0]) - SHAPE[0] // 2) * 20e-9
    yy, xx = np.meshgrid(c, c, indexing="ij")
    # pixel means of the bumps vs their values at pixel centres: equal to a few %; one pixel
    # off would be ≥ 30 % off
    np.testing.assert_allclose(t, _blobs_m(yy, xx, 20e-9), rtol=0, atol=0.05 * t.max())
    spec = blobs.truth["spectra"]
    k = 2 * np.pi / optics.wavelength(np.asarray(E3))
    np.testing.assert_allclose(
        blobs.truth["mu_t"],
        2 * k[:, None, None] * np.einsum("es,syx->eyx", spec.imag, t),
        rtol=1e-5,
    )
    assert blobs.truth["mu_t"][-1].max() > 3 * blobs.truth["mu_t"][0].max()  # above the edge
    assert blobs.truth["reference_pixel_size_m"] == 20e-9
    assert blobs.truth["reference_energy_ev"] == E3[0] and lam0 > 0


def _direct_frame(ds, e, j, pixel_m, sample=True):
    """One noiseless frame computed directly: analytic sample, plain NumPy FFT, no shifts."""
    energy = ds.energies_ev[e]
    f = int(ds.truth["oversample"])
    q = ds.pixel_size_m[e] / f  # fine pixel
    wy = f * ds.frames.shape[-1]
    # the stage moved the sample by +offset: the beam hits it at recorded − offset
    true_m = ds.positions_px[e, 0, j] * ds.pixel_size_m[e] - ds.truth["offsets_px"][e] * pixel_m
    c = (np.arange(wy) - wy // 2) * q
    yy, xx = np.meshgrid(c + true_m[0], c + true_m[1], indexing="ij")
    n = np.einsum("s,syx->yx", ds.truth["spectra"][e], _blobs_m(yy, xx, pixel_m)) * sample
    k = 2 * np.pi / optics.wavelength(energy)
    t = np.exp(1j * k * (1j * n.imag - n.real))  # exp(−kβt)·exp(−ikδt)
    g = GEOMETRY
    p = np.asarray(
        probe.zone_plate_probe(
            (wy, wy),
            q,
            energy,
            g.zone_plate_diameter_m,
            g.outer_zone_width_m,
            g.central_stop_diameter_m,
            ds.truth["defocus_m"][e],
        )
    )
    far = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(p * t), norm="ortho"))
    vac = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(p), norm="ortho"))
    lo, hi = wy // 2 - 8, wy // 2 + 8
    scale = ds.truth["photons_per_frame"][e] / np.sum(np.abs(vac[lo:hi, lo:hi]) ** 2)
    return scale * np.abs(far[lo:hi, lo:hi]) ** 2


@pytest.mark.parametrize("e", [0, 2])
def test_noiseless_frame_matches_a_direct_computation(blobs, e):
    expected = blobs.truth["expected_frames"][e]
    # the recorded position nearest to the thickest bump, whose frame sees the sample
    positions_m = blobs.positions_px[e, 0] * blobs.pixel_size_m[e]
    j = int(np.argmin(np.hypot(*(positions_m - np.array([2.5, -2.5]) * 20e-9).T)))
    direct = _direct_frame(blobs, e, j, 20e-9)
    error = np.abs(expected[j] - direct).max()
    # ~0.1-0.3 %: the simulation moves the probe by a Fourier shift in a periodic window and
    # interpolates the field, the direct frame samples the bumps exactly at shifted points
    assert error < 5e-3 * direct.max()
    vacuum = _direct_frame(blobs, e, j, 20e-9, sample=False)
    assert np.abs(vacuum - direct).max() > 20 * error
    # the same frame without the stage offset differs by far more than the error too
    nominal = dict(blobs.truth, offsets_px=np.zeros_like(blobs.truth["offsets_px"]))
    moved = _direct_frame(dataclasses.replace(blobs, truth=nominal), e, j, 20e-9)
    assert np.abs(moved - direct).max() > 10 * error


def test_vacuum_frames_hold_the_photons_per_frame():
    empty = _blob_field(20e-9, refine=2, scale=0.0)
    ds = sp.simulate_vanadium_spectroptycho(
        SHAPE, energies_ev=E3, geometry=GEOMETRY, seed=1, field=empty, flux_change=0.1
    )
    photons = ds.truth["photons_per_frame"]
    np.testing.assert_allclose(photons, 1e5 * np.array([0.95, 1.0, 1.05]))
    sums = ds.truth["expected_frames"].sum(axis=(-2, -1))
    np.testing.assert_allclose(sums, np.broadcast_to(photons[:, None], sums.shape), rtol=1e-5)
    counts = ds.frames[:, 0].sum(axis=(-2, -1))  # Poisson: mean N, sd √N per frame
    n = counts.shape[1]
    assert np.all(np.abs(counts.mean(axis=1) - photons) < 4 * np.sqrt(photons / n))
    # the true probes at each energy's pixel carry the same photons
    np.testing.assert_allclose(np.sum(np.abs(ds.probe) ** 2, axis=(1, 2, 3)), photons)


def test_offsets_are_not_in_the_recorded_positions():
    kw = dict(energies_ev=E3, geometry=GEOMETRY, seed=2, field=_blob_field(20e-9, refine=2))
    still = sp.simulate_vanadium_spectroptycho(SHAPE, offset_sigma_px=0.0, **kw)
    moved = sp.simulate_vanadium_spectroptycho(SHAPE, offset_sigma_px=2.0, **kw)
    np.testing.assert_array_equal(still.positions_px, moved.positions_px)
    assert np.all(still.truth["offsets_px"] == 0)
    assert np.abs(moved.truth["offsets_px"]).max() > 0.5
    assert np.abs(moved.truth["expected_frames"] - still.truth["expected_frames"]).max() > 100


def test_an_offset_is_the_sample_displaced_towards_larger_indices():
    kw = dict(energies_ev=E3[2:], geometry=GEOMETRY, seed=7)
    moved = sp.simulate_vanadium_spectroptycho(
        SHAPE, offset_sigma_px=0.5, field=_blob_field(20e-9, refine=4), **kw
    )
    offset = moved.truth["offsets_px"][0]
    assert np.abs(offset).min() > 0.05
    shifted = sp.simulate_vanadium_spectroptycho(
        SHAPE, offset_sigma_px=0.0, field=_blob_field(20e-9, refine=4, shift_px=offset), **kw
    )
    a, b = moved.truth["expected_frames"], shifted.truth["expected_frames"]
    # as in the direct comparison: the beam moved by a Fourier shift vs the sample resampled
    assert np.abs(a - b).max() < 5e-3 * a.max()
    backwards = sp.simulate_vanadium_spectroptycho(
        SHAPE, offset_sigma_px=0.0, field=_blob_field(20e-9, refine=4, shift_px=-offset), **kw
    )
    assert np.abs(a - backwards.truth["expected_frames"]).max() > 10 * np.abs(a - b).max()


def test_probe_drifts_slowly_with_energy(blobs):
    d = blobs.truth["defocus_m"]
    f = probe.zone_plate_focal_length(240e-6, 25e-9, np.asarray(E3))
    np.testing.assert_allclose(d, 13e-6 - 0.003 * (f - f[0]))
    assert 0.05 < 1 - d[-1] / d[0] < 0.2


def test_known_probe_is_written_only_when_asked(tmp_path):
    ds = sp.simulate_vanadium_spectroptycho(
        SHAPE, energies_ev=E3[:1], geometry=GEOMETRY, known_probe=True, seed=0
    )
    datasets.write_dataset(tmp_path / "k.cxi", ds)
    scan = read_cxi_entry(tmp_path / "k.cxi", 1)
    np.testing.assert_allclose(scan.illumination, ds.probe[0], rtol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"image_shape": (8, 8)}, "image_shape"),
        ({"oversample": 0}, "oversample"),
        ({"energies_ev": (5500.0, 5420.0)}, "increasing"),
        ({"offset_sigma_px": -1.0}, "offset_sigma_px"),
        ({"image_shape": (16, 16), "geometry": sp.SPECTRO_GEOMETRY}, "image_shape=\\(16, 16\\)"),
        ({"field": _blob_field(20e-9, refine=2)}, "field"),  # covers 16², the image is 32²
        ({"pixel_size_m": 60e-9}, "outer zone width"),
        ({"pixel_size_m": 5e-9}, "defocused beam"),
    ],
)
def test_bad_arguments_are_refused_clearly(kwargs, match):
    args = {"image_shape": (32, 32), "energies_ev": E3} | kwargs
    with pytest.raises(ValueError, match=match):
        sp.simulate_vanadium_spectroptycho(**args)


def test_fit_scan_to_says_which_size_fits():
    with pytest.raises(ValueError, match="at least 8 px"):
        sp.fit_scan_to((7, 7))
    assert sp.fit_scan_to((8, 8)).scan_shape == (3, 3)
    g = sp.fit_scan_to((16, 16))
    assert g.scan_shape == (5, 5)


def test_cli_writes_one_entry_per_energy_and_the_references(tmp_path, capsys):
    out = tmp_path / "v.cxi"
    argv = ["simulate", "vanadium", "-o", str(out), "--size", "16", "--energies", "3"]
    assert cli.main([*argv, "--photons", "1e3", "--offset-px", "1", "--seed", "5"]) == 0
    headers = read_cxi_headers(out)
    np.testing.assert_allclose([h.energy_ev for h in headers], E3)
    assert headers[0].n_frames == 25 and not headers[0].has_illumination
    counts = [read_cxi_entry(out, i + 1).data.sum(axis=(1, 2)).mean() for i in range(3)]
    np.testing.assert_allclose(counts, 1e3, rtol=0.1)
    truth = read_cxi_truth(out)
    assert truth["offsets_px"].shape == (3, 2) and truth["pixel_size_m"].shape == (3,)
    refs = tmp_path / "v_references.csv"
    assert os.path.exists(refs)
    species, energies, spec = read_reference_csv(refs, E3)
    assert species == ["V2O3", "VO2", "V2O5"]
    ref, _ = spectra.vanadium_reference_spectra(np.asarray(E3))
    np.testing.assert_allclose(spec[:, 1], ref["VO2"], rtol=1e-6)


def test_cli_frame_px_keeps_the_object_pixel_and_widens_the_window(tmp_path):
    """A 24-px frame: the detector pixel shrinks by 16/24, the object pixel stays 20 nm."""
    argv = ["simulate", "vanadium", "--size", "16", "--energies", "3", "--seed", "5"]
    small, big = tmp_path / "s.cxi", tmp_path / "b.cxi"
    assert cli.main([*argv, "-o", str(small)]) == 0
    assert cli.main([*argv, "-o", str(big), "--frame-px", "24"]) == 0
    a, b = read_cxi_entry(small, 1), read_cxi_entry(big, 1)
    assert a.data.shape[-2:] == (16, 16) and b.data.shape[-2:] == (24, 24)
    np.testing.assert_allclose(b.object_pixel_size_m, a.object_pixel_size_m, rtol=1e-9)
    np.testing.assert_allclose(np.asarray(b.pixel_size_m), np.asarray(a.pixel_size_m) * 16 / 24)


def test_cli_fermat_scan(tmp_path):
    out = tmp_path / "f.cxi"
    argv = ["simulate", "vanadium", "-o", str(out), "--size", "16", "--energies", "3"]
    assert cli.main([*argv, "--scan", "fermat", "--seed", "5"]) == 0
    raster = tmp_path / "r.cxi"
    assert cli.main(["simulate", "vanadium", "-o", str(raster), "--size", "16", "--energies", "3",
                     "--seed", "5"]) == 0  # fmt: skip
    a, b = read_cxi_entry(out, 1), read_cxi_entry(raster, 1)
    assert a.data.shape == b.data.shape  # the same count of positions
    assert not np.allclose(a.positions_m, b.positions_m)


@pytest.mark.parametrize(
    ("option", "match"),
    [
        (["--size", "8"], "--size 8"),
        (["--photons", "0"], "--photons"),
        (["--energies", "0"], "--energies"),
        (["--frame-px", "7"], "--frame-px 7"),
        (["--frame-px", "4"], "--frame-px 4"),
    ],
)
def test_cli_refuses_bad_values_naming_the_option(tmp_path, capsys, option, match):
    out = tmp_path / "bad.cxi"
    assert cli.main(["simulate", "vanadium", "-o", str(out), *option]) == 2
    err = capsys.readouterr().err
    assert match in err and "error" in err
    assert not out.exists()


@pytest.mark.slow  # ~5 s (JIT); the direct NumPy comparison above is the fast check
def test_the_package_model_at_the_true_positions_explains_the_frames():
    """Another discretisation of the same physics: close, not equal (no inverse crime)."""
    import jax
    import jax.numpy as jnp

    from diffptycho.models import SpectroPtycho2D

    ds = sp.simulate_vanadium_spectroptycho(
        SHAPE, energies_ev=E3[:1], geometry=GEOMETRY, offset_sigma_px=0.5, seed=3
    )
    t, pad = ds.truth, ds.padding_px
    thickness = np.pad(t["thickness"], ((0, 0), (pad, pad), (pad, pad)))
    frames = jax.jit(SpectroPtycho2D.__call__)

    def misfit(positions):
        model = SpectroPtycho2D(
            thickness=jnp.asarray(thickness),
            spectra=jnp.asarray(t["spectra"]),
            energies_ev=jnp.asarray(ds.energies_ev),
            probe=jnp.asarray(ds.probe),
            positions=jnp.asarray(positions[None]),
        )
        exp = t["expected_frames"][0]
        return np.linalg.norm(np.asarray(frames(model))[0] - exp) / np.linalg.norm(exp)

    recorded = ds.positions_px[0, 0]
    true = recorded - t["offsets_px"][0]  # the lowest energy's pixel is the reference pixel
    assert misfit(true) < 0.015  # measured 0.76 % (recorded positions: 2.2 %)
    assert misfit(recorded) > 2 * misfit(true)


def test_fermat_scan_fills_the_raster_box_without_a_grid_period():
    raster = sp.scan_positions((9, 9), 3.0)
    spiral = sp.scan_positions((9, 9), 3.0, "fermat")
    assert spiral.shape == raster.shape
    assert np.all(np.abs(spiral) <= 12.0 + 1e-9)  # the raster's bounding box
    assert np.all(np.abs(spiral).max(axis=0) > 11.0)  # and fills it
    # no repeated coordinate: a raster has 9 distinct rows, the spiral n
    assert len(np.unique(np.round(spiral[:, 0], 6))) == len(spiral)
    assert len(np.unique(raster[:, 0])) == 9
    with pytest.raises(ValueError, match="scan"):
        sp.scan_positions((9, 9), 3.0, "spiral")


def test_simulation_records_the_fermat_positions():
    kw = dict(energies_ev=E3[:2], geometry=GEOMETRY, field=_blob_field(20e-9), seed=1)
    ds = sp.simulate_vanadium_spectroptycho(SHAPE, scan="fermat", **kw)
    nominal = sp.scan_positions(GEOMETRY.scan_shape, GEOMETRY.step_px, "fermat")
    recorded = ds.positions_px[0, 0] * ds.pixel_size_m[0] / 20e-9  # reference pixels
    assert np.max(np.abs(recorded - nominal)) <= GEOMETRY.jitter_px + 1e-6
    with pytest.raises(ValueError, match="scan"):
        sp.simulate_vanadium_spectroptycho(SHAPE, scan="grid", **kw)
