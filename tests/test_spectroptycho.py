"""Spectro-ptychography driver: grids, thickness fit, model grid transforms, file checks."""

import dataclasses

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest

from diffptycho.models import SpectroPtycho2D
from diffptycho.physics.optics import wavenumber
from diffptycho.physics.spectra import vanadium_reference_spectra
from diffptycho.pipeline import spectroptycho as sp
from diffptycho.recon.align.energy import resample_to_grid


def _blobs(shape, pixel_m, centres_m, width_m):
    """An analytic image: Gaussians at physical positions (m) from the centre pixel."""
    y = (np.arange(shape[0]) - shape[0] // 2)[:, None] * pixel_m
    x = (np.arange(shape[1]) - shape[1] // 2)[None, :] * pixel_m
    return sum(np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * width_m**2)) for cy, cx in centres_m)


def test_grid_parameters_map_the_common_grid_like_the_resampler():
    # the model's per-energy transform and the driver's resampling are one geometry: the
    # common-grid image moved by grid_parameters equals the analytic image on energy e's grid
    centres = [(-60e-9, 40e-9), (50e-9, -30e-9)]
    p_ref, p_e = 20e-9, 19.6e-9
    offset = np.array([[1.3, -0.7]])  # energy e sees the sample moved by this (common px)
    common = _blobs((40, 40), p_ref, centres, 70e-9)
    params = sp.grid_parameters(np.array([p_e]), p_ref, offset)
    from diffptycho.physics.alignment import cubic_similarity_transform

    moved = np.asarray(cubic_similarity_transform(jnp.asarray(common), jnp.asarray(params[0])))
    shifted = [(cy + offset[0, 0] * p_ref, cx + offset[0, 1] * p_ref) for cy, cx in centres]
    truth = _blobs((40, 40), p_e, shifted, 70e-9)
    inner = (slice(8, 32), slice(8, 32))
    assert np.max(np.abs(moved - truth)[inner]) < 0.005
    # and the resampler takes energy e's image back onto the common grid
    back = resample_to_grid(truth[None], [p_e], p_ref, (40, 40), offsets_px=offset).images[0]
    assert np.max(np.abs(back - common)[inner]) < 0.01


def test_spectro_model_grid_identity_and_shift():
    e = np.array([5450.0, 5500.0])
    spectra, _ = vanadium_reference_spectra(e)
    spec = jnp.asarray(np.stack([spectra["VO2"]], axis=1), jnp.complex64)
    t = np.zeros((1, 24, 24), np.float32)
    t[0, 10:14, 9:12] = 1e-7
    probe = jnp.ones((2, 1, 8, 8), jnp.complex64)
    pos = jnp.zeros((2, 3, 2), jnp.float32)
    plain = SpectroPtycho2D(jnp.asarray(t), spec, jnp.asarray(e), probe, pos)
    same = SpectroPtycho2D(jnp.asarray(t), spec, jnp.asarray(e), probe, pos, grid=jnp.zeros((2, 4)))
    np.testing.assert_allclose(plain.transmission(), same.transmission(), atol=1e-6)
    grid = jnp.asarray([[0.0, 0.0, 0.0, 0.0], [2.0, -1.0, 0.0, 0.0]])
    moved = SpectroPtycho2D(jnp.asarray(t), spec, jnp.asarray(e), probe, pos, grid=grid)
    expected = np.roll(np.asarray(plain.transmission())[1], (2, -1), axis=(0, 1))
    np.testing.assert_allclose(moved.transmission()[1], expected, atol=1e-6)
    with pytest.raises(ValueError, match="grid"):
        SpectroPtycho2D(jnp.asarray(t), spec, jnp.asarray(e), probe, pos, grid=jnp.zeros((3, 4)))


def test_fit_thickness_recovers_a_noiseless_mixture():
    e = np.linspace(5440.0, 5520.0, 24)
    spectra, _ = vanadium_reference_spectra(e)
    names = ["V2O3", "VO2", "V2O5"]
    spec = np.stack([spectra[n] for n in names], axis=1)
    rng = np.random.default_rng(1)
    t = rng.uniform(0, 2e-7, (3, 5, 6)) * (rng.uniform(size=(3, 5, 6)) > 0.3)
    integral = np.einsum("es,syx->eyx", spec, t)
    k = wavenumber(e)[:, None, None]
    od, phase = 2 * k * integral.imag, -k * integral.real
    fitted = sp.fit_thickness(od, phase, e, spec)
    np.testing.assert_allclose(fitted, t, atol=2e-10)
    with pytest.raises(ValueError, match="energy axis"):
        sp.fit_thickness(od[:-1], phase, e, spec)


def test_centre_pad_keeps_the_centre_pixel():
    img = np.arange(25.0).reshape(5, 5)
    big = sp._centre_pad(img, (8, 9))
    assert big[4, 4] == img[2, 2]
    np.testing.assert_array_equal(sp._centre_pad(big, (5, 5)), img)


def test_read_energy_scans_rejects_duplicate_energies_and_single_entries(tmp_path):
    from diffptycho.io.cxi import write_cxi
    from diffptycho.io.scan import PtychoScan

    def scan(energy):
        return PtychoScan(
            data=np.ones((4, 8, 8), np.float32),
            positions_m=np.zeros((4, 2)),
            energy_ev=energy,
            distance_m=1.0,
            pixel_size_m=(75e-6, 75e-6),
        )

    path = str(tmp_path / "dup.cxi")
    write_cxi(path, [scan(5450.0), scan(5460.0), scan(5450.0)])
    with pytest.raises(ValueError, match="both at"):
        sp.read_energy_scans(path)
    write_cxi(path, [scan(5450.0)])
    with pytest.raises(ValueError, match="one entry per energy"):
        sp.read_energy_scans(path)


def test_settings_reject_bad_values():
    with pytest.raises(ValueError, match="engine"):
        sp.SpectroPtychoSettings(engine="nope")
    with pytest.raises(ValueError, match="mode"):
        sp.SpectroPtychoSettings(mode="staged")
    with pytest.raises(ValueError, match="kk_relax"):
        sp.SpectroPtychoSettings(kk_relax=0.0)
    with pytest.raises(ValueError, match="object_refine"):
        sp.SpectroPtychoSettings(object_refine=0)
    with pytest.raises(ValueError, match="kk_final_iterations"):
        sp.SpectroPtychoSettings(kk_final_iterations=-1)
    with pytest.raises(ValueError, match="subpixel = 'cubic'"):
        sp.SpectroPtychoSettings(subpixel="cubic")
    with pytest.raises(ValueError, match="engine='lsqml'"):
        sp.SpectroPtychoSettings(subpixel="fourier", engine="lsqml")
    with pytest.raises(ValueError, match="refine_positions"):
        sp.SpectroPtychoSettings(subpixel="fourier", refine_positions=True)


