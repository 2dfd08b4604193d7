"""Starting models for ptychography built from the data alone, and engines built by name.

Every real scan starts without a known probe. :func:`probe_guess` derives one from the
diffraction frames: the back-propagated square root of the mean pattern, whose far-field
intensity is the mean pattern (so it has the right extent in reciprocal space), scaled to the
photon count of the brightest frames (:func:`~.constraints.probe_power_from_frames`); in
the near field :func:`near_field_probe_guess` back-propagates the mean hologram instead.
:func:`scan_geometry` turns a scan's file geometry and the chosen propagation (far field, or
near field with the Fresnel scaling theorem) into a propagator and an object pixel size
(:mod:`~diffptycho.recon.ptycho.geometry`); :func:`starting_model` puts it together with a unit
object on the smallest grid that holds every probe patch, with absolute motor positions
centred; :func:`make_engine` builds an engine of :data:`~diffptycho.recon.ptycho.ENGINES`
after checking that it takes every option given.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
from typing import Any

import jax.numpy as jnp
import numpy as np

from diffptycho._typing import Array, Complex, Float
from diffptycho.models import Ptycho2D
from diffptycho.models.propagators import AbstractPropagator
from diffptycho.physics import probe as probes
from diffptycho.physics import scan as scans
from diffptycho.recon.ptycho.constraints import probe_power_from_frames
from diffptycho.recon.ptycho.geometry import ScanGeometry, scan_centre, scan_geometry
from diffptycho.recon.ptycho.streaming import mean_frame
from diffptycho.recon.solve import AbstractSolver

__all__ = [
    "bright_field_radius_px",
    "defocused_guesses",
    "describe_defocus_search",
    "make_engine",
    "near_field_probe_guess",
    "probe_by_defocus_search",
    "probe_guess",
    "scaled_probe",
    "starting_model",
]


def probe_guess(
    frames: Float[Array, "n fy fx"], mask: np.ndarray | None = None
) -> Complex[np.ndarray, "fy fx"]:
    """Probe guess (fy, fx) from the mean diffraction pattern: F⁻¹ √⟨I⟩ with zero phase.

    Args:
        frames: (n, fy, fx) centred frames in photons.
        mask: valid pixels (True) or None; masked pixels take the mean of the valid ones.

    Returns:
        Complex probe (fy, fx) with Σ|P|² = mean photons per frame.

    Examples:
        >>> import numpy as np
        >>> frames = np.ones((3, 4, 4))
        >>> round(float(np.sum(np.abs(probe_guess(frames)) ** 2)), 6)
        16.0
    """
    mean = mean_frame(frames, mask)
    if mask is not None:
        mean = np.where(mask, mean, mean[np.asarray(mask)].mean())
    amp = np.sqrt(np.clip(mean, 0.0, None))
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(amp), norm="ortho"))


def bright_field_radius_px(
    frames: Float[Array, "n fy fx"], mask: np.ndarray | None = None, fraction: float = 0.9
) -> float:
    """Radius (detector pixels, from the frame centre) holding ``fraction`` of the mean power.

    For a focusing optic this is the bright-field disc: the illumination's numerical aperture
    in detector pixels, which sets how fast the probe grows with defocus.
    """
    mean = mean_frame(frames, mask)
    if mask is not None:
        mean = np.where(mask, mean, 0.0)
    ny, nx = mean.shape
    y, x = np.mgrid[:ny, :nx]
    r = np.hypot(y - ny // 2, x - nx // 2).ravel()
    order = np.argsort(r)
    cumulative = np.cumsum(mean.ravel()[order])
    if not cumulative[-1] > 0:
        raise ValueError("frames: no counts (blank frames) to estimate the bright field from")
    return float(max(r[order][np.searchsorted(cumulative, fraction * cumulative[-1])], 1.0))


def defocused_guesses(
    guess: Complex[np.ndarray, "fy fx"], radius_px: float, count: int = 4
) -> list[tuple[float, np.ndarray]]:
    """The guess and copies of it propagated to ``count`` defocus distances on each side.

    :func:`probe_guess` has the right far field but a flat phase, so it is the probe at the
    focus; a beamline scans out of focus, with a probe many pixels wide. Propagating by Δz
    multiplies the spectrum by exp(−iπ λΔz f²): in pixel units, with ``a = λΔz/dx²`` and
    detector index k, exp(−iπ a k²/N²), and a beam of bright-field radius r (detector pixels)
    is ``D = 2 r a / N`` object pixels wide. The distances are chosen so that D runs
    geometrically from 0.15 N to 0.8 N (N the frame side), on both sides of the focus — the
    data, not the file, then pick one (:func:`probe_by_defocus_search`).

    Args:
        guess: (fy, fx) probe at the focus.
        radius_px: bright-field radius (:func:`bright_field_radius_px`).
        count: defocus distances per side.

    Returns:
        ``[(a, probe), ...]`` with ``a = λΔz/dx²`` (dimensionless; 0 first: the guess itself).
    """
    guess = np.asarray(guess, np.complex128)
    ny, nx = guess.shape
    n = max(ny, nx)
    ky = np.fft.fftfreq(ny, 1.0 / ny)
    kx = np.fft.fftfreq(nx, 1.0 / nx)
    k2 = (ky[:, None] * n / ny) ** 2 + (kx[None, :] * n / nx) ** 2
    spectrum = np.fft.fft2(np.fft.ifftshift(guess))
    out = [(0.0, guess)]
    for width in np.geomspace(0.15 * n, 0.8 * n, count):
        a = width * n / (2.0 * radius_px)
        for sign in (1.0, -1.0):
            h = np.exp(-1j * np.pi * sign * a * k2 / n**2)
            out.append((sign * a, np.fft.fftshift(np.fft.ifft2(spectrum * h))))
    return out


def probe_by_defocus_search(
    frames: Float[Array, "n fy fx"],
    positions_px: Float[np.ndarray, "n 2"],
    object_shape: tuple[int, int],
    engine: AbstractSolver,
    *,
    mask: np.ndarray | None = None,
    probe_modes: int = 1,
    iterations: int = 10,
    count: int = 4,
) -> tuple[Complex[np.ndarray, "mode fy fx"], dict[str, np.ndarray]]:
    """The probe start that fits a scan best among the guess at several defocus distances.

    Each of :func:`defocused_guesses` starts ``iterations`` of ``engine`` (object of ones);
    the candidate with the lowest final loss wins and its refined probe is returned. Costs
    (2 ``count`` + 1) × ``iterations`` iterations on one scan.

    Args:
        frames: (n, fy, fx) counts of one scan.
        positions_px: (n, 2) positions in object pixels (y, x), centred.
        object_shape: (H, W) object grid holding every probe patch.
        engine: the ptychography engine (it must refine the probe).
        mask: valid detector pixels or None.
        probe_modes: incoherent probe modes.
        iterations: iterations per candidate.
        count: defocus distances per side of the focus.

    Returns:
        ``(probe (modes, fy, fx), {"defocus": a per candidate, "loss": final losses})``.
    """
    from diffptycho.recon.ptycho.data import ptycho_data
    from diffptycho.recon.solve import DivergenceError, solve

    radius = bright_field_radius_px(frames, mask)
    data = ptycho_data(frames, mask)
    table = {"defocus": [], "loss": []}
    best, best_loss = None, np.inf
    for a, candidate in defocused_guesses(probe_guess(frames, mask), radius, count):
        start = Ptycho2D(
            jnp.ones(object_shape, jnp.complex64),
            jnp.asarray(scaled_probe(candidate, frames, mask, probe_modes)),
            jnp.asarray(positions_px, jnp.float32),
        )
        try:
            model, history = solve(start, engine, data, iterations, progress=False)
            loss = float(np.mean(history.loss[-2:]))
        except DivergenceError:
            loss = np.inf
        table["defocus"].append(a)
        table["loss"].append(loss)
        if loss < best_loss:
            best, best_loss = np.asarray(model.probe), loss
    if best is None:
        raise ValueError("probe search: every defocus candidate diverged")
    return best, {k: np.asarray(v) for k, v in table.items()}


def describe_defocus_search(table: dict[str, np.ndarray]) -> str:
    """One line on :func:`probe_by_defocus_search`'s choice, for logs."""
    best = int(np.argmin(table["loss"]))
    return (
        f"probe start at defocus λΔz/dx² = {table['defocus'][best]:+.0f} "
        f"(loss {table['loss'][best]:.4g}; at the focus {table['loss'][0]:.4g})"
    )


