"""Reference spectra δ(E) + iβ(E) of chemical species, Kramers–Kronig consistent.

Tabulated scattering factors (:mod:`diffptycho.physics.optics`) have no near-edge fine structure.
Chemistry is added on top in f-space (electrons per absorbing atom) as a change Δf = Δf1 + iΔf2
that is *localised* in energy, so that the Kramers–Kronig (KK) relation

    Δf1(E) = (2/π) P∫₀^∞ E' Δf2(E') / (E² − E'²) dE'

can be applied to the change alone ("difference KK"). White lines are Lorentzians with an exact
analytic KK partner (:func:`lorentzian_line`); other changes, such as an edge shift, go through the
numerical operator of :func:`kk_matrix`.

Pitfall: KK applied to a *non-localised* β known only on a truncated window (e.g. the full β over
the 40 energies of an experiment) is dominated by the missing spectrum outside the window: a
constant Δf2 = c on [a, b] yields Δf1 = (c/π) ln|(E − a)/(E − b)| + …, i.e. a spurious dispersion
of order c itself that has nothing to do with the sample. For LiFePO4 over 690–730 eV, KK of the
full tabulated β gets the variation of δ wrong by ~5× (tests/test_spectra.py). Only apply KK to
changes that vanish at both ends of the grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from jaxtyping import Complex, Float
from numpy.typing import ArrayLike
from scipy.special import erf

from diffptycho.physics.kramers_kronig import kk_f_matrix, kk_matrix
from diffptycho.physics.optics import (
    atom_densities,
    delta_beta,
    f_to_delta_beta,
    scattering_factors,
    wavelength,
)

__all__ = [
    "LFP_E1_EV",
    "LFP_E2_EV",
    "LFP_OD_RATIOS",
    "LFP_DENSITIES_G_CM3",
    "VANADIUM_SPECIES",
    "kk_matrix",
    "lorentzian_line",
    "edge_step_f2",
    "tabulated_edge_step",
    "species_spectrum",
    "calibrate_line_area",
    "lfp_reference_spectra",
    "vanadium_reference_spectra",
]

LFP_E1_EV = 708.2
"""Fe²⁺ (LiFePO4) L3 white-line energy in eV, the first energy of the battery study."""
LFP_E2_EV = 710.2
"""Fe³⁺ (FePO4) L3 white-line energy in eV, the second energy of the battery study."""
LFP_OD_RATIOS = {"LiFePO4": 0.52, "FePO4": 2.14}
"""Published OD(710.2 eV)/OD(708.2 eV) of the end members (polar angles 27.5° and 65.0°)."""
LFP_DENSITIES_G_CM3 = {"LiFePO4": 3.6, "FePO4": 3.0}
"""Mass densities of the end members in g/cm³."""


def _energies(energies_ev, name: str = "energies_ev") -> np.ndarray:
    e = np.atleast_1d(np.asarray(energies_ev, dtype=np.float64))
    if e.ndim != 1 or e.size == 0 or not np.all(np.isfinite(e)) or np.any(e <= 0):
        raise ValueError(f"{name}: expected a non-empty 1-D array of positive energies in eV")
    return e


def lorentzian_line(
    energies_ev: ArrayLike, center_ev: float, fwhm_ev: float, area: float
) -> Complex[np.ndarray, " energy"]:
    """A white line Δf = Δf1 + iΔf2 in f-space with its exact Kramers–Kronig partner.

    Δf2 is the odd-extended Lorentzian pair (peak at +E₀ minus its image at −E₀, so that the
    one-sided KK integral applies), Δf = (A/π)[1/(E − E₀ − iγ) − 1/(E + E₀ − iγ)] with γ = FWHM/2.
    A narrow line gives Δf1 < 0 below E₀ and Δf1 > 0 above.

    Args:
        energies_ev: photon energies in eV, shape (E,).
        center_ev: line centre E₀ in eV.
        fwhm_ev: full width at half maximum in eV.
        area: ∫Δf2 dE of the positive-energy peak over the real line, in electrons·eV per atom
            (peak height is ``area / (π γ)``).

    Returns:
        Complex Δf1 + iΔf2, shape (E,), electrons per atom.

    Examples:
        >>> df = lorentzian_line([700.0, 710.0, 720.0], 710.0, 2.0, np.pi)  # peak f2 = 1
        >>> round(float(df.imag[1]), 4), bool(df.real[0] < 0 < df.real[2])
        (1.0, True)
    """
    e = _energies(energies_ev)
    if not center_ev > 0:
        raise ValueError(f"center_ev={center_ev!r}: expected a positive energy in eV")
    if not fwhm_ev > 0:
        raise ValueError(f"fwhm_ev={fwhm_ev!r}: expected a positive width in eV")
    g = 0.5 * fwhm_ev
    return area / np.pi * (1.0 / (e - center_ev - 1j * g) - 1.0 / (e + center_ev - 1j * g))


def edge_step_f2(
    energies_ev: ArrayLike, edge_ev: float, width_ev: float, height: float
) -> Float[np.ndarray, " energy"]:
    """An absorption edge in f2: an error-function step.

    f2(E) = (height/2)·[1 + erf((E − E_edge) / (√2 σ))], i.e. the integral of a Gaussian of
    standard deviation σ = ``width_ev``; the half-height point is E_edge.

    Args:
        energies_ev: photon energies in eV, shape (E,).
        edge_ev: edge (half-height) energy in eV.
        width_ev: Gaussian standard deviation σ of the step in eV.
        height: jump in electrons per atom.

    Returns:
        f2 step, shape (E,), electrons per atom.
    """
    e = _energies(energies_ev)
    if not width_ev > 0:
        raise ValueError(f"width_ev={width_ev!r}: expected a positive width in eV")
    return 0.5 * height * (1.0 + erf((e - edge_ev) / (np.sqrt(2.0) * width_ev)))


class _TabulatedEdge(NamedTuple):
    edge_ev: float  # half-height energy of the table's smoothed step, eV
    width_ev: float  # its σ, eV
    below: tuple[np.ndarray, float, float]  # power law of f2 below the edge, fitted on [lo, hi] eV
    above: tuple[np.ndarray, float, float]  # the same above the edge
    neighbours_ev: tuple[float, float]  # the element's adjacent edges, eV


def _tabulated_edge(element: str, edge: str) -> _TabulatedEdge:
    import xraydb

    try:
        edges = {k: float(v.energy) for k, v in xraydb.xray_edges(element).items()}
        guess = edges[edge]
    except Exception as err:
        raise ValueError(f"edge={edge!r}: no such edge of element {element!r} ({err})") from err
    e = guess + np.arange(-8.0, 8.0, 0.01)
    _, f2 = scattering_factors(element, e)
    slope = np.clip(np.gradient(f2, e), 0.0, None)
    w = np.where(slope > 0.1 * slope.max(), slope, 0.0)
    center = float(np.sum(w * e) / np.sum(w))
    width = float(np.sqrt(np.sum(w * (e - center) ** 2) / np.sum(w)))
    others = [v for k, v in edges.items() if k != edge]
    prev = max([v for v in others if v < center], default=0.0)
    nxt = min([v for v in others if v > center], default=np.inf)
    # Branch fits stay clear of the table's smoothed ramp (V K: from ~15 eV below) and of the
    # neighbouring edges (Fe L2 is 12 eV above L3).
    start = center + min(8.0, (nxt - center) / 3)
    windows = (
        (max(center - 35.0, prev + 3.0), center - 15.0),
        (start, min(start + 10.0, nxt - 3.0)),
    )
    fits = []
    for lo, hi in windows:
        ew = np.linspace(lo, hi, 64)
        coef = np.polyfit(np.log(ew), np.log(scattering_factors(element, ew)[1]), 1)
        fits.append((coef, lo, hi))
    return _TabulatedEdge(center, width, fits[0], fits[1], (prev, nxt))


def _branch(e, fit, table, below: bool):
    """A branch of f2: the power law inside the edge region, the table outside, cos² blended."""
    coef, lo, hi = fit
    r = np.sin(0.5 * np.pi * np.clip((e - lo) / (hi - lo), 0.0, 1.0)) ** 2
    r = r if below else 1.0 - r  # weight of the power law
    return r * np.exp(np.polyval(coef, np.log(e))) + (1.0 - r) * table


def tabulated_edge_step(element: str, edge: str) -> tuple[float, float, float]:
    """The erf step equivalent to the (smoothed) edge of the Chantler table.

    Centre and width are the mean and standard deviation of df2/dE around the tabulated edge
    (where it exceeds 10 % of its maximum); the height is the jump between power laws fitted to
    f2 below and above the edge, evaluated at the centre.

    Args:
        element: element symbol, e.g. ``"V"``.
        edge: edge name, e.g. ``"K"`` or ``"L3"``.

    Returns:
        ``(edge_ev, width_ev, height)``: half-height energy in eV, σ in eV, jump in electrons.
    """
    t = _tabulated_edge(element, edge)
    lc = np.log(t.edge_ev)
    height = np.exp(np.polyval(t.above[0], lc)) - np.exp(np.polyval(t.below[0], lc))
    return t.edge_ev, t.width_ev, float(height)


def _edge_shift_df(element, edge, shift_ev, width_ev, energies):
    """Δf replacing the absorber's tabulated edge by a clean erf edge moved by ``shift_ev``.

    New f2 = below(E)·(1 − S) + above(E)·S with S an erf step at the shifted edge and the
    branches equal to the table away from the edge (power laws near it): Δf2 = new − table is
    exactly zero outside the edge region, and Δf1 is its difference KK, computed on a fine grid
    that holds the whole support.
    """
    t = _tabulated_edge(element, edge)
    w1 = t.width_ev if width_ev is None else float(width_ev)
    if not w1 > 0:
        raise ValueError(f"edge_width_ev={width_ev!r}: expected a positive width in eV")
    e1 = t.edge_ev + shift_ev
    lo = min(t.below[1], e1 - 8 * w1)
    hi = max(t.above[2], e1 + 8 * w1)
    if not t.neighbours_ev[0] < lo < hi < t.neighbours_ev[1]:
        raise ValueError(f"edge_shift_ev={shift_ev!r}: moves the {edge} edge onto another edge")

    def df2(e):
        table = scattering_factors(element, e)[1]
        s = 0.5 * (1.0 + erf((e - e1) / (np.sqrt(2.0) * w1)))
        new = _branch(e, t.below, table, True) * (1 - s) + _branch(e, t.above, table, False) * s
        return np.where((e > lo) & (e < hi), new - table, 0.0)

    nodes = np.linspace(lo, hi, int(np.ceil((hi - lo) / (min(t.width_ev, w1) / 20))) + 1)
    return kk_f_matrix(energies, nodes) @ df2(nodes) + 1j * df2(energies)


def species_spectrum(
    formula: str,
    density_g_cm3: float,
    energies_ev: ArrayLike,
    lines: Sequence[tuple[float, float, float]] = (),
    *,
    absorber: str | None = None,
    edge: str | None = None,
    edge_shift_ev: float = 0.0,
    edge_width_ev: float | None = None,
) -> Complex[np.ndarray, " energy"]:
    """δ + iβ of a compound: tabulated continuum plus KK-consistent near-edge structure.

    The continuum is :func:`~diffptycho.physics.optics.delta_beta`. White lines (Lorentzians with
    their analytic KK partner) and an optional edge change are added in f-space per absorbing atom
    and converted with the absorber's number density. The edge change replaces the table's
    smoothed edge of the absorber by an erf step of σ ``edge_width_ev`` at the tabulated
    half-height energy (:func:`tabulated_edge_step`) plus ``edge_shift_ev``, between power-law
    branches of the table; its Δf1 is the difference KK of the (localised) Δf2 on a fine grid
    (:func:`~diffptycho.physics.kramers_kronig.kk_f_matrix`), evaluated at ``energies_ev``.

    Args:
        formula: chemical formula, e.g. ``"LiFePO4"``.
        density_g_cm3: mass density in g/cm³.
        energies_ev: photon energies in eV, shape (E,).
        lines: white lines ``(center_ev, fwhm_ev, area)`` (eV, eV, electrons·eV per absorber atom).
        absorber: element carrying the lines and the edge (default: heaviest in ``formula``).
        edge: edge name (``"K"``, ``"L3"``, …), required when ``edge_shift_ev`` ≠ 0.
        edge_shift_ev: shift of the absorber's edge from its tabulated position, in eV.
        edge_width_ev: σ of the new erf edge in eV (default: that of the table); giving it
            without a shift reshapes the edge in place.

    Returns:
        Complex δ + iβ per unit volume fraction of the compound, shape (E,).

    Examples:
        >>> n = species_spectrum("LiFePO4", 3.6, [706.0, 708.2], [(708.2, 1.0, 50.0)])
        >>> bool(n.imag[1] > 3 * n.imag[0])
        True
    """
    e = _energies(energies_ev)
    delta, beta = delta_beta(formula, density_g_cm3, e)
    densities = atom_densities(formula, density_g_cm3)
    if absorber is None:
        import xraydb

        absorber = max(densities, key=xraydb.atomic_number)
    if absorber not in densities:
        raise ValueError(f"absorber={absorber!r}: not an element of formula {formula!r}")
    df = np.zeros(e.shape, dtype=np.complex128)
    for line in lines:
        if len(line) != 3:
            raise ValueError(f"lines: expected (center_ev, fwhm_ev, area) tuples, got {line!r}")
        df += lorentzian_line(e, *line)
    if edge_shift_ev != 0.0 or edge_width_ev is not None:
        if edge is None:
            raise ValueError("edge: required (e.g. 'K' or 'L3') to shift or reshape an edge")
        df += _edge_shift_df(absorber, edge, float(edge_shift_ev), edge_width_ev, e)
    dd, db = f_to_delta_beta(df.real, df.imag, densities[absorber], e)
    return (delta + dd) + 1j * (beta + db)


def calibrate_line_area(
    formula: str,
    density_g_cm3: float,
    lines: Sequence[tuple[float, float, float]],
    free_line: tuple[float, float],
    od_ratio: float,
    e1_ev: float,
    e2_ev: float,
    **kwargs,
) -> float:
    """Area of one white line such that OD(e2)/OD(e1) of the species takes a given value.

    OD = 2k∫β dz with k = 2π/λ, so the ratio is (β₂/λ₂)/(β₁/λ₁) and β is affine in the area of
    the free line: solve the one linear equation.

    Args:
        formula: chemical formula.
        density_g_cm3: mass density in g/cm³.
        lines: the fixed white lines ``(center_ev, fwhm_ev, area)``.
        free_line: ``(center_ev, fwhm_ev)`` of the line whose area is solved for, in eV.
        od_ratio: target OD(e2)/OD(e1), dimensionless.
        e1_ev: first energy in eV.
        e2_ev: second energy in eV.
        **kwargs: passed to :func:`species_spectrum` (``absorber``, ``edge``, …).

    Returns:
        The area in electrons·eV per absorber atom.
    """
    e = _energies([e1_ev, e2_ev], "e1_ev, e2_ev")
    base = species_spectrum(formula, density_g_cm3, e, lines, **kwargs).imag / wavelength(e)
    with_unit = species_spectrum(formula, density_g_cm3, e, [*lines, (*free_line, 1.0)], **kwargs)
    unit = with_unit.imag / wavelength(e) - base
    area = (od_ratio * base[0] - base[1]) / (unit[1] - od_ratio * unit[0])
    if not (np.isfinite(area) and area > 0):
        raise ValueError(f"od_ratio={od_ratio!r}: unreachable with a positive line area")
    return float(area)


def _peak_area(peak: float, fwhm_ev: float) -> float:
    return peak * np.pi * 0.5 * fwhm_ev


def lfp_reference_spectra(energies_ev: ArrayLike) -> dict[str, Complex[np.ndarray, " energy"]]:
    """LiFePO4 and FePO4 at the Fe L3 edge, calibrated to the published OD ratios.

    Each end member has its main white line (Fe²⁺ at 708.2 eV, Fe³⁺ at 710.2 eV, FWHM 1 eV) and a
    weaker line at the other energy (peak f2 = 20 e at 710.2 eV for LiFePO4, 10 e at 708.2 eV for
    FePO4). The main line's area is solved so that OD(710.2)/OD(708.2) = 0.52 (LiFePO4) and
    2.14 (FePO4) exactly: polar angles atan(0.52) = 27.5° and atan(2.14) = 65.0°.

    Args:
        energies_ev: photon energies in eV, shape (E,).

    Returns:
        ``{"LiFePO4": δ + iβ, "FePO4": δ + iβ}``, each complex of shape (E,), per unit volume
        fraction.

    Examples:
        >>> ref = lfp_reference_spectra([LFP_E1_EV, LFP_E2_EV])
        >>> od = {k: v.imag * np.array([LFP_E1_EV, LFP_E2_EV]) for k, v in ref.items()}
        >>> round(float(od["FePO4"][1] / od["FePO4"][0]), 4)
        2.14
    """
    e = _energies(energies_ev)
    members = {
        "LiFePO4": ((LFP_E1_EV, 1.0), [(LFP_E2_EV, 1.2, _peak_area(20.0, 1.2))]),
        "FePO4": ((LFP_E2_EV, 1.0), [(LFP_E1_EV, 1.0, _peak_area(10.0, 1.0))]),
    }
    out = {}
    for name, (main, fixed) in members.items():
        rho = LFP_DENSITIES_G_CM3[name]
        area = calibrate_line_area(
            name, rho, fixed, main, LFP_OD_RATIOS[name], LFP_E1_EV, LFP_E2_EV, absorber="Fe"
        )
        out[name] = species_spectrum(name, rho, e, [*fixed, (*main, area)], absorber="Fe")
    return out


VANADIUM_SPECIES = {
    # name: (density g/cm³, edge eV, pre-edge height, main-peak height), heights in edge jumps.
    "V2O3": (4.87, 5478.0, 0.10, 0.45),
    "VO2": (4.57, 5481.0, 0.25, 0.35),
    "V2O5": (3.36, 5484.0, 0.55, 0.25),
}
"""Vanadium-oxide domain types of the 2-D spectro-ptychography phantom."""


def vanadium_reference_spectra(
    energies_ev: ArrayLike,
    *,
    pre_edge_ev: float = 5469.0,
    pre_edge_fwhm_ev: float = 2.0,
    edge_width_ev: float = 2.0,
    main_offset_ev: float = 10.0,
    main_fwhm_ev: float = 8.0,
) -> tuple[dict[str, Complex[np.ndarray, " energy"]], dict[str, dict[str, float]]]:
    """Vanadium oxides at the V K edge (5420–5540 eV), with their true XANES descriptors.

    Each species of :data:`VANADIUM_SPECIES` has its tabulated V K edge moved to its own edge
    energy (erf of σ = ``edge_width_ev``), a pre-edge Lorentzian at ``pre_edge_ev`` and a main
    Lorentzian ``main_offset_ev`` above the edge: the "erf + 2 Lorentzians" XANES model. Heights
    are in units of the V K edge jump in f2.

    Args:
        energies_ev: photon energies in eV, shape (E,).
        pre_edge_ev: pre-edge peak energy in eV.
        pre_edge_fwhm_ev: pre-edge FWHM in eV.
        edge_width_ev: σ of the edge step in eV.
        main_offset_ev: main-peak energy above the edge in eV.
        main_fwhm_ev: main-peak FWHM in eV.

    Returns:
        ``(spectra, descriptors)``: ``{name: δ + iβ of shape (E,)}`` and ``{name: {"edge_ev",
        "pre_edge_ev", "pre_edge_height", "edge_width_ev"}}`` (eV, eV, edge jumps, eV).
    """
    e = _energies(energies_ev)
    e_tab, _, jump = tabulated_edge_step("V", "K")
    spectra, descriptors = {}, {}
    for name, (rho, edge_ev, pre_h, main_h) in VANADIUM_SPECIES.items():
        lines = [
            (pre_edge_ev, pre_edge_fwhm_ev, _peak_area(pre_h * jump, pre_edge_fwhm_ev)),
            (edge_ev + main_offset_ev, main_fwhm_ev, _peak_area(main_h * jump, main_fwhm_ev)),
        ]
        spectra[name] = species_spectrum(
            name,
            rho,
            e,
            lines,
            absorber="V",
            edge="K",
            edge_shift_ev=edge_ev - e_tab,
            edge_width_ev=edge_width_ev,
        )
        descriptors[name] = {
            "edge_ev": edge_ev,
            "pre_edge_ev": pre_edge_ev,
            "pre_edge_height": pre_h,
            "edge_width_ev": edge_width_ev,
        }
    return spectra, descriptors
