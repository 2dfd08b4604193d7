"""Forward models and losses: physics identities, gradients, error paths."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from diffptycho.models import FarField, NearField, Ptycho2D, SpectroPtycho2D, SpectroPtychoTomo
from diffptycho.models.ptycho import as_energies, spectral_transmission
from diffptycho.models.tomo import TomoProjections, composition_to_index
from diffptycho.physics import optics, tomography
from diffptycho.recon.losses import amplitude_gaussian, poisson_nll


def _object(rng, shape=(24, 24)):
    return jnp.asarray(np.exp(-0.3 * rng.random(shape)) * np.exp(1j * rng.standard_normal(shape)))


def _probe(rng, modes=2, shape=(8, 8)):
    return jnp.asarray(
        rng.standard_normal((modes, *shape)) + 1j * rng.standard_normal((modes, *shape))
    )


def test_beta_damps_the_wave():
    thickness = jnp.full((1, 4, 4), 100e-9)
    absorbing = jnp.asarray([[1e-3 + 1e-4j]])
    t = spectral_transmission(thickness, absorbing, jnp.asarray([700.0]))
    assert float(jnp.max(jnp.abs(t))) < 1.0
    od = optics.optical_density(t)
    np.testing.assert_allclose(od, 2 * optics.wavenumber(700.0) * 1e-4 * 100e-9, rtol=1e-12)
    # phase advance of exp(i(kz − ωt)) is slowed by δ: T picks up exp(−ik∫δ)
    np.testing.assert_allclose(jnp.angle(t), -optics.wavenumber(700.0) * 1e-3 * 100e-9, rtol=1e-9)
    transparent = spectral_transmission(thickness, jnp.asarray([[1e-3 + 0j]]), jnp.asarray([700.0]))
    np.testing.assert_allclose(jnp.abs(transparent), 1.0, rtol=1e-12)


def test_ptycho_intensities_conserve_photons(rng):
    obj, probe = _object(rng), _probe(rng)
    pos = jnp.asarray(rng.uniform(-5, 5, (6, 2)))
    model = Ptycho2D(obj, probe, pos)
    frames = model()
    from diffptycho.physics.scan import extract_patches

    patches = extract_patches(obj, pos, (8, 8))
    exit_power = jnp.sum(jnp.abs(probe[None] * patches[:, None]) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(jnp.sum(frames, axis=(1, 2)), exit_power, rtol=1e-10)
    bg = jnp.full((8, 8), 0.5)
    with_bg = Ptycho2D(obj, probe, pos, background=bg)(jnp.asarray([0, 3]))
    np.testing.assert_allclose(with_bg, frames[jnp.asarray([0, 3])] + 0.5, rtol=1e-12)


def test_near_field_model_conserves_photons(rng):
    obj, probe = _object(rng), _probe(rng, modes=1)
    prop = NearField(pixel_size_m=10e-9, wavelength_m=1e-9, distance_m=1e-6)
    frames = Ptycho2D(obj, probe, jnp.zeros((1, 2)), propagator=prop)()
    far = Ptycho2D(obj, probe, jnp.zeros((1, 2)), propagator=FarField())()
    np.testing.assert_allclose(jnp.sum(frames), jnp.sum(far), rtol=1e-10)
    assert not np.allclose(frames, far)


def test_ptycho_model_gradients(rng):
    obj, probe = _object(rng, (16, 16)), _probe(rng, 2, (6, 6))
    pos = jnp.asarray([[0.3, -1.2], [1.7, 2.4], [-2.2, 0.6]])
    bg = jnp.full((6, 6), 0.1)

    def f(o, p, x):
        return jnp.sum(Ptycho2D(o, p, x, background=bg)() ** 0.5)

    check_grads(jax.jit(f), (obj, probe, pos), order=1, modes=("fwd", "rev"), atol=1e-5, rtol=1e-5)


def test_losses_minimised_by_the_data(rng):
    n = jnp.asarray(rng.poisson(20.0, (3, 5, 5)).astype(float))
    assert float(poisson_nll(n, n)) == pytest.approx(0.0, abs=1e-6)
    assert float(amplitude_gaussian(n, n)) == pytest.approx(0.0, abs=1e-6)
    for loss in (poisson_nll, amplitude_gaussian):
        g = jax.grad(loss)(n + 1e-12, n)
        assert float(jnp.max(jnp.abs(g))) < 1e-3
        assert float(loss(n * 1.1, n)) > 0 and float(loss(n * 0.9, n)) > 0
    # mean over frames: doubling the batch with the same frames keeps the value
    pred = n * 1.2
    assert float(poisson_nll(pred, n)) == pytest.approx(
        float(poisson_nll(jnp.concatenate([pred, pred]), jnp.concatenate([n, n])))
    )
    # hand-computed single pixel
    assert float(poisson_nll(jnp.full((1, 1, 1), 2.0), jnp.full((1, 1, 1), 1.0), eps=0)) == (
        pytest.approx(2.0 - np.log(2.0) - 1.0)
    )
    mask = jnp.zeros((5, 5), bool).at[0, 0].set(True)
    assert float(amplitude_gaussian(pred, n, mask)) == pytest.approx(
        float(jnp.mean((jnp.sqrt(pred[:, 0, 0]) - jnp.sqrt(n[:, 0, 0])) ** 2)), rel=1e-6
    )


def _chain(rng, n_e=2, n_s=2, n_a=3, shape=(8, 10, 10)):
    comp = jnp.asarray(rng.random((n_s, *shape)) * 0.5)
    spectra = jnp.asarray((rng.random((n_e, n_s)) + 1j * rng.random((n_e, n_s))) * 1e-3)
    angles = jnp.asarray(np.deg2rad([-60.0, 10.0, 75.0][:n_a]))
    align = jnp.asarray(rng.normal(0, 0.2, (n_a, 4)) * np.array([1, 1, 0.05, 0.01]))
    probe = jnp.asarray(rng.standard_normal((n_e, 1, 4, 4)) + 0j)
    pos = jnp.asarray(rng.uniform(-1.5, 1.5, (n_e, n_a, 3, 2)))
    return SpectroPtychoTomo(
        comp,
        spectra,
        jnp.asarray([708.2, 710.2][:n_e]),
        angles,
        align,
        probe,
        pos,
        background=jnp.full((n_e, 4, 4), 0.01),
        voxel_size_m=6.7e-9,
    )


def test_full_chain_matches_its_parts(rng):
    model = _chain(rng)
    u = composition_to_index(model.composition, model.spectra)
    tomo = TomoProjections(u[1], model.angles_rad, model.alignment, voxel_size_m=6.7e-9)
    np.testing.assert_allclose(model.projected_index()[1], tomo(), rtol=1e-10, atol=1e-20)
    everything = jax.jit(SpectroPtychoTomo.all_intensities)(model)
    one = jax.jit(SpectroPtychoTomo.__call__)(
        model, jnp.asarray(1), jnp.asarray(2), jnp.asarray([0, 2])
    )
    np.testing.assert_allclose(everything[1, 2, jnp.asarray([0, 2])], one, rtol=1e-10)


def test_full_chain_gradients(rng):
    model = _chain(rng)

    def f(comp, align, probe, pos):
        m = SpectroPtychoTomo(
            comp,
            model.spectra,
            model.energies_ev,
            model.angles_rad,
            align,
            probe,
            pos,
            model.background,
            voxel_size_m=model.voxel_size_m,
        )
        return jnp.sum(m.all_intensities() ** 0.5)

    args = (model.composition, model.alignment, model.probe, model.positions)
    check_grads(jax.jit(f), args, order=1, modes=("fwd", "rev"), atol=1e-4, rtol=1e-4)


def test_spectro_ptycho_2d_matches_per_energy_model(rng):
    thick = jnp.asarray(rng.random((2, 16, 16)) * 50e-9)
    spectra = jnp.asarray([[1e-3 + 2e-4j, 5e-4 + 1e-4j], [9e-4 + 3e-4j, 6e-4 + 5e-5j]])
    e = jnp.asarray([5460.0, 5480.0])
    probe = _probe(rng, 1, (6, 6))[None].repeat(2, 0)
    pos = jnp.asarray(rng.uniform(-3, 3, (2, 4, 2)))
    model = SpectroPtycho2D(thick, spectra, e, probe, pos)
    frames = jax.jit(SpectroPtycho2D.__call__)(model)
    t = model.transmission()
    single = jax.jit(Ptycho2D.__call__)(Ptycho2D(t[1], probe[1], pos[1]))
    np.testing.assert_allclose(frames[1], single, rtol=1e-10)


def test_projection_units_are_metres(rng):
    vol = jnp.ones((10, 4, 10))
    tomo = TomoProjections(vol, jnp.zeros(1), jnp.zeros((1, 4)), voxel_size_m=2e-9)
    np.testing.assert_allclose(tomo()[0, :, 5], 10 * 2e-9, rtol=1e-6)
    np.testing.assert_allclose(tomography.project(vol, jnp.zeros(1))[0, :, 5], 10, rtol=1e-6)


def test_bad_model_input_names_the_argument(rng):
    with pytest.raises(ValueError, match="object"):
        Ptycho2D(jnp.ones((2, 3, 3), complex), _probe(rng), jnp.zeros((1, 2)))
    with pytest.raises(ValueError, match="positions"):
        Ptycho2D(_object(rng), _probe(rng), jnp.zeros((3,)))
    with pytest.raises(ValueError, match="composition"):
        m = _chain(rng)
        SpectroPtychoTomo(
            m.composition[0],
            m.spectra,
            m.energies_ev,
            m.angles_rad,
            m.alignment,
            m.probe,
            m.positions,
        )
    with pytest.raises(ValueError, match="joules"):
        as_energies([708.2 * 1.602176634e-19])
    with pytest.raises(ValueError, match="energies_ev"):
        as_energies([-1.0])


@pytest.mark.parametrize("propagator", [FarField(), NearField(1e-8, 1e-10, 1e-3)])
def test_native_intensities_are_the_centred_ones_relaid(rng, propagator):
    from diffptycho.models.ptycho import scan_intensities

    obj = jnp.asarray(np.exp(1j * rng.uniform(0, 1, (24, 24))))
    probe = jnp.asarray(rng.standard_normal((2, 8, 8)) + 1j * rng.standard_normal((2, 8, 8)))
    pos = jnp.asarray(rng.uniform(-4, 4, (5, 2)))
    bg = jnp.asarray(rng.uniform(0, 1, (8, 8)))
    centred = scan_intensities(obj, probe, pos, propagator, bg)
    native = scan_intensities(obj, probe, pos, propagator, bg, native=True)
    np.testing.assert_allclose(native, propagator.to_native(centred), rtol=1e-12, atol=1e-12)
    if isinstance(propagator, FarField):  # the layouts really differ (frames are not symmetric)
        assert not np.allclose(native, centred)
