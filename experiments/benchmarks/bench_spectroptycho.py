"""V K-edge spectro-ptychography timed whole: diffptycho's 40 energies against PtyLab's.

One simulated V K-edge dataset (``diffptycho simulate vanadium --known-probe``: by default 40
energies from 5420 to 5540 eV, 9 × 9 raster, 16² frames, object pixel λ-dependent), or
``--data FILE.cxi``. Two processes, one per package, each importing its package once:

- **diffptycho**: :func:`diffptycho.pipeline.spectroptycho.run_spectroptycho` on the file, the
  whole workflow (reading, every energy's ptychography, registration of the energies,
  vacuum normalisation, μt and φ stacks), with ``probe_iterations = iterations``, so every
  energy runs the same number of iterations, on the detector's object grid λz/(N·dx)
  (``object_refine = 1``, the grid PtyLab reconstructs on; the pipeline's default 2 costs
  ≈ 4× per energy). Each energy's ptychography call is timed by
  wrapping ``diffptycho.pipeline.stages._solve`` (timing only).
- **PtyLab** (PyPI ``ptylab``): the per-energy work of the same run: for every energy the same
  frames, the same positions (that energy's object pixels, centred on the scan as the
  pipeline centres them; PtyLab rounds them to whole pixels), the same start (object of
  ones, the file's probe scaled to the frames' power exactly as the pipeline scales it), the
  same number of iterations of the same engine family (mPIE), object and probe refined, no
  probe-power constraint (the pipeline imposes none). It is driven by ``ptycho_workers._ptylab``
  (the worker of bench_ptycho.py) called once per energy in one process. PtyLab does no
  registration or stacking; that part of diffptycho's time is reported apart.

One difference in the start: the pipeline starts each energy after the first from the probe
its neighbour refined (as at a beamline), PtyLab each energy from the file's probe of that
energy. Both are the true probe of that energy or close to it on this simulation.

Reported: whole-process time (interpreter start, imports, JIT compilation included), in-process
times, seconds per energy (median over energies after the first, so without compilation), per
iteration, and the object error of every energy's final object against the truth on that
energy's grid (``diffptycho.recon.ptycho.metrics.object_error``, global complex scale and phase
ramp removed, lit region), computed by this script for both packages alike. The truth
T = exp(−μt/2 + iφ) of the file's ``diffptycho_truth`` group (reference grid) is resampled
(linear) onto each energy's object grid at the sample's true place (recorded positions minus
the unrecorded stage offset). Ratios are PtyLab / diffptycho (> 1: diffptycho is faster).

Usage:
    python experiments/benchmarks/bench_spectroptycho.py --iterations 30 --out /tmp/spb/run
    # PtyLab in another interpreter (a venv with --system-site-packages and ptylab):
    python experiments/benchmarks/bench_spectroptycho.py --data v40.cxi --ptylab-python PY
"""

from __future__ import annotations

import time

T_START = time.time()  # before any heavy import: a worker's import time counts

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

ENGINE = "mpie"
"""Engine of both packages: mPIE (diffptycho's key in ``diffptycho.recon.ptycho.ENGINES``)."""


# --------------------------------------------------------------------------- workers


def _diffptycho_worker(cxi: str, iterations: int, out: str) -> dict:
    """Whole :func:`run_spectroptycho` of ``cxi``; saves per-energy objects to ``out``.npz."""
    import diffptycho
    import diffptycho.pipeline.stages as stages
    from diffptycho.pipeline.spectroptycho import SpectroPtychoSettings, run_spectroptycho

    t_import = time.time()
    solve_seconds: list[float] = []
    inner = stages._solve

    def timed_solve(*args, **kwargs):
        t0 = time.perf_counter()
        result = inner(*args, **kwargs)
        solve_seconds.append(time.perf_counter() - t0)
        return result

    stages._solve = timed_solve  # timing only: the pipeline imports _solve at call time
    settings = SpectroPtychoSettings(  # the detector's object grid, as PtyLab's
        engine=ENGINE,
        iterations=iterations,
        probe_iterations=iterations,
        register=True,
        object_refine=1,
    )
    t0 = time.perf_counter()
    result = run_spectroptycho(cxi, settings, progress=False, log=lambda msg: None)
    whole = time.perf_counter() - t0
    np.savez(
        out + ".npz",
        **{f"object_{e:03d}": np.asarray(o) for e, o in enumerate(result.objects)},
        final_loss=result.final_loss,
    )
    return {
        "version": diffptycho.__version__,
        "t_import": t_import,
        "in_process_s": whole,
        "timings": result.timings,
        "energy_s": solve_seconds,
    }


