"""Figures of the chemistry workflows (PNG, matplotlib Agg), as scientists read them.

Correlation plot OD(E1) vs OD(E2) with the end-member lines, the polar-angle histogram with its
two-Gaussian fit on a log axis, phase maps (study colours: first-rich red, mixed green,
second-rich blue), particle activity against volume and facet area with binomial error bars,
LCF weight and R-factor maps, and the agreement of two chemistry maps.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from diffptycho.analysis.figures import save_figure

__all__ = [
    "PHASE_COLOURS",
    "activity_plot",
    "agreement_plot",
    "correlation_plot",
    "lcf_maps_plot",
    "phase_map_plot",
    "polar_histogram_plot",
    "spectra_plot",
]

PHASE_COLOURS = {-1: "#ffffff", 0: "#d62728", 1: "#2ca02c", 2: "#1f77b4"}
"""Colour of each phase class: empty white, first-rich red, mixed green, second-rich blue."""


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def correlation_plot(
    od_e1,
    od_e2,
    path: str | os.PathLike,
    *,
    matrix=None,
    mask=None,
    names: Sequence[str] = ("first", "second"),
    energies_ev: Sequence[float] = (708.2, 710.2),
    bounds: Sequence[float] = (0.3, 0.7),
) -> str:
    """2-D histogram of OD(E1) vs OD(E2) per voxel, with end-member and phase-boundary lines.

    Args:
        od_e1: OD at E1 (…).
        od_e2: OD at E2 (…).
        path: PNG to write.
        matrix: reference matrix I (2, 2); draws each end member's line OD₂/OD₁ = I₁ⱼ/I₀ⱼ and
            dashed lines at the shares ``bounds`` of the first member.
        mask: voxels to include (…); default all finite.
        names: end-member names for the legend.
        energies_ev: (E1, E2) in eV, for the axis labels.
        bounds: shares of the first member drawn as phase boundaries.

    Returns:
        The written path.
    """
    from matplotlib.colors import LogNorm

    from diffptycho.recon.chem.two_energy import fraction_to_polar_angle

    plt = _pyplot()
    a, b = np.asarray(od_e1, float).ravel(), np.asarray(od_e2, float).ravel()
    keep = np.isfinite(a) & np.isfinite(b)
    if mask is not None:
        keep &= np.asarray(mask, bool).ravel()
    a, b = a[keep], b[keep]
    fig, ax = plt.subplots(figsize=(4.6, 4.0))
    top = float(np.percentile(np.concatenate([a, b]), 99.9)) * 1.1 if a.size else 1.0
    if a.size:
        h = ax.hist2d(a, b, bins=150, range=[[0, top], [0, top]], norm=LogNorm(), cmap="viridis")
        fig.colorbar(h[3], ax=ax, label="voxels (pixels)")
    line = np.array([0.0, top])
    if matrix is not None:
        m = np.asarray(matrix, float)
        for j, colour in zip(range(2), ("#d62728", "#1f77b4"), strict=True):
            angle = np.degrees(np.arctan2(m[1, j], m[0, j]))
            slope = m[1, j] / m[0, j]
            ax.plot(line, slope * line, color=colour, lw=1.5, label=f"{names[j]} ({angle:.1f}°)")
        for f in bounds:
            t = float(fraction_to_polar_angle(f, m))
            ax.plot(line, np.tan(t) * line, "k--", lw=0.8)
        ax.legend(fontsize=8, loc="upper left")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel(f"OD at {energies_ev[0]:g} eV")
    ax.set_ylabel(f"OD at {energies_ev[1]:g} eV")
    return save_figure(fig, path)


def polar_histogram_plot(
    fit, path: str | os.PathLike, *, matrix=None, bounds: Sequence[float] = (0.3, 0.7)
) -> str:
    """Polar-angle histogram on a log axis with the two fitted Gaussians and their sum.

    Args:
        fit: a :class:`~diffptycho.recon.chem.two_energy.TwoGaussianFit`.
        path: PNG to write.
        matrix: reference matrix; shades the first-rich / mixed / second-rich angle ranges.
        bounds: shares of the first member at the phase boundaries.

    Returns:
        The written path.
    """
    from diffptycho.recon.chem.two_energy import fraction_to_polar_angle

    plt = _pyplot()
    edges, counts = fit.bin_edges_deg, fit.counts
    fine = np.linspace(edges[0], edges[-1], 800)
    parts = fit.curve(fine)
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    ax.stairs(np.maximum(counts, 0.5), edges, color="0.4", label="voxels", baseline=0.5)
    for k, colour in enumerate(("m", "c")):
        label = f"{fit.centres_deg[k]:.2f}° ± {fit.sigmas_deg[k]:.2f}°"
        if np.isfinite(fit.fraction_first[k]):
            label += f"  (f = {fit.fraction_first[k]:.2f} ± {fit.fraction_error[k]:.2f})"
        ax.plot(fine, parts[k], colour, lw=1.2, label=label)
    ax.plot(fine, parts.sum(0), "k", lw=1.0, label="sum")
    if matrix is not None:
        t_hi, t_lo = (float(np.degrees(fraction_to_polar_angle(f, matrix))) for f in bounds)
        lo_a, hi_a = sorted((t_lo, t_hi))
        ax.axvspan(edges[0], lo_a, color="#d62728", alpha=0.07)
        ax.axvspan(lo_a, hi_a, color="#2ca02c", alpha=0.07)
        ax.axvspan(hi_a, edges[-1], color="#1f77b4", alpha=0.07)
    ax.set_yscale("log")
    ax.set_ylim(0.5, max(2.0, counts.max() * 3))
    ax.set_xlim(edges[0], edges[-1])
    ax.set_xlabel("polar angle atan2(OD(E2), OD(E1)) (°)")
    ax.set_ylabel("voxels per bin")
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def phase_map_plot(
    maps: Mapping[str, np.ndarray],
    path: str | os.PathLike,
    *,
    names: Sequence[str] = ("first-rich", "mixed", "second-rich"),
    columns: int = 3,
) -> str:
    """Phase-class maps (−1 empty, 0 first-rich, 1 mixed, 2 second-rich) with a legend.

    Args:
        maps: title → 2-D class map (e.g. slices of a volume, or truth vs result).
        path: PNG to write.
        names: names of classes 0, 1, 2.
        columns: panels per row.

    Returns:
        The written path.
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    plt = _pyplot()
    cmap = ListedColormap([PHASE_COLOURS[k] for k in (-1, 0, 1, 2)])
    n = len(maps)
    cols = min(columns, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 3.0 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (title, img) in zip(axes.ravel(), maps.items(), strict=False):
        ax.imshow(np.asarray(img), cmap=cmap, vmin=-1.5, vmax=2.5, interpolation="nearest")
        ax.set_title(title, fontsize=9)
    handles = [Patch(color=PHASE_COLOURS[k], label=names[k]) for k in range(3)]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    return save_figure(fig, path)


def activity_plot(
    table,
    path: str | os.PathLike,
    *,
    thresholds: Sequence[float] = (0.15, 0.25),
    bins: int = 4,
    second_name: str = "FePO4",
) -> str:
    """Particle activity against volume and against facet area.

    Top: FePO4 share of each particle (scatter) with the activity thresholds. Bottom: active
    fraction in quantile bins of the size measure with binomial error bars.

    Args:
        table: a :class:`~diffptycho.analysis.particles.ParticleTable`.
        path: PNG to write.
        thresholds: activity thresholds (share of the second end member).
        bins: number of quantile bins.
        second_name: name of the second end member.

    Returns:
        The written path.
    """
    from diffptycho.analysis.particles import activity_by_bins

    plt = _pyplot()
    measures = {
        "volume (10⁻³ µm³)": np.asarray(table.volume_m3) * 1e21,
        "facet area (10⁻³ µm²)": np.asarray(table.facet_area_m2) * 1e15,
    }
    share = np.asarray(table.share_second)
    fig, axes = plt.subplots(2, 2, figsize=(8.0, 6.0), sharex="col")
    for col, (label, values) in enumerate(measures.items()):
        ax = axes[0, col]
        ax.scatter(values, share, s=12, color="k", alpha=0.7)
        for t, style in zip(thresholds, ("--", ":"), strict=False):
            ax.axhline(t, color="r", ls=style, lw=0.8, label=f"{t:.0%}")
        ax.set_ylabel(f"{second_name} share")
        ax.legend(fontsize=7, title="active above", title_fontsize=7)
        ax = axes[1, col]
        for t, marker in zip(thresholds, ("o", "s"), strict=False):
            if values.size:
                b = activity_by_bins(values, share, t, min(bins, max(values.size, 1)))
                ax.errorbar(
                    b["centres"],
                    b["fraction"],
                    yerr=b["error"],
                    marker=marker,
                    capsize=3,
                    label=f"> {t:.0%} {second_name}",
                )
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel(label)
        ax.set_ylabel("active fraction")
        ax.legend(fontsize=7)
    fig.suptitle(f"{len(share)} particles")
    return save_figure(fig, path)


def lcf_maps_plot(
    weights, r_factor, names: Sequence[str], path: str | os.PathLike, *, title: str | None = None
) -> str:
    """LCF weight maps, the R-factor map and the R-factor distribution.

    Args:
        weights: (reference, y, x) weights.
        r_factor: (y, x) R-factor map (NaN outside the mask).
        names: reference names.
        path: PNG to write.
        title: figure title.

    Returns:
        The written path.
    """
    plt = _pyplot()
    w = np.asarray(weights, float)
    r = np.asarray(r_factor, float)
    n = w.shape[0] + 2
    fig, axes = plt.subplots(1, n, figsize=(3.4 * n, 3.0), layout="constrained")
    finite = r[np.isfinite(r)]
    r_max = float(np.percentile(finite, 99)) if finite.size else None
    for ax, img, label in zip(axes, [*w, r], [*names, "R-factor"], strict=False):
        is_r = label == "R-factor"
        im = ax.imshow(img, cmap="magma" if is_r else "viridis", vmax=r_max if is_r else None)
        ax.set_title(label, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax = axes[-1]
    if finite.size:
        ax.hist(
            finite,
            bins=np.logspace(
                np.log10(max(finite.min(), 1e-6)), np.log10(max(finite.max(), 2e-6)), 60
            ),
            color="0.4",
        )
        ax.set_xscale("log")
        ax.axvline(np.median(finite), color="r", lw=1, label=f"median {np.median(finite):.2g}")
        ax.legend(fontsize=7)
    ax.set_xlabel("R-factor")
    ax.set_ylabel("pixels")
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def agreement_plot(
    map_a, map_b, path: str | os.PathLike, *, labels: Sequence[str] = ("A", "B"), mask=None
) -> str:
    """Two chemistry maps side by side and their pixel-by-pixel scatter with the y = x line.

    Args:
        map_a: first map (y, x), e.g. the LCF share.
        map_b: second map (y, x), e.g. the two-energy share.
        path: PNG to write.
        labels: names of the two maps.
        mask: pixels compared (y, x); default all finite.

    Returns:
        The written path.
    """
    from matplotlib.colors import LogNorm

    plt = _pyplot()
    a, b = np.asarray(map_a, float), np.asarray(map_b, float)
    keep = np.isfinite(a) & np.isfinite(b)
    if mask is not None:
        keep &= np.asarray(mask, bool)
    r = np.corrcoef(a[keep], b[keep])[0, 1] if keep.sum() > 1 else np.nan
    fig, axes = plt.subplots(1, 3, figsize=(11.5, 3.4), layout="constrained")
    for ax, img, label in zip(axes[:2], (a, b), labels, strict=True):
        im = ax.imshow(np.where(keep, img, np.nan), cmap="coolwarm_r", vmin=0, vmax=1)
        ax.set_title(label, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax = axes[2]
    if keep.sum():
        h = ax.hist2d(
            a[keep],
            b[keep],
            bins=60,
            range=[[-0.2, 1.2], [-0.2, 1.2]],
            norm=LogNorm(),
            cmap="viridis",
        )
        fig.colorbar(h[3], ax=ax, label="pixels")
    ax.plot([-0.2, 1.2], [-0.2, 1.2], "k--", lw=0.8)
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.set_title(f"Pearson r = {r:.3f} ({int(keep.sum())} pixels)", fontsize=9)
    return save_figure(fig, path)


def spectra_plot(
    energies_ev,
    curves: Mapping[str, np.ndarray],
    path: str | os.PathLike,
    *,
    bands: Mapping[str, np.ndarray] | None = None,
    markers_ev: Sequence[float] = (),
    ylabel: str = "OD",
    title: str | None = None,
) -> str:
    """Spectra (references, cluster means, fits) against energy, with optional ±1σ bands.

    Args:
        energies_ev: energies in eV (E,).
        curves: label → spectrum (E,); labels starting with "fit" are drawn dashed.
        path: PNG to write.
        bands: label → standard deviation (E,) shaded around the curve of the same label.
        markers_ev: energies marked by vertical dotted lines (e.g. the two-energy pair), eV.
        ylabel: y-axis label.
        title: figure title.

    Returns:
        The written path.
    """
    plt = _pyplot()
    e = np.asarray(energies_ev, float)
    fig, ax = plt.subplots(figsize=(5.6, 3.6))
    for label, y in curves.items():
        y = np.asarray(y, float)
        (line,) = ax.plot(e, y, "--" if label.startswith("fit") else "-", lw=1.2, label=label)
        if bands and label in bands:
            sd = np.asarray(bands[label], float)
            ax.fill_between(e, y - sd, y + sd, color=line.get_color(), alpha=0.15, lw=0)
    for x in markers_ev:
        ax.axvline(x, color="0.5", ls=":", lw=0.8)
    ax.set_xlabel("energy (eV)")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    return save_figure(fig, path)
