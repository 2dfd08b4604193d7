"""Reference spectra CSV: round trip, linear interpolation, and errors that name the file."""

import numpy as np
import pytest

from diffptycho.io.references import (
    ReferenceFormatError,
    read_reference_csv,
    write_reference_csv,
)

ENERGIES = np.array([700.0, 705.5, 708.2, 710.2, 720.0])


def _table(rng):
    return rng.uniform(1e-4, 2e-3, (5, 3)) + 1j * rng.uniform(1e-5, 1e-3, (5, 3))


def test_round_trip_is_exact(tmp_path, rng):
    path = tmp_path / "refs.csv"
    table = _table(rng)
    write_reference_csv(path, ENERGIES, ["LiFePO4", "FePO4", "C"], table)
    species, energies, values = read_reference_csv(path)
    assert species == ["LiFePO4", "FePO4", "C"]  # the file's order
    np.testing.assert_array_equal(energies, ENERGIES)
    np.testing.assert_array_equal(values, table)  # repr(float) keeps every digit
    assert values.dtype == np.complex128
    header = path.read_text().splitlines()[0]
    assert header == "energy_ev,delta_LiFePO4,beta_LiFePO4,delta_FePO4,beta_FePO4,delta_C,beta_C"


def test_interpolation_is_linear_in_delta_and_beta(tmp_path, rng):
    path = tmp_path / "refs.csv"
    table = _table(rng)
    write_reference_csv(path, ENERGIES, ["A", "B", "C"], table)
    wanted = np.array([700.0, 702.75, 709.2, 720.0])
    species, energies, values = read_reference_csv(path, wanted)
    np.testing.assert_array_equal(energies, wanted)
    assert values.shape == (4, 3)
    np.testing.assert_allclose(values[0], table[0], rtol=1e-15)  # the ends are inside
    np.testing.assert_allclose(values[1], 0.5 * (table[0] + table[1]), rtol=1e-12)
    np.testing.assert_allclose(values[2], 0.5 * (table[2] + table[3]), rtol=1e-12)
    np.testing.assert_allclose(values[3], table[-1], rtol=1e-15)
    _, _, one = read_reference_csv(path, 705.5)  # a scalar energy
    np.testing.assert_allclose(one, table[1:2], rtol=1e-15)


def test_comments_and_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "refs.csv"
    path.write_text(
        "# measured at the beamline\nenergy_ev,delta_A,beta_A\n\n700,1e-3,1e-4\n"
        "# a note\n710,2e-3,3e-4\n"
    )
    species, energies, values = read_reference_csv(path)
    assert species == ["A"]
    np.testing.assert_array_equal(energies, [700.0, 710.0])
    np.testing.assert_allclose(values[:, 0], [1e-3 + 1e-4j, 2e-3 + 3e-4j])


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "empty"),
        ("energy,delta_A,beta_A\n700,1,2\n", "expected 'energy_ev'"),
        ("delta_A,beta_A,energy_ev\n1,2,700\n", "expected 'energy_ev'"),
        ("energy_ev,delta_A\n700,1\n", "expected 'energy_ev'"),  # unpaired
        ("energy_ev,delta_A,beta_B\n700,1,2\n", "same species name"),
        ("energy_ev,beta_A,delta_A\n700,1,2\n", "same species name"),
        ("energy_ev,delta_,beta_\n700,1,2\n", "same species name"),
        ("energy_ev,delta_A,beta_A,delta_A,beta_A\n700,1,2,3,4\n", "repeat"),
        ("energy_ev,delta_A,beta_A\n", "no data rows"),
        ("energy_ev,delta_A,beta_A\n700,1e-3\n", "line 2 has 2 values"),
        ("energy_ev,delta_A,beta_A\n700,1e-3,abc\n", "line 2: non-numeric"),
        ("energy_ev,delta_A,beta_A\n700,1e-3,1e-4\n710,nan,1e-4\n", "NaN or inf"),
        ("energy_ev,delta_A,beta_A\n710,1e-3,1e-4\n700,1e-3,1e-4\n", "increase strictly"),
        ("energy_ev,delta_A,beta_A\n700,1e-3,1e-4\n700,1e-3,1e-4\n", "increase strictly"),
    ],
)
def test_format_errors_name_the_file_and_the_problem(tmp_path, text, match):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ReferenceFormatError, match=match) as err:
        read_reference_csv(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("energies", [[699.9], [708.2, 720.5], [650.0, 800.0]])
def test_energies_outside_the_table_are_refused(tmp_path, energies):
    path = tmp_path / "refs.csv"
    write_reference_csv(path, [700.0, 720.0], ["A"], np.array([[1e-3 + 1e-4j], [2e-3 + 3e-4j]]))
    with pytest.raises(ReferenceFormatError, match="outside the table") as err:
        read_reference_csv(path, energies)
    message = str(err.value)
    assert str(path) in message and "extend the table" in message
    assert str([e for e in energies if not 700.0 <= e <= 720.0]) in message


def test_missing_file_and_bad_writes(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such reference-spectra file"):
        read_reference_csv(tmp_path / "nothing.csv")
    with pytest.raises(ValueError, match=r"shape \(2, 2\), expected \(2, 1\)"):
        write_reference_csv(tmp_path / "x.csv", [700.0, 710.0], ["A"], np.ones((2, 2)))
    assert not list(tmp_path.iterdir())  # nothing half-written
