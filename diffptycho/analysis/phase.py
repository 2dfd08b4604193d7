"""Phase images that scientists can read: offset and ramp removal, unwrapping, OD and δ/β.

A reconstructed transmission T(r) is known only up to a global complex factor (traded against
the probe) and, after position errors or a misplaced diffraction centre, up to a linear phase
ramp. Before a phase image is shown or converted to a physical quantity these are removed:

- :func:`remove_phase_offset` multiplies by exp(−iφ₀) with φ₀ the amplitude-weighted mean phase;
- :func:`fit_phase_ramp` / :func:`remove_phase_ramp` fit φ ≈ a + g_y·y + g_x·x by weighted least
  squares on a region (weights = amplitude by default) without unwrapping first: the slopes are
  first estimated from the wrap-free neighbour differences arg(T[y+1]·T*[y]), then refined by a
  least-squares plane fit of the residual phase;
- :func:`unwrap_phase` is the least-squares unwrapper of Ghiglia & Romero (1994, JOSA A 11, 107):
  the Poisson equation of the wrapped phase differences solved with a DCT (Neumann boundaries),
  with weights by preconditioned conjugate gradients. The result is made congruent with the
  input (it differs from it by exact multiples of 2π); when the true phase changes by less than
  π between neighbours it equals the true phase up to one global 2π·k.

Conversions follow the README conventions: T = exp(−k∫β dz)·exp(−ik∫δ dz), so
OD = −ln|T|² = 2k∫β dz and the projected phase k∫δ dz = −arg T. Everything here runs on the
host (NumPy) after a reconstruction; it accepts NumPy or JAX arrays.
"""

from __future__ import annotations

import numpy as np
from scipy import fft as sfft

from diffptycho._typing import Array, Bool, Complex, Float
from diffptycho.physics import optics

__all__ = [
    "delta_beta_integrals",
    "fit_phase_ramp",
    "optical_density",
    "phase_offset",
    "projected_phase",
    "remove_phase_offset",
    "remove_phase_ramp",
    "unwrap_phase",
]


def _weights(image: np.ndarray, weights, name: str = "weights") -> np.ndarray:
    """Non-negative weights of the image's shape: ``weights``, a bool mask, or |image|."""
    if weights is None:
        w = np.abs(image) if np.iscomplexobj(image) else np.ones(image.shape)
    else:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != image.shape:
            raise ValueError(f"{name}: shape {w.shape} differs from the image {image.shape}")
        if np.any(~np.isfinite(w)) or np.any(w < 0):
            raise ValueError(f"{name}: expected finite non-negative weights (or a bool mask)")
    if not np.any(w > 0):
        raise ValueError(f"{name}: every weight is zero; the region holds no pixel")
    return w.astype(np.float64)


def _image(obj, name: str = "image") -> np.ndarray:
    arr = np.asarray(obj)
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D image (y, x), got shape {arr.shape}")
    return arr


def phase_offset(obj: Complex[Array, "y x"], weights=None) -> float:
    """Amplitude-weighted mean phase φ₀ = arg Σ w·T of a complex image (rad).

    Args:
        obj: complex transmission (y, x).
        weights: non-negative weights or a bool region (y, x); default |T|.

    Returns:
        φ₀ in rad, in (−π, π].
    """
    t = _image(obj, "obj")
    w = _weights(t, weights)
    unit = np.exp(1j * np.angle(t))  # the phase only: |T| is already in the default weights
    return float(np.angle(np.sum(w * unit)))


def remove_phase_offset(obj: Complex[Array, "y x"], weights=None) -> np.ndarray:
    """The complex image times exp(−iφ₀), so that its weighted mean phase is 0.

    Args:
        obj: complex transmission (y, x).
        weights: non-negative weights or a bool region (y, x); default |T|.

    Returns:
        Complex image (y, x), complex128.

    Examples:
        >>> import numpy as np
        >>> t = 0.9 * np.exp(1j * (2.0 + 0.1 * np.ones((4, 4))))
        >>> bool(np.allclose(np.angle(remove_phase_offset(t)), 0.0))
        True
    """
    t = _image(obj, "obj").astype(np.complex128)
    return t * np.exp(-1j * phase_offset(t, weights))


def _plane(shape: tuple[int, int], coefficients) -> np.ndarray:
    a, gy, gx = coefficients
    y, x = _grid(shape)
    return a + gy * y + gx * x