@pytest.mark.parametrize(
    "name", ["probe_band", "refine_positions", "refine_probe", "probe_search", "kk", "register"]
)
@pytest.mark.parametrize("value", ["false", 0, 1, None])
def test_settings_flags_refuse_anything_but_a_bool(name, value):
    # "false" from a config file is truthy; 0/1 would pass silently as well
    with pytest.raises(ValueError, match=f"{name} = .*expected True or False"):
        sp.SpectroPtychoSettings(**{name: value})
    assert getattr(sp.SpectroPtychoSettings(**{name: False}), name) is False


def test_fourier_subpixel_reaches_every_energy(small_vanadium, monkeypatch):
    """``subpixel`` is the model's: every energy's engine sees it (and the run completes)."""
    from diffptycho.pipeline import stages

    seen = []
    solve = stages._solve

    def recording_solve(model, *args, **kwargs):
        seen.append(model.subpixel)
        return solve(model, *args, **kwargs)

    monkeypatch.setattr(stages, "_solve", recording_solve)
    settings = sp.SpectroPtychoSettings(
        iterations=2, probe_iterations=2, refine_probe=False, object_refine=1, subpixel="fourier"
    )
    r = sp.run_spectroptycho(small_vanadium, settings, log=lambda m: None)
    assert seen and set(seen) == {"fourier"}
    assert np.isfinite(r.optical_density[:, r.valid_mask]).all()


@pytest.mark.parametrize("value", [0, -2, 1.5, 2.0, "2", None, True])
def test_object_refine_refuses_anything_but_a_positive_integer(value):
    # a float would reach array shapes (factor·N) far from the setting; say so up front
    with pytest.raises(ValueError, match=r"object_refine = .*expected an integer ≥ 1"):
        sp.SpectroPtychoSettings(object_refine=value)


@pytest.mark.parametrize("value", [1, 2, 3, np.int64(2)])
def test_object_refine_accepts_positive_integers(value):
    assert sp.SpectroPtychoSettings(object_refine=value).object_refine == value


@pytest.mark.parametrize("value", [-1, 2.5, 3.0, "10", None, False])
def test_kk_final_iterations_refuses_anything_but_a_nonnegative_integer(value):
    with pytest.raises(ValueError, match=r"kk_final_iterations = .*expected an integer ≥ 0"):
        sp.SpectroPtychoSettings(kk_final_iterations=value)


def test_kk_final_iterations_accepts_zero_and_positive_integers():
    assert sp.SpectroPtychoSettings(kk_final_iterations=0).kk_final_iterations == 0
    assert sp.SpectroPtychoSettings(kk_final_iterations=7).kk_final_iterations == 7


def _registration_models(offsets_px, n_blobs=12, width_px=6.0, seed=0):
    """One Ptycho2D per energy: a field of phase/absorption blobs moved by ``offsets_px``.

    The blobs are evaluated at their moved positions (no interpolation); the probe and the
    scan, so the lit window, are the same at every energy and cut through blobs.
    """
    from diffptycho.models import Ptycho2D

    n = 64
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, n, (n_blobs, 2))
    heights = rng.uniform(0.3, 1.0, n_blobs)
    y, x = np.meshgrid(np.arange(n, dtype=float), np.arange(n, dtype=float), indexing="ij")
    u = np.arange(16) - 8.0
    probe = np.exp(-(u[:, None] ** 2 + u[None, :] ** 2) / (2 * 4.0**2)).astype(np.complex64)
    g = np.arange(-16.0, 17.0, 4.0)  # positions from the object's centre, px
    positions = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    models = []
    for dy, dx in offsets_px:
        t = sum(
            h * np.exp(-((y - cy - dy) ** 2 + (x - cx - dx) ** 2) / (2 * width_px**2))
            for h, (cy, cx) in zip(heights, centres, strict=True)
        )
        models.append(
            Ptycho2D(
                jnp.asarray(np.exp(-(0.3 + 1j) * t), jnp.complex64),
                jnp.asarray(probe[None]),
                jnp.asarray(positions, jnp.float32),
            )
        )
    return models


def test_iterated_registration_recovers_subpixel_offsets_where_one_round_does_not():
    # the lit window stays put while the sample moves: one cross-correlation is biased
    # towards zero shift (here by ≈ 30 % of it); iterating on the resampled stack removes it
    n_e = 8
    truth = np.random.default_rng(1).normal(0.0, 0.5, (n_e, 2))
    truth[0] = 0.0  # the reference energy
    models = _registration_models(truth)
    grid = sp._Grid(np.full(n_e, 20e-9), 20e-9, tuple(models[0].object.shape), np.zeros((n_e, 2)))

    def rms(found):
        return float(np.sqrt(np.mean(np.sum((found - truth) ** 2, axis=1))))

    one = rms(sp._register(models, grid, 0, 100, rounds=1))
    iterated = rms(sp._register(models, grid, 0, 100))
    assert one > 0.1  # a single round misses the 0.1 px target on this field
    assert iterated < 0.03
    # an exact start is kept (the first correction is below tol_px)
    again = dataclasses.replace(grid, offsets=truth.copy())
    assert rms(sp._register(models, again, 0, 100, rounds=1)) < 0.03


def _small_vanadium(directory):
    """A 4-energy, 16² V K-edge file with the true probe (seconds to reconstruct): path, data."""
    from diffptycho.sim import datasets
    from diffptycho.sim.spectroptycho import fit_scan_to, simulate_vanadium_spectroptycho

    energies = np.linspace(5450.0, 5500.0, 4)
    ds = simulate_vanadium_spectroptycho(
        (16, 16),
        energies_ev=energies,
        geometry=fit_scan_to((16, 16), energies_ev=energies),
        known_probe=True,
        seed=2,
    )
    path = str(directory / "v.cxi")
    datasets.write_dataset(path, ds)
    return path, ds


@pytest.fixture(scope="module")
def small_vanadium(tmp_path_factory):
    """The path of :func:`_small_vanadium`'s file, once per module."""
    return _small_vanadium(tmp_path_factory.mktemp("kk"))[0]


