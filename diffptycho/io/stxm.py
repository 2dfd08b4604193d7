"""Readers for scanning transmission X-ray microscopy (STXM) stacks in the ALS format.

An ALS image stack is a text scan definition ``NAME.hdr`` beside one whitespace-separated image of
transmitted counts per energy, ``NAME_a000.xim``, ``NAME_a001.xim``, …. The ``.hdr`` lists the
energies under ``StackAxis`` and the pixel coordinates under ``PAxis`` (Sample X) and ``QAxis``
(Sample Y), in µm, each as ``Points = (n, v1, …, vn)``. Rows of an ``.xim`` are taken as y (QAxis)
and columns as x (PAxis). The incident flux I0 is a two-column ``.xsp`` spectrum (energy eV,
counts); reference spectra are two-column text files (energy eV, value) as well.

Optical density OD = −ln(I/I0) (as in ptychography, OD = −ln|T|²). Units at this boundary are the
beamline's (eV, µm); :class:`STXMStack` holds the pixel size in m.
"""

from __future__ import annotations

import dataclasses
import os
import re

import numpy as np

__all__ = [
    "STXMFormatError",
    "STXMStack",
    "estimate_i0",
    "optical_density",
    "read_hdr",
    "read_reference_spectrum",
    "read_stxm_stack",
    "read_two_column",
    "read_xim",
    "reference_on_grid",
]

MIN_COUNTS = 0.5
"""Counts below this are raised to it before the logarithm so that OD stays finite."""


class STXMFormatError(ValueError):
    """A STXM file is missing something the reader needs, or is malformed."""


@dataclasses.dataclass(frozen=True)
class STXMStack:
    """A STXM image stack.

    Attributes:
        counts: transmitted counts (energy, y, x).
        energies_ev: photon energies in eV (energy,).
        x_um: sample x coordinate of each column in µm (x,).
        y_um: sample y coordinate of each row in µm (y,).
        pixel_size_m: (y, x) pixel size in m.
        dwell_ms: dwell time per pixel in ms (NaN if not stated).
        i0: incident flux per energy (energy,) in counts, or None.
        od: optical density −ln(I/I0) (energy, y, x), or None without I0.
        path: the ``.hdr`` file read.
    """

    counts: np.ndarray
    energies_ev: np.ndarray
    x_um: np.ndarray
    y_um: np.ndarray
    pixel_size_m: tuple[float, float]
    dwell_ms: float
    i0: np.ndarray | None
    od: np.ndarray | None
    path: str


def _points(text: str, axis: str, path: str) -> np.ndarray:
    match = re.search(rf"\b{axis}\s*=\s*\{{.*?Points\s*=\s*\(([^)]*)\)", text, re.DOTALL)
    if match is None:
        raise STXMFormatError(f"{path}: no '{axis} = {{ … Points = (n, …) }}' block")
    try:
        values = np.array([float(v) for v in match.group(1).replace("\n", " ").split(",")])
    except ValueError as err:
        raise STXMFormatError(f"{path}: unreadable {axis} Points ({err})") from err
    n = int(values[0]) if values.size else -1
    if n != values.size - 1 or n < 1:
        raise STXMFormatError(
            f"{path}: {axis} Points announces {n} values but lists {values.size - 1}"
        )
    return values[1:]


