"""Measured frames as a solver batch, and the fixed-size minibatches every engine iterates over.

An engine's ``step`` covers all positions once; it walks them in minibatches of a fixed size
with ``lax.scan`` (``vmap`` inside a minibatch), so memory is bounded by the batch and the step
compiles once. When the batch size does not divide the number of positions, the last batch is
padded with positions of the first batch carrying zero weight: a padded entry never shares a
batch with the real one, so scatter updates stay unambiguous.

The frames may also stay in their HDF5 file (:class:`~diffptycho.recon.ptycho.streaming.
StreamedFrames`): :meth:`PtychoData.take` then fetches each minibatch's frames from the host, so
a scan larger than memory streams through every engine.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from diffptycho._typing import Array, Bool, Float, Frames, Int
from diffptycho.models.propagators import AbstractPropagator
from diffptycho.recon.losses import LOSSES
from diffptycho.recon.ptycho.streaming import StreamedFrames, _fetch


class PtychoData(eqx.Module):
    """Measured diffraction frames of one scan: the ``batch`` argument of every engine.

    Attributes:
        frames: photon counts ``(n, fy, fx)``, one frame per scan position, in the model's
            detector layout (far field: centred frames); or a
            :class:`~diffptycho.recon.ptycho.streaming.StreamedFrames` left in its file, whose
            minibatches :meth:`take` reads when the step runs (moved to the native layout
            per batch).
        mask: valid detector pixels (True), shape ``(fy, fx)`` or per frame ``(n, fy, fx)``,
            or None when every pixel is valid. Masked pixels keep the model's amplitude in
            the Fourier projection and are left out of every loss.
        native: frames and mask are already in the propagator's native layout (see
            :class:`~diffptycho.models.propagators.AbstractPropagator`); the engines move
            them there once, through :meth:`in_layout`, when ``solve`` starts.

    Examples:
        >>> import jax.numpy as jnp
        >>> PtychoData(jnp.zeros((3, 8, 8))).frames.shape
        (3, 8, 8)
    """

    frames: Frames | StreamedFrames
    mask: Bool[Array, "fy fx"] | Bool[Array, "n fy fx"] | None = None
    native: bool = eqx.field(static=True, default=False)

    def __check_init__(self):
        if self.frames.ndim != 3:
            raise ValueError(f"frames: expected (n, fy, fx), got shape {self.frames.shape}")
        if self.mask is not None and (
            self.mask.shape[-2:] != self.frames.shape[-2:]
            or self.mask.ndim not in (2, 3)
            or (self.mask.ndim == 3 and self.mask.shape[0] != self.frames.shape[0])
        ):
            raise ValueError(
                f"mask: expected (fy, fx) or (n, fy, fx) matching frames {self.frames.shape}, "
                f"got {self.mask.shape}"
            )

    @property
    def streamed(self) -> bool:
        """The frames are read from their file per minibatch (:class:`StreamedFrames`)."""
        return isinstance(self.frames, StreamedFrames)

    def take(self, idx: Int[Array, " b"]) -> tuple[Float[Array, "b fy fx"], Array | None]:
        """Frames and mask of the positions ``idx`` (mask broadcastable to the frames)."""
        frames = _fetch(self.frames, idx)
        if not jnp.issubdtype(frames.dtype, jnp.floating):  # integer counts from a file
            frames = frames.astype(jnp.float32)
        frames = jnp.clip(frames, 0, None)
        if self.mask is None or self.mask.ndim == 2:
            return frames, self.mask
        return frames, self.mask[idx]

    def in_layout(self, propagator: AbstractPropagator) -> PtychoData:
        """These data in ``propagator``'s native layout (one copy; no-op when already).

        Streamed frames stay in their file: they (and the mask) are moved per batch by
        :meth:`take_native`.
        """
        if self.native or self.streamed:
            return self
        mask = None if self.mask is None else propagator.to_native(self.mask)
        return PtychoData(propagator.to_native(self.frames), mask, native=True)

    def take_native(
        self, idx: Int[Array, " b"], propagator: AbstractPropagator
    ) -> tuple[Float[Array, "b fy fx"], Array | None]:
        """:meth:`take` in ``propagator``'s native layout (moved per batch if not yet)."""
        frames, mask = self.take(idx)
        if self.native:
            return frames, mask
        return propagator.to_native(frames), None if mask is None else propagator.to_native(mask)


