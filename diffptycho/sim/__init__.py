"""Simulation: ground-truth phantoms, scan patterns and datasets with their ground truth."""
