"""One reconstruction per process for bench_ptycho.py: diffptycho, pty-chi, PtyLab, FFT floor.

Run as ``python ptycho_workers.py PACKAGE ENGINE CASE.npz ITERATIONS RESULT.json [BATCH
[TARGET]]`` (with a target error, a diffptycho run stops as soon as it reaches it).
Each worker imports only its own package (a peer never pays for JAX, nor diffptycho for
torch), reads the shared case file, starts from the same object (ones) and probe, refines
object and probe, and records after every iteration a wall-clock stamp and the object error
against the truth. The error evaluation is timed and subtracted from the stamps. At exit it
writes the stamps, errors, import/setup times and its peak resident memory (ru_maxrss) as JSON.

The object error is the same for every package: min_c ‖c·O − O_true‖ / ‖O_true‖ on the
illuminated region (global complex scale removed), i.e.
``diffptycho.recon.ptycho.metrics.object_error`` written in NumPy so that the peers' processes
do not import JAX. Every package places a patch of the probe's size with its top-left corner at
``H//2 − py//2 + y`` for integer positions (y, x) on an even square object, so the objects are
compared on the same grid without registration.
"""

from __future__ import annotations

import time

T_START = time.time()  # before any heavy import: import time counts

import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import types  # noqa: E402

import numpy as np  # noqa: E402


def relative_error(estimate: np.ndarray, truth: np.ndarray, region: np.ndarray) -> float:
    """Object error after removing the global complex scale, on ``region``."""
    e, t = np.asarray(estimate)[region].astype(np.complex128), truth[region]
    c = np.vdot(e, t) / max(np.vdot(e, e).real, 1e-30)
    return float(np.linalg.norm(c * e - t) / np.linalg.norm(t))


def probe_power(case) -> float | None:
    """Probe power Σ|P|² (photons per frame) to impose, or None (``BENCH_PROBE_POWER`` unset/0).

    The largest frame sum, as PtyLab's ``probePowerCorrectionSwitch`` uses; every package
    imposes it with its own mechanism once per iteration.
    """
    if os.environ.get("BENCH_PROBE_POWER", "0") == "0":
        return None
    return float(case["frames"].sum(axis=(1, 2)).max())


class TargetReached(Exception):
    """Raised by :class:`Recorder` to stop a run once the object error reaches the target."""


class Recorder:
    """Per-iteration stamps (s since the epoch) and errors, error time excluded.

    With a ``target`` error, the call that first reaches it raises :class:`TargetReached`.
    """

    def __init__(self, truth, region, target: float | None = None):
        self.truth, self.region, self.target = truth, region, target
        self.stamps: list[float] = []
        self.errors: list[float] = []
        self.excluded = 0.0
        self.last = None

    def __call__(self, obj) -> None:
        now = time.time()
        self.last = obj
        self.stamps.append(now - self.excluded)
        self.errors.append(relative_error(obj, self.truth, self.region))
        self.excluded += time.time() - now
        if self.target is not None and self.errors[-1] <= self.target:
            raise TargetReached


def _diffptycho(case, engine: str, iterations: int, batch: int | None, rec: Recorder) -> dict:
    import jax
    import jax.numpy as jnp

    import diffptycho

    if os.environ.get("BENCH_COMPILE_CACHE"):  # as the command line sets it up
        from diffptycho._runtime import enable_compilation_cache

        enable_compilation_cache(os.environ["BENCH_COMPILE_CACHE"])
    from diffptycho.models import Ptycho2D
    from diffptycho.recon.ptycho.constraints import Refinement
    from diffptycho.recon.ptycho.data import PtychoData
    from diffptycho.recon.ptycho.start import make_engine
    from diffptycho.recon.solve import solve

    t_import = time.time()
    model = Ptycho2D(
        object=jnp.ones(case["object_true"].shape, jnp.complex64),
        probe=jnp.asarray(case["probe_init"][None]),
        positions=jnp.asarray(case["positions_px"].astype(np.float32)),
    )
    options = {"refinement": Refinement(probe=True, probe_power=probe_power(case))}
    if batch:
        options["batch_size"] = batch
    solver = make_engine(engine, **options)
    data = PtychoData(jnp.asarray(case["frames"]))
    t_setup = time.time()
    try:
        solve(
            model,
            solver,
            data,
            iterations,
            progress=False,
            callback=lambda it, m, loss: rec(np.asarray(m.object)),
        )
    except TargetReached:
        pass
    return {
        "version": diffptycho.__version__,
        "backend": f"jax {jax.__version__} {jax.default_backend()}",
        "t_import": t_import,
        "t_setup": t_setup,
        "solver": type(solver).__name__,
        "target": rec.target,
    }


