"""`load(name, split)`: every dataset the library knows by name, as `(image, annotations)`."""

import collections
import os

import numpy as np
import tensorflow as tf

from tfprobunet.data import (arrays, checks, cityscapes, folders, lidc, manifests, phiseg,
                             synthetic)
from tfprobunet.defaults import DATASETS, SYNTHETIC_DATASETS

SYNTHETIC = SYNTHETIC_DATASETS
SPLITS = ("train", "val", "test")
# How the datasets without split manifests are split.
_HOW_SPLIT = {"flips": "its seed (synthetic)", "graders": "its seed (synthetic)",
              "npz": "your train/val/test files", "cityscapes": "its folders"}
# The synthetic splits are drawn with these offsets added to the seed, so they never overlap.
SPLIT_SEEDS = {"train": 0, "val": 1_000_003, "test": 2_000_003}
# Default sizes of the synthetic splits; flips' test split has the official evaluation's 500.
DEFAULT_EXAMPLES = {"flips": {"train": 1000, "val": 100, "test": 500},
                    "graders": {"train": 1000, "val": 100, "test": 100}}

Source = collections.namedtuple("Source", "dataset num_classes annotation_weights classes")
Source.__doc__ = """A loaded dataset and what evaluating it needs.

Fields:
    dataset: `tf.data.Dataset` of `(image (h, w, c) float32, annotations (A, h, w) int32)`.
    num_classes: K.
    annotation_weights: `(A,)` probabilities of the annotations (the flip modes), or None when
        the annotations are equally likely (graders).
    classes: the classes the metrics score, or None for the default (class 1 for K = 2, all K).

Your own data trains and evaluates as a `Source`, e.g. *flips* with other flip probabilities:

```python
p = (0.5, 0.3, 0.1)
source = tfprobunet.data.Source(synthetic.flips(1000, 32, p), synthetic.flips_num_classes(p),
                                synthetic.flip_modes(p)[1], None)
tfprobunet.train("runs/mine", dataset=source, ...)
```
"""


def check_source(source):
    """Raise `ValueError` naming what is wrong if `source` cannot be trained or evaluated on:
    its element spec, `num_classes`, `annotation_weights`, and the labels of its first
    `checks.PEEK_EXAMPLES` examples (`checks.check_labels`: 0/255 masks are refused)."""
    if not isinstance(source.dataset, tf.data.Dataset):
        raise ValueError("`Source.dataset` must be a tf.data.Dataset. Received: "
                         f"{type(source.dataset).__name__}")
    spec = source.dataset.element_spec
    if not (isinstance(spec, tuple) and len(spec) == 2 and spec[0].shape.rank == 3
            and spec[1].shape.rank == 3 and spec[0].dtype.is_floating
            and spec[1].dtype.is_integer):
        raise ValueError("The dataset must yield (image (h, w, c) float, annotations (A, h, w) "
                         f"int): every annotation of an image. Received element_spec {spec}.")
    if not isinstance(source.num_classes, (int, np.integer)) or source.num_classes < 2:
        raise ValueError(f"`num_classes` must be an integer >= 2. Received: "
                         f"{source.num_classes!r}")
    if source.annotation_weights is not None:
        weights = np.asarray(source.annotation_weights, np.float64)
        count = spec[1].shape[0]
        if weights.ndim != 1 or (count is not None and len(weights) != count):
            raise ValueError(f"`annotation_weights` must hold one probability per annotation "
                             f"({count}). Received shape {weights.shape}.")
        if not (np.all(weights >= 0) and weights.sum() > 0):
            raise ValueError("`annotation_weights` must be non-negative with a positive sum. "
                             f"Received: {weights.tolist()}")
    checks.check_dataset(source.dataset, source.num_classes, "The annotations of the dataset")


