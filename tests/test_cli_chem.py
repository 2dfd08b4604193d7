"""``diffptycho chem lcf`` and ``two-energy``: outputs, figures and error exits."""

import argparse
import os

import h5py
import numpy as np
import pytest

from diffptycho.cli import chem as cli_chem


def _run(argv) -> int:
    parser = argparse.ArgumentParser(prog="diffptycho")
    sub = parser.add_subparsers(dest="command", required=True)
    cli_chem.add_parser(sub)
    return cli_chem.run(parser.parse_args(argv))


def _reference(path, energies, values):
    np.savetxt(path, np.column_stack([energies, values]))
    return str(path)


def test_lcf_on_an_hdf5_stack(tmp_path, rng):
    e = np.linspace(700, 720, 30)
    r1, r2 = np.exp(-((e - 708) ** 2) / 2) + 0.1, np.exp(-((e - 710) ** 2) / 2) + 0.1
    w = rng.uniform(0, 1, (2, 6, 7))
    stack = tmp_path / "stack.h5"
    with h5py.File(stack, "w") as f:
        f["od"] = np.einsum("e,yx->eyx", r1, w[0]) + np.einsum("e,yx->eyx", r2, w[1])
        f["energies_ev"] = e
    refs = [_reference(tmp_path / "a.txt", e, r1), _reference(tmp_path / "b.txt", e, r2)]
    out = tmp_path / "out.h5"
    assert _run(["chem", "lcf", str(stack), "--references", *refs, "--output", str(out)]) == 0
    with h5py.File(out, "r") as f:
        np.testing.assert_allclose(f["weights"][()], w, atol=1e-9)
        assert f["r_factor"].shape == (6, 7) and np.nanmax(f["r_factor"][()]) < 1e-12
        np.testing.assert_allclose(f["energies_ev"][()], e)
    assert os.path.isfile(tmp_path / "out_lcf_maps.png")


def _od_volume(tmp_path, matrix, pre=None):
    rng = np.random.default_rng(5)
    share = np.zeros((12, 12, 12))
    share[:, :, :4], share[:, :, 4:8], share[:, :, 8:] = 1.0, 0.5, 0.0
    amount = np.zeros_like(share)
    amount[2:10, 2:10, 1:11] = 1.0
    conc = np.stack([amount * share, amount * (1 - share)])
    od = np.einsum("ij,j...->i...", matrix, conc) + rng.normal(0, 0.01, (2, 12, 12, 12))
    path = tmp_path / "od.h5"
    with h5py.File(path, "w") as f:
        f["od"] = od if pre is None else od + pre
        if pre is not None:
            f["od_pre"] = np.full(share.shape, pre)
    return str(path), share, amount > 0


@pytest.mark.parametrize("pre_edge, smooth", [(False, 0.0), (True, 0.0), (False, 0.7)])
def test_two_energy_recovers_fraction_and_phases(tmp_path, pre_edge, smooth):
    m = np.array([[1.0, 0.4], [0.52, 0.856]])  # columns: first, second at (E1, E2)
    e = np.array([705.0, 708.2, 710.2])
    pre = 0.3 if pre_edge else None
    offset = 0.3 if pre_edge else 0.0  # the references carry the same pre-edge OD
    refs = [
        _reference(tmp_path / "lfp.txt", e, [offset, m[0, 0] + offset, m[1, 0] + offset]),
        _reference(tmp_path / "fp.txt", e, [offset, m[0, 1] + offset, m[1, 1] + offset]),
    ]
    od, share, inside = _od_volume(tmp_path, m, pre)
    out = tmp_path / "te.h5"
    argv = ["chem", "two-energy", od, "--e1", "708.2", "--e2", "710.2", "--references", *refs]
    argv += ["--output", str(out), "--smooth", str(smooth)]
    argv += ["--e-pre", "705"] if pre_edge else []
    assert _run(argv) == 0
    with h5py.File(out, "r") as f:
        frac, classes = f["fraction_first"][()], f["phase_class"][()]
        assert np.sqrt(np.nanmean((frac - share)[inside] ** 2)) < (0.1 if smooth else 0.05)
        np.testing.assert_array_equal(classes[~inside], -1)
        truth = np.where(share > 0.7, 0, np.where(share < 0.3, 2, 1))
        assert np.mean(classes[inside] == truth[inside]) > (0.9 if smooth else 0.95)
        np.testing.assert_allclose(f["gaussian_fit/fraction_first"][()], [1.0, 0.0], atol=0.05)
        assert f["polar_angle_deg"].shape == (12, 12, 12)
    for name in ("correlation", "polar_histogram", "phases"):
        assert os.path.isfile(tmp_path / f"te_{name}.png")


def test_two_energy_singular_references_exit_with_a_message(tmp_path, capsys):
    e = np.array([708.2, 710.2])
    refs = [
        _reference(tmp_path / "a.txt", e, [1.0, 2.0]),
        _reference(tmp_path / "b.txt", e, [2, 4]),
    ]
    od, _, _ = _od_volume(tmp_path, np.array([[1.0, 0.4], [0.52, 0.856]]))
    argv = ["chem", "two-energy", od, "--e1", "708.2", "--e2", "710.2", "--references", *refs]
    assert _run([*argv, "--output", str(tmp_path / "x.h5")]) == 2
    assert "singular" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x.h5")


def test_missing_dataset_and_file_exit_with_a_message(tmp_path, capsys):
    empty = tmp_path / "empty.h5"
    with h5py.File(empty, "w") as f:
        f["something"] = np.zeros(3)
    ref = _reference(tmp_path / "a.txt", [700.0, 720.0], [1.0, 1.0])
    argv = ["chem", "lcf", str(empty), "--references", ref, "--output", str(tmp_path / "o.h5")]
    assert _run(argv) == 2
    assert "no dataset 'od'" in capsys.readouterr().err
    argv[2] = str(tmp_path / "absent.h5")
    assert _run(argv) == 2
    assert "absent.h5" in capsys.readouterr().err


@pytest.mark.slow
def test_lcf_on_the_measured_stxm_stack(shared_data, tmp_path):
    d = os.path.join(shared_data, "stxm_fe_l3")
    out = tmp_path / "fe.h5"
    argv = ["chem", "lcf", os.path.join(d, "71214078.hdr"), "--i0", os.path.join(d, "i0.xsp")]
    argv += ["--references", os.path.join(d, "reduced.r"), os.path.join(d, "oxidized.r")]
    assert _run([*argv, "--offset", "--mask-threshold", "0.95", "--output", str(out)]) == 0
    with h5py.File(out, "r") as f:
        assert f["weights"].shape == (2, 125, 125)
        r = f["r_factor"][()]
        assert np.nanmedian(r) < 0.01


def test_xanes_hook_registers_the_other_workflows_subcommands(monkeypatch):
    import sys
    import types

    def add_parsers(chem_subparsers):
        p = chem_subparsers.add_parser("fake-xanes")
        p.set_defaults(func=lambda args: 7)

    monkeypatch.setitem(
        sys.modules, "diffptycho.cli.xanes", types.SimpleNamespace(add_parsers=add_parsers)
    )
    assert _run(["chem", "fake-xanes"]) == 7