def scaled_probe(
    start: np.ndarray,
    frames: Float[Array, "n fy fx"],
    mask: np.ndarray | None = None,
    probe_modes: int = 1,
) -> Complex[np.ndarray, "mode fy fx"]:
    """``start`` extended to ``probe_modes`` incoherent modes and scaled to the frames' power.

    Args:
        start: probe array (fy, fx) or (M, fy, fx), e.g. :func:`probe_guess` or a file's
            illumination or the probe of a neighbouring scan.
        frames: (n, fy, fx) counts, for the power (photons per frame).
        mask: valid detector pixels or None.
        probe_modes: number of modes of the result.

    Returns:
        (probe_modes, fy, fx) complex64 modes with Σ_m Σ|P_m|² = photons per bright frame.
    """
    modes = np.asarray(probes.probe_from_array(start, probe_modes))
    power = probe_power_from_frames(frames, mask)
    modes = modes * np.sqrt(power / max(float(np.sum(np.abs(modes) ** 2)), 1e-300))
    return modes.astype(np.complex64)


def near_field_probe_guess(
    frames: Float[Array, "n fy fx"],
    propagator: AbstractPropagator,
    mask: np.ndarray | None = None,
) -> Complex[np.ndarray, "fy fx"]:
    """Near-field probe guess: the mean hologram's square root propagated back to the sample.

    Averaged over many positions, the object's fringes wash out and the mean frame is close to
    the probe's intensity at the detector; back-propagating its square root (zero phase) gives
    a probe of the right footprint at the sample plane.

    Args:
        frames: (n, fy, fx) near-field frames in photons.
        propagator: the sample → detector propagator (e.g. :class:`~diffptycho.models.NearField`).
        mask: valid pixels (True) or None; masked pixels take the mean of the valid ones.

    Returns:
        Complex probe (fy, fx) with Σ|P|² = mean photons per frame (the propagator is unitary).
    """
    mean = mean_frame(frames, mask)
    if mask is not None:
        mean = np.where(mask, mean, mean[np.asarray(mask)].mean())
    amp = jnp.asarray(np.sqrt(np.clip(mean, 0.0, None)).astype(np.complex128))
    return np.asarray(propagator.adjoint(amp))


