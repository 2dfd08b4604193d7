"""Particle statistics: FWHM, binomial errors, inertia-tensor normal, thickness, facet area."""

import numpy as np
import pytest
from scipy import ndimage

from diffptycho.analysis import particles as pa


def _plate(shape, centre, normal, thickness, radius):
    """Disc-shaped plate (voxel centres within |s| ≤ t/2 and in-plane radius), boolean."""
    r = np.stack(np.indices(shape, dtype=float), -1) - np.asarray(centre)
    n = np.asarray(normal, float) / np.linalg.norm(normal)
    s = r @ n
    in_plane = np.sqrt(np.maximum((r**2).sum(-1) - s**2, 0.0))
    return (np.abs(s) <= thickness / 2) & (in_plane <= radius)


def test_fwhm_hand_cases():
    assert pa.fwhm([0, 0, 1, 2, 2, 2, 1, 0, 0]) == pytest.approx(4.0)
    # absolute level 0.5: crossings at 1.5 and 6.5
    assert pa.fwhm([0, 0, 1, 2, 2, 2, 1, 0, 0], half_maximum=0.5) == pytest.approx(5.0)
    assert pa.fwhm([0, 1, 2, 1, 0], spacing=2.0) == pytest.approx(4.0)
    x = np.array([0.0, 1.0, 3.0, 4.0, 6.0])
    assert pa.fwhm([0, 2, 2, 2, 0], positions=x) == pytest.approx(4.5)
    assert np.isnan(pa.fwhm([0, 1, 2, 2]))  # never falls on the right
    assert np.isnan(pa.fwhm([0, 1, 0], half_maximum=3.0))  # never reaches the level
    assert pa.fwhm([0, np.nan, 1, 1, 0]) == pytest.approx(3.5 - 1.0)  # NaN skipped


def test_binomial_error_hand_cases():
    assert float(pa.binomial_error(0.5, 100)) == pytest.approx(0.05)
    assert float(pa.binomial_error(0.2, 25)) == pytest.approx(0.08)
    assert float(pa.binomial_error(0.0, 10)) == 0.0
    assert np.isnan(pa.binomial_error(np.nan, 0))


def test_active_fraction_counts_and_empty():
    a = pa.active_fraction([0.1, 0.16, 0.2, 0.3, 0.9, np.nan], 0.15)
    assert (a.n_active, a.n) == (4, 5)
    assert a.fraction == pytest.approx(0.8) and a.error == pytest.approx(np.sqrt(0.16 / 5))
    empty = pa.active_fraction([], 0.25)
    assert empty.n == 0 and np.isnan(empty.fraction) and np.isnan(empty.error)


def test_activity_by_bins_hand_case():
    b = pa.activity_by_bins([1, 2, 3, 4], [0.0, 0.5, 0.5, 0.0], 0.25, [0, 2.5, 5])
    np.testing.assert_allclose(b["fraction"], [0.5, 0.5])
    np.testing.assert_allclose(b["error"], [0.5 / np.sqrt(2)] * 2)
    np.testing.assert_array_equal(b["n"], [2, 2])


def test_inertia_tensor_hand_case_and_normal():
    i = pa.inertia_tensor(np.array([[1.0, 0, 0], [-1.0, 0, 0]]))
    np.testing.assert_allclose(i, np.diag([0.0, 2.0, 2.0]))
    normal = np.array([1.0, 0.5, 0.3]) / np.linalg.norm([1.0, 0.5, 0.3])
    coords = np.argwhere(_plate((40, 40, 40), (20, 20, 20), normal, 4, 14)).astype(float)
    assert abs(pa.plate_normal(coords) @ normal) > 0.999


@pytest.mark.parametrize("normal", [(1.0, 0.0, 0.0), (1.0, 1.0, 0.0), (1.0, 0.5, 0.3)])
@pytest.mark.parametrize("thickness", [3.0, 6.0])
def test_thickness_facet_area_and_share_of_a_tilted_plate(normal, thickness):
    plate = _plate((40, 40, 40), (20.2, 20.0, 19.7), normal, thickness, 13).astype(float)
    blurred = ndimage.gaussian_filter(plate, 0.7)  # 11 nm resolution at 6.7 nm voxels
    conc = np.stack([0.75 * blurred, 0.25 * blurred])
    labels = (blurred > 0.5).astype(np.int32)
    table = pa.particle_properties(labels, conc, 6.7e-9, full_density=1.0)
    assert len(table) == 1
    n = np.asarray(normal) / np.linalg.norm(normal)
    assert abs(table.normal[0] @ n) > 0.999
    assert table.thickness_m[0] / 6.7e-9 == pytest.approx(thickness, abs=0.6)
    assert table.facet_area_m2[0] / 6.7e-9**2 == pytest.approx(np.pi * 13**2, rel=0.1)
    assert table.share_second[0] == pytest.approx(0.25)
    assert table.volume_m3[0] == pytest.approx(labels.sum() * 6.7e-9**3)


def test_empty_volume_gives_an_empty_table():
    table = pa.particle_properties(np.zeros((4, 4, 4), int), np.zeros((2, 4, 4, 4)), 1e-9)
    assert len(table) == 0 and table.normal.shape == (0, 3)
    assert np.isnan(pa.active_fraction(table.share_second, 0.15).fraction)
    with pytest.raises(ValueError, match="concentrations"):
        pa.particle_properties(np.zeros((4, 4, 4), int), np.zeros((4, 4, 4)), 1e-9)
