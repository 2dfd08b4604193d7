"""The V K-edge spectro-ptychography study from diffraction frames, with and without KK.

Simulated frames as a beamline records them (``simulate_vanadium_spectroptycho``: fixed
detector so the object pixel follows λ, exit waves formed ``--oversample`` (4) times finer
than the detector's pixel, so finer than the reconstruction's object grid (``--object-refine``,
2), an unrecorded stage offset per energy, a probe that changes with energy, Poisson noise;
a ``--size``² field (40) of ``--particles`` particles (3) with ``--domains`` domains each
(2), the scan fitted to the field) go
through :func:`~diffptycho.pipeline.spectroptycho.run_spectroptycho` three ways —
per-energy without KK, per-energy with the Kramers–Kronig constraint, and joint — at each
dose; each result goes through the per-pixel XANES fit, descriptors, elbow + k-means of
``experiments/vanadium_xanes.py``. Reported per run: error of μt and φ against the truth, the
error of the stage offsets found (sample against the beam's centroid, ``offset_rms_px``; the
registration's object displacements, ``registration_offset_rms_px``), edge-energy RMS
error, ARI of the clusters against the true domains, N_V-weighted cluster fractions against
the truth, and wall time.

Each reconstruction is analysed after each ``--post`` step of the OD stack
(:mod:`diffptycho.recon.chem.denoise`): ``raw``, ``svd`` (rank from the data), ``smooth``
(Gaussian ``--smooth-px``) and ``smooth+svd``. Besides the metrics over all particle pixels,
``edge_rms_pure_ev`` and ``ari_pure`` count only pixels ≥ 90 % one species (elsewhere the
edge energy and domain of a pixel are mixtures); ``--truth-floor`` adds a row analysing the
noiseless true μt on the grid, the best any reconstruction can score. The truth on the common
grid is box-averaged from the continuous phantom where the lowest energy's beam saw it
(:func:`truth_on_grid`). ``od_error_varying`` is
the RMS of the μt error after removing each pixel's mean over energies (OD units).
``--offset-sigma-px 0`` removes the unrecorded stage offsets, ``--scan fermat`` replaces the
raster by a Fermat spiral, ``--scan-shape`` sets the largest raster (the scan covers the
central ≈ (3·(n − 1) + 16)² reference pixels of the field; a larger ``--size`` needs a larger
raster to be seen whole).

Run from the repository root::

    PYTHONPATH=. python experiments/reproduce_vanadium_2d.py --out vanadium2d_out \\
        [--energies 40] [--doses 1e4 1e5] [--modes nokk kk joint] [--known-probe] \\
        [--fixed-probe] [--post raw svd smooth smooth+svd] [--truth-floor] \\
        [--offset-sigma-px 0.5] [--scan raster] [--object-refine 2] [--oversample 4] \\
        [--size 40] [--particles 3] [--domains 2] [--kk-final-iterations 40] \\
        [--scan-shape 9 9] [--probe-search] [--save-arrays] [--figures]

``--figures`` writes, per dose, run and post-processing, the descriptor maps, the elbow
curve, the cluster maps beside the true domains and the clusters' mean spectra.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
from scipy import ndimage

sys.path.insert(0, os.path.dirname(__file__))

from vanadium_xanes import analyse  # noqa: E402

from diffptycho.io.cxi import read_cxi_truth  # noqa: E402
from diffptycho.physics.optics import atom_densities, wavenumber  # noqa: E402
from diffptycho.physics.spectra import VANADIUM_SPECIES  # noqa: E402
from diffptycho.pipeline import spectroptycho as sp  # noqa: E402
from diffptycho.recon.align.energy import apply_offsets  # noqa: E402
from diffptycho.recon.chem.denoise import smooth_stack, svd_denoise  # noqa: E402
from diffptycho.sim import datasets  # noqa: E402
from diffptycho.sim.phantoms import vanadium_field  # noqa: E402
from diffptycho.sim.spectroptycho import (  # noqa: E402
    SPECTRO_GEOMETRY,
    fit_scan_to,
    simulate_vanadium_spectroptycho,
)
from diffptycho.sim.tiltseries import bin_blocks  # noqa: E402

MODES = {
    "nokk": {"kk": False, "mode": "per-energy"},
    "kk": {"kk": True, "mode": "per-energy"},
    "joint": {"kk": False, "mode": "joint"},
    "joint-spectra": {"kk": False, "mode": "joint"},
    "joint-kk": {"kk": True, "mode": "joint"},
}
"""Runs: ``joint`` fits thickness maps with the true reference spectra; ``joint-spectra`` and
``joint-kk`` fit per-pixel spectra without references (``joint-kk``: per-energy pass with
KK, then the KK penalty in the joint fit)."""
WITH_REFERENCES = ("nokk", "kk", "joint")


def _strings(values) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in np.atleast_1d(values)]


def truth_on_grid(
    truth: dict, shape: tuple[int, int], field=None, centre_px=(0.0, 0.0), sub: int = 4
) -> dict:
    """The truth maps moved onto the common grid (reference energy's pixel and offset).

    The sample of energy e appears displaced by the simulation's ``offsets_px[e]`` (positive
    towards larger indices) in that energy's reconstruction (measured: registering the
    reconstructed phase to the truth recovers it). With the simulation's ``field`` (the
    continuous phantom), each common-grid pixel is the box average of ``sub`` × ``sub``
    samples of the field where the lowest energy's beam saw it, its domain the majority of
    them (a sub-pixel offset mixes no neighbours in); otherwise the binned truth is moved by
    a cubic spline, which mixes each pixel with its neighbours by the sub-pixel offset.
    ``centre_px`` (y, x) is the scan centre the common grid is centred on, in reference
    pixels from the scan origin (the midpoint of the recorded positions).
    """
    off0 = np.asarray(truth["offsets_px"], np.float64)[0]
    species = _strings(truth["species"])
    spectra = np.asarray(truth["spectra"])  # (energy, species)

    def place(a, order=3):
        a = np.asarray(a, np.float64)
        stack = a if a.ndim == 3 else a[None]
        padded = sp._centre_pad(stack, shape)
        out = apply_offsets(padded, np.repeat(-off0[None], len(padded), 0), order=order)
        return out if a.ndim == 3 else out[0]

    if field is None:
        thickness = place(truth["thickness"])
        domain = np.rint(place(truth["domain"].astype(np.float64) + 1.0, order=0)).astype(int) - 1
        mu_t, phase = place(truth["mu_t"]), place(truth["phase"])
    else:
        p0 = float(truth["reference_pixel_size_m"])
        h, w = np.asarray(truth["thickness"]).shape[-2:]
        refine = int(round(p0 / field.pixel_size_m))
        coords = [
            ((np.arange(n * sub) + 0.5) / sub - 0.5 - n // 2 + c - o) * p0
            for n, c, o in zip(shape, centre_px, off0, strict=True)
        ]
        idx = [refine * (c / p0 + m // 2 + 0.5) - 0.5 for c, m in zip(coords, (h, w), strict=True)]
        grid = np.stack(np.meshgrid(*idx, indexing="ij"))
        fine = np.stack(
            [ndimage.map_coordinates(t, grid, order=1, mode="constant") for t in field.thickness]
        )
        dom = ndimage.map_coordinates(
            field.domain.astype(np.float64), grid, order=0, mode="constant", cval=-1.0
        )
        thickness = bin_blocks(fine, sub, (1, 2))
        counts = np.stack([bin_blocks(dom == s, sub, (0, 1)) for s in range(len(species))])
        occupied = bin_blocks(dom >= 0, sub, (0, 1))
        domain = np.where(occupied >= 0.5, np.argmax(counts, axis=0), -1)
        k = wavenumber(np.asarray(truth["energies_ev"], np.float64))[:, None, None]
        mu_t = 2 * k * np.einsum("es,syx->eyx", spectra.imag, thickness)
        phase = -k * np.einsum("es,syx->eyx", spectra.real, thickness)
    n_v_species = np.stack(  # V atoms/m² of each species
        [
            atom_densities(s, VANADIUM_SPECIES[s][0])["V"] * t
            for s, t in zip(species, thickness, strict=True)
        ]
    )
    n_v = n_v_species.sum(0)
    total = thickness.sum(0)
    purity = np.where(total > 0, thickness.max(0) / np.where(total > 0, total, 1.0), 0.0)
    edges = np.array([float(truth[f"descriptors/{s}/edge_ev"]) for s in species])
    return {
        "thickness": thickness,
        "domain": domain,
        "edge_energy_ev": np.where(domain >= 0, edges[np.maximum(domain, 0)], np.nan),
        "n_v": n_v,
        "n_v_species": n_v_species,
        "purity": purity,
        "species": species,
        "spectra": spectra.T,
        "mu_t": mu_t,
        "phase": phase,
    }


POSTS = ("raw", "svd", "smooth", "smooth+svd")
"""Post-processing of the OD stack before the per-pixel fits (``--post``)."""


def postprocess(od: np.ndarray, valid: np.ndarray, post: str, smooth_px: float) -> tuple:
    """The OD stack after ``post`` (see :data:`POSTS`) and the SVD rank kept (0: none)."""
    out, rank = np.where(valid, od, 0.0), 0
    if "smooth" in post:
        out = smooth_stack(out, smooth_px, valid)
    if "svd" in post:
        d = svd_denoise(out, valid)
        out, rank = np.where(valid, d.stack, 0.0), d.rank
    return out, rank


def matched_fractions(
    labels: np.ndarray, fractions: np.ndarray, domain: np.ndarray, n_species: int
) -> np.ndarray:
    """Cluster fractions summed per true species: each cluster counts for the species most
    of its pixels belong to (any number of clusters; a species no cluster matches gets 0).
    """
    out = np.zeros(n_species)
    for j, f in enumerate(np.asarray(fractions, np.float64)):
        counts = [np.sum((labels == j) & (domain == s)) for s in range(n_species)]
        if max(counts) > 0:
            out[int(np.argmax(counts))] += f
    return out


def save_figures(out_dir: str, e, od, a: dict, truth: dict) -> list[str]:
    """Descriptor maps, elbow curve, cluster maps beside the true domains and cluster spectra."""
    from diffptycho.analysis import clustering, xanes_figures

    ca, fit = a["ca"], a["fit"]
    mean_spec, _ = clustering.cluster_mean_spectra(od.astype(np.float32), ca.labels, ca.k)
    normalized = clustering.edge_normalized(od.astype(np.float32), fit.params[0], fit.params[1])
    norm_spec, _ = clustering.cluster_mean_spectra(normalized, ca.labels, ca.k)
    return xanes_figures.save_all(
        out_dir,
        {**a["d"], **a["dens"]},
        ca,
        e,
        mean_spec,
        truth_domain=truth["domain"],
        normalized_spectra=norm_spec,
    )


def analysed(
    e, od, phase, truth, valid, post, smooth_px, truth_edges=None, figures: str | None = None
) -> dict:
    """Per-pixel fit + clustering metrics of one (post-processed) OD stack.

    ``fraction_error``: largest difference between the N_V-weighted fraction of each true
    species and that of the clusters matched to it (:func:`matched_fractions`), for any k
    the elbow picks (a species nearly absent from the field may rightly get no cluster).
    ``fraction_error_unmixed``: the same for the fractions with mixed pixels split between
    the clusters' species (``clustering.unmixed_fractions``) against the true V of each
    species over the particle pixels (a mixed pixel counts for every species it holds).
    ``edge_rms_vs_truth_ev`` (with ``truth_edges``, :func:`fitted_truth_edges`): RMS over
    particle pixels of the difference from the edge the same fit finds on the noiseless true
    OD, which is defined on mixed pixels too (the reconstruction's error alone).
    ``figures``: a directory for :func:`save_figures`, or None.
    """
    masked = {**truth, "domain": np.where(valid, truth["domain"], -1)}
    row = {"post": post, "svd_rank": 0}
    nan = float("nan")
    try:
        od, row["svd_rank"] = postprocess(od, valid, post, smooth_px)
        a = analyse(e, od, phase, masked, lcf=False)
    except ValueError as err:  # no pixel with a usable edge jump at a low dose, none lit
        return {**row, "edge_rms_ev": nan, "ari": nan, "fraction_error": nan, "note": str(err)}
    if figures is not None:
        save_figures(figures, e, od, a, masked)
    true_frac = np.asarray(a["true_frac"])
    matched = matched_fractions(a["ca"].labels, a["ca"].fractions, masked["domain"], true_frac.size)
    # every pixel's V split between the species, against the true per-species V
    true_unmixed = np.asarray(truth["n_v_species"])[:, a["inside"]].sum(axis=1)
    true_unmixed = true_unmixed / true_unmixed.sum()
    unmixed = matched_fractions(
        a["ca"].labels, a["unmixed"].fractions, masked["domain"], true_frac.size
    )
    if truth_edges is not None:
        both = a["valid"] & a["inside"] & np.isfinite(truth_edges)
        diff = (a["d"]["edge_energy_ev"] - truth_edges)[both]
        row["edge_rms_vs_truth_ev"] = float(np.sqrt(np.mean(diff**2))) if diff.size else nan
    return {
        **row,
        "edge_rms_ev": a["rms"],
        "edge_rms_pure_ev": a["rms_pure"],
        "ari": a["ari"],
        "ari_pure": a["ari_pure"],
        "fractions": np.round(a["ca"].fractions, 4).tolist(),
        "matched_fractions": np.round(matched, 4).tolist(),
        "true_fractions": np.round(true_frac, 4).tolist(),
        "fraction_error": float(np.max(np.abs(matched - true_frac))),
        "unmixed_fractions": np.round(a["unmixed"].fractions, 4).tolist(),
        "fraction_error_unmixed": float(np.max(np.abs(unmixed - true_unmixed))),
        "k": int(a["ca"].k),
    }


def fitted_truth_edges(e, truth: dict, valid: np.ndarray) -> np.ndarray | None:
    """Edge energies (eV) the per-pixel fit finds on the noiseless true OD.

    NaN where the fit finds no edge; None when it fits no pixel at all.
    """
    masked = {**truth, "domain": np.where(valid, truth["domain"], -1)}
    od = np.where(valid, truth["mu_t"], 0.0)
    try:
        a = analyse(e, od, truth["phase"], masked, lcf=False)
    except ValueError:
        return None
    return np.where(a["valid"], a["d"]["edge_energy_ev"], np.nan)


def run_one(
    path: str, truth_raw: dict, mode: str, args, field=None, centre_px=(0.0, 0.0)
) -> list[dict]:
    """Reconstruct one file one way, analyse it after each ``args.post``, return the rows.

    ``field`` and ``centre_px``: see :func:`truth_on_grid`.
    """
    settings = sp.SpectroPtychoSettings(
        engine=args.engine,
        iterations=args.iterations,
        kk_rounds=args.kk_rounds,
        kk_iterations=args.kk_iterations,
        kk_relax=args.kk_relax,
        kk_final_iterations=args.kk_final_iterations,
        joint_iterations=args.joint_iterations,
        refine_probe=not args.fixed_probe,
        probe_revisit=args.probe_revisit,
        probe_band=not args.no_probe_band,
        probe_search=args.probe_search,
        object_refine=args.object_refine,
        kk_sigma=args.kk_sigma,
        subpixel=args.subpixel,
        **MODES[mode],
    )
    refs = {s: truth_raw["spectra"][:, i] for i, s in enumerate(_strings(truth_raw["species"]))}
    energies = np.asarray(truth_raw["energies_ev"])
    t0 = time.perf_counter()
    references = (energies, refs) if mode in WITH_REFERENCES else None
    r = sp.run_spectroptycho(path, settings, references=references, log=lambda m: None)
    wall = time.perf_counter() - t0
    truth = truth_on_grid(truth_raw, r.valid_mask.shape, field, centre_px)
    valid = r.valid_mask

    def rel(a, b):
        return float(np.linalg.norm((a - b)[:, valid]) / np.linalg.norm(b[:, valid]))

    true_off = np.asarray(truth_raw["offsets_px"])
    true_rel = true_off - true_off[settings.reference_energy]

    def offset_rms(found: np.ndarray) -> float:  # a common shift of all energies is free
        e = found - true_rel
        return float(np.sqrt(np.mean(np.sum((e - e.mean(0)) ** 2, axis=1))))

    err = (r.optical_density - truth["mu_t"])[:, valid]
    varying = err - err.mean(0)  # the part that differs between energies
    base = {
        "mode": mode,
        "wall_s": wall,
        "valid_px": int(valid.sum()),
        "mu_t_rel_error": rel(r.optical_density, truth["mu_t"]),
        "od_error_varying": float(np.sqrt(np.mean(varying**2))),
        "phase_rel_error": rel(r.phase, truth["phase"]),
        "offset_rms_px": offset_rms(r.offsets_px),
        "registration_offset_rms_px": offset_rms(r.registration_offsets_px),
        "timings": r.timings,
    }
    if args.save_arrays:  # the stacks and the truth, for diagnosis
        np.savez(
            os.path.join(args.out, f"{os.path.basename(path)[:-4]}_{mode}.npz"),
            optical_density=r.optical_density,
            phase=r.phase,
            valid=valid,
            probes=np.asarray(r.probes),
            energies_ev=r.energies_ev,
            **{f"true_{k}": np.asarray(v) for k, v in truth.items() if k != "species"},
        )
    rows = []
    edges = fitted_truth_edges(r.energies_ev, truth, valid)
    for post in args.post:
        figures = None
        if args.figures:
            figures = os.path.join(args.out, f"{os.path.basename(path)[:-4]}_{mode}_{post}")
        row = analysed(
            r.energies_ev,
            r.optical_density,
            r.phase,
            truth,
            valid,
            post,
            args.smooth_px,
            edges,
            figures,
        )
        rows.append({**base, **row})
    if args.truth_floor:  # the noiseless true OD on the grid through the same analysis
        row = analysed(r.energies_ev, truth["mu_t"], truth["phase"], truth, valid, "raw", 0.0)
        nan = float("nan")
        blank = {"mu_t_rel_error": 0.0, "od_error_varying": 0.0, "phase_rel_error": 0.0}
        blank.update(offset_rms_px=nan, registration_offset_rms_px=nan, wall_s=0.0)
        rows.append({**base, **row, **blank, "mode": "truth"})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="vanadium2d_out")
    p.add_argument("--energies", type=int, default=40)
    p.add_argument("--size", type=int, default=40, help="reference-grid field in pixels")
    p.add_argument("--doses", type=float, nargs="+", default=[1e5, 1e6])
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    p.add_argument("--engine", default="raar")
    p.add_argument("--iterations", type=int, default=180)
    p.add_argument("--kk-rounds", type=int, default=4)
    p.add_argument("--kk-iterations", type=int, default=10)
    p.add_argument("--kk-relax", type=float, default=1.0, help="step of each KK projection")
    p.add_argument(
        "--kk-final-iterations", type=int, default=40, help="ptychography after the last KK"
    )
    p.add_argument("--joint-iterations", type=int, default=15)
    p.add_argument("--kk-sigma", type=float, default=0.01, help="joint-kk: KK penalty spread, OD")
    p.add_argument(
        "--object-refine",
        type=int,
        default=2,
        help="object grid this many times finer than the detector's pixel (1: the detector's)",
    )
    p.add_argument(
        "--oversample",
        type=int,
        default=4,
        help="simulation samples per detector-limited pixel (finer than --object-refine)",
    )
    p.add_argument("--known-probe", action="store_true", help="the file holds the true probe")
    p.add_argument("--fixed-probe", action="store_true", help="keep the file's probe")
    p.add_argument(
        "--probe-revisit", type=int, default=4, help="first energies run again backwards"
    )
    p.add_argument(
        "--no-probe-band",
        action="store_true",
        help="let the refined probe's far field leave the detector (object grid finer)",
    )
    p.add_argument(
        "--probe-search",
        action="store_true",
        help="without --known-probe: start from the data's guess at the best-fitting defocus",
    )
    p.add_argument("--max-thickness-nm", type=float, default=1000.0, help="thickest particle")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--particles", type=int, default=3, help="particles of the phantom")
    p.add_argument("--domains", type=int, default=2, help="domains per particle")
    p.add_argument(
        "--offset-sigma-px", type=float, default=0.5, help="unrecorded stage offset per energy"
    )
    p.add_argument(
        "--post", nargs="+", default=["raw"], choices=POSTS, help="OD post-processing, each"
    )
    p.add_argument("--smooth-px", type=float, default=0.5, help="Gaussian σ of 'smooth', px")
    p.add_argument("--scan", default="raster", choices=["raster", "fermat"], help="scan pattern")
    p.add_argument("--truth-floor", action="store_true", help="also analyse the true OD")
    p.add_argument(
        "--save-arrays", action="store_true", help="write each run's stacks and truth (.npz)"
    )
    p.add_argument(
        "--figures",
        action="store_true",
        help="descriptor maps, elbow curve, cluster maps and spectra of every run (PNGs)",
    )
    p.add_argument(
        "--subpixel",
        choices=("bilinear", "fourier"),
        default="bilinear",
        help="sub-pixel positions of the per-energy reconstructions (see SpectroPtychoSettings)",
    )
    p.add_argument(
        "--frame-px",
        type=int,
        default=None,
        help="detector frame side in pixels (default the geometry's 16); with the object pixel "
        "kept, a larger frame is a finer detector pixel and a larger window around the probe",
    )
    p.add_argument(
        "--scan-shape",
        type=int,
        nargs=2,
        default=None,
        metavar=("NY", "NX"),
        help="largest raster (default the geometry's 9 × 9), shrunk to fit --size",
    )
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for dose in args.doses:
        path = os.path.join(args.out, f"vanadium_{dose:.0e}.cxi")
        geometry = SPECTRO_GEOMETRY.__class__(
            **{**SPECTRO_GEOMETRY.__dict__, "photons_per_frame": dose}
        )
        if args.scan_shape is not None:
            geometry = SPECTRO_GEOMETRY.__class__(
                **{**geometry.__dict__, "scan_shape": tuple(args.scan_shape)}
            )
        if args.frame_px is not None:
            geometry = SPECTRO_GEOMETRY.__class__(
                **{**geometry.__dict__, "probe_shape": (args.frame_px, args.frame_px)}
            )
        refine = 2 * args.oversample  # the continuous phantom, 2× finer than the simulation
        field = vanadium_field(
            (refine * args.size, refine * args.size),
            20e-9 / refine,
            args.particles,
            seed=args.seed,
            max_thickness_m=args.max_thickness_nm * 1e-9,
            domains_per_particle=args.domains,
        )
        energies = np.linspace(5420.0, 5540.0, args.energies)
        geometry = fit_scan_to((args.size, args.size), geometry, energies)
        ds = simulate_vanadium_spectroptycho(
            (args.size, args.size),
            energies_ev=energies,
            geometry=geometry,
            seed=args.seed,
            known_probe=args.known_probe,
            field=field,
            offset_sigma_px=args.offset_sigma_px,
            scan=args.scan,
            oversample=args.oversample,
        )
        datasets.write_dataset(path, ds)
        truth = {**read_cxi_truth(path), "energies_ev": ds.energies_ev}
        for mode in args.modes:
            pos = np.asarray(ds.positions_px[0, 0], np.float64)  # lowest energy: reference px
            centre = 0.5 * (pos.min(axis=0) + pos.max(axis=0))
            for row in run_one(path, truth, mode, args, field, centre):
                rows.append({"dose": dose, **row})
                print(json.dumps({k: v for k, v in rows[-1].items() if k != "timings"}), flush=True)
    with open(os.path.join(args.out, "reproduce_vanadium_2d.json"), "w") as f:
        json.dump(rows, f, indent=1)
    keys = [
        ("dose", "{:.0e}"),
        ("mode", "{}"),
        ("post", "{}"),
        ("svd_rank", "{}"),
        ("mu_t_rel_error", "{:.3f}"),
        ("od_error_varying", "{:.4f}"),
        ("phase_rel_error", "{:.3f}"),
        ("offset_rms_px", "{:.3f}"),
        ("registration_offset_rms_px", "{:.3f}"),
        ("edge_rms_ev", "{:.3f}"),
        ("edge_rms_pure_ev", "{:.3f}"),
        ("edge_rms_vs_truth_ev", "{:.3f}"),
        ("ari", "{:.3f}"),
        ("ari_pure", "{:.3f}"),
        ("k", "{}"),
        ("fraction_error", "{:.3f}"),
        ("fraction_error_unmixed", "{:.3f}"),
        ("wall_s", "{:.0f}"),
    ]
    lines = ["| " + " | ".join(k for k, _ in keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        lines.append("| " + " | ".join(f.format(row.get(k, np.nan)) for k, f in keys) + " |")
    table = "\n".join(lines)
    print(table)
    with open(os.path.join(args.out, "reproduce_vanadium_2d.md"), "w") as f:
        f.write(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
