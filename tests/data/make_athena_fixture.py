"""How ``vanadium_oxides.prj`` and ``vanadium_oxides_larch_norm.csv`` were made (not run by tests).

The project file is written by Larch's own Athena writer (``larch.io.athena_project``), so the
reader of :mod:`diffptycho.io.athena` is tested on a file another program wrote. The raw μ(E) of
each group is a transmission-like absorbance: the V K-edge β of the oxide (from
:func:`diffptycho.physics.spectra.vanadium_reference_spectra`) times a thickness, on top of a
sloping background, on the non-uniform grid of a XANES scan. Larch normalises each group when it
reads the project back (``read_athena(do_preedge=True)``); its ``norm`` arrays are saved as the
independent reference for our normalisation.

Run with Larch installed (``pip install xraylarch``)::

    python tests/data/make_athena_fixture.py
"""

from __future__ import annotations

import pathlib

import numpy as np

from diffptycho.physics import optics, spectra

HERE = pathlib.Path(__file__).parent
PRE = (-150.0, -40.0)  # pre-edge fit range, eV from E0
NORM = (60.0, 300.0)  # post-edge fit range, eV from E0
NNORM = 2  # order of the post-edge polynomial


def main() -> None:
    """Write the project file and Larch's normalised spectra beside this script."""
    from larch import Group
    from larch.io import read_athena
    from larch.io.athena_project import AthenaProject
    from larch.xafs import pre_edge

    energy = np.concatenate(
        [
            np.arange(5300.0, 5450.0, 2.0),
            np.arange(5450.0, 5520.0, 0.25),
            np.arange(5520, 5801, 2.0),
        ]
    )
    ref, desc = spectra.vanadium_reference_spectra(energy)
    project = AthenaProject(str(HERE / "vanadium_oxides.prj"))
    for i, (name, n) in enumerate(ref.items()):
        mu = 4 * np.pi * n.imag / optics.wavelength(energy)  # 1/m
        thickness = 2.0e-6 + 0.5e-6 * i
        raw = mu * thickness + 0.3 - 2e-4 * (energy - 5300.0)
        g = Group(__name__=name, energy=energy, mu=raw, filename=name)
        pre_edge(
            g,
            e0=desc[name]["edge_ev"],
            pre1=PRE[0],
            pre2=PRE[1],
            norm1=NORM[0],
            norm2=NORM[1],
            nnorm=NNORM,
        )
        project.add_group(g)
    project.save(use_gzip=True)

    back = read_athena(str(HERE / "vanadium_oxides.prj"), do_preedge=True)
    columns, names = [], []
    for name in ref:
        g = getattr(back, name)
        columns.append(g.norm)
        names.append(f"{name}_norm")
        print(name, "e0", g.e0, "step", g.edge_step)
    np.savetxt(
        HERE / "vanadium_oxides_larch_norm.csv",
        np.column_stack([energy, *columns]),
        delimiter=",",
        header="energy_ev," + ",".join(names),
        comments="# normalised by larch.io.read_athena(do_preedge=True)\n",
        fmt="%.8g",
    )


if __name__ == "__main__":
    main()
