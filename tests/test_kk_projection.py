"""Kramers–Kronig projection of per-pixel (μt, φ) spectra against physics-built KK pairs."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffptycho.physics.optics import wavenumber
from diffptycho.physics.spectra import species_spectrum, vanadium_reference_spectra
from diffptycho.recon.chem.kk_projection import KKProjector

E = np.linspace(5420.0, 5540.0, 40)


@pytest.fixture(scope="module")
def kk():
    return KKProjector.build(E, "V", "K", free_phase_offsets=False)


@pytest.fixture(scope="module")
def kk_free():
    return KKProjector.build(E, "V", "K")


@pytest.fixture(scope="module")
def species():
    """μt and φ per m of thickness, (E, species): T = exp(−k∫β) exp(−ik∫δ)."""
    spectra, _ = vanadium_reference_spectra(E)
    n = np.stack(list(spectra.values()), axis=1)
    k = wavenumber(E)[:, None]
    return 2 * k * n.imag, -k * n.real


def field(species, n_pix=300, seed=0):
    """Random mixtures of the three oxides (0–1 µm each), a fifth of the pixels empty."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, 1e-6, (3, n_pix)) * (rng.uniform(size=n_pix) > 0.2)
    return species[0] @ t, species[1] @ t


def test_tabulated_pair_is_an_exact_fixed_point(kk):
    # no fine structure: tabulated V + O, the span holds it up to rounding
    n = species_spectrum("V2O5", 3.36, E)
    k = wavenumber(E)
    mu, phi = 2 * k * n.imag * 1e-6, -k * n.real * 1e-6
    m2, p2 = kk.project(mu, phi)
    assert np.abs(np.asarray(m2) - mu).max() < 1e-5 * np.ptp(mu)
    assert np.abs(np.asarray(p2) - phi).max() < 1e-5 * np.ptp(phi)


def test_reference_oxides_are_fixed_points_within_discretisation(kk, species):
    # The piecewise-linear Δf2 between energies 3.1 eV apart cannot follow the table's 2 eV
    # edge ramp that the shifted edges cancel: measured 1.9–4.2 % of the μt range and
    # ≤ 4.7e-3 rad per µm of oxide (the phase varies by 0.07–0.13 rad beyond a linear trend).
    mu, phi = species[0] * 1e-6, species[1] * 1e-6
    m2, p2 = kk.project(mu, phi)
    dmu = np.abs(np.asarray(m2) - mu).max(axis=0)
    dphi = np.abs(np.asarray(p2) - phi).max(axis=0)
    assert np.all(dmu < 0.05 * np.ptp(mu, axis=0)), dmu / np.ptp(mu, axis=0)
    assert np.all(dphi < 6e-3), dphi


def test_noisy_pair_moves_towards_consistency(kk, species):
    mu, phi = field(species)
    rng = np.random.default_rng(1)
    # noise of the default metric's ratio: σ_μt = 2 σ_φ (isotropic complex noise on T)
    noisy_mu = mu + rng.normal(0, 0.04, mu.shape)
    noisy = phi + rng.normal(0, 0.02, phi.shape)
    m2, p2 = kk.project(noisy_mu, noisy)
    assert float(jnp.mean(kk.residual(m2, p2))) < 1e-12
    before = float(jnp.mean(kk.residual(noisy_mu, noisy)))
    assert before > 20 * float(jnp.mean(kk.residual(mu, phi)))

    def err(m, p):
        return np.sqrt(np.mean((np.asarray(m) - mu) ** 2 + 4 * (np.asarray(p) - phi) ** 2))

    # the consistent set has E + 3 of 2E dimensions: noise falls by about √(43/80) = 0.73
    # (measured 0.72 in the metric; the phase alone 0.02 → 0.012 rad)
    assert err(m2, p2) < 0.8 * err(noisy_mu, noisy)
    assert np.sqrt(np.mean((np.asarray(p2) - phi) ** 2)) < 0.7 * 0.02
    # noise on the phase only: the phase error halves (measured 0.020 → 0.0088 rad)
    _, p_only = kk.project(mu, noisy)
    assert np.sqrt(np.mean((np.asarray(p_only) - phi) ** 2)) < 0.5 * 0.02
    # a half step cuts the residual to a quarter (the rejection is linear)
    m3, p3 = kk.project(noisy_mu, noisy, relax=0.5)
    ratio = float(jnp.sum(kk.residual(m3, p3)) / jnp.sum(kk.residual(noisy_mu, noisy)))
    assert ratio == pytest.approx(0.25, rel=1e-6)


