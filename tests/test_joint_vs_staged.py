"""Joint beats staged on a tiny two-species tilt series (both species present).

Measured (2 energies × 6 angles, 16³ voxels, two plates, seed 6): staged relative composition
error 1.44, joint (8 Gauss–Newton steps from the staged result) 1.08, i.e. 25 % lower; the
test asks for 15 %. Slow (≈ 80 s: the staged pipeline runs every scan).
"""

import dataclasses
import shutil

import numpy as np
import pytest

from diffptycho.analysis.composition import composition_errors
from diffptycho.io.references import write_reference_csv
from diffptycho.physics import spectra
from diffptycho.pipeline import run_pipeline
from diffptycho.pipeline.config import (
    AlignmentSettings,
    JointSettings,
    PipelineConfig,
    PtychographySettings,
    TomographySettings,
)
from diffptycho.sim import datasets, tiltseries

GEOMETRY = datasets.ScanGeometry(
    probe_shape=(8, 8),
    scan_shape=(5, 5),
    step_px=2.5,
    jitter_px=0.3,
    outer_zone_width_m=10e-9,
    defocus_m=0.2e-6,
    photons_per_frame=1e4,
)
ANGLES = np.linspace(-80.0, 77.0, 6)
VOLUME = (16, 16, 16)


def _quiet(config):
    return run_pipeline(config, progress=False, figures=False, log=lambda line: None)


@pytest.mark.slow
def test_joint_beats_staged_on_two_species(tmp_path):
    ds = tiltseries.simulate_lfp_tilt_series(
        VOLUME, angles_deg=ANGLES, n_particles=2, geometry=GEOMETRY, seed=6, oversample=2
    )
    truth = ds.truth["composition"]
    amounts = truth.reshape(2, -1).sum(1)
    assert amounts.min() > 0.2 * amounts.max()  # both species are there
    cxi = str(tmp_path / "tilt.cxi")
    datasets.write_dataset(cxi, ds)
    species = [s.decode() for s in ds.truth["species"]]
    table_e = np.array([ds.energies_ev[0] - 2.0, *ds.energies_ev, ds.energies_ev[-1] + 2.0])
    ref = spectra.lfp_reference_spectra(table_e)
    refs = str(tmp_path / "refs.csv")
    write_reference_csv(refs, table_e, species, np.stack([ref[s] for s in species], axis=1))
    config = PipelineConfig(
        input=(cxi,),
        output=str(tmp_path / "staged.h5"),
        references=refs,
        ptychography=PtychographySettings(iterations=30),
        alignment=AlignmentSettings(method="none"),
        tomography=TomographySettings(iterations=20, volume_shape=VOLUME),
    )
    staged = _quiet(config)
    joint_out = tmp_path / "joint.h5"
    shutil.copy(config.output, joint_out)
    joint = _quiet(
        dataclasses.replace(
            config, output=str(joint_out), mode="joint", joint=JointSettings(iterations=8)
        )
    )
    e_staged = composition_errors(staged.composition, truth)["relative_error"]
    e_joint = composition_errors(joint.composition, truth)["relative_error"]
    assert e_joint < 0.85 * e_staged, (e_staged, e_joint)
