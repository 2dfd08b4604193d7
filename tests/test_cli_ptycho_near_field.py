"""``diffptycho ptycho --propagation near-field`` on a near-field CXI file as instruments write it.

The file holds a simulated near-field scan (tests/_near_field_sim.py) the way the user's
synchrotron file was: absolute motor translations millimetres from the origin, both detector
axes flipped (``basis_vectors`` rows along +y and columns along +x, frames stored flipped), no
probe, no focus-to-sample distance. Acceptance: the CLI reconstructs it to the same error as the
Python API given the right geometry (reference orientation, centred positions, NearField with
the Fresnel-scaled pixel), with the Fresnel-scaled object pixel in the results; a far-field run
on these frames warns.

The runs switch x64 off, as the CLI runs: under x64 :class:`~diffptycho.models.NearField`
builds a complex128 transfer function that promotes complex64 waves, which the RAAR sweep's
``lax.scan`` carry refuses.
"""

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffptycho.cli import main
from diffptycho.io.results import read_results
from diffptycho.io.scan import PtychoScan
from diffptycho.physics.optics import EV_TO_J
from diffptycho.recon.ptycho.data import PtychoData
from diffptycho.recon.ptycho.geometry import scan_geometry
from diffptycho.recon.ptycho.metrics import illuminated_region, object_error
from diffptycho.recon.ptycho.start import make_engine, starting_model
from diffptycho.recon.solve import solve
from tests._near_field_sim import (
    DETECTOR_PIXEL_M,
    ENERGY_EV,
    Z1_M,
    Z2_M,
    simulate_near_field,
)

P = DETECTOR_PIXEL_M
ITERATIONS = 30


@pytest.fixture(scope="module")
def sim():
    return simulate_near_field(seed=0, photons=1e6, diffuser_rad=1.0)


@pytest.fixture
def instrument_file(tmp_path, sim):
    """Absolute translations (x, y, 0) in m, frames stored with both axes flipped."""
    dx = sim.object_pixel_m
    offset = np.round(np.array([4.321e-3, -2.468e-3]) / dx) * dx  # (x, y) motor origin
    y, x = (sim.positions_px * dx).T
    path = tmp_path / "star_nearfield.cxi"
    with h5py.File(path, "w") as f:
        e = f.create_group("entry_1")
        e["instrument_1/detector_1/data"] = sim.frames[:, ::-1, ::-1]
        e["data_1/data"] = h5py.SoftLink("/entry_1/instrument_1/detector_1/data")
        e["instrument_1/detector_1/basis_vectors"] = np.array([[0, P, 0], [P, 0, 0]])
        e["instrument_1/detector_1/distance"] = Z2_M
        e["instrument_1/detector_1/x_pixel_size"] = P
        e["instrument_1/detector_1/y_pixel_size"] = P
        e["instrument_1/source_1/energy"] = ENERGY_EV * EV_TO_J
        e["sample_1/geometry_1/translation"] = np.stack(
            [x + offset[0], y + offset[1], np.zeros_like(x)], axis=1
        )
    return path


def _error(obj, sim):
    region = illuminated_region(
        jnp.asarray(sim.probe[None]), jnp.asarray(sim.positions_px), sim.obj.shape, 0.3
    )
    return float(jax.jit(object_error)(jnp.asarray(obj), jnp.asarray(sim.obj), region))


def _cli(path, out, *extra):
    argv = [
        "--no-compile-cache",
        "ptycho",
        str(path),
        "-o",
        str(out),
        "--no-progress",
        "--no-figure",
        *extra,
    ]
    with jax.enable_x64(False):
        return main([*map(str, argv)])


