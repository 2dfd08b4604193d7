"""Projected V density, electron density and electrons per V: formulas and physics round trips."""

import numpy as np
import pytest

from diffptycho.physics.optics import (
    R_ELECTRON_M,
    atom_densities,
    delta_beta,
    scattering_factors,
    wavelength,
    wavenumber,
)
from diffptycho.physics.spectra import VANADIUM_SPECIES, vanadium_reference_spectra
from diffptycho.recon.chem import densities
from diffptycho.recon.chem.xanes import fit_xanes

E = np.linspace(5420.0, 5540.0, 40)


def test_absorber_density_inverts_mu_t_hand_case():
    n_v, df2, e = 3e21, 3.4, 5480.0  # atoms/m², electrons, eV
    mu_t_jump = 2 * R_ELECTRON_M * (1.239841984e-6 / e) * n_v * df2  # OD = 2 r_e λ N Δf2
    assert densities.projected_absorber_density(mu_t_jump, e, df2) == pytest.approx(n_v)
    with pytest.raises(ValueError, match="delta_f2"):
        densities.projected_absorber_density(1.0, e, 0.0)


def test_tabulated_v_k_jump():
    e0, df2 = densities.absorber_edge_jump("V", "K")
    assert e0 == pytest.approx(5465, abs=1.0)
    _, f2 = scattering_factors("V", [e0 - 20, e0 + 20])
    assert df2 == pytest.approx(f2[1] - f2[0], rel=0.05)


def test_electron_density_of_a_compound_is_sum_of_f1():
    t, e = 400e-9, np.array([5420.0, 5600.0])
    delta, _ = delta_beta("V2O5", 3.36, e)
    phase = -wavenumber(e) * delta * t  # T = exp(−ik∫δ dz)
    n = atom_densities("V2O5", 3.36)
    expect = t * (n["V"] * scattering_factors("V", e)[0] + n["O"] * scattering_factors("O", e)[0])
    np.testing.assert_allclose(densities.projected_electron_density(phase, e), expect, rtol=1e-12)


def test_electrons_per_v_hand_case():
    e = np.array([5420.0, 5450.0])
    f1_v, f1_o = scattering_factors("V", e)[0], scattering_factors("O", e)[0]
    got = densities.electrons_per_absorber("V2O5", e)
    np.testing.assert_allclose(got, (2 * f1_v + 5 * f1_o) / 2, rtol=1e-12)
    np.testing.assert_allclose(
        densities.electrons_per_absorber("VO2", e), f1_v + 2 * f1_o, rtol=1e-12
    )
    shifted = densities.electrons_per_absorber("VO2", e, edge_shift_ev=15.0)
    f1_v_shift = scattering_factors("V", e - 15.0)[0]
    np.testing.assert_allclose(shifted, f1_v_shift + 2 * f1_o, rtol=1e-12)
    r = densities.candidate_ratios(e)
    assert r["V2O3"] < r["VO2"] < r["V2O5"]
    assert r["V2O5"] - r["VO2"] == pytest.approx(f1_o.mean() / 2, rel=1e-9)  # +½ O per V
    with pytest.raises(ValueError, match="absorber='Fe'"):
        densities.electrons_per_absorber("V2O5", e, "Fe")
    with pytest.raises(ValueError, match="formula="):
        densities.electrons_per_absorber("Xx9", e)


def test_round_trip_from_simulated_stack():
    """Fit simulated V oxides: N_V within 2 %, electrons per V within 3 % of the compound's."""
    spectra, truth = vanadium_reference_spectra(E)
    names = list(spectra)
    t = 600e-9
    n = np.stack([spectra[s] for s in names], axis=1)  # (E, species)
    k = wavenumber(E)[:, None]
    mu_t, phase = 2 * k * n.imag * t, -k * n.real * t
    fit = fit_xanes(mu_t, E)
    d = fit.descriptors()
    pre = E < fit.windows.pre_edge_max_ev
    out = densities.density_maps(d["edge_jump"], d["edge_energy_ev"], phase[pre], E[pre])
    n_v = np.array([atom_densities(s, VANADIUM_SPECIES[s][0])["V"] * t for s in names])
    np.testing.assert_allclose(out["n_absorber"], n_v, rtol=0.02)
    e_tab, _ = densities.absorber_edge_jump()
    for i, s in enumerate(names):
        shift = truth[s]["edge_ev"] - e_tab
        expect = densities.candidate_ratios(E[pre], [s], edge_shift_ev=shift)[s]
        assert out["electrons_per_absorber"][i] == pytest.approx(expect, rel=0.01)
        plain = densities.candidate_ratios(E[pre], [s])[s]
        assert out["electrons_per_absorber"][i] == pytest.approx(plain, rel=0.03)


def test_density_maps_errors_and_masks():
    jump = np.array([[0.1, np.nan]])
    out = densities.density_maps(jump, np.full((1, 2), 5480.0))
    assert np.isfinite(out["n_absorber"][0, 0]) and np.isnan(out["n_absorber"][0, 1])
    with pytest.raises(ValueError, match="phase_energies_ev: required"):
        densities.density_maps(jump, 5480.0, np.zeros((3, 1, 2)))
    with pytest.raises(ValueError, match=r"phase: expected shape \(3, 1, 2\)"):
        densities.density_maps(jump, 5480.0, np.zeros((3, 2, 2)), E[:3])
    full = densities.density_maps(jump, 5480.0, -0.1 * np.ones((3, 1, 2)), E[:3])
    assert np.isnan(full["electrons_per_absorber"][0, 1])
    lam = wavelength(E[:3])
    np.testing.assert_allclose(full["n_electron"][0, 0], np.mean(0.1 / (R_ELECTRON_M * lam)))
