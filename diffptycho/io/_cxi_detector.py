"""CXI detector geometry as other programs write it: length units and detector basis vectors.

Frames in diffptycho are stored in one orientation, the **reference detector basis**

    basis_vectors = [[0, -p_y, 0],     # data axis 1 (rows): one pixel down = lab -y
                     [-p_x, 0, 0]]     # data axis 2 (columns): one pixel right = lab -x

in CXI lab coordinates (x, y, z), z along the beam, y up: the detector image as seen looking
downstream along the beam, +y at the top (the basis CDTools assumes when a file has none).
A file whose ``instrument_1/detector_1/basis_vectors`` differ by axis order or signs has its
frames transposed and flipped into this orientation on reading; any other basis (rotated,
tilted, non-orthogonal) is refused. docs/file-formats.md has the full convention.
"""

from __future__ import annotations

import dataclasses

import h5py
import numpy as np

from diffptycho.io.scan import CXIFormatError

BASIS = "instrument_1/detector_1/basis_vectors"

LENGTH_UNITS: dict[str, float] = {
    "m": 1.0,
    "meter": 1.0,
    "meters": 1.0,
    "metre": 1.0,
    "metres": 1.0,
    "mm": 1e-3,
    "millimeter": 1e-3,
    "millimetre": 1e-3,
    "um": 1e-6,
    "µm": 1e-6,  # micro sign U+00B5
    "μm": 1e-6,  # Greek mu U+03BC
    "micron": 1e-6,
    "microns": 1e-6,
    "micrometer": 1e-6,
    "micrometre": 1e-6,
    "nm": 1e-9,
    "nanometer": 1e-9,
    "nanometre": 1e-9,
}
"""Length ``units`` attribute values accepted on reading, and their factor to metres."""

_AXIS_TOLERANCE = 1e-3  # direction cosine tolerance for "axis-aligned"


def units_of(ds: h5py.Dataset) -> str | None:
    """The ``units`` attribute of a dataset as a stripped string, or None."""
    units = ds.attrs.get("units")
    if units is None:
        return None
    if isinstance(units, np.ndarray) and units.size == 1:
        units = units.reshape(-1)[0]
    units = units.decode("utf-8", errors="replace") if isinstance(units, bytes) else str(units)
    return units.strip()


def length_factor(path: str, ds: h5py.Dataset, extra: tuple[str, ...] = ()) -> float | str:
    """Factor from the dataset's length unit to m (1 without ``units``), or an accepted extra.

    Args:
        path: the file, for messages.
        ds: the dataset.
        extra: other accepted unit names (e.g. ``"pixel"``), returned as given (lower case).

    Raises:
        CXIFormatError: an unknown unit, naming the dataset and the accepted ones.
    """
    units = units_of(ds)
    if units is None:
        return 1.0
    key = units.lower() if units.lower() in LENGTH_UNITS or units.lower() in extra else units
    if key in extra:
        return key
    if key in LENGTH_UNITS:
        return LENGTH_UNITS[key]
    accepted = ", ".join(["m", "mm", "um (µm)", "nm", *extra])
    raise CXIFormatError(
        f"{path}: dataset '{ds.name}' has units {units!r}, which is not a length unit read "
        f"here; use one of {accepted} (or convert the values to m and set units='m')"
    )


@dataclasses.dataclass(frozen=True)
class FrameOrientation:
    """How stored frames map onto the reference orientation (applied in this order).

    Attributes:
        transpose: swap the two frame axes (stored rows run along lab x).
        flip_rows: reverse the row axis (after transposing).
        flip_cols: reverse the column axis (after transposing).
        pixel_size_m: (y, x) detector pixel size in m from the basis norms, or None when the
            file has no basis vectors.
    """

    transpose: bool = False
    flip_rows: bool = False
    flip_cols: bool = False
    pixel_size_m: tuple[float, float] | None = None

    @property
    def identity(self) -> bool:
        """True when the stored frames are already in the reference orientation."""
        return not (self.transpose or self.flip_rows or self.flip_cols)

    def describe(self) -> str:
        """Human-readable summary, e.g. ``"transposed, rows flipped"``."""
        parts = [
            name
            for name, on in (
                ("transposed", self.transpose),
                ("rows flipped", self.flip_rows),
                ("columns flipped", self.flip_cols),
            )
            if on
        ]
        return ", ".join(parts) or "as stored"

    def shape(self, shape: tuple[int, int]) -> tuple[int, int]:
        """Frame shape (ny, nx) after reorientation."""
        return (shape[1], shape[0]) if self.transpose else (shape[0], shape[1])

    def apply(self, array: np.ndarray) -> np.ndarray:
        """Reorient the last two axes of ``array`` (frames, mask or probe)."""
        out = np.asarray(array)
        if self.transpose:
            out = np.swapaxes(out, -1, -2)
        if self.flip_rows:
            out = out[..., ::-1, :]
        if self.flip_cols:
            out = out[..., ::-1]
        return np.ascontiguousarray(out)


