"""solve_scans: several scans solved at once (vmapped, split over fake CPU devices) equal each
scan solved alone with solve, per engine family; a diverging scan spoils no other."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffptycho.recon.ptycho import ENGINES, PositionRefinement, PtychoData, Refinement
from diffptycho.recon.ptycho.scans import ScanHistory, scan_mesh, solve_scans
from diffptycho.recon.sharding import position_mesh
from diffptycho.recon.solve import solve
from tests.test_ptycho_engines import simulate, starting_model

pytestmark = pytest.mark.skipif(
    len(jax.devices()) < 4, reason="needs 4 devices (XLA_FLAGS set by the conftest)"
)


@pytest.fixture(scope="module")
def tiny_scans():
    """Three scans of 12 positions, 16² frames, different objects (seeds)."""
    models, datas = [], []
    for seed in range(3):
        truth, frames = simulate(n=12, probe_px=16, step=3.0, seed=seed)
        models.append(starting_model(truth, frames))
        datas.append(PtychoData(jnp.asarray(frames)))
    return models, datas


def _assert_equal_alone(models, datas, engine, iterations, meshes):
    """solve_scans over every (mesh, lanes) equals solve per scan; returns how far the
    objects moved."""
    alone = [
        solve(m, engine, d, iterations, progress=False) for m, d in zip(models, datas, strict=True)
    ]
    for mesh, lanes in meshes:
        fitted, histories = solve_scans(models, engine, datas, iterations, mesh=mesh, lanes=lanes)
        assert len(fitted) == len(models) and all(h.converged for h in histories)
        for s, (model, history) in enumerate(zip(fitted, histories, strict=True)):
            single, single_history = alone[s]
            np.testing.assert_allclose(history.loss, single_history.loss, rtol=1e-10)
            assert history.best_iteration == single_history.best_iteration
            for leaf in ("object", "probe", "positions"):
                a, b = np.asarray(getattr(single, leaf)), np.asarray(getattr(model, leaf))
                np.testing.assert_allclose(
                    b, a, rtol=0, atol=1e-10 * np.max(np.abs(a)), err_msg=f"{lanes} {s} {leaf}"
                )
    return [
        float(np.max(np.abs(m.object - s.object))) for (m, _), s in zip(alone, models, strict=True)
    ]


def _meshes():
    """(mesh, lanes): batched over 1, 2 and 4 devices; one by one on 1 and over 2."""
    batched = [(scan_mesh(d), "vmap") for d in (1, 2, 4)]
    return [*batched, (None, "loop"), (scan_mesh(2), "loop")]


def test_epie_scans_over_1_2_4_devices_equal_each_scan_alone(tiny_scans):
    # 3 scans: padded to 4 over 2 and 4 devices; batched (vmap) or one by one (loop)
    models, datas = tiny_scans
    meshes = _meshes()
    moved = _assert_equal_alone(models, datas, ENGINES["epie"](batch_size=4), 3, meshes)
    assert min(moved) > 0.05


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mpie", "lsqml", "raar", "dm", "adam", "lbfgs"])
def test_engine_families_over_scans_equal_each_scan_alone(tiny_scans, name):
    models, datas = tiny_scans
    refinement = Refinement(positions=PositionRefinement(start=1))
    engine = ENGINES[name](batch_size=4, refinement=refinement)
    moved = _assert_equal_alone(models, datas, engine, 3, _meshes())
    assert min(moved) > 0.01


def test_a_diverging_scan_spoils_no_other(tiny_scans):
    models, datas = tiny_scans
    engine = ENGINES["lsqml"](batch_size=4)
    frames = np.asarray(datas[1].frames).copy()
    frames[5, 3, 3] = np.nan  # every step of scan 1 gives a non-finite loss
    broken = [datas[0], PtychoData(jnp.asarray(frames)), datas[2]]
    fitted, histories = solve_scans(models, engine, broken, 3, mesh=scan_mesh(2))
    assert [h.diverged for h in histories] == [None, 0, None]
    assert isinstance(histories[1], ScanHistory) and not histories[1].converged
    assert histories[1].loss == []
    np.testing.assert_array_equal(np.asarray(fitted[1].object), np.asarray(models[1].object))
    for s in (0, 2):
        single, history = solve(models[s], engine, datas[s], 3, progress=False)
        np.testing.assert_allclose(histories[s].loss, history.loss, rtol=1e-10)
        np.testing.assert_allclose(
            np.asarray(fitted[s].object), np.asarray(single.object), rtol=0, atol=1e-10
        )


def test_mismatched_scans_are_refused_with_their_names(tiny_scans):
    models, datas = tiny_scans
    engine = ENGINES["epie"](batch_size=4)
    truth, frames = simulate(n=10, probe_px=16, step=3.0, seed=5)
    short = starting_model(truth, frames)
    with pytest.raises(ValueError, match=r"scans \[0, 1\] have 12; scans \[2\] have 10"):
        solve_scans([*models[:2], short], engine, [*datas[:2], PtychoData(frames)], 1)
    with pytest.raises(ValueError, match=r"models: .*probe has shape \(1, 8, 8\) in scan 1"):
        small_probe = models[1].probe[:, :8, :8]
        other = eqx.tree_at(lambda m: m.probe, models[1], small_probe)
        solve_scans([models[0], other], engine, datas[:2], 1)
    with pytest.raises(ValueError, match="position mesh"):
        solve_scans(models, ENGINES["epie"](batch_size=4, mesh=position_mesh(2)), datas, 1)
    with pytest.raises(ValueError, match="2 models and 3 datas"):
        solve_scans(models[:2], engine, datas, 1)
    with pytest.raises(ValueError, match="lanes='map'"):
        solve_scans(models, engine, datas, 1, lanes="map")


def test_a_stop_request_ends_the_group_after_the_current_iteration(tiny_scans, monkeypatch):
    from diffptycho.recon.interrupt import Interrupted
    from diffptycho.recon.ptycho import scans as scans_module

    models, datas = tiny_scans
    monkeypatch.setattr(scans_module, "stop_requested", lambda: True)
    with pytest.raises(Interrupted, match="stopped after iteration 1 of 3") as stop:
        solve_scans(models, ENGINES["epie"](batch_size=4), datas, 3, mesh=scan_mesh(1))
    assert stop.value.iteration == 1
