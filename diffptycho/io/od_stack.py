"""Optical-density files of the chemistry commands: spectral stacks and two-energy maps.

Two plain HDF5 layouts, as beamline scripts and other programs write them:

- **spectral stack** (``chem lcf``, ``chem xanes-fit``): ``od``, ``mu_t`` or
  ``optical_density`` (as ``spectroptycho`` writes it) (energy, y, x)
  optical density, ``energies_ev`` (energy,) in eV, optionally ``phase`` (energy, y, x) in rad.
- **two-energy OD** (``chem two-energy``): ``od`` (2, …) at (E1, E2), a map or a volume
  (``od_volumes`` of a two-energy ``spectrotomo`` result is read too); optionally
  ``energies_ev`` (2,) in eV (dataset, or attribute of the OD), ``od_pre`` (…) pre-edge OD and
  ``energy_pre_ev``.

Every dataset is checked on reading (real numbers, rank, finite, not all zero, energies in eV),
and each error names the file, the dataset and what to store instead.
"""

from __future__ import annotations

import dataclasses
import os

import h5py
import numpy as np

from diffptycho._typing import Array, Float
from diffptycho.io._atomic import open_h5_readonly
from diffptycho.io.energies import check_energies_ev

__all__ = ["SpectralStack", "TwoEnergyOD", "read_spectral_stack", "read_two_energy_od"]


@dataclasses.dataclass(frozen=True)
class SpectralStack:
    """An optical-density stack read by :func:`read_spectral_stack`.

    Attributes:
        od: (energy, y, x) float64 optical density (dimensionless).
        energies_ev: (energy,) float64 photon energies in eV.
        phase: (energy, y, x) float64 phase in rad, or None.
        dataset: the name the OD was read from (``"od"``, ``"mu_t"`` or ``"optical_density"``).
    """

    od: Float[Array, "energy y x"]
    energies_ev: Float[Array, " energy"]
    phase: Float[Array, "energy y x"] | None
    dataset: str


@dataclasses.dataclass(frozen=True)
class TwoEnergyOD:
    """Optical densities at two energies read by :func:`read_two_energy_od`.

    Attributes:
        od: (2, …) float64 OD at (E1, E2).
        energies_ev: (2,) float64 energies in eV stored in the file, or None.
        od_pre: (…) float64 pre-edge OD, or None.
        energy_pre_ev: pre-edge energy in eV stored in the file, or None.
        energies_source: where the energies were read (``"FILE: dataset 'energies_ev'"`` or
            ``"FILE: attribute 'od.energies_ev'"``), for messages; where they would be
            without them.
    """

    od: np.ndarray
    energies_ev: np.ndarray | None
    od_pre: np.ndarray | None
    energy_pre_ev: float | None
    energies_source: str = ""


def _dataset(path: str, f: h5py.File, name: str, what: str) -> h5py.Dataset:
    obj = f.get(name)
    if not isinstance(obj, h5py.Dataset):
        have = ", ".join(sorted(f.keys())) or "nothing"
        raise ValueError(f"{path}: no dataset '{name}' (the file has: {have}); store {what}")
    return obj


def _real(path: str, ds: h5py.Dataset, what: str, *, nonzero: bool = True) -> np.ndarray:
    """The dataset as float64, refused unless real, finite and (``nonzero``) not all zero."""
    name = ds.name.lstrip("/")
    if not (np.issubdtype(ds.dtype, np.integer) or np.issubdtype(ds.dtype, np.floating)):
        raise ValueError(
            f"{path}: dataset '{name}' has dtype {ds.dtype}; store {what} as real numbers"
        )
    value = np.asarray(ds[()], dtype=np.float64)
    bad = int(value.size - np.count_nonzero(np.isfinite(value)))
    if bad:
        raise ValueError(
            f"{path}: dataset '{name}' contains {bad} NaN/inf values; store finite {what} "
            "(e.g. 0 outside the sample)"
        )
    if nonzero and value.size and not np.any(value):
        raise ValueError(
            f"{path}: dataset '{name}' is all zero; store {what} (was the file written before "
            "the data were filled in?)"
        )
    return value


