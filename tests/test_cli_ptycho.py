"""``diffptycho ptycho`` on tiny simulated CXI files: outputs, conventions and error paths."""

import argparse
import os

import equinox as eqx
import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from diffptycho.cli import ptycho as cli_ptycho
from diffptycho.io.cxi import PtychoScan, write_cxi
from diffptycho.io.results import read_results
from diffptycho.models import Ptycho2D
from diffptycho.physics import optics
from diffptycho.physics.scan import object_shape_for
from diffptycho.recon.ptycho import ENGINES, start
from diffptycho.recon.solve import AbstractSolver
from diffptycho.sim.patterns import raster_positions

ENERGY_EV, DISTANCE_M, PIXEL_M = 708.2, 0.1, 20e-9
PROBE_SHAPE = (32, 32)


def _registry():
    try:
        from diffptycho.recon.ptycho import ENGINES
    except ImportError as err:
        pytest.skip(f"engine registry diffptycho.recon.ptycho.ENGINES not available yet: {err}")
    return ENGINES


def _simulate(seed=0, photons=1e5):
    """Truth object, probe, positions (px) and Poisson frames of a 6 × 6 raster scan."""
    rng = np.random.default_rng(seed)
    pos = raster_positions(6, 6, 5.0, jitter_px=0.5, seed=seed)
    shape = object_shape_for(pos, PROBE_SHAPE)
    y, x = np.mgrid[: shape[0], : shape[1]]
    smooth = ndimage.gaussian_filter(rng.standard_normal(shape), 2.0)
    pattern = np.sin(x / 3.0) * np.cos(y / 4.0) + smooth / smooth.std()
    obj = (0.8 + 0.1 * pattern) * np.exp(0.8j * pattern)
    py, px = np.mgrid[-16:16, -16:16]
    probe = np.exp(-(px**2 + py**2) / (2 * 5.0**2) + 0.02j * (px**2 + py**2))
    probe = probe * np.sqrt(photons / np.sum(np.abs(probe) ** 2))
    model = Ptycho2D(jnp.asarray(obj), jnp.asarray(probe[None]), jnp.asarray(pos))
    expected = np.asarray(eqx.filter_jit(lambda m: m())(model))
    frames = rng.poisson(expected).astype(np.float32)
    return obj, probe, pos, frames


def _detector_pixel_m():
    # far field: object pixel = λ z / (N p)
    return float(optics.wavelength(ENERGY_EV)) * DISTANCE_M / (PROBE_SHAPE[0] * PIXEL_M)


@pytest.fixture(scope="module")
def simulated():
    return _simulate()


@pytest.fixture
def cxi_with_probe(tmp_path, simulated):
    obj, probe, pos, frames = simulated
    scan = PtychoScan(
        frames,
        pos * PIXEL_M,
        ENERGY_EV,
        distance_m=DISTANCE_M,
        pixel_size_m=_detector_pixel_m(),
        illumination=probe,
    )
    path = tmp_path / "sim.cxi"
    write_cxi(path, [scan])
    return path


@pytest.fixture
def plain_cxi(tmp_path, simulated):
    """A CXI file as another program writes it: detector_1/data only, (x, y, z) in m, J."""
    _, _, pos, frames = simulated
    path = tmp_path / "plain.cxi"
    with h5py.File(path, "w") as f:
        e = f.create_group("entry_1")
        e["instrument_1/detector_1/data"] = frames
        trans = np.stack([pos[:, 1], pos[:, 0], np.zeros(len(pos))], axis=1) * PIXEL_M
        e["sample_1/geometry_1/translation"] = trans
        e["instrument_1/source_1/energy"] = ENERGY_EV * optics.EV_TO_J
        e["instrument_1/detector_1/distance"] = DISTANCE_M
        e["instrument_1/detector_1/x_pixel_size"] = _detector_pixel_m()
        e["instrument_1/detector_1/y_pixel_size"] = _detector_pixel_m()
    return path


def _run(*argv):
    return cli_ptycho.main(["ptycho", *map(str, argv), "--no-progress"])


def _object_error(estimate, truth, probe, positions):
    from diffptycho.recon.ptycho.metrics import illuminated_region, object_error

    region = jax.jit(illuminated_region, static_argnums=(2, 3))(
        jnp.asarray(probe), jnp.asarray(positions), truth.shape, 0.3
    )
    return float(jax.jit(object_error)(jnp.asarray(estimate), jnp.asarray(truth), region))


