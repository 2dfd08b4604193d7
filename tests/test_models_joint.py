"""The full chain as the joint reconstruction sees it: per-energy offsets and exact gradients."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from diffptycho.models import SpectroPtychoTomo
from diffptycho.physics.alignment import similarity_transform
from diffptycho.recon.losses import poisson_nll


def _model(rng, shape=(6, 6, 6), n_e=2, n_a=2, n_pos=3, probe=4, padding_px=1, offsets=None):
    """A tiny full chain with a non-trivial similarity alignment per angle."""
    n_s = 2
    align = rng.normal(0, 1, (n_a, 4)) * np.array([0.6, 0.6, 0.1, 0.03])
    return SpectroPtychoTomo(
        jnp.asarray(rng.uniform(0.1, 0.5, (n_s, *shape))),
        jnp.asarray((rng.uniform(1, 2, (n_e, n_s)) + 1j * rng.uniform(0.2, 1, (n_e, n_s))) * 1e-3),
        jnp.asarray([708.2, 710.2][:n_e]),
        jnp.asarray(np.deg2rad([-35.0, 50.0, 10.0][:n_a])),
        jnp.asarray(align),
        jnp.asarray(
            rng.standard_normal((n_e, 1, probe, probe))
            + 1j * rng.standard_normal((n_e, 1, probe, probe))
        ),
        jnp.asarray(rng.uniform(-1, 1, (n_e, n_a, n_pos, 2))),
        voxel_size_m=6.7e-9,
        padding_px=padding_px,
        energy_offsets=offsets,
    )


def _with_offsets(model, offsets):
    return eqx.tree_at(
        lambda m: m.energy_offsets, model, jnp.asarray(offsets), is_leaf=lambda x: x is None
    )


def test_zero_offsets_are_the_model_without_them(rng):
    plain = _model(rng)
    zero = _with_offsets(plain, np.zeros((2, 2, 2)))
    np.testing.assert_allclose(
        zero.projected_index(), plain.projected_index(), rtol=1e-13, atol=1e-25
    )
    np.testing.assert_allclose(zero.all_intensities(), plain.all_intensities(), rtol=1e-12)


def test_offset_shifts_its_own_scan_only(rng):
    plain = _model(rng, shape=(8, 10, 10), n_a=3, padding_px=0)
    old = np.asarray(plain.projected_index())
    offsets = np.zeros((2, 3, 2))
    offsets[1, 2] = (1.0, -2.0)  # whole pixels: shifting the aligned image resamples nothing
    shifted = np.asarray(_with_offsets(plain, offsets).projected_index())
    expected = similarity_transform(jnp.asarray(old[1, 2]), jnp.asarray([1.0, -2.0, 0.0, 0.0]))
    # except on the first row and last two columns, which the shift fills from outside the
    # aligned image (zeros) but the folded transform from the source still in view
    np.testing.assert_allclose(shifted[1, 2, 1:, :-2], expected[1:, :-2], rtol=1e-12, atol=1e-25)
    np.testing.assert_allclose(shifted[0], old[0], rtol=1e-13, atol=1e-25)
    np.testing.assert_allclose(shifted[1, :2], old[1, :2], rtol=1e-13, atol=1e-25)

    # any offset: the shift is added to that scan's translation, resampled once
    offsets[0, 1] = (0.37, -0.81)
    shifted = np.asarray(_with_offsets(plain, offsets).projected_index())
    moved = eqx.tree_at(lambda m: m.alignment, plain, plain.alignment.at[1, :2].add(offsets[0, 1]))
    np.testing.assert_allclose(shifted[0, 1], moved.projected_index()[0, 1], rtol=1e-12, atol=1e-25)


def test_offsets_of_the_wrong_shape_name_the_argument(rng):
    with pytest.raises(ValueError, match="energy_offsets"):
        _model(rng, offsets=jnp.zeros((2, 3, 2)))


def test_full_chain_poisson_gradients(rng):
    model = _model(rng, offsets=jnp.asarray(rng.normal(0, 0.4, (2, 2, 2))))
    model.check_scan_geometry()
    truth = _with_offsets(model, np.asarray(model.energy_offsets) + rng.normal(0, 0.3, (2, 2, 2)))
    truth = eqx.tree_at(lambda m: m.composition, truth, truth.composition * 1.3)
    frames = jnp.asarray(rng.poisson(np.asarray(truth.all_intensities())).astype(float))

    def loss(composition, probe, positions, alignment, offsets):
        m = eqx.tree_at(
            lambda m: (m.composition, m.probe, m.positions, m.alignment, m.energy_offsets),
            model,
            (composition, probe, positions, alignment, offsets),
        )
        return poisson_nll(m.all_intensities(), frames)

    args = (model.composition, model.probe, model.positions, model.alignment, model.energy_offsets)
    grads = jax.grad(loss, argnums=range(5))(*args)
    assert all(float(jnp.max(jnp.abs(g))) > 0 for g in grads)  # every leaf reaches the loss
    # eps well below a pixel keeps the finite differences off the bilinear kinks
    check_grads(jax.jit(loss), args, order=1, modes=("rev",), eps=1e-6, atol=1e-6, rtol=1e-6)
