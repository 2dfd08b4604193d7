"""Reader of the measured Siemens-star scan (shared data) and its error paths."""

import bz2
import functools
import io
import os

import numpy as np
import pytest

from diffptycho.io.siemens import (
    SIEMENS_STAR_FILE,
    SiemensStarFormatError,
    read_siemens_star,
)


@functools.lru_cache(maxsize=1)
def _read(path):
    """The scan and the raw stored positions (~3 s of bzip2 each: once per session)."""
    with bz2.open(path) as f:
        raw = np.load(io.BytesIO(f.read()))["scan"][0].astype(np.float64)
    return read_siemens_star(path), raw


@pytest.fixture
def star(shared_data):
    path = os.path.join(shared_data, SIEMENS_STAR_FILE)
    if not os.path.exists(path):
        pytest.skip(f"{path} not found")
    return _read(path)[0]


@pytest.fixture
def raw_scan(shared_data, star):
    return _read(os.path.join(shared_data, SIEMENS_STAR_FILE))[1]


def test_shapes_and_pixel_units(star):
    assert star.data.shape == (516, 128, 128) and star.data.dtype == np.float32
    assert star.positions_m.shape == (516, 2)
    assert star.object_pixel_size_m is None  # no geometry stored: pixel units
    np.testing.assert_array_equal(star.positions_px, star.positions_m)
    assert star.illumination.shape == (1, 128, 128)
    assert np.all(star.data >= 0) and star.data.sum(axis=(1, 2)).min() > 1e5


def test_positions_are_centred_and_keep_their_sub_pixel_parts(star, raw_scan):
    pos = star.positions_px
    centre = (pos.max(axis=0) + pos.min(axis=0)) / 2
    assert np.all(np.abs(centre) <= 0.5 + 1e-9)
    shift = raw_scan - pos  # one integer vector for every position
    np.testing.assert_allclose(shift, shift[:1].repeat(len(shift), 0), atol=1e-9)
    np.testing.assert_allclose(shift[0], np.round(shift[0]))


def test_frames_are_centred_like_the_probe_far_field(star):
    """The frames are fftshift-ed: their mean looks like |far field of the probe|²."""
    mean = star.data.mean(axis=0)
    y, x = np.mgrid[:128, :128]
    com = np.array([(mean * y).sum(), (mean * x).sum()]) / mean.sum()
    assert np.all(np.abs(com - 64) < 5)
    p = star.illumination[0]
    far = np.abs(np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(p), norm="ortho"))) ** 2

    def corr(a, b):
        a, b = a - a.mean(), b - b.mean()
        return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))

    assert corr(np.log1p(mean), np.log1p(far)) > 0.5
    assert corr(np.log1p(np.fft.ifftshift(mean)), np.log1p(far)) < 0.0  # unshifted: no match


def _write(path, compress=True, **arrays):
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    raw = bz2.compress(buf.getvalue()) if compress else buf.getvalue()
    path.write_bytes(raw)
    return path


def test_small_synthetic_file_roundtrip(tmp_path):
    data = np.zeros((1, 3, 8, 8), np.float32)
    data[0, :, 0, 0] = 5.0  # zero frequency at the corner, as stored
    scan = np.array([[[10.0, 20.25], [12.0, 22.25], [14.0, 24.25]]], np.float32)
    probe = np.ones((1, 1, 1, 2, 8, 8), np.complex64)
    for compress in (True, False):
        s = read_siemens_star(
            _write(tmp_path / f"s{compress}.npz", compress, data=data, scan=scan, probe=probe)
        )
        assert s.data[0, 4, 4] == 5.0  # moved to the centre pixel
        np.testing.assert_allclose(s.positions_px, [[-2, -1.75], [0, 0.25], [2, 2.25]])
        assert s.illumination.shape == (2, 8, 8)


def test_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_siemens_star(tmp_path / "missing.npz.bz2")
    bad = tmp_path / "bad.npz.bz2"
    bad.write_bytes(b"BZh9 this is not bzip2")
    with pytest.raises(SiemensStarFormatError, match="bad.npz.bz2.*cannot be read"):
        read_siemens_star(bad)
    nodata = _write(tmp_path / "nodata.npz.bz2", scan=np.zeros((1, 2, 2)))
    with pytest.raises(SiemensStarFormatError, match=r"has no \['data', 'probe'\]"):
        read_siemens_star(nodata)
    wrong = _write(
        tmp_path / "wrong.npz.bz2",
        data=np.zeros((1, 3, 8, 8)),
        scan=np.zeros((1, 2, 2)),
        probe=np.zeros((1, 1, 1, 1, 8, 8)),
    )
    with pytest.raises(SiemensStarFormatError, match="scan has shape"):
        read_siemens_star(wrong)
