"""Against ASTRA's CPU algorithms on the study geometry (158 angles, −80°…+77°, noise).

A small version of ``experiments/benchmarks/bench_tomo.py``: the same noisy projections of a
3-D phantom reconstructed by diffptycho and by ASTRA slice by slice ('linear' = Joseph
projector; ASTRA's angle −θ is ours θ).
"""

import jax.numpy as jnp
import numpy as np
import pytest

from diffptycho.physics.tomography import project
from diffptycho.recon.tomo import reconstruct

astra = pytest.importorskip("astra")


def _astra(data, angles, n, algorithm, iterations, options):
    vol_geom = astra.create_vol_geom(n, n)
    proj_geom = astra.create_proj_geom("parallel", 1.0, n, -angles)
    projector = astra.create_projector("linear", proj_geom, vol_geom)
    out = np.zeros((n, data.shape[1], n))
    for y in range(data.shape[1]):
        sino = astra.data2d.create("-sino", proj_geom, data[:, y, :])
        rec = astra.data2d.create("-vol", vol_geom, 0.0)
        cfg = astra.astra_dict(algorithm)
        cfg.update(ProjectorId=projector, ProjectionDataId=sino, ReconstructionDataId=rec)
        cfg["option"] = options
        alg = astra.algorithm.create(cfg)
        astra.algorithm.run(alg, iterations)
        out[:, y, :] = astra.data2d.get(rec)
        astra.algorithm.delete(alg)
        astra.data2d.delete([sino, rec])
    astra.projector.delete(projector)
    return out


@pytest.mark.slow
def test_art_matches_astra_on_the_study_geometry():
    n, rows = 48, 4
    zz, yy, xx = (
        np.mgrid[:n, :rows, :n]
        - np.array([(n - 1) / 2, (rows - 1) / 2, (n - 1) / 2])[:, None, None, None]
    )
    truth = 0.3 * (zz**2 / 18**2 + xx**2 / 20**2 < 1)
    truth += 0.7 * ((zz - 5) ** 2 / 3**2 + (xx + 4) ** 2 / 10**2 < 1)
    truth += 0.5 * ((np.abs(zz + 8) < 2) & (np.abs(xx - 6) < 7))
    angles = np.deg2rad(np.linspace(-80, 77, 158))
    clean = np.asarray(project(jnp.asarray(truth, jnp.float32), jnp.asarray(angles, jnp.float32)))
    rng = np.random.default_rng(0)
    data = (clean + 0.01 * clean.max() * rng.standard_normal(clean.shape)).astype(np.float32)

    def err(x):
        return np.linalg.norm(x - truth) / np.linalg.norm(truth)

    order = {"ProjectionOrder": "sequential"}
    astra_sart = err(_astra(data, angles, n, "SART", 20 * 158, order))
    ours_art = err(reconstruct(data, angles, "art", 20, progress=False).volume)
    ours_sart = err(reconstruct(data, angles, "sart", 20, progress=False).volume)
    assert ours_art < 1.05 * astra_sart  # ART-20 within 5 % of ASTRA (or better)
    assert ours_sart == pytest.approx(astra_sart, rel=0.01)  # the same algorithm
    astra_sirt = err(_astra(data, angles, n, "SIRT", 50, {}))
    ours_sirt = err(reconstruct(data, angles, "sirt", 50, progress=False).volume)
    assert ours_sirt == pytest.approx(astra_sirt, rel=0.01)
