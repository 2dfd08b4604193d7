"""Reference spectra and the Kramers–Kronig operator, checked against closed forms."""

import numpy as np
import pytest
import xraydb
from scipy.integrate import quad

from diffptycho.physics import optics, spectra
from diffptycho.physics.kramers_kronig import kk_f_matrix, kk_matrix

N_FE_LFP = optics.atom_densities("LiFePO4", 3.6)["Fe"]


def _box_kk(e, a, b, c=1.0):
    """Exact Δf1 of Δf2 = c on [a, b] (0 elsewhere): (c/π)[ln|(E−a)/(E−b)| − ln((E+b)/(E+a))]."""
    return c / np.pi * (np.log(np.abs((e - a) / (e - b))) - np.log((e + b) / (e + a)))


def _fine_grid():
    """Non-uniform grid: 0.05 eV around the Fe L3 lines, 0.5 eV elsewhere (560–860 eV)."""
    return np.unique(
        np.r_[np.arange(560, 700, 0.5), np.arange(700, 720, 0.05), np.arange(720, 860.01, 0.5)]
    )


def test_kk_of_a_box_is_exact_on_a_nonuniform_grid(rng):
    # A constant is exactly piecewise linear, so the operator must reproduce the closed form at
    # every interior node (the end nodes hold the genuine log singularities).
    e = np.sort(np.r_[700.0, 740.0, rng.uniform(700, 740, 150)])
    df1 = kk_f_matrix(e, e) @ np.ones_like(e)
    np.testing.assert_allclose(df1[1:-1], _box_kk(e[1:-1], 700.0, 740.0), rtol=0, atol=1e-12)
    # kk_matrix = diag(1/E²) K diag(E²): Δβ ∝ c/E² is a box in f-space.
    ddelta = kk_matrix(e) @ (1.0 / e**2)
    np.testing.assert_allclose(ddelta[1:-1] * e[1:-1] ** 2, df1[1:-1], rtol=1e-12)


def test_kk_matrix_maps_a_lorentzian_beta_to_its_analytic_delta():
    e = _fine_grid()
    df = spectra.lorentzian_line(e, 710.0, 1.0, 10.0)
    dd, db = optics.f_to_delta_beta(df.real, df.imag, N_FE_LFP, e)
    err = np.abs(kk_matrix(e) @ db - dd)
    # Measured 0.26 % of the peak |Δδ| (discretisation at 0.05 eV for γ = 0.5 eV), also at the
    # grid ends since the line's tails there are small.
    assert err.max() < 5e-3 * np.abs(dd).max()


def test_kk_off_grid_evaluation_matches_quadrature():
    # Principal values by QUADPACK after subtracting the singularity, for the piecewise-linear
    # Δf2 the operator uses, at energies between nodes, on a node and outside the grid.
    nodes = np.linspace(5440.0, 5500.0, 301)
    df2 = spectra.edge_step_f2(nodes, 5478.0, 2.0, 3.0) - spectra.edge_step_f2(
        nodes, 5465.0, 0.8, 3.0
    )
    e_eval = np.array([5450.3, 5465.0, 5471.77, 5478.0, 5490.1, 5520.0])

    def g(x):
        return np.interp(x, nodes, df2)

    a, b = nodes[0], nodes[-1]
    ref = []
    for e in e_eval:
        # P∫ g/(E − x) = −[∫ (g(x) − g(E))/(x − E) dx + g(E) ln|(b − E)/(E − a)|], regular.
        def regular(x, e=e):
            return (g(x) - g(e)) / (x - e) if x != e else 0.0

        kw = dict(points=nodes[1:-1], limit=1000)
        pv = quad(regular, a, b, **kw)[0] + g(e) * np.log(abs((b - e) / (e - a)))
        image = quad(lambda x, e=e: g(x) / (e + x), a, b, **kw)[0]
        ref.append(-(pv + image) / np.pi)
    # Measured 3e-11 for |Δf1| up to 3.3 electrons.
    np.testing.assert_allclose(kk_f_matrix(e_eval, nodes) @ df2, ref, rtol=0, atol=1e-9)


def test_kk_on_a_truncated_range_is_wrong():
    # The pitfall documented in physics/spectra.py: KK of the *full* tabulated β over the
    # experiment's window misses the spectrum outside it. Measured: the variation of δ across
    # 690–730 eV comes out wrong by ~470 %, whereas the difference KK of a white line (localised)
    # is right to 0.3 % (test above).
    e = np.arange(690.0, 730.01, 0.1)
    delta, beta = optics.delta_beta("LiFePO4", 3.6, e)
    dk = kk_matrix(e) @ beta
    true_var, kk_var = delta - delta.mean(), dk - dk.mean()
    assert np.abs(kk_var - true_var).max() > 1.0 * np.abs(true_var).max()