def reference_basis(pixel_size_m: tuple[float, float]) -> np.ndarray:
    """The (2, 3) basis vectors (in m) of the reference orientation for a (y, x) pixel size."""
    py, px = pixel_size_m
    return np.array([[0.0, -py, 0.0], [-px, 0.0, 0.0]])


def read_orientation(path: str, entry: h5py.Group, ds: h5py.Dataset | None) -> FrameOrientation:
    """The :class:`FrameOrientation` described by a ``basis_vectors`` dataset (None: identity).

    Accepted shapes: (2, 3) as in the CXI standard (one row per data axis, slowest first, lab
    (x, y, z) components), its transpose (3, 2) (as CDTools writes it), and (N, 2, 3) per
    frame when all frames agree.

    Raises:
        CXIFormatError: another shape, frames that disagree, or vectors that are not along
            lab ±x / ±y (rotated, tilted or skewed detectors are not supported).
    """
    if ds is None:
        return FrameOrientation()
    name = ds.name
    factor = length_factor(path, ds)
    basis = np.asarray(ds[()], dtype=np.float64) * float(factor)
    if basis.shape == (3, 2):
        basis = basis.T
    elif basis.ndim == 3 and basis.shape[1:] == (2, 3):
        if not np.allclose(basis, basis[:1], rtol=1e-6, atol=0.0):
            raise CXIFormatError(
                f"{path}: dataset '{name}' holds per-frame basis vectors that differ between "
                "frames; a detector that moves during the scan is not supported (store one "
                "(2, 3) basis)"
            )
        basis = basis[0]
    if basis.shape != (2, 3) or not np.all(np.isfinite(basis)):
        raise CXIFormatError(
            f"{path}: dataset '{name}' has shape {np.asarray(ds).shape}; expected finite "
            "(2, 3) detector basis vectors (one (x, y, z) row per frame axis, in m), "
            "(3, 2) or (N, 2, 3)"
        )
    lab_axis, signs, norms = [], [], []
    for k, vector in enumerate(basis):
        norm = float(np.linalg.norm(vector))
        cosines = np.abs(vector) / norm if norm > 0 else np.zeros(3)
        along = int(np.argmax(cosines))
        if norm == 0 or along == 2 or np.sort(cosines)[1] > _AXIS_TOLERANCE:
            raise CXIFormatError(
                f"{path}: dataset '{name}' row {k} is {vector.tolist()} m, which is not along "
                "lab ±x or ±y; only axis-aligned detector bases (axis order and flips of the "
                "frames) are supported, not rotated, tilted or skewed detectors — resample "
                "the frames onto an axis-aligned grid"
            )
        lab_axis.append(along)  # 0 = x, 1 = y
        signs.append(float(np.sign(vector[along])))
        norms.append(norm)
    if lab_axis[0] == lab_axis[1]:
        raise CXIFormatError(
            f"{path}: dataset '{name}' has both frame axes along lab "
            f"{'xy'[lab_axis[0]]}; expected one along x and one along y"
        )
    y_axis = lab_axis.index(1)  # stored frame axis that runs along lab y
    x_axis = 1 - y_axis
    return FrameOrientation(
        transpose=y_axis == 1,
        flip_rows=signs[y_axis] > 0,  # reference: rows run along -y
        flip_cols=signs[x_axis] > 0,  # reference: columns run along -x
        pixel_size_m=(norms[y_axis], norms[x_axis]),
    )
