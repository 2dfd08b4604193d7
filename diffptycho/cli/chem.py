"""``diffptycho chem …``: chemical decomposition from the command line.

- ``diffptycho chem lcf STACK --references R1 R2 … [--i0 FILE] --output OUT.h5``: per-pixel
  non-negative linear combination fit of a spectral stack. STACK is an ALS STXM ``.hdr`` (with
  its ``_aNNN.xim`` images; OD from ``--i0`` or, without it, from the brightest pixels) or an
  HDF5 file with ``od`` (energy, y, x) and ``energies_ev``. OUT.h5 holds ``weights``
  (reference, y, x), ``r_factor`` (y, x) and ``energies_ev``.
- ``diffptycho chem two-energy OD.h5 [--e1 708.2 --e2 710.2] --references R_LFP R_FP --output
  OUT.h5``: 2×2 unmixing of ``od`` (2, …) (a map or a volume). OUT.h5 holds ``fraction_first``,
  ``polar_angle_deg``, ``phase_class`` (0 first-rich, 1 mixed, 2 second-rich, −1 empty) and the
  two-Gaussian fit of the polar-angle histogram under ``gaussian_fit/``.

Energies: a file's own energies (``energies_ev``, ``energy_pre_ev``) are always used; energies
given on the command line are then a cross-check and an error when they differ by more than
:data:`~diffptycho.io.energies.ENERGY_TOLERANCE_EV` (0.1 eV). Without energies in the file the
command-line ones are used. Shares far outside [0, 1] print a warning naming the likely causes.

Reference files are two columns (energy eV, value); their values are ODs per unit amount of the
end member. PNG figures are written next to OUT.h5 (``OUT_*.png``). The XANES subcommands
(``xanes-fit``, ``cluster``) are registered from :mod:`diffptycho.cli.xanes` when present.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import warnings
from collections.abc import Iterator

import numpy as np

from diffptycho.cli.ptycho import positive_int

__all__ = ["add_parser", "run"]


def _add_lcf(sub) -> None:
    p = sub.add_parser(
        "lcf",
        help="full-spectrum non-negative linear combination fit of a spectral stack",
        description="Fit every pixel's spectrum as a non-negative sum of reference spectra; "
        "writes weights, R-factor map and figures.",
    )
    p.add_argument("stack", help="STXM .hdr, or HDF5 with 'od' (energy, y, x) and 'energies_ev'")
    p.add_argument("--references", nargs="+", required=True, help="two-column text files")
    p.add_argument("--i0", help="incident-flux spectrum (.xsp) for a STXM .hdr stack")
    p.add_argument("--output", "-o", required=True, help="results HDF5 to write")
    p.add_argument("--offset", action="store_true", help="also fit a free constant per pixel")
    p.add_argument(
        "--mask-threshold",
        type=float,
        default=None,
        help="fit only pixels whose mean OD over energies is at least this (default: all)",
    )
    p.set_defaults(func=cmd_lcf)


def _add_two_energy(sub) -> None:
    p = sub.add_parser(
        "two-energy",
        help="two-energy 2×2 unmixing, polar-angle histogram and phase segmentation",
        description="Concentrations from OD at two energies with the end members' reference "
        "ODs; polar angle per voxel, its two-Gaussian histogram fit, and 30/70 %% phases.",
    )
    p.add_argument(
        "od",
        help="HDF5 with 'od' (2, …) at (E1, E2); optional 'energies_ev' (2,), 'od_pre' (…), "
        "'energy_pre_ev'",
    )
    p.add_argument(
        "--e1",
        type=float,
        default=None,
        help="first energy in eV (e.g. 708.2); needed only when the file has no "
        "'energies_ev', else checked against it (tolerance 0.1 eV)",
    )
    p.add_argument("--e2", type=float, default=None, help="second energy in eV (e.g. 710.2)")
    p.add_argument(
        "--references",
        nargs=2,
        required=True,
        metavar=("R_FIRST", "R_SECOND"),
        help="two-column text files of the two end members (energy eV, OD)",
    )
    p.add_argument("--output", "-o", required=True, help="results HDF5 to write")
    p.add_argument(
        "--e-pre",
        type=float,
        default=None,
        help="pre-edge energy in eV: subtract 'od_pre' from the data and the references' OD "
        "at this energy from theirs (the file's 'energy_pre_ev' when present)",
    )
    p.add_argument(
        "--empty-threshold",
        type=float,
        default=None,
        help="voxels whose total concentration is below this are empty (reference units; "
        "default 0.2 × the 99.5th percentile)",
    )
    p.add_argument(
        "--bins", type=positive_int, default=180, help="polar-angle histogram bins (0–90°)"
    )
    p.add_argument(
        "--smooth",
        type=float,
        default=0.0,
        help="Gaussian σ in voxels to smooth the concentrations inside the particles before "
        "computing shares (e.g. 0.7 for 11 nm resolution at 6.7 nm voxels; default 0)",
    )
    p.set_defaults(func=cmd_two_energy)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``chem`` and its subcommands on the top-level sub-parsers of ``diffptycho``.

    Every subcommand sets ``func``; :func:`run` calls it.

    Args:
        subparsers: the object returned by ``ArgumentParser.add_subparsers``.

    Returns:
        The ``chem`` parser.
    """
    chem = subparsers.add_parser(
        "chem",
        help="chemical decomposition: lcf, two-energy (and xanes-fit, cluster)",
        description="Chemical maps from spectral stacks and two-energy volumes.",
    )
    sub = chem.add_subparsers(dest="chem_command", required=True)
    _add_lcf(sub)
    _add_two_energy(sub)
    # ---- hook: Workflow B (xanes-fit, cluster) lives in diffptycho/cli_xanes.py, which defines
    # add_parsers(chem_subparsers); each of its parsers sets `func`. Absent module: no commands.
    try:
        from diffptycho.cli.xanes import add_parsers as _add_xanes
    except ModuleNotFoundError as err:
        if err.name != "diffptycho.cli.xanes":
            raise
    else:
        _add_xanes(sub)
    # ---- end of hook
    return chem


