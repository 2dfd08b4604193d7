"""CXI scans: exact round trips, the documented on-disk layout, foreign files, clear errors."""

import os
import re

import h5py
import numpy as np
import pytest

from diffptycho.io import CXIFormatError, PtychoScan, read_cxi, read_cxi_truth, write_cxi
from diffptycho.physics.optics import EV_TO_J, wavelength

NY, NX = 6, 8


def make_scan(rng, n=5, **kw):
    fields = dict(
        data=rng.poisson(50.0, (n, NY, NX)).astype(np.float32),
        positions_m=rng.uniform(-1e-6, 1e-6, (n, 2)),
        energy_ev=708.2,
        distance_m=0.25,
        pixel_size_m=(11e-6, 13e-6),
        mask=rng.random((NY, NX)) > 0.1,
        illumination=(rng.normal(size=(2, NY, NX)) + 1j * rng.normal(size=(2, NY, NX))).astype(
            np.complex64
        ),
        angle_deg=-80.0,
        name="LFP plate, 708.2 eV",
    )
    fields.update(kw)
    return PtychoScan(**fields)


def assert_same_scan(a: PtychoScan, b: PtychoScan):
    for field in ("data", "positions_m", "mask", "illumination"):
        x, y = getattr(a, field), getattr(b, field)
        if x is None:
            assert y is None, field
        else:
            assert x.dtype == y.dtype and x.shape == y.shape, field
            np.testing.assert_array_equal(x, y, err_msg=field)
    # eV → J → eV may differ in the last bit
    assert b.energy_ev == pytest.approx(a.energy_ev, rel=1e-15)
    assert (a.distance_m, a.pixel_size_m, a.angle_deg, a.name) == (
        b.distance_m,
        b.pixel_size_m,
        b.angle_deg,
        b.name,
    )


def write_foreign(path, n=4, data_path="entry_1/data_1/data", **overrides):
    """A minimal CXI as other programs write it: only the required datasets, no units."""
    rng = np.random.default_rng(0)
    fields = {
        data_path: rng.poisson(9.0, (n, NY, NX)).astype(np.uint16),
        "entry_1/sample_1/geometry_1/translation": np.column_stack(
            [np.arange(n) * 1e-7, np.arange(n) * -2e-7, np.zeros(n)]
        ),
        "entry_1/instrument_1/source_1/energy": 710.2 * EV_TO_J,
        "entry_1/instrument_1/detector_1/distance": 0.3,
        "entry_1/instrument_1/detector_1/x_pixel_size": 75e-6,
        "entry_1/instrument_1/detector_1/y_pixel_size": 75e-6,
    }
    fields.update(overrides)
    with h5py.File(path, "w") as f:
        for key, value in fields.items():
            if value is not None:
                f[key] = value
    return fields


def test_round_trip_exact_multiple_entries(tmp_path, rng):
    scans = [
        make_scan(rng),
        make_scan(
            rng,
            n=3,
            illumination=rng.normal(size=(NY, NX)) + 1j * rng.normal(size=(NY, NX)),
            angle_deg=77.0,
            energy_ev=710.2,
        ),
        # pixel-unit data: no geometry, positions in object pixels, nothing optional
        PtychoScan(rng.random((2, NY, NX)), [[0.5, 1.0], [2.0, -3.0]], energy_ev=5420.0),
    ]
    truth = {"object": rng.normal(size=(4, 4)) + 1j, "chem/composition": np.ones((2, 3, 3))}
    path = tmp_path / "scans.cxi"
    write_cxi(path, scans, truth=truth, attrs={"experiment": "battery", "run": 7})

    back = read_cxi(path)
    assert len(back) == 3
    for a, b in zip(scans, back, strict=True):
        assert_same_scan(a, b)
    assert back[1].illumination.dtype == np.complex128
    got_truth = read_cxi_truth(path)
    assert sorted(got_truth) == ["chem/composition", "object"]
    for key, value in truth.items():
        np.testing.assert_array_equal(got_truth[key], value)
    with h5py.File(path) as f:
        assert f.attrs["experiment"] == "battery" and f.attrs["run"] == 7
    assert os.listdir(tmp_path) == ["scans.cxi"]


