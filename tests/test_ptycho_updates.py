"""Update formulas of the ptychography engines against hand-computed small cases."""

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest

from diffptycho.models import Ptycho2D
from diffptycho.physics.probe import orthogonalize_modes
from diffptycho.recon.ptycho import PtychoData, Refinement, object_error
from diffptycho.recon.ptycho.constraints import orthogonalize_with_mixing, update_background
from diffptycho.recon.ptycho.data import batch_indices
from diffptycho.recon.ptycho.lsqml import optimal_steps
from diffptycho.recon.ptycho.pie import PIE
from diffptycho.recon.ptycho.projections import fourier_projection, intensity_ratio
from diffptycho.recon.ptycho.raar import RAAR, RAARState, difference_map

FIXED = Refinement(orthogonalize_every=0)


def _step(solver, model, state, data):
    return eqx.filter_jit(solver.step)(model, state, data)


def _fft(x):
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x), norm="ortho"))


def _ifft(x):
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(x), norm="ortho"))


def _complex(rng, shape, scale=1.0):
    return scale * (rng.standard_normal(shape) + 1j * rng.standard_normal(shape))


@pytest.fixture
def tiny(rng):
    """One position at the object centre: object 6×6, probe 4×4 → patch = obj[1:5, 1:5]."""
    obj = np.exp(0.2 * _complex(rng, (6, 6)))
    probe = _complex(rng, (4, 4), 2.0)
    frames = rng.poisson(20.0, (1, 4, 4)).astype(float)
    model = Ptycho2D(jnp.asarray(obj), jnp.asarray(probe[None]), jnp.zeros((1, 2)))
    return model, obj, probe, frames


def _chi(patch, probe, frames):
    wave = probe * patch
    far = _fft(wave)
    return _ifft(far * np.sqrt(frames[0] / (np.abs(far) ** 2 + 1e-9))) - wave


def test_fourier_projection_modes_mask_background():
    waves = jnp.asarray([[[[3.0 + 4j, 1.0]], [[0.0, 1.0j]]]])  # (1 frame, 2 modes, 1, 2)
    frames = jnp.asarray([[[100.0, 8.0]]])
    bg = jnp.asarray([[0.0, 2.0]])
    out = np.asarray(fourier_projection(waves, frames, None, bg))
    # pixel 0: I = 25 → ×2; pixel 1: I = 1 + 1 + 2 = 4 → ×√2 on every mode
    np.testing.assert_allclose(out[0, :, 0, 0], [6 + 8j, 0], atol=1e-6)
    np.testing.assert_allclose(out[0, :, 0, 1], np.sqrt(2) * np.array([1.0, 1j]), atol=1e-6)
    coherent = np.sum(np.abs(out[0]) ** 2, axis=0)[0]
    split_bg = 2.0 * float(intensity_ratio(jnp.asarray([[[25.0, 4.0]]]), frames, None)[0, 0, 1])
    np.testing.assert_allclose(coherent + [0.0, split_bg], [100.0, 8.0], rtol=1e-6)
    masked = np.asarray(fourier_projection(waves, frames, jnp.asarray([[False, True]]), bg))
    np.testing.assert_allclose(masked[0, :, 0, 0], np.asarray(waves)[0, :, 0, 0])


