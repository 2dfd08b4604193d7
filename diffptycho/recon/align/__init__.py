"""Alignment of measured projections: rotation centre, registration, tilt-series alignment."""

from diffptycho.recon.align.center import (
    CenterEstimate,
    center_alignment,
    center_of_mass_center,
    estimate_center,
    fourier_shift,
)
from diffptycho.recon.align.energy import (
    GridResample,
    apply_offsets,
    register_energies,
    resample_to_grid,
    valid_mask,
)
from diffptycho.recon.align.gauge import GaugeFix, fix_gauge, gauge_transform, match_gauge
from diffptycho.recon.align.gradient import gaussian_smooth, joint_align
from diffptycho.recon.align.registration import (
    cubic_similarity_transform,
    refine_similarity,
    register_similarity,
    register_similarity_stack,
    register_translation,
    resample_similarity,
)
from diffptycho.recon.align.reprojection import (
    AlignmentResult,
    bin_projections,
    parameter_change_px,
    reconstruct_dealigned,
    reprojection_align,
)
from diffptycho.recon.align.rough import (
    RoughAlignment,
    axis_offset,
    horizontal_shifts,
    neighbour_shifts,
    rough_align,
    shift_stack,
    vertical_shifts,
)

METHODS = ("reprojection", "joint")
"""Tilt-series alignment methods: :func:`reprojection_align` and :func:`joint_align`."""


def align_tilt_series(projections, angles_rad, method: str = "reprojection", **options):
    """Align a tilt series with ``method`` (one of :data:`METHODS`); options go to it.

    Returns:
        An :class:`AlignmentResult`.
    """
    if method == "reprojection":
        return reprojection_align(projections, angles_rad, **options)
    if method == "joint":
        return joint_align(projections, angles_rad, **options)
    raise ValueError(f"method={method!r}: expected one of {', '.join(METHODS)}")


__all__ = [
    "METHODS",
    "AlignmentResult",
    "CenterEstimate",
    "GaugeFix",
    "GridResample",
    "RoughAlignment",
    "align_tilt_series",
    "apply_offsets",
    "axis_offset",
    "bin_projections",
    "center_alignment",
    "center_of_mass_center",
    "cubic_similarity_transform",
    "estimate_center",
    "fix_gauge",
    "fourier_shift",
    "gauge_transform",
    "gaussian_smooth",
    "horizontal_shifts",
    "joint_align",
    "match_gauge",
    "neighbour_shifts",
    "parameter_change_px",
    "reconstruct_dealigned",
    "refine_similarity",
    "register_similarity",
    "register_energies",
    "register_similarity_stack",
    "register_translation",
    "reprojection_align",
    "resample_to_grid",
    "resample_similarity",
    "rough_align",
    "shift_stack",
    "valid_mask",
    "vertical_shifts",
]
