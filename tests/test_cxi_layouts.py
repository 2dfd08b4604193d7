"""CXI files laid out the way other programs write them, read against a simulated ground truth.

Each test simulates a tiny near-field scan with the package's forward model (noise-free
intensities, reference detector orientation, positions in object pixels), writes it with the
paths, shapes, units, links and axis conventions of one program, reads it back, and checks

- the frames come back in the reference orientation (equal to the simulated ones), and
- the positions, converted with the Fresnel-scaled pixel and centred, equal the truth, and
  the forward model at those positions reproduces the frames that were read (a physics check:
  in the near field a flipped frame or a sign error in a position cannot be absorbed by the
  object, unlike in the far field).

Conventions of the writers (from their source code): Ptychodus writes frames at
``instrument_1/detector_1/data`` with a soft link ``data_1/data``, the (N, 3) translation
``[x_m, y_m, 0]`` of its probe positions with a soft link ``data_1/translation``, lengths in m
and energy in J without ``units`` attributes, and no basis vectors. CDTools writes frames the
same way, ``number_of_entries``, float32 energy (J) and ``wavelength``, float32 distance, the
detector ``basis_vectors`` transposed to (3, 2) (one column per frame axis) with
``x_pixel_size``/``y_pixel_size`` their lengths, and the translation negated from its own
probe-motion convention (CXI: the sample's translation) with soft links in ``data_1`` and
``detector_1``; without basis vectors it assumes rows along lab −y and columns along −x. The
third layout, per-frame (N, 2, 3) basis vectors with the detector rotated by 90° and
translations in µm, is how some beamline converters write CXI. PtyPy reads HDF5 with its
``Hdf5Loader`` (and the NXcxi_ptycho loader), which take the frames as stored (N, ny, nx) and
the positions as two 1-D datasets, the slow axis (rows, y) and the fast axis (columns, x), each
times a user multiplier to m; it reads ``energy`` in keV, ``distance`` and ``psize`` in m, each
as the first element of a dataset. NXcxi_ptycho files (Diamond I08-1, processed for PtyPy) hold
those axes as ``data_1/x`` and ``data_1/y`` with NeXus ``units`` and SI energy (J).
"""

import equinox as eqx
import h5py
import jax.numpy as jnp
import numpy as np
import pytest

from diffptycho.io.cxi import CXIFormatError, read_cxi, read_cxi_headers
from diffptycho.models import Ptycho2D
from diffptycho.physics.optics import EV_TO_J
from diffptycho.recon.ptycho.geometry import scan_geometry
from diffptycho.recon.ptycho.start import starting_model
from tests._near_field_sim import (
    DETECTOR_PIXEL_M,
    ENERGY_EV,
    Z1_M,
    Z2_M,
    near_field_geometry,
    simulate_near_field,
)

P = DETECTOR_PIXEL_M
OFFSET_M = np.array([2.345678e-3, -1.2345e-3])  # absolute motor origin (x, y) in m


@pytest.fixture(scope="module")
def truth():
    """Near-field truth with noise-free frames (reference orientation)."""
    sim = simulate_near_field(seed=3, n_side=3)
    model = Ptycho2D(
        jnp.asarray(sim.obj),
        jnp.asarray(sim.probe[None]),
        jnp.asarray(sim.positions_px),
        propagator=sim.propagator,
    )
    sim.frames = np.asarray(eqx.filter_jit(lambda m: m())(model), dtype=np.float64)
    return sim


def _absolute_translation(sim) -> np.ndarray:
    """CXI (N, 3) translation (x, y, 0) in m: truth positions plus a whole-pixel motor offset."""
    dx = sim.object_pixel_m
    offset = np.round(OFFSET_M / dx) * dx
    y, x = (sim.positions_px * dx).T
    return np.stack([x + offset[0], y + offset[1], np.zeros_like(x)], axis=1)


def _check(path, sim, expected_orientation):
    (scan,) = read_cxi(path)
    (header,) = read_cxi_headers(path)
    assert header.frame_orientation == expected_orientation
    assert scan.pixel_size_m == pytest.approx((P, P), rel=1e-6)
    # frames back in the reference orientation
    np.testing.assert_allclose(scan.data, sim.frames, rtol=1e-5, atol=1e-3)
    # positions: Fresnel-scaled pixel, centred → the truth
    geometry = scan_geometry(scan, "near-field", Z1_M)
    assert geometry.object_pixel_size_m == pytest.approx((sim.object_pixel_m,) * 2, rel=1e-6)
    model = starting_model(scan, geometry=geometry)
    np.testing.assert_allclose(np.asarray(model.positions), sim.positions_px, atol=2e-3)
    assert model.object.shape == sim.obj.shape
    # physics: the truth seen at the positions read reproduces the frames read
    seen = eqx.tree_at(
        lambda m: (m.object, m.probe),
        model,
        (jnp.asarray(sim.obj, jnp.complex64), jnp.asarray(sim.probe[None], jnp.complex64)),
    )
    predicted = np.asarray(eqx.filter_jit(lambda m: m())(seen))
    misfit = np.linalg.norm(predicted - scan.data) / np.linalg.norm(scan.data)
    assert misfit < 1e-3, misfit


