"""Several scans of one energy sharing one probe: one object per scan, the probe in common.

The scans' objects are laid side by side (stacked along y, separated by a gap) on one canvas,
and every scan's positions are offset to its tile. The result is an ordinary
:class:`~diffptycho.models.Ptycho2D`: every engine reconstructs all scans at once with one
shared probe, and nothing about the engines changes. :class:`ScanLayout` remembers where each
scan lives so the objects and positions can be split again.

Examples:
    >>> import jax.numpy as jnp
    >>> objs = [jnp.ones((8, 8), complex), jnp.ones((6, 10), complex)]
    >>> pos = [jnp.zeros((3, 2)), jnp.zeros((2, 2))]
    >>> canvas, positions, layout = combine_scans(objs, pos)
    >>> [o.shape for o in split_object(canvas, layout)]
    [(8, 8), (6, 10)]
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from diffptycho._typing import Array, Complex, Positions
from diffptycho.models.propagators import AbstractPropagator, FarField
from diffptycho.models.ptycho import Ptycho2D


class ScanLayout(eqx.Module):
    """Where each scan's object sits on the canvas and which positions belong to it.

    Attributes:
        canvas_shape: ``(H, W)`` of the canvas.
        origins: top-left ``(row, column)`` of every scan's tile on the canvas.
        shapes: ``(H_s, W_s)`` of every scan's object.
        counts: number of positions of every scan (positions are concatenated in scan order).
    """

    canvas_shape: tuple[int, int] = eqx.field(static=True)
    origins: tuple[tuple[int, int], ...] = eqx.field(static=True)
    shapes: tuple[tuple[int, int], ...] = eqx.field(static=True)
    counts: tuple[int, ...] = eqx.field(static=True)

    def offsets(self) -> np.ndarray:
        """``(scans, 2)`` pixel offsets from a scan's own positions to canvas positions."""
        hc, wc = self.canvas_shape
        return np.asarray(
            [
                (r0 + h // 2 - hc // 2, c0 + w // 2 - wc // 2)
                for (r0, c0), (h, w) in zip(self.origins, self.shapes, strict=True)
            ],
            dtype=np.float64,
        )

    def scan_index(self) -> np.ndarray:
        """Scan number of every concatenated position, ``(n,)``."""
        return np.repeat(np.arange(len(self.counts)), self.counts)


def plan_layout(
    shapes: Sequence[tuple[int, int]], counts: Sequence[int], gap: int = 2
) -> ScanLayout:
    """Stack tiles of the given shapes along y with ``gap`` empty rows between them.

    Args:
        shapes: object shape of every scan, in pixels.
        counts: number of positions of every scan.
        gap: empty rows between tiles (≥ 1 keeps bilinear reads from crossing tiles).

    Returns:
        The layout; the canvas width is the widest tile, rounded up to even.
    """
    if len(shapes) != len(counts) or not shapes:
        raise ValueError("plan_layout: need one shape and one position count per scan")
    if gap < 1:
        raise ValueError(f"gap={gap}: expected at least one pixel between tiles")
    origins, row = [], 0
    for h, _ in shapes:
        origins.append((row, 0))
        row += int(h) + gap
    height = row - gap
    width = max(int(w) for _, w in shapes)
    canvas = (height + height % 2, width + width % 2)
    return ScanLayout(
        canvas,
        tuple(origins),
        tuple((int(h), int(w)) for h, w in shapes),
        tuple(int(c) for c in counts),
    )


def combine_scans(
    objects: Sequence[Complex[Array, "h w"]],
    positions: Sequence[Positions],
    gap: int = 2,
    fill: complex = 1.0,
) -> tuple[Complex[Array, "H W"], Positions, ScanLayout]:
    """Put per-scan objects on one canvas and their positions in canvas coordinates.

    Args:
        objects: starting object of every scan (each centred on its own scan positions).
        positions: ``(n_s, 2)`` positions ``(y, x)`` of every scan in its object's pixels.
        gap: empty rows between tiles.
        fill: value of the canvas outside the tiles (never illuminated).

    Returns:
        ``canvas (H, W)``, concatenated ``positions (Σ n_s, 2)`` and the :class:`ScanLayout`.
    """
    layout = plan_layout([o.shape for o in objects], [len(p) for p in positions], gap)
    dtype = jnp.result_type(*[jnp.asarray(o).dtype for o in objects])
    canvas = jnp.full(layout.canvas_shape, fill, dtype)
    for obj, (r0, c0) in zip(objects, layout.origins, strict=True):
        h, w = obj.shape
        canvas = canvas.at[r0 : r0 + h, c0 : c0 + w].set(jnp.asarray(obj, dtype))
    offsets = layout.offsets()
    all_pos = jnp.concatenate(
        [
            jnp.asarray(p) + jnp.asarray(off, jnp.asarray(p).dtype)
            for p, off in zip(positions, offsets, strict=True)
        ]
    )
    return canvas, all_pos, layout


def split_object(canvas: Complex[Array, "H W"], layout: ScanLayout) -> list[Array]:
    """Every scan's object cut from the canvas."""
    return [
        canvas[r0 : r0 + h, c0 : c0 + w]
        for (r0, c0), (h, w) in zip(layout.origins, layout.shapes, strict=True)
    ]


def split_positions(positions: Positions, layout: ScanLayout) -> list[Array]:
    """Every scan's positions back in its own object's coordinates."""
    bounds = np.cumsum((0,) + layout.counts)
    offsets = layout.offsets()
    return [
        positions[a:b] - jnp.asarray(off, positions.dtype)
        for a, b, off in zip(bounds[:-1], bounds[1:], offsets, strict=True)
    ]


def multiscan_model(
    objects: Sequence[Complex[Array, "h w"]],
    probe: Complex[Array, "mode py px"],
    positions: Sequence[Positions],
    background: Array | None = None,
    propagator: AbstractPropagator | None = None,
    gap: int = 2,
) -> tuple[Ptycho2D, ScanLayout]:
    """A :class:`Ptycho2D` holding all scans on one canvas with one shared probe.

    Concatenate the scans' frames in the same order (``jnp.concatenate(frames)``) for the
    :class:`~diffptycho.recon.ptycho.data.PtychoData`. For position refinement, pass
    ``group_sizes=layout.counts`` to :class:`~.constraints.PositionRefinement` so each scan's
    mean position is held separately.

    Args:
        objects: starting object of every scan.
        probe: shared probe modes ``(mode, py, px)``.
        positions: positions of every scan in its own object's pixels.
        background: shared incoherent background, or None.
        propagator: shared propagator (default far field).
        gap: empty rows between tiles.

    Returns:
        The model and its :class:`ScanLayout`.
    """
    canvas, all_pos, layout = combine_scans(objects, positions, gap)
    propagator = FarField() if propagator is None else propagator
    return Ptycho2D(canvas, probe, all_pos, background, propagator), layout


__all__ = [
    "ScanLayout",
    "combine_scans",
    "multiscan_model",
    "plan_layout",
    "split_object",
    "split_positions",
]