@pytest.mark.parametrize(
    "bad", [[700.0], [710.0, 700.0], [-1.0, 700.0], [[700.0, 710.0]], [700.0, np.nan]]
)
def test_kk_matrix_rejects_bad_grids(bad):
    with pytest.raises(ValueError, match="energies_ev"):
        kk_matrix(bad)


def test_lorentzian_area_fwhm_and_sign():
    e0, fwhm, area = 710.0, 1.3, 7.0
    g = fwhm / 2
    e = np.linspace(e0 - 500 * g, e0 + 500 * g, 400001)
    df = spectra.lorentzian_line(e, e0, fwhm, area)
    # Area: trapezoid vs the antiderivative (A/π)[atan((E−E0)/γ) − atan((E+E0)/γ)] of the pair,
    # which is A up to the tails beyond ±500γ (2/(500π) = 0.13 %).
    numeric = np.sum(0.5 * (df.imag[1:] + df.imag[:-1]) * np.diff(e))
    exact = (
        area / np.pi * np.diff(np.arctan((e[[0, -1]] - e0) / g) - np.arctan((e[[0, -1]] + e0) / g))
    )
    np.testing.assert_allclose(numeric, exact[0], rtol=1e-7)
    np.testing.assert_allclose(numeric, area, rtol=2e-3)
    # FWHM from the half-maximum crossings on a 1e-5 eV grid (the image at −E0 moves them < 1e-6).
    e_fine = np.arange(e0 - fwhm, e0 + fwhm, 1e-5)
    f2 = spectra.lorentzian_line(e_fine, e0, fwhm, area).imag
    peak = f2.max()
    above = e_fine[f2 >= peak / 2]
    np.testing.assert_allclose(above[-1] - above[0], fwhm, atol=3e-5)
    np.testing.assert_allclose(peak, area / (np.pi * g), rtol=1e-5)
    # Narrow absorption line: Δf1 < 0 below E0 and > 0 above.
    assert np.all(df.real[e < e0 - g] < 0) and np.all(df.real[e > e0 + g] > 0)


def test_lorentzian_and_edge_validate():
    with pytest.raises(ValueError, match="fwhm_ev"):
        spectra.lorentzian_line([700.0], 710.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="center_ev"):
        spectra.lorentzian_line([700.0], -710.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="width_ev"):
        spectra.edge_step_f2([700.0], 710.0, -1.0, 1.0)


def test_edge_step_half_height_and_width():
    e = np.array([705.0, 708.0, 711.0])
    step = spectra.edge_step_f2(e, 708.0, 3.0, 2.0)
    np.testing.assert_allclose(step, [2 * 0.15865525393, 1.0, 2 * 0.84134474607], rtol=1e-9)


def test_optics_delta_beta_matches_xraydb():
    d, b = optics.delta_beta("LiFePO4", 3.6, 700.0)
    d_ref, b_ref, _ = xraydb.xray_delta_beta("LiFePO4", 3.6, 700.0)
    np.testing.assert_allclose(d[0], d_ref, rtol=1e-6)
    np.testing.assert_allclose(b[0], b_ref, rtol=1e-6)


def test_species_without_structure_is_the_table():
    e = np.linspace(690.0, 730.0, 9)
    d, b = optics.delta_beta("FePO4", 3.0, e)
    n = spectra.species_spectrum("FePO4", 3.0, e)
    np.testing.assert_array_equal(n, d + 1j * b)


def test_lfp_reference_ratios_and_polar_angles():
    e = np.array([spectra.LFP_E1_EV, spectra.LFP_E2_EV])
    ref = spectra.lfp_reference_spectra(e)
    assert set(ref) == {"LiFePO4", "FePO4"}
    for name, ratio in spectra.LFP_OD_RATIOS.items():
        od = optics.wavenumber(e) * ref[name].imag  # OD ∝ kβ
        np.testing.assert_allclose(od[1] / od[0], ratio, rtol=1e-9)
    angles = {k: np.degrees(np.arctan(v)) for k, v in spectra.LFP_OD_RATIOS.items()}
    np.testing.assert_allclose([angles["LiFePO4"], angles["FePO4"]], [27.5, 65.0], atol=0.1)


