"""Tomography split over fake CPU devices (y slabs or angles) equals the single-device run.

The conftest gives the test process four CPU devices (``XLA_FLAGS=
--xla_force_host_platform_device_count=4``, set before jax is imported) and float64, so the
split and the single-device reconstructions can be compared to rounding on tiny volumes.
"""

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffptycho.cli import main
from diffptycho.cli import tomo as cli_tomo
from diffptycho.io.checkpoint import Checkpoint
from diffptycho.io.dxchange import write_projections
from diffptycho.io.results import read_results
from diffptycho.models.tomo import TomoProjections
from diffptycho.physics import alignment
from diffptycho.physics.tomography import project
from diffptycho.recon.sharding import position_mesh
from diffptycho.recon.solve import solve
from diffptycho.recon.tomo import ALGORITHMS, CGLS, SART, SIRT, reconstruct, total_variation
from diffptycho.recon.tomo.gradient import gradient_solver
from diffptycho.recon.tomo.sharding import (
    REPLICATED,
    VOLUME,
    over_mesh,
    slab_total_variation,
    split_total,
    tomo_mesh,
)

pytestmark = pytest.mark.skipif(
    len(jax.devices()) < 4, reason="needs 4 devices (XLA_FLAGS set by the conftest)"
)

N_ANGLES = 6
"""Not a multiple of 4: the angle split pads two angles."""

_ZZ, _XX = np.mgrid[:8, :8] - 3.5
SUPPORT = (_ZZ**2 + _XX**2 < 12).astype(float)
"""A (z, x) support, replicated on every device."""

OPTIONS = {
    "art": {"support": SUPPORT},
    "sart": {"nonnegative": True, "order": "random"},
    "sirt": {"nonnegative": True},
    "cgls": {"support": SUPPORT},
    "fbp": {"filter": "hann"},
    "adam": {"tv_weight": 0.05, "nonnegative": True},
}


