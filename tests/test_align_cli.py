"""``diffptycho align`` round trip on a tiny projections file."""

import numpy as np

from diffptycho.cli import main
from diffptycho.io.dxchange import write_projections
from diffptycho.io.results import read_results
from diffptycho.recon.align import match_gauge

from .test_align_methods import _series


def test_align_round_trip(tmp_path, capsys):
    angles, truth, meas = _series(n=24, n_angles=16)
    src, out = tmp_path / "proj.h5", tmp_path / "aligned.h5"
    write_projections(src, meas, np.rad2deg(angles))
    argv = ["align", str(src), "--method", "joint", "--fit", "shift", "--steps", "60"]
    assert main([*argv, "--iterations", "5", "--output", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    res = read_results(out)
    assert res["projections"].shape == meas.shape
    assert res["shift_px"].shape == (16, 2) and res["rotation_deg"].shape == (16,)
    np.testing.assert_allclose(res["angles_deg"], np.rad2deg(angles))
    assert res["volume"].shape == (24, 24, 24)
    assert res["units"]["rotation_deg"] == "degrees"
    assert res["provenance"]["config"]["method"] == "joint"
    params = np.zeros((16, 4))
    params[:, :2] = res["shift_px"]
    params[:, 2] = np.deg2rad(res["rotation_deg"])
    params[:, 3] = np.log(res["scale"])
    g = match_gauge(params, angles, (24, 24), truth).params
    assert np.sqrt(np.mean((g[:, :2] - truth[:, :2]) ** 2)) < 0.1
    assert (tmp_path / "aligned_params.png").exists()
    assert (tmp_path / "aligned_before_after.png").exists()
    # aligned projections have the transform removed: their y profiles now agree
    prof = res["projections"].sum(2)
    assert np.abs(prof - prof.mean(0)).max() < np.abs(meas.sum(2) - prof.mean(0)).max()


def test_align_missing_file_is_an_error(tmp_path, capsys):
    assert main(["align", str(tmp_path / "none.h5"), "-o", str(tmp_path / "o.h5")]) == 2
    assert "error" in capsys.readouterr().err
