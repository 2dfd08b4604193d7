"""Ptychography scans in CXI (Coherent X-ray Imaging, HDF5) files.

One ``entry_k`` (k = 1, 2, …) holds one scan at the standard CXI 1.5 paths. The tilt angle of
each scan is written in three places — our own field ``sample_1/geometry_1/angle_deg``, NeXus
``sample_1/rotation_angle`` and CXI ``sample_1/geometry_1/orientation`` — and read from the
first present (:mod:`diffptycho.io._cxi_angle` has the orientation convention). Simulation
ground truth goes in the separate top-level group ``diffptycho_truth/``. docs/file-formats.md is
the full reference.

Frames are stored one frame per HDF5 chunk. A scan larger than memory is written from blocks
of frames (:class:`BlockScan`, e.g. produced by a simulation) and a file can be filled piece by
piece through :func:`cxi_writer`; the file is the same as from whole arrays. Conversions at this
boundary:

- positions: our API uses (y, x) in m; CXI ``translation`` is (N, 3) with columns (x, y, z),
  in m or in the length unit its ``units`` attribute names (m, mm, um/µm, nm); absolute motor
  positions are kept (:func:`diffptycho.recon.ptycho.start.starting_model` centres them);
  without a ``translation``, the 1-D pair ``data_1/x``, ``data_1/y`` (NXcxi_ptycho, as PtyPy
  reads it) is used instead;
- frames: reoriented (transposed/flipped) from the file's ``detector_1/basis_vectors`` into
  the reference orientation of :mod:`diffptycho.io._cxi_detector`; written with that basis;
- energy: our API uses eV; CXI ``source_1/energy`` is in joules;
- mask: our API uses ``True`` = valid pixel; CXI ``detector_1/mask`` is nonzero = bad pixel;
- angle: our API uses degrees; NeXus ``rotation_angle`` may be in rad (its ``units`` say so).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import h5py
import numpy as np

from diffptycho import __version__
from diffptycho.io._atomic import atomic_h5_file, open_h5_readonly
from diffptycho.io._cxi_angle import (
    ANGLE,
    ORIENTATION,
    ROTATION_ANGLE,
    angle_from_orientation,
    orientation_from_angle,
    read_angle,
)
from diffptycho.io._cxi_detector import (
    BASIS,
    FrameOrientation,
    length_factor,
    read_orientation,
    reference_basis,
)
from diffptycho.io.scan import CXIFormatError, PtychoScan, ScanHeader, _FieldError
from diffptycho.physics.optics import EV_TO_J, ev_to_joule, joule_to_ev

__all__ = [
    "CXI_VERSION",
    "BlockScan",
    "CXIFormatError",
    "CXIWriter",
    "PtychoScan",
    "ScanHeader",
    "angle_from_orientation",
    "cxi_writer",
    "orientation_from_angle",
    "read_cxi",
    "read_cxi_entry",
    "read_cxi_header",
    "read_cxi_headers",
    "read_cxi_truth",
    "write_cxi",
]

CXI_VERSION = 150
"""Value of the root ``cxi_version`` dataset we write (CXI format 1.5)."""

# Paths inside one entry_k group.
DATA = "data_1/data"
DETECTOR_DATA = "instrument_1/detector_1/data"
TRANSLATION = "sample_1/geometry_1/translation"
DATA_X = "data_1/x"  # NXcxi_ptycho / PtyPy: 1-D positions, used when TRANSLATION is absent
DATA_Y = "data_1/y"
ENERGY = "instrument_1/source_1/energy"
ILLUMINATION = "instrument_1/source_1/illumination"
DISTANCE = "instrument_1/detector_1/distance"
X_PIXEL = "instrument_1/detector_1/x_pixel_size"
Y_PIXEL = "instrument_1/detector_1/y_pixel_size"
MASK = "instrument_1/detector_1/mask"
TITLE = "title"
TRUTH_GROUP = "diffptycho_truth"

CXI_MASK_INVALID = 1
"""CXI mask bit 0 (``0x1``): pixel is invalid. Any nonzero mask value marks a bad pixel."""
MAX_ENERGY_J = 1e-12
"""Stored energies above this (≈ 6 MeV) are taken to be eV written where joules belong."""

_JOULES = {"j", "joule", "joules"}
_ENTRY = re.compile(r"^entry_(\d+)$")


@dataclasses.dataclass(frozen=True, eq=False)
class BlockScan:
    """A scan to write whose frames arrive in blocks, so that they are never all in memory.

    Everything but the frames is a :class:`PtychoScan`'s field, validated the same way on
    construction. The frames are (n_k, ny, nx) blocks in frame order (their n_k add up to the
    number of positions), each checked as :class:`PtychoScan` checks its data when it is
    written; :func:`write_cxi` writes them one block at a time into the chunked frames dataset,
    so the file equals that of the :class:`PtychoScan` holding all of them.

    Attributes:
        frames: the blocks, as an iterable (consumed once) or a function returning one.
        frame_shape: (ny, nx) detector pixels of every frame.
        positions_m: (N, 2) float64 positions (y, x) in m (object pixels for pixel-unit data);
            N is the number of frames.
        energy_ev: photon energy in eV.
        distance_m: sample–detector distance in m, or None.
        pixel_size_m: detector pixel size (y, x) in m, or None.
        mask: (ny, nx) bool detector mask, True = valid pixel, or None.
        illumination: complex probe (ny, nx) or (M, ny, nx), or None.
        angle_deg: tilt angle in degrees, or None.
        name: free-form scan name.

    Examples:
        >>> import os, tempfile
        >>> import numpy as np
        >>> blocks = (np.full((2, 8, 8), k + 1.0) for k in range(3))  # 3 blocks of 2 frames
        >>> scan = BlockScan(blocks, (8, 8), np.zeros((6, 2)), energy_ev=710.2)
        >>> path = os.path.join(tempfile.mkdtemp(), "scan.cxi")
        >>> write_cxi(path, scan)
        >>> read_cxi(path)[0].data[:, 0, 0]
        array([1., 1., 2., 2., 3., 3.], dtype=float32)
    """

    frames: Iterable[np.ndarray] | Callable[[], Iterable[np.ndarray]]
    frame_shape: tuple[int, int]
    positions_m: np.ndarray
    energy_ev: float
    distance_m: float | None = None
    pixel_size_m: tuple[float, float] | None = None
    mask: np.ndarray | None = None
    illumination: np.ndarray | None = None
    angle_deg: float | None = None
    name: str = ""

    def __post_init__(self) -> None:
        shape = tuple(np.shape(self.frame_shape))
        if shape != (2,) or not all(
            isinstance(n, int | np.integer) and n > 0 for n in self.frame_shape
        ):
            raise ValueError(
                f"BlockScan.frame_shape: {self.frame_shape!r} is not (ny, nx); give two "
                "positive pixel counts"
            )
        frame_shape = (int(self.frame_shape[0]), int(self.frame_shape[1]))
        pos = np.asarray(self.positions_m, dtype=np.float64)
        if pos.ndim != 2 or pos.shape[1] != 2:
            raise ValueError(
                f"BlockScan.positions_m: has shape {pos.shape}, expected (N, 2) as (y, x); "
                "give one position per frame"
            )
        if not np.all(np.isfinite(pos)):
            raise ValueError("BlockScan.positions_m: contains NaN/inf; give finite positions")
        try:  # every other field checked as PtychoScan checks it, on a one-frame stand-in
            head = PtychoScan(
                np.ones((min(len(pos), 1), *frame_shape), np.float32),
                pos[:1],
                self.energy_ev,
                self.distance_m,
                self.pixel_size_m,
                self.mask,
                self.illumination,
                self.angle_deg,
                self.name,
            )
        except _FieldError as err:
            raise ValueError(f"BlockScan.{err.field}: {err.problem}; {err.fix}") from None
        for field in dataclasses.fields(PtychoScan):
            if field.name not in ("data", "positions_m"):
                object.__setattr__(self, field.name, getattr(head, field.name))
        object.__setattr__(self, "frame_shape", frame_shape)
        object.__setattr__(self, "positions_m", pos)
        object.__setattr__(self, "_head", head)

    @property
    def n_frames(self) -> int:
        """Number of frames N (= positions)."""
        return int(self.positions_m.shape[0])

    @property
    def object_pixel_size_m(self) -> tuple[float, float] | None:
        """Object-plane pixel size (y, x) in m, as :attr:`PtychoScan.object_pixel_size_m`."""
        return self._head.object_pixel_size_m


class CXIWriter:
    """A CXI file being written, from :func:`cxi_writer`: scans and truth added one by one.

    Attributes:
        path: the destination file (it appears there when the ``with`` block ends).
        n_scans: scans written so far.
    """

    def __init__(self, f: h5py.File, path: str):
        self._f = f
        self.path = path
        self.n_scans = 0

    def add_scan(self, scan: PtychoScan | BlockScan) -> str:
        """Write ``scan`` as the next entry (a :class:`BlockScan` block by block).

        Returns:
            The entry's group name, ``"entry_k"``.

        Raises:
            TypeError: ``scan`` is neither a :class:`PtychoScan` nor a :class:`BlockScan`.
            ValueError: a block of a :class:`BlockScan` is invalid, or the blocks hold more
                or fewer frames than positions (the message names the entry).
        """
        if not isinstance(scan, PtychoScan | BlockScan):
            raise TypeError(
                f"{self.path}: scan {self.n_scans + 1} is a {type(scan).__name__}, expected "
                "PtychoScan or BlockScan"
            )
        name = f"entry_{self.n_scans + 1}"
        _write_entry(self._f.create_group(name), scan, f"{self.path}: {name}")
        self.n_scans += 1
        return name

    def add_truth(self, truth: Mapping[str, Any]) -> None:
        """Write ground-truth arrays under ``diffptycho_truth/`` (names may contain ``/``)."""
        if truth:
            group = self._f.require_group(TRUTH_GROUP)
            for name, value in truth.items():
                group[name] = np.asarray(value)

    def truth_dataset(self, name: str, shape: tuple[int, ...], dtype: Any) -> h5py.Dataset:
        """An empty truth dataset under ``diffptycho_truth/``, to be filled slice by slice.

        Stored as :meth:`add_truth` stores a whole array (contiguous), so that a truth larger
        than memory is written in pieces with the same result.

        Args:
            name: dataset name (may contain ``/``).
            shape: its shape.
            dtype: its dtype.
        """
        return self._f.require_group(TRUTH_GROUP).create_dataset(name, shape, dtype=dtype)


@contextlib.contextmanager
def cxi_writer(
    path: str | os.PathLike[str], attrs: Mapping[str, Any] | None = None
) -> Iterator[CXIWriter]:
    """Open a CXI file for writing scan by scan; it replaces ``path`` only once complete.

    :func:`write_cxi` in pieces: for files whose scans, or whose truth, are produced while the
    file is written (a simulation writing its noiseless frames as truth beside the counts).

    Args:
        path: destination file (conventionally ``*.cxi``); its directory must exist.
        attrs: optional attributes for the file root (str, numbers or arrays).

    Yields:
        The :class:`CXIWriter`.

    Raises:
        ValueError: the block wrote no scan (``path`` is then left untouched).

    Examples:
        >>> import os, tempfile
        >>> import numpy as np
        >>> path = os.path.join(tempfile.mkdtemp(), "scan.cxi")
        >>> with cxi_writer(path) as w:
        ...     expected = w.truth_dataset("expected", (4, 8, 8), np.float32)
        ...     def frames():
        ...         for k in range(2):
        ...             expected[2 * k : 2 * k + 2] = 1.5
        ...             yield np.full((2, 8, 8), 2.0)
        ...     w.add_scan(BlockScan(frames, (8, 8), np.zeros((4, 2)), energy_ev=710.2))
        'entry_1'
        >>> float(read_cxi_truth(path)["expected"].sum())
        384.0
    """
    path = os.fspath(path)
    with atomic_h5_file(path) as f:
        f["cxi_version"] = CXI_VERSION
        f.attrs["creator"] = f"diffptycho {__version__}"
        for key, value in (attrs or {}).items():
            f.attrs[key] = value
        writer = CXIWriter(f, path)
        yield writer
        if not writer.n_scans:
            raise ValueError(f"{path}: no scans to write; add at least one scan")


def write_cxi(
    path: str | os.PathLike[str],
    scans: Sequence[PtychoScan | BlockScan] | PtychoScan | BlockScan,
    truth: Mapping[str, Any] | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> None:
    """Write scans to a CXI file, one ``entry_k`` per scan, atomically.

    Args:
        path: destination file (conventionally ``*.cxi``); replaced only once complete.
        scans: the scans, written as ``entry_1``, ``entry_2``, … in order; a
            :class:`BlockScan`'s frames are written block by block as they arrive (the file
            is the one its frames as a :class:`PtychoScan` give).
        truth: optional ground truth (simulations), written under ``diffptycho_truth/``;
            names may contain ``/`` for nested groups. Never mixed with the measured data.
        attrs: optional attributes for the file root (str, numbers or arrays).

    Raises:
        TypeError: ``scans`` holds something other than :class:`PtychoScan` or
            :class:`BlockScan`, or a truth or attribute value cannot be stored in HDF5
            (``path`` is then left untouched).
        ValueError: a :class:`BlockScan`'s blocks are invalid or do not add up to its
            positions (``path`` is then left untouched).

    Examples:
        >>> import os, tempfile
        >>> import numpy as np
        >>> scan = PtychoScan(np.ones((2, 8, 8)), [[0.0, 0.0], [0.0, 1e-7]], energy_ev=710.2)
        >>> path = os.path.join(tempfile.mkdtemp(), "scan.cxi")
        >>> write_cxi(path, [scan])
        >>> read_cxi(path)[0].positions_m[1]
        array([0.e+00, 1.e-07])
    """
    if isinstance(scans, PtychoScan | BlockScan):
        scans = [scans]
    scans = list(scans)
    if not scans:
        raise ValueError(f"{os.fspath(path)}: no scans to write; pass at least one PtychoScan")
    for i, scan in enumerate(scans):
        if not isinstance(scan, PtychoScan | BlockScan):
            raise TypeError(
                f"scans[{i}] is a {type(scan).__name__}, expected PtychoScan or BlockScan"
            )

    with cxi_writer(path, attrs) as writer:
        for scan in scans:
            writer.add_scan(scan)
        writer.add_truth(truth or {})


def _write_frame_blocks(entry: h5py.Group, scan: BlockScan, where: str) -> None:
    """The frames of ``scan`` into ``entry``'s frames dataset, one block at a time."""
    n, (ny, nx) = scan.n_frames, scan.frame_shape
    ds = entry.create_dataset(
        DATA, (n, ny, nx), dtype=np.float32, chunks=(1, ny, nx) if n > 0 else None
    )
    done = 0
    for block in scan.frames() if callable(scan.frames) else scan.frames:
        block = np.asarray(block)
        count = block.shape[0] if block.ndim == 3 else 0
        if block.ndim != 3 or block.shape[1:] != (ny, nx):
            raise ValueError(
                f"{where}: frames block at frame {done} has shape {block.shape}, expected "
                f"(n, {ny}, {nx}); give blocks of whole frames"
            )
        if done + count > n:
            raise ValueError(
                f"{where}: the frames blocks hold more than the {n} frames of the positions; "
                "give one position per frame"
            )
        try:  # the checks and the float32 conversion of PtychoScan.data
            frames = PtychoScan(block, np.zeros((count, 2)), energy_ev=scan.energy_ev).data
        except _FieldError as err:
            raise ValueError(
                f"{where}: frames block at frame {done}: {err.problem}; {err.fix}"
            ) from None
        ds[done : done + count] = frames
        done += count
    if done != n:
        raise ValueError(
            f"{where}: the frames blocks hold {done} frames but there are {n} positions; "
            "give one position per frame"
        )


