"""Test configuration: float64 and four fake CPU devices, set before JAX initialises."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# the suite never uses the user's persistent compilation cache (tests that call the CLI would
# turn it on): other processes on the machine write it with other device counts and flags,
# and a suite run that read it failed and crashed inside JAX's cache read
os.environ.setdefault("DIFFPTYCHO_NO_CACHE", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


@pytest.fixture(autouse=True, scope="module")
def _fresh_jax_caches():
    """Drop each module's compiled programs when it ends.

    The whole suite in one process otherwise keeps every executable it compiled (thousands,
    each with its own memory mappings); the full run then crashed inside XLA's compiler near
    its end, while every module passed on its own.
    """
    yield
    jax.clear_caches()


@pytest.fixture
def rng():
    """A seeded NumPy generator so every test is reproducible."""
    return np.random.default_rng(1234)


@pytest.fixture
def shared_data():
    """Path of the measured data shipped beside the project (skip when absent)."""
    path = os.path.abspath(SHARED_DATA)
    if not os.path.isdir(path):
        pytest.skip(f"shared data not found at {path}")
    return path


def dot_test(forward, adjoint, x, y) -> float:
    """Relative mismatch of ⟨A x, y⟩ and ⟨x, Aᴴ y⟩ (complex inner products)."""
    lhs = np.vdot(np.asarray(y), np.asarray(forward(x)))
    rhs = np.vdot(np.asarray(adjoint(y)), np.asarray(x))
    return float(abs(lhs - rhs) / max(abs(lhs), abs(rhs)))
