"""ALS STXM reader: .hdr + .xim + i0 → OD stack; errors name the file; the measured stack."""

import os

import numpy as np
import pytest

from diffptycho.io import stxm

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
\t\tPoints = ({n}, {energies});
}};
}};
"""


def _write_stack(tmp_path, counts, energies, i0=None):
    hdr = tmp_path / "s.hdr"
    hdr.write_text(HDR.format(n=len(energies), energies=", ".join(f"{e:.3f}" for e in energies)))
    for k, image in enumerate(counts):
        np.savetxt(tmp_path / f"s_a{k:03d}.xim", image, fmt="%.6f", delimiter="\t")
    if i0 is not None:
        np.savetxt(tmp_path / "i0.xsp", np.column_stack([energies, i0]))
    return str(hdr)


def test_reads_a_stack_and_converts_to_od(tmp_path, rng):
    energies = np.array([700.0, 701.0, 702.0])
    counts = rng.uniform(100, 1000, (3, 3, 4))
    i0 = np.array([1000.0, 1100.0, 1200.0])
    hdr = _write_stack(tmp_path, counts, energies, i0)
    st = stxm.read_stxm_stack(hdr, tmp_path / "i0.xsp")
    assert st.counts.shape == (3, 3, 4)  # (energy, y = QAxis, x = PAxis)
    np.testing.assert_allclose(st.energies_ev, energies)
    np.testing.assert_allclose(st.pixel_size_m, (50e-9, 100e-9))
    assert st.dwell_ms == 1.5
    np.testing.assert_allclose(st.od, -np.log(counts / i0[:, None, None]), rtol=1e-6)
    assert stxm.read_stxm_stack(hdr).od is None
    assert stxm.read_stxm_stack(hdr, estimate_flux=True).od.shape == (3, 3, 4)


def test_od_hand_case_and_floor():
    od = stxm.optical_density(np.array([[[100.0, 0.0]]]), np.array([100.0 * np.e]))
    np.testing.assert_allclose(od[0, 0, 0], 1.0)
    assert np.isfinite(od).all()  # zero counts are floored
    with pytest.raises(ValueError, match="positive"):
        stxm.optical_density(np.ones((1, 2)), np.array([0.0]))


def test_missing_image_names_the_file(tmp_path, rng):
    hdr = _write_stack(tmp_path, rng.uniform(1, 2, (3, 3, 4)), [700.0, 701.0, 702.0])
    os.remove(tmp_path / "s_a001.xim")
    with pytest.raises(FileNotFoundError, match="s_a001.xim"):
        stxm.read_stxm_stack(hdr)


def test_wrong_image_shape_names_the_file(tmp_path, rng):
    hdr = _write_stack(tmp_path, rng.uniform(1, 2, (3, 3, 4)), [700.0, 701.0, 702.0])
    np.savetxt(tmp_path / "s_a002.xim", np.ones((4, 4)))
    with pytest.raises(stxm.STXMFormatError, match=r"s_a002.xim.*\(3, 4\)"):
        stxm.read_stxm_stack(hdr)


def test_malformed_header_and_spectra_name_the_file(tmp_path):
    bad = tmp_path / "bad.hdr"
    bad.write_text('ScanDefinition = { Label = "bad"; };')
    with pytest.raises(stxm.STXMFormatError, match="bad.hdr.*StackAxis"):
        stxm.read_hdr(bad)
    with pytest.raises(FileNotFoundError, match="nothere.hdr"):
        stxm.read_hdr(tmp_path / "nothere.hdr")
    short = tmp_path / "short.r"
    short.write_text("700 1 \n")
    with pytest.raises(stxm.STXMFormatError, match="short.r"):
        stxm.read_two_column(short)
    ref = tmp_path / "ref.r"
    np.savetxt(ref, np.column_stack([[700.0, 710.0], [1.0, 2.0]]))
    np.testing.assert_allclose(stxm.reference_on_grid(ref, [705.0]), [1.5])
    with pytest.raises(stxm.STXMFormatError, match="ref.r.*700.00–710.00"):
        stxm.reference_on_grid(ref, [720.0])


def test_measured_fe_l3_stack(shared_data):
    folder = os.path.join(shared_data, "stxm_fe_l3")
    st = stxm.read_stxm_stack(os.path.join(folder, "71214078.hdr"), os.path.join(folder, "i0.xsp"))
    assert st.od.shape == (123, 125, 125)
    assert st.energies_ev[0] == 700.0 and st.energies_ev[-1] == pytest.approx(730.353)
    np.testing.assert_allclose(st.pixel_size_m, (80e-9, 80e-9), rtol=1e-6)
    # the most transparent pixels have a flat OD (the i0 spectrum has the beamline's shape)
    mean = st.od.mean(axis=0)
    blank = st.od[:, mean <= np.percentile(mean, 5)].mean(axis=1)
    assert np.ptp(blank) < 0.02
    # the Fe L3 white line: OD rises by more than 0.5 between 705 and 709 eV somewhere
    i705, i709 = np.searchsorted(st.energies_ev, [705.0, 709.0])
    assert np.max(st.od[i709] - st.od[i705]) > 0.5
    for name in ("reduced.r", "oxidized.r"):
        ref = stxm.reference_on_grid(os.path.join(folder, name), st.energies_ev)
        flat = st.od.reshape(123, -1)
        flat_c = flat - flat.mean(0)
        r = (flat_c * (ref - ref.mean())[:, None]).sum(0) / np.sqrt(
            (flat_c**2).sum(0) * ((ref - ref.mean()) ** 2).sum()
        )
        assert r.max() > 0.98  # the reference regions are part of this stack
