"""What the classic tomography solvers share: normalisation weights, data preparation, masks.

Every weight here is computed with the shared projector pair
(:func:`diffptycho.physics.tomography.project` / ``backproject``) applied to arrays of ones, so
the solvers stay consistent with the forward model whatever its discretisation. Parallel-beam
slices are independent and identical in geometry, so weights are computed on a single slice
(``n_y = 1``) and broadcast over y.

Notation: ``P`` is the projector (all angles), ``P_θ`` one projection, ``S`` the support mask.

- ray sums ``R = P S 1`` (angle, t): the length of each ray inside the support;
- voxel sums ``C = Pᵀ 1`` (z, x), and per projection ``C_θ = P_θᵀ 1`` (angle, z, x);
- Kaczmarz (Gram) sums ``D_θ = P_θ S P_θᵀ 1`` (angle, t): row sums of the block's Gram matrix.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from diffptycho._typing import Angles, Array, Float, Projections, Shaped
from diffptycho.physics import alignment as _alignment
from diffptycho.physics import tomography

__all__ = [
    "angular_weights",
    "apply_support",
    "clip_nonnegative",
    "dealign",
    "gram_sums",
    "inverse_alignment",
    "per_view_voxel_sums",
    "ray_sums",
    "safe_reciprocal",
    "voxel_sums",
]


def real_dtype(x: Array) -> jnp.dtype:
    """Real floating dtype of an (possibly complex) array."""
    return jnp.finfo(jnp.asarray(x).dtype).dtype


def safe_reciprocal(w: Array, rel_eps: float = 1e-6) -> Array:
    """``1 / w`` where ``w`` exceeds ``rel_eps · max(w)``, else 0 (rays/voxels never hit)."""
    floor = rel_eps * jnp.max(w)
    return jnp.where(w > floor, 1.0 / jnp.where(w > floor, w, 1.0), 0.0).astype(w.dtype)


def _support_slice(
    n_z: int, n_x: int, support: Float[Array, "z x"] | None, dtype: jnp.dtype
) -> Float[Array, "z 1 x"]:
    if support is None:
        return jnp.ones((n_z, 1, n_x), dtype)
    return jnp.asarray(support, dtype)[:, None, :]


@functools.partial(jax.jit, static_argnames=("n_z", "n_x", "n_det", "dtype"))
def ray_sums(
    angles_rad: Angles,
    n_z: int,
    n_x: int,
    n_det: int,
    support: Float[Array, "z x"] | None = None,
    dtype: jnp.dtype = jnp.float32,
) -> Float[Array, "angle 1 t"]:
    """Ray lengths inside the support, ``R = P S 1``, in voxels (angle, 1, t)."""
    return tomography.project(_support_slice(n_z, n_x, support, dtype), angles_rad, n_det=n_det)


@functools.partial(jax.jit, static_argnames=("n_z", "n_x", "n_det", "dtype"))
def voxel_sums(
    angles_rad: Angles,
    n_z: int,
    n_x: int,
    n_det: int,
    dtype: jnp.dtype = jnp.float32,
) -> Float[Array, "z 1 x"]:
    """Summed weights of every voxel over all rays, ``C = Pᵀ 1`` (z, 1, x)."""
    ones = jnp.ones((jnp.shape(angles_rad)[0], 1, n_det), dtype)
    return tomography.backproject(ones, angles_rad, n_z, n_x)


def _one_view_voxel_sums(theta: Array, n_z: int, n_x: int, n_det: int, dtype) -> Array:
    return tomography.backproject(jnp.ones((1, 1, n_det), dtype), theta[None], n_z, n_x)


@functools.partial(jax.jit, static_argnames=("n_z", "n_x", "n_det", "dtype"))
def per_view_voxel_sums(
    angles_rad: Angles, n_z: int, n_x: int, n_det: int, dtype: jnp.dtype = jnp.float32
) -> Float[Array, "angle z 1 x"]:
    """Voxel sums of each projection alone, ``C_θ = P_θᵀ 1`` (angle, z, 1, x)."""
    return lax.map(lambda th: _one_view_voxel_sums(th, n_z, n_x, n_det, dtype), angles_rad)


@functools.partial(jax.jit, static_argnames=("n_z", "n_x", "n_det", "dtype"))
def gram_sums(
    angles_rad: Angles,
    n_z: int,
    n_x: int,
    n_det: int,
    support: Float[Array, "z x"] | None = None,
    dtype: jnp.dtype = jnp.float32,
) -> Float[Array, "angle 1 t"]:
    """Row sums of each projection's Gram matrix, ``D_θ = P_θ S P_θᵀ 1`` (angle, 1, t).

    The Gram matrix has non-negative entries, so by Gershgorin ``D_θ⁻¹ P_θ S P_θᵀ`` has spectral
    radius ≤ 1 and ``x ← x + λ S P_θᵀ D_θ⁻¹ (p_θ − P_θ x)`` is a contraction for 0 < λ < 2;
    for rays that share no voxel it reduces to the ray norms ``‖a_i‖²`` of Kaczmarz's method.
    """
    s = _support_slice(n_z, n_x, support, dtype)

    def one(theta):
        c = _one_view_voxel_sums(theta, n_z, n_x, n_det, dtype)
        return tomography.project(c * s, theta[None], n_det=n_det)[0]

    return lax.map(one, angles_rad)


def angular_weights(angles_rad: Angles) -> Float[Array, " angle"]:
    """Quadrature weights Δθ (rad) of arbitrary, unevenly spaced angles for filtered backprojection.

    Angles are folded into [0, π) (parallel-beam views θ and θ + π are mirror images) and each
    gets half the gap to each neighbour, circularly. Gaps wider than ten mean gaps
    (10 π / n_angles) — a missing wedge, not the scatter of uneven sampling — count as one
    median gap, so the views bordering the wedge are not over-weighted. A full, even 180° scan
    gives every view π / n_angles.

    Args:
        angles_rad: rotation angles in rad (angle,), any order and range.

    Returns:
        Weights in rad (angle,), same order as ``angles_rad``.

    Examples:
        >>> import jax.numpy as jnp
        >>> w = angular_weights(jnp.linspace(0, jnp.pi, 4, endpoint=False))
        >>> [round(float(v), 4) for v in w]
        [0.7854, 0.7854, 0.7854, 0.7854]
    """
    angles = jnp.asarray(angles_rad)
    folded = jnp.mod(angles, jnp.pi)
    order = jnp.argsort(folded)
    s = folded[order]
    gaps = jnp.diff(jnp.concatenate([s, s[:1] + jnp.pi]))  # gap after each sorted view
    if angles.shape[0] > 1:
        typical = jnp.median(gaps)
        gaps = jnp.where(gaps > 10 * jnp.pi / angles.shape[0], typical, gaps)
    else:
        gaps = jnp.full_like(gaps, jnp.pi)
    before = jnp.roll(gaps, 1)
    w_sorted = 0.5 * (gaps + before)
    return jnp.zeros_like(w_sorted).at[order].set(w_sorted)


def inverse_alignment(params: Float[Array, "angle 4"]) -> Float[Array, "angle 4"]:
    """Similarity parameters of the inverse transforms (see :mod:`diffptycho.physics.alignment`).

    ``r' = e^s R(φ) r + t`` inverts to ``r = e^{−s} R(−φ) r' − e^{−s} R(−φ) t``.

    Args:
        params: (angle, 4) rows of ``(shift_y_px, shift_x_px, rotation_rad, log_scale)``.

    Returns:
        (angle, 4) parameters of the inverse transforms.
    """
    params = jnp.asarray(params)
    ty, tx, phi, s = params[:, 0], params[:, 1], params[:, 2], params[:, 3]
    cos, sin = jnp.cos(phi), jnp.sin(phi)
    inv = jnp.exp(-s)
    # R(−φ) t in (y, x) order, with R(φ) = [[cos, −sin], [sin, cos]]
    ry = cos * ty + sin * tx
    rx = -sin * ty + cos * tx
    return jnp.stack([-inv * ry, -inv * rx, -phi, -s], axis=1)


def dealign(projections: Projections, params: Float[Array, "angle 4"]) -> Projections:
    """Undo per-projection alignment: measured ≈ align(project(volume)) → project(volume).

    Bilinear resampling with zeros outside, as in :func:`~diffptycho.physics.alignment.
    align_projections`; y shifts mix detector rows, so dealign before slab splitting.
    """
    return _alignment.align_projections(projections, inverse_alignment(params))


def clip_nonnegative(volume: Shaped[Array, "..."]) -> Shaped[Array, "..."]:
    """Clamp to ≥ 0; complex volumes (δ + iβ) clamp their real and imaginary parts separately."""
    if jnp.iscomplexobj(volume):
        return lax.complex(jnp.maximum(volume.real, 0), jnp.maximum(volume.imag, 0))
    return jnp.maximum(volume, 0)


def apply_support(volume: Shaped[Array, "z y x"], support: Array | None) -> Shaped[Array, "z y x"]:
    """Zero the voxels outside a (z, x) support mask (broadcast over y)."""
    if support is None:
        return volume
    return volume * jnp.asarray(support, real_dtype(volume))[:, None, :]


def check_data(projections: Projections, angles_rad: Angles, n_det: int, n_y: int) -> None:
    """Raise a ValueError naming the mismatch between data, angles and volume."""
    shape = jnp.shape(projections)
    expected = (jnp.shape(angles_rad)[0], n_y, n_det)
    if tuple(shape) != expected:
        raise ValueError(
            f"projections have shape {tuple(shape)}; expected (angle, y, t) = {expected} for "
            f"{expected[0]} angles, a volume with {n_y} rows and {n_det} detector pixels"
        )


def model_data(model, projections: Projections, apply_alignment: bool) -> Projections:
    """Measured projections brought to the frame of the classic solvers.

    Divided by the model's voxel size (volume units × voxels) and, when ``apply_alignment``,
    with the :class:`~diffptycho.models.tomo.TomoProjections` model's alignment undone
    (:func:`dealign`).
    """
    p = jnp.asarray(projections)
    if jnp.iscomplexobj(p) and not jnp.iscomplexobj(model.volume):
        raise ValueError(
            "complex projections need a complex volume (phase and absorption together): start "
            "from e.g. jnp.zeros(shape, jnp.complex64)"
        )
    p = p / jnp.asarray(model.voxel_size_m, real_dtype(p))
    if apply_alignment:
        p = dealign(p, model.alignment)
    return p.astype(model.volume.dtype)
