"""Tilt angles from the standard places and tilt series from files written by other programs."""

import math
import re

import h5py
import numpy as np
import pytest

from diffptycho.io import CXIFormatError, PtychoScan, read_cxi, write_cxi
from diffptycho.io.cxi import (
    angle_from_orientation,
    orientation_from_angle,
    read_cxi_entry,
    read_cxi_header,
    read_cxi_headers,
)
from diffptycho.io.tiltseries import TiltSeriesError, read_tilt_series
from diffptycho.physics.optics import EV_TO_J
from diffptycho.physics.tomography import project

N, NY, NX = 3, 8, 8
ENERGIES = (710.2, 708.2)
ANGLES = (-60.0, 0.0, 45.0)


def write_entry(f, k, energy_ev, *, angle=None, where="rotation_rad", shape=(NY, NX), seed=0):
    """One scan written the way another program would: no diffptycho field, no units on data."""
    rng = np.random.default_rng(seed)
    e = f.create_group(f"entry_{k}")
    det = e.create_group("instrument_1/detector_1")
    det["data"] = rng.poisson(5.0, (N, *shape)).astype(np.uint16)
    e["data_1"] = h5py.SoftLink(det.name)  # whole data group linked, as some writers do
    det["distance"] = 0.3
    det["x_pixel_size"] = det["y_pixel_size"] = 75e-6
    e["instrument_1/source_1/energy"] = energy_ev * EV_TO_J
    e["sample_1/geometry_1/translation"] = np.column_stack(
        [np.arange(N) * 1e-7, np.arange(N) * -2e-7, np.zeros(N)]
    )
    if angle is None:
        return e
    if where == "rotation_rad":
        e["sample_1/rotation_angle"] = math.radians(angle)
        e["sample_1/rotation_angle"].attrs["units"] = "rad"
    elif where == "rotation_nounits":
        e["sample_1/rotation_angle"] = angle
    elif where == "orientation":
        t = math.radians(angle)
        e["sample_1/geometry_1/orientation"] = [math.cos(t), 0, -math.sin(t), 0, 1, 0]
    elif where == "linked":  # the motor value lives elsewhere; the NeXus field links to it
        e["instrument_1/sample_stage/theta"] = angle
        e["instrument_1/sample_stage/theta"].attrs["units"] = "degrees"
        e["sample_1/rotation_angle"] = h5py.SoftLink(f"{e.name}/instrument_1/sample_stage/theta")
    return e


def write_grid(path, cells, **kw):
    """Entries for (energy, angle) cells, numbered in the order given."""
    with h5py.File(path, "w") as f:
        for k, (energy, angle) in enumerate(cells, start=1):
            write_entry(f, k, energy, angle=angle, seed=k, **kw)


def full_grid():
    return [(e, a) for e in ENERGIES for a in ANGLES]


# ----------------------------------------------------------------------------- angles


@pytest.mark.parametrize("theta", [-170.0, -80.0, 0.0, 12.5, 90.0, 179.0])
def test_orientation_round_trip_through_a_file(tmp_path, theta):
    path = tmp_path / "one.cxi"
    write_cxi(path, PtychoScan(np.ones((1, 4, 4)), [[0.0, 0.0]], energy_ev=700.0, angle_deg=theta))
    with h5py.File(path, "r+") as f:  # leave the orientation as the only angle
        del f["entry_1/sample_1/geometry_1/angle_deg"], f["entry_1/sample_1/rotation_angle"]
        np.testing.assert_allclose(
            f["entry_1/sample_1/geometry_1/orientation"][()], orientation_from_angle(theta)
        )
    (header,) = read_cxi_headers(path)
    assert header.angle_deg == pytest.approx(theta, abs=1e-12)
    assert header.angle_source == "/entry_1/sample_1/geometry_1/orientation"


@pytest.mark.parametrize("theta", [30.0, -70.0, 90.0, 150.0])
def test_orientation_sign_agrees_with_the_projector(theta):
    """A voxel at sample (z, x) projects to t = lab-x of R(θ)·(x, 0, z), with R from the file."""
    x_axis = orientation_from_angle(theta)[:3]
    z_axis = np.cross(x_axis, [0.0, 1.0, 0.0])  # z' = x' × y' (right-handed sample frame)
    vol = np.zeros((9, 1, 9))
    z_c, x_c = 3, 1  # centred voxel coordinates
    vol[4 + z_c, 0, 4 + x_c] = 1.0
    angle = math.radians(angle_from_orientation(orientation_from_angle(theta)))
    proj = np.asarray(project(vol, np.array([angle]), n_det=15))[0, 0]
    centroid = np.sum(proj * (np.arange(15) - 7)) / proj.sum()
    # Joseph's tent has width max(|cos θ|, |sin θ|) ≤ 1, so its sampled centroid is within a
    # fraction of a pixel of t; the other sign of sin θ would miss by 2 z_c |sin θ| ≥ 3 px
    assert centroid == pytest.approx(x_c * x_axis[0] + z_c * z_axis[0], abs=0.1)


