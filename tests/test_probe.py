"""Zone plate focus against Airy/geometric optics; mixed-state mode algebra; probe loading."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffptycho.physics.optics import wavelength
from diffptycho.physics.probe import (
    init_mixed_modes,
    orthogonalize_modes,
    probe_from_array,
    zone_plate_focal_length,
    zone_plate_probe,
)

E_EV = 708.2
DRN = 25e-9  # outer zone width
DIAMETER = 240e-6


def _fwhm(profile, dx):
    """FWHM of a peaked 1-D profile by linear interpolation of the half-maximum crossings."""
    p = np.asarray(profile) / np.max(profile)
    i = int(np.argmax(p))
    right = i + np.argmax(p[i:] < 0.5)
    left = i - np.argmax(p[i::-1] < 0.5)
    xr = right - 1 + (p[right - 1] - 0.5) / (p[right - 1] - p[right])
    xl = left + 1 - (p[left + 1] - 0.5) / (p[left + 1] - p[left])
    return (xr - xl) * dx


def test_focal_length():
    f = zone_plate_focal_length(DIAMETER, DRN, E_EV)
    np.testing.assert_allclose(f, DIAMETER * DRN * E_EV / 1239.841984e-9, rtol=1e-9)


def test_zone_plate_focus_is_airy_spot():
    dx, n = DRN / 8, 256
    probe = np.asarray(zone_plate_probe((n, n), dx, E_EV, DIAMETER, DRN))
    intensity = np.abs(probe) ** 2
    np.testing.assert_allclose(intensity.sum(), 1.0, rtol=1e-12)
    assert np.unravel_index(np.argmax(intensity), intensity.shape) == (n // 2, n // 2)
    # Airy: FWHM = 1.029 λ/(2 NA) with NA = λ/(2 Δr_n), i.e. 1.029 Δr_n.
    expected = 1.029 * DRN
    for cut in (intensity[n // 2, :], intensity[:, n // 2]):
        assert abs(_fwhm(cut, dx) / expected - 1) < 0.10
    # First Airy zero at 1.22 λ/(2 NA) = 1.22 Δr_n: a dark ring there.
    r_zero = int(round(1.22 * DRN / dx))
    assert intensity[n // 2, n // 2 + r_zero] < 0.02 * intensity.max()


def test_central_stop_lowers_central_intensity():
    dx, n, eps = DRN / 4, 256, 0.4
    open_ = np.abs(zone_plate_probe((n, n), dx, E_EV, DIAMETER, DRN)) ** 2
    stopped = np.abs(zone_plate_probe((n, n), dx, E_EV, DIAMETER, DRN, eps * DIAMETER)) ** 2
    c = (n // 2, n // 2)
    # At equal total power the central intensity scales with the pupil area: (1 − ε²).
    ratio = stopped[c] / open_[c]
    assert ratio < 1
    assert abs(ratio / (1 - eps**2) - 1) < 0.03


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_defocus_widens_beam_to_geometric_size(sign):
    dx, n = DRN / 4, 256
    lam = wavelength(E_EV)
    f = zone_plate_focal_length(DIAMETER, DRN, E_EV)
    dz = sign * 30 * DRN**2 / lam  # ≈ 10.7 µm: beam ≈ 30 Δr_n = 120 px wide
    probe = np.asarray(zone_plate_probe((n, n), dx, E_EV, DIAMETER, DRN, defocus_m=dz))
    intensity = np.abs(probe) ** 2
    np.testing.assert_allclose(intensity.sum(), 1.0, rtol=1e-12)
    # A uniform disc of diameter d holds half its power within radius d/(2√2).
    y, x = np.indices(intensity.shape) - n // 2
    r = np.hypot(y, x).ravel() * dx
    order = np.argsort(r)
    encircled = np.cumsum(intensity.ravel()[order])
    r50 = r[order][np.searchsorted(encircled, 0.5)]
    expected = DIAMETER * abs(dz) / f
    assert abs(2 * np.sqrt(2) * r50 / expected - 1) < 0.10
    # Geometric shadow: outside 1.5 × the disc only edge-diffraction tails remain.
    assert intensity.ravel()[r > 0.75 * expected].sum() < 0.02


def test_zone_plate_sampling_errors():
    with pytest.raises(ValueError, match="pixel_size_m"):
        zone_plate_probe((64, 64), 2 * DRN, E_EV, DIAMETER, DRN)
    with pytest.raises(ValueError, match="shape"):
        zone_plate_probe((4, 4), DRN / 2, E_EV, DIAMETER, DRN)
    with pytest.raises(ValueError, match="defocus_m"):
        zone_plate_probe((64, 64), DRN / 2, E_EV, DIAMETER, DRN, defocus_m=1e-3)
    with pytest.raises(ValueError, match="central_stop_diameter_m"):
        zone_plate_probe((64, 64), DRN / 2, E_EV, DIAMETER, DRN, central_stop_diameter_m=DIAMETER)
    with pytest.raises(ValueError, match="energy_ev"):
        zone_plate_probe((64, 64), DRN / 2, -1.0, DIAMETER, DRN)


def _random_modes(rng, m=4, shape=(16, 20)):
    return jnp.asarray(rng.normal(size=(m, *shape)) + 1j * rng.normal(size=(m, *shape)))


def _gram(modes):
    a = np.asarray(modes).reshape(modes.shape[0], -1)
    return np.conj(a) @ a.T


def _density(modes):
    a = np.asarray(modes).reshape(modes.shape[0], -1)
    return a.T @ np.conj(a)


def test_orthogonalize_modes(rng):
    modes = _random_modes(rng)
    ortho = orthogonalize_modes(modes)
    gram = _gram(ortho)
    off = gram - np.diag(np.diag(gram))
    assert np.max(np.abs(off)) < 1e-10
    powers = np.real(np.diag(gram))
    assert np.all(np.diff(powers) <= 0)
    np.testing.assert_allclose(powers.sum(), np.sum(np.abs(modes) ** 2), rtol=1e-12)
    # Same density matrix, hence the same incoherent intensity under any object.
    np.testing.assert_allclose(_density(ortho), _density(modes), atol=1e-10)


def test_orthogonalize_single_mode_is_identity(rng):
    mode = _random_modes(rng, m=1)
    np.testing.assert_allclose(orthogonalize_modes(mode), mode, atol=1e-12)


def _gaussian_probe(n=32, w=5.0):
    y, x = np.mgrid[:n, :n] - n // 2
    return jnp.asarray(np.exp(-(x**2 + y**2) / w**2) * np.exp(0.05j * x**2))


@pytest.mark.parametrize("n_modes", [1, 2, 5])
def test_init_mixed_modes(n_modes):
    probe = 3.0 * _gaussian_probe()
    modes = init_mixed_modes(probe, n_modes, first_mode_fraction=0.8, seed=3)
    assert modes.shape == (n_modes, *probe.shape)
    gram = _gram(modes)
    assert np.max(np.abs(gram - np.diag(np.diag(gram)))) < 1e-10
    powers = np.real(np.diag(gram))
    total = float(jnp.sum(jnp.abs(probe) ** 2))
    np.testing.assert_allclose(powers.sum(), total, rtol=1e-12)
    if n_modes > 1:
        np.testing.assert_allclose(powers[0], 0.8 * total, rtol=1e-12)
        assert np.all(np.diff(powers) < 0)
    # Mode 0 is the input probe, rescaled.
    overlap = abs(np.vdot(modes[0], probe)) / (np.linalg.norm(modes[0]) * np.linalg.norm(probe))
    np.testing.assert_allclose(overlap, 1.0, rtol=1e-12)
    # Already orthogonal and sorted: orthogonalize_modes leaves the powers unchanged.
    np.testing.assert_allclose(
        np.sum(np.abs(orthogonalize_modes(modes)) ** 2, (1, 2)), powers, rtol=1e-9
    )


def test_init_mixed_modes_jit_and_errors():
    probe = _gaussian_probe()
    f = jax.jit(init_mixed_modes, static_argnums=(1, 2, 3))
    np.testing.assert_allclose(f(probe, 3, 0.9, 0), init_mixed_modes(probe, 3), atol=1e-12)
    with pytest.raises(ValueError, match="first_mode_fraction"):
        init_mixed_modes(probe, 3, first_mode_fraction=1.5)
    with pytest.raises(ValueError, match="n_modes"):
        init_mixed_modes(probe, 0)


@pytest.mark.parametrize("shape", [(16, 20), (1, 16, 20), (1, 1, 1, 1, 16, 20), (1, 1, 3, 16, 20)])
def test_probe_from_array_shapes(rng, shape):
    arr = rng.normal(size=shape)
    out = probe_from_array(arr, n_modes=None)
    m = 3 if 3 in shape else 1
    assert out.shape == (m, 16, 20)
    assert jnp.iscomplexobj(out)
    np.testing.assert_allclose(out.reshape(-1), arr.reshape(-1))


def test_probe_from_array_changes_mode_count(rng):
    modes = np.asarray(_random_modes(rng, m=3))
    total = np.sum(np.abs(modes) ** 2)
    more = probe_from_array(modes, n_modes=5)
    fewer = probe_from_array(modes, n_modes=2)
    for out, m in ((more, 5), (fewer, 2)):
        assert out.shape == (m, 16, 20)
        np.testing.assert_allclose(np.sum(np.abs(out) ** 2), total, rtol=1e-12)
        gram = _gram(out)
        assert np.max(np.abs(gram - np.diag(np.diag(gram)))) < 1e-10
    # Extended set keeps 0.9 of the power in the given modes' span.
    np.testing.assert_allclose(np.sum(np.abs(more[:3]) ** 2), 0.9 * total, rtol=1e-12)


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.zeros((2, 3, 4, 5)), "expected \\(py, px\\)"),
        (np.zeros(5), "expected \\(py, px\\)"),
        (np.full((4, 4), np.nan), "non-finite"),
        (np.zeros((4, 4)), "all zero"),
        (np.zeros((0, 4, 4)), "empty"),
    ],
)
def test_probe_from_array_errors(array, match):
    with pytest.raises(ValueError, match=match):
        probe_from_array(array)
