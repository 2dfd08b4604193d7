"""Reference spectra of pure species: δ and β of each species against energy.

The layout this module writes (one header line, then one row per energy, comma-separated)::

    energy_ev,delta_LiFePO4,beta_LiFePO4,delta_FePO4,beta_FePO4
    700.0,1.2e-3,4.0e-4,1.1e-3,3.9e-4
    ...

δ and β are those of each pure species at full density (dimensionless); the species names come
from the headers, in their order. Values are interpolated linearly to the data's energies, which
must lie inside the tabulated range.

:func:`read_references` also reads spectra as users keep them, and returns δ + iβ whatever the
file held: column files (comma or whitespace, ``#`` comments, :mod:`diffptycho.io.columns`) with
δ/β per species or normalised μ per species, and Athena projects (:mod:`diffptycho.io.athena`).
Normalised μ becomes δ + iβ through
:func:`diffptycho.physics.normalized_xanes.delta_beta_from_normalized`, given each species'
formula and density. docs/reference-spectra.md describes the formats.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = [
    "KNOWN_COMPOUNDS",
    "ReferenceFormatError",
    "read_reference_csv",
    "read_references",
    "write_reference_csv",
]


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


def _known_compounds() -> dict[str, tuple[str, float]]:
    from diffptycho.physics import spectra

    out = {name: (name, float(v[0])) for name, v in spectra.VANADIUM_SPECIES.items()}
    out.update({name: (name, float(rho)) for name, rho in spectra.LFP_DENSITIES_G_CM3.items()})
    return out


KNOWN_COMPOUNDS: dict[str, tuple[str, float]] = _known_compounds()
"""Species whose formula and density (g/cm³) :func:`read_references` knows without being told:
the vanadium oxides and the LFP end members of the simulations."""

_GENERIC_MU = {"mu", "norm", "flat", "xmu", "mu_norm", "normalized", "normalised", "absorption"}
_SUFFIXES = ("_norm", "_flat", "_mu", "_xmu")


def _is_generic(name: str) -> bool:
    return name.lower() in _GENERIC_MU or (name.startswith("col") and name[3:].isdigit())


def _species_of(name: str) -> str:
    """'V2O5_norm' → 'V2O5'; other names are the species' own."""
    for suffix in _SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def _is_flat(name: str) -> bool:
    return name.lower() == "flat" or name.lower().endswith("_flat")


def _interpolate(path: str, table_e: np.ndarray, spec: dict, energies_ev) -> tuple:
    if energies_ev is None:
        return table_e, spec
    energies = np.atleast_1d(np.asarray(energies_ev, dtype=np.float64))
    outside = energies[(energies < table_e[0] - 1e-9) | (energies > table_e[-1] + 1e-9)]
    if outside.size:
        raise ReferenceFormatError(
            f"{path}: the energies {outside.tolist()} eV lie outside the file's "
            f"{table_e[0]:g}–{table_e[-1]:g} eV; extend the reference spectra"
        )
    return energies, {
        name: np.interp(energies, table_e, v.real) + 1j * np.interp(energies, table_e, v.imag)
        for name, v in spec.items()
    }


def _compound(path: str, name: str, compounds) -> tuple[str, float]:
    table = dict(KNOWN_COMPOUNDS)
    table.update(compounds or {})
    if name not in table:
        raise ReferenceFormatError(
            f"{path}: species {name!r} holds normalised μ; give its formula and density to turn "
            f"it into δ, β, e.g. compounds={{{name!r}: ('V2O5', 3.36)}} (known: {sorted(table)})"
        )
    formula, density = table[name]
    return str(formula), float(density)