def _flip_check(sim):
    """The forward model of the truth at the truth positions, against flipped frames, misfits."""
    flipped = sim.frames[:, ::-1, ::-1]
    return np.linalg.norm(flipped - sim.frames) / np.linalg.norm(sim.frames)


def test_ptychodus_layout(tmp_path, truth):
    path = tmp_path / "ptychodus.cxi"
    with h5py.File(path, "w") as f:
        f["cxi_version"] = 160
        f["entry_1/start_time"] = "2026-01-01T00:00:00+00:00"
        det = f.create_group("entry_1/instrument_1/detector_1")
        det["data"] = truth.frames.astype(np.float32)
        det["distance"] = Z2_M
        det["x_pixel_size"] = P
        det["y_pixel_size"] = P
        f["entry_1/instrument_1/source_1/energy"] = ENERGY_EV * EV_TO_J
        f["entry_1/data_1/data"] = h5py.SoftLink("/entry_1/instrument_1/detector_1/data")
        f["entry_1/sample_1/geometry_1/translation"] = _absolute_translation(truth)
        f["entry_1/data_1/translation"] = h5py.SoftLink("/entry_1/sample_1/geometry_1/translation")
    _check(path, truth, "as stored")


@pytest.mark.parametrize(
    "basis_rows, stored, orientation",
    [
        # CDTools' default detector basis is the reference one: frames as stored
        ([[0, -P, 0], [-P, 0, 0]], lambda f: f, "as stored"),
        # both axes flipped (rows along +y, columns along +x)
        ([[0, P, 0], [P, 0, 0]], lambda f: f[:, ::-1, ::-1], "rows flipped, columns flipped"),
    ],
)
def test_cdtools_layout(tmp_path, truth, basis_rows, stored, orientation):
    path = tmp_path / "cdtools.cxi"
    basis = np.asarray(basis_rows, dtype=np.float32).T  # CDTools stores (3, 2)
    with h5py.File(path, "w") as f:
        f["cxi_version"] = 160
        f["number_of_entries"] = 1
        src = f.create_group("entry_1/instrument_1/source_1")
        wavelength = 1.9864459e-25 / (ENERGY_EV * EV_TO_J)
        src["wavelength"] = np.float32(wavelength)
        src["energy"] = np.float32(1.9864459e-25 / wavelength)
        det = f.create_group("entry_1/instrument_1/detector_1")
        det["distance"] = np.float32(Z2_M)
        det["x_pixel_size"] = np.linalg.norm(basis[:, 1])
        det["y_pixel_size"] = np.linalg.norm(basis[:, 0])
        det["basis_vectors"] = basis
        det["data"] = stored(truth.frames).astype(np.float32)
        f["entry_1/data_1/data"] = h5py.SoftLink("/entry_1/instrument_1/detector_1/data")
        # CDTools negates its probe translations on writing: the file holds the CXI sample
        # translation
        cdtools_probe_translation = -_absolute_translation(truth)
        f["entry_1/sample_1/geometry_1/translation"] = -cdtools_probe_translation
        for group in ("data_1", "instrument_1/detector_1"):
            f[f"entry_1/{group}/translation"] = h5py.SoftLink(
                "/entry_1/sample_1/geometry_1/translation"
            )
    _check(path, truth, orientation)


def test_per_frame_basis_rotated_detector_micrometres(tmp_path, truth):
    """Per-frame (N, 2, 3) basis, frame rows along +x and columns along −y, translation in µm."""
    n = len(truth.frames)
    path = tmp_path / "beamline.cxi"
    basis = np.broadcast_to(np.array([[P, 0.0, 0.0], [0.0, -P, 0.0]]), (n, 2, 3))
    # stored[i, j] sits at lab x = +i p, y = −j p; reference row r = −y/p = j, column
    # c = −x/p = −i (from the last column): stored[i, j] = reference[j, N − 1 − i]
    stored = truth.frames[:, :, ::-1].transpose(0, 2, 1)
    with h5py.File(path, "w") as f:
        e = f.create_group("entry_1")
        e["data_1/data"] = stored.astype(np.float32)
        e["data_1/data"].attrs["axes"] = "translation:y:x"
        e["instrument_1/detector_1/basis_vectors"] = basis
        e["instrument_1/detector_1/distance"] = Z2_M * 1e3
        e["instrument_1/detector_1/distance"].attrs["units"] = "mm"
        e["instrument_1/source_1/energy"] = ENERGY_EV * EV_TO_J
        e["instrument_1/source_1/energy"].attrs["units"] = "J"
        e["sample_1/geometry_1/translation"] = _absolute_translation(truth) * 1e6
        e["sample_1/geometry_1/translation"].attrs["units"] = "µm"
    _check(path, truth, "transposed, columns flipped")


