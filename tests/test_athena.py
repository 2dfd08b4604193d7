"""Athena project files written by another program (Larch's Athena writer)."""

import gzip
import os

import numpy as np
import pytest

from diffptycho.io.athena import AthenaFormatError, is_athena_project, read_athena

DATA = os.path.join(os.path.dirname(__file__), "data")
PRJ = os.path.join(DATA, "vanadium_oxides.prj")  # see data/make_athena_fixture.py
LARCH_NORM = os.path.join(DATA, "vanadium_oxides_larch_norm.csv")


@pytest.fixture(scope="module")
def larch_norm():
    return np.genfromtxt(LARCH_NORM, delimiter=",", names=True, skip_header=1)


def test_reads_the_records_larch_wrote(larch_norm):
    groups = read_athena(PRJ)
    assert [g.label for g in groups] == ["V2O3", "VO2", "V2O5"]
    for g in groups:
        np.testing.assert_allclose(g.energies_ev, larch_norm["energy_ev"], rtol=1e-8)
        assert g.args["bkg_e0"] in ("5478.0", "5481.0", "5484.0")
        assert g.mu.shape == g.energies_ev.shape and not g.is_normalized


def test_normalisation_with_the_records_parameters_matches_larch(larch_norm):
    for g in read_athena(PRJ):
        n = g.normalized()
        # Larch fits over index ranges (window ends in or out by one point); ours are closed
        # energy intervals: 0.1-0.14 % of the step apart
        np.testing.assert_allclose(n.norm, larch_norm[f"{g.label}_norm"], rtol=0, atol=3e-3)
        assert float(g.args["bkg_step"]) == pytest.approx(n.edge_step, rel=1e-3)
        assert n.e0_ev == float(g.args["bkg_e0"])


def test_plain_text_projects_read_the_same(tmp_path):
    plain = tmp_path / "plain.prj"
    with gzip.open(PRJ, "rb") as f:
        plain.write_bytes(f.read())
    a, b = read_athena(PRJ), read_athena(plain)
    assert is_athena_project(plain) and is_athena_project(PRJ)
    for ga, gb in zip(a, b, strict=True):
        np.testing.assert_array_equal(ga.mu, gb.mu)


HEAD = "# Athena project file -- Demeter version 0.9.26\n$old_group = 'abcde';\n"
A = HEAD + "@args = ('label', 'A');\n"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("energy mu\n1 2\n", "not an Athena project"),
        ('{"_____header": "Athena"}', "JSON"),
        (A + "@x = ('1','2');\n[record] #\n", "no @y"),
        (
            HEAD + "@args = ('label', 'A');\n@x = ('2','1');\n@y = ('1','2');\n[record] #\n",
            "increase",
        ),
        (
            HEAD + "@args = ('label', 'A');\n@x = ('1','x');\n@y = ('1','2');\n[record] #\n",
            "non-numeric",
        ),
        (HEAD, "no spectra"),
    ],
)
def test_damaged_projects_are_refused_naming_the_file(tmp_path, text, match):
    path = tmp_path / "bad.prj"
    path.write_text(text)
    with pytest.raises(AthenaFormatError, match=match) as err:
        read_athena(path)
    assert str(path) in str(err.value)


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="no-such.prj"):
        read_athena("no-such.prj")
