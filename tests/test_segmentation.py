"""Phase classes (30/70 %), Dice, and particle labelling with splitting of touching plates."""

import numpy as np
import pytest

from diffptycho.analysis import segmentation as sg


def test_phase_classes_thresholds_and_empty():
    f = np.array([0.71, 0.7, 0.5, 0.3, 0.29, np.nan, 0.9])
    mask = np.array([True] * 6 + [False])
    np.testing.assert_array_equal(sg.phase_classes(f, mask), [0, 1, 1, 1, 2, -1, -1])
    assert sg.phase_classes(f).dtype == np.int8
    with pytest.raises(ValueError, match="low"):
        sg.phase_classes(f, low=0.8, high=0.7)
    with pytest.raises(ValueError, match="mask"):
        sg.phase_classes(f, np.ones(3, bool))


def test_occupied_mask_treats_nan_as_empty():
    np.testing.assert_array_equal(
        sg.occupied_mask(np.array([0.1, 0.5, np.nan, 2.0]), 0.5), [False, True, False, True]
    )


def test_dice_hand_cases():
    a = np.array([1, 1, 1, 0, 0], bool)
    b = np.array([0, 1, 1, 1, 0], bool)
    assert sg.dice(a, b) == pytest.approx(2 * 2 / 6)
    assert sg.dice(a, a) == 1.0
    assert np.isnan(sg.dice(np.zeros(3, bool), np.zeros(3, bool)))
    scores = sg.dice_per_class(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1]))
    assert set(scores) == {0, 1}  # class 2 is absent from the truth: not scored
    assert scores[0] == pytest.approx(2 / 3) and scores[1] == pytest.approx(2 / 4)


def _two_plates_with_neck():
    m = np.zeros((10, 30, 50), bool)
    m[2:8, 5:25, 2:22] = True
    m[2:8, 5:25, 26:46] = True
    m[4:6, 14:16, 22:26] = True  # a 2 × 2 voxel bridge where the plates touch
    return m


def test_touching_plates_are_split_at_the_neck():
    m = _two_plates_with_neck()
    labels, n = sg.label_particles(m)
    assert n == 2
    sizes = sorted(int((labels == k).sum()) for k in (1, 2))
    assert sizes == [2408, 2408]  # each plate plus half the bridge
    assert set(np.unique(labels[:, :, :22][m[:, :, :22]])) == {labels[5, 10, 5]}
    _, n_plain = sg.label_particles(m, split=False)
    assert n_plain == 1


def test_a_single_plate_is_not_split_and_specks_are_dropped():
    m = np.zeros((12, 30, 30), bool)
    m[3:9, 5:25, 5:25] = True
    m[0, 0, 0] = True  # one-voxel speck
    labels, n = sg.label_particles(m, min_voxels=8)
    assert n == 1 and labels[0, 0, 0] == 0


def test_empty_volume_has_no_particles():
    labels, n = sg.label_particles(np.zeros((5, 5, 5), bool))
    assert n == 0 and labels.max() == 0
    with pytest.raises(ValueError, match="marker_fraction"):
        sg.label_particles(np.zeros((5, 5, 5), bool), marker_fraction=1.5)


def test_thin_tilted_plates_are_not_fragmented():
    from scipy import ndimage

    from diffptycho.sim.phantoms import lfp_field

    field = lfp_field((96, 96, 96), 6.7e-9, 20, seed=1)  # 3-voxel-thick plates, 1 voxel apart
    mask = ndimage.gaussian_filter(field.composition.sum(0), 0.7) >= 0.5  # 11 nm resolution
    labels, n = sg.label_particles(mask, min_voxels=50)
    assert n == field.n_particles
    for t in range(1, n + 1):  # one predicted particle per plate
        assert np.unique(labels[(field.labels == t) & (labels > 0)]).size == 1
    # without merging coplanar pieces back, the grid breaks some plates' cores apart
    assert sg.label_particles(mask, min_voxels=50, flat_ratio=0.0)[1] > n
