"""Results HDF5 with provenance, and checkpoints that resume a run bit for bit."""

import datetime
import json
import os
import re
import sys

import h5py
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import diffptycho
from diffptycho.io import (
    ResultsFormatError,
    load_checkpoint,
    read_results,
    save_checkpoint,
    write_results,
)


def test_results_round_trip(tmp_path, rng):
    datasets = {
        "object": (rng.normal(size=(8, 8)) + 1j * rng.normal(size=(8, 8))).astype(np.complex64),
        "probe/modes": rng.normal(size=(2, 4, 4)) + 1j * rng.normal(size=(2, 4, 4)),
        "chem/composition": jnp.ones((2, 3, 3, 3), jnp.float32),
        "chem/labels": np.arange(27, dtype=np.int32).reshape(3, 3, 3),
        "segmented": rng.random((3, 3)) > 0.5,
        "resolution_m": 1.1e-8,
    }
    units = {"object": "1", "resolution_m": "m", "history/loss": "1"}
    config = {
        "solver": "raar",
        "iterations": 500,
        "beta": np.float64(0.9),
        "energies_ev": np.array([708.2, 710.2]),
        "nested": {"tuple": (1, 2), "none": None},
    }
    history = {"loss": np.linspace(3.0, 1.0, 7), "step_size": np.ones(7, np.float32)}
    timings = {"total": 12.5, "ptycho": np.float32(3.25)}
    path = tmp_path / "results.h5"
    write_results(path, datasets, units, config, history, timings)
    assert os.listdir(tmp_path) == ["results.h5"]

    res = read_results(path)
    for name, value in datasets.items():
        expected = np.asarray(value)
        assert res[name].dtype == expected.dtype and res[name].shape == expected.shape, name
        np.testing.assert_array_equal(res[name], expected)
    for name, value in history.items():
        np.testing.assert_array_equal(res["history"][name], value)
    assert res["units"] == units
    prov = res["provenance"]
    assert prov["diffptycho_version"] == diffptycho.__version__
    assert prov["config"] == {
        "solver": "raar",
        "iterations": 500,
        "beta": 0.9,
        "energies_ev": [708.2, 710.2],
        "nested": {"tuple": [1, 2], "none": None},
    }
    assert prov["timings"] == {"total": 12.5, "ptycho": 3.25}
    assert prov["command_line"] == sys.argv
    assert prov["jax_version"] == jax.__version__
    assert prov["python_version"] == sys.version.split()[0]
    assert prov["numpy_version"] == np.__version__ and prov["h5py_version"] == h5py.__version__
    created = datetime.datetime.fromisoformat(prov["created"])
    assert abs(datetime.datetime.now(datetime.UTC) - created).total_seconds() < 60


