"""Far-field and Fresnel propagation: unitarity, adjoints, and the Gaussian-beam closed form."""

import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from diffptycho.physics.optics import wavelength
from diffptycho.physics.propagation import far_field, far_field_adjoint, fresnel_propagate
from tests.conftest import dot_test

ENERGY_EV = 708.2  # Fe L3 edge
LAM = wavelength(ENERGY_EV)


def _complex(rng, shape):
    return jnp.asarray(rng.normal(size=shape) + 1j * rng.normal(size=shape))


def test_far_field_parseval(rng):
    x = _complex(rng, (3, 32, 48))
    y = far_field(x)
    assert y.shape == x.shape
    np.testing.assert_allclose(
        np.sum(np.abs(y) ** 2, axis=(-2, -1)), np.sum(np.abs(x) ** 2, axis=(-2, -1)), rtol=1e-12
    )


@pytest.mark.parametrize("shape", [(32, 32), (31, 20)])
def test_far_field_adjoint_inverts(rng, shape):
    x = _complex(rng, shape)
    np.testing.assert_allclose(far_field_adjoint(far_field(x)), x, atol=1e-12)
    np.testing.assert_allclose(far_field(far_field_adjoint(x)), x, atol=1e-12)


@pytest.mark.parametrize("n", [16, 17])
def test_centred_delta_gives_flat_far_field(n):
    delta = jnp.zeros((n, n), complex).at[n // 2, n // 2].set(1.0)
    y = np.asarray(far_field(delta))
    # Unitary FFT: |y| = 1/n everywhere and zero phase (the delta sits on the phase origin).
    np.testing.assert_allclose(y, np.full((n, n), 1.0 / n), atol=1e-14)


def test_far_field_dot_test(rng):
    x, y = _complex(rng, (2, 24, 40)), _complex(rng, (2, 24, 40))
    assert dot_test(far_field, far_field_adjoint, x, y) < 1e-10


def _gaussian_beam(z, w0, dx, n):
    """Paraxial Gaussian beam for exp(i(kz − ωt)) without the global exp(ikz)."""
    z_r = np.pi * w0**2 / LAM
    r = (np.arange(n) - n // 2) * dx
    r2 = r[:, None] ** 2 + r[None, :] ** 2
    if z == 0:
        return np.exp(-r2 / w0**2).astype(complex)
    w = w0 * np.sqrt(1 + (z / z_r) ** 2)
    radius = z * (1 + (z_r / z) ** 2)
    gouy = np.arctan(z / z_r)
    k = 2 * np.pi / LAM
    return w0 / w * np.exp(-r2 / w**2) * np.exp(1j * k * r2 / (2 * radius)) * np.exp(-1j * gouy)


@pytest.mark.parametrize("z_over_zr", [1.0, 2.0, -1.0])
def test_fresnel_gaussian_beam_closed_form(z_over_zr):
    n, dx, w0 = 256, 10e-9, 80e-9  # w0 = 8 px; the beam at 2 zR (w ≈ 18 px) stays far from edges
    z_r = np.pi * w0**2 / LAM  # ≈ 11.5 µm at 708 eV
    z = z_over_zr * z_r
    u0 = jnp.asarray(_gaussian_beam(0.0, w0, dx, n))
    numeric = np.asarray(fresnel_propagate(u0, dx, LAM, z))
    exact = _gaussian_beam(z, w0, dx, n)
    rel = np.linalg.norm(numeric - exact) / np.linalg.norm(exact)
    assert rel < 1e-3
    # The on-axis phase is the Gouy phase −arctan(z/zR) and the amplitude falls as w0/w.
    centre = numeric[n // 2, n // 2]
    np.testing.assert_allclose(np.angle(centre), -np.arctan(z_over_zr), atol=1e-6)
    np.testing.assert_allclose(abs(centre), 1 / np.sqrt(1 + z_over_zr**2), rtol=1e-6)


def test_fresnel_forward_backward_identity(rng):
    x = _complex(rng, (2, 32, 40))
    there = fresnel_propagate(x, 10e-9, LAM, 5e-6)
    np.testing.assert_allclose(fresnel_propagate(there, 10e-9, LAM, -5e-6), x, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(there), np.linalg.norm(x), rtol=1e-12)


def test_near_field_keeps_complex64_under_x64(rng):
    """The x64 session's complex128 transfer function must not promote a complex64 wave."""
    import jax

    from diffptycho.models.propagators import NearField

    assert jax.config.jax_enable_x64
    prop = NearField(pixel_size_m=10e-9, wavelength_m=LAM, distance_m=5e-6)
    x = _complex(rng, (2, 32, 40))
    x64 = x.astype(jnp.complex64)
    for op in (prop, prop.adjoint, jax.jit(prop)):
        out = op(x64)
        assert out.dtype == jnp.complex64
        # float32 accuracy against the complex128 propagation of the same (rounded) wave
        ref = np.asarray(op(x64.astype(jnp.complex128)))
        assert ref.dtype == np.complex128
        rel = np.linalg.norm(np.asarray(out) - ref) / np.linalg.norm(ref)
        assert rel < 1e-6, rel
    assert fresnel_propagate(x, 10e-9, LAM, 5e-6).dtype == jnp.complex128


def test_fresnel_dot_test(rng):
    x, y = _complex(rng, (32, 40)), _complex(rng, (32, 40))
    forward = lambda u: fresnel_propagate(u, 10e-9, LAM, 3e-6)  # noqa: E731
    adjoint = lambda u: fresnel_propagate(u, 10e-9, LAM, -3e-6)  # noqa: E731
    assert dot_test(forward, adjoint, x, y) < 1e-10


@pytest.mark.parametrize(
    "op",
    [far_field, far_field_adjoint, lambda u: fresnel_propagate(u, 10e-9, LAM, 3e-6)],
    ids=["far_field", "far_field_adjoint", "fresnel"],
)
def test_propagation_grads(rng, op):
    x = _complex(rng, (8, 12))
    check_grads(op, (x,), order=1, modes=("fwd", "rev"))


@pytest.mark.parametrize("shape", [(3, 8, 8), (2, 6, 10), (2, 7, 8), (2, 5, 5)])
def test_native_layout_contract(rng, shape):
    # engines use |native(x)|² and native_adjoint(native(x)·M) instead of the centred pair
    from diffptycho.models.propagators import FarField, NearField

    x = jnp.asarray(rng.standard_normal(shape) + 1j * rng.standard_normal(shape))
    m = jnp.asarray(rng.uniform(size=shape[-2:]))
    for prop in (FarField(), NearField(1e-8, 1e-10, 1e-3)):
        np.testing.assert_allclose(
            jnp.abs(prop.native(x)) ** 2, prop.to_native(jnp.abs(prop(x)) ** 2), atol=1e-12
        )
        np.testing.assert_allclose(
            prop.native_adjoint(prop.native(x) * prop.to_native(m)),
            prop.adjoint(prop(x) * m),
            atol=1e-12,
        )
        np.testing.assert_array_equal(prop.from_native(prop.to_native(m)), m)
