"""The parser is built without jax, from name lists and defaults that equal the library's.

``diffptycho --help`` used to import the registries' modules (jax, equinox: ~2 s); the CLI now
keeps copies of their names in :mod:`diffptycho.cli._choices` and writes the settings'
defaults out. These tests hold the copies equal to the originals, and check in a fresh
interpreter that building and using the parser imports none of the heavy modules.
"""

import subprocess
import sys

import pytest

from diffptycho.cli import _choices, build_parser
from diffptycho.cli.spectroptycho import settings_from_args
from diffptycho.cli.spectrotomo import config_from_args
from diffptycho.pipeline import PipelineConfig
from diffptycho.pipeline.config import STAGE_NAMES
from diffptycho.pipeline.spectroptycho import MODES, SpectroPtychoSettings
from diffptycho.recon.align import METHODS
from diffptycho.recon.joint import SOLVERS
from diffptycho.recon.losses import LOSSES
from diffptycho.recon.ptycho import ENGINES
from diffptycho.recon.ptycho.geometry import PROPAGATIONS
from diffptycho.recon.tomo import ALGORITHMS, FILTERS

HEAVY = ("jax", "jaxlib", "equinox", "optax", "h5py", "scipy", "matplotlib")
"""Top-level packages the parser must not import."""


@pytest.mark.parametrize(
    "static, registry",
    [
        (_choices.PTYCHO_ENGINES, ENGINES),
        (_choices.LOSSES, LOSSES),
        (_choices.PROPAGATIONS, PROPAGATIONS),
        (_choices.TOMO_ALGORITHMS, ALGORITHMS),
        (_choices.TOMO_FILTERS, FILTERS),
        (_choices.ALIGN_METHODS, METHODS),
        (_choices.JOINT_SOLVERS, SOLVERS),
        (_choices.STAGE_NAMES, STAGE_NAMES),
        (_choices.SPECTROPTYCHO_MODES, MODES),
    ],
)
def test_static_names_equal_the_registry(static, registry):
    """Same names in the same order (the order of the help text)."""
    assert isinstance(static, tuple)
    assert static == tuple(registry)


def test_every_static_list_is_checked():
    """A tuple added to _choices without a registry comparison above fails here."""
    assert set(_choices.__all__) == {
        "PTYCHO_ENGINES",
        "LOSSES",
        "PROPAGATIONS",
        "TOMO_ALGORITHMS",
        "TOMO_FILTERS",
        "ALIGN_METHODS",
        "JOINT_SOLVERS",
        "STAGE_NAMES",
        "SPECTROPTYCHO_MODES",
    }


def test_spectrotomo_defaults_are_the_pipeline_defaults():
    """Every option left out gives the PipelineConfig default (all stages, all fields)."""
    args = build_parser().parse_args(["spectrotomo", "a.cxi", "-o", "out.h5"])
    assert config_from_args(args) == PipelineConfig(input=("a.cxi",), output="out.h5")


def test_spectroptycho_defaults_are_the_settings_defaults():
    args = build_parser().parse_args(["spectroptycho", "a.cxi", "-o", "out.h5"])
    assert settings_from_args(args) == SpectroPtychoSettings()
    args = build_parser().parse_args(["spectroptycho", "a.cxi", "-o", "o.h5", "--no-probe-band"])
    assert settings_from_args(args).probe_band is False


def test_building_the_parser_imports_no_jax():
    """In a fresh interpreter: build the parser, parse every sub-command, print the help."""
    code = f"""
import contextlib, io, sys
from diffptycho.cli import build_parser
parser = build_parser()
for argv in (["ptycho", "d.cxi", "-o", "o.h5"], ["tomo", "p.h5", "-o", "v.h5"],
             ["spectrotomo", "d.cxi", "-o", "o.h5"], ["spectroptycho", "d.cxi", "-o", "o.h5"],
             ["align", "p.h5", "-o", "a.h5"], ["run", "c.toml"]):
    parser.parse_args(argv)
for argv in ([], ["ptycho"], ["spectrotomo"]):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        parser.parse_args(argv + ["--help"])
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})
print(" ".join(heavy) or "none")
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "none", f"the parser imported: {out.stdout.strip()}"
