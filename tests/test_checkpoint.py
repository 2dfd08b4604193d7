"""Checkpoints, resume, clean stops and the loss watch of the solve loop (in process, fast).

References are analytic (gradient descent on a quadratic has a closed-form iterate) or the
uninterrupted run of the same solver; the command-line acceptance tests (SIGKILL, SIGTERM in
subprocesses) are in ``test_checkpoint_cli.py``.
"""

import logging
import os
import signal
import subprocess
import sys
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from diffptycho.io.checkpoint import (
    Checkpoint,
    CheckpointMismatchError,
    checkpoint_path,
    fingerprint,
)
from diffptycho.io.results import load_checkpoint
from diffptycho.recon import solve as solve_module
from diffptycho.recon.interrupt import Interrupted, stop_on_signals, stop_requested
from diffptycho.recon.solve import OptaxSolver, solve
from diffptycho.recon.watch import LossWatch


class Line(eqx.Module):
    a: jax.Array


def _quadratic(m, b):
    return jnp.sum((m.a - b) ** 2)


class Noisy(eqx.Module):
    """Random minibatch order from a key in the state: resume must replay the same draws."""

    inner: OptaxSolver

    def init(self, model):
        return (self.inner.init(model), jax.random.PRNGKey(7))

    def step(self, model, state, batch):
        opt, key = state
        key, sub = jax.random.split(key)
        rows = jax.random.permutation(sub, batch.shape[0])[:2]
        model, opt, loss = self.inner.step(model, opt, batch[rows])
        return model, (opt, key), loss

    def prepare(self, model, batch):
        return batch


def _noisy_solver():
    return Noisy(
        OptaxSolver(lambda m, b: jnp.mean((m.a - b) ** 2), optax.adam(0.05), lambda m: m.a)
    )


def _targets():
    return jnp.asarray(np.random.default_rng(0).normal(size=(6, 3)), jnp.float32)


def _stop_after(monkeypatch, n):
    """Make the solve loop see a stop request after ``n`` accepted steps (as a signal would)."""
    calls = []

    def fake():
        calls.append(1)
        return len(calls) >= n

    monkeypatch.setattr(solve_module, "stop_requested", fake)


def test_resume_from_a_checkpoint_file_equals_the_uninterrupted_run(tmp_path, monkeypatch):
    solver, data = _noisy_solver(), _targets()
    start = Line(jnp.zeros(3, jnp.float32))
    whole, h_whole = solve(start, solver, data, 30, progress=False)

    ckpt = Checkpoint(tmp_path / "run.ckpt.h5", fingerprint({"lr": 0.05}), every=4)
    _stop_after(monkeypatch, 11)
    with pytest.raises(Interrupted) as stop:
        solve(
            start,
            solver,
            data,
            30,
            progress=False,
            checkpoint=ckpt.save_snapshot,
            checkpoint_every=4,
        )
    assert stop.value.iteration == 11
    assert load_checkpoint(ckpt.path)[1] == 11  # the stop wrote the last state, not step 8
    monkeypatch.undo()

    resume = ckpt.load_snapshot(start, eqx.filter_eval_shape(solver.init, start))
    assert resume.iteration == 11 and len(resume.history.loss) == 11
    resumed, h = solve(start, solver, data, 30, progress=False, resume=resume)
    np.testing.assert_allclose(resumed.a, whole.a, rtol=1e-6)
    np.testing.assert_allclose(h.loss, h_whole.loss, rtol=1e-6)
    assert len(h.seconds) == 30 and h.best_iteration == h_whole.best_iteration


def test_checkpoint_of_other_settings_or_shapes_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "x.ckpt.h5"
    Checkpoint(path, fingerprint({"lr": 0.1})).save({"model": Line(jnp.ones(3))}, iteration=2)
    with pytest.raises(CheckpointMismatchError, match="x.ckpt.h5.*other inputs or settings"):
        Checkpoint(path, fingerprint({"lr": 0.2})).load({"model": Line(jnp.ones(3))})
    with pytest.raises(CheckpointMismatchError, match=r"x.ckpt.h5.*float32\[4\]|x.ckpt.h5.*\[4\]"):
        Checkpoint(path, fingerprint({"lr": 0.1})).load({"model": Line(jnp.ones(4, jnp.float32))})
    with pytest.raises(FileNotFoundError, match="nothing|no checkpoint"):
        Checkpoint(tmp_path / "none.h5", "f").load({})


def test_fingerprint_follows_the_input_file(tmp_path):
    data = tmp_path / "d.bin"
    data.write_bytes(b"1234")
    before = fingerprint({"a": 1}, [data])
    assert fingerprint({"a": 1}, [data]) == before
    data.write_bytes(b"12345")
    assert fingerprint({"a": 1}, [data]) != before
    assert checkpoint_path(tmp_path / "out.h5") == str(tmp_path / "out.ckpt.h5")


