"""The six stages of the staged pipeline, each a function ``(context, settings) → outputs``.

1. :func:`ptychography` — per scan, with probe retrieval from a data-derived start;
2. :func:`projections` — optical density and phase, vacuum level normalised;
3. :func:`registration` — every energy registered to a reference energy, per angle;
4. :func:`alignment` — rotation-axis alignment (rough, then reprojection or joint);
5. :func:`tomography` — OD volume per energy;
6. :func:`chemistry` — composition per voxel from reference spectra.

A stage reads what earlier stages produced from ``context.outputs[name]`` and returns a
:class:`StageOutput` (arrays, units, history); :mod:`diffptycho.pipeline.runner` saves each
output in its own group ``stages/<name>/`` of the results file, so a run restarts from any stage
and a user can swap one stage for a function of their own with the same signature.

Sign conventions. Per-scan alignment parameters ``(shift_y px, shift_x px, rotation rad,
log scale)`` are those of :class:`~diffptycho.models.tomo.TomoProjections`: the measured
projection is the transform applied to the ideal one, so ``shift_px`` is the shift of the
sample found in each scan (positive: to larger row / column indices).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from diffptycho.pipeline.config import (
    AlignmentSettings,
    ChemistrySettings,
    JointSettings,
    ProjectionSettings,
    PtychographySettings,
    RegistrationSettings,
    TomographySettings,
)
from diffptycho.recon.interrupt import Interrupted, stop_agreed, stop_requested

__all__ = [
    "STAGES",
    "Context",
    "Stage",
    "StageOutput",
    "alignment",
    "chemistry",
    "joint",
    "normalise_transmission",
    "projections",
    "ptychography",
    "registration",
    "tomography",
]


@dataclasses.dataclass
class StageOutput:
    """What a stage produced.

    Attributes:
        arrays: ``{name: array}`` saved under ``stages/<stage>/<name>``.
        units: ``{name: unit}`` of those arrays.
        history: ``{name: array}`` traces (e.g. convergence curves), saved with the arrays.
        complete: False while a long stage has only part of its work done (a resumable
            snapshot); the runner then resumes the stage instead of skipping it.
    """

    arrays: dict[str, np.ndarray]
    units: dict[str, str] = dataclasses.field(default_factory=dict)
    history: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    complete: bool = True


@dataclasses.dataclass
class Context:
    """What every stage sees.

    Attributes:
        series: the tilt series (:class:`~diffptycho.io.tiltseries.TiltSeries` or any object
            with ``energies_ev``, ``angles_deg``, ``shape``, ``frame_shapes``, ``scan(e, a)``,
            ``positions_px(e, a)`` and ``object_pixel_size_m(e)``).
        outputs: outputs of the stages run so far, by stage name (arrays only).
        references: ``(species, spectra)`` with spectra (energy, species) δ + iβ at the
            series' energies, or None.
        progress: show progress bars.
        checkpoint: called by long stages with a partial :class:`StageOutput` so that an
            interrupted run resumes (the runner saves it).
        log: prints a line of progress.
        config: the whole :class:`~diffptycho.pipeline.config.PipelineConfig` (for stages that
            need another stage's settings, e.g. the volume shape), or None.
        checkpoint_every: scans between checkpoints of the ptychography stage (0: every
            ~30 s); a stop request (SIGINT/SIGTERM, :mod:`diffptycho.recon.interrupt`) saves
            the scans done and raises :class:`~diffptycho.recon.interrupt.Interrupted`.
    """

    series: Any
    outputs: dict[str, dict[str, np.ndarray]] = dataclasses.field(default_factory=dict)
    references: tuple[list[str], np.ndarray] | None = None
    progress: bool = True
    checkpoint: Callable[[StageOutput], None] = lambda out: None
    log: Callable[[str], None] = print
    config: Any = None
    checkpoint_every: int = 0

    def need(self, stage: str, name: str) -> np.ndarray:
        """An array of an earlier stage, with a clear error if that stage has not run."""
        if stage not in self.outputs or name not in self.outputs[stage]:
            raise ValueError(
                f"stage needs '{stage}/{name}', which is not there: run the '{stage}' stage "
                "first (or restart from it)"
            )
        return self.outputs[stage][name]


# --------------------------------------------------------------------------- 1 ptychography


def centred_positions(series) -> list[list[np.ndarray]]:
    """Every scan's positions in object pixels, centred on the middle of the whole series.

    Instruments write absolute motor positions; one offset (the centre of the bounding box of
    all scans, in m when the geometry is known) is removed from every scan, so relative
    positions between scans — and so the sample's drift — are kept.
    """
    n_e, n_a = series.shape
    raw = [
        [np.asarray(series.positions_px(e, a), np.float64) for a in range(n_a)] for e in range(n_e)
    ]
    sizes = [series.object_pixel_size_m(e) for e in range(n_e)]
    scale = [np.ones(2) if s is None else np.asarray(s) for s in sizes]
    metres = np.concatenate([raw[e][a] * scale[e] for e in range(n_e) for a in range(n_a)])
    centre = 0.5 * (metres.min(axis=0) + metres.max(axis=0))
    return [[raw[e][a] - centre / scale[e] for a in range(n_a)] for e in range(n_e)]


def _engine(settings: PtychographySettings, group_sizes=None):
    return engine_for(
        settings.engine,
        refine_positions=settings.refine_positions,
        batch_size=settings.batch_size,
        loss=settings.loss,
        group_sizes=group_sizes,
        devices=settings.devices,
    )


def engine_for(
    engine: str,
    *,
    refine_probe: bool = True,
    refine_positions: bool = False,
    batch_size: int | None = None,
    loss: str | None = None,
    group_sizes=None,
    devices: int | None = None,
    probe_band=None,
):
    """A ptychography engine of the pipelines (engine defaults where an option is None).

    Args:
        engine: a key of :data:`~diffptycho.recon.ptycho.ENGINES`.
        refine_probe: refine the probe.
        refine_positions: refine the scan positions.
        batch_size: positions per minibatch.
        loss: ``"poisson"`` or ``"amplitude"``.
        group_sizes: scans of a multiscan canvas (position refinement per scan).
        devices: split each minibatch's positions over this many local devices (None or 1:
            one device).
        probe_band: far-field window of the probe
            (:attr:`~diffptycho.recon.ptycho.Refinement.probe_band`), or None.
    """
    from diffptycho.recon.ptycho import PositionRefinement, Refinement
    from diffptycho.recon.ptycho.start import make_engine

    positions = PositionRefinement(group_sizes=group_sizes) if refine_positions else None
    refinement = Refinement(probe=refine_probe, positions=positions, probe_band=probe_band)
    options: dict[str, Any] = {"refinement": refinement}
    if batch_size is not None:
        options["batch_size"] = batch_size
    if loss is not None:
        options["loss"] = loss
    if devices is not None and devices > 1:
        from diffptycho.recon.sharding import position_mesh

        options["mesh"] = position_mesh(int(devices))
    return make_engine(engine, **options)


def _solve(
    model,
    engine,
    frames,
    mask,
    iterations: int,
    progress: bool,
    description: str,
    flagged: list[str] | None = None,
):
    """Run an engine; a divergence keeps the last finite model and is reported, not fatal.

    With ``flagged``, the loss watch's warnings are appended there instead of being logged
    one per scan (the caller reports them once).
    """
    from diffptycho.recon.ptycho.data import ptycho_data
    from diffptycho.recon.solve import DivergenceError, solve
    from diffptycho.recon.watch import LossWatch

    data = ptycho_data(frames, mask)  # in memory, or StreamedFrames left in the file
    watch = LossWatch(label=description, quiet=flagged is not None)
    try:
        model, history = solve(
            model,
            engine,
            data,
            iterations,
            progress=progress,
            description=description,
            watch=watch,
        )
        if flagged is not None:
            flagged.extend(history.warnings)
        return model, np.asarray(history.loss), True
    except DivergenceError as err:
        return err.model, np.asarray(err.history.loss), False


def ptychography(context: Context, settings: PtychographySettings) -> StageOutput:
    """Stage 1: reconstruct every scan's complex transmission, retrieving the probe.

    Returns arrays ``objects`` (E, A, H, W) complex64 (H, W common to all scans; array
    centre = position (0, 0) after centring), ``probes`` (E, A, M, py, px), ``positions_px``
    (E, A, n, 2) (refined when asked; NaN rows pad scans with fewer positions),
    ``final_loss`` (E, A), ``converged`` (E, A) bool (False: the engine diverged and the last
    finite model was kept) and ``done`` (E, A) bool.
    """
    from diffptycho.physics import scan as scans

    series = context.series
    n_e, n_a = series.shape
    positions = centred_positions(series)
    frame_shapes = [tuple(series.frame_shapes[e]) for e in range(n_e)]
    if len(set(frame_shapes)) != 1:
        raise ValueError(
            f"frame shapes differ between energies ({frame_shapes}); crop the frames to one "
            "size so every energy's object shares one grid"
        )
    frame = frame_shapes[0]
    everything = np.concatenate([p for row in positions for p in row])
    field = scans.object_shape_for(everything, frame)
    n_max = max(len(p) for row in positions for p in row)
    modes = settings.probe_modes

    previous = context.outputs.get("ptychography", {})
    if previous and previous["objects"].shape[2:] == field:
        out = {k: np.array(v) for k, v in previous.items()}
    else:
        out = {
            "objects": np.ones((n_e, n_a, *field), np.complex64),
            "probes": np.zeros((n_e, n_a, modes, *frame), np.complex64),
            "positions_px": np.full((n_e, n_a, n_max, 2), np.nan),
            "final_loss": np.full((n_e, n_a), np.nan),
            "converged": np.zeros((n_e, n_a), bool),
            "done": np.zeros((n_e, n_a), bool),
        }
    units = {
        "objects": "1 (complex transmission)",
        "probes": "photons^0.5 per pixel",
        "positions_px": "pixel",
        "final_loss": "per frame",
    }

    def snapshot(complete: bool) -> StageOutput:
        return StageOutput(dict(out), units, complete=complete)

    flagged: list[str] = []
    try:
        _ptychography_scans(context, settings, positions, field, modes, out, snapshot, flagged)
    except Interrupted:
        context.checkpoint(snapshot(False))  # the scans done so far; the current one restarts
        raise
    if flagged:
        context.log(
            f"ptychography: the loss watch flagged {len(flagged)} scan(s), e.g. {flagged[0]} "
            f"(the loss of {settings.engine} need not fall monotonically; compare final_loss "
            "between scans)"
        )
    return snapshot(True)


def _searched_probe(context, settings, scan, positions, field, e: int) -> np.ndarray:
    """The data-derived probe at the defocus the scan fits best (first scan of an energy)."""
    from diffptycho.recon.ptycho.start import describe_defocus_search, probe_by_defocus_search

    probe, table = probe_by_defocus_search(
        scan.data,
        positions,
        field,
        _engine(settings),
        mask=scan.mask,
        probe_modes=settings.probe_modes,
    )
    context.log(f"ptychography: energy {e}: {describe_defocus_search(table)}")
    return probe


def _ptychography_scans(
    context, settings, positions, field, modes, out, snapshot, flagged: list[str]
) -> None:
    """The scan loop of :func:`ptychography`, filling ``out`` and saving as it goes.

    Each energy's first scan retrieves the probe. The others follow as a chain (each started
    from the probe of the scan before it) or, with ``settings.scans_per_step``, all from the
    first scan's probe, that many at a time (:func:`_fanned_out_scans`).
    """
    from diffptycho.models import Ptycho2D
    from diffptycho.recon.ptycho.start import probe_guess, scaled_probe

    series = context.series
    n_e, n_a = series.shape
    saved = {"time": time.perf_counter(), "scans": 0}

    def record(e: int, a: int, model, loss: np.ndarray, ok: bool, last: bool = True) -> None:
        """Store scan (e, a), save every so often; stop when asked, after a group's last."""
        if not ok:
            context.log(f"ptychography: scan (E {e}, θ {a}) diverged; kept its last finite model")
        n = len(positions[e][a])
        out["objects"][e, a] = np.asarray(model.object)
        out["probes"][e, a] = np.asarray(model.probe)
        out["positions_px"][e, a, :n] = np.asarray(model.positions)
        out["final_loss"][e, a] = loss[-1] if loss.size else np.nan
        out["converged"][e, a] = ok
        out["done"][e, a] = True
        saved["scans"] += 1
        every = context.checkpoint_every
        due = saved["scans"] >= every if every else time.perf_counter() - saved["time"] > 30.0
        if due:
            context.checkpoint(snapshot(False))
            saved["time"], saved["scans"] = time.perf_counter(), 0
        if last and stop_agreed(stop_requested()) and not out["done"].all():
            raise Interrupted(f"ptychography: stopped after {int(out['done'].sum())} scans")

    fanned = settings.scans_per_step is not None
    for e in range(n_e):
        if settings.shared_probe:
            if not out["done"][e].all():
                _shared_probe_energy(context, settings, e, positions[e], field, out)
                context.checkpoint(snapshot(False))
            continue
        probe = None
        for a in range(n_a):
            if out["done"][e, a]:
                probe = out["probes"][e, a]
                continue
            if fanned and a > 0:
                break  # the scans after the first: _fanned_out_scans below
            scan = _read_scan(series, e, a, settings.stream)
            first = probe is None
            if first:
                use_file = settings.file_probe and scan.illumination is not None
                if use_file:
                    probe = scan.illumination
                elif settings.probe_search:
                    probe = _searched_probe(context, settings, scan, positions[e][a], field, e)
                else:
                    probe = probe_guess(scan.data, scan.mask)
            start = Ptycho2D(
                jnp.ones(field, jnp.complex64),
                jnp.asarray(scaled_probe(probe, scan.data, scan.mask, modes)),
                jnp.asarray(positions[e][a], jnp.float32),
            )
            iterations = settings.probe_iterations if first else settings.iterations
            model, loss, ok = _solve(
                start,
                _engine(settings),
                scan.data,
                scan.mask,
                iterations,
                context.progress,
                f"ptycho E{series.energies_ev[e]:.1f} θ{series.angles_deg[a]:+.1f}",
                flagged,
            )
            if settings.stream:
                scan.data.close()
            record(e, a, model, loss, ok)
            probe = np.asarray(model.probe)
        if fanned:
            _fanned_out_scans(context, settings, e, positions[e], field, out, record, flagged)