def ptycho_data(frames, mask=None) -> PtychoData:
    """:class:`PtychoData` of in-memory frames (as a jax array) or of :class:`StreamedFrames`.

    Args:
        frames: ``(n, fy, fx)`` counts (NumPy or jax) or :class:`StreamedFrames`.
        mask: valid pixels ``(fy, fx)`` or ``(n, fy, fx)``, or None.
    """
    if not isinstance(frames, StreamedFrames):
        frames = jnp.asarray(frames)
    return PtychoData(frames, None if mask is None else jnp.asarray(mask))


class NativeLayout:
    """Mixin of the ptychography engines: ``solve`` hands them data in the native layout.

    The frames are moved once (:meth:`PtychoData.in_layout`) instead of once per batch, and,
    for an engine with a ``mesh``, copied once to every device of it instead of once per step.
    """

    def prepare(self, model, data: PtychoData) -> PtychoData:
        """``data`` in ``model.propagator``'s native layout (on every device of the mesh)."""
        data = data.in_layout(model.propagator)
        mesh = getattr(self, "mesh", None)
        if mesh is not None:
            replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
            data = eqx.filter_shard(data, replicated)
        return data


def native_background(model) -> Float[Array, "fy fx"] | None:
    """The model's incoherent background in its propagator's native layout (or None)."""
    bg = model.background
    return None if bg is None else model.propagator.to_native(bg)


def batch_layout(n: int, batch_size: int) -> tuple[int, int]:
    """Number of minibatches and their (clamped) size for ``n`` positions (host side).

    Examples:
        >>> batch_layout(10, 4), batch_layout(3, 64)
        ((3, 4), (1, 3))
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: expected a positive number of positions")
    size = min(int(batch_size), int(n))
    return -(-int(n) // size), size


def batch_indices(
    n: int, batch_size: int, key: Array | None = None
) -> tuple[Int[Array, "batches size"], Bool[Array, "batches size"]]:
    """Position indices of every minibatch, in order or shuffled, padded to a full grid.

    Args:
        n: number of scan positions (static).
        batch_size: positions per minibatch (static; clamped to ``n``).
        key: PRNG key for a random order, or None for the scan order.

    Returns:
        ``idx`` and ``valid``, both ``(batches, size)``; padded entries repeat positions of
        the first batch and have ``valid`` False.

    Examples:
        >>> idx, valid = batch_indices(5, 2)
        >>> idx.tolist(), valid.tolist()
        ([[0, 1], [2, 3], [4, 0]], [[True, True], [True, True], [True, False]])
    """
    batches, size = batch_layout(n, batch_size)
    order = jnp.arange(n) if key is None else jax.random.permutation(key, n)
    pad = batches * size - n
    order = jnp.concatenate([order, order[:pad]]).astype(jnp.int32)
    valid = jnp.asarray(np.arange(batches * size) < n)
    return order.reshape(batches, size), valid.reshape(batches, size)


def frame_losses(
    intensity: Float[Array, "b fy fx"],
    frames: Float[Array, "b fy fx"],
    mask: Array | None,
    name: str = "poisson",
) -> Float[Array, " b"]:
    """Loss of each frame (sum over valid pixels) under the named noise model.

    Args:
        intensity: expected counts (background included).
        frames: measured counts.
        mask: valid pixels, ``(fy, fx)``, ``(b, fy, fx)`` or None.
        name: a key of :data:`diffptycho.recon.losses.LOSSES` (``"poisson"``, ``"amplitude"``).

    Returns:
        ``(b,)`` per-frame losses.
    """
    loss = LOSSES[name]
    if mask is None or mask.ndim == 2:
        return jax.vmap(lambda i, f: loss(i, f, mask))(intensity, frames)
    return jax.vmap(loss)(intensity, frames, mask)


__all__ = ["PtychoData", "batch_indices", "batch_layout", "frame_losses", "ptycho_data"]
