"""Frames streamed from a CXI file give the in-memory result in every ptychography engine."""

import h5py
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from diffptycho.cli import ptycho as cli_ptycho
from diffptycho.io.cxi import PtychoScan, read_cxi_entry, write_cxi
from diffptycho.io.results import read_results
from diffptycho.models import FarField, Ptycho2D
from diffptycho.physics.scan import object_shape_for
from diffptycho.recon.ptycho import ENGINES, probe_power_from_frames
from diffptycho.recon.ptycho.data import PtychoData, ptycho_data
from diffptycho.recon.ptycho.geometry import far_field_warnings, hologram_score
from diffptycho.recon.ptycho.start import probe_by_defocus_search, starting_model
from diffptycho.recon.ptycho.streaming import (
    StreamedFrames,
    StreamedScan,
    read_streamed_cxi_entry,
)
from diffptycho.recon.sharding import position_mesh
from diffptycho.recon.solve import solve
from diffptycho.sim.patterns import raster_positions

FRAME = (16, 16)
DATA = "/entry_1/data_1/data"


def _scan(seed=0) -> PtychoScan:
    """16 positions of 16² px Poisson frames (pixel units), one masked pixel."""
    rng = np.random.default_rng(seed)
    pos = raster_positions(4, 4, 3.0, jitter_px=0.5, seed=seed)
    shape = object_shape_for(pos, FRAME)
    obj = np.exp(0.5j * ndimage.gaussian_filter(rng.standard_normal(shape), 1.5))
    py, px = np.mgrid[-8:8, -8:8]
    probe = 30.0 * np.exp(-(px**2 + py**2) / (2 * 3.0**2))
    model = Ptycho2D(jnp.asarray(obj), jnp.asarray(probe[None]), jnp.asarray(pos))
    frames = rng.poisson(np.asarray(model())).astype(np.float32) + 1.0
    mask = np.ones(FRAME, bool)
    mask[3, 4] = False
    return PtychoScan(frames, pos, 700.0, mask=mask)


@pytest.fixture(scope="module")
def cxi(tmp_path_factory):
    path = tmp_path_factory.mktemp("stream") / "scan.cxi"
    write_cxi(path, _scan())
    return path


@pytest.fixture(scope="module")
def scans(cxi):
    return read_cxi_entry(cxi, 1), read_streamed_cxi_entry(cxi, 1)


def test_reads_any_order_with_repeats(cxi, scans):
    mem, streamed = scans
    frames = streamed.data
    assert isinstance(streamed, StreamedScan) and frames.shape == mem.data.shape
    idx = np.array([[7, 1, 7], [0, 15, 2]])
    np.testing.assert_array_equal(frames.read(idx), mem.data[idx])
    blocks = list(frames.chunks(5))
    assert [s for s, _ in blocks] == [0, 5, 10, 15]
    np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), mem.data)
    with pytest.raises(IndexError, match="frame 16 .*holds 16 frames"):
        frames.read([16])
    with pytest.raises(TypeError, match="would load all 16 frames"):
        np.asarray(frames)


def test_compressed_and_partly_written_datasets_read_as_h5py(tmp_path):
    """Raw chunk reads for unfiltered one-frame chunks, h5py's for others; fill values."""
    path = tmp_path / "kinds.h5"
    counts = np.arange(5 * 4 * 4, dtype=np.float32).reshape(5, 4, 4)
    with h5py.File(path, "w") as f:
        part = f.create_dataset("part", shape=(5, 4, 4), dtype="u2", chunks=(1, 4, 4), fillvalue=7)
        part[1] = counts[1]
        f.create_dataset("gzip", data=counts, chunks=(1, 4, 4), compression="gzip")
        f.create_dataset("big_endian", data=counts.astype(">f4"), chunks=(1, 4, 4))
    idx = [[4, 1], [1, 0]]
    for name in ("part", "gzip", "big_endian"):
        frames = StreamedFrames(path, name)
        with h5py.File(path, "r") as f:
            expected = f[name][()].astype(np.float32)[np.asarray(idx)]
        got = frames.read(idx)
        assert got.dtype == np.float32 and got.shape == (2, 2, 4, 4)
        np.testing.assert_array_equal(got, expected, err_msg=name)
    assert StreamedFrames(path, "part")._raw_chunks
    assert not StreamedFrames(path, "gzip")._raw_chunks
    assert not StreamedFrames(path, "big_endian")._raw_chunks