def test_layout_at_documented_paths_with_units(tmp_path, rng):
    scan = make_scan(rng)
    path = tmp_path / "scan.cxi"
    write_cxi(path, [scan], truth={"probe": scan.illumination})
    with h5py.File(path, "r") as f:
        assert f["cxi_version"][()] == 150
        assert sorted(f) == ["cxi_version", "diffptycho_truth", "entry_1"]
        e = f["entry_1"]
        assert e["data_1/data"].shape == (5, NY, NX)
        assert e["data_1/data"].attrs["units"] == "counts"
        energy = e["instrument_1/source_1/energy"]
        assert energy.attrs["units"] == "J"
        assert energy[()] == pytest.approx(708.2 * 1.602176634e-19, rel=1e-15)
        trans = e["sample_1/geometry_1/translation"]
        assert trans.attrs["units"] == "m" and trans.shape == (5, 3)
        # CXI columns are (x, y, z); our positions are (y, x)
        np.testing.assert_array_equal(trans[:, 0], scan.positions_m[:, 1])
        np.testing.assert_array_equal(trans[:, 1], scan.positions_m[:, 0])
        np.testing.assert_array_equal(trans[:, 2], 0.0)
        det = e["instrument_1/detector_1"]
        assert det["distance"][()] == 0.25 and det["distance"].attrs["units"] == "m"
        assert det["y_pixel_size"][()] == 11e-6 and det["x_pixel_size"][()] == 13e-6
        assert det["x_pixel_size"].attrs["units"] == "m"
        # CXI mask: nonzero = bad pixel; ours: True = valid
        np.testing.assert_array_equal(det["mask"][()] != 0, ~scan.mask)
        angle = e["sample_1/geometry_1/angle_deg"]
        assert angle[()] == -80.0 and angle.attrs["units"] == "degree"
        np.testing.assert_array_equal(
            e["instrument_1/source_1/illumination"][()], scan.illumination
        )
        assert e["title"].asstr()[()] == scan.name
        assert "probe" not in e and "diffptycho_truth" not in e


def test_detector_data_is_soft_link_to_data_1(tmp_path, rng):
    path = tmp_path / "scan.cxi"
    write_cxi(path, make_scan(rng))
    with h5py.File(path, "r") as f:
        link = f["entry_1/instrument_1/detector_1"].get("data", getlink=True)
        assert isinstance(link, h5py.SoftLink) and link.path == "/entry_1/data_1/data"
        np.testing.assert_array_equal(
            f["entry_1/instrument_1/detector_1/data"][()], f["entry_1/data_1/data"][()]
        )


def test_frames_are_written_one_per_chunk(tmp_path, rng):
    """Readers fetch frames (minibatches, lazy scans) without decompressing the whole scan."""
    path = tmp_path / "scan.cxi"
    scan = make_scan(rng)
    write_cxi(path, scan)
    with h5py.File(path, "r") as f:
        data = f["entry_1/data_1/data"]
        assert data.chunks == (1, *np.asarray(scan.data).shape[1:])
        assert data.attrs["units"] == "counts"


def test_minimal_foreign_cxi(tmp_path):
    path = tmp_path / "foreign.cxi"
    fields = write_foreign(path)
    (scan,) = read_cxi(path)
    assert scan.data.dtype == np.float32
    np.testing.assert_array_equal(scan.data, fields["entry_1/data_1/data"])
    trans = fields["entry_1/sample_1/geometry_1/translation"]
    np.testing.assert_array_equal(scan.positions_m, trans[:, [1, 0]])
    assert scan.energy_ev == pytest.approx(710.2, rel=1e-14)
    assert (scan.distance_m, scan.pixel_size_m) == (0.3, (75e-6, 75e-6))
    assert scan.mask is None and scan.illumination is None
    assert (scan.angle_deg, scan.name) == (None, "entry_1")  # never a default angle
    # object pixel = λ z / (n p) per axis
    lam = wavelength(scan.energy_ev)
    assert scan.object_pixel_size_m == pytest.approx(
        (lam * 0.3 / (NY * 75e-6), lam * 0.3 / (NX * 75e-6))
    )
    np.testing.assert_allclose(scan.positions_px, scan.positions_m / scan.object_pixel_size_m)