def _write_entry(entry: h5py.Group, scan: PtychoScan | BlockScan, where: str) -> None:
    def put(path: str, value: Any, units: str | None = None) -> None:
        entry[path] = value
        if units is not None:
            entry[path].attrs["units"] = units

    entry[TITLE] = scan.name
    # one frame per chunk: readers (the engines' minibatches, the joint fit, h5py slicing)
    # fetch frames without reading the whole scan
    if isinstance(scan, BlockScan):
        _write_frame_blocks(entry, scan, where)
    else:
        data = np.asarray(scan.data)
        chunks = (1, *data.shape[1:]) if data.ndim == 3 and data.shape[0] > 0 else None
        entry.create_dataset(DATA, data=data, chunks=chunks)
    entry[DATA].attrs["units"] = "counts"
    entry[DETECTOR_DATA] = h5py.SoftLink(entry[DATA].name)
    pixel_units = scan.object_pixel_size_m is None
    y, x = scan.positions_m.T
    put(TRANSLATION, np.stack([x, y, np.zeros_like(x)], axis=1), "pixel" if pixel_units else "m")
    if scan.angle_deg is not None:  # the same angle in the three places readers look
        put(ANGLE, scan.angle_deg, "degree")
        put(ROTATION_ANGLE, scan.angle_deg, "degree")
        put(ORIENTATION, orientation_from_angle(scan.angle_deg))
    put(ENERGY, ev_to_joule(scan.energy_ev), "J")
    if scan.distance_m is not None:
        put(DISTANCE, scan.distance_m, "m")
    if scan.pixel_size_m is not None:
        put(Y_PIXEL, scan.pixel_size_m[0], "m")
        put(X_PIXEL, scan.pixel_size_m[1], "m")
        put(BASIS, reference_basis(scan.pixel_size_m), "m")
    if scan.mask is not None:
        put(MASK, np.where(scan.mask, 0, CXI_MASK_INVALID).astype(np.uint32))
        entry[MASK].attrs["comment"] = "CXI convention: nonzero = bad pixel"
    if scan.illumination is not None:
        put(ILLUMINATION, scan.illumination)


