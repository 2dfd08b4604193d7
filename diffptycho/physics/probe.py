"""Illumination (probe) models: Fresnel zone plate focus and mixed-state probe modes.

A mixed-state probe is a stack of mutually incoherent modes ``(mode, y, x)``; the measured
intensity is the sum of the modes' intensities, so only the density matrix
ρ = Σ_m |ψ_m⟩⟨ψ_m| is physical. :func:`orthogonalize_modes` rewrites any set of modes as the
orthogonal eigenmodes of ρ (sorted by power), which is how reconstructions report them.

The zone plate probe is constructed on the host (its sampling is validated with concrete
numbers); the mode functions are pure JAX and JIT-compatible.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from diffptycho._typing import Array, Complex, ProbeModes, Shaped
from diffptycho.physics.optics import wavelength
from diffptycho.physics.propagation import fresnel_transfer_function


def zone_plate_focal_length(diameter_m: float, outer_zone_width_m: float, energy_ev: float):
    """First-order focal length of a Fresnel zone plate, f = D·Δr_n / λ.

    Args:
        diameter_m: zone plate diameter D in m.
        outer_zone_width_m: outermost zone width Δr_n in m.
        energy_ev: photon energy in eV.

    Returns:
        Focal length in m.

    Examples:
        >>> round(zone_plate_focal_length(240e-6, 25e-9, 708.2) * 1e3, 3)  # mm
        3.427
    """
    return diameter_m * outer_zone_width_m / wavelength(energy_ev)


def _positive(name: str, value: float) -> float:
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name}={value!r}: expected a positive, finite number")
    return value


def _soft_disc(radius: np.ndarray, edge: float, step: float) -> np.ndarray:
    """Anti-aliased disc: 1 inside ``edge``, 0 outside, linear over one sample ``step``."""
    return np.clip((edge - radius) / step + 0.5, 0.0, 1.0)


def zone_plate_probe(
    shape: tuple[int, int],
    pixel_size_m: float,
    energy_ev: float,
    diameter_m: float,
    outer_zone_width_m: float,
    central_stop_diameter_m: float = 0.0,
    defocus_m: float = 0.0,
) -> Complex[Array, "py px"]:
    """Focused beam of a Fresnel zone plate (first order), optionally defocused.

    The zone plate of diameter D and outer zone width Δr_n has f = D·Δr_n/λ and numerical
    aperture NA = λ/(2Δr_n), so its pupil is a disc of radius 1/(2Δr_n) in spatial frequency,
    with a central stop of radius (d_cs/D)/(2Δr_n). The focal field is the inverse FFT of the
    pupil (an Airy pattern with intensity FWHM ≈ 1.03·Δr_n), propagated by ``defocus_m`` with
    the paraxial Fresnel transfer function. Downstream of focus (``defocus_m > 0``) the beam is
    a disc of diameter ≈ D·|Δz|/f = λ|Δz|/Δr_n (an annulus with a central stop).

    Args:
        shape: ``(py, px)`` probe array shape in pixels.
        pixel_size_m: sample pixel size in m; must not exceed ``outer_zone_width_m``.
        energy_ev: photon energy in eV.
        diameter_m: zone plate diameter D in m.
        outer_zone_width_m: outermost zone width Δr_n in m.
        central_stop_diameter_m: central stop diameter in m (0 for none), less than D.
        defocus_m: distance from the focal plane to the sample in m (positive: sample
            downstream of the focus).

    Returns:
        Complex probe, centred on pixel ``(py // 2, px // 2)``, normalised to Σ|ψ|² = 1.

    Raises:
        ValueError: for unphysical arguments or a grid that cannot sample the beam.

    Examples:
        >>> p = zone_plate_probe((64, 64), 10e-9, 708.2, 240e-6, 25e-9)
        >>> round(float((abs(p) ** 2).sum()), 6)
        1.0
    """
    ny, nx = (int(s) for s in shape)
    if ny < 2 or nx < 2:
        raise ValueError(f"shape={shape!r}: expected at least 2 × 2 pixels")
    dx = _positive("pixel_size_m", pixel_size_m)
    drn = _positive("outer_zone_width_m", outer_zone_width_m)
    diameter = _positive("diameter_m", diameter_m)
    lam = wavelength(_positive("energy_ev", energy_ev))
    stop = float(central_stop_diameter_m)
    if not (math.isfinite(stop) and 0.0 <= stop < diameter):
        raise ValueError(
            f"central_stop_diameter_m={central_stop_diameter_m!r}: expected 0 ≤ d_cs < "
            f"diameter_m={diameter_m!r}"
        )
    if not math.isfinite(float(defocus_m)):
        raise ValueError(f"defocus_m={defocus_m!r}: expected a finite distance in m")
    if dx > drn:
        raise ValueError(
            f"pixel_size_m={dx:g} exceeds outer_zone_width_m={drn:g}: the zone plate's cut-off "
            f"frequency 1/(2·Δr_n) lies beyond the grid's Nyquist frequency 1/(2·pixel_size_m). "
            f"Use pixels no larger than Δr_n (≲ Δr_n/2 to resolve the focus)."
        )
    field_of_view = min(ny, nx) * dx
    if field_of_view < 4 * drn:
        raise ValueError(
            f"shape={shape!r} with pixel_size_m={dx:g} spans {field_of_view:g} m, less than "
            f"4·outer_zone_width_m: the focal spot does not fit; use more pixels"
        )
    beam = lam * abs(float(defocus_m)) / drn  # = D·|Δz|/f
    if beam > field_of_view:
        raise ValueError(
            f"defocus_m={defocus_m!r}: the defocused beam (≈ {beam:g} m wide) exceeds the field "
            f"of view {field_of_view:g} m (shape × pixel_size_m); it would wrap around and the "
            f"Fresnel transfer function would be undersampled. Reduce the defocus or enlarge "
            f"the grid."
        )

    fy = np.fft.fftfreq(ny, d=dx)
    fx = np.fft.fftfreq(nx, d=dx)
    freq = np.hypot(fy[:, None], fx[None, :])
    step = max(1.0 / (ny * dx), 1.0 / (nx * dx))
    cutoff = 1.0 / (2.0 * drn)
    pupil = _soft_disc(freq, cutoff, step)
    if stop > 0:
        pupil = pupil * (1.0 - _soft_disc(freq, cutoff * stop / diameter, step))
    spectrum = pupil.astype(np.complex128)
    if defocus_m != 0:
        spectrum = spectrum * np.asarray(fresnel_transfer_function((ny, nx), dx, lam, defocus_m))
    field = np.fft.fftshift(np.fft.ifft2(spectrum))
    field = field / np.sqrt(np.sum(np.abs(field) ** 2))
    return jnp.asarray(field)


def _power(modes: Shaped[Array, "m y x"]) -> Shaped[Array, " m"]:
    return jnp.sum(jnp.real(modes) ** 2 + jnp.imag(modes) ** 2, axis=(-2, -1))


def orthogonalize_modes(modes: ProbeModes) -> ProbeModes:
    """Orthogonal modes spanning the same density matrix, sorted by descending power.

    With the modes as rows of A (M × N), A = U S Vᴴ and the new modes are the rows of S Vᴴ:
    Σ_m |ψ_m⟩⟨ψ_m| is unchanged, the modes are mutually orthogonal, and mode k carries power
    S_k². Each mode's global phase is chosen so that its overlap with the corresponding
    input mode is real and non-negative (a single mode is returned unchanged).

    Args:
        modes: ``(M, py, px)`` complex probe modes.

    Returns:
        ``(M, py, px)`` orthogonal modes with the same total power.

    Examples:
        >>> import jax.numpy as jnp
        >>> m = orthogonalize_modes(jnp.stack([jnp.ones((2, 2)), jnp.eye(2)]).astype(complex))
        >>> bool(abs(jnp.vdot(m[0], m[1])) < 1e-6)
        True
    """
    modes = jnp.asarray(modes)
    if not jnp.issubdtype(modes.dtype, jnp.complexfloating):
        modes = modes.astype(jnp.result_type(1j))
    m = modes.shape[0]
    a = modes.reshape(m, -1)
    _, s, vh = jnp.linalg.svd(a, full_matrices=False)
    new = s[:, None] * vh
    overlap = jnp.sum(jnp.conj(new) * a, axis=-1)  # ⟨φ_k, ψ_k⟩
    mag = jnp.abs(overlap)
    phase = jnp.where(mag > 0, overlap / jnp.where(mag > 0, mag, 1.0), 1.0)
    return (new * phase[:, None]).reshape(modes.shape)


def _pattern_exponents(count: int) -> list[tuple[int, int]]:
    """Exponents (a, b) of low-order polynomials y^a x^b, ordered by degree, excluding 1."""
    out: list[tuple[int, int]] = []
    degree = 1
    while len(out) < count:
        out.extend((degree - b, b) for b in range(degree + 1))
        degree += 1
    return out[:count]


def _extend_modes(modes: ProbeModes, n_modes: int, kept_fraction: float, seed: int) -> ProbeModes:
    """Append ``n_modes - M`` modes: the first mode times low-order polynomials, orthogonalised.

    The existing modes keep ``kept_fraction`` of the total power (their ratios unchanged), the
    new ones share the rest with powers halving from one to the next.
    """
    total = jnp.sum(_power(modes))
    first = modes[0]
    weight = jnp.abs(first) ** 2
    ny, nx = first.shape
    yy, xx = jnp.meshgrid(
        jnp.arange(ny, dtype=weight.dtype), jnp.arange(nx, dtype=weight.dtype), indexing="ij"
    )
    norm = jnp.sum(weight)
    coords = []
    for c in (yy, xx):  # centre and scale by the probe's intensity-weighted mean and RMS width
        mean = jnp.sum(weight * c) / norm
        rms = jnp.sqrt(jnp.sum(weight * (c - mean) ** 2) / norm)
        coords.append((c - mean) / jnp.maximum(rms, 1.0))
    u, v = coords
    extra = n_modes - modes.shape[0]
    key = jax.random.PRNGKey(seed)
    phases = jax.random.uniform(key, (extra,), minval=0.0, maxval=2 * jnp.pi)
    basis = [mode.reshape(-1) for mode in modes]
    for k, (a, b) in enumerate(_pattern_exponents(extra)):
        cand = (first * u**a * v**b * jnp.exp(1j * phases[k])).reshape(-1)
        for q in basis:  # Gram–Schmidt, twice for numerical orthogonality
            cand = cand - jnp.vdot(q, cand) / jnp.vdot(q, q) * q
        for q in basis:
            cand = cand - jnp.vdot(q, cand) / jnp.vdot(q, q) * q
        basis.append(cand)
    new = jnp.stack(basis[modes.shape[0] :]).reshape(extra, ny, nx)
    shares = 0.5 ** jnp.arange(extra, dtype=weight.dtype)
    shares = (1.0 - kept_fraction) * shares / jnp.sum(shares)
    tiny = jnp.finfo(weight.dtype).tiny
    new = new * jnp.sqrt(total * shares / jnp.maximum(_power(new), tiny))[:, None, None]
    old = modes * jnp.sqrt(kept_fraction)
    return jnp.concatenate([old, new.astype(old.dtype)])


def _check_fraction(first_mode_fraction: float, n_modes: int) -> float:
    fraction = float(first_mode_fraction)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"first_mode_fraction={first_mode_fraction!r}: expected 0 < f ≤ 1")
    if int(n_modes) < 1:
        raise ValueError(f"n_modes={n_modes!r}: expected at least one mode")
    return fraction


def init_mixed_modes(
    probe: Complex[Array, "py px"],
    n_modes: int,
    first_mode_fraction: float = 0.9,
    seed: int = 0,
) -> ProbeModes:
    """Start a mixed-state probe from a single coherent probe.

    Mode 0 is ``probe`` itself (rescaled); the others are ``probe`` times the low-order
    polynomials y, x, y², xy, x², … (in coordinates centred and scaled by the probe's RMS width)
    with seeded random global phases, Gram–Schmidt orthogonalised. Powers: mode 0 carries
    ``first_mode_fraction`` of the input power, the others share the rest, halving from mode
    to mode; the total equals the input's power.

    Args:
        probe: ``(py, px)`` complex probe.
        n_modes: number of modes M (static).
        first_mode_fraction: power fraction of mode 0, in (0, 1].
        seed: seed of the random phases.

    Returns:
        ``(M, py, px)`` mutually orthogonal modes.

    Examples:
        >>> import jax.numpy as jnp
        >>> y, x = jnp.mgrid[-8:8, -8:8]
        >>> modes = init_mixed_modes(jnp.exp(-(x**2 + y**2) / 20.0) + 0j, 3)
        >>> [round(float(p), 3) for p in (abs(modes) ** 2).sum((1, 2)) / (abs(modes) ** 2).sum()]
        [0.9, 0.067, 0.033]
    """
    fraction = _check_fraction(first_mode_fraction, n_modes)
    probe = jnp.asarray(probe)
    if probe.ndim != 2:
        raise ValueError(f"probe: expected shape (py, px), got {probe.shape}")
    if not jnp.issubdtype(probe.dtype, jnp.complexfloating):
        probe = probe.astype(jnp.result_type(1j))
    if n_modes == 1:
        return probe[None]
    return _extend_modes(probe[None], int(n_modes), fraction, seed)


def probe_from_array(
    array, n_modes: int | None = 1, first_mode_fraction: float = 0.9
) -> ProbeModes:
    """Probe modes from an array read from a file (host side).

    Accepts ``(py, px)``, ``(M, py, px)``, or either with extra leading singleton axes such as
    ``(1, 1, 1, 1, py, px)``. The result has ``n_modes`` modes: extra modes are added with
    :func:`init_mixed_modes`'s patterns (the given modes keep ``first_mode_fraction`` of the
    power); surplus modes are dropped after :func:`orthogonalize_modes`, keeping the strongest
    and rescaling them to the total power. ``n_modes=None`` keeps every mode unchanged.

    Args:
        array: probe array (real or complex).
        n_modes: number of modes to return, or None to keep what the array holds.
        first_mode_fraction: power fraction kept by the given modes when modes are added.

    Returns:
        ``(M, py, px)`` complex probe modes.

    Raises:
        ValueError: wrong rank, empty, or non-finite values.

    Examples:
        >>> import numpy as np
        >>> probe_from_array(np.ones((1, 1, 1, 1, 4, 5))).shape
        (1, 4, 5)
    """
    arr = np.asarray(array)
    original = arr.shape
    while arr.ndim > 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(
            f"probe array: expected (py, px) or (modes, py, px) (leading singleton axes "
            f"allowed), got shape {original}"
        )
    if arr.size == 0:
        raise ValueError(f"probe array: empty, shape {original}")
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"probe array: expected numbers, got dtype {arr.dtype}")
    if not np.isfinite(arr).all():
        raise ValueError(f"probe array: {np.count_nonzero(~np.isfinite(arr))} non-finite values")
    if not np.any(arr):
        raise ValueError("probe array: all zero")
    modes = jnp.asarray(arr.astype(np.complex128))
    if n_modes is None or n_modes == modes.shape[0]:
        return modes
    n_modes = int(n_modes)
    fraction = _check_fraction(first_mode_fraction, n_modes)
    if n_modes < modes.shape[0]:
        total = jnp.sum(_power(modes))
        kept = orthogonalize_modes(modes)[:n_modes]
        return kept * jnp.sqrt(total / jnp.sum(_power(kept)))
    # Gram–Schmidt in _extend_modes needs an orthogonal starting set.
    return _extend_modes(orthogonalize_modes(modes), n_modes, fraction, seed=0)


__all__ = [
    "init_mixed_modes",
    "orthogonalize_modes",
    "probe_from_array",
    "zone_plate_focal_length",
    "zone_plate_probe",
]
