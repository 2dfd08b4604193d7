"""Engines with their minibatches split over fake CPU devices equal the single-device engines.

The conftest gives the test process four CPU devices (``XLA_FLAGS=
--xla_force_host_platform_device_count=4``, set before jax is imported) and float64, so the
sharded and the single-device runs can be compared to rounding on a tiny scan.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffptycho.recon.ptycho import ENGINES, PositionRefinement, PtychoData, Refinement
from diffptycho.recon.sharding import position_mesh, summed
from diffptycho.recon.solve import solve
from tests.test_ptycho_engines import simulate, starting_model

pytestmark = pytest.mark.skipif(
    len(jax.devices()) < 4, reason="needs 4 devices (XLA_FLAGS set by the conftest)"
)


@pytest.fixture(scope="module")
def tiny_scan():
    truth, frames = simulate(n=16, probe_px=16, step=3.0)
    return starting_model(truth, frames), PtychoData(jnp.asarray(frames))


def _compare(tiny_scan, name, devices, iterations=2, **options):
    """Run ``name`` on one device and on ``devices``; return max relative leaf differences."""
    start, data = tiny_scan
    options = {"batch_size": 8} | options
    single, h1 = solve(start, ENGINES[name](**options), data, iterations, progress=False)
    mesh = position_mesh(devices)
    split, h2 = solve(start, ENGINES[name](mesh=mesh, **options), data, iterations, progress=False)
    np.testing.assert_allclose(h2.loss, h1.loss, rtol=1e-10)
    moved = {}
    for leaf in ("object", "probe", "positions"):
        a, b, s = (np.asarray(getattr(m, leaf)) for m in (single, split, start))
        moved[leaf] = np.max(np.abs(a - s))
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-10 * np.max(np.abs(a)), err_msg=leaf)
    return moved


REFINE = Refinement(positions=PositionRefinement(start=1))


def test_sharded_epie_equals_single_device(tiny_scan):
    # object and probe numerators and denominators summed over 4 devices, 2 per device
    moved = _compare(tiny_scan, "epie", 4, iterations=2)
    assert moved["object"] > 0.05 and moved["probe"] > 0


@pytest.mark.slow
def test_sharded_epie_refines_positions_as_single_device(tiny_scan):
    # every device's row writes and the batch-wide damping of the position step
    moved = _compare(tiny_scan, "epie", 4, iterations=3, refinement=REFINE)
    assert moved["object"] > 0.05 and moved["positions"] > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lsqml", "raar", "dm", "mpie"])
def test_sharded_classic_engines_equal_single_device(tiny_scan, name):
    moved = _compare(tiny_scan, name, 2, iterations=3, refinement=REFINE)
    assert moved["object"] > 0.05 and moved["positions"] > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("name", ["adam", "lbfgs"])
def test_sharded_gradient_engines_equal_single_device(tiny_scan, name):
    refinement = Refinement(positions=PositionRefinement(start=0))
    moved = _compare(tiny_scan, name, 4, refinement=refinement)
    assert moved["object"] > 0.01 and moved["positions"] > 1e-4


def test_batch_not_divisible_by_devices_is_refused(tiny_scan):
    start, data = tiny_scan
    engine = ENGINES["lsqml"](batch_size=6, mesh=position_mesh(4))
    with pytest.raises(ValueError, match="6 positions per minibatch cannot be split over 4"):
        solve(start, engine, data, 1, progress=False)


def test_position_mesh_counts(tiny_scan):
    assert position_mesh(2).devices.shape == (2,)
    with pytest.raises(ValueError, match="devices=99"):
        position_mesh(99)
    other = jax.sharding.Mesh(np.asarray(jax.devices()[:2]), ("angle",))
    start, data = tiny_scan
    with pytest.raises(ValueError, match="no 'positions' axis"):
        solve(start, ENGINES["epie"](mesh=other), data, 1, progress=False)


def test_summed_gradient_is_the_sum_of_the_devices_gradients():
    # f_d(x) = Σ_k c_dk |x_k|², split over 4 devices: total value and gradient are analytic
    mesh = position_mesh(4)
    coeff = jnp.arange(1.0, 9.0).reshape(4, 2)
    x = jnp.asarray([0.5 + 1j, -2.0 + 0.5j])

    def part(x, c):
        return jnp.sum(c[0] * jnp.abs(x) ** 2)

    def total(x, c):
        return summed(part, "positions")(x, c)

    spec = jax.sharding.PartitionSpec
    sharded = jax.jit(
        jax.shard_map(
            jax.value_and_grad(total),
            mesh=mesh,
            in_specs=(spec(), spec("positions")),
            out_specs=spec(),
            check_vma=False,
        )
    )
    value, grad = sharded(x, coeff)
    weights = jnp.sum(coeff, axis=0)
    np.testing.assert_allclose(value, jnp.sum(weights * jnp.abs(x) ** 2), rtol=1e-12)
    # JAX's gradient of a real function of complex x is 2 c conj(x)
    np.testing.assert_allclose(grad, 2 * weights * jnp.conj(x), rtol=1e-12)


@pytest.mark.slow
def test_sharded_raar_with_probe_modes_equals_single_device():
    # the waves kept per device are mixed with the modes when they are orthogonalised
    truth, frames = simulate(n=16, probe_px=16, step=3.0, modes=2)
    scan = (starting_model(truth, frames), PtychoData(jnp.asarray(frames)))
    moved = _compare(scan, "raar", 2, iterations=3)
    assert moved["object"] > 0.05 and moved["probe"] > 0


@pytest.mark.slow
def test_sharded_lsqml_with_a_partial_last_batch_equals_single_device(tiny_scan):
    # 16 positions in batches of 12: the last 4 run as a batch of their own, split over the
    # 4 devices (one each)
    moved = _compare(tiny_scan, "lsqml", 4, iterations=2, batch_size=12)
    assert moved["object"] > 0.05 and moved["probe"] > 0
