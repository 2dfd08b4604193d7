"""``diffptycho chem xanes-fit`` and ``diffptycho chem cluster``: the XANES workflow (B).

``xanes-fit STACK --output OUT.h5`` fits every pixel of an absorption stack and writes the
descriptor maps, the projected absorber density and, with a phase stack, the electron density
and electrons per absorber atom. ``cluster OUT.h5 [--k K | --elbow]`` adds k-means cluster maps
(k by the elbow method unless given), cluster fractions, mean spectra and PCA, to a new file or
atomically to the same one. :mod:`diffptycho.cli.chem` mounts both under ``chem``.

Input STACK: HDF5 with ``od`` or ``mu_t`` (energy, y, x) optical density, ``energies_ev``
(energy,) in eV and optionally ``phase`` (energy, y, x) in rad.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from diffptycho.cli.ptycho import nonnegative_float, positive_int, unit_interval

__all__ = ["add_parsers", "cmd_cluster", "cmd_xanes_fit", "read_stack"]


def add_parsers(chem_subparsers) -> None:
    """Add ``xanes-fit`` and ``cluster`` to the ``chem`` sub-command parsers (sets ``func``)."""
    p = chem_subparsers.add_parser(
        "xanes-fit",
        help="fit erf edge + 2 Lorentzians per pixel; write descriptor maps",
        description="Per-pixel XANES fit (Levenberg-Marquardt, vectorised over pixels). Writes "
        "edge jump, edge energy, pre-edge intensity and PE/jump maps (NaN where jump < noise), "
        "the projected absorber density and, with a phase stack, the electron density.",
    )
    p.add_argument("stack", help="HDF5 with od or mu_t (energy, y, x) and energies_ev [, phase]")
    p.add_argument("--output", "-o", required=True, help="results HDF5 to write")
    p.add_argument("--element", default="V", help="absorbing element (default V)")
    p.add_argument("--edge", default="K", help="absorption edge (default K)")
    p.add_argument("--edge-range", nargs=2, type=float, metavar=("LO", "HI"), help="b2 bounds, eV")
    p.add_argument(
        "--pre-edge-range", nargs=2, type=float, metavar=("LO", "HI"), help="c12 bounds, eV"
    )
    p.add_argument("--max-steps", type=positive_int, default=100, help="LM steps per pixel at most")
    p.add_argument("--batch-size", type=positive_int, default=2048, help="pixels solved together")
    p.add_argument("--figures", metavar="DIR", help="write PNG descriptor maps into DIR")
    p.set_defaults(func=cmd_xanes_fit)

    c = chem_subparsers.add_parser(
        "cluster",
        help="k-means of XANES descriptors (elbow method); add cluster maps to the results",
        description="Clusters the descriptor maps written by xanes-fit with k-means "
        "(k-means++ and restarts); k from the elbow of the inertia curve unless --k is given.",
    )
    c.add_argument("results", help="results HDF5 written by xanes-fit")
    how = c.add_mutually_exclusive_group()
    how.add_argument("--k", type=positive_int, help="number of clusters")
    how.add_argument("--elbow", action="store_true", help="choose k by the elbow (default)")
    c.add_argument("--k-max", type=positive_int, default=8, help="largest k of the elbow curve")
    c.add_argument(
        "--features",
        nargs="+",
        default=["edge_energy_ev", "pre_edge_ratio"],
        help="descriptors to cluster on",
    )
    c.add_argument("--min-snr", type=float, default=5.0, help="cluster pixels with jump ≥ this·σ")
    c.add_argument(
        "--weighting",
        choices=["snr2", "none"],
        default="snr2",
        help="k-means weight per pixel: (jump/σ)², the inverse descriptor variance (default), "
        "or none",
    )
    c.add_argument(
        "--assignment",
        choices=["noise-aware", "nearest"],
        default="noise-aware",
        help="final labels: refined with a per-pixel noise model of each descriptor, variance "
        "a + b/(jump/σ)², fitted to the data (default), or the nearest k-means centre",
    )
    c.add_argument(
        "--min-stability",
        type=unit_interval,
        default=0.9,
        help="with the elbow and noise-aware labels: step k down from the elbow's while the "
        "partition's median ARI under resampled descriptor noise is below this (default 0.9; "
        "0 keeps the elbow's k; 17 x --n-init k-means runs per k tried)",
    )
    c.add_argument(
        "--min-mixing-chi2",
        type=nonnegative_float,
        default=10.0,
        help="cluster_unmixed_fractions: split a pixel between the species only where the "
        "mixture fits its normalised spectrum better than its own cluster's by more than "
        "this χ² (default 10; 0 splits every pixel that any mixture fits better)",
    )
    c.add_argument("--output", "-o", help="write here instead of updating RESULTS in place")
    c.add_argument("--figures", metavar="DIR", help="write PNG figures into DIR")
    c.add_argument("--n-init", type=positive_int, default=10, help="k-means restarts")
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(func=cmd_cluster)


def read_stack(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Read an absorption stack (and optional phase) from HDF5.

    Args:
        path: HDF5 file with ``od`` or ``mu_t`` (energy, y, x), ``energies_ev`` (energy,) in eV
            and optionally ``phase`` (energy, y, x) in rad.

    Returns:
        ``(mu_t, energies_ev, phase or None)``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not HDF5, or a dataset is missing, of the wrong dtype or shape, non-finite
            or all zero, or energies not in eV (see
            :func:`~diffptycho.io.od_stack.read_spectral_stack`).
    """
    from diffptycho.io.od_stack import read_spectral_stack

    stack = read_spectral_stack(path)
    return stack.od, stack.energies_ev, stack.phase