def as_source(dataset, split="train", data_dir=None, image_size=None, num_examples=None, seed=0,
              num_classes=None, split_manifest=None):
    """`dataset` as a checked `Source`, for `train` and `evaluate` alike.

    Args:
        dataset: a name of `DATASETS` (loaded with `load`), a `Source`, or a `tf.data.Dataset`
            of `(image (h, w, c) float, annotations (A, h, w) int)` with `num_classes` given.
        split, data_dir, image_size, num_examples, seed, split_manifest: as in `load`;
            `num_examples` also shortens a `Source` or a dataset; `split_manifest` is for a
            name only.
        num_classes: K of a plain dataset; for a name or a `Source`, the K it must have.

    Returns:
        A `Source`, its labels checked (`check_source`).
    """
    if split_manifest is not None and not isinstance(dataset, str):
        raise ValueError(
            "A split manifest chooses the examples of a dataset loaded by name (one of "
            f"{', '.join(manifests.DATASETS)}); a {type(dataset).__name__} is already split: "
            f"pass its split itself. Received: split_manifest={split_manifest!r}")
    if isinstance(dataset, str):
        source = load(dataset, split, data_dir, image_size, num_examples, seed, split_manifest)
    elif isinstance(dataset, tf.data.Dataset):
        if num_classes is None:
            raise ValueError(
                "A tf.data.Dataset of (image, annotations) needs `num_classes=`, or pass a "
                "tfprobunet.data.Source(dataset, num_classes, annotation_weights, classes) that "
                "says it.")
        source = Source(dataset, num_classes, None, None)
    elif isinstance(dataset, Source):
        source = dataset
    else:
        raise ValueError(f"`dataset` must be a name of {DATASETS}, a tfprobunet.data.Source or "
                         "a tf.data.Dataset of (image (h, w, c), annotations (A, h, w)). "
                         f"Received: {type(dataset).__name__}")
    check_source(source)
    if num_classes is not None and num_classes != source.num_classes:
        raise ValueError(f"`num_classes={num_classes}` contradicts the dataset's "
                         f"num_classes={source.num_classes}.")
    if num_examples is not None and not isinstance(dataset, str):
        source = source._replace(dataset=source.dataset.take(num_examples))
    return source


def load(name, split="train", data_dir=None, image_size=None, num_examples=None, seed=0,
         split_manifest=None):
    """Load a dataset by name.

    Args:
        name: `"flips"` or `"graders"` (synthetic, see `tfprobunet.data.synthetic`), `"lidc"`
            (the PNG crops), `"lidc-pickle"` (the PyTorch port's pickle), `"lidc-phiseg"`
            (PHiSeg's hdf5, see `tfprobunet.data.phiseg`), `"cityscapes"`,
            `"npz"`: your own arrays, `data_dir/<split>.npz` (see `tfprobunet.data.arrays`), or
            `"folder"`: your own image files, `data_dir/images` and `data_dir/masks` (see
            `tfprobunet.data.folders`; grey images, binarised masks).
        split: `"train"`, `"val"` or `"test"`.
        data_dir: where the real data lives (the crops folder, the pickle file or folder, the
            Cityscapes root); unused for the synthetic sets.
        image_size: height and width (an int, or `(h, w)` for Cityscapes). Default: 64 for the
            synthetic sets, 128 for LIDC, `(256, 512)` for Cityscapes.
        num_examples: the first n examples; default all (synthetic: `DEFAULT_EXAMPLES`, 1000
            for train, 100 for val, 100 for graders' test and 500 for flips' test).
        seed: synthetic data, the LIDC pickle's split by series and the folder split.
        split_manifest: a split manifest (a JSON file or its dict, see
            `tfprobunet.data.manifests` and `make_manifest`) that fixes which patients (series,
            images) are in each split, instead of `seed` or the split the data comes with (all
            of whose splits are then pooled): for the datasets with such ids
            (`manifests.DATASETS`: `"lidc"`, `"lidc-pickle"`, `"lidc-phiseg"`, `"folder"`).

    Returns:
        A `Source`.
    """
    if name not in DATASETS:
        raise ValueError(f"`dataset` must be one of {DATASETS}. Received: {name!r}")
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {SPLITS}. Received: {split!r}")
    if split_manifest is not None:
        _check_has_manifests(name, f" Received: split_manifest={split_manifest!r}")
    if name in SYNTHETIC:
        return _synthetic(name, split, image_size or 64, num_examples, seed)
    if data_dir is None:
        raise ValueError(f"Dataset {name!r} is read from files: pass `data_dir` (CLI: "
                         "--data-dir).")
    if name == "lidc":
        # Random crops of the 180x180 tiles for training (this library's choice: the paper gives
        # none; DeepMind's notebook and CCDM take the central crop), center crops else.
        source = Source(lidc.crops(data_dir, split, image_size or 128,
                                   random_crop=split == "train", seed=seed,
                                   split_manifest=split_manifest), 2, None, None)
    elif name == "npz":
        source = Source(*arrays.npz_split(data_dir, split))
    elif name == "folder":
        source = folders.from_folders(os.path.join(data_dir, "images"),
                                      os.path.join(data_dir, "masks"), split, seed=seed,
                                      split_manifest=split_manifest)
    elif name == "lidc-phiseg":
        source = Source(phiseg.dataset(data_dir, split, split_manifest), 2, None, None)
    elif name == "lidc-pickle":
        source = Source(lidc.pickle_dataset(data_dir, split, image_size, seed,
                                            split_manifest=split_manifest), 2, None, None)
    else:
        source = Source(cityscapes.dataset(data_dir, split, image_size or (256, 512)),
                        cityscapes.NUM_CLASSES, cityscapes.mode_probabilities(),
                        list(cityscapes.SCORED_CLASSES))
    if num_examples is not None:
        source = source._replace(dataset=source.dataset.take(num_examples))
    return source


