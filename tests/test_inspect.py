"""``diffptycho inspect``: every kind of file is recognised, summarised and routed to commands."""

import json
import math

import h5py
import numpy as np
import pytest

from diffptycho import cli
from diffptycho.io import PtychoScan, save_checkpoint, write_cxi, write_results
from diffptycho.io.dxchange import write_projections
from diffptycho.io.inspect import UnknownFileError, describe, describe_dict
from diffptycho.physics.optics import EV_TO_J

HDR = """ScanDefinition = {{ Label = "s.hdr"; Type = "NEXAFS Image Scan"; Dwell = 1.5;
\tRegions = (1,
{{
\t\t\tPAxis = {{ Name = "Sample X"; Unit = "um"; Min = 0; Max = 0.3; Dir = 1;
\t\t\t\tPoints = (4, 0.0, 0.1, 0.2, 0.3);
}};
\t\t\tQAxis = {{ Name = "Sample Y"; Unit = "um"; Min = 0; Max = 0.1; Dir = 1;
\t\t\t\tPoints = (3, 0.0, 0.05, 0.1);
}};
}});
\tStackAxis = {{ Name = "Energy"; Unit = "eV"; Min = 700; Max = 702; Dir = 1;
\t\tPoints = (3, 700.0, 701.0, 702.0);
}};
}};
"""


def tilt_scans(angles=(-30.0, 30.0), energies=(708.2, 710.2)):
    return [
        PtychoScan(
            np.ones((2, 8, 8)),
            [[0.0, 0.0], [1e-7, -2e-7]],
            energy_ev=e,
            distance_m=0.3,
            pixel_size_m=(75e-6, 75e-6),
            mask=np.ones((8, 8), bool),
            angle_deg=a,
        )
        for e in energies
        for a in angles
    ]


def test_cxi_tilt_series(tmp_path):
    path = tmp_path / "tilt.cxi"
    write_cxi(path, tilt_scans())
    info = describe_dict(path)
    assert info["kind"] == "CXI, 4 scan(s)"
    assert info["energies_ev"] == [708.2, 710.2]
    assert info["angles"]["range_deg"] == [-30.0, 30.0]
    assert info["angles"]["read from"] == {"sample_1/geometry_1/angle_deg": "4 scan(s)"}
    assert info["positions extent_m"] == {"y": [0.0, 1e-7], "x": [-2e-7, 0.0]}
    assert info["detector"]["frame shape (ny, nx)"] == [(8, 8)]
    assert info["detector"]["mask"] == "4 of 4 scans"
    assert info["missing"] == [
        "illumination (the probe is guessed from the mean diffraction pattern)"
    ]
    assert info["commands"]["spectrotomo"] == "yes, 2 energies × 2 angles"
    assert info["commands"]["ptycho"].startswith("yes")
    text = describe(path)
    assert text.splitlines()[0] == f"{path}: CXI, 4 scan(s)"
    assert "entry_3: 710.20 eV, -30.000° (sample_1/geometry_1/angle_deg)" in text


def test_cxi_frame_orientation_from_the_basis_vectors(tmp_path):
    path = tmp_path / "flipped.cxi"
    write_cxi(path, tilt_scans())
    assert describe_dict(path)["detector"]["frame orientation"] == "as stored"
    with h5py.File(path, "a") as f:
        basis = f["entry_2/instrument_1/detector_1/basis_vectors"]
        basis[...] = -basis[()]  # rows along lab +y, columns along +x
    orientations = describe_dict(path)["detector"]["frame orientation"]
    assert sorted(orientations) == ["as stored", "rows flipped, columns flipped"]


def test_cxi_foreign_with_missing_angle_and_geometry(tmp_path):
    path = tmp_path / "foreign.cxi"
    with h5py.File(path, "w") as f:
        for k, angle in ((1, 0.5), (2, None)):
            e = f.create_group(f"entry_{k}")
            e["data_1/data"] = np.ones((2, 4, 4), np.uint16)
            e["instrument_1/source_1/energy"] = 700.0 * EV_TO_J
            e["sample_1/geometry_1/translation"] = np.zeros((2, 3))
            e["sample_1/geometry_1/translation"].attrs["units"] = "pixel"
            if angle is not None:
                e["sample_1/rotation_angle"] = math.radians(angle)
                e["sample_1/rotation_angle"].attrs["units"] = "rad"
    info = describe_dict(path)
    assert info["angles"]["read from"] == {"sample_1/rotation_angle": "1 scan(s)"}
    assert info["angles"]["range_deg"] == [pytest.approx(0.5), pytest.approx(0.5)]
    assert "tilt angle in 1 scan(s)" in info["missing"]
    assert "detector distance/pixel size (positions are in object pixels)" in info["missing"]
    assert "positions extent_m" not in info
    assert info["commands"]["spectrotomo"].startswith("no: 1 of 2 scans have no tilt angle")
    assert info["cxi_version"] == "missing"


