"""Figures that scientists read: slices, loss curves, diffraction frames (PNG, matplotlib Agg)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike) -> str:
    """Save a figure atomically (temp file + rename) and close it; returns the path."""
    path = os.fspath(path)
    tmp = f"{path}.tmp.png"
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    os.replace(tmp, path)
    _pyplot().close(fig)
    return path


def image_grid(
    images: Mapping[str, np.ndarray],
    path: str | os.PathLike,
    *,
    columns: int = 4,
    cmap: str = "viridis",
    shared_range: Sequence[float] | None = None,
    title: str | None = None,
) -> str:
    """A grid of labelled 2-D images with colour bars.

    Args:
        images: title → 2-D array.
        path: PNG to write.
        columns: images per row.
        cmap: matplotlib colour map.
        shared_range: (vmin, vmax) for every panel, or None for each its own.
        title: figure title.

    Returns:
        The written path.
    """
    plt = _pyplot()
    n = len(images)
    rows = max(1, -(-n // columns))
    cols = min(columns, n)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    for ax, (label, img) in zip(axes.ravel(), images.items(), strict=False):
        vmin, vmax = (None, None) if shared_range is None else shared_range
        im = ax.imshow(np.asarray(img), cmap=cmap, vmin=vmin, vmax=vmax, origin="upper")
        ax.set_title(label, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def loss_curve(histories: Mapping[str, Sequence[float]], path: str | os.PathLike) -> str:
    """Loss against iteration (log y) for one or more runs."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, loss in histories.items():
        loss = np.asarray(loss, dtype=float)
        ax.semilogy(np.arange(1, loss.size + 1), loss - min(0.0, loss.min()) + 1e-12, label=label)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    return save_figure(fig, path)
