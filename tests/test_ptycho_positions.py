"""Scan-position refinement: the Gauss–Newton shift, mean fixing, and recovery of 1–3 px errors."""

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest

from diffptycho.physics.scan import extract_patches
from diffptycho.recon.ptycho import ENGINES, PositionRefinement, PtychoData, Refinement
from diffptycho.recon.ptycho.constraints import fix_mean_positions, position_shifts
from diffptycho.recon.solve import solve
from tests.test_ptycho_engines import random_object, simulate


def test_gauss_newton_shift_recovers_a_known_shift(rng):
    obj = jnp.asarray(random_object((48, 48), seed=1))
    r2 = np.add.outer((np.arange(16.0) - 8) ** 2, (np.arange(16.0) - 8) ** 2)
    probe = jnp.asarray(np.exp(-r2 / 40.0)[None].astype(obj.dtype))
    pos = jnp.asarray([[0.3, -0.4], [-2.2, 1.6]])
    true_shift = np.asarray([[0.12, -0.08], [-0.1, 0.15]])
    chi = (
        probe[None]
        * (extract_patches(obj, pos + true_shift, (16, 16)) - extract_patches(obj, pos, (16, 16)))[
            :, None
        ]
    )
    shift = position_shifts(obj, probe, pos, chi, max_step_px=1.0)
    np.testing.assert_allclose(shift, true_shift, atol=0.01)
    clipped = position_shifts(obj, probe, pos, 50 * chi, max_step_px=0.5)
    assert float(jnp.max(jnp.abs(clipped))) <= 0.5 + 1e-12


def test_mean_fixed_per_group(rng):
    reference = jnp.asarray(rng.normal(size=(7, 2)))
    moved = reference + jnp.asarray(rng.normal(size=(7, 2)))
    fixed = fix_mean_positions(moved, reference, (3, 4))
    for a, b in ((0, 3), (3, 7)):
        np.testing.assert_allclose(fixed[a:b].mean(0), reference[a:b].mean(0), atol=1e-12)
    with pytest.raises(ValueError, match="add up"):
        fix_mean_positions(moved, reference, (3, 3))


def _perturbed(n, seed):
    truth, frames = simulate(n=n, seed=seed)
    rng = np.random.default_rng(seed + 100)
    size, angle = rng.uniform(1, 3, n), rng.uniform(0, 2 * np.pi, n)
    errors = np.stack([size * np.sin(angle), size * np.cos(angle)], axis=1)
    start = eqx.tree_at(
        lambda m: (m.object, m.positions),
        truth,
        (jnp.ones_like(truth.object), truth.positions + errors),
    )
    return truth, frames, start


def _rms(model, truth):
    d = np.asarray(model.positions - truth.positions)
    d = d - d.mean(axis=0)  # a common shift of object and positions is not determined
    return float(np.sqrt(np.mean(np.sum(d**2, axis=1))))


def test_positions_wait_for_start():
    truth, frames, start = _perturbed(40, seed=9)
    settings = Refinement(probe=False, positions=PositionRefinement(start=5))
    model, _ = solve(
        start,
        ENGINES["epie"](batch_size=8, refinement=settings),
        PtychoData(frames),
        3,
        progress=False,
    )
    np.testing.assert_array_equal(model.positions, start.positions)


@pytest.mark.parametrize("name", ["lsqml", pytest.param("raar", marks=pytest.mark.slow)])
def test_refinement_recovers_scan_errors(name):
    truth, frames, start = _perturbed(80, seed=8)
    assert _rms(start, truth) > 1.5
    settings = Refinement(probe=False, positions=PositionRefinement(start=3, max_step_px=1.0))
    engine = ENGINES[name](batch_size=16, refinement=settings)
    model, _ = solve(start, engine, PtychoData(jnp.asarray(frames)), 60, progress=False)
    assert _rms(model, truth) < 0.2