def starting_model(
    scan,
    probe_modes: int = 1,
    background: bool = False,
    geometry: ScanGeometry | None = None,
) -> Ptycho2D:
    """The starting :class:`~diffptycho.models.Ptycho2D` of one scan, from the file alone.

    Positions are converted to object pixels with the geometry's pixel size and centred: the
    whole-pixel offset :func:`~diffptycho.recon.ptycho.geometry.scan_centre` is subtracted, so
    absolute motor positions give an object spanning the scan's extent plus one probe, not the
    distance from the motor origin. The object is ones on the smallest grid that holds every
    probe patch (:func:`~diffptycho.physics.scan.object_shape_for`); the probe is the file's
    illumination or, without one, :func:`probe_guess` (far field) or
    :func:`near_field_probe_guess` (near field), scaled by :func:`scaled_probe`.

    Args:
        scan: a :class:`~diffptycho.io.scan.PtychoScan`, or a
            :class:`~diffptycho.recon.ptycho.streaming.StreamedScan` (the frame statistics
            then come from one chunked pass over the file).
        probe_modes: number of incoherent probe modes M.
        background: start an incoherent background (1 % of the mean count per pixel) to be
            retrieved; None otherwise.
        geometry: from :func:`~diffptycho.recon.ptycho.geometry.scan_geometry`; None means
            the far field.

    Returns:
        The model (object complex64 ones, probe (M, ny, nx), positions (n, 2) in px, the
        geometry's propagator). The subtracted offset is ``positions_px - model.positions``.
    """
    geometry = scan_geometry(scan) if geometry is None else geometry
    frames = scan.data
    size = geometry.object_pixel_size_m
    positions = scan.positions_m if size is None else scan.positions_m / np.asarray(size)
    positions = positions - scan_centre(positions)
    shape = frames.shape[-2:]
    if scan.illumination is not None:
        start = scan.illumination
    elif geometry.propagation == "near-field":
        start = near_field_probe_guess(frames, geometry.propagator, scan.mask)
    else:
        start = probe_guess(frames, scan.mask)
    probe = scaled_probe(start, frames, scan.mask, probe_modes)
    obj_shape = scans.object_shape_for(positions, shape)
    bg = None
    if background:
        mean_count = float(mean_frame(frames, scan.mask).mean())
        bg = jnp.full(shape, max(1e-2 * mean_count, 1e-3), jnp.float32)
    return Ptycho2D(
        object=jnp.ones(obj_shape, jnp.complex64),
        probe=jnp.asarray(probe),
        positions=jnp.asarray(positions.astype(np.float32)),
        background=bg,
        propagator=geometry.propagator,
    )


def make_engine(algorithm: str, **options: Any) -> AbstractSolver:
    """``ENGINES[algorithm](**options)``, after checking that the engine takes every option.

    Args:
        algorithm: a key of :data:`~diffptycho.recon.ptycho.ENGINES` (e.g. ``"raar"``).
        **options: engine options (``refinement``, ``batch_size``, ``loss``, …).

    Returns:
        The engine, an :class:`~diffptycho.recon.solve.AbstractSolver`.

    Raises:
        ValueError: no such engine, or the engine does not take one of the options (named).
    """
    from diffptycho.recon.ptycho import ENGINES

    if algorithm not in ENGINES:
        raise ValueError(f"engine {algorithm!r}: no such engine here; available: {sorted(ENGINES)}")
    factory = ENGINES[algorithm]
    accepted = _accepted_options(factory)
    if accepted is not None:
        unknown = sorted(k for k in options if k not in accepted)
        if unknown:
            raise ValueError(f"engine {algorithm!r} does not take the option(s) {unknown}")
    return factory(**options)


def _accepted_options(factory) -> set[str] | None:
    """Keyword names a factory (or the Module it builds, for ``**options``) accepts."""
    params = inspect.signature(factory).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return set(params)
    target = inspect.signature(factory).return_annotation
    if isinstance(target, str):
        target = getattr(sys.modules.get(factory.__module__), target, None)
    if dataclasses.is_dataclass(target):
        return set(params) | {f.name for f in dataclasses.fields(target)}
    return None  # unknown: let the factory decide
