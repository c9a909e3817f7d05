"""Datasets: synthetic ambiguous benchmarks, LIDC and Cityscapes readers, and the tf.data
pipelines for training and evaluation. `load(name, split, ...)` opens any of them by name; your
own data comes as image folders (`from_folders`), npz arrays (`arrays`), a `Source` or a
`tf.data.Dataset`, its labels checked where it comes in (`checks`).

Where things live, from the bottom up: `checks.py` (label checks), `source.py` (`Source`, its
checks; imports no loader), `images.py` (image headers and decoding), `intensity.py` (how pixel
values become [0, 1]), `crops.py` (random training windows), `manifests.py` and
`safe_pickle.py`; one module per dataset, each with `load(data_dir, split, image_size=None,
seed=..., split_manifest=None, ...) -> Source`: `synthetic`, `lidc` (two datasets), `phiseg`,
`cityscapes`, `arrays`, `folders`, `volumes`; on top, `sources.py` (`load` by name through
`tfprobunet.catalog.DATASETS`, `as_source`, `make_manifest`) and `pipeline.py` (`tf.data`)."""

from tfprobunet.data import (arrays, checks, cityscapes, crops, folders, images, intensity, lidc,
                             manifests, phiseg, source, synthetic, volumes)
from tfprobunet.data.folders import from_folders
from tfprobunet.data.pipeline import evaluation_pipeline, training_pipeline
from tfprobunet.data.source import Source, check_source
from tfprobunet.data.sources import DATASETS, as_source, dataset_options, load, make_manifest
from tfprobunet.data.synthetic import flip_modes, flips, graders
from tfprobunet.data.volumes import from_volumes

__all__ = ["DATASETS", "Source", "arrays", "as_source", "check_source", "checks", "cityscapes",
           "crops", "dataset_options", "evaluation_pipeline", "flip_modes", "flips", "folders",
           "from_folders", "from_volumes", "graders", "images", "intensity", "lidc", "load",
           "make_manifest", "manifests", "phiseg", "source", "synthetic", "training_pipeline",
           "volumes"]
