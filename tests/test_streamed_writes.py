"""Frames written block by block give the file that whole arrays give.

:class:`~diffptycho.io.cxi.BlockScan` (write_cxi from frame blocks), :func:`cxi_writer`'s truth
filled piece by piece, and the tilt-series simulation computed and written in blocks
(``stream=True``) are compared object by object (values, dtypes, shapes, chunks, attributes)
with what the in-memory path writes.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from diffptycho.io.cxi import BlockScan, PtychoScan, cxi_writer, read_cxi, write_cxi
from diffptycho.sim import datasets, tiltseries


def _objects(path) -> dict:
    """Every group and dataset of an HDF5 file: layout, attributes and values."""
    out = {}
    with h5py.File(path) as f:

        def visit(name, obj):
            attrs = {k: np.asarray(v).tolist() for k, v in obj.attrs.items()}
            if isinstance(obj, h5py.Dataset):
                layout = (obj.dtype.str, obj.shape, obj.chunks, obj.compression, obj.fillvalue)
                out[name] = (layout, attrs, obj[()])
            else:
                out[name] = ("group", attrs, None)

        f.visititems(visit)
        out["/"] = ("root", {k: np.asarray(v).tolist() for k, v in f.attrs.items()}, None)
    return out


def assert_same_file(a, b) -> None:
    got, want = _objects(a), _objects(b)
    assert sorted(got) == sorted(want)
    for name, (layout, attrs, value) in want.items():
        assert got[name][:2] == (layout, attrs), name
        if value is not None:
            np.testing.assert_array_equal(got[name][2], value, err_msg=name)


def _scan(n: int = 7, seed: int = 0) -> PtychoScan:
    rng = np.random.default_rng(seed)
    return PtychoScan(
        rng.poisson(20.0, (n, 6, 8)).astype(np.float64),
        rng.normal(0, 1e-6, (n, 2)),
        energy_ev=708.2,
        distance_m=0.1,
        pixel_size_m=(11e-6, 12e-6),
        mask=rng.random((6, 8)) > 0.1,
        illumination=rng.normal(size=(2, 6, 8)) + 1j,
        angle_deg=-12.5,
        name="scan",
    )


def _as_blocks(scan: PtychoScan, sizes: list[int], callable_: bool) -> BlockScan:
    def blocks():
        start = 0
        for size in sizes:
            yield scan.data[start : start + size].astype(np.float64)  # converted on writing
            start += size

    return BlockScan(
        blocks if callable_ else blocks(),
        scan.data.shape[1:],
        scan.positions_m,
        scan.energy_ev,
        scan.distance_m,
        scan.pixel_size_m,
        scan.mask,
        scan.illumination,
        scan.angle_deg,
        scan.name,
    )


@pytest.mark.parametrize("callable_", [False, True])
def test_block_scan_writes_the_file_of_the_whole_array(tmp_path, callable_):
    scans = [_scan(7), _scan(3, seed=1)]
    truth = {"a": np.arange(4.0), "nested/b": np.ones((2, 2), np.float32)}
    write_cxi(tmp_path / "whole.cxi", scans, truth=truth, attrs={"note": "x"})
    blocks = [_as_blocks(scans[0], [3, 0, 2, 2], callable_), _as_blocks(scans[1], [3], callable_)]
    write_cxi(tmp_path / "blocks.cxi", blocks, truth=truth, attrs={"note": "x"})
    assert_same_file(tmp_path / "blocks.cxi", tmp_path / "whole.cxi")
    np.testing.assert_array_equal(read_cxi(tmp_path / "blocks.cxi")[0].data, scans[0].data)


@pytest.mark.parametrize(
    ("sizes", "change", "match"),
    [
        ([3, 3], None, "hold 6 frames but there are 7 positions"),
        ([3, 4], lambda b: np.concatenate([b, b]), "more than the 7 frames"),
        ([3, 4], lambda b: b[:, :, :4], r"frames block at frame 3 has shape \(4, 6, 4\)"),
        ([3, 4], lambda b: b - 100.0, "frames block at frame 3: contains .* negative counts"),
    ],
)
def test_invalid_blocks_name_the_entry_and_leave_the_file(tmp_path, sizes, change, match):
    path = tmp_path / "scan.cxi"
    write_cxi(path, _scan(2))
    before = path.read_bytes()
    scan = _scan(7)
    blocks = _as_blocks(scan, sizes, callable_=False)
    if change is not None:
        original = blocks.frames
        blocks = BlockScan(
            (change(b) if i == 1 else b for i, b in enumerate(original)),
            (6, 8),
            scan.positions_m,
            scan.energy_ev,
        )
    with pytest.raises(ValueError, match=f"scan.cxi: entry_1: .*{match}"):
        write_cxi(path, [blocks])
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan.cxi"]  # no temporary left


def test_block_scan_checks_its_fields_like_ptycho_scan():
    with pytest.raises(ValueError, match=r"BlockScan.frame_shape"):
        BlockScan(iter(()), (6,), np.zeros((1, 2)), 700.0)
    with pytest.raises(ValueError, match=r"BlockScan.positions_m: has shape \(3,\)"):
        BlockScan(iter(()), (6, 8), np.zeros(3), 700.0)
    with pytest.raises(ValueError, match=r"BlockScan.mask: has shape \(2, 2\)"):
        BlockScan(iter(()), (6, 8), np.zeros((1, 2)), 700.0, mask=np.ones((2, 2), bool))
    with pytest.raises(ValueError, match=r"BlockScan.energy_ev: .* looks like joules"):
        BlockScan(iter(()), (6, 8), np.zeros((1, 2)), 1e-16)
    scan = BlockScan(iter(()), (64, 64), np.zeros((3, 2)), 708.2, 0.1, 11e-6)
    assert scan.n_frames == 3 and scan.pixel_size_m == (11e-6, 11e-6)
    whole = PtychoScan(np.ones((3, 64, 64)), np.zeros((3, 2)), 708.2, 0.1, 11e-6)
    assert scan.object_pixel_size_m == whole.object_pixel_size_m


def test_cxi_writer_refuses_an_empty_file(tmp_path):
    with pytest.raises(ValueError, match="no scans to write"), cxi_writer(tmp_path / "e.cxi"):
        pass
    assert not list(tmp_path.iterdir())


def _tilt_series(**kwargs) -> datasets.SimulatedDataset:
    geometry = datasets.ScanGeometry(
        probe_shape=(8, 8),
        scan_shape=(2, 3),
        outer_zone_width_m=10e-9,
        defocus_m=0.2e-6,
    )
    return tiltseries.simulate_lfp_tilt_series(
        (12, 12, 12),
        angles_deg=np.array([-30.0, 20.0]),
        n_particles=1,
        geometry=geometry,
        shift_sigma_px=0.7,
        seed=5,
        **kwargs,
    )


def test_streamed_simulation_writes_the_in_memory_file(tmp_path):
    whole = _tilt_series()
    assert isinstance(whole.frames, np.ndarray) and whole.frames.shape == (2, 2, 6, 8, 8)
    # the blocks do not change the frames: 4 + 2 positions per scan
    small = _tilt_series(block_frames=4)
    np.testing.assert_array_equal(small.frames, whole.frames)
    np.testing.assert_array_equal(small.truth["expected_frames"], whole.truth["expected_frames"])
    assert whole.frames.sum() > 0 and not np.array_equal(
        whole.frames, whole.truth["expected_frames"]
    )

    streamed = _tilt_series(block_frames=4, stream=True)
    assert isinstance(streamed.frames, datasets.StreamedFrames)
    assert "expected_frames" not in streamed.truth
    counts, expected = streamed.frames.arrays()  # a stream can be read again
    np.testing.assert_array_equal(counts, whole.frames)
    np.testing.assert_array_equal(expected, whole.truth["expected_frames"])

    datasets.write_dataset(tmp_path / "whole.cxi", whole)
    datasets.write_dataset(tmp_path / "streamed.cxi", streamed)
    assert_same_file(tmp_path / "streamed.cxi", tmp_path / "whole.cxi")


def test_block_frames_is_checked():
    with pytest.raises(ValueError, match="block_frames=0"):
        _tilt_series(block_frames=0)