def test_foreign_data_only_at_detector_and_2_column_translation(tmp_path):
    path = tmp_path / "foreign.cxi"
    n = 3
    xy = np.column_stack([np.arange(n) * 1e-7, np.arange(n) * 3e-7])
    write_foreign(
        path,
        n=n,
        data_path="entry_1/instrument_1/detector_1/data",
        **{"entry_1/sample_1/geometry_1/translation": xy},
    )
    (scan,) = read_cxi(path)
    assert scan.data.shape == (n, NY, NX)
    np.testing.assert_array_equal(scan.positions_m, xy[:, [1, 0]])


def test_entries_ordered_numerically(tmp_path, rng):
    scans = [
        PtychoScan(np.ones((1, 2, 2)), [[0.0, 0.0]], energy_ev=700.0, angle_deg=a)
        for a in range(11)
    ]
    write_cxi(tmp_path / "many.cxi", scans)
    assert [s.angle_deg for s in read_cxi(tmp_path / "many.cxi")] == list(range(11))


ENTRY = "/entry_1"
BAD_FILES = {
    "missing translation": (
        {"entry_1/sample_1/geometry_1/translation": None},
        f"{ENTRY}/sample_1/geometry_1/translation' is missing",
    ),
    "missing energy": (
        {"entry_1/instrument_1/source_1/energy": None},
        f"{ENTRY}/instrument_1/source_1/energy' is missing",
    ),
    "missing data": (
        {"entry_1/data_1/data": None},
        f"{ENTRY}/data_1/data' is missing",
    ),
    "data not 3-D": (
        {"entry_1/data_1/data": np.ones((NY, NX))},
        f"{ENTRY}/data_1/data' has shape (6, 8), expected 3-D",
    ),
    "translation (N, 4)": (
        {"entry_1/sample_1/geometry_1/translation": np.zeros((4, 4))},
        f"{ENTRY}/sample_1/geometry_1/translation' has shape (4, 4), expected (N, 3) or (N, 2)",
    ),
    "NaN counts": (
        {"entry_1/data_1/data": np.full((4, NY, NX), np.nan)},
        f"{ENTRY}/data_1/data' contains {4 * NY * NX} NaN/inf",
    ),
    "negative counts": (
        {"entry_1/data_1/data": -np.ones((4, NY, NX))},
        f"{ENTRY}/data_1/data' contains {4 * NY * NX} negative counts",
    ),
    "eV instead of J": (
        {"entry_1/instrument_1/source_1/energy": 710.2},
        f"{ENTRY}/instrument_1/source_1/energy' is 710.2, which looks like eV; "
        "CXI stores joules: multiply by 1.602176634e-19",
    ),
    "frames vs positions": (
        {"entry_1/sample_1/geometry_1/translation": np.zeros((3, 3))},
        f"{ENTRY}/sample_1/geometry_1/translation' has 3 positions but '{ENTRY}/data_1/data' "
        "has 4 frames",
    ),
    "m translation without distance": (
        {"entry_1/instrument_1/detector_1/distance": None},
        f"{ENTRY}/sample_1/geometry_1/translation' is in m but the detector distance",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_format_errors_name_file_dataset_and_fix(tmp_path, case):
    overrides, expected = BAD_FILES[case]
    path = tmp_path / "bad.cxi"
    write_foreign(path, **overrides)
    with pytest.raises(CXIFormatError) as info:
        read_cxi(path)
    message = str(info.value)
    assert message.startswith(f"{path}: dataset '")
    assert expected in message
    assert "; " in message  # the problem is followed by the fix


def test_units_attribute_in_ev_is_refused(tmp_path):
    path = tmp_path / "bad.cxi"
    write_foreign(path)
    with h5py.File(path, "a") as f:
        f["entry_1/instrument_1/source_1/energy"].attrs["units"] = "eV"
    with pytest.raises(CXIFormatError, match="has units 'eV'; CXI stores joules: multiply by"):
        read_cxi(path)


def test_broken_soft_link_is_reported(tmp_path):
    path = tmp_path / "bad.cxi"
    write_foreign(
        path,
        data_path="entry_1/instrument_1/detector_1/data",
        **{"entry_1/data_1/data": h5py.SoftLink("/entry_1/elsewhere")},
    )
    with pytest.raises(CXIFormatError, match=r"'/entry_1/data_1/data' is a broken link"):
        read_cxi(path)


def test_not_hdf5_and_missing_file(tmp_path):
    text = tmp_path / "scan.cxi"
    text.write_text("not hdf5")
    with pytest.raises(CXIFormatError, match=rf"^{re.escape(str(text))}: not an HDF5 file"):
        read_cxi(text)
    missing = tmp_path / "nope.cxi"
    with pytest.raises(FileNotFoundError, match=rf"^{re.escape(str(missing))}: file not found"):
        read_cxi(missing)
    with pytest.raises(FileNotFoundError, match="nope.cxi"):
        read_cxi_truth(missing)


def test_no_entry(tmp_path):
    path = tmp_path / "empty.cxi"
    with h5py.File(path, "w") as f:
        f["cxi_version"] = 150
    with pytest.raises(CXIFormatError, match=rf"^{re.escape(str(path))}: no 'entry_1' group"):
        read_cxi(path)


def test_failed_write_keeps_existing_file_and_leaves_no_temp(tmp_path, rng):
    path = tmp_path / "scan.cxi"
    good = make_scan(rng)
    write_cxi(path, [good])
    before = path.read_bytes()
    with pytest.raises(TypeError):
        # fails after the entries are written: h5py cannot store an arbitrary object
        write_cxi(path, [make_scan(rng), make_scan(rng)], truth={"x": object()})
    assert os.listdir(tmp_path) == ["scan.cxi"]
    assert path.read_bytes() == before
    assert_same_scan(good, read_cxi(path)[0])


def test_write_to_missing_directory(tmp_path, rng):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_cxi(tmp_path / "no" / "scan.cxi", make_scan(rng))


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(mask=np.ones((NY, NX), np.uint8)), "PtychoScan.mask: has dtype uint8"),
        (dict(mask=np.ones((NY, 3), bool)), "PtychoScan.mask: has shape"),
        (dict(energy_ev=708.2 * EV_TO_J), "PtychoScan.energy_ev: .* looks like joules"),
        (dict(distance_m=-1.0), "PtychoScan.distance_m: -1.0 is not a positive number"),
        (dict(positions_m=np.zeros((4, 2))), "has 4 positions but data has 5 frames"),
        (dict(illumination=np.ones((NX, NY))), "PtychoScan.illumination: has shape"),
    ],
)
def test_scan_validation(rng, kw, match):
    with pytest.raises(ValueError, match=match):
        make_scan(rng, **kw)


