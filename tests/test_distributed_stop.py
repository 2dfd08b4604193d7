"""A stop request reaching one of two jax.distributed processes stops both at one iteration.

Two local processes (two fake CPU devices each, as in ``tests/test_distributed.py``) run the
slab-split SIRT of that file under :func:`~diffptycho.recon.interrupt.stop_on_signals`; only
process 1 receives SIGTERM, after its second iteration. Without agreement process 0 would go
on into the next step's collective and wait there for its timeout; with
:func:`~diffptycho.recon.interrupt.stop_agreed` both stop after the same iteration, both write
their checkpoint, and resuming from them finishes with the uninterrupted result.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from diffptycho.recon.interrupt import request_stop, stop_agreed, stop_on_signals
from diffptycho.recon.solve import solve
from diffptycho.recon.tomo import SIRT
from tests.test_distributed import _check, _free_port, _launch, tomo_scan

ITERATIONS = 6
SIGNALLED_AFTER = 2  # process 1 receives SIGTERM once this many iterations are done

WORKER = """
import signal, sys
import jax
import numpy as np
from diffptycho.recon.distributed import initialize_distributed, to_host

port, pid, mode, ckpt, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
initialize_distributed(f"localhost:{port}", 2, pid)
jax.config.update("jax_enable_x64", True)

from diffptycho.io.checkpoint import Checkpoint
from diffptycho.recon.interrupt import Interrupted, stop_on_signals, stop_requested
from diffptycho.recon.solve import solve
from diffptycho.recon.tomo import SIRT
from diffptycho.recon.tomo.sharding import tomo_mesh
from tests.test_distributed import tomo_scan
from tests.test_distributed_stop import ITERATIONS, SIGNALLED_AFTER

start, data = tomo_scan()
solver = SIRT(nonnegative=True, mesh=tomo_mesh(None, "slab"))
checkpoint = Checkpoint(ckpt, "distributed stop test")


def callback(it, model, loss):
    if pid == 1 and it + 1 == SIGNALLED_AFTER:
        signal.raise_signal(signal.SIGTERM)  # this process only


if mode == "stop":
    with stop_on_signals(announce=False):
        try:
            solve(start, solver, data, ITERATIONS, progress=False, callback=callback,
                  checkpoint=checkpoint.save_snapshot)
        except Interrupted as err:
            print(f"stopped {err.iteration} exit {err.exit_code} flag {stop_requested()}")
        else:
            print("finished")
else:
    resume = checkpoint.load_snapshot(start, solver.init(start))
    print(f"resumed at {resume.iteration}")
    model, history = solve(start, solver, data, ITERATIONS, progress=False, resume=resume)
    np.savez(out, volume=to_host(model.volume), loss=np.asarray(history.loss))
"""


def _workers(tmp_path: Path, mode: str, meanwhile=lambda: None):
    port = str(_free_port())
    argvs = [
        [sys.executable, "-c", WORKER, port, str(i), mode]
        + [str(tmp_path / f"p{i}.ckpt.h5"), str(tmp_path / f"p{i}.npz")]
        for i in range(2)
    ]
    runs, here = _launch(argvs, tmp_path, meanwhile)
    _check(runs, tmp_path)
    return runs, here


def test_sigterm_to_one_process_stops_both_at_one_iteration_and_resumes(tmp_path):
    def single():
        start, data = tomo_scan()
        return solve(start, SIRT(nonnegative=True), data, ITERATIONS, progress=False)

    runs, (model, history) = _workers(tmp_path, "stop", single)
    # both stop after the signalled iteration, with SIGTERM's exit code, and process 0 keeps
    # the request for its outer loops
    for i, run in enumerate(runs):
        assert (
            run.stdout.strip().splitlines()[-1] == f"stopped {SIGNALLED_AFTER} exit 143 flag True"
        ), (i, run.stdout)
        assert (tmp_path / f"p{i}.ckpt.h5").exists()

    runs, _ = _workers(tmp_path, "resume")
    for run in runs:
        assert f"resumed at {SIGNALLED_AFTER}" in run.stdout
    one = np.asarray(model.volume)
    for i in range(2):
        got = np.load(tmp_path / f"p{i}.npz")
        np.testing.assert_allclose(got["volume"], one, rtol=0, atol=1e-10 * np.abs(one).max())
        np.testing.assert_allclose(got["loss"], history.loss, rtol=1e-10)
        assert got["loss"].shape == (ITERATIONS,)


def test_one_process_agreement_is_the_local_flag():
    assert not stop_agreed()
    with stop_on_signals():
        assert not stop_agreed() and stop_agreed(True)  # a caller's own flag
        request_stop()
        assert stop_agreed()
    assert not stop_agreed()
