"""The command line: simulate writes a readable CXI; errors are reported, not raised."""

import numpy as np

from diffptycho import cli
from diffptycho.io.cxi import read_cxi


def test_simulate_lfp_writes_cxi(tmp_path, capsys):
    out = tmp_path / "s.cxi"
    code = cli.main(["simulate", "lfp", "--output", str(out), "--size", "20", "--angles", "2"])
    assert code == 0
    scans = read_cxi(out)
    assert len(scans) == 4
    assert {round(s.energy_ev, 1) for s in scans} == {708.2, 710.2}
    np.testing.assert_allclose(sorted({s.angle_deg for s in scans}), [-80.0, 77.0])
    assert "wrote" in capsys.readouterr().out


def test_errors_are_reported_with_exit_code(tmp_path, capsys):
    code = cli.main(["simulate", "lfp", "--output", str(tmp_path / "x.cxi"), "--pixel-nm", "-1"])
    assert code == 2
    assert "error" in capsys.readouterr().err
