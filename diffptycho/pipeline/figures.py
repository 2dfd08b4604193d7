"""PNG figures of a staged run: projections, alignment parameters, volumes and composition."""

from __future__ import annotations

import numpy as np

__all__ = ["pipeline_figures"]


def pipeline_figures(result, series, stem: str) -> list[str]:
    """Write the figures of whatever stages ``result`` holds; returns the written paths.

    Args:
        result: a :class:`~diffptycho.pipeline.runner.PipelineResult`.
        series: its tilt series (energies and angles for the titles).
        stem: path prefix; figures are ``<stem>_<what>.png``.
    """
    from diffptycho.analysis import figures

    out = result.outputs
    written = []
    energies, angles = np.asarray(series.energies_ev), np.asarray(series.angles_deg)
    if "projections" in out:
        od = out["projections"]["optical_density"]
        mid = od.shape[1] // 2
        panels = {
            f"OD {energies[e]:.1f} eV, θ={angles[a]:+.0f}°": od[e, a]
            for e in range(od.shape[0])
            for a in (0, mid)
        }
        written.append(
            figures.image_grid(panels, f"{stem}_projections.png", title="optical density")
        )
    if "alignment" in out:
        written.append(_alignment_figure(out["alignment"], angles, f"{stem}_alignment.png"))
    if "tomography" in out:
        vol = out["tomography"]["od_volumes"]
        y = int(np.argmax(vol.sum(axis=(0, 1, 3))))
        panels = {
            f"OD/voxel {energies[e]:.1f} eV, y={y}": vol[e, :, y] for e in range(vol.shape[0])
        }
        written.append(figures.image_grid(panels, f"{stem}_od_volumes.png", columns=len(panels)))
    if "chemistry" in out:
        comp = out["chemistry"]["composition"]
        y = int(np.argmax(comp.sum(axis=(0, 1, 3))))
        names = result.species or [f"species {s}" for s in range(comp.shape[0])]
        panels = {f"{n}, slice y={y}": comp[s, :, y] for s, n in enumerate(names)}
        written.append(
            figures.image_grid(
                panels,
                f"{stem}_composition.png",
                columns=len(panels),
                shared_range=(0, 1),
                title="volume fractions",
            )
        )
    return written


def _alignment_figure(align: dict, angles: np.ndarray, path: str) -> str:
    from diffptycho.analysis.figures import _pyplot, save_figure

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    shift = align["shift_px"]
    for e in range(shift.shape[0]):
        axes[0].plot(angles, shift[e, :, 0], "o-", ms=3, label=f"y, energy {e}")
        axes[0].plot(angles, shift[e, :, 1], "s--", ms=3, label=f"x, energy {e}")
    axes[0].set(xlabel="angle (°)", ylabel="sample shift (px)", title="shift found per scan")
    axes[0].legend(fontsize=7)
    params = align["angle_params"]
    axes[1].plot(angles, np.rad2deg(params[:, 2]), "o-", ms=3, label="rotation (°)")
    axes[1].plot(angles, 100 * (np.exp(params[:, 3]) - 1), "s-", ms=3, label="scale − 1 (%)")
    axes[1].set(xlabel="angle (°)", title="in-plane rotation and scale")
    axes[1].legend(fontsize=7)
    return save_figure(fig, path)
