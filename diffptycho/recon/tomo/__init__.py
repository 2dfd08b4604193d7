"""Tomographic reconstruction on the shared projector pair.

Solvers (values with ``init`` / ``step``, run by :func:`diffptycho.recon.solve.solve` on a
:class:`~diffptycho.models.tomo.TomoProjections` model): :class:`ART` (block Kaczmarz, one
sweep over all projections per iteration), :class:`SART`, :class:`SIRT`, :class:`CGLS`.
Direct and gradient methods: :func:`fbp`, :func:`gradient_reconstruct` (optax, non-negativity,
total variation). :func:`reconstruct` runs any of them on arrays, slab by slab along y, with
alignment, region of interest and support. docs/tomography.md explains the choices. With
``mesh=`` (:func:`tomo_mesh`) they split y slabs or angles over devices
(:mod:`diffptycho.recon.tomo.sharding`).
"""

from diffptycho.recon.tomo.art import ART, SART, BlockState, kaczmarz_sweep
from diffptycho.recon.tomo.cgls import CGLS, CGLSState
from diffptycho.recon.tomo.fbp import FILTERS, fbp, filter_projections, filter_response
from diffptycho.recon.tomo.gradient import (
    MeshGradientSolver,
    TomoLoss,
    gradient_reconstruct,
    total_variation,
    volume_scale,
)
from diffptycho.recon.tomo.operators import angular_weights, dealign, inverse_alignment
from diffptycho.recon.tomo.reconstruct import ALGORITHMS, TomoResult, make_solver, reconstruct
from diffptycho.recon.tomo.sharding import tomo_mesh
from diffptycho.recon.tomo.sirt import SIRT, SIRTState

__all__ = [
    "ALGORITHMS",
    "ART",
    "BlockState",
    "CGLS",
    "CGLSState",
    "FILTERS",
    "MeshGradientSolver",
    "SART",
    "SIRT",
    "SIRTState",
    "TomoLoss",
    "TomoResult",
    "angular_weights",
    "dealign",
    "fbp",
    "filter_projections",
    "filter_response",
    "gradient_reconstruct",
    "inverse_alignment",
    "kaczmarz_sweep",
    "make_solver",
    "reconstruct",
    "tomo_mesh",
    "total_variation",
    "volume_scale",
]
