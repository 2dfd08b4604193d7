"""Reconstruction results and resumable checkpoints in HDF5.

Results files hold named datasets (with ``units`` attributes), the loss history under
``history/`` and a ``provenance/`` group (package version, full config as JSON, timings,
command line, creation time, Python/JAX/NumPy/h5py versions). Checkpoints hold the array
leaves of a run's state bit for bit, the step and JSON metadata. Both are written atomically
(temp file + rename). docs/file-formats.md describes the layouts.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import sys
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import h5py
import numpy as np

from diffptycho import __version__
from diffptycho.io._atomic import atomic_h5_file, open_h5_readonly

__all__ = [
    "ResultsFormatError",
    "check_output_path",
    "load_checkpoint",
    "read_results",
    "save_checkpoint",
    "write_results",
]

RESULTS_FORMAT = "diffptycho-results"
CHECKPOINT_FORMAT = "diffptycho-checkpoint"
FORMAT_VERSION = 1
"""Layout version written in the root ``format_version`` attribute of both kinds of file."""
RESERVED = ("provenance", "history", "units")
"""Top-level names :func:`read_results` uses for its own keys; datasets may not use them."""


class ResultsFormatError(ValueError):
    """A results or checkpoint file is not what the reader expects."""


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if hasattr(obj, "__array__"):  # jax arrays
        return np.asarray(obj).tolist()
    raise TypeError(
        f"a value of type {type(obj).__name__} is not JSON-serialisable; convert it to a "
        "str, number, list or dict"
    )


def _to_json(what: str, obj: Any) -> str:
    try:
        return json.dumps(obj, default=_json_default, sort_keys=True, allow_nan=True)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{what}: {err}") from err


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def _array(what: str, value: Any) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind == "U":  # names (e.g. species) are stored as UTF-8 byte strings
        arr = np.char.encode(arr, "utf-8")
    if arr.dtype.kind in "OV" or arr.dtype.hasobject:
        raise TypeError(
            f"{what}: dtype {arr.dtype} cannot be stored as an HDF5 dataset; "
            "pass numeric arrays or strings (put other things in config)"
        )
    return arr


def check_output_path(path: str | os.PathLike[str], option: str = "--output") -> str:
    """Fail early, before any work, when an output file could not be written.

    Args:
        path: the file a command will write.
        option: the command-line option that named it, for messages.

    Returns:
        ``path`` as a string.

    Raises:
        FileNotFoundError: its directory does not exist (or is a file).
        PermissionError: its directory is not writable.
        IsADirectoryError: ``path`` is a directory.

    Examples:
        >>> import tempfile
        >>> check_output_path(os.path.join(tempfile.mkdtemp(), "out.h5")).endswith("out.h5")
        True
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        what = "is a file, not a directory" if os.path.exists(directory) else "does not exist"
        raise FileNotFoundError(
            f"{option} {path}: directory {directory!r} {what}; create the directory or "
            "choose another output path"
        )
    if os.path.isdir(path):
        raise IsADirectoryError(f"{option} {path}: is a directory; give a file name")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise PermissionError(
            f"{option} {path}: directory {directory!r} is not writable; choose another "
            "output directory or fix its permissions"
        )
    return path


