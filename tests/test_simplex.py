"""Projection of volume fractions onto the capped simplex {c ≥ 0, Σ c ≤ 1}."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from scipy.optimize import minimize

from diffptycho.models import SpectroPtychoTomo
from diffptycho.recon.chem.simplex import project_capped_simplex, project_composition


def _brute_force(c: np.ndarray) -> np.ndarray:
    """Nearest feasible point among the KKT candidates of every face of the capped simplex.

    The minimiser lies in the relative interior of one face: support A, with the sum
    constraint active or not. On that face the nearest point is c_A (inactive) or
    c_A − (Σ c_A − 1)/|A| (active); the feasible candidate closest to c is the projection.
    """
    n = c.size
    best, best_d = np.zeros(n), np.sum(c**2)  # the vertex 0 (empty support)
    for size in range(1, n + 1):
        for support in itertools.combinations(range(n), size):
            idx = list(support)
            for active in (False, True):
                x = np.zeros(n)
                x[idx] = c[idx] - ((c[idx].sum() - 1) / size if active else 0.0)
                if x.min() < -1e-12 or x.sum() > 1 + 1e-12:
                    continue
                d = np.sum((x - c) ** 2)
                if d < best_d:
                    best, best_d = x, d
    return best


def _random_fractions(rng, n_species, n_voxels):
    """Fractions around the feasible set: some inside, some negative, some summing past 1."""
    scale = rng.choice([0.2, 0.6, 1.5], size=(1, n_voxels))
    return rng.uniform(-0.5, 1.0, (n_species, n_voxels)) * scale + rng.normal(
        0, 0.05, (n_species, n_voxels)
    )


@pytest.mark.parametrize("n_species", [1, 2, 3, 4])
def test_matches_brute_force_kkt(rng, n_species):
    c = _random_fractions(rng, n_species, 300)
    out = np.asarray(jax.jit(project_capped_simplex)(jnp.asarray(c)))
    ref = np.stack([_brute_force(c[:, v]) for v in range(c.shape[1])], axis=1)
    np.testing.assert_allclose(out, ref, atol=1e-13)
    # the cases the formula has to merge both occur
    clipped_sum = np.clip(c, 0, None).sum(0)
    assert np.any(clipped_sum > 1) and np.any(clipped_sum < 1)


@pytest.mark.parametrize("n_species", [2, 3, 4])
def test_matches_scipy_constrained_minimiser(rng, n_species):
    c = _random_fractions(rng, n_species, 6)
    out = np.asarray(project_capped_simplex(jnp.asarray(c)))
    for v in range(c.shape[1]):
        res = minimize(
            lambda x, v=v: 0.5 * np.sum((x - c[:, v]) ** 2),
            np.full(n_species, 0.1),
            jac=lambda x, v=v: x - c[:, v],
            bounds=[(0, None)] * n_species,
            constraints=[
                {"type": "ineq", "fun": lambda x: 1 - x.sum(), "jac": lambda x: -np.ones_like(x)}
            ],
            method="SLSQP",
            options={"ftol": 1e-14, "maxiter": 200},
        )
        np.testing.assert_allclose(out[:, v], res.x, atol=1e-6)


@pytest.mark.parametrize("n_species", [1, 2, 3, 4])
def test_feasible_unchanged_idempotent_and_feasible(rng, n_species):
    # feasible points: a Dirichlet draw scaled by a fill ≤ 1, on a (species, z, y, x) grid
    fill = rng.uniform(0, 1, (3, 4, 5))
    inside = rng.dirichlet(np.ones(n_species), (3, 4, 5)).transpose(3, 0, 1, 2) * fill
    np.testing.assert_array_equal(project_capped_simplex(jnp.asarray(inside)), inside)
    c = jnp.asarray(rng.normal(0.3, 0.8, (n_species, 3, 4, 5)))
    once = project_capped_simplex(c)
    assert float(once.min()) >= 0.0
    assert float(once.sum(0).max()) <= 1.0 + 1e-14
    np.testing.assert_allclose(project_capped_simplex(once), once, atol=1e-15)


def test_species_axis_and_dtypes(rng):
    c = rng.normal(0.3, 0.8, (3, 7))
    ref = project_capped_simplex(jnp.asarray(c))
    np.testing.assert_array_equal(project_capped_simplex(jnp.asarray(c.T), axis=-1), ref.T)
    assert project_capped_simplex(jnp.asarray(c, jnp.float32)).dtype == jnp.float32
    np.testing.assert_array_equal(project_capped_simplex(jnp.asarray([[2], [0]])), [[1.0], [0.0]])


def test_gradient_is_that_of_the_active_piece(rng):
    # generic points (away from the kinks) in both regimes: derivative by finite differences
    c = jnp.asarray(_random_fractions(rng, 3, 40))
    weights = jnp.asarray(rng.normal(size=c.shape))
    check_grads(
        lambda x: jnp.sum(weights * project_capped_simplex(x)),
        (c,),
        order=1,
        modes=("fwd", "rev"),
        eps=1e-7,
        atol=1e-7,
        rtol=1e-7,
    )
    # on the face Σ x = 1 with full support the Jacobian is I − 11ᵀ/S
    jac = jax.jacobian(project_capped_simplex)(jnp.asarray([0.5, 0.4, 0.3]))
    np.testing.assert_allclose(jac, np.eye(3) - 1 / 3, atol=1e-15)


def test_project_composition_replaces_only_the_composition(rng):
    comp = jnp.asarray(rng.normal(0.4, 0.5, (2, 4, 4, 4)))
    model = SpectroPtychoTomo(
        comp,
        jnp.asarray([[1e-3 + 1e-4j, 2e-3 + 3e-4j]]),
        jnp.asarray([708.2]),
        jnp.zeros(1),
        jnp.zeros((1, 4)),
        jnp.ones((1, 1, 2, 2), complex),
        jnp.zeros((1, 1, 1, 2)),
    )
    out = jax.jit(project_composition)(model)
    np.testing.assert_array_equal(out.composition, project_capped_simplex(comp))
    np.testing.assert_array_equal(out.probe, model.probe)
    assert float(out.composition.sum(0).max()) <= 1.0 + 1e-14
