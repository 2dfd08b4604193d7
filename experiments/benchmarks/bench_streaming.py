"""Peak memory and time per iteration of ``diffptycho ptycho --stream`` against in memory.

Two scans written with the project's CXI writer (one frame per HDF5 chunk): a small one and
one with 10× the positions (same frame size, same step, so 10× the frames and about 10× the
object area), Poisson frames of a random phase object under a Gaussian probe. Each scan is
reconstructed by ``diffptycho ptycho`` in its own process, in memory and with ``--stream``,
under ``/usr/bin/time -v``: peak resident memory (max RSS) is that process's, interpreter,
imports and JIT compilation included. The time per iteration is the median of the
differences of ``history/seconds`` after the first iteration (compilation excluded).

``diffptycho simulate`` writes 16² px frames only, 1 KiB each: a scan whose frames dominate
the memory would need ~10⁶ positions, and an object that size; hence the 128² px frames
here, written by the same :func:`~diffptycho.io.cxi.write_cxi`.

Usage:
    python experiments/benchmarks/bench_streaming.py                 # 400 and 4000 × 128²
    python experiments/benchmarks/bench_streaming.py --quick         # 100 and 1000 × 64²
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from experiment_report import write_report  # noqa: E402


def write_scan(path: str, rows: int, cols: int, frame: int, step: float, seed: int) -> int:
    """Simulate a ``rows`` × ``cols`` raster of ``frame``² px frames and write it as CXI."""
    import jax
    import jax.numpy as jnp

    from diffptycho.io.cxi import PtychoScan, write_cxi
    from diffptycho.models import Ptycho2D
    from diffptycho.physics.scan import object_shape_for
    from diffptycho.sim.patterns import raster_positions

    rng = np.random.default_rng(seed)
    pos = raster_positions(rows, cols, step, jitter_px=0.5, seed=seed)
    shape = object_shape_for(pos, (frame, frame))
    phase = rng.standard_normal(shape).astype(np.float32)
    obj = np.exp(0.5j * phase).astype(np.complex64)
    y, x = np.mgrid[:frame, :frame] - frame // 2
    probe = np.exp(-(x**2 + y**2) / (2 * (frame / 8) ** 2)).astype(np.complex64)
    probe *= np.sqrt(1e5 / np.sum(np.abs(probe) ** 2))
    frames = np.empty((len(pos), frame, frame), np.float32)
    forward = jax.jit(lambda m: m())
    for lo in range(0, len(pos), 256):
        part = jnp.asarray(pos[lo : lo + 256], jnp.float32)
        model = Ptycho2D(jnp.asarray(obj), jnp.asarray(probe[None]), part)
        frames[lo : lo + len(part)] = rng.poisson(np.asarray(forward(model)))
    frames += 1.0  # no all-zero frame
    write_cxi(path, PtychoScan(frames, pos, 700.0))
    return len(pos)


def run(path: str, out: str, args, stream: bool) -> dict:
    """One ``diffptycho ptycho`` process under ``/usr/bin/time -v``: max RSS and timings."""
    from diffptycho.io.results import read_results

    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "diffptycho.cli.ptycho", "ptycho", path]
    cmd += ["-a", args.algorithm, "-n", str(args.iterations), "--batch-size", str(args.batch)]
    cmd += ["--no-progress", "--no-figure", "-o", out] + (["--stream"] if stream else [])
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)[1])
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", done.stderr)[1]
    seconds = np.asarray(read_results(out)["history"]["seconds"])
    per_iteration = float(np.median(np.diff(seconds)[1:])) if len(seconds) > 2 else np.nan
    return {
        "peak_rss_mb": rss_kb / 1024,
        "s_per_iteration": per_iteration,
        "first_iteration_s": float(seconds[0]),
        "wall": wall,
        "object": np.asarray(read_results(out)["object"]),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frame", type=int, default=128, help="frame side in px")
    p.add_argument("--rows", type=int, default=20, help="raster rows of the small scan")
    p.add_argument("--cols", type=int, default=20, help="raster columns of the small scan")
    p.add_argument("--algorithm", default="epie")
    p.add_argument("--iterations", type=int, default=4)
    p.add_argument("--batch", type=int, default=64, help="positions per minibatch")
    p.add_argument("--quick", action="store_true", help="100 and 1000 positions of 64² px")
    p.add_argument("--out", default="bench_streaming_out", help="output directory")
    args = p.parse_args()
    if args.quick:
        args.frame, args.rows, args.cols = 64, 10, 10
    os.makedirs(args.out, exist_ok=True)
    step = args.frame / 8
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for scale, (ny, nx) in (
            ("1×", (args.rows, args.cols)),
            ("10×", (args.rows * 2, args.cols * 5)),
        ):
            path = os.path.join(tmp, f"scan_{ny}x{nx}.cxi")
            n = write_scan(path, ny, nx, args.frame, step, seed=0)
            results = {}
            for stream in (False, True):
                out = os.path.join(tmp, f"out_{ny}x{nx}_{int(stream)}.h5")
                results[stream] = run(path, out, args, stream)
            same = float(np.max(np.abs(results[True]["object"] - results[False]["object"])))
            for stream in (False, True):
                r = results[stream]
                rows.append(
                    {
                        "scan": scale,
                        "positions": n,
                        "frames_mb": n * args.frame**2 * 4 / 2**20,
                        "mode": "stream" if stream else "memory",
                        "peak_rss_mb": r["peak_rss_mb"],
                        "s_per_iteration": r["s_per_iteration"],
                        "first_iteration_s": r["first_iteration_s"],
                        "wall": r["wall"],
                        "max_object_difference": same,
                    }
                )
    lines = [
        f"{args.algorithm}, {args.iterations} iterations, batch {args.batch}, "
        f"{args.frame}² px frames (float32 on disk, one frame per chunk)",
        "",
        "| scan | positions | frames MiB | mode | peak RSS MiB | s / iteration | "
        "1st iteration s | wall | max abs object diff stream vs memory |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['scan']} | {r['positions']} | {r['frames_mb']:.0f} | {r['mode']} | "
            f"{r['peak_rss_mb']:.0f} | {r['s_per_iteration']:.3f} | "
            f"{r['first_iteration_s']:.1f} | {r['wall']} | {r['max_object_difference']:.2g} |"
        )
    write_report(args.out, args, rows, "\n".join(lines))


if __name__ == "__main__":
    main()
