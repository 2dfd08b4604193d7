"""diffptycho: differentiable X-ray spectro-ptycho-tomography in JAX.

One differentiable physics model maps complex object volumes at each X-ray energy through
rotation, projection and probe propagation to far-field diffraction intensities. Staged
(ptychography → tomography → chemistry) and joint reconstructions share its operators.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("diffptycho")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
