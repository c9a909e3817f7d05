"""Datasets: synthetic ambiguous benchmarks, LIDC and Cityscapes readers, and the tf.data
pipelines for training and evaluation. `load(name, split, ...)` opens any of them by name; your
own data comes as image folders (`from_folders`), npz arrays (`arrays`), a `Source` or a
`tf.data.Dataset`, its labels checked where it comes in (`checks`)."""

from tfprobunet.data import (arrays, checks, cityscapes, folders, lidc, manifests, phiseg,
                             synthetic)
from tfprobunet.data.folders import from_folders
from tfprobunet.data.pipeline import evaluation_pipeline, training_pipeline
from tfprobunet.data.sources import (DATASETS, Source, as_source, check_source, load,
                                     make_manifest)
from tfprobunet.data.synthetic import flip_modes, flips, graders

__all__ = ["DATASETS", "Source", "arrays", "as_source", "check_source", "checks", "cityscapes",
           "evaluation_pipeline", "flip_modes", "flips", "folders", "from_folders", "graders",
           "lidc", "load", "make_manifest", "manifests", "phiseg", "synthetic",
           "training_pipeline"]
