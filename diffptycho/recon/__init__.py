"""Reconstruction: losses, the solve loop, and the classic and gradient solvers."""
