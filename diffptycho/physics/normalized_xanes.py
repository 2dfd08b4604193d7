"""From a measured XANES spectrum to the refractive index of a compound.

Standards are measured as μ(E) and kept *normalised* (edge step 1), as Athena and Larch do:

1. :func:`normalize_xanes` — a line fitted below the edge (pre-edge), a polynomial fitted to
   μ − pre-edge above it (post-edge), edge step = post − pre at E₀, norm = (μ − pre)/step and,
   optionally, the flattened spectrum (post-edge curvature removed). The same recipe as
   Athena's and ``larch.xafs.pre_edge`` with the fit ranges given relative to E₀.
2. :func:`delta_beta_from_normalized` — the absorber's f2 is rebuilt from the normalised μ on
   top of the tabulated (Chantler) background without the edge, scaled to the tabulated edge
   jump; its change against the table is localised near the edge, so its f1 partner is the
   difference Kramers–Kronig transform (:func:`~diffptycho.physics.kramers_kronig.kk_f_matrix`)
   added to the tabulated f1; δ, β follow with the absorber's number density, on top of the
   tabulated δ, β of the compound.

Why the factor E/E₀ in step 2: μ = 4πβ/λ ∝ λ·f2 per atom, so a spectrum normalised at E₀ maps
to f2 as f2 − f2_below = J·norm·λ(E₀)/λ(E) = J·norm·E/E₀, J the f2 jump at E₀. A flattened
spectrum (post-edge 1) maps as f2 − f2_below = flat·(f2_above − f2_below).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from jaxtyping import Complex, Float
from numpy.typing import ArrayLike

from diffptycho.physics.kramers_kronig import kk_f_matrix
from diffptycho.physics.optics import atom_densities, delta_beta, f_to_delta_beta
from diffptycho.physics.optics import scattering_factors as _f12
from diffptycho.physics.spectra import _branch, _tabulated_edge

__all__ = ["XanesNormalization", "delta_beta_from_normalized", "normalize_xanes"]


class XanesNormalization(NamedTuple):
    """A normalised XANES spectrum and the curves that made it (all on the input energies).

    Attributes:
        e0_ev: edge energy E₀ in eV (where the step is measured).
        edge_step: post − pre at E₀, in the units of μ.
        norm: (μ − pre)/step, dimensionless.
        flat: ``norm`` with the post-edge curvature removed above E₀ (post-edge = 1).
        pre_edge: the pre-edge line, units of μ.
        post_edge: pre-edge + post-edge polynomial, units of μ.
    """

    e0_ev: float
    edge_step: float
    norm: Float[np.ndarray, " energy"]
    flat: Float[np.ndarray, " energy"]
    pre_edge: Float[np.ndarray, " energy"]
    post_edge: Float[np.ndarray, " energy"]


def _spectrum(energies_ev, values, name: str) -> tuple[np.ndarray, np.ndarray]:
    e = np.asarray(energies_ev, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if e.ndim != 1 or e.size < 4 or v.shape != e.shape:
        raise ValueError(
            f"{name}: expected 1-D energies and values of the same length ≥ 4, got shapes "
            f"{e.shape} and {v.shape}"
        )
    if not (np.all(np.isfinite(e)) and np.all(np.isfinite(v))):
        raise ValueError(f"{name}: NaN or inf values")
    if np.any(e <= 0) or np.any(np.diff(e) <= 0):
        raise ValueError(f"{name}: energies must be positive and strictly increasing, in eV")
    return e, v


def _edge_energy(e: np.ndarray, y: np.ndarray, level: float) -> float:
    """First energy where y rises through ``level`` (linear interpolation)."""
    above = np.flatnonzero(y >= level)
    if above.size == 0 or above[0] == 0:
        raise ValueError(f"the spectrum never rises through {level:g}; give e0_ev explicitly")
    i = int(above[0])
    return float(e[i - 1] + (level - y[i - 1]) * (e[i] - e[i - 1]) / (y[i] - y[i - 1]))


def normalize_xanes(
    energies_ev: ArrayLike,
    mu: ArrayLike,
    e0_ev: float | None = None,
    pre_ev: tuple[float, float] = (-150.0, -30.0),
    post_ev: tuple[float, float] = (50.0, 300.0),
    nnorm: int = 2,
    *,
    step: float | None = None,
) -> XanesNormalization:
    """Normalise μ(E) to an edge step of 1 (Athena / Larch pre-edge and post-edge recipe).

    Ranges are relative to E₀ and clipped to the data; each must hold at least ``nnorm + 2``
    (post) or 2 (pre) points.

    Args:
        energies_ev: strictly increasing energies in eV, shape (E,).
        mu: absorption μ(E) in any units (absorbance, fluorescence yield), shape (E,).
        e0_ev: edge energy in eV; default: the energy of the largest dμ/dE.
        pre_ev: pre-edge fit range (lo, hi) in eV relative to E₀ (a line).
        post_ev: post-edge fit range (lo, hi) in eV relative to E₀.
        nnorm: degree of the post-edge polynomial (0–3).
        step: edge step in the units of μ, instead of measuring it.

    Returns:
        The normalisation (see :class:`XanesNormalization`).

    Raises:
        ValueError: bad arrays, a fit range with too few points, or a step that is not > 0.

    Examples:
        >>> e = np.linspace(4900.0, 5400.0, 501)
        >>> mu = 0.2 - 1e-5 * e + 0.5 * (e > 5000.0)
        >>> n = normalize_xanes(e, mu, e0_ev=5000.0)
        >>> round(n.edge_step, 6), round(float(n.norm[-1]), 6)
        (0.5, 1.0)
    """
    e, mu = _spectrum(energies_ev, mu, "mu")
    if e0_ev is None:
        e0_ev = float(e[int(np.argmax(np.gradient(mu, e)))])
    e0 = float(e0_ev)
    if not e[0] < e0 < e[-1]:
        raise ValueError(f"e0_ev={e0_ev!r}: outside the data's energies ({e[0]:g}–{e[-1]:g} eV)")
    if int(nnorm) != nnorm or not 0 <= nnorm <= 3:
        raise ValueError(f"nnorm={nnorm!r}: expected a polynomial degree 0–3")

    def window(rng: tuple[float, float], name: str, need: int) -> np.ndarray:
        lo, hi = sorted(float(r) for r in rng)
        sel = (e >= e0 + lo) & (e <= e0 + hi)
        if sel.sum() < need:
            raise ValueError(
                f"{name}={rng!r}: only {int(sel.sum())} points in [E0{lo:+g}, E0{hi:+g}] eV "
                f"(E0 = {e0:g} eV, data {e[0]:g}–{e[-1]:g} eV); need ≥ {need}"
            )
        return sel

    pre_sel = window(pre_ev, "pre_ev", 2)
    pre = np.polyval(np.polyfit(e[pre_sel], mu[pre_sel], 1), e)
    post_sel = window(post_ev, "post_ev", int(nnorm) + 2)
    coef = np.polyfit(e[post_sel], (mu - pre)[post_sel], int(nnorm))
    post = pre + np.polyval(coef, e)
    jump = float(np.polyval(coef, e0)) if step is None else float(step)
    if not (np.isfinite(jump) and jump > 0):
        raise ValueError(f"edge step {jump!r}: expected > 0 (does μ rise across the edge?)")
    norm = (mu - pre) / jump
    flat = np.where(e > e0, norm - np.polyval(coef, e) / jump + 1.0, norm)
    return XanesNormalization(e0, jump, norm, flat, pre, post)


def delta_beta_from_normalized(
    energies_ev: ArrayLike,
    normalized: ArrayLike,
    formula: str,
    density_g_cm3: float,
    *,
    absorber: str | None = None,
    edge: str = "K",
    e0_ev: float | None = None,
    flattened: bool = False,
    taper_ev: float = 10.0,
) -> Complex[np.ndarray, " energy"]:
    """δ + iβ of a compound from its normalised absorption spectrum (edge step 1).

    The absorber's f2 is the tabulated f2 without its edge (power laws fitted to the table
    below and above, as in :func:`~diffptycho.physics.spectra.species_spectrum`) plus the
    measured edge: f2 = f2_below + J·norm·E/E₀ (J the tabulated jump at E₀) or, for a
    flattened spectrum, f2_below + flat·(f2_above − f2_below). Its change Δf2 against the table
    is tapered to zero over ``taper_ev`` at both ends of the data (sin² ramps), so that the
    difference Kramers–Kronig transform applies; Δf1 = KK(Δf2) on the data's own grid.
    δ + iβ = tabulated δ + iβ of the compound + the absorber's (Δf1 + iΔf2) × number density.
    Outside the tapers the data must reach well below and above the edge (tens of eV).

    Args:
        energies_ev: strictly increasing energies in eV, shape (E,).
        normalized: normalised μ (pre-edge 0, step 1 at E₀), shape (E,).
        formula: chemical formula of the compound, e.g. ``"V2O5"``.
        density_g_cm3: its mass density in g/cm³.
        absorber: element whose edge was measured (default: the heaviest in ``formula``).
        edge: edge name (``"K"``, ``"L3"``, …).
        e0_ev: energy in eV where the step was normalised to 1 (default: where ``normalized``
            first reaches 0.5); only the E/E₀ factor uses it, so a few eV do not matter.
        flattened: the spectrum is flattened (post-edge = 1) rather than plain (μ − pre)/step.
        taper_ev: width of the sin² tapers at both ends, in eV.

    Returns:
        Complex δ + iβ of the compound on ``energies_ev``, shape (E,).

    Raises:
        ValueError: bad arrays, an absorber not in the formula, an unknown edge, or a data
            range that does not hold the tapers.

    Examples:
        >>> from diffptycho.physics.spectra import species_spectrum
        >>> e = np.linspace(5300.0, 5700.0, 801)
        >>> n0 = species_spectrum("V2O5", 3.36, e, absorber="V", edge="K", edge_shift_ev=15.0)
        >>> mu = n0.imag * e  # ∝ 4πβ/λ
        >>> norm = normalize_xanes(e, mu, e0_ev=5480.0).norm
        >>> n = delta_beta_from_normalized(e, norm, "V2O5", 3.36, e0_ev=5480.0)
        >>> inner = (e > 5400) & (e < 5600)
        >>> bool(np.abs(n.imag - n0.imag)[inner].max() < 0.03 * np.ptp(n0.imag[inner]))
        True
        >>> bool(np.abs(n.real / n0.real - 1)[inner].max() < 0.01)
        True
    """
    e, y = _spectrum(energies_ev, normalized, "normalized")
    densities = atom_densities(formula, density_g_cm3)
    if absorber is None:
        import xraydb

        absorber = max(densities, key=xraydb.atomic_number)
    if absorber not in densities:
        raise ValueError(f"absorber={absorber!r}: not an element of formula {formula!r}")
    if not (np.isfinite(taper_ev) and taper_ev > 0):
        raise ValueError(f"taper_ev={taper_ev!r}: expected a positive width in eV")
    if e[-1] - e[0] <= 4 * taper_ev:
        raise ValueError(
            f"energies {e[0]:g}–{e[-1]:g} eV: too short a range for two {taper_ev:g} eV tapers"
        )
    t = _tabulated_edge(absorber, edge)
    _, table = _f12(absorber, e)
    below = _branch(e, t.below, table, True)
    if flattened:
        above = _branch(e, t.above, table, False)
        f2 = below + y * (above - below)
    else:
        e0 = _edge_energy(e, y, 0.5) if e0_ev is None else float(e0_ev)
        le0 = np.log(e0)
        jump = np.exp(np.polyval(t.above[0], le0)) - np.exp(np.polyval(t.below[0], le0))
        f2 = below + jump * y * e / e0
    ramp_lo = np.sin(0.5 * np.pi * np.clip((e - e[0]) / taper_ev, 0.0, 1.0)) ** 2
    ramp_hi = np.sin(0.5 * np.pi * np.clip((e[-1] - e) / taper_ev, 0.0, 1.0)) ** 2
    df2 = (f2 - table) * ramp_lo * ramp_hi
    df1 = kk_f_matrix(e, e) @ df2
    delta, beta = delta_beta(formula, density_g_cm3, e)
    dd, db = f_to_delta_beta(df1, df2, densities[absorber], e)
    return (delta + dd) + 1j * (beta + db)
