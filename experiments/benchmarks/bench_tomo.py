"""Tomography benchmark: diffptycho's ART, SIRT and FBP against ASTRA's CPU algorithms.

Both reconstruct the *same* noisy data of a 3-D phantom of flat ellipsoids (LiFePO4-like
plates) with the battery study's geometry (158 angles, −80°…+77°: a 23° missing wedge). The
data are exact analytic line integrals of the ellipsoids (no inverse crime for either package)
plus Gaussian noise. ASTRA runs its 2-D CPU algorithms slice by slice with the 'linear'
(Joseph) projector, which is the discretisation of diffptycho's projector: ASTRA's parallel
geometry at angle −θ equals ours at θ, both centre detector and volume at (n − 1)/2.

- ART-20: diffptycho ART (block Kaczmarz) and SART, 20 sweeps in acquisition order; ASTRA SART
  (20 × 158 projection updates, sequential order) and, with ``--astra-ray-art``, ASTRA's
  ray-by-ray ART (20 × 158 × n ray updates).
- SIRT-100, FBP (ramp / Ram-Lak).

The error is ‖x − x_true‖ / ‖x_true‖ over the whole volume, x_true the phantom averaged over
3³ sub-voxels. Times are wall-clock seconds in one run (the machine is shared: compare
ratios); diffptycho's include compilation, reported separately. ASTRA's CPU algorithms use
one core, diffptycho (XLA) all cores. ``--astra-slices K`` times ASTRA on K evenly spread
slices and scales its time to all slices (its slices are independent 2-D problems).

Run: ``python experiments/benchmarks/bench_tomo.py --size 128 --angles 158``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402


def ellipsoids(n: int, seed: int = 0) -> list[tuple]:
    """(density, centre (z, y, x), semi-axes (z, y, x), rotation about y) in voxels."""
    rng = np.random.default_rng(seed)
    out = [(0.3, (0.0, 0.0, 0.0), (0.38 * n, 0.42 * n, 0.40 * n), 0.0)]  # matrix
    for _ in range(10):  # plates: thin along one in-plane axis
        centre = tuple(rng.uniform(-0.22, 0.22, 3) * n)
        axes = (
            rng.uniform(0.03, 0.05) * n,
            rng.uniform(0.08, 0.14) * n,
            rng.uniform(0.08, 0.14) * n,
        )
        out.append((rng.uniform(0.5, 1.0), centre, axes, rng.uniform(0, np.pi)))
    return out


def analytic_projections(n: int, angles: np.ndarray, phantom: list[tuple]) -> np.ndarray:
    """Exact line integrals (angle, y, t) at detector pixel centres, t = x cos θ + z sin θ."""
    c = (n - 1) / 2
    t = np.arange(n) - c
    y = np.arange(n) - c
    out = np.zeros((len(angles), n, n))
    for k, theta in enumerate(angles):
        u = np.array([np.sin(theta), np.cos(theta)])  # detector direction in (z, x)
        d = np.array([np.cos(theta), -np.sin(theta)])  # ray direction in (z, x)
        for rho, (z0, y0, x0), (az, ay, ax), phi in phantom:
            rot = np.array([[np.cos(phi), np.sin(phi)], [-np.sin(phi), np.cos(phi)]])
            e = rot @ d
            q0 = rot @ (np.outer(u, t) - np.array([[z0], [x0]]))  # (2, t)
            a = (e[0] / az) ** 2 + (e[1] / ax) ** 2
            b = q0[0] * e[0] / az**2 + q0[1] * e[1] / ax**2  # (t,)
            cc = (q0[0] / az) ** 2 + (q0[1] / ax) ** 2  # (t,)
            cy = ((y - y0) / ay) ** 2  # (y,)
            disc = b[None, :] ** 2 - a * (cc[None, :] + cy[:, None] - 1)
            out[k] += rho * 2 * np.sqrt(np.clip(disc, 0, None)) / a
    return out


def voxelised(n: int, phantom: list[tuple], sub: int = 3) -> np.ndarray:
    """Phantom averaged over sub³ points per voxel (z, y, x)."""
    c = (n - 1) / 2
    offsets = (np.arange(sub) + 0.5) / sub - 0.5
    vol = np.zeros((n, n, n))
    g = np.arange(n) - c
    for oz in offsets:
        for oy in offsets:
            for ox in offsets:
                z, yy, x = np.meshgrid(g + oz, g + oy, g + ox, indexing="ij", sparse=True)
                for rho, (z0, y0, x0), (az, ay, ax), phi in phantom:
                    qz = np.cos(phi) * (z - z0) + np.sin(phi) * (x - x0)
                    qx = -np.sin(phi) * (z - z0) + np.cos(phi) * (x - x0)
                    inside = (qz / az) ** 2 + (qx / ax) ** 2 + ((yy - y0) / ay) ** 2 <= 1
                    vol += rho * inside
    return vol / sub**3


def rel_error(x: np.ndarray, truth: np.ndarray) -> float:
    return float(np.linalg.norm(x - truth) / np.linalg.norm(truth))


def run_astra(data, angles, n, algorithm, iterations, slices, options):
    """ASTRA 2-D CPU reconstruction of the given slices; returns (volume slices, seconds)."""
    import astra

    vol_geom = astra.create_vol_geom(n, n)
    proj_geom = astra.create_proj_geom("parallel", 1.0, n, -angles)  # ours at θ = ASTRA at −θ
    projector = astra.create_projector("linear", proj_geom, vol_geom)
    out = np.zeros((n, len(slices), n), np.float32)
    t0 = time.perf_counter()
    for j, y in enumerate(slices):
        sino = astra.data2d.create("-sino", proj_geom, data[:, y, :])
        rec = astra.data2d.create("-vol", vol_geom, 0.0)
        cfg = astra.astra_dict(algorithm)
        cfg.update(ProjectorId=projector, ProjectionDataId=sino, ReconstructionDataId=rec)
        cfg["option"] = dict(options)
        alg = astra.algorithm.create(cfg)
        astra.algorithm.run(alg, iterations)
        out[:, j, :] = astra.data2d.get(rec)
        astra.algorithm.delete(alg)
        astra.data2d.delete([sino, rec])
    seconds = time.perf_counter() - t0
    astra.projector.delete(projector)
    return out, seconds


def run_ours(data, angles, algorithm, iterations, **options):
    from diffptycho.recon.tomo import reconstruct

    t0 = time.perf_counter()
    res = reconstruct(data, angles, algorithm, iterations, progress=False, **options)
    seconds = time.perf_counter() - t0
    return np.asarray(res.volume), seconds, res.compile_seconds, res


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=128, help="volume edge n (n³ voxels)")
    parser.add_argument("--angles", type=int, default=158, help="angles from −80° to +77°")
    parser.add_argument("--noise", type=float, default=0.01, help="noise σ / max projection")
    parser.add_argument("--relaxation", type=float, default=1.0, help="λ of ART/SART/SIRT")
    parser.add_argument("--art-iterations", type=int, default=20)
    parser.add_argument("--sirt-iterations", type=int, default=100)
    parser.add_argument("--astra-slices", type=int, default=None, help="time ASTRA on K slices")
    parser.add_argument("--astra-ray-art", action="store_true", help="also ASTRA ray-by-ray ART")
    parser.add_argument("--skip", nargs="*", default=[], choices=["art", "sirt", "fbp"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    n = args.size
    angles = np.deg2rad(np.linspace(-80.0, 77.0, args.angles))
    phantom = ellipsoids(n, args.seed)
    t0 = time.perf_counter()
    clean = analytic_projections(n, angles, phantom)
    rng = np.random.default_rng(args.seed + 1)
    data = (clean + args.noise * clean.max() * rng.standard_normal(clean.shape)).astype(np.float32)
    truth = voxelised(n, phantom).astype(np.float32)
    print(
        f"phantom {n}³, {args.angles} angles −80°…+77°, noise σ = {args.noise:.1%} of max, "
        f"λ = {args.relaxation}  (data made in {time.perf_counter() - t0:.1f} s)",
        flush=True,
    )
    slices = np.arange(n)
    if args.astra_slices:
        slices = np.unique(np.linspace(0, n - 1, args.astra_slices).round().astype(int))
    scale = n / len(slices)
    lam = args.relaxation
    order = {"ProjectionOrder": "sequential", "Relaxation": lam}
    rows = []

    def add(label, ours, astra_runs):
        vol, seconds, compile_s, _ = ours
        for a_label, (a_vol, a_seconds) in astra_runs:
            a_time = a_seconds * scale
            rows.append(
                (
                    label,
                    a_label,
                    seconds,
                    compile_s,
                    a_time,
                    a_time / seconds,
                    rel_error(vol[:, slices], truth[:, slices]),
                    rel_error(a_vol, truth[:, slices]),
                )
            )
            print(_format(rows[-1]), flush=True)

    print(_header(), flush=True)
    na = args.angles
    if "art" not in args.skip:
        it = args.art_iterations
        sart_astra = run_astra(data, angles, n, "SART", it * na, slices, order)
        runs = [(f"ASTRA SART-{it}", sart_astra)]
        if args.astra_ray_art:
            ray = run_astra(data, angles, n, "ART", it * na * n, slices, {"Relaxation": lam})
            runs.append((f"ASTRA ray ART-{it}", ray))
        add(f"ART-{it}", run_ours(data, angles, "art", it, relaxation=lam), runs)
        add(f"SART-{it}", run_ours(data, angles, "sart", it, relaxation=lam), runs[:1])
    if "sirt" not in args.skip:
        it = args.sirt_iterations
        sirt = run_astra(data, angles, n, "SIRT", it, slices, {"Relaxation": lam})
        add(
            f"SIRT-{it}",
            run_ours(data, angles, "sirt", it, relaxation=lam),
            [(f"ASTRA SIRT-{it}", sirt)],
        )
    if "fbp" not in args.skip:
        fbp_astra = run_astra(data, angles, n, "FBP", 1, slices, {"FilterType": "ram-lak"})
        ours = run_ours(data, angles, "fbp", 1)
        ours_warm = run_ours(data, angles, "fbp", 1)  # compiled: FBP is one call
        add("FBP", ours, [("ASTRA FBP", fbp_astra)])
        add("FBP (warm)", ours_warm, [("ASTRA FBP", fbp_astra)])
    if args.astra_slices:
        print(f"ASTRA timed on {len(slices)} slices and scaled ×{scale:.2f}; errors on those.")
    return 0


def _header() -> str:
    return (
        f"{'algorithm':<12} {'peer':<20} {'diffptycho s':>12} {'(compile)':>9} {'astra s':>9} "
        f"{'ratio':>6} {'err ours':>9} {'err astra':>9}\n" + "-" * 93
    )


def _format(row) -> str:
    label, peer, ours, compile_s, astra, ratio, err, a_err = row
    return (
        f"{label:<12} {peer:<20} {ours:12.1f} {compile_s:9.1f} {astra:9.1f} {ratio:6.2f} "
        f"{err:9.4f} {a_err:9.4f}"
    )


if __name__ == "__main__":
    sys.exit(main())
