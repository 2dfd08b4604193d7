"""Two-energy unmixing: the 2×2 inverse, polar angle ↔ composition, histogram fit, errors."""

import numpy as np
import pytest

from diffptycho.physics import optics
from diffptycho.recon.chem import two_energy as te

LFP = te.reference_matrix([1.0, 0.52], [1.0, 2.14])  # columns: LiFePO4, FePO4 at (E1, E2)


def test_unmix_is_the_hand_computed_inverse():
    m = te.reference_matrix(
        [2.0, 1.0], [1.0, 3.0]
    )  # I = [[2, 1], [1, 3]], I⁻¹ = [[3, −1], [−1, 2]]/5
    np.testing.assert_allclose(m, [[2.0, 1.0], [1.0, 3.0]])
    c = te.unmix_two_energy(np.array([3.0, 4.0]), m)
    np.testing.assert_allclose(c, [1.0, 1.0], rtol=1e-12)  # (9 − 4, −3 + 8)/5
    c = te.unmix_two_energy(np.array([3.0, 4.0]), m, od_pre=np.array(1.0))
    np.testing.assert_allclose(c, [0.6, 0.8], rtol=1e-12)  # (2, 3) → (6 − 3, −2 + 6)/5


def test_unmix_broadcasts_over_volumes(rng):
    c_true = rng.uniform(0, 1, (2, 3, 4, 5))
    od = np.einsum("ij,j...->i...", LFP, c_true)
    np.testing.assert_allclose(te.unmix_two_energy(od, LFP), c_true, rtol=1e-10, atol=1e-12)


def test_reference_matrix_subtracts_pre_edge():
    m = te.reference_matrix([2.0, 1.5], [1.0, 3.0], od_pre=[0.5, 0.25])
    np.testing.assert_allclose(m, [[1.5, 0.75], [1.0, 2.75]])


@pytest.mark.parametrize(
    "first, second", [([1.0, 0.5], [2.0, 1.0]), ([0.0, 0.0], [1.0, 2.0]), ([1.0, 0.5], [1.0, 0.5])]
)
def test_singular_reference_matrix_is_a_clear_error(first, second):
    with pytest.raises(te.SingularReferenceError, match="singular"):
        te.reference_matrix(first, second)
    with pytest.raises(te.SingularReferenceError, match="cannot tell them apart"):
        te.unmix_two_energy(np.ones(2), np.stack([first, second], axis=1))


def test_nearly_singular_matrix_is_rejected_and_bad_shapes_too():
    with pytest.raises(te.SingularReferenceError):
        te.check_reference_matrix([[1.0, 1.0], [0.5, 0.5 + 1e-12]])
    with pytest.raises(ValueError, match=r"\(2, 2\)"):
        te.check_reference_matrix(np.eye(3))
    with pytest.raises(ValueError, match="first axis"):
        te.unmix_two_energy(np.ones((3, 4)), LFP)


def test_polar_angle_hand_cases():
    od = np.array([[1.0, 1.0, 0.0, 1.0], [1.0, 0.0, 2.0, 0.52]])
    np.testing.assert_allclose(
        np.degrees(te.polar_angle(od)), [45.0, 0.0, 90.0, np.degrees(np.arctan(0.52))]
    )


def test_polar_angle_composition_hand_cases():
    # pure members sit at atan of their OD ratios: 27.47° (LiFePO4) and 64.95° (FePO4)
    theta = np.degrees(te.fraction_to_polar_angle(np.array([1.0, 0.0, 0.5]), LFP))
    np.testing.assert_allclose(
        theta, np.degrees(np.arctan([0.52, 2.14, (0.52 + 2.14) / 2])), rtol=1e-12
    )
    f = te.polar_angle_to_fraction(np.arctan(np.array([0.52, 2.14, 1.33])), LFP)
    np.testing.assert_allclose(f, [1.0, 0.0, 0.5], atol=1e-12)


