"""Volume fractions that a voxel can hold: projection onto the capped simplex.

The species of a voxel fill at most the whole voxel, so its vector of volume fractions
c = (c_1, …, c_S) belongs to the capped simplex

    Δ≤ = {c : c_s ≥ 0, Σ_s c_s ≤ 1}

(the rest of the voxel is vacuum or a species without contrast). Clipping each fraction to
[0, 1] is a different, larger set (a voxel could hold 100 % of every species); the Euclidean
projection onto Δ≤ is the right constraint for projected-gradient reconstruction.

KKT conditions of min ½‖x − c‖² over Δ≤ give x = max(c − τ, 0) with a threshold τ ≥ 0 that
is zero when clipping at 0 already leaves Σ ≤ 1 and otherwise makes Σ x = 1, i.e. is the
threshold of the projection onto the probability simplex. That threshold is
max_k (Σ_{j≤k} u_j − 1)/k over the fractions u sorted in decreasing order (Held, Wolfe &
Crowder 1974; Duchi et al. 2008; Condat 2016), and it is ≤ 0 exactly when clipping suffices,
so one formula serves both cases: τ = max(0, max_k (Σ_{j≤k} u_j − 1)/k).
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp

from diffptycho._typing import Array, Float
from diffptycho.models import SpectroPtychoTomo

__all__ = ["project_capped_simplex", "project_composition"]


def project_capped_simplex(
    c: Float[Array, "species ..."], *, axis: int = 0
) -> Float[Array, "species ..."]:
    """Euclidean projection of every voxel's volume fractions onto {c ≥ 0, Σ c ≤ 1}.

    Exact (sort-based, O(S log S) per voxel), vectorised over voxels, ``jit``-able, and
    differentiable almost everywhere (the map is piecewise affine; its derivative is that
    of the active piece, like ``jnp.clip``).

    Args:
        c: volume fractions (dimensionless), species along ``axis``; any number of species
            and any trailing voxel shape.
        axis: the species axis.

    Returns:
        The nearest admissible fractions, same shape; a floating dtype (that of ``c``).

    Examples:
        >>> import jax.numpy as jnp
        >>> c = jnp.array([[0.5, 0.25], [1.0, 0.5], [-0.25, 0.125]])  # 3 species, 2 voxels
        >>> project_capped_simplex(c).tolist()
        [[0.25, 0.25], [0.75, 0.5], [0.0, 0.125]]
    """
    c = jnp.asarray(c)
    if not jnp.issubdtype(c.dtype, jnp.floating):
        c = c.astype(jnp.result_type(float))
    c = jnp.moveaxis(c, axis, 0)
    n = c.shape[0]
    u = -jnp.sort(-c, axis=0)  # decreasing along species
    k = jnp.arange(1, n + 1, dtype=c.dtype).reshape((n,) + (1,) * (c.ndim - 1))
    tau = jnp.max((jnp.cumsum(u, axis=0) - 1) / k, axis=0, keepdims=True)
    out = jnp.maximum(c - jnp.maximum(tau, 0), 0)
    return jnp.moveaxis(out, 0, axis)


def project_composition(model: SpectroPtychoTomo) -> SpectroPtychoTomo:
    """The model with its composition projected onto the capped simplex, voxel by voxel.

    The constraint of a joint reconstruction that refines ``composition`` (an
    ``OptaxSolver`` ``constraint``): see :func:`project_capped_simplex`.

    Args:
        model: the full-chain model; ``composition`` is (species, z, y, x) volume fractions.

    Returns:
        The same model with admissible volume fractions (≥ 0, summing to ≤ 1 per voxel).
    """
    return eqx.tree_at(lambda m: m.composition, model, project_capped_simplex(model.composition))
