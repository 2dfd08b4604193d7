"""Configuration of the staged pipeline: one frozen dataclass of settings per stage.

A run is described completely by a :class:`PipelineConfig`: the input files, the reference
spectra, the output file and the settings of every stage. The same configuration comes from the
command line (``diffptycho spectrotomo``) or from a TOML file (``diffptycho run CONFIG.toml``)::

    input = ["scans/*.cxi"]          # one CXI file, a list, or glob patterns
    references = "refs.csv"          # energy_ev, delta_<species>, beta_<species>, ...
    output = "volumes.h5"

    [tilt_series]
    energy_tolerance_ev = 0.05
    angle_tolerance_deg = 0.05

    [ptychography]
    engine = "raar"
    iterations = 100

    [alignment]
    method = "reprojection"

    [tomography]
    algorithm = "art"
    iterations = 20

Relative paths in a TOML file are relative to the file's folder. Unknown sections or keys are
errors that name the file and the key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from typing import Any

__all__ = [
    "AlignmentSettings",
    "ChemistrySettings",
    "ConfigError",
    "JointSettings",
    "PipelineConfig",
    "ProjectionSettings",
    "PtychographySettings",
    "RegistrationSettings",
    "STAGE_NAMES",
    "TiltSeriesSettings",
    "TomographySettings",
    "config_from_dict",
    "load_config",
]


class ConfigError(ValueError):
    """A pipeline configuration names an unknown key or holds a value of the wrong kind."""


def _positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} = {value!r}: expected a positive integer")


@dataclasses.dataclass(frozen=True)
class TiltSeriesSettings:
    """How scans are grouped into a tilt series.

    Attributes:
        energy_tolerance_ev: scans whose energies differ by less than this (eV) share an
            energy.
        angle_tolerance_deg: scans whose angles differ by less than this (degrees) share an
            angle.
    """

    energy_tolerance_ev: float = 0.05
    angle_tolerance_deg: float = 0.05


@dataclasses.dataclass(frozen=True)
class PtychographySettings:
    """Stage 1: ptychography per scan with probe retrieval.

    The probe is unknown: the first scan of each energy starts from the data-derived guess
    (:func:`~diffptycho.recon.ptycho.start.probe_guess`) and runs ``first_scan_iterations``;
    every further scan of that energy starts from the probe retrieved at the neighbouring
    angle. With ``shared_probe`` all scans of an energy are reconstructed at once with one
    probe (:func:`~diffptycho.recon.ptycho.multiscan_model`).

    Attributes:
        engine: a key of :data:`~diffptycho.recon.ptycho.ENGINES`.
        iterations: iterations per scan.
        first_scan_iterations: iterations of the first scan of each energy, which retrieves
            the probe from the data-derived start (default: 3 × ``iterations``).
        probe_modes: incoherent probe modes.
        shared_probe: one probe per energy, shared by all its scans.
        refine_positions: refine the scan positions.
        batch_size: positions per minibatch (engine default when None).
        file_probe: start from the file's illumination where it has one (the data-derived
            guess is used otherwise).
        loss: ``"poisson"`` or ``"amplitude"`` (engine default when None).
        probe_search: start each energy's first scan from the data-derived probe guess at
            the defocus that fits the scan best (:func:`~diffptycho.recon.ptycho.start.
            probe_by_defocus_search`: the guess and 8 defocused copies, 10 iterations each).
            The guess alone is the probe at the focus, which fails for strongly defocused
            probes (64² frames, 5 µm defocus: the probe collapsed to a spot and the objects
            to isolated dots; the search found the right width, 1896 px above 10 % against
            1769 for the true probe). Off by default: on small frames of a nearly focused
            probe (8², a = λΔz/dx² ≈ 8) it found the right defocus (6.6) but the registration
            of one scan came out 1.7 px off. Ignored when the file's probe is used.
        devices: split every minibatch's positions over the first N local devices
            (:func:`~diffptycho.recon.sharding.position_mesh`; the batch size must be a
            multiple of N); None or 1: one device. The result equals the one-device result
            to rounding.
        stream: leave each scan's frames in its file and read every minibatch's frames when
            the engine needs it (:mod:`~diffptycho.recon.ptycho.streaming`): memory holds one
            minibatch instead of a scan; same result, one more read of the frames per
            iteration. Not with ``shared_probe``.
        scans_per_step: None (default): the chain above, each scan started from the probe
            of the scan before it. A number N: after each energy's first scan, every other
            scan of that energy starts from the first scan's probe (rescaled to its frames),
            and N of them are solved at once (:func:`~diffptycho.recon.ptycho.scans.
            solve_scans`: the engine's step vmapped over the scans; with ``devices`` the
            scans of a group are split over the devices instead of each scan's positions,
            so N is best a multiple of ``devices``; scans with different numbers of
            positions go in different groups). Unlike the chain, a scan's result no longer
            depends on the scans before it: any N gives the same objects and probes to
            rounding (1: one scan at a time), a diverged scan seeds no other, but a probe
            that drifts over the acquisition is followed from the first scan only. Not with
            ``shared_probe`` or ``stream``.
    """

    engine: str = "raar"
    iterations: int = 100
    first_scan_iterations: int | None = None
    probe_modes: int = 1
    shared_probe: bool = False
    refine_positions: bool = False
    batch_size: int | None = None
    file_probe: bool = False
    loss: str | None = None
    devices: int | None = None
    probe_search: bool = False
    stream: bool = False
    scans_per_step: int | None = None

    def __post_init__(self) -> None:
        from diffptycho.recon.ptycho import ENGINES

        if self.scans_per_step is not None:
            _positive("ptychography.scans_per_step", self.scans_per_step)
            for other in ("shared_probe", "stream"):
                if getattr(self, other):
                    raise ConfigError(
                        f"ptychography.scans_per_step with ptychography.{other}: "
                        "scans_per_step solves separate scans from the first scan's probe "
                        f"with their frames in memory; turn one of them off"
                    )

        if self.stream and self.shared_probe:
            raise ConfigError(
                "ptychography.stream with ptychography.shared_probe: the shared-probe canvas "
                "concatenates every scan's frames in memory; turn one of them off"
            )

        if self.engine not in ENGINES:
            raise ConfigError(
                f"ptychography.engine = {self.engine!r}: choose from {sorted(ENGINES)}"
            )
        _positive("ptychography.iterations", self.iterations)
        _positive("ptychography.probe_modes", self.probe_modes)
        if self.first_scan_iterations is not None:
            _positive("ptychography.first_scan_iterations", self.first_scan_iterations)
        if self.batch_size is not None:
            _positive("ptychography.batch_size", self.batch_size)
        if self.devices is not None:
            _positive("ptychography.devices", self.devices)
        if self.loss not in (None, "poisson", "amplitude"):
            raise ConfigError(f"ptychography.loss = {self.loss!r}: use 'poisson' or 'amplitude'")

    @property
    def probe_iterations(self) -> int:
        """Iterations of the first scan of each energy."""
        return self.first_scan_iterations or 3 * self.iterations


@dataclasses.dataclass(frozen=True)
class ProjectionSettings:
    """Stage 2: projections (optical density and phase) with the vacuum level normalised.

    Attributes:
        illumination_threshold: pixels lit by more than this fraction of the maximum
            illumination are kept; the rest of the field is set to vacuum (OD = phase = 0).
        unwrap: unwrap the phase (least squares) before the ramp is removed.
        vacuum_erosion_px: the detected vacuum region is eroded by this many pixels so that
            sample edges do not enter the normalisation.
    """

    illumination_threshold: float = 0.1
    unwrap: bool = True
    vacuum_erosion_px: int = 1

    def __post_init__(self) -> None:
        if not 0 < self.illumination_threshold < 1:
            raise ConfigError(
                f"projections.illumination_threshold = {self.illumination_threshold}: "
                "expected a fraction in (0, 1)"
            )
        if self.vacuum_erosion_px < 0:
            raise ConfigError("projections.vacuum_erosion_px: expected ≥ 0 pixels")


@dataclasses.dataclass(frozen=True)
class RegistrationSettings:
    """Stage 3: sub-pixel registration of every energy to a reference energy, per angle.

    Attributes:
        enabled: register (False: no offsets between energies).
        signal: ``"phase"`` (default) or ``"od"``. The phase is registered because it is
            dominated by the sample's electron density, which both energies share, while the
            difference of the optical densities between the energies is the chemical signal
            the study measures: registering on it would pull that signal into the offsets.
        reference_energy: index of the energy the others are registered to.
        upsample: sub-pixel precision 1/``upsample`` px of the phase correlation.
    """

    enabled: bool = True
    signal: str = "phase"
    reference_energy: int = 0
    upsample: int = 100

    def __post_init__(self) -> None:
        if self.signal not in ("phase", "od"):
            raise ConfigError(f"registration.signal = {self.signal!r}: use 'phase' or 'od'")
        if self.reference_energy < 0:
            raise ConfigError("registration.reference_energy: expected an energy index ≥ 0")
        _positive("registration.upsample", self.upsample)


@dataclasses.dataclass(frozen=True)
class AlignmentSettings:
    """Stage 4: rotation-axis alignment of the tilt series.

    Attributes:
        method: ``"reprojection"`` (rough alignment, then the loop reconstruct → reproject →
            register with similarity transforms), ``"joint"`` (the similarity parameters as
            leaves refined by gradient together with the volume), ``"rough"`` (rough
            alignment only) or ``"none"``.
        signal: ``"od"`` (default; the mean over energies of the registered optical density)
            or ``"phase"``.
        similarity: also refine in-plane rotation and scale (shifts only when False).
        max_loops: most loops (reprojection); the joint method takes 30 × this many steps.
        tolerance_px: the reprojection loop stops once the largest update is below this.
        tomo_iterations: SIRT iterations of each reconstruction inside the reprojection loop
            (a least-squares solver: ART's sequential sweeps bias the weakly determined
            rotations and scales).
        refine_steps: gradient steps on volume and parameters together after the
            reprojection loop (:func:`~diffptycho.recon.align.reprojection.reprojection_align`;
            0: none).
    """

    method: str = "reprojection"
    signal: str = "od"
    similarity: bool = True
    max_loops: int = 10
    tolerance_px: float = 0.01
    tomo_iterations: int = 100
    refine_steps: int = 80

    def __post_init__(self) -> None:
        if self.method not in ("reprojection", "joint", "rough", "none"):
            raise ConfigError(
                f"alignment.method = {self.method!r}: use reprojection, joint, rough or none"
            )
        if self.signal not in ("phase", "od"):
            raise ConfigError(f"alignment.signal = {self.signal!r}: use 'phase' or 'od'")
        _positive("alignment.max_loops", self.max_loops)
        _positive("alignment.tomo_iterations", self.tomo_iterations)
        if self.refine_steps < 0:
            raise ConfigError(
                f"alignment.refine_steps = {self.refine_steps}: expected ≥ 0 (0: no refinement)"
            )


@dataclasses.dataclass(frozen=True)
class TomographySettings:
    """Stage 5: tomography of the optical density per energy.

    Attributes:
        algorithm: ``art`` (default), ``sart``, ``sirt``, ``cgls``, ``fbp`` or ``adam``.
        iterations: sweeps or iterations.
        relaxation: λ of ART, SART and SIRT.
        volume_shape: (z, y, x) voxels of the volume, centred in the projection field
            (default: the whole field, (x, y, x)).
        devices: split each reconstruction's y slabs over the first N local devices
            (:func:`~diffptycho.recon.tomo.sharding.tomo_mesh`; every algorithm); None or 1:
            one device. The result equals the one-device result to rounding.
    """

    algorithm: str = "art"
    iterations: int = 20
    relaxation: float = 1.0
    volume_shape: tuple[int, int, int] | None = None
    devices: int | None = None

    def __post_init__(self) -> None:
        from diffptycho.recon.tomo.reconstruct import ALGORITHMS

        if self.algorithm not in ALGORITHMS:
            raise ConfigError(
                f"tomography.algorithm = {self.algorithm!r}: choose from {list(ALGORITHMS)}"
            )
        _positive("tomography.iterations", self.iterations)
        if self.devices is not None:
            _positive("tomography.devices", self.devices)
        if self.volume_shape is not None:
            shape = tuple(int(n) for n in self.volume_shape)
            if len(shape) != 3 or min(shape) < 1:
                raise ConfigError(
                    f"tomography.volume_shape = {self.volume_shape}: expected 3 positive "
                    "integers (z, y, x)"
                )
            object.__setattr__(self, "volume_shape", shape)


@dataclasses.dataclass(frozen=True)
class ChemistrySettings:
    """Stage 6: chemical composition per voxel from the OD volumes and reference spectra.

    Attributes:
        method: ``"auto"`` (two-energy unmixing for 2 energies × 2 species, linear
            combination fitting otherwise), ``"two-energy"`` or ``"lcf"``.
    """

    method: str = "auto"

    def __post_init__(self) -> None:
        if self.method not in ("auto", "two-energy", "lcf"):
            raise ConfigError(f"chemistry.method = {self.method!r}: use auto, two-energy or lcf")


@dataclasses.dataclass(frozen=True)
class JointSettings:
    """The joint stage (``mode = "joint"``): the whole chain fitted to every diffraction frame.

    Attributes:
        model: what is fitted. ``"composition"`` (default): the species' volume fractions
            through the reference spectra (spectro-ptycho-tomography; needs references).
            ``"volumes"``: one complex volume per energy — optical density and phase per
            voxel, no spectral model (ptycho-tomography at each energy,
            :class:`~diffptycho.recon.joint.VolumeBasis`); with references the composition
            is then unmixed from its OD volumes as the staged chemistry does.
        start: ``"staged"`` (default): start from the staged pipeline's composition, retrieved
            probes, positions and alignment (the staged stages run first); ``"blank"``: start
            from scratch — zero composition, the data-derived probe guess of each energy,
            nominal (centred) positions, no alignment — without running the staged stages.
        solver: ``"gauss-newton"`` (default: damped Gauss–Newton on the amplitude residuals
            with conjugate-gradient inner solves; from a blank start it reaches what Adam
            reaches from the staged start, in a fraction of the time) or ``"adam"``.
        iterations: Gauss–Newton steps or Adam steps (≈ 150 from the staged start); default
            32 from the staged start, 64 from a blank one.
        learning_rate: Adam's step of the composition (volume fraction per step) and scale of
            the other leaves' steps (see :func:`~diffptycho.recon.joint.joint_reconstruct`).
        refine: leaves refined with the composition (``probe``, ``positions``, ``alignment``,
            ``background``, ``energy_offsets`` where the model has them); default
            ``composition, probe`` from the staged start and ``composition, probe,
            energy_offsets`` from a blank one (the per-scan shifts are then unknown). Measured
            (``experiments/joint_blank_start.py``, 32³, 24 angles, σ = 1 px shifts, unknown
            probe): blank start with these defaults RMSE 0.112 against 0.126 from the staged
            start.
        angles_per_batch: angles per minibatch (all when None).
        energies_per_batch: energies per minibatch (all when None); with both, a step holds
            ``energies_per_batch × angles_per_batch`` scans whatever the dataset's size.
        coarse_levels: coarse-to-fine over voxel size, ``(binning, steps)`` pairs run before
            ``iterations`` at full resolution (e.g. ``[[2, 16]]`` in TOML); default none.
            The volume's sides must be multiples of each binning.
        support: ``"none"`` (default) or ``"staged"``: hold the volumes at 0 outside a
            generous envelope of the staged OD volumes
            (:func:`~diffptycho.recon.joint.support_from_volumes`; staged start only).
        loss: ``"poisson"`` or ``"amplitude"``.
        tv_weight: weight of the smoothed total variation of the composition (per frame, see
            :func:`~diffptycho.recon.joint.total_variation_terms`; 0: none). The default
            5e-5 was chosen on ``experiments/joint_vs_staged.py`` (32³, 24 angles): joint vs
            staged RMSE −32 / −45 / −48 % at 10³ / 10⁴ / 10⁵ photons per frame, against
            −28 / −40 / −46 % without; 2e-4 already costs accuracy at 10³ (−22 %).
    """

    start: str = "staged"
    solver: str = "gauss-newton"
    iterations: int | None = None
    learning_rate: float = 0.03
    refine: tuple[str, ...] | None = None
    angles_per_batch: int | None = None
    energies_per_batch: int | None = None
    support: str = "none"
    coarse_levels: tuple[tuple[int, int], ...] = ()
    loss: str = "poisson"
    tv_weight: float = 5e-5
    model: str = "composition"

    def __post_init__(self) -> None:
        from diffptycho.recon.joint import SOLVERS, TRAINABLE

        blank = self.start == "blank"
        if self.iterations is None:
            object.__setattr__(self, "iterations", 64 if blank else 32)
        if self.refine is None:
            # from scratch the scans' shifts are unknown: fit them (they are folded into
            # the positions of a staged start)
            default = (
                ("composition", "probe", "energy_offsets") if blank else ("composition", "probe")
            )
            object.__setattr__(self, "refine", default)

        if not self.tv_weight >= 0:
            raise ConfigError(f"joint.tv_weight = {self.tv_weight}: expected ≥ 0")
        if self.start not in ("staged", "blank"):
            raise ConfigError(f"joint.start = {self.start!r}: use 'staged' or 'blank'")
        try:
            levels = tuple((int(b), int(n)) for b, n in self.coarse_levels)
        except (TypeError, ValueError):
            raise ConfigError(
                f"joint.coarse_levels = {self.coarse_levels!r}: expected [binning, steps] pairs"
            ) from None
        if any(b < 2 or n < 1 for b, n in levels):
            raise ConfigError(
                f"joint.coarse_levels = {list(levels)}: expected binning ≥ 2 and steps ≥ 1"
            )
        object.__setattr__(self, "coarse_levels", levels)
        if self.support not in ("none", "staged"):
            raise ConfigError(f"joint.support = {self.support!r}: use 'none' or 'staged'")
        if self.support == "staged" and self.start == "blank":
            raise ConfigError(
                "joint.support = 'staged' needs the staged volumes: use joint.start = 'staged'"
            )
        if self.model not in ("composition", "volumes"):
            raise ConfigError(f"joint.model = {self.model!r}: use 'composition' or 'volumes'")
        if self.solver not in SOLVERS:
            raise ConfigError(f"joint.solver = {self.solver!r}: choose from {list(SOLVERS)}")
        _positive("joint.iterations", self.iterations)
        if not self.learning_rate > 0:
            raise ConfigError(f"joint.learning_rate = {self.learning_rate}: expected > 0")
        refine = tuple(self.refine)
        unknown = sorted(set(refine) - set(TRAINABLE))
        if unknown or "composition" not in refine:
            raise ConfigError(
                f"joint.refine = {list(refine)}: expected 'composition' and any of "
                f"{sorted(TRAINABLE)}"
            )
        object.__setattr__(self, "refine", refine)
        if self.angles_per_batch is not None:
            _positive("joint.angles_per_batch", self.angles_per_batch)
        if self.energies_per_batch is not None:
            _positive("joint.energies_per_batch", self.energies_per_batch)
        if self.loss not in ("poisson", "amplitude"):
            raise ConfigError(f"joint.loss = {self.loss!r}: use 'poisson' or 'amplitude'")


STAGE_NAMES = (
    "ptychography",
    "projections",
    "registration",
    "alignment",
    "tomography",
    "chemistry",
    "joint",
)
"""Every stage, in the order a run takes them (the sections of :data:`SECTIONS` but the first)."""

SECTIONS: dict[str, type] = {
    "tilt_series": TiltSeriesSettings,
    "ptychography": PtychographySettings,
    "projections": ProjectionSettings,
    "registration": RegistrationSettings,
    "alignment": AlignmentSettings,
    "tomography": TomographySettings,
    "chemistry": ChemistrySettings,
    "joint": JointSettings,
}
"""TOML section name → settings class."""


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Everything a staged run needs: inputs, references, output and each stage's settings.

    Attributes:
        input: CXI files or glob patterns (one entry per scan).
        output: results HDF5 file (rewritten atomically after every stage).
        references: CSV of reference spectra (``energy_ev``, ``delta_<s>``, ``beta_<s>``);
            without it the run stops after tomography.
        mode: ``"staged"`` (the six stages) or ``"joint"`` (the joint stage, after the staged
            ones when ``joint.start`` is ``"staged"``, alone when it is ``"blank"``).
        tilt_series: grouping of the scans into an (energy, angle) grid.
        ptychography: settings of the ptychography stage.
        projections: settings of the projections stage.
        registration: settings of the registration stage.
        alignment: settings of the alignment stage.
        tomography: settings of the tomography stage.
        chemistry: settings of the chemistry stage.
        joint: settings of the joint stage.
    """

    input: tuple[str, ...]
    output: str
    references: str | None = None
    mode: str = "staged"
    tilt_series: TiltSeriesSettings = TiltSeriesSettings()
    ptychography: PtychographySettings = PtychographySettings()
    projections: ProjectionSettings = ProjectionSettings()
    registration: RegistrationSettings = RegistrationSettings()
    alignment: AlignmentSettings = AlignmentSettings()
    tomography: TomographySettings = TomographySettings()
    chemistry: ChemistrySettings = ChemistrySettings()
    joint: JointSettings = JointSettings()

    def __post_init__(self) -> None:
        paths = (self.input,) if isinstance(self.input, str) else tuple(self.input)
        if not paths:
            raise ConfigError("input: no CXI file given")
        object.__setattr__(self, "input", tuple(os.fspath(p) for p in paths))
        object.__setattr__(self, "output", os.fspath(self.output))
        if self.mode not in ("staged", "joint"):
            raise ConfigError(f"mode = {self.mode!r}: use 'staged' or 'joint'")
        if self.mode == "joint" and self.references is None and self.joint.model != "volumes":
            raise ConfigError(
                "mode = 'joint' fits composition volumes: give references (or fit per-energy "
                "volumes with joint.model = 'volumes')"
            )

    def stage_names(self) -> list[str]:
        """The stages this configuration runs, in order."""
        staged = list(STAGE_NAMES[:5])
        if self.references is not None:
            staged.append("chemistry")
        if self.mode == "staged":
            return staged
        return ["joint"] if self.joint.start == "blank" else [*staged, "joint"]

    def input_files(self) -> list[str]:
        """The input patterns expanded (sorted per pattern); a pattern with no file is an error."""
        files: list[str] = []
        for pattern in self.input:
            found = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
            if not found:
                raise FileNotFoundError(f"input: no file matches {pattern!r}")
            for path in found:
                if not os.path.exists(path):
                    raise FileNotFoundError(f"input: {path}: no such file")
            files.extend(found)
        return files

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (the provenance of a run; :func:`config_from_dict` reads it)."""
        return dataclasses.asdict(self)


def _coerce(where: str, field: dataclasses.Field, value: Any, hints: Mapping[str, Any]) -> Any:
    """Check a TOML value against the field's type; lists become tuples."""
    hint = hints[field.name]
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return None
    for kind in allowed:
        origin = typing.get_origin(kind) or kind
        if origin is tuple and isinstance(value, list | tuple):
            return tuple(value)
        if origin is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if origin in (int, str, bool) and type(value) is origin:
            return value
    names = " or ".join(getattr(k, "__name__", str(k)) for k in allowed)
    raise ConfigError(f"{where}: {value!r} is a {type(value).__name__}, expected {names}")