def test_reconstructs_a_simulated_scan(tmp_path, cxi_with_probe, simulated):
    engines = _registry()
    name = "epie" if "epie" in engines else sorted(engines)[0]
    obj, probe, pos, _ = simulated
    out = tmp_path / "out.h5"
    assert _run(cxi_with_probe, "--algorithm", name, "--iterations", 30, "--output", out) == 0
    res = read_results(out)
    assert res["object"].shape == obj.shape and np.iscomplexobj(res["object"])
    assert res["probe"].shape == (1, *PROBE_SHAPE)
    np.testing.assert_allclose(res["positions_px_initial"], pos, atol=1e-6)
    np.testing.assert_allclose(res["object_pixel_size_m"], [PIXEL_M, PIXEL_M], rtol=1e-9)
    assert res["units"]["object_pixel_size_m"] == "m"
    loss = res["history"]["loss"]
    assert loss.shape == (30,) and loss[-1] < loss[0]
    cfg = res["provenance"]["config"]
    assert cfg["algorithm"] == name and cfg["status"] == "completed"
    assert not cfg["pixel_units"]
    # the array centre is scan position (0, 0): the object matches the truth on its grid
    start = _object_error(np.ones(obj.shape), obj, probe[None], pos)
    final = _object_error(res["object"], obj, probe[None], pos)
    assert final < 0.6 * start, (start, final)
    assert os.path.getsize(tmp_path / "out.png") > 1000


def test_plain_cxi_from_another_program(tmp_path, plain_cxi):
    """No illumination, detector_1/data only, (x, y, z) in m, energy in J: the probe guess."""
    _registry()
    out = tmp_path / "plain.h5"
    assert _run(plain_cxi, "-a", "epie", "-n", 3, "-o", out, "--no-figure") == 0
    res = read_results(out)
    assert res["probe"].shape == (1, *PROBE_SHAPE)
    assert np.all(np.isfinite(res["object"]))
    np.testing.assert_allclose(res["object_pixel_size_m"], [PIXEL_M, PIXEL_M], rtol=1e-9)


def test_probe_search_from_the_cli(tmp_path, plain_cxi, capsys):
    out = tmp_path / "searched.h5"
    assert _run(plain_cxi, "-a", "raar", "-n", 3, "-o", out, "--no-figure", "--probe-search") == 0
    assert "probe start at defocus" in capsys.readouterr().out
    res = read_results(out)
    assert res["provenance"]["config"]["probe_search"] is True
    assert np.all(np.isfinite(res["probe"]))


@pytest.mark.slow
def test_probe_modes_and_background(tmp_path, plain_cxi):
    _registry()
    out = tmp_path / "modes.h5"
    code = _run(plain_cxi, "-a", "epie", "-n", 3, "-o", out, "--probe-modes", 2, "--background")
    assert code == 0
    res = read_results(out)
    assert res["probe"].shape == (2, *PROBE_SHAPE)
    assert res["background"].shape == PROBE_SHAPE and np.all(res["background"] >= 0)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ENGINES))
def test_every_engine_runs_from_the_cli(tmp_path, cxi_with_probe, name):
    _registry()
    out = tmp_path / f"{name}.h5"
    assert _run(cxi_with_probe, "-a", name, "-n", 4, "-o", out, "--no-figure") == 0
    assert read_results(out)["history"]["loss"].shape == (4,)


def test_pixel_unit_scan(tmp_path, simulated):
    _registry()
    _, probe, pos, frames = simulated
    path = tmp_path / "px.cxi"
    write_cxi(path, [PtychoScan(frames, pos, ENERGY_EV, illumination=probe)])
    out = tmp_path / "px.h5"
    assert _run(path, "-a", "epie", "-n", 2, "-o", out, "--no-figure") == 0
    res = read_results(out)
    assert np.all(np.isnan(res["object_pixel_size_m"]))
    assert res["provenance"]["config"]["pixel_units"]
    assert not os.path.exists(tmp_path / "px.png")