def test_write_puts_the_angle_in_all_three_places(tmp_path):
    path = tmp_path / "s.cxi"
    write_cxi(path, PtychoScan(np.ones((1, 4, 4)), [[0.0, 0.0]], energy_ev=700.0, angle_deg=-80))
    with h5py.File(path, "r") as f:
        s = f["entry_1/sample_1"]
        assert s["geometry_1/angle_deg"][()] == -80.0
        assert s["rotation_angle"][()] == -80.0 and s["rotation_angle"].attrs["units"] == "degree"
        assert angle_from_orientation(s["geometry_1/orientation"][()]) == pytest.approx(-80.0)


def test_no_angle_is_none_and_not_written(tmp_path):
    path = tmp_path / "s.cxi"
    write_cxi(path, PtychoScan(np.ones((1, 4, 4)), [[0.0, 0.0]], energy_ev=700.0))
    with h5py.File(path, "r") as f:
        assert "rotation_angle" not in f["entry_1/sample_1"]
        assert sorted(f["entry_1/sample_1/geometry_1"]) == ["translation"]
    assert read_cxi(path)[0].angle_deg is None


@pytest.mark.parametrize(
    ("where", "source"),
    [
        ("rotation_rad", "/entry_1/sample_1/rotation_angle"),
        ("rotation_nounits", "/entry_1/sample_1/rotation_angle"),  # no units: degrees
        ("orientation", "/entry_1/sample_1/geometry_1/orientation"),
        ("linked", "/entry_1/sample_1/rotation_angle"),
    ],
)
def test_angle_from_foreign_places(tmp_path, where, source):
    path = tmp_path / "f.cxi"
    with h5py.File(path, "w") as f:
        write_entry(f, 1, 708.2, angle=-37.5, where=where)
    header = read_cxi_header(path, 1)
    assert header.angle_deg == pytest.approx(-37.5, abs=1e-12)
    assert header.angle_source == source
    assert read_cxi_entry(path, "entry_1").angle_deg == pytest.approx(-37.5, abs=1e-12)


def test_angle_precedence_project_field_first(tmp_path):
    path = tmp_path / "f.cxi"
    with h5py.File(path, "w") as f:
        e = write_entry(f, 1, 708.2, angle=10.0, where="orientation")
        e["sample_1/rotation_angle"] = 20.0
        e["sample_1/geometry_1/angle_deg"] = 30.0
    assert read_cxi_header(path, 1).angle_deg == 30.0


def test_per_frame_rotation_angle_must_be_constant(tmp_path):
    path = tmp_path / "f.cxi"
    with h5py.File(path, "w") as f:
        write_entry(f, 1, 708.2)["sample_1/rotation_angle"] = np.full(N, 15.0)
        write_entry(f, 2, 708.2)["sample_1/rotation_angle"] = np.array([15.0, 16.0, 17.0])
    assert read_cxi_header(path, 1).angle_deg == 15.0
    with pytest.raises(CXIFormatError, match=r"entry_2/sample_1/rotation_angle' holds 3 angles"):
        read_cxi_header(path, 2)


def test_angle_errors_name_the_dataset(tmp_path):
    path = tmp_path / "f.cxi"
    with h5py.File(path, "w") as f:
        write_entry(f, 1, 708.2)["sample_1/rotation_angle"] = 1.0
        f["entry_1/sample_1/rotation_angle"].attrs["units"] = "mrad"
        tilted = orientation_from_angle(20.0)
        tilted[1], tilted[3] = 0.2, -0.2  # x' leans towards y: not a rotation about y
        write_entry(f, 2, 708.2)["sample_1/geometry_1/orientation"] = tilted
    with pytest.raises(CXIFormatError, match=r"f\.cxi: dataset '/entry_1/sample_1/rotation_angle"):
        read_cxi(path)
    with pytest.raises(CXIFormatError, match="units 'mrad'; expected degrees"):
        read_cxi_entry(path, 1)
    with pytest.raises(
        CXIFormatError, match=r"'/entry_2/sample_1/geometry_1/orientation' = .* not a rotation"
    ):
        read_cxi_entry(path, 2)


def test_missing_entry_lists_those_present(tmp_path):
    path = tmp_path / "f.cxi"
    with h5py.File(path, "w") as f:
        write_entry(f, 1, 708.2, angle=0.0)
    with pytest.raises(CXIFormatError, match=r"no group '/entry_7'; the file holds entry_1"):
        read_cxi_entry(path, 7)


# ----------------------------------------------------------------------------- tilt series


