"""A spectro-tomographic tilt series: many CXI scans arranged on an (energy, angle) grid.

Every ``entry_k`` of every file is one scan. :func:`read_tilt_series` reads only their headers
(:func:`~diffptycho.io.cxi.read_cxi_headers`), groups the scans by photon energy and by tilt
angle within tolerances, and checks that each (energy, angle) pair is measured exactly once.
Frames are read lazily, one scan at a time, from :class:`TiltSeries`.
"""

from __future__ import annotations

import dataclasses
import glob
import math
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from diffptycho.io.cxi import read_cxi_entry, read_cxi_header, read_cxi_headers
from diffptycho.io.scan import CXIFormatError, PtychoScan, ScanHeader, object_pixel_size

__all__ = ["ScanRef", "TiltSeries", "TiltSeriesError", "read_tilt_series"]

_GLOB_CHARS = frozenset("*?[")


class TiltSeriesError(CXIFormatError):
    """The scans do not form a complete (energy, angle) grid, or disagree where they must not."""


class ScanRef(NamedTuple):
    """Where one scan is stored: a file and the entry group inside it."""

    path: str
    entry: str

    def __str__(self) -> str:
        return f"{self.path}:/{self.entry}"


@dataclasses.dataclass(frozen=True, eq=False)
class TiltSeries:
    """Scans on a complete (energy, angle) grid, read lazily from their CXI files.

    Attributes:
        energies_ev: (E,) photon energy of each energy group in eV (mean over its scans),
            ascending.
        angles_deg: (A,) tilt angle of each angle group in degrees (mean over energies of the
            measured angles), ascending.
        scan_angles_deg: (E, A) the angle each scan was measured at, in degrees.
        scan_energies_ev: (E, A) the energy each scan was measured at, in eV.
        refs: (E, A) nested tuple of :class:`ScanRef`, the file and entry of each scan.
        n_positions: (E, A) int, scan positions (= frames) per scan.
        frame_shapes: (E,) frame size (ny, nx) in detector pixels of each energy.
        distances_m: (E,) sample–detector distance in m per energy, None for pixel-unit data.
        pixel_sizes_m: (E,) detector pixel size (y, x) in m per energy, None for pixel-unit data.
        angle_sources: (E, A) HDF5 path each angle was read from (None for a lone scan
            without angle, whose angle is then taken as 0°).
    """

    energies_ev: np.ndarray
    angles_deg: np.ndarray
    scan_angles_deg: np.ndarray
    scan_energies_ev: np.ndarray
    refs: tuple[tuple[ScanRef, ...], ...]
    n_positions: np.ndarray
    frame_shapes: tuple[tuple[int, int], ...]
    distances_m: tuple[float | None, ...]
    pixel_sizes_m: tuple[tuple[float, float] | None, ...]
    angle_sources: tuple[tuple[str | None, ...], ...]

    @property
    def shape(self) -> tuple[int, int]:
        """(E, A): number of energies and of angles."""
        return len(self.energies_ev), len(self.angles_deg)

    def scan(self, e: int, a: int) -> PtychoScan:
        """Read scan (energy ``e``, angle ``a``) from its file: that entry only."""
        ref = self.refs[e][a]
        return read_cxi_entry(ref.path, ref.entry)

    def frames(self, e: int, a: int) -> np.ndarray:
        """(N, ny, nx) float32 diffraction frames of scan (e, a) in photon counts."""
        return self.scan(e, a).data

    def positions_px(self, e: int, a: int) -> np.ndarray:
        """(N, 2) positions (y, x) of scan (e, a) in object pixels of energy ``e``.

        The pixel is :meth:`object_pixel_size_m` of the energy group (its mean energy), so all
        scans of one energy share one object grid; positions are not centred.
        """
        header = read_cxi_header(*self.refs[e][a])
        size = self.object_pixel_size_m(e)
        return header.positions_m if size is None else header.positions_m / np.asarray(size)

    def object_pixel_size_m(self, e: int) -> tuple[float, float] | None:
        """Object-plane pixel size (y, x) in m of energy group ``e``; None for pixel-unit data."""
        return object_pixel_size(
            float(self.energies_ev[e]),
            self.distances_m[e],
            self.pixel_sizes_m[e],
            self.frame_shapes[e],
        )

    def summary(self) -> dict[str, Any]:
        """Plain-Python description (numbers, strings, lists) for printing or JSON."""
        files = sorted({ref.path for row in self.refs for ref in row})
        # "/entry_k/sample_1/rotation_angle" → "sample_1/rotation_angle"
        sources = sorted({s.split("/", 2)[-1] for row in self.angle_sources for s in row if s})
        spread = np.abs(self.scan_angles_deg - self.angles_deg[None, :])
        return {
            "grid (energies × angles)": f"{self.shape[0]} × {self.shape[1]}",
            "files": files,
            "energies_ev": [round(float(e), 3) for e in self.energies_ev],
            "angles_deg": [round(float(a), 3) for a in self.angles_deg],
            "angle range_deg": [float(self.angles_deg.min()), float(self.angles_deg.max())],
            "largest angle deviation from its group_deg": float(spread.max()),
            "angles read from": sources or ["nowhere (lone 2-D scan, 0° assumed)"],
            "positions per scan": [int(self.n_positions.min()), int(self.n_positions.max())],
            "frame shape per energy": [list(s) for s in self.frame_shapes],
            "object pixel per energy_nm": [
                None if (p := self.object_pixel_size_m(e)) is None else [v * 1e9 for v in p]
                for e in range(self.shape[0])
            ],
        }


