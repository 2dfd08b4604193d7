"""Spectra kept as text columns, as Athena, Larch, XDI and spreadsheets export them.

A column file is one row per energy, values separated by commas or by whitespace (tabs,
spaces), with optional ``#`` comment lines before the data. The column names are taken from
the last comment line before the data that holds one name per column (``# energy mu norm``, as
Athena, Larch's ``write_ascii`` and XDI write them) or from a first line that is not numeric
(``energy_ev,V2O3,VO2``, as spreadsheets write). Without names, columns are called ``col1``,
``col2``, ….

:func:`read_spectrum_columns` picks the energy column (by name or index; default: a column
named like ``energy`` / ``e``, else the first), checks that energies increase, converts keV to
eV and refuses what looks like keV without being told.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence

import numpy as np

__all__ = [
    "ColumnFormatError",
    "ColumnTable",
    "SpectrumColumns",
    "read_columns",
    "read_spectrum_columns",
]

_ENERGY_NAMES = (
    "energy",
    "energy_ev",
    "energy_kev",
    "e",
    "e_ev",
    "e_kev",
    "energy(ev)",
    "energy(kev)",
    "energy/ev",
    "energy/kev",
    "ev",
    "kev",
)
_KEV_LOOKING = 100.0  # largest energy (eV) no X-ray edge used here lies below
_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eEdD][-+]?\d+)?$|^[-+]?(nan|inf)$", re.I)


class ColumnFormatError(ValueError):
    """A column file cannot be read as spectra (the message names the file and line)."""


@dataclasses.dataclass(frozen=True, eq=False)
class ColumnTable:
    """The numbers of a column file and the names of its columns.

    Attributes:
        path: the file.
        names: one name per column (from the header, else ``col1``, ``col2``, …).
        values: (row, column) float64 values.
        lines: (row,) the file's line number (1-based) of each row, for messages.
    """

    path: str
    names: list[str]
    values: np.ndarray
    lines: np.ndarray

    def index(self, key: int | str) -> int:
        """Index of a column given by name (case-insensitive) or 0-based index.

        Raises:
            ColumnFormatError: no such column (the message lists them).
        """
        if isinstance(key, int | np.integer):
            if not -len(self.names) <= key < len(self.names):
                raise ColumnFormatError(
                    f"{self.path}: column index {key} out of range; the file has "
                    f"{len(self.names)} columns {self.names}"
                )
            return int(key) % len(self.names)
        lowered = [n.lower() for n in self.names]
        if str(key).lower() not in lowered:
            raise ColumnFormatError(
                f"{self.path}: no column named {key!r}; the columns are {self.names}"
            )
        return lowered.index(str(key).lower())


def _split(line: str, comma: bool) -> list[str]:
    if comma:
        return [t.strip() for t in line.split(",")]
    return line.split()


def _is_number(token: str) -> bool:
    return bool(_NUMBER.match(token))


def read_columns(path: str | os.PathLike[str]) -> ColumnTable:
    r"""Read a comma- or whitespace-separated table of numbers with its column names.

    Args:
        path: the text file.

    Returns:
        The table.

    Raises:
        FileNotFoundError: no such file.
        ColumnFormatError: no data, a row with the wrong number of values or a non-numeric
            value (the message gives the line and what was expected).

    Examples:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "v.dat")
        >>> with open(path, "w") as f:
        ...     _ = f.write("# exported by Athena\n#  energy  norm\n5460 0.01\n5470 0.52\n")
        >>> t = read_columns(path)
        >>> t.names, t.values.tolist()
        (['energy', 'norm'], [[5460.0, 0.01], [5470.0, 0.52]])
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such spectrum file")
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read().splitlines()
    comments: list[str] = []
    header: list[str] | None = None
    rows: list[list[str]] = []
    lines: list[int] = []
    comma = False
    for number, raw in enumerate(text, start=1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            if not rows:
                comments.append(line.lstrip("#").strip())
            continue
        if not rows:
            comma = "," in line
        tokens = _split(line, comma)
        if not rows and header is None and not all(_is_number(t) for t in tokens):
            header = tokens
            continue
        rows.append(tokens)
        lines.append(number)
    if not rows:
        raise ColumnFormatError(f"{path}: no rows of numbers (comments and a header only?)")
    n = len(rows[0])
    for tokens, number in zip(rows, lines, strict=True):
        if len(tokens) != n:
            raise ColumnFormatError(
                f"{path}: line {number} has {len(tokens)} values, expected {n} (as on line "
                f"{lines[0]}, the first row of data)"
            )
        bad = [t for t in tokens if not _is_number(t)]
        if bad:
            raise ColumnFormatError(
                f"{path}: line {number}: {bad[0]!r} is not a number; expected {n} numbers"
            )
    values = np.array([[float(t.replace("d", "e").replace("D", "e")) for t in r] for r in rows])
    if header is not None and len(header) != n:
        raise ColumnFormatError(
            f"{path}: the header names {len(header)} columns {header}, the data have {n}"
        )
    if header is None:
        for line in reversed(comments):
            tokens = _split(line, comma)
            if len(tokens) == n and not all(_is_number(t) for t in tokens):
                header = tokens
                break
    names = header if header is not None else [f"col{i + 1}" for i in range(n)]
    return ColumnTable(path, [str(s) for s in names], values, np.asarray(lines))


@dataclasses.dataclass(frozen=True, eq=False)
class SpectrumColumns:
    """Spectra of a column file on their energy axis.

    Attributes:
        path: the file.
        energies_ev: strictly increasing energies in eV.
        columns: ``{name: values}`` of the selected columns, in order.
    """

    path: str
    energies_ev: np.ndarray
    columns: dict[str, np.ndarray]


def _energy_index(table: ColumnTable, energy: int | str | None) -> int:
    if energy is not None:
        return table.index(energy)
    lowered = [n.lower() for n in table.names]
    for i, name in enumerate(lowered):
        if name in _ENERGY_NAMES or name.startswith("energy"):
            return i
    return 0


def read_spectrum_columns(
    path: str | os.PathLike[str],
    *,
    energy: int | str | None = None,
    columns: Sequence[int | str] | None = None,
    energy_unit: str | None = None,
) -> SpectrumColumns:
    """Read spectra from a column file: the energy axis in eV and the chosen columns.

    Args:
        path: the text file (see the module docstring for the layouts).
        energy: the energy column, by name or 0-based index (default: the column named like
            ``energy``, ``energy_ev``, ``e``, …, else the first).
        columns: the spectra's columns, by name or index (default: all but the energy).
        energy_unit: ``"eV"`` or ``"keV"`` (default: keV when the energy column's name says
            so, e.g. ``energy_kev``, else eV).

    Returns:
        The spectra.

    Raises:
        FileNotFoundError: no such file.
        ColumnFormatError: as :func:`read_columns`, or energies that do not increase, are not
            positive, or look like keV (all below 100) while taken as eV.
    """
    table = read_columns(path)
    ie = _energy_index(table, energy)
    name = table.names[ie].lower()
    unit = energy_unit if energy_unit is not None else ("kev" if "kev" in name else "ev")
    if unit.lower() not in ("ev", "kev"):
        raise ColumnFormatError(f"energy_unit={energy_unit!r}: expected 'eV' or 'keV'")
    e = table.values[:, ie] * (1000.0 if unit.lower() == "kev" else 1.0)
    if not np.all(np.isfinite(e)) or np.any(e <= 0):
        raise ColumnFormatError(
            f"{table.path}: column {table.names[ie]!r}: energies must be finite and positive"
        )
    if unit.lower() == "ev" and e.max() < _KEV_LOOKING:
        raise ColumnFormatError(
            f"{table.path}: column {table.names[ie]!r}: energies {e.min():g}–{e.max():g} look "
            "like keV; pass energy_unit='keV' (or name the column energy_kev), or give eV"
        )
    step = np.diff(e)
    if np.any(step <= 0):
        i = int(np.flatnonzero(step <= 0)[0])
        raise ColumnFormatError(
            f"{table.path}: line {table.lines[i + 1]}: energy {e[i + 1]:g} eV does not exceed "
            f"{e[i]:g} eV on line {table.lines[i]}; energies must increase strictly"
        )
    picks = (
        [i for i in range(len(table.names)) if i != ie]
        if columns is None
        else [table.index(c) for c in columns]
    )
    if not picks:
        raise ColumnFormatError(f"{table.path}: no spectrum columns besides the energy")
    if ie in picks:
        raise ColumnFormatError(
            f"{table.path}: the energy column {table.names[ie]!r} is chosen as a spectrum too"
        )
    out = {}
    for i in picks:
        values = table.values[:, i]
        if not np.all(np.isfinite(values)):
            bad = int(np.flatnonzero(~np.isfinite(values))[0])
            raise ColumnFormatError(
                f"{table.path}: line {table.lines[bad]}: column {table.names[i]!r} is NaN or "
                "inf; expected finite values"
            )
        out[table.names[i]] = values
    return SpectrumColumns(table.path, e, out)
