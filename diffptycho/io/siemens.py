"""Reader of the measured Siemens-star ptychography test data (``siemens-star-small.npz.bz2``).

The file (Advanced Photon Source test data shipped with an open ptychography package) is a
bzip2-compressed NumPy ``.npz`` with

- ``data`` (1, 516, 128, 128) float32: diffraction intensities with the zero frequency at the
  array corner (unshifted FFT layout);
- ``scan`` (1, 516, 2) float32: positions (y, x) in object pixels of the patch corner;
- ``probe`` (1, 1, 1, 1, 128, 128) complex64: a starting probe, centred in its array.

No energy, distance or detector pixel size is stored, so the scan is returned in pixel units
(``object_pixel_size_m`` is None). Conversions at this boundary: frames are ``fftshift``-ed to
the package's centred layout, and positions are shifted by one integer vector so that their
bounding box is centred on (0, 0) (sub-pixel parts unchanged; patch corner and patch centre
differ by a constant, which only moves the object in its array).
"""

from __future__ import annotations

import bz2
import io
import os
import zipfile

import numpy as np

from diffptycho.io.scan import CXIFormatError, PtychoScan

__all__ = ["NOMINAL_ENERGY_EV", "SiemensStarFormatError", "read_siemens_star", "SIEMENS_STAR_FILE"]

SIEMENS_STAR_FILE = os.path.join("ptycho_siemens_star", "siemens-star-small.npz.bz2")
"""Path of the file relative to the shared data folder."""

NOMINAL_ENERGY_EV = 1000.0
"""Placeholder photon energy in eV: the file stores none. A pixel-unit far-field
reconstruction does not use it; do not convert anything to metres with it."""


class SiemensStarFormatError(CXIFormatError):
    """The file is not the expected bzip2-compressed npz with ``data``, ``scan``, ``probe``."""


def _fail(path: str, problem: str) -> SiemensStarFormatError:
    return SiemensStarFormatError(
        f"{path}: {problem}; expected a bzip2-compressed .npz with data (1, N, ny, nx), "
        "scan (1, N, 2) and probe (1, 1, 1, M, ny, nx)"
    )


def read_siemens_star(
    path: str | os.PathLike[str], energy_ev: float = NOMINAL_ENERGY_EV
) -> PtychoScan:
    """Read the Siemens-star test scan as a pixel-unit :class:`PtychoScan`.

    Args:
        path: the ``.npz.bz2`` file (or an uncompressed ``.npz`` with the same arrays).
        energy_ev: photon energy in eV to record (the file has none; see
            :data:`NOMINAL_ENERGY_EV`).

    Returns:
        The scan: ``data`` (N, ny, nx) centred frames in photon counts, ``positions_m``
        holding (y, x) in object pixels (pixel units: ``object_pixel_size_m`` is None) with
        the scan's bounding box centred on (0, 0), and ``illumination`` the starting probe
        (M, ny, nx).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        SiemensStarFormatError: not bzip2/npz, or arrays missing or of the wrong shape.

    Examples:
        >>> import os
        >>> path = os.path.join("..", "shared", "data", SIEMENS_STAR_FILE)
        >>> if os.path.exists(path):  # doctest: +SKIP
        ...     read_siemens_star(path).data.shape
        (516, 128, 128)
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file (the Siemens-star .npz.bz2)")
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:3] == b"BZh":
            raw = bz2.decompress(raw)
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise _fail(path, f"cannot be read ({type(err).__name__}: {err})") from None
    missing = [key for key in ("data", "scan", "probe") if key not in arrays]
    if missing:
        raise _fail(path, f"has no {missing} (found {sorted(arrays)})")
    data, scan, probe = arrays["data"], arrays["scan"], arrays["probe"]
    if data.ndim != 4 or data.shape[0] != 1:
        raise _fail(path, f"data has shape {data.shape}")
    if scan.shape != (1, data.shape[1], 2):
        raise _fail(path, f"scan has shape {scan.shape} for {data.shape[1]} frames")
    if probe.ndim != 6 or probe.shape[-2:] != data.shape[-2:]:
        raise _fail(path, f"probe has shape {probe.shape} for frames {data.shape[-2:]}")
    frames = np.fft.fftshift(data[0].astype(np.float32), axes=(-2, -1))
    pos = scan[0].astype(np.float64)
    pos = pos - np.round((pos.max(axis=0) + pos.min(axis=0)) / 2)
    modes = probe.reshape(-1, *probe.shape[-2:]).astype(np.complex64)
    return PtychoScan(
        data=frames,
        positions_m=pos,
        energy_ev=energy_ev,
        illumination=modes,
        name="siemens-star-small (APS; pixel units, energy not stored)",
    )
