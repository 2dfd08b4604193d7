"""One object grid for all energies of a spectral stack, and cross-energy registration.

With a fixed detector the far-field object pixel λz/(N·dx) scales with λ ∝ 1/E (2.2 % over
5420–5540 eV): per-energy reconstructions are first resampled to a common grid
(:func:`resample_to_grid`), then registered to each other (:func:`register_energies`), shifted
(:func:`apply_offsets`) and cut to the pixels seen at every energy (:func:`valid_mask`).

Conventions.

- **Centre**: the pixel ``(H // 2, W // 2)`` of every image and ``(Ho // 2, Wo // 2)`` of the
  target grid are the same physical point (the package's array centre, as for scan positions
  and similarity transforms). Output pixel i sits at ``(i − Ho // 2)·target_pixel_m`` from it.
- **Offsets** ``(E, 2)`` as ``(y, x)`` in pixels of the (common) grid are *measured
  displacements*: the content of image k sits at its place in the reference image plus
  ``offsets_px[k]`` (positive: towards larger indices), i.e.
  ``images[k] ≈ shift(images[reference], offsets_px[k])``, the sign of
  :func:`~diffptycho.recon.align.registration.register_translation`. The reference energy has
  offset 0. Every function that *takes* offsets removes them: ``apply_offsets(images,
  register_energies(images))`` is the aligned stack.
- **Complex images** are interpolated as real and imaginary parts. Interpolation is linear in
  the field, so this is exact for a band-limited T, whereas amplitude/phase interpolation
  breaks at phase wraps and where |T| → 0.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage

from diffptycho._typing import Bool, Float, Shaped
from diffptycho.recon.align.registration import register_translation

__all__ = [
    "GridResample",
    "apply_offsets",
    "register_energies",
    "resample_to_grid",
    "valid_mask",
]


class GridResample(NamedTuple):
    """Result of :func:`resample_to_grid`.

    Attributes:
        images: ``(E, Ho, Wo)`` images on the target grid (``cval`` where not covered).
        coverage: ``(E, Ho, Wo)`` bool, True where the target pixel lies inside the image's
            field of view (between its first and last sample centre).
    """

    images: Shaped[np.ndarray, "energy y x"]
    coverage: Bool[np.ndarray, "energy y x"]


def _stack(name: str, images) -> np.ndarray:
    arr = np.asarray(images)
    if arr.ndim != 3 or 0 in arr.shape:
        raise ValueError(f"{name}: expected an (energy, y, x) stack, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.bool_):
        raise ValueError(f"{name}: expected a numeric stack, got dtype {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: non-finite values (NaN or inf); fill them first")
    return arr


def _offsets(offsets_px, n: int) -> np.ndarray:
    if offsets_px is None:
        return np.zeros((n, 2))
    off = np.asarray(offsets_px, dtype=float)
    if off.shape != (n, 2) or not np.all(np.isfinite(off)):
        raise ValueError(
            f"offsets_px: expected finite (y, x) pixels of shape ({n}, 2), got {off.shape}"
        )
    return off


def _per_part(image: np.ndarray, fn) -> np.ndarray:
    """Apply a real linear resampling to a real or complex image (complex: real and imag)."""
    if np.iscomplexobj(image):
        return fn(image.real) + 1j * fn(image.imag)
    return fn(image)


def resample_to_grid(
    images: Shaped[ArrayLike, "energy y x"],
    pixel_sizes_m: Float[ArrayLike, " energy"],
    target_pixel_m: float,
    out_shape: tuple[int, int],
    *,
    offsets_px: Float[ArrayLike, "energy 2"] | None = None,
    order: int = 3,
    cval: float | complex = 0.0,
) -> GridResample:
    """Resample images of per-energy pixel sizes onto one grid (cubic spline, centre fixed).

    Output pixel i of axis y samples image k at input index
    ``(i − Ho // 2 + offsets_px[k, 0])·target_pixel_m / pixel_sizes_m[k] + H // 2`` (likewise
    in x), so the array centres coincide and, with ``offsets_px``, measured displacements are
    removed in the same interpolation (no second resampling). Spline coefficients use
    ``mode="nearest"`` (no ringing from a zero border); pixels outside an image's field of
    view are set to ``cval`` and flagged in ``coverage``.

    Args:
        images: ``(E, H, W)`` real or complex images (e.g. transmissions or phases).
        pixel_sizes_m: ``(E,)`` pixel size of each image in m (square pixels).
        target_pixel_m: pixel size of the common grid in m.
        out_shape: ``(Ho, Wo)`` of the common grid.
        offsets_px: optional ``(E, 2)`` displacements to remove, in target pixels (see the
            module's sign convention).
        order: spline order (0–5; 3: cubic).
        cval: value outside an image's field of view.

    Returns:
        :class:`GridResample` ``(images (E, Ho, Wo), coverage (E, Ho, Wo))``; real input gives
        float64, complex input complex128.

    Raises:
        ValueError: wrong shapes, non-finite values, non-positive pixel sizes, bad ``order``.

    Examples:
        >>> img = np.zeros((1, 9, 9)); img[0, 4, 6] = 1.0  # 2 px right of centre, 10 nm pixels
        >>> out = resample_to_grid(img, [10e-9], 20e-9, (5, 5), order=1)
        >>> [int(i) for i in np.unravel_index(np.argmax(out.images[0]), (5, 5))]
        [2, 3]
    """
    stack = _stack("images", images)
    n, h, w = stack.shape
    px = np.asarray(pixel_sizes_m, dtype=float)
    if px.shape != (n,) or not np.all(np.isfinite(px)) or np.any(px <= 0):
        raise ValueError(
            f"pixel_sizes_m: expected {n} positive pixel sizes in m, got shape {px.shape}"
        )
    if not (np.isfinite(target_pixel_m) and target_pixel_m > 0):
        raise ValueError(f"target_pixel_m={target_pixel_m!r}: expected a positive size in m")
    shape = tuple(int(s) for s in out_shape)
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"out_shape={out_shape!r}: expected (Ho, Wo) of positive integers")
    if int(order) != order or not 0 <= order <= 5:
        raise ValueError(f"order={order!r}: expected a spline order 0–5")
    off = _offsets(offsets_px, n)
    out_centre = np.array([shape[0] // 2, shape[1] // 2], dtype=float)
    in_centre = np.array([h // 2, w // 2], dtype=float)
    dtype = np.complex128 if np.iscomplexobj(stack) else np.float64
    out = np.empty((n, *shape), dtype=dtype)
    coverage = np.empty((n, *shape), dtype=bool)
    grids = [np.arange(s, dtype=float) for s in shape]
    for k in range(n):
        scale = target_pixel_m / px[k]
        # input = scale·(output − out_centre + offset) + in_centre, per axis (diagonal map)
        offset = in_centre + scale * (off[k] - out_centre)
        out[k] = _per_part(
            stack[k],
            lambda part, s=scale, o=offset: ndimage.affine_transform(
                part.astype(float),
                np.array([s, s]),
                offset=o,
                output_shape=shape,
                order=int(order),
                mode="nearest",
            ),
        )
        tol = 1e-9
        iy = scale * grids[0] + offset[0]
        ix = scale * grids[1] + offset[1]
        in_y = (iy >= -tol) & (iy <= h - 1 + tol)
        in_x = (ix >= -tol) & (ix <= w - 1 + tol)
        coverage[k] = in_y[:, None] & in_x[None, :]
        out[k][~coverage[k]] = cval
    return GridResample(out, coverage)


def _register_pair(reference, moving, window, upsample: int) -> np.ndarray:
    """Displacement of ``moving`` against ``reference``, both mean-subtracted inside the window.

    Subtracting the windowed mean first keeps the window's own edge (which does not move) out
    of the correlation, where it would pull the estimate towards zero.
    """

    def prep(img):
        return (img - np.sum(window * img) / np.sum(window)) * window

    return register_translation(prep(reference), prep(moving), upsample=upsample)


def register_energies(
    images: Float[ArrayLike, "energy y x"],
    *,
    reference: int | None = None,
    mask: Float[ArrayLike, "y x"] | None = None,
    upsample: int = 100,
    chain: bool = True,
    neighbours: int = 3,
) -> Float[np.ndarray, "energy 2"]:
    """Sub-pixel displacement of every energy's image relative to a reference energy.

    Contrast changes across an absorption edge (an absorber is faint below it), so images far
    apart in energy may not look alike. With ``chain=True`` (default) every pair of energies
    up to ``neighbours`` apart is registered and the offsets are their robust least-squares
    solution (start: the plain chain of adjacent pairs; Cauchy weights drop pairs that
    disagree by ≳ 0.25 px, i.e. those spoiled by the contrast change). With ``chain=False``
    every energy is registered to the reference directly. Registration is
    :func:`~diffptycho.recon.align.registration.register_translation` (upsampled
    cross-correlation, Guizar-Sicairos et al. 2008) of mean-subtracted images times ``mask``.

    Measured (40 energies, 96² px, Gaussian-blob phantom with offsets of σ = 1 px, absorber
    contrast 1.0 → 0.7 across the edge, noise σ = 0.05 of the contrast; 3 seeds): direct
    registration is fine here but fails (errors of 10 px) once the absorber vanishes below the
    edge; the plain chain (``neighbours=1``) gives 0.21 px RMS (its errors accumulate as a
    random walk), ``neighbours=2`` 0.13, 3 0.087, 5 0.047 px at 2×, 3×, 5× the time. A cos²
    taper as default window biased every pair by 0.05–0.1 px (the window stays while content
    moves), so the default is no window. Optical densities whose absorber (nearly) vanishes
    below the edge break the chain at the edge (0.5 px RMS even without noise): register phase
    images, which change far less across an edge.

    Args:
        images: ``(E, H, W)`` real images on one grid (e.g. phases from
            :func:`resample_to_grid`).
        reference: index of the energy whose offset is 0 (default: the middle one, ``E // 2``,
            which halves the longest chain).
        mask: ``(H, W)`` non-negative window, e.g. the pixels covered at every energy
            (:func:`valid_mask`); default: all pixels.
        upsample: sub-pixel precision is ``1 / upsample`` px.
        chain: register neighbouring energies and solve for the offsets (True) or register
            each energy to the reference (False).
        neighbours: with ``chain``, the largest energy-index distance of a registered pair
            (1: plain chain; cost grows linearly).

    Returns:
        ``(E, 2)`` offsets ``(y, x)`` in px: ``images[k] ≈ images[reference]`` moved by
        ``offsets[k]`` (positive: towards larger indices); ``offsets[reference] = 0``.

    Raises:
        ValueError: not an (E, H, W) real stack, NaNs, bad ``reference`` or ``mask``.
    """
    stack = _stack("images", images)
    if np.iscomplexobj(stack):
        raise ValueError("images: expected real images (e.g. phase or optical density)")
    stack = stack.astype(float)
    n, h, w = stack.shape
    ref = n // 2 if reference is None else reference
    if int(ref) != ref or not 0 <= ref < n:
        raise ValueError(f"reference={reference!r}: expected an energy index in [0, {n})")
    ref = int(ref)
    if mask is None:
        window = np.ones((h, w))
    else:
        window = np.asarray(mask, dtype=float)
        if window.shape != (h, w) or not np.all(np.isfinite(window)) or np.any(window < 0):
            raise ValueError(
                f"mask: expected non-negative finite weights of shape ({h}, {w}), "
                f"got {window.shape}"
            )
        if not np.any(window > 0):
            raise ValueError("mask: all zero; it leaves no pixel to register")
    if int(neighbours) != neighbours or neighbours < 1:
        raise ValueError(f"neighbours={neighbours!r}: expected an integer ≥ 1")
    offsets = np.zeros((n, 2))
    if chain:
        offsets = _graph_offsets(stack, window, upsample, int(neighbours), ref)
    else:
        for k in range(n):
            if k != ref:
                offsets[k] = _register_pair(stack[ref], stack[k], window, upsample)
    return offsets


def _graph_offsets(
    stack: np.ndarray, window: np.ndarray, upsample: int, neighbours: int, ref: int
) -> np.ndarray:
    """Robust least-squares offsets from the displacements of all pairs up to ``neighbours`` apart.

    Each pair (i, j) measures d_j − d_i. The plain chain (adjacent pairs) gives the start;
    then three rounds of weighted least squares with Cauchy weights 1/(1 + (r/0.25 px)²) on
    each pair's misfit r drop pairs whose contrast differs too much to register (across an
    edge), while agreeing chords average the noise that a chain accumulates.
    """
    n = stack.shape[0]
    pairs = [(i, j) for i in range(n) for j in range(i + 1, min(n, i + neighbours + 1))]
    meas = np.array([_register_pair(stack[i], stack[j], window, upsample) for i, j in pairs])
    a = np.zeros((len(pairs), n))
    for p, (i, j) in enumerate(pairs):
        a[p, i], a[p, j] = -1.0, 1.0
    a = np.delete(a, ref, axis=1)
    weights = np.array([1.0 if j - i == 1 else 0.0 for i, j in pairs])
    for _ in range(4):
        sw = np.sqrt(weights)[:, None]
        sol = np.linalg.lstsq(sw * a, sw * meas, rcond=None)[0]
        misfit = np.linalg.norm(a @ sol - meas, axis=1)
        weights = 1.0 / (1.0 + (misfit / 0.25) ** 2)
    return np.insert(sol, ref, 0.0, axis=0)


def apply_offsets(
    images: Shaped[ArrayLike, "energy y x"],
    offsets_px: Float[ArrayLike, "energy 2"],
    *,
    order: int = 3,
    cval: float | complex = 0.0,
) -> Shaped[np.ndarray, "energy y x"]:
    """Remove measured displacements: image k is moved by ``−offsets_px[k]`` (spline shift).

    Same geometry as :func:`resample_to_grid` with equal pixel sizes (cubic spline with
    ``mode="nearest"`` coefficients, ``cval`` outside); complex images as real + imaginary.
    Use :func:`valid_mask` for the pixels that are valid at every energy afterwards.

    Args:
        images: ``(E, H, W)`` real or complex images.
        offsets_px: ``(E, 2)`` displacements ``(y, x)`` in px, e.g. from
            :func:`register_energies`.
        order: spline order (0–5).
        cval: value where the source lies outside the image.

    Returns:
        ``(E, H, W)`` aligned images (float64 or complex128).

    Examples:
        >>> img = np.zeros((1, 7, 7)); img[0, 4, 1] = 1.0
        >>> out = apply_offsets(img, [[1.0, -2.0]], order=1)
        >>> [int(i) for i in np.unravel_index(np.argmax(out[0]), (7, 7))]
        [3, 3]
    """
    stack = _stack("images", images)
    n, h, w = stack.shape
    off = _offsets(offsets_px, n)
    return resample_to_grid(
        stack, np.ones(n), 1.0, (h, w), offsets_px=off, order=order, cval=cval
    ).images


def valid_mask(
    coverage: Bool[ArrayLike, "energy y x"],
    offsets_px: Float[ArrayLike, "energy 2"] | None = None,
    *,
    illumination: Float[ArrayLike, "*energy y x"] | None = None,
    threshold: float = 0.1,
    margin_px: int = 0,
) -> Bool[np.ndarray, "y x"]:
    """Pixels valid at every energy: inside each energy's coverage after removing its offset.

    Coverage is moved like the images in :func:`apply_offsets` (linear interpolation of the
    0/1 map; a pixel counts only if its source lies wholly inside), then intersected over
    energies, optionally with ``illumination ≥ threshold·max`` (at every energy when it has an
    energy axis), and eroded by ``margin_px``.

    Args:
        coverage: ``(E, H, W)`` bool field-of-view maps (e.g. ``GridResample.coverage``).
        offsets_px: ``(E, 2)`` displacements in px (as from :func:`register_energies`), or None.
        illumination: ``(H, W)`` or ``(E, H, W)`` scan illumination Σ|P|² on the same grid(s),
            already aligned like the images.
        threshold: fraction of the maximum illumination that counts as illuminated.
        margin_px: pixels to erode from the border of the valid region.

    Returns:
        ``(H, W)`` bool mask.
    """
    cov = np.asarray(coverage)
    if cov.ndim != 3 or 0 in cov.shape:
        raise ValueError(f"coverage: expected an (energy, y, x) stack, got shape {cov.shape}")
    n, h, w = cov.shape
    off = _offsets(offsets_px, n)
    moved = resample_to_grid(
        cov.astype(float), np.ones(n), 1.0, (h, w), offsets_px=off, order=1, cval=0.0
    ).images
    valid = np.all(moved > 1.0 - 1e-6, axis=0)
    if illumination is not None:
        ill = np.asarray(illumination, dtype=float)
        if ill.shape not in ((h, w), (n, h, w)) or not np.all(np.isfinite(ill)):
            raise ValueError(
                f"illumination: expected finite values of shape ({h}, {w}) or ({n}, {h}, {w}), "
                f"got {ill.shape}"
            )
        if not 0 <= threshold < 1:
            raise ValueError(f"threshold={threshold!r}: expected a fraction in [0, 1)")
        ill = ill.reshape(-1, h, w)
        peak = ill.max(axis=(1, 2), keepdims=True)
        valid &= np.all(ill >= threshold * peak, axis=0)
    if int(margin_px) != margin_px or margin_px < 0:
        raise ValueError(f"margin_px={margin_px!r}: expected an integer ≥ 0")
    if margin_px:
        valid = ndimage.binary_erosion(valid, iterations=int(margin_px), border_value=0)
    return valid
