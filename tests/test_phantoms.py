"""Ground-truth phantoms: geometry, chemistry and bookkeeping of the simulated samples."""

import numpy as np
import pytest
from scipy import ndimage

from diffptycho.sim import phantoms

VOX = 6.7e-9


@pytest.fixture(scope="module")
def field():
    return phantoms.lfp_field((64, 64, 64), VOX, n_particles=8, seed=3)


def _owner(labels):
    """Label of the nearest labelled voxel, for every voxel (assigns partial surface voxels)."""
    _, idx = ndimage.distance_transform_edt(labels == 0, return_indices=True)
    return labels[tuple(idx)]


def test_lfp_fractions_are_volume_fractions(field):
    c = field.composition
    assert c.shape == (2,) + field.labels.shape
    assert c.min() >= 0 and c.sum(0).max() <= 1 + 1e-12
    near = ndimage.binary_dilation(field.labels > 0, structure=np.ones((3, 3, 3)))
    assert np.all(c[:, ~near] == 0)  # nothing outside the particles (and their surface voxels)
    assert np.all(c.sum(0)[field.labels > 0] >= 0.5)
    # an odd number of sub-voxel samples: no voxel sits on the labels' half-occupied threshold
    assert not np.any(np.isclose(c.sum(0), 0.5))
    assert field.species == ("LiFePO4", "FePO4")


def test_lfp_particles_do_not_touch(field):
    assert set(np.unique(field.labels)) == set(range(field.n_particles + 1))
    for i in range(1, field.n_particles + 1):
        grown = ndimage.binary_dilation(field.labels == i, structure=np.ones((3, 3, 3)))
        others = (field.labels > 0) & (field.labels != i)
        assert not np.any(grown & others)
        # Each particle is one connected piece.
        assert ndimage.label(field.labels == i)[1] == 1


def test_lfp_plate_geometry(field):
    occ = field.composition.sum(0)
    owner = _owner(field.labels)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in occ.shape], indexing="ij"), -1) * VOX
    frame_ok = np.einsum("pi,pki->pk", field.normal, field.axes)
    np.testing.assert_allclose(frame_ok, 0, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(field.normal, axis=1), 1, rtol=1e-12)
    # Thickness ~20 nm (±10 %), length ~100 nm, width ~80 nm.
    assert np.all(np.abs(field.thickness_m - 20e-9) <= 2e-9 + 1e-15)
    assert np.all(np.abs(field.size_m[:, 0] - 100e-9) <= 10e-9 + 1e-15)
    assert np.all(np.abs(field.size_m[:, 1] - 80e-9) <= 8e-9 + 1e-15)
    half_diag = np.sqrt(3) / 2 * VOX
    for p in range(field.n_particles):
        mine = (owner == p + 1) & (occ > 0)
        d = grid[mine] - field.center_m[p]
        # Every occupied voxel lies in the plate, to within a voxel's half-diagonal.
        assert np.abs(d @ field.normal[p]).max() <= field.thickness_m[p] / 2 + half_diag
        for k in range(2):
            assert np.abs(d @ field.axes[p, k]).max() <= field.size_m[p, k] / 2 + half_diag
        # Measured thickness = volume / in-plane area, within one voxel of the truth.
        volume = occ[owner == p + 1].sum() * VOX**3
        np.testing.assert_allclose(volume, field.volume_m3[p], rtol=1e-12)
        assert abs(volume / (field.size_m[p, 0] * field.size_m[p, 1]) - field.thickness_m[p]) < VOX
    # Plates lie at various tilts.
    assert np.ptp(np.abs(field.normal[:, 1])) > 0.3


def test_lfp_stays_in_the_rotation_cylinder(field):
    # Plates stay inside the cylinder about y inscribed in (z, x): in view at every angle.
    occ = field.composition.sum(0)
    nz, _, nx = occ.shape
    zz, xx = np.meshgrid(np.arange(nz) - (nz - 1) / 2, np.arange(nx) - (nx - 1) / 2, indexing="ij")
    outside = zz**2 + xx**2 > (min(nz, nx) / 2) ** 2
    assert np.all(occ[np.broadcast_to(outside[:, None, :], occ.shape)] == 0)


