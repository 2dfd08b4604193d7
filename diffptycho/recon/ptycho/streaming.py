"""Diffraction frames streamed from HDF5: one minibatch in memory instead of the whole scan.

:class:`StreamedFrames` stands in for the ``(n, fy, fx)`` frames of a
:class:`~diffptycho.recon.ptycho.data.PtychoData`: it has their ``shape`` and ``dtype``, and
:meth:`StreamedFrames.take` fetches the frames of a minibatch's positions from the file when
the compiled step needs them (``jax.pure_callback``; the read is pure, so JAX may repeat it,
e.g. when a rematerialised loss is differentiated). No engine is restructured: they all fetch
frames through :meth:`PtychoData.take <diffptycho.recon.ptycho.data.PtychoData.take>`, and the
device holds one minibatch. What a start needs from all frames (mean frame, frame sums) comes
from one chunked host-side pass, :meth:`StreamedFrames.statistics`, which also checks the
counts as the in-memory reader does (finite, ≥ 0, no all-zero frame).

:func:`read_streamed_cxi_entry` reads one CXI scan this way: everything but the frames (as
:func:`~diffptycho.io.cxi.read_cxi_entry` reads them), the frames as :class:`StreamedFrames`.

Examples:
    >>> import os, tempfile
    >>> import numpy as np
    >>> from diffptycho.io.cxi import write_cxi
    >>> from diffptycho.io.scan import PtychoScan
    >>> frames = np.arange(4 * 8 * 8, dtype=np.float32).reshape(4, 8, 8) + 1
    >>> path = os.path.join(tempfile.mkdtemp(), "scan.cxi")
    >>> write_cxi(path, PtychoScan(frames, np.zeros((4, 2)), energy_ev=700.0))
    >>> scan = read_streamed_cxi_entry(path, 1)
    >>> scan.data.shape, bool(np.array_equal(scan.data.read([3, 0]), frames[[3, 0]]))
    ((4, 8, 8), True)
"""

from __future__ import annotations

import dataclasses
import functools
import os
import threading
from collections.abc import Iterator
from typing import Any

import h5py
import jax
import jax.numpy as jnp
import numpy as np

from diffptycho._typing import Array, Float, Int
from diffptycho.io.scan import ScanPixels

__all__ = [
    "FrameStatistics",
    "StreamedFrames",
    "StreamedScan",
    "frame_sums",
    "mean_frame",
    "read_streamed_cxi_entry",
]

CHUNK_BYTES = 64 * 2**20
"""Bytes of frames one step of a host-side pass (:meth:`StreamedFrames.chunks`) reads."""


@dataclasses.dataclass(frozen=True)
class FrameStatistics:
    """What the starting model needs from all frames, from one chunked pass.

    Attributes:
        mean: ``(fy, fx)`` float64 mean frame in photons (all pixels).
        sums: ``(n,)`` float64 photons per frame over the valid pixels of the mask given to
            :meth:`StreamedFrames.statistics` (all pixels without one).
    """

    mean: Float[np.ndarray, "fy fx"]
    sums: Float[np.ndarray, " n"]


