"""Benchmark the diffptycho projector pair against ASTRA's CPU parallel-beam projector.

Geometry of the battery study: a size³ float32 volume and N angles from −80° to +77°.
diffptycho runs jitted on the whole volume (angles traced); ASTRA runs its 2-D 'linear' (Joseph)
CPU projector slice by slice over y, with data objects created once and reused.

Convention mapping: ASTRA's image rows are our z and columns our x, but its detector coordinate
is t = x cos φ − z sin φ, so diffptycho's angle θ is ASTRA's φ = −θ (checked below with a point
voxel). Both return line integrals in voxel units with the same centred detector.

Usage:
    python experiments/benchmarks/bench_projector.py --size 128 --angles 158 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffptycho.physics.tomography import backproject, project


def phantom(n: int, seed: int = 0) -> np.ndarray:
    """Smooth test object: a few dozen Gaussian-edged ellipsoids of random density, (z, y, x)."""
    rng = np.random.default_rng(seed)
    c = np.arange(n) - (n - 1) / 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    vol = np.zeros((n, n, n), np.float32)
    for _ in range(24):
        centre = rng.uniform(-0.3, 0.3, 3) * n
        axes = rng.uniform(0.05, 0.2, 3) * n
        r = np.sqrt(
            sum(((q - q0) / a) ** 2 for q, q0, a in zip((z, y, x), centre, axes, strict=True))
        )
        vol += rng.uniform(0.2, 1.0) / (1 + np.exp((r - 1) * 8))
    return vol


def time_call(fn, *args, repeats: int) -> tuple[float, float, float]:
    """Best and median wall time (s) of ``fn(*args)`` after warm-up, and the best run's CPU s."""
    jax.block_until_ready(fn(*args))
    runs = []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn(*args))
        runs.append((time.perf_counter() - w0, time.process_time() - c0))
    best = min(runs)
    return best[0], statistics.median(r[0] for r in runs), best[1]


class AstraSlices:
    """ASTRA 2-D CPU projector applied slice by slice along y (its 3-D projectors need a GPU)."""

    def __init__(self, n_z: int, n_x: int, n_det: int, angles_rad: np.ndarray):
        import astra

        self.astra = astra
        vol_geom = astra.create_vol_geom(n_z, n_x)  # rows = z, columns = x
        proj_geom = astra.create_proj_geom("parallel", 1.0, n_det, -np.asarray(angles_rad))
        self.projector = astra.create_projector("linear", proj_geom, vol_geom)
        self.vol_id = astra.data2d.create("-vol", vol_geom, 0.0)
        self.sino_id = astra.data2d.create("-sino", proj_geom, 0.0)
        self.algorithms = {}
        for name, kind in (("fp", "FP"), ("bp", "BP")):
            cfg = astra.astra_dict(kind)
            cfg["ProjectorId"] = self.projector
            cfg["ProjectionDataId"] = self.sino_id
            cfg["VolumeDataId" if kind == "FP" else "ReconstructionDataId"] = self.vol_id
            self.algorithms[name] = astra.algorithm.create(cfg)

    def project(self, volume: np.ndarray) -> np.ndarray:
        out = []
        for i in range(volume.shape[1]):
            self.astra.data2d.store(self.vol_id, volume[:, i, :])
            self.astra.algorithm.run(self.algorithms["fp"])
            out.append(self.astra.data2d.get(self.sino_id))
        return np.stack(out, axis=1)  # (angle, y, t)

    def backproject(self, projections: np.ndarray) -> np.ndarray:
        out = []
        for i in range(projections.shape[1]):
            self.astra.data2d.store(self.sino_id, projections[:, i, :])
            self.astra.algorithm.run(self.algorithms["bp"])
            out.append(self.astra.data2d.get(self.vol_id))
        return np.stack(out, axis=1)  # (z, y, x)

    def close(self) -> None:
        for alg in self.algorithms.values():
            self.astra.algorithm.delete(alg)
        self.astra.data2d.delete([self.vol_id, self.sino_id])
        self.astra.projector.delete(self.projector)


