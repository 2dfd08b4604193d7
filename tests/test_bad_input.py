"""Bad input through the real command line: every case exits ≠ 0 with a message naming the
file or dataset and the fix, before any reconstruction starts, and leaves an existing output
file byte for byte as it was.

Each case builds a tiny file the way other programs get it wrong (a truncated copy, a missing
or misnamed dataset, wrong dtype or rank, NaN/Inf, negative or all-zero frames, one position
too many, energies in keV or J, angles out of range, an output directory that cannot be
written, energies on the command line that disagree with the file's).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import h5py
import numpy as np
import pytest

from diffptycho.cli import main
from diffptycho.io.cxi import write_cxi
from diffptycho.io.dxchange import write_projections
from diffptycho.io.scan import PtychoScan
from diffptycho.physics.optics import EV_TO_J
from tests.test_stxm import _write_stack as _write_stxm

OLD_BYTES = b"results of an earlier run that must survive a failed one\n"

# ---------------------------------------------------------------------------------------------
# valid tiny inputs


def _frames(n: int = 4, size: int = 8) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.poisson(50.0, (n, size, size)).astype(np.float32) + 1


def _write_cxi(path, energies_ev=(708.2,), angles_deg=(0.0,)) -> str:
    pos = np.array([[0.0, 0.0], [0.0, 2.0], [2.0, 0.0], [2.0, 2.0]])  # object pixels
    scans = [
        PtychoScan(_frames(), pos, energy_ev=e, angle_deg=a, name=f"{e} eV {a} deg")
        for e in energies_ev
        for a in angles_deg
    ]
    write_cxi(path, scans)
    return str(path)


def _write_stack(path, n_e: int = 12, lo: float = 5450.0, hi: float = 5520.0) -> str:
    e = np.linspace(lo, hi, n_e)
    edge = 0.5 * (1 + np.tanh((e - 5480.0) / 5.0))
    od = 0.2 + edge[:, None, None] * np.linspace(0.5, 1.0, 20).reshape(1, 4, 5)
    with h5py.File(path, "w") as f:
        f["od"] = od
        f["energies_ev"] = e
    return str(path)


def _references(tmp_path) -> list[str]:
    e = np.linspace(5400.0, 5600.0, 41)
    out = []
    for name, centre in (("a", 5475.0), ("b", 5485.0)):
        path = tmp_path / f"{name}.txt"
        np.savetxt(path, np.column_stack([e, 0.2 + 0.5 * (1 + np.tanh((e - centre) / 5.0))]))
        out.append(str(path))
    return out


def _two_energy_refs(tmp_path) -> list[str]:
    e = np.array([700.0, 708.2, 710.2, 720.0])
    out = []
    for name, (a, b) in (("lfp", (1.0, 0.52)), ("fp", (0.4, 0.856))):
        path = tmp_path / f"{name}.txt"
        np.savetxt(path, np.column_stack([e, [0.1, a, b, 0.3]]))
        out.append(str(path))
    return out


def _write_od(path, energies_ev=(708.2, 710.2)) -> str:
    rng = np.random.default_rng(1)
    share = rng.uniform(0, 1, (6, 6))
    m = np.array([[1.0, 0.4], [0.52, 0.856]])
    with h5py.File(path, "w") as f:
        f["od"] = np.einsum("ij,j...->i...", m, np.stack([share, 1 - share]))
        if energies_ev is not None:
            f["energies_ev"] = np.asarray(energies_ev, float)
    return str(path)


def _write_proj(path) -> str:
    angles = np.linspace(0.0, 180.0, 8, endpoint=False)
    write_projections(path, np.ones((8, 4, 6)), angles)
    return str(path)


# ---------------------------------------------------------------------------------------------
# ways to spoil them


def _truncate(path: str) -> None:
    size = os.path.getsize(path)
    with open(path, "r+b") as fh:
        fh.truncate(size // 2)


def _replace(path: str, name: str, value) -> None:
    with h5py.File(path, "r+") as f:
        del f[name]
        if value is not None:
            f[name] = value


def _edit(path: str, name: str, change: Callable[[np.ndarray], np.ndarray]) -> None:
    with h5py.File(path, "r+") as f:
        value = change(np.asarray(f[name][()]))
        del f[name]
        f[name] = value


def _set_nan(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    a.flat[3] = np.nan
    return a


def _set_inf(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    a.flat[-1] = np.inf
    return a


CXI_DATA = "entry_1/data_1/data"
CXI_DET_DATA = "entry_1/instrument_1/detector_1/data"
CXI_TRANS = "entry_1/sample_1/geometry_1/translation"
CXI_ENERGY = "entry_1/instrument_1/source_1/energy"


def _cxi_drop_data(path: str) -> None:
    with h5py.File(path, "r+") as f:
        del f[CXI_DATA]
        del f[CXI_DET_DATA]


def _cxi_frames(change: Callable[[np.ndarray], np.ndarray]) -> Callable[[str], None]:
    def spoil(path: str) -> None:
        with h5py.File(path, "r+") as f:
            value = change(np.asarray(f[CXI_DATA][()]))
            del f[CXI_DET_DATA]
            del f[CXI_DATA]
            f[CXI_DATA] = value
            f[CXI_DET_DATA] = h5py.SoftLink("/" + CXI_DATA)

    return spoil


def _cxi_energy(value: float, units: str | None) -> Callable[[str], None]:
    def spoil(path: str) -> None:
        with h5py.File(path, "r+") as f:
            for entry in [k for k in f if k.startswith("entry_")]:
                name = f"{entry}/instrument_1/source_1/energy"
                del f[name]
                f[name] = value
                if units is not None:
                    f[name].attrs["units"] = units

    return spoil


def _cxi_angle(value: float) -> Callable[[str], None]:
    def spoil(path: str) -> None:
        with h5py.File(path, "r+") as f:
            for entry in [k for k in f if k.startswith("entry_")]:
                for name in ("sample_1/rotation_angle", "sample_1/geometry_1/angle_deg"):
                    if f"{entry}/{name}" in f:
                        f[f"{entry}/{name}"][()] = value
                if f"{entry}/sample_1/geometry_1/orientation" in f:
                    del f[f"{entry}/sample_1/geometry_1/orientation"]

    return spoil


def _zero_frame(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a[1] = 0
    return a


def _negative(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a[0, 2, 2] = -5
    return a


CXI_SPOILS: dict[str, tuple[Callable[[str], None], tuple[str, ...]]] = {
    "truncated": (_truncate, ("truncated",)),
    "missing-data": (_cxi_drop_data, (CXI_DATA, "missing")),
    "wrong-dtype": (_cxi_frames(lambda a: a.astype("S8")), (CXI_DATA, "dtype")),
    "wrong-rank": (_cxi_frames(lambda a: a[0]), (CXI_DATA, "(N, ny, nx)")),
    "nan": (_cxi_frames(_set_nan), (CXI_DATA, "NaN")),
    "inf": (_cxi_frames(_set_inf), (CXI_DATA, "NaN/inf")),
    "negative": (_cxi_frames(_negative), (CXI_DATA, "negative")),
    "zero-frame": (_cxi_frames(_zero_frame), (CXI_DATA, "frame")),
    "all-zero": (_cxi_frames(np.zeros_like), (CXI_DATA, "zero")),
    "positions-count": (
        lambda p: _edit(p, CXI_TRANS, lambda t: np.vstack([t, t[:1]])),
        (CXI_TRANS, "positions"),
    ),
    "energy-in-ev": (_cxi_energy(708.2, None), (CXI_ENERGY, "looks like eV")),
    "energy-in-kev": (_cxi_energy(0.7082, None), (CXI_ENERGY, "looks like keV")),
    "angle-out-of-range": (_cxi_angle(400.0), ("angle", "400", "±360")),
}
"""CXI spoils: name → (spoil the file in place, strings the error must contain)."""


def _no_dir(tmp_path) -> str:
    blocker = tmp_path / "not_a_directory"
    blocker.write_text("a file where the output directory should be\n")
    return str(blocker / "out.h5")


# ---------------------------------------------------------------------------------------------
# the matrix: (command, case) → build(tmp_path) → (argv, output or None, expected strings)

Case = Callable[[object], tuple[list[str], str | None, tuple[str, ...]]]


def _cxi_case(command: str, spoil: str | None) -> Case:
    def build(tmp_path):
        if command == "spectrotomo":
            data = _write_cxi(tmp_path / "scan.cxi", (708.2, 710.2), (0.0, 90.0))
        else:
            data = _write_cxi(tmp_path / "scan.cxi")
        out = str(tmp_path / "out.h5")
        expected: tuple[str, ...] = (data,)
        if spoil == "unwritable":
            out = _no_dir(tmp_path)
            expected = (out, "directory")
        elif spoil == "output-not-results":
            with open(out, "wb") as fh:
                fh.write(OLD_BYTES)
            expected = (out, "not an HDF5 file")
        elif spoil is not None:
            change, want = CXI_SPOILS[spoil]
            change(data)
            expected = (data, *want)
        if command == "ptycho":
            argv = ["ptycho", data, "-n", "1", "-o", out, "--no-progress", "--no-figure"]
        elif command == "spectrotomo":
            argv = ["spectrotomo", data, "-o", out, "-n", "1", "--no-progress", "--no-figures"]
        else:
            argv, out = ["inspect", data], None
        return argv, out, expected

    return build


def _tomo_case(spoil: str) -> Case:
    def build(tmp_path):
        data = _write_proj(tmp_path / "proj.h5")
        out = str(tmp_path / "vol.h5")
        expected: tuple[str, ...] = (data,)
        if spoil == "truncated":
            _truncate(data)
            expected += ("truncated",)
        elif spoil == "missing-angles":
            _replace(data, "angles_deg", None)
            expected += ("angles_deg", "not found")
        elif spoil == "wrong-dtype":
            _edit(data, "projections", lambda a: a.astype("S8"))
            expected += ("projections", "dtype")
        elif spoil == "wrong-rank":
            _edit(data, "projections", lambda a: a[0])
            expected += ("projections", "(angle, y, x)")
        elif spoil == "nan":
            _edit(data, "projections", _set_nan)
            expected += ("projections", "NaN")
        elif spoil == "inf":
            _edit(data, "projections", _set_inf)
            expected += ("projections", "NaN/inf")
        elif spoil == "angles-count":
            _edit(data, "angles_deg", lambda a: a[:-1])
            expected += ("angles_deg", "one angle")
        elif spoil == "angles-out-of-range":
            _edit(data, "angles_deg", lambda a: a * 3.0)
            expected += ("angles_deg", "±360")
        elif spoil == "angles-in-radians":
            _edit(data, "angles_deg", np.deg2rad)
            expected += ("angles_deg", "radians")
        elif spoil in ("dx-negative", "dx-zero-frame", "dx-zero-flat"):
            data = str(tmp_path / "dx.h5")
            counts = np.full((8, 4, 6), 500.0)
            white = np.full((2, 4, 6), 1000.0)
            if spoil == "dx-negative":
                counts[2, 1, 1] = -3
            elif spoil == "dx-zero-frame":
                counts[5] = 0
            else:
                white[:] = 0
            with h5py.File(data, "w") as f:
                f["exchange/data"] = counts
                f["exchange/data_white"] = white
                f["exchange/data_dark"] = np.zeros((1, 4, 6))
                f["exchange/theta"] = np.linspace(0.0, 180.0, 8, endpoint=False)
            name = "exchange/data_white" if spoil == "dx-zero-flat" else "exchange/data"
            expected = (data, name, "negative" if spoil == "dx-negative" else "zero")
        elif spoil == "unwritable":
            out = _no_dir(tmp_path)
            expected = (out, "directory")
        argv = ["tomo", data, "-n", "1", "-o", out, "--no-progress"]
        return argv, out, expected

    return build


STACK_SPOILS = (
    "truncated",
    "missing-energies",
    "wrong-dtype",
    "wrong-rank",
    "nan",
    "inf",
    "all-zero",
    "energies-kev",
    "energies-joule",
    "energies-count",
    "unwritable",
)


def _stack_case(command: str, spoil: str) -> Case:
    def build(tmp_path):
        data = _write_stack(tmp_path / "stack.h5")
        out = str(tmp_path / "maps.h5")
        expected: tuple[str, ...] = (data,)
        if spoil == "truncated":
            _truncate(data)
            expected += ("truncated",)
        elif spoil == "missing-energies":
            _replace(data, "energies_ev", None)
            expected += ("energies_ev",)
        elif spoil == "wrong-dtype":
            _edit(data, "od", lambda a: a.astype("S8"))
            expected += ("'od'", "dtype")
        elif spoil == "wrong-rank":
            _edit(data, "od", lambda a: a[:, 0])
            expected += ("'od'", "(energy, y, x)")
        elif spoil == "nan":
            _edit(data, "od", _set_nan)
            expected += ("'od'", "NaN")
        elif spoil == "inf":
            _edit(data, "od", _set_inf)
            expected += ("'od'", "NaN/inf")
        elif spoil == "all-zero":
            _edit(data, "od", np.zeros_like)
            expected += ("'od'", "zero")
        elif spoil == "energies-kev":
            _edit(data, "energies_ev", lambda e: e / 1000)
            expected += ("energies_ev", "keV")
        elif spoil == "energies-joule":
            _edit(data, "energies_ev", lambda e: e * EV_TO_J)
            expected += ("energies_ev", "J")
        elif spoil == "energies-count":
            _edit(data, "energies_ev", lambda e: e[:-1])
            expected += ("energies_ev", "od")
        elif spoil == "unwritable":
            out = _no_dir(tmp_path)
            expected = (out, "directory")
        elif spoil == "cli-window-kev":
            expected = ("--edge-range", "keV")
        elif spoil == "cli-window-outside":
            expected += ("--edge-range", "6000", "5450")
        if command == "lcf":
            argv = ["chem", "lcf", data, "--references", *_references(tmp_path), "-o", out]
        else:
            argv = ["chem", "xanes-fit", data, "-o", out]
            window = {"cli-window-kev": ["5.47", "5.49"], "cli-window-outside": ["6000", "6100"]}
            argv += ["--edge-range", *window[spoil]] if spoil in window else []
        return argv, out, expected

    return build


def _two_energy_case(spoil: str) -> Case:
    def build(tmp_path):
        data = _write_od(tmp_path / "od.h5")
        out = str(tmp_path / "te.h5")
        e1, e2 = "708.2", "710.2"
        expected: tuple[str, ...] = (data,)
        if spoil == "truncated":
            _truncate(data)
            expected += ("truncated",)
        elif spoil == "missing-od":
            _replace(data, "od", None)
            expected += ("'od'",)
        elif spoil == "wrong-dtype":
            _edit(data, "od", lambda a: a.astype("S8"))
            expected += ("'od'", "dtype")
        elif spoil == "wrong-rank":
            _edit(data, "od", lambda a: np.concatenate([a, a[:1]]))
            expected += ("'od'", "(2, …)")
        elif spoil == "nan":
            _edit(data, "od", _set_nan)
            expected += ("'od'", "NaN")
        elif spoil == "inf":
            _edit(data, "od", _set_inf)
            expected += ("'od'", "NaN/inf")
        elif spoil == "all-zero":
            _edit(data, "od", np.zeros_like)
            expected += ("'od'", "zero")
        elif spoil == "energies-kev":
            _edit(data, "energies_ev", lambda e: e / 1000)
            expected += ("energies_ev", "keV")
        elif spoil == "energies-joule":
            _edit(data, "energies_ev", lambda e: e * EV_TO_J)
            expected += ("energies_ev", "J")
        elif spoil == "energies-count":
            _edit(data, "energies_ev", lambda e: np.append(e, 712.0))
            expected += ("energies_ev", "2")
        elif spoil == "cli-energies-disagree":
            e1 = "707.2"
            expected += ("energies_ev", "708.2", "707.2", "--e1")
        elif spoil == "cli-energies-kev":
            _replace(data, "energies_ev", None)
            e1, e2 = "0.7082", "0.7102"
            expected = ("--e1", "keV")
        elif spoil == "no-energies":
            _replace(data, "energies_ev", None)
            expected = (data, "energies_ev", "--e1")
        elif spoil == "references-kev":
            expected = ("lfp.txt", "keV")
        elif spoil == "unwritable":
            out = _no_dir(tmp_path)
            expected = (out, "directory")
        refs = _two_energy_refs(tmp_path)
        if spoil == "references-kev":
            table = np.loadtxt(refs[0])
            np.savetxt(refs[0], np.column_stack([table[:, 0] / 1000, table[:, 1]]))
        argv = ["chem", "two-energy", data, "--references", *refs]
        if spoil != "no-energies":
            argv += ["--e1", e1, "--e2", e2]
        return [*argv, "-o", out], out, expected

    return build


def _stxm_case(spoil: str) -> Case:
    """``chem lcf`` on an ALS STXM ``.hdr`` + ``.xim`` stack spoilt one way."""

    def build(tmp_path):
        energies = np.linspace(5450.0, 5520.0, 5)
        if spoil == "energies-kev":
            energies = energies / 1000
        counts = np.random.default_rng(2).uniform(200.0, 900.0, (5, 3, 4))
        hdr = _write_stxm(tmp_path, counts, energies)
        xim = str(tmp_path / "s_a002.xim")
        expected: tuple[str, ...] = (xim,)
        if spoil == "missing-image":
            os.remove(xim)
            expected += ("not found",)
        elif spoil == "truncated-image":
            with open(xim) as fh:
                text = fh.read()
            with open(xim, "w") as fh:
                fh.write(text[: len(text) // 2 + 3])
            expected += ("not a table", "truncated")
        elif spoil == "negative":
            np.savetxt(xim, -counts[2])
            expected += ("negative",)
        elif spoil == "all-zero":
            np.savetxt(xim, np.zeros((3, 4)))
            expected += ("zero",)
        elif spoil == "energies-kev":
            expected = (hdr, "StackAxis", "keV")
        out = str(tmp_path / "lcf.h5")
        argv = ["chem", "lcf", hdr, "--references", *_references(tmp_path), "-o", out]
        return argv, out, expected

    return build


CASES: dict[str, Case] = {}
for _spoil in ("missing-image", "truncated-image", "negative", "all-zero", "energies-kev"):
    CASES[f"lcf-stxm-{_spoil}"] = _stxm_case(_spoil)
for _cmd in ("ptycho", "spectrotomo"):
    for _spoil in (*CXI_SPOILS, "unwritable"):
        CASES[f"{_cmd}-{_spoil}"] = _cxi_case(_cmd, _spoil)
CASES["spectrotomo-output-not-results"] = _cxi_case("spectrotomo", "output-not-results")
INSPECT_SPOILS = (
    "truncated",
    "missing-data",
    "wrong-rank",
    "positions-count",
    "energy-in-ev",
    "energy-in-kev",
    "angle-out-of-range",
)
for _spoil in INSPECT_SPOILS:
    CASES[f"inspect-{_spoil}"] = _cxi_case("inspect", _spoil)
TOMO_SPOILS = (
    "truncated",
    "missing-angles",
    "wrong-dtype",
    "wrong-rank",
    "nan",
    "inf",
    "angles-count",
    "angles-out-of-range",
    "angles-in-radians",
    "dx-negative",
    "dx-zero-frame",
    "dx-zero-flat",
    "unwritable",
)
for _spoil in TOMO_SPOILS:
    CASES[f"tomo-{_spoil}"] = _tomo_case(_spoil)
for _cmd in ("lcf", "xanes-fit"):
    for _spoil in STACK_SPOILS:
        CASES[f"{_cmd}-{_spoil}"] = _stack_case(_cmd, _spoil)
for _spoil in ("cli-window-kev", "cli-window-outside"):
    CASES[f"xanes-fit-{_spoil}"] = _stack_case("xanes-fit", _spoil)
TWO_ENERGY_SPOILS = (
    "truncated",
    "missing-od",
    "wrong-dtype",
    "wrong-rank",
    "nan",
    "inf",
    "all-zero",
    "energies-kev",
    "energies-joule",
    "energies-count",
    "cli-energies-disagree",
    "cli-energies-kev",
    "no-energies",
    "references-kev",
    "unwritable",
)
for _spoil in TWO_ENERGY_SPOILS:
    CASES[f"two-energy-{_spoil}"] = _two_energy_case(_spoil)

INSPECT_UNREADABLE = {f"inspect-{s}" for s in INSPECT_SPOILS} - {"inspect-truncated"}
"""``inspect`` lists an unreadable entry under "unreadable entries" (and exits 2)."""


def run_case(name: str, tmp_path, capsys) -> tuple[int, str, str | None, tuple[str, ...]]:
    """Build case ``name`` in ``tmp_path`` and run the CLI on it.

    An output file that is to survive is written first, except for ``spectrotomo``, which
    resumes from an existing output (its own case covers a foreign file there).

    Returns:
        (exit code, stderr + stdout, output path or None, strings the message must hold).
    """
    argv, out, expected = CASES[name](tmp_path)
    fresh = name.startswith("spectrotomo-") and name != "spectrotomo-output-not-results"
    if out is not None and not fresh and os.path.isdir(os.path.dirname(out)):
        with open(out, "wb") as fh:
            fh.write(OLD_BYTES)
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.err + captured.out, out, expected


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_fails_clearly_and_keeps_the_old_output(name, tmp_path, capsys):
    before = set(os.listdir(tmp_path))
    code, message, out, expected = run_case(name, tmp_path, capsys)
    assert code != 0, message
    for text in expected:
        assert text.lower() in message.lower(), (text, message)
    if out is not None and os.path.isfile(out):
        with open(out, "rb") as fh:
            assert fh.read() == OLD_BYTES, "the old output was overwritten"
    if name.startswith("spectrotomo-") and name != "spectrotomo-output-not-results":
        assert out is None or not os.path.exists(out), "a failed run left an output file"
    leftovers = [f for f in set(os.listdir(tmp_path)) - before if f.endswith(".tmp")]
    assert not leftovers, leftovers


@pytest.mark.parametrize("name", sorted(INSPECT_UNREADABLE))
def test_inspect_names_the_unreadable_dataset(name, tmp_path, capsys):
    _, message, _, expected = run_case(name, tmp_path, capsys)
    for text in expected:
        assert text.lower() in message.lower(), (text, message)