def read_cxi(path: str | os.PathLike[str]) -> list[PtychoScan]:
    """Read every scan (``entry_k`` group) of a CXI file.

    Accepts files written by other programs: data at ``data_1/data`` or only at
    ``instrument_1/detector_1/data`` (soft links are followed), (N, 3) or (N, 2) translations
    in CXI (x, y[, z]) order, the tilt angle in any of the three places :func:`read_cxi_headers`
    lists, and missing optional fields (distance, pixel sizes, mask, illumination, angle,
    title).

    Args:
        path: the CXI file.

    Returns:
        One :class:`PtychoScan` per entry, ordered by entry number.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CXIFormatError: not HDF5, a required dataset is missing, or a value breaks the
            conventions; the message names the file, the dataset path and the fix.
    """
    path = os.fspath(path)
    with open_h5_readonly(path, CXIFormatError, "a CXI file") as f:
        return [_read_entry(path, f[key]) for key in _entry_names(path, f)]


def read_cxi_entry(path: str | os.PathLike[str], entry: str | int) -> PtychoScan:
    """Read one scan of a CXI file, leaving the other entries on disk.

    Args:
        path: the CXI file.
        entry: the entry group name (``"entry_3"``) or its number k (``3``).

    Returns:
        The :class:`PtychoScan` of that entry.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CXIFormatError: the entry does not exist (the message lists those that do) or breaks
            the conventions, as in :func:`read_cxi`.

    Examples:
        >>> import os, tempfile
        >>> import numpy as np
        >>> scans = [PtychoScan(np.ones((1, 4, 4)), [[0.0, 0.0]], energy_ev=700.0, angle_deg=a)
        ...          for a in (-30.0, 30.0)]
        >>> path = os.path.join(tempfile.mkdtemp(), "tilt.cxi")
        >>> write_cxi(path, scans)
        >>> read_cxi_entry(path, "entry_2").angle_deg
        30.0
    """
    path = os.fspath(path)
    with open_h5_readonly(path, CXIFormatError, "a CXI file") as f:
        return _read_entry(path, f[_entry_name(path, f, entry)])


