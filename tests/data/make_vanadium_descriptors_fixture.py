"""Write ``vanadium_descriptors_seed5.npz``: XANES descriptors of a reconstruction from frames.

The descriptors (edge energy, pre-edge ratio, SNR = Δμt/σ) and true domains of the clustered
pixels (Δμt ≥ 5σ) of V K-edge phantom 5, reconstructed from simulated frames with the probe
retrieved (no probe in the file), KK-constrained, 10⁸ photons per frame, no denoising. The
elbow over-counts this field (k = 4: one species' thin pixels split along their noisy
pre-edge ratio), which ``tests/test_clustering.py`` uses. Made from the arrays written by::

    python experiments/reproduce_vanadium_2d.py --doses 1e8 --modes kk --scan fermat \\
        --frame-px 32 --subpixel fourier --post raw --seed 5 --probe-search --save-arrays \\
        --out U5
    python tests/data/make_vanadium_descriptors_fixture.py U5/vanadium_1e+08_kk.npz
"""

import os
import sys

import numpy as np

from diffptycho.recon.chem.xanes import fit_xanes


def main(path: str) -> None:
    a = np.load(path)
    valid = a["valid"]
    od = np.where(valid, a["optical_density"], 0.0).astype(np.float32)
    fit = fit_xanes(od, a["energies_ev"])
    d = fit.descriptors()
    snr = np.where(fit.valid, d["edge_jump"] / fit.noise_sigma, 0.0)
    keep = (snr >= 5.0) & np.isfinite(d["edge_energy_ev"]) & np.isfinite(d["pre_edge_ratio"])
    out = os.path.join(os.path.dirname(__file__), "vanadium_descriptors_seed5.npz")
    np.savez_compressed(
        out,
        edge_energy_ev=d["edge_energy_ev"][keep],
        pre_edge_ratio=d["pre_edge_ratio"][keep],
        snr=snr[keep],
        domain=np.where(valid, a["true_domain"], -1)[keep].astype(np.int8),
    )
    print(f"wrote {out}: {int(keep.sum())} pixels")


if __name__ == "__main__":
    main(sys.argv[1])