def test_scan_conversions(rng):
    scan = make_scan(rng, data=np.ones((5, NY, NX), np.uint16), pixel_size_m=5e-5)
    assert scan.data.dtype == np.float32 and scan.pixel_size_m == (5e-5, 5e-5)
    no_geometry = make_scan(rng, distance_m=None)
    assert no_geometry.object_pixel_size_m is None
    assert no_geometry.positions_px is no_geometry.positions_m


TRANSLATION = "entry_1/sample_1/geometry_1/translation"
BASIS = "entry_1/instrument_1/detector_1/basis_vectors"


@pytest.mark.parametrize(
    "units, scale",
    [("m", 1.0), ("mm", 1e3), ("um", 1e6), ("µm", 1e6), ("μm", 1e6), ("nm", 1e9), ("micron", 1e6)],
)
def test_translation_length_units(tmp_path, units, scale):
    path = tmp_path / "units.cxi"
    fields = write_foreign(path)
    metres = fields[TRANSLATION]
    with h5py.File(path, "r+") as f:
        del f[TRANSLATION]
        f[TRANSLATION] = metres * scale
        f[TRANSLATION].attrs["units"] = units
    (scan,) = read_cxi(path)
    np.testing.assert_allclose(scan.positions_m, metres[:, [1, 0]], rtol=1e-12, atol=1e-22)