def _check_normalised(path: str, name: str, e: np.ndarray, mu: np.ndarray) -> None:
    """Refuse raw μ given where normalised μ belongs (pre-edge ≈ 0, post-edge ≈ 1)."""
    n = max(3, e.size // 10)
    first, last = float(np.median(mu[:n])), float(np.median(mu[-n:]))
    if not (abs(first) < 0.3 and 0.4 < last < 2.5):
        raise ReferenceFormatError(
            f"{path}: column {name!r} does not look normalised (starts near {first:.3g}, ends "
            f"near {last:.3g}; expected ≈ 0 below the edge and ≈ 1 above): normalise it to an "
            "edge step of 1 first (e.g. in Athena), or give δ and β"
        )


def _from_normalised(path, e, columns, compounds, absorber, edge) -> dict:
    from diffptycho.physics.normalized_xanes import delta_beta_from_normalized

    out = {}
    for name, (mu, flat) in columns.items():
        _check_normalised(path, name, e, mu)
        formula, density = _compound(path, name, compounds)
        try:
            out[name] = delta_beta_from_normalized(
                e, mu, formula, density, absorber=absorber, edge=edge, flattened=flat
            )
        except ValueError as err:
            raise ReferenceFormatError(f"{path}: species {name!r}: {err}") from None
    return out


def _select(path: str, available: list[str], species: Sequence[str] | None) -> list[str]:
    if species is None:
        return available
    missing = [s for s in species if s not in available]
    if missing:
        raise ReferenceFormatError(f"{path}: no species {missing}; the file holds {available}")
    return list(species)


def _read_athena(path, species, compounds, absorber, edge, energies_ev):
    from diffptycho.io.athena import read_athena

    groups = {g.label: g for g in read_athena(path)}
    names = _select(path, list(groups), species)
    grid = groups[names[0]].energies_ev
    same = all(np.array_equal(groups[n].energies_ev, grid) for n in names)
    if not same and energies_ev is None:
        raise ReferenceFormatError(
            f"{path}: the records {names} have different energy grids; pass energies_ev to "
            "interpolate them to one"
        )
    out = {}
    for n in names:
        g = groups[n]
        spec = _from_normalised(
            path, g.energies_ev, {n: (g.normalized().norm, False)}, compounds, absorber, edge
        )
        e, spec = _interpolate(path, g.energies_ev, spec, energies_ev)
        out[n] = spec[n]
    return e, out


def read_references(
    path: str | os.PathLike[str],
    *,
    species: Sequence[str] | None = None,
    energies_ev: Sequence[float] | np.ndarray | None = None,
    compounds: Mapping[str, tuple[str, float]] | None = None,
    absorber: str | None = None,
    edge: str = "K",
    energy: int | str | None = None,
    columns: Sequence[int | str] | None = None,
    energy_unit: str | None = None,
    flattened: bool | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    r"""Reference spectra δ + iβ of pure species from any of the formats users keep them in.

    Dispatch by content: an Athena project (``.prj``, gzip'd or plain) → each record's μ,
    normalised with its own Athena parameters, then converted; otherwise a column file. In a
    column file, ``delta_<s>``/``beta_<s>`` column pairs are δ, β of species ``s``; any other
    spectrum column is normalised μ (edge step 1) of the species it names, converted to δ + iβ
    with the species' formula and density (:data:`KNOWN_COMPOUNDS` or ``compounds``) by
    :func:`~diffptycho.physics.normalized_xanes.delta_beta_from_normalized`. A single column
    with a generic name (``mu``, ``norm``, ``flat``, …) takes its species name from ``species``.

    Args:
        path: the file.
        species: which species, in this order (default: all, in the file's order). For a
            column file of normalised μ whose columns are not named by species, the names of
            the chosen columns, in order.
        energies_ev: energies in eV to interpolate to (linear); None keeps the file's.
        compounds: ``{species: (formula, density_g_cm3)}`` for species holding normalised μ.
        absorber: element of the measured edge (default: the heaviest of each formula).
        edge: the measured edge (``"K"``, ``"L3"``, …).
        energy: column file: the energy column, by name or 0-based index.
        columns: column file: the spectrum columns, by name or index.
        energy_unit: column file: ``"eV"`` or ``"keV"`` (default: from the column name, eV).
        flattened: normalised μ is flattened (post-edge 1); default: columns named ``flat``.

    Returns:
        ``(energies_ev, {species: δ + iβ})``, each value complex128 of shape (E,).

    Raises:
        FileNotFoundError: no such file.
        ReferenceFormatError: the file cannot be read as reference spectra (the message names
            the file and, where it applies, the line, column or species, and what was
            expected). :class:`~diffptycho.io.columns.ColumnFormatError` and
            :class:`~diffptycho.io.athena.AthenaFormatError` are subclasses of ValueError too.

    Examples:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "refs.dat")
        >>> with open(path, "w") as f:
        ...     _ = f.write("# energy delta_A beta_A\n5400 1e-5 1e-7\n5500 2e-5 3e-7\n")
        >>> e, spec = read_references(path, energies_ev=[5450.0])
        >>> list(spec), spec["A"] * 1e7
        (['A'], array([150.+2.j]))
    """
    from diffptycho.io.athena import is_athena_project
    from diffptycho.io.columns import read_spectrum_columns

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such reference-spectra file")
    if path.lower().endswith(".prj") or is_athena_project(path):
        return _read_athena(path, species, compounds, absorber, edge, energies_ev)

    table = read_spectrum_columns(path, energy=energy, columns=columns, energy_unit=energy_unit)
    e, cols = table.energies_ev, table.columns
    names = list(cols)
    pairs = {n[6:] for n in names if n.startswith("delta_")}
    if pairs:
        spec = {}
        for n in names:
            s = n[6:] if n.startswith("delta_") else n[5:] if n.startswith("beta_") else None
            if s is None or not s or f"delta_{s}" not in cols or f"beta_{s}" not in cols:
                raise ReferenceFormatError(
                    f"{path}: column {n!r}: expected 'delta_<species>' and 'beta_<species>' "
                    "pairs only (or normalised μ columns only, not both)"
                )
            spec[s] = cols[f"delta_{s}"] + 1j * cols[f"beta_{s}"]
        chosen = _select(path, list(spec), species)
        return _interpolate(path, e, {s: spec[s] for s in chosen}, energies_ev)

    generic = all(_is_generic(n) for n in names)
    if generic or columns is not None and species is not None:
        # columns that do not name their species: ``species`` names them, in order
        if species is None or len(species) != len(names):
            stem = os.path.splitext(os.path.basename(path))[0]
            raise ReferenceFormatError(
                f"{path}: the columns {names} do not name their species; pass one species name "
                f"per column, e.g. species={[stem] * len(names)!r} (the compounds they hold)"
            )
        by_species = dict(zip(species, names, strict=True))
    else:
        # columns named '<species>' or '<species>_norm' / '_flat' / '_mu'
        by_species = {_species_of(n): n for n in names}
        if len(by_species) != len(names):
            raise ReferenceFormatError(f"{path}: columns {names} name a species twice")
        by_species = {sp: by_species[sp] for sp in _select(path, list(by_species), species)}
    mu = {sp: cols[n] for sp, n in by_species.items()}
    flat = {
        sp: _is_flat(n) if flattened is None else bool(flattened) for sp, n in by_species.items()
    }
    spec = _from_normalised(path, e, {s: (mu[s], flat[s]) for s in mu}, compounds, absorber, edge)
    return _interpolate(path, e, spec, energies_ev)