def _torchvision_shim(torch) -> str:
    """pty-chi imports torchvision for one Gaussian blur; PyPI's torchvision needs CUDA torch."""
    try:
        import torchvision  # noqa: F401

        return ""
    except (ImportError, RuntimeError, OSError) as err:
        reason = f"{type(err).__name__}: {err}"
    for name in [k for k in sys.modules if k.startswith("torchvision")]:
        del sys.modules[name]

    class GaussianBlur:
        def __init__(self, kernel_size, sigma):
            self.size, self.sigma = kernel_size, sigma

        def __call__(self, img):
            out = img
            for axis, (n, s) in enumerate(zip(self.size, self.sigma, strict=True)):
                x = torch.arange(n, dtype=img.dtype) - (n - 1) / 2
                k = torch.exp(-(x**2) / (2 * s**2))
                k = (k / k.sum()).reshape([1, 1] + ([n, 1] if axis == 0 else [1, n]))
                pad = [0, 0, n // 2, n // 2] if axis == 0 else [n // 2, n // 2, 0, 0]
                out = torch.nn.functional.conv2d(
                    torch.nn.functional.pad(out, pad, mode="reflect"), k
                )
            return out

    pkg = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    transforms.GaussianBlur = GaussianBlur
    pkg.transforms = transforms
    sys.modules.update({"torchvision": pkg, "torchvision.transforms": transforms})
    return f"torchvision unusable here ({reason}); pty-chi's one GaussianBlur import shimmed"


def _ptychi(case, engine: str, iterations: int, batch: int | None, rec: Recorder) -> dict:
    import torch

    if os.environ.get("BENCH_THREADS", "0") != "0":
        torch.set_num_threads(int(os.environ["BENCH_THREADS"]))

    note = _torchvision_shim(torch)
    import ptychi
    import ptychi.api as api
    from ptychi.api.task import PtychographyTask

    t_import = time.time()
    obj_shape = case["object_true"].shape
    fy, fx = case["frames"].shape[-2:]
    # pty-chi 2.2.0's generic PIEOptions fails on a single-mode probe (a shape error in
    # PIEReconstructor.apply_updates); its ePIE and rPIE variants run
    kinds = {"lsqml": api.LSQMLOptions, "epie": api.EPIEOptions, "rpie": api.RPIEOptions}
    options = kinds[engine]()
    options.reconstructor_options.default_device = api.Devices.CPU
    options.reconstructor_options.num_epochs = iterations
    if batch:
        options.reconstructor_options.batch_size = batch
    options.data_options.fft_shift = True  # our frames are centred
    options.object_options.pixel_size_m = 1.0
    options.object_options.determine_position_origin_coords_by = (
        api.ObjectPosOriginCoordsMethods.SPECIFIED
    )
    # pty-chi's patch centre (continuous) is at position + origin, its top-left corner at
    # centre − (p − 1)/2: this origin puts the corner at H//2 − p//2 + y, as ours
    options.object_options.position_origin_coords = np.array(
        [obj_shape[0] // 2 - fy // 2 + (fy - 1) / 2, obj_shape[1] // 2 - fx // 2 + (fx - 1) / 2]
    )
    options.probe_options.optimizable = True
    if probe_power(case) is not None:  # Σ|P|² in pty-chi's units (unnormalised FFT)
        options.probe_options.power_constraint.enabled = True
        options.probe_options.power_constraint.probe_power = probe_power(case) / (fy * fx)
    options.object_options.optimizable = True
    pos = case["positions_px"]
    task = PtychographyTask(
        options,
        diffraction_data=case["frames"],
        object_data=np.ones((1, *obj_shape), np.complex64),
        # pty-chi's far field is an unnormalised FFT: |FFT|² = N·|FFT_ortho|²
        probe_data=(case["probe_init"] / np.sqrt(fy * fx))[None, None].astype(np.complex64),
        probe_position_y_px=pos[:, 0],
        probe_position_x_px=pos[:, 1],
    )
    t_setup = time.time()
    for _ in range(iterations):
        task.run(1)
        rec(task.get_data_to_cpu("object", as_numpy=True)[0])
    return {
        "version": ptychi.__version__,
        "backend": f"torch {torch.__version__}, {torch.get_num_threads()} threads",
        "t_import": t_import,
        "t_setup": t_setup,
        "batch_size": options.reconstructor_options.batch_size,
        "note": note,
    }


def _ptylab(case, engine: str, iterations: int, batch: int | None, rec: Recorder) -> dict:
    from importlib.metadata import version

    from PtyLab import Engines, ExperimentalData, Params, Reconstruction
    from PtyLab.Monitor.Monitor import DummyMonitor

    t_import = time.time()
    exp = ExperimentalData(case["ptylab_file"], "CPM")
    params = Params()
    params.gpuSwitch = False
    # PtyLab's switch sets Σ|P|² to the largest frame sum, the value probe_power() returns
    params.probePowerCorrectionSwitch = probe_power(case) is not None
    recon = Reconstruction(exp, params)
    recon.No = case["object_true"].shape[0]  # our (square, even) grid
    recon.initializeObjectProbe()
    recon.object = np.ones_like(recon.object)
    recon.probe = case["probe_init"].reshape(recon.probe.shape).astype(np.complex64)
    engine_class = {"mpie": Engines.mPIE, "epie": Engines.ePIE}[engine]
    eng = engine_class(recon, exp, params, DummyMonitor())
    eng.numIterations = iterations
    t_setup = time.time()
    if engine == "mpie":
        eng.reconstruct(vis_after_each_iteration=lambda loop, r: rec(r.object[0, 0, 0, 0]))
    else:  # ePIE yields after every position; an iteration ends when the loop index moves
        current = 0
        for loop, _ in eng.reconstruct_stepwise():
            if loop != current:
                rec(recon.object[0, 0, 0, 0])
                current = loop
        rec(recon.object[0, 0, 0, 0])
    return {
        "version": version("ptylab"),
        "backend": "numpy (CPU)",
        "t_import": t_import,
        "t_setup": t_setup,
    }


def _fft_floor(case, engine: str, iterations: int, batch: int | None, rec: Recorder) -> dict:
    """Seconds for one forward + one inverse FFT of every position's frame (per mode)."""
    import jax
    import jax.numpy as jnp

    n, fy, fx = case["frames"].shape
    waves = jnp.asarray(np.exp(1j * np.random.default_rng(0).random((n, fy, fx))), jnp.complex64)
    pair = jax.jit(lambda w: jnp.fft.ifft2(jnp.fft.fft2(w, norm="ortho"), norm="ortho"))
    pair(waves).block_until_ready()
    times = []
    for _ in range(max(5, iterations)):
        t0 = time.perf_counter()
        pair(waves).block_until_ready()
        times.append(time.perf_counter() - t0)
    return {"fft_pair_seconds": float(np.median(times)), "backend": f"jax {jax.__version__}"}


WORKERS = {"diffptycho": _diffptycho, "ptychi": _ptychi, "ptylab": _ptylab, "fft": _fft_floor}


def main(argv: list[str]) -> int:
    package, engine, case_path, iterations, out = argv[:5]
    batch = int(argv[5]) if len(argv) > 5 and argv[5] != "0" else None
    target = float(argv[6]) if len(argv) > 6 else None  # stop once the error reaches it
    with np.load(case_path) as z:
        case = {k: z[k] for k in z.files}
    case["ptylab_file"] = os.path.splitext(case_path)[0] + "_ptylab.h5"
    rec = Recorder(case["object_true"], case["region"], target)
    result = {"package": package, "engine": engine, "t_start": T_START}
    result.update(WORKERS[package](case, engine, int(iterations), batch, rec))
    result.update(
        stamps=rec.stamps,
        errors=rec.errors,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        t_end=time.time(),
    )
    result["probe_power"] = probe_power(case)
    with open(out, "w") as f:
        json.dump(result, f)
    if rec.last is not None and os.environ.get("BENCH_SAVE_OBJECT", "0") != "0":
        np.save(os.path.splitext(out)[0] + "_object.npy", rec.last)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
