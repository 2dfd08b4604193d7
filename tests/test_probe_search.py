"""The probe start of a beamline scan: the data-derived guess at the defocus the data choose."""

import numpy as np
import pytest

from diffptycho.recon.ptycho.start import (
    bright_field_radius_px,
    defocused_guesses,
    make_engine,
    probe_by_defocus_search,
    probe_guess,
)
from tests.test_ptycho_engines import simulate


def _width(probe: np.ndarray) -> float:
    """RMS radius of |P|² about its centroid, px."""
    a = np.abs(probe) ** 2
    y, x = np.mgrid[: a.shape[0], : a.shape[1]]
    cy, cx = (a * y).sum() / a.sum(), (a * x).sum() / a.sum()
    return float(np.sqrt((a * ((y - cy) ** 2 + (x - cx) ** 2)).sum() / a.sum()))


def test_defocused_gaussian_widens_as_a_gaussian_beam():
    """A Gaussian waist w0 (px) propagated by a = λΔz/dx² has w(a) = w0 √(1 + (a/(π w0²))²)."""
    n = 128
    y, x = np.mgrid[:n, :n] - n // 2
    w0 = 2.0  # 1/e amplitude radius
    focus = np.exp(-(x**2 + y**2) / w0**2).astype(complex)
    guesses = defocused_guesses(focus, radius_px=40.0, count=3)
    assert guesses[0][0] == 0.0 and len(guesses) == 7
    checked = 0
    for a, probe in guesses[1:]:
        want = w0 * np.sqrt(1 + (a / (np.pi * w0**2)) ** 2) / np.sqrt(2)  # RMS radius of |P|²
        if want < n / 8:  # wider beams wrap around the periodic window
            assert _width(probe) == pytest.approx(want, rel=0.02), a
            checked += 1
        assert np.sum(np.abs(probe) ** 2) == pytest.approx(np.sum(np.abs(focus) ** 2))
    assert checked >= 2
    widths = sorted(abs(a) for a, _ in guesses[1:])
    assert widths[0] == widths[1]  # each distance on both sides of the focus


def test_bright_field_radius_of_a_disc_and_blank_frames():
    n = 32
    y, x = np.mgrid[:n, :n] - n // 2
    disc = (np.hypot(y, x) <= 6).astype(float)
    assert bright_field_radius_px(disc[None]) == pytest.approx(6 * np.sqrt(0.9), abs=0.7)
    with pytest.raises(ValueError, match="blank"):
        bright_field_radius_px(np.zeros((2, 8, 8)))


def test_search_finds_the_defocused_beam_the_focus_guess_misses():
    truth, frames = simulate(n=64, probe_px=32, step=3.0, dtype=np.complex64)
    true_width = _width(np.asarray(truth.probe)[0])
    focus_width = _width(probe_guess(frames))
    probe, table = probe_by_defocus_search(
        frames,
        np.asarray(truth.positions),
        truth.object.shape,
        make_engine("raar"),
        iterations=10,
    )
    assert table["loss"].argmin() != 0  # the focus is not the best start
    assert focus_width < 0.5 * true_width
    assert _width(probe[0]) == pytest.approx(true_width, rel=0.25), (focus_width, true_width)
