"""Two processes joined by jax.distributed compute what one process computes.

Each test launches two local Python processes with two fake CPU devices each
(``XLA_FLAGS=--xla_force_host_platform_device_count=2``), joined through a coordinator on a
free localhost port: a mesh over ``jax.devices()`` then spans four devices of two processes,
and the collectives of the sharded solvers go through Gloo over TCP. The results are
compared with the same computation in this (single) process. When the workers fail, a bare
jax ``psum`` across two processes is tried: if that fails too, this jax build cannot run
multi-process CPU collectives and the test is skipped with JAX's error.
"""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffptycho.cli import main
from diffptycho.cli.distributed import requested
from diffptycho.io.dxchange import write_projections
from diffptycho.io.results import read_results
from diffptycho.models.tomo import TomoProjections
from diffptycho.physics.tomography import project
from diffptycho.recon.distributed import initialize_distributed, processes, to_host
from diffptycho.recon.ptycho import ENGINES, PtychoData
from diffptycho.recon.solve import solve
from diffptycho.recon.tomo import SIRT
from tests.test_ptycho_engines import simulate, starting_model

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 240


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        JAX_PLATFORMS="cpu",
        DIFFPTYCHO_NO_CACHE="1",
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
    )
    env.pop("DIFFPTYCHO_DISTRIBUTED", None)
    return env


