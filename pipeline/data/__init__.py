"""Datasets: scikit-learn digits, preset Gaussian mixtures, user-provided array files."""
from pipeline.data.arrays import load_npz
from pipeline.data.digits import load_digits
from pipeline.data.gmm import gmm_preset

__all__ = ["load_digits", "gmm_preset", "load_npz"]