def test_out_of_order_entries_form_a_sorted_grid(tmp_path):
    cells = full_grid()
    order = [4, 0, 5, 2, 1, 3]
    cells = [cells[i] for i in order]
    # measured angles jitter by a few millidegrees between energies
    jitter = [(e, a + 0.01 * (e > 709)) for e, a in cells]
    write_grid(tmp_path / "s.cxi", jitter)
    ts = read_tilt_series(tmp_path / "s.cxi")
    assert ts.shape == (2, 3)
    np.testing.assert_allclose(ts.energies_ev, sorted(ENERGIES), rtol=1e-12)
    np.testing.assert_allclose(ts.angles_deg, np.array(ANGLES) + 0.005, atol=1e-9)
    np.testing.assert_allclose(ts.scan_angles_deg[1] - ts.scan_angles_deg[0], 0.01, atol=1e-9)
    for e in range(2):
        for a in range(3):
            k = order.index(full_grid().index((sorted(ENERGIES)[e], ANGLES[a]))) + 1
            assert ts.refs[e][a].entry == f"entry_{k}"
            scan = ts.scan(e, a)
            assert scan.energy_ev == pytest.approx(ts.energies_ev[e])
            assert scan.angle_deg == pytest.approx(ts.scan_angles_deg[e, a], abs=1e-9)
            np.testing.assert_array_equal(
                ts.frames(e, a), np.random.default_rng(k).poisson(5.0, (N, NY, NX))
            )
    np.testing.assert_array_equal(ts.n_positions, N)
    assert ts.frame_shapes == ((NY, NX), (NY, NX))
    scan = ts.scan(0, 1)
    np.testing.assert_allclose(ts.positions_px(0, 1), scan.positions_px, rtol=1e-12)
    assert ts.object_pixel_size_m(0) == pytest.approx(scan.object_pixel_size_m, rel=1e-12)
    summary = ts.summary()
    assert summary["grid (energies × angles)"] == "2 × 3"
    assert summary["angles read from"] == ["sample_1/rotation_angle"]


def test_several_files_by_glob_and_by_list(tmp_path):
    cells = full_grid()
    for i, energy in enumerate(ENERGIES):  # one file per energy, written orientation-only
        write_grid(
            tmp_path / f"scan_{i}.cxi", [c for c in cells if c[0] == energy], where="orientation"
        )
    ts = read_tilt_series(str(tmp_path / "scan_*.cxi"))
    assert ts.shape == (2, 3)
    assert {ref.path for ref in ts.refs[0]} == {str(tmp_path / "scan_1.cxi")}
    files = [tmp_path / "scan_1.cxi", tmp_path / "scan_0.cxi"]
    np.testing.assert_allclose(read_tilt_series(files).angles_deg, ANGLES, atol=1e-9)
    with pytest.raises(FileNotFoundError, match="nothing_.*matches no file"):
        read_tilt_series(str(tmp_path / "nothing_*.cxi"))


def test_scan_without_angle_is_an_error_naming_it(tmp_path):
    path = tmp_path / "s.cxi"
    with h5py.File(path, "w") as f:
        write_entry(f, 1, 708.2, angle=0.0)
        write_entry(f, 2, 708.2)
    with pytest.raises(
        TiltSeriesError, match=r"1 of 2 scans have no tilt angle: .*s\.cxi:/entry_2"
    ):
        read_tilt_series(path)


def test_lone_scan_without_angle_is_a_2d_scan(tmp_path):
    path = tmp_path / "s.cxi"
    with h5py.File(path, "w") as f:
        write_entry(f, 1, 708.2)
    ts = read_tilt_series(path)
    assert ts.shape == (1, 1) and ts.angles_deg.tolist() == [0.0]
    assert ts.angle_sources == ((None,),)


def test_missing_and_duplicate_scans_are_listed(tmp_path):
    cells = full_grid()
    write_grid(tmp_path / "missing.cxi", cells[:-1])
    with pytest.raises(TiltSeriesError, match=r"missing scans: 708\.20 eV at \+45\.00°"):
        read_tilt_series(tmp_path / "missing.cxi")
    write_grid(tmp_path / "dup.cxi", [*cells, (708.21, 0.02)])
    with pytest.raises(
        TiltSeriesError,
        match=r"measured more than once: 708\.20 eV, \+0\.01°: .*dup\.cxi:/entry_5, .*entry_7",
    ):
        read_tilt_series(tmp_path / "dup.cxi")


def test_frame_shapes_must_agree_within_an_energy(tmp_path):
    path = tmp_path / "s.cxi"
    with h5py.File(path, "w") as f:
        write_entry(f, 1, 708.2, angle=0.0)
        write_entry(f, 2, 708.2, angle=10.0, shape=(NY, NX + 2))
        write_entry(f, 3, 710.2, angle=0.0, shape=(NY + 2, NX))
        write_entry(f, 4, 710.2, angle=10.0, shape=(NY + 2, NX))
    with pytest.raises(TiltSeriesError, match=re.escape("frame shape (ny, nx): (8, 8) in")):
        read_tilt_series(path)