def read_cxi_headers(path: str | os.PathLike[str]) -> list[ScanHeader]:
    """Read what describes each scan of a CXI file without loading frames, mask or probe.

    The tilt angle of each entry is read from the first of these that is present (inside
    ``entry_k/sample_1/``): ``geometry_1/angle_deg`` (diffptycho, degrees), ``rotation_angle``
    (NeXus; ``units`` degrees or radians, degrees when the attribute is absent) and
    ``geometry_1/orientation`` (CXI direction cosines, which must describe a rotation about
    y: see :func:`angle_from_orientation`). A scan with none of them has ``angle_deg=None``.

    Args:
        path: the CXI file.

    Returns:
        One :class:`ScanHeader` per entry, ordered by entry number.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CXIFormatError: as :func:`read_cxi`, except for checks of the frame values.

    Examples:
        >>> import os, tempfile
        >>> import numpy as np
        >>> scan = PtychoScan(np.ones((3, 8, 8)), np.zeros((3, 2)), energy_ev=708.2,
        ...                   angle_deg=12.5)
        >>> path = os.path.join(tempfile.mkdtemp(), "scan.cxi")
        >>> write_cxi(path, scan)
        >>> (header,) = read_cxi_headers(path)
        >>> header.n_frames, header.frame_shape, header.angle_deg, header.angle_source
        (3, (8, 8), 12.5, '/entry_1/sample_1/geometry_1/angle_deg')
    """
    path = os.fspath(path)
    with open_h5_readonly(path, CXIFormatError, "a CXI file") as f:
        return [_read_header(path, f[key]) for key in _entry_names(path, f)]


