"""One ptychographic scan as an in-memory value, validated on construction.

:class:`PtychoScan` is what :mod:`diffptycho.io.cxi` reads and writes; the field checks live
here so that a scan built in a script fails as early and as clearly as one read from a file.
:class:`ScanHeader` describes a scan in a file without its frames (cheap to read for many).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from diffptycho.physics.optics import EV_TO_J, wavelength

__all__ = ["CXIFormatError", "PtychoScan", "ScanHeader", "object_pixel_size"]


class CXIFormatError(ValueError):
    """A CXI file (or a scan to be written) violates the layout, units or value conventions."""


class _FieldError(ValueError):
    """Invalid :class:`PtychoScan` field; readers re-raise it naming the file and dataset."""

    def __init__(self, field: str, problem: str, fix: str):
        self.field, self.problem, self.fix = field, problem, fix
        super().__init__(f"PtychoScan.{field}: {problem}; {fix}")


def _finite_positive(field: str, value: float, unit: str) -> float:
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise _FieldError(field, f"{value!r} is not a positive number", f"give it in {unit}")
    return value


class ScanPixels:
    """Object-plane pixel and positions in pixels, from a scan's geometry fields.

    Needs ``energy_ev``, ``distance_m``, ``pixel_size_m``, ``positions_m`` and ``data`` with a
    ``shape``; shared by :class:`PtychoScan` and the streamed scan of
    :mod:`diffptycho.recon.ptycho.streaming`.
    """

    @property
    def object_pixel_size_m(self) -> tuple[float, float] | None:
        """Object-plane pixel size (y, x) in m, λ·distance / (n·pixel) per axis; None if unknown."""
        return object_pixel_size(
            self.energy_ev, self.distance_m, self.pixel_size_m, self.data.shape[-2:]
        )

    @property
    def positions_px(self) -> np.ndarray:
        """(N, 2) positions (y, x) in object pixels (as stored for pixel-unit data)."""
        size = self.object_pixel_size_m
        return self.positions_m if size is None else self.positions_m / np.asarray(size)


@dataclasses.dataclass(frozen=True, eq=False)
class PtychoScan(ScanPixels):
    """One ptychographic scan: diffraction frames, positions and the geometry to interpret them.

    Arrays are converted to NumPy on construction and validated (shapes, finite non-negative
    counts, units that look right).

    Attributes:
        data: (N, ny, nx) float32 measured intensities in photon counts, fftshift-centred.
        positions_m: (N, 2) float64 scan positions as (y, x) in m. For pixel-unit data (when
            ``object_pixel_size_m`` is None) they are in object pixels instead.
        energy_ev: photon energy in eV.
        distance_m: sample–detector distance in m, or None for pixel-unit data.
        pixel_size_m: detector pixel size (y, x) in m (a scalar means square pixels), or None.
        mask: (ny, nx) bool detector mask, True = valid pixel; None means all pixels valid.
        illumination: complex probe, (ny, nx) or (M, ny, nx) for M modes, at the sample plane;
            None if unknown.
        angle_deg: tilt angle of this scan in degrees (right-handed rotation about +y, beam
            along +z: the axes of :mod:`diffptycho.physics.tomography`), or None when unknown
            (not in the file). Only a lone 2-D scan may treat None as 0°.
        name: free-form scan name.

    Examples:
        >>> import numpy as np
        >>> scan = PtychoScan(np.ones((3, 64, 64)), np.zeros((3, 2)), energy_ev=708.2,
        ...                   distance_m=0.1, pixel_size_m=(11e-6, 11e-6))
        >>> [round(p * 1e9, 2) for p in scan.object_pixel_size_m]  # nm
        [248.68, 248.68]
    """

    data: np.ndarray
    positions_m: np.ndarray
    energy_ev: float
    distance_m: float | None = None
    pixel_size_m: tuple[float, float] | None = None
    mask: np.ndarray | None = None
    illumination: np.ndarray | None = None
    angle_deg: float | None = None
    name: str = ""

    def __post_init__(self) -> None:
        def put(field: str, value: Any) -> None:
            object.__setattr__(self, field, value)

        data = np.asarray(self.data)
        if data.ndim != 3:
            raise _FieldError(
                "data",
                f"has shape {data.shape}, expected 3-D (N, ny, nx)",
                "reshape to (N, ny, nx)",
            )
        if not np.issubdtype(data.dtype, np.number) or np.iscomplexobj(data):
            raise _FieldError("data", f"has dtype {data.dtype}", "give real-valued counts")
        data = data.astype(np.float32, copy=False)
        n_bad = int(data.size - np.count_nonzero(np.isfinite(data)))
        if n_bad:
            raise _FieldError(
                "data",
                f"contains {n_bad} NaN/inf values",
                "replace them (e.g. by 0) and mark those pixels invalid in the mask",
            )
        n_neg = int(np.count_nonzero(data < 0))
        if n_neg:
            raise _FieldError(
                "data",
                f"contains {n_neg} negative counts (min {float(data.min())!r})",
                "store raw photon counts ≥ 0 (undo background subtraction or clip at 0)",
            )
        put("data", data)
        n, ny, nx = data.shape

        pos = np.asarray(self.positions_m, dtype=np.float64)
        if pos.ndim != 2 or pos.shape[1] != 2:
            raise _FieldError(
                "positions_m", f"has shape {pos.shape}, expected (N, 2) as (y, x)", "pass (N, 2)"
            )
        if pos.shape[0] != n:
            raise _FieldError(
                "positions_m",
                f"has {pos.shape[0]} positions but data has {n} frames",
                "give one (y, x) position per frame",
            )
        if not np.all(np.isfinite(pos)):
            raise _FieldError("positions_m", "contains NaN/inf", "give finite positions")
        put("positions_m", pos)

        energy = _finite_positive("energy_ev", self.energy_ev, "eV")
        if energy < 1e-9:
            raise _FieldError(
                "energy_ev", f"{energy!r} looks like joules", f"pass eV (divide by {EV_TO_J!r})"
            )
        put("energy_ev", energy)
        if self.distance_m is not None:
            put("distance_m", _finite_positive("distance_m", self.distance_m, "m"))
        if self.pixel_size_m is not None:
            size = np.broadcast_to(np.asarray(self.pixel_size_m, dtype=np.float64), (2,))
            put("pixel_size_m", tuple(_finite_positive("pixel_size_m", p, "m") for p in size))

        if self.mask is not None:
            mask = np.asarray(self.mask)
            if mask.dtype != np.bool_:
                raise _FieldError(
                    "mask",
                    f"has dtype {mask.dtype}, expected bool with True = valid pixel",
                    "convert explicitly, e.g. a CXI mask with `cxi_mask == 0`",
                )
            if mask.shape != (ny, nx):
                raise _FieldError(
                    "mask", f"has shape {mask.shape}, frames are {(ny, nx)}", "match the frames"
                )
            put("mask", mask)
        if self.illumination is not None:
            probe = np.asarray(self.illumination)
            if not np.iscomplexobj(probe):
                probe = probe.astype(np.result_type(probe.dtype, np.complex64))
            if probe.ndim not in (2, 3) or probe.shape[-2:] != (ny, nx):
                raise _FieldError(
                    "illumination",
                    f"has shape {probe.shape}, expected {(ny, nx)} or (M, {ny}, {nx})",
                    "give the probe on the frame grid",
                )
            if not np.all(np.isfinite(probe)):
                raise _FieldError("illumination", "contains NaN/inf", "give a finite probe")
            put("illumination", probe)
        if self.angle_deg is not None:
            angle = float(self.angle_deg)
            if not math.isfinite(angle):
                raise _FieldError("angle_deg", f"{angle!r} is not finite", "give degrees")
            put("angle_deg", angle)
        put("name", str(self.name))


def object_pixel_size(
    energy_ev: float,
    distance_m: float | None,
    pixel_size_m: tuple[float, float] | None,
    frame_shape: tuple[int, int],
) -> tuple[float, float] | None:
    """Far-field object pixel size (y, x) in m: λ·distance / (n·pixel) per axis.

    Args:
        energy_ev: photon energy in eV.
        distance_m: sample–detector distance in m, or None.
        pixel_size_m: detector pixel size (y, x) in m, or None.
        frame_shape: frame size (ny, nx) in detector pixels.

    Returns:
        (y, x) in m, or None when the distance or the pixel size is unknown.

    Examples:
        >>> [round(p * 1e9, 2) for p in object_pixel_size(708.2, 0.1, (11e-6, 11e-6), (64, 64))]
        [248.68, 248.68]
    """
    if distance_m is None or pixel_size_m is None:
        return None
    lam = float(wavelength(energy_ev))
    (ny, nx), (py, px) = frame_shape, pixel_size_m
    return lam * distance_m / (ny * py), lam * distance_m / (nx * px)


@dataclasses.dataclass(frozen=True, eq=False)
class ScanHeader:
    """One scan of a CXI file described without its frames, mask or probe.

    Read by :func:`diffptycho.io.cxi.read_cxi_headers`; values are validated as for
    :class:`PtychoScan` except the frame values, which are not read.

    Attributes:
        path: the file.
        entry: the entry group name (``"entry_3"``).
        title: the scan name (the entry name when the file has no title).
        frames_dataset: HDF5 path of the (N, ny, nx) frames.
        n_frames: number of frames N (= scan positions).
        frame_shape: (ny, nx) detector pixels.
        energy_ev: photon energy in eV.
        positions_m: (N, 2) float64 positions (y, x) in m (object pixels for pixel-unit data).
        distance_m: sample–detector distance in m, or None.
        pixel_size_m: detector pixel size (y, x) in m, or None.
        angle_deg: tilt angle in degrees, or None when the file holds none.
        angle_source: HDF5 path the angle was read from, or None.
        has_mask: the file holds a detector mask.
        has_illumination: the file holds a probe.
        frame_orientation: how the stored frames were reoriented into the reference
            detector orientation (from ``detector_1/basis_vectors``), e.g. ``"as stored"`` or
            ``"rows flipped, columns flipped"``.
    """

    path: str
    entry: str
    title: str
    frames_dataset: str
    n_frames: int
    frame_shape: tuple[int, int]
    energy_ev: float
    positions_m: np.ndarray
    distance_m: float | None
    pixel_size_m: tuple[float, float] | None
    angle_deg: float | None
    angle_source: str | None
    has_mask: bool
    has_illumination: bool
    frame_orientation: str = "as stored"

    @property
    def object_pixel_size_m(self) -> tuple[float, float] | None:
        """Object-plane pixel size (y, x) in m (see :func:`object_pixel_size`); None if unknown."""
        return object_pixel_size(
            self.energy_ev, self.distance_m, self.pixel_size_m, self.frame_shape
        )

    @property
    def positions_px(self) -> np.ndarray:
        """(N, 2) positions (y, x) in object pixels."""
        size = self.object_pixel_size_m
        return self.positions_m if size is None else self.positions_m / np.asarray(size)