def test_cxi_with_a_broken_entry_still_described(tmp_path):
    path = tmp_path / "bad.cxi"
    write_cxi(path, tilt_scans(angles=(0.0,), energies=(700.0,)))
    with h5py.File(path, "a") as f:
        f.create_group("entry_2")
    info = describe_dict(path)
    assert any("/entry_2/data_1/data' is missing" in p for p in info["unreadable entries"])
    assert info["commands"]["spectrotomo"] == "no: some entries cannot be read"


def test_results_with_stages(tmp_path):
    path = tmp_path / "out.h5"
    write_results(
        path,
        {"volume": np.zeros((2, 3, 4), np.float32), "stages/ptycho/object": np.zeros((2, 2))},
        units={"volume": "1/m"},
        config={"iterations": 50, "engine": {"name": "raar", "beta": 0.9}},
        history={"loss": [3.0, 2.0, 1.5]},
        timings={"total": 1.25},
    )
    info = describe_dict(path)
    assert info["kind"] == "diffptycho results"
    assert info["datasets"] == {"volume": "(2, 3, 4) float32 [1/m]"}
    assert info["stages"] == {"ptycho": {"object": "(2, 2) float64"}}
    assert info["history"] == {"loss": "3 values, last 1.5"}
    assert info["provenance"]["config"]["iterations"] == 50
    assert info["provenance"]["config"]["engine"] == "{2 keys: beta, name}"  # JSON keys are sorted
    assert info["provenance"]["timings_s"] == {"total": 1.25}
    assert "volume: (2, 3, 4) float32 [1/m]" in describe(path)


def test_checkpoint(tmp_path):
    path = tmp_path / "ckpt.h5"
    save_checkpoint(path, {"['probe']": np.ones(3, np.complex64)}, step=7, meta={"lr": 0.1})
    info = describe_dict(path)
    assert info["kind"] == "diffptycho checkpoint"
    assert info["step (completed iterations)"] == "7"
    assert info["arrays"] == {"['probe']": "(3,) complex64"}
    assert info["meta"] == {"lr": 0.1}


def test_projections_and_data_exchange(tmp_path):
    proj = tmp_path / "proj.h5"
    write_projections(proj, np.zeros((3, 4, 5), np.float32), [-60.0, 0.0, 60.0], voxel_size_m=1e-8)
    info = describe_dict(proj)
    assert info["kind"] == "projections"
    assert info["angles_deg"] == "3 from -60.000 to 60.000"
    assert info["commands"] == {"tomo": "yes", "align": "yes"}

    dx = tmp_path / "dx.h5"
    with h5py.File(dx, "w") as f:
        f["exchange/data"] = np.ones((4, 2, 6), np.uint16)
        f["exchange/data_white"] = np.ones((2, 2, 6), np.uint16)
        f["exchange/theta"] = np.linspace(0.0, 3.0, 4)
    info = describe_dict(dx)
    assert info["kind"] == "Data Exchange (tomography)"
    assert info["theta"] == "4 angles from 0.000 to 3.000 degrees (no units attribute)"
    assert info["data_dark"] == "none"
    assert info["commands"]["tomo"].startswith("yes")


def test_spectral_stack_and_stxm(tmp_path):
    stack = tmp_path / "stack.h5"
    with h5py.File(stack, "w") as f:
        f["od"] = np.zeros((2, 3, 3))
        f["energies_ev"] = [708.2, 710.2]
    assert set(describe_dict(stack)["commands"]) == {
        "chem lcf",
        "chem xanes-fit",
        "chem two-energy",
    }

    hdr = tmp_path / "s.hdr"
    hdr.write_text(HDR.format())
    for k in range(2):  # the third image is missing
        np.savetxt(tmp_path / f"s_a{k:03d}.xim", np.ones((3, 4)))
    info = describe_dict(hdr)
    assert info["kind"].startswith("STXM image stack")
    assert info["image (y, x)"] == [3, 4]
    assert info["pixel size_nm (y, x)"] == [50.0, 100.0]
    assert info[".xim images"] == "1 missing: ['_a002.xim']"
    assert info["commands"]["chem lcf"] == "no"


def test_unknown_files_say_what_was_expected(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(UnknownFileError, match="neither HDF5 nor a STXM .hdr; expected a CXI"):
        describe(text)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["something"] = 1
    with pytest.raises(UnknownFileError, match=r"top level holds something; expected a CXI"):
        describe(other)
    with pytest.raises(FileNotFoundError, match="missing.cxi: file not found"):
        describe(tmp_path / "missing.cxi")


def test_cli_inspect_text_json_and_errors(tmp_path, capsys):
    path = tmp_path / "tilt.cxi"
    write_cxi(path, tilt_scans())
    assert cli.main(["inspect", str(path)]) == 0
    assert "spectrotomo: yes, 2 energies × 2 angles" in capsys.readouterr().out
    assert cli.main(["inspect", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["energies_ev"] == [708.2, 710.2]
    assert cli.main(["inspect", str(tmp_path / "nope.h5")]) == 2
    assert "nope.h5: file not found" in capsys.readouterr().err
