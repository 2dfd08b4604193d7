"""Run the staged pipeline on a tilt series, saving every stage so a run can restart anywhere.

The results file (HDF5, rewritten atomically after each stage and every ~30 s inside the
ptychography stage) holds:

- ``composition`` (species, z, y, x) volume fractions, ``species`` (names, the references'
  order), ``voxel_size_m``, ``energies_ev``, ``angles_deg``, ``od_volumes``
  (energy, z, y, x) and ``alignment/shift_px`` (energy, angle, 2) as (y, x): the shift of the
  sample found in each scan (positive: to larger indices), with ``alignment/params``
  (energy, angle, 4); a joint run of per-energy volumes (``joint.model = "volumes"``) adds
  ``phase_volumes`` (energy, z, y, x) in rad per voxel, and its ``od_volumes`` replace the
  staged ones;
- ``stages/<name>/…``: every stage's arrays; ``history/<name>/…``: their convergence curves;
- ``provenance/config``: the whole :class:`~diffptycho.pipeline.config.PipelineConfig` and,
  per stage, its settings, whether it completed and its time.

Resuming. When the output file exists, every stage whose settings (and those of every stage
before it, and the input files) are unchanged is taken from the file, and an incomplete
ptychography stage continues with the scans not yet done. ``restart_from="alignment"`` reuses
the stages before alignment from the file, whatever their settings, and recomputes from there.
Every completed scan and stage is in the file, so a run killed at any time (even SIGKILL)
resumes from the last save and reaches the same result; SIGINT/SIGTERM save first.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from diffptycho.pipeline.config import PipelineConfig
from diffptycho.pipeline.stages import STAGES, Context, Stage, StageOutput, voxel_size_m
from diffptycho.recon.interrupt import Interrupted, stop_agreed, stop_requested

__all__ = ["PipelineResult", "run_pipeline"]

PRODUCTS = {
    "od_volumes": [
        ("joint", "od_volumes", "1 per voxel"),
        ("tomography", "od_volumes", "1 per voxel"),
    ],
    "phase_volumes": [("joint", "phase_volumes", "rad per voxel")],
    "composition": [
        ("joint", "composition", "volume fraction"),
        ("chemistry", "composition", "volume fraction"),
    ],
    "alignment/shift_px": [("joint", "shift_px", "pixel"), ("alignment", "shift_px", "pixel")],
    "alignment/params": [("alignment", "params", "(pixel, pixel, rad, 1)")],
}
"""Top-level dataset → (stage, array, unit) sources in order of preference: the products
scripts and users rely on (in joint mode, the joint stage's)."""


@dataclasses.dataclass
class PipelineResult:
    """The outputs of a staged run.

    Attributes:
        outputs: ``{stage: {name: array}}`` of every stage run or reused.
        seconds: wall-clock time of each stage run in this call, in s.
        reused: stages taken from an existing results file.
        path: the results file.
        species: species names (empty without references).
        voxel_size_m: voxel edge in m.
        spectra: δ + iβ (energy, species) of the references at the data's energies, or None.
    """

    outputs: dict[str, dict[str, np.ndarray]]
    seconds: dict[str, float]
    reused: list[str]
    path: str
    species: list[str]
    voxel_size_m: float
    spectra: np.ndarray | None = None

    @property
    def composition(self) -> np.ndarray | None:
        """(species, z, y, x) volume fractions (joint stage's if run), or None."""
        for stage in ("joint", "chemistry"):
            if "composition" in self.outputs.get(stage, {}):
                return self.outputs[stage]["composition"]
        return None


def _settings(config: PipelineConfig, name: str) -> Any:
    return getattr(config, name, None)


def _fingerprints(config: PipelineConfig, order: list[str], files: list[str]) -> dict[str, str]:
    """Per stage, a JSON of its settings and of every stage before it (and of the input)."""
    chain: list[Any] = [[os.path.abspath(f) for f in files], dataclasses.asdict(config.tilt_series)]
    out = {}
    for name in order:
        settings = _settings(config, name)
        chain.append([name, dataclasses.asdict(settings) if settings is not None else None])
        if name == "joint":  # a blank start takes the volume shape from the tomography settings
            chain.append(["tomography", dataclasses.asdict(config.tomography)])
        out[name] = json.dumps(chain, sort_keys=True)
    return out


def _previous(path: str) -> tuple[dict, dict, dict, dict[str, Any]]:
    """Stage arrays, histories, units and per-stage provenance of an existing results file."""
    from diffptycho.io.results import read_results

    res = read_results(path)
    outputs: dict[str, dict[str, np.ndarray]] = {}
    units: dict[str, dict[str, str]] = {}
    for key, value in res.items():
        if isinstance(key, str) and key.startswith("stages/"):
            _, stage, name = key.split("/", 2)
            outputs.setdefault(stage, {})[name] = value
            if key in res["units"]:
                units.setdefault(stage, {})[name] = res["units"][key]
    histories: dict[str, dict[str, np.ndarray]] = {}
    for key, value in res["history"].items():
        stage, _, name = key.partition("/")
        histories.setdefault(stage, {})[name] = value
    state = res["provenance"]["config"].get("stages", {})
    return outputs, histories, units, state


def run_pipeline(
    config: PipelineConfig,
    *,
    restart_from: str | None = None,
    stop_after: str | None = None,
    stages: Mapping[str, Stage] | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    figures: bool = True,
    resume: bool | None = None,
    checkpoint_every: int = 0,
) -> PipelineResult:
    """Run (or resume) the staged pipeline described by ``config``.

    Args:
        config: inputs, references, output and stage settings.
        restart_from: recompute from this stage on, reusing the earlier ones from the file.
        stop_after: stop after this stage (the file then holds the stages so far).
        stages: replacements for default stages by name (same signature), e.g. a tomography
            stage of one's own.
        progress: show progress bars.
        log: where progress lines go.
        figures: write PNG figures beside the output file at the end.
        resume: True: continue the run saved in the output file, which must exist and have
            been written with the same inputs and first-stage settings; False: start again,
            ignoring the file; None (default): reuse what matches, as described above.
        checkpoint_every: save the ptychography stage every this many scans (0: every
            ~30 s) and the joint stage every this many steps (0: only when stopped). A stop
            request (SIGINT/SIGTERM inside
            :func:`~diffptycho.recon.interrupt.stop_on_signals`) saves the work done and
            raises :class:`~diffptycho.recon.interrupt.Interrupted`.

    Returns:
        The :class:`PipelineResult`.

    Raises:
        FileNotFoundError: an input or the references file does not exist.
        ValueError: the data or the configuration cannot be used (the message says why), or
            ``restart_from`` needs stages the output file does not hold.
    """
    from diffptycho.io.references import read_reference_csv
    from diffptycho.io.tiltseries import read_tilt_series

    table = dict(STAGES)
    for name, stage in (stages or {}).items():
        if name not in table:
            raise ValueError(f"stages: unknown stage {name!r}; the stages are {list(table)}")
        table[name] = stage
    order = config.stage_names()
    for which, name in (("restart_from", restart_from), ("stop_after", stop_after)):
        if name is not None and name not in order:
            raise ValueError(f"{which}={name!r}: choose from {order}")

    files = config.input_files()
    tol = config.tilt_series
    series = read_tilt_series(
        files,
        energy_tolerance_ev=tol.energy_tolerance_ev,
        angle_tolerance_deg=tol.angle_tolerance_deg,
    )
    references = None
    species: list[str] = []
    if config.references is not None:
        species, _, spectra = read_reference_csv(config.references, series.energies_ev)
        references = (species, spectra)
    voxel = voxel_size_m(
        series,
        config.registration.reference_energy
        if config.registration.reference_energy < series.shape[0]
        else 0,
    )
    fingerprints = _fingerprints(config, order, files)

    previous: dict[str, dict[str, np.ndarray]] = {}
    old_histories: dict[str, dict[str, np.ndarray]] = {}
    old_units: dict[str, dict[str, str]] = {}
    state: dict[str, Any] = {}
    if resume and not os.path.exists(config.output):
        raise FileNotFoundError(
            f"{config.output}: nothing to resume from (no such file); run without --resume"
        )
    if os.path.exists(config.output) and resume is not False:
        previous, old_histories, old_units, state = _previous(config.output)
        first = state.get(order[0], {}).get("fingerprint")
        if resume and first != fingerprints[order[0]]:
            raise ValueError(
                f"{config.output}: written by a run with other inputs or {order[0]} settings; "
                "rerun with the same inputs and settings, or without --resume to start again"
            )
    if restart_from is not None:
        missing = [
            n
            for n in order[: order.index(restart_from)]
            if n not in previous or not state.get(n, {}).get("complete")
        ]
        if missing:
            raise ValueError(
                f"restart_from={restart_from!r}: {config.output} lacks the completed stage(s) "
                f"{missing}; run them first (or restart from an earlier stage)"
            )

    outputs: dict[str, dict[str, np.ndarray]] = {}
    histories: dict[str, dict[str, np.ndarray]] = {}
    units: dict[str, dict[str, str]] = {}
    record: dict[str, dict[str, Any]] = {}
    seconds: dict[str, float] = {}
    reused: list[str] = []

    def save() -> None:
        _write(config, series, species, voxel, outputs, histories, units, record)

    context = Context(series, outputs, references, progress, log=log, config=config)
    context.checkpoint_every = checkpoint_every
    fresh = False
    for name in order:
        if stop_agreed(stop_requested()):
            raise Interrupted(f"stopped before the {name} stage")
        old = state.get(name, {})
        before_restart = restart_from is not None and order.index(name) < order.index(restart_from)
        same = old.get("fingerprint") == fingerprints[name]
        if (
            name in previous
            and old.get("complete")
            and (before_restart or (same and not fresh and restart_from is None))
        ):
            outputs[name] = previous[name]
            histories[name] = old_histories.get(name, {})
            units[name] = old_units.get(name, {})
            record[name] = dict(old)
            reused.append(name)
            log(f"{name}: taken from {config.output}")
            continue
        fresh = True
        if name in previous and same and not old.get("complete") and restart_from is None:
            outputs[name] = previous[name]  # a partial stage resumes
            log(f"{name}: resuming from {config.output}")
        settings = _settings(config, name)

        def checkpoint(partial: StageOutput, name: str = name, settings: Any = settings) -> None:
            outputs[name], units[name] = partial.arrays, partial.units
            record[name] = {
                "fingerprint": fingerprints[name],
                "complete": False,
                "settings": dataclasses.asdict(settings) if settings else None,
            }
            save()

        context.checkpoint = checkpoint
        t0 = time.perf_counter()
        result = table[name].run(context, settings)
        seconds[name] = time.perf_counter() - t0
        outputs[name], units[name], histories[name] = result.arrays, result.units, result.history
        record[name] = {
            "fingerprint": fingerprints[name],
            "complete": True,
            "seconds": seconds[name],
            "settings": dataclasses.asdict(settings) if settings else None,
        }
        save()
        log(f"{name}: done in {seconds[name]:.1f} s")
        if name == stop_after:
            break
    spectra = None if references is None else references[1]
    result = PipelineResult(outputs, seconds, reused, config.output, species, voxel, spectra)
    if figures:
        from diffptycho.pipeline.figures import pipeline_figures

        pipeline_figures(result, series, os.path.splitext(config.output)[0])
    return result


def _write(config, series, species, voxel, outputs, histories, units, record) -> None:
    from diffptycho.io.results import write_results

    datasets: dict[str, Any] = {
        "energies_ev": np.asarray(series.energies_ev, np.float64),
        "angles_deg": np.asarray(series.angles_deg, np.float64),
        "voxel_size_m": np.float64(voxel),
    }
    unit_map = {"energies_ev": "eV", "angles_deg": "degree", "voxel_size_m": "m"}
    if species:
        datasets["species"] = np.asarray(species, dtype="S")
    for top, sources in PRODUCTS.items():
        for stage, name, unit in sources:  # the first complete source wins (joint first)
            if record.get(stage, {}).get("complete") and name in outputs.get(stage, {}):
                datasets[top] = outputs[stage][name]
                unit_map[top] = unit
                break
    for stage, arrays in outputs.items():
        for name, value in arrays.items():
            datasets[f"stages/{stage}/{name}"] = value
            if name in units.get(stage, {}):
                unit_map[f"stages/{stage}/{name}"] = units[stage][name]
    history = {f"{stage}/{k}": v for stage, h in histories.items() for k, v in h.items()}
    write_results(
        config.output,
        datasets,
        units=unit_map,
        config={"command": "spectrotomo", "pipeline": config.to_dict(), "stages": record},
        history=history,
        timings={k: v["seconds"] for k, v in record.items() if "seconds" in v},
    )
