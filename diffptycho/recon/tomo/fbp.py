"""Filtered backprojection for parallel beams, with arbitrary (uneven, limited) angles.

``f(z, x) ≈ Σ_θ w_θ (h ∗ p_θ)(x cos θ + z sin θ)``: each projection is convolved along t with
the band-limited ramp kernel of Ramachandran & Lakshminarayanan (``h[0] = 1/4``,
``h[n odd] = −1/(πn)²``, else 0, whose spectrum is ``|ν|`` up to Nyquist and has no DC offset),
optionally apodised by a window, then backprojected with the shared adjoint
:func:`~diffptycho.physics.tomography.backproject` weighted by the angular quadrature weights
``w_θ`` of :func:`~diffptycho.recon.tomo.operators.angular_weights` (π / n for an even 180°
scan). Projections are padded to at least twice their width before filtering so the circular
convolution does not wrap. Units: for projections in voxel units the volume is in units per
voxel; divide by the voxel size (m) for units per m.

Windows (``ν`` in cycles/pixel, |ν| ≤ ½, scaled by ``cutoff``): ``"ramp"`` none,
``"shepp-logan"`` sinc(ν), ``"cosine"`` cos(πν), ``"hamming"`` 0.54 + 0.46 cos(2πν),
``"hann"`` cos²(πν).

With ``mesh`` (:func:`~diffptycho.recon.tomo.sharding.tomo_mesh`) the rows or the angles are
split over devices: each filters and back-projects its share; angle shares are summed.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import scipy.fft

from diffptycho._typing import Angles, Array, Float, Projections, Shaped
from diffptycho.physics import tomography
from diffptycho.recon.tomo.operators import angular_weights
from diffptycho.recon.tomo.sharding import PER_ANGLE, PROJECTIONS, VOLUME, Split, over_mesh

__all__ = ["FILTERS", "fbp", "filter_projections", "filter_response"]

FILTERS = ("ramp", "shepp-logan", "cosine", "hamming", "hann")


def filter_response(n_pad: int, name: str = "ramp", cutoff: float = 1.0) -> np.ndarray:
    """Frequency response of the FBP filter on an FFT grid of ``n_pad`` samples.

    Args:
        n_pad: padded projection length (samples).
        name: one of :data:`FILTERS`.
        cutoff: fraction of the Nyquist frequency kept, 0 < cutoff ≤ 1.

    Returns:
        Real response (n_pad,) in FFT order, ≈ ``|ν|`` × window.

    Examples:
        >>> h = filter_response(64)
        >>> round(float(h[16]), 3)  # ν = 1/4 cycles/pixel
        0.25
    """
    if name not in FILTERS:
        raise ValueError(f"filter={name!r}: expected one of {', '.join(FILTERS)}")
    if not 0 < cutoff <= 1:
        raise ValueError(f"cutoff={cutoff}: expected 0 < cutoff ≤ 1 (fraction of Nyquist)")
    n = np.concatenate([np.arange(0, n_pad // 2 + 1), np.arange(-((n_pad - 1) // 2), 0)])
    kernel = np.zeros(n_pad)
    kernel[0] = 0.25
    odd = n % 2 == 1
    kernel[odd] = -1.0 / (np.pi * n[odd]) ** 2
    response = np.real(np.fft.fft(kernel))
    nu = np.fft.fftfreq(n_pad) / cutoff  # window argument, |ν| ≤ ½ at the cutoff
    if name == "shepp-logan":
        response = response * np.sinc(nu)
    elif name == "cosine":
        response = response * np.cos(np.pi * nu)
    elif name == "hamming":
        response = response * (0.54 + 0.46 * np.cos(2 * np.pi * nu))
    elif name == "hann":
        response = response * np.cos(np.pi * nu) ** 2
    return np.where(np.abs(nu) <= 0.5, response, 0.0)


def filter_projections(
    projections: Shaped[Array, "angle y t"],
    name: str = "ramp",
    *,
    cutoff: float = 1.0,
    pad_mode: str = "constant",
) -> Shaped[Array, "angle y t"]:
    """Convolve every projection row with the FBP filter along t.

    Args:
        projections: (angle, y, t) line integrals, real or complex.
        name: filter name, see :data:`FILTERS`.
        cutoff: fraction of Nyquist kept (0 < cutoff ≤ 1).
        pad_mode: ``"constant"`` (zeros; objects inside the field of view) or ``"edge"``
            (repeat the border values; reduces cupping for truncated, region-of-interest data).

    Returns:
        Filtered projections, same shape and dtype.
    """
    p = jnp.asarray(projections)
    if pad_mode not in ("constant", "edge"):
        raise ValueError(f"pad_mode={pad_mode!r}: expected 'constant' or 'edge'")
    n_det = p.shape[-1]
    n_pad = scipy.fft.next_fast_len(2 * n_det)
    real = jnp.finfo(p.dtype).dtype
    response = jnp.asarray(filter_response(n_pad, name, cutoff), real)
    left = (n_pad - n_det) // 2
    padded = jnp.pad(p, ((0, 0), (0, 0), (left, n_pad - n_det - left)), mode=pad_mode)
    if jnp.iscomplexobj(p):
        out = jnp.fft.ifft(jnp.fft.fft(padded, axis=-1) * response, axis=-1)
    else:
        half = response[: n_pad // 2 + 1]
        out = jnp.fft.irfft(jnp.fft.rfft(padded, axis=-1) * half, n=n_pad, axis=-1)
    return out[..., left : left + n_det].astype(p.dtype)


def fbp(
    projections: Projections,
    angles_rad: Angles,
    *,
    filter: str = "ramp",
    cutoff: float = 1.0,
    n_z: int | None = None,
    n_x: int | None = None,
    pad_mode: str = "constant",
    weights: Float[Array, " angle"] | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> Shaped[Array, "z y x"]:
    """Filtered backprojection of parallel-beam projections (module docstring).

    Args:
        projections: (angle, y, t) line integrals in voxel units, real or complex.
        angles_rad: rotation angles in rad (angle,), any spacing and range.
        filter: one of :data:`FILTERS`.
        cutoff: fraction of Nyquist kept (0 < cutoff ≤ 1).
        n_z: volume depth (default: detector width).
        n_x: volume width (default: detector width).
        pad_mode: see :func:`filter_projections`.
        weights: angular weights in rad (angle,) (default :func:`angular_weights`).
        mesh: split the rows (axis ``"slab"``) or the angles (``"angle"``) over its devices
            (:func:`~diffptycho.recon.tomo.sharding.tomo_mesh`); None runs on one device.

    Returns:
        Volume (z, y, x) in the projections' units per voxel.

    Examples:
        >>> import jax.numpy as jnp
        >>> from diffptycho.physics.tomography import project
        >>> zz, xx = jnp.mgrid[:32, :32] - 15.5
        >>> disc = (zz**2 + xx**2 < 100.0).astype(jnp.float32)[:, None, :]
        >>> angles = jnp.linspace(0, jnp.pi, 60, endpoint=False)
        >>> rec = fbp(project(disc, angles), angles)
        >>> round(float(rec[16, 0, 16]), 1)
        1.0
    """
    p = jnp.asarray(projections)
    if filter not in FILTERS:
        raise ValueError(f"filter={filter!r}: expected one of {', '.join(FILTERS)}")
    n_det = p.shape[-1]
    n_z = n_det if n_z is None else n_z
    n_x = n_det if n_x is None else n_x
    angles = jnp.asarray(angles_rad)
    w = angular_weights(angles) if weights is None else jnp.asarray(weights)
    return _fbp(p, angles, w, filter, float(cutoff), n_z, n_x, pad_mode, mesh)


@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6, 7, 8))
def _fbp(p, angles, w, name, cutoff, n_z, n_x, pad_mode, mesh):
    def local(split: Split, p, angles, w):
        q = filter_projections(p, name, cutoff=cutoff, pad_mode=pad_mode)
        q = q * w.astype(jnp.finfo(q.dtype).dtype)[:, None, None]
        return (split.sums(tomography.backproject(q, angles, n_z, n_x), PER_ANGLE),)

    inputs = [(p, PROJECTIONS), (angles, PER_ANGLE), (w, PER_ANGLE)]
    rows = p.shape[1]
    return over_mesh(local, mesh, inputs, [VOLUME], rows=rows, angles=p.shape[0])[0]
