"""``linear_call`` with a batching rule: linear operators with hand-written transposes.

The projector (:mod:`diffptycho.physics.tomography`) and the patch operators
(:mod:`diffptycho.physics.scan`) pair each gather with its scatter-free transpose through
``jax.custom_derivatives.linear_call``. JAX 0.10 ships that primitive without a batching rule;
importing this module registers one, so ``vmap`` composes with their derivatives.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.custom_derivatives import linear_call


def sum_terms(terms: list[jax.Array], like: jax.Array) -> jax.Array:
    """Sum of the tangent terms of a ``custom_jvp`` rule (zeros like ``like`` when none)."""
    return functools.reduce(jnp.add, terms) if terms else jnp.zeros_like(like)


def _register_linear_call_batching() -> bool:
    """Give ``linear_call`` a batching rule so ``vmap`` composes with our derivatives.

    JAX (0.10) ships ``linear_call`` without one, which would break ``vmap(grad(...))`` over,
    e.g., energies. The rule vmaps both the function and its transpose, keeping the pairing.

    Returns:
        Whether ``linear_call`` can be batched (by JAX's rule or this one).
    """
    try:
        from jax._src.custom_derivatives import linear_call_p
        from jax.interpreters import batching
    except ImportError:  # pragma: no cover - a newer JAX reorganised its internals
        return False
    tables = [getattr(batching, "fancy_primitive_batchers", {}), batching.primitive_batchers]
    if any(isinstance(t, dict) and linear_call_p in t for t in tables):
        return True  # JAX has its own rule
    try:
        from jax.extend.core import jaxpr_as_fun
    except ImportError:  # pragma: no cover - older JAX
        from jax.core import jaxpr_as_fun

    def rule(args, dims, *, callee, transpose_thunk, num_callee_consts, num_res):
        size = next(x.shape[d] for x, d in zip(args, dims, strict=True) if d is not None)
        n_fixed = num_callee_consts + num_res
        args = [x if d is None else jnp.moveaxis(x, d, 0) for x, d in zip(args, dims, strict=True)]
        axes = [None if d is None else 0 for d in dims]
        fixed, fixed_axes = args[:n_fixed], axes[:n_fixed]
        # Every linear input is batched so the transpose's outputs (its cotangents) are too.
        lin = [
            x if ax == 0 else jnp.broadcast_to(x, (size, *x.shape))
            for x, ax in zip(args[n_fixed:], axes[n_fixed:], strict=True)
        ]
        callee_fn = jaxpr_as_fun(callee)
        transpose_jaxpr, transpose_consts = transpose_thunk()
        transpose_fn = jaxpr_as_fun(transpose_jaxpr)

        def fun(res, x):
            return jax.vmap(lambda r, v: callee_fn(*r, *v), in_axes=(fixed_axes, 0))(res, x)

        def fun_t(res, ct):
            res_only, res_axes = res[num_callee_consts:], fixed_axes[num_callee_consts:]
            return jax.vmap(
                lambda r, c: transpose_fn(*transpose_consts, *r, *c), in_axes=(res_axes, 0)
            )(res_only, ct)

        out = linear_call(fun, fun_t, fixed, lin)
        return out, [0] * len(out)

    batching.primitive_batchers[linear_call_p] = rule
    return True


LINEAR_CALL_BATCHES = _register_linear_call_batching()
"""Whether ``linear_call`` can be batched (by JAX's own rule or the one registered here)."""