def read_hdr(path: str | os.PathLike) -> dict[str, np.ndarray | float]:
    """Parse an ALS ``.hdr`` scan definition of an image stack.

    Args:
        path: the ``.hdr`` file.

    Returns:
        ``{"energies_ev": (E,), "x_um": (x,), "y_um": (y,), "dwell_ms": float}``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        STXMFormatError: a required block is missing or malformed (the message names the file).
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: STXM scan definition (.hdr) not found") from None
    dwell = re.search(r"\bDwell\s*=\s*([-+0-9.eE]+)", text)
    return {
        "energies_ev": _points(text, "StackAxis", path),
        "x_um": _points(text, "PAxis", path),
        "y_um": _points(text, "QAxis", path),
        "dwell_ms": float(dwell.group(1)) if dwell else float("nan"),
    }


def read_xim(path: str | os.PathLike) -> np.ndarray:
    """Read one ``.xim`` image of whitespace-separated counts, (y, x) float64.

    Raises:
        FileNotFoundError: the file does not exist (the message names it).
        STXMFormatError: not a rectangular table of numbers, non-finite or negative counts, or
            all zero.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: STXM image (.xim) not found")
    try:
        image = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except ValueError as err:
        raise STXMFormatError(
            f"{path}: not a table of counts ({err}); the file may be truncated: copy it again"
        ) from err
    if image.size == 0:
        raise STXMFormatError(f"{path}: empty image")
    bad = int(image.size - np.count_nonzero(np.isfinite(image)))
    if bad:
        raise STXMFormatError(f"{path}: {bad} NaN/inf counts; store the detector counts")
    if np.any(image < 0):
        raise STXMFormatError(
            f"{path}: negative counts (min {float(image.min()):g}); store raw detector counts ≥ 0"
        )
    if not np.any(image):
        raise STXMFormatError(
            f"{path}: every count is zero (beam off or the image was not read out); "
            "re-export it or drop this energy from the stack"
        )
    return image


