"""``diffptycho demo``: the command reaches ``run_demo``, and the demo's story holds.

The demo compiles every stage of the pipeline (ptychography, alignment, tomography, unmixing,
joint refinement), which alone takes tens of seconds here, so the runs are marked slow: a
reduced one (16³ voxels, 6 angles, 5 × 5 scans) that checks the table, the files and that the
joint refinement beats the staged result, and the full default. The fast tests check the
command's wiring and argument checks.
"""

import math
import os

import h5py
import numpy as np
import pytest

import diffptycho.demo
from diffptycho.cli import main

FILES = (
    "lfp_tilt_series.cxi",
    "lfp_references.csv",
    "volumes.h5",
    "results.h5",
    "composition_slices.png",
    "loss.png",
    "diffraction.png",
)
COLUMNS = ("method", "time s", "rel. error", "RMSE LFP", "RMSE FP", "FP-share RMSE")


def test_cli_passes_its_arguments_to_run_demo(tmp_path, monkeypatch):
    seen = {}

    def fake(out, **kwargs):
        seen.update(out=out, **kwargs)
        return {}

    monkeypatch.setattr(diffptycho.demo, "run_demo", fake)
    out = str(tmp_path / "d")
    code = main(["--no-compile-cache", "demo", "--out", out, "--iterations", "5", "--seed", "2"])
    assert code == 0
    assert seen == {"out": out, "joint_iterations": 5, "seed": 2}


@pytest.mark.parametrize("value", ["0", "-3", "two"])
def test_cli_refuses_a_non_positive_iteration_count(value, capsys):
    with pytest.raises(SystemExit) as info:
        main(["--no-compile-cache", "demo", "--iterations", value])
    assert info.value.code == 2
    assert "--iterations" in capsys.readouterr().err


def _check_demo(out, printed, errors):
    for name in FILES:
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    for column in COLUMNS:
        assert column in printed
    assert "staged + joint" in printed
    assert set(errors) == {"staged", "staged + joint"}
    for method, e in errors.items():
        for key, value in e.items():
            assert math.isfinite(value), (method, key, value)
        assert 0 < e["relative_error"] < 1, (method, e)
    assert errors["staged + joint"]["relative_error"] < errors["staged"]["relative_error"]
    with h5py.File(os.path.join(out, "results.h5")) as f:
        truth = f["composition_truth"][()]
        for name in ("composition_staged", "composition_joint"):
            assert f[name].shape == truth.shape
            assert np.all(np.isfinite(f[name][()]))


@pytest.mark.slow
def test_reduced_demo_runs_and_joint_beats_staged(tmp_path, capsys):
    out = str(tmp_path / "demo")
    errors = diffptycho.demo.run_demo(
        out,
        ptycho_iterations=5,
        tomo_iterations=3,
        joint_iterations=4,
        volume_size=16,
        n_angles=6,
        scan_shape=(5, 5),
        progress=False,
    )
    printed = capsys.readouterr().out
    assert "2 energies × 6 angles × 25 frames" in printed
    _check_demo(out, printed, errors)


@pytest.mark.slow
def test_full_default_demo(tmp_path, capsys):
    out = str(tmp_path / "demo")
    errors = diffptycho.demo.run_demo(out, progress=False)
    printed = capsys.readouterr().out
    assert "2 energies × 24 angles × 81 frames" in printed
    _check_demo(out, printed, errors)