def _scan_groups(scans: list[int], positions, size: int) -> list[list[int]]:
    """``scans`` in groups of at most ``size`` with equal numbers of positions, in order.

    Examples:
        >>> counts = [[0] * n for n in (9, 9, 8, 9, 9, 8)]
        >>> _scan_groups([1, 2, 3, 4, 5], counts, 2)
        [[1, 3], [4], [2, 5]]
    """
    by_count: dict[int, list[int]] = {}
    for a in scans:
        by_count.setdefault(len(positions[a]), []).append(a)
    return [same[i : i + size] for same in by_count.values() for i in range(0, len(same), size)]


def _fanned_out_scans(context, settings, e, positions, field, out, record, flagged) -> None:
    """The scans of energy ``e`` after its first, all from the first scan's probe.

    ``settings.scans_per_step`` of them at a time
    (:func:`~diffptycho.recon.ptycho.scans.solve_scans`; one at a time with
    :func:`~diffptycho.recon.solve.solve` when it is 1), split over ``settings.devices``.
    """
    from diffptycho.models import Ptycho2D
    from diffptycho.recon.ptycho.data import ptycho_data
    from diffptycho.recon.ptycho.scans import scan_mesh, solve_scans
    from diffptycho.recon.ptycho.start import scaled_probe

    series = context.series
    n_a = series.shape[1]
    rest = [a for a in range(1, n_a) if not out["done"][e, a]]
    if not rest:
        return
    seed = out["probes"][e, 0]
    size = settings.scans_per_step
    devices = settings.devices if settings.devices is not None and settings.devices > 1 else None
    engine = engine_for(
        settings.engine,
        refine_positions=settings.refine_positions,
        batch_size=settings.batch_size,
        loss=settings.loss,
        devices=devices if size == 1 else None,  # one at a time: positions over the devices
    )
    mesh = scan_mesh(devices) if devices is not None and size > 1 else None
    for group in _scan_groups(rest, positions, size):
        scans = [series.scan(e, a) for a in group]
        masks = [s.mask for s in scans]
        if any(m is not None for m in masks):  # a scan without a mask: every pixel valid
            frame = scans[0].data.shape[-2:]
            masks = [np.ones(frame, bool) if m is None else m for m in masks]
        starts = [
            Ptycho2D(
                jnp.ones(field, jnp.complex64),
                jnp.asarray(scaled_probe(seed, s.data, m, settings.probe_modes)),
                jnp.asarray(positions[a], jnp.float32),
            )
            for a, s, m in zip(group, scans, masks, strict=True)
        ]
        angles = f"θ{series.angles_deg[group[0]]:+.1f}"
        if size == 1:
            model, loss, ok = _solve(
                starts[0],
                engine,
                scans[0].data,
                masks[0],
                settings.iterations,
                context.progress,
                f"ptycho E{series.energies_ev[e]:.1f} {angles}",
                flagged,
            )
            record(e, group[0], model, loss, ok)
            continue
        if len(group) > 1:
            angles += f"…{series.angles_deg[group[-1]]:+.1f}"
        models, histories = solve_scans(
            starts,
            engine,
            [ptycho_data(s.data, m) for s, m in zip(scans, masks, strict=True)],
            settings.iterations,
            mesh=mesh,
            progress=context.progress,
            description=f"ptycho E{series.energies_ev[e]:.1f} {angles} ({len(group)} scans)",
            quiet=True,
        )
        for a, model, history in zip(group, models, histories, strict=True):
            flagged.extend(history.warnings)
            ok = history.converged
            record(e, a, model, np.asarray(history.loss), ok, last=a == group[-1])


