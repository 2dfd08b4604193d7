"""Errors of a reconstructed two-species composition against a known truth."""

from __future__ import annotations

import numpy as np

from diffptycho.analysis.segmentation import dice_per_class, phase_classes


def composition_errors(
    estimate: np.ndarray, truth: np.ndarray, occupied_threshold: float = 0.5
) -> dict[str, float]:
    """How far a composition volume is from the truth, in the study's terms.

    Args:
        estimate: volume fractions (2, …) of [first, second] end member.
        truth: true volume fractions (2, …).
        occupied_threshold: total fraction above which a voxel counts as material.

    Returns:
        ``relative_error`` ‖c − c_true‖/‖c_true‖; ``rmse_first`` and ``rmse_second`` over the
        truly occupied voxels; ``share_rmse``, RMSE of the second end member's share there;
        ``dice_first_rich``, ``dice_mixed``, ``dice_second_rich`` of the 30/70 % classes
        (NaN where the truth has no such voxel).
    """
    estimate = np.asarray(estimate, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    if estimate.shape != truth.shape or truth.shape[0] != 2:
        raise ValueError(f"estimate: expected shape {truth.shape} (2, …), got {estimate.shape}")
    occupied = truth.sum(0) > occupied_threshold
    if not occupied.any():
        raise ValueError("truth: no voxel above occupied_threshold; nothing to compare")
    rmse = np.sqrt(np.mean((estimate - truth)[:, occupied] ** 2, axis=1))

    def share(c):
        return np.clip(c[1] / np.maximum(c.sum(0), 1e-12), 0.0, 1.0)

    share_rmse = np.sqrt(np.mean((share(estimate) - share(truth))[occupied] ** 2))
    est_occupied = estimate.sum(0) > occupied_threshold
    dice = dice_per_class(
        phase_classes(1.0 - share(estimate), est_occupied),
        phase_classes(1.0 - share(truth), occupied),
    )
    return {
        "relative_error": float(np.linalg.norm(estimate - truth) / np.linalg.norm(truth)),
        "rmse_first": float(rmse[0]),
        "rmse_second": float(rmse[1]),
        "share_rmse": float(share_rmse),
        "dice_first_rich": float(dice.get(0, np.nan)),
        "dice_mixed": float(dice.get(1, np.nan)),
        "dice_second_rich": float(dice.get(2, np.nan)),
    }


def register_to_truth(
    estimate: np.ndarray, truth: np.ndarray, upsample: int = 20
) -> tuple[np.ndarray, np.ndarray]:
    """Move a reconstructed volume onto the truth by the translation that matches them best.

    A tomogram of an experiment has no absolute position: the alignment fixes the volume only
    up to a translation (the gauge of the scan shifts). Before comparing with a simulation's
    truth, that translation is found by upsampled cross-correlation of the total volume
    fractions and removed by a Fourier shift.

    Args:
        estimate: (species, z, y, x) volume fractions.
        truth: same shape.
        upsample: sub-voxel precision 1/``upsample``.

    Returns:
        ``(moved, shift)``: the estimate moved onto the truth and the (z, y, x) shift in voxels
        that was applied.
    """
    from scipy import ndimage
    from skimage.registration import phase_cross_correlation

    estimate = np.asarray(estimate, np.float64)
    truth = np.asarray(truth, np.float64)
    if estimate.shape != truth.shape:
        raise ValueError(f"estimate: shape {estimate.shape} differs from the truth {truth.shape}")
    shift, _, _ = phase_cross_correlation(
        truth.sum(0), estimate.sum(0), upsample_factor=upsample, normalization=None
    )
    moved = np.stack(
        [np.real(np.fft.ifftn(ndimage.fourier_shift(np.fft.fftn(c), shift))) for c in estimate]
    )
    return moved, np.asarray(shift, np.float64)
