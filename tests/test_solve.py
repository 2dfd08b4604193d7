"""The solve loop: convergence, complex leaves, line searches, NaN rollback, no retracing."""

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from diffptycho.recon.solve import DivergenceError, OptaxSolver, solve


class Params(eqx.Module):
    z: jnp.ndarray
    fixed: jnp.ndarray


TARGET = jnp.asarray([1.0 - 2.0j, -0.5 + 0.25j])


def quadratic(m, batch):
    return jnp.sum(jnp.abs(m.z - batch) ** 2) + jnp.sum(m.fixed**2)


def test_complex_leaves_descend_with_conjugated_gradients():
    # without conjugation the imaginary part would climb instead of descend
    solver = OptaxSolver(quadratic, optax.sgd(0.25), lambda m: m.z)
    start = Params(jnp.zeros(2, complex), jnp.ones(3))
    model, history = solve(start, solver, TARGET, 30, progress=False)
    np.testing.assert_allclose(model.z, TARGET, atol=1e-6)
    np.testing.assert_array_equal(model.fixed, start.fixed)  # not trainable: untouched
    assert history.loss[-1] < history.loss[0]


def test_lbfgs_line_search_gets_its_extra_arguments():
    solver = OptaxSolver(quadratic, optax.lbfgs(), lambda m: m.z)
    model, _ = solve(Params(jnp.zeros(2, complex), jnp.zeros(1)), solver, TARGET, 5, progress=False)
    np.testing.assert_allclose(model.z, TARGET, atol=1e-6)


def test_constraint_is_applied_after_each_step():
    def clip(m):
        return eqx.tree_at(lambda p: p.z, m, jnp.clip(m.z.real, 0, 0.5) + 0j)

    solver = OptaxSolver(quadratic, optax.sgd(0.25), lambda m: m.z, constraint=clip)
    model, _ = solve(
        Params(jnp.zeros(2, complex), jnp.zeros(1)), solver, TARGET, 20, progress=False
    )
    np.testing.assert_allclose(model.z, [0.5, 0.0], atol=1e-9)


def test_divergence_rolls_back_and_explains():
    solver = OptaxSolver(lambda m, b: jnp.sum(m.z.real**4), optax.sgd(1e3), lambda m: m.z)
    start = Params(jnp.ones(2, complex), jnp.zeros(1))
    with pytest.raises(DivergenceError, match="rolled back") as info:
        solve(start, solver, TARGET, 10, progress=False)
    assert np.all(np.isfinite(np.asarray(info.value.model.z)))


def test_repeated_solves_reuse_the_compiled_step():
    traces = []

    def counted(m, batch):
        traces.append(1)  # runs only while tracing
        return quadratic(m, batch)

    solver = OptaxSolver(counted, optax.adam(0.1), lambda m: m.z)
    counts = []
    for k in range(3):
        start = Params(jnp.asarray(np.full(2, k + 0j)), jnp.zeros(1))
        solve(start, solver, TARGET, 4, progress=False)
        counts.append(len(traces))
    assert counts[0] >= 1 and counts[2] == counts[0]


def test_callable_batches_and_callback():
    seen = []
    solver = OptaxSolver(quadratic, optax.sgd(0.25), lambda m: m.z)
    solve(
        Params(jnp.zeros(2, complex), jnp.zeros(1)),
        solver,
        lambda it: TARGET * (it + 1),
        3,
        progress=False,
        callback=lambda it, m, loss: seen.append(it),
    )
    assert seen == [0, 1, 2]
    with pytest.raises(ValueError, match="iterations"):
        solve(Params(jnp.zeros(2), jnp.zeros(1)), solver, TARGET, -1, progress=False)
