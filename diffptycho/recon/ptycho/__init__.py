"""Ptychography engines on the one forward model (:class:`~diffptycho.models.Ptycho2D`).

Every engine is an :class:`~diffptycho.recon.solve.AbstractSolver`: ``state = engine.init(model)``
and ``model, state, loss = engine.step(model, state, data)`` does one full iteration over all
positions (minibatches in a ``lax.scan``, ``vmap`` inside). Run them with the package's one loop,
:func:`~diffptycho.recon.solve.solve`, which adds the progress bar, loss history and NaN rollback:

    >>> import jax.numpy as jnp
    >>> from diffptycho.models import Ptycho2D
    >>> from diffptycho.recon.solve import solve
    >>> model = Ptycho2D(jnp.ones((24, 24), complex), jnp.ones((1, 8, 8), complex),
    ...                  jnp.zeros((4, 2)))
    >>> data = PtychoData(model())
    >>> engine = ENGINES["raar"](batch_size=2)
    >>> model, history = solve(model, engine, data, 2, progress=False)
    >>> len(history.loss)
    2

``ENGINES`` maps the CLI's algorithm names to constructors taking keyword options (``batch_size``,
``refinement=Refinement(...)``, ``loss`` and the engine's own parameters).
"""

from collections.abc import Callable

from diffptycho.recon.ptycho.constraints import (
    PositionRefinement,
    Refinement,
    circular_support,
    probe_power_from_frames,
)
from diffptycho.recon.ptycho.data import PtychoData
from diffptycho.recon.ptycho.gradient import LBFGS, MinibatchOptax, adam, lbfgs
from diffptycho.recon.ptycho.lsqml import LSQML, lsqml
from diffptycho.recon.ptycho.metrics import illuminated_region, object_error
from diffptycho.recon.ptycho.multiscan import ScanLayout, multiscan_model, split_object
from diffptycho.recon.ptycho.pie import PIE, epie, mpie, rpie
from diffptycho.recon.ptycho.raar import RAAR, difference_map, raar
from diffptycho.recon.solve import AbstractSolver

ENGINES: dict[str, Callable[..., AbstractSolver]] = {
    "raar": raar,
    "dm": difference_map,
    "epie": epie,
    "rpie": rpie,
    "mpie": mpie,
    "lsqml": lsqml,
    "adam": adam,
    "lbfgs": lbfgs,
}
"""Engine constructors by the names of the CLI's ``--algorithm``."""

__all__ = [
    "ENGINES",
    "LBFGS",
    "LSQML",
    "PIE",
    "RAAR",
    "MinibatchOptax",
    "PositionRefinement",
    "PtychoData",
    "Refinement",
    "ScanLayout",
    "adam",
    "circular_support",
    "difference_map",
    "epie",
    "illuminated_region",
    "lbfgs",
    "lsqml",
    "mpie",
    "multiscan_model",
    "object_error",
    "probe_power_from_frames",
    "raar",
    "rpie",
    "split_object",
]
