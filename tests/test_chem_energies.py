"""Energies from files win over the command line; implausible unmixing warns; small CLI fixes.

The references here are analytic spectra with a steep white line, so that 0.05 eV matters: the
truth at the file's energies is computed from the formula, independently of the interpolation
the code uses.
"""

from __future__ import annotations

import os
import warnings

import h5py
import numpy as np
import pytest

from diffptycho.cli import main
from diffptycho.cli.chem import _figure_path
from diffptycho.io.energies import ENERGY_TOLERANCE_EV, check_energies_ev, reconcile_energies
from diffptycho.recon.chem import lcf
from diffptycho.recon.chem import two_energy as te
from diffptycho.recon.chem.plausibility import (
    ImplausibleUnmixingWarning,
    occupied,
    outside_fraction,
    warn_if_implausible,
)

FILE_EV = (708.252, 710.272)  # what the beamline recorded
NOMINAL_EV = (708.2, 710.2)  # what the user typed


def _white_line(e, centre, height=1.5, width=0.6, edge=0.5):
    """Analytic L3-like spectrum: an arctan step plus a Lorentzian white line (OD per unit)."""
    e = np.asarray(e, float)
    step = edge * (0.5 + np.arctan((e - centre - 1.0) / 0.4) / np.pi)
    return 0.2 + step + height / (1 + ((e - centre) / width) ** 2)


SPECTRA = {"lfp": lambda e: _white_line(e, 708.3), "fp": lambda e: _white_line(e, 710.2)}


def _refs(tmp_path) -> list[str]:
    e = np.arange(700.0, 720.0001, 0.002)  # fine enough that linear interpolation is exact
    paths = []
    for name, spectrum in SPECTRA.items():
        path = tmp_path / f"{name}.txt"
        np.savetxt(path, np.column_stack([e, spectrum(e)]), fmt="%.10f")
        paths.append(str(path))
    return paths


def _matrix(energies) -> np.ndarray:
    return np.stack([SPECTRA["lfp"](energies), SPECTRA["fp"](energies)], axis=1)


def _od_file(path, share, energies_ev=FILE_EV, matrix=None) -> str:
    m = _matrix(np.asarray(FILE_EV)) if matrix is None else matrix
    conc = np.stack([share, 1 - share])
    with h5py.File(path, "w") as f:
        f["od"] = np.einsum("ij,j...->i...", m, conc)
        if energies_ev is not None:
            f["energies_ev"] = np.asarray(energies_ev)
    return str(path)


@pytest.fixture
def share():
    return np.random.default_rng(3).uniform(0.0, 1.0, (10, 10))


@pytest.mark.parametrize("cli", [NOMINAL_EV, None])
def test_two_energy_uses_the_files_energies(tmp_path, share, cli):
    od = _od_file(tmp_path / "od.h5", share)
    out = tmp_path / "te.h5"
    argv = ["chem", "two-energy", od, "--references", *_refs(tmp_path), "-o", str(out)]
    if cli is not None:
        argv += ["--e1", str(cli[0]), "--e2", str(cli[1])]
    assert main(argv) == 0
    with h5py.File(out, "r") as f:
        frac = f["fraction_first"][()]
        np.testing.assert_allclose(f["reference_matrix"][()], _matrix(np.asarray(FILE_EV)), 1e-5)
    inside = np.isfinite(frac)
    assert inside.mean() > 0.9
    # the exact least squares at the file's energies: the truth, to interpolation accuracy
    np.testing.assert_allclose(frac[inside], share[inside], atol=1e-4)
    # the typed energies would have been wrong by far more (so the test can fail)
    wrong = np.asarray(te.fraction_first(te.unmix_two_energy(_read_od(od), _matrix(NOMINAL_EV))))
    assert np.sqrt(np.mean((wrong - share) ** 2)) > 0.005  # 1.2e-2 measured, 50× the atol


def _read_od(path: str) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f["od"][()]


def test_two_energy_without_file_energies_takes_the_command_lines(tmp_path, share):
    od = _od_file(tmp_path / "od.h5", share, energies_ev=None)
    out = tmp_path / "te.h5"
    argv = ["chem", "two-energy", od, "--references", *_refs(tmp_path), "-o", str(out)]
    assert main([*argv, "--e1", str(FILE_EV[0]), "--e2", str(FILE_EV[1])]) == 0
    with h5py.File(out, "r") as f:
        frac = f["fraction_first"][()]
    np.testing.assert_allclose(frac[np.isfinite(frac)], share[np.isfinite(frac)], atol=1e-4)


