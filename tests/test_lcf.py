"""Linear combination fit: NNLS against SciPy and hand cases, R-factor, masks, offsets."""

import numpy as np
import pytest
from scipy.optimize import nnls as scipy_nnls

from diffptycho.recon.chem import lcf


def test_nnls_hand_case():
    # unconstrained LS gives (1, −1); with w ≥ 0 the second weight is 0 and w1 = (Aᵀd)₁/‖a₁‖² = 1/2
    a = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    w = lcf.nnls(a, np.array([[1.0], [-1.0], [0.0]]))
    np.testing.assert_allclose(w[:, 0], [0.5, 0.0], atol=1e-12)


@pytest.mark.parametrize("method", ["exact", "fista"])
@pytest.mark.parametrize("n_ref", [1, 3, 5])
def test_nnls_matches_scipy(rng, method, n_ref):
    a = rng.random((30, n_ref))
    d = rng.normal(size=(30, 50)) + a @ rng.normal(size=(n_ref, 50))
    w = np.asarray(lcf.nnls(a, d, method=method, iterations=5000))
    ref = np.stack([scipy_nnls(a, d[:, i])[0] for i in range(d.shape[1])], axis=1)
    np.testing.assert_allclose(w, ref, atol=1e-8)
    assert np.all(w >= 0)


def test_nnls_rejects_bad_input():
    with pytest.raises(ValueError, match="expected A"):
        lcf.nnls(np.ones((3, 2)), np.ones((4, 5)))
    with pytest.raises(ValueError, match="method"):
        lcf.nnls(np.ones((3, 2)), np.ones((3, 5)), method="magic")
    with pytest.raises(ValueError, match="exact method"):
        lcf.nnls(np.ones((3, 11)), np.ones((3, 5)), method="exact")


def test_r_factor_hand_case():
    assert float(lcf.r_factor(np.array([1.0, 2.0]), np.array([1.0, 1.0]))) == pytest.approx(0.2)
    assert np.isnan(lcf.r_factor(np.zeros(3), np.zeros(3)))


def test_lcf_recovers_weights_of_a_mixture_stack(rng):
    e = np.linspace(700, 730, 60)
    refs = np.stack([np.exp(-((e - 708) ** 2) / 2), np.exp(-((e - 710) ** 2) / 3), e / 730])
    w_true = rng.uniform(0, 1, (3, 8, 9))
    w_true[1, :2] = 0.0  # some pixels on the boundary of the feasible set
    stack = np.einsum("re,ryx->eyx", refs, w_true)
    res = lcf.linear_combination_fit(stack, refs)
    np.testing.assert_allclose(res.weights, w_true, atol=1e-9)
    assert np.nanmax(res.r_factor) < 1e-20
    np.testing.assert_allclose(res.fractions().sum(0), 1.0, rtol=1e-12)
    assert res.fit.shape == stack.shape


def test_lcf_free_offset_absorbs_a_constant_of_either_sign(rng):
    e = np.linspace(0, 1, 40)
    refs = np.stack([np.sin(3 * e) + 1.0, np.cos(2 * e) + 1.0])
    w_true = rng.uniform(0.2, 1, (2, 10))
    offset = np.linspace(-0.5, 0.5, 10)
    data = refs.T @ w_true + offset
    plain = lcf.linear_combination_fit(data, refs)
    with_offset = lcf.linear_combination_fit(data, refs, offset=True)
    np.testing.assert_allclose(with_offset.weights, w_true, atol=1e-9)
    np.testing.assert_allclose(with_offset.offset, offset, atol=1e-9)
    assert np.all(np.nanmax(plain.r_factor) > 1e-4)
    assert np.all(plain.offset == 0)


def test_lcf_masked_pixels_are_nan_and_all_masked_does_not_fail(rng):
    refs = rng.random((2, 12))
    data = rng.random((12, 4, 4))
    data[:, 0, 0] = np.nan  # a non-finite spectrum is treated as masked
    mask = np.ones((4, 4), bool)
    mask[1] = False
    res = lcf.linear_combination_fit(data, refs, mask=mask)
    assert np.all(np.isnan(res.weights[:, 1])) and np.all(np.isnan(res.r_factor[1]))
    assert np.isnan(res.r_factor[0, 0])
    assert np.all(np.isfinite(res.r_factor[2:]))
    none = lcf.linear_combination_fit(data, refs, mask=np.zeros((4, 4), bool))
    assert np.all(np.isnan(none.weights)) and np.all(np.isnan(none.r_factor))


def test_lcf_shape_errors():
    with pytest.raises(ValueError, match="energies on the first axis"):
        lcf.linear_combination_fit(np.ones((5, 3, 3)), np.ones((2, 6)))
    with pytest.raises(ValueError, match="reference, energy"):
        lcf.linear_combination_fit(np.ones((5, 3)), np.ones(5))
    with pytest.raises(ValueError, match="non-finite"):
        lcf.linear_combination_fit(np.ones((2, 3)), np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match="mask"):
        lcf.linear_combination_fit(np.ones((2, 3)), np.ones((1, 2)), mask=np.ones(4, bool))


@pytest.mark.slow
def test_lcf_and_two_energy_maps_agree_on_the_measured_stack(shared_data):
    import os

    from diffptycho.io import stxm
    from diffptycho.recon.chem import two_energy as te

    d = os.path.join(shared_data, "stxm_fe_l3")
    st = stxm.read_stxm_stack(os.path.join(d, "71214078.hdr"), os.path.join(d, "i0.xsp"))
    e = st.energies_ev
    refs = np.stack(
        [stxm.reference_on_grid(os.path.join(d, n), e) for n in ("reduced.r", "oxidized.r")]
    )
    pre = e <= 705.5
    net, rnet = st.od - st.od[pre].mean(0), refs - refs[:, pre].mean(1, keepdims=True)
    mask = net[(e >= 707.5) & (e <= 711)].mean(0) > 0.1
    res = lcf.linear_combination_fit(net, rnet, mask=mask)
    share_lcf = np.asarray(res.fractions())[0]

    def at(energy):  # linear interpolation of the stack between its two nearest energies
        k = np.searchsorted(e, energy)
        t = (energy - e[k - 1]) / (e[k] - e[k - 1])
        return (1 - t) * net[k - 1] + t * net[k]

    od2 = np.stack([at(708.2), at(710.2)])
    m = te.reference_matrix(*[np.interp([708.2, 710.2], e, r) for r in rnet])
    share_2e = np.asarray(te.fraction_first(te.unmix_two_energy(od2, m)))
    ok = mask & np.isfinite(share_lcf) & np.isfinite(share_2e)
    assert ok.sum() > 3000
    assert np.corrcoef(share_lcf[ok], share_2e[ok])[0, 1] > 0.75
    assert np.median(np.asarray(res.r_factor)[ok]) < 0.1
