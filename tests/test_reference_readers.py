"""Reference spectra as users keep them: column files, Athena projects, normalised μ → δ + iβ."""

import os

import numpy as np
import pytest

from diffptycho.io.columns import ColumnFormatError, read_columns, read_spectrum_columns
from diffptycho.io.references import (
    ReferenceFormatError,
    read_reference_csv,
    read_references,
    write_reference_csv,
)
from diffptycho.physics import spectra

DATA = os.path.join(os.path.dirname(__file__), "data")
PRJ = os.path.join(DATA, "vanadium_oxides.prj")  # written by Larch (data/make_athena_fixture.py)
LARCH_NORM = os.path.join(DATA, "vanadium_oxides_larch_norm.csv")
SCAN = np.linspace(5420.0, 5540.0, 40)
OXIDES = ["V2O3", "VO2", "V2O5"]


@pytest.fixture(scope="module")
def truth():
    return spectra.vanadium_reference_spectra(SCAN)[0]


def _close_to_truth(spec, truth):
    """β within 2.5 % of its range over the scan, δ within 1 % (the converter's accuracy)."""
    for name, n in spec.items():
        ref = truth[name]
        assert np.abs(n.imag - ref.imag).max() < 0.025 * np.ptp(ref.imag), name
        assert np.abs(n.real / ref.real - 1).max() < 0.01, name


def test_athena_project_written_by_larch_gives_the_spectra_it_was_made_from(truth):
    e, spec = read_references(PRJ, energies_ev=SCAN)
    np.testing.assert_array_equal(e, SCAN)
    assert list(spec) == OXIDES
    _close_to_truth(spec, truth)
    _, two = read_references(PRJ, species=["V2O5", "V2O3"], energies_ev=SCAN[:3])
    assert list(two) == ["V2O5", "V2O3"]


def test_columns_of_larchs_normalised_mu_named_by_the_caller(truth):
    # header '# energy_ev,V2O3_norm,VO2_norm,V2O5_norm' in a comment, comma-separated
    e, spec = read_references(LARCH_NORM, energies_ev=SCAN)
    assert list(spec) == OXIDES
    _close_to_truth(spec, truth)
    # the same columns chosen by index and named by the caller
    _, renamed = read_references(
        LARCH_NORM, columns=[3], species=["X"], compounds={"X": ("V2O5", 3.36)}, energies_ev=SCAN
    )
    np.testing.assert_allclose(renamed["X"], spec["V2O5"])


def test_whitespace_delta_beta_columns_equal_the_csv(tmp_path, truth):
    csv = tmp_path / "refs.csv"
    write_reference_csv(csv, SCAN, OXIDES, np.stack([truth[s] for s in OXIDES], axis=1))
    dat = tmp_path / "refs.dat"
    lines = [
        "# delta, beta of three oxides",
        "# exported by hand",
        "#  energy " + " ".join(f"delta_{s} beta_{s}" for s in OXIDES),
    ]
    lines += [
        " ".join(repr(float(v)) for v in row) for row in np.loadtxt(csv, delimiter=",", skiprows=1)
    ]
    dat.write_text("\n".join(lines) + "\n")
    e, spec = read_references(dat)
    names, e_csv, values = read_reference_csv(csv)
    np.testing.assert_array_equal(e, e_csv)
    for i, s in enumerate(names):
        np.testing.assert_array_equal(spec[s], values[:, i])
    e2, spec2 = read_references(csv, species=["VO2"])
    np.testing.assert_array_equal(spec2["VO2"], values[:, 1])


def _normalised_file(tmp_path, header, energies, columns, name="norm.dat", sep=" "):
    path = tmp_path / name
    rows = [sep.join(f"{v:.10g}" for v in row) for row in np.column_stack([energies, *columns])]
    path.write_text("\n".join([*header, *rows]) + "\n")
    return path


