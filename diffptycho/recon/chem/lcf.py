"""Full-spectrum linear combination fit (LCF) per pixel, non-negative, vectorised in JAX.

Each pixel's spectrum d(E) (an OD or μt spectrum) is modelled as Σ_r w_r · ref_r(E) (+ c, a
constant offset, if asked) with weights w_r ≥ 0, by non-negative least squares (NNLS). The fit
quality is the R-factor Σ_E (d − fit)² / Σ_E d².

NNLS is solved exactly for up to :data:`MAX_EXACT_REFERENCES` references: the optimum is the
unconstrained least-squares solution on its support (the KKT conditions), so the best feasible
solution over all 2ᴿ supports is the NNLS solution. With the Gram matrix G = AᵀA and b = Aᵀd each
support costs one R×R product per pixel, and every pixel runs the same arithmetic (no
data-dependent loops), which vectorises and JIT-compiles. More references use accelerated
projected gradient (FISTA) for a fixed number of iterations.

A free (either-sign) offset is handled exactly by projecting the constant out of data and
references before NNLS and restoring it afterwards.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np

from diffptycho._typing import Array, Bool, Float
from diffptycho.recon.chem.plausibility import occupied, warn_if_implausible

__all__ = ["LCFResult", "MAX_EXACT_REFERENCES", "linear_combination_fit", "nnls", "r_factor"]

MAX_EXACT_REFERENCES = 10
"""Up to this many references NNLS enumerates supports (exact); beyond, FISTA iterations."""


@dataclasses.dataclass(frozen=True)
class LCFResult:
    """Result of :func:`linear_combination_fit`.

    Attributes:
        weights: non-negative weight of each reference (reference, …), in units of the
            reference (1 = as much material as the reference spectrum describes); NaN where
            masked.
        offset: constant offset (…) in the data's unit; zeros unless fitted.
        fit: modelled spectra (energy, …).
        r_factor: Σ(data − fit)² / Σ data² per pixel (…), dimensionless; NaN where masked.
    """

    weights: Float[Array, "reference ..."]
    offset: Float[Array, "..."]
    fit: Float[Array, "energy ..."]
    r_factor: Float[Array, "..."]

    def fractions(self) -> Float[Array, "reference ..."]:
        """Weights normalised to sum to one per pixel (NaN where they sum to zero)."""
        total = jnp.sum(self.weights, axis=0)
        safe = jnp.where(total > 0, total, 1.0)
        return jnp.where(total > 0, self.weights / safe, jnp.nan)


def r_factor(data, fit, axis: int = 0):
    """R-factor Σ(data − fit)² / Σ data² along ``axis`` (energy); NaN where Σ data² = 0.

    Args:
        data: measured spectra, energy on ``axis``.
        fit: modelled spectra, same shape.
        axis: the energy axis.

    Returns:
        Dimensionless R-factor with ``axis`` removed.

    Examples:
        >>> round(float(r_factor(jnp.asarray([1.0, 2.0]), jnp.asarray([1.0, 1.0]))), 6)
        0.2
    """
    data, fit = jnp.asarray(data), jnp.asarray(fit)
    num = jnp.sum((data - fit) ** 2, axis=axis)
    den = jnp.sum(data**2, axis=axis)
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), jnp.nan)


def _support_pinvs(a: np.ndarray) -> np.ndarray:
    """Pseudo-inverse of A restricted to each non-empty support, (K = 2ᴿ − 1, R, E).

    Applying pinv(A_S) to the data, rather than solving the normal equations, keeps the error at
    cond(A)·ε instead of cond(A)²·ε: references that share a large baseline are nearly collinear,
    and float32 would otherwise lose the weights' per-mille accuracy.
    """
    r = a.shape[1]
    masks = [np.asarray(s, bool) for s in itertools.product((0, 1), repeat=r) if any(s)]
    out = np.zeros((len(masks), r, a.shape[0]))
    for k, s in enumerate(masks):
        out[k, s] = np.linalg.pinv(a[:, s])
    return out


def _nnls_exact(a, pinvs, d):
    """NNLS for one pixel's spectrum d (E,) by enumerating the supports."""
    w = jnp.einsum("kre,e->kr", pinvs, d)  # LS solution on each support, zero outside it
    # rounding can leave a component that is truly zero slightly negative; the smaller support
    # without it reaches the same residual, so a relative slack only avoids ties flipping
    slack = 1e-6 * jnp.max(jnp.abs(w), axis=1, keepdims=True)
    feasible = jnp.all(w >= -slack, axis=1)
    gain = jnp.einsum("kr,r->k", w, a.T @ d)  # ‖d‖² − ‖d − A w‖² for a support's LS solution
    best = jnp.argmax(jnp.where(feasible, gain, -jnp.inf))
    w_best = jnp.clip(w[best], 0.0, None)
    return jnp.where(jnp.any(feasible) & (gain[best] > 0), w_best, jnp.zeros_like(w_best))