@pytest.mark.parametrize("final", [0, 3])
def test_kk_final_iterations_run_after_the_last_projection(small_vanadium, monkeypatch, final):
    from diffptycho.pipeline import stages

    events = []
    solve, apply_kk = stages._solve, sp._apply_kk

    def counting_solve(model, engine, frames, mask, iterations, *args, **kwargs):
        out = solve(model, engine, frames, mask, iterations, *args, **kwargs)
        events.append(("ptycho", iterations, len(out[1])))
        return out

    def counting_kk(*args, **kwargs):
        events.append(("kk",))
        return apply_kk(*args, **kwargs)

    monkeypatch.setattr(stages, "_solve", counting_solve)
    monkeypatch.setattr(sp, "_apply_kk", counting_kk)
    settings = sp.SpectroPtychoSettings(
        iterations=2,
        probe_iterations=2,
        kk=True,
        kk_rounds=2,
        kk_iterations=1,
        kk_final_iterations=final,
        refine_probe=False,
        object_refine=1,
    )
    sp.run_spectroptycho(small_vanadium, settings, log=lambda m: None)
    kk_at = [i for i, ev in enumerate(events) if ev == ("kk",)]
    assert len(kk_at) == settings.kk_rounds
    between = events[kk_at[0] + 1 : kk_at[1]]
    assert between == [("ptycho", 1, 1)] * 4  # kk_iterations of every energy per round
    after = events[kk_at[-1] + 1 :]
    assert after == [("ptycho", final, final)] * (4 if final else 0)