def make_manifest(name, data_dir, seed=0, fractions=None, split="seed"):
    """The split manifest of dataset `name` (one of `manifests.DATASETS`) at `data_dir`.

    `"lidc-pickle"`, and `"folder"` without split subfolders, are split by `seed` and
    `fractions` (default: theirs, 64/16/20 % and 80/10/10 %); `"lidc"`, `"lidc-phiseg"` and
    `"folder"` with subfolders come split, and their manifest records that split (`"seed":
    None`; `seed` and `fractions` unused). `split="mose"` (`"lidc-pickle"` only) writes MoSE's
    published split of its series instead (`manifests.mose_split`: `"split": "mose"`, its
    random_state 0 as `"seed"`), refusing another `seed` or `fractions`.
    """
    _check_has_manifests(name)
    manifests.check_split(split, name)
    if name == "lidc":
        return lidc.crops_manifest(data_dir)
    if name == "lidc-phiseg":
        return phiseg.split_manifest(data_dir)
    if name == "folder":
        return folders.split_manifest(os.path.join(data_dir, "images"),
                                      os.path.join(data_dir, "masks"), seed,
                                      fractions or folders.FRACTIONS)
    return lidc.split_manifest(data_dir, seed, fractions or lidc.SPLIT_FRACTIONS, split=split)


def _check_has_manifests(name, received=""):
    if name not in manifests.DATASETS:
        raise ValueError(f"A split manifest fixes the split of {', '.join(manifests.DATASETS)}; "
                         f"{name!r} is split by {_HOW_SPLIT.get(name, 'its files')}.{received}")


def _synthetic(name, split, image_size, num_examples, seed):
    if num_examples is None:
        num_examples = DEFAULT_EXAMPLES[name][split]
    seed = seed + SPLIT_SEEDS[split]
    if name == "flips":
        _, probabilities = synthetic.flip_modes()
        num_classes = synthetic.flips_num_classes()
        # As the official Cityscapes evaluation: score the flippable classes and their twins.
        return Source(synthetic.flips(num_examples, image_size, seed=seed), num_classes,
                      probabilities, list(range(1, num_classes)))
    return Source(synthetic.graders(num_examples, image_size, seed=seed), 2, None, None)

