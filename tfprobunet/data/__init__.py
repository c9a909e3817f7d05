"""Datasets: synthetic ambiguous benchmarks and the tf.data training pipeline."""

from tfprobunet.data import synthetic
from tfprobunet.data.pipeline import training_pipeline
from tfprobunet.data.synthetic import flip_modes, flips, graders

__all__ = ["flip_modes", "flips", "graders", "synthetic", "training_pipeline"]