def read_tilt_series(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    energy_tolerance_ev: float = 0.05,
    angle_tolerance_deg: float = 0.05,
) -> TiltSeries:
    """Arrange the scans of one or more CXI files on a complete (energy, angle) grid.

    Every ``entry_k`` of every file is one scan; only headers are read here. Scans are sorted
    by energy and a new energy group starts where an energy exceeds the first of the current
    group by more than ``energy_tolerance_ev``; angles are grouped the same way over all
    scans. Each (energy group, angle group) pair must hold exactly one scan.

    Args:
        paths: one CXI file, a list of files, or a glob pattern such as ``"scans/*.cxi"``
            (matches are sorted; the order of files does not matter).
        energy_tolerance_ev: scans whose energies differ by at most this (eV) belong to one
            energy.
        angle_tolerance_deg: scans whose angles differ by at most this (degrees) belong to one
            angle.

    Returns:
        The :class:`TiltSeries`, sorted by energy then angle.

    Raises:
        FileNotFoundError: a file does not exist or a pattern matches nothing.
        CXIFormatError: a file is not a readable CXI file (see
            :func:`~diffptycho.io.cxi.read_cxi_headers`).
        TiltSeriesError: a scan of a multi-scan input has no angle; an (energy, angle) pair
            is missing or measured twice; frame shapes or detector geometry differ within an
            energy. Messages name the files and entries.

    Examples:
        >>> import os, tempfile
        >>> import numpy as np
        >>> from diffptycho.io.cxi import PtychoScan, write_cxi
        >>> scans = [PtychoScan(np.ones((2, 8, 8)), np.zeros((2, 2)), energy_ev=e, angle_deg=a)
        ...          for a in (30.0, -30.0) for e in (710.2, 708.2)]
        >>> path = os.path.join(tempfile.mkdtemp(), "tilt.cxi")
        >>> write_cxi(path, scans)
        >>> series = read_tilt_series(path)
        >>> series.energies_ev.tolist(), series.angles_deg.tolist(), series.refs[0][0].entry
        ([708.2, 710.2], [-30.0, 30.0], 'entry_4')
    """
    if energy_tolerance_ev < 0 or angle_tolerance_deg < 0:
        raise ValueError(
            f"tolerances must be ≥ 0, got energy_tolerance_ev={energy_tolerance_ev}, "
            f"angle_tolerance_deg={angle_tolerance_deg}"
        )
    files = _expand(paths)
    headers = [header for path in files for header in read_cxi_headers(path)]
    if len(headers) > 1:
        missing = [_ref(h) for h in headers if h.angle_deg is None]
        if missing:
            raise TiltSeriesError(
                f"{len(missing)} of {len(headers)} scans have no tilt angle: "
                f"{_listing(missing)}; write each scan's angle in entry_k/sample_1/"
                "geometry_1/angle_deg (degrees), sample_1/rotation_angle (with units) or "
                "sample_1/geometry_1/orientation (a multi-scan series never assumes 0°)"
            )
    angles = np.array([0.0 if h.angle_deg is None else h.angle_deg for h in headers])
    energies = np.array([h.energy_ev for h in headers])
    e_group = _group(energies, energy_tolerance_ev)
    a_group = _group(angles, angle_tolerance_deg)
    n_e, n_a = int(e_group.max()) + 1, int(a_group.max()) + 1

    cell: dict[tuple[int, int], list[int]] = {}
    for i, key in enumerate(zip(e_group.tolist(), a_group.tolist(), strict=True)):
        cell.setdefault(key, []).append(i)
    e_mean = np.array([energies[e_group == e].mean() for e in range(n_e)])
    a_mean = np.array([angles[a_group == a].mean() for a in range(n_a)])
    duplicates = [
        f"{e_mean[e]:.2f} eV, {a_mean[a]:+.2f}°: " + ", ".join(str(_ref(headers[i])) for i in idx)
        for (e, a), idx in sorted(cell.items())
        if len(idx) > 1
    ]
    absent = [
        f"{e_mean[e]:.2f} eV at {a_mean[a]:+.2f}°"
        for e in range(n_e)
        for a in range(n_a)
        if (e, a) not in cell
    ]
    if duplicates or absent:
        problems = []
        if absent:
            problems.append(f"missing scans: {_listing(absent)}")
        if duplicates:
            problems.append(f"measured more than once: {_listing(duplicates)}")
        raise TiltSeriesError(
            f"{_files(files)}: {len(headers)} scans do not form a complete grid of {n_e} "
            f"energies × {n_a} angles ({'; '.join(problems)}); add or remove scans, or widen "
            f"energy_tolerance_ev={energy_tolerance_ev} / angle_tolerance_deg="
            f"{angle_tolerance_deg} if near-equal values were meant to match"
        )

    grid = [[headers[cell[(e, a)][0]] for a in range(n_a)] for e in range(n_e)]
    for row in grid:
        _check_energy_consistent(row)
    scan_angles = np.array([[angles[cell[(e, a)][0]] for a in range(n_a)] for e in range(n_e)])
    return TiltSeries(
        energies_ev=e_mean,
        angles_deg=scan_angles.mean(axis=0),
        scan_angles_deg=scan_angles,
        scan_energies_ev=np.array([[h.energy_ev for h in row] for row in grid]),
        refs=tuple(tuple(_ref(h) for h in row) for row in grid),
        n_positions=np.array([[h.n_frames for h in row] for row in grid]),
        frame_shapes=tuple(row[0].frame_shape for row in grid),
        distances_m=tuple(row[0].distance_m for row in grid),
        pixel_sizes_m=tuple(row[0].pixel_size_m for row in grid),
        angle_sources=tuple(tuple(h.angle_source for h in row) for row in grid),
    )


