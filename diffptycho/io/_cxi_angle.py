"""The tilt angle of a CXI scan: where it is stored, in which units, and the CXI orientation.

Three places are read, the first present wins (inside ``entry_k/sample_1/``):

1. ``geometry_1/angle_deg`` — diffptycho's own field, degrees;
2. ``rotation_angle`` — NeXus (NXsample), honouring its ``units`` attribute (degrees or
   radians); without a ``units`` attribute it is taken to be in degrees;
3. ``geometry_1/orientation`` — CXI 1.5 direction cosines of the sample's in-plane axes.

Convention (the one of :mod:`diffptycho.physics.tomography`): the sample turns right-handedly
about +y by θ, the beam runs along +z, and a sample point (x, y, z) lands at the lab position
``R(θ)·(x, y, z)`` with ``R(θ) = [[cos θ, 0, sin θ], [0, 1, 0], [−sin θ, 0, cos θ]]``, so its
projected detector coordinate is ``t = x cos θ + z sin θ``. The sample axes in lab coordinates
are therefore ``x̂' = (cos θ, 0, −sin θ)`` and ``ŷ' = (0, 1, 0)``, and the orientation stores
``[x̂'·x̂, x̂'·ŷ, x̂'·ẑ, ŷ'·x̂, ŷ'·ŷ, ŷ'·ẑ] = [cos θ, 0, −sin θ, 0, 1, 0]``.
"""

from __future__ import annotations

import math

import h5py
import numpy as np

from diffptycho.io.scan import CXIFormatError

ANGLE = "sample_1/geometry_1/angle_deg"
ROTATION_ANGLE = "sample_1/rotation_angle"
ORIENTATION = "sample_1/geometry_1/orientation"

ORIENTATION_TOLERANCE = 1e-3
"""Largest deviation (direction cosine, ≈ 0.06°) of an orientation from a pure rotation about y."""
PER_FRAME_SPREAD_DEG = 1e-3
"""A per-frame ``rotation_angle`` array is accepted when its values agree within this (deg)."""

_DEGREES = {"deg", "degree", "degrees"}
_RADIANS = {"rad", "radian", "radians"}


def orientation_from_angle(angle_deg: float) -> np.ndarray:
    """CXI orientation (direction cosines) of a sample turned by θ about +y.

    Args:
        angle_deg: rotation angle θ in degrees (right-handed about +y, beam along +z).

    Returns:
        (6,) float64 ``[cos θ, 0, −sin θ, 0, 1, 0]``: the sample x and y axes in lab coordinates.

    Examples:
        >>> orientation_from_angle(90.0).round(12).tolist()
        [0.0, 0.0, -1.0, 0.0, 1.0, 0.0]
    """
    theta = math.radians(float(angle_deg))
    return np.array([math.cos(theta), 0.0, -math.sin(theta), 0.0, 1.0, 0.0])


def angle_from_orientation(orientation: np.ndarray, *, where: str = "orientation") -> float:
    """Rotation angle about +y (degrees) from CXI direction cosines.

    Args:
        orientation: 6 direction cosines ``[x̂'·x̂, x̂'·ŷ, x̂'·ẑ, ŷ'·x̂, ŷ'·ŷ, ŷ'·ẑ]`` (any shape
            holding 6 values).
        where: name of the value for messages (file and dataset when read from a file).

    Returns:
        θ in degrees in (−180, 180].

    Raises:
        CXIFormatError: not 6 finite values, or not a pure rotation about y within
            :data:`ORIENTATION_TOLERANCE`.

    Examples:
        >>> round(angle_from_orientation(orientation_from_angle(-80.0)), 9)
        -80.0
    """
    values = np.asarray(orientation, dtype=np.float64).reshape(-1)
    if values.size != 6 or not np.all(np.isfinite(values)):
        raise CXIFormatError(
            f"{where} holds {np.asarray(orientation).shape} values, expected 6 finite direction "
            "cosines [x'·x, x'·y, x'·z, y'·x, y'·y, y'·z]"
        )
    x_axis, y_axis = values[:3], values[3:]
    theta = math.atan2(-x_axis[2], x_axis[0])
    expected = orientation_from_angle(math.degrees(theta))
    deviation = float(np.max(np.abs(values - expected)))
    if deviation > ORIENTATION_TOLERANCE:
        raise CXIFormatError(
            f"{where} = {np.round(values, 6).tolist()} is not a rotation about y: expected "
            f"x' = (cos θ, 0, −sin θ) and y' = (0, 1, 0) (deviation {deviation:.3g} > "
            f"{ORIENTATION_TOLERANCE}); diffptycho reads tilt series that rotate about y "
            f"only (x'·y = {x_axis[1]:.3g}, y' = {np.round(y_axis, 6).tolist()})"
        )
    return math.degrees(theta)


def read_angle(path: str, entry: h5py.Group) -> tuple[float | None, str | None]:
    """The tilt angle of one entry and the dataset it came from (see the module docstring).

    Args:
        path: the file (for messages).
        entry: the open ``entry_k`` group.

    Returns:
        ``(angle_deg, dataset path)``, or ``(None, None)`` when no place holds an angle.

    Raises:
        CXIFormatError: an angle dataset is present but unreadable (not a number, unknown
            units, a broken link, or an orientation that is not a rotation about y).
    """
    for name in (ANGLE, ROTATION_ANGLE, ORIENTATION):
        ds = _dataset(path, entry, name)
        if ds is None:
            continue
        where = f"{path}: dataset '{ds.name}'"
        if name == ORIENTATION:
            return angle_from_orientation(ds[()], where=where), ds.name
        value = np.asarray(ds[()])
        if not np.issubdtype(value.dtype, np.number) or value.size == 0:
            raise CXIFormatError(f"{where} holds {value.shape} {value.dtype}; store one number")
        values = value.astype(np.float64).reshape(-1)
        if not np.all(np.isfinite(values)):
            raise CXIFormatError(f"{where} is not finite; store the angle as a finite number")
        units = _units(ds, default="deg" if name == ROTATION_ANGLE else "degree")
        if units in _RADIANS:
            values = np.rad2deg(values)
        elif units not in _DEGREES:
            raise CXIFormatError(
                f"{where} has units {units!r}; expected degrees ('deg', 'degree', 'degrees') "
                "or radians ('rad', 'radian', 'radians')"
            )
        spread = float(values.max() - values.min())
        if spread > PER_FRAME_SPREAD_DEG:
            raise CXIFormatError(
                f"{where} holds {values.size} angles spanning {spread:.4g}°; one scan is taken "
                "at one angle: store a scalar (or split the scan into one entry per angle)"
            )
        return float(values.mean()), ds.name
    return None, None


def _dataset(path: str, entry: h5py.Group, name: str) -> h5py.Dataset | None:
    obj = entry.get(name)
    if obj is None:
        link = entry.get(name, getlink=True)
        if isinstance(link, h5py.SoftLink | h5py.ExternalLink):
            raise CXIFormatError(
                f"{path}: dataset '{entry.name}/{name}' is a broken link ({link}); fix the "
                "link target"
            )
        return None
    if not isinstance(obj, h5py.Dataset):
        raise CXIFormatError(
            f"{path}: dataset '{obj.name}' is a group, expected a dataset; store the angle there"
        )
    return obj


def _units(ds: h5py.Dataset, default: str) -> str:
    units = ds.attrs.get("units")
    if units is None:
        return default
    if isinstance(units, np.ndarray) and units.size == 1:
        units = units.reshape(-1)[0]
    units = units.decode() if isinstance(units, bytes) else str(units)
    return units.strip().lower()
