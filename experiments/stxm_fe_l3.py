"""Real data: Fe L3-edge STXM stack (ALS 11.0.2.2), both chemistry methods and their agreement.

1. Read the ``.hdr``/``.xim`` stack and ``i0.xsp`` → OD = −ln(I/I0), (123, 125, 125), 80 nm pixels.
2. Pre-edge subtraction (700–705.5 eV) of the stack and of the Fe²⁺ (``reduced.r``) and Fe³⁺
   (``oxidized.r``) references, so that non-resonant absorption by other matter and thickness
   offsets drop out; pixels with an Fe L3 edge jump below ``--jump`` are masked.
3. Full-spectrum non-negative linear combination fit (123 energies): weights, R-factor map.
4. Two-energy method at 708.2/710.2 eV: 2×2 unmixing with the references' ODs, polar angle,
   two-Gaussian histogram fit, 30/70 % phase classes.
5. Agreement of the two Fe²⁺-share maps (Pearson r, slope, RMS difference, phase-class agreement)
   and the R-factor distribution; k-means clustering of the stack (PCA of edge-normalised spectra,
   k by the elbow) when ``diffptycho.analysis.clustering`` is available.

Run: ``python experiments/stxm_fe_l3.py --out stxm_out`` (≈ 30 s).
"""

from __future__ import annotations

import argparse
import os
import time

import jax

jax.config.update("jax_enable_x64", True)  # a script: float64 for the normal equations

import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

from diffptycho.analysis import chem_figures, figures  # noqa: E402
from diffptycho.analysis import segmentation as sg  # noqa: E402
from diffptycho.io import stxm  # noqa: E402
from diffptycho.io.results import write_results  # noqa: E402
from diffptycho.recon.chem import lcf  # noqa: E402
from diffptycho.recon.chem import two_energy as te  # noqa: E402

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "stxm_fe_l3")
E1, E2 = 708.2, 710.2
PRE_EDGE_EV = (700.0, 705.5)
WHITE_LINE_EV = (707.5, 711.0)


def at_energy(stack, energies, e):
    """Linear interpolation of a stack (energy, …) at energy ``e`` (eV)."""
    k = int(np.clip(np.searchsorted(energies, e), 1, len(energies) - 1))
    t = (e - energies[k - 1]) / (energies[k] - energies[k - 1])
    return (1 - t) * stack[k - 1] + t * stack[k]