def _write_ptypy(path, sim, energy):
    """The NXcxi_ptycho layout PtyPy's loaders read: 1-D x/y positions in µm, (1,) scalars."""
    translation_um = _absolute_translation(sim) * 1e6
    with h5py.File(path, "w") as f:
        f["cxi_version"] = 160
        e = f.create_group("entry_1")
        e.attrs["NX_class"] = "NXentry"
        e["definition"] = "NXcxi_ptycho"
        data = e.create_group("data_1")
        data.attrs["NX_class"] = "NXdata"
        data["data"] = sim.frames.astype(np.float32)
        for axis, column in (("x", 0), ("y", 1)):
            data[axis] = translation_um[:, column]
            data[axis].attrs["units"] = "um"
        e["instrument_1/source_1/energy"] = np.array([energy])
        det = e.create_group("instrument_1/detector_1")
        for name, value in (("distance", Z2_M), ("x_pixel_size", P), ("y_pixel_size", P)):
            det[name] = np.array([value])
            det[name].attrs["units"] = "m"


def test_ptypy_layout(tmp_path, truth):
    """Positions from the 1-D ``data_1/x``, ``data_1/y`` pair, frames as stored, energy in J."""
    path = tmp_path / "ptypy.cxi"
    _write_ptypy(path, truth, ENERGY_EV * EV_TO_J)
    _check(path, truth, "as stored")


def test_ptypy_energy_in_kev_is_refused_naming_the_dataset(tmp_path, truth):
    """PtyPy's own ``recorded_energy`` is keV: in a CXI energy slot that is caught, not used."""
    path = tmp_path / "ptypy_kev.cxi"
    _write_ptypy(path, truth, ENERGY_EV / 1000)
    with pytest.raises(CXIFormatError, match="looks like keV") as info:
        read_cxi(path)
    assert "/entry_1/instrument_1/source_1/energy" in str(info.value)


def test_ptypy_positions_one_per_frame(tmp_path, truth):
    path = tmp_path / "ptypy_short.cxi"
    _write_ptypy(path, truth, ENERGY_EV * EV_TO_J)
    with h5py.File(path, "a") as f:
        x = f["entry_1/data_1/x"][:-1]
        del f["entry_1/data_1/x"]
        f["entry_1/data_1/x"] = x
    with pytest.raises(CXIFormatError, match=r"/entry_1/data_1/x.*one value per frame"):
        read_cxi(path)


def test_ignoring_the_basis_would_misfit(truth):
    """The physics check can fail: flipped frames do not fit the truth at the true positions."""
    assert _flip_check(truth) > 0.05


def test_magnification_matches_fresnel_scaling(truth):
    g, prop = near_field_geometry()
    assert g.magnification == pytest.approx((Z1_M + Z2_M) / Z1_M, rel=1e-12)
    assert prop.distance_m == pytest.approx(Z2_M * Z1_M / (Z1_M + Z2_M), rel=1e-12)
    assert truth.object_pixel_m == pytest.approx(P * Z1_M / (Z1_M + Z2_M), rel=1e-12)


@pytest.mark.parametrize(
    "basis, match",
    [
        (
            [[0, -P * np.cos(0.2), P * np.sin(0.2)], [-P, 0, 0]],
            "not along lab ±x or ±y.*axis-aligned",
        ),
        ([[P * np.cos(0.3), P * np.sin(0.3), 0], [0, -P, 0]], "rotated, tilted or skewed"),
        ([[0, -P, 0], [0, P, 0]], "both frame axes along lab y"),
        ([[0, -P, 0, 0], [-P, 0, 0, 0]], "expected finite"),
    ],
)
def test_unsupported_basis_is_refused_naming_the_dataset(tmp_path, truth, basis, match):
    path = tmp_path / "bad.cxi"
    with h5py.File(path, "w") as f:
        e = f.create_group("entry_1")
        e["data_1/data"] = truth.frames[:, :8, :8].astype(np.float32)
        e["instrument_1/detector_1/basis_vectors"] = np.asarray(basis)
        e["instrument_1/detector_1/distance"] = Z2_M
        e["instrument_1/source_1/energy"] = ENERGY_EV * EV_TO_J
        e["sample_1/geometry_1/translation"] = _absolute_translation(truth)
    with pytest.raises(CXIFormatError, match=match) as info:
        read_cxi(path)
    assert "/entry_1/instrument_1/detector_1/basis_vectors" in str(info.value)


def test_per_frame_basis_that_moves_is_refused(tmp_path, truth):
    n = len(truth.frames)
    basis = np.broadcast_to(np.array([[0, -P, 0], [-P, 0, 0]]), (n, 2, 3)).copy()
    basis[1, 0, 1] *= 1.01
    path = tmp_path / "moving.cxi"
    with h5py.File(path, "w") as f:
        e = f.create_group("entry_1")
        e["data_1/data"] = truth.frames.astype(np.float32)
        e["instrument_1/detector_1/basis_vectors"] = basis
        e["instrument_1/detector_1/distance"] = Z2_M
        e["instrument_1/source_1/energy"] = ENERGY_EV * EV_TO_J
        e["sample_1/geometry_1/translation"] = _absolute_translation(truth)
    with pytest.raises(CXIFormatError, match="differ between frames"):
        read_cxi(path)
