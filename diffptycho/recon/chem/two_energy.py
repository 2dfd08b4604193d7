"""Two-energy chemical unmixing and the polar-angle histogram (battery-chemistry workflow).

With optical densities at two energies E1, E2 (per voxel of a tomogram or per pixel of a map)
and two end members, the concentrations C = (C_first, C_second) solve the 2×2 linear system

    (OD_E1 − OD_pre, OD_E2 − OD_pre)ᵀ = I · (C_first, C_second)ᵀ,

where column j of the reference matrix I holds the OD of end member j at (E1, E2) per unit
concentration (pre-edge subtracted too when OD_pre is used). C is in the unit in which the
references are given: with per-voxel ODs of the pure materials it is a volume fraction.

The **polar angle** θ = atan2(OD_E2, OD_E1) of a voxel in the OD(E1)–OD(E2) correlation plot
depends on composition only, not on the amount of material: a mixture with share f of the first
member points along f·I[:, 0] + (1 − f)·I[:, 1]. The histogram of θ over the sample is fitted by
two Gaussians whose centres give the end-member compositions actually present and whose RMS
widths, propagated through dθ → df, give the per-voxel composition error.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import curve_fit

from diffptycho._typing import Array, Float
from diffptycho.recon.chem.plausibility import occupied, warn_if_implausible

__all__ = [
    "SingularReferenceError",
    "TwoGaussianFit",
    "check_reference_matrix",
    "fit_polar_histogram",
    "fraction_first",
    "fraction_to_polar_angle",
    "polar_angle",
    "polar_angle_to_fraction",
    "reference_matrix",
    "smooth_concentrations",
    "unmix_two_energy",
]

MAX_CONDITION = 1e8
"""Largest condition number of the reference matrix accepted as invertible."""


class SingularReferenceError(ValueError):
    """The two end members cannot be told apart at the two energies."""


def check_reference_matrix(matrix) -> np.ndarray:
    """Validate a 2×2 reference matrix; raise :class:`SingularReferenceError` if singular.

    Args:
        matrix: I[i, j] = OD of end member j at energy i per unit concentration, shape (2, 2).

    Returns:
        The matrix as a float64 NumPy array.
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (2, 2):
        raise ValueError(f"reference matrix: expected shape (2, 2), got {m.shape}")
    if not np.all(np.isfinite(m)):
        raise ValueError(f"reference matrix: non-finite entries {m.tolist()}")
    s = np.linalg.svd(m, compute_uv=False)
    if not s[0] > 0 or s[1] <= s[0] / MAX_CONDITION:
        angles = np.degrees(np.arctan2(m[1], m[0]))
        cond = np.inf if s[1] == 0 else s[0] / s[1]
        raise SingularReferenceError(
            f"reference matrix {m.tolist()} is singular (condition number {cond:.3g}): the end "
            f"members' ODs at E1/E2 are proportional (polar angles {angles[0]:.2f}° and "
            f"{angles[1]:.2f}°), so these two energies cannot tell them apart; choose energies "
            "where their OD ratios differ"
        )
    return m


def reference_matrix(od_first, od_second, od_pre=None) -> np.ndarray:
    """Reference intensity matrix from the end members' ODs at E1 and E2.

    Args:
        od_first: OD of the first end member at (E1, E2), per unit concentration.
        od_second: OD of the second end member at (E1, E2), per unit concentration.
        od_pre: optional pre-edge OD of (first, second) end member, subtracted from both
            energies (use with the ``od_pre`` argument of :func:`unmix_two_energy`).

    Returns:
        I of shape (2, 2) with I[i, j] the OD of end member j at energy i.

    Raises:
        SingularReferenceError: the two end members have proportional ODs.

    Examples:
        >>> reference_matrix([1.0, 0.52], [0.4, 0.856]).tolist()
        [[1.0, 0.4], [0.52, 0.856]]
    """
    m = np.stack([np.asarray(od_first, float), np.asarray(od_second, float)], axis=1)
    if od_pre is not None:
        m = m - np.asarray(od_pre, float)[None, :]
    return check_reference_matrix(m)


