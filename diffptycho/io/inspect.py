"""What is in a file: a summary of any input or result file diffptycho reads or writes.

:func:`describe_dict` recognises the file and returns plain Python (str, numbers, lists,
dicts); :func:`describe` formats it as indented text (``diffptycho inspect FILE``). Known kinds:

- ``cxi``: ptychography scans (``entry_k`` groups) — energies, angles and where each was read,
  positions, detector, mask, probe, what is missing, and whether it is a tilt series;
- ``results`` / ``checkpoint``: files written by :mod:`diffptycho.io.results`;
- ``projections``: ``projections`` (angle, y, x) + ``angles_deg``;
- ``dxchange``: Data Exchange tomography (``exchange/data``);
- ``spectral stack``: HDF5 ``od`` or ``mu_t`` (energy, y, x) + ``energies_ev``;
- ``stxm``: an ALS STXM ``.hdr`` image stack.

Only metadata and small arrays are read, never frames or volumes.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import h5py
import numpy as np

from diffptycho.io.cxi import read_cxi_header
from diffptycho.io.scan import CXIFormatError, ScanHeader
from diffptycho.io.stxm import STXMFormatError, read_hdr
from diffptycho.io.tiltseries import read_tilt_series

__all__ = ["UnknownFileError", "describe", "describe_dict"]

MAX_ITEMS = 24
"""Longest list printed in full; longer ones are cut with a count of the rest."""

_ENTRY = re.compile(r"^entry_(\d+)$")
_EXPECTED = (
    "expected a CXI file (entry_1/… groups), a diffptycho results or checkpoint file (root "
    "attribute diffptycho_format), a projections file (projections + angles_deg), a Data "
    "Exchange file (exchange/data), a spectral stack (od or mu_t + energies_ev) or a STXM .hdr"
)


class UnknownFileError(ValueError):
    """The file is none of the kinds diffptycho reads or writes."""


def describe(path: str | os.PathLike[str]) -> str:
    """A human-readable summary of a file (see the module docstring for the kinds).

    Args:
        path: the file.

    Returns:
        Indented text, first line ``<path>: <kind>``.

    Raises:
        FileNotFoundError: no such file.
        UnknownFileError: not a kind diffptycho reads or writes (the message lists them).

    Examples:
        >>> import os, tempfile
        >>> import numpy as np
        >>> from diffptycho.io.dxchange import write_projections
        >>> path = os.path.join(tempfile.mkdtemp(), "proj.h5")
        >>> write_projections(path, np.zeros((3, 4, 5)), [-60.0, 0.0, 60.0])
        >>> print(describe(path).splitlines()[1])
          projections: (3, 4, 5) float64 (angle, y, x)
    """
    info = describe_dict(path)
    lines = [f"{info.pop('path')}: {info.pop('kind')}"]
    _format(info, lines, indent=1)
    return "\n".join(lines)


def describe_dict(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The summary of :func:`describe` as a dict with ``path``, ``kind`` and ``commands`` keys."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: file not found ({_EXPECTED})")
    if not os.path.isfile(path):
        raise UnknownFileError(f"{path}: is a directory; {_EXPECTED}")
    if path.lower().endswith(".hdr"):
        return _stxm(path)
    if not h5py.is_hdf5(path):
        raise UnknownFileError(f"{path}: neither HDF5 nor a STXM .hdr; {_EXPECTED}")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise UnknownFileError(f"{path}: cannot be read as HDF5 ({err})") from err
    with f:
        fmt = _text(f.attrs.get("diffptycho_format"))
        if fmt == "diffptycho-results":
            return _results(path, f)
        if fmt == "diffptycho-checkpoint":
            return _checkpoint(path, f)
        if any(_ENTRY.match(key) for key in f):
            return _cxi(path, f)
        if "projections" in f and "angles_deg" in f:
            return _projections(path, f)
        if "exchange/data" in f:
            return _dxchange(path, f)
        if ("od" in f or "mu_t" in f) and "energies_ev" in f:
            return _stack(path, f)
        found = ", ".join(sorted(f)) or "nothing"
    raise UnknownFileError(f"{path}: HDF5 whose top level holds {found}; {_EXPECTED}")


# ----------------------------------------------------------------------------- CXI


def _cxi(path: str, f: h5py.File) -> dict[str, Any]:
    numbered = sorted((int(m[1]), key) for key in f if (m := _ENTRY.match(key)))
    names = [key for _, key in numbered]
    headers: list[ScanHeader] = []
    problems = []
    for name in names:
        try:
            headers.append(read_cxi_header(path, name))
        except CXIFormatError as err:
            problems.append(str(err).removeprefix(f"{path}: "))
    info: dict[str, Any] = {"path": path, "kind": f"CXI, {len(names)} scan(s)"}
    info["cxi_version"] = _text(f["cxi_version"][()]) if "cxi_version" in f else "missing"
    if "creator" in f.attrs:
        info["creator"] = _text(f.attrs["creator"])
    if problems:
        info["unreadable entries"] = problems
    if headers:
        info.update(_cxi_scans(headers))
    info["ground truth (diffptycho_truth/)"] = "present" if "diffptycho_truth" in f else "none"
    info["commands"] = _cxi_commands(path, headers, problems)
    return info


def _cxi_scans(headers: list[ScanHeader]) -> dict[str, Any]:
    energies = sorted({round(h.energy_ev, 2) for h in headers})
    known = [h for h in headers if h.angle_deg is not None]
    angles = [h.angle_deg for h in known]
    sources: dict[str, int] = {}
    for h in known:
        where = (h.angle_source or "").split("/", 2)[-1]
        sources[where] = sources.get(where, 0) + 1
    positions_px = np.concatenate([h.positions_px for h in headers])
    out: dict[str, Any] = {
        "energies_ev": energies,
        "angles": {
            "range_deg": [min(angles), max(angles)] if angles else "none in the file",
            "distinct": len({round(a, 2) for a in angles}),
            "read from": {k: f"{v} scan(s)" for k, v in sources.items()}
            or "nowhere (no angle_deg, rotation_angle or orientation)",
        },
        "scans": [_scan_line(h) for h in headers],
        "positions extent_px": _extent(positions_px),
    }
    if all(h.object_pixel_size_m is not None for h in headers):
        out["positions extent_m"] = _extent(np.concatenate([h.positions_m for h in headers]))
    first = headers[0]
    out["detector"] = {
        "frame shape (ny, nx)": sorted({h.frame_shape for h in headers}),
        "distance_m": _distinct([h.distance_m for h in headers]),
        "pixel size_m (y, x)": _distinct([h.pixel_size_m for h in headers]),
        "object pixel at first energy_nm (y, x)": "unknown (pixel-unit data)"
        if first.object_pixel_size_m is None
        else [round(p * 1e9, 3) for p in first.object_pixel_size_m],
        "mask": f"{sum(h.has_mask for h in headers)} of {len(headers)} scans",
        "frame orientation": _distinct([h.frame_orientation for h in headers]),
    }
    out["illumination (probe)"] = f"{sum(h.has_illumination for h in headers)} of {len(headers)}"
    missing = []
    if len(known) < len(headers):
        missing.append(f"tilt angle in {len(headers) - len(known)} scan(s)")
    if any(h.object_pixel_size_m is None for h in headers):
        missing.append("detector distance/pixel size (positions are in object pixels)")
    if not all(h.has_mask for h in headers):
        missing.append("detector mask (all pixels taken as valid)")
    if not all(h.has_illumination for h in headers):
        missing.append("illumination (the probe is guessed from the mean diffraction pattern)")
    out["missing"] = missing or "nothing"
    return out


def _scan_line(h: ScanHeader) -> str:
    angle = "no angle"
    if h.angle_deg is not None:
        angle = f"{h.angle_deg:+.3f}° ({(h.angle_source or '').split('/', 2)[-1]})"
    ny, nx = h.frame_shape
    title = "" if h.title in ("", h.entry) else f" '{h.title}'"
    return f"{h.entry}{title}: {h.energy_ev:.2f} eV, {angle}, {h.n_frames} frames of {ny}×{nx}"


def _cxi_commands(path: str, headers: list[ScanHeader], problems: list[str]) -> dict[str, str]:
    if not headers:
        return {"none": "no entry can be read"}
    commands = {"ptycho": f"yes, one scan at a time (--entry 1 … {len(headers)})"}
    if problems:
        commands["spectrotomo"] = "no: some entries cannot be read"
        return commands
    try:
        series = read_tilt_series(path)
    except CXIFormatError as err:
        commands["spectrotomo"] = f"no: {str(err).removeprefix(f'{path}: ')}"
        return commands
    n_e, n_a = series.shape
    if n_a < 2:
        commands["spectrotomo"] = f"no: one angle only ({n_e} energies × 1 angle)"
    else:
        commands["spectrotomo"] = f"yes, {n_e} energies × {n_a} angles"
    return commands


# ----------------------------------------------------------------------------- results


def _results(path: str, f: h5py.File) -> dict[str, Any]:
    prov = f.get("provenance")
    info: dict[str, Any] = {
        "path": path,
        "kind": "diffptycho results",
        "format_version": _text(f.attrs.get("format_version")),
        "datasets": _datasets(f, skip=("provenance", "history", "stages")),
    }
    if "history" in f:
        traces: dict[str, str] = {}

        def trace(name: str, ds: Any) -> None:  # nested per stage: history/<stage>/<name>
            if isinstance(ds, h5py.Dataset):
                last = _short(ds[()].reshape(-1)[-1]) if ds.size else None
                traces[name] = f"{ds.size} values, last {last}" if ds.size else "empty"

        f["history"].visititems(trace)
        info["history"] = traces
    if isinstance(f.get("stages"), h5py.Group):
        info["stages"] = {
            name: _datasets(group) if isinstance(group, h5py.Group) else _shape(group)
            for name, group in f["stages"].items()
        }
    if isinstance(prov, h5py.Group):
        meta = {
            k: _text(prov.attrs[k]) for k in ("diffptycho_version", "created") if k in prov.attrs
        }
        if "command_line" in prov.attrs:
            meta["command line"] = " ".join(json.loads(_text(prov.attrs["command_line"])))
        if "config" in prov:
            meta["config"] = _config(json.loads(_text(prov["config"][()])))
        if "timings" in prov:
            meta["timings_s"] = {k: round(float(v[()]), 3) for k, v in prov["timings"].items()}
        info["provenance"] = meta
    else:
        info["provenance"] = "missing"
    info["commands"] = {"none": "a results file; read it with diffptycho.io.read_results"}
    return info


def _checkpoint(path: str, f: h5py.File) -> dict[str, Any]:
    arrays = f.get("arrays")
    keys = {}
    if isinstance(arrays, h5py.Group):
        for name in sorted(arrays):
            ds = arrays[name]
            keys[_text(ds.attrs.get("key", name))] = f"{ds.shape} {_text(ds.attrs.get('dtype'))}"
    meta = _text(f.attrs.get("meta", "{}"))
    return {
        "path": path,
        "kind": "diffptycho checkpoint",
        "step (completed iterations)": _text(f.attrs.get("step", "missing")),
        "written by": f"diffptycho {_text(f.attrs.get('diffptycho_version', '?'))}, "
        f"{_text(f.attrs.get('created', '?'))}",
        "meta": _config(json.loads(meta)) if meta else {},
        "arrays": _cut_dict(keys),
        "commands": {"resume": "the run that wrote it (diffptycho.io.load_checkpoint)"},
    }


def _config(config: Any) -> Any:
    """Top-level config: scalars as they are, containers by their size."""
    if not isinstance(config, dict):
        return _short(config)
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out[key] = f"{{{len(value)} keys: {', '.join(list(value)[:8])}}}"
        elif isinstance(value, list) and len(value) > 8:
            out[key] = f"[{len(value)} values]"
        else:
            out[key] = _short(value)
    return _cut_dict(out)


# ----------------------------------------------------------------------------- tomography, spectra


def _projections(path: str, f: h5py.File) -> dict[str, Any]:
    proj, angles = f["projections"], np.asarray(f["angles_deg"][()], dtype=float).reshape(-1)
    voxel = f.get("voxel_size_m")
    info: dict[str, Any] = {
        "path": path,
        "kind": "projections",
        "projections": f"{proj.shape} {proj.dtype} (angle, y, x)",
        "angles_deg": f"{angles.size} from {angles.min():.3f} to {angles.max():.3f}"
        if angles.size
        else "none",
        "voxel size_m": "not stored" if voxel is None else _short(voxel[()]),
    }
    ok = proj.ndim == 3 and angles.size == proj.shape[0]
    if not ok:
        info["problem"] = f"{angles.size} angles for projections of shape {proj.shape}"
    verdict = "yes" if ok else "no: one angle per projection is needed"
    info["commands"] = {"tomo": verdict, "align": verdict}
    return info


def _dxchange(path: str, f: h5py.File) -> dict[str, Any]:
    theta = f.get("exchange/theta")
    info: dict[str, Any] = {
        "path": path,
        "kind": "Data Exchange (tomography)",
        "data": f"{_shape(f['exchange/data'])} (angle, y, x) counts",
        "data_white (flat)": _shape(f.get("exchange/data_white")),
        "data_dark": _shape(f.get("exchange/data_dark")),
    }
    if isinstance(theta, h5py.Dataset):
        values = np.asarray(theta[()], dtype=float).reshape(-1)
        units = _text(theta.attrs.get("units", "degrees (no units attribute)"))
        info["theta"] = (
            f"{values.size} angles from {values.min():.3f} to {values.max():.3f} {units}"
        )
    else:
        info["theta"] = "missing (pass the angles yourself)"
    ok = "exchange/data_white" in f and theta is not None
    info["commands"] = {
        "tomo": "yes (flat/dark corrected and −ln'd on reading)"
        if ok
        else "no: exchange/data_white and exchange/theta are needed"
    }
    return info


def _stack(path: str, f: h5py.File) -> dict[str, Any]:
    name = "od" if "od" in f else "mu_t"
    ds, energies = f[name], np.asarray(f["energies_ev"][()], dtype=float).reshape(-1)
    info: dict[str, Any] = {
        "path": path,
        "kind": "spectral stack",
        name: f"{ds.shape} {ds.dtype} (energy, y, x)",
        "energies_ev": f"{energies.size} from {energies.min():.2f} to {energies.max():.2f}",
        "phase": _shape(f.get("phase")),
    }
    info["commands"] = {"chem lcf": "yes", "chem xanes-fit": "yes"}
    if name == "od" and ds.shape[:1] == (2,):
        info["commands"]["chem two-energy"] = "yes"
    return info


def _stxm(path: str) -> dict[str, Any]:
    try:
        meta = read_hdr(path)
    except STXMFormatError as err:
        raise UnknownFileError(f"{err}; a .hdr must be an ALS STXM scan definition") from None
    energies, x_um, y_um = (np.asarray(meta[k]) for k in ("energies_ev", "x_um", "y_um"))
    stem = path[:-4]
    absent = [k for k in range(energies.size) if not os.path.isfile(f"{stem}_a{k:03d}.xim")]
    step = [
        float(f"{abs(v[-1] - v[0]) / (v.size - 1) * 1e3:.4g}") if v.size > 1 else None
        for v in (y_um, x_um)
    ]
    return {
        "path": path,
        "kind": "STXM image stack (ALS .hdr + .xim)",
        "energies_ev": f"{energies.size} from {energies.min():.2f} to {energies.max():.2f}",
        "image (y, x)": [int(y_um.size), int(x_um.size)],
        "pixel size_nm (y, x)": step,
        "dwell_ms": meta["dwell_ms"],
        ".xim images": "all present"
        if not absent
        else f"{len(absent)} missing: {_cut([f'_a{k:03d}.xim' for k in absent])}",
        "commands": {"chem lcf": "yes (with --i0 for optical density)" if not absent else "no"},
    }


# ----------------------------------------------------------------------------- formatting


def _datasets(group: h5py.Group, skip: tuple[str, ...] = ()) -> dict[str, str]:
    out: dict[str, str] = {}

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset) and name.split("/")[0] not in skip:
            units = obj.attrs.get("units")
            out[name] = _shape(obj) + ("" if units is None else f" [{_text(units)}]")

    group.visititems(visit)
    return _cut_dict(out)


def _shape(ds: Any) -> str:
    if not isinstance(ds, h5py.Dataset):
        return "none"
    return f"{ds.shape} {ds.dtype}" if ds.ndim else f"= {_short(ds[()])}"


def _extent(points: np.ndarray) -> dict[str, list[float]]:
    """{"y": [min, max], "x": [min, max]} of (N, 2) (y, x) points, 4 significant digits."""
    return {
        axis: [float(f"{v:.4g}") for v in (points[:, i].min(), points[:, i].max())]
        for i, axis in enumerate("yx")
    }


def _distinct(values: list[Any]) -> Any:
    unique = {None if v is None else tuple(np.atleast_1d(v).tolist()) for v in values}
    if unique == {None}:
        return "not stored"
    shown = ["missing" if v is None else (v[0] if len(v) == 1 else list(v)) for v in unique]
    return shown[0] if len(shown) == 1 else shown


def _short(value: Any) -> Any:
    value = value.tolist() if isinstance(value, np.ndarray | np.generic) else value
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, float):
        return float(f"{value:.6g}")
    text = str(value)
    return value if len(text) <= 80 else text[:77] + "…"


def _text(value: Any) -> str:
    value = value.tolist() if isinstance(value, np.ndarray | np.generic) else value
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _cut(items: list[Any]) -> list[Any]:
    if len(items) <= MAX_ITEMS:
        return items
    return [*items[:MAX_ITEMS], f"… and {len(items) - MAX_ITEMS} more"]


def _cut_dict(items: dict[str, Any]) -> dict[str, Any]:
    if len(items) <= MAX_ITEMS:
        return items
    out = dict(list(items.items())[:MAX_ITEMS])
    out["…"] = f"and {len(items) - MAX_ITEMS} more"
    return out


def _format(value: dict[str, Any], lines: list[str], indent: int) -> None:
    pad = "  " * indent
    for key, item in value.items():
        if isinstance(item, dict):
            lines.append(f"{pad}{key}:")
            _format(item, lines, indent + 1)
        elif isinstance(item, list) and any(isinstance(v, str) for v in item):
            lines.append(f"{pad}{key}:")
            lines.extend(f"{pad}  - {v}" for v in _cut(item))
        else:
            lines.append(f"{pad}{key}: {_cut(item) if isinstance(item, list) else item}")