def _ptylab_worker(case_dir: str, iterations: int, out: str) -> dict:
    """PtyLab's mPIE on every energy's case of ``case_dir``, one after the other."""
    from ptycho_workers import Recorder, _ptylab

    with open(os.path.join(case_dir, "cases.json")) as f:
        names = json.load(f)["cases"]
    objects, energy_s, stamps, errors, info = {}, [], [], [], {}
    t_first = None
    for e, name in enumerate(names):
        with np.load(os.path.join(case_dir, name + ".npz")) as z:
            case = {k: z[k] for k in z.files}
        case["ptylab_file"] = os.path.join(case_dir, name + "_ptylab.h5")
        rec = Recorder(case["object_true"], case["region"])
        t0, wall0 = time.perf_counter(), time.time()
        info = _ptylab(case, ENGINE, iterations, None, rec)
        energy_s.append(time.perf_counter() - t0)
        if t_first is None:  # PtyLab is imported inside the first call: not ptychography
            t_first = info["t_import"]
            energy_s[0] -= t_first - wall0
        objects[f"object_{e:03d}"] = rec.last
        stamps.append(rec.stamps)
        errors.append(rec.errors)
    np.savez(out + ".npz", **objects)
    return {
        "version": info.get("version"),
        "t_import": t_first,
        "in_process_s": time.time() - t_first,
        "energy_s": energy_s,
        "stamps": stamps,
        "recorder_errors": errors,
    }


def worker_main(package: str, source: str, iterations: int, out: str) -> int:
    """Entry of a worker process: run one package, write ``out``.json (and .npz)."""
    run = {"diffptycho": _diffptycho_worker, "ptylab": _ptylab_worker}[package]
    result = {"package": package, "t_start": T_START}
    result.update(run(source, iterations, out))
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    result["t_end"] = time.time()
    write_atomic(out + ".json", json.dumps(result))
    return 0


# --------------------------------------------------------------------------- cases and truth


def simulate(path: str, energies: int, size: int, photons: float, seed: int) -> None:
    """The V K-edge dataset as ``diffptycho simulate vanadium --known-probe`` writes it."""
    import dataclasses

    from diffptycho.sim import datasets, spectroptycho

    e_ev = np.linspace(5420.0, 5540.0, energies)
    geometry = dataclasses.replace(spectroptycho.SPECTRO_GEOMETRY, photons_per_frame=photons)
    geometry = spectroptycho.fit_scan_to((size, size), geometry, e_ev)
    ds = spectroptycho.simulate_vanadium_spectroptycho(
        image_shape=(size, size), energies_ev=e_ev, geometry=geometry, seed=seed, known_probe=True
    )
    datasets.write_dataset(path, ds)