@pytest.mark.parametrize("free", [False, True])
def test_projection_is_idempotent_and_self_adjoint(free, kk, kk_free):
    proj = kk_free if free else kk
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 40, 7, 5))
    y = rng.normal(size=(2, 40, 7, 5))
    px = proj.project(*x)
    ppx = proj.project(*px)
    np.testing.assert_allclose(np.asarray(ppx), np.asarray(px), atol=1e-10)
    py = proj.project(*y)
    w = np.asarray(proj.weights).reshape(2, 40, 1, 1)
    lhs = np.sum(w * np.asarray(px) * y)
    rhs = np.sum(w * x * np.asarray(py))
    assert abs(lhs - rhs) < 1e-10 * abs(lhs), (lhs, rhs)


def test_per_energy_phase_offsets(kk, kk_free, species):
    # ptychography's phase is known up to one constant per energy, shared by all pixels
    mu, phi = field(species, seed=3)
    offsets = np.random.default_rng(4).uniform(-np.pi, np.pi, (40, 1))
    shifted = phi + offsets
    _, kept = kk_free.project(mu, shifted)
    _, plain = kk_free.project(mu, phi)
    # free offsets: the offsets pass through unchanged, the rest is projected as without them
    np.testing.assert_allclose(np.asarray(kept) - offsets, np.asarray(plain), atol=1e-9)
    assert np.abs(np.asarray(plain) - phi).max() < 6e-3
    # per-pixel projection treats them as inconsistency and moves the phase by ~ the offsets
    _, moved = kk.project(mu, shifted)
    assert np.abs(np.asarray(moved) - shifted).max() > 0.5
    # the residual ignores shared offsets only when they are free
    assert float(jnp.max(jnp.abs(kk_free.residual(mu, shifted) - kk_free.residual(mu, phi)))) < 1e-9


def test_jit_grad_and_float32(kk_free, species):
    mu, phi = field(species, n_pix=12)

    def penalty(p):
        return jnp.sum(kk_free.residual(jnp.asarray(mu), p))

    g = jax.jit(jax.grad(penalty))(jnp.asarray(phi) + 0.01)
    assert g.shape == phi.shape and bool(jnp.all(jnp.isfinite(g)))
    project = eqx.filter_jit(lambda kk, m, p: kk.project(m, p))
    m32, p32 = project(kk_free, mu.astype(np.float32), phi.astype(np.float32))
    assert p32.dtype == jnp.float32
    _, p64 = kk_free.project(mu, phi)
    assert np.abs(np.asarray(p32) - np.asarray(p64)).max() < 1e-4


def test_bad_input_names_the_argument(kk):
    with pytest.raises(ValueError, match="energies_ev"):
        KKProjector.build(E[::-1], "V", "K")
    with pytest.raises(ValueError, match="energies_ev"):
        KKProjector.build(np.linspace(5500, 5540, 20), "V", "K")  # edge outside
    with pytest.raises(ValueError, match="edge"):
        KKProjector.build(E, "V", "L7")
    with pytest.raises(ValueError, match="phase_weight"):
        KKProjector.build(E, "V", "K", phase_weight=0.0)
    with pytest.raises(ValueError, match="mu_t"):
        kk.project(np.zeros((39, 3)), np.zeros((39, 3)))
    with pytest.raises(ValueError, match="phase"):
        kk.project(np.zeros((40, 3)), np.zeros((40, 4)))
    with pytest.raises(ValueError, match="relax"):
        kk.project(np.zeros((40, 3)), np.zeros((40, 3)), relax=1.5)