def test_disagreeing_energies_are_an_error_naming_both(tmp_path, share, capsys):
    od = _od_file(tmp_path / "od.h5", share)
    out = tmp_path / "te.h5"
    argv = ["chem", "two-energy", od, "--references", *_refs(tmp_path), "-o", str(out)]
    assert main([*argv, "--e1", "708.252", "--e2", "710.5"]) == 2
    err = capsys.readouterr().err
    assert "--e2 710.5" in err and "710.272" in err and od in err and "energies_ev" in err
    assert not out.exists()


def test_reconcile_tolerance():
    kw = {"file_where": "f.h5: dataset 'energies_ev'", "cli_names": ["--e1", "--e2"]}
    ok = [708.252 + 0.9 * ENERGY_TOLERANCE_EV, 710.272 - 0.9 * ENERGY_TOLERANCE_EV]
    np.testing.assert_array_equal(reconcile_energies(FILE_EV, ok, **kw), FILE_EV)
    np.testing.assert_array_equal(reconcile_energies(FILE_EV, [None, None], **kw), FILE_EV)
    with pytest.raises(ValueError, match="--e1 708.362 eV disagrees"):
        reconcile_energies(FILE_EV, [708.252 + 1.1 * ENERGY_TOLERANCE_EV, None], **kw)
    with pytest.raises(ValueError, match="--e2"):
        reconcile_energies(None, [708.2, None], **kw)


@pytest.mark.parametrize(
    "values, unit",
    [([0.7082, 0.7102], "keV"), ([1.1347e-16], "J"), ([-5.0], "not a photon energy")],
)
def test_energy_units_are_named(values, unit):
    with pytest.raises(ValueError, match=unit):
        check_energies_ev(values, "x")


# ---------------------------------------------------------------------------------------------
# implausible unmixing


