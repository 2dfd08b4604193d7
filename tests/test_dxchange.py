"""Data Exchange and plain projection files: real data, corrections, round trips, errors."""

import os

import h5py
import numpy as np
import pytest

from diffptycho.io.dxchange import (
    TomoFormatError,
    flat_dark_correct,
    load_projections,
    minus_log,
    read_dxchange,
    read_projections,
    write_projections,
)


def test_reads_the_tooth_and_corrects_it(shared_data):
    path = os.path.join(shared_data, "tomo_tooth", "tooth.h5")
    raw = read_dxchange(path)
    assert raw.data.shape == (181, 2, 640) and raw.white.shape == (10, 2, 640)
    assert raw.dark.shape == (10, 2, 640) and raw.data.dtype == np.float32
    np.testing.assert_allclose(raw.angles_deg[[0, -1]], [0.0, 179.0], atol=0.01)
    od = raw.line_integrals()
    assert np.all(np.isfinite(od))
    air = od[:, :, :20]  # the first columns see no sample
    assert abs(np.median(air)) < 0.02  # flat-field corrected air is transparent
    assert od.max() > 1.0  # the tooth absorbs
    rows = read_dxchange(path, rows=slice(1, 2))
    np.testing.assert_array_equal(rows.data, raw.data[:, 1:2])
    p, angles, voxel = load_projections(path)
    np.testing.assert_array_equal(p, od)
    np.testing.assert_allclose(angles, np.deg2rad(raw.angles_deg))
    assert voxel is None


def test_flat_dark_correction_and_minus_log():
    data = np.full((2, 1, 3), 60.0)
    white = np.full((4, 1, 3), 110.0)
    white[:, 0, 2] = 10.0  # dead flat-field pixel
    dark = np.full((3, 1, 3), 10.0)
    t = flat_dark_correct(data, white, dark)
    np.testing.assert_allclose(t[:, 0, :2], 0.5)
    assert np.isfinite(t).all()
    np.testing.assert_allclose(minus_log(np.array([1.0, np.exp(-2.0)])), [0.0, 2.0], rtol=1e-6)
    assert minus_log(np.array([0.0, -1.0]), min_transmission=1e-3).max() == pytest.approx(
        -np.log(1e-3)
    )
    with pytest.raises(ValueError, match="must match"):
        flat_dark_correct(data, white[:, :, :2], dark)


def test_plain_projections_round_trip(tmp_path):
    path = tmp_path / "proj.h5"
    p = np.random.default_rng(0).random((5, 3, 8)).astype(np.complex64)
    write_projections(path, p, np.linspace(-80, 77, 5), voxel_size_m=6.7e-9)
    back, angles, voxel = read_projections(path, rows=slice(1, 3))
    np.testing.assert_array_equal(back, p[:, 1:3])
    np.testing.assert_allclose(np.rad2deg(angles), np.linspace(-80, 77, 5))
    assert voxel == pytest.approx(6.7e-9)
    assert load_projections(path)[0].shape == (5, 3, 8)
    with pytest.raises(ValueError, match="one angle each"):
        write_projections(path, p, np.zeros(4))


def _write(path, **datasets):
    with h5py.File(path, "w") as f:
        for name, value in datasets.items():
            f[name.replace("__", "/")] = value


def test_error_messages_name_the_file_the_dataset_and_the_fix(tmp_path):
    missing = tmp_path / "nope.h5"
    with pytest.raises(FileNotFoundError, match="nope.h5"):
        read_dxchange(missing)
    text = tmp_path / "notes.h5"
    text.write_text("not hdf5")
    with pytest.raises(TomoFormatError, match="not an HDF5 file"):
        load_projections(text)
    no_flat = tmp_path / "no_flat.h5"
    _write(no_flat, exchange__data=np.ones((3, 2, 4)), exchange__theta=np.arange(3.0))
    with pytest.raises(TomoFormatError, match=r"no_flat.h5.*exchange/data_white.*flat fields"):
        read_dxchange(no_flat)
    no_theta = tmp_path / "no_theta.h5"
    _write(no_theta, exchange__data=np.ones((3, 2, 4)), exchange__data_white=np.ones((2, 2, 4)))
    with pytest.raises(TomoFormatError, match=r"exchange/theta.*angles_deg"):
        read_dxchange(no_theta)
    raw = read_dxchange(no_theta, angles_deg=[0, 1, 2])  # no dark: zero dark current
    np.testing.assert_array_equal(raw.dark, 0)
    bad_angles = tmp_path / "bad_angles.h5"
    _write(bad_angles, projections=np.ones((3, 2, 4)), angles_deg=np.arange(4.0))
    with pytest.raises(TomoFormatError, match=r"bad_angles.h5.*angles_deg.*3 projections"):
        read_projections(bad_angles)
    bad_flat = tmp_path / "bad_flat.h5"
    _write(
        bad_flat,
        exchange__data=np.ones((3, 2, 4)),
        exchange__data_white=np.ones((2, 2, 5)),
        exchange__theta=np.arange(3.0),
    )
    with pytest.raises(TomoFormatError, match=r"data_white.*must match"):
        read_dxchange(bad_flat)
    neither = tmp_path / "neither.h5"
    _write(neither, volume=np.ones(3))
    with pytest.raises(TomoFormatError, match=r"neither 'projections'.*'exchange/data'"):
        load_projections(neither)
