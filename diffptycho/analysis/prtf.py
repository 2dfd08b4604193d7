"""Phase retrieval transfer function (PRTF) of ptychographic reconstructions.

The PRTF (Chapman et al. 2006, JOSA A 23, 1179; used for ptychography and spectro-ptychography
resolution estimates) compares the reconstructed far-field amplitudes with the measured ones,
ring by ring in the detector plane:

- over several independent reconstructions k of the same frames (:func:`prtf`),
  ``PRTF(q) = (Σ_ring |⟨F_k⟩_k|² / Σ_ring I)^½``: where the retrieved phases are reproducible
  the average keeps its amplitude (PRTF → 1); where they are random it cancels (→ 1/√K);
- for one reconstruction against the measured intensities (:func:`prtf_model`),
  ``PRTF(q) = (Σ_ring I_model / Σ_ring I_measured)^½``: where the model fails to explain
  the measured signal (noise-dominated, lost phases), it falls below 1.

The ratio is formed from ring-summed intensities rather than ring-averaged amplitudes because
Σ√n of Poisson counts is biased low where a pixel holds a few photons (E√n < √E n), which
would push the PRTF above 1 at high q; Σn is unbiased.

Each reconstruction's global phase is aligned to the first before averaging (ptychography
does not determine it). Rings follow :mod:`diffptycho.analysis.resolution`: detector pixel
``(iy, ix)`` of a centred frame ``(fy, fx)`` is at frequency ``((iy − fy//2)/fy, (ix − fx//2)/fx)``
cycles per object pixel (far field: detector pixel q ↔ object frequency q/N), ring ``r`` holds
the pixels with ``round(|f|·min(fy, fx)) == r``, up to the Nyquist ring. The resolution is where
the PRTF first drops below 1/e, reported as a :class:`~diffptycho.analysis.resolution.Crossing`
(half-period in pixels and metres).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from diffptycho._typing import Array, Bool, Complex, Float, Positions, ProbeModes
from diffptycho.analysis.resolution import Crossing, FourierCorrelation, crossing

__all__ = ["PRTF", "PRTF_THRESHOLD", "detector_waves", "prtf", "prtf_model"]

PRTF_THRESHOLD = float(np.exp(-1.0))
"""The conventional PRTF resolution threshold, 1/e."""


@dataclasses.dataclass(frozen=True)
class PRTF:
    """A ring-averaged phase retrieval transfer function.

    Attributes:
        shell: ring index r (0 … Nyquist), shape ``(n_rings,)``.
        frequency: ring frequency r / min(fy, fx) in cycles per object pixel.
        prtf: the transfer function per ring (0 where a ring has no measured signal).
        n_points: number of detector pixels per ring (valid pixels of one frame).
        shape: detector frame shape ``(fy, fx)``.
    """

    shell: np.ndarray
    frequency: np.ndarray
    prtf: np.ndarray
    n_points: np.ndarray
    shape: tuple[int, int]

    def resolution(
        self, threshold: float = PRTF_THRESHOLD, pixel_size_m: float | None = None
    ) -> Crossing:
        """Where the PRTF first drops below ``threshold`` (default 1/e).

        Args:
            threshold: PRTF level (dimensionless).
            pixel_size_m: object pixel size in m, to report the result in metres.

        Returns:
            The crossing; ``crossed`` is False when the PRTF stays above up to Nyquist.
        """
        curve = FourierCorrelation(self.shell, self.frequency, self.prtf, self.n_points, self.shape)
        return crossing(curve, float(threshold), voxel_size_m=pixel_size_m)


def _rings(shape: tuple[int, int]) -> tuple[np.ndarray, int]:
    """Ring index of every pixel of a centred frame, and the number of rings kept."""
    fy, fx = shape
    n_ref = min(fy, fx)
    qy = (np.arange(fy) - fy // 2)[:, None] / fy
    qx = (np.arange(fx) - fx // 2)[None, :] / fx
    ring = np.rint(np.hypot(qy, qx) * n_ref).astype(np.int64)
    return ring, n_ref // 2 + 1


def _ring_ratio(numerator: np.ndarray, denominator: np.ndarray, mask) -> PRTF:
    """(Σ_ring numerator / Σ_ring denominator)^½ over frames and valid pixels (intensities)."""
    shape = numerator.shape[-2:]
    ring, n_rings = _rings(shape)
    valid = np.ones(shape, bool) if mask is None else np.asarray(mask, bool)
    if valid.shape != shape:
        raise ValueError(f"mask: shape {valid.shape} differs from the frames {shape}")
    keep = valid & (ring < n_rings)
    num = numerator.reshape(-1, *shape).sum(axis=0)
    den = denominator.reshape(-1, *shape).sum(axis=0)
    top = np.bincount(ring[keep], num[keep], minlength=n_rings)
    bottom = np.bincount(ring[keep], den[keep], minlength=n_rings)
    count = np.bincount(ring[keep], minlength=n_rings).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        values = np.sqrt(np.where(bottom > 0, top / np.where(bottom > 0, bottom, 1.0), 0.0))
    shells = np.arange(n_rings)
    return PRTF(shells, shells / min(shape), values, count, (int(shape[0]), int(shape[1])))


def _measured(measured, shape: tuple[int, ...]) -> np.ndarray:
    meas = np.asarray(measured, dtype=np.float64)
    if meas.shape != shape:
        raise ValueError(f"measured: shape {meas.shape}, expected {shape} (frames, fy, fx)")
    if np.any(~np.isfinite(meas)):
        raise ValueError("measured: contains NaN/inf; mask those pixels instead")
    return np.clip(meas, 0.0, None)


def prtf(
    waves: Complex[Array, "k *n fy fx"],
    measured: Float[Array, "*n fy fx"],
    mask: Bool[Array, "fy fx"] | None = None,
) -> PRTF:
    """PRTF over independent reconstructions: (Σ_ring |⟨F_k⟩_k|² / Σ_ring I)^½.

    Args:
        waves: detector-plane amplitudes (photons^½ per pixel, centred frames) of K ≥ 1
            reconstructions of the same frames, shape ``(K, …, fy, fx)`` (e.g. the dominant
            probe mode of :func:`detector_waves` for each reconstruction, stacked).
        measured: measured intensities in photons, shape ``(…, fy, fx)`` matching one
            reconstruction.
        mask: valid detector pixels (True) or None.

    Returns:
        The :class:`PRTF`; with K = 1 it is the amplitude ratio of :func:`prtf_model`.

    Raises:
        ValueError: shapes disagree or the data are not finite.

    Examples:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> amp = rng.random((3, 16, 16)) + 0.5
        >>> same = np.stack([amp * np.exp(0.3j), amp * np.exp(-1.2j)])  # global phases differ
        >>> bool(np.allclose(prtf(same, amp**2).prtf, 1.0))
        True
    """
    f = np.asarray(waves)
    if f.ndim < 3:
        raise ValueError(f"waves: expected (K, …, fy, fx), got shape {f.shape}")
    meas = _measured(measured, f.shape[1:])
    f = f.astype(np.complex128).reshape(f.shape[0], -1)
    overlap = np.sum(np.conj(f[:1]) * f, axis=1)  # ⟨F_0, F_k⟩: global phase of reconstruction k
    phase = np.where(np.abs(overlap) > 0, np.conj(overlap) / np.maximum(np.abs(overlap), 1e-300), 1)
    mean = np.mean(f * phase[:, None], axis=0).reshape(meas.shape)
    return _ring_ratio(np.abs(mean) ** 2, meas, mask)


def prtf_model(
    predicted: Float[Array, "*n fy fx"],
    measured: Float[Array, "*n fy fx"],
    mask: Bool[Array, "fy fx"] | None = None,
) -> PRTF:
    """PRTF of one reconstruction against the data: (Σ_ring I_model / Σ_ring I_measured)^½.

    Args:
        predicted: model intensities in photons (Σ over probe modes, without the incoherent
            background), shape ``(…, fy, fx)``.
        measured: measured intensities in photons, same shape.
        mask: valid detector pixels (True) or None.

    Returns:
        The :class:`PRTF`.

    Examples:
        >>> import numpy as np
        >>> meas = np.ones((2, 16, 16))
        >>> float(prtf_model(0.25 * meas, meas).prtf[3])
        0.5
    """
    pred = np.asarray(predicted, dtype=np.float64)
    meas = _measured(measured, pred.shape)
    if pred.ndim < 2 or np.any(~np.isfinite(pred)):
        raise ValueError("predicted: expected finite intensities (…, fy, fx)")
    return _ring_ratio(np.clip(pred, 0.0, None), meas, mask)


def detector_waves(
    obj: Complex[Array, "H W"],
    probe: ProbeModes,
    positions: Positions,
    propagator=None,
    batch_size: int = 256,
) -> np.ndarray:
    """Detector-plane amplitudes Ψ_jm of every position and probe mode of a reconstruction.

    Uses the package's own forward operators (patch extraction and the propagator), in
    batches of positions to bound memory.

    Args:
        obj: object transmission (H, W); array centre = scan position (0, 0).
        probe: probe modes (mode, py, px) in photons^½ per pixel.
        positions: scan positions (n, 2) as (y, x) in object pixels.
        propagator: exit-wave → detector propagator (default far field).
        batch_size: positions per batch.

    Returns:
        Complex array (n, mode, fy, fx) (NumPy).
    """
    import jax
    import jax.numpy as jnp

    from diffptycho.models.propagators import FarField
    from diffptycho.physics import scan

    propagator = FarField() if propagator is None else propagator
    obj, probe = jnp.asarray(obj), jnp.asarray(probe)
    if probe.ndim == 2:
        probe = probe[None]

    @jax.jit
    def batch(pos):
        patches = scan.extract_patches(obj, pos, probe.shape[-2:])
        return propagator(probe[None] * patches[:, None])

    pos = np.asarray(positions, dtype=np.asarray(obj.real).dtype)
    n = len(pos)
    size = max(1, min(int(batch_size), n))
    # pad the last batch to the full size: one compilation for every batch
    padded = np.concatenate([pos, np.repeat(pos[:1], -n % size, axis=0)])
    out = [np.asarray(batch(jnp.asarray(padded[i : i + size]))) for i in range(0, n, size)]
    return np.concatenate(out, axis=0)[:n]