def write_results(
    path: str | os.PathLike[str],
    datasets: Mapping[str, Any],
    units: Mapping[str, str] | None = None,
    config: Mapping[str, Any] | None = None,
    history: Mapping[str, Any] | None = None,
    timings: Mapping[str, float] | None = None,
) -> None:
    """Write reconstruction results with provenance to an HDF5 file, atomically.

    Args:
        path: destination file; replaced only once complete.
        datasets: ``{name: array}``; names may contain ``/`` for nested groups. Real, complex,
            integer and bool arrays (NumPy or JAX) are stored with their dtype. The top-level
            names ``provenance``, ``history`` and ``units`` are reserved.
        units: ``{name: unit}`` stored as the ``units`` attribute of each named dataset; keys
            are dataset names or ``history/<name>``.
        config: the full run configuration (JSON-serialisable; NumPy values and paths are
            converted), stored as the JSON string ``provenance/config``.
        history: ``{name: array}`` per-iteration traces (e.g. loss), under ``history/``.
        timings: ``{name: seconds}`` wall-clock timings, under ``provenance/timings/``.

    Raises:
        ValueError: a dataset name is reserved or empty, or a ``units`` key names nothing.
        TypeError: a value cannot be stored (``path`` is then left untouched).

    Examples:
        >>> import os, tempfile
        >>> import numpy as np
        >>> path = os.path.join(tempfile.mkdtemp(), "results.h5")
        >>> write_results(path, {"object/phase": np.zeros((4, 4))}, units={"object/phase": "rad"},
        ...               config={"iterations": 500}, history={"loss": [3.0, 2.0]})
        >>> res = read_results(path)
        >>> res["units"]["object/phase"], res["provenance"]["config"]["iterations"]
        ('rad', 500)
    """
    units = dict(units or {})
    history = dict(history or {})
    for name in datasets:
        top = name.strip("/").split("/")[0]
        if not top or top in RESERVED:
            raise ValueError(
                f"dataset name {name!r} is empty or reserved ({', '.join(RESERVED)}); rename it"
            )
    clean = {name.strip("/") for name in datasets}
    for name in clean:
        parents = ["/".join(name.split("/")[:i]) for i in range(1, name.count("/") + 1)]
        clash = [parent for parent in parents if parent in clean]
        if clash:
            raise ValueError(
                f"dataset name {name!r} would nest inside dataset {clash[0]!r}; rename one"
            )
    known = set(datasets) | {f"history/{name}" for name in history}
    unknown = sorted(set(units) - known)
    if unknown:
        raise ValueError(
            f"units given for {unknown}, which are neither datasets nor history/<name>; "
            "check the spelling"
        )
    arrays = {name: _array(f"datasets[{name!r}]", value) for name, value in datasets.items()}
    traces = {name: _array(f"history[{name!r}]", value) for name, value in history.items()}
    config_json = _to_json("config", dict(config or {}))
    timing_values = {}
    for name, seconds in (timings or {}).items():
        try:
            timing_values[name] = float(seconds)
        except (TypeError, ValueError) as err:
            raise TypeError(f"timings[{name!r}] = {seconds!r}: expected seconds") from err

    with atomic_h5_file(path) as f:
        f.attrs["diffptycho_format"] = RESULTS_FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        for name, arr in arrays.items():
            f[name.strip("/")] = arr
        for name, arr in traces.items():
            f[f"history/{name}"] = arr
        for name, unit in units.items():
            f[name.strip("/")].attrs["units"] = unit
        prov = f.create_group("provenance")
        prov["config"] = config_json
        prov["config"].attrs["format"] = "json"
        timing_group = prov.create_group("timings")
        for name, seconds in timing_values.items():
            timing_group[name] = seconds
            timing_group[name].attrs["units"] = "s"
        for key, value in _provenance().items():
            prov.attrs[key] = value


def _provenance() -> dict[str, str]:
    return {
        "diffptycho_version": __version__,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command_line": json.dumps(sys.argv),
        "python_version": sys.version.split()[0],
        "jax_version": _package_version("jax"),
        "jaxlib_version": _package_version("jaxlib"),
        "numpy_version": np.__version__,
        "h5py_version": h5py.__version__,
        "platform": platform.platform(),
    }