def test_lfp_reference_is_absorbing_and_kk_consistent():
    e = _fine_grid()
    ref = spectra.lfp_reference_spectra(e)
    for name, n in ref.items():
        assert np.all(n.imag > 0) and np.all(np.isfinite(n))
        d, b = optics.delta_beta(name, spectra.LFP_DENSITIES_G_CM3[name], e)
        # The chemistry on top of the table is a localised Δβ whose Δδ is its KK partner.
        dd, db = n.real - d, n.imag - b
        assert np.abs(kk_matrix(e) @ db - dd).max() < 5e-3 * np.abs(dd).max()
    # Fe²⁺ peaks at 708.2 eV, Fe³⁺ at 710.2 eV.
    assert abs(e[np.argmax(ref["LiFePO4"].imag)] - spectra.LFP_E1_EV) < 0.1
    assert abs(e[np.argmax(ref["FePO4"].imag)] - spectra.LFP_E2_EV) < 0.1


def _normalised_absorption(e, n):
    mu = n.imag * e  # OD ∝ kβ ∝ Eβ
    pre = np.polyfit(e[e < 5445], mu[e < 5445], 1)
    mu = mu - np.polyval(pre, e)
    return mu / mu[e > 5525].mean()


def test_vanadium_spectra_follow_their_descriptors():
    e = np.arange(5420.0, 5540.01, 0.25)
    ref, desc = spectra.vanadium_reference_spectra(e)
    assert set(ref) == set(desc) == {"V2O3", "VO2", "V2O5"}
    edges = [desc[k]["edge_ev"] for k in ("V2O3", "VO2", "V2O5")]
    assert edges == sorted(edges) and len(set(edges)) == 3
    for name, n in ref.items():
        assert np.all(n.imag > 0) and np.all(np.isfinite(n))
        mu = _normalised_absorption(e, n)
        # Half-height of the normalised edge (main-peak tail and μ ∝ Eβ shift it by < 0.5 eV).
        rising = (e > desc[name]["edge_ev"] - 6) & (mu > 0.5)
        assert abs(e[np.argmax(rising)] - desc[name]["edge_ev"]) < 0.5
        # Pre-edge peak height in edge jumps (+ ≤ 0.03 from the main line's tail).
        pre = mu[np.argmin(np.abs(e - desc[name]["pre_edge_ev"]))]
        assert 0 <= pre - desc[name]["pre_edge_height"] < 0.03


def test_edge_shift_delta_is_the_kk_partner_of_its_beta():
    e = np.arange(5425.0, 5525.0, 0.05)  # holds the support of Δβ (5430–5518 eV)
    kw = dict(absorber="V", edge="K", edge_width_ev=2.0)
    shifted = spectra.species_spectrum("V2O5", 3.36, e, edge_shift_ev=18.0, **kw)
    d, b = optics.delta_beta("V2O5", 3.36, e)
    dd, db = shifted.real - d, shifted.imag - b
    assert abs(db[0]) < 1e-15 and abs(db[-1]) < 1e-15  # localised
    # Measured 0.25 % of the peak |Δδ|, at the kink of the table's smoothed edge (5465.6 eV),
    # from this test's 0.05 eV grid (0.12 % at 0.02 eV); elsewhere < 0.01 %.
    err = np.abs(kk_matrix(e) @ db - dd)
    assert err.max() < 5e-3 * np.abs(dd).max()
    assert err[np.abs(e - 5466.0) > 3].max() < 1e-4 * np.abs(dd).max()


def test_species_spectrum_validates():
    e = [700.0, 710.0]
    with pytest.raises(ValueError, match="absorber"):
        spectra.species_spectrum("FePO4", 3.0, e, absorber="V")
    with pytest.raises(ValueError, match="edge"):
        spectra.species_spectrum("FePO4", 3.0, e, edge_shift_ev=1.0)
    with pytest.raises(ValueError, match="edge"):
        spectra.species_spectrum("FePO4", 3.0, e, edge="Q9", edge_shift_ev=1.0)
    with pytest.raises(ValueError, match="edge_shift_ev"):
        spectra.species_spectrum("FePO4", 3.0, e, edge="L3", edge_shift_ev=20.0)
    with pytest.raises(ValueError, match="lines"):
        spectra.species_spectrum("FePO4", 3.0, e, [(708.0, 1.0)])
    with pytest.raises(ValueError, match="energies_ev"):
        spectra.species_spectrum("FePO4", 3.0, [0.0])
    with pytest.raises(ValueError, match="od_ratio"):
        spectra.calibrate_line_area("FePO4", 3.0, [], (710.2, 1.0), -1.0, 708.2, 710.2)