def unmix_two_energy(
    od: Float[Array, "2 ..."],
    matrix,
    od_pre: Float[Array, "..."] | None = None,
    *,
    check: bool = False,
) -> Float[Array, "2 ..."]:
    """Concentrations of the two end members per voxel: C = I⁻¹ (OD − OD_pre).

    Args:
        od: ODs at (E1, E2) stacked on the first axis, shape (2, …) (dimensionless).
        matrix: reference matrix I (2, 2), see :func:`reference_matrix`.
        od_pre: optional pre-edge OD (…), subtracted from both energies.
        check: on concrete arrays (not under ``jit``), warn with
            :class:`~diffptycho.recon.chem.plausibility.ImplausibleUnmixingWarning` when the
            first member's share C_first / (C_first + C_second) leaves [−0.2, 1.2] in more than
            2 % of the occupied voxels (total ≥ 0.2 × its 99.5th percentile).

    Returns:
        (C_first, C_second), shape (2, …), in the unit of concentration of the references.

    Raises:
        SingularReferenceError: ``matrix`` is not invertible.

    Warns:
        ImplausibleUnmixingWarning: implausible shares (see ``check``): inconsistent
            references, wrong energies or data that are not ODs.

    Examples:
        >>> m = reference_matrix([1.0, 0.5], [0.5, 1.0])
        >>> [round(float(v), 6) for v in unmix_two_energy(jnp.asarray([1.0, 1.0]), m)]
        [0.666667, 0.666667]
    """
    inverse = np.linalg.inv(check_reference_matrix(matrix))
    od = jnp.asarray(od)
    if od.ndim < 1 or od.shape[0] != 2:
        raise ValueError(f"od: expected the two energies on the first axis, got {od.shape}")
    if od_pre is not None:
        od = od - jnp.asarray(od_pre, dtype=od.dtype)[None]
    conc = jnp.tensordot(jnp.asarray(inverse, dtype=od.dtype), od, axes=1)
    if check and not isinstance(conc, jax.core.Tracer):
        c = np.asarray(conc, dtype=np.float64)
        warn_if_implausible(
            np.asarray(fraction_first(c)),
            occupied(c.sum(axis=0)),
            what="two-energy unmixing",
            stacklevel=3,
        )
    return conc


def polar_angle(od: Float[Array, "2 ..."]) -> Float[Array, "..."]:
    """Polar angle θ = atan2(OD_E2, OD_E1) of each voxel in the correlation plot.

    Args:
        od: ODs at (E1, E2) on the first axis, shape (2, …), pre-edge subtracted if used.

    Returns:
        θ in rad, shape (…); in (0, π/2) for positive ODs.
    """
    od = jnp.asarray(od)
    if od.ndim < 1 or od.shape[0] != 2:
        raise ValueError(f"od: expected the two energies on the first axis, got {od.shape}")
    return jnp.arctan2(od[1], od[0])


def fraction_first(
    concentrations: Float[Array, "2 ..."], *, clip: bool = False
) -> Float[Array, "..."]:
    """Share of the first end member, C_first / (C_first + C_second).

    Args:
        concentrations: (C_first, C_second), shape (2, …).
        clip: clip to [0, 1] (noise pushes single voxels outside).

    Returns:
        Dimensionless share (…); NaN where the total is zero.
    """
    c = jnp.asarray(concentrations)
    total = c[0] + c[1]
    f = jnp.where(total != 0, c[0] / jnp.where(total != 0, total, 1), jnp.nan)
    return jnp.clip(f, 0.0, 1.0) if clip else f


def fraction_to_polar_angle(fraction, matrix) -> Float[Array, "..."]:
    """Polar angle of a mixture with share ``fraction`` of the first end member.

    Args:
        fraction: share of the first end member (dimensionless), any shape.
        matrix: reference matrix I (2, 2).

    Returns:
        θ in rad: atan2 of f·I[1, 0] + (1 − f)·I[1, 1] over f·I[0, 0] + (1 − f)·I[0, 1].
    """
    m = check_reference_matrix(matrix)
    f = jnp.asarray(fraction)
    return jnp.arctan2(f * m[1, 0] + (1 - f) * m[1, 1], f * m[0, 0] + (1 - f) * m[0, 1])


def polar_angle_to_fraction(angle_rad, matrix) -> Float[Array, "..."]:
    """Share of the first end member from the polar angle (inverse of the above).

    Solving sinθ·(f I₀₀ + (1 − f) I₀₁) = cosθ·(f I₁₀ + (1 − f) I₁₁) for f gives
    f = (I₁₁ cosθ − I₀₁ sinθ) / ((I₀₀ − I₀₁) sinθ − (I₁₀ − I₁₁) cosθ).

    Args:
        angle_rad: polar angle θ in rad, any shape.
        matrix: reference matrix I (2, 2).

    Returns:
        Dimensionless share f (1 at the first end member's angle, 0 at the second's).

    Examples:
        >>> m = reference_matrix([1.0, 0.52], [1.0, 2.14])
        >>> round(float(polar_angle_to_fraction(np.arctan(0.52), m)), 6)
        1.0
    """
    m = check_reference_matrix(matrix)
    s, c = jnp.sin(jnp.asarray(angle_rad)), jnp.cos(jnp.asarray(angle_rad))
    return (m[1, 1] * c - m[0, 1] * s) / ((m[0, 0] - m[0, 1]) * s - (m[1, 0] - m[1, 1]) * c)


