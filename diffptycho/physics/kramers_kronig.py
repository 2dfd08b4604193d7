"""Linear Kramers–Kronig operators on an energy grid (difference KK of localised changes).

The real part of a change of the scattering factor follows from its imaginary part,

    Δf1(E) = (2/π) P∫₀^∞ E' Δf2(E') / (E² − E'²) dE'
           = (1/π) P∫₀^∞ Δf2(E') [1/(E − E') − 1/(E + E')] dE',

with Δf2 taken piecewise linear between the grid nodes and zero outside them. Each segment has a
closed-form principal value, so the operator is an exact matrix for that interpolant. At a node,
the log singularities of its two adjacent segments cancel (ln|0| is treated as 0 in both);
at the two end nodes they do not, so Δf2 must vanish there: the operator is meant for changes
localised inside the grid (see the pitfall in :mod:`diffptycho.physics.spectra`).
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Float
from numpy.typing import ArrayLike

__all__ = ["increasing_energies", "kk_f_matrix", "kk_matrix"]


def increasing_energies(energies_ev, name: str = "energies_ev", minimum: int = 2) -> np.ndarray:
    """Check an energy grid: 1-D, ≥ ``minimum`` positive, strictly increasing values in eV.

    Args:
        energies_ev: the grid in eV.
        name: argument name used in the error.
        minimum: fewest energies accepted.

    Returns:
        The grid as float64.

    Raises:
        ValueError: otherwise (the message names ``name`` and the shape given).
    """
    e = np.asarray(energies_ev, dtype=np.float64)
    if (
        e.ndim != 1
        or e.size < minimum
        or not np.all(np.isfinite(e))
        or np.any(e <= 0)
        or np.any(np.diff(e) <= 0)
    ):
        raise ValueError(
            f"{name}: expected a 1-D array of ≥ {minimum} positive, strictly increasing "
            f"energies in eV, got shape {e.shape}"
        )
    return e


def _phi(t: np.ndarray) -> np.ndarray:
    """1 − ln(1 + t)/t, accurate for small |t| (far segments) where it cancels."""
    small = np.abs(t) < 1e-3
    ts = np.where(small, t, 0.0)
    series = ts / 2 - ts**2 / 3 + ts**3 / 4 - ts**4 / 5
    tl = np.where(small, 1.0, t)
    return np.where(small, series, 1.0 - np.log1p(tl) / tl)


def _segment_weights(x: np.ndarray, a: np.ndarray, b: np.ndarray):
    """Weights (wa, wb) with P∫_a^b g(E')/(x − E') dE' = wa·g(a) + wb·g(b), g linear on [a, b].

    With g(E') = g_lin(x) − m (x − E'): the integral is g_lin(x)·L − m·h, L = ln|(x − a)/(x − b)|,
    h = b − a. Writing t = h/(x − b) for x outside [a, b]: L = log1p(t), wa = φ(t),
    wb = log1p(t) − φ(t), free of the cancellation that ruins far segments in float64.
    """
    h = b - a
    da, db = x - a, x - b
    outside = (da * db) > 0
    t = np.where(outside, h / np.where(db == 0, 1.0, db), 0.0)
    wa_out = _phi(t)
    wb_out = np.log1p(t) - wa_out
    with np.errstate(divide="ignore"):
        log_da = np.where(da == 0, 0.0, np.log(np.abs(np.where(da == 0, 1.0, da))))
        log_db = np.where(db == 0, 0.0, np.log(np.abs(np.where(db == 0, 1.0, db))))
    big_l = log_da - log_db
    wa_in = (b - x) / h * big_l + 1.0
    wb_in = (x - a) / h * big_l - 1.0
    return np.where(outside, wa_out, wa_in), np.where(outside, wb_out, wb_in)


def kk_f_matrix(eval_ev: ArrayLike, nodes_ev: ArrayLike) -> Float[np.ndarray, "eval node"]:
    """Kramers–Kronig operator in f-space from grid nodes to arbitrary energies.

    Args:
        eval_ev: energies in eV where Δf1 is wanted, shape (M,), positive.
        nodes_ev: strictly increasing positive grid in eV carrying Δf2, shape (N,).

    Returns:
        K of shape (M, N), such that Δf1(eval) = K @ Δf2(nodes) (same units as Δf2).
    """
    nodes = increasing_energies(nodes_ev, "nodes_ev")
    x = np.atleast_1d(np.asarray(eval_ev, dtype=np.float64))
    if x.ndim != 1 or not np.all(np.isfinite(x)) or np.any(x <= 0):
        raise ValueError("eval_ev: expected a 1-D array of positive energies in eV")
    a, b = nodes[None, :-1], nodes[None, 1:]
    k = np.zeros((x.size, nodes.size))
    # (1/π)[H(E) + H(−E)] with H(x) = P∫ Δf2(E')/(x − E') dE'; row blocks bound the temporaries.
    for start in range(0, x.size, 256):
        rows = slice(start, start + 256)
        for sign in (1.0, -1.0):
            wa, wb = _segment_weights(sign * x[rows, None], a, b)
            k[rows, :-1] += wa
            k[rows, 1:] += wb
    return k / np.pi


def kk_matrix(energies_ev: ArrayLike) -> Float[np.ndarray, "energy energy"]:
    """Linear Kramers–Kronig operator mapping a localised Δβ on a grid to Δδ.

    KK is done in f-space: Δf2 ∝ E²·Δβ (since β = r_e λ² n f2 / 2π and λ ∝ 1/E), then
    Δf1 = K Δf2 (:func:`kk_f_matrix` on the grid itself), then Δδ ∝ Δf1/E², i.e.
    M = diag(1/E²) K diag(E²). Δβ must vanish at both ends of the grid; non-uniform grids are fine.
    In JAX, apply it as ``jnp.asarray(M) @ dbeta`` (linear, hence differentiable).

    Args:
        energies_ev: strictly increasing positive photon energies in eV, shape (E,).

    Returns:
        M of shape (E, E), float64, dimensionless.

    Examples:
        >>> e = np.linspace(690.0, 730.0, 801)
        >>> dbeta = 1e-4 * np.exp(-0.5 * ((e - 710.0) / 1.0) ** 2)
        >>> ddelta = kk_matrix(e) @ dbeta
        >>> bool(ddelta[e < 709].min() < 0 < ddelta[e > 711].max())
        True
    """
    e = increasing_energies(energies_ev)
    e2 = e**2
    return kk_f_matrix(e, e) * e2[None, :] / e2[:, None]
