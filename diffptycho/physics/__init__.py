"""Pure single-sample physics functions, batched with ``jax.vmap``.

Optics, spectra, propagation, probe, scan, tomography and alignment.
"""