def check_point_convention(n: int = 16) -> float:
    """Max |diffptycho − ASTRA(−θ)| for one voxel off-centre at a few angles (expect ~1e-7)."""
    vol = np.zeros((n, 1, n), np.float32)
    vol[3, 0, 11] = 1.0
    angles = np.deg2rad([0.0, 30.0, 90.0, 135.0, -60.0])
    ours = np.asarray(project(jnp.asarray(vol), jnp.asarray(angles, jnp.float32)))
    ref = AstraSlices(n, n, n, angles)
    try:
        return float(np.abs(ours - ref.project(vol)).max())
    finally:
        ref.close()


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128, help="volume edge (voxels)")
    parser.add_argument("--angles", type=int, default=158, help="views from -80 to +77 deg")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after warm-up")
    parser.add_argument("--no-astra", action="store_true", help="time diffptycho only")
    args = parser.parse_args()
    n, n_angles = args.size, args.angles

    print(f"jax {jax.__version__} on {jax.devices()}, {os.cpu_count()} CPU cores, ", end="")
    print(f"python {platform.python_version()}, load average {os.getloadavg()[0]:.1f}")
    vol_np = phantom(n)
    angles_np = np.deg2rad(np.linspace(-80.0, 77.0, n_angles)).astype(np.float32)
    vol, angles = jnp.asarray(vol_np), jnp.asarray(angles_np)

    fwd = jax.jit(project)
    adj = jax.jit(backproject, static_argnums=(2, 3))
    t0 = time.perf_counter()
    fwd_c = fwd.lower(vol, angles).compile()
    t1 = time.perf_counter()
    sino = fwd_c(vol, angles)
    adj_c = adj.lower(sino, angles, n, n).compile()
    t2 = time.perf_counter()
    rows = {
        "project": time_call(fwd_c, vol, angles, repeats=args.repeats),
        "backproject": time_call(adj_c, sino, angles, repeats=args.repeats),
    }
    compile_s = {"project": t1 - t0, "backproject": t2 - t1}

    astra_rows, agreement = {}, {}
    if not args.no_astra:
        ref = AstraSlices(n, n, n, angles_np)
        try:
            sino_np = np.asarray(sino)
            astra_rows["project"] = time_call(ref.project, vol_np, repeats=args.repeats)
            astra_rows["backproject"] = time_call(ref.backproject, sino_np, repeats=args.repeats)
            agreement["project"] = rel(sino_np, ref.project(vol_np))
            back = np.asarray(adj_c(sino, angles))
            agreement["backproject"] = rel(back, ref.backproject(sino_np))
        finally:
            ref.close()
        agreement["point voxel max abs"] = check_point_convention()

    print(f"\n{n}³ float32 volume, {n_angles} views; wall s = best of {args.repeats} (median),")
    print("cpu s = process CPU time of the best run (all threads; robust to a busy machine)")
    head = f"{'operation':<12} {'compile s':>9} {'diffptycho wall s':>18} {'cpu s':>6}"
    if astra_rows:
        head += f" {'astra wall s':>16} {'cpu s':>6} {'astra/diffptycho':>16}"
    print(head)
    for op, (best, median, cpu) in rows.items():
        line = f"{op:<12} {compile_s[op]:>9.2f} {best:>8.3f} ({median:>7.3f}) {cpu:>6.3f}"
        if op in astra_rows:
            a_best, a_median, a_cpu = astra_rows[op]
            line += f" {a_best:>7.3f} ({a_median:>6.3f}) {a_cpu:>6.3f}"
            line += f"  {a_best / best:>5.1f} wall {a_cpu / cpu:>5.1f} cpu"
        print(line)
    ratio = rows["backproject"][0] / rows["project"][0]
    print(f"backproject / project wall time: {ratio:.2f}")
    for name, value in agreement.items():
        label = "relative L2 difference" if name != "point voxel max abs" else ""
        print(f"agreement with ASTRA (angle −θ), {name} {label}: {value:.2e}")


if __name__ == "__main__":
    main()
