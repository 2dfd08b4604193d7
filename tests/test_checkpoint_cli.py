"""Checkpoint and resume of the commands: a stopped or killed run resumes to the same result.

The data are ``diffptycho simulate lfp --size 8 --angles 2`` (2 energies × 2 angles, 4 frames of
16 × 16 px per scan). The fast tests stop the run in process (a stop request after N steps, as
SIGINT/SIGTERM make one); the slow ones run ``python -m diffptycho.cli`` in a subprocess, kill it
with SIGKILL once the first checkpoint is on disk (or stop it with SIGTERM) and resume.
"""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from diffptycho.cli import main
from diffptycho.io.results import read_results
from diffptycho.recon import solve as solve_module


@pytest.fixture(scope="module")
def lfp(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lfp")
    cxi = str(folder / "lfp8.cxi")
    assert main(["simulate", "lfp", "--size", "8", "--angles", "2", "-o", cxi]) == 0
    return cxi, str(folder / "lfp8_references.csv")


def _ptycho(cxi, out, *extra, n=40):
    return ["ptycho", cxi, "-a", "epie", "-n", str(n), "-o", str(out), "--no-progress",
            "--no-figure", *extra]  # fmt: skip


def _stop_after(monkeypatch, n):
    calls = []

    def fake():
        calls.append(1)
        return len(calls) >= n

    monkeypatch.setattr(solve_module, "stop_requested", fake)


def test_ptycho_stopped_then_resumed_equals_the_uninterrupted_run(
    lfp, tmp_path, monkeypatch, capsys
):
    cxi, _ = lfp
    assert main(_ptycho(cxi, tmp_path / "whole.h5")) == 0
    out = tmp_path / "run.h5"
    _stop_after(monkeypatch, 13)
    assert main(_ptycho(cxi, out, "--checkpoint-every", "5")) == 1  # stopped in code: 1
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert "run.ckpt.h5" in err and "--resume" in err and "after iteration 13" in err
    assert not out.exists() and (tmp_path / "run.ckpt.h5").exists()
    assert main(_ptycho(cxi, out, "--checkpoint-every", "5", "--resume")) == 0
    assert not (tmp_path / "run.ckpt.h5").exists()  # removed once the results are written
    ours, whole = read_results(out), read_results(tmp_path / "whole.h5")
    for key in ("object", "probe", "positions_px"):
        np.testing.assert_allclose(
            ours[key], whole[key], rtol=1e-6, atol=1e-6 * np.abs(whole[key]).max()
        )
    np.testing.assert_allclose(ours["history"]["loss"], whole["history"]["loss"], rtol=1e-6)


def test_ptycho_refuses_the_checkpoint_of_other_settings(lfp, tmp_path, monkeypatch, capsys):
    cxi, _ = lfp
    out = tmp_path / "run.h5"
    _stop_after(monkeypatch, 3)
    assert main(_ptycho(cxi, out)) == 1
    monkeypatch.undo()
    assert main(_ptycho(cxi, out, "--resume", "--probe-modes", "2")) == 2
    assert "run.ckpt.h5: this checkpoint was written by a run with other" in capsys.readouterr().err
    assert main(_ptycho(cxi, tmp_path / "fresh.h5", "--resume")) == 2
    assert "fresh.ckpt.h5: no checkpoint to resume from" in capsys.readouterr().err


def test_ptycho_reports_the_best_iteration_and_keeps_it(lfp, tmp_path, capsys):
    cxi, _ = lfp
    assert main(_ptycho(cxi, tmp_path / "last.h5", n=6)) == 0
    assert "best loss" in capsys.readouterr().out
    assert main(_ptycho(cxi, tmp_path / "best.h5", "--keep-best", n=6)) == 0
    best, last = read_results(tmp_path / "best.h5"), read_results(tmp_path / "last.h5")
    config = best["provenance"]["config"]
    loss = last["history"]["loss"]
    assert config["keep_best"] and config["best_iteration"] == int(np.argmin(loss))
    if config["best_iteration"] < len(loss) - 1:  # the best state precedes the last update
        assert not np.allclose(best["object"], last["object"])


# --------------------------------------------------------------------------- subprocesses


def _spawn(args):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.Popen(
        [sys.executable, "-m", "diffptycho.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _wait_for(path, proc, timeout=120.0):
    deadline = time.time() + timeout
    while not os.path.exists(path):
        assert proc.poll() is None, f"the run ended before writing {path}: {proc.stderr.read()}"
        assert time.time() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.02)


def _finish(args):
    proc = _spawn(args)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return out


@pytest.mark.slow
def test_ptycho_killed_with_sigkill_resumes_to_the_same_result(lfp, tmp_path):
    cxi, _ = lfp
    n = 3000
    _finish(_ptycho(cxi, tmp_path / "whole.h5", n=n))
    out = tmp_path / "run.h5"
    proc = _spawn(_ptycho(cxi, out, "--checkpoint-every", "100", n=n))
    _wait_for(tmp_path / "run.ckpt.h5", proc)
    proc.kill()
    proc.communicate()
    assert not out.exists()
    _finish(_ptycho(cxi, out, "--checkpoint-every", "100", "--resume", n=n))
    ours, whole = read_results(out), read_results(tmp_path / "whole.h5")
    scale = np.abs(whole["object"]).max()
    np.testing.assert_allclose(ours["object"], whole["object"], rtol=1e-6, atol=1e-6 * scale)
    np.testing.assert_allclose(ours["history"]["loss"], whole["history"]["loss"], rtol=1e-6)


@pytest.mark.slow
def test_ptycho_stopped_with_sigterm_writes_a_checkpoint_and_says_how_to_resume(lfp, tmp_path):
    cxi, _ = lfp
    out = tmp_path / "run.h5"
    proc = _spawn(_ptycho(cxi, out, "--checkpoint-every", "100", n=100000))
    _wait_for(tmp_path / "run.ckpt.h5", proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "SIGTERM received" in err and "--resume" in err and "run.ckpt.h5" in err
    from diffptycho.io.results import load_checkpoint

    _, step, _ = load_checkpoint(tmp_path / "run.ckpt.h5")
    assert 100 <= step < 100000 and not out.exists()


@pytest.mark.slow
def test_spectrotomo_killed_with_sigkill_resumes_to_the_same_result(lfp, tmp_path):
    cxi, refs = lfp
    common = [
        "spectrotomo", cxi, "-r", refs, "-n", "300", "--align", "none", "--volume-shape",
        "8", "8", "8", "--tomo-iterations", "5", "--no-progress", "--no-figures",
    ]  # fmt: skip
    _finish([*common, "-o", str(tmp_path / "whole.h5")])
    out = tmp_path / "run.h5"
    proc = _spawn([*common, "-o", str(out), "--checkpoint-every", "1"])
    _wait_for(out, proc)
    proc.kill()
    proc.communicate()
    partial = read_results(out)
    done = partial["stages/ptychography/done"]
    assert partial["provenance"]["config"]["stages"]["ptychography"]["complete"] is False
    assert 1 <= done.sum() < done.size
    _finish([*common, "-o", str(out), "--checkpoint-every", "1", "--resume"])
    ours, whole = read_results(out), read_results(tmp_path / "whole.h5")
    for key in ("composition", "od_volumes", "stages/ptychography/objects"):
        scale = np.abs(whole[key]).max()
        np.testing.assert_allclose(ours[key], whole[key], rtol=1e-6, atol=1e-6 * scale)


@pytest.mark.slow
def test_spectrotomo_stopped_between_scans_resumes_with_the_scans_not_done(
    lfp, tmp_path, monkeypatch, capsys
):
    from diffptycho.pipeline import stages

    cxi, refs = lfp
    common = ["spectrotomo", cxi, "-r", refs, "-n", "20", "--no-progress", "--no-figures",
              "--stop-after", "ptychography"]  # fmt: skip
    assert main([*common, "-o", str(tmp_path / "whole.h5")]) == 0
    out = tmp_path / "run.h5"
    monkeypatch.setattr(stages, "stop_requested", lambda: True)  # stop after the first scan
    assert main([*common, "-o", str(out), "--checkpoint-every", "3"]) == 1
    monkeypatch.undo()
    assert "run.h5" in capsys.readouterr().err
    partial = read_results(out)
    assert partial["stages/ptychography/done"].sum() == 1  # saved at the stop, not at 3 scans
    assert main([*common, "-o", str(out), "--resume"]) == 0
    ours, whole = read_results(out), read_results(tmp_path / "whole.h5")
    for key in ("objects", "probes"):
        ref = whole[f"stages/ptychography/{key}"]
        np.testing.assert_allclose(ours[f"stages/ptychography/{key}"], ref, rtol=1e-6,
                                   atol=1e-6 * np.abs(ref).max())  # fmt: skip


def test_spectrotomo_resume_needs_the_results_file(lfp, tmp_path, capsys):
    cxi, refs = lfp
    missing = tmp_path / "none.h5"
    assert main(["spectrotomo", cxi, "-r", refs, "-o", str(missing), "--resume"]) == 2
    assert "none.h5: nothing to resume from" in capsys.readouterr().err
