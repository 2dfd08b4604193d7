"""Alignment of measured projections: rotation-centre estimation."""

from diffptycho.recon.align.center import (
    CenterEstimate,
    center_alignment,
    center_of_mass_center,
    estimate_center,
    fourier_shift,
)

__all__ = [
    "CenterEstimate",
    "center_alignment",
    "center_of_mass_center",
    "estimate_center",
    "fourier_shift",
]
