"""Workflow A end to end on simulated LiFePO4/FePO4 volumes with known truth.

Simulated "reconstructed" OD volumes at 708.2 and 710.2 eV: phantom plates (``lfp_field``) →
per-voxel OD of each end member (calibrated spectra, 6.7 nm voxels) → blur to the study's 11 nm
resolution (Gaussian PSF of 11 nm FWHM) → additive Gaussian noise of σ = ``noise`` × the OD of one
voxel of LiFePO4 at 708.2 eV. Then the study's analysis: 2×2 unmixing, polar-angle histogram fit,
30/70 % phase segmentation, particle segmentation and statistics, compared with the truth. Each
noise level is analysed three ways: the particle mask thresholded at half density and the
concentrations as measured (``smooth 0``); the same with the concentrations smoothed inside the
particles at the resolution scale (``--smooth`` voxels); and the smoothed concentrations inside a
mask thresholded after a total-variation deconvolution of the total density by the known PSF
(``tv``; :mod:`diffptycho.analysis.deconvolution`; thresholding the blur loses the rims of
3-voxel-thick plates).

The noise levels are calibrated by the FSC ½-bit half-period of two independent noise realisations
of a volume (the study measured 11 nm this way); it is printed for each level. A second table
scores the phase segmentation against the width of the mixed band across the plates' fronts
(``mixed_band_m`` of the phantom), from bands narrower than the PSF (the phantom's former
1–2 voxels) to domains several resolution elements across.

Run: ``python experiments/lfp_chemistry.py --out lfp_chem_out`` (≈ 3–4 min on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from scipy import ndimage

from diffptycho.analysis import chem_figures, figures
from diffptycho.analysis import deconvolution as dc
from diffptycho.analysis import particles as pa
from diffptycho.analysis import resolution as rs
from diffptycho.analysis import segmentation as sg
from diffptycho.io.results import write_results
from diffptycho.physics import optics
from diffptycho.physics.spectra import LFP_E1_EV, LFP_E2_EV, lfp_reference_spectra
from diffptycho.recon.chem import lcf
from diffptycho.recon.chem import two_energy as te
from diffptycho.sim.phantoms import lfp_field

VOXEL_M = 6.7e-9
RESOLUTION_M = 11e-9
MASK_LEVEL = 0.5  # half occupied, as the phantom's labels
MIN_VOXELS = 50  # smallest particle kept (the smallest plate has ≈ 390 voxels)
PSF_SIGMA_VOX = RESOLUTION_M / (2 * np.sqrt(2 * np.log(2))) / VOXEL_M
TV_ITERATIONS = 60  # converged to the noise at ≥ 2 % noise (the mask no longer changes)
BAND_STUDY_NM = ((7, 13), (13, 20), (20, 30), (30, 45), (45, 60))  # the first: the former bands


def od_per_voxel(energies_ev, voxel_m=VOXEL_M) -> np.ndarray:
    """OD of one voxel of each pure end member, (energy, species) = 2kβ·voxel."""
    ref = lfp_reference_spectra(energies_ev)
    k = optics.wavenumber(np.asarray(energies_ev, float))
    return np.stack([2 * k * ref[s].imag * voxel_m for s in ("LiFePO4", "FePO4")], axis=1)


def simulate_od(composition, matrix, noise, rng):
    """Blurred (11 nm FWHM) noisy OD volumes (2, z, y, x) at E1, E2."""
    clean = np.einsum("ij,j...->i...", matrix, composition)
    blurred = np.stack([ndimage.gaussian_filter(c, PSF_SIGMA_VOX) for c in clean])
    return blurred + rng.normal(0.0, noise * matrix[0, 0], blurred.shape)


def truth_share(field) -> np.ndarray:
    """True FePO4 share per voxel (NaN where empty)."""
    total = field.composition.sum(0)
    return np.where(total > 0, field.composition[1] / np.where(total > 0, total, 1), np.nan)


def truth_classes(field) -> np.ndarray:
    return sg.phase_classes(1.0 - truth_share(field), field.labels > 0)


def match_particles(pred_labels, truth_labels):
    """One-to-one matches (pred, truth) by largest overlap both ways; merged truth count."""
    pairs, merged = [], 0
    for p in range(1, pred_labels.max() + 1):
        t = truth_labels[pred_labels == p]
        t = t[t > 0]
        if t.size == 0:
            continue
        counts = np.bincount(t)
        merged += int(np.sum(counts >= 0.2 * counts.max()) - 1)
        best = int(np.argmax(counts))
        back = np.bincount(pred_labels[truth_labels == best])
        back[0] = 0
        if int(np.argmax(back)) == p:
            pairs.append((p, best))
    return pairs, merged


def particle_mask(total, method: str) -> tuple[np.ndarray, float]:
    """Occupied voxels from the total concentration; (mask, residual / noise variance).

    ``threshold``: total ≥ half density. ``tv``: the same after deconvolving the total by the
    PSF (box 0–1, TV weight from the estimated noise; the ratio is ≈ 1 when the weight obeys the
    discrepancy principle, NaN for the threshold).
    """
    if method == "threshold":
        return sg.occupied_mask(total, MASK_LEVEL), float("nan")
    d = dc.tv_deconvolve(np.nan_to_num(total), PSF_SIGMA_VOX, n_iter=TV_ITERATIONS)
    return sg.occupied_mask(d.field, MASK_LEVEL), d.residual_ratio


def classify(conc, mask, smooth_vox):
    """Smoothed concentrations, LiFePO4 share and phase classes inside a mask."""
    conc_s = te.smooth_concentrations(conc, mask, smooth_vox)
    frac = np.asarray(te.fraction_first(conc_s))
    return conc_s, frac, sg.phase_classes(frac, mask)


def analyse(od, matrix, smooth_vox, mask_method):
    """Unmix, segment and measure one volume."""
    conc = np.asarray(te.unmix_two_energy(od, matrix))
    mask, resid = particle_mask(conc.sum(0), mask_method)
    conc_s, frac, classes = classify(conc, mask, smooth_vox)
    net = np.einsum("ij,j...->i...", matrix, conc_s)  # OD consistent with the smoothed map
    labels, _ = sg.label_particles(mask, min_voxels=MIN_VOXELS)
    table = pa.particle_properties(labels, conc_s, VOXEL_M, density=conc.sum(0), full_density=1.0)
    return {
        "conc": conc_s,
        "mask": mask,
        "mask_residual": resid,
        "frac": frac,
        "angle": np.where(mask, np.degrees(np.asarray(te.polar_angle(net))), np.nan),
        "classes": classes,
        "labels": labels,
        "table": table,
    }


def phase_dice(fields, classes) -> tuple[dict, dict, float]:
    """Dice per phase class over all voxels, over voxels both call occupied, and of occupancy."""
    cls_t = np.concatenate([truth_classes(f).ravel() for f in fields])
    cls_e = np.concatenate([c.ravel() for c in classes])
    both = (cls_t >= 0) & (cls_e >= 0)
    return (
        sg.dice_per_class(cls_e, cls_t),
        sg.dice_per_class(cls_e[both], cls_t[both]),
        sg.dice(cls_e >= 0, cls_t >= 0),
    )


def score(fields, res, matrix) -> dict:
    """Accuracy of one (noise, smoothing) setting against the truth, pooled over volumes."""
    cat = np.concatenate
    inside = cat([(f.labels > 0).ravel() for f in fields])
    est_mask = cat([r["mask"].ravel() for r in res])
    err = cat(
        [((1 - r["frac"]) - truth_share(f)).ravel() for f, r in zip(fields, res, strict=True)]
    )
    both = inside & est_mask
    conc_err = cat(
        [(r["conc"] - f.composition).reshape(2, -1) for f, r in zip(fields, res, strict=True)], 1
    )
    dice, dice_phase, dice_occ = phase_dice(fields, [r["classes"] for r in res])
    share_t = cat([f.fepo4_fraction for f in fields])
    share_e = cat([r["table"].share_second for r in res])
    thick, share_err, merged = [], [], 0
    for f, r in zip(fields, res, strict=True):
        pairs, mg = match_particles(r["labels"], f.labels)
        merged += mg
        row = {lab: i for i, lab in enumerate(r["table"].label)}
        tab = r["table"]
        thick += [(tab.thickness_m[row[p]] - f.thickness_m[t - 1]) / VOXEL_M for p, t in pairs]
        share_err += [tab.share_second[row[p]] - f.fepo4_fraction[t - 1] for p, t in pairs]
    return {
        "rmse_share": float(np.sqrt(np.mean(err[both] ** 2))),
        "rmse_conc": np.sqrt(np.mean(conc_err[:, inside] ** 2, axis=1)),
        "dice": dice,
        "dice_phase_only": dice_phase,
        "dice_occupied": dice_occ,
        "mask_residual": float(np.mean([r["mask_residual"] for r in res])),
        "fit": te.fit_polar_histogram(cat([r["angle"].ravel() for r in res]), matrix),
        "active": {
            t: (pa.active_fraction(share_t, t), pa.active_fraction(share_e, t))
            for t in (0.15, 0.25)
        },
        "particle_share_rmse": float(np.sqrt(np.mean(np.square(share_err)))),
        "thickness_err_vox": np.asarray(thick),
        "merged": merged,
    }


def fsc_half_period_m(field, matrix, noise) -> float:
    """FSC ½-bit half-period in m of two independent noise realisations of the 708.2 eV volume."""
    rng = np.random.default_rng(99)
    a, b = (simulate_od(field.composition, matrix, noise, rng)[0] for _ in range(2))
    c = rs.crossing(rs.fsc(a, b, window="hann"), voxel_size_m=VOXEL_M)
    return c.half_period_m if c.crossed else float("nan")


def band_study(args, matrix) -> dict:
    """Phase-segmentation Dice against the width of the mixed band (no solid-solution plates).

    The plates and the noise are the same for every band width (the phantom draws geometry and
    chemistry from separate streams), so the total density, hence the particle mask, is too: it
    is computed once per volume and noise level.
    """
    out, masks = {}, {}
    for noise in args.band_noise:
        for lo, hi in BAND_STUDY_NM:
            fields = [
                lfp_field(
                    (args.size,) * 3,
                    VOXEL_M,
                    args.particles,
                    seed=s,
                    mixed_band_m=(lo * 1e-9, hi * 1e-9),
                    solid_solution_fraction=0.0,
                )
                for s in range(args.volumes)
            ]
            rng = np.random.default_rng(1234)
            classes = {0.0: [], args.smooth: []}
            for i, f in enumerate(fields):
                conc = np.asarray(
                    te.unmix_two_energy(simulate_od(f.composition, matrix, noise, rng), matrix)
                )
                total = conc.sum(0)
                if (i, noise) not in masks:
                    masks[i, noise] = (total, particle_mask(total, "tv")[0])
                np.testing.assert_allclose(total, masks[i, noise][0], atol=1e-5)  # float32
                for smooth in classes:
                    classes[smooth].append(classify(conc, masks[i, noise][1], smooth)[2])
            mixed_share = np.mean(
                np.concatenate([(truth_classes(f) == sg.MIXED)[f.labels > 0] for f in fields])
            )
            out[noise, lo, hi] = {
                "mixed_share": float(mixed_share),
                **{smooth: phase_dice(fields, c) for smooth, c in classes.items()},
            }
    return out


def run(args) -> dict:
    os.makedirs(args.out, exist_ok=True)
    m = te.reference_matrix(*od_per_voxel(np.array([LFP_E1_EV, LFP_E2_EV])).T)
    fields = [
        lfp_field((args.size,) * 3, VOXEL_M, args.particles, seed=s) for s in range(args.volumes)
    ]
    analyses = (("threshold", 0.0), ("threshold", args.smooth), ("tv", args.smooth))
    rows, keep, fsc = {}, {}, {}
    for noise in args.noise:
        fsc[noise] = fsc_half_period_m(fields[0], m, noise)
        rng = np.random.default_rng(1234)
        ods = [simulate_od(f.composition, m, noise, rng) for f in fields]
        for method, smooth in analyses:
            t0 = time.perf_counter()
            res = [analyse(od, m, smooth, method) for od in ods]
            key = (noise, method, smooth)
            rows[key] = score(fields, res, m) | {"seconds": time.perf_counter() - t0}
            keep[key] = (ods, res)
    bands = band_study(args, m) if args.band_noise else {}
    return {
        "rows": rows,
        "fields": fields,
        "results": keep,
        "matrix": m,
        "fsc": fsc,
        "bands": bands,
    }


def _dice3(d: dict) -> str:
    return " ".join(f"{d.get(c, np.nan):.3f}" for c in (sg.FIRST_RICH, sg.MIXED, sg.SECOND_RICH))


def report(out, args) -> None:
    m, fields = out["matrix"], out["fields"]
    n = sum(f.n_particles for f in fields)
    kinds = np.concatenate([f.kind for f in fields])
    print(
        f"OD per voxel at (708.2, 710.2) eV: LiFePO4 {m[:, 0].round(4)}, FePO4 {m[:, 1].round(4)}"
    )
    print(
        f"{len(fields)} volumes {args.size}³ × {VOXEL_M * 1e9:.1f} nm, {n} plates "
        f"({', '.join(f'{np.sum(kinds == k)} {k}' for k in np.unique(kinds))}), mixed bands "
        "30–60 nm, PSF 11 nm FWHM"
    )
    print(
        "noise σ (× OD of 1 voxel LiFePO4 at 708.2 eV) → FSC ½-bit half-period of two noise "
        "realisations: "
        + ", ".join(f"{k:.3f} → {v * 1e9:.1f} nm" for k, v in out["fsc"].items() if np.isfinite(v))
    )
    print(
        "noise mask smooth | RMSE share  RMSE c(LFP,FP) | Dice 0/1/2 full  | Dice 0/1/2 "
        "phase-only | occ   (resid/σ²) | centres (σ) °          | f at centres ± err"
    )
    for (noise, method, smooth), r in out["rows"].items():
        fit = r["fit"]
        print(
            f"{noise:5.3f} {method:9s} {smooth:3.1f} | {r['rmse_share']:.3f}       "
            f"{r['rmse_conc'][0]:.3f} {r['rmse_conc'][1]:.3f}   | {_dice3(r['dice'])} | "
            f"{_dice3(r['dice_phase_only'])}      | {r['dice_occupied']:.3f} "
            f"({r['mask_residual']:4.2f})     | "
            f"{fit.centres_deg[0]:.1f} ({fit.sigmas_deg[0]:.1f}) {fit.centres_deg[1]:.1f} "
            f"({fit.sigmas_deg[1]:.1f}) | {fit.fraction_first[0]:.2f}±{fit.fraction_error[0]:.2f} "
            f"{fit.fraction_first[1]:.2f}±{fit.fraction_error[1]:.2f}"
        )
    print(
        "noise mask smooth | active >15 %: truth ± err → est (n) | active >25 %: truth ± err → "
        "est | thickness |Δ|≤1 vox, max |Δ| (vox) | merged | particle share RMSE"
    )
    for (noise, method, smooth), r in out["rows"].items():
        (t15, e15), (t25, e25) = r["active"][0.15], r["active"][0.25]
        dt = r["thickness_err_vox"]
        ok15 = "ok" if abs(e15.fraction - t15.fraction) <= t15.error else "OUT"
        ok25 = "ok" if abs(e25.fraction - t25.fraction) <= t25.error else "OUT"
        print(
            f"{noise:5.3f} {method:9s} {smooth:3.1f} | {t15.fraction:.3f} ± {t15.error:.3f} → "
            f"{e15.fraction:.3f} ({e15.n}) {ok15} | {t25.fraction:.3f} ± {t25.error:.3f} → "
            f"{e25.fraction:.3f} {ok25}"
            f" | {np.mean(np.abs(dt) <= 1):.2f} of {dt.size}, {np.max(np.abs(dt)):.2f}"
            f" | {r['merged']} | {r['particle_share_rmse']:.3f}"
        )
    if out["bands"]:
        print(
            f"Dice vs mixed-band width (front plates only, no solid-solution plates; tv mask; "
            f"PSF FWHM = {RESOLUTION_M / VOXEL_M:.2f} voxels)"
        )
        print(
            f"band nm (voxels)    noise | mixed share | smooth 0: Dice 0/1/2 full / phase-only"
            f"       | smooth {args.smooth}: Dice 0/1/2 full / phase-only"
        )
        for (noise, lo, hi), r in out["bands"].items():
            cells = " | ".join(
                f"{_dice3(r[sm][0])} / {_dice3(r[sm][1])}" for sm in (0.0, args.smooth)
            )
            print(
                f"{lo:2d}–{hi:2d} ({lo * 1e-9 / VOXEL_M:.1f}–{hi * 1e-9 / VOXEL_M:.1f}) "
                f"{noise:5.3f} | {r['mixed_share']:.3f}       | {cells}"
            )


def validate_projection(field, conc, noise_od: float, rng, out_dir: str) -> dict:
    """The projected 3-D chemical map against a 2-D LCF of a full spectrum (beam along z).

    The 2-D stack is the projection of the true composition at 81 energies (700–720 eV), blurred
    to 11 nm and with Gaussian noise ``noise_od`` (OD); LCF weights are projected thicknesses in
    voxels of each end member, as is the z-sum of the 3-D two-energy map.
    """
    energies = np.linspace(700.0, 720.0, 81)
    refs = od_per_voxel(energies).T  # (species, energy), OD per voxel
    sigma_vox = RESOLUTION_M / (2 * np.sqrt(2 * np.log(2))) / VOXEL_M
    proj_true = ndimage.gaussian_filter(field.composition.sum(axis=1), (0, sigma_vox, sigma_vox))
    stack = np.einsum("se,syx->eyx", refs, proj_true)
    stack = stack + rng.normal(0.0, noise_od, stack.shape)
    proj_3d = conc.sum(axis=1)  # (species, y, x) in voxels
    mask = proj_true.sum(0) > 3.0  # at least one plate thickness of material
    fit = lcf.linear_combination_fit(stack, refs, mask=mask)
    w, r = np.asarray(fit.weights), np.asarray(fit.r_factor)
    share_lcf = w[1] / np.where(w.sum(0) > 0, w.sum(0), np.nan)
    share_3d = proj_3d[1] / np.where(proj_3d.sum(0) > 0, proj_3d.sum(0), np.nan)
    ok = mask & np.isfinite(share_lcf) & np.isfinite(share_3d)
    chem_figures.agreement_plot(
        share_lcf,
        share_3d,
        os.path.join(out_dir, "projection_vs_lcf.png"),
        mask=ok,
        labels=("FePO4 share, 2-D LCF (81 energies)", "FePO4 share, projected 3-D map"),
    )
    chem_figures.lcf_maps_plot(
        w, r, ["LiFePO4 (voxels)", "FePO4 (voxels)"], os.path.join(out_dir, "lcf_2d.png")
    )
    return {
        "pixels": int(ok.sum()),
        "pearson_share": float(np.corrcoef(share_lcf[ok], share_3d[ok])[0, 1]),
        "pearson_amount": [float(np.corrcoef(w[s][ok], proj_3d[s][ok])[0, 1]) for s in (0, 1)],
        "rms_share": float(np.sqrt(np.mean((share_lcf - share_3d)[ok] ** 2))),
        "r_factor_percentiles": np.percentile(r[ok], [5, 50, 95]),
    }


def save(out, args) -> None:
    key = (args.nominal, "tv", args.smooth)
    m, field = out["matrix"], out["fields"][0]
    ods, res = out["results"][key]
    od, r0 = ods[0], res[0]
    path = lambda name: os.path.join(args.out, name)  # noqa: E731
    names = ("LiFePO4", "FePO4")
    chem_figures.correlation_plot(
        od[0], od[1], path("correlation.png"), matrix=m, mask=r0["mask"], names=names
    )
    chem_figures.polar_histogram_plot(
        out["rows"][key]["fit"], path("polar_histogram.png"), matrix=m
    )
    z = int(np.argmax((field.labels > 0).sum((1, 2))))
    y = int(np.argmax((field.labels > 0).sum((0, 2))))
    truth = truth_classes(field)
    chem_figures.phase_map_plot(
        {
            f"truth z={z}": truth[z],
            f"estimate z={z}": r0["classes"][z],
            f"truth y={y}": truth[:, y],
            f"estimate y={y}": r0["classes"][:, y],
        },
        path("phases.png"),
        names=("LiFePO4-rich", "mixed", "FePO4-rich"),
        columns=2,
    )
    tables = [r["table"] for r in res]
    fields_ = [f.name for f in pa.ParticleTable.__dataclass_fields__.values()]
    pooled = pa.ParticleTable(*[np.concatenate([getattr(t, f) for t in tables]) for f in fields_])
    chem_figures.activity_plot(pooled, path("activity.png"))
    figures.image_grid(
        {
            "FePO4 share, truth": np.where(field.labels[z] > 0, truth_share(field)[z], np.nan),
            "FePO4 share, estimate": np.where(r0["mask"][z], 1 - r0["frac"][z], np.nan),
        },
        path("share_slices.png"),
        columns=2,
        shared_range=(0, 1),
        cmap="coolwarm",
    )
    val = validate_projection(field, r0["conc"], 0.02, np.random.default_rng(7), args.out)
    print(
        f"projected 3-D map vs 2-D LCF ({val['pixels']} pixels, noise 0.02 OD): FePO4 share "
        f"r = {val['pearson_share']:.3f}, RMS {val['rms_share']:.3f}; projected amounts r = "
        f"{val['pearson_amount'][0]:.3f} (LiFePO4), {val['pearson_amount'][1]:.3f} (FePO4); "
        f"LCF R-factor 5/50/95 % = {np.round(val['r_factor_percentiles'], 4).tolist()}"
    )
    # inputs for `diffptycho chem two-energy od.h5 --references LiFePO4.txt FePO4.txt …`
    write_results(path("od.h5"), {"od": od}, units={"od": "OD per voxel"}, config=vars(args))
    grid = np.linspace(700.0, 720.0, 201)
    per_voxel = od_per_voxel(grid)
    for j, name in enumerate(names):
        np.savetxt(
            path(f"{name}.txt"), np.column_stack([grid, per_voxel[:, j]]), header="eV OD/voxel"
        )
    data = {}
    for (noise, method, smooth), row in out["rows"].items():
        k = f"noise_{noise:.3f}_{method}_smooth_{smooth:.1f}"
        data |= {
            f"{k}/rmse_share": row["rmse_share"],
            f"{k}/rmse_conc": row["rmse_conc"],
            f"{k}/dice": [row["dice"].get(c, np.nan) for c in (0, 1, 2)],
            f"{k}/dice_phase_only": [row["dice_phase_only"].get(c, np.nan) for c in (0, 1, 2)],
            f"{k}/thickness_err_vox": row["thickness_err_vox"],
            **row["fit"].as_datasets(f"{k}/gaussian_fit"),
        }
    for (noise, lo, hi), row in out["bands"].items():
        k = f"band_study/noise_{noise:.3f}_band_{lo}_{hi}_nm"
        for smooth in (0.0, args.smooth):
            full, phase, _ = row[smooth]
            data |= {
                f"{k}/smooth_{smooth:.1f}/dice": [full.get(c, np.nan) for c in (0, 1, 2)],
                f"{k}/smooth_{smooth:.1f}/dice_phase_only": [
                    phase.get(c, np.nan) for c in (0, 1, 2)
                ],
            }
    data |= {"fsc_half_period_m": [out["fsc"][k] for k in args.noise]}
    write_results(path("lfp_chemistry.h5"), data, config=vars(args))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="lfp_chem_out")
    p.add_argument("--size", type=int, default=96, help="volume edge in voxels")
    p.add_argument("--particles", type=int, default=20, help="plates per volume")
    p.add_argument("--volumes", type=int, default=3, help="independent phantom volumes")
    p.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.02, 0.035, 0.05, 0.1])
    p.add_argument("--nominal", type=float, default=0.05, help="noise level of the figures")
    p.add_argument("--smooth", type=float, default=0.7, help="smoothing σ in voxels")
    p.add_argument(
        "--band-noise",
        type=float,
        nargs="*",
        default=[0.0, 0.05],
        help="noise levels of the band-width study (none: skip it)",
    )
    args = p.parse_args(argv)
    if args.nominal not in args.noise:
        args.noise.append(args.nominal)
    out = run(args)
    report(out, args)
    save(out, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
