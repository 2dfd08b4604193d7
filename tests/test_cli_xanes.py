"""``chem xanes-fit`` and ``chem cluster`` end to end on a small simulated V K-edge stack."""

import argparse
import os

import h5py
import numpy as np
import pytest

from diffptycho.analysis.clustering import adjusted_rand_index
from diffptycho.cli.xanes import add_parsers
from diffptycho.io.results import read_results
from diffptycho.physics.optics import wavenumber
from diffptycho.physics.spectra import vanadium_reference_spectra

E = np.linspace(5420.0, 5540.0, 40)


def run(argv):
    parser = argparse.ArgumentParser(prog="diffptycho chem")
    add_parsers(parser.add_subparsers(dest="chem_command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def stack_file(tmp_path_factory):
    """12×15 px: three oxide bands 5 px wide, thickness 0.4–0.8 µm, background in row 0."""
    rng = np.random.default_rng(7)
    spectra, _ = vanadium_reference_spectra(E)
    n = np.stack(list(spectra.values()))  # (species, E)
    domain = np.repeat(np.arange(3), 5)[None].repeat(12, axis=0)
    domain[0] = -1
    t = np.where(domain >= 0, rng.uniform(400e-9, 800e-9, domain.shape), 0.0)
    k = wavenumber(E)[:, None, None]
    idx = np.clip(domain, 0, 2)
    mu_t = 2 * k * n.imag[idx].transpose(2, 0, 1) * t + rng.normal(0, 5e-4, (40, 12, 15))
    phase = -k * n.real[idx].transpose(2, 0, 1) * t + rng.normal(0, 5e-4, (40, 12, 15))
    path = tmp_path_factory.mktemp("xanes") / "stack.h5"
    with h5py.File(path, "w") as f:
        f["od"] = mu_t
        f["energies_ev"] = E
        f["phase"] = phase
    return str(path), domain


@pytest.fixture(scope="module")
def fitted(stack_file, tmp_path_factory):
    path, domain = stack_file
    out = str(tmp_path_factory.mktemp("fit") / "out.h5")
    assert run(["xanes-fit", path, "--output", out]) == 0
    return out, domain


def test_xanes_fit_writes_descriptors_and_densities(fitted):
    out, domain = fitted
    res = read_results(out)
    for name in ("edge_jump", "edge_energy_ev", "pre_edge_intensity", "pre_edge_ratio", "valid"):
        assert res[name].shape == (12, 15)
    assert res["units"]["edge_energy_ev"] == "eV"
    assert res["units"]["n_absorber"] == "atoms/m^2"
    assert res["params"].shape == (10, 12, 15) and res["mu_t"].shape == (40, 12, 15)
    assert res["valid"][1:].all() and res["valid"][0].mean() < 0.5
    truth = np.array([5478.0, 5481.0, 5484.0])[domain[1:]]
    err = res["edge_energy_ev"][1:] - truth
    assert np.sqrt(np.mean(err**2)) < 0.2
    ratio = res["electrons_per_absorber"][1:]
    theory = [res[f"theory/electrons_per_absorber/{s}"] for s in ("V2O3", "VO2", "V2O5")]
    assert np.all(np.diff(theory) > 3)
    for s in range(3):  # each band's electrons per V is nearest its own compound
        got = np.median(ratio[domain[1:] == s])
        assert np.argmin(np.abs(np.array(theory) - got)) == s
    assert res["provenance"]["config"]["command"] == "chem xanes-fit"


def test_cluster_elbow_in_place_and_given_k_elsewhere(fitted, tmp_path):
    out, domain = fitted
    other = str(tmp_path / "k2.h5")
    assert run(["cluster", out, "--k", "2", "--output", other]) == 0
    assert "cluster_labels" not in read_results(out)
    assert read_results(other)["cluster_centers"].shape == (2, 2)
    figs = tmp_path / "figs"
    assert run(["cluster", out, "--elbow", "--figures", str(figs)]) == 0
    res = read_results(out)
    labels = res["cluster_labels"]
    assert res["provenance"]["config"]["cluster"]["k"] == 3
    assert res["provenance"]["config"]["cluster"]["assignment"] == "noise-aware"
    assert res["provenance"]["config"]["previous"]["command"] == "chem xanes-fit"
    use = labels >= 0
    assert adjusted_rand_index(domain[use], labels[use]) >= 0.9
    np.testing.assert_allclose(res["cluster_fractions"].sum(), 1.0)
    np.testing.assert_allclose(res["cluster_unmixed_fractions"].sum(), 1.0)
    # the bands are pure: splitting mixed pixels changes the fractions little
    np.testing.assert_allclose(
        res["cluster_unmixed_fractions"], res["cluster_fractions"], atol=0.03
    )
    assert res["cluster_shares"].shape == (3, *labels.shape)
    assert res["cluster_endmembers"].shape == (3, 40)
    assert res["cluster_mean_spectra"].shape == (3, 40)
    norm = res["cluster_mean_spectra_normalized"]
    np.testing.assert_allclose(norm[:, :5], 0.0, atol=0.05)  # flat pre-edge at 0
    np.testing.assert_allclose(norm[:, -5:], 1.0, atol=0.1)  # post-edge at the jump
    assert res["elbow/k"].tolist() == list(range(1, 9))
    assert res["elbow/stability_k"].tolist() == [3] and res["elbow/stability"][0] >= 0.9
    assert res["provenance"]["config"]["cluster"]["min_stability"] == 0.9
    assert res["provenance"]["config"]["cluster"]["min_mixing_chi2"] == 10.0
    assert "edge_energy_ev" in res and res["units"]["edge_energy_ev"] == "eV"
    pngs = sorted(os.listdir(figs))
    assert "xanes_clusters.png" in pngs and "xanes_elbow.png" in pngs and len(pngs) >= 4
    nearest = str(tmp_path / "nearest.h5")
    assert run(["cluster", out, "--assignment", "nearest", "--output", nearest]) == 0
    plain = read_results(nearest)
    assert plain["provenance"]["config"]["cluster"]["assignment"] == "nearest"
    assert adjusted_rand_index(domain[use], plain["cluster_labels"][use]) >= 0.9
    assert plain["elbow/stability_k"].size == 0  # the stability check needs the noise model
    assert plain["provenance"]["config"]["cluster"]["min_stability"] is None
    off = str(tmp_path / "off.h5")
    assert run(["cluster", out, "--min-stability", "0", "--min-mixing-chi2", "0", "-o", off]) == 0
    res_off = read_results(off)
    assert res_off["elbow/stability_k"].size == 0
    assert res_off["provenance"]["config"]["cluster"]["min_mixing_chi2"] == 0.0


def test_cluster_thresholds_are_checked(fitted, capsys):
    with pytest.raises(SystemExit):
        run(["cluster", fitted[0], "--min-stability", "1.5"])
    assert "argument --min-stability: 1.5 must be in [0, 1]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run(["cluster", fitted[0], "--min-mixing-chi2", "-1"])
    assert "argument --min-mixing-chi2: -1.0 must be a finite number ≥ 0" in capsys.readouterr().err


def test_errors_name_file_and_dataset(tmp_path, fitted):
    with pytest.raises(FileNotFoundError, match="nope.h5"):
        run(["xanes-fit", str(tmp_path / "nope.h5"), "-o", str(tmp_path / "o.h5")])
    bad = tmp_path / "bad.h5"
    with h5py.File(bad, "w") as f:
        f["od"] = np.zeros((40, 2, 2))
    with pytest.raises(ValueError, match=r"bad.h5: no dataset 'energies_ev'"):
        run(["xanes-fit", str(bad), "-o", str(tmp_path / "o.h5")])
    with h5py.File(bad, "a") as f:
        f["energies_ev"] = E[:30]
    with pytest.raises(ValueError, match=r"dataset 'od' has shape \(40, 2, 2\)"):
        run(["xanes-fit", str(bad), "-o", str(tmp_path / "o.h5")])
    with h5py.File(bad, "a") as f:
        del f["energies_ev"]
        f["energies_ev"] = E
        f["phase"] = np.zeros((40, 3, 2))
    with pytest.raises(ValueError, match="dataset 'phase' has shape"):
        run(["xanes-fit", str(bad), "-o", str(tmp_path / "o.h5")])
    empty = tmp_path / "empty.h5"
    with h5py.File(empty, "w") as f:
        f["energies_ev"] = E
    with pytest.raises(ValueError, match="no dataset 'od' or 'mu_t'"):
        run(["xanes-fit", str(empty), "-o", str(tmp_path / "o.h5")])
    out, _ = fitted
    with pytest.raises(ValueError, match=r"missing dataset\(s\) \['bogus'\]"):
        run(["cluster", out, "--features", "bogus"])
    with pytest.raises(SystemExit):
        run(["cluster", out, "--k", "2", "--elbow"])
    with pytest.raises(SystemExit):  # the parser refuses counts < 1 (positive_int)
        run(["cluster", out, "--k", "0"])
