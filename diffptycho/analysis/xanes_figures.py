"""Figures of the XANES workflow: descriptor maps, cluster map, elbow, cluster spectra, densities.

All are PNGs written atomically through :func:`diffptycho.analysis.figures.save_figure`;
masked pixels (NaN, label −1) are drawn white.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from diffptycho.analysis.clustering import ClusterAnalysis, PCAResult, descriptor_densities
from diffptycho.analysis.figures import _pyplot, save_figure

__all__ = [
    "DESCRIPTOR_LABELS",
    "cluster_map",
    "cluster_spectra",
    "descriptor_density_plot",
    "descriptor_maps",
    "elbow_plot",
    "pca_plot",
    "save_all",
]

DESCRIPTOR_LABELS = {
    "edge_jump": "edge jump Δμt",
    "edge_energy_ev": "edge energy (eV)",
    "pre_edge_intensity": "pre-edge PE (μt·eV)",
    "pre_edge_ratio": "PE/Δμt (eV)",
    "n_absorber": "N_V (atoms/m²)",
    "electrons_per_absorber": "Re N_e / N_V (e/V)",
}
"""Panel titles with units of the descriptors shown by :func:`descriptor_maps`."""


def _colors(k: int):
    plt = _pyplot()
    return plt.get_cmap("tab10")(np.arange(k) % 10)


def _robust_range(img) -> tuple[float, float]:
    """2nd–98th percentile of the finite values, so that a few outliers do not wash out a map."""
    v = np.asarray(img, float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(v, [2, 98])
    return (float(lo), float(hi)) if hi > lo else (float(lo) - 0.5, float(hi) + 0.5)


def descriptor_maps(
    descriptors: Mapping[str, np.ndarray],
    path: str | os.PathLike,
    names: Sequence[str] = tuple(DESCRIPTOR_LABELS),
) -> str:
    """Maps of the chosen descriptors (those present), one panel each, 2–98 % colour range.

    Args:
        descriptors: ``{name: map (y, x)}``, NaN where masked.
        path: PNG to write.
        names: which descriptors to show, in order.

    Returns:
        The written path.
    """
    plt = _pyplot()
    panels = {DESCRIPTOR_LABELS.get(n, n): descriptors[n] for n in names if n in descriptors}
    if not panels:
        raise ValueError(f"names: none of {list(names)} in descriptors {sorted(descriptors)}")
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.ravel()[len(panels) :]:
        ax.axis("off")
    for ax, (title, img) in zip(axes.ravel(), panels.items(), strict=False):
        vmin, vmax = _robust_range(img)
        im = ax.imshow(np.asarray(img, float), vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        bar.formatter.set_useOffset(False)
        bar.update_ticks()
    fig.suptitle("XANES descriptors (white: masked)")
    return save_figure(fig, path)


def cluster_map(
    labels: np.ndarray,
    k: int,
    path: str | os.PathLike,
    truth: np.ndarray | None = None,
    fractions: np.ndarray | None = None,
) -> str:
    """Cluster map (−1 white), optionally beside the true domains.

    Args:
        labels: cluster labels (y, x), −1 masked.
        k: number of clusters.
        path: PNG to write.
        truth: true domain labels (y, x), −1 background, for simulations.
        fractions: cluster fractions (k,) shown in the legend.

    Returns:
        The written path.
    """
    plt = _pyplot()
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    panels = [("clusters", np.asarray(labels))]
    if truth is not None:
        panels.append(("true domains", np.asarray(truth)))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4), squeeze=False)
    top = max(k, int(np.max(panels[-1][1], initial=0)) + 1)
    cmap = ListedColormap(np.vstack([[1, 1, 1, 1], _colors(top)]))
    for ax, (title, img) in zip(axes[0], panels, strict=True):
        ax.imshow(img, cmap=cmap, vmin=-1.5, vmax=top - 0.5, interpolation="nearest")
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
    share = [""] * k if fractions is None else [f" ({100 * f:.1f} %)" for f in fractions]
    handles = [Patch(color=_colors(k)[j], label=f"cluster {j}{share[j]}") for j in range(k)]
    axes[0, 0].legend(handles=handles, fontsize=7, loc="lower left", framealpha=0.8)
    return save_figure(fig, path)


def elbow_plot(ks, inertias, k: int, path: str | os.PathLike) -> str:
    """Inertia W(k) on a log axis, the chord of the (log) elbow rule and the chosen k.

    Args:
        ks: k values.
        inertias: W(k) (standardised-feature units, × sample weights).
        k: the chosen k.
        path: PNG to write.

    Returns:
        The written path.
    """
    plt = _pyplot()
    ks = np.asarray(ks)
    w = np.asarray(inertias, float)
    w = np.maximum(w, 1e-12 * w[0]) if w.size else w  # a perfect split has W = 0
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    ax.semilogy(ks, w, "o-", label="W(k)")
    if ks.size:
        ax.semilogy([ks[0], ks[-1]], [w[0], w[-1]], "--", color="gray", label="chord")
        ax.semilogy([k], [w[list(ks).index(k)]], "r*", ms=14, label=f"elbow k = {k}")
    ax.set_xlabel("number of clusters k")
    ax.set_ylabel("inertia W(k) (standardised, weighted)")
    ax.legend()
    return save_figure(fig, path)


def cluster_spectra(
    energies_ev,
    mean: np.ndarray,
    path: str | os.PathLike,
    std: np.ndarray | None = None,
    ylabel: str = "mean μt",
) -> str:
    """Mean spectrum of each cluster (± one standard deviation).

    Args:
        energies_ev: photon energies in eV (E,).
        mean: mean spectra (k, E), in μt or edge-normalised.
        path: PNG to write.
        std: standard deviations (k, E), shaded.
        ylabel: y-axis label.

    Returns:
        The written path.
    """
    plt = _pyplot()
    e = np.asarray(energies_ev)
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for j, (m, c) in enumerate(zip(np.asarray(mean), _colors(len(mean)), strict=True)):
        ax.plot(e, m, color=c, label=f"cluster {j}")
        if std is not None:
            ax.fill_between(e, m - std[j], m + std[j], color=c, alpha=0.2)
    ax.set_xlabel("energy (eV)")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def descriptor_density_plot(
    descriptors: Mapping[str, np.ndarray],
    labels: np.ndarray,
    k: int,
    path: str | os.PathLike,
    names: Sequence[str] = ("edge_energy_ev", "pre_edge_ratio", "edge_jump"),
) -> str:
    """Per-cluster probability densities of descriptors, one panel per descriptor.

    Args:
        descriptors: ``{name: map}``.
        labels: cluster labels (same shape), −1 masked.
        k: number of clusters.
        path: PNG to write.
        names: descriptors to show.

    Returns:
        The written path.
    """
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    names = [n for n in names if n in descriptors]
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        v = np.asarray(descriptors[name], float)
        inside = v[np.isfinite(v) & (np.asarray(labels) >= 0)]
        span = tuple(np.percentile(inside, [0.5, 99.5])) if inside.size else None
        span = span if span is not None and span[1] > span[0] else None
        centres, dens = descriptor_densities(v, labels, k, value_range=span)
        for j, c in enumerate(_colors(k)):
            ax.plot(centres, dens[j], color=c, label=f"cluster {j}")
        ax.set_xlabel(DESCRIPTOR_LABELS.get(name, name))
        ax.set_ylabel("probability density")
        ax.ticklabel_format(axis="x", useOffset=False)
        ax.xaxis.set_major_locator(MaxNLocator(5))
    axes[0, 0].legend(fontsize=7)
    return save_figure(fig, path)


def pca_plot(pcs: PCAResult, energies_ev, path: str | os.PathLike, n: int = 3) -> str:
    """Leading principal components and the explained-variance ratios (log scale)."""
    plt = _pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
    for i in range(min(n, len(pcs.components))):
        a1.plot(energies_ev, pcs.components[i], label=f"PC{i + 1}")
    a1.set_xlabel("energy (eV)")
    a1.legend(fontsize=8)
    r = pcs.explained_variance_ratio
    a2.semilogy(np.arange(1, r.size + 1), np.maximum(r, 1e-16), "o-")
    a2.set_xlabel("component")
    a2.set_ylabel("explained variance ratio")
    fig.tight_layout()
    return save_figure(fig, path)


def save_all(
    out_dir: str | os.PathLike,
    descriptors: Mapping[str, np.ndarray],
    analysis: ClusterAnalysis | None,
    energies_ev=None,
    mean_spectra: np.ndarray | None = None,
    *,
    pcs: PCAResult | None = None,
    truth_domain: np.ndarray | None = None,
    normalized_spectra: np.ndarray | None = None,
) -> list[str]:
    """Write every figure that the given results support into ``out_dir``.

    Args:
        out_dir: directory for the PNGs (created).
        descriptors: descriptor maps (y, x), NaN where masked; densities may be included.
        analysis: the clustering, or None for the descriptor maps only.
        energies_ev: photon energies in eV (E,), for spectra and PCA.
        mean_spectra: per-cluster mean μt (k, E).
        pcs: PCA of the spectra.
        truth_domain: true domain map (y, x) of a simulation, drawn beside the clusters.
        normalized_spectra: per-cluster mean edge-normalised spectra (μt − a)/Δμt (k, E).

    Returns:
        Paths of the written PNGs.
    """
    os.makedirs(out_dir, exist_ok=True)
    path = os.fspath(out_dir)
    figs = [descriptor_maps(descriptors, os.path.join(path, "xanes_descriptors.png"))]
    if analysis is not None:
        figs.append(
            cluster_map(
                analysis.labels,
                analysis.k,
                os.path.join(path, "xanes_clusters.png"),
                truth_domain,
                analysis.fractions,
            )
        )
        if len(analysis.ks):
            figs.append(
                elbow_plot(
                    analysis.ks,
                    analysis.inertias,
                    analysis.k,
                    os.path.join(path, "xanes_elbow.png"),
                )
            )
        figs.append(
            descriptor_density_plot(
                descriptors,
                analysis.labels,
                analysis.k,
                os.path.join(path, "xanes_descriptor_densities.png"),
            )
        )
        if mean_spectra is not None and energies_ev is not None:
            figs.append(
                cluster_spectra(
                    energies_ev, mean_spectra, os.path.join(path, "xanes_cluster_spectra.png")
                )
            )
        if normalized_spectra is not None and energies_ev is not None:
            figs.append(
                cluster_spectra(
                    energies_ev,
                    normalized_spectra,
                    os.path.join(path, "xanes_cluster_spectra_normalized.png"),
                    ylabel="mean (μt − a)/Δμt",
                )
            )
    if pcs is not None and energies_ev is not None:
        figs.append(pca_plot(pcs, energies_ev, os.path.join(path, "xanes_pca.png")))
    return figs