def test_prng_keys_and_optax_states_round_trip(tmp_path):
    tree = {"key": jax.random.key(3), "opt": optax.adam(0.1).init({"w": jnp.ones((2, 2))})}
    ckpt = Checkpoint(tmp_path / "k.h5", "f")
    ckpt.save({"t": tree}, iteration=1)
    back = ckpt.load({"t": tree})[0]["t"]
    assert jnp.array_equal(jax.random.key_data(back["key"]), jax.random.key_data(tree["key"]))
    assert jax.tree_util.tree_structure(back["opt"]) == jax.tree_util.tree_structure(tree["opt"])


_WRITE_LOOP = """
import sys
import numpy as np
from diffptycho.io.results import save_checkpoint
step = 0
while True:
    step += 1
    save_checkpoint(sys.argv[1], {"a": np.full(20000, step, np.float64)}, step=step)
    if step == 1:
        print("ready", flush=True)
"""


def test_a_checkpoint_killed_while_being_written_is_never_half_written(tmp_path):
    path = str(tmp_path / "loop.ckpt.h5")
    seen = []
    for delay in (0.3, 0.45):
        child = subprocess.Popen(
            [sys.executable, "-c", _WRITE_LOOP, path], stdout=subprocess.PIPE, text=True
        )
        assert child.stdout.readline().strip() == "ready"
        time.sleep(delay)
        child.kill()  # SIGKILL, most likely mid-write: the loop does nothing else
        child.wait()
        child.stdout.close()
        arrays, step, _ = load_checkpoint(path)  # the file is complete ...
        assert np.all(arrays["a"] == step)  # ... and consistent
        seen.append(step)
    assert seen[1] >= 1 and seen[0] >= 1
    leftovers = [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
    assert len(leftovers) <= 2  # a killed writer may leave its temporary, never a broken file


def test_sgd_with_a_diverging_step_warns_reports_and_keeps_the_best(caplog):
    b = jnp.asarray([1.0, -2.0, 3.0])
    # five steps of 0.25 halve the error each time; then 1.1 multiplies it by -1.2 each step
    schedule = optax.join_schedules(
        [optax.constant_schedule(0.25), optax.constant_schedule(1.1)], [5]
    )
    solver = OptaxSolver(_quadratic, optax.sgd(schedule), lambda m: m.a)
    start = Line(jnp.zeros(3))
    with caplog.at_level(logging.WARNING, logger="diffptycho"):
        last, history = solve(start, solver, b, 80, progress=False, watch=LossWatch(window=10))
    assert history.best_iteration == 5  # the loss entering step 5 is the lowest
    np.testing.assert_allclose(history.best_loss, float(jnp.sum(b**2)) * 0.25**5, rtol=1e-6)
    assert any("diverging" in w for w in history.warnings)
    assert any("diverging" in r.getMessage() for r in caplog.records)
    best, h_best = solve(start, solver, b, 80, progress=False, keep_best=True)
    np.testing.assert_allclose(best.a, b * (1 - 0.5**5), rtol=1e-6)  # analytic iterate 5
    assert float(jnp.abs(last.a - b).max()) > 100 * float(jnp.abs(best.a - b).max())
    assert "iteration 5" in h_best.summary()


def test_a_slowly_rising_loss_warns_once_and_a_falling_one_never():
    rising = LossWatch(window=5)
    for it in range(40):
        rising.update(it, 1.0 + 0.02 * it)
    assert len(rising.warnings) == 1 and "rose" in rising.warnings[0]
    falling = LossWatch(window=5)
    for it in range(40):
        falling.update(it, 1.0 / (1 + it) * (1 + 0.01 * (-1) ** it))
    assert falling.warnings == [] and falling.best_iteration == 39


def test_compile_time_is_measured_apart_from_the_run():
    # a fresh solver type compiles in the first solve; the second solve reuses the executable
    solver = OptaxSolver(
        lambda m, b: jnp.sum(jnp.cos(m.a - b) ** 2), optax.sgd(1e-3), lambda m: m.a
    )
    model = Line(jnp.linspace(0.0, 1.0, 5))
    _, first = solve(model, solver, jnp.ones(5), 5, progress=False)
    _, second = solve(model, solver, jnp.ones(5), 5, progress=False)
    assert first.compile_seconds > 5 * max(second.compile_seconds, 1e-4)
    assert first.compile_seconds <= first.seconds[0] + 1e-3


def test_stop_on_signals_turns_sigterm_into_a_stop_request():
    with stop_on_signals(announce=False):
        assert not stop_requested()
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.time() + 5
        while not stop_requested() and time.time() < deadline:
            time.sleep(0.01)
        assert stop_requested()
        err = Interrupted("x")
        assert err.exit_code == 128 + signal.SIGTERM
    assert not stop_requested()  # the flag does not leak out of the block


def test_quiet_loss_watch_records_without_logging(caplog):
    from diffptycho.recon.watch import LossWatch

    losses = [4.0, 2.0, 1.0, 1.5, 2.0, 3.0]
    for quiet, logged in ((False, 1), (True, 0)):
        caplog.clear()
        watch = LossWatch(window=3, label="scan", quiet=quiet)
        for it, loss in enumerate(losses):
            watch.update(it, loss)
        assert len(watch.warnings) == 1 and "loss rose" in watch.warnings[0]
        assert sum("loss rose" in r.getMessage() for r in caplog.records) == logged