def smooth_concentrations(concentrations, mask, sigma_vox: float) -> np.ndarray:
    """Gaussian smoothing of concentrations inside a mask (normalised convolution).

    Voxels are oversampled relative to the resolution (6.7 nm voxels at 11 nm in the study), so a
    Gaussian of about the PSF's width removes noise beyond the resolution. Only occupied voxels
    contribute, so the surroundings neither dilute nor bias the particle's composition.

    Args:
        concentrations: (C_first, C_second), shape (2, …).
        mask: occupied voxels (…).
        sigma_vox: Gaussian standard deviation in voxels (0: no smoothing).

    Returns:
        Smoothed concentrations (2, …), float64; unchanged outside ``mask``.
    """
    from scipy import ndimage

    c = np.asarray(concentrations, dtype=np.float64)
    if sigma_vox <= 0:
        return c
    w = np.asarray(mask, dtype=np.float64)
    norm = ndimage.gaussian_filter(w, sigma_vox)
    smooth = np.stack([ndimage.gaussian_filter(ci * w, sigma_vox) for ci in c])
    return np.where(w > 0, smooth / np.maximum(norm, 1e-12), c)


@dataclasses.dataclass(frozen=True)
class TwoGaussianFit:
    """Two Gaussians fitted to the polar-angle histogram, sorted by centre.

    Attributes:
        centres_deg: Gaussian centres in degrees (2,).
        sigmas_deg: RMS widths in degrees (2,).
        amplitudes: peak heights in voxels per bin (2,).
        centres_std_deg: 1σ fit uncertainty of the centres in degrees (2,).
        voxel_share: share of the voxels in each Gaussian (2,).
        fraction_first: share of the first end member at each centre (2,), NaN without matrix.
        fraction_error: composition error |df/dθ|·σ of each population (2,), NaN without matrix.
        bin_edges_deg: histogram bin edges in degrees (bins + 1,).
        counts: voxels per bin (bins,).
    """

    centres_deg: np.ndarray
    sigmas_deg: np.ndarray
    amplitudes: np.ndarray
    centres_std_deg: np.ndarray
    voxel_share: np.ndarray
    fraction_first: np.ndarray
    fraction_error: np.ndarray
    bin_edges_deg: np.ndarray
    counts: np.ndarray

    def curve(self, angles_deg) -> np.ndarray:
        """Each Gaussian evaluated at ``angles_deg`` (degrees), shape (2, n), voxels per bin."""
        a = np.asarray(angles_deg, float)[None]
        mu, s = self.centres_deg[:, None], self.sigmas_deg[:, None]
        return self.amplitudes[:, None] * np.exp(-0.5 * ((a - mu) / s) ** 2)

    def as_datasets(self, prefix: str = "gaussian_fit") -> dict[str, np.ndarray]:
        """The fit as ``{f"{prefix}/{field}": array}`` for :func:`~diffptycho.io.write_results`."""
        return {f"{prefix}/{f.name}": getattr(self, f.name) for f in dataclasses.fields(self)}