def test_lfp_chemistry_truth(field):
    owner = _owner(field.labels)
    c = field.composition
    for p in range(field.n_particles):
        mine = owner == p + 1
        x = c[1][mine].sum() / c[:, mine].sum()
        np.testing.assert_allclose(x, field.fepo4_fraction[p], rtol=1e-12, atol=1e-15)
    kinds = np.array(field.kind)
    assert np.all(field.fepo4_fraction[kinds == "inactive"] == 0)
    assert np.all(field.fepo4_fraction[kinds == "full"] == 1)
    ss = field.fepo4_fraction[kinds == "solid_solution"]
    assert np.all((ss >= 0.3) & (ss <= 0.7))
    # Active particles (> 25 % FePO4) and inactive ones coexist, so "active fraction" is meaningful.
    assert 0 < np.mean(field.fepo4_fraction > 0.25) < 1
    # Pure LiFePO4, pure FePO4 and mixed (30–70 %) voxels all occur inside the plates.
    full = c.sum(0) > 0.999
    x_fp = c[1][full] / c.sum(0)[full]
    assert np.any(x_fp == 0) and np.any(x_fp == 1) and np.any((x_fp > 0.3) & (x_fp < 0.7))


def test_lfp_inactive_fraction_over_many_particles():
    f = phantoms.lfp_field((96, 64, 96), VOX, n_particles=20, seed=7)
    assert 0.1 < np.mean(np.array(f.kind) == "inactive") < 0.6
    active = f.fepo4_fraction > 0.15
    assert 0.3 < active.mean() < 0.95


def _band_width_vox(field, p):
    """In-plane width (voxels) of plate p's voxels with mixed material, across the band."""
    c, owner = field.composition, field.labels == p + 1
    total = c.sum(0)
    share = np.where(total > 0, c[1] / np.where(total > 0, total, 1), np.nan)
    mixed = owner & (total > 0.999) & (share > 0.01) & (share < 0.99)
    if mixed.sum() < 2:
        return 0.0
    xyz = np.argwhere(mixed).astype(float)
    u, v = xyz @ field.axes[p, 0], xyz @ field.axes[p, 1]  # in voxels (unit axes)
    phi = np.linspace(0, np.pi, 721)
    s = np.cos(phi)[:, None] * u + np.sin(phi)[:, None] * v
    return float(np.min(np.ptp(s, axis=1)))


@pytest.mark.parametrize("band_m", [10e-9, 40e-9])
def test_lfp_mixed_band_width_is_the_parameter(band_m):
    f = phantoms.lfp_field(
        (64, 64, 64),
        VOX,
        n_particles=8,
        seed=4,
        inactive_fraction=0.0,
        solid_solution_fraction=0.0,
        mixed_band_m=(band_m, band_m),
    )
    fronts = [p for p in range(f.n_particles) if f.kind[p] == "front"]
    assert len(fronts) >= 5
    widths = np.array([_band_width_vox(f, p) for p in fronts])
    band = band_m / VOX
    # A voxel holds mixed material when one of its 3 × 3 × 3 samples (≤ √3/3 voxel from its
    # centre) is in the band; a band clipped by the plate's edge can only be narrower, but an
    # unclipped one is at least as wide as set.
    assert np.all(widths <= band + 2 * np.sqrt(3) / 3)
    assert widths.max() >= band


def test_lfp_chemistry_parameters_keep_the_geometry():
    a = phantoms.lfp_field((48, 48, 48), VOX, n_particles=4, seed=2)
    b = phantoms.lfp_field(
        (48, 48, 48),
        VOX,
        n_particles=4,
        seed=2,
        mixed_band_m=(7e-9, 13e-9),
        solid_solution_fraction=0.5,
        inactive_fraction=0.0,
    )
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_allclose(a.composition.sum(0), b.composition.sum(0), rtol=1e-12)
    np.testing.assert_array_equal(a.thickness_m, b.thickness_m)
    assert "inactive" not in b.kind


def test_lfp_solid_solution_plates_are_uniformly_mixed():
    f = phantoms.lfp_field(
        (64, 64, 64),
        VOX,
        n_particles=8,
        seed=1,
        inactive_fraction=0.0,
        solid_solution_fraction=0.9,
    )
    kinds = np.array(f.kind)
    assert set(kinds) <= {"solid_solution", "full"} and np.sum(kinds == "solid_solution") >= 5
    owner = _owner(f.labels)
    c = f.composition
    for p in np.flatnonzero(kinds == "solid_solution"):
        mine = (owner == p + 1) & (c.sum(0) > 0)
        share = c[1][mine] / c.sum(0)[mine]
        np.testing.assert_allclose(share, f.fepo4_fraction[p], rtol=1e-12)
        assert 0.3 <= f.fepo4_fraction[p] <= 0.7