def _read_scan(series, e: int, a: int, stream: bool):
    """Scan (e, a): read whole, or with its frames left in the file (``ptychography.stream``)."""
    if not stream:
        return series.scan(e, a)
    from diffptycho.recon.ptycho.streaming import read_streamed_cxi_entry

    return read_streamed_cxi_entry(*series.refs[e][a])


def _shared_probe_energy(context, settings, e, positions, field, out) -> None:
    """All scans of energy ``e`` at once, one probe (multiscan canvas)."""
    from diffptycho.recon.ptycho import multiscan_model, split_object
    from diffptycho.recon.ptycho.multiscan import split_positions
    from diffptycho.recon.ptycho.start import probe_guess, scaled_probe

    series = context.series
    n_a = series.shape[1]
    scans = [series.scan(e, a) for a in range(n_a)]
    frames = np.concatenate([s.data for s in scans])
    mask = scans[0].mask
    if settings.file_probe and scans[0].illumination is not None:
        start = scans[0].illumination
    elif settings.probe_search:
        start = _searched_probe(context, settings, scans[0], positions[0], field, e)
    else:
        start = probe_guess(frames, mask)
    probe = jnp.asarray(scaled_probe(start, frames, mask, settings.probe_modes))
    objects = [jnp.ones(field, jnp.complex64)] * n_a
    pos = [jnp.asarray(p, jnp.float32) for p in positions]
    model, layout = multiscan_model(objects, probe, pos)
    model, loss, ok = _solve(
        model,
        _engine(settings, layout.counts),
        frames,
        mask,
        settings.probe_iterations,
        context.progress,
        f"ptycho E{series.energies_ev[e]:.1f} (shared probe)",
    )
    for a, (obj, p) in enumerate(
        zip(
            split_object(model.object, layout),
            split_positions(model.positions, layout),
            strict=True,
        )
    ):
        out["objects"][e, a] = np.asarray(obj)
        out["probes"][e, a] = np.asarray(model.probe)
        out["positions_px"][e, a, : len(p)] = np.asarray(p)
    out["final_loss"][e] = loss[-1] if loss.size else np.nan
    out["converged"][e] = ok
    out["done"][e] = True


