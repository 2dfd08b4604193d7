"""Projected absorber density and effective electron density from absorption and phase maps.

With N_j the projected number of atoms of element j per m² (∫ n_j dz), the projection
approximation (README conventions) gives

    μt = OD = −ln|T|² = 2k∫β dz = 2 r_e λ Σ_j N_j f2_j,
    φ = arg T = −k∫δ dz = −r_e λ Σ_j N_j f1_j.

Across an absorption edge only the absorber's f2 jumps (by Δf2, tabulated), so the fitted edge
jump gives the projected absorber density N_V = Δμt / (2 r_e λ Δf2), and the phase gives the
effective electron density Re[N_e^eff] = Σ_j N_j f1_j = −φ / (r_e λ) (f1 includes the anomalous
f′ at the energy). Their ratio Re[N_e^eff]/N_V is the number of electrons per absorber atom,
Σ_j ν_j f1_j / ν_V for a compound with ν_j atoms per formula unit, independent of thickness: it
identifies the compound (V2O3, VO2, V2O5 differ by ~4 electrons per V).

The factor 2 in N_V: μt here is an optical density (intensity, OD = −ln|T|²), as in XANES. The
published form N_V = Δμt/(r_e λ Δf2) holds for the amplitude attenuation −ln|T| = OD/2.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from diffptycho.physics.optics import R_ELECTRON_M, scattering_factors, wavelength
from diffptycho.physics.spectra import tabulated_edge_step

__all__ = [
    "CANDIDATE_VANADIUM_OXIDES",
    "absorber_edge_jump",
    "candidate_ratios",
    "density_maps",
    "electrons_per_absorber",
    "projected_absorber_density",
    "projected_electron_density",
]

CANDIDATE_VANADIUM_OXIDES = ("V2O3", "VO2", "V2O5")
"""Compounds whose electrons per V atom are compared with the measured ratio."""


def absorber_edge_jump(element: str = "V", edge: str = "K") -> tuple[float, float]:
    """Tabulated (Chantler) edge energy and f2 jump of an element across an edge.

    Args:
        element: absorbing element, e.g. ``"V"``.
        edge: edge name, e.g. ``"K"``.

    Returns:
        ``(edge_ev, delta_f2)``: half-height energy in eV, jump Δf2 in electrons per atom.

    Examples:
        >>> e0, df2 = absorber_edge_jump("V", "K")
        >>> round(e0), round(df2, 1)
        (5465, 3.4)
    """
    edge_ev, _, delta_f2 = tabulated_edge_step(element, edge)
    return edge_ev, delta_f2


def projected_absorber_density(edge_jump, energy_ev, delta_f2: float):
    """Projected absorber density N = Δμt / (2 r_e λ Δf2).

    Args:
        edge_jump: fitted edge jump Δμt (optical density, dimensionless), any shape.
        energy_ev: photon energy of the edge in eV (scalar or broadcastable).
        delta_f2: f2 jump of the absorber across the edge, electrons per atom.

    Returns:
        Atoms per m² (projected along the beam), shape of the broadcast arguments.

    Examples:
        >>> lam = float(wavelength(5480.0))
        >>> n = projected_absorber_density(2 * R_ELECTRON_M * lam * 3.0 * 1e20, 5480.0, 3.0)
        >>> round(float(n) / 1e20, 12)
        1.0
    """
    if not delta_f2 > 0:
        raise ValueError(f"delta_f2={delta_f2!r}: expected a positive f2 jump (electrons/atom)")
    lam = wavelength(np.asarray(energy_ev, dtype=np.float64))
    return np.asarray(edge_jump, dtype=np.float64) / (2.0 * R_ELECTRON_M * lam * delta_f2)


def projected_electron_density(phase_rad, energy_ev):
    """Effective projected electron density Re[N_e^eff] = −φ / (r_e λ).

    Args:
        phase_rad: phase φ = arg T in rad (negative for matter, exp(i(kz − ωt)) convention).
        energy_ev: photon energy in eV (broadcastable to ``phase_rad``).

    Returns:
        Electrons per m² (projected along the beam).
    """
    lam = wavelength(np.asarray(energy_ev, dtype=np.float64))
    return -np.asarray(phase_rad, dtype=np.float64) / (R_ELECTRON_M * lam)


def electrons_per_absorber(
    formula: str, energy_ev, absorber: str = "V", edge_shift_ev: float = 0.0
) -> np.ndarray:
    """Σ_j ν_j f1_j(E) / ν_absorber: effective electrons per absorber atom of a compound.

    f1 is tabulated (Chantler, includes Z and the anomalous f′ at E; no near-edge fine
    structure, so use energies away from the edge). The anomalous dip of f1 follows the edge: a
    compound whose edge lies ``edge_shift_ev`` above the tabulated (metal) edge has the
    absorber's f1 of E − shift (worth ~0.7 e per V for the 13–19 eV shifts of V oxides).

    Args:
        formula: chemical formula, e.g. ``"V2O5"``.
        energy_ev: photon energies in eV (scalar or array).
        absorber: element the ratio is taken per atom of.
        edge_shift_ev: chemical shift of the absorber's edge from the tabulated one, in eV.

    Returns:
        Electrons per absorber atom, shape of ``energy_ev`` (at least 1-D).

    Examples:
        >>> float(electrons_per_absorber("V2O5", 5420.0)[0]) > float(
        ...     electrons_per_absorber("V2O3", 5420.0)[0]
        ... )
        True
    """
    import xraydb

    try:
        counts = xraydb.chemparse(formula)
    except Exception as err:
        raise ValueError(f"formula={formula!r}: not a chemical formula ({err})") from err
    if absorber not in counts:
        raise ValueError(f"absorber={absorber!r}: not an element of formula={formula!r}")
    energy = np.atleast_1d(np.asarray(energy_ev, dtype=np.float64))
    total = np.zeros_like(energy)
    for element, nu in counts.items():
        shift = edge_shift_ev if element == absorber else 0.0
        total += nu * scattering_factors(element, energy - shift)[0]
    return total / counts[absorber]


def candidate_ratios(
    energies_ev,
    formulas: Sequence[str] = CANDIDATE_VANADIUM_OXIDES,
    absorber: str = "V",
    edge_shift_ev: float = 0.0,
) -> dict[str, float]:
    """Theoretical Re[N_e^eff]/N_absorber of candidate compounds, averaged over energies.

    Args:
        energies_ev: the energies (eV) the measured phase was averaged over.
        formulas: candidate compounds.
        absorber: the absorbing element.
        edge_shift_ev: edge shift from the tabulated edge in eV (see
            :func:`electrons_per_absorber`), e.g. a measured edge energy minus
            :func:`absorber_edge_jump`'s.

    Returns:
        ``{formula: electrons per absorber atom}``.
    """
    return {
        f: float(np.mean(electrons_per_absorber(f, energies_ev, absorber, edge_shift_ev)))
        for f in formulas
    }


def density_maps(
    edge_jump,
    edge_energy_ev,
    phase=None,
    phase_energies_ev=None,
    *,
    element: str = "V",
    edge: str = "K",
) -> dict[str, np.ndarray]:
    """Absorber density, electron density and their ratio per pixel.

    Args:
        edge_jump: fitted Δμt per pixel (…), NaN where masked.
        edge_energy_ev: fitted edge energy per pixel (…) in eV (sets λ).
        phase: optional phase images (energy, …) in rad at ``phase_energies_ev``; the electron
            density is averaged over these energies (choose them away from the edge).
        phase_energies_ev: energies of ``phase`` in eV, shape (energy,).
        element: absorbing element.
        edge: absorption edge.

    Returns:
        ``n_absorber`` (atoms/m²); with ``phase`` also ``n_electron`` (electrons/m²) and
        ``electrons_per_absorber`` (their ratio, NaN where N ≤ 0 or masked).
    """
    _, delta_f2 = absorber_edge_jump(element, edge)
    n_abs = projected_absorber_density(edge_jump, edge_energy_ev, delta_f2)
    out = {"n_absorber": n_abs}
    if phase is None:
        return out
    if phase_energies_ev is None:
        raise ValueError("phase_energies_ev: required with phase (energies of the phase images)")
    e = np.atleast_1d(np.asarray(phase_energies_ev, dtype=np.float64))
    ph = np.asarray(phase, dtype=np.float64)
    if ph.shape[:1] != e.shape or ph.shape[1:] != np.shape(edge_jump):
        raise ValueError(
            f"phase: expected shape {e.shape + np.shape(edge_jump)} (energy as "
            f"phase_energies_ev, then the map's shape), got {ph.shape}"
        )
    n_e = projected_electron_density(ph, e.reshape(-1, *([1] * (ph.ndim - 1)))).mean(axis=0)
    ratio = np.where(n_abs > 0, n_e / np.where(n_abs > 0, n_abs, 1.0), np.nan)
    out.update(n_electron=n_e, electrons_per_absorber=ratio)
    return out
