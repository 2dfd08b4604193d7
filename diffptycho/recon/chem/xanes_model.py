"""The XANES model of one pixel (erf edge + two Lorentzians), its bounds and starting values.

    μt(E) = a + (b1/2)(1 + erf((E − b2)/b3)) + Σ_{i=1,2} c_i1 / (1 + ((E − c_i2)/c_i3)²)

a is a constant background, b1 the edge jump at the half-height energy b2 (b3 = √2 σ of the
Gaussian whose integral the edge is), i = 1 the pre-edge peak and i = 2 the main peak above the
edge, of heights c_i1, centres c_i2 and half widths c_i3 (FWHM = 2 c_i3, area π c_i1 c_i3).
μt is an optical density (OD = −ln|T|², dimensionless); energies are in eV.
:mod:`diffptycho.recon.chem.xanes` fits it to every pixel.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import erf

from diffptycho._typing import Array, Float

__all__ = [
    "PARAMETER_NAMES",
    "SIGMA_FLOOR",
    "XanesWindows",
    "amplitude_scale",
    "check_energies",
    "default_windows",
    "erf_edge",
    "initial_parameters",
    "lorentzian",
    "lorentzian_area",
    "noise_sigma",
    "xanes_model",
]

PARAMETER_NAMES = ("a", "b1", "b2", "b3", "c11", "c12", "c13", "c21", "c22", "c23")
"""Order of the 10 model parameters (μt units for a, b1, c11, c21; eV for the rest)."""
SIGMA_FLOOR = 1e-6
"""Smallest noise σ in μt units, so that noiseless flat spectra are masked too."""


def erf_edge(energies_ev, jump, edge_ev, width_ev):
    """Error-function edge (jump/2)(1 + erf((E − E₀)/w)): 0 far below, ``jump`` far above.

    Args:
        energies_ev: photon energies in eV.
        jump: edge jump Δμt (dimensionless OD).
        edge_ev: half-height energy E₀ in eV.
        width_ev: w = √2 σ in eV (σ of the Gaussian whose integral the edge is).

    Returns:
        The edge, broadcast shape of the arguments.
    """
    return 0.5 * jump * (1.0 + erf((energies_ev - edge_ev) / width_ev))


def lorentzian(energies_ev, height, center_ev, hwhm_ev):
    """Lorentzian peak h / (1 + ((E − E₀)/γ)²): FWHM 2γ, area π h γ.

    Args:
        energies_ev: photon energies in eV.
        height: peak height (μt).
        center_ev: centre E₀ in eV.
        hwhm_ev: half width at half maximum γ in eV.

    Returns:
        The peak, broadcast shape of the arguments.
    """
    return height / (1.0 + ((energies_ev - center_ev) / hwhm_ev) ** 2)


def lorentzian_area(height, hwhm_ev):
    """Area ∫ h/(1 + ((E − E₀)/γ)²) dE = π h γ, in μt·eV.

    Examples:
        >>> round(float(lorentzian_area(2.0, 0.5)), 6)
        3.141593
    """
    return jnp.pi * height * hwhm_ev


def xanes_model(
    params: Float[Array, " 10"], energies_ev: Float[Array, " energy"]
) -> Float[Array, " energy"]:
    """The XANES model μt(E) of one pixel (erf edge + pre-edge and main Lorentzians).

    Args:
        params: ``(a, b1, b2, b3, c11, c12, c13, c21, c22, c23)`` in the order of
            :data:`PARAMETER_NAMES` (μt or eV; see the module docstring).
        energies_ev: photon energies in eV (or offsets from a reference, consistently with
            the energy parameters).

    Returns:
        μt at each energy (dimensionless OD).
    """
    a, b1, b2, b3, c11, c12, c13, c21, c22, c23 = params
    return (
        a
        + erf_edge(energies_ev, b1, b2, b3)
        + lorentzian(energies_ev, c11, c12, c13)
        + lorentzian(energies_ev, c21, c22, c23)
    )


class XanesWindows(eqx.Module):
    """Energy windows (eV) bounding the fit and selecting the pre-/post-edge points.

    A pytree: under ``jax.jit`` its numbers are traced, so new windows do not recompile.

    Attributes:
        edge_ev: bounds of the edge energy b2.
        edge_width_ev: bounds of the erf width b3.
        pre_edge_ev: bounds of the pre-edge centre c12.
        pre_edge_hwhm_ev: bounds of the pre-edge half width c13.
        main_peak_ev: bounds of the main-peak centre c22.
        main_hwhm_ev: bounds of the main-peak half width c23.
        pre_edge_max_ev: points below this energy are the flat pre-edge (background a, noise σ).
        post_edge_min_ev: points above this energy start the jump b1.
    """

    edge_ev: tuple[float, float]
    edge_width_ev: tuple[float, float]
    pre_edge_ev: tuple[float, float]
    pre_edge_hwhm_ev: tuple[float, float]
    main_peak_ev: tuple[float, float]
    main_hwhm_ev: tuple[float, float]
    pre_edge_max_ev: float
    post_edge_min_ev: float

    def __check_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, tuple) and not (len(value) == 2 and value[0] < value[1]):
                raise ValueError(f"XanesWindows.{field.name}={value!r}: expected (low, high) eV")
        if self.edge_width_ev[0] <= 0 or min(self.pre_edge_hwhm_ev + self.main_hwhm_ev) <= 0:
            raise ValueError("XanesWindows: widths must have positive lower bounds (eV)")

    def bounds(self) -> tuple[Float[Array, " 10"], Float[Array, " 10"]]:
        """Lower and upper bounds (10,) in eV; amplitudes and a get placeholders (0, 1)."""
        pairs = (
            (0.0, 1.0),
            (0.0, 1.0),
            self.edge_ev,
            self.edge_width_ev,
            (0.0, 1.0),
            self.pre_edge_ev,
            self.pre_edge_hwhm_ev,
            (0.0, 1.0),
            self.main_peak_ev,
            self.main_hwhm_ev,
        )
        return jnp.stack([jnp.asarray(a) for a, _ in pairs]), jnp.stack(
            [jnp.asarray(b) for _, b in pairs]
        )


def check_energies(energies_ev) -> np.ndarray:
    """Validate a photon-energy grid (eV): ≥ 8 strictly increasing finite values, as float64."""
    e = np.asarray(energies_ev, dtype=np.float64)
    if e.ndim != 1 or e.size < 8 or not np.all(np.isfinite(e)) or np.any(np.diff(e) <= 0):
        raise ValueError(
            f"energies_ev: expected ≥ 8 strictly increasing finite energies in eV, got shape "
            f"{e.shape}"
        )
    return e


def default_windows(energies_ev, spectra) -> XanesWindows:
    """Data-driven windows around the edge of the mean spectrum.

    The edge E₀ is where the mean spectrum's derivative, smoothed by a Gaussian of 3 eV (or one
    grid step) that suppresses the narrow pre-edge peak, is largest. Then b2 ∈ E₀ ± 12 eV, the
    pre-edge peak lies in [E₀ − 20, E₀ − 6] eV (half width ≤ 2.5 eV, so that it
    cannot absorb the rise of the edge), the main peak in [E₀ − 5, E₀ + 25] eV, flat
    pre-edge points below E₀ − 20 eV and post-edge points above E₀ + 25 eV. The fit of
    :mod:`~diffptycho.recon.chem.xanes` also keeps the main peak at or above the edge energy
    (c22 ≥ b2), so that it cannot take the rise either.

    Args:
        energies_ev: photon energies in eV, shape (E,).
        spectra: μt spectra (n, E); NaN rows are ignored.

    Returns:
        The windows.
    """
    e = check_energies(energies_ev)
    y = np.asarray(spectra, dtype=np.float64).reshape(-1, e.size)
    good = np.all(np.isfinite(y), axis=1)
    mean = y[good].mean(axis=0) if good.any() else np.zeros_like(e)
    step = float(np.median(np.diff(e)))
    s = max(3.0, step)
    kernel = np.exp(-0.5 * ((e[:, None] - e[None, :]) / s) ** 2)
    slope = kernel @ np.gradient(mean, e) / kernel.sum(axis=1)
    inner = slice(e.size // 10, e.size - e.size // 10)
    e0 = float(e[inner][np.argmax(slope[inner])])
    return XanesWindows(
        edge_ev=(e0 - 12.0, e0 + 12.0),
        edge_width_ev=(0.3, 12.0),
        pre_edge_ev=(e0 - 20.0, e0 - 6.0),
        pre_edge_hwhm_ev=(0.5, 2.5),
        main_peak_ev=(e0 - 5.0, e0 + 25.0),
        main_hwhm_ev=(1.0, 15.0),
        pre_edge_max_ev=e0 - 20.0,
        post_edge_min_ev=e0 + 25.0,
    )


def amplitude_scale(y: Float[Array, "n energy"]) -> Float[Array, " n"]:
    """Per-pixel amplitude scale R: the peak-to-peak μt, floored at :data:`SIGMA_FLOOR`."""
    return jnp.maximum(jnp.max(y, axis=1) - jnp.min(y, axis=1), SIGMA_FLOOR)


def _region(e, select, fallback: slice):
    """``select`` if it holds ≥ 4 energies, else the ``fallback`` slice (trace-friendly)."""
    backup = np.zeros(np.shape(e), bool)
    backup[fallback] = True
    return jnp.where(jnp.sum(select) >= 4, select, jnp.asarray(backup))


def _masked_mean(y, m):
    return jnp.sum(jnp.where(m, y, 0.0), axis=-1) / jnp.sum(m)


def noise_sigma(
    spectra: Float[Array, "n energy"], energies_ev, pre_edge_max_ev: float
) -> Float[Array, " n"]:
    """Noise σ per pixel: RMS residual of a straight line through the flat pre-edge points.

    Args:
        spectra: μt spectra (n, E).
        energies_ev: photon energies in eV, shape (E,).
        pre_edge_max_ev: points below this energy are used (at least the first 4 points).

    Returns:
        σ (n,) in μt units, with n_pre − 2 degrees of freedom.
    """
    y = jnp.asarray(spectra)
    e = jnp.asarray(energies_ev, y.dtype)
    w = _region(e, e < pre_edge_max_ev, slice(0, max(4, e.size // 4))).astype(y.dtype)
    x = jnp.where(w > 0, e - jnp.sum(w * e) / jnp.sum(w), 0.0)
    design = jnp.stack([w, w * x], axis=1)  # weighted line fit: rows outside the region vanish
    hat = design @ jnp.linalg.pinv(design)
    r = w * (y - y @ hat.T)
    return jnp.sqrt(jnp.sum(r**2, axis=1) / jnp.maximum(jnp.sum(w) - 2.0, 1.0))


def initial_parameters(
    spectra: Float[Array, "n energy"], energies_ev, windows: XanesWindows
) -> Float[Array, "n 10"]:
    """Data-driven starting values, vectorised over pixels.

    a from the pre-edge mean, b1 from post-edge mean − a, b2 where the (3-point smoothed)
    derivative peaks inside the edge window, c11/c12 from the largest excess over that edge in
    the pre-edge window, c21/c22 likewise above b2; widths at the geometric mean of their bounds.

    Args:
        spectra: μt spectra (n, E), finite.
        energies_ev: photon energies in eV, shape (E,).
        windows: the bounds.

    Returns:
        Parameters (n, 10) inside the bounds, energies in eV.
    """
    y = jnp.asarray(spectra)
    ej = jnp.asarray(energies_ev, y.dtype)
    quarter = max(4, ej.size // 4)
    pre = _region(ej, ej < windows.pre_edge_max_ev, slice(0, quarter))
    post = _region(ej, ej > windows.post_edge_min_ev, slice(-quarter, None))
    scale = amplitude_scale(y)
    a0 = _masked_mean(y, pre)
    b1 = jnp.clip(_masked_mean(y, post) - a0, 0.05 * scale, 2.5 * scale)
    grad = jnp.pad(jnp.gradient(y, ej, axis=1), ((0, 0), (1, 1)), mode="edge")
    grad = grad[:, :-2] + 2.0 * grad[:, 1:-1] + grad[:, 2:]  # 3-point smoothing against noise
    in_edge = (ej >= windows.edge_ev[0]) & (ej <= windows.edge_ev[1])
    b2 = ej[jnp.argmax(jnp.where(in_edge, grad, -jnp.inf), axis=1)]
    b3 = jnp.full_like(a0, jnp.sqrt(windows.edge_width_ev[0] * windows.edge_width_ev[1]))
    excess = y - a0[:, None] - erf_edge(ej, b1[:, None], b2[:, None], b3[:, None])

    def peak(window, above):
        inside = (ej >= window[0]) & (ej <= window[1])
        allowed = inside[None] & ((ej[None] > b2[:, None]) | (not above))
        masked = jnp.where(allowed, excess, -jnp.inf)
        i = jnp.argmax(masked, axis=1)
        height = jnp.take_along_axis(excess, i[:, None], axis=1)[:, 0]
        centre = jnp.where(jnp.any(allowed, axis=1), ej[i], 0.5 * (window[0] + window[1]))
        return jnp.clip(height, 0.05 * scale, 2.5 * scale), centre

    c11, c12 = peak(windows.pre_edge_ev, above=False)
    c21, c22 = peak(windows.main_peak_ev, above=True)
    c13 = jnp.full_like(a0, jnp.sqrt(windows.pre_edge_hwhm_ev[0] * windows.pre_edge_hwhm_ev[1]))
    c23 = jnp.full_like(a0, jnp.sqrt(windows.main_hwhm_ev[0] * windows.main_hwhm_ev[1]))
    return jnp.stack([a0, b1, b2, b3, c11, c12, c13, c21, c22, c23], axis=1)