class StreamedFrames:
    """``(n, fy, fx)`` frames of an HDF5 dataset, read a minibatch at a time.

    The file stays open (read only) until :meth:`close`; reads are serialised by a lock, so
    the callbacks of several devices may call :meth:`read` at once. Frames come back as
    float32 photon counts in the reference orientation (``orientation`` applied, as
    :func:`~diffptycho.io.cxi.read_cxi_entry` does). Equality and hashing are by identity:
    a compiled engine step is reused for the same object, never for another file.

    Converting the whole object to an array (``np.asarray``) raises: that would load every
    frame, which is what streaming avoids. Use :meth:`read`, :meth:`chunks` or
    :meth:`statistics`.

    Args:
        path: the HDF5 (e.g. CXI) file.
        dataset: path of the ``(n, ny, nx)`` frames inside it (e.g. ``/entry_1/data_1/data``).
        orientation: a :class:`~diffptycho.io._cxi_detector.FrameOrientation` (transpose,
            flips) taking the stored frames into the reference orientation, or None.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: not an HDF5 file, no dataset at ``dataset``, or it is not 3-D real numbers
            (the message names the file and the dataset).
    """

    def __init__(self, path: str | os.PathLike[str], dataset: str, orientation: Any = None):
        from diffptycho.io._atomic import open_h5_readonly
        from diffptycho.io.scan import CXIFormatError

        self.path = os.fspath(path)
        self.dataset = str(dataset)
        self.orientation = orientation
        self._lock = threading.Lock()
        self._file: h5py.File | None = None
        self._pid = -1
        self._cache: dict[bytes | None, FrameStatistics] = {}
        with open_h5_readonly(self.path, CXIFormatError, "an HDF5 file of frames") as f:
            obj = f.get(self.dataset)
            if not isinstance(obj, h5py.Dataset):
                found = "nothing" if obj is None else "a group"
                raise ValueError(
                    f"{self.path}: dataset '{self.dataset}' not found ({found} there); pass the "
                    "path of the (n, ny, nx) frames inside the file, e.g. /entry_1/data_1/data"
                )
            stored, kind = tuple(int(s) for s in obj.shape), obj.dtype
            self.stored_dtype = np.dtype(kind)
        if len(stored) != 3:
            raise ValueError(
                f"{self.path}: dataset '{self.dataset}' has shape {stored}, expected 3-D "
                "(n, ny, nx) frames; flatten grid scans to one frame axis"
            )
        if not (np.issubdtype(kind, np.integer) or np.issubdtype(kind, np.floating)):
            raise ValueError(
                f"{self.path}: dataset '{self.dataset}' has dtype {kind}, expected real-valued "
                "photon counts (integers or floats)"
            )
        frame = stored[1:] if orientation is None else orientation.shape(stored[1:])
        self.shape: tuple[int, int, int] = (stored[0], *frame)
        self.dtype = np.dtype(np.float32)

    # --- array-like description ----------------------------------------------------------
    @property
    def ndim(self) -> int:
        """3: ``(n, fy, fx)``."""
        return 3

    @property
    def nbytes(self) -> int:
        """Bytes the frames would take in memory as float32."""
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"StreamedFrames({self.path!r}, {self.dataset!r}, shape={self.shape})"

    def __array__(self, dtype=None, copy=None):
        raise TypeError(
            f"{self!r}: converting streamed frames to one array would load all "
            f"{self.shape[0]} frames ({self.nbytes / 2**20:.0f} MiB); use .read(idx), "
            ".chunks() or .statistics() (or read the scan into memory instead of streaming)"
        )

    # --- host-side reads -----------------------------------------------------------------
    def _dataset(self) -> h5py.Dataset:
        if self._file is None or self._pid != os.getpid():  # (re)open in a forked child too
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._file[self.dataset]

    def close(self) -> None:
        """Close the file (it is reopened by the next read)."""
        with self._lock:
            if self._file is not None and self._pid == os.getpid():
                self._file.close()
            self._file = None

    def __enter__(self) -> StreamedFrames:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def read(self, idx) -> Float[np.ndarray, "*b fy fx"]:
        """Frames of the positions ``idx`` (any shape of integers), as float32 counts.

        The distinct indices are read in ascending order, runs of consecutive frames as one
        slice each (h5py's fancy reads need increasing indices), then put in ``idx``'s order.

        Raises:
            IndexError: an index outside ``[0, n)`` (named, with the file and dataset).
        """
        idx = np.asarray(idx, dtype=np.int64)
        flat = idx.reshape(-1)
        n = self.shape[0]
        if flat.size and (flat.min() < 0 or flat.max() >= n):
            bad = flat[(flat < 0) | (flat >= n)][0]
            raise IndexError(
                f"{self.path}: frame {int(bad)} of dataset '{self.dataset}' does not exist "
                f"(it holds {n} frames)"
            )
        unique, inverse = np.unique(flat, return_inverse=True)
        out = np.empty((unique.size, *self._stored_frame()), self.dtype)
        if unique.size:
            with self._lock:
                ds = self._dataset()
                if self._raw_chunks:
                    self._read_chunks(ds, unique, out)
                else:
                    self._read_runs(ds, unique, out)
        if self.orientation is not None:
            out = self.orientation.apply(out)
        if unique.size != flat.size or np.any(unique != flat):
            out = out[inverse]
        return out.reshape(*idx.shape, *self.shape[1:])

    @staticmethod
    def _read_runs(ds: h5py.Dataset, unique: np.ndarray, out: np.ndarray) -> None:
        """Sorted distinct frames, each run of consecutive ones as one slice."""
        breaks = np.flatnonzero(np.diff(unique) != 1) + 1
        starts = np.concatenate([[0], breaks])
        stops = np.concatenate([breaks, [unique.size]])
        for a, b in zip(starts, stops, strict=True):
            lo = int(unique[a])
            out[a:b] = ds[lo : lo + (b - a)]

    def _read_chunks(self, ds: h5py.Dataset, unique: np.ndarray, out: np.ndarray) -> None:
        """Sorted distinct frames of one unfiltered chunk each, as raw chunk bytes.

        :func:`~diffptycho.io.cxi.write_cxi` writes frames so; skipping h5py's selection
        machinery reads them ≈ 30 % faster.
        """
        kind, frame = ds.dtype, out.shape[1:]
        for j, i in enumerate(unique):
            try:
                _, raw = ds.id.read_direct_chunk((int(i), 0, 0))
            except (KeyError, OSError, RuntimeError, ValueError):  # never written: fill value
                out[j] = ds[int(i)]
                continue
            out[j] = np.frombuffer(raw, kind).reshape(frame)

    @functools.cached_property
    def _raw_chunks(self) -> bool:
        """The frames' chunks are single unfiltered native-endian frames (read them raw)."""
        with h5py.File(self.path, "r") as f:
            ds = f[self.dataset]
            return (
                ds.chunks == (1, *ds.shape[1:])
                and ds.id.get_create_plist().get_nfilters() == 0
                and ds.dtype.isnative
            )

    def _stored_frame(self) -> tuple[int, int]:
        fy, fx = self.shape[1:]
        return (fx, fy) if self.orientation is not None and self.orientation.transpose else (fy, fx)

    def chunks(self, frames: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """``(start, block)`` pairs covering all frames in order, ``frames`` per block.

        Args:
            frames: frames per block; default: as many as fit in :data:`CHUNK_BYTES`.
        """
        per_frame = max(int(np.prod(self.shape[1:])) * self.dtype.itemsize, 1)
        step = max(1, CHUNK_BYTES // per_frame) if frames is None else int(frames)
        for start in range(0, self.shape[0], step):
            yield start, self.read(np.arange(start, min(start + step, self.shape[0])))

    def statistics(self, mask: np.ndarray | None = None) -> FrameStatistics:
        """Mean frame and per-frame sums from one chunked pass (cached per mask).

        The pass also checks the counts as :func:`~diffptycho.io.cxi.read_cxi_entry` does.

        Args:
            mask: ``(fy, fx)`` valid pixels (True) for the sums, or None for all pixels.

        Raises:
            ValueError: NaN/inf or negative counts, or all-zero frames (the message names
                the file, the dataset and the first bad frames).
        """
        valid = None if mask is None else np.asarray(mask, bool)
        if valid is not None and valid.shape != self.shape[1:]:
            raise ValueError(
                f"mask: shape {valid.shape} does not match the frames {self.shape[1:]} of "
                f"{self.path}:{self.dataset}"
            )
        key = None if valid is None else valid.tobytes()
        if key in self._cache:
            return self._cache[key]
        total = np.zeros(self.shape[1:], np.float64)
        sums = np.zeros(self.shape[0], np.float64)
        for start, block in self.chunks():
            block = block.astype(np.float64)
            self._check(start, block)
            total += block.sum(axis=0)
            counted = block if valid is None else np.where(valid, block, 0.0)
            sums[start : start + len(block)] = counted.reshape(len(block), -1).sum(axis=1)
        stats = FrameStatistics(total / max(self.shape[0], 1), sums)
        self._cache[key] = stats
        return stats

    def _check(self, start: int, block: np.ndarray) -> None:
        def fail(problem: str, rows: np.ndarray, fix: str) -> ValueError:
            shown = ", ".join(str(start + int(i)) for i in rows[:8])
            return ValueError(
                f"{self.path}: dataset '{self.dataset}' {problem} (frame {shown}"
                f"{' …' if rows.size > 8 else ''}); {fix}"
            )

        flat = block.reshape(len(block), -1)
        bad = np.flatnonzero(~np.all(np.isfinite(flat), axis=1))
        if bad.size:
            raise fail("contains NaN/inf counts", bad, "replace them and mask those pixels")
        bad = np.flatnonzero(np.any(flat < 0, axis=1))
        if bad.size:
            raise fail("contains negative counts", bad, "store raw photon counts ≥ 0")
        bad = np.flatnonzero(~np.any(flat, axis=1))
        if bad.size:
            raise fail(
                "has all-zero frames",
                bad,
                "drop those frames and their positions (a closed shutter or a lost readout "
                "records no photons)",
            )

    # --- device side ---------------------------------------------------------------------
    def take(self, idx: Int[Array, "*b"]) -> Float[Array, "*b fy fx"]:
        """The frames of ``idx`` fetched from the file inside a traced computation.

        A ``jax.pure_callback``: under ``jit``, ``lax.scan`` and ``shard_map`` (each device
        reads its own share) and ``vmap`` (the batch axes are passed through).
        """
        shape = jax.ShapeDtypeStruct((*idx.shape, *self.shape[1:]), self.dtype)
        return jax.pure_callback(self.read, shape, idx, vmap_method="expand_dims")


@dataclasses.dataclass(frozen=True, eq=False)
class StreamedScan(ScanPixels):
    """A CXI scan whose frames stay in the file: ``data`` is a :class:`StreamedFrames`.

    The other fields are those of :class:`~diffptycho.io.scan.PtychoScan`, read and checked
    the same way.

    Everything that takes a scan here (``scan_geometry``, ``far_field_warnings``,
    ``starting_model``, the CLI's results writer) takes this as well.
    """

    data: StreamedFrames
    positions_m: Float[np.ndarray, "n 2"]
    energy_ev: float
    distance_m: float | None = None
    pixel_size_m: tuple[float, float] | None = None
    mask: np.ndarray | None = None
    illumination: np.ndarray | None = None
    angle_deg: float | None = None
    name: str = ""


def read_streamed_cxi_entry(path: str | os.PathLike[str], entry: str | int) -> StreamedScan:
    """One scan of a CXI file with its frames left in the file (:class:`StreamedFrames`).

    The header, mask and illumination are read and checked as by
    :func:`~diffptycho.io.cxi.read_cxi_entry`; the frame values are checked by the first
    :meth:`StreamedFrames.statistics` pass (the starting model makes one).

    Args:
        path: the CXI file.
        entry: the entry group name (``"entry_3"``) or its number k (``3``).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CXIFormatError: as :func:`~diffptycho.io.cxi.read_cxi_header`, or a mask or
            illumination whose shape does not match the frames (named).
    """
    from diffptycho.io import cxi
    from diffptycho.io._atomic import open_h5_readonly
    from diffptycho.io._cxi_detector import BASIS, read_orientation
    from diffptycho.io.scan import CXIFormatError

    path = os.fspath(path)
    header = cxi.read_cxi_header(path, entry)
    with open_h5_readonly(path, CXIFormatError, "a CXI file") as f:
        group = f[header.entry]
        basis = group.get(BASIS)
        basis = basis if isinstance(basis, h5py.Dataset) else None
        orientation = read_orientation(path, group, basis)
        mask = _optional(path, group, cxi.MASK)
        probe = _optional(path, group, cxi.ILLUMINATION)
    frame = tuple(header.frame_shape)
    if mask is not None:
        mask = orientation.apply(np.asarray(mask) == 0)
        if mask.shape != frame:
            raise CXIFormatError(
                f"{path}: dataset '/{header.entry}/{cxi.MASK}' has shape {mask.shape}, expected "
                f"{frame} like the frames; store one (ny, nx) mask (nonzero = bad pixel)"
            )
    if probe is not None:
        probe = orientation.apply(probe)
        if probe.shape[-2:] != frame or probe.ndim not in (2, 3):
            raise CXIFormatError(
                f"{path}: dataset '/{header.entry}/{cxi.ILLUMINATION}' has shape {probe.shape}, "
                f"expected (ny, nx) or (M, ny, nx) with (ny, nx) = {frame}"
            )
    turn = None if orientation.identity else orientation
    frames = StreamedFrames(path, header.frames_dataset, turn)
    return StreamedScan(
        data=frames,
        positions_m=header.positions_m,
        energy_ev=header.energy_ev,
        distance_m=header.distance_m,
        pixel_size_m=header.pixel_size_m,
        mask=mask,
        illumination=probe,
        angle_deg=header.angle_deg,
        name=header.title,
    )


def _optional(path: str, group: h5py.Group, name: str) -> np.ndarray | None:
    obj = group.get(name)
    if obj is None:
        return None
    if not isinstance(obj, h5py.Dataset):
        from diffptycho.io.scan import CXIFormatError

        raise CXIFormatError(
            f"{path}: '{group.name}/{name}' is a group, expected a dataset; store the array there"
        )
    return np.asarray(obj[()])


def mean_frame(frames, mask: np.ndarray | None = None) -> Float[np.ndarray, "fy fx"]:
    """``(fy, fx)`` float64 mean of ``(n, fy, fx)`` frames, in memory or streamed.

    ``mask`` only selects which cached :meth:`StreamedFrames.statistics` pass to reuse (the
    mean covers all pixels), so a start that also needs :func:`frame_sums` reads once.
    """
    if isinstance(frames, StreamedFrames):
        return frames.statistics(mask).mean
    return np.mean(np.asarray(frames, dtype=np.float64), axis=0)


def frame_sums(frames, mask: np.ndarray | None = None) -> Float[np.ndarray, " n"]:
    """``(n,)`` float64 photons per frame over the valid pixels, in memory or streamed."""
    if isinstance(frames, StreamedFrames):
        return frames.statistics(mask).sums
    f = np.asarray(frames, dtype=np.float64)
    if mask is not None:
        f = np.where(np.asarray(mask), f, 0.0)
    return f.reshape(f.shape[0], -1).sum(axis=1)


def _fetch(frames, idx: Int[Array, "*b"]) -> Float[Array, "*b fy fx"]:
    """``frames[idx]`` for an array or :class:`StreamedFrames` (used by ``PtychoData.take``)."""
    if isinstance(frames, StreamedFrames):
        return frames.take(idx)
    return jnp.asarray(frames)[idx]