def run(args: argparse.Namespace) -> int:
    """Run the chosen ``chem`` subcommand; returns the exit code (2 on input errors).

    Warnings of the library (e.g. implausible unmixing) are printed to stderr as
    ``diffptycho chem NAME: warning: …``.
    """
    name = getattr(args, "chem_command", "chem")
    try:
        with printed_warnings(f"diffptycho chem {name}"):
            return int(args.func(args))
    except (ValueError, FileNotFoundError, OSError, KeyError) as err:
        print(f"diffptycho chem {name}: error: {err}", file=sys.stderr)
        return 2


@contextlib.contextmanager
def printed_warnings(prefix: str) -> Iterator[None]:
    """Print implausible-unmixing warnings raised inside the block as ``PREFIX: warning: …``.

    Other warnings are passed on unchanged when the block ends.
    """
    from diffptycho.recon.chem.plausibility import ImplausibleUnmixingWarning

    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ImplausibleUnmixingWarning)
            yield
    finally:
        seen: set[str] = set()
        for w in caught:
            text = str(w.message)
            if text in seen:
                continue
            seen.add(text)
            if issubclass(w.category, ImplausibleUnmixingWarning):
                print(f"{prefix}: warning: {text}", file=sys.stderr)
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _figure_path(output: str, suffix: str) -> str:
    """``OUT_suffix.png`` beside OUT, without repeating words OUT already ends with.

    ``lcf.h5`` with ``lcf_maps`` gives ``lcf_maps.png``, not ``lcf_lcf_maps.png``.
    """
    stem, _ = os.path.splitext(output)
    base = os.path.basename(stem)
    words = suffix.split("_")
    for k in range(len(words), 0, -1):
        head = "_".join(words[:k])
        if base == head or base.endswith("_" + head):
            rest = "_".join(words[k:])
            return f"{stem}_{rest}.png" if rest else f"{stem}.png"
    return f"{stem}_{suffix}.png"


def _load_stack(args) -> tuple[np.ndarray, np.ndarray, dict]:
    from diffptycho.io import stxm
    from diffptycho.io.od_stack import read_spectral_stack

    path = args.stack
    if path.lower().endswith(".hdr"):
        st = stxm.read_stxm_stack(path, args.i0, estimate_flux=args.i0 is None)
        info = {"pixel_size_m": st.pixel_size_m, "i0": "file" if args.i0 else "brightest pixels"}
        return st.od, st.energies_ev, info
    if args.i0 is not None:
        raise ValueError(f"--i0 applies to STXM .hdr stacks, not to {path}")
    stack = read_spectral_stack(path)
    return stack.od, stack.energies_ev, {}


