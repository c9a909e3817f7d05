"""Datasets: synthetic ambiguous benchmarks, LIDC and Cityscapes readers, and the tf.data
pipelines for training and evaluation. `load(name, split, ...)` opens any of them by name."""

from tfprobunet.data import arrays, cityscapes, lidc, synthetic
from tfprobunet.data.pipeline import evaluation_pipeline, training_pipeline
from tfprobunet.data.sources import DATASETS, Source, check_source, load
from tfprobunet.data.synthetic import flip_modes, flips, graders

__all__ = ["DATASETS", "Source", "arrays", "check_source", "cityscapes", "evaluation_pipeline",
           "flip_modes", "flips", "graders", "lidc", "load", "synthetic", "training_pipeline"]