def _check_range(option: str, bounds, energies_ev: np.ndarray, path: str) -> None:
    """An energy window from the command line: eV, increasing, inside the stack's energies."""
    from diffptycho.io.energies import check_energies_ev

    lo, hi = check_energies_ev(bounds, option)
    first, last = float(energies_ev.min()), float(energies_ev.max())
    if not lo < hi:
        raise ValueError(f"{option} {lo:g} {hi:g}: expected LO < HI in eV")
    if hi < first or lo > last:
        raise ValueError(
            f"{option} {lo:g}–{hi:g} eV lies outside the energies of {path} ('energies_ev' "
            f"{first:g}–{last:g} eV); give the window in eV within that range"
        )


def cmd_xanes_fit(args: argparse.Namespace) -> int:
    """``diffptycho chem xanes-fit``: fit, descriptors, densities → results HDF5 (+ PNGs)."""
    import dataclasses

    import jax

    from diffptycho.io.results import check_output_path, write_results
    from diffptycho.recon.chem import densities
    from diffptycho.recon.chem.xanes import default_windows, fit_xanes

    check_output_path(args.output)
    mu_t, e, phase = read_stack(args.stack)
    for option, given in (
        ("--edge-range", args.edge_range),
        ("--pre-edge-range", args.pre_edge_range),
    ):
        if given:
            _check_range(option, given, e, args.stack)
    windows = default_windows(e, mu_t.reshape(e.size, -1).T)
    if args.edge_range:
        windows = dataclasses.replace(windows, edge_ev=tuple(args.edge_range))
    if args.pre_edge_range:
        windows = dataclasses.replace(windows, pre_edge_ev=tuple(args.pre_edge_range))
    t0 = time.perf_counter()
    fit = fit_xanes(
        mu_t.astype(np.float32),
        e,
        windows,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
    )
    jax.block_until_ready(fit.params)
    t_fit = time.perf_counter() - t0
    d = fit.descriptors()
    pre = e < windows.pre_edge_max_ev
    dens = densities.density_maps(
        d["edge_jump"],
        d["edge_energy_ev"],
        None if phase is None else phase[pre],
        e[pre],
        element=args.element,
        edge=args.edge,
    )
    out = {
        **d,
        **dens,
        "valid": np.asarray(fit.valid),
        "converged": np.asarray(fit.converged),
        "noise_sigma": np.asarray(fit.noise_sigma),
        "residual_rms": np.asarray(fit.residual_rms),
        "params": np.asarray(fit.params),
        "mu_t": mu_t,
        "energies_ev": e,
    }
    if phase is not None:
        e_tab, _ = densities.absorber_edge_jump(args.element, args.edge)
        shift = float(np.nanmedian(d["edge_energy_ev"])) - e_tab if fit.valid.any() else 0.0
        for name, value in densities.candidate_ratios(e[pre], edge_shift_ev=shift).items():
            out[f"theory/electrons_per_absorber/{name}"] = np.asarray(value)
    units = {
        "edge_jump": "1 (optical density)",
        "edge_energy_ev": "eV",
        "edge_width_ev": "eV",
        "pre_edge_intensity": "eV (optical density x eV)",
        "pre_edge_ratio": "eV",
        "pre_edge_energy_ev": "eV",
        "pre_edge_fwhm_ev": "eV",
        "main_peak_energy_ev": "eV",
        "main_peak_fwhm_ev": "eV",
        "n_absorber": "atoms/m^2",
        "noise_sigma": "1 (optical density)",
        "residual_rms": "1 (optical density)",
        "mu_t": "1 (optical density)",
        "energies_ev": "eV",
    }
    if phase is not None:
        units.update({"n_electron": "electrons/m^2", "electrons_per_absorber": "electrons/atom"})
    config = {
        "command": "chem xanes-fit",
        "stack": os.path.abspath(args.stack),
        "element": args.element,
        "edge": args.edge,
        "windows": dataclasses.asdict(windows),
        "max_steps": args.max_steps,
        "parameter_order": "a b1 b2 b3 c11 c12 c13 c21 c22 c23",
    }
    write_results(args.output, out, units=units, config=config, timings={"fit_s": t_fit})
    if args.figures:
        from diffptycho.analysis import xanes_figures

        xanes_figures.save_all(args.figures, {**d, **dens}, None)
    n = fit.valid.size
    print(
        f"fitted {n} pixels × {e.size} energies in {t_fit:.1f} s: {int(fit.valid.sum())} valid "
        f"(jump ≥ σ), {int(np.asarray(fit.converged).sum())} converged; wrote {args.output}"
    )
    return 0


