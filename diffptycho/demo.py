"""``diffptycho demo``: the whole story on an embedded small default, in minutes on a laptop.

1. simulate two-energy ptychographic tomography of LiFePO4/FePO4 plates (Fe L3 edge, 708.2 and
   710.2 eV, −80°…+77°, Poisson noise) and write it as CXI;
2. staged reconstruction: RAAR ptychography per scan → OD projections → ART per energy →
   two-energy unmixing per voxel;
3. joint refinement: the full chain (composition → … → far-field intensities) fitted to every
   frame at once, started from the staged result;
4. a table of errors against the truth, an HDF5 results file and PNG figures.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import numpy as np


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "-+-".join("-" * w for w in widths)

    def fmt(r):
        return " | ".join(f"{str(c):<{w}}" for c, w in zip(r, widths, strict=True))

    return "\n".join([fmt(header), line, *(fmt(r) for r in rows)])


def run_demo(
    out: str,
    *,
    ptycho_iterations: int = 30,
    tomo_iterations: int = 20,
    joint_iterations: int = 150,
    seed: int = 6,
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """Run the demo and write its outputs to ``out``.

    Args:
        out: output directory (created).
        ptycho_iterations: RAAR iterations per scan of the staged pipeline.
        tomo_iterations: ART sweeps per energy.
        joint_iterations: Adam steps of the joint refinement.
        seed: seed of phantom, scan and noise.
        progress: show progress bars.

    Returns:
        Errors of each method against the truth (see
        :func:`~diffptycho.analysis.composition.composition_errors`).
    """
    from diffptycho.analysis import figures
    from diffptycho.analysis.composition import composition_errors
    from diffptycho.io.results import write_results
    from diffptycho.recon.joint import joint_reconstruct
    from diffptycho.recon.pipeline import staged_reconstruct
    from diffptycho.sim import datasets

    os.makedirs(out, exist_ok=True)
    t0 = time.perf_counter()
    ds = datasets.simulate_lfp_tomo(seed=seed)
    datasets.write_dataset(os.path.join(out, "lfp_simulated.cxi"), ds)
    t_sim = time.perf_counter() - t0
    truth = ds.truth["composition"]

    t0 = time.perf_counter()
    staged = staged_reconstruct(
        ds.frames,
        ds.positions_px,
        ds.probe,
        ds.energies_ev,
        ds.angles_deg,
        truth.shape[1:],
        ds.truth["spectra"],
        ds.pixel_size_m,
        padding_px=ds.padding_px,
        ptycho_iterations=ptycho_iterations,
        tomo_iterations=tomo_iterations,
        progress=progress,
    )
    t_staged = time.perf_counter() - t0

    t0 = time.perf_counter()
    start = ds.tomo_model(np.clip(staged.composition, 0.0, 1.0))
    joint, history = joint_reconstruct(
        start, ds.frames, joint_iterations, learning_rate=0.03, progress=progress
    )
    t_joint = time.perf_counter() - t0
    comp_joint = np.asarray(joint.composition)

    errors = {
        "staged": composition_errors(staged.composition, truth),
        "staged + joint": composition_errors(comp_joint, truth),
    }
    results = os.path.join(out, "results.h5")
    write_results(
        results,
        {
            "composition_staged": staged.composition,
            "composition_joint": comp_joint,
            "composition_truth": truth,
            "od_projections": staged.od_projections,
            "od_volumes": staged.od_volumes,
            "energies_ev": ds.energies_ev,
            "angles_deg": ds.angles_deg,
        },
        units={
            "composition_staged": "volume fraction",
            "composition_joint": "volume fraction",
            "composition_truth": "volume fraction",
            "od_projections": "1",
            "od_volumes": "1 per voxel",
            "energies_ev": "eV",
            "angles_deg": "deg",
        },
        config={
            "command": "demo",
            "seed": seed,
            "ptycho": {"engine": "raar", "iterations": ptycho_iterations},
            "tomo": {"algorithm": "art", "iterations": tomo_iterations},
            "joint": {"optimizer": "adam", "learning_rate": 0.03, "iterations": joint_iterations},
            "errors": errors,
        },
        history=history.as_arrays(),
        timings={"simulate": t_sim, "staged": t_staged, "joint": t_joint, **staged.seconds},
    )

    y = int(np.argmax(truth.sum(axis=(0, 1, 3))))  # the slice through most material
    panels = {"FePO4 truth": truth[1, :, y]}
    panels["FePO4 staged"] = staged.composition[1, :, y]
    panels["FePO4 staged + joint"] = comp_joint[1, :, y]
    panels["LiFePO4 truth"] = truth[0, :, y]
    panels["LiFePO4 staged"] = staged.composition[0, :, y]
    panels["LiFePO4 staged + joint"] = comp_joint[0, :, y]
    figs = [
        figures.image_grid(
            panels,
            os.path.join(out, "composition_slices.png"),
            columns=3,
            shared_range=(0, 1),
            title=f"volume fractions, slice y = {y} (z down, x across)",
        ),
        figures.loss_curve({"joint refinement": history.loss}, os.path.join(out, "loss.png")),
        figures.image_grid(
            {
                f"OD {e:.1f} eV, θ={ds.angles_deg[a]:.0f}°": staged.od_projections[i, a]
                for i, e in enumerate(ds.energies_ev)
                for a in (0, ds.angles_deg.size // 2)
            },
            os.path.join(out, "od_projections.png"),
            title="optical density from ptychography",
        ),
        figures.image_grid(
            {
                f"{e:.1f} eV, θ={ds.angles_deg[0]:.0f}°": np.log1p(ds.frames[i, 0, 0])
                for i, e in enumerate(ds.energies_ev)
            },
            os.path.join(out, "diffraction.png"),
            cmap="magma",
            title="log(1 + counts)",
        ),
    ]

    n_e, n_a, n_f, fy, fx = ds.frames.shape
    nz, ny, nx = truth.shape[1:]
    print(
        f"\ndiffptycho demo: {n_e} energies × {n_a} angles × {n_f} frames of {fy}×{fx} px; "
        f"volume {nz}×{ny}×{nx} voxels of {ds.pixel_size_m * 1e9:.1f} nm\n"
    )
    header = [
        "method",
        "time s",
        "rel. error",
        "RMSE LFP",
        "RMSE FP",
        "FP-share RMSE",
        "Dice LFP/mix/FP",
    ]
    times = {"staged": t_staged, "staged + joint": t_staged + t_joint}
    rows = [
        [
            name,
            f"{times[name]:.1f}",
            f"{e['relative_error']:.3f}",
            f"{e['rmse_first']:.3f}",
            f"{e['rmse_second']:.3f}",
            f"{e['share_rmse']:.3f}",
            "/".join(f"{e[k]:.2f}" for k in ("dice_first_rich", "dice_mixed", "dice_second_rich")),
        ]
        for name, e in errors.items()
    ]
    print(_table(header, rows))
    print(
        f"\nstages: ptychography {staged.seconds['ptychography']:.1f} s, tomography "
        f"{staged.seconds['tomography']:.1f} s, joint {t_joint:.1f} s "
        f"(loss {history.loss[0]:.4g} → {history.loss[-1]:.4g})"
    )
    print(f"results: {results}\nfigures: {', '.join(figs)}")
    return errors