@pytest.mark.parametrize("revisit", [0, 2, 9])
def test_probe_revisit_reruns_the_first_energies_backwards_from_the_next_probe(
    small_vanadium, monkeypatch, revisit
):
    from diffptycho.pipeline import stages

    calls = []
    solve = stages._solve

    def recording_solve(model, engine, frames, mask, iterations, progress, description, *a):
        out = solve(model, engine, frames, mask, iterations, progress, description, *a)
        calls.append((description, np.asarray(model.probe), np.asarray(out[0].probe)))
        return out

    monkeypatch.setattr(stages, "_solve", recording_solve)
    settings = sp.SpectroPtychoSettings(
        iterations=2, probe_iterations=3, probe_revisit=revisit, object_refine=1, register=False
    )
    r = sp.run_spectroptycho(small_vanadium, settings, log=lambda m: None)
    n = min(revisit, 3)  # 4 energies: at most the first 3 have a successor
    assert len(calls) == 4 + n
    forward, back = calls[:4], calls[4:]
    assert [c[0] for c in back] == [forward[e][0] + " (revisit)" for e in range(n - 1, -1, -1)]
    for k, (_, start, end) in enumerate(back):
        e = n - 1 - k
        successor = back[k - 1][2] if k else forward[e + 1][2]  # its final probe, rescaled
        scale = np.sqrt(np.sum(np.abs(forward[e][2]) ** 2) / np.sum(np.abs(successor) ** 2))
        np.testing.assert_allclose(start, successor * scale, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(r.probes[e], end, rtol=1e-6)  # the revisit's model is kept
    with pytest.raises(ValueError, match="probe_revisit"):
        sp.SpectroPtychoSettings(probe_revisit=-1)


def test_fourier_upsample_samples_a_band_limited_image_finer_and_keeps_its_power():
    n, f = 16, 2
    ky, kx = 3, -5  # cycles per image, inside the band

    def wave(m):  # the same function sampled with m points, centred at pixel m // 2
        u = (np.arange(m) - m // 2) / m
        return np.exp(2j * np.pi * (ky * u[:, None] + kx * u[None, :]))

    coarse = wave(n)
    fine = sp.fourier_upsample(coarse[None], f)[0]
    np.testing.assert_allclose(fine * f, wave(f * n), atol=1e-12)  # amplitude per pixel / f
    np.testing.assert_allclose(np.sum(np.abs(fine) ** 2), np.sum(np.abs(coarse) ** 2))


@pytest.mark.parametrize("factor", [2, 3])
def test_bin_to_detector_pixel_box_averages_about_the_shared_centre(factor):
    big = 2 * factor * 8 + 4  # not a multiple of 2·factor: the coarse grid is cropped
    u = np.arange(big) - big // 2  # fine pixel index from the centre
    ramp = 0.5 + 0.25 * u[:, None] - 0.1 * u[None, :]
    out = sp.bin_to_detector_pixel(ramp[None], factor)[0]
    h = 2 * (big // (2 * factor))
    assert out.shape == (h, h)
    j = np.arange(h) - h // 2  # coarse pixel j is centred at fine offset factor·j
    inner = slice(1, -1)  # the border pixels see the zero outside
    expect = 0.5 + 0.25 * factor * j[:, None] - 0.1 * factor * j[None, :]
    np.testing.assert_allclose(out[inner, inner], expect[inner, inner], atol=1e-12)
    # a feature one fine pixel wide is averaged over its coarse pixel's area
    spike = np.zeros((big, big))
    spike[big // 2, big // 2] = 1.0
    binned = sp.bin_to_detector_pixel(spike, factor)
    assert binned[h // 2, h // 2] == pytest.approx(1.0 / factor**2)
    assert binned.sum() == pytest.approx(1.0 / factor**2)


def test_refined_scan_halves_the_object_pixel_and_frees_the_outer_frequencies():
    from diffptycho.io.scan import PtychoScan

    rng = np.random.default_rng(0)
    frames = rng.uniform(0, 10, (3, 8, 8)).astype(np.float32)
    probe = rng.normal(size=(8, 8)) + 1j * rng.normal(size=(8, 8))
    scan = PtychoScan(frames, np.zeros((3, 2)), energy_ev=5450.0, distance_m=0.1,
                      pixel_size_m=(75e-6, 75e-6), illumination=probe)  # fmt: skip
    fine = sp.refined_scan(scan, 2)
    assert fine.data.shape == (3, 16, 16) and fine.mask.shape == (16, 16)
    np.testing.assert_allclose(
        np.asarray(fine.object_pixel_size_m), 0.5 * np.asarray(scan.object_pixel_size_m)
    )
    np.testing.assert_array_equal(fine.data[:, 4:12, 4:12], frames)
    assert fine.mask[4:12, 4:12].all() and fine.mask.sum() == 64
    assert fine.data[:, ~fine.mask].max() == 0
    np.testing.assert_allclose(np.sum(np.abs(fine.illumination) ** 2), np.sum(np.abs(probe) ** 2),
                               rtol=1e-5)  # fmt: skip
    assert sp.refined_scan(scan, 1) is scan


def test_cli_end_to_end_writes_the_stacks_and_feeds_xanes_fit(tmp_path, capsys):
    import h5py

    from diffptycho.cli import main

    data = str(tmp_path / "v.cxi")
    assert main(["simulate", "vanadium", "-o", data, "--size", "16", "--energies", "6",
                 "--known-probe"]) == 0  # fmt: skip
    out = str(tmp_path / "stacks.h5")
    refs = str(tmp_path / "v_references.csv")
    argv = ["spectroptycho", data, "-o", out, "--references", refs, "--kk", "--kk-rounds", "1",
            "--kk-iterations", "2", "-n", "3", "--probe-iterations", "3",
            "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    with h5py.File(out) as f:
        od = f["optical_density"][()]
        assert od.ndim == 3 and od.shape[0] == 6
        assert f["phase"].shape == od.shape
        assert f["valid_mask"].shape == od.shape[1:] and f["valid_mask"][()].any()
        assert f["offsets_px"].shape == (6, 2)
        assert f["thickness"].shape[0] == 3 and f["thickness"].attrs["units"] == "m"
        np.testing.assert_array_equal(np.diff(f["energies_ev"][()]) > 0, True)
    from diffptycho.io.od_stack import read_spectral_stack

    stack = read_spectral_stack(out)
    assert stack.od.shape == od.shape and stack.phase is not None
    # joint mode without references: per-pixel spectra with the KK penalty
    argv = ["spectroptycho", data, "-o", out + "j", "--mode", "joint", "--kk", "--kk-rounds",
            "1", "--kk-iterations", "1", "-n", "2", "--probe-iterations", "2",
            "--joint-iterations", "2", "--kk-sigma", "0.02", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    with h5py.File(out + "j") as f:
        assert f["optical_density"].shape == od.shape and "thickness" not in f
        assert f["joint_loss"].shape == (2,)
    assert "per-pixel spectra with the KK penalty" in capsys.readouterr().err


def test_interrupted_per_energy_pass_resumes_to_the_same_result(tmp_path, monkeypatch):
    from diffptycho.io.checkpoint import Checkpoint
    from diffptycho.pipeline import stages
    from diffptycho.recon import interrupt

    path, ds = _small_vanadium(tmp_path)
    settings = sp.SpectroPtychoSettings(iterations=3, probe_iterations=3, register=False)
    quiet = {"log": lambda m: None}
    full = sp.run_spectroptycho(path, settings, **quiet)
    # reconstructed on a 2× finer object grid, reported on the detector's pixel
    assert settings.object_refine == 2
    np.testing.assert_allclose(full.pixel_sizes_m, ds.pixel_size_m / 2, rtol=1e-9)
    assert full.pixel_size_m == pytest.approx(ds.pixel_size_m[0], rel=1e-9)
    assert full.objects[0].shape[0] > 2 * full.optical_density.shape[1] - 8

    solve, calls = stages._solve, []

    def stop_after_two(*args, **kwargs):
        calls.append(1)
        out = solve(*args, **kwargs)
        if len(calls) == 2:
            interrupt.request_stop()
        return out

    ckpt = Checkpoint(str(tmp_path / "out.ckpt.h5"), "run-1", every=0)
    monkeypatch.setattr(stages, "_solve", stop_after_two)
    with interrupt.stop_on_signals(), pytest.raises(interrupt.Interrupted, match="2 of 4"):
        sp.run_spectroptycho(path, settings, checkpoint=ckpt, **quiet)
    monkeypatch.setattr(stages, "_solve", solve)
    assert ckpt.exists()
    with interrupt.stop_on_signals():
        resumed = sp.run_spectroptycho(path, settings, checkpoint=ckpt, resume=True, **quiet)
    for a, b in zip(full.objects, resumed.objects, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(full.optical_density, resumed.optical_density, atol=1e-6)
    other = Checkpoint(ckpt.path, "run-2")
    with pytest.raises(ValueError, match="other inputs or settings"):
        sp.run_spectroptycho(path, settings, checkpoint=other, resume=True, **quiet)


def _rms_radius_px(probe) -> float:
    """RMS radius (px) of a probe's intensity, summed over modes, about its centroid."""
    p = np.asarray(probe)
    i = np.sum(np.abs(p.reshape(-1, *p.shape[-2:])) ** 2, axis=0)
    w = i / i.sum()
    yy, xx = np.meshgrid(*[np.arange(n) - n // 2 for n in i.shape], indexing="ij")
    cy, cx = np.sum(w * yy), np.sum(w * xx)
    return float(np.sqrt(np.sum(w * ((yy - cy) ** 2 + (xx - cx) ** 2))))


def test_probe_search_finds_the_defocused_beam_the_focus_guess_misses(small_vanadium):
    # the simulated zone-plate probe is 13 µm out of focus; the data-derived guess (flat
    # phase) is the beam at the focus, a spot 40 % too narrow, and retrieval from it does
    # not widen it (V K-edge study: no pixel lit at every energy)
    factor = 2
    scans = [sp.refined_scan(s, factor) for s in sp.read_energy_scans(small_vanadium)]
    first = scans[0]
    truth = _rms_radius_px(first.illumination)
    scan = dataclasses.replace(first, illumination=None)  # as if the file had no probe
    template = sp._template(scan, sp._centred_positions(scans)[0], 1)
    guess = _rms_radius_px(sp._probe_guess(scan, factor))
    settings = sp.SpectroPtychoSettings(engine="raar", probe_search=True)
    probe, table = sp._searched_probe(scan, template, settings, factor)
    assert abs(guess - truth) > 0.3 * truth
    assert abs(_rms_radius_px(probe) - truth) < 0.25 * truth
    assert table["defocus"][np.argmin(table["loss"])] != 0.0
    assert len(table["loss"]) == 2 * settings.probe_search_count + 1
    assert probe.shape == (1, *scan.data.shape[-2:])
    with pytest.raises(ValueError, match="probe_search_count"):
        sp.SpectroPtychoSettings(probe_search_count=0)


def _pixel_scene(n_e=3, size=24, seed=0):
    """Per-pixel μt and φ stacks on a common grid and the leaves of a spectral model."""
    rng = np.random.default_rng(seed)
    y, x = np.meshgrid(*[np.arange(size) - size // 2] * 2, indexing="ij")
    blob = np.exp(-((y - 1.0) ** 2 + (x + 2.0) ** 2) / (2 * 3.0**2))
    od = np.stack([(0.2 + 0.1 * e) * blob for e in range(n_e)])
    phase = np.stack([-(0.3 - 0.05 * e) * blob for e in range(n_e)])
    u = np.arange(8) - 4.0
    probe = np.exp(-(u[:, None] ** 2 + u[None, :] ** 2) / 8.0) * np.exp(0.3j * u[None, :])
    g = np.arange(-6.0, 7.0, 3.0)
    pos = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    pos = pos + rng.uniform(-0.5, 0.5, pos.shape)  # off the grid: no raster symmetry
    leaves = {
        "energies_ev": jnp.asarray(np.linspace(5450.0, 5500.0, n_e), jnp.float32),
        "probe": jnp.asarray(np.broadcast_to(probe, (n_e, 1, 8, 8)), jnp.complex64),
        "positions": jnp.asarray(np.broadcast_to(pos, (n_e, *pos.shape)), jnp.float32),
        "grid": jnp.asarray(
            sp.grid_parameters(
                np.array([20e-9, 19.8e-9, 19.6e-9][:n_e]), 20e-9, rng.normal(0, 0.4, (n_e, 2))
            ),
            jnp.float32,
        ),
    }
    return od, phase, leaves


def test_pixel_spectra_model_equals_the_species_model_on_its_spectra():
    # one species of thickness t: μt = 2kβt and φ = −kδt per pixel give the same frames as
    # the species model, per-energy pixel sizes and offsets included (both move linear maps)
    from diffptycho.models import PixelSpectra2D

    e = np.array([5450.0, 5480.0, 5500.0])
    spectra, _ = vanadium_reference_spectra(e)
    spec = np.stack([spectra["VO2"]], axis=1)
    _, _, leaves = _pixel_scene()
    leaves["energies_ev"] = jnp.asarray(e, jnp.float32)
    y, x = np.meshgrid(*[np.arange(24) - 12] * 2, indexing="ij")
    t = 4e-7 * np.exp(-(y**2 + (x - 1) ** 2) / 18.0)[None]
    k = np.asarray(wavenumber(e))[:, None, None]
    species = SpectroPtycho2D(jnp.asarray(t, jnp.float32), jnp.asarray(spec, jnp.complex64),
                              **leaves)  # fmt: skip
    pixels = PixelSpectra2D(
        jnp.asarray(2 * k * spec[:, 0].imag[:, None, None] * t, jnp.float32),
        jnp.asarray(-k * spec[:, 0].real[:, None, None] * t, jnp.float32),
        **leaves,
    )
    a, b = np.asarray(species()), np.asarray(pixels())
    assert np.max(np.abs(a - b)) < 1e-4 * np.max(a)
    with pytest.raises(ValueError, match="same"):
        PixelSpectra2D(pixels.optical_density, pixels.phase[:2], **leaves)
    with pytest.raises(ValueError, match="positions"):
        PixelSpectra2D(pixels.optical_density, pixels.phase,
                       **{**leaves, "positions": leaves["positions"][:2]})  # fmt: skip


@pytest.mark.parametrize("model", ["pixels", "species"])
def test_spectral_models_model_sub_pixel_positions_like_ptycho2d(model):
    # subpixel="fourier": every energy's frames are Ptycho2D's with the same transmission,
    # probe and positions (patch at the integer position, probe moved by the rest)
    from diffptycho.models import PixelSpectra2D, Ptycho2D

    od, phase, leaves = _pixel_scene()
    if model == "pixels":
        maps = (jnp.asarray(od, jnp.float32), jnp.asarray(phase, jnp.float32))
        kind = PixelSpectra2D
    else:
        spec, _ = vanadium_reference_spectra(np.asarray(leaves["energies_ev"], np.float64))
        t = jnp.asarray(4e-7 * od[:1] / od.max(), jnp.float32)
        maps = (t, jnp.asarray(np.stack([spec["VO2"]], 1), jnp.complex64))
        kind = SpectroPtycho2D
    made = {s: kind(*maps, **leaves, subpixel=s) for s in ("bilinear", "fourier")}
    frames = np.asarray(made["fourier"]())
    for e, t in enumerate(made["fourier"].transmission()):
        one = Ptycho2D(t, leaves["probe"][e], leaves["positions"][e], subpixel="fourier")
        np.testing.assert_allclose(frames[e], np.asarray(one()), rtol=1e-4, atol=1e-6)
    # off the integer grid the two models differ (the positions are fractional)
    assert np.max(np.abs(frames - np.asarray(made["bilinear"]()))) > 1e-3 * frames.max()
    with pytest.raises(ValueError, match="subpixel"):
        PixelSpectra2D(jnp.asarray(od), jnp.asarray(phase), **leaves, subpixel="cubic")


def test_pixel_spectra_gradients_float64():
    import jax
    from jax.test_util import check_grads

    from diffptycho.models import PixelSpectra2D

    assert jax.config.jax_enable_x64  # the conftest runs the suite in float64
    od, phase, leaves = _pixel_scene(n_e=2, size=16)
    leaves = {k: jnp.asarray(v, jnp.complex128 if k == "probe" else jnp.float64)
              for k, v in leaves.items()}  # fmt: skip
    target = jnp.asarray(np.random.default_rng(3).uniform(0.5, 2.0, (2, 25, 8, 8)))

    def loss(a, b):
        m = PixelSpectra2D(a, b, **leaves)
        return jnp.sum((m() - target) ** 2)  # (√ of near-zero counts defeats differences)

    check_grads(loss, (jnp.asarray(od), jnp.asarray(phase)), order=1, modes=["rev"])


def test_joint_fit_recovers_per_pixel_stacks_from_a_perturbed_start():
    # frames of known per-pixel stacks (per-energy pixel sizes and offsets in the model);
    # from a start off by a smooth 0.05 OD / 0.05 rad, Gauss–Newton gets within 1/20
    import types

    from diffptycho.models import PixelSpectra2D

    od, phase, leaves = _pixel_scene()
    truth = PixelSpectra2D(jnp.asarray(od, jnp.float32), jnp.asarray(phase, jnp.float32),
                           **leaves)  # fmt: skip
    frames = np.asarray(truth())
    scans = [types.SimpleNamespace(data=f, mask=None) for f in frames]
    lit = np.zeros(od.shape[1:], bool)
    lit[5:19, 5:19] = True  # well inside every energy's scanned field
    y, x = np.meshgrid(*[np.linspace(-1, 1, 24)] * 2, indexing="ij")
    bump = 0.05 * np.exp(-(y**2 + x**2) / 0.3)
    start = PixelSpectra2D(jnp.asarray(od + bump, jnp.float32),
                           jnp.asarray(phase - bump, jnp.float32), **leaves)  # fmt: skip
    settings = sp.SpectroPtychoSettings(joint_iterations=8, refine_probe=False)
    fit, history = sp._joint_fit(
        start, scans, lambda m: (m.optical_density, m.phase), settings, progress=False
    )
    err0 = np.sqrt(2 * np.mean(bump[lit] ** 2))
    d_phase = (np.asarray(fit.phase) - phase)[:, lit]
    d_phase -= d_phase.mean(axis=1, keepdims=True)  # a constant phase per energy is free
    err = np.sqrt(np.mean((np.asarray(fit.optical_density) - od)[:, lit] ** 2)
                  + np.mean(d_phase**2))  # fmt: skip
    assert err < err0 / 20
    assert history[-1] < 1e-3 * history[0]


def test_joint_spectra_without_references_and_the_kk_penalty(small_vanadium):
    # joint mode without references fits per-pixel spectra from every frame; the KK
    # penalty makes the fitted spectra more KK-consistent than the same run with a penalty
    # too weak to matter (the per-energy pass, KK rounds included, is the same in both)
    from diffptycho.recon.chem.kk_projection import KKProjector

    base = dict(iterations=30, probe_iterations=30, refine_probe=False, mode="joint",
                joint_iterations=4, kk=True, kk_rounds=1, kk_iterations=1)  # fmt: skip
    logs: list[str] = []
    weak = sp.run_spectroptycho(
        small_vanadium, sp.SpectroPtychoSettings(**base, kk_sigma=1e3), log=logs.append
    )
    kk = sp.run_spectroptycho(
        small_vanadium, sp.SpectroPtychoSettings(**base, kk_sigma=0.002), log=logs.append
    )
    assert any("per-pixel spectra with the KK penalty" in m for m in logs)
    assert weak.thickness is None and kk.thickness is None
    valid = weak.valid_mask & kk.valid_mask
    assert valid.sum() > 20
    projector = KKProjector.build(weak.energies_ev)

    def inconsistency(r):
        return float(np.mean(projector.residual(r.optical_density[:, valid], r.phase[:, valid])))

    assert inconsistency(kk) < 0.5 * inconsistency(weak)
    # the fit lowers the frame misfit (plus penalty) from the per-energy start
    for r in (weak, kk):
        assert r.joint_loss.shape == (base["joint_iterations"],)
        assert r.joint_loss[-1] < r.joint_loss[0]
    # the saved objects are the joint model's, on each energy's grid
    assert len(kk.objects) == len(kk.probes) == 4
    assert kk.objects[0].shape == kk.objects[-1].shape
    with pytest.raises(ValueError, match="kk_sigma"):
        sp.SpectroPtychoSettings(kk_sigma=0.0)
    with pytest.raises(ValueError, match="kk_sigma"):
        sp.SpectroPtychoSettings(kk_sigma="0.01")
    with pytest.raises(ValueError, match="joint_iterations"):
        sp.SpectroPtychoSettings(joint_iterations=2.5)


def test_joint_thickness_with_a_kept_probe_starts_from_the_per_energy_fit(tmp_path):
    # with references and the file's probe kept, the probes take the objects' vacuum level
    # (the thickness maps cannot: T ≤ 1), so the start fits the frames as the per-energy
    # models did, and the fit lowers the misfit from there
    from diffptycho.io.cxi import read_cxi_truth

    path, _ = _small_vanadium(tmp_path)
    truth = read_cxi_truth(path)
    species = [s.decode() if isinstance(s, bytes) else str(s) for s in truth["species"]]
    energies = np.asarray([s.energy_ev for s in sp.read_energy_scans(path)])
    refs = (energies, {s: truth["spectra"][:, i] for i, s in enumerate(species)})
    settings = sp.SpectroPtychoSettings(iterations=30, probe_iterations=30, refine_probe=False,
                                        mode="joint", joint_iterations=3)  # fmt: skip
    r = sp.run_spectroptycho(path, settings, references=refs, log=lambda m: None)
    assert r.thickness.shape == (3, *r.valid_mask.shape) and np.all(r.thickness >= 0)
    assert r.joint_loss[-1] < r.joint_loss[0]
    # without the vacuum level on the kept probes the start misfits the frames far more
    factors = sp._vacuum_factors
    try:
        sp._vacuum_factors = lambda models, grid, shape: np.ones((len(models), *shape))
        unscaled = sp.run_spectroptycho(path, settings, references=refs, log=lambda m: None)
    finally:
        sp._vacuum_factors = factors
    assert r.joint_loss[0] < unscaled.joint_loss[0]


def test_vacuum_factors_move_the_level_and_ramp_to_the_probes():
    # each object carries a vacuum level, a phase offset and a phase ramp that the
    # normalisation divides out; on the probes, the normalised objects give back the frames
    # (a refined probe and its object share a ramp: the probe must take it)
    from diffptycho.models import Ptycho2D
    from diffptycho.pipeline.stages import normalise_transmission

    n = 48
    y, x = np.meshgrid(np.arange(n) - n // 2, np.arange(n) - n // 2, indexing="ij")
    blob = np.exp(-(y**2 + x**2) / 30.0)
    t = np.exp(-(0.2 + 0.5j) * blob)
    u = np.arange(16) - 8.0
    probe = np.exp(-(u[:, None] ** 2 + u[None, :] ** 2) / 20.0).astype(np.complex64)
    g = np.arange(-12.0, 13.0, 4.0)
    positions = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    setups = ((1.3, 0.4, 0.0, 0.0), (0.8, -1.0, 0.15, -0.1))  # level, offset, g_y, g_x
    models = [
        Ptycho2D(
            jnp.asarray(level * np.exp(1j * (ph + gy * y + gx * x)) * t, jnp.complex64),
            jnp.asarray(probe[None]),
            jnp.asarray(positions, jnp.float32),
        )  # fmt: skip
        for level, ph, gy, gx in setups
    ]
    grid = sp._Grid(np.full(2, 20e-9), 20e-9, (n, n), np.zeros((2, 2)))
    factors = sp._vacuum_factors(models, grid, probe.shape)
    # (the blob's faint tail in the vacuum lowers the mean a little)
    np.testing.assert_allclose(np.abs(factors[:, 0, 0]), [1.3, 0.8], rtol=3e-3)
    for m, f, (*_, gy, gx) in zip(models, factors, setups, strict=True):
        flat, _ = normalise_transmission(np.asarray(m.object), np.asarray(sp._lit(m)))
        moved = Ptycho2D(
            jnp.asarray(flat, jnp.complex64),
            jnp.asarray((probe * f)[None], jnp.complex64),
            m.positions,
        )
        frames = np.asarray(m())
        np.testing.assert_allclose(np.asarray(moved()), frames, atol=3e-3 * frames.max())
        kept = Ptycho2D(  # the level alone leaves the ramp's shift of the far field
            jnp.asarray(flat, jnp.complex64),
            jnp.asarray((probe * np.abs(f))[None], jnp.complex64),
            m.positions,
        )
        if gy or gx:
            assert np.abs(np.asarray(kept()) - frames).max() > 0.1 * frames.max()


def test_common_vacuum_separates_a_thin_plate_that_one_energy_cannot():
    # a plate over most of the lit field with OD 0.05, noise 0.025 per energy (2σ: one
    # energy's histogram has a single peak); the mean of 24 energies has σ ≈ 0.005
    from diffptycho.models import Ptycho2D

    n, n_e = 48, 24
    rng = np.random.default_rng(3)
    y, x = np.meshgrid(np.arange(n) - n // 2, np.arange(n) - n // 2, indexing="ij")
    plate = np.abs(x) < 12
    u = np.arange(16) - 8.0
    probe = np.exp(-(u[:, None] ** 2 + u[None, :] ** 2) / 20.0).astype(np.complex64)
    g = np.arange(-12.0, 13.0, 4.0)
    positions = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    models = []
    for e in range(n_e):
        od = 0.05 * plate + rng.normal(0.0, 0.025, (n, n))
        level, ramp = 1.0 + 0.1 * e, 0.03 * e * y  # each energy's own complex factor and ramp
        models.append(
            Ptycho2D(
                jnp.asarray(level * np.exp(-od / 2 + 1j * ramp), jnp.complex64),
                jnp.asarray(probe[None]),
                jnp.asarray(positions, jnp.float32),
            )
        )
    grid = sp._Grid(np.full(n_e, 20e-9), 20e-9, (n, n), np.zeros((n_e, 2)))
    vacuum = sp._common_vacuum(models, grid)
    lit = np.asarray(sp._lit(models[0]))
    assert not (vacuum & plate).any()
    assert vacuum.sum() > 0.4 * (lit & ~plate).sum()
    # and the stacks normalised on it put the plate at its OD at every energy
    od, _, _ = sp._stacks(models, dataclasses.replace(grid, vacuum=vacuum))
    inner = lit & plate
    np.testing.assert_allclose(np.median(od[:, inner], axis=1), 0.05, atol=0.01)


@pytest.mark.parametrize("band", [True, False])
def test_probe_band_keeps_every_energy_probe_on_the_detector(small_vanadium, band):
    settings = sp.SpectroPtychoSettings(
        iterations=3, probe_iterations=4, probe_revisit=1, register=False, probe_band=band
    )
    r = sp.run_spectroptycho(small_vanadium, settings, log=lambda m: None)
    outside = _outside_detector(np.asarray(r.probes), 2)
    assert outside < 1e-10 if band else outside > 1e-5  # refinement fills the unmeasured part


def _outside_detector(probes: np.ndarray, factor: int) -> float:
    """Share of the probes' power outside the detector's centre of the refined far field."""
    n = probes.shape[-1] // factor
    spectrum = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(probes, axes=(-2, -1))), axes=(-2, -1))
    lo = probes.shape[-1] // 2 - n // 2
    measured = np.zeros(probes.shape[-2:], bool)
    measured[lo : lo + n, lo : lo + n] = True
    return float(np.sum(np.abs(spectrum[..., ~measured]) ** 2) / np.sum(np.abs(spectrum) ** 2))


@pytest.mark.parametrize("band", [True, False])
def test_joint_mode_keeps_the_refined_probes_on_the_detector(small_vanadium, band):
    settings = sp.SpectroPtychoSettings(
        iterations=3,
        probe_iterations=4,
        probe_revisit=0,
        register=False,
        mode="joint",
        joint_iterations=2,
        probe_band=band,
    )
    r = sp.run_spectroptycho(small_vanadium, settings, log=lambda m: None)
    outside = _outside_detector(np.asarray(r.probes), 2)
    assert outside < 1e-10 if band else outside > 1e-5


def _fourier_resample(t, a: float, b: float, shift_m, shape) -> np.ndarray:
    """Band-limited ``t`` (pitch a m, index j at (j − n//2)·a) on pitch b: index i at
    (i − H//2)·b + shift (m), for a grid inside t; spectrum cropped, Fourier phase shift."""
    n = np.array(t.shape)
    m = np.round(n * a / b).astype(int)
    spec = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(t), norm="ortho"))
    lo = n // 2 - m // 2
    k = spec[lo[0] : lo[0] + m[0], lo[1] : lo[1] + m[1]] * np.sqrt(np.prod(m) / np.prod(n))
    f = [(np.arange(v) - v // 2) / v for v in m]
    s = np.asarray(shift_m) / b
    k = k * np.exp(2j * np.pi * (f[0][:, None] * s[0] + f[1][None, :] * s[1]))
    t2 = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k), norm="ortho"))
    off = m // 2 - np.array(shape) // 2  # out index i is t2 index i + off
    assert np.all(off >= 0) and np.all(off + np.array(shape) <= m)
    return t2[off[0] : off[0] + shape[0], off[1] : off[1] + shape[1]]


def test_refined_grid_model_reproduces_frames_simulated_four_times_finer(tmp_path, monkeypatch):
    # the pipeline's own model of each energy (refined scan, centred positions, Fourier
    # sub-pixel probe, file probe) with the ideal object — the simulation's fine transmission
    # band-limited onto the grid and moved by the scan centre and that energy's stage
    # offset — against the noiseless frames formed 4× finer: conventions (positions, offsets,
    # pixel per energy, frame centre) and the object_refine claim at once. Measured: 2×
    # 1.3e-6, 1.8e-6 (float32), 1× 4.5e-3, 4.4e-3 (the product aliases); a stage offset of
    # the wrong sign 0.05. (On a 24² field with 600 nm particles under the frame windows'
    # edges, where the probe's tail is cut, 2× leaves 8e-4 – 1.1e-3.)
    from diffptycho.io.cxi import read_cxi_truth
    from diffptycho.sim import datasets
    from diffptycho.sim import spectroptycho as sim
    from diffptycho.sim.phantoms import vanadium_field

    fine = []
    inner = sim.far_field_frames

    def spy(t, probe, centres, frame):
        fine.append(t[0])
        return inner(t, probe, centres, frame)

    monkeypatch.setattr(sim, "far_field_frames", spy)
    size, ov, n = 16, 4, 32
    energies = np.array([5420.0, 5540.0])
    geometry = dataclasses.replace(sim.SPECTRO_GEOMETRY, probe_shape=(n, n), photons_per_frame=1e8)
    field = vanadium_field((2 * ov * size,) * 2, 20e-9 / (2 * ov), 2, seed=0)
    ds = sim.simulate_vanadium_spectroptycho(
        (size, size),
        energies_ev=energies,
        geometry=sim.fit_scan_to((size, size), geometry, energies),
        known_probe=True,
        field=field,
        oversample=ov,
        scan="fermat",
        offset_sigma_px=0.5,
        seed=0,
    )
    path = str(tmp_path / "v.cxi")
    datasets.write_dataset(path, ds)
    truth = read_cxi_truth(path)
    raw = sp.read_energy_scans(path)
    errors = {}
    for factor in (1, 2):
        scans = [sp.refined_scan(s, factor) for s in raw]
        positions = sp._centred_positions(scans)
        metres = np.concatenate([np.asarray(s.positions_m, np.float64) for s in scans])
        centre = 0.5 * (metres.min(axis=0) + metres.max(axis=0))
        for e, s in enumerate(scans):
            m = sp._template(s, positions[e], 1, "fourier")
            shift = centre - truth["offsets_px"][e] * float(truth["reference_pixel_size_m"])
            a = float(np.mean(raw[e].object_pixel_size_m)) / ov
            obj = _fourier_resample(
                np.pad(fine[e], 64, constant_values=1.0),
                a,
                float(np.mean(s.object_pixel_size_m)),
                shift,
                m.object.shape,
            )
            probe = jnp.asarray(s.illumination).reshape(m.probe.shape)
            model = eqx.tree_at(
                lambda t: (t.object, t.probe), m, (jnp.asarray(obj, jnp.complex64), probe)
            )
            lo = factor * n // 2 - n // 2
            frames = np.asarray(model())[..., lo : lo + n, lo : lo + n]
            expected = np.asarray(truth["expected_frames"][e]).reshape(frames.shape)
            errors[factor, e] = np.linalg.norm(frames - expected) / np.linalg.norm(expected)
    assert all(errors[2, e] < 1e-5 for e in range(2)), errors
    assert all(errors[1, e] > 2e-3 for e in range(2)), errors  # the 1× grid aliases


def test_joint_spectra_output_is_flat_in_phase_on_vacuum(small_vanadium, monkeypatch):
    # with refined probes, a phase ramp moves freely between the objects and the probes
    # (the frames do not change): the joint output removes it on vacuum, as the per-energy
    # normalisation does, so a ramp the fit leaves in φ does not reach the stacks
    settings = sp.SpectroPtychoSettings(
        iterations=3, probe_iterations=3, register=False, mode="joint", joint_iterations=1
    )
    plain = sp.run_spectroptycho(small_vanadium, settings, log=lambda m: None)
    inner = sp._joint_spectra

    def ramped(*args, **kwargs):
        model, history = inner(*args, **kwargs)
        h, w = model.phase.shape[-2:]
        ramp = 0.05 * np.arange(h)[:, None] - 0.03 * np.arange(w)[None, :] + 0.7
        return eqx.tree_at(lambda m: m.phase, model, model.phase + jnp.asarray(ramp)), history

    monkeypatch.setattr(sp, "_joint_spectra", ramped)
    moved = sp.run_spectroptycho(small_vanadium, settings, log=lambda m: None)
    np.testing.assert_allclose(moved.phase, plain.phase, atol=1e-4)


def test_beam_shifts_take_a_probe_drift_out_of_the_registration_offsets():
    # energy 1's object and probe both moved by d (the frames do not change): the registration
    # sees d, the probe's centroid moved by d, the sample did not move relative to the beam
    from scipy import ndimage

    from diffptycho.models import Ptycho2D

    n, d = 64, np.array([0.6, -0.35])
    models = _registration_models(np.zeros((2, 2)))
    u = np.arange(32) - 16.0
    beam = np.exp(-(u[:, None] ** 2 + u[None, :] ** 2) / (2 * 4.0**2))
    obj = np.asarray(models[0].object)
    moved_obj = ndimage.shift(obj.real, d, order=3) + 1j * ndimage.shift(obj.imag, d, order=3)
    moved_beam = ndimage.shift(beam, d, order=3)
    models = [
        Ptycho2D(jnp.asarray(o, jnp.complex64), jnp.asarray(p[None], jnp.complex64), m.positions)
        for o, p, m in ((obj, beam, models[0]), (moved_obj, moved_beam, models[1]))
    ]
    grid = sp._Grid(np.full(2, 20e-9), 20e-9, (n, n), np.zeros((2, 2)))
    found = sp._register(models, grid, 0, 100)
    beams = sp.beam_shifts([np.asarray(m.probe) for m in models], grid.pixel_sizes, 0)
    np.testing.assert_allclose(found[1], d, atol=0.05)
    np.testing.assert_allclose(beams[1], d, atol=0.01)
    np.testing.assert_allclose((found - beams)[1], 0.0, atol=0.05)
    # measured from each probe's centre (its origin), in the reference energy's pixels: a
    # pixel half as large halves the shift (from the array's corner it would be 8 px off)
    scaled = sp.beam_shifts([np.asarray(m.probe) for m in models], np.array([20e-9, 10e-9]), 0)
    np.testing.assert_allclose(scaled[1], 0.5 * d, atol=0.01)
    with pytest.raises(ValueError, match="no intensity"):
        sp.beam_shifts([np.zeros((1, 4, 4))], np.array([1.0]), 0)