def _nnls_fista(gram, b, iterations):
    """Accelerated projected gradient on ½wᵀGw − bᵀw, w ≥ 0, for one pixel."""
    step = 1.0 / jnp.maximum(jnp.linalg.eigvalsh(gram)[-1], 1e-30)

    def body(_, carry):
        w, y, t = carry
        w_new = jnp.clip(y - step * (gram @ y - b), 0.0, None)
        t_new = 0.5 * (1 + jnp.sqrt(1 + 4 * t**2))
        return w_new, w_new + (t - 1) / t_new * (w_new - w), t_new

    w0 = jnp.zeros_like(b)
    return jax.lax.fori_loop(0, iterations, body, (w0, w0, jnp.ones((), b.dtype)))[0]


def _prepare(a_np: np.ndarray, method: str) -> tuple[str, np.ndarray | None]:
    """Resolve ``method`` and precompute the support pseudo-inverses on the host."""
    n_ref = a_np.shape[1]
    if method == "auto":
        method = "exact" if n_ref <= MAX_EXACT_REFERENCES else "fista"
    if method == "exact":
        if n_ref > MAX_EXACT_REFERENCES:
            raise ValueError(f"nnls: exact method takes ≤ {MAX_EXACT_REFERENCES} references")
        return method, _support_pinvs(a_np)
    if method != "fista":
        raise ValueError(f"method={method!r}: expected 'auto', 'exact' or 'fista'")
    return method, None


def _solve(a, d, pinvs, method: str, iterations: int, batch_size: int):
    """W (R, n) for data d (E, n); traced inside the callers' JIT."""
    if method == "exact":

        def solve(di):
            return _nnls_exact(a, pinvs, di)

        return jax.lax.map(solve, d.T, batch_size=batch_size).T
    gram = a.T @ a

    def solve_fista(bi):
        return _nnls_fista(gram, bi, iterations)

    return jax.lax.map(solve_fista, (a.T @ d).T, batch_size=batch_size).T


_solve_jit = jax.jit(_solve, static_argnames=("method", "iterations", "batch_size"))


def nnls(
    matrix: Float[Array, "energy reference"],
    data: Float[Array, "energy n"],
    *,
    method: str = "auto",
    iterations: int = 2000,
    batch_size: int = 65536,
) -> Float[Array, "reference n"]:
    """Non-negative least squares min ‖A w − d‖², w ≥ 0, for many right-hand sides at once.

    Args:
        matrix: A, the reference spectra as columns (energy, reference).
        data: one spectrum per column (energy, n).
        method: ``"exact"`` (support enumeration, ≤ :data:`MAX_EXACT_REFERENCES` columns),
            ``"fista"`` (projected gradient) or ``"auto"``.
        iterations: FISTA iterations.
        batch_size: pixels per vectorised batch (bounds memory).

    Returns:
        W (reference, n), non-negative.

    Examples:
        >>> a = jnp.asarray([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
        >>> nnls(a, jnp.asarray([[1.0], [-1.0], [0.0]]))[:, 0].tolist()
        [0.5, 0.0]
    """
    a = jnp.asarray(matrix)
    d = jnp.asarray(data, dtype=a.dtype)
    if a.ndim != 2 or d.ndim != 2 or a.shape[0] != d.shape[0]:
        raise ValueError(f"nnls: expected A (E, R) and data (E, n), got {a.shape}, {d.shape}")
    method, pinvs = _prepare(np.asarray(a, dtype=np.float64), method)
    if d.shape[1] == 0:
        return jnp.zeros((a.shape[1], 0), a.dtype)
    pinvs = None if pinvs is None else jnp.asarray(pinvs, dtype=a.dtype)
    return _solve_jit(a, d, pinvs, method, iterations, min(batch_size, d.shape[1]))


@functools.partial(jax.jit, static_argnames=("offset", "method", "iterations", "batch_size"))
def _lcf_flat(a, flat, keep, pinvs, offset, method, iterations, batch_size):
    clean = jnp.where(keep[None], flat, 0.0)
    if offset:
        mean_a, mean_d = a.mean(axis=0), clean.mean(axis=0)
        w = _solve(a - mean_a, clean - mean_d, pinvs, method, iterations, batch_size)
        c = mean_d - mean_a @ w
    else:
        w = _solve(a, clean, pinvs, method, iterations, batch_size)
        c = jnp.zeros(flat.shape[1], flat.dtype)
    fit = a @ w + c[None]
    r = r_factor(clean, fit)
    nan = jnp.asarray(jnp.nan, flat.dtype)
    return (
        jnp.where(keep[None], w, nan),
        jnp.where(keep, c, nan),
        jnp.where(keep[None], fit, nan),
        jnp.where(keep, r, nan),
    )


