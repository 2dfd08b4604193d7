"""Athena project files (``.prj``): the XANES standards most users keep.

An Athena project (Demeter's Athena, or Larch's writer) is gzip-compressed (or plain) text in
Perl data syntax, one record per spectrum::

    # Athena project file -- Demeter version 0.9.26
    $old_group = 'abcde';
    @args = ('label', 'V2O5', 'bkg_e0', '5484.0', 'bkg_pre1', '-150', ...);
    @x = ('5300.0','5302.0',...);
    @y = ('0.3586','0.3581',...);
    [record] #

``@x`` is the energy in eV and ``@y`` μ(E) as Athena holds it (raw, un-normalised, unless the
record says ``is_nor``); ``@args`` carry the normalisation Athena used: E₀ (``bkg_e0``), the
pre-edge and post-edge ranges relative to E₀ (``bkg_pre1``, ``bkg_pre2``, ``bkg_nor1``,
``bkg_nor2``), the post-edge polynomial degree (``bkg_nnorm``), a fixed step (``bkg_fixstep``,
``bkg_step``) and an energy shift (``bkg_eshift``). :meth:`AthenaGroup.normalized` normalises
μ with them (:func:`diffptycho.physics.normalized_xanes.normalize_xanes`). Only the data are
parsed (no Perl is evaluated); Larch's newer JSON projects are refused with a clear error.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import re

import numpy as np

from diffptycho.physics.normalized_xanes import XanesNormalization, normalize_xanes

__all__ = ["AthenaFormatError", "AthenaGroup", "is_athena_project", "read_athena"]

_MAGIC = "Athena project file"
_TOKEN = re.compile(r"'((?:[^'\\]|\\.)*)'|\"((?:[^\"\\]|\\.)*)\"|(\[)|(\])|([^\s,()\[\]'\";]+)")


class AthenaFormatError(ValueError):
    """An Athena project file cannot be read (the message names the file and the record)."""


@dataclasses.dataclass(frozen=True, eq=False)
class AthenaGroup:
    """One spectrum (record) of an Athena project.

    Attributes:
        label: the record's label (the name shown in Athena).
        energies_ev: energies in eV, strictly increasing (the record's shift applied).
        mu: μ(E) as stored (raw, or normalised when ``is_normalized``).
        args: the record's parameters (``bkg_e0``, ``bkg_pre1``, …) as strings.
        is_normalized: the record holds normalised μ already (Athena's ``is_nor``).
    """

    label: str
    energies_ev: np.ndarray
    mu: np.ndarray
    args: dict[str, str]
    is_normalized: bool = False

    def _float(self, key: str, default: float | None) -> float | None:
        value = self.args.get(key, "")
        try:
            return float(value)
        except ValueError:
            return default

    def normalized(self) -> XanesNormalization:
        """μ normalised with the record's own Athena parameters (E₀, ranges, degree, step).

        Returns:
            The normalisation; for an ``is_nor`` record, μ itself with a step of 1.
        """
        if self.is_normalized:
            e0 = self._float("bkg_e0", float(self.energies_ev[len(self.energies_ev) // 2]))
            one = np.ones_like(self.mu)
            return XanesNormalization(e0, 1.0, self.mu, self.mu, 0 * one, one)
        fixed = self._float("bkg_fixstep", 0.0)
        try:
            return normalize_xanes(
                self.energies_ev,
                self.mu,
                e0_ev=self._float("bkg_e0", None),
                pre_ev=(self._float("bkg_pre1", -150.0), self._float("bkg_pre2", -30.0)),
                post_ev=(self._float("bkg_nor1", 150.0), self._float("bkg_nor2", 400.0)),
                nnorm=int(self._float("bkg_nnorm", 2.0)),
                step=self._float("bkg_step", None) if fixed else None,
            )
        except ValueError as err:
            raise AthenaFormatError(f"record {self.label!r}: cannot normalise: {err}") from None


def _text(path: str) -> str:
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise AthenaFormatError(f"{path}: a damaged gzip file ({err})") from None
    return raw.decode("utf-8", errors="replace")


def is_athena_project(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` starts like an Athena project (gzip'd or plain).

    Args:
        path: the file.
    """
    try:
        return _MAGIC in _text(os.fspath(path))[:500]
    except (OSError, AthenaFormatError):
        return False


def _values(statement: str) -> list:
    """The list literal of ``@name = (...);`` as strings; nested ``[...]`` become lists."""
    body = statement.split("=", 1)[1]
    out: list = []
    stack = [out]
    for m in _TOKEN.finditer(body):
        single, double, opening, closing, bare = m.groups()
        if opening:
            stack[-1].append([])
            stack.append(stack[-1][-1])
        elif closing:
            if len(stack) > 1:
                stack.pop()
        else:
            value = single if single is not None else double if double is not None else bare
            stack[-1].append(value.replace("\\'", "'"))
    return out


def _floats(path: str, label: str, name: str, values: list) -> np.ndarray:
    try:
        return np.array([float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError):
        raise AthenaFormatError(
            f"{path}: record {label!r}: @{name} holds non-numeric values; expected numbers"
        ) from None


def _group(path: str, record: dict[str, list], index: int) -> AthenaGroup:
    flat = record.get("args", [])
    pairs = zip(flat[::2], flat[1::2], strict=False)
    args = {str(k): v if isinstance(v, str) else "" for k, v in pairs}
    label = args.get("label") or record.get("old_group", [f"record {index}"])[0]
    for name in ("x", "y"):
        if name not in record:
            raise AthenaFormatError(f"{path}: record {label!r} has no @{name} array")
    x = _floats(path, label, "x", record["x"])
    y = _floats(path, label, "y", record["y"])
    if x.size != y.size or x.size < 2:
        raise AthenaFormatError(
            f"{path}: record {label!r}: @x has {x.size} values, @y {y.size}; expected the same "
            "number (≥ 2)"
        )
    try:
        shift = float(args.get("bkg_eshift", "0") or 0.0)
    except ValueError:
        shift = 0.0
    x = x + shift
    if np.any(np.diff(x) <= 0):
        raise AthenaFormatError(f"{path}: record {label!r}: energies do not increase strictly")
    return AthenaGroup(label, x, y, args, args.get("is_nor", "0") == "1")


def read_athena(path: str | os.PathLike[str]) -> list[AthenaGroup]:
    r"""Read every spectrum of an Athena project file.

    Args:
        path: the ``.prj`` file (gzip-compressed or plain text).

    Returns:
        One :class:`AthenaGroup` per record, in file order.

    Raises:
        FileNotFoundError: no such file.
        AthenaFormatError: not an Athena project, a JSON project, or a damaged record.

    Examples:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "one.prj")
        >>> with open(path, "w") as f:
        ...     _ = f.write("# Athena project file -- Demeter version 0.9.26\n"
        ...                 "$old_group = 'abcde';\n@args = ('label', 'Vfoil');\n"
        ...                 "@x = ('5460','5470','5480');\n@y = ('0.1','0.5','1.1');\n"
        ...                 "[record] #\n")
        >>> (g,) = read_athena(path)
        >>> g.label, g.energies_ev.tolist()
        ('Vfoil', [5460.0, 5470.0, 5480.0])
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such Athena project file")
    text = _text(path)
    if _MAGIC not in text[:500]:
        if text.lstrip().startswith("{"):
            raise AthenaFormatError(
                f"{path}: a JSON Athena project (Larch); save it from Athena/Larch in the "
                "classic format or export the spectra as columns"
            )
        raise AthenaFormatError(
            f"{path}: not an Athena project (no '{_MAGIC}' header in its first lines)"
        )
    groups: list[AthenaGroup] = []
    record: dict[str, list] = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("[record]"):
            groups.append(_group(path, record, len(groups) + 1))
            record = {}
        elif line.startswith("$old_group"):
            record["old_group"] = _values(line)
        elif line.startswith("@") and "=" in line:
            name = line[1:].split("=", 1)[0].strip()
            if name != "journal":
                record[name] = _values(line)
    if not groups:
        raise AthenaFormatError(f"{path}: no spectra (no '[record]' entries) in the project")
    return groups