def cmd_lcf(args: argparse.Namespace) -> int:
    """``diffptycho chem lcf``."""
    from diffptycho.analysis.chem_figures import lcf_maps_plot
    from diffptycho.io import stxm
    from diffptycho.io.results import check_output_path, write_results
    from diffptycho.recon.chem.lcf import linear_combination_fit

    t0 = time.perf_counter()
    check_output_path(args.output)
    od, energies, info = _load_stack(args)
    refs = np.stack([stxm.reference_on_grid(r, energies) for r in args.references])
    names = [os.path.splitext(os.path.basename(r))[0] for r in args.references]
    mask = None
    if args.mask_threshold is not None:
        mask = np.nanmean(od, axis=0) >= args.mask_threshold
        if not mask.any():
            raise ValueError(
                f"--mask-threshold {args.mask_threshold}: every pixel is masked (mean OD "
                f"ranges {np.nanmin(np.nanmean(od, 0)):.3g}–{np.nanmax(np.nanmean(od, 0)):.3g})"
            )
    t1 = time.perf_counter()
    res = linear_combination_fit(od, refs, mask=mask, offset=args.offset, check=True)
    weights, r = np.asarray(res.weights), np.asarray(res.r_factor)
    t_fit = time.perf_counter() - t1
    datasets = {
        "weights": weights,
        "r_factor": r,
        "energies_ev": energies,
        "references": refs,
        "fraction": np.asarray(res.fractions()),
    }
    units = {"weights": "reference units", "r_factor": "1", "energies_ev": "eV", "fraction": "1"}
    if args.offset:
        datasets["offset"] = np.asarray(res.offset)
        units["offset"] = "OD"
    config = {
        "command": "chem lcf",
        "stack": os.path.abspath(args.stack),
        "references": [os.path.abspath(r) for r in args.references],
        "reference_names": names,
        "i0": args.i0,
        "offset": args.offset,
        "mask_threshold": args.mask_threshold,
        **info,
    }
    write_results(
        args.output,
        datasets,
        units=units,
        config=config,
        timings={"total_s": time.perf_counter() - t0, "fit_s": t_fit},
    )
    fig = lcf_maps_plot(
        weights,
        r,
        names,
        _figure_path(args.output, "lcf_maps"),
        title=f"LCF of {os.path.basename(args.stack)}",
    )
    finite = r[np.isfinite(r)]
    print(
        f"wrote {args.output}: {len(names)} references × {od.shape[1]}×{od.shape[2]} pixels, "
        f"R-factor median {np.median(finite):.3g} (5–95 %: {np.percentile(finite, 5):.3g}–"
        f"{np.percentile(finite, 95):.3g}), fit {t_fit:.2f} s; figure {fig}"
    )
    return 0


