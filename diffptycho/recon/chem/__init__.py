"""Chemical decomposition of reconstructed volumes and spectral stacks.

One module per method: ``two_energy`` (2×2 unmixing and the polar-angle histogram), ``lcf``
(full-spectrum linear combination fit), and the XANES fitting modules. Import the module you
need, e.g. ``from diffptycho.recon.chem import two_energy``.
"""