def test_take_inside_jit_matches_the_array(scans):
    mem, streamed = scans
    idx = jnp.asarray([3, 0, 9, 3])
    a = PtychoData(jnp.asarray(mem.data), jnp.asarray(mem.mask))
    b = ptycho_data(streamed.data, streamed.mask)
    assert b.streamed and not a.streamed and b.in_layout(FarField()) is b
    np.testing.assert_array_equal(np.asarray(b.take(idx)[0]), np.asarray(a.take(idx)[0]))


def test_start_statistics_stream(scans):
    mem, streamed = scans
    a, b = starting_model(mem, 2, background=True), starting_model(streamed, 2, background=True)
    for field in ("object", "probe", "positions", "background"):
        np.testing.assert_allclose(getattr(b, field), getattr(a, field), rtol=1e-6)
    assert probe_power_from_frames(streamed.data, streamed.mask) == pytest.approx(
        probe_power_from_frames(mem.data, mem.mask), rel=1e-12
    )
    assert hologram_score(streamed.data, streamed.mask) == pytest.approx(
        hologram_score(mem.data, mem.mask)
    )
    assert far_field_warnings(streamed) == far_field_warnings(mem)


ENGINE_OPTIONS = {
    "epie": {"batch_size": 4},
    "mpie": {"batch_size": 4},
    "lsqml": {"batch_size": 6},  # a partial last batch too
    "adam": {"batch_size": 4, "seed": 3},
    "raar": {"batch_size": 4},
    "dm": {"batch_size": 4},
}


def _both(model, engine, mem, streamed, iterations=3):
    a, ha = solve(model, engine, ptycho_data(mem.data, mem.mask), iterations, progress=False)
    b, hb = solve(
        model, engine, ptycho_data(streamed.data, streamed.mask), iterations, progress=False
    )
    return (a, ha), (b, hb)


@pytest.mark.parametrize("name", sorted(ENGINE_OPTIONS))
def test_streamed_run_equals_in_memory(scans, name):
    mem, streamed = scans
    model = starting_model(mem)
    engine = ENGINES[name](**ENGINE_OPTIONS[name])
    (a, ha), (b, hb) = _both(model, engine, mem, streamed)
    np.testing.assert_allclose(hb.loss, ha.loss, rtol=1e-6)
    np.testing.assert_allclose(b.object, a.object, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b.probe, a.probe, rtol=1e-5, atol=1e-5)
    assert not np.allclose(a.object, model.object)  # the engine did move


@pytest.mark.slow
def test_streamed_lbfgs_equals_in_memory(scans):
    """L-BFGS evaluates the full loss (a rematerialised scan) in its line search."""
    mem, streamed = scans
    model = starting_model(mem)
    (a, ha), (b, hb) = _both(model, ENGINES["lbfgs"](batch_size=8), mem, streamed, 2)
    np.testing.assert_allclose(hb.loss, ha.loss, rtol=1e-6)
    np.testing.assert_allclose(b.object, a.object, rtol=1e-5, atol=1e-6)