def _scan(rows, seed=0):
    """An 8 × rows × 8 volume varying along y (so the TV couples rows), and its projections."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(np.arange(8), np.arange(rows), np.arange(8), indexing="ij")
    truth = ((zz - 3.5) ** 2 + (xx - 3.5) ** 2 < 9) * (1 + 0.5 * np.sin(yy))
    truth = truth + 0.1 * rng.random(truth.shape)
    angles = np.linspace(0, np.pi, N_ANGLES, endpoint=False)
    return truth, np.asarray(project(jnp.asarray(truth), jnp.asarray(angles))), angles


def _compare(name, rows, mesh, iterations=4):
    """Reconstruct on one device and on ``mesh``; assert equal; return the single result."""
    _, data, angles = _scan(rows)
    options = dict(OPTIONS[name], dtype=np.float64, progress=False)
    single = reconstruct(data, angles, name, iterations, **options)
    split = reconstruct(data, angles, name, iterations, mesh=mesh, **options)
    scale = np.max(np.abs(single.volume))
    np.testing.assert_allclose(split.volume, single.volume, rtol=0, atol=1e-10 * scale)
    np.testing.assert_allclose(split.loss, single.loss, rtol=1e-10, atol=1e-14)
    assert split.config["devices"] == mesh.devices.size
    assert split.config["split"] == mesh.axis_names[0]
    return single


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n == "sart" else n for n in ALGORITHMS]
)
def test_every_algorithm_split_over_four_slabs_equals_single_device(name):
    single = _compare(name, 12, tomo_mesh(4))  # 3 rows per device
    assert np.max(np.abs(single.volume)) > 0.1
    if name != "fbp":
        assert single.loss[0, -1] < single.loss[0, 0]


@pytest.mark.parametrize("name", ["art", "cgls", "adam", "fbp"])
def test_rows_not_divisible_by_the_devices_are_padded_and_cropped(name):
    # 10 rows over 4 devices: 3 per device, the last two padding rows cropped (TV: masked)
    single = _compare(name, 10, tomo_mesh(4))
    assert single.volume.shape == (8, 10, 8)


@pytest.mark.parametrize(
    "name", ["sirt", "cgls", pytest.param("adam", marks=pytest.mark.slow), "fbp"]
)
def test_angle_split_equals_single_device(name):
    # 6 angles over 4 devices: 2 per device, 2 padded angles masked out of every sum
    _compare(name, 5, tomo_mesh(4, axis="angle"))


@pytest.mark.slow
def test_complex_volumes_split_as_well():
    # δ + iβ: the halo, the norms and the summed back-projections carry complex values
    truth, _, angles = _scan(5)
    complex_truth = truth + 0.3j * np.flip(truth, axis=2)
    data = np.asarray(project(jnp.asarray(complex_truth), jnp.asarray(angles)))
    for name, mesh in [("adam", tomo_mesh(4)), ("cgls", tomo_mesh(4, axis="angle"))]:
        options = {"tv_weight": 0.05} if name == "adam" else {}
        one = reconstruct(data, angles, name, 3, dtype=np.float64, progress=False, **options)
        split = reconstruct(
            data, angles, name, 3, dtype=np.float64, progress=False, mesh=mesh, **options
        )
        assert np.iscomplexobj(split.volume) and np.abs(one.volume.imag).max() > 0.05
        np.testing.assert_allclose(split.volume, one.volume, rtol=0, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("name, axis", [("cgls", "slab"), ("adam", "angle")])
def test_a_run_stopped_on_four_devices_resumes_on_two(tmp_path, monkeypatch, name, axis):
    _, data, angles = _scan(10)
    options = {"dtype": np.float64, "progress": False}
    whole = reconstruct(data, angles, name, 6, **options)

    class Stop(Exception):
        pass

    first = Checkpoint(tmp_path / "run.ckpt.h5", "tomo", every=2)
    save = first.save

    def save_then_stop(*args, **kwargs):  # stop after the checkpoint of iteration 2
        save(*args, **kwargs)
        raise Stop

    first.save = save_then_stop
    with pytest.raises(Stop):
        reconstruct(data, angles, name, 6, checkpoint=first, mesh=tomo_mesh(4, axis), **options)
    again = Checkpoint(tmp_path / "run.ckpt.h5", "tomo", every=2)
    starts = []

    def solve_from(*args, **kwargs):
        starts.append(kwargs["resume"].iteration)
        return solve(*args, **kwargs)

    module = sys.modules["diffptycho.recon.tomo.reconstruct"]  # the package's name is the function
    monkeypatch.setattr(module, "solve", solve_from)
    resumed = reconstruct(
        data, angles, name, 6, checkpoint=again, resume=True, mesh=tomo_mesh(2, axis), **options
    )
    np.testing.assert_allclose(resumed.volume, whole.volume, rtol=0, atol=1e-10)
    np.testing.assert_allclose(resumed.loss, whole.loss, rtol=1e-10)
    assert starts == [2]  # continued from the split run's state, not from the start


def test_split_solvers_on_their_own_with_alignment_undone_in_each_step():
    # solve() directly: the misalignment is undone on the whole stack before the split
    truth, _, angles = _scan(7)
    params = np.zeros((N_ANGLES, 4))
    params[:, 0] = np.linspace(-1.2, 0.8, N_ANGLES)  # y shifts mix the devices' rows
    angles = jnp.asarray(angles)
    measured = alignment.align_projections(project(jnp.asarray(truth), angles), params)
    start = TomoProjections(jnp.zeros(truth.shape), angles, jnp.asarray(params))
    for solver, mesh in [(SIRT, tomo_mesh(4)), (CGLS, tomo_mesh(3, axis="angle"))]:
        one, h1 = solve(start, solver(), measured, 3, progress=False)
        split, h2 = solve(start, solver(mesh=mesh), measured, 3, progress=False)
        np.testing.assert_allclose(split.volume, one.volume, rtol=0, atol=1e-12)
        np.testing.assert_allclose(h2.loss, h1.loss, rtol=1e-10)


def test_slab_total_variation_and_its_gradient_sum_to_the_whole_volumes():
    # 10 rows on 4 devices: halos across devices, the last real row mid-device, padding
    volume = jnp.asarray(np.random.default_rng(1).standard_normal((5, 10, 4)))
    eps = 0.3

    def part(split, v):
        total = split_total(lambda x, e: slab_total_variation(x, e, split), split.axis, False)
        value, grad = jax.value_and_grad(total)(v, jnp.asarray(eps))
        return value, grad

    value, grad = jax.jit(
        lambda v: over_mesh(
            part, tomo_mesh(4), [(v, VOLUME)], [REPLICATED, VOLUME], rows=10, angles=1
        )
    )(volume)
    expected, expected_grad = jax.value_and_grad(total_variation)(volume, eps)
    np.testing.assert_allclose(value, expected, rtol=1e-12)
    np.testing.assert_allclose(grad, expected_grad, rtol=0, atol=1e-12)


def test_what_cannot_be_split_is_refused():
    with pytest.raises(ValueError, match="angles cannot be split"):
        SART(mesh=tomo_mesh(2, axis="angle"))
    _, data, angles = _scan(4)
    with pytest.raises(ValueError, match="angles cannot be split"):
        reconstruct(data, angles, "art", 1, mesh=tomo_mesh(2, axis="angle"), progress=False)
    with pytest.raises(ValueError, match="need exactly one of"):
        SIRT(mesh=position_mesh(2))
    with pytest.raises(ValueError, match="axis='y'"):
        tomo_mesh(2, axis="y")
    with pytest.raises(ValueError, match="devices=99"):
        tomo_mesh(99)
    start = TomoProjections(jnp.zeros((8, 4, 8)), jnp.asarray(angles), jnp.ones((N_ANGLES, 4)))
    with pytest.raises(ValueError, match="dealign"):
        gradient_solver(start, data, 2, mesh=tomo_mesh(2))


@pytest.fixture
def projections_file(tmp_path):
    _, data, angles = _scan(6)
    path = tmp_path / "proj.h5"
    write_projections(path, data, np.rad2deg(angles), voxel_size_m=None)
    return path


def test_cli_devices_give_the_single_device_volume(tmp_path, projections_file):
    one, four = tmp_path / "one.h5", tmp_path / "four.h5"
    common = [str(projections_file), "-a", "sirt", "-n", "5", "--no-progress"]
    assert main(["--no-compile-cache", "tomo", *common, "-o", str(one)]) == 0
    assert main(["--no-compile-cache", "tomo", *common, "--devices", "4", "-o", str(four)]) == 0
    a, b = read_results(one), read_results(four)
    np.testing.assert_allclose(b["volume"], a["volume"], rtol=0, atol=1e-5 * a["volume"].max())
    assert b["provenance"]["config"]["devices"] == 4
    assert b["provenance"]["config"]["split"] == "slab"
    parser = argparse.ArgumentParser()
    cli_tomo.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["tomo", "x.h5", "-o", "y.h5", "--devices", "2", "--split", "angle"])
    assert (args.devices, args.split) == (2, "angle")


def test_cli_devices_errors(tmp_path, projections_file, capsys):
    out = str(tmp_path / "vol.h5")
    assert (
        main(["--no-compile-cache", "tomo", str(projections_file), "-o", out, "--devices", "99"])
        == 2
    )
    err = capsys.readouterr().err
    assert "diffptycho tomo: error: devices=99: expected 1 to 4" in err
    assert "xla_force_host_platform_device_count" in err
    argv = [
        "--no-compile-cache",
        "tomo",
        str(projections_file),
        "-o",
        out,
        "--devices",
        "2",
        "--split",
        "angle",
    ]
    assert main([*argv, "-a", "art"]) == 2
    assert "angles cannot be split" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--no-compile-cache", "tomo", str(projections_file), "-o", out, "--devices", "0"])
    assert "--devices" in capsys.readouterr().err