def _launch(
    argvs: list[list[str]], cwd: Path, meanwhile: Callable[[], Any] = lambda: None
) -> tuple[list[subprocess.CompletedProcess], Any]:
    """Run one process per argv at once, and ``meanwhile()`` here; wait for all.

    Returns:
        The finished processes and what ``meanwhile`` returned. A timeout kills them all.
    """
    procs = [
        subprocess.Popen(
            argv,
            cwd=cwd,
            env=_environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for argv in argvs
    ]
    done = []
    try:
        here = meanwhile()
        for argv, proc in zip(argvs, procs, strict=True):
            out, err = proc.communicate(timeout=TIMEOUT_S)
            done.append(subprocess.CompletedProcess(argv, proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return done, here


PSUM = """
import sys, jax, numpy as np
jax.distributed.initialize(f"localhost:{sys.argv[1]}", 2, int(sys.argv[2]))
mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("x",))
P = jax.sharding.PartitionSpec
f = jax.jit(jax.shard_map(lambda a: jax.lax.psum(a.sum(), "x"), mesh=mesh,
                          in_specs=P("x"), out_specs=P()))
print(float(f(np.arange(4.0))))
"""


@functools.cache
def _collectives_error(cwd: Path) -> str | None:
    """None if two processes can psum on CPU, else the error of the attempt.

    Gloo prints its own "[Gloo] Rank ..." lines on stdout: the sum is the last line.
    """
    port = str(_free_port())
    runs, _ = _launch([[sys.executable, "-c", PSUM, port, str(i)] for i in range(2)], cwd)
    if all(r.returncode == 0 and r.stdout.strip().splitlines()[-1:] == ["6.0"] for r in runs):
        return None
    return "; ".join(r.stderr.strip().splitlines()[-1] for r in runs if r.stderr.strip())


def _check(runs: list[subprocess.CompletedProcess], cwd: Path) -> None:
    """Fail with the workers' output, or skip if multi-process CPU collectives do not work."""
    if all(r.returncode == 0 for r in runs):
        return
    error = _collectives_error(cwd)
    if error is not None:
        pytest.skip(f"this jax build cannot run CPU collectives across processes: {error}")
    report = "\n".join(
        f"--- process {i} (exit {r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
        for i, r in enumerate(runs)
    )
    pytest.fail(f"distributed workers failed:\n{report}")


WORKER = """
import sys
import jax
import jax.numpy as jnp
import numpy as np
from diffptycho.recon.distributed import initialize_distributed, is_main_process, to_host

port, pid, out, part = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
group = initialize_distributed(f"localhost:{port}", 2, pid)
assert initialize_distributed(num_processes=2) == group  # a second call: the same run
try:
    initialize_distributed(process_id=1 - pid)
except ValueError as err:
    assert "already joined" in str(err)
else:
    raise AssertionError("a conflicting process_id was accepted")
jax.config.update("jax_enable_x64", True)

from diffptycho.models.tomo import TomoProjections
from diffptycho.physics.tomography import project
from diffptycho.recon.ptycho import ENGINES, PtychoData
from diffptycho.recon.sharding import position_mesh
from diffptycho.recon.solve import solve
from diffptycho.recon.tomo import SIRT
from diffptycho.recon.tomo.sharding import tomo_mesh
from tests.test_distributed import ptycho_scan, tomo_scan

try:
    position_mesh(3)
except ValueError as err:
    assert "multiple of 2" in str(err), err
else:
    raise AssertionError("3 devices over 2 processes were accepted")
mesh = position_mesh(4)
assert {d.process_index for d in mesh.devices.flat} == {0, 1}

if part == "tomo":
    start, data = tomo_scan()
    slab = tomo_mesh(None, "slab")  # 8 rows over 4 devices: the volume stays split
    model, history = solve(start, SIRT(nonnegative=True, mesh=slab), data, 3, progress=False)
    assert not model.volume.is_fully_addressable
    result = {"volume": to_host(model.volume)}
else:
    start, data = ptycho_scan()
    engine = ENGINES["epie"](batch_size=8, mesh=mesh)
    model, history = solve(start, engine, data, 2, progress=False)
    result = to_host({"object": model.object, "probe": model.probe})
if is_main_process():
    np.savez(out, loss=np.asarray(history.loss), devices=group.devices, count=group.count,
             **result)
"""


def tomo_scan() -> tuple[TomoProjections, np.ndarray]:
    """An 8³ volume's start (zeros) and 6 random (angle, y, x) projections (float64)."""
    data = np.random.default_rng(3).random((6, 8, 8))
    angles = jnp.asarray(np.linspace(0, np.pi, 6, endpoint=False))
    return TomoProjections(jnp.zeros((8, 8, 8)), angles, jnp.zeros((6, 4))), data


def ptycho_scan():
    """A 16-position scan with a 16² probe: blind start and data."""
    truth, frames = simulate(n=16, probe_px=16, step=3.0)
    return starting_model(truth, frames), PtychoData(jnp.asarray(frames))


def _run_worker(tmp_path: Path, part: str, single: Callable[[], Any]) -> tuple[dict, Any]:
    """The worker's ``part`` on 2 processes × 2 devices, and ``single()`` here meanwhile.

    Returns:
        What process 0 saved, and what ``single`` returned.
    """
    port = str(_free_port())
    outputs = [tmp_path / f"process{i}.npz" for i in range(2)]
    argvs = [[sys.executable, "-c", WORKER, port, str(i), str(outputs[i]), part] for i in range(2)]
    runs, here = _launch(argvs, tmp_path, single)
    _check(runs, tmp_path)
    assert outputs[0].exists() and not outputs[1].exists(), "only process 0 writes"
    got = dict(np.load(outputs[0]))
    assert (int(got["count"]), int(got["devices"])) == (2, 4)
    return got, here


def test_sirt_on_slabs_of_two_processes_equals_one(tmp_path):
    """The volume's y rows split over 2 processes × 2 devices (psum'd loss across them)."""

    def single():
        start, data = tomo_scan()
        return solve(start, SIRT(nonnegative=True), data, 3, progress=False)

    got, (model, history) = _run_worker(tmp_path, "tomo", single)
    one = np.asarray(model.volume)
    np.testing.assert_allclose(got["volume"], one, rtol=0, atol=1e-10 * np.abs(one).max())
    np.testing.assert_allclose(got["loss"], history.loss, rtol=1e-10)
    assert np.abs(one).max() > 0.1  # the solver did move the volume


@pytest.mark.slow
def test_epie_on_positions_of_two_processes_equals_one(tmp_path):
    """Each minibatch's positions split over 2 processes × 2 devices (psum'd updates)."""

    def single():
        start, data = ptycho_scan()
        return solve(start, ENGINES["epie"](batch_size=8), data, 2, progress=False)

    got, (model, history) = _run_worker(tmp_path, "ptycho", single)
    for leaf in ("object", "probe"):
        a = np.asarray(getattr(model, leaf))
        np.testing.assert_allclose(got[leaf], a, rtol=0, atol=1e-10 * np.abs(a).max())
    np.testing.assert_allclose(got["loss"], history.loss, rtol=1e-10)


@pytest.mark.slow
def test_cli_distributed_tomo_writes_once_what_one_process_writes(tmp_path):
    """``diffptycho --distributed tomo`` on 2 processes: one file, the one-process volume."""
    rng = np.random.default_rng(4)
    angles = np.linspace(0, np.pi, 8, endpoint=False)
    data = np.asarray(project(jnp.asarray(rng.random((8, 6, 8))), jnp.asarray(angles)))
    proj = tmp_path / "proj.h5"
    write_projections(proj, data, np.rad2deg(angles), voxel_size_m=None)
    common = [str(proj), "-a", "sirt", "-n", "4", "--split", "slab", "--no-progress"]
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    port = str(_free_port())
    argvs = [
        [sys.executable, "-m", "diffptycho.cli", "--no-compile-cache", "--distributed"]
        + ["--coordinator", f"localhost:{port}", "--num-processes", "2"]
        + ["--process-id", str(i), "tomo", *common, "-o", str(out_dir / "vol.h5")]
        for i in range(2)
    ]
    one = tmp_path / "one.h5"
    argv = ["--no-compile-cache", "tomo", *common, "--devices", "4", "-o", str(one)]
    runs, status = _launch(argvs, tmp_path, lambda: main(argv))
    _check(runs, tmp_path)
    assert status == 0
    assert sorted(p.name for p in out_dir.iterdir()) == ["vol.h5"]
    # process 1 prints nothing (Gloo's own "[Gloo] Rank ..." lines come from C++)
    assert "wrote" in runs[0].stdout and "wrote" not in runs[1].stdout
    assert "process 1 of 2, 2 of 4 devices" in runs[1].stderr

    a, b = read_results(one), read_results(out_dir / "vol.h5")
    np.testing.assert_allclose(b["volume"], a["volume"], rtol=0, atol=1e-5 * a["volume"].max())
    assert b["provenance"]["config"]["devices"] == 4  # --devices defaults to every device


def test_arguments_are_checked_before_jax_is_asked():
    for kwargs, match in [
        ({"coordinator": "node001"}, "expected 'HOST:PORT'"),
        ({"coordinator": "node001:http"}, "expected 'HOST:PORT'"),
        ({"num_processes": 0}, "num_processes=0"),
        ({"num_processes": 2, "process_id": 2}, r"process_id=2: expected 0 … 1"),
    ]:
        with pytest.raises(ValueError, match=match):
            initialize_distributed(**kwargs)


def test_too_late_once_jax_has_run():
    jax.devices()  # the backend of this (test) process is up
    if jax.distributed.is_initialized():
        pytest.skip("this test process itself was joined to others")
    before = jax.config.jax_cpu_collectives_implementation
    with pytest.raises(RuntimeError, match="call it first"):
        initialize_distributed("localhost:1", 1, 0)
    assert processes().count == 1 and processes().main
    # the failed join leaves the process's collectives as they were (Gloo without a client
    # crashed the suite's later sharded computations)
    assert jax.config.jax_cpu_collectives_implementation == before


def test_to_host_passes_local_arrays_and_other_leaves():
    out = to_host({"a": jnp.arange(3), "b": np.ones(2), "c": "text"})
    assert isinstance(out["a"], np.ndarray) and out["a"].tolist() == [0, 1, 2]
    assert out["c"] == "text"


def test_cli_refuses_distributed_single_process_commands(tmp_path, capsys, monkeypatch):
    assert main(["--distributed", "inspect", str(tmp_path / "x.h5")]) == 2
    assert "--distributed: the 'inspect' command runs on one process" in capsys.readouterr().err
    # the environment variable alone leaves such commands alone (a batch script sets it once)
    monkeypatch.setenv("DIFFPTYCHO_DISTRIBUTED", "1")
    from diffptycho.cli import build_parser

    parser = build_parser()
    assert not requested(parser.parse_args(["inspect", "x.h5"]))
    assert requested(parser.parse_args(["tomo", "x.h5", "-o", "y.h5"]))
    monkeypatch.setenv("DIFFPTYCHO_DISTRIBUTED", "0")
    assert not requested(parser.parse_args(["tomo", "x.h5", "-o", "y.h5"]))
    args = parser.parse_args(["--process-id", "1", "tomo", "x.h5", "-o", "y.h5"])
    assert requested(args)  # a process option implies --distributed
