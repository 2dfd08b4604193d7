"""Wavelength, wavenumber and the refractive index n = 1 − δ + iβ of materials.

Conventions (README): SI units inside, wave exp(i(kz − ωt)), λ[nm] = 1239.842/E[eV].
δ and β come from xraydb's tabulated (Chantler) atomic scattering factors, read offline:
δ = (r_e λ²/2π) Σ n_j f1_j and β = (r_e λ²/2π) Σ n_j f2_j with n_j atoms per m³.
"""

from __future__ import annotations

import numpy as np

HC_EV_M = 1.239841984e-6
"""h·c in eV·m, so that λ[m] = HC_EV_M / E[eV]."""
EV_TO_J = 1.602176634e-19
"""One electronvolt in joules (exact, SI 2019)."""
R_ELECTRON_M = 2.8179403262e-15
"""Classical electron radius r_e in m."""
AVOGADRO = 6.02214076e23
"""Avogadro's number in 1/mol."""


def wavelength(energy_ev):
    """Photon wavelength.

    Args:
        energy_ev: photon energy in eV (scalar or array).

    Returns:
        Wavelength λ in m.

    Examples:
        >>> round(float(wavelength(1239.841984)) * 1e9, 6)
        1.0
    """
    return HC_EV_M / energy_ev


def wavenumber(energy_ev):
    """Vacuum wavenumber k = 2π/λ.

    Args:
        energy_ev: photon energy in eV.

    Returns:
        k in rad/m.
    """
    return 2.0 * np.pi / wavelength(energy_ev)


def ev_to_joule(energy_ev):
    """Convert a photon energy from eV to J (CXI stores joules)."""
    return energy_ev * EV_TO_J


def joule_to_ev(energy_j):
    """Convert a photon energy from J to eV."""
    return energy_j / EV_TO_J


def _parse_formula(formula: str) -> dict[str, float]:
    import xraydb

    try:
        parsed = xraydb.chemparse(formula)
    except Exception as err:  # xraydb raises bare ValueErrors with terse messages
        raise ValueError(f"formula={formula!r}: not a chemical formula ({err})") from err
    if not parsed:
        raise ValueError(f"formula={formula!r}: not a chemical formula (no elements found)")
    return parsed


def atom_densities(formula: str, density_g_cm3: float) -> dict[str, float]:
    """Number density of each element in a compound.

    Args:
        formula: chemical formula such as ``"LiFePO4"``.
        density_g_cm3: mass density in g/cm³ (the unit every table uses).

    Returns:
        ``{element: atoms per m³}``.
    """
    import xraydb

    if not density_g_cm3 > 0:
        raise ValueError(f"density_g_cm3={density_g_cm3!r}: expected a positive mass density")
    counts = _parse_formula(formula)
    molar_mass = sum(n * xraydb.atomic_mass(el) for el, n in counts.items())  # g/mol
    formula_units_per_m3 = density_g_cm3 * 1e6 / molar_mass * AVOGADRO
    return {el: n * formula_units_per_m3 for el, n in counts.items()}


def scattering_factors(element: str, energy_ev) -> tuple[np.ndarray, np.ndarray]:
    """Tabulated forward atomic scattering factor f = f1 + i f2 (Chantler, via xraydb).

    Args:
        element: element symbol.
        energy_ev: photon energies in eV.

    Returns:
        ``(f1, f2)`` in electrons per atom; f1 includes Z.
    """
    import xraydb

    energy_ev = np.atleast_1d(np.asarray(energy_ev, dtype=np.float64))
    f1 = xraydb.atomic_number(element) + np.asarray(xraydb.f1_chantler(element, energy_ev))
    f2 = np.asarray(xraydb.f2_chantler(element, energy_ev))
    return f1, f2


def f_to_delta_beta(f1, f2, number_density_m3, energy_ev):
    """Refractive-index decrements from scattering factors of one kind of atom.

    Args:
        f1: real part of the scattering factor, electrons per atom.
        f2: imaginary part, electrons per atom.
        number_density_m3: atoms per m³.
        energy_ev: photon energy in eV.

    Returns:
        ``(delta, beta)``, dimensionless.
    """
    lam = wavelength(energy_ev)
    scale = R_ELECTRON_M * lam**2 / (2.0 * np.pi) * number_density_m3
    return scale * f1, scale * f2


def delta_beta(formula: str, density_g_cm3: float, energy_ev) -> tuple[np.ndarray, np.ndarray]:
    """δ and β of a compound from tabulated scattering factors (no near-edge fine structure).

    Args:
        formula: chemical formula, e.g. ``"LiFePO4"``.
        density_g_cm3: mass density in g/cm³.
        energy_ev: photon energies in eV.

    Returns:
        ``(delta, beta)`` arrays with the shape of ``energy_ev`` (at least 1-D).

    Examples:
        >>> d, b = delta_beta("LiFePO4", 3.6, 700.0)
        >>> bool(d[0] > 0 and b[0] > 0)
        True
    """
    energy_ev = np.atleast_1d(np.asarray(energy_ev, dtype=np.float64))
    if np.any(~np.isfinite(energy_ev)) or np.any(energy_ev <= 0):
        raise ValueError("energy_ev: expected positive photon energies in eV")
    delta = np.zeros_like(energy_ev)
    beta = np.zeros_like(energy_ev)
    for element, n in atom_densities(formula, density_g_cm3).items():
        f1, f2 = scattering_factors(element, energy_ev)
        d, b = f_to_delta_beta(f1, f2, n, energy_ev)
        delta += d
        beta += b
    return delta, beta


def transmission(delta_integral, beta_integral, energy_ev):
    """Projection-approximation transmission T = exp(−k∫β dz) · exp(−ik∫δ dz).

    Args:
        delta_integral: ∫δ dz along the beam, in m.
        beta_integral: ∫β dz along the beam, in m.
        energy_ev: photon energy in eV.

    Returns:
        Complex transmission function (same shape as the integrals).
    """
    import jax.numpy as jnp

    k = wavenumber(energy_ev)
    return jnp.exp(-k * (beta_integral + 1j * delta_integral))


def optical_density(t):
    """Optical density OD = −ln|T|² of a complex transmission (= 2k∫β dz)."""
    import jax.numpy as jnp

    return -jnp.log(jnp.abs(t) ** 2)
