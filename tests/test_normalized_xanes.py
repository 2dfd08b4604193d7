"""Normalised XANES → δ + iβ of a compound: round trip through species_spectrum."""

import numpy as np
import pytest

from diffptycho.physics import spectra
from diffptycho.physics.normalized_xanes import delta_beta_from_normalized, normalize_xanes
from diffptycho.physics.optics import delta_beta, wavelength

E = np.arange(5300.0, 5760.0, 1.0)
INNER = (E >= 5420.0) & (E <= 5540.0)  # the published scan


@pytest.fixture(scope="module")
def references():
    return spectra.vanadium_reference_spectra(E)


@pytest.mark.parametrize("name", list(spectra.VANADIUM_SPECIES))
@pytest.mark.parametrize("flattened", [False, True])
def test_normalised_mu_of_a_species_spectrum_gives_back_its_delta_and_beta(
    references, name, flattened
):
    ref, desc = references
    n0 = ref[name]
    rho = spectra.VANADIUM_SPECIES[name][0]
    mu = 4 * np.pi * n0.imag / wavelength(E)  # 1/m, what a transmission scan measures
    nz = normalize_xanes(E, mu, e0_ev=desc[name]["edge_ev"], pre_ev=(-150, -40), post_ev=(60, 300))
    y = nz.flat if flattened else nz.norm
    n = delta_beta_from_normalized(E, y, name, rho, e0_ev=nz.e0_ev, flattened=flattened)
    # β: within 2.5 % of its variation across the scan (measured: 0.8-1.6 %)
    assert np.abs(n.imag - n0.imag)[INNER].max() < 0.025 * np.ptp(n0.imag[INNER])
    # δ: its near-edge change (δ − tabulated δ) within 5 % of its range (measured: 2.3-3.6 %),
    # δ itself within 1 % (measured ≤ 0.74 %)
    d_tab = delta_beta(name, rho, E)[0]
    change = (n0.real - d_tab)[INNER]
    assert np.abs(n.real - n0.real)[INNER].max() < 0.05 * np.ptp(change)
    assert np.abs(n.real / n0.real - 1)[INNER].max() < 0.01


def test_without_the_kramers_kronig_term_delta_would_miss_its_change(references):
    ref, desc = references
    n0 = ref["V2O5"]
    d_tab, b_tab = delta_beta("V2O5", 3.36, E)
    # the tabulated δ alone misses the near-edge change by far more than the tolerance above
    change = (n0.real - d_tab)[INNER]
    assert np.abs(change).max() > 0.3 * np.ptp(change)


def test_normalisation_of_a_clean_step():
    e = np.linspace(4900.0, 5400.0, 501)
    pre = 0.3 - 2e-5 * (e - 4900.0)
    post_shape = 1.0 - 4e-4 * (e - 5000.0)  # decaying post-edge
    mu = pre + 0.7 * np.where(e >= 5000.0, post_shape, 0.0)
    nz = normalize_xanes(e, mu, e0_ev=5000.0, pre_ev=(-100, -10), post_ev=(10, 400), nnorm=1)
    assert nz.edge_step == pytest.approx(0.7, rel=1e-9)
    np.testing.assert_allclose(nz.pre_edge, pre, atol=1e-12)
    np.testing.assert_allclose(nz.flat[e > 5001], 1.0, atol=1e-9)
    np.testing.assert_allclose(nz.norm[e < 4999], 0.0, atol=1e-9)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"e0_ev": 6000.0}, "e0_ev"),
        ({"pre_ev": (-1000.0, -900.0)}, "pre_ev"),
        ({"nnorm": 5}, "nnorm"),
    ],
)
def test_normalisation_refuses_bad_ranges(kwargs, match):
    e = np.linspace(4900.0, 5400.0, 101)
    with pytest.raises(ValueError, match=match):
        normalize_xanes(e, (e > 5000).astype(float), **({"e0_ev": 5000.0} | kwargs))


def test_conversion_refuses_an_absorber_outside_the_formula():
    with pytest.raises(ValueError, match="absorber='Fe'"):
        delta_beta_from_normalized(E, (E > 5480).astype(float), "V2O5", 3.36, absorber="Fe")
