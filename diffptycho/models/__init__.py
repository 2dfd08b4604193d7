"""Equinox Modules that compose the pure physics functions into forward models.

The unknowns of a reconstruction are the Modules' array leaves; configuration is static.
"""

from diffptycho.models.propagators import AbstractPropagator, FarField, NearField
from diffptycho.models.ptycho import PixelSpectra2D, Ptycho2D, SpectroPtycho2D, scan_intensities
from diffptycho.models.tomo import SpectroPtychoTomo, TomoProjections

__all__ = [
    "AbstractPropagator",
    "FarField",
    "NearField",
    "PixelSpectra2D",
    "Ptycho2D",
    "SpectroPtycho2D",
    "SpectroPtychoTomo",
    "TomoProjections",
    "scan_intensities",
]
