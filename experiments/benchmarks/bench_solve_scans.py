"""Several scans at once (:func:`~diffptycho.recon.ptycho.scans.solve_scans`) against one by one.

S simulated far-field scans of the same layout (Fermat spiral, random phase objects, one
Gaussian-ish probe, Poisson frames, float32) are solved for the same number of iterations by

- ``solve`` per scan, one after another (the staged pipeline's chain, without the probe hand-off);
- ``solve_scans`` on one device and over D devices (the scan axis split over a 1-D mesh),
  each with ``lanes="vmap"`` (a device's scans in one batched step) and ``lanes="loop"``
  (one after another inside the step).

Every mode runs twice; the table gives the second, warm run (compiled) and the first run's
extra time (≈ compilation). On a CPU the "devices" are fake
(``--xla_force_host_platform_device_count``): they share the same cores, so no speed-up is
expected there; on GPUs each device runs S/D scans.

Usage:
    python experiments/benchmarks/bench_solve_scans.py                      # 8 scans, 4 devices
    python experiments/benchmarks/bench_solve_scans.py --scans 8 --devices 4 --positions 100
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=8)
    parser.add_argument("--devices", type=int, default=4)
    parser.add_argument("--positions", type=int, default=64)
    parser.add_argument("--frame", type=int, default=32)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--engine", default="lsqml")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    if "jax" in sys.modules:
        raise RuntimeError("jax imported before XLA_FLAGS could be set")
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={args.devices}"
    )

    import jax
    import jax.numpy as jnp
    import numpy as np

    from diffptycho.models import Ptycho2D
    from diffptycho.physics.scan import object_shape_for
    from diffptycho.recon.ptycho import ENGINES, PtychoData
    from diffptycho.recon.ptycho.scans import scan_mesh, solve_scans
    from diffptycho.recon.solve import solve
    from diffptycho.sim.patterns import fermat_spiral_positions

    frame = args.frame
    pos = fermat_spiral_positions(args.positions, frame / 8)
    shape = object_shape_for(pos, (frame, frame), margin=2)
    y, x = np.mgrid[:frame, :frame] - frame / 2
    r2 = (y**2 + x**2) / (frame / 6) ** 2  # a Gaussian beam a third of the frame wide, curved
    probe = np.exp(-r2 / 2 + 1j * 0.5 * r2)
    probe = (probe * np.sqrt(1e5 / np.sum(np.abs(probe) ** 2))).astype(np.complex64)[None]
    models, datas, starts = [], [], []
    for s in range(args.scans):
        rng = np.random.default_rng(s)
        phase = rng.uniform(-1, 1, shape).astype(np.float32)
        truth = Ptycho2D(
            jnp.asarray(np.exp(1j * phase).astype(np.complex64)),
            jnp.asarray(probe),
            jnp.asarray(pos.astype(np.float32)),
        )
        frames = rng.poisson(np.asarray(jax.jit(lambda m: m())(truth))).astype(np.float32)
        models.append(truth)
        datas.append(PtychoData(jnp.asarray(frames)))
        starts.append(
            Ptycho2D(jnp.ones(shape, jnp.complex64), jnp.asarray(probe * 0.9), truth.positions)
        )
    engine = ENGINES[args.engine](batch_size=args.batch_size)

    def one_by_one():
        out = [
            solve(m, engine, d, args.iterations, progress=False)
            for m, d in zip(starts, datas, strict=True)
        ]
        jax.block_until_ready([m.object for m, _ in out])

    def together(mesh, lanes):
        def run():
            fitted, _ = solve_scans(starts, engine, datas, args.iterations, mesh=mesh, lanes=lanes)
            jax.block_until_ready([m.object for m in fitted])

        return run

    modes = [
        ("solve, one scan after another", one_by_one),
        ("solve_scans vmap, 1 device", together(None, "vmap")),
        (f"solve_scans vmap, {args.devices} devices", together(scan_mesh(args.devices), "vmap")),
        ("solve_scans loop, 1 device", together(None, "loop")),
        (f"solve_scans loop, {args.devices} devices", together(scan_mesh(args.devices), "loop")),
    ]
    print(
        f"{args.scans} scans × {args.positions} positions, {frame}² frames, {args.engine} "
        f"batch {args.batch_size}, {args.iterations} iterations; {jax.devices()[0].platform} "
        f"×{len(jax.devices())}"
    )
    print(f"{'mode':<36} {'warm s':>8} {'s/iteration':>12} {'first-run extra s':>18}")
    for name, run in modes:
        t0 = time.perf_counter()
        run()
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        run()
        warm = time.perf_counter() - t0
        print(f"{name:<36} {warm:8.2f} {warm / args.iterations:12.4f} {first - warm:18.2f}")


if __name__ == "__main__":
    main()