def test_starting_model_without_illumination(simulated):
    _, probe, pos, frames = simulated
    scan = PtychoScan(frames, pos, ENERGY_EV)
    model = start.starting_model(scan, probe_modes=2)
    assert model.probe.shape == (2, *PROBE_SHAPE)
    assert model.object.shape == object_shape_for(pos, PROBE_SHAPE)
    np.testing.assert_array_equal(np.asarray(model.object), 1.0)
    # the probe guess has the mean pattern's far-field intensity, scaled to the brightest frames
    power = float(np.sum(np.abs(np.asarray(model.probe)) ** 2))
    top = np.sort(frames.sum(axis=(1, 2)))[-max(1, len(frames) // 20) :].mean()
    assert power == pytest.approx(top, rel=1e-5)
    guess = start.probe_guess(frames)
    far = np.abs(np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(guess), norm="ortho"))) ** 2
    np.testing.assert_allclose(far, frames.mean(axis=0), rtol=1e-6, atol=1e-6)


def test_missing_file(tmp_path, capsys):
    assert _run(tmp_path / "nope.cxi", "-o", tmp_path / "o.h5") == 2
    assert "nope.cxi: no such file" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError):
        cli_ptycho.run(_namespace(tmp_path / "nope.cxi", tmp_path / "o.h5"))


def test_bad_algorithm(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        _run(tmp_path / "x.cxi", "--algorithm", "gerchberg", "-o", tmp_path / "o.h5")
    assert info.value.code == 2
    assert "invalid choice: 'gerchberg'" in capsys.readouterr().err


def test_cxi_error_names_the_dataset(tmp_path, plain_cxi, capsys):
    with h5py.File(plain_cxi, "a") as f:
        del f["entry_1/instrument_1/source_1/energy"]
        f["entry_1/instrument_1/source_1/energy"] = ENERGY_EV  # eV where CXI wants joules
    out = tmp_path / "o.h5"
    assert _run(plain_cxi, "-o", out) == 2
    err = capsys.readouterr().err
    assert "entry_1/instrument_1/source_1/energy" in err and "joules" in err
    assert not out.exists()


def test_missing_entry(tmp_path, cxi_with_probe, capsys):
    assert _run(cxi_with_probe, "--entry", 3, "-o", tmp_path / "o.h5") == 2
    assert "--entry 3 does not exist; the file holds 1 scan(s)" in capsys.readouterr().err


def test_unknown_engine_name():
    with pytest.raises(ValueError, match="no such engine|registry"):
        start.make_engine("not-an-engine")


def _namespace(data, output, **kw):
    import argparse

    parser = argparse.ArgumentParser()
    cli_ptycho.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["ptycho", str(data), "-o", str(output), "--no-progress"])
    for key, value in kw.items():
        setattr(args, key, value)
    return args


class _Broken(AbstractSolver):
    """A stand-in engine whose second step produces a non-finite object."""

    def init(self, model):
        return jnp.asarray(0)

    def step(self, model, state, batch):
        scale = jnp.where(state >= 1, jnp.nan, 0.9)
        model = eqx.tree_at(lambda m: m.object, model, model.object * scale)
        return model, state + 1, jnp.asarray(1.0)


def _broken_engine(**options):
    return _Broken()


def test_divergence_writes_the_last_finite_model(tmp_path, cxi_with_probe, monkeypatch, capsys):
    engines = dict(_registry())
    engines["epie"] = _broken_engine
    monkeypatch.setattr("diffptycho.recon.ptycho.ENGINES", engines)
    out = tmp_path / "nan.h5"
    assert _run(cxi_with_probe, "-a", "epie", "-n", 5, "-o", out, "--no-figure") == 1
    assert "non-finite" in capsys.readouterr().err
    res = read_results(out)
    assert res["history"]["loss"].shape == (1,)
    assert np.all(np.isfinite(res["object"]))
    np.testing.assert_allclose(np.abs(res["object"]), 0.9, rtol=1e-6)
    assert res["provenance"]["config"]["status"].startswith("diverged after 1 iterations")


def test_devices_split_the_positions_and_give_the_single_device_result(tmp_path, cxi_with_probe):
    # the conftest gives 4 fake CPU devices; the split sums must not change the result
    one, two = tmp_path / "one.h5", tmp_path / "two.h5"
    common = ["--algorithm", "lsqml", "--iterations", 3, "--batch-size", 8, "--no-figure"]
    assert _run(cxi_with_probe, *common, "--output", one) == 0
    assert _run(cxi_with_probe, *common, "--devices", 2, "--output", two) == 0
    a, b = read_results(one)["object"], read_results(two)["object"]
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
    assert read_results(two)["provenance"]["config"]["devices"] == 2
    parser = argparse.ArgumentParser()
    cli_ptycho.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["ptycho", "x.cxi", "-o", "y.h5", "--devices", "2"])
    assert cli_ptycho.engine_options(args)["mesh"].devices.size == 2
