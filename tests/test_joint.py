"""Joint reconstruction: it fits the data, and sharding over devices changes nothing."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffptycho.recon.joint import angle_mesh, joint_loss, joint_reconstruct, sharded_joint_loss
from diffptycho.sim import datasets

GEOM = datasets.ScanGeometry(scan_shape=(3, 3), step_px=3.0, photons_per_frame=1e5)


@pytest.fixture(scope="module")
def data():
    ds = datasets.simulate_lfp_tomo(
        volume_shape=(24, 24, 24), angles_deg=np.linspace(-80, 77, 8), geometry=GEOM, seed=3
    )
    model = ds.tomo_model()
    return ds, model


def test_sharded_loss_and_gradient_equal_single_device(data):
    ds, model = data
    assert len(jax.devices()) == 4  # conftest fakes four CPU devices
    model = eqx.tree_at(lambda m: m.composition, model, jnp.asarray(ds.truth["composition"]) * 0.7)
    idx = jnp.arange(8)
    batch = (jnp.asarray(ds.frames), idx)
    plain = jax.jit(
        jax.value_and_grad(
            lambda c: joint_loss()(eqx.tree_at(lambda m: m.composition, model, c), batch)
        )
    )
    shard = jax.jit(
        jax.value_and_grad(
            lambda c: sharded_joint_loss(angle_mesh())(
                eqx.tree_at(lambda m: m.composition, model, c), batch
            )
        )
    )
    (v1, g1), (v2, g2) = plain(model.composition), shard(model.composition)
    np.testing.assert_allclose(v2, v1, rtol=1e-10)
    np.testing.assert_allclose(g2, g1, rtol=1e-8, atol=1e-12 * float(jnp.abs(g1).max()))
    with pytest.raises(ValueError, match="multiple"):
        sharded_joint_loss(angle_mesh())(model, (batch[0][:, :6], idx[:6]))


def test_joint_reconstruction_moves_towards_the_truth(data):
    ds, model = data
    truth = ds.truth["composition"]
    fitted, history = joint_reconstruct(model, ds.frames, 60, learning_rate=0.05, progress=False)
    assert history.loss[-1] < 0.2 * history.loss[0]
    err0 = np.linalg.norm(truth)
    err = np.linalg.norm(np.asarray(fitted.composition) - truth)
    assert err < 0.75 * err0
    assert float(fitted.composition.min()) >= 0.0 and float(fitted.composition.max()) <= 1.0


def test_bad_refine_name(data):
    ds, model = data
    with pytest.raises(ValueError, match="refine"):
        joint_reconstruct(model, ds.frames, 1, refine=("volume",), progress=False)
    with pytest.raises(ValueError, match="frames"):
        joint_reconstruct(model, ds.frames[:, :3], 1, progress=False)