def test_single_normalised_column_in_kev_with_species_and_compound(tmp_path, truth):
    larch = np.genfromtxt(LARCH_NORM, delimiter=",", names=True, skip_header=1)
    e, norm = larch["energy_ev"], larch["V2O5_norm"]
    path = _normalised_file(tmp_path, ["# energy_kev i0 norm"], e / 1000, [1 + 0 * e, norm])
    with pytest.raises(ReferenceFormatError, match="species=\\['norm'\\]"):
        read_references(path, columns=["norm"])
    _, spec = read_references(
        path,
        columns=[2],
        species=["sample"],
        compounds={"sample": ("V2O5", 3.36)},
        energies_ev=SCAN,
    )
    _close_to_truth({"V2O5": spec["sample"]}, truth)


def test_column_table_header_and_selection(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("#--\n# E\tA\tB\n1.0\t2\t3\n2.0\t4\t5\n")
    t = read_columns(path)
    assert t.names == ["E", "A", "B"] and t.values.shape == (2, 3)
    s = read_spectrum_columns(path, energy="e", columns=["b"], energy_unit="keV")
    np.testing.assert_array_equal(s.energies_ev, [1000.0, 2000.0])
    assert list(s.columns) == ["B"]
    bare = tmp_path / "bare.txt"
    bare.write_text("5400 1\n5410 2\n")
    assert read_columns(bare).names == ["col1", "col2"]


@pytest.mark.parametrize(
    ("text", "kwargs", "error", "match"),
    [
        ("energy,a\n5400,1\n5410,2,3\n", {}, ColumnFormatError, "line 3 has 3 values, expected 2"),
        ("energy a\n5400 1\n5410 x\n", {}, ColumnFormatError, "line 3: 'x' is not a number"),
        ("energy a\n5400 1\n5390 2\n", {}, ColumnFormatError, "line 3: energy 5390"),
        ("energy a\n5.40 1\n5.41 2\n", {}, ColumnFormatError, "look like keV"),
        ("# only comments\n", {}, ColumnFormatError, "no rows"),
        ("energy a\n5400 1\n5410 2\n", {"columns": ["b"]}, ColumnFormatError, "no column named"),
        ("energy a\n5400 1\n5410 2\n", {"energy": 5}, ColumnFormatError, "index 5 out of range"),
    ],
)
def test_bad_column_files_name_the_file_and_line(tmp_path, text, kwargs, error, match):
    path = tmp_path / "bad.dat"
    path.write_text(text)
    with pytest.raises(error, match=match) as err:
        read_spectrum_columns(path, **kwargs)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    ("columns", "kwargs", "match"),
    [
        ({"V2O5": "raw"}, {}, "does not look normalised"),
        ({"Fe3O4": "norm"}, {}, "give its formula and density"),
        ({"V2O5": "norm"}, {"species": ["V2O3"]}, "no species \\['V2O3'\\]"),
        ({"norm": "norm"}, {}, "do not name their species"),
        ({"V2O5": "norm"}, {"energies_ev": [6000.0]}, "outside"),
        ({"delta_A": "norm", "A": "norm"}, {}, "pairs only"),
    ],
)
def test_bad_reference_columns_are_refused_clearly(tmp_path, columns, kwargs, match):
    e = np.arange(5300.0, 5700.0, 2.0)
    step = 1 / (1 + np.exp(-(e - 5480.0) / 2))
    values = [step if kind == "norm" else 3 + 0.5 * step for kind in columns.values()]
    path = _normalised_file(tmp_path, ["# energy " + " ".join(columns)], e, values)
    with pytest.raises(ReferenceFormatError, match=match) as err:
        read_references(path, **kwargs)
    assert str(path) in str(err.value)


def test_missing_file_and_species():
    with pytest.raises(FileNotFoundError, match="nothing.dat"):
        read_references("nothing.dat")
    with pytest.raises(ReferenceFormatError, match="the file holds \\['V2O3', 'VO2', 'V2O5'\\]"):
        read_references(PRJ, species=["V2O4"])
