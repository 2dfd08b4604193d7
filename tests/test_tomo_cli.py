"""``diffptycho tomo`` through argparse: plain and Data Exchange inputs, output file, errors."""

import argparse

import h5py
import jax.numpy as jnp
import numpy as np
import pytest

from diffptycho.cli import tomo as cli_tomo
from diffptycho.io.dxchange import write_projections
from diffptycho.io.results import read_results
from diffptycho.physics.tomography import project
from diffptycho.recon.align import fourier_shift


def _parse(argv):
    parser = argparse.ArgumentParser(prog="diffptycho")
    cli_tomo.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["tomo", *argv])


def _volume(n=24, rows=3):
    vol = np.zeros((n, rows, n))
    vol[6:14, :, 8:18] = 1.0
    vol[14:19, :, 5:11] = 0.5
    return vol


def test_plain_projections_to_a_volume_file(tmp_path, capsys):
    vol = _volume()
    angles_deg = np.linspace(-80, 77, 40)
    voxel = 6.7e-9
    data = np.asarray(project(jnp.asarray(vol), jnp.deg2rad(angles_deg))) * voxel
    src, out = tmp_path / "proj.h5", tmp_path / "vol.h5"
    write_projections(src, data, angles_deg, voxel_size_m=voxel)
    args = _parse([str(src), "--algorithm", "sirt", "--iterations", "30", "--output", str(out)])
    assert args.func is cli_tomo.run
    assert cli_tomo.run(args) == 0
    assert "wrote" in capsys.readouterr().out
    res = read_results(out)
    assert res["volume"].shape == (24, 3, 24)
    assert res["units"]["volume"] == "1/m" and res["voxel_size_m"] == pytest.approx(voxel)
    assert res["provenance"]["config"]["algorithm"] == "sirt"
    assert res["history"]["loss"].shape == (1, 30)
    assert res["history"]["loss"][0, -1] < 0.05 * res["history"]["loss"][0, 0]
    err = np.linalg.norm(res["volume"] - vol) / np.linalg.norm(vol)  # data were ∫u dz in m
    assert err < 0.5  # 23° missing wedge, 30 iterations
    out2 = tmp_path / "fbp.h5"
    args = _parse([str(src), "-a", "fbp", "-o", str(out2), "--rows", "1:2", "--no-progress"])
    assert cli_tomo.run(args) == 0
    assert read_results(out2)["volume"].shape == (24, 1, 24)


def test_data_exchange_with_automatic_centre(tmp_path):
    vol = _volume(n=32, rows=2)
    angles_deg = np.linspace(0, 179, 90)
    od = np.asarray(project(jnp.asarray(vol), jnp.deg2rad(angles_deg)))
    od = np.asarray(fourier_shift(od, 1.7))  # axis at 15.5 + 1.7
    flat = np.full((3, 2, 32), 1000.0)
    src = tmp_path / "scan.h5"
    with h5py.File(src, "w") as f:
        f["exchange/data"] = 1000.0 * np.exp(-0.1 * od) + 20.0
        f["exchange/data_white"] = flat + 20.0
        f["exchange/data_dark"] = np.full((2, 2, 32), 20.0)
        f["exchange/theta"] = angles_deg
    out = tmp_path / "vol.h5"
    args = _parse([str(src), "-a", "fbp", "-o", str(out), "--no-progress"])
    assert cli_tomo.run(args) == 0
    res = read_results(out)
    assert res["center_px"] == pytest.approx(17.2, abs=0.25)
    assert res["provenance"]["config"]["input_layout"] == "data exchange"
    err = np.linalg.norm(res["volume"] / 0.1 - vol) / np.linalg.norm(vol)
    assert err < 0.3


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        cli_tomo.run(_parse([str(tmp_path / "missing.h5"), "-o", str(tmp_path / "v.h5")]))
    with pytest.raises(SystemExit):
        _parse(["p.h5", "-o", "v.h5", "--center", "middle"])
    with pytest.raises(SystemExit):
        _parse(["p.h5", "-o", "v.h5", "--algorithm", "mlem"])
    src = tmp_path / "p.h5"
    write_projections(src, np.ones((4, 2, 8)), np.arange(4.0))
    with pytest.raises(ValueError, match="non-negativity"):
        cli_tomo.run(_parse([str(src), "-a", "cgls", "--nonnegative", "-o", str(src) + "v"]))


@pytest.mark.parametrize(
    "argv",
    [
        ["tomo", "p.h5", "-n", "0", "-o", "v.h5"],
        ["spectrotomo", "d.cxi", "-o", "o.h5", "--iterations", "0"],
        ["spectrotomo", "d.cxi", "-o", "o.h5", "--volume-shape", "8", "0", "8"],
    ],
)
def test_non_positive_counts_are_refused_by_the_parser(argv, capsys):
    from diffptycho import cli

    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert "must be ≥ 1" in capsys.readouterr().err