def cmd_cluster(args: argparse.Namespace) -> int:
    """``diffptycho chem cluster``: k-means (+ elbow) of descriptors, PCA → results HDF5."""
    from diffptycho.analysis import clustering
    from diffptycho.io.results import check_output_path, read_results, write_results

    check_output_path(args.output or args.results)
    res = read_results(args.results)
    units, prov = res.pop("units"), res.pop("provenance")
    res.pop("history")
    needed = [*args.features, "edge_jump", "noise_sigma"]
    missing = [n for n in needed if n not in res]
    if missing:
        raise ValueError(
            f"{args.results}: missing dataset(s) {missing}; run 'diffptycho chem xanes-fit' "
            "first, or choose --features among its descriptors"
        )
    snr = res["edge_jump"] / res["noise_sigma"]
    strong = snr >= args.min_snr
    aware = args.assignment == "noise-aware"
    weights = res.get("n_absorber")
    stability = args.min_stability if aware and args.k is None and args.min_stability else None
    ca = clustering.cluster_descriptors(
        {f: res[f] for f in args.features},
        args.features,
        k=args.k,
        k_max=args.k_max,
        weights=weights,
        mask=strong,
        sample_weight=np.where(strong, snr, 0.0) ** 2 if args.weighting == "snr2" else None,
        snr=np.where(strong, np.maximum(snr, 1e-3), 1.0) if aware else None,  # 1e-3: no weight
        min_stability=stability,
        n_init=args.n_init,
        seed=args.seed,
    )
    new = {
        "cluster_labels": ca.labels,
        "cluster_centers": ca.centers,
        "cluster_fractions": ca.fractions,
        "cluster_pixel_fractions": clustering.cluster_fractions(ca.labels, ca.k),
        "elbow/k": ca.ks,
        "elbow/inertia": ca.inertias,
        "elbow/stability_k": np.array(sorted(ca.stability), dtype=np.int64),
        "elbow/stability": np.array([ca.stability[k] for k in sorted(ca.stability)]),
    }
    mean = norm = None
    if "mu_t" in res:
        mean, std = clustering.cluster_mean_spectra(res["mu_t"], ca.labels, ca.k)
        new.update(cluster_mean_spectra=mean, cluster_std_spectra=std)
        if "params" in res:
            normalized = clustering.edge_normalized(res["mu_t"], res["params"][0], res["params"][1])
            norm, _ = clustering.cluster_mean_spectra(normalized, ca.labels, ca.k)
            new.update(cluster_mean_spectra_normalized=norm)
            split = clustering.unmixed_fractions(  # mixed pixels shared between the species
                res["mu_t"],
                ca.labels,
                ca.k,
                res["params"][0],
                res["params"][1],
                np.ones(ca.labels.shape) if weights is None else weights,
                snr=snr,
                min_mixing_chi2=args.min_mixing_chi2,
            )
            new.update(
                cluster_unmixed_fractions=split.fractions,
                cluster_shares=split.shares,
                cluster_endmembers=split.endmembers,
            )
        pcs = clustering.pca(res["mu_t"][:, ca.labels >= 0].T, min(5, res["mu_t"].shape[0]))
        new.update(
            {
                "pca/components": pcs.components,
                "pca/explained_variance_ratio": pcs.explained_variance_ratio,
            }
        )
    res.update(new)
    units = {
        **units,
        "cluster_mean_spectra": "1 (optical density)",
        "cluster_endmembers": "1 (edge-normalised optical density)",
    }
    units = {k: v for k, v in units.items() if k in res}
    config = {
        "previous": prov.get("config", {}),
        "cluster": {
            "features": list(args.features),
            "k": ca.k,
            "elbow": args.k is None,
            "k_max": args.k_max,
            "min_snr": args.min_snr,
            "weighting": args.weighting,
            "assignment": args.assignment,
            "min_stability": stability,
            "min_mixing_chi2": args.min_mixing_chi2,
            "seed": args.seed,
            "weights": "n_absorber" if weights is not None else "pixels",
        },
    }
    output = args.output or args.results
    write_results(output, res, units=units, config=config, timings=prov.get("timings", {}))
    if args.figures:
        from diffptycho.analysis import xanes_figures

        xanes_figures.save_all(
            args.figures, res, ca, res.get("energies_ev"), mean, normalized_spectra=norm
        )
    how = "elbow" if args.k is None else "given"
    print(
        f"k = {ca.k} ({how}); fractions {np.round(ca.fractions, 3).tolist()}; "
        f"{int((ca.labels >= 0).sum())} pixels clustered; wrote {output}"
    )
    return 0