def test_epie_update_matches_hand_computation(tiny):
    model, obj, probe, frames = tiny
    solver = PIE(object_step=0.7, probe_step=0.4, batch_size=1, shuffle=False, refinement=FIXED)
    new, _, _ = _step(solver, model, solver.init(model), PtychoData(jnp.asarray(frames)))
    patch = obj[1:5, 1:5]
    chi = _chi(patch, probe, frames)
    want_obj = obj.copy()
    want_obj[1:5, 1:5] += 0.7 * np.conj(probe) * chi / np.max(np.abs(probe) ** 2)
    want_probe = probe + 0.4 * np.conj(patch) * chi / np.max(np.abs(patch) ** 2)
    np.testing.assert_allclose(new.object, want_obj, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(new.probe[0], want_probe, rtol=1e-10, atol=1e-12)


def test_rpie_update_matches_hand_computation(tiny):
    model, obj, probe, frames = tiny
    solver = PIE(object_alpha=0.2, probe_alpha=0.5, batch_size=1, shuffle=False, refinement=FIXED)
    new, _, _ = _step(solver, model, solver.init(model), PtychoData(jnp.asarray(frames)))
    patch = obj[1:5, 1:5]
    chi = _chi(patch, probe, frames)
    p2, o2 = np.abs(probe) ** 2, np.abs(patch) ** 2
    want_obj = obj.copy()
    want_obj[1:5, 1:5] += np.conj(probe) * chi / (0.8 * p2 + 0.2 * p2.max())
    want_probe = probe + np.conj(patch) * chi / (0.5 * o2 + 0.5 * o2.max())
    np.testing.assert_allclose(new.object, want_obj, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(new.probe[0], want_probe, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("beta", [0.75, 1.0])
def test_raar_update_matches_hand_computation(tiny, rng, beta):
    model, obj, probe, frames = tiny
    reg = 1e-3
    solver = RAAR(beta=beta, batch_size=1, regularization=reg, refinement=FIXED)
    # RAAR keeps its waves in the far field's native layout: the unshifted FFT, with the
    # frames moved to FFT order (the detector's centred frames ifftshifted)
    waves = _complex(rng, (1, 1, 4, 4), 3.0)
    state = RAARState(jnp.asarray(waves), model.positions, jnp.asarray(0))
    new, new_state, _ = _step(solver, model, state, PtychoData(jnp.asarray(frames)))
    patch = obj[1:5, 1:5]
    fz = np.fft.fft2(probe * patch, norm="ortho")
    reflected = 2 * fz - waves[0, 0]
    counts = np.fft.ifftshift(frames[0])
    y = reflected * np.sqrt(counts / (np.abs(reflected) ** 2 + 1e-9))
    want_waves = beta * (waves[0, 0] + y - fz) + (1 - beta) * fz
    chi = np.fft.ifft2(want_waves - fz, norm="ortho")
    p2 = np.abs(probe) ** 2
    d_obj = np.conj(probe) * chi / (p2 + reg * p2.max())
    o2 = np.abs(patch) ** 2
    d_probe = np.conj(patch) * (chi - probe * d_obj) / (o2 + reg * o2.max())
    want_obj = obj.copy()
    want_obj[1:5, 1:5] += d_obj
    np.testing.assert_allclose(new_state.waves[0, 0], want_waves, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(new.object, want_obj, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(new.probe[0], probe + d_probe, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("beta", [0.8, 1.0])
def test_consistent_waves_are_a_fixed_point(rng, beta):
    obj = jnp.asarray(np.exp(0.3 * _complex(rng, (20, 20))))
    probe = jnp.asarray(_complex(rng, (2, 8, 8)))
    model = Ptycho2D(obj, probe, jnp.asarray(rng.uniform(-4, 4, (7, 2))))
    data = PtychoData(model())
    solver = RAAR(beta=beta, batch_size=3, refinement=Refinement(orthogonalize_every=1))
    new, state, loss = _step(solver, model, solver.init(model), data)
    assert float(loss) < 1e-8
    np.testing.assert_allclose(new.object, obj, atol=1e-10)
    # the modes were orthogonalised and the stored waves rotated with them
    np.testing.assert_allclose(new.probe, orthogonalize_modes(probe), atol=1e-10)
    np.testing.assert_allclose(state.waves, solver.init(new).waves, atol=1e-10)


def test_relaxed_difference_map_is_raar(tiny, rng):
    model, _, _, frames = tiny
    data = PtychoData(jnp.asarray(frames))
    state = RAARState(jnp.asarray(_complex(rng, (1, 1, 4, 4))), model.positions, jnp.asarray(0))
    a = _step(RAAR(beta=0.85, refinement=FIXED), model, state, data)
    b = _step(difference_map(fourier_relaxation=0.15, refinement=FIXED), model, state, data)
    np.testing.assert_allclose(a[1].waves, b[1].waves, atol=1e-12)
    np.testing.assert_allclose(a[0].object, b[0].object, atol=1e-12)


def test_lsqml_steps_solve_the_least_squares_problem(rng):
    chi, a_o, a_p = (_complex(rng, (3, 2, 4, 4)) for _ in range(3))
    alpha_o, alpha_p = optimal_steps(*(jnp.asarray(x) for x in (chi, a_o, a_p)), True, 0.0)
    for j in range(3):
        design = np.stack([a_o[j].ravel(), a_p[j].ravel()], axis=1)
        real = np.concatenate([design.real, design.imag])
        rhs = np.concatenate([chi[j].ravel().real, chi[j].ravel().imag])
        want = np.linalg.lstsq(real, rhs, rcond=None)[0]
        np.testing.assert_allclose([alpha_o[j], alpha_p[j]], want, rtol=1e-8)
    only_o, zero = optimal_steps(*(jnp.asarray(x) for x in (chi, a_o, a_p)), False, 0.0)
    np.testing.assert_allclose(zero, 0.0)
    want = np.sum((np.conj(a_o) * chi).real, (1, 2, 3)) / np.sum(np.abs(a_o) ** 2, (1, 2, 3))
    np.testing.assert_allclose(only_o, want, rtol=1e-8)


def test_background_em_update_fixed_point_and_ascent(rng):
    frames = jnp.asarray(rng.poisson(5.0, (50, 4, 4)).astype(float))
    coherent = jnp.full((50, 4, 4), 3.0)
    bg = jnp.full((4, 4), 0.5)
    for _ in range(200):
        bg = update_background(bg, jnp.mean(intensity_ratio(coherent + bg, frames, None), 0))
    # stationarity of the Poisson likelihood in b: Σ_j (n_j / I_j − 1) = 0
    grad = jnp.sum(frames / (coherent + bg) - 1, axis=0)
    np.testing.assert_allclose(grad, 0.0, atol=1e-6)
    assert bool(jnp.all(bg > 0))


def test_mode_orthogonalisation_and_mixing(rng):
    modes = jnp.asarray(_complex(rng, (3, 6, 6)))
    new, mixing = orthogonalize_with_mixing(modes)
    np.testing.assert_allclose(new, orthogonalize_modes(modes), atol=1e-10)
    np.testing.assert_allclose(jnp.einsum("mk,kyx->myx", mixing, modes), new, atol=1e-10)
    np.testing.assert_allclose(mixing @ mixing.conj().T, np.eye(3), atol=1e-10)


@pytest.mark.parametrize("engine", ["raar", "epie", "lsqml", "adam"])
def test_probe_modes_orthogonal_after_a_step(rng, engine):
    from diffptycho.recon.ptycho import ENGINES

    obj = jnp.asarray(np.exp(0.3 * _complex(rng, (24, 24))))
    model = Ptycho2D(
        obj, jnp.asarray(_complex(rng, (3, 8, 8))), jnp.asarray(rng.uniform(-6, 6, (9, 2)))
    )
    frames = model()
    start = eqx.tree_at(
        lambda m: m.probe, model, model.probe + jnp.asarray(_complex(rng, (3, 8, 8), 0.3))
    )
    solver = ENGINES[engine](batch_size=4)
    new, _, _ = _step(solver, start, solver.init(start), PtychoData(frames))
    gram = np.asarray(jnp.einsum("ayx,byx->ab", new.probe.conj(), new.probe))
    off = gram - np.diag(np.diag(gram))
    assert np.max(np.abs(off)) < 1e-8 * np.max(np.abs(gram))
    power = np.real(np.diag(gram))
    assert np.all(np.diff(power) <= 0)


def test_batch_indices_cover_every_position_once():
    idx, valid = batch_indices(11, 4)
    assert idx.shape == (3, 4)
    assert sorted(np.asarray(idx)[np.asarray(valid)].tolist()) == list(range(11))
    for row, ok in zip(np.asarray(idx), np.asarray(valid), strict=True):
        assert len(set(row.tolist())) == len(row)  # no duplicate inside a batch
        assert ok.dtype == bool


def test_object_error_ignores_scale_phase_and_ramp(rng):
    truth = np.exp(0.5j * rng.standard_normal((40, 50))) * (0.8 + 0.1 * rng.random((40, 50)))
    yy, xx = np.mgrid[:40, :50]
    est = 0.6 * np.exp(1j * (1.0 + 0.021 * yy - 0.013 * xx)) * truth
    assert float(object_error(est, truth)) < 1e-6
    assert float(object_error(est, truth, remove_ramp=False)) > 0.1
    noisy = truth + 0.02 * _complex(rng, truth.shape)
    err = float(object_error(noisy, truth))
    want = 0.02 * np.sqrt(2) / np.sqrt(np.mean(np.abs(truth) ** 2))
    assert abs(err - want) < 0.15 * want


def test_probe_support_power_and_object_clipping(rng):
    from diffptycho.recon.ptycho.constraints import (
        check_refinement,
        circular_support,
        clip_amplitude,
        clip_positions,
        constrain_probe,
    )

    probe = jnp.asarray(_complex(rng, (2, 16, 16)))
    support = circular_support((16, 16), 4.0, 2.0)
    out = constrain_probe(probe, Refinement(probe_support=support, probe_power=50.0))
    np.testing.assert_allclose(jnp.sum(jnp.abs(out) ** 2), 50.0, rtol=1e-12)
    assert float(jnp.max(jnp.abs(out[:, 0, :]))) == 0.0  # outside the disc
    obj = jnp.asarray([[2.0 + 0j, 0.5j], [-3.0, 1.0]])
    np.testing.assert_allclose(clip_amplitude(obj, 1.0), [[1.0, 0.5j], [-1.0, 1.0]])
    pos = clip_positions(jnp.asarray([[100.0, -100.0], [0.5, 0.0]]), (20, 20), (8, 8))
    np.testing.assert_allclose(pos, [[6.0, -6.0], [0.5, 0.0]])
    model = Ptycho2D(jnp.ones((20, 20), complex), probe, jnp.zeros((1, 2)))
    with pytest.raises(ValueError, match="background array"):
        check_refinement(model, Refinement(background=True))
    with pytest.raises(ValueError, match="probe_support"):
        check_refinement(model, Refinement(probe_support=jnp.ones((4, 4))))


def test_raar_beta_schedule():
    fixed = RAAR(beta=0.8)
    assert float(fixed.relaxation_at(500)) == pytest.approx(0.8)
    sched = RAAR(beta=0.8, final_beta=0.1, schedule_iterations=40.0)
    assert float(sched.relaxation_at(0)) == pytest.approx(0.8)
    # Luke's form: β_n = β_f + (β − β_f) exp(−(n/τ)³)
    assert float(sched.relaxation_at(40)) == pytest.approx(0.1 + 0.7 * np.exp(-1.0), rel=1e-6)
    assert float(sched.relaxation_at(200)) == pytest.approx(0.1, abs=1e-6)
    with pytest.raises(ValueError, match="final_beta"):
        RAAR(final_beta=0.0)
    with pytest.raises(ValueError, match="schedule_iterations"):
        RAAR(final_beta=0.5, schedule_iterations=0.0)


def test_lsqml_cpu_loops_agree_with_batched_sums(rng):
    # On the CPU the per-batch sums run as loops over the positions, elsewhere batched: the
    # two forms must agree (mixed modes, unequal weights).
    import importlib

    engine = importlib.import_module("diffptycho.recon.ptycho.lsqml")  # the package's `lsqml`
    # attribute is the factory function

    chi = jnp.asarray(_complex(rng, (5, 2, 6, 6)))
    probe, d_probe = (jnp.asarray(_complex(rng, (2, 6, 6))) for _ in range(2))
    patches, d_patches = (jnp.asarray(_complex(rng, (5, 6, 6))) for _ in range(2))
    weights = jnp.asarray([1.0, 1.0, 0.5, 1.0, 0.0])
    for loop, batched in zip(
        engine._probe_sums_loop(chi, patches, weights),
        engine._probe_sums_batched(chi, patches, weights),
        strict=True,
    ):
        np.testing.assert_allclose(loop, batched, rtol=1e-12)
    args = (chi, probe, d_probe, patches, d_patches)
    loop, batched = engine._products_loop(*args), engine._products_batched(*args)
    np.testing.assert_allclose(loop, batched, rtol=1e-12)
    # and the batched form is the products of a_O = P ΔO_j, a_P = O_j ΔP
    a_o = probe[None] * d_patches[:, None]
    np.testing.assert_allclose(batched[3], np.sum((np.conj(a_o) * chi).real, (1, 2, 3)))


@pytest.mark.parametrize("masked", [False, True])
def test_fourier_change_cpu_loop_agrees_with_batched(rng, masked):
    from diffptycho.recon.ptycho import projections as proj

    detector = jnp.asarray(_complex(rng, (4, 2, 6, 6)))
    frames = jnp.asarray(rng.poisson(3.0, (4, 6, 6)).astype(float))
    mask = jnp.asarray(rng.random((4, 6, 6)) > 0.2) if masked else None
    background = jnp.asarray(rng.random((6, 6)))
    weights = jnp.asarray([1.0, 0.0, 1.0, 1.0])
    for loss in ("poisson", "amplitude"):
        args = (detector, frames, mask, background, weights)
        loop = proj._projected_change_loop(*args, loss=loss)
        batched = proj._projected_change_batched(*args, loss=loss)
        for a, b in zip(loop, batched, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_lsqml_partial_last_batch_is_a_pass_over_its_positions():
    # 10 positions in batches of 4: two full batches, then the last 2 positions as a batch of
    # their own (not padded to 4), i.e. exactly an LSQML pass over those 2 positions
    from diffptycho.recon.ptycho.lsqml import LSQML
    from tests.test_ptycho_engines import simulate, starting_model

    truth, frames = simulate(n=10, probe_px=16, step=3.0)
    start = starting_model(truth, frames)

    def one_step(model, frames, batch):
        solver = LSQML(batch_size=batch, shuffle=False, refinement=FIXED)
        model, _, loss = _step(solver, model, solver.init(model), PtychoData(jnp.asarray(frames)))
        return model, float(loss)

    model, loss = one_step(start, frames, 4)
    first = eqx.tree_at(lambda m: m.positions, start, start.positions[:8])
    first, loss_first = one_step(first, frames[:8], 4)
    last = eqx.tree_at(lambda m: m.positions, first, start.positions[8:])
    last, loss_last = one_step(last, frames[8:], 2)
    np.testing.assert_allclose(model.object, last.object, rtol=0, atol=1e-10)
    np.testing.assert_allclose(model.probe, last.probe, rtol=0, atol=1e-10)
    np.testing.assert_allclose(loss, (8 * loss_first + 2 * loss_last) / 10, rtol=1e-10)


def test_probe_band_keeps_the_far_field_on_the_detector(rng):
    from diffptycho.pipeline.spectroptycho import fourier_upsample
    from diffptycho.recon.ptycho.constraints import (
        band_limit,
        check_refinement,
        constrain_probe,
        detector_band,
    )

    # a probe sampled on the detector's grid, Fourier interpolated onto a 2x finer one, is
    # band-limited to the detector: the band leaves it alone
    inside = fourier_upsample(_complex(rng, (2, 8, 8)), 2)
    band = detector_band((16, 16), (8, 8))
    assert float(band.sum()) == 64.0
    np.testing.assert_allclose(band_limit(jnp.asarray(inside), band), inside, atol=1e-12)
    # a plane wave at the highest frequency of the finer grid lies outside: removed
    y = np.arange(16)[:, None] - 8
    outside = np.broadcast_to(np.exp(1j * np.pi * y) * np.ones((1, 16)), (2, 16, 16))
    out = constrain_probe(jnp.asarray(inside + 0.3 * outside), Refinement(probe_band=band))
    np.testing.assert_allclose(out, inside, atol=1e-12)
    # one pixel inside the edge of the band on each side is kept, one outside is not
    x = np.arange(16)[None, :] - 8
    for k, kept in ((-4, True), (3, True), (4, False), (-5, False)):
        wave = jnp.asarray(np.exp(2j * np.pi * k * x / 16) * np.ones((16, 1)))[None]
        same = bool(np.allclose(band_limit(wave, band), wave, atol=1e-12))
        assert same == kept, k
    model = Ptycho2D(jnp.ones((20, 20), complex), jnp.asarray(inside), jnp.zeros((1, 2)))
    with pytest.raises(ValueError, match="probe_band"):
        check_refinement(model, Refinement(probe_band=jnp.ones((4, 4))))
    with pytest.raises(ValueError, match="fit in the frame"):
        detector_band((8, 8), (16, 16))
