"""Pure single-sample physics functions: optics, spectra, propagation, probe, scan, tomography,
alignment. Batch them with ``jax.vmap``."""