def test_fraction_from_unmixing_equals_polar_angle_route(rng):
    c = rng.uniform(0.05, 1.0, (2, 500)) * rng.uniform(0.1, 5.0, 500)  # any amount of material
    od = LFP @ c
    f_unmix = te.fraction_first(te.unmix_two_energy(od, LFP))
    f_polar = te.polar_angle_to_fraction(te.polar_angle(od), LFP)
    np.testing.assert_allclose(f_unmix, c[0] / c.sum(0), rtol=1e-10)
    np.testing.assert_allclose(f_polar, f_unmix, rtol=1e-9)


def test_fraction_first_nan_on_zero_total_and_clip():
    f = te.fraction_first(np.array([[0.0, 1.2, 1.0], [0.0, -0.2, 1.0]]))
    assert np.isnan(f[0])
    np.testing.assert_allclose(f[1:], [1.2, 0.5])
    np.testing.assert_allclose(
        te.fraction_first(np.array([[1.2], [-0.2]]), clip=True), [1.0], rtol=0
    )


def test_histogram_fit_recovers_centres_widths_and_compositions(rng):
    angles = np.concatenate(
        [rng.normal(np.degrees(np.arctan(0.52)), 3.0, 20000), rng.normal(64.95, 2.0, 10000)]
    )
    fit = te.fit_polar_histogram(angles, LFP)
    np.testing.assert_allclose(fit.centres_deg, [27.47, 64.95], atol=0.1)
    np.testing.assert_allclose(fit.sigmas_deg, [3.0, 2.0], rtol=0.05)
    np.testing.assert_allclose(fit.voxel_share, [2 / 3, 1 / 3], atol=0.01)
    np.testing.assert_allclose(fit.fraction_first, [1.0, 0.0], atol=0.01)
    # composition error = |df/dθ| · σ: check the slope against a finite difference
    theta = np.radians(fit.centres_deg)
    h = 1e-6
    slope = (
        te.polar_angle_to_fraction(theta + h, LFP) - te.polar_angle_to_fraction(theta - h, LFP)
    ) / (2 * h)
    np.testing.assert_allclose(
        fit.fraction_error, np.abs(slope) * np.radians(fit.sigmas_deg), rtol=1e-6
    )
    assert fit.counts.sum() == angles.size
    assert set(fit.as_datasets()) >= {"gaussian_fit/centres_deg", "gaussian_fit/counts"}


def test_histogram_of_all_masked_voxels_is_a_clear_error():
    with pytest.raises(ValueError, match="finite voxels"):
        te.fit_polar_histogram(np.full((4, 4, 4), np.nan), LFP)


def test_calibrated_lfp_spectra_give_the_published_polar_angles():
    from diffptycho.physics.spectra import LFP_E1_EV, LFP_E2_EV, lfp_reference_spectra

    e = np.array([LFP_E1_EV, LFP_E2_EV])
    ref = lfp_reference_spectra(e)
    voxel = 6.7e-9
    od = {k: 2 * optics.wavenumber(e) * v.imag * voxel for k, v in ref.items()}
    m = te.reference_matrix(od["LiFePO4"], od["FePO4"])
    angles = np.degrees(np.arctan2(m[1], m[0]))
    np.testing.assert_allclose(angles, [27.47, 64.95], atol=0.02)


def test_smoothing_inside_the_mask_keeps_constants_and_leaves_outside(rng):
    c = np.zeros((2, 10, 10, 10))
    mask = np.zeros((10, 10, 10), bool)
    mask[2:8, 3:7, 1:9] = True
    c[0][mask], c[1][mask] = 0.7, 0.3
    c_out = rng.normal(size=c.shape) * ~mask
    smooth = te.smooth_concentrations(c + c_out, mask, 1.0)
    np.testing.assert_allclose(smooth[:, mask], c[:, mask], atol=1e-12)  # empty space ignored
    np.testing.assert_array_equal(smooth[:, ~mask], c_out[:, ~mask])
    np.testing.assert_array_equal(te.smooth_concentrations(c, mask, 0.0), c)