def _attr(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _check_format(path: str, f: h5py.File, expected: str, reader: str) -> None:
    found = _attr(f.attrs.get("diffptycho_format"))
    if found != expected:
        other = {RESULTS_FORMAT: "read_results", CHECKPOINT_FORMAT: "load_checkpoint"}
        hint = f"it is a {found} file: use {other[found]}" if found in other else "wrong file?"
        raise ResultsFormatError(
            f"{path}: root attribute 'diffptycho_format' is {found!r}, expected {expected!r} "
            f"({hint}); {reader} reads files written by diffptycho"
        )
    file_version = int(_attr(f.attrs.get("format_version", 0)))
    if file_version > FORMAT_VERSION:
        raise ResultsFormatError(
            f"{path}: format_version {file_version} is newer than this diffptycho "
            f"({__version__}) understands ({FORMAT_VERSION}); upgrade diffptycho"
        )


def read_results(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a file written by :func:`write_results`.

    Args:
        path: the results file.

    Returns:
        ``{name: np.ndarray}`` for every dataset (nested names joined by ``/``), plus
        ``"history"`` (``{name: np.ndarray}``), ``"units"`` (``{name: unit}``) and
        ``"provenance"``: a dict with ``config`` (parsed JSON), ``timings``
        (``{name: seconds}``), ``command_line`` (list of str) and the version/creation strings.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ResultsFormatError: not HDF5 or not a diffptycho results file.
    """
    path = os.fspath(path)
    with open_h5_readonly(path, ResultsFormatError, "a diffptycho results file") as f:
        _check_format(path, f, RESULTS_FORMAT, "read_results")
        out: dict[str, Any] = {}
        history: dict[str, np.ndarray] = {}
        units: dict[str, str] = {}

        def visit(name: str, obj: Any) -> None:
            if not isinstance(obj, h5py.Dataset) or name.startswith("provenance/"):
                return
            if "units" in obj.attrs:
                units[name] = _attr(obj.attrs["units"])
            value = np.asarray(obj[()])
            if name.startswith("history/"):
                history[name.removeprefix("history/")] = value
            else:
                out[name] = value

        f.visititems(visit)
        prov = f["provenance"]
        provenance = {key: _attr(value) for key, value in prov.attrs.items()}
        provenance["command_line"] = json.loads(provenance.get("command_line", "[]"))
        provenance["config"] = json.loads(prov["config"].asstr()[()])
        provenance["timings"] = {k: float(v[()]) for k, v in prov["timings"].items()}
        out.update(history=history, units=units, provenance=provenance)
        return out


def save_checkpoint(
    path: str | os.PathLike[str],
    pytree_leaves: Mapping[str, Any],
    step: int,
    meta: Mapping[str, Any] | None = None,
) -> None:
    """Save the array state of a run so it can resume bit-for-bit, atomically.

    Keys are stored verbatim (any string, e.g. ``jax.tree_util.keystr`` paths) and their order
    is kept. Arrays keep their exact dtype, including ``bfloat16`` and other ml_dtypes; pass
    new-style PRNG keys through ``jax.random.key_data`` first.

    Args:
        path: checkpoint file; the previous checkpoint there is replaced only once the new
            one is complete.
        pytree_leaves: ``{key: array}`` (NumPy or JAX arrays, or scalars).
        step: number of completed iterations (≥ 0).
        meta: JSON-serialisable metadata (tuples come back as lists).

    Examples:
        >>> import os, tempfile
        >>> import numpy as np
        >>> path = os.path.join(tempfile.mkdtemp(), "ckpt.h5")
        >>> save_checkpoint(path, {"probe": np.ones(3, np.complex64)}, step=10, meta={"lr": 0.1})
        >>> arrays, step, meta = load_checkpoint(path)
        >>> arrays["probe"].dtype, step, meta
        (dtype('complex64'), 10, {'lr': 0.1})
    """
    if isinstance(step, bool) or not isinstance(step, int | np.integer) or step < 0:
        raise ValueError(f"step={step!r}: expected a non-negative int (completed iterations)")
    meta_json = _to_json("meta", dict(meta or {}))
    arrays = {}
    for key, value in pytree_leaves.items():
        if not isinstance(key, str):
            raise TypeError(f"checkpoint key {key!r} is a {type(key).__name__}, expected str")
        arr = np.asarray(value)
        if arr.dtype.hasobject or arr.dtype.kind in "OUS":
            raise TypeError(f"pytree_leaves[{key!r}]: dtype {arr.dtype} is not an array dtype")
        arrays[key] = arr

    with atomic_h5_file(path) as f:
        f.attrs["diffptycho_format"] = CHECKPOINT_FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["step"] = int(step)
        f.attrs["meta"] = meta_json
        f.attrs["diffptycho_version"] = __version__
        f.attrs["created"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        group = f.create_group("arrays")
        for i, (key, arr) in enumerate(arrays.items()):
            native = arr.dtype.kind != "V"  # ml_dtypes (bfloat16, float8…) are opaque to HDF5
            ds = group.create_dataset(
                f"{i:06d}", data=arr if native else arr.view(f"u{arr.dtype.itemsize}")
            )
            ds.attrs["key"] = key
            ds.attrs["dtype"] = arr.dtype.name


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], int, dict]:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Args:
        path: checkpoint file.

    Returns:
        ``(arrays, step, meta)``: ``{key: np.ndarray}`` in the saved order with the saved
        dtypes, the step, and the metadata dict.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ResultsFormatError: not HDF5, not a checkpoint, or written by a newer diffptycho.
    """
    path = os.fspath(path)
    with open_h5_readonly(path, ResultsFormatError, "a diffptycho checkpoint") as f:
        _check_format(path, f, CHECKPOINT_FORMAT, "load_checkpoint")
        if "arrays" not in f or "step" not in f.attrs:
            raise ResultsFormatError(
                f"{path}: checkpoint is incomplete (no 'arrays' group or 'step' attribute); "
                "resume from an earlier checkpoint"
            )
        arrays = {}
        for name in sorted(f["arrays"]):
            ds = f["arrays"][name]
            value = np.asarray(ds[()])
            dtype_name = _attr(ds.attrs["dtype"])
            if value.dtype.name != dtype_name:
                import ml_dtypes  # noqa: F401  (registers bfloat16 & co. with NumPy)

                value = value.view(np.dtype(dtype_name))
            arrays[_attr(ds.attrs["key"])] = value
        return arrays, int(_attr(f.attrs["step"])), json.loads(_attr(f.attrs["meta"]))