def read_two_column(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a two-column text spectrum (energy in eV, value), e.g. ``.xsp`` or references.

    Lines starting with ``#`` or ``*`` are comments. Energies are sorted ascending.

    Returns:
        ``(energies_ev, values)``, each (n,).

    Raises:
        FileNotFoundError: the file does not exist.
        STXMFormatError: not two numeric columns, fewer than two rows, or non-finite values.
        ValueError: the energies are not in eV (keV or J named).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: spectrum file not found")
    try:
        table = np.loadtxt(path, dtype=np.float64, comments=("#", "*"), ndmin=2)
    except ValueError as err:
        raise STXMFormatError(f"{path}: expected two numeric columns ({err})") from err
    if table.shape[1] < 2 or table.shape[0] < 2:
        raise STXMFormatError(
            f"{path}: expected ≥ 2 rows of (energy eV, value), got shape {table.shape}"
        )
    if not np.all(np.isfinite(table[:, :2])):
        raise STXMFormatError(f"{path}: non-finite values")
    from diffptycho.io.energies import check_energies_ev

    check_energies_ev(table[:, 0], f"{path}: first column (energy)")
    order = np.argsort(table[:, 0], kind="stable")
    return table[order, 0], table[order, 1]


read_reference_spectrum = read_two_column
"""Reference spectra share the two-column format (energy eV, value)."""


def reference_on_grid(
    path: str | os.PathLike, energies_ev, *, tolerance_ev: float = 0.05
) -> np.ndarray:
    """A two-column spectrum linearly interpolated onto ``energies_ev``.

    Args:
        path: the spectrum file (energy eV, value).
        energies_ev: target energies in eV.
        tolerance_ev: how far outside the file's energy range a target may lie (eV); the end
            value is used there.

    Returns:
        Values at ``energies_ev`` (same shape).

    Raises:
        STXMFormatError: a target energy lies outside the file's range (the message names it).
    """
    e_ref, values = read_two_column(path)
    e = np.asarray(energies_ev, dtype=np.float64)
    if np.any(e < e_ref[0] - tolerance_ev) or np.any(e > e_ref[-1] + tolerance_ev):
        raise STXMFormatError(
            f"{os.fspath(path)}: covers {e_ref[0]:.2f}–{e_ref[-1]:.2f} eV but "
            f"{float(e.min()):.2f}–{float(e.max()):.2f} eV is needed"
        )
    return np.interp(e, e_ref, values)


def optical_density(counts, i0) -> np.ndarray:
    """OD = −ln(I/I0) with I0 broadcast over the image axes.

    Args:
        counts: transmitted counts (energy, …).
        i0: incident counts per energy (energy,) or broadcastable to ``counts``.

    Returns:
        OD (energy, …), dimensionless; counts are floored at :data:`MIN_COUNTS`.
    """
    counts = np.asarray(counts, dtype=np.float64)
    i0 = np.asarray(i0, dtype=np.float64)
    if i0.ndim == 1:
        i0 = i0.reshape(-1, *([1] * (counts.ndim - 1)))
    if np.any(i0 <= 0):
        raise ValueError("i0: incident flux must be positive")
    return -np.log(np.maximum(counts, MIN_COUNTS) / i0)


def estimate_i0(counts, quantile: float = 0.98) -> np.ndarray:
    """Incident flux from the most transparent pixels (when no I0 spectrum was measured).

    Args:
        counts: transmitted counts (energy, y, x).
        quantile: pixels whose energy-summed counts exceed this quantile are averaged.

    Returns:
        I0 per energy (energy,) in counts.
    """
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.reshape(counts.shape[0], -1).sum(axis=0)
    bright = total >= np.quantile(total, quantile)
    return counts.reshape(counts.shape[0], -1)[:, bright].mean(axis=1)


def read_stxm_stack(
    hdr_path: str | os.PathLike,
    i0_path: str | os.PathLike | None = None,
    *,
    estimate_flux: bool = False,
) -> STXMStack:
    """Read an ALS ``.hdr`` + ``_aNNN.xim`` image stack, and its OD if I0 is known.

    Args:
        hdr_path: the ``.hdr`` scan definition; images are ``<stem>_a000.xim`` … beside it.
        i0_path: incident-flux spectrum (``.xsp``, energy eV vs counts), interpolated onto the
            stack energies.
        estimate_flux: without ``i0_path``, estimate I0 from the brightest pixels.

    Returns:
        :class:`STXMStack` (``od`` is None without I0).

    Raises:
        FileNotFoundError: the ``.hdr``, an ``.xim`` or the I0 file is missing (named).
        STXMFormatError: inconsistent image shapes or energy ranges, or bad counts (the file
            is named).
        ValueError: the energies are not in eV (keV or J named).
    """
    from diffptycho.io.energies import check_energies_ev

    hdr_path = os.fspath(hdr_path)
    meta = read_hdr(hdr_path)
    stem = hdr_path[:-4] if hdr_path.lower().endswith(".hdr") else hdr_path
    energies = check_energies_ev(meta["energies_ev"], f"{hdr_path}: StackAxis Points")
    x_um, y_um = np.asarray(meta["x_um"]), np.asarray(meta["y_um"])
    images = []
    for k in range(energies.size):
        xim = f"{stem}_a{k:03d}.xim"
        if not os.path.isfile(xim):
            raise FileNotFoundError(
                f"{xim}: STXM image (.xim) not found; {hdr_path} lists {energies.size} energies, "
                f"so {os.path.basename(stem)}_a000.xim … _a{energies.size - 1:03d}.xim must all "
                "be beside it: copy the missing image"
            )
        image = read_xim(xim)
        if image.shape != (y_um.size, x_um.size):
            raise STXMFormatError(
                f"{xim}: image of shape {image.shape}, but {hdr_path} defines "
                f"(y, x) = ({y_um.size}, {x_um.size})"
            )
        images.append(image)
    counts = np.stack(images)

    def step(v: np.ndarray) -> float:
        return float(abs(v[-1] - v[0]) / (v.size - 1) * 1e-6) if v.size > 1 else float("nan")

    i0 = None
    if i0_path is not None:
        i0 = reference_on_grid(i0_path, energies)
        if np.any(i0 <= 0):
            raise STXMFormatError(f"{os.fspath(i0_path)}: non-positive incident flux")
    elif estimate_flux:
        i0 = estimate_i0(counts)
    return STXMStack(
        counts=counts,
        energies_ev=energies,
        x_um=x_um,
        y_um=y_um,
        pixel_size_m=(step(y_um), step(x_um)),
        dwell_ms=float(meta["dwell_ms"]),
        i0=i0,
        od=None if i0 is None else optical_density(counts, i0),
        path=hdr_path,
    )
