"""The composition metrics of :mod:`diffptycho.analysis.composition` against values worked out
by hand on six voxels, and the registration against known integer and sub-voxel shifts."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from diffptycho.analysis.composition import composition_errors, register_to_truth

# six voxels: (first, second) volume fractions
TRUTH = np.array(
    [
        [1.0, 0.8, 0.5, 0.2, 0.0, 0.0],
        [0.0, 0.2, 0.5, 0.8, 1.0, 0.0],  # voxel 5 is empty
    ]
)
ESTIMATE = np.array(
    [
        [0.9, 0.6, 0.5, 0.2, 0.1, 0.3],
        [0.1, 0.4, 0.5, 0.6, 0.9, 0.3],  # voxel 5: total 0.6, counts as material
    ]
)


def test_each_metric_against_hand_computed_values():
    got = composition_errors(ESTIMATE, TRUTH)
    # ‖c − c_true‖² = (0.01 + 0.04 + 0.01 + 0.09) + (0.01 + 0.04 + 0.04 + 0.01 + 0.09) = 0.34
    # ‖c_true‖² = 1.93 + 1.93 = 3.86
    assert got["relative_error"] == pytest.approx(np.sqrt(0.34 / 3.86), rel=1e-12)
    # over the five truly occupied voxels only (voxel 5 is excluded)
    assert got["rmse_first"] == pytest.approx(np.sqrt(0.06 / 5), rel=1e-12)
    assert got["rmse_second"] == pytest.approx(np.sqrt(0.10 / 5), rel=1e-12)
    # second member's share: estimate (0.1, 0.4, 0.5, 0.75, 0.9), truth (0, 0.2, 0.5, 0.8, 1)
    assert got["share_rmse"] == pytest.approx(np.sqrt(0.0625 / 5), rel=1e-12)
    # classes by the first member's share (> 0.7 first-rich, < 0.3 second-rich):
    # estimate (0, 1, 1, 2, 2, 1 [voxel 5 occupied at 0.6]), truth (0, 0, 1, 2, 2, empty)
    assert got["dice_first_rich"] == pytest.approx(2 * 1 / (1 + 2))
    assert got["dice_mixed"] == pytest.approx(2 * 1 / (3 + 1))
    assert got["dice_second_rich"] == pytest.approx(1.0)


def test_perfect_estimate_and_a_class_absent_from_the_truth():
    got = composition_errors(TRUTH, TRUTH)
    assert got["relative_error"] == 0 and got["rmse_first"] == 0 and got["share_rmse"] == 0
    assert got["dice_first_rich"] == got["dice_mixed"] == got["dice_second_rich"] == 1.0
    no_mixed = TRUTH[:, [0, 1, 3, 4]]
    assert np.isnan(composition_errors(no_mixed, no_mixed)["dice_mixed"])


def test_shares_are_clipped_and_the_threshold_moves_the_occupied_set():
    est = ESTIMATE.copy()
    est[:, 0] = [1.2, -0.1]  # share of the second −0.1/1.1 → clipped to 0 like the truth's
    assert composition_errors(est, TRUTH)["share_rmse"] == pytest.approx(np.sqrt(0.0525 / 5))
    # at threshold 1.0 no truth voxel (total exactly 1) is occupied
    with pytest.raises(ValueError, match="no voxel above occupied_threshold"):
        composition_errors(ESTIMATE, TRUTH, occupied_threshold=1.0)
    with pytest.raises(ValueError, match="expected shape"):
        composition_errors(ESTIMATE[:, :5], TRUTH)


def _blob_volume(shape=(16, 16, 16)) -> np.ndarray:
    z, y, x = np.indices(shape, dtype=float)
    a = np.exp(-((z - 7) ** 2 + (y - 8) ** 2 + (x - 6) ** 2) / 8.0)
    b = np.exp(-((z - 9) ** 2 + (y - 6) ** 2 + (x - 10) ** 2) / 6.0)
    return np.stack([a, b])


def test_register_to_truth_undoes_an_integer_shift():
    truth = _blob_volume()
    moved_away = np.roll(truth, (2, -1, 3), axis=(1, 2, 3))
    moved, shift = register_to_truth(moved_away, truth)
    np.testing.assert_allclose(shift, [-2, 1, -3], atol=1e-9)
    np.testing.assert_allclose(moved, truth, atol=1e-9)


def test_register_to_truth_finds_a_subvoxel_shift():
    truth = _blob_volume()
    true_shift = np.array([0.5, -1.25, 0.75])
    moved_away = np.stack(
        [np.real(np.fft.ifftn(ndimage.fourier_shift(np.fft.fftn(c), true_shift))) for c in truth]
    )
    _, shift = register_to_truth(moved_away, truth, upsample=20)
    np.testing.assert_allclose(shift, -true_shift, atol=1 / 20 + 1e-9)
    with pytest.raises(ValueError, match="differs from the truth"):
        register_to_truth(truth[:, :8], truth)
