"""Checkpoints of ``diffptycho tomo`` and ``diffptycho align``: stopped, resumed, same result.

A stop request after N steps (what SIGINT/SIGTERM make inside the commands) interrupts the
run in process; the resumed run must reproduce the uninterrupted one (≤ 1e-6 relative).
"""

import jax.numpy as jnp
import numpy as np
import pytest

from diffptycho.cli import main
from diffptycho.io.dxchange import write_projections
from diffptycho.io.results import load_checkpoint, read_results
from diffptycho.physics.tomography import project
from diffptycho.recon import solve as solve_module


@pytest.fixture(scope="module")
def projections(tmp_path_factory):
    """A 16 × 4 × 16 block phantom projected at 20 angles (plain projections file)."""
    vol = np.zeros((16, 4, 16))
    vol[5:11, :, 4:9] = 1.0
    vol[8:13, 1:3, 9:13] = 0.5
    angles_deg = np.linspace(-80, 77, 20)
    data = np.asarray(project(jnp.asarray(vol), jnp.deg2rad(angles_deg)))
    path = str(tmp_path_factory.mktemp("tomo") / "proj.h5")
    write_projections(path, data, angles_deg)
    return path


def _stop_after(monkeypatch, n):
    calls = []

    def fake():
        calls.append(1)
        return len(calls) >= n

    monkeypatch.setattr(solve_module, "stop_requested", fake)


@pytest.mark.parametrize(
    "options",
    [
        ["-a", "art", "--order", "random", "--slab-size", "2"],
        pytest.param(["-a", "adam", "--slab-size", "3"], marks=pytest.mark.slow),
    ],
    ids=["art-random-slabs", "adam"],
)
def test_tomo_stopped_then_resumed_equals_the_uninterrupted_run(
    projections, tmp_path, monkeypatch, capsys, options
):
    base = ["tomo", projections, "-n", "6", "--no-progress", *options]
    assert main([*base, "-o", str(tmp_path / "whole.h5")]) == 0
    out = tmp_path / "run.h5"
    _stop_after(monkeypatch, 8)  # in the second slab
    assert main([*base, "-o", str(out), "--checkpoint-every", "2"]) == 1
    monkeypatch.undo()
    assert "run.ckpt.h5" in capsys.readouterr().err and not out.exists()
    assert main([*base, "-o", str(out), "--resume"]) == 0
    assert "best at" in capsys.readouterr().out
    ours, whole = read_results(out), read_results(tmp_path / "whole.h5")
    scale = np.abs(whole["volume"]).max()
    np.testing.assert_allclose(ours["volume"], whole["volume"], rtol=1e-6, atol=1e-6 * scale)
    np.testing.assert_allclose(ours["history"]["loss"], whole["history"]["loss"], rtol=1e-6)
    assert not (tmp_path / "run.ckpt.h5").exists()


def test_tomo_refuses_the_checkpoint_of_another_algorithm(
    projections, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "run.h5"
    _stop_after(monkeypatch, 2)
    assert main(["tomo", projections, "-n", "4", "--no-progress", "-o", str(out)]) == 1
    monkeypatch.undo()
    assert (
        main(["tomo", projections, "-a", "sirt", "--no-progress", "-o", str(out), "--resume"]) == 2
    )
    assert "run.ckpt.h5: this checkpoint was written by a run with other" in capsys.readouterr().err


@pytest.fixture(scope="module")
def misaligned(tmp_path_factory):
    from .test_align_methods import _series

    angles, _, meas = _series(n=16, n_angles=12)
    path = str(tmp_path_factory.mktemp("align") / "proj.h5")
    write_projections(path, meas, np.rad2deg(angles))
    return path


@pytest.mark.slow
@pytest.mark.parametrize(
    ("options", "stop_at"),
    [
        # the starting ART reconstruction takes 3 solve steps, then joint steps
        (["--method", "joint", "--fit", "shift", "--steps", "12", "--keep-best"], 3 + 7),
        # each reprojection loop is one 100-step SIRT: stop inside the second loop
        (["--method", "reprojection", "--fit", "shift", "--loops", "3"], 150),
    ],
    ids=["joint", "reprojection"],
)
def test_align_stopped_then_resumed_equals_the_uninterrupted_run(
    misaligned, tmp_path, monkeypatch, capsys, options, stop_at
):
    base = ["align", misaligned, "-n", "3", "--no-figures", "--tolerance-px", "0", *options]
    assert main([*base, "-o", str(tmp_path / "whole.h5")]) == 0
    assert "lowest residual" in capsys.readouterr().out
    out = tmp_path / "run.h5"
    _stop_after(monkeypatch, stop_at)
    assert main([*base, "-o", str(out), "--checkpoint-every", "1"]) == 1
    monkeypatch.undo()
    assert "run.ckpt.h5" in capsys.readouterr().err and not out.exists()
    assert load_checkpoint(tmp_path / "run.ckpt.h5")[1] >= 1  # resumes mid-way
    assert main([*base, "-o", str(out), "--resume"]) == 0
    ours, whole = read_results(out), read_results(tmp_path / "whole.h5")
    for key in ("shift_px", "volume"):
        scale = np.abs(whole[key]).max()
        np.testing.assert_allclose(ours[key], whole[key], rtol=1e-6, atol=1e-6 * scale)
    np.testing.assert_allclose(ours["history"]["residual"], whole["history"]["residual"], rtol=1e-6)