def linear_combination_fit(
    spectra: Float[Array, "energy ..."],
    references: Float[Array, "reference energy"],
    *,
    mask: Bool[Array, "..."] | None = None,
    offset: bool = False,
    method: str = "auto",
    iterations: int = 2000,
    batch_size: int = 65536,
    check: bool = False,
) -> LCFResult:
    """Per-pixel non-negative linear combination fit of reference spectra.

    The non-negativity hides inconsistent inputs: a weight that would be negative is set to
    zero and the others absorb the misfit. With ``check``, the unconstrained least-squares
    shares w_r / Σw of the occupied pixels are examined as well, and a warning is issued when
    they leave [−0.2, 1.2] in more than 2 % of them
    (:func:`~diffptycho.recon.chem.plausibility.warn_if_implausible`).

    Args:
        spectra: data (energy, …), e.g. an OD stack (energy, y, x) or (energy, z, y, x).
        references: reference spectra on the same energies (reference, energy).
        mask: pixels to fit (…); others get NaN weights and R-factor. None fits all.
        offset: also fit a free constant (either sign) per pixel.
        method: NNLS method, see :func:`nnls`.
        iterations: FISTA iterations (``method="fista"``).
        batch_size: pixels per vectorised batch (bounds memory).
        check: warn about implausible shares (concrete arrays only, ≥ 2 references).

    Returns:
        :class:`LCFResult`.

    Raises:
        ValueError: mismatched shapes, non-finite references, or an empty reference set.

    Warns:
        ImplausibleUnmixingWarning: the unconstrained shares are implausible: inconsistent
            references, wrong energies, or data that are not normalised ODs.

    Examples:
        >>> refs = jnp.asarray([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
        >>> res = linear_combination_fit(0.5 * refs[0][:, None] + refs[1][:, None], refs)
        >>> [round(float(v), 6) for v in res.weights[:, 0]]
        [0.5, 1.0]
    """
    d = jnp.asarray(spectra)
    refs_np = np.asarray(references, dtype=np.float64)
    if refs_np.ndim != 2 or refs_np.shape[0] == 0:
        raise ValueError(f"references: expected (reference, energy), got {refs_np.shape}")
    if d.ndim < 1 or d.shape[0] != refs_np.shape[1]:
        raise ValueError(
            f"spectra: expected {refs_np.shape[1]} energies on the first axis (as the "
            f"references), got shape {d.shape}"
        )
    if not np.all(np.isfinite(refs_np)):
        raise ValueError("references: non-finite values")
    spatial = d.shape[1:]
    flat = d.reshape(d.shape[0], -1)
    keep = jnp.ones(flat.shape[1], bool) if mask is None else jnp.asarray(mask).reshape(-1)
    if keep.shape[0] != flat.shape[1]:
        raise ValueError(f"mask: expected shape {spatial}, got {jnp.shape(mask)}")
    keep = keep & jnp.all(jnp.isfinite(flat), axis=0)
    a_np = refs_np.T
    method, pinvs = _prepare(a_np - a_np.mean(axis=0) if offset else a_np, method)
    pinvs = None if pinvs is None else jnp.asarray(pinvs, dtype=d.dtype)
    n = max(flat.shape[1], 1)
    w, c, fit, r = _lcf_flat(
        jnp.asarray(a_np, dtype=d.dtype),
        flat,
        keep,
        pinvs,
        offset,
        method,
        iterations,
        min(batch_size, n),
    )
    if check and refs_np.shape[0] >= 2 and not isinstance(flat, jax.core.Tracer):
        _check_shares(a_np, np.asarray(flat, np.float64), np.asarray(keep), offset)
    return LCFResult(
        weights=w.reshape(refs_np.shape[0], *spatial),
        offset=c.reshape(spatial),
        fit=fit.reshape(d.shape),
        r_factor=r.reshape(spatial),
    )


def _check_shares(a: np.ndarray, flat: np.ndarray, keep: np.ndarray, offset: bool) -> float:
    """Warn when the unconstrained least-squares shares of the occupied pixels are implausible."""
    data = np.where(keep[None], flat, 0.0)
    if offset:
        a, data = a - a.mean(axis=0), data - data.mean(axis=0)
    w = np.linalg.pinv(a) @ data  # (reference, pixel)
    total = w.sum(axis=0)
    judged = keep & occupied(np.where(keep, total, np.nan))
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = w / np.where(total != 0, total, np.nan)
    return warn_if_implausible(
        shares, judged, what="linear combination fit (unconstrained shares)", stacklevel=4
    )