def test_results_layout_with_plain_h5py(tmp_path):
    path = tmp_path / "results.h5"
    write_results(path, {"volume/delta": np.zeros((2, 2, 2))}, {"volume/delta": "1"}, {"a": 1})
    with h5py.File(path, "r") as f:
        assert f.attrs["diffptycho_format"] == "diffptycho-results"
        assert f["volume/delta"].attrs["units"] == "1"
        assert json.loads(f["provenance/config"].asstr()[()]) == {"a": 1}
        assert f["provenance"].attrs["diffptycho_version"] == diffptycho.__version__


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(datasets={"provenance/x": 1.0}), ValueError, "reserved"),
        (dict(datasets={"a": 1.0}, units={"b": "m"}), ValueError, r"units given for \['b'\]"),
        (dict(datasets={"a": np.array([None])}), TypeError, "datasets\\['a'\\]: dtype object"),
        (dict(datasets={"a": 1.0}, config={"f": object()}), TypeError, "config: .*object"),
        (dict(datasets={"a": 1.0}, timings={"t": "slow"}), TypeError, "expected seconds"),
        (dict(datasets={"a": 1.0, "a/b": 2.0}), ValueError, "'a/b' would nest inside dataset 'a'"),
    ],
)
def test_write_results_rejects_bad_input(tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        write_results(tmp_path / "r.h5", **kwargs)
    assert os.listdir(tmp_path) == []


def test_failed_results_write_keeps_previous_file(tmp_path):
    path = tmp_path / "r.h5"
    write_results(path, {"a": np.arange(3)})
    before = path.read_bytes()
    with pytest.raises(TypeError):
        # an attribute h5py cannot store: fails after the datasets are written
        write_results(path, {"a": np.arange(4)}, units={"a": object()})
    assert os.listdir(tmp_path) == ["r.h5"]
    assert path.read_bytes() == before


def test_checkpoint_round_trip_is_bitwise(tmp_path, rng):
    leaves = {
        "['probe']": (rng.normal(size=(2, 4)) + 1j).astype(np.complex64),
        ".object.delta": rng.normal(size=(3, 3)),
        "a/b with slash": np.array([np.nan, -0.0, np.inf], np.float32),
        "bf16": np.array([1.5, -2.25], ml_dtypes.bfloat16),
        "key": np.asarray(jax.random.key_data(jax.random.key(3))),
        "count": np.int64(7),
        "flags": np.array([True, False]),
    }
    meta = {"solver": "adam", "lr": 1e-3, "shape": (3, 3)}
    path = tmp_path / "ckpt.h5"
    save_checkpoint(path, leaves, step=42, meta=meta)
    arrays, step, got_meta = load_checkpoint(path)
    assert list(arrays) == list(leaves)  # order kept: pytrees are rebuilt from it
    for key, value in leaves.items():
        value = np.asarray(value)
        assert arrays[key].dtype == value.dtype and arrays[key].shape == value.shape, key
        assert arrays[key].tobytes() == value.tobytes(), key
    assert step == 42
    assert got_meta == {"solver": "adam", "lr": 1e-3, "shape": [3, 3]}


def _run(params, n_steps):
    """A few steps of gradient descent on a complex least-squares problem (float32)."""
    target = jnp.asarray(np.linspace(0.0, 1.0, 16, dtype=np.float32)).reshape(4, 4)

    @jax.jit
    def step(p):
        loss = lambda q: jnp.sum(jnp.abs(q["z"] * q["w"] - target) ** 2)  # noqa: E731
        grads = jax.grad(loss)(p)
        return jax.tree_util.tree_map(lambda x, g: x - 0.1 * jnp.conj(g), p, grads)

    for _ in range(n_steps):
        params = step(params)
    return params


def test_resumed_run_gives_identical_arrays(tmp_path):
    start = {"z": jnp.ones((4, 4), jnp.complex64), "w": jnp.full((4, 4), 0.5, jnp.float32)}
    straight = _run(start, 10)

    half = _run(start, 5)
    save_checkpoint(tmp_path / "ckpt.h5", dict(half), step=5, meta={})
    arrays, step, _ = load_checkpoint(tmp_path / "ckpt.h5")
    resumed = _run({k: jnp.asarray(v) for k, v in arrays.items()}, 10 - step)
    for key in straight:
        assert resumed[key].dtype == straight[key].dtype
        np.testing.assert_array_equal(np.asarray(resumed[key]), np.asarray(straight[key]))


def test_checkpoint_errors(tmp_path):
    missing = tmp_path / "none.h5"
    with pytest.raises(FileNotFoundError, match=rf"^{re.escape(str(missing))}: file not found"):
        load_checkpoint(missing)
    text = tmp_path / "text.h5"
    text.write_text("hello")
    with pytest.raises(ResultsFormatError, match=rf"^{re.escape(str(text))}: not an HDF5 file"):
        load_checkpoint(text)
    results = tmp_path / "results.h5"
    write_results(results, {"a": 1.0})
    with pytest.raises(
        ResultsFormatError, match="it is a diffptycho-results file: use read_results"
    ):
        load_checkpoint(results)
    ckpt = tmp_path / "ckpt.h5"
    save_checkpoint(ckpt, {"a": 1.0}, step=1)
    with pytest.raises(ResultsFormatError, match="use load_checkpoint"):
        read_results(ckpt)
    with h5py.File(ckpt, "a") as f:
        f.attrs["format_version"] = 99
    with pytest.raises(ResultsFormatError, match="format_version 99 is newer"):
        load_checkpoint(ckpt)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="expected a non-negative int"):
            save_checkpoint(tmp_path / "x.h5", {}, step=bad)
