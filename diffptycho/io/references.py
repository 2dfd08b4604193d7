"""Reference spectra of pure species as CSV: δ and β of each species against energy.

Layout (one header line, then one row per energy, comma-separated)::

    energy_ev,delta_LiFePO4,beta_LiFePO4,delta_FePO4,beta_FePO4
    700.0,1.2e-3,4.0e-4,1.1e-3,3.9e-4
    ...

δ and β are those of each pure species at full density (dimensionless); the species names come
from the headers, in their order. Values are interpolated linearly to the data's energies, which
must lie inside the tabulated range.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence

import numpy as np

__all__ = ["ReferenceFormatError", "read_reference_csv", "write_reference_csv"]


class ReferenceFormatError(ValueError):
    """A reference-spectra CSV does not follow the layout of this module."""


def read_reference_csv(
    path: str | os.PathLike[str], energies_ev: Sequence[float] | np.ndarray | None = None
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Read δ + iβ of each species, optionally interpolated to ``energies_ev``.

    Args:
        path: the CSV file.
        energies_ev: energies (eV) to interpolate to; None returns the tabulated energies.

    Returns:
        ``(species, energies_ev, spectra)`` with ``spectra`` (energy, species) complex128
        δ + iβ.

    Raises:
        FileNotFoundError: no such file.
        ReferenceFormatError: a bad header, a non-numeric or non-finite value, unsorted or
            repeated energies, or requested energies outside the table (named in the message).

    Examples:
        >>> import os, tempfile
        >>> import numpy as np
        >>> path = os.path.join(tempfile.mkdtemp(), "refs.csv")
        >>> write_reference_csv(path, [700.0, 720.0], ["A"], np.array([[1e-3 + 1e-4j],
        ...                                                           [2e-3 + 3e-4j]]))
        >>> names, e, spec = read_reference_csv(path, [710.0])
        >>> names, np.round(spec[0, 0] * 1e4, 6)
        (['A'], np.complex128(15+2j))
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such reference-spectra file")
    with open(path, newline="") as f:
        rows = [row for row in csv.reader(f) if row and not row[0].lstrip().startswith("#")]
    if not rows:
        raise ReferenceFormatError(f"{path}: empty; expected a header 'energy_ev,delta_<s>,...'")
    header = [h.strip() for h in rows[0]]
    if header[0] != "energy_ev" or len(header) < 3 or len(header) % 2 == 0:
        raise ReferenceFormatError(
            f"{path}: header {header}: expected 'energy_ev' followed by a 'delta_<species>,"
            "beta_<species>' pair per species"
        )
    species = []
    for d, b in zip(header[1::2], header[2::2], strict=True):
        if not (d.startswith("delta_") and b.startswith("beta_")) or d[6:] != b[5:] or not d[6:]:
            raise ReferenceFormatError(
                f"{path}: columns {d!r}, {b!r}: expected 'delta_<species>,beta_<species>' with "
                "the same species name"
            )
        species.append(d[6:])
    if len(set(species)) != len(species):
        raise ReferenceFormatError(f"{path}: species {species} repeat; give each once")
    values = np.empty((len(rows) - 1, len(header)))
    for i, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise ReferenceFormatError(
                f"{path}: line {i} has {len(row)} values, the header {len(header)}"
            )
        try:
            values[i - 2] = [float(v) for v in row]
        except ValueError:
            raise ReferenceFormatError(f"{path}: line {i}: non-numeric value in {row}") from None
    if values.shape[0] == 0:
        raise ReferenceFormatError(f"{path}: no data rows after the header")
    if not np.all(np.isfinite(values)):
        raise ReferenceFormatError(f"{path}: NaN or inf values; give finite δ and β")
    table_e = values[:, 0]
    if np.any(np.diff(table_e) <= 0):
        raise ReferenceFormatError(f"{path}: energy_ev must increase strictly from row to row")
    spectra = values[:, 1::2] + 1j * values[:, 2::2]
    if energies_ev is None:
        return species, table_e, spectra
    energies = np.atleast_1d(np.asarray(energies_ev, dtype=np.float64))
    outside = energies[(energies < table_e[0] - 1e-9) | (energies > table_e[-1] + 1e-9)]
    if outside.size:
        raise ReferenceFormatError(
            f"{path}: the data's energies {outside.tolist()} eV lie outside the table "
            f"({table_e[0]}–{table_e[-1]} eV); extend the table"
        )
    out = np.stack(
        [
            np.interp(energies, table_e, spectra[:, s].real)
            + 1j * np.interp(energies, table_e, spectra[:, s].imag)
            for s in range(len(species))
        ],
        axis=1,
    )
    return species, energies, out


def write_reference_csv(
    path: str | os.PathLike[str],
    energies_ev: Sequence[float] | np.ndarray,
    species: Sequence[str],
    spectra: np.ndarray,
) -> None:
    """Write δ + iβ (energy, species) in the layout :func:`read_reference_csv` reads.

    Args:
        path: destination CSV (written to a temporary file, then renamed).
        energies_ev: increasing energies in eV.
        species: species names (no commas).
        spectra: (energy, species) complex δ + iβ.
    """
    spectra = np.asarray(spectra)
    energies = np.asarray(energies_ev, dtype=np.float64)
    if spectra.shape != (energies.size, len(species)):
        raise ValueError(
            f"spectra: shape {spectra.shape}, expected ({energies.size}, {len(species)})"
        )
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["energy_ev"] + [f"{p}_{s}" for s in species for p in ("delta", "beta")])
        for e, row in zip(energies, spectra, strict=True):
            writer.writerow(
                [repr(float(e))] + [repr(float(v)) for c in row for v in (c.real, c.imag)]
            )
    os.replace(tmp, path)
