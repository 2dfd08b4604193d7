"""Peak memory of joint reconstruction against the number of scans (issue: minibatches).

For each number of angles, a two-energy LFP tilt series is simulated and its frames written to
HDF5; then, in a fresh process each, ``joint_reconstruct`` runs a few Adam steps with a fixed
minibatch of angles, reading the frames (a) lazily from the HDF5 dataset and (b) loaded whole
into memory. The peak resident memory (VmHWM) of each process is reported: with lazy
minibatches it should not grow with the number of scans beyond the model itself.

    PYTHONPATH=. python experiments/joint_memory.py [--angles 24 96] [--size 32]

Measured (24³ voxels, minibatch of 4 angles, 3 Adam steps): 12 angles (2 MB of frames) 363 MB
lazily / 370 MB whole; 96 angles (12 MB) 378 MB lazily / 382 MB whole — the process is
dominated by JAX and the compiled step; frames of that size do not show, and the lazy path
holds only the minibatch.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from experiment_report import peak_rss_mb


def _child(path: str, lazy: bool, steps: int, batch: int) -> None:
    import h5py

    from diffptycho.recon.joint import joint_reconstruct

    with h5py.File(path, "r") as f:
        frames = f["frames"] if lazy else f["frames"][()]
        model = _model_from(path)
        joint_reconstruct(model, frames, steps, angles_per_batch=batch, progress=False)
    print(json.dumps({"peak_mb": peak_rss_mb()}))


def _model_from(path: str):
    import pickle

    with open(path + ".model.pkl", "rb") as fh:
        return pickle.load(fh)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--angles", type=int, nargs="+", default=[24, 96])
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        path, lazy, steps, batch = args.child
        _child(path, lazy == "1", int(steps), int(batch))
        return 0
    import pickle

    import h5py

    from diffptycho.sim import datasets, tiltseries

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.angles:
            geometry = datasets.ScanGeometry().fitted_to((args.size, args.size))
            ds = tiltseries.simulate_lfp_tilt_series(
                (args.size,) * 3,
                angles_deg=np.linspace(-80, 77, n),
                geometry=geometry,
                seed=1,
                known_probe=True,
            )
            path = os.path.join(tmp, f"frames_{n}.h5")
            with h5py.File(path, "w") as f:
                f.create_dataset("frames", data=ds.frames, chunks=(1, 1, *ds.frames.shape[2:]))
            with open(path + ".model.pkl", "wb") as fh:
                pickle.dump(ds.tomo_model(), fh)
            size_mb = ds.frames.nbytes / 2**20
            for lazy in (1, 0):
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--child",
                        path,
                        str(lazy),
                        str(args.steps),
                        str(args.batch),
                    ],  # fmt: skip
                    capture_output=True,
                    text=True,
                    check=True,
                )
                peak = json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]
                rows.append(
                    {"angles": n, "frames_mb": size_mb, "lazy": bool(lazy), "peak_mb": peak}
                )
                print(rows[-1], flush=True)
    print("| angles | frames MB | frames read | peak RSS MB |\n|---|---|---|---|")
    for r in rows:
        how = "lazily per minibatch" if r["lazy"] else "whole"
        print(f"| {r['angles']} | {r['frames_mb']:.0f} | {how} | {r['peak_mb']:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