def test_distance_in_mm(tmp_path):
    path = tmp_path / "mm.cxi"
    write_foreign(path)
    with h5py.File(path, "r+") as f:
        ds = "entry_1/instrument_1/detector_1/distance"
        del f[ds]
        f[ds] = 300.0
        f[ds].attrs["units"] = "mm"
    assert read_cxi(path)[0].distance_m == pytest.approx(0.3, rel=1e-14)


@pytest.mark.parametrize("units", ["inch", "px ", "degree", ""])
def test_unknown_translation_units_are_refused(tmp_path, units):
    path = tmp_path / "units.cxi"
    write_foreign(path)
    with h5py.File(path, "r+") as f:
        f[TRANSLATION].attrs["units"] = units
    with pytest.raises(CXIFormatError, match=f"/{TRANSLATION}' has units.*length unit"):
        read_cxi(path)


def test_written_basis_is_the_reference_and_reads_back_unchanged(tmp_path, rng):
    scan = make_scan(rng)
    path = tmp_path / "ours.cxi"
    write_cxi(path, scan)
    with h5py.File(path, "r") as f:
        basis = f[BASIS][()]
        assert f[BASIS].attrs["units"] == "m"
    py, px = scan.pixel_size_m
    np.testing.assert_array_equal(basis, [[0, -py, 0], [-px, 0, 0]])
    (back,) = read_cxi(path)
    assert_same_scan(scan, back)


def test_basis_transposes_frames_mask_and_probe(tmp_path, rng):
    """Rows along lab −x, columns along −y: the stored arrays are the transposes."""
    scan = make_scan(rng)
    path = tmp_path / "transposed.cxi"
    py, px = scan.pixel_size_m
    with h5py.File(path, "w") as f:
        e = f.create_group("entry_1")
        e["data_1/data"] = scan.data.transpose(0, 2, 1)
        e["instrument_1/detector_1/mask"] = np.where(scan.mask.T, 0, 1).astype(np.uint32)
        e["instrument_1/source_1/illumination"] = scan.illumination.transpose(0, 2, 1)
        e[BASIS.removeprefix("entry_1/")] = [[-px, 0, 0], [0, -py, 0]]
        e["instrument_1/detector_1/distance"] = scan.distance_m
        e["instrument_1/source_1/energy"] = scan.energy_ev * EV_TO_J
        y, x = scan.positions_m.T
        e["sample_1/geometry_1/translation"] = np.stack([x, y, 0 * x], 1)
    (back,) = read_cxi(path)
    np.testing.assert_array_equal(back.data, scan.data)
    np.testing.assert_array_equal(back.mask, scan.mask)
    np.testing.assert_array_equal(back.illumination, scan.illumination)
    assert back.pixel_size_m == pytest.approx(scan.pixel_size_m, rel=1e-15)


def test_pixel_sizes_that_contradict_the_basis_are_refused(tmp_path):
    path = tmp_path / "contradict.cxi"
    write_foreign(path, **{BASIS: [[0, -55e-6, 0], [-55e-6, 0, 0]]})
    with pytest.raises(CXIFormatError, match="basis_vectors' has pixel lengths"):
        read_cxi(path)