def cmd_two_energy(args: argparse.Namespace) -> int:
    """``diffptycho chem two-energy``."""
    from diffptycho.analysis import chem_figures, segmentation
    from diffptycho.io import stxm
    from diffptycho.io.energies import reconcile_energies
    from diffptycho.io.od_stack import read_two_energy_od
    from diffptycho.io.results import check_output_path, write_results
    from diffptycho.recon.chem import two_energy as te
    from diffptycho.recon.chem.plausibility import warn_if_implausible

    t0 = time.perf_counter()
    check_output_path(args.output)
    data = read_two_energy_od(args.od)
    od = data.od
    e1, e2 = reconcile_energies(
        data.energies_ev,
        [args.e1, args.e2],
        file_where=data.energies_source,
        cli_names=["--e1", "--e2"],
    )
    e_pre = None
    if args.e_pre is not None or data.energy_pre_ev is not None:
        if data.od_pre is None:
            raise ValueError(
                f"{args.od}: a pre-edge energy is given but the file has no dataset 'od_pre' "
                "(pre-edge OD); store it, or drop --e-pre"
            )
        (e_pre,) = reconcile_energies(
            None if data.energy_pre_ev is None else [data.energy_pre_ev],
            [args.e_pre],
            file_where=f"{args.od}: dataset 'energy_pre_ev'",
            cli_names=["--e-pre"],
        )
    energies = [e1, e2] + ([e_pre] if e_pre is not None else [])
    ref = [stxm.reference_on_grid(r, energies) for r in args.references]
    od_pre = None
    pre_refs = None
    if e_pre is not None:
        od_pre = data.od_pre
        pre_refs = [ref[0][2], ref[1][2]]
    matrix = te.reference_matrix(ref[0][:2], ref[1][:2], pre_refs)
    conc = np.asarray(te.unmix_two_energy(od, matrix, od_pre))
    net = od if od_pre is None else od - od_pre[None]
    density = conc.sum(axis=0)
    threshold = args.empty_threshold
    if threshold is None:
        finite = density[np.isfinite(density)]
        threshold = 0.2 * float(np.percentile(finite, 99.5)) if finite.size else np.inf
    mask = segmentation.occupied_mask(density, threshold)
    warn_if_implausible(te.fraction_first(conc), mask, what=f"two-energy unmixing of {args.od}")
    net_used = net
    if args.smooth > 0:
        conc = te.smooth_concentrations(conc, mask, args.smooth)
        net_used = np.einsum("ij,j...->i...", matrix, conc)  # the ODs of the smoothed map
    frac = np.where(mask, np.asarray(te.fraction_first(conc)), np.nan)
    angle = np.where(mask, np.degrees(np.asarray(te.polar_angle(net_used))), np.nan)
    classes = segmentation.phase_classes(frac, mask)
    fit = te.fit_polar_histogram(angle, matrix, bins=args.bins)
    datasets = {
        "fraction_first": frac,
        "polar_angle_deg": angle,
        "phase_class": classes,
        "concentrations": conc,
        "density": density,
        "reference_matrix": matrix,
        **fit.as_datasets("gaussian_fit"),
    }
    units = {
        "fraction_first": "1",
        "polar_angle_deg": "deg",
        "phase_class": "class (-1 empty, 0 first-rich, 1 mixed, 2 second-rich)",
        "concentrations": "reference units",
        "density": "reference units",
        "reference_matrix": "OD per reference unit",
        "gaussian_fit/centres_deg": "deg",
        "gaussian_fit/sigmas_deg": "deg",
    }
    names = [os.path.splitext(os.path.basename(r))[0] for r in args.references]
    config = {
        "command": "chem two-energy",
        "od": os.path.abspath(args.od),
        "e1_ev": e1,
        "e2_ev": e2,
        "e_pre_ev": e_pre,
        "energies_from": "file" if data.energies_ev is not None else "command line",
        "references": [os.path.abspath(r) for r in args.references],
        "reference_names": names,
        "empty_threshold": threshold,
        "bins": args.bins,
        "smooth_vox": args.smooth,
    }
    write_results(
        args.output,
        datasets,
        units=units,
        config=config,
        timings={"total_s": time.perf_counter() - t0},
    )
    figs = [
        chem_figures.correlation_plot(
            net[0],
            net[1],
            _figure_path(args.output, "correlation"),
            matrix=matrix,
            mask=mask,
            names=names,
            energies_ev=(e1, e2),
        ),
        chem_figures.polar_histogram_plot(
            fit, _figure_path(args.output, "polar_histogram"), matrix=matrix
        ),
        chem_figures.phase_map_plot(
            _central_slices(classes),
            _figure_path(args.output, "phases"),
            names=(f"{names[0]}-rich", "mixed", f"{names[1]}-rich"),
        ),
    ]
    counts = {k: int(np.sum(classes == k)) for k in (-1, 0, 1, 2)}
    print(
        f"wrote {args.output}: {int(mask.sum())} occupied voxels; polar-angle centres "
        f"{fit.centres_deg[0]:.2f}° / {fit.centres_deg[1]:.2f}° (σ {fit.sigmas_deg[0]:.2f}° / "
        f"{fit.sigmas_deg[1]:.2f}°) → {names[0]} share {fit.fraction_first[0]:.3f} ± "
        f"{fit.fraction_error[0]:.3f} / {fit.fraction_first[1]:.3f} ± {fit.fraction_error[1]:.3f}; "
        f"classes first/mixed/second/empty = {counts[0]}/{counts[1]}/{counts[2]}/{counts[-1]}; "
        f"figures {', '.join(os.path.basename(f) for f in figs)}"
    )
    return 0


def _central_slices(volume: np.ndarray) -> dict[str, np.ndarray]:
    """A 2-D map as is; the three central orthogonal slices of a volume."""
    if volume.ndim == 2:
        return {"phase map": volume}
    z, y, x = (n // 2 for n in volume.shape[-3:])
    return {f"z = {z}": volume[z], f"y = {y}": volume[:, y], f"x = {x}": volume[:, :, x]}
