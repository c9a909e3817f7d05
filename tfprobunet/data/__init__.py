"""Datasets: synthetic ambiguous benchmarks, LIDC and Cityscapes readers, and the tf.data
training pipeline. `load(name, split, ...)` opens any of them by name."""

from tfprobunet.data import cityscapes, lidc, synthetic
from tfprobunet.data.pipeline import training_pipeline
from tfprobunet.data.sources import DATASETS, Source, load
from tfprobunet.data.synthetic import flip_modes, flips, graders

__all__ = ["DATASETS", "Source", "cityscapes", "flip_modes", "flips", "graders", "lidc", "load",
           "synthetic", "training_pipeline"]
