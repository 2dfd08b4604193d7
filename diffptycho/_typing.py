"""Array type aliases with shapes, shared by the whole package.

Axes (README conventions): volumes are (z, y, x) with the rotation axis along y and the beam along z
at θ = 0; projections are (angle, y, x); stacks lead with energy; scan positions are (n, 2)
as (y, x).
"""

from jaxtyping import Array, Bool, Complex, Float, Int, Shaped

Real = Float
"""Alias so signatures read ``Real[Array, "..."]`` for real-valued fields."""

Volume = Shaped[Array, "z y x"]
ComplexVolume = Complex[Array, "z y x"]
Image = Shaped[Array, "y x"]
ComplexImage = Complex[Array, "y x"]
Projections = Shaped[Array, "angle y x"]
Positions = Float[Array, "n 2"]
Angles = Float[Array, " angle"]
Energies = Float[Array, " energy"]
ProbeModes = Complex[Array, "mode y x"]
Frames = Float[Array, "n fy fx"]

__all__ = [
    "Array",
    "Bool",
    "Complex",
    "Float",
    "Int",
    "Shaped",
    "Real",
    "Volume",
    "ComplexVolume",
    "Image",
    "ComplexImage",
    "Projections",
    "Positions",
    "Angles",
    "Energies",
    "ProbeModes",
    "Frames",
]
