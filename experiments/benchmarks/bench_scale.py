"""Scale-out and memory of diffptycho: ptychography and tomography scaling, peak RSS.

1. **Scaling over devices.** Each engine runs in its own Python process per device count D,
   with every minibatch split over D devices (``mesh=position_mesh(D)``; D = 1 runs the
   single-device code without a mesh). On CPU the devices are fake ones
   (``XLA_FLAGS=--xla_force_host_platform_device_count=D``, set in the child's environment
   before jax is imported), which share the machine's cores: they show the overhead of the
   collectives and what the cores allow, not what D accelerators give. On a GPU machine the
   same script uses the first D GPUs (the flag only touches the host platform) and skips
   counts above what is present.

   - strong: a fixed scan (``--positions`` frames of ``--frame``², batch ``--batch``) on
     D = 1, 2, 4: time per iteration t_D, speed-up t_1 / t_D, efficiency speed-up / D;
   - weak: ``--positions`` / 4 × D positions with batch ``--batch`` / 4 × D (the same work
     per device): efficiency t_1 / t_D.

   Time per iteration is the median after the first iteration (which compiles).

   Tomography (``--tomo sirt``): SIRT with the volume's y rows split over D devices
   (``mesh=tomo_mesh(D)``, axis ``"slab"``) and, for comparison, with the angles split
   (``tomo_mesh(D, axis="angle")``, ``--tomo-split``); strong: a ``--tomo-size``² ×
   ``--tomo-rows`` volume from ``--tomo-angles`` projections; weak: ``--tomo-rows`` / 4 × D
   rows (slab) or ``--tomo-angles`` / 4 × D angles (angle).

2. **Peak memory.** ``diffptycho ptycho`` (whole process, ``--no-figure``) on a simulated
   pixel-unit CXI file and on one with 10× the positions; peak resident memory of the child
   (``os.wait4`` rusage ``ru_maxrss``) and wall time.

Measured here (2 CPU cores shared with other jobs, load 5-8, so ±30 % between runs;
``--iterations 12``), ms per iteration for D = 1 / 2 / 4 fake devices, strong (1024 × 64²,
batch 128): LSQML 209 / 152 / 222, ePIE 116 / 215 / 202, RAAR 403 / 329 / 464, Adam
113 / 152 / 132; weak (256·D/4 positions) efficiency at D = 2 / 4: 0.27-0.43 / 0.14-0.18.
Two cores cannot run more than two devices at once, and the single-device run already uses
both through XLA's threads, so ≈ 1× strong and ≈ 1/D weak is what this machine allows; the
numbers bound the collectives' overhead rather than measure a speed-up. Peak RSS of
``diffptycho ptycho -a lsqml -n 8``: 382 MB for 400 positions of 64² (6.6 MB of frames),
547 MB for 4000 (65.5 MB): +165 MB for +59 MB of frames (≈ 2.8 copies), over a ~360 MB
JAX/XLA baseline.

SIRT (``--tomo sirt``, 128 × 32 × 128 voxels, 128 angles, float32, ``--iterations 12``; same
machine, load 3-6 from other jobs; two full runs and two more of D = 1, 4 over slabs): ms per
iteration for D = 1 / 2 / 4, strong, slab split 185-248 / 229-234 / 349-617; angle split
261-276 / 309-335 / 340-404. Weak (8·D/4 rows over slabs, 32·D/4 angles over angles)
efficiency at D = 2 / 4: slabs 0.16-0.17 / 0.07-0.13, angles 0.39-0.41 / 0.11-0.19. One
iteration's projection and back-projection is linear in rows and in angles (67 / 125 / 291 ms
for 8 / 16 / 32 rows), so each device does 1/D of the work; the extra time is the fake
devices' threads competing for two busy cores, and the collectives (a scalar psum per
iteration over slabs, a volume psum over angles).

Usage:
    python experiments/benchmarks/bench_scale.py                 # everything (~12 min, 2 cores)
    python experiments/benchmarks/bench_scale.py --quick         # smaller scans (~3 min)
    python experiments/benchmarks/bench_scale.py --engines lsqml --skip-memory
    python experiments/benchmarks/bench_scale.py --engines --skip-memory   # tomography only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

DEVICES = (1, 2, 4)
ENGINES = ("lsqml", "epie", "raar", "adam")
"""One engine of each family: LSQML-type, PIE-type (in batches), projection, gradient."""
TOMO = ("sirt",)
"""Tomography algorithms split over y slabs (any of ``diffptycho.recon.tomo.ALGORITHMS``
except fbp, which has no iterations)."""


def worker(spec: dict) -> dict:
    """Run one reconstruction in this process; return its timings (the child's side)."""
    if spec.get("problem") == "tomo":
        return tomo_worker(spec)
    import jax
    import jax.numpy as jnp
    from ptycho_cases import Case, simulate

    from diffptycho.models import Ptycho2D
    from diffptycho.recon.ptycho import ENGINES as CONSTRUCTORS
    from diffptycho.recon.ptycho import PtychoData
    from diffptycho.recon.sharding import position_mesh
    from diffptycho.recon.solve import solve

    devices = spec["devices"]
    if len(jax.devices()) < devices:
        return {**spec, "skipped": f"{len(jax.devices())} {jax.default_backend()} devices"}
    case = Case("scale", spec["positions"], spec["frame"], spec["frame"] / 3, spec["iterations"])
    sim = simulate(case)
    model = Ptycho2D(
        jnp.ones(sim["object_true"].shape, jnp.complex64),
        jnp.asarray(sim["probe_init"][None]),
        jnp.asarray(sim["positions_px"], jnp.float32),
    )
    mesh = None if devices == 1 else position_mesh(devices)
    engine = CONSTRUCTORS[spec["engine"]](batch_size=spec["batch"], mesh=mesh)
    start = time.perf_counter()
    _, history = solve(
        model, engine, PtychoData(jnp.asarray(sim["frames"])), case.iterations, progress=False
    )
    total = time.perf_counter() - start
    steps = np.diff(np.concatenate([[0.0], history.seconds]))
    return {
        **spec,
        "backend": jax.default_backend(),
        "seconds_per_iteration": float(np.median(steps[1:])),
        "first_iteration": float(steps[0]),
        "solve_seconds": total,
        "final_loss": history.loss[-1],
    }


def tomo_worker(spec: dict) -> dict:
    """One tomography reconstruction split over ``spec['devices']`` devices."""
    import jax
    import jax.numpy as jnp

    from diffptycho.models.tomo import TomoProjections
    from diffptycho.physics.tomography import project
    from diffptycho.recon.solve import solve
    from diffptycho.recon.tomo import make_solver, tomo_mesh

    devices = spec["devices"]
    if len(jax.devices()) < devices:
        return {**spec, "skipped": f"{len(jax.devices())} {jax.default_backend()} devices"}
    n, rows = spec["size"], spec["rows"]
    zz, xx = jnp.mgrid[:n, :n] - (n - 1) / 2
    disc = (zz**2 + xx**2 < (n / 3) ** 2).astype(jnp.float32)
    truth = disc[:, None, :] * (1 + 0.5 * jnp.sin(jnp.arange(rows) / 3.0))[None, :, None]
    angles = jnp.linspace(0, jnp.pi, spec["angles"], endpoint=False)
    data = project(truth, angles)
    model = TomoProjections(jnp.zeros_like(truth), angles, jnp.zeros((spec["angles"], 4)))
    mesh = None if devices == 1 else tomo_mesh(devices, axis=spec["split"])
    solver = make_solver(spec["engine"], apply_alignment=False, mesh=mesh)
    start = time.perf_counter()
    _, history = solve(model, solver, data, spec["iterations"], progress=False)
    total = time.perf_counter() - start
    steps = np.diff(np.concatenate([[0.0], history.seconds]))
    return {
        **spec,
        "backend": jax.default_backend(),
        "seconds_per_iteration": float(np.median(steps[1:])),
        "first_iteration": float(steps[0]),
        "solve_seconds": total,
        "final_loss": history.loss[-1],
    }


def run_worker(spec: dict) -> dict:
    """``worker(spec)`` in a child process with ``spec['devices']`` host devices."""
    env = dict(os.environ)
    flags = env.get("XLA_FLAGS", "").split()
    flags = [f for f in flags if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(
        [*flags, f"--xla_force_host_platform_device_count={spec['devices']}"]
    )
    out = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode:
        return {**spec, "skipped": f"failed: {out.stderr.strip().splitlines()[-1:]}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def scaling(args) -> list[dict]:
    """Strong and weak scaling rows for every engine and device count."""
    rows = []
    for engine in args.engines:
        for mode in ("strong", "weak"):
            for d in args.devices:
                scale = 1 if mode == "strong" else d / max(args.devices)
                spec = {
                    "engine": engine,
                    "mode": mode,
                    "devices": d,
                    "positions": int(round(args.positions * scale)),
                    "batch": int(round(args.batch * scale)),
                    "frame": args.frame,
                    "iterations": args.iterations,
                }
                row = run_worker(spec)
                rows.append(row)
                print(f"  {engine} {mode} D={d}: {_fmt_row(row)}", file=sys.stderr, flush=True)
    return rows


def _fmt_row(row: dict) -> str:
    if "skipped" in row:
        return f"skipped ({row['skipped']})"
    return f"{row['seconds_per_iteration'] * 1e3:.0f} ms/iteration"


def print_scaling(rows: list[dict]) -> None:
    """Table of time per iteration, speed-up and efficiency against D = 1."""
    print("\nScaling over devices (time per iteration, median after the first)")
    print(
        f"{'engine':8} {'mode':6} {'D':>2} {'positions':>9} {'batch':>5} {'backend':7} "
        f"{'ms/it':>8} {'1st it s':>8} {'speed-up':>8} {'effic.':>7}"
    )
    base = {}
    for r in rows:
        key = (r["engine"], r["mode"])
        if "skipped" in r:
            print(f"{r['engine']:8} {r['mode']:6} {r['devices']:>2} skipped: {r['skipped']}")
            continue
        t = r["seconds_per_iteration"]
        if r["devices"] == 1:
            base[key] = t
        t1 = base.get(key)
        speed = t1 / t if t1 else float("nan")
        eff = speed / r["devices"] if r["mode"] == "strong" else speed
        print(
            f"{r['engine']:8} {r['mode']:6} {r['devices']:>2} {r['positions']:>9} "
            f"{r['batch']:>5} {r['backend']:7} {t * 1e3:>8.1f} {r['first_iteration']:>8.2f} "
            f"{speed:>8.2f} {eff:>7.2f}"
        )


def tomo_scaling(args) -> list[dict]:
    """Strong and weak scaling rows of the tomography algorithms (y slabs, angles)."""
    rows = []
    for engine in args.tomo:
        for split in args.tomo_split:
            for mode in ("strong", "weak"):
                for d in args.devices:
                    scale = 1 if mode == "strong" else d / max(args.devices)
                    by_rows = split == "slab"
                    spec = {
                        "problem": "tomo",
                        "engine": engine,
                        "split": split,
                        "mode": mode,
                        "devices": d,
                        "size": args.tomo_size,
                        "rows": max(1, round(args.tomo_rows * (scale if by_rows else 1))),
                        "angles": max(1, round(args.tomo_angles * (1 if by_rows else scale))),
                        "iterations": args.iterations,
                    }
                    row = run_worker(spec)
                    rows.append(row)
                    label = f"{engine} {split} {mode} D={d}"
                    print(f"  {label}: {_fmt_row(row)}", file=sys.stderr, flush=True)
    return rows


def print_tomo_scaling(rows: list[dict]) -> None:
    """Table of time per iteration, speed-up and efficiency against D = 1."""
    print("\nTomography split over devices (time per iteration, median after the first)")
    print(
        f"{'algo':6} {'split':6} {'mode':6} {'D':>2} {'volume z×y×x':>14} {'angles':>6} "
        f"{'backend':7} {'ms/it':>8} {'1st it s':>8} {'speed-up':>8} {'effic.':>7}"
    )
    base = {}
    for r in rows:
        key = (r["engine"], r["split"], r["mode"])
        head = f"{r['engine']:6} {r['split']:6} {r['mode']:6} {r['devices']:>2}"
        if "skipped" in r:
            print(f"{head} skipped: {r['skipped']}")
            continue
        t = r["seconds_per_iteration"]
        if r["devices"] == 1:
            base[key] = t
        t1 = base.get(key)
        speed = t1 / t if t1 else float("nan")
        eff = speed / r["devices"] if r["mode"] == "strong" else speed
        shape = f"{r['size']}×{r['rows']}×{r['size']}"
        print(
            f"{head} {shape:>14} {r['angles']:>6} {r['backend']:7} {t * 1e3:>8.1f} "
            f"{r['first_iteration']:>8.2f} {speed:>8.2f} {eff:>7.2f}"
        )


def write_dataset(path: str, positions: int, frame: int) -> float:
    """A pixel-unit CXI file of a simulated scan; returns its frames' size in MB."""
    from ptycho_cases import Case, simulate

    from diffptycho.io.cxi import write_cxi
    from diffptycho.io.scan import PtychoScan

    sim = simulate(Case("rss", positions, frame, frame / 3, 1))
    write_cxi(path, PtychoScan(sim["frames"], sim["positions_px"], energy_ev=710.0))
    return sim["frames"].nbytes / 1e6


def peak_memory(args) -> list[dict]:
    """Whole-process wall time and peak RSS of ``diffptycho ptycho`` on 1× and 10× data."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for factor in (1, 10):
            n = args.memory_positions * factor
            data = os.path.join(tmp, f"scan{n}.cxi")
            # written by a child: on Linux a child's ru_maxrss starts from its parent's peak
            # at fork (kept across exec), so this process must stay free of jax and frames
            out = subprocess.run(
                [sys.executable, __file__, "--write-dataset", data, str(n), str(args.frame)],
                capture_output=True,
                text=True,
                check=True,
            )
            mb = float(out.stdout.strip().splitlines()[-1])
            command = [
                sys.executable,
                "-m",
                "diffptycho.cli",
                "ptycho",
                data,
                "-a",
                args.memory_engine,
                "-n",
                str(args.iterations),
                "-o",
                os.path.join(tmp, f"out{n}.h5"),
                "--no-progress",
                "--no-figure",
            ]
            t0 = time.perf_counter()
            child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            _, status, usage = os.wait4(child.pid, 0)
            seconds = time.perf_counter() - t0
            if status:
                raise RuntimeError(f"{' '.join(command)} failed: {child.stderr.read().decode()}")
            # ru_maxrss is in KiB on Linux, in bytes on macOS
            rss = usage.ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
            rows.append({"positions": n, "frames_mb": mb, "seconds": seconds, "peak_rss_mb": rss})
            print(f"  ptycho {n} positions: {rss:.0f} MB, {seconds:.1f} s", file=sys.stderr)
    return rows


def print_memory(rows: list[dict], args) -> None:
    """Table of the peak memory runs."""
    print(
        f"\nPeak memory of `diffptycho ptycho -a {args.memory_engine} -n {args.iterations}` "
        f"({args.frame}² frames, whole process)"
    )
    print(
        f"{'positions':>9} {'frames MB':>9} {'wall s':>7} {'peak RSS MB':>11} {'RSS − frames':>12}"
    )
    for r in rows:
        print(
            f"{r['positions']:>9} {r['frames_mb']:>9.1f} {r['seconds']:>7.1f} "
            f"{r['peak_rss_mb']:>11.0f} {r['peak_rss_mb'] - r['frames_mb']:>12.0f}"
        )


def main(argv=None) -> int:
    """Run the benchmark and print its tables."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--write-dataset", nargs=3, help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true", help="smaller scans, fewer iterations")
    p.add_argument("--engines", nargs="*", default=list(ENGINES), help="engines to scale")
    p.add_argument("--tomo", nargs="*", default=list(TOMO), help="tomography algorithms")
    p.add_argument("--tomo-split", nargs="+", default=["slab", "angle"], choices=["slab", "angle"])
    p.add_argument("--tomo-size", type=int, default=128, help="volume z and x in voxels")
    p.add_argument("--tomo-rows", type=int, default=32, help="strong-scaling volume y rows")
    p.add_argument("--tomo-angles", type=int, default=128, help="projections")
    p.add_argument("--devices", nargs="+", type=int, default=list(DEVICES))
    p.add_argument("--positions", type=int, default=1024, help="strong-scaling positions")
    p.add_argument("--batch", type=int, default=128, help="strong-scaling batch size")
    p.add_argument("--frame", type=int, default=64, help="frame edge in pixels")
    p.add_argument("--iterations", type=int, default=8)
    p.add_argument("--memory-positions", type=int, default=400, help="positions of the 1× file")
    p.add_argument("--memory-engine", default="lsqml")
    p.add_argument("--skip-scaling", action="store_true")
    p.add_argument("--skip-memory", action="store_true")
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    if args.write_dataset:
        path, n, frame = args.write_dataset
        print(write_dataset(path, int(n), int(frame)))
        return 0
    if args.quick:
        args.positions, args.batch, args.iterations = 256, 64, 5
        args.memory_positions = 100
        args.tomo_size, args.tomo_rows, args.tomo_angles = 64, 16, 64
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs", file=sys.stderr)
    if not args.skip_scaling:
        if args.engines:
            print_scaling(scaling(args))
        if args.tomo:
            print_tomo_scaling(tomo_scaling(args))
    if not args.skip_memory:
        print_memory(peak_memory(args), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