def _grid(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (y, x) relative to the array centre (H//2, W//2), in px."""
    y = np.arange(shape[0], dtype=np.float64)[:, None] - shape[0] // 2
    x = np.arange(shape[1], dtype=np.float64)[None, :] - shape[1] // 2
    return y, x


def _plane_fit(phase: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted least-squares (a, g_y, g_x) of phase ≈ a + g_y·y + g_x·x."""
    y, x = _grid(phase.shape)
    basis = np.stack(np.broadcast_arrays(np.ones_like(y), y, x), axis=-1)[w > 0]
    sw = np.sqrt(w[w > 0])
    coef, *_ = np.linalg.lstsq(basis * sw[:, None], phase[w > 0] * sw, rcond=None)
    return coef


def fit_phase_ramp(image, weights=None) -> tuple[float, float, float]:
    """Weighted least-squares linear phase φ ≈ a + g_y·y + g_x·x of an image.

    A complex image is fitted without unwrapping: the slopes are first taken from the weighted
    mean neighbour phase differences arg(T[i+1]·T*[i]) (free of 2π jumps for ramps under π
    per pixel), then the plane fit of the remaining, now small, phase refines all three
    coefficients. A real image is taken to be an (unwrapped) phase in rad and fitted directly.

    Args:
        image: complex transmission, or a real phase in rad, shape (y, x).
        weights: non-negative weights or a bool region (y, x); default |T| (complex input)
            or uniform (real input).

    Returns:
        ``(a, g_y, g_x)``: offset in rad at the array centre (H//2, W//2) and slopes in
        rad/px along y and x.

    Raises:
        ValueError: wrong shapes, or weights that select no pixel.

    Examples:
        >>> import numpy as np
        >>> y, x = np.mgrid[-8:8, -8:8]
        >>> t = np.exp(1j * (0.3 + 0.5 * y - 0.7 * x))
        >>> [round(v, 6) for v in fit_phase_ramp(t)]
        [0.3, 0.5, -0.7]
    """
    img = _image(image)
    w = _weights(img, weights)
    if not np.iscomplexobj(img):
        a, gy, gx = _plane_fit(img.astype(np.float64), w)
        return float(a), float(gy), float(gx)
    t = img.astype(np.complex128)
    slopes = []
    for axis in (0, 1):
        lo = [slice(None), slice(None)]
        hi = [slice(None), slice(None)]
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        pair_w = np.sqrt(w[tuple(lo)] * w[tuple(hi)])
        diff = t[tuple(hi)] * np.conj(t[tuple(lo)])
        unit = np.where(np.abs(diff) > 0, diff / np.where(np.abs(diff) > 0, np.abs(diff), 1), 0)
        slopes.append(float(np.angle(np.sum(pair_w * unit))) if np.any(pair_w > 0) else 0.0)
    coarse = _plane(t.shape, (0.0, *slopes))
    residual = t * np.exp(-1j * coarse)
    offset = np.angle(np.sum(w * np.exp(1j * np.angle(residual))))
    fine = _plane_fit(np.angle(residual * np.exp(-1j * offset)), w)
    return float(offset + fine[0]), float(slopes[0] + fine[1]), float(slopes[1] + fine[2])


def remove_phase_ramp(image, weights=None, *, offset: bool = True):
    """The image with its weighted least-squares linear phase (and offset) removed.

    Args:
        image: complex transmission (y, x), or a real unwrapped phase in rad.
        weights: non-negative weights or a bool region (y, x) for the fit, see
            :func:`fit_phase_ramp`.
        offset: also remove the constant phase a (default True).

    Returns:
        Complex input: T·exp(−i(a + g·r)) as complex128. Real input: φ − (a + g·r) in rad.

    Examples:
        >>> import numpy as np
        >>> y, x = np.mgrid[-8:8, -8:8]
        >>> t = 0.8 * np.exp(1j * (1.0 + 0.2 * y + 0.1 * x))
        >>> bool(np.allclose(remove_phase_ramp(t), 0.8))
        True
    """
    img = _image(image)
    a, gy, gx = fit_phase_ramp(img, weights)
    ramp = _plane(img.shape, (a if offset else 0.0, gy, gx))
    if np.iscomplexobj(img):
        return img.astype(np.complex128) * np.exp(-1j * ramp)
    return img.astype(np.float64) - ramp


def _wrap(phase: np.ndarray) -> np.ndarray:
    return (phase + np.pi) % (2 * np.pi) - np.pi


def _dct_solve(rhs: np.ndarray) -> np.ndarray:
    """Solve DᵀD φ = rhs (D: forward differences, Neumann borders) by DCT; mean-zero φ."""
    h, w = rhs.shape
    coeffs = sfft.dctn(rhs, type=2, norm="ortho")
    ky = 2.0 - 2.0 * np.cos(np.pi * np.arange(h) / h)[:, None]
    kx = 2.0 - 2.0 * np.cos(np.pi * np.arange(w) / w)[None, :]
    denom = ky + kx
    denom[0, 0] = 1.0
    coeffs = coeffs / denom
    coeffs[0, 0] = 0.0
    return sfft.idctn(coeffs, type=2, norm="ortho")


def _diff_adjoint(gy: np.ndarray, gx: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Dᵀ(g_y, g_x): adjoint of the forward differences along y and x."""
    out = np.zeros(shape)
    out[:-1] -= gy
    out[1:] += gy
    out[:, :-1] -= gx
    out[:, 1:] += gx
    return out


def _normal_operator(phi: np.ndarray, wy: np.ndarray, wx: np.ndarray) -> np.ndarray:
    """DᵀWD φ, the (positive semi-definite) weighted least-squares normal operator."""
    return _diff_adjoint(wy * np.diff(phi, axis=0), wx * np.diff(phi, axis=1), phi.shape)


def unwrap_phase(
    phase: Float[Array, "y x"],
    weights: Float[Array, "y x"] | Bool[Array, "y x"] | None = None,
    *,
    iterations: int = 100,
    tolerance: float = 1e-9,
) -> np.ndarray:
    """Least-squares 2-D phase unwrapping (Ghiglia & Romero 1994), congruent with the input.

    Minimises Σ w (∇φ − W[∇ψ])² over φ, with ψ the wrapped phase and W the wrap into
    [−π, π): unweighted by one DCT Poisson solve, weighted by conjugate gradients
    preconditioned with that solve (pixel-pair weight √(w_i·w_j); zero-weight pixels are
    left out, e.g. outside the object). The least-squares φ is then snapped to the nearest
    value ψ + 2πk per pixel, so the output is congruent with ψ.

    Args:
        phase: wrapped phase in rad, shape (y, x) (values outside [−π, π) are wrapped).
        weights: non-negative quality weights or a bool region, or None for uniform.
        iterations: most conjugate-gradient iterations (weighted case).
        tolerance: relative residual at which conjugate gradients stop.

    Returns:
        Unwrapped phase in rad, float64, shape (y, x); its mean over the weighted pixels
        lies within π of the input's.

    Examples:
        >>> import numpy as np
        >>> y, x = np.mgrid[0:32, 0:32]
        >>> truth = 0.05 * ((x - 16) ** 2 + (y - 10) ** 2) / 4
        >>> out = unwrap_phase(np.angle(np.exp(1j * truth)))
        >>> k = np.round((out - truth).mean() / (2 * np.pi))
        >>> bool(np.allclose(out, truth + 2 * np.pi * k))
        True
    """
    psi = _image(phase, "phase")
    if np.iscomplexobj(psi) or not np.all(np.isfinite(psi)):
        raise ValueError("phase: expected a finite real phase image in rad (use np.angle(T))")
    psi = _wrap(psi.astype(np.float64))
    raw_y, raw_x = np.diff(psi, axis=0), np.diff(psi, axis=1)
    dy, dx = _wrap(raw_y), _wrap(raw_x)
    w = None if weights is None else _weights(psi, weights)
    pairs_y = np.ones(dy.shape, bool) if w is None else (w[:-1] > 0) & (w[1:] > 0)
    pairs_x = np.ones(dx.shape, bool) if w is None else (w[:, :-1] > 0) & (w[:, 1:] > 0)
    if np.array_equal(dy[pairs_y], raw_y[pairs_y]) and np.array_equal(dx[pairs_x], raw_x[pairs_x]):
        # no wrap between any two (weighted) neighbours: ψ itself has zero misfit, so it is
        # the least-squares solution (the common case of weak objects; no solve needed)
        return psi
    if weights is None:
        phi = _dct_solve(_diff_adjoint(dy, dx, psi.shape))
        valid = np.ones(psi.shape, bool)
    else:
        valid = w > 0
        wy = np.sqrt(w[:-1] * w[1:])
        wx = np.sqrt(w[:, :-1] * w[:, 1:])
        rhs = _diff_adjoint(wy * dy, wx * dx, psi.shape)
        phi = _pcg(lambda v: _normal_operator(v, wy, wx), rhs, iterations, tolerance)
    offset = np.mean((psi - phi)[valid])
    phi = phi + offset
    return psi + 2 * np.pi * np.round((phi - psi) / (2 * np.pi))


def _pcg(apply, rhs: np.ndarray, iterations: int, tolerance: float) -> np.ndarray:
    """Conjugate gradients for DᵀWD φ = rhs, preconditioned by the unweighted DCT solve."""
    x = np.zeros_like(rhs)
    r = rhs.copy()
    norm0 = np.linalg.norm(r)
    if norm0 == 0:
        return x
    z = _dct_solve(r)
    p = z.copy()
    rz = np.vdot(r, z)
    for _ in range(iterations):
        ap = apply(p)
        curvature = np.vdot(p, ap)
        if curvature <= 0:
            break
        alpha = rz / curvature
        x += alpha * p
        r -= alpha * ap
        if np.linalg.norm(r) < tolerance * norm0:
            break
        z = _dct_solve(r)
        rz_new = np.vdot(r, z)
        p = z + (rz_new / rz) * p
        rz = rz_new
    return x


def optical_density(obj: Complex[Array, "y x"], floor: float = 1e-6) -> np.ndarray:
    """Optical density OD = −ln|T|² (dimensionless; = 2k∫β dz), from a transmission.

    Args:
        obj: complex (or real amplitude) transmission T.
        floor: smallest |T| used, so opaque or empty pixels give a large finite OD.

    Returns:
        OD, float64, same shape.

    Examples:
        >>> import numpy as np
        >>> round(float(optical_density(np.array([np.exp(-0.5)]))[0]), 12)
        1.0
    """
    amp = np.maximum(np.abs(np.asarray(obj)), float(floor))
    return -2.0 * np.log(amp)


def projected_phase(obj: Complex[Array, "y x"], weights=None, *, unwrap: bool = True):
    """Projected phase k∫δ dz = −arg T in rad (positive for a phase-advancing sample, δ > 0).

    The global phase offset is removed first (weighted mean phase 0, weights |T| by default),
    since ptychography does not determine it; put a known-empty region in ``weights`` to make
    that region the zero.

    Args:
        obj: complex transmission (y, x).
        weights: weights or bool region for the offset (and for unwrapping), or None.
        unwrap: unwrap with :func:`unwrap_phase` (default); False returns the wrapped value.

    Returns:
        k∫δ dz in rad, float64, shape (y, x).
    """
    t = remove_phase_offset(obj, weights)
    phase = np.angle(t)
    if unwrap:
        phase = unwrap_phase(phase, weights)
    return -phase


def delta_beta_integrals(
    obj: Complex[Array, "y x"], energy_ev: float, weights=None, *, floor: float = 1e-6
) -> tuple[np.ndarray, np.ndarray]:
    """Projected refractive-index decrements (∫δ dz, ∫β dz) in m from a transmission.

    Inverts :func:`diffptycho.physics.optics.transmission`: ∫β dz = OD / (2k) and
    ∫δ dz = (−arg T, unwrapped, offset removed) / k, with k = 2π/λ.

    Args:
        obj: complex transmission (y, x).
        energy_ev: photon energy in eV.
        weights: weights or bool region for offset removal and unwrapping, or None.
        floor: smallest |T| used in the OD.

    Returns:
        ``(delta_integral_m, beta_integral_m)``, both float64 in m.

    Examples:
        >>> import numpy as np
        >>> from diffptycho.physics.optics import transmission
        >>> t = np.asarray(transmission(np.zeros((4, 4)), np.full((4, 4), 2e-9), 710.0))
        >>> _, b = delta_beta_integrals(t, 710.0)
        >>> bool(np.allclose(b, 2e-9))
        True
    """
    k = float(optics.wavenumber(float(energy_ev)))
    od = optical_density(obj, floor)
    return projected_phase(obj, weights) / k, od / (2.0 * k)