def truth_on_grid(
    truth: dict[str, np.ndarray], e: int, shape: tuple[int, int], pixel_m: float, centre_m
) -> np.ndarray:
    """Energy ``e``'s true transmission on an object grid of that energy (complex, (H, W)).

    Object pixel r of a grid of H pixels is lit by the beam at recorded position
    (r − H//2)·pixel + centre (m); there the beam meets the sample at that point minus the
    stage offset; reference-grid pixel j sits at (j − n//2)·reference pixel (m).
    """
    from scipy import ndimage

    ref_px = float(truth["reference_pixel_size_m"])
    n = truth["mu_t"].shape[-2:]
    offset_m = np.asarray(truth["offsets_px"][e]) * ref_px
    idx = [
        ((np.arange(h) - h // 2) * pixel_m + centre_m[a] - offset_m[a]) / ref_px + n[a] // 2
        for a, h in enumerate(shape)
    ]
    grid = np.stack(np.meshgrid(*idx, indexing="ij"))
    mu = ndimage.map_coordinates(truth["mu_t"][e].astype(float), grid, order=1, cval=0.0)
    phi = ndimage.map_coordinates(truth["phase"][e].astype(float), grid, order=1, cval=0.0)
    return np.exp(-mu / 2 + 1j * phi)


def write_ptylab_cases(cxi: str, case_dir: str, threshold: float = 0.3) -> dict:
    """One bench_ptycho-style case per energy (npz + PtyLab HDF5) and the geometry of each.

    Positions, object grid and starting probe are the pipeline's own (centred positions,
    ``object_shape_for``, ``scaled_probe`` of the file's probe); the object grid is made
    square (PtyLab's is) by taking the larger side.
    """
    from ptycho_cases import write_ptylab_input

    from diffptycho.io.cxi import read_cxi_truth
    from diffptycho.physics.scan import object_shape_for
    from diffptycho.pipeline.spectroptycho import _centred_positions, read_energy_scans
    from diffptycho.recon.ptycho.metrics import illuminated_region
    from diffptycho.recon.ptycho.start import scaled_probe

    scans = read_energy_scans(cxi)
    if any(s.illumination is None for s in scans):
        raise ValueError(
            f"{cxi}: an entry has no illumination (probe); this benchmark needs the probe in the "
            "file (simulate with --known-probe) so that both packages start from it"
        )
    truth = read_cxi_truth(cxi)
    positions = _centred_positions(scans)
    metres = np.concatenate([np.asarray(s.positions_m, np.float64) for s in scans])
    centre_m = 0.5 * (metres.min(axis=0) + metres.max(axis=0))
    os.makedirs(case_dir, exist_ok=True)
    names, geometry = [], []
    for e, s in enumerate(scans):
        side = max(object_shape_for(positions[e], s.data.shape[-2:]))
        probe = scaled_probe(s.illumination, s.data, s.mask, 1)
        pixel = float(np.mean(s.object_pixel_size_m))
        region = np.asarray(illuminated_region(probe, positions[e], (side, side), threshold))
        case = {
            "frames": np.asarray(s.data, np.float32),
            "positions_px": positions[e],
            "probe_init": probe[0],
            "object_true": truth_on_grid(truth, e, (side, side), pixel, centre_m).astype(
                np.complex64
            ),
            "region": region,
        }
        name = f"energy_{e:03d}"
        np.savez(os.path.join(case_dir, name + ".npz"), **case)
        write_ptylab_input(os.path.join(case_dir, name + "_ptylab.h5"), case)
        names.append(name)
        geometry.append({"energy_ev": s.energy_ev, "pixel_m": pixel, "frames": len(s.data)})
    with open(os.path.join(case_dir, "cases.json"), "w") as f:
        json.dump({"cases": names, "geometry": geometry}, f)
    return {
        "scans": scans,
        "positions": positions,
        "truth": truth,
        "centre_m": centre_m,
        "geometry": geometry,
    }


def object_errors(
    objects: dict, setup: dict, threshold: float = 0.3
) -> tuple[np.ndarray, np.ndarray]:
    """Per-energy object error of a package's final objects (on their own grids).

    Returns:
        ``object_error`` (relative to ‖T‖) and the same residual relative to the truth's
        contrast ‖T − mean T‖ on the region: this sample is weak (μt ≤ 0.07, |φ| ≤ 0.2 rad), so
        an object of ones already has an ``object_error`` of ~0.05 but a contrast error of ~1.
    """
    import jax.numpy as jnp

    from diffptycho.recon.ptycho.metrics import illuminated_region, object_error
    from diffptycho.recon.ptycho.start import scaled_probe

    out, contrast = [], []
    for e, s in enumerate(setup["scans"]):
        obj = np.asarray(objects[f"object_{e:03d}"])
        shape = obj.shape
        pixel = setup["geometry"][e]["pixel_m"]
        truth = truth_on_grid(setup["truth"], e, shape, pixel, setup["centre_m"])
        probe = scaled_probe(s.illumination, s.data, s.mask, 1)
        region = illuminated_region(probe, setup["positions"][e], shape, threshold)
        out.append(float(object_error(jnp.asarray(obj), jnp.asarray(truth), region)))
        t = truth[np.asarray(region)]
        contrast.append(out[-1] * np.linalg.norm(t) / np.linalg.norm(t - t.mean()))
    return np.asarray(out), np.asarray(contrast)


# --------------------------------------------------------------------------- driver


def launch(python: str, package: str, source: str, iterations: int, out: str, env) -> dict:
    """One worker process; its JSON result plus launch/exit times (whole-process wall time)."""
    cmd = [python, os.path.abspath(__file__), "--worker", package, source, str(iterations), out]
    t_launch = time.time()
    with open(out + ".log", "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, check=False)
    t_exit = time.time()
    if proc.returncode != 0 or not os.path.exists(out + ".json"):
        with open(out + ".log") as f:
            tail = " | ".join(f.read().strip().splitlines()[-3:])
        raise RuntimeError(f"{package} worker failed ({out}.log): {tail}")
    with open(out + ".json") as f:
        result = json.load(f)
    result.update(t_launch=t_launch, t_exit=t_exit)
    return result


def summarise(result: dict, iterations: int, errors: np.ndarray, contrast: np.ndarray) -> dict:
    """Whole-process, in-process, per-energy and per-iteration seconds; object errors."""
    energy_s = np.asarray(result["energy_s"])
    steady = float(np.median(energy_s[1:])) if energy_s.size > 1 else float(energy_s[0])
    per_iter = steady / iterations
    if result.get("stamps"):  # PtyLab: per-iteration stamps of every energy
        per_iter = float(np.median(np.concatenate([np.diff(s) for s in result["stamps"]])))
    return {
        "package": result["package"],
        "version": result.get("version"),
        "energies": int(energy_s.size),
        "process_s": result["t_exit"] - result["t_launch"],
        "import_s": result["t_import"] - result["t_start"],
        "in_process_s": result["in_process_s"],
        "ptychography_s": float(energy_s.sum()),
        "first_energy_s": float(energy_s[0]),
        "s_per_energy": steady,
        "s_per_iter": per_iter,
        "peak_mb": result["peak_rss_mb"],
        "error_median": float(np.median(errors)),
        "error_max": float(np.max(errors)),
        "errors": errors.tolist(),
        "contrast_error_median": float(np.median(contrast)),
        "contrast_error_max": float(np.max(contrast)),
        "contrast_errors": contrast.tolist(),
        "timings": result.get("timings"),
    }


def report(rows: list[dict], iterations: int, info: str) -> str:
    """Markdown table of both packages and the PtyLab / diffptycho ratios."""
    head = (
        "| package | energies | process s | import s | ptychography s (all energies) | "
        "1st energy s | s/energy (median, after 1st) | s/iteration | peak MB | "
        "object error median (max) | contrast error median (max) |"
    )
    lines = [info, "", head, "|" + "---|" * 11]
    for r in rows:
        lines.append(
            f"| {r['package']} {r['version']} | {r['energies']} | {r['process_s']:.1f} | "
            f"{r['import_s']:.1f} | {r['ptychography_s']:.1f} | {r['first_energy_s']:.2f} | "
            f"{r['s_per_energy']:.3f} | {r['s_per_iter'] * 1e3:.1f} ms | {r['peak_mb']:.0f} | "
            f"{r['error_median']:.4f} ({r['error_max']:.4f}) | "
            f"{r['contrast_error_median']:.3f} ({r['contrast_error_max']:.3f}) |"
        )
    ours = next(r for r in rows if r["package"] == "diffptycho")
    timings = ours["timings"] or {}
    lines.append("")
    lines.append(
        "diffptycho in-process: "
        + ", ".join(f"{k} {v:.2f} s" for k, v in timings.items())
        + f" (whole run_spectroptycho {ours['in_process_s']:.1f} s)"
    )
    for r in rows:
        if r is ours:
            continue
        lines.append(
            f"ratio {r['package']} / diffptycho: whole process "
            f"{r['process_s'] / ours['process_s']:.2f}×, per-energy ptychography of all "
            f"energies {r['ptychography_s'] / ours['ptychography_s']:.2f}×, per energy "
            f"(steady) {r['s_per_energy'] / ours['s_per_energy']:.2f}×, per iteration "
            f"{r['s_per_iter'] / ours['s_per_iter']:.2f}× (diffptycho's whole process includes "
            "its registration and stacks, which PtyLab does not do)"
        )
    return "\n".join(lines)


def write_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (no half-written file)."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", help="spectro-ptychography CXI with its probe (default: simulate)"
    )
    parser.add_argument("--energies", type=int, default=40, help="energies to simulate")
    parser.add_argument("--size", type=int, default=32, help="simulated image edge (ref. pixels)")
    parser.add_argument("--photons", type=float, default=1e5, help="photons per frame (simulated)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--iterations", type=int, default=30, help="mPIE iterations per energy")
    parser.add_argument("--out", default="bench_spectroptycho_out", help="work/output directory")
    parser.add_argument(
        "--ptylab-python",
        default=sys.executable,
        help="Python interpreter that has PtyLab (e.g. a venv's bin/python)",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="threads per package (0: each package's default)"
    )
    args = parser.parse_args(argv)
    if args.iterations < 1:
        raise ValueError(f"--iterations {args.iterations}: expected an integer ≥ 1")
    from bench_ptycho import worker_env

    check = subprocess.run(
        [args.ptylab_python, "-c", "import PtyLab"], capture_output=True, text=True, check=False
    )
    if check.returncode != 0:
        raise RuntimeError(
            f"--ptylab-python {args.ptylab_python}: cannot import PtyLab there "
            f"({check.stderr.strip().splitlines()[-1:]}); pip install ptylab, or point "
            "--ptylab-python at an interpreter that has it"
        )

    os.makedirs(args.out, exist_ok=True)
    cxi = args.data
    if cxi is None:
        cxi = os.path.join(args.out, f"vanadium_{args.energies}.cxi")
        t0 = time.perf_counter()
        simulate(cxi, args.energies, args.size, args.photons, args.seed)
        print(f"simulated {cxi} in {time.perf_counter() - t0:.1f} s")
    elif not os.path.exists(cxi):
        raise FileNotFoundError(f"--data {cxi}: no such file")
    case_dir = os.path.join(args.out, "ptylab_cases")
    setup = write_ptylab_cases(cxi, case_dir)
    env = worker_env(args.threads, probe_power=False)
    load = os.getloadavg()
    results = [
        launch(sys.executable, "diffptycho", cxi, args.iterations, f"{args.out}/diffptycho", env),
        launch(args.ptylab_python, "ptylab", case_dir, args.iterations, f"{args.out}/ptylab", env),
    ]
    rows = []
    for r in results:
        with np.load(os.path.join(args.out, r["package"] + ".npz")) as z:
            errors, contrast = object_errors({k: z[k] for k in z.files}, setup)
        rows.append(summarise(r, args.iterations, errors, contrast))
    s0 = setup["scans"][0]
    info = (
        f"{len(setup['scans'])} energies ({setup['geometry'][0]['energy_ev']:.0f}–"
        f"{setup['geometry'][-1]['energy_ev']:.0f} eV), {len(s0.data)} frames of "
        f"{s0.data.shape[-2]}×{s0.data.shape[-1]} px per energy, {args.iterations} mPIE "
        f"iterations per energy (object + probe), threads per package: {args.threads or 'default'}"
        f"; {platform.platform()}, {os.cpu_count()} CPUs, load average {load[0]:.1f} at start, "
        f"{os.getloadavg()[0]:.1f} at end; data {cxi}"
    )
    text = report(rows, args.iterations, info)
    print(text)
    summary = {"info": info, "iterations": args.iterations, "rows": rows}
    write_atomic(os.path.join(args.out, "summary.json"), json.dumps(summary, indent=1))
    write_atomic(os.path.join(args.out, "summary.md"), text + "\n")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        sys.exit(worker_main(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]))
    sys.exit(main())
