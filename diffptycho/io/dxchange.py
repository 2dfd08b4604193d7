"""Tomography inputs: Data Exchange files and plain projection HDF5 files.

Two layouts are read:

- **Data Exchange** (APS): ``exchange/data`` (angle, y, x) raw counts, ``exchange/data_white``
  (n, y, x) flat fields, ``exchange/data_dark`` (n, y, x) dark fields and ``exchange/theta``
  (angle,) in degrees. :func:`read_dxchange` reads them; :func:`flat_dark_correct` and
  :func:`minus_log` turn counts into line integrals ``−ln((I − D)/(W − D))``: the optical
  density ``OD = ∫μ dz = 2k∫β dz`` (dimensionless) of absorption tomography.
- **Plain projections**: ``projections`` (angle, y, x) line integrals (real, or complex for
  phase and absorption together) and ``angles_deg`` (angle,) in degrees, optionally
  ``voxel_size_m`` (scalar, m). :func:`write_projections` / :func:`read_projections`.

:func:`load_projections` recognises either layout and returns line integrals and angles in rad
(degrees are converted here, at the file boundary).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import h5py
import numpy as np

from diffptycho.io._atomic import atomic_h5_file, open_h5_readonly

__all__ = [
    "DataExchange",
    "TomoFormatError",
    "flat_dark_correct",
    "load_projections",
    "minus_log",
    "read_dxchange",
    "read_projections",
    "write_projections",
]


class TomoFormatError(ValueError):
    """A tomography input file lacks a dataset or holds one of the wrong shape."""


@dataclasses.dataclass(frozen=True)
class DataExchange:
    """Raw contents of a Data Exchange file.

    Attributes:
        data: (angle, y, x) projections in counts.
        white: (n_white, y, x) flat fields (beam, no sample) in counts.
        dark: (n_dark, y, x) dark fields (no beam) in counts.
        angles_deg: (angle,) rotation angles in degrees.
        path: the file read.
    """

    data: np.ndarray
    white: np.ndarray
    dark: np.ndarray
    angles_deg: np.ndarray
    path: str

    def line_integrals(self, *, min_transmission: float = 1e-6) -> np.ndarray:
        """Flat/dark corrected ``−ln T`` as float32 (angle, y, x), dimensionless."""
        return minus_log(
            flat_dark_correct(self.data, self.white, self.dark),
            min_transmission=min_transmission,
        )


def _dataset(f: h5py.File, path: str, name: str, fix: str) -> h5py.Dataset:
    obj = f.get(name)
    if obj is None or not isinstance(obj, h5py.Dataset):
        found = ", ".join(sorted(f.keys())) or "nothing"
        raise TomoFormatError(
            f"{path}: dataset '{name}' not found (top level holds {found}); {fix}"
        )
    return obj


def _rows(ds: h5py.Dataset, rows: slice | None) -> np.ndarray:
    return np.asarray(ds[()] if rows is None else ds[:, rows, :])


def _check_dtype(path: str, ds: h5py.Dataset, what: str, *, complex_ok: bool = False) -> None:
    kinds = "iufc" if complex_ok else "iuf"
    if ds.dtype.kind not in kinds:
        allowed = "real or complex numbers" if complex_ok else "real numbers"
        raise TomoFormatError(
            f"{path}: dataset '{ds.name.lstrip('/')}' has dtype {ds.dtype}; store {what} as "
            f"{allowed}"
        )


def _check_finite(path: str, name: str, values: np.ndarray, what: str) -> None:
    bad = int(values.size - np.count_nonzero(np.isfinite(values)))
    if bad:
        raise TomoFormatError(
            f"{path}: dataset '{name}' contains {bad} NaN/inf values; store finite {what} "
            "(e.g. interpolate dead pixels)"
        )


def _check_counts(path: str, name: str, counts: np.ndarray, image: str, fix: str) -> None:
    """Raw detector counts: finite, ≥ 0, and no image entirely zero."""
    _check_finite(path, name, counts, "counts")
    n_neg = int(np.count_nonzero(counts < 0))
    if n_neg:
        raise TomoFormatError(
            f"{path}: dataset '{name}' contains {n_neg} negative counts (min "
            f"{float(counts.min()):g}); store raw detector counts ≥ 0 (the dark field is "
            "subtracted here)"
        )
    empty = np.flatnonzero(~np.any(counts.reshape(counts.shape[0], -1), axis=1))
    if empty.size:
        shown = ", ".join(str(i) for i in empty[:8]) + (" …" if empty.size > 8 else "")
        raise TomoFormatError(
            f"{path}: dataset '{name}' has {empty.size} all-zero {image}(s) (index {shown}); {fix}"
        )


def _check_angles(path: str, name: str, angles_deg: np.ndarray) -> None:
    """Angles in degrees: finite, within ±360°, and not radians stored as degrees."""
    _check_finite(path, name, angles_deg, "angles in degrees")
    if angles_deg.size and float(np.max(np.abs(angles_deg))) > 360.0:
        raise TomoFormatError(
            f"{path}: dataset '{name}' holds angles up to {float(np.max(np.abs(angles_deg))):g}; "
            "expected rotation angles in degrees within ±360°"
        )
    span = float(np.ptp(angles_deg)) if angles_deg.size else 0.0
    if angles_deg.size >= 8 and 0.5 < span <= 2 * np.pi + 1e-6:
        raise TomoFormatError(
            f"{path}: dataset '{name}' spans only {span:.4g} degrees over {angles_deg.size} "
            "projections, which looks like radians; store degrees (multiply by 180/π)"
        )


def read_dxchange(
    path: str | os.PathLike[str],
    *,
    rows: slice | None = None,
    angles_deg: Sequence[float] | None = None,
) -> DataExchange:
    """Read projections, flat and dark fields and angles from a Data Exchange HDF5 file.

    Args:
        path: the ``.h5`` file.
        rows: detector rows (y) to read, e.g. ``slice(100, 132)``, to bound memory.
        angles_deg: rotation angles in degrees when the file has no ``exchange/theta``.

    Returns:
        A :class:`DataExchange` with float32 arrays.

    Raises:
        FileNotFoundError: no such file.
        TomoFormatError: not HDF5, or a dataset is missing, has the wrong shape or dtype, holds
            NaN/inf, negative counts or all-zero images, the flat field is not above the dark,
            or angles are beyond ±360° or look like radians; the message names the dataset
            path and the fix.

    Examples:
        >>> import os, tempfile
        >>> import h5py, numpy as np
        >>> path = os.path.join(tempfile.mkdtemp(), "scan.h5")
        >>> with h5py.File(path, "w") as f:  # the layout TomoPy / Data Exchange writers use
        ...     f["exchange/data"] = np.ones((3, 2, 8), np.float32)
        ...     f["exchange/data_white"] = np.ones((4, 2, 8), np.float32)
        ...     f["exchange/data_dark"] = np.zeros((4, 2, 8), np.float32)
        ...     f["exchange/theta"] = np.array([0.0, 60.0, 120.0])
        >>> raw = read_dxchange(path)
        >>> print(raw.data.shape, raw.white.shape, raw.angles_deg[-1])
        (3, 2, 8) (4, 2, 8) 120.0
    """
    path = os.fspath(path)
    with open_h5_readonly(path, TomoFormatError, "a Data Exchange file") as f:
        fix = "a Data Exchange file stores exchange/data, data_white, data_dark and theta"
        data = _dataset(f, path, "exchange/data", fix)
        if data.ndim != 3:
            raise TomoFormatError(
                f"{path}: 'exchange/data' has shape {data.shape}; expected (angle, y, x)"
            )
        white = _dataset(f, path, "exchange/data_white", fix + " (flat fields are required)")
        dark_ds = f.get("exchange/data_dark")
        for ds in (data, white) if dark_ds is None else (data, white, dark_ds):
            _check_dtype(path, ds, "detector counts")
        arrays = {"exchange/data": _rows(data, rows), "exchange/data_white": _rows(white, rows)}
        if dark_ds is not None:
            arrays["exchange/data_dark"] = _rows(dark_ds, rows)
        for name, arr in arrays.items():
            if arr.ndim == 2:  # a single flat or dark image
                arr = arr[None]
                arrays[name] = arr
            if arr.ndim != 3 or arr.shape[1:] != arrays["exchange/data"].shape[1:]:
                raise TomoFormatError(
                    f"{path}: '{name}' has shape {arr.shape}; its images must match "
                    f"exchange/data's (y, x) = {arrays['exchange/data'].shape[1:]}"
                )
        if "exchange/data_dark" not in arrays:  # no dark current recorded: assume zero
            arrays["exchange/data_dark"] = np.zeros_like(arrays["exchange/data_white"][:1])
        if angles_deg is None:
            theta = f.get("exchange/theta")
            if theta is None:
                raise TomoFormatError(
                    f"{path}: dataset 'exchange/theta' not found; pass angles_deg=… "
                    "(degrees, one per projection)"
                )
            angles = np.asarray(theta[()], dtype=float)
            units = theta.attrs.get("units", b"degrees")
            units = units.decode() if isinstance(units, bytes) else str(units)
            if units.lower().startswith("rad"):
                angles = np.rad2deg(angles)
        else:
            angles = np.asarray(angles_deg, dtype=float)
    n = arrays["exchange/data"].shape[0]
    if angles.shape != (n,):
        raise TomoFormatError(
            f"{path}: {angles.size} angles for {n} projections in 'exchange/data'; "
            "the file's 'exchange/theta' (or angles_deg) needs one angle per projection"
        )
    _check_angles(path, "exchange/theta", angles)
    _check_counts(
        path,
        "exchange/data",
        arrays["exchange/data"],
        "projection",
        "drop them and their angles, or store the missing images",
    )
    _check_counts(
        path,
        "exchange/data_white",
        arrays["exchange/data_white"],
        "flat field",
        "drop them, or store flat fields recorded with the beam on",
    )
    _check_finite(path, "exchange/data_dark", arrays["exchange/data_dark"], "dark counts")
    signal = arrays["exchange/data_white"].mean(axis=0) - arrays["exchange/data_dark"].mean(0)
    if not np.any(signal > 0):
        raise TomoFormatError(
            f"{path}: the flat field 'exchange/data_white' is nowhere brighter than the dark "
            "field 'exchange/data_dark'; check that the two are not swapped"
        )
    return DataExchange(
        data=arrays["exchange/data"].astype(np.float32),
        white=arrays["exchange/data_white"].astype(np.float32),
        dark=arrays["exchange/data_dark"].astype(np.float32),
        angles_deg=angles,
        path=path,
    )


def flat_dark_correct(
    data: np.ndarray, white: np.ndarray, dark: np.ndarray, *, min_signal: float = 1e-6
) -> np.ndarray:
    """Transmission ``T = (I − D̄) / (W̄ − D̄)`` with the mean flat W̄ and mean dark D̄.

    Args:
        data: (angle, y, x) counts.
        white: (n, y, x) or (y, x) flat-field counts.
        dark: (n, y, x) or (y, x) dark counts.
        min_signal: lower bound of ``W̄ − D̄`` (counts) so dead pixels do not divide by zero.

    Returns:
        (angle, y, x) float32 transmission (≈ 1 in air; may be slightly negative or above 1
        where noise dominates).

    Examples:
        >>> import numpy as np
        >>> t = flat_dark_correct(np.full((1, 1, 2), 60.0), np.full((1, 1, 2), 110.0),
        ...                       np.full((1, 1, 2), 10.0))
        >>> t.tolist()
        [[[0.5, 0.5]]]
    """
    white = np.asarray(white, dtype=np.float64)
    dark = np.asarray(dark, dtype=np.float64)
    w = white.mean(axis=0) if white.ndim == 3 else white
    d = dark.mean(axis=0) if dark.ndim == 3 else dark
    if w.shape != np.shape(data)[1:] or d.shape != np.shape(data)[1:]:
        raise ValueError(
            f"flat_dark_correct: flat {w.shape} and dark {d.shape} images must match the "
            f"projections' (y, x) = {np.shape(data)[1:]}"
        )
    return ((np.asarray(data) - d) / np.maximum(w - d, min_signal)).astype(np.float32)


def minus_log(transmission: np.ndarray, *, min_transmission: float = 1e-6) -> np.ndarray:
    """Line integrals ``−ln T`` (dimensionless), with T clipped to ``min_transmission``.

    Clipping keeps noisy or dead pixels (T ≤ 0) finite; T > 1 (noise in air) gives small
    negative values, kept as they are so the noise stays unbiased.

    Args:
        transmission: intensity transmission (any shape).
        min_transmission: smallest T used (dimensionless, > 0).

    Returns:
        float32 array of ``−ln max(T, min_transmission)``.
    """
    t = np.maximum(np.asarray(transmission, dtype=np.float64), min_transmission)
    return (-np.log(t)).astype(np.float32)


def write_projections(
    path: str | os.PathLike[str],
    projections: np.ndarray,
    angles_deg: Sequence[float] | np.ndarray,
    *,
    voxel_size_m: float | None = None,
) -> None:
    """Write a plain projections file atomically (layout in the module docstring).

    Args:
        path: destination ``.h5``.
        projections: (angle, y, x) line integrals, real or complex.
        angles_deg: (angle,) rotation angles in degrees.
        voxel_size_m: detector pixel = voxel edge in m, stored when given.
    """
    projections = np.asarray(projections)
    angles_deg = np.asarray(angles_deg, dtype=float)
    if projections.ndim != 3 or angles_deg.shape != (projections.shape[0],):
        raise ValueError(
            f"write_projections: projections {projections.shape} must be (angle, y, x) with "
            f"one angle each; got {angles_deg.shape} angles"
        )
    with atomic_h5_file(path) as f:
        f["projections"] = projections
        f["projections"].attrs["axes"] = "angle:y:x"
        f["angles_deg"] = angles_deg
        f["angles_deg"].attrs["units"] = "degrees"
        if voxel_size_m is not None:
            f["voxel_size_m"] = float(voxel_size_m)
            f["voxel_size_m"].attrs["units"] = "m"


def read_projections(
    path: str | os.PathLike[str], *, rows: slice | None = None
) -> tuple[np.ndarray, np.ndarray, float | None]:
    """Read a plain projections file.

    Args:
        path: ``.h5`` file with ``projections`` and ``angles_deg``.
        rows: detector rows (y) to read.

    Returns:
        ``(projections (angle, y, x), angles_rad (angle,), voxel_size_m or None)``.

    Raises:
        FileNotFoundError: no such file.
        TomoFormatError: missing dataset, inconsistent shapes, wrong dtype, NaN/inf values, or
            angles beyond ±360° or looking like radians (message names the fix).
    """
    path = os.fspath(path)
    with open_h5_readonly(path, TomoFormatError, "a projections HDF5 file") as f:
        fix = "write it with diffptycho.io.dxchange.write_projections"
        proj = _dataset(f, path, "projections", f"expected (angle, y, x) line integrals; {fix}")
        ang = _dataset(f, path, "angles_deg", f"expected one angle per projection in deg; {fix}")
        if proj.ndim != 3:
            raise TomoFormatError(
                f"{path}: 'projections' has shape {proj.shape}; expected (angle, y, x)"
            )
        _check_dtype(path, proj, "line integrals", complex_ok=True)
        _check_dtype(path, ang, "angles in degrees")
        projections = _rows(proj, rows)
        angles = np.asarray(ang[()], dtype=float)
        voxel = float(f["voxel_size_m"][()]) if "voxel_size_m" in f else None
    if angles.shape != (projections.shape[0],):
        raise TomoFormatError(
            f"{path}: 'angles_deg' has shape {angles.shape} but 'projections' holds "
            f"{projections.shape[0]} projections; store one angle (degrees) per projection"
        )
    _check_angles(path, "angles_deg", angles)
    _check_finite(path, "projections", projections, "line integrals")
    return projections, np.deg2rad(angles), voxel


def load_projections(
    path: str | os.PathLike[str], *, rows: slice | None = None
) -> tuple[np.ndarray, np.ndarray, float | None]:
    """Line integrals and angles from either a plain projections or a Data Exchange file.

    Data Exchange counts are flat/dark corrected and ``−ln``-transformed.

    Args:
        path: the ``.h5`` file.
        rows: detector rows (y) to read.

    Returns:
        ``(projections (angle, y, x), angles_rad (angle,), voxel_size_m or None)``.

    Raises:
        FileNotFoundError: no such file.
        TomoFormatError: neither layout is present.
    """
    path = os.fspath(path)
    with open_h5_readonly(path, TomoFormatError, "a projections or Data Exchange file") as f:
        plain, exchange = "projections" in f, "exchange/data" in f
    if plain:
        return read_projections(path, rows=rows)
    if exchange:
        raw = read_dxchange(path, rows=rows)
        return raw.line_integrals(), np.deg2rad(raw.angles_deg), None
    raise TomoFormatError(
        f"{path}: neither 'projections' (plain layout) nor 'exchange/data' (Data Exchange) "
        "found; see diffptycho.io.dxchange for both layouts"
    )