def _expand(paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[str]:
    items = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    if not items:
        raise ValueError("read_tilt_series: no files given; pass a CXI file, a list or a glob")
    files: list[str] = []
    for item in map(os.fspath, items):
        if _GLOB_CHARS & set(item) and not os.path.exists(item):
            matches = sorted(glob.glob(item))
            if not matches:
                raise FileNotFoundError(f"{item}: the pattern matches no file (expected CXI files)")
            files.extend(matches)
        else:
            files.append(item)
    return list(dict.fromkeys(files))  # a file named twice is read once


def _group(values: np.ndarray, tolerance: float) -> np.ndarray:
    """Group index of each value: sorted, a group spans at most ``tolerance`` from its first."""
    order = np.argsort(values, kind="stable")
    groups = np.empty(values.size, dtype=int)
    group, start = -1, -math.inf
    for i in order:
        if values[i] - start > tolerance:
            group, start = group + 1, values[i]
        groups[i] = group
    return groups


def _check_energy_consistent(row: list[ScanHeader]) -> None:
    first = row[0]
    for h in row[1:]:
        for what, mine, theirs in (
            ("frame shape (ny, nx)", h.frame_shape, first.frame_shape),
            ("detector distance (m)", h.distance_m, first.distance_m),
            ("detector pixel size (y, x) (m)", h.pixel_size_m, first.pixel_size_m),
        ):
            if not _same(mine, theirs):
                raise TiltSeriesError(
                    f"scans at {first.energy_ev:.2f} eV disagree on the {what}: {theirs} in "
                    f"{_ref(first)} but {mine} in {_ref(h)}; all angles of one energy share one "
                    "detector geometry (crop or bin frames to one shape)"
                )


def _same(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is b
    return bool(np.allclose(a, b, rtol=1e-6, atol=0.0)) and np.shape(a) == np.shape(b)


def _ref(header: ScanHeader) -> ScanRef:
    return ScanRef(header.path, header.entry)


def _files(files: list[str]) -> str:
    return files[0] if len(files) == 1 else f"{len(files)} files ({files[0]} …)"


def _listing(items: Sequence[Any], limit: int = 12) -> str:
    shown = ", ".join(str(item) for item in items[:limit])
    return shown if len(items) <= limit else f"{shown} and {len(items) - limit} more"
