"""``diffptycho demo``: the whole story on an embedded small default, in minutes on a laptop.

It goes through the same code as a user with an experiment's files:

1. ``simulate``: a two-energy ptychographic tilt series of LiFePO4/FePO4 plates (Fe L3 edge,
   708.2 and 710.2 eV, −80°…+77°, Poisson noise) as an experiment records it — sample on a
   2× finer grid, unrecorded sample shifts in every scan, no probe in the file — written as CXI
   with a references CSV;
2. ``spectrotomo`` (:func:`~diffptycho.pipeline.run_pipeline`): ptychography per scan with
   probe retrieval → OD projections → registration of the energies → reprojection alignment
   → ART per energy → two-energy unmixing per voxel;
3. joint refinement: the full chain fitted to every frame at once, started from the staged
   result (its composition, retrieved probes, positions and alignment);
4. a table of errors against the truth (after removing the volume's arbitrary position), the
   results files and PNG figures.
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
    joint_iterations: int = 32,
    misalign_px: float = 1.0,
    seed: int = 6,
    progress: bool = True,
    volume_size: int = 32,
    n_angles: int = 24,
    scan_shape: tuple[int, int] = (9, 9),
    align_loops: int | None = None,
) -> dict[str, dict[str, float]]:
    """Run the demo and write its outputs to ``out``.

    Args:
        out: output directory (created).
        ptycho_iterations: ptychography iterations per scan (3× for the first scan of each
            energy, which retrieves the probe).
        tomo_iterations: ART sweeps per energy.
        joint_iterations: Gauss–Newton steps of the joint refinement.
        misalign_px: standard deviation of the unrecorded sample shift of each scan, px.
        seed: seed of phantom, scan, shifts and noise.
        progress: show progress bars.
        volume_size: edge of the cubic model volume in voxels (6.7 nm each).
        n_angles: tilt angles, evenly spread over the study's −80°…+77°.
        scan_shape: raster of probe positions per scan (rows, columns), 3 px apart; it must
            cover ``volume_size`` (the default 9 × 9 covers 32 voxels with the 16 px probe).
        align_loops: most reprojection-alignment loops (default: the pipeline's).

    Returns:
        Errors of each method against the truth (see
        :func:`~diffptycho.analysis.composition.composition_errors`), after
        :func:`~diffptycho.analysis.composition.register_to_truth`.
    """
    from diffptycho.analysis import figures
    from diffptycho.analysis.alignment_errors import scan_shift_error_px
    from diffptycho.analysis.composition import composition_errors, register_to_truth
    from diffptycho.io.results import read_results, write_results
    from diffptycho.pipeline import (
        AlignmentSettings,
        JointSettings,
        PipelineConfig,
        PtychographySettings,
        TomographySettings,
        run_pipeline,
    )
    from diffptycho.sim import datasets, tiltseries

    os.makedirs(out, exist_ok=True)
    t0 = time.perf_counter()
    ds = tiltseries.simulate_lfp_tilt_series(
        volume_shape=(volume_size,) * 3,
        angles_deg=np.linspace(*tiltseries.STUDY_ANGLES_DEG, n_angles),
        geometry=datasets.ScanGeometry(scan_shape=scan_shape),
        seed=seed,
        shift_sigma_px=misalign_px,
    )
    cxi = os.path.join(out, "lfp_tilt_series.cxi")
    refs = os.path.join(out, "lfp_references.csv")
    datasets.write_dataset(cxi, ds)
    datasets.write_lfp_references(refs)
    t_sim = time.perf_counter() - t0
    truth = ds.truth["composition"]

    t0 = time.perf_counter()
    config = PipelineConfig(
        input=(cxi,),
        output=os.path.join(out, "volumes.h5"),
        references=refs,
        mode="joint",
        ptychography=PtychographySettings(iterations=ptycho_iterations),
        alignment=AlignmentSettings(
            method="reprojection",
            **({} if align_loops is None else {"max_loops": align_loops}),
        ),
        tomography=TomographySettings(iterations=tomo_iterations, volume_shape=truth.shape[1:]),
        joint=JointSettings(iterations=joint_iterations),
    )
    if os.path.exists(config.output):
        os.remove(config.output)  # a fresh demo, not a resumed one
    run = run_pipeline(config, progress=progress, log=lambda line: None)
    t_joint = run.seconds["joint"]
    t_staged = sum(v for k, v in run.seconds.items() if k != "joint")
    joint_loss = read_results(config.output)["history"]["joint/loss"]

    comp_staged, gauge = register_to_truth(run.outputs["chemistry"]["composition"], truth)
    comp_joint, _ = register_to_truth(run.outputs["joint"]["composition"], truth)
    errors = {
        "staged": composition_errors(comp_staged, truth),
        "staged + joint": composition_errors(comp_joint, truth),
    }
    shift_rms = scan_shift_error_px(
        run.outputs["alignment"]["params"],
        ds.truth["scan_shift_px"],
        np.deg2rad(ds.angles_deg),
        run.outputs["projections"]["optical_density"].shape[-2:],
    )
    results = os.path.join(out, "results.h5")
    write_results(
        results,
        {
            "composition_staged": comp_staged,
            "composition_joint": comp_joint,
            "composition_truth": truth,
            "energies_ev": ds.energies_ev,
            "angles_deg": ds.angles_deg,
            "volume_shift_voxels": gauge,
        },
        units={
            "composition_staged": "volume fraction",
            "composition_joint": "volume fraction",
            "composition_truth": "volume fraction",
            "energies_ev": "eV",
            "angles_deg": "degree",
            "volume_shift_voxels": "voxel",
        },
        config={
            "command": "demo",
            "seed": seed,
            "misalign_px": misalign_px,
            "pipeline": config.to_dict(),
            "errors": errors,
            "shift_rms_px": shift_rms,
        },
        history={"joint_loss": joint_loss},
        timings={"simulate": t_sim, "staged": t_staged, "joint": t_joint, **run.seconds},
    )

    y = int(np.argmax(truth.sum(axis=(0, 1, 3))))  # the slice through most material
    panels = {}
    for s, name in enumerate(run.species):
        panels[f"{name} truth"] = truth[s, :, y]
        panels[f"{name} staged"] = comp_staged[s, :, y]
        panels[f"{name} staged + joint"] = comp_joint[s, :, y]
    figs = [
        figures.image_grid(
            panels,
            os.path.join(out, "composition_slices.png"),
            columns=3,
            shared_range=(0, 1),
            title=f"volume fractions, slice y = {y} (z down, x across)",
        ),
        figures.loss_curve({"joint refinement": joint_loss}, os.path.join(out, "loss.png")),
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
        f"\ndiffptycho demo: {n_e} energies × {n_a} angles × {n_f} frames of {fy}×{fx} px, "
        f"probe unknown, scans misaligned by σ = {misalign_px:g} px; volume {nz}×{ny}×{nx} "
        f"voxels of {ds.pixel_size_m * 1e9:.1f} nm\n"
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
    stage_times = ", ".join(f"{k} {v:.1f} s" for k, v in run.seconds.items())
    print(
        f"\nscan shifts found to {shift_rms:.3f} px RMS (volume position matched); stages: "
        f"{stage_times} (joint loss {joint_loss[0]:.4g} → {joint_loss[-1]:.4g})"
    )
    print(f"results: {results}, {config.output}\nfigures: {', '.join(figs)}")
    return errors