def read_cxi_header(path: str | os.PathLike[str], entry: str | int) -> ScanHeader:
    """Read the :class:`ScanHeader` of one entry (``"entry_3"`` or ``3``) without its frames.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CXIFormatError: no such entry (the message lists those that exist), or as
            :func:`read_cxi_headers`.
    """
    path = os.fspath(path)
    with open_h5_readonly(path, CXIFormatError, "a CXI file") as f:
        return _read_header(path, f[_entry_name(path, f, entry)])


def _entry_names(path: str, f: h5py.File) -> list[str]:
    names = sorted((int(m[1]), key) for key in f if (m := _ENTRY.match(key)))
    if not names:
        raise CXIFormatError(
            f"{path}: no 'entry_1' group (found {sorted(f)}); a CXI file holds each scan in "
            "a group entry_1, entry_2, …"
        )
    return [key for _, key in names]


def _entry_name(path: str, f: h5py.File, entry: str | int) -> str:
    name = f"entry_{entry}" if isinstance(entry, int | np.integer) else str(entry).strip("/")
    names = _entry_names(path, f)
    if name not in names:
        raise CXIFormatError(
            f"{path}: no group '/{name}'; the file holds {', '.join(names)} (pass one of them)"
        )
    return name


def read_cxi_truth(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read the ground truth stored by :func:`write_cxi` under ``diffptycho_truth/``.

    Args:
        path: the CXI file.

    Returns:
        ``{name: array}`` with nested names joined by ``/``; empty if the file has no truth.
    """
    with open_h5_readonly(path, CXIFormatError, "a CXI file") as f:
        group = f.get(TRUTH_GROUP)
        if group is None:
            return {}
        out: dict[str, np.ndarray] = {}

        def collect(name: str, obj: h5py.HLObject) -> None:
            if isinstance(obj, h5py.Dataset):
                out[name] = np.asarray(obj[()])

        group.visititems(collect)
        return out


def _fail(path: str, dataset: str, problem: str, fix: str) -> CXIFormatError:
    return CXIFormatError(f"{path}: dataset '{dataset}' {problem}; {fix}")


def _get(path: str, entry: h5py.Group, name: str) -> h5py.Dataset | None:
    """The dataset at ``entry/name`` (soft links followed) or None if absent."""
    obj = entry.get(name)
    if obj is None:
        link = entry.get(name, getlink=True)
        if isinstance(link, h5py.SoftLink | h5py.ExternalLink):
            raise _fail(
                path, f"{entry.name}/{name}", f"is a broken link ({link})", "fix the link target"
            )
        return None
    if not isinstance(obj, h5py.Dataset):
        raise _fail(path, obj.name, "is a group, expected a dataset", "store the array there")
    return obj


def _require(path: str, entry: h5py.Group, name: str, what: str) -> h5py.Dataset:
    ds = _get(path, entry, name)
    if ds is None:
        raise _fail(path, f"{entry.name}/{name}", "is missing", f"write {what} there")
    return ds


def _check_units(path: str, ds: h5py.Dataset, allowed: set[str], fix: str) -> str | None:
    units = ds.attrs.get("units")
    if units is None:
        return None
    units = units.decode() if isinstance(units, bytes) else str(units)
    if units.strip().lower() not in allowed:
        raise _fail(path, ds.name, f"has units {units!r}", fix)
    return units.strip().lower()


def _scalar(path: str, ds: h5py.Dataset) -> float:
    value = np.asarray(ds[()])
    if value.size != 1 or not np.issubdtype(value.dtype, np.number):
        raise _fail(path, ds.name, f"holds {value.shape} {value.dtype}", "store one number")
    return float(value.reshape(-1)[0])


def _data_dataset(path: str, entry: h5py.Group) -> h5py.Dataset:
    data_ds = _get(path, entry, DATA)
    if data_ds is None:
        data_ds = _get(path, entry, DETECTOR_DATA)
    if data_ds is None:
        raise _fail(
            path,
            f"{entry.name}/{DATA}",
            f"is missing (and so is {entry.name}/{DETECTOR_DATA})",
            "write the (N, ny, nx) diffraction frames in counts there",
        )
    if data_ds.ndim != 3:
        raise _fail(
            path,
            data_ds.name,
            f"has shape {data_ds.shape}, expected 3-D (N, ny, nx)",
            "store frames as (N, ny, nx); flatten grid scans to one frame axis",
        )
    return data_ds


def _translation(
    path: str, entry: h5py.Group, data_ds: h5py.Dataset
) -> tuple[np.ndarray, h5py.Dataset, str]:
    """Positions as (N, 2|3) rows (x, y[, z]) in m (or pixels), the dataset, and the unit kind.

    Read from ``sample_1/geometry_1/translation``; when that is absent, from the pair of 1-D
    datasets ``data_1/x`` and ``data_1/y`` (NXcxi_ptycho, as PtyPy's HDF5 loaders read the
    fast and slow scan axes), each in m or in the length unit its ``units`` attribute names.
    """
    n_frames = int(data_ds.shape[0])
    trans_ds = _get(path, entry, TRANSLATION)
    x_ds, y_ds = _get(path, entry, DATA_X), _get(path, entry, DATA_Y)
    if trans_ds is None and x_ds is not None and y_ds is not None:
        columns = []
        for ds in (x_ds, y_ds):
            values = np.asarray(ds[()], dtype=np.float64)
            if values.shape != (n_frames,):
                raise _fail(
                    path,
                    ds.name,
                    f"has shape {values.shape}, expected ({n_frames},), one value per frame of "
                    f"'{data_ds.name}'",
                    "store one position per frame (flatten grid scans in frame order)",
                )
            factor = length_factor(path, ds)
            columns.append(values * float(factor))
        trans = np.stack(columns, axis=1)
        if not np.all(np.isfinite(trans)):
            raise _fail(
                path, x_ds.name, "or its y partner contains NaN/inf", "store finite positions"
            )
        return trans, x_ds, "m"
    if trans_ds is None:
        raise _fail(
            path,
            f"{entry.name}/{TRANSLATION}",
            f"is missing (and so is the pair {entry.name}/{DATA_X}, {entry.name}/{DATA_Y})",
            "write the (N, 3) sample positions (x, y, z) in m there",
        )
    trans = np.asarray(trans_ds[()], dtype=np.float64)
    if trans.ndim != 2 or trans.shape[1] not in (2, 3):
        raise _fail(
            path,
            trans_ds.name,
            f"has shape {trans.shape}, expected (N, 3) or (N, 2)",
            "store one row (x, y, z) in m per frame",
        )
    if trans.shape[0] != n_frames:
        raise _fail(
            path,
            trans_ds.name,
            f"has {trans.shape[0]} positions but '{data_ds.name}' has {n_frames} frames",
            "store exactly one position per frame (drop the extra frames or positions)",
        )
    if not np.all(np.isfinite(trans)):
        raise _fail(path, trans_ds.name, "contains NaN/inf", "store finite positions")
    trans_factor = length_factor(path, trans_ds, extra=("pixel", "pixels"))
    if isinstance(trans_factor, str):
        return trans, trans_ds, "pixel"
    return trans * trans_factor, trans_ds, "m"


def _read_header(path: str, entry: h5py.Group) -> ScanHeader:
    """Everything of one entry but the frames, mask and probe arrays, validated."""
    data_ds = _data_dataset(path, entry)
    n_frames = int(data_ds.shape[0])

    trans, trans_ds, trans_units = _translation(path, entry, data_ds)

    energy_ds = _require(path, entry, ENERGY, "the photon energy in J")
    if _check_units(path, energy_ds, _JOULES | {"ev"}, "CXI stores joules") == "ev":
        raise _fail(
            path,
            energy_ds.name,
            "has units 'eV'",
            f"CXI stores joules: multiply by {EV_TO_J!r} and set units='J'",
        )
    energy_j = _scalar(path, energy_ds)
    if not (math.isfinite(energy_j) and energy_j > 0):
        raise _fail(path, energy_ds.name, f"is {energy_j!r}", "store a positive energy in J")
    if energy_j > MAX_ENERGY_J:
        kev = energy_j < 10.0  # below 10 eV no X-ray energy: a keV value
        raise _fail(
            path,
            energy_ds.name,
            f"is {energy_j!r}, which looks like {'keV' if kev else 'eV'}",
            f"CXI stores joules: multiply by {1000 * EV_TO_J if kev else EV_TO_J!r}",
        )

    geometry: dict[str, float | None] = {}
    for key, name in (("distance", DISTANCE), ("y_pixel", Y_PIXEL), ("x_pixel", X_PIXEL)):
        ds = _get(path, entry, name)
        value = None if ds is None else _scalar(path, ds) * float(length_factor(path, ds))
        if value is not None and not (math.isfinite(value) and value > 0):
            raise _fail(path, f"{entry.name}/{name}", f"is {value!r}", "store a length > 0 in m")
        geometry[key] = value
    orientation = read_orientation(path, entry, _get(path, entry, BASIS))
    if orientation.pixel_size_m is not None:
        _check_basis_pixels(path, entry, geometry, orientation.pixel_size_m)
        geometry["y_pixel"], geometry["x_pixel"] = orientation.pixel_size_m
    if (geometry["x_pixel"] is None) != (geometry["y_pixel"] is None):
        missing = X_PIXEL if geometry["x_pixel"] is None else Y_PIXEL
        raise _fail(
            path,
            f"{entry.name}/{missing}",
            "is missing while the other pixel size is present",
            "write both x_pixel_size and y_pixel_size in m (equal for square pixels)",
        )
    complete = geometry["distance"] is not None and geometry["x_pixel"] is not None
    if complete and trans_units == "pixel":
        raise _fail(
            path,
            trans_ds.name,
            "is in pixels although the detector geometry is given",
            "store translations in m (units='m')",
        )
    if not complete and trans_units != "pixel":
        raise _fail(
            path,
            trans_ds.name,
            "is in m but the detector distance or pixel size is missing, so positions cannot "
            "be related to object pixels",
            f"write {DISTANCE}, {X_PIXEL} and {Y_PIXEL} in m, or mark pixel-unit "
            "translations with units='pixel'",
        )

    pixel = None if geometry["y_pixel"] is None else (geometry["y_pixel"], geometry["x_pixel"])
    angle_deg, angle_source = read_angle(path, entry)
    if angle_deg is not None and abs(angle_deg) > 360.0:
        raise _fail(
            path,
            str(angle_source),
            f"is {angle_deg:g}°, beyond ±360°",
            "store the tilt angle in degrees within ±360° (check its units attribute)",
        )
    title_ds = _get(path, entry, TITLE)
    name = entry.name.lstrip("/")
    return ScanHeader(
        path=path,
        entry=name,
        title=name if title_ds is None else _string(title_ds),
        frames_dataset=data_ds.name,
        n_frames=n_frames,
        frame_shape=orientation.shape((int(data_ds.shape[1]), int(data_ds.shape[2]))),
        energy_ev=float(joule_to_ev(energy_j)),
        positions_m=trans[:, [1, 0]],  # CXI (x, y, z) → our (y, x)
        distance_m=geometry["distance"],
        pixel_size_m=pixel,
        angle_deg=angle_deg,
        angle_source=angle_source,
        has_mask=_get(path, entry, MASK) is not None,
        has_illumination=_get(path, entry, ILLUMINATION) is not None,
        frame_orientation=orientation.describe(),
    )


def _check_basis_pixels(
    path: str, entry: h5py.Group, geometry: dict[str, float | None], basis_yx: tuple[float, float]
) -> None:
    """Pixel sizes stored beside basis vectors must agree with the vectors' lengths."""
    stored = (geometry["y_pixel"], geometry["x_pixel"])
    if None in stored:
        return
    if not (
        np.allclose(stored, basis_yx, rtol=1e-3) or np.allclose(stored, basis_yx[::-1], rtol=1e-3)
    ):
        raise _fail(
            path,
            f"{entry.name}/{BASIS}",
            f"has pixel lengths (y, x) = {basis_yx} m but {Y_PIXEL} and {X_PIXEL} say {stored} m",
            "make the basis vectors' lengths equal the pixel sizes",
        )


def _read_entry(path: str, entry: h5py.Group) -> PtychoScan:
    header = _read_header(path, entry)
    orientation: FrameOrientation = read_orientation(path, entry, _get(path, entry, BASIS))
    mask_ds = _get(path, entry, MASK)
    probe_ds = _get(path, entry, ILLUMINATION)
    fields = {
        "data": header.frames_dataset,
        "positions_m": f"{entry.name}/{TRANSLATION}"
        if _get(path, entry, TRANSLATION) is not None
        else f"{entry.name}/{DATA_X}",
        "energy_ev": f"{entry.name}/{ENERGY}",
        "distance_m": f"{entry.name}/{DISTANCE}",
        "pixel_size_m": f"{entry.name}/{X_PIXEL}",
        "mask": f"{entry.name}/{MASK}",
        "illumination": f"{entry.name}/{ILLUMINATION}",
        "angle_deg": header.angle_source,
        "name": f"{entry.name}/{TITLE}",
    }
    try:
        scan = PtychoScan(
            data=orientation.apply(_data_dataset(path, entry)[()]),
            positions_m=header.positions_m,
            energy_ev=header.energy_ev,
            distance_m=header.distance_m,
            pixel_size_m=header.pixel_size_m,
            mask=None if mask_ds is None else orientation.apply(np.asarray(mask_ds[()]) == 0),
            illumination=None if probe_ds is None else orientation.apply(probe_ds[()]),
            angle_deg=header.angle_deg,
            name=header.title,
        )
    except _FieldError as err:
        raise _fail(path, fields[err.field], err.problem, err.fix) from None
    empty = np.flatnonzero(~np.any(scan.data.reshape(len(scan.data), -1), axis=1))
    if empty.size:
        shown = ", ".join(str(i) for i in empty[:8]) + (" …" if empty.size > 8 else "")
        raise _fail(
            path,
            header.frames_dataset,
            f"has {empty.size} all-zero frame(s) of {len(scan.data)} (index {shown})",
            "drop those frames and their positions (a closed shutter or a lost readout "
            "records no photons)",
        )
    return scan


def _string(ds: h5py.Dataset) -> str:
    value = ds[()]
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(-1)[0]
        return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)
    return str(value)
