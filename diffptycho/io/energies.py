"""Photon energies read from files or typed on the command line: unit checks and agreement.

Files that carry their energies are the record of the measurement, so they win: energies given
on the command line are only a cross-check, and an error when they disagree by more than
:data:`ENERGY_TOLERANCE_EV`. Values far below the X-ray range are keV or joules written where
eV were expected; the error says which and how to convert.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from diffptycho.physics.optics import EV_TO_J

__all__ = [
    "ENERGY_TOLERANCE_EV",
    "MAX_ENERGY_EV",
    "MIN_ENERGY_EV",
    "check_energies_ev",
    "reconcile_energies",
]

ENERGY_TOLERANCE_EV = 0.1
"""Largest accepted difference (eV) between a file's energy and one given on the command line:
well below the 0.2–0.5 eV scale on which soft X-ray white lines change, above the rounding
of a monochromator readback to one decimal."""

MIN_ENERGY_EV = 10.0
"""Lowest photon energy (eV) accepted; smaller values are taken for keV or J."""

MAX_ENERGY_EV = 1e6
"""Highest photon energy (eV) accepted."""


def check_energies_ev(values, where: str) -> np.ndarray:
    """Check that photon energies are finite, in eV and in the X-ray range.

    Args:
        values: energies that should be in eV, any shape.
        where: what holds them, for messages (e.g. ``"data.h5: dataset 'energies_ev'"`` or
            ``"--e1"``).

    Returns:
        The energies as float64 (same shape), in eV.

    Raises:
        ValueError: non-numeric or non-finite values, or values outside
            [:data:`MIN_ENERGY_EV`, :data:`MAX_ENERGY_EV`]; keV and joule values are named
            with the factor that converts them.

    Examples:
        >>> check_energies_ev([708.2, 710.2], "--e1/--e2").tolist()
        [708.2, 710.2]
        >>> check_energies_ev([0.7082], "--e1")
        Traceback (most recent call last):
        ...
        ValueError: --e1: 0.7082 looks like keV, expected eV; multiply by 1000
    """
    try:
        e = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: expected photon energies in eV, got {values!r}") from None
    if e.size == 0:
        raise ValueError(f"{where}: no energies; expected photon energies in eV")
    if not np.all(np.isfinite(e)):
        raise ValueError(f"{where}: contains NaN/inf; store finite photon energies in eV")
    shown = ", ".join(f"{v:.6g}" for v in e.ravel()[:4]) + (" …" if e.size > 4 else "")
    low = float(np.min(e))
    if low < MIN_ENERGY_EV:
        if 0.01 <= low and float(np.max(e)) <= MAX_ENERGY_EV / 1000:
            raise ValueError(f"{where}: {shown} looks like keV, expected eV; multiply by 1000")
        if 0 < low < 1e-12:
            raise ValueError(f"{where}: {shown} looks like J, expected eV; divide by {EV_TO_J!r}")
        raise ValueError(
            f"{where}: {shown} is not a photon energy in eV (expected "
            f"{MIN_ENERGY_EV:g}–{MAX_ENERGY_EV:g} eV)"
        )
    if float(np.max(e)) > MAX_ENERGY_EV:
        raise ValueError(
            f"{where}: {shown} is above {MAX_ENERGY_EV:g} eV; expected photon energies in eV"
        )
    return e


def reconcile_energies(
    file_ev,
    cli_ev: Sequence[float | None],
    *,
    file_where: str,
    cli_names: Sequence[str],
    tolerance_ev: float = ENERGY_TOLERANCE_EV,
) -> np.ndarray:
    """The energies to use: the file's when it has them, checked against the command line.

    Args:
        file_ev: the energies stored in the file (eV), shape (n,), or None when it has none.
        cli_ev: the energies given on the command line (eV), one per file energy; None for
            one not given.
        file_where: the file and dataset, for messages (``"od.h5: dataset 'energies_ev'"``).
        cli_names: the option of each command-line energy (``["--e1", "--e2"]``).
        tolerance_ev: largest accepted difference in eV.

    Returns:
        float64 energies in eV, shape (n,): the file's, or the command line's without them.

    Raises:
        ValueError: the file has no energies and some are not given on the command line, the
            two differ by more than ``tolerance_ev`` (both values named), or either is not a
            plausible energy in eV.

    Examples:
        >>> reconcile_energies([708.252, 710.272], [708.2, 710.2], file_where="od.h5",
        ...                    cli_names=["--e1", "--e2"]).tolist()
        [708.252, 710.272]
        >>> reconcile_energies(None, [708.2, 710.2], file_where="od.h5",
        ...                    cli_names=["--e1", "--e2"]).tolist()
        [708.2, 710.2]
    """
    given = [
        (name, float(check_energies_ev(value, name)))
        for name, value in zip(cli_names, cli_ev, strict=True)
        if value is not None
    ]
    if file_ev is None:
        missing = [name for name, value in zip(cli_names, cli_ev, strict=True) if value is None]
        if missing:
            raise ValueError(
                f"{file_where}: not found, so the energies must come from the command line; "
                f"give {', '.join(missing)} (eV), or store the energies in the file"
            )
        return np.asarray([value for _, value in given], dtype=np.float64)
    e = check_energies_ev(file_ev, file_where).ravel()
    if e.size != len(cli_names):
        raise ValueError(
            f"{file_where}: holds {e.size} energies, expected {len(cli_names)} "
            f"(one for each of {', '.join(cli_names)})"
        )
    for (name, value), stored in zip(
        ((n, v) for n, v in zip(cli_names, cli_ev, strict=True)), e, strict=True
    ):
        if value is not None and abs(float(value) - stored) > tolerance_ev:
            raise ValueError(
                f"{name} {float(value):g} eV disagrees with {file_where}, which holds "
                f"{stored:g} eV (difference {float(value) - stored:+.3g} eV, tolerance "
                f"{tolerance_ev:g} eV); the file's energies are used when present: drop {name} "
                "or correct it"
            )
    return e
