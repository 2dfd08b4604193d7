"""The names the command line offers as choices, as plain tuples: building the parser needs no jax.

The library's registries live in modules that import jax (about 1.5 s on CPU), so the parser
takes copies of their keys from here and imports the library only inside the command that
runs. ``tests/test_cli_lazy.py`` asserts that every tuple equals its registry (same names,
same order) and that the parser's defaults equal the settings dataclasses' defaults, so
neither can drift from the library.
"""

from __future__ import annotations

PTYCHO_ENGINES = ("raar", "dm", "epie", "rpie", "mpie", "lsqml", "adam", "lbfgs")
"""Keys of :data:`diffptycho.recon.ptycho.ENGINES`."""
LOSSES = ("poisson", "amplitude")
"""Keys of :data:`diffptycho.recon.losses.LOSSES`."""
PROPAGATIONS = ("far-field", "near-field")
""":data:`diffptycho.recon.ptycho.geometry.PROPAGATIONS`."""
TOMO_ALGORITHMS = ("art", "sart", "sirt", "cgls", "fbp", "adam")
""":data:`diffptycho.recon.tomo.ALGORITHMS`."""
TOMO_FILTERS = ("ramp", "shepp-logan", "cosine", "hamming", "hann")
""":data:`diffptycho.recon.tomo.FILTERS`."""
ALIGN_METHODS = ("reprojection", "joint")
""":data:`diffptycho.recon.align.METHODS`."""
JOINT_SOLVERS = ("adam", "gauss-newton")
""":data:`diffptycho.recon.joint.SOLVERS`."""
STAGE_NAMES = (
    "ptychography",
    "projections",
    "registration",
    "alignment",
    "tomography",
    "chemistry",
    "joint",
)
""":data:`diffptycho.pipeline.config.STAGE_NAMES`."""
SPECTROPTYCHO_MODES = ("per-energy", "joint")
""":data:`diffptycho.pipeline.spectroptycho.MODES`."""

__all__ = [
    "ALIGN_METHODS",
    "JOINT_SOLVERS",
    "LOSSES",
    "PROPAGATIONS",
    "PTYCHO_ENGINES",
    "SPECTROPTYCHO_MODES",
    "STAGE_NAMES",
    "TOMO_ALGORITHMS",
    "TOMO_FILTERS",
]