def read_spectral_stack(path: str | os.PathLike[str]) -> SpectralStack:
    """Read an optical-density stack (layout in the module docstring).

    Args:
        path: HDF5 file with ``od`` or ``mu_t`` (energy, y, x), ``energies_ev`` (energy,) in
            eV and optionally ``phase`` (energy, y, x) in rad.

    Returns:
        The :class:`SpectralStack`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not (complete) HDF5, a dataset missing, of the wrong dtype or shape,
            non-finite or all zero, or energies not in eV (the message names the dataset).
    """
    path = os.fspath(path)
    with open_h5_readonly(path, ValueError, "an HDF5 stack with od/mu_t and energies_ev") as f:
        names = [n for n in ("od", "mu_t", "optical_density") if isinstance(f.get(n), h5py.Dataset)]
        if not names:
            have = ", ".join(sorted(f.keys())) or "nothing"
            raise ValueError(
                f"{path}: no dataset 'od' or 'mu_t' (nor 'optical_density'; the file has: "
                f"{have}); store the optical density (energy, y, x) as 'od'"
            )
        name = names[0]
        od_ds = f[name]
        e_ds = _dataset(path, f, "energies_ev", "the photon energies in eV (energy,)")
        if od_ds.ndim != 3 or e_ds.shape not in ((od_ds.shape[0],), (od_ds.shape[0], 1)):
            raise ValueError(
                f"{path}: dataset '{name}' has shape {od_ds.shape} and 'energies_ev' "
                f"{e_ds.shape}; expected '{name}' (energy, y, x) with one entry of "
                "'energies_ev' per energy"
            )
        phase_ds = _dataset(path, f, "phase", "phase") if "phase" in f else None
        if phase_ds is not None and phase_ds.shape != od_ds.shape:
            raise ValueError(
                f"{path}: dataset 'phase' has shape {phase_ds.shape}, expected {od_ds.shape} "
                f"as '{name}'"
            )
        e = check_energies_ev(
            _real(path, e_ds, "energies in eV").ravel(), f"{path}: dataset 'energies_ev'"
        )
        od = _real(path, od_ds, "optical densities")
        phase = None if phase_ds is None else _real(path, phase_ds, "phases in rad", nonzero=False)
    if np.any(np.diff(e) == 0):
        raise ValueError(f"{path}: dataset 'energies_ev' repeats an energy; store each once")
    return SpectralStack(od=od, energies_ev=e, phase=phase, dataset=name)


def read_two_energy_od(path: str | os.PathLike[str]) -> TwoEnergyOD:
    """Read the ODs at two energies (layout in the module docstring).

    Args:
        path: HDF5 file with ``od`` (2, …) (or ``od_volumes``, as ``spectrotomo`` writes for
            two energies) and optionally ``energies_ev`` (2,) in eV (a dataset, or an
            attribute of the OD dataset), ``od_pre`` (…) and ``energy_pre_ev`` (scalar, eV).

    Returns:
        The :class:`TwoEnergyOD`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not (complete) HDF5, ``od`` missing, of the wrong dtype or shape,
            non-finite or all zero, ``od_pre`` of another shape, or energies not in eV.
    """
    path = os.fspath(path)
    with open_h5_readonly(path, ValueError, "an HDF5 file with 'od' (2, …)") as f:
        # a spectrotomo results file of two energies holds them as 'od_volumes'
        name = "od" if "od" in f or "od_volumes" not in f else "od_volumes"
        od_ds = _dataset(path, f, name, "the ODs (2, …) at (E1, E2)")
        if od_ds.ndim < 2 or od_ds.shape[0] != 2:
            raise ValueError(
                f"{path}: dataset '{name}' has shape {od_ds.shape}; expected (2, …): the ODs "
                "at (E1, E2) on the first axis, a map or a volume after it"
            )
        od = _real(path, od_ds, "optical densities")
        energies = pre = energy_pre = None
        where, stored = f"{path}: dataset 'energies_ev'", None
        if "energies_ev" in f:
            ds = _dataset(path, f, "energies_ev", "the two energies in eV")
            where, stored = f"{path}: dataset 'energies_ev'", ds
        elif "energies_ev" in od_ds.attrs:  # some writers keep them as an attribute
            where, stored = f"{path}: attribute '{name}.energies_ev'", od_ds.attrs["energies_ev"]
        if stored is not None:
            if np.size(stored) != 2:
                raise ValueError(
                    f"{where} holds {np.size(stored)} energies; expected 2, the energies "
                    f"(E1, E2) of the two '{name}' images in eV"
                )
            values = (
                _real(path, stored, "energies in eV")
                if isinstance(stored, h5py.Dataset)
                else stored
            )
            energies = check_energies_ev(values, where).ravel()
        if "od_pre" in f:
            ds = _dataset(path, f, "od_pre", "the pre-edge OD")
            if ds.shape != od_ds.shape[1:]:
                raise ValueError(
                    f"{path}: dataset 'od_pre' has shape {ds.shape}; expected "
                    f"{od_ds.shape[1:]} as one image of '{name}'"
                )
            pre = _real(path, ds, "pre-edge ODs", nonzero=False)
        if "energy_pre_ev" in f:
            ds = _dataset(path, f, "energy_pre_ev", "the pre-edge energy in eV")
            pre_where = f"{path}: dataset 'energy_pre_ev'"
            value = check_energies_ev(_real(path, ds, "an energy in eV"), pre_where).ravel()
            if value.size != 1:
                raise ValueError(f"{pre_where}: holds {value.size} values; store one energy in eV")
            energy_pre = float(value[0])
    return TwoEnergyOD(
        od=od, energies_ev=energies, od_pre=pre, energy_pre_ev=energy_pre, energies_source=where
    )