def test_plausibility_helpers_on_hand_made_shares():
    shares = np.array([0.5, 1.63, -0.54, 0.2, 1.1, -0.1])
    assert outside_fraction(shares) == pytest.approx(2 / 6)
    assert outside_fraction(shares, mask=np.array([1, 0, 0, 1, 1, 1], bool)) == 0.0
    assert outside_fraction(np.array([[0.5, 1.5], [0.5, -0.5]])) == pytest.approx(0.5)
    np.testing.assert_array_equal(occupied(np.array([0.0, 0.1, 0.5, 1.0])), [0, 0, 1, 1])
    with pytest.warns(ImplausibleUnmixingWarning, match="inconsistent references"):
        assert warn_if_implausible(shares, what="t") == pytest.approx(1 / 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_implausible(np.array([0.0, 1.0, 0.5, -0.1]), what="t")


def _inconsistent_matrix() -> np.ndarray:
    """The second reference replaced by a 50/50 mixture: pure second member gives share −1."""
    m = _matrix(np.asarray(FILE_EV))
    return np.stack([m[:, 0], 0.5 * (m[:, 0] + m[:, 1])], axis=1)


def test_two_energy_library_warns_on_inconsistent_references(share):
    od = np.einsum("ij,j...->i...", _matrix(np.asarray(FILE_EV)), np.stack([share, 1 - share]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        te.unmix_two_energy(od, _matrix(np.asarray(FILE_EV)), check=True)
    with pytest.warns(ImplausibleUnmixingWarning, match="two-energy unmixing"):
        c = te.unmix_two_energy(od, _inconsistent_matrix(), check=True)
    f = np.asarray(te.fraction_first(c))
    np.testing.assert_allclose(f, 2 * share - 1, atol=1e-9)  # share_first = 2f − 1


def test_two_energy_cli_prints_the_warning(tmp_path, share, capsys):
    refs = _refs(tmp_path)
    od_ok = _od_file(tmp_path / "ok.h5", share)
    argv = ["chem", "two-energy", od_ok, "--references", *refs, "-o", str(tmp_path / "a.h5")]
    assert main(argv) == 0
    assert "warning" not in capsys.readouterr().err
    # data made with the true references, unmixed with swapped energies' references
    bad = _od_file(tmp_path / "bad.h5", share, matrix=_matrix(np.asarray(FILE_EV))[::-1] * 1.8)
    argv = ["chem", "two-energy", bad, "--references", *refs, "-o", str(tmp_path / "b.h5")]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "diffptycho chem two-energy: warning:" in err
    for cause in ("inconsistent references", "wrong energies", "optical densities"):
        assert cause in err


def _stack(shares, refs):
    return np.einsum("re,r...->e...", refs, np.stack([shares, 1 - shares]))


def test_lcf_warns_when_non_negativity_hides_inconsistent_references(share):
    e = np.linspace(700.0, 720.0, 40)
    a, b = SPECTRA["lfp"](e), SPECTRA["fp"](e)
    data = _stack(share, np.stack([a, b]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        good = lcf.linear_combination_fit(data, np.stack([a, b]), check=True)
    np.testing.assert_allclose(good.fractions()[0], share, atol=1e-6)
    mixture = 0.5 * (a + b)  # a "reference" that is itself a mixture
    with pytest.warns(ImplausibleUnmixingWarning, match="linear combination fit"):
        bad = lcf.linear_combination_fit(data, np.stack([a, mixture]), check=True)
    # the constrained fit alone looks harmless: its fractions stay in [0, 1]
    frac = np.asarray(bad.fractions())
    assert np.nanmin(frac) >= 0 and np.nanmax(frac) <= 1


def test_lcf_cli_prints_the_warning_and_names_the_figure(tmp_path, share, capsys):
    e = np.linspace(700.0, 720.0, 40)
    a, b = SPECTRA["lfp"](e), SPECTRA["fp"](e)
    stack = tmp_path / "stack.h5"
    with h5py.File(stack, "w") as f:
        f["od"] = _stack(share, np.stack([a, b]))
        f["energies_ev"] = e
    refs = []
    for name, values in (("a", a), ("mix", 0.5 * (a + b))):
        refs.append(str(tmp_path / f"{name}.txt"))
        np.savetxt(refs[-1], np.column_stack([e, values]))
    out = tmp_path / "lcf.h5"
    assert main(["chem", "lcf", str(stack), "--references", *refs, "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "diffptycho chem lcf: warning:" in err and "inconsistent references" in err
    assert os.path.isfile(tmp_path / "lcf_maps.png")
    assert not os.path.exists(tmp_path / "lcf_lcf_maps.png")


def test_polar_histogram_warns_on_implausible_populations():
    m = _matrix(np.asarray(FILE_EV))
    rng = np.random.default_rng(0)
    # two populations whose angles lie outside the references' sector
    lo, hi = np.degrees(np.arctan2(m[1], m[0])).min(), np.degrees(np.arctan2(m[1], m[0])).max()
    angles = np.concatenate([rng.normal(lo - 8, 0.5, 2000), rng.normal(hi + 8, 0.5, 2000)])
    with pytest.warns(ImplausibleUnmixingWarning, match="polar-angle histogram"):
        te.fit_polar_histogram(angles, m)


@pytest.mark.parametrize(
    "output, suffix, expected",
    [
        ("lcf.h5", "lcf_maps", "lcf_maps.png"),
        ("out.h5", "lcf_maps", "out_lcf_maps.png"),
        ("d/fe_lcf.h5", "lcf_maps", "d/fe_lcf_maps.png"),
        ("te.h5", "correlation", "te_correlation.png"),
        ("calf.h5", "lcf_maps", "calf_lcf_maps.png"),
    ],
)
def test_figure_names_do_not_repeat_the_stem(output, suffix, expected):
    assert _figure_path(output, suffix) == expected


@pytest.mark.parametrize(
    "argv",
    [
        ["tomo", "p.h5", "-n", "0", "-o", "v.h5"],
        ["tomo", "p.h5", "--slab-size", "0", "-o", "v.h5"],
        ["chem", "two-energy", "od.h5", "--references", "a", "b", "-o", "o.h5", "--bins", "0"],
        ["chem", "xanes-fit", "s.h5", "-o", "o.h5", "--max-steps", "0"],
        ["chem", "xanes-fit", "s.h5", "-o", "o.h5", "--batch-size", "-3"],
        ["chem", "cluster", "r.h5", "--k-max", "0"],
        ["chem", "cluster", "r.h5", "--n-init", "0"],
    ],
)
def test_counts_below_one_are_refused_by_the_parser(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "must be ≥ 1" in capsys.readouterr().err


@pytest.mark.parametrize("layout", ["attribute", "spectrotomo"])
def test_energies_are_found_where_other_writers_put_them(tmp_path, share, layout):
    m = _matrix(np.asarray(FILE_EV))
    od = np.einsum("ij,j...->i...", m, np.stack([share, 1 - share]))
    path = tmp_path / "od.h5"
    with h5py.File(path, "w") as f:
        if layout == "attribute":
            f["od"] = od
            f["od"].attrs["energies_ev"] = np.asarray(FILE_EV)
        else:  # a two-energy spectrotomo result: od_volumes (energy, z, y, x), energies_ev
            f["od_volumes"] = od[:, None]
            f["energies_ev"] = np.asarray(FILE_EV)
    out = tmp_path / "te.h5"
    argv = ["chem", "two-energy", str(path), "--references", *_refs(tmp_path), "-o", str(out)]
    assert main([*argv, "--e1", "708.2", "--e2", "710.2"]) == 0
    with h5py.File(out, "r") as f:
        frac = f["fraction_first"][()].reshape(share.shape)
        np.testing.assert_allclose(f["reference_matrix"][()], m, rtol=1e-5)
    np.testing.assert_allclose(frac[np.isfinite(frac)], share[np.isfinite(frac)], atol=1e-4)