def _section(cls: type, values: Any, where: str) -> Any:
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where}: expected a table of settings, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {unknown}; known: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {k: _coerce(f"{where}.{k}", fields[k], v, hints) for k, v in values.items()}
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def config_from_dict(
    values: Mapping[str, Any], source: str = "config", base_dir: str | None = None
) -> PipelineConfig:
    """A :class:`PipelineConfig` from nested mappings (a parsed TOML file or :meth:`to_dict`).

    Args:
        values: top-level keys ``input``, ``output``, ``references`` and one table per section
            of :data:`SECTIONS`.
        source: name used in error messages (the file).
        base_dir: folder that relative paths are taken from (None: as given).

    Returns:
        The configuration.

    Raises:
        ConfigError: an unknown key or a value of the wrong kind (named with ``source``).
    """
    known = {"input", "output", "references", "mode", *SECTIONS}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown}; known: {sorted(known)}")
    for key in ("input", "output"):
        if key not in values:
            raise ConfigError(f"{source}: '{key}' is missing")

    def path(p: str) -> str:
        if not isinstance(p, str):
            raise ConfigError(f"{source}: expected a path string, got {p!r}")
        return p if base_dir is None or os.path.isabs(p) else os.path.join(base_dir, p)

    inputs = values["input"]
    inputs = [inputs] if isinstance(inputs, str) else list(inputs)
    sections = {
        name: _section(cls, values.get(name, {}), f"{source}: [{name}]")
        for name, cls in SECTIONS.items()
    }
    refs = values.get("references")
    return PipelineConfig(
        input=tuple(path(p) for p in inputs),
        output=path(values["output"]),
        references=None if refs is None else path(refs),
        mode=values.get("mode", "staged"),
        **sections,
    )


def load_config(path: str | os.PathLike[str]) -> PipelineConfig:
    """Read a pipeline configuration from a TOML file (paths relative to its folder).

    Raises:
        FileNotFoundError: no such file.
        ConfigError: not TOML, or an unknown key / wrong value (the message names the file).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such configuration file")
    try:
        with open(path, "rb") as f:
            values = tomllib.load(f)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from None
    return config_from_dict(values, path, os.path.dirname(os.path.abspath(path)))