# --------------------------------------------------------------------------- 2 projections


def normalise_transmission(
    obj: np.ndarray, region: np.ndarray, erosion_px: int = 1, vacuum: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Divide out the vacuum level and phase ramp of a reconstructed transmission.

    A ptychographic object is known up to a complex factor (traded against the probe) and a
    linear phase ramp. The vacuum (empty) region is found from the histogram of the optical
    density relative to the brightest illuminated amplitude: vacuum is its lowest strong peak
    (matter only adds OD), and every pixel within three noise widths of it (the width
    measured on the peak's low side, which sample pixels do not reach) counts as vacuum. The
    region is eroded by ``erosion_px`` so that sample edges stay out. The phase offset and
    ramp are fitted on it and removed, and the amplitude divided by its mean there, so vacuum
    has T = 1.

    Args:
        obj: (H, W) complex transmission.
        region: (H, W) bool, the illuminated pixels.
        erosion_px: erosion of the vacuum region in pixels.
        vacuum: (H, W) bool vacuum pixels to use instead of the histogram's (e.g. found at
            an energy of higher contrast); only its illuminated part is used.

    Returns:
        ``(T, vacuum)``: the normalised transmission (H, W) complex128 and the vacuum mask.

    Raises:
        ValueError: the scan lights fewer than 16 pixels, or no vacuum is left.
    """
    from scipy import ndimage

    from diffptycho.analysis.phase import remove_phase_ramp

    obj = np.asarray(obj, np.complex128)
    region = np.asarray(region, bool)
    if region.sum() < 16:
        raise ValueError(f"the scan lights only {int(region.sum())} pixels; expected ≥ 16")
    if vacuum is not None:
        vacuum = region & np.asarray(vacuum, bool)
        if vacuum.sum() < 16:
            raise ValueError(
                f"the given vacuum has only {int(vacuum.sum())} illuminated pixels; expected ≥ 16"
            )
        flat = remove_phase_ramp(obj, vacuum)
        return flat / np.mean(np.abs(flat[vacuum])), vacuum
    amp = np.abs(obj)
    od0 = -2.0 * np.log(np.maximum(amp, 1e-12) / np.percentile(amp[region], 95))
    vacuum = region & (od0 <= _vacuum_threshold(od0[region]))
    if erosion_px:
        eroded = ndimage.binary_erosion(vacuum, iterations=erosion_px)
        vacuum = eroded if eroded.sum() >= 16 else vacuum
    if vacuum.sum() < 16:
        raise ValueError(
            "no vacuum found in the illuminated field: the scan must include "
            "some empty space around the sample for the OD normalisation"
        )
    flat = remove_phase_ramp(obj, vacuum)
    flat = flat / np.mean(np.abs(flat[vacuum]))
    return flat, vacuum


def _vacuum_threshold(values: np.ndarray, min_peak_fraction: float = 0.3) -> float:
    """Upper OD of vacuum: the histogram's lowest strong peak plus three one-sided widths.

    Vacuum is the lowest-OD population (matter only adds OD), not necessarily the largest: a
    thin, even sample that covers more of the field than the empty space around it makes the
    dominant peak. The lowest local maximum of the smoothed histogram holding at least
    ``min_peak_fraction`` of the highest one is taken; lower, weaker maxima are noise in the
    tail.
    """
    lo, hi = np.percentile(values, [0.5, 99.5])
    if hi - lo < 1e-9:
        return float(hi)
    counts, edges = np.histogram(values, bins=64, range=(lo, hi))
    counts = np.convolve(counts, np.ones(3) / 3, mode="same")
    padded = np.concatenate([[-1.0], counts, [-1.0]])
    maxima = (counts >= padded[:-2]) & (counts >= padded[2:])
    strong = np.flatnonzero(maxima & (counts >= min_peak_fraction * counts.max()))
    top = int(strong[0])
    peak = 0.5 * (edges[top] + edges[top + 1])
    below = values[values <= peak]
    width = np.sqrt(np.mean((below - peak) ** 2)) if below.size > 8 else (hi - lo) / 64
    return float(peak + 3.0 * max(width, (hi - lo) / 256))


def projections(context: Context, settings: ProjectionSettings) -> StageOutput:
    """Stage 2: OD −ln|T|² and phase k∫δ dz = −arg T of every scan, vacuum normalised.

    Returns ``optical_density`` and ``phase`` (E, A, H, W) (zero outside the illuminated
    region, phase unwrapped with its ramp and vacuum offset removed), ``illuminated`` and
    ``vacuum`` masks (E, A, H, W).
    """
    from diffptycho.analysis.phase import unwrap_phase
    from diffptycho.recon.ptycho.metrics import illuminated_region

    objects = context.need("ptychography", "objects")
    probes = context.need("ptychography", "probes")
    positions = context.need("ptychography", "positions_px")
    n_e, n_a, h, w = objects.shape
    od = np.zeros((n_e, n_a, h, w), np.float32)
    phase = np.zeros_like(od)
    lit = np.zeros(od.shape, bool)
    vac = np.zeros(od.shape, bool)
    for e in range(n_e):
        for a in range(n_a):
            pos = positions[e, a][np.all(np.isfinite(positions[e, a]), axis=1)]
            region = np.asarray(
                illuminated_region(
                    jnp.asarray(probes[e, a]),
                    jnp.asarray(pos, jnp.float32),
                    (h, w),
                    settings.illumination_threshold,
                )
            )
            try:
                t, vacuum = normalise_transmission(
                    objects[e, a], region, settings.vacuum_erosion_px
                )
            except ValueError as err:
                raise ValueError(f"projections: scan (energy {e}, angle {a}): {err}") from None
            wrapped = np.angle(t)
            phi = unwrap_phase(wrapped, region) if settings.unwrap else wrapped
            phi = -(phi - np.mean(phi[vacuum]))
            od[e, a] = np.where(region, -2.0 * np.log(np.maximum(np.abs(t), 1e-6)), 0.0)
            phase[e, a] = np.where(region, phi, 0.0)
            lit[e, a], vac[e, a] = region, vacuum
    return StageOutput(
        {"optical_density": od, "phase": phase, "illuminated": lit, "vacuum": vac},
        {"optical_density": "1", "phase": "rad"},
    )


# --------------------------------------------------------------------------- 3 registration


def energy_log_scales(series, reference: int) -> np.ndarray:
    """(E,) log magnification of each energy's object grid against the reference energy's.

    A fixed detector makes the object pixel λz/(N p) follow the wavelength: a feature of size L
    covers L/p_e pixels at energy e, so energy e's image is the reference image magnified by
    p_ref/p_e. Zero for pixel-unit data.
    """
    sizes = [series.object_pixel_size_m(e) for e in range(series.shape[0])]
    if sizes[reference] is None:
        return np.zeros(len(sizes))
    ref = float(np.mean(sizes[reference]))
    return np.asarray([np.log(ref / float(np.mean(s))) for s in sizes])


def _resample(images: np.ndarray, params: np.ndarray, order: int = 3) -> np.ndarray:
    """Undo per-image similarity transforms (the ``dealign`` of the tomography operators).

    Cubic-spline resampling (:func:`~diffptycho.recon.align.registration.resample_similarity`
    of the inverse transforms): the bilinear interpolation of the differentiable operators blurs
    a projection shifted by half a pixel as much as a pixel-wide boxcar, which costs the volume
    resolution we are aligning for.

    Args:
        images: (n, y, x) images (measured projections).
        params: (n, 4) similarity parameters of the transforms to undo (see
            :mod:`diffptycho.physics.alignment`).
        order: spline order.

    Returns:
        (n, y, x) float32 images on the ideal (aligned) grid, zero where the source is outside.
    """
    from diffptycho.recon.align.registration import resample_similarity
    from diffptycho.recon.tomo.operators import inverse_alignment

    inverse = np.asarray(inverse_alignment(jnp.asarray(np.asarray(params, np.float64))))
    return np.stack(
        [
            resample_similarity(image, q, order=order, mode="grid-constant").astype(np.float32)
            for image, q in zip(np.asarray(images), inverse, strict=True)
        ]
    )


def registration(context: Context, settings: RegistrationSettings) -> StageOutput:
    """Stage 3: sub-pixel offset of every energy's projection from the reference energy's.

    Each energy's image is first brought to the reference energy's pixel size, then registered
    by upsampled cross-correlation (:func:`~diffptycho.recon.align.registration.
    register_translation`) on the signal of the settings (phase by default, see
    :class:`~diffptycho.pipeline.config.RegistrationSettings` for why), weighted by the region
    lit in both scans.

    Returns ``offsets_px`` (E, A, 2): the (y, x) shift of energy e's sample from the reference
    energy's in scan a (zero for the reference), and ``log_scale`` (E,).
    """
    from diffptycho.recon.align.registration import register_translation

    signal = context.need("projections", "optical_density" if settings.signal == "od" else "phase")
    lit = context.need("projections", "illuminated")
    n_e, n_a = signal.shape[:2]
    ref = settings.reference_energy
    if ref >= n_e:
        raise ValueError(f"registration.reference_energy = {ref}: the series has {n_e} energies")
    log_scale = energy_log_scales(context.series, ref)
    offsets = np.zeros((n_e, n_a, 2))
    if settings.enabled:
        for e in range(n_e):
            if e == ref:
                continue
            unscale = np.zeros((n_a, 4))
            unscale[:, 3] = log_scale[e]
            moving = _resample(signal[e], unscale)
            both = np.clip(_resample(lit[e].astype(np.float32), unscale, order=1), 0, 1) * lit[ref]
            for a in range(n_a):
                offsets[e, a] = register_translation(
                    signal[ref, a], moving[a], weights=both[a], upsample=settings.upsample
                )
    return StageOutput({"offsets_px": offsets, "log_scale": log_scale}, {"offsets_px": "pixel"})


# --------------------------------------------------------------------------- 4 alignment


def scan_parameters(
    angle_params: np.ndarray, offsets_px: np.ndarray, log_scale: np.ndarray
) -> np.ndarray:
    """Compose per-angle alignment with per-energy offsets and scales into (E, A, 4).

    The measured projection of energy e is S_e(T_off(A_a(P f))): A_a the angle's similarity
    transform (on the reference grid), T_off the energy's registration offset, S_e the energy's
    magnification about the centre. With A_a(r) = s R r + t_a this is
    r ↦ m s R r + m (t_a + off), one similarity transform per scan.
    """
    m = np.exp(log_scale)[:, None, None]
    out = np.empty((*offsets_px.shape[:2], 4))
    out[..., :2] = m * (angle_params[None, :, :2] + offsets_px)
    out[..., 2] = angle_params[None, :, 2]
    out[..., 3] = angle_params[None, :, 3] + log_scale[:, None]
    return out


def _rough_align(*args, **kwargs):
    from diffptycho.recon.align.rough import rough_align

    return rough_align(*args, **kwargs)


def _reprojection_align(*args, **kwargs):
    from diffptycho.recon.align.reprojection import reprojection_align

    return reprojection_align(*args, **kwargs)


def _joint_align(*args, **kwargs):
    from diffptycho.recon.align.gradient import joint_align

    return joint_align(*args, **kwargs)


def alignment(context: Context, settings: AlignmentSettings) -> StageOutput:
    """Stage 4: rotation-axis alignment of the tilt series.

    The signal (the mean over energies of the registered OD by default) is aligned by
    :func:`~diffptycho.recon.align.rough.rough_align` and then, per the settings, by
    :func:`~diffptycho.recon.align.reprojection.reprojection_align` or
    :func:`~diffptycho.recon.align.gradient.joint_align`.

    Returns ``angle_params`` (A, 4) of the reference grid, ``params`` (E, A, 4) per scan
    (see :func:`scan_parameters`), ``shift_px`` (E, A, 2) and convergence history.
    """
    key = "optical_density" if settings.signal == "od" else "phase"
    signal = context.need("projections", key)
    offsets = context.need("registration", "offsets_px")
    log_scale = context.need("registration", "log_scale")
    n_e, n_a = signal.shape[:2]
    angles = np.deg2rad(np.asarray(context.series.angles_deg, np.float64))
    zero = np.zeros((n_a, 4))
    stack = np.mean(
        [_resample(signal[e], scan_parameters(zero, offsets, log_scale)[e]) for e in range(n_e)],
        axis=0,
    )
    history: dict[str, np.ndarray] = {}
    params = np.zeros((n_a, 4))
    if settings.method != "none":
        rough = _rough_align(stack, angles)
        params = np.asarray(rough.params, np.float64)
    if settings.method == "reprojection":
        result = _reprojection_align(
            stack,
            angles,
            initial=params,
            loop_iterations=settings.tomo_iterations,
            max_loops=settings.max_loops,
            tolerance_px=settings.tolerance_px,
            fit="similarity" if settings.similarity else "shift",
            refine_steps=settings.refine_steps,
        )
        params = np.asarray(result.params, np.float64)
        history = {k: np.asarray(v) for k, v in result.history.items()}
    elif settings.method == "joint":
        result = _joint_align(
            stack,
            angles,
            initial=params,
            steps=30 * settings.max_loops,
            fit="similarity" if settings.similarity else "shift",
        )
        params = np.asarray(result.params, np.float64)
        history = {k: np.asarray(v) for k, v in result.history.items()}
    per_scan = scan_parameters(params, offsets, log_scale)
    return StageOutput(
        {"angle_params": params, "params": per_scan, "shift_px": per_scan[..., :2]},
        {"shift_px": "pixel"},
        history,
    )


# --------------------------------------------------------------------------- 5 tomography


def _crop(images: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Centre crop keeping the centre pixel (n // 2) where it is."""
    (h, w), (ny, nx) = images.shape[-2:], shape
    if ny > h or nx > w:
        raise ValueError(f"tomography.volume_shape: {shape} is larger than the field {(h, w)}")
    y0, x0 = h // 2 - ny // 2, w // 2 - nx // 2
    return images[..., y0 : y0 + ny, x0 : x0 + nx]


def tomography(context: Context, settings: TomographySettings) -> StageOutput:
    """Stage 5: OD volume per energy from the aligned OD projections.

    Every scan's alignment is undone on the whole field (one resampling), the field is cropped
    to the volume's (y, x) and each energy is reconstructed with the chosen algorithm. Pixels
    of the volume's field that a scan did not illuminate (a sample that drifted out of the
    scanned area) are not data: they are filled with the reprojection of a first
    reconstruction and the volume is reconstructed again.

    Returns ``od_volumes`` (E, z, y, x) in OD per voxel and ``aligned_projections``
    (E, A, y, x).
    """
    volumes, aligned, loss = energy_volumes(context, settings, "optical_density")
    history = {f"loss_energy_{e}": v for e, v in enumerate(loss) if v.size}
    return StageOutput(
        {"od_volumes": volumes, "aligned_projections": aligned.astype(np.float32)},
        {"od_volumes": "1 per voxel"},
        history,
    )


def energy_volumes(
    context: Context, settings: TomographySettings, quantity: str = "optical_density"
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """One volume per energy from the aligned projections of ``quantity`` (see :func:`tomography`).

    Args:
        context: with the ``projections`` and ``alignment`` stages' outputs.
        settings: algorithm, iterations, relaxation and volume shape.
        quantity: ``"optical_density"`` (OD per voxel, reconstructed non-negative unless the
            algorithm is linear) or ``"phase"`` (k∫δ dz: phase per voxel in rad).

    Returns:
        ``(volumes (E, z, y, x), aligned projections (E, A, y, x), loss per energy)``.
    """
    from diffptycho.physics.tomography import project
    from diffptycho.recon.tomo.reconstruct import reconstruct

    stack = context.need("projections", quantity)
    lit = context.need("projections", "illuminated")
    params = context.need("alignment", "params")
    n_e, n_a, h, w = stack.shape
    nz, ny, nx = settings.volume_shape or (w, h, w)
    angles = np.deg2rad(np.asarray(context.series.angles_deg, np.float64))
    aligned = np.stack([_crop(_resample(stack[e], params[e]), (ny, nx)) for e in range(n_e)])
    measured = np.stack(
        [
            _crop(_resample(lit[e].astype(np.float32), params[e], order=1), (ny, nx)) > 0.5
            for e in range(n_e)
        ]
    )
    nonnegative = quantity == "optical_density" and settings.algorithm not in ("cgls", "fbp")
    mesh = None
    if settings.devices is not None and settings.devices > 1:
        from diffptycho.recon.tomo.sharding import tomo_mesh

        mesh = tomo_mesh(int(settings.devices))
    volumes = np.empty((n_e, nz, ny, nx), np.float32)
    loss = []
    for e in range(n_e):
        data = aligned[e]
        # a scan whose sample drifted past the scanned field measured only part of it: fill
        # the unmeasured pixels with the reprojection of a first reconstruction, then redo
        passes = 2 if not measured[e].all() else 1
        for _ in range(passes):
            result = reconstruct(
                data,
                angles,
                settings.algorithm,
                settings.iterations,
                shape=(nz, nx),
                relaxation=settings.relaxation,
                nonnegative=nonnegative,
                progress=context.progress,
                mesh=mesh,
            )
            if passes == 2:
                reprojected = np.asarray(
                    project(jnp.asarray(result.volume, jnp.float32), jnp.asarray(angles))
                )
                data = np.where(measured[e], aligned[e], reprojected)
        volumes[e] = np.asarray(result.volume)
        loss.append(np.asarray(result.loss).reshape(-1))
    return volumes, aligned, loss


# --------------------------------------------------------------------------- 6 chemistry


def reference_od_per_voxel(
    spectra: np.ndarray, energies_ev: np.ndarray, voxel_size_m: float
) -> np.ndarray:
    """OD of one voxel full of each species at each energy: I[i, j] = 2 k_i β_j(E_i) Δ.

    Args:
        spectra: δ + iβ (energy, species) per unit volume fraction.
        energies_ev: photon energies in eV.
        voxel_size_m: voxel edge in m.

    Returns:
        (energy, species) matrix.
    """
    from diffptycho.physics import optics

    k = np.asarray(optics.wavenumber(np.asarray(energies_ev, dtype=np.float64)))
    return 2.0 * k[:, None] * np.imag(np.asarray(spectra)) * voxel_size_m


def voxel_size_m(series, reference: int = 0) -> float:
    """Voxel edge (m): the object pixel of the reference energy (1 for pixel-unit data)."""
    size = series.object_pixel_size_m(reference)
    return 1.0 if size is None else float(np.mean(size))


def grid_voxel_m(context: Context) -> float:
    """Voxel edge (m) of the volumes: the object pixel of the energy the others were brought to.

    That energy is the one the registration left unscaled; without a registration stage it is
    the configured reference energy (0 without a configuration).
    """
    if "registration" in context.outputs:
        reference = int(np.argmin(np.abs(context.outputs["registration"]["log_scale"])))
    elif context.config is not None:
        reference = min(context.config.registration.reference_energy, context.series.shape[0] - 1)
    else:
        reference = 0
    return voxel_size_m(context.series, reference)


def chemistry(context: Context, settings: ChemistrySettings) -> StageOutput:
    """Stage 6: volume fractions of each species per voxel.

    Two energies and two species: exact 2×2 unmixing
    (:func:`~diffptycho.recon.chem.two_energy.unmix_two_energy`); otherwise non-negative linear
    combination fitting of the OD spectrum of each voxel
    (:func:`~diffptycho.recon.chem.lcf.linear_combination_fit`).

    Returns ``composition`` (species, z, y, x) and the ``reference_matrix`` (energy, species)
    in OD per voxel.
    """
    if context.references is None:
        raise ValueError("chemistry needs reference spectra: give --references REFS.csv")
    _, spectra = context.references
    volumes = context.need("tomography", "od_volumes")
    composition, matrix = unmix_od_volumes(
        volumes, spectra, context.series.energies_ev, grid_voxel_m(context), settings.method
    )
    return StageOutput(
        {"composition": composition, "reference_matrix": matrix},
        {"composition": "volume fraction", "reference_matrix": "OD per voxel"},
    )


def unmix_od_volumes(
    volumes: np.ndarray,
    spectra: np.ndarray,
    energies_ev: np.ndarray,
    voxel_size_m: float,
    method: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """Volume fractions from OD volumes: 2×2 unmixing or non-negative LCF (see :func:`chemistry`).

    Args:
        volumes: (energy, z, y, x) optical density per voxel.
        spectra: (energy, species) δ + iβ of the pure species.
        energies_ev: (energy,) in eV.
        voxel_size_m: voxel edge in m.
        method: ``"auto"`` (two-energy for 2 × 2, else LCF), ``"two-energy"`` or ``"lcf"``.

    Returns:
        ``(composition (species, z, y, x) float32, reference matrix (energy, species))``, the
        latter in OD per voxel.
    """
    from diffptycho.recon.chem.lcf import linear_combination_fit
    from diffptycho.recon.chem.two_energy import check_reference_matrix, unmix_two_energy

    matrix = reference_od_per_voxel(spectra, energies_ev, voxel_size_m)
    if method == "auto":
        method = "two-energy" if matrix.shape == (2, 2) else "lcf"
    if method == "two-energy":
        if matrix.shape != (2, 2):
            raise ValueError(
                f"chemistry.method = 'two-energy' needs 2 energies and 2 species; the data have "
                f"{matrix.shape[0]} energies and the references {matrix.shape[1]} species"
            )
        composition = np.asarray(
            unmix_two_energy(jnp.asarray(volumes), check_reference_matrix(matrix))
        )
    else:
        composition = np.asarray(
            linear_combination_fit(jnp.asarray(volumes), jnp.asarray(matrix.T)).weights
        )
    return composition.astype(np.float32), matrix


# --------------------------------------------------------------------------- 7 joint


def joint(context: Context, settings: JointSettings) -> StageOutput:
    """The joint stage: composition or per-energy volumes fitted to every diffraction frame.

    Started from the staged result (``settings.start == "staged"``) or from scratch
    (:func:`~diffptycho.pipeline.joint_start.blank_joint_model`), then
    :func:`~diffptycho.recon.joint.joint_reconstruct`.

    ``settings.model == "composition"`` fits the species' volume fractions through the
    reference spectra. ``"volumes"`` fits one complex volume per energy
    (:class:`~diffptycho.recon.joint.VolumeBasis`): from the staged start its OD volumes
    and phase volumes reconstructed from the staged phase projections with the tomography
    settings; its units are the OD and phase per voxel of the densest reference species, or
    without references a high percentile of the staged volumes (staged start) or 1/n_x per
    voxel (a projected OD and phase of about 1 across the field; blank start).

    Returns ``composition`` (species, z, y, x) (volumes: unmixed from the joint OD volumes
    as :func:`chemistry` does, when there are references), ``od_volumes`` and
    ``phase_volumes`` (E, z, y, x) per voxel (volumes model), ``probes`` (E, M, py, px),
    ``positions_px`` (E, A, n, 2), ``alignment`` (A, 4), ``shift_px`` (E, A, 2) (the per-scan
    sample shifts implied by the refined positions and alignment, relative to the start's
    nominal positions), and the loss history.

    Checkpoints: every ``context.checkpoint_every`` steps (``--checkpoint-every``) and on
    SIGINT/SIGTERM the run's state goes into the results file as a partial stage
    (``stages/joint/resume/…``: :func:`~diffptycho.recon.joint.snapshot_arrays`); rerunning
    the same command continues from it and ends where the uninterrupted run would.
    """
    from diffptycho.pipeline import joint_start
    from diffptycho.recon.joint import VolumeBasis, joint_reconstruct, support_from_volumes

    series = context.series
    voxel = grid_voxel_m(context)
    energies = np.asarray(series.energies_ev, np.float64)
    shape = None if context.config is None else context.config.tomography.volume_shape
    basis = None
    if settings.model == "composition":
        if context.references is None:
            raise ValueError(
                "the joint stage needs reference spectra: give --references REFS.csv (or fit "
                "per-energy volumes: --joint-model volumes)"
            )
        _, spectra = context.references
        if settings.start == "staged":
            start = joint_start.joint_model_from_outputs(context.outputs, series, spectra, voxel)
        else:
            start = joint_start.blank_joint_model(series, spectra, voxel, shape)
    elif settings.start == "staged":
        od = context.need("tomography", "od_volumes")
        tomo = TomographySettings() if context.config is None else context.config.tomography
        phase, _, _ = energy_volumes(context, tomo, "phase")
        if context.references is not None:
            basis = VolumeBasis.from_references(context.references[1], energies, voxel)
        else:
            basis = VolumeBasis.from_volumes(od, phase, energies, voxel)
        start = joint_start.joint_model_from_outputs(
            context.outputs,
            series,
            basis.spectra(),
            voxel,
            composition=basis.to_composition(np.maximum(od, 0.0), phase),
        )
    else:
        if context.references is not None:
            basis = VolumeBasis.from_references(context.references[1], energies, voxel)
        else:
            nx = shape[2] if shape else max(series.frame_shapes[0])
            basis = VolumeBasis(energies, voxel, 1.0 / nx, 1.0 / nx)
        start = joint_start.blank_joint_model(series, basis.spectra(), voxel, shape)
    frames = joint_start.all_frames(series)
    previous = context.outputs.get("joint", {})
    resume = {k[7:]: v for k, v in previous.items() if k.startswith("resume/")} or None
    if resume is not None:
        context.log(f"joint: resuming after step {int(resume['iteration'])}")

    def checkpoint(arrays: dict[str, np.ndarray]) -> None:
        # a partial stage: the runner saves it, and a rerun continues from it
        context.checkpoint(StageOutput({f"resume/{k}": v for k, v in arrays.items()}, {}))

    every = context.checkpoint_every
    support = None
    if settings.support == "staged":
        support = support_from_volumes(context.need("tomography", "od_volumes"))
    model, history = joint_reconstruct(
        start,
        frames,
        settings.iterations,
        refine=settings.refine,
        solver=settings.solver,
        learning_rate=settings.learning_rate,
        angles_per_batch=settings.angles_per_batch,
        energies_per_batch=settings.energies_per_batch,
        loss=settings.loss,
        progress=context.progress,
        tv_weight=settings.tv_weight,
        constraint="simplex" if basis is None else basis.constraint,
        checkpoint=checkpoint,
        checkpoint_every=every,
        resume=resume,
        support=support,
        coarse_levels=settings.coarse_levels,
    )
    nominal = np.stack([np.stack(row) for row in centred_positions(series)])
    moved = nominal - np.asarray(model.positions, np.float64)  # probe −s ≡ sample +s
    shift = moved.mean(axis=2) + np.asarray(model.alignment, np.float64)[None, :, :2]
    arrays = {
        "probes": np.asarray(model.probe),
        "positions_px": np.asarray(model.positions, np.float64),
        "alignment": np.asarray(model.alignment, np.float64),
        "shift_px": shift,
    }
    units = {"positions_px": "pixel", "shift_px": "pixel"}
    if basis is None:
        arrays["composition"] = np.asarray(model.composition, np.float32)
        units["composition"] = "volume fraction"
    else:
        od, phase = basis.split(model.composition)
        arrays["od_volumes"] = od.astype(np.float32)
        arrays["phase_volumes"] = phase.astype(np.float32)
        units.update(od_volumes="1 per voxel", phase_volumes="rad per voxel")
        if context.references is not None:
            method = "auto" if context.config is None else context.config.chemistry.method
            arrays["composition"], _ = unmix_od_volumes(
                od, context.references[1], energies, voxel, method
            )
            units["composition"] = "volume fraction"
    return StageOutput(arrays, units, {"loss": np.asarray(history.loss)})


@dataclasses.dataclass(frozen=True)
class Stage:
    """One step of the pipeline: its name, its function and the stages it reads.

    Attributes:
        name: the stage's name (its group in the results file and its TOML section).
        run: ``(context, settings) → StageOutput``.
        requires: stages whose outputs it reads.
    """

    name: str
    run: Callable[[Context, Any], StageOutput]
    requires: tuple[str, ...] = ()


STAGES: Mapping[str, Stage] = {
    s.name: s
    for s in (
        Stage("ptychography", ptychography),
        Stage("projections", projections, ("ptychography",)),
        Stage("registration", registration, ("projections",)),
        Stage("alignment", alignment, ("projections", "registration")),
        Stage("tomography", tomography, ("projections", "alignment")),
        Stage("chemistry", chemistry, ("tomography",)),
        Stage("joint", joint),
    )
}
"""The default stages, in order."""