def test_lfp_seeds_reproduce():
    a = phantoms.lfp_field((32, 32, 32), VOX, n_particles=2, seed=5)
    b = phantoms.lfp_field((32, 32, 32), VOX, n_particles=2, seed=5)
    c = phantoms.lfp_field((32, 32, 32), VOX, n_particles=2, seed=6)
    np.testing.assert_array_equal(a.composition, b.composition)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.normal, b.normal)
    assert not np.array_equal(a.labels, c.labels)
    assert set(a.particle_truth()) >= {"normal", "thickness_m", "fepo4_fraction", "volume_m3"}


def test_lfp_coarse_voxels_keep_plates_solid():
    f = phantoms.lfp_field((32, 32, 32), 15e-9, n_particles=2, seed=0)
    assert np.all(f.thickness_m >= 1.5 * 15e-9)
    for i in (1, 2):
        assert ndimage.label(f.labels == i)[1] == 1


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        (dict(shape=(32, 32)), "shape"),
        (dict(shape=(32, 4, 32)), "shape"),
        (dict(voxel_size_m=0.0), "voxel_size_m"),
        (dict(n_particles=0), "n_particles"),
        (dict(n_particles=500), "n_particles"),
        (dict(plate_size_m=(100e-9, -1.0, 20e-9)), "plate_size_m"),
        (dict(inactive_fraction=1.5), "inactive_fraction"),
        (dict(solid_solution_fraction=0.95), "solid_solution_fraction"),
        (dict(mixed_band_m=(60e-9, 30e-9)), "mixed_band_m"),
        (dict(mixed_band_m=(-1e-9, 30e-9)), "mixed_band_m"),
        (dict(mixed_band_m=(30e-9,)), "mixed_band_m"),
    ],
)
def test_lfp_rejects_bad_inputs(kwargs, name):
    args = dict(shape=(32, 32, 32), voxel_size_m=VOX, n_particles=2) | kwargs
    with pytest.raises(ValueError, match=name):
        phantoms.lfp_field(**args)


def test_vanadium_field_domains_and_thickness():
    f = phantoms.vanadium_field((64, 64), 20e-9, n_particles=4, seed=2, max_thickness_m=300e-9)
    assert f.thickness.shape == (3, 64, 64) and f.species == ("V2O3", "VO2", "V2O5")
    assert f.thickness.min() >= 0 and f.thickness.max() <= 300e-9
    # One species per particle pixel; background is −1 with no material.
    assert np.all((f.thickness > 0).sum(0) <= 1)
    np.testing.assert_array_equal(f.domain == -1, f.particles == 0)
    assert np.all(f.thickness.sum(0)[f.domain == -1] == 0)
    for s in range(3):
        assert np.all(f.thickness[s][(f.domain != s)] == 0)
    assert set(np.unique(f.domain)) == {-1, 0, 1, 2}
    assert set(np.unique(f.particles)) == set(range(5))
    for i in range(1, 5):
        grown = ndimage.binary_dilation(f.particles == i, structure=np.ones((3, 3)))
        assert not np.any(grown & (f.particles > 0) & (f.particles != i))


def test_vanadium_seeds_reproduce_and_inputs_validate():
    a = phantoms.vanadium_field((48, 48), 20e-9, seed=1)
    b = phantoms.vanadium_field((48, 48), 20e-9, seed=1)
    np.testing.assert_array_equal(a.thickness, b.thickness)
    np.testing.assert_array_equal(a.domain, b.domain)
    with pytest.raises(ValueError, match="shape"):
        phantoms.vanadium_field((48,), 20e-9)
    with pytest.raises(ValueError, match="pixel_size_m"):
        phantoms.vanadium_field((48, 48), -1.0)
    with pytest.raises(ValueError, match="n_particles"):
        phantoms.vanadium_field((48, 48), 20e-9, n_particles=0)
    with pytest.raises(ValueError, match="max_thickness_m"):
        phantoms.vanadium_field((48, 48), 20e-9, max_thickness_m=0.0)
    with pytest.raises(ValueError, match="domains_per_particle"):
        phantoms.vanadium_field((48, 48), 20e-9, domains_per_particle=0)