def pearson(a, b) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def cluster_stack(net, jump, mask, share_lcf, share_2e):
    """PCA + elbow + k-means of the edge-normalised spectra (the other workflow's tools)."""
    try:
        from diffptycho.analysis import clustering
    except ImportError:
        print("clustering: diffptycho.analysis.clustering not available, skipped")
        return None
    x = (net[:, mask] / jump[mask]).T
    p = clustering.pca(x, 4)
    ks, inertias = clustering.elbow_curve(p.scores[:, :3], 8)
    k = clustering.elbow_k(ks, inertias)
    km = clustering.kmeans(p.scores[:, :3], k)
    labels = np.full(mask.shape, -1, dtype=np.int32)
    labels[mask] = km.labels
    mean, std = clustering.cluster_mean_spectra(net / np.where(mask, jump, 1.0), labels, k)
    rows = [
        (
            j,
            int(np.sum(km.labels == j)),
            np.median(share_lcf[labels == j]),
            np.median(share_2e[labels == j]),
        )
        for j in range(k)
    ]
    return {
        "labels": labels,
        "k": k,
        "ks": ks,
        "inertias": inertias,
        "mean": mean,
        "std": std,
        "pca_ratio": p.explained_variance_ratio,
        "rows": rows,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=DATA, help="folder with 71214078.hdr, i0.xsp, *.r")
    p.add_argument("--out", default="stxm_out")
    p.add_argument("--jump", type=float, default=0.1, help="smallest Fe L3 edge jump (OD)")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    path = lambda name: os.path.join(args.out, name)  # noqa: E731
    d = args.data

    t0 = time.perf_counter()
    st = stxm.read_stxm_stack(os.path.join(d, "71214078.hdr"), os.path.join(d, "i0.xsp"))
    od, e = st.od, st.energies_ev
    names = ("reduced", "oxidized")
    refs = np.stack([stxm.reference_on_grid(os.path.join(d, f"{n}.r"), e) for n in names])
    t_read = time.perf_counter() - t0
    pre = (e >= PRE_EDGE_EV[0]) & (e <= PRE_EDGE_EV[1])
    od_pre = od[pre].mean(0)
    net = od - od_pre
    rnet = refs - refs[:, pre].mean(1, keepdims=True)
    wl = (e >= WHITE_LINE_EV[0]) & (e <= WHITE_LINE_EV[1])
    jump = net[wl].mean(0)
    blank = od.mean(0) <= np.percentile(od.mean(0), 5)
    mask = jump > args.jump
    print(f"stack {od.shape} read in {t_read:.1f} s; pixel {st.pixel_size_m[0] * 1e9:.0f} nm")
    print(
        f"blank-region OD {od[:, blank].mean():.3f} (flat within "
        f"{np.ptp(od[:, blank].mean(1)):.3f});"
        f" edge-jump noise {jump[blank].std():.4f} OD; {int(mask.sum())} Fe pixels (jump > "
        f"{args.jump})"
    )

    # --- full-spectrum LCF on the pre-edge-subtracted spectra
    t1 = time.perf_counter()
    fit = lcf.linear_combination_fit(net, rnet, mask=mask)
    w, r = np.asarray(fit.weights), np.asarray(fit.r_factor)
    t_lcf = time.perf_counter() - t1
    fit_off = lcf.linear_combination_fit(od, refs, mask=mask, offset=True)
    r_off = np.asarray(fit_off.r_factor)
    share_lcf = np.where(mask, w[0] / np.where(w.sum(0) > 0, w.sum(0), np.nan), np.nan)
    share_off = np.asarray(fit_off.fractions())[0]
    rm = r[mask]
    print(f"LCF: {int(mask.sum())} pixels × {e.size} energies in {t_lcf:.2f} s (incl. JIT)")
    print(
        "R-factor (pre-edge-subtracted): median {:.4f}, 5/25/75/95 % {:.4f}/{:.4f}/{:.4f}/{:.4f};"
        " < 0.02: {:.0%}, < 0.05: {:.0%}, < 0.1: {:.0%}".format(
            np.median(rm),
            *np.percentile(rm, [5, 25, 75, 95]),
            np.mean(rm < 0.02),
            np.mean(rm < 0.05),
            np.mean(rm < 0.1),
        )
    )
    print(
        f"R-factor (raw OD, free offset): median {np.median(r_off[mask]):.2e}; Fe²⁺ share "
        f"agrees with the pre-edge fit: r = {pearson(share_lcf[mask], share_off[mask]):.3f}"
    )

    # --- two-energy polar-angle method at 708.2/710.2 eV, pre-edge subtracted
    od2 = np.stack([at_energy(net, e, E1), at_energy(net, e, E2)])
    ref2 = np.stack([at_energy(rnet.T, e, E1), at_energy(rnet.T, e, E2)])  # (energy, member)
    m = te.reference_matrix(ref2[:, 0], ref2[:, 1])
    conc = np.asarray(te.unmix_two_energy(od2, m))
    share_2e = np.where(mask, np.asarray(te.fraction_first(conc)), np.nan)
    angle = np.where(mask, np.degrees(np.asarray(te.polar_angle(od2))), np.nan)
    hist = te.fit_polar_histogram(angle, m)
    smooth2 = np.stack([ndimage.gaussian_filter(o, 1.0) for o in od2])
    share_2e_s = np.where(
        mask, np.asarray(te.fraction_first(te.unmix_two_energy(smooth2, m))), np.nan
    )
    ref_angles = np.degrees(np.arctan2(m[1], m[0]))
    print(
        f"two-energy: reference polar angles {ref_angles[0]:.2f}° (Fe²⁺) / {ref_angles[1]:.2f}° "
        f"(Fe³⁺), condition {np.linalg.cond(m):.1f}; histogram centres "
        f"{hist.centres_deg[0]:.2f}° ± {hist.sigmas_deg[0]:.2f}° / {hist.centres_deg[1]:.2f}° ± "
        f"{hist.sigmas_deg[1]:.2f}° → Fe²⁺ share {hist.fraction_first[0]:.2f} ± "
        f"{hist.fraction_error[0]:.2f} / {hist.fraction_first[1]:.2f} ± "
        f"{hist.fraction_error[1]:.2f}"
    )

    # --- agreement
    ok = mask & np.isfinite(share_lcf) & np.isfinite(share_2e)
    a, b = share_lcf[ok], share_2e[ok]
    slope, icpt = np.polyfit(a, b, 1)
    cls_lcf, cls_2e = sg.phase_classes(share_lcf, mask), sg.phase_classes(share_2e, mask)
    strong = ok & (jump > 0.4)
    agree = {
        "pearson_share": pearson(a, b),
        "pearson_share_smoothed": pearson(a, share_2e_s[ok]),
        "pearson_share_strong": pearson(share_lcf[strong], share_2e[strong]),
        "pearson_fe2": pearson(w[0][ok], conc[0][ok]),
        "pearson_fe3": pearson(w[1][ok], conc[1][ok]),
        "slope": slope,
        "intercept": icpt,
        "rms_difference": float(np.sqrt(np.mean((a - b) ** 2))),
        "class_agreement": float(np.mean(cls_lcf[ok] == cls_2e[ok])),
    }
    print(
        "agreement of the Fe²⁺ share maps (LCF vs two-energy): Pearson r = {pearson_share:.3f} "
        "({pearson_share_smoothed:.3f} with 1-pixel smoothing of the two ODs, "
        "{pearson_share_strong:.3f} where the edge jump > 0.4); concentrations r = "
        "{pearson_fe2:.3f} (Fe²⁺), {pearson_fe3:.3f} (Fe³⁺); two-energy = {slope:.2f} × LCF + "
        "{intercept:.2f}; RMS difference {rms_difference:.3f}; same 30/70 % class in "
        "{class_agreement:.0%} of pixels".format(**agree)
    )

    clusters = cluster_stack(net, jump, mask, share_lcf, share_2e)
    if clusters is not None:
        print(
            f"clustering: PCA variance {clusters['pca_ratio'].round(3)}, elbow k = "
            f"{clusters['k']}; per cluster (pixels, median Fe²⁺ share LCF / two-energy): "
            + "; ".join(f"{j}: {n}, {s1:.2f} / {s2:.2f}" for j, n, s1, s2 in clusters["rows"])
        )

    # --- figures and results
    i1 = int(np.argmin(np.abs(e - E1)))
    i2 = int(np.argmin(np.abs(e - E2)))
    figs = [
        figures.image_grid(
            {
                f"OD {e[i1]:.2f} eV": od[i1],
                f"OD {e[i2]:.2f} eV": od[i2],
                "Fe L3 edge jump": jump,
                "mask": mask.astype(float),
            },
            path("overview.png"),
            columns=4,
        ),
        chem_figures.lcf_maps_plot(
            w,
            r,
            ["Fe²⁺ (reduced)", "Fe³⁺ (oxidized)"],
            path("lcf_maps.png"),
            title="LCF, pre-edge subtracted",
        ),
        chem_figures.agreement_plot(
            share_lcf,
            share_2e,
            path("agreement.png"),
            mask=mask,
            labels=("Fe²⁺ share, LCF (123 energies)", "Fe²⁺ share, two-energy (708.2/710.2 eV)"),
        ),
        chem_figures.correlation_plot(
            od2[0],
            od2[1],
            path("correlation.png"),
            matrix=m,
            mask=mask,
            names=("Fe²⁺", "Fe³⁺"),
            energies_ev=(E1, E2),
        ),
        chem_figures.polar_histogram_plot(hist, path("polar_histogram.png"), matrix=m),
        chem_figures.phase_map_plot(
            {"LCF": cls_lcf, "two-energy": cls_2e},
            path("phases.png"),
            names=("Fe²⁺-rich", "mixed", "Fe³⁺-rich"),
            columns=2,
        ),
    ]
    strong_r = np.where(mask & (jump > 0.4), r, np.nan)
    best = tuple(int(v) for v in np.unravel_index(np.nanargmin(strong_r), r.shape))
    typical = tuple(
        int(v)
        for v in np.unravel_index(np.nanargmin(np.abs(strong_r - np.nanmedian(strong_r))), r.shape)
    )
    fitted = np.asarray(fit.fit)
    figs.append(
        chem_figures.spectra_plot(
            e,
            {
                "reference Fe²⁺": rnet[0],
                "reference Fe³⁺": rnet[1],
                f"pixel {best} (R = {r[best]:.3f})": net[:, best[0], best[1]],
                f"fit {best}": fitted[:, best[0], best[1]],
                f"pixel {typical} (R = {r[typical]:.3f})": net[:, typical[0], typical[1]],
                f"fit {typical}": fitted[:, typical[0], typical[1]],
            },
            path("spectra.png"),
            markers_ev=(E1, E2),
            ylabel="OD − pre-edge",
        )
    )
    data = {
        "od": od,
        "energies_ev": e,
        "mask": mask,
        "edge_jump": jump,
        "weights": w,
        "r_factor": r,
        "fraction_lcf": share_lcf,
        "fraction_two_energy": share_2e,
        "polar_angle_deg": angle,
        "phase_class_lcf": cls_lcf,
        "phase_class_two_energy": cls_2e,
        "reference_matrix": m,
        **hist.as_datasets("gaussian_fit"),
        **{f"agreement/{k}": v for k, v in agree.items()},
    }
    if clusters is not None:
        figs.append(
            figures.image_grid(
                {f"k-means, k = {clusters['k']}": clusters["labels"]},
                path("clusters.png"),
                columns=1,
                cmap="tab10",
            )
        )
        figs.append(
            chem_figures.spectra_plot(
                e,
                {f"cluster {j}": clusters["mean"][j] for j in range(clusters["k"])},
                path("cluster_spectra.png"),
                bands={f"cluster {j}": clusters["std"][j] for j in range(clusters["k"])},
                markers_ev=(E1, E2),
                ylabel="(OD − pre-edge) / edge jump",
            )
        )
        data |= {
            "clusters/labels": clusters["labels"],
            "clusters/mean_spectra": clusters["mean"],
            "clusters/ks": clusters["ks"],
            "clusters/inertias": clusters["inertias"],
        }
    units = {"od": "OD", "energies_ev": "eV", "r_factor": "1", "polar_angle_deg": "deg"}
    write_results(
        path("stxm_fe_l3.h5"),
        data,
        units=units,
        config=vars(args),
        timings={"read_s": t_read, "lcf_s": t_lcf},
    )
    print("figures:", ", ".join(os.path.basename(f) for f in figs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
