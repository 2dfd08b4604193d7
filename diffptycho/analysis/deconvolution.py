"""Deconvolution of reconstructed volumes by a known Gaussian point-spread function.

A reconstruction at finite resolution is the true field blurred by the point-spread function
(PSF) plus noise. Thresholding the blurred density at half the full density loses the rims and
corners of particles only a few voxels thick (the blurred peak of a 3-voxel plate is below 1 and
its rim sits at about half of that), so the mask is biased small. :func:`tv_deconvolve` restores
the field as

    x̂ = argmin_{lo ≤ x ≤ hi} ½‖H x − y‖² + λ TV(x),

with H the Gaussian PSF (applied in Fourier space, periodic), TV the isotropic total variation and
the bounds the physical range of the field (0 ≤ volume fraction ≤ 1). The box alone does not stop
noise from being amplified at high frequencies; the TV term does, for fields made of domains of
constant value, such as solid particles in vacuum. :func:`noise_sigma` estimates the noise from
the data (Donoho's median absolute deviation of the finest wavelet details), and λ is set in
proportion to it: λ = κ σ, with κ chosen so that the residual ‖H x̂ − y‖² / N matches σ²
(Morozov's discrepancy principle); :class:`Deconvolution` reports the ratio to check it.

The problem is solved with the primal–dual algorithm of Condat (2013), J. Optim. Theory Appl.
158, 460, and Vũ (2013), Adv. Comput. Math. 38, 667, which handles the smooth data term by its
gradient, the box by projection and the TV through its dual.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from .._typing import Array, Float, Int

__all__ = ["Deconvolution", "gaussian_transfer", "noise_sigma", "tv_deconvolve"]

_MAD_TO_SIGMA = 0.6744897501960817  # median |N(0, 1)|
_TV_WEIGHT_PER_SIGMA = 0.45
"""κ in λ = κ σ: residual ≈ σ² on simulated LiFePO4 plates (6.7 nm voxels, 11 nm PSF)."""


def gaussian_transfer(shape: tuple[int, ...], sigma_vox: float) -> np.ndarray:
    """Transfer function exp(−2π²σ²|f|²) of a unit Gaussian PSF on the ``rfftn`` grid of ``shape``.

    Args:
        shape: array shape (…); the last axis is the half-spectrum axis of ``rfftn``.
        sigma_vox: PSF standard deviation in voxels (FWHM = 2√(2 ln 2) σ).

    Returns:
        Real transfer function of shape ``shape[:-1] + (shape[-1] // 2 + 1,)``.
    """
    freqs = [np.fft.fftfreq(n) for n in shape[:-1]] + [np.fft.rfftfreq(shape[-1])]
    grids = np.meshgrid(*freqs, indexing="ij", sparse=True)
    return np.exp(-2.0 * np.pi**2 * sigma_vox**2 * sum(g**2 for g in grids))


def noise_sigma(volume: Float[np.ndarray, "*axes"]) -> float:
    """Standard deviation of white noise in an array, from its finest Haar wavelet details.

    The detail of every axis at once (the difference pattern of each 2 × 2 × … block) is pure
    noise except where the field has structure at the voxel scale; the median absolute value
    ignores those few places (Donoho & Johnstone 1994, Biometrika 81, 425).

    Args:
        volume: image or volume (…), any unit; axes of odd length lose their last slice.

    Returns:
        σ in the unit of ``volume`` (0 for a noise-free smooth field).

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> round(noise_sigma(rng.normal(0.0, 2.0, (64, 64, 64))), 1)
        2.0
    """
    d = np.asarray(volume, dtype=np.float64)
    d = d[tuple(slice(0, n - n % 2) for n in d.shape)]
    for axis in range(d.ndim):
        even = np.take(d, np.arange(0, d.shape[axis], 2), axis=axis)
        odd = np.take(d, np.arange(1, d.shape[axis], 2), axis=axis)
        d = (even - odd) / np.sqrt(2.0)
    return float(np.median(np.abs(d)) / _MAD_TO_SIGMA)


def _gradient(x: Float[Array, " *axes"]) -> Float[Array, " ndim *axes"]:
    """Forward differences along every axis, zero across the last face (Neumann)."""
    return jnp.stack(
        [jnp.diff(x, axis=a, append=jnp.take(x, jnp.array([-1]), axis=a)) for a in range(x.ndim)]
    )


def _divergence(p: Float[Array, " ndim *axes"]) -> Float[Array, " *axes"]:
    """Negative adjoint of :func:`_gradient`: ⟨∇x, p⟩ = −⟨x, div p⟩."""
    out = jnp.zeros(p.shape[1:], p.dtype)
    for a in range(p.shape[0]):
        pa = jnp.moveaxis(p[a], a, 0)
        d = jnp.concatenate([pa[:1], pa[1:-1] - pa[:-2], -pa[-2:-1]])
        out = out + jnp.moveaxis(d, 0, a)
    return out


@functools.partial(jax.jit, static_argnames=("n_iter",))
def _condat_vu(
    y: Float[Array, " *axes"],
    transfer: Float[Array, " *freq"],
    weight: Float[Array, ""],
    lo: float,
    hi: float,
    n_iter: int,
    tol: float,
) -> tuple[Float[Array, " *axes"], Int[Array, ""]]:
    """Condat–Vũ iterations for ½‖H x − y‖² + λ TV(x) over lo ≤ x ≤ hi; (x̂, iterations)."""

    def blur(v, t):
        return jnp.fft.irfftn(jnp.fft.rfftn(v) * t, s=y.shape)

    h_y, h2 = blur(y, transfer), transfer**2  # HᵀH = H²: the PSF is symmetric
    tau, step_dual = 0.5, 0.12  # 1/τ − σ‖∇‖² ≥ ‖H‖²/2 with ‖∇‖² ≤ 4 · ndim ≤ 12
    tiny = jnp.finfo(y.dtype).tiny

    def body(state):
        it, x, p, _ = state
        x_new = jnp.clip(x - tau * (blur(x, h2) - h_y - _divergence(p)), lo, hi)
        p_new = p + step_dual * _gradient(2.0 * x_new - x)
        norm = jnp.sqrt(sum(pa**2 for pa in p_new))  # (a reduction over axis 0 is slow on CPU)
        p_new = p_new * (weight / jnp.maximum(norm, jnp.maximum(weight, tiny)))  # onto |p| ≤ λ
        # both moves: at the start the primal may rest while the dual builds up
        change = jnp.maximum(jnp.max(jnp.abs(x_new - x)), jnp.max(jnp.abs(p_new - p)))
        return it + 1, x_new, p_new, change

    def cond(state):
        it, _, _, change = state
        return (it < n_iter) & (change >= tol * (hi - lo))

    x0 = jnp.clip(y, lo, hi)
    state = (jnp.array(0), x0, jnp.zeros((y.ndim,) + y.shape, y.dtype), jnp.array(jnp.inf, y.dtype))
    it, x, _, _ = jax.lax.while_loop(cond, body, state)
    return x, it


@dataclasses.dataclass(frozen=True)
class Deconvolution:
    """Result of :func:`tv_deconvolve`.

    Attributes:
        field: the restored field (…), within the bounds.
        weight: TV weight λ used, in the unit of the field.
        noise_sigma: noise σ of the data (estimated or given), in the unit of the field.
        residual_ratio: ‖H x̂ − y‖² / (N σ²); ≈ 1 when λ obeys the discrepancy principle (inf
            for σ = 0).
        iterations: iterations run.
    """

    field: np.ndarray
    weight: float
    noise_sigma: float
    residual_ratio: float
    iterations: int


def tv_deconvolve(
    data: Float[np.ndarray, "*axes"],
    psf_sigma_vox: float,
    *,
    weight: float | None = None,
    sigma: float | None = None,
    bounds: tuple[float, float] = (0.0, 1.0),
    n_iter: int = 150,
    tol: float = 1e-4,
) -> Deconvolution:
    """Box-constrained total-variation deconvolution by a Gaussian PSF (see module docstring).

    Args:
        data: blurred noisy field y (…), e.g. a total volume fraction; should be empty near its
            faces (the PSF is applied periodically).
        psf_sigma_vox: PSF standard deviation in voxels (FWHM = 2√(2 ln 2) σ).
        weight: TV weight λ in the unit of ``data``; None: κ σ with κ = 0.45 (discrepancy).
        sigma: noise standard deviation in the unit of ``data``; None: :func:`noise_sigma`.
        bounds: (lowest, highest) physical value of the field.
        n_iter: largest number of iterations.
        tol: stop when the largest change of a voxel in one iteration falls below
            ``tol`` × (highest − lowest).

    Returns:
        The :class:`Deconvolution`.

    Examples:
        >>> from scipy import ndimage
        >>> x = np.zeros((32, 32, 32)); x[10:13, 8:24, 8:24] = 1.0  # 3-voxel-thick plate
        >>> y = ndimage.gaussian_filter(x, 0.7, mode="wrap")
        >>> int(((y >= 0.5) != (x >= 0.5)).sum()) > 0  # thresholding the blur loses the rim
        True
        >>> d = tv_deconvolve(y, 0.7, sigma=0.0)
        >>> int(((d.field >= 0.5) != (x >= 0.5)).sum())
        0
    """
    y = np.asarray(data, dtype=np.float64)
    lo, hi = (float(b) for b in bounds)
    if not (np.isfinite(psf_sigma_vox) and psf_sigma_vox >= 0):
        raise ValueError(f"psf_sigma_vox={psf_sigma_vox!r}: expected a PSF σ ≥ 0 in voxels")
    if not lo < hi:
        raise ValueError(f"bounds={bounds!r}: expected lowest < highest")
    if not np.all(np.isfinite(y)):
        raise ValueError("data: expected finite values (fill empty voxels with 0)")
    s = noise_sigma(y) if sigma is None else float(sigma)
    lam = _TV_WEIGHT_PER_SIGMA * s if weight is None else float(weight)
    if s < 0 or lam < 0:
        raise ValueError(f"sigma={s!r}, weight={lam!r}: expected values ≥ 0")
    transfer = gaussian_transfer(y.shape, psf_sigma_vox)
    y_j = jnp.asarray(y)
    x, iterations = _condat_vu(
        y_j,
        jnp.asarray(transfer, y_j.dtype),
        jnp.asarray(lam, y_j.dtype),
        lo,
        hi,
        int(n_iter),
        float(tol),
    )
    blurred = jnp.fft.irfftn(jnp.fft.rfftn(x) * jnp.asarray(transfer, x.dtype), s=y.shape)
    x = np.asarray(x, dtype=np.float64)
    resid = float(np.mean((np.asarray(blurred, np.float64) - y) ** 2))
    ratio = resid / s**2 if s > 0 else float("inf")
    return Deconvolution(
        field=x, weight=lam, noise_sigma=s, residual_ratio=ratio, iterations=int(iterations)
    )