def _fraction_and_slope(theta: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """f(θ) of :func:`polar_angle_to_fraction` and df/dθ (per rad), in float64 NumPy."""
    s, c = np.sin(theta), np.cos(theta)
    num = m[1, 1] * c - m[0, 1] * s
    den = (m[0, 0] - m[0, 1]) * s - (m[1, 0] - m[1, 1]) * c
    d_num = -m[1, 1] * s - m[0, 1] * c
    d_den = (m[0, 0] - m[0, 1]) * c + (m[1, 0] - m[1, 1]) * s
    return num / den, (d_num * den - num * d_den) / den**2


def _two_gaussians(x, a1, m1, s1, a2, m2, s2):
    return a1 * np.exp(-0.5 * ((x - m1) / s1) ** 2) + a2 * np.exp(-0.5 * ((x - m2) / s2) ** 2)


def fit_polar_histogram(
    angles_deg,
    matrix=None,
    *,
    bins: int = 180,
    range_deg: tuple[float, float] = (0.0, 90.0),
    initial_centres_deg: tuple[float, float] | None = None,
    min_voxels: int = 10,
) -> TwoGaussianFit:
    """Fit the polar-angle histogram with two Gaussians (Poisson-weighted least squares).

    The counts are fitted with weights 1/√max(n, 1), so that sparse tails (seen on the usual
    log axis) neither dominate nor vanish. Centres start at the end members' polar angles when
    ``matrix`` is given, else at the 25th and 75th percentiles of the angles.

    Args:
        angles_deg: polar angles in degrees, any shape; NaN entries (masked voxels) are skipped.
        matrix: reference matrix I (2, 2) to convert centres and widths to compositions.
        bins: number of histogram bins.
        range_deg: histogram range in degrees.
        initial_centres_deg: starting centres in degrees (overrides the defaults).
        min_voxels: fewest finite angles accepted.

    Returns:
        The :class:`TwoGaussianFit`, components sorted by centre.

    Raises:
        ValueError: fewer than ``min_voxels`` finite angles (e.g. every voxel masked as empty),
            or the least-squares fit failed.

    Warns:
        ImplausibleUnmixingWarning: a population's share of the first member is outside
            [−0.2, 1.2] (with ``matrix``).
    """
    a = np.asarray(angles_deg, dtype=np.float64).ravel()
    a = a[np.isfinite(a)]
    if a.size < min_voxels:
        raise ValueError(
            f"polar-angle histogram: only {a.size} finite voxels (need ≥ {min_voxels}); "
            "is every voxel masked as empty? lower the empty threshold"
        )
    counts, edges = np.histogram(a, bins=bins, range=range_deg)
    x = 0.5 * (edges[1:] + edges[:-1])
    width = edges[1] - edges[0]
    if initial_centres_deg is not None:
        mu0 = np.asarray(initial_centres_deg, float)
    elif matrix is not None:
        m = check_reference_matrix(matrix)
        mu0 = np.degrees(np.arctan2(m[1], m[0]))
    else:
        mu0 = np.percentile(a, [25.0, 75.0])
    lo, hi = range_deg
    mu0 = np.clip(np.sort(mu0), lo + width, hi - width)
    # start each Gaussian on the highest bin near its expected centre, as wide as that peak
    window = max(3.0 * width, 0.05 * (hi - lo))
    p0 = []
    for mu in mu0:
        near = np.nonzero(np.abs(x - mu) <= window)[0]
        top = near[np.argmax(counts[near])] if near.size else int(np.argmin(np.abs(x - mu)))
        above = np.abs(x[counts >= 0.5 * counts[top]] - x[top])
        half = above[above <= window].max() if counts[top] > 0 else window
        p0 += [max(float(counts[top]), 1.0), float(x[top]), max((half + width / 2) / 1.18, width)]
    lower = [0.0, lo, width / 4, 0.0, lo, width / 4]
    upper = [np.inf, hi, hi - lo, np.inf, hi, hi - lo]
    try:
        popt, pcov = curve_fit(
            _two_gaussians,
            x,
            counts.astype(float),
            p0=p0,
            sigma=np.sqrt(np.maximum(counts, 1.0)),
            bounds=(lower, upper),
            maxfev=20000,
        )
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"polar-angle histogram: two-Gaussian fit failed ({err})") from err
    amps, mus, sigmas = popt[0::3], popt[1::3], np.abs(popt[2::3])
    mu_std = np.sqrt(np.clip(np.diag(pcov)[1::3], 0.0, None))
    order = np.argsort(mus)
    amps, mus, sigmas, mu_std = amps[order], mus[order], sigmas[order], mu_std[order]
    areas = amps * sigmas * np.sqrt(2 * np.pi) / width
    share = areas / areas.sum() if areas.sum() > 0 else np.full(2, np.nan)
    if matrix is not None:
        frac, slope = _fraction_and_slope(np.radians(mus), check_reference_matrix(matrix))
        err = np.abs(slope) * np.radians(sigmas)
        warn_if_implausible(
            frac,
            what=f"polar-angle histogram (populations at {mus[0]:.2f}° and {mus[1]:.2f}°, "
            f"first member's shares {frac[0]:.2f} and {frac[1]:.2f})",
            max_outside=0.0,
            stacklevel=3,
        )
    else:
        frac = err = np.full(2, np.nan)
    return TwoGaussianFit(
        centres_deg=mus,
        sigmas_deg=sigmas,
        amplitudes=amps,
        centres_std_deg=mu_std,
        voxel_share=share,
        fraction_first=frac,
        fraction_error=err,
        bin_edges_deg=edges,
        counts=counts,
    )
