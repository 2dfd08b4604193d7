"""Every experiment and benchmark script starts: its argument parser builds and ``--help`` exits 0.

The scripts are run by hand for hours at a time; a parser that fails to build (e.g. an option
defined twice) would only show when a study starts.
"""

import contextlib
import io
import pathlib
import runpy
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "experiments"
SCRIPTS = sorted(
    p
    for p in [*ROOT.glob("*.py"), *ROOT.glob("benchmarks/*.py")]
    if "add_argument(" in p.read_text() and '__name__ == "__main__"' in p.read_text()
)


def test_the_scripts_are_found():
    assert any(p.name == "reproduce_vanadium_2d.py" for p in SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_script_help_exits_cleanly(script, monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(script), "--help"])
    monkeypatch.syspath_prepend(str(script.parent))
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as stop:
        runpy.run_path(str(script), run_name="__main__")
    assert stop.value.code in (0, None)
    assert "usage:" in out.getvalue()