def test_probe_search_streams(scans):
    mem, streamed = scans
    model = starting_model(mem)
    found = [
        probe_by_defocus_search(
            scan.data,
            np.asarray(model.positions),
            model.object.shape,
            ENGINES["epie"](batch_size=4),
            mask=scan.mask,
            iterations=2,
            count=1,
        )
        for scan in (mem, streamed)
    ]
    np.testing.assert_allclose(found[1][0], found[0][0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(found[1][1]["loss"], found[0][1]["loss"], rtol=1e-6)


@pytest.mark.parametrize("name", ["mpie", "lsqml", "adam", "raar"])
def test_streamed_run_on_a_mesh_equals_in_memory(scans, name):
    """Each device reads its share of every minibatch from the file."""
    mem, streamed = scans
    model = starting_model(mem)
    engine = ENGINES[name](**ENGINE_OPTIONS[name], mesh=position_mesh(2))
    (a, ha), (b, hb) = _both(model, engine, mem, streamed, iterations=2)
    np.testing.assert_allclose(hb.loss, ha.loss, rtol=1e-6)
    np.testing.assert_allclose(b.object, a.object, rtol=1e-5, atol=1e-6)


def test_reoriented_frames_stream_in_the_reference_orientation(tmp_path, scans):
    """Stored transposed with rows flipped (basis vectors say so): read as read_cxi_entry."""
    mem, _ = scans
    path = tmp_path / "turned.cxi"
    p = 1e-5
    with h5py.File(path, "w") as f:
        e = f.create_group("entry_1")
        e["data_1/data"] = mem.data[:, ::-1, :].transpose(0, 2, 1)
        e["instrument_1/detector_1/basis_vectors"] = [[-p, 0.0, 0.0], [0.0, p, 0.0]]
        e["instrument_1/detector_1/mask"] = (~mem.mask[::-1, :].T).astype(np.uint32)
        trans = np.stack([mem.positions_m[:, 1], mem.positions_m[:, 0], 0 * mem.positions_m[:, 0]])
        e["sample_1/geometry_1/translation"] = trans.T
        e["sample_1/geometry_1/translation"].attrs["units"] = "pixel"
        e["instrument_1/source_1/energy"] = mem.energy_ev * 1.602176634e-19
    ref, streamed = read_cxi_entry(path, 1), read_streamed_cxi_entry(path, 1)
    np.testing.assert_array_equal(ref.data, mem.data)
    np.testing.assert_array_equal(streamed.data.read(np.arange(16)), ref.data)
    np.testing.assert_array_equal(streamed.mask, ref.mask)


def test_bad_counts_are_named_on_the_statistics_pass(tmp_path):
    scan = _scan()
    frames = scan.data.copy()
    frames[5] = 0.0
    path = tmp_path / "zero.h5"
    with h5py.File(path, "w") as f:
        f["frames"] = frames
    with pytest.raises(ValueError, match=r"zero\.h5: dataset 'frames' has all-zero .*frame 5"):
        StreamedFrames(path, "frames").statistics()
    frames[5] = 1.0
    frames[2, 0, 0] = -3.0
    with h5py.File(path, "w") as f:
        f["frames"] = frames
    with pytest.raises(ValueError, match="negative counts .*frame 2"):
        StreamedFrames(path, "/frames").statistics()


def test_missing_dataset_and_wrong_shape_name_file_and_dataset(tmp_path):
    path = tmp_path / "f.h5"
    with h5py.File(path, "w") as f:
        f["flat"] = np.ones((4, 16))
        f.create_group("group")
    with pytest.raises(ValueError, match=r"f\.h5: dataset '/entry_1/data_1/data' not found"):
        StreamedFrames(path, DATA)
    with pytest.raises(ValueError, match=r"f\.h5: dataset 'group' not found \(a group there\)"):
        StreamedFrames(path, "group")
    with pytest.raises(
        ValueError, match=r"f\.h5: dataset 'flat' has shape \(4, 16\), expected 3-D"
    ):
        StreamedFrames(path, "flat")
    with pytest.raises(FileNotFoundError, match="nope.h5"):
        StreamedFrames(tmp_path / "nope.h5", DATA)
    with h5py.File(path, "a") as f:
        f["frames"] = np.ones((2, 4, 4))
    with pytest.raises(ValueError, match=r"mask: shape \(3, 3\) does not match .*f\.h5:frames"):
        StreamedFrames(path, "frames").statistics(np.ones((3, 3), bool))


def test_cli_stream_writes_the_in_memory_result(tmp_path, cxi):
    common = ["ptycho", str(cxi), "-a", "epie", "-n", "3", "--batch-size", "4", "--no-figure"]
    common.append("--no-progress")
    assert cli_ptycho.main([*common, "-o", str(tmp_path / "mem.h5")]) == 0
    assert cli_ptycho.main([*common, "--stream", "-o", str(tmp_path / "st.h5")]) == 0
    # 16 frames of 16² float32 are 16 KiB: a budget of 1 kB streams, one of 1 GB does not
    assert cli_ptycho.main([*common, "--memory-budget", "1e-6", "-o", str(tmp_path / "b.h5")]) == 0
    assert cli_ptycho.main([*common, "--memory-budget", "1", "-o", str(tmp_path / "n.h5")]) == 0
    mem, st = read_results(tmp_path / "mem.h5"), read_results(tmp_path / "st.h5")
    np.testing.assert_allclose(st["object"], mem["object"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(st["history"]["loss"], mem["history"]["loss"], rtol=1e-6)
    streamed = {
        k: read_results(tmp_path / f"{k}.h5")["provenance"]["config"]["streamed"]
        for k in ("mem", "st", "b", "n")
    }
    assert streamed == {"mem": False, "st": True, "b": True, "n": False}
