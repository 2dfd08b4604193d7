"""Safe HDF5 file access: atomic writes and read-only opens with clear errors.

A write goes to a temporary file in the destination directory and is renamed over the
destination with :func:`os.replace` only after the file is complete and flushed to disk, so a
crash or an exception mid-write never leaves a half-written file or clobbers a good one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator

import h5py

__all__ = ["atomic_h5_file", "open_h5_readonly"]


def _fsync_path(path: str) -> None:
    """Flush a file (or a directory entry) to disk; best effort where unsupported."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if os.path.isdir(path) else os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except OSError:  # e.g. directories cannot be opened on Windows
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _default_file_mode() -> int:
    """Permission bits an ordinary ``open(path, "w")`` would give (0o666 minus the umask)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_h5_file(path: str | os.PathLike[str]) -> Iterator[h5py.File]:
    """Open a new HDF5 file for writing that appears at ``path`` only when complete.

    The file is written as a hidden temporary (``.<name>.<random>.tmp``) next to ``path``,
    flushed to disk and renamed over ``path`` when the ``with`` block exits normally. When the
    block raises, the temporary file is removed and an existing file at ``path`` is untouched.

    Args:
        path: destination file; its directory must exist.

    Yields:
        An :class:`h5py.File` open for writing.

    Raises:
        FileNotFoundError: the destination directory does not exist.

    Examples:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "out.h5")
        >>> with atomic_h5_file(path) as f:
        ...     f["x"] = 1.0
        >>> os.listdir(os.path.dirname(path))
        ['out.h5']
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"{path}: directory {directory!r} does not exist; create it before writing"
        )
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            yield f
        _fsync_path(tmp)
        os.chmod(tmp, _default_file_mode())  # mkstemp creates 0600 files
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    _fsync_path(directory)  # make the rename itself durable


def open_h5_readonly(path: str | os.PathLike[str], error: type[ValueError], what: str) -> h5py.File:
    """Open an existing HDF5 file for reading, with errors that name the file and the fix.

    Args:
        path: file to open.
        error: exception class raised when the file exists but is not readable HDF5.
        what: what the file should be, for messages (e.g. ``"a CXI file"``).

    Returns:
        The open :class:`h5py.File` (use it as a context manager).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        error: ``path`` is a directory or not an HDF5 file.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: file not found; check the path (expected {what})")
    if not os.path.isfile(path):
        raise error(f"{path}: is not a regular file (expected {what}); pass the file, not a folder")
    if not h5py.is_hdf5(path):
        raise error(
            f"{path}: not an HDF5 file (expected {what}); check that the path points to the "
            "HDF5/CXI file and that the file was copied completely"
        )
    try:
        return h5py.File(path, "r")
    except OSError as err:  # truncated or corrupted HDF5
        raise error(f"{path}: cannot be read as HDF5 ({err}); the file may be truncated") from err
