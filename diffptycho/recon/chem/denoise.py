"""Denoising of (energy, y, x) optical-density stacks before per-pixel XANES fits.

Two optional, independent steps, standard in spectromicroscopy:

- :func:`svd_denoise`: truncation of the (energy, pixel) matrix to the few components the
  chemistry spans (Lerotic et al., Ultramicroscopy 100, 35 (2004), cluster analysis on PCA).
  Per-pixel spectra of a sample made of a few species are sums of the species' spectra scaled
  by their thicknesses, a matrix of rank ≈ number of species; noise that is independent from
  energy to energy spreads over all ``energy`` dimensions, so keeping r components keeps about
  r/energy of its power. The rank is chosen from the data (:func:`choose_rank`), never from a
  known answer: components whose singular value exceeds the Marchenko–Pastur edge of the
  noise level estimated from the stack itself.
- :func:`smooth_stack`: the same masked Gaussian low-pass of every energy's image. It trades
  spatial resolution (σ in pixels) for lower pixel-to-pixel error; it removes error that
  differs from energy to energy at high spatial frequencies (sub-pixel discretisation of a
  sample finer than the pixel), which the spectral truncation cannot.

Errors common to all energies (a thickness or background error) pass both steps; the
normalised edge energy ignores them.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from jaxtyping import Bool, Float
from scipy import ndimage

__all__ = [
    "SVDDenoised",
    "choose_rank",
    "noise_sigma_from_differences",
    "smooth_stack",
    "svd_denoise",
]


def _check_stack(stack, mask) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(stack, dtype=np.float64)
    if x.ndim < 2:
        raise ValueError(f"stack: expected (energy, …) spectra per pixel, got shape {x.shape}")
    spatial = x.shape[1:]
    m = np.ones(spatial, bool) if mask is None else np.asarray(mask, bool)
    if m.shape != spatial:
        raise ValueError(f"mask: expected shape {spatial} (the stack's pixels), got {m.shape}")
    m = m & np.all(np.isfinite(x), axis=0)
    if m.sum() < 2 or x.shape[0] < 2:
        raise ValueError(
            f"stack: need ≥ 2 energies and ≥ 2 finite masked pixels, got {x.shape[0]} energies "
            f"and {int(m.sum())} pixels"
        )
    return x, m


def noise_sigma_from_differences(spectra: Float[np.ndarray, "energy n"]) -> float:
    """Per-value noise σ of spectra from second differences along energy (robust, MAD).

    For noise independent between energies, the second difference x[e−1] − 2x[e] + x[e+1] has
    variance 6σ²; smooth spectral structure (edges a few energy steps wide) contributes little
    to the median absolute deviation.

    Args:
        spectra: (energy ≥ 3, n) values, e.g. optical densities.

    Returns:
        σ in the units of ``spectra``.
    """
    x = np.asarray(spectra, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 3:
        raise ValueError(f"spectra: expected (energy ≥ 3, n), got shape {x.shape}")
    d2 = x[:-2] - 2.0 * x[1:-1] + x[2:]
    mad = np.median(np.abs(d2 - np.median(d2)))
    return float(1.4826 * mad / np.sqrt(6.0))


def choose_rank(
    singular_values: Float[np.ndarray, " k"], shape: tuple[int, int], sigma: float
) -> int:
    """Components above the noise: singular values > σ(√m + √n) (Marchenko–Pastur edge).

    A (m × n) matrix of independent noise of σ has its largest singular value near σ(√m + √n);
    components above it carry signal.

    Args:
        singular_values: decreasing singular values of the (energy, pixel) matrix.
        shape: (m, n) of that matrix.
        sigma: per-value noise σ (same units as the matrix).

    Returns:
        The rank, at least 1.
    """
    s = np.asarray(singular_values, dtype=np.float64)
    edge = float(sigma) * (np.sqrt(shape[0]) + np.sqrt(shape[1]))
    return max(1, int(np.sum(s > edge)))


@dataclasses.dataclass(frozen=True)
class SVDDenoised:
    """Result of :func:`svd_denoise`.

    Attributes:
        stack: the denoised stack (energy, …), the input outside ``mask``.
        rank: components kept.
        singular_values: all singular values of the masked (energy, pixel) matrix (scree).
        explained: cumulative fraction of Σs² explained by the first 1, 2, … components.
        noise_sigma: per-value noise σ the rank was chosen with (stack units), or NaN if the
            rank was given.
        components: (rank, energy) spectral components (orthonormal rows).
    """

    stack: Float[np.ndarray, " energy *spatial"]
    rank: int
    singular_values: Float[np.ndarray, " k"]
    explained: Float[np.ndarray, " k"]
    noise_sigma: float
    components: Float[np.ndarray, "rank energy"]


def svd_denoise(
    stack: Float[np.ndarray, " energy *spatial"],
    mask: Bool[np.ndarray, "*spatial"] | None = None,
    rank: int | None = None,
) -> SVDDenoised:
    """Project every pixel's spectrum onto the leading spectral components of the stack.

    The matrix is not centred: spectra of a few species scaled by thickness, with vacuum at
    zero, span exactly as many components as species.

    Args:
        stack: spectra (energy, …), e.g. optical density μt (energy, y, x).
        mask: pixels (…) that define the components and are denoised (e.g. the valid mask);
            default all finite pixels.
        rank: components to keep; None chooses it from the data with :func:`choose_rank`
            and the noise σ of :func:`noise_sigma_from_differences`.

    Returns:
        :class:`SVDDenoised`.

    Raises:
        ValueError: bad shapes, too few pixels or energies, or ``rank`` out of range.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> clean = np.outer(np.linspace(0, 1, 30), rng.uniform(1, 2, 400))
        >>> out = svd_denoise(clean + rng.normal(0, 0.01, clean.shape))
        >>> out.rank, bool(np.std(out.stack - clean) < 0.004)
        (1, True)
    """
    x, m = _check_stack(stack, mask)
    a = x[:, m]  # (energy, n)
    u, s, vt = np.linalg.svd(a, full_matrices=False)
    sigma = float("nan")
    if rank is None:
        sigma = noise_sigma_from_differences(a) if a.shape[0] >= 3 else 0.0
        r = choose_rank(s, a.shape, sigma)
    else:
        r = int(rank)
        if not 1 <= r <= len(s):
            raise ValueError(f"rank={rank!r}: expected 1 … {len(s)} (energies or pixels)")
    out = x.copy()
    out[:, m] = (u[:, :r] * s[:r]) @ vt[:r]
    power = s**2
    explained = np.cumsum(power) / power.sum() if power.sum() > 0 else np.ones_like(s)
    return SVDDenoised(out, r, s, explained, sigma, u[:, :r].T)


def smooth_stack(
    stack: Float[np.ndarray, "energy y x"],
    sigma_px: float,
    mask: Bool[np.ndarray, "y x"] | None = None,
) -> Float[np.ndarray, "energy y x"]:
    """The same Gaussian low-pass of every energy's image, normalised inside ``mask``.

    Each image is convolved with a Gaussian of standard deviation ``sigma_px`` pixels after
    zeroing pixels outside the mask, and divided by the convolved mask, so pixels near the
    mask's edge average only masked pixels (no vacuum or invalid values leak in).

    Args:
        stack: images (energy, y, x).
        sigma_px: Gaussian σ in pixels (0 returns the stack unchanged).
        mask: pixels (y, x) to average; default all finite pixels. Output is 0 outside.

    Returns:
        The smoothed stack (energy, y, x).

    Raises:
        ValueError: bad shapes or a negative ``sigma_px``.
    """
    x = np.asarray(stack, dtype=np.float64)
    if x.ndim != 3:
        raise ValueError(f"stack: expected (energy, y, x), got shape {x.shape}")
    if not (np.isfinite(sigma_px) and sigma_px >= 0):
        raise ValueError(f"sigma_px={sigma_px!r}: expected a width ≥ 0 in pixels")
    x, m = _check_stack(x, mask)
    if sigma_px == 0:
        return np.where(m, x, 0.0)
    w = ndimage.gaussian_filter(m.astype(np.float64), sigma_px)
    num = ndimage.gaussian_filter(np.where(m, x, 0.0), (0, sigma_px, sigma_px))
    return np.where(m, num / np.maximum(w, 1e-12), 0.0)