@pytest.mark.slow
def test_cli_near_field_matches_the_api(tmp_path, sim, instrument_file):
    out = tmp_path / "out.h5"
    code = _cli(
        instrument_file, out, "-a", "raar", "-n", ITERATIONS,
        "--propagation", "near-field", "--focus-to-sample", Z1_M,
    )  # fmt: skip
    assert code == 0
    res = read_results(out)
    m = (Z1_M + Z2_M) / Z1_M
    np.testing.assert_allclose(res["object_pixel_size_m"], [P / m, P / m], rtol=1e-9)
    assert res["object"].shape == sim.obj.shape  # centred: scan extent + probe
    np.testing.assert_allclose(res["positions_px_initial"], sim.positions_px, atol=2e-3)
    cfg = res["provenance"]["config"]
    assert cfg["propagation"] == "near-field" and cfg["magnification"] == pytest.approx(m)
    # the API with the right geometry: reference orientation, centred positions, no file
    scan = PtychoScan(sim.frames, sim.positions_px * sim.object_pixel_m, ENERGY_EV, Z2_M, P)
    with jax.enable_x64(False):
        geometry = scan_geometry(scan, "near-field", Z1_M)
        start = starting_model(scan, geometry=geometry)
        api, _ = solve(
            start, make_engine("raar"), PtychoData(jnp.asarray(scan.data)), ITERATIONS,
            progress=False,
        )  # fmt: skip
    err_cli, err_api = _error(res["object"], sim), _error(api.object, sim)
    err_start = _error(np.ones(sim.obj.shape), sim)
    assert err_api < 0.2 * err_start, (err_api, err_start)
    print(f"object error: start {err_start:.4f}, API {err_api:.4f}, CLI {err_cli:.4f}")
    assert abs(err_cli - err_api) <= 0.03 * err_api, (err_cli, err_api)


def test_cli_near_field_starts_from_the_right_geometry(tmp_path, sim, instrument_file, monkeypatch):
    """Fast: the CLI's starting model equals the API's (solve stubbed out).

    The engines are deterministic, so equal starts give equal reconstructions: this is the
    fast stand-in for the slow acceptance test above.
    """
    import diffptycho.recon.solve as solve_module

    seen = {}

    def stub(model, *args, **kwargs):
        seen["model"] = model
        raise KeyboardInterrupt  # stop before any compilation

    monkeypatch.setattr(solve_module, "solve", stub)
    with pytest.raises(KeyboardInterrupt):
        _cli(
            instrument_file, tmp_path / "o.h5",
            "--propagation", "near-field", "--focus-to-sample", Z1_M,
        )  # fmt: skip
    model = seen["model"]
    scan = PtychoScan(sim.frames, sim.positions_px * sim.object_pixel_m, ENERGY_EV, Z2_M, P)
    api = starting_model(scan, geometry=scan_geometry(scan, "near-field", Z1_M))
    assert model.propagator == api.propagator
    m = (Z1_M + Z2_M) / Z1_M
    assert model.propagator.pixel_size_m == pytest.approx(P / m, rel=1e-12)
    assert model.propagator.distance_m == pytest.approx(Z2_M / m, rel=1e-12)
    assert model.object.shape == api.object.shape == sim.obj.shape
    np.testing.assert_allclose(model.positions, api.positions, atol=2e-3)
    np.testing.assert_allclose(
        model.probe, api.probe, rtol=1e-5, atol=1e-5 * float(jnp.abs(api.probe).max())
    )


def test_far_field_run_on_near_field_frames_warns(tmp_path, instrument_file, monkeypatch, capsys):
    import diffptycho.recon.solve as solve_module

    def stub(model, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(solve_module, "solve", stub)
    with pytest.raises(KeyboardInterrupt):
        _cli(instrument_file, tmp_path / "o.h5")
    err = capsys.readouterr().err
    assert "warning" in err and "in-line holography" in err
    assert "--propagation near-field" in err


@pytest.mark.slow
def test_far_field_run_on_near_field_frames_writes_the_warning(tmp_path, instrument_file):
    out = tmp_path / "ff.h5"
    assert _cli(instrument_file, out, "-a", "epie", "-n", 1) == 0
    cfg = read_results(out)["provenance"]["config"]
    assert cfg["propagation"] == "far-field"
    assert any("in-line holography" in w for w in cfg["geometry_warnings"])


def test_near_field_without_focus_distance_is_refused(tmp_path, instrument_file, capsys):
    code = _cli(instrument_file, tmp_path / "o.h5", "--propagation", "near-field")
    assert code == 2
    assert "--focus-to-sample" in capsys.readouterr().err


def test_focus_distance_must_be_positive(tmp_path, instrument_file, capsys):
    with pytest.raises(SystemExit):
        _cli(instrument_file, tmp_path / "o.h5", "--focus-to-sample", "-1")
    assert "must be a finite number > 0" in capsys.readouterr().err
