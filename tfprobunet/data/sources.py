"""`load(name, split)`: every dataset the library knows by name (`tfprobunet.catalog.DATASETS`),
as a `Source` of `(image, annotations)`; `as_source` (names, `Source`s and `tf.data` datasets
alike, checked) and `make_manifest`.

The dispatcher, above the loaders: the catalog names each dataset's module under
`tfprobunet.data`, and `load` calls that module's `load(data_dir, split, image_size, seed,
split_manifest, ...)`. `Source` and its checks live below every loader, in `source.py`.
"""

import importlib
import os

import tensorflow as tf

from tfprobunet import catalog
from tfprobunet.data import checks, lidc, manifests, phiseg
from tfprobunet.data.source import Source, check_source, check_split

# The names `load` knows, in the catalog's order.
DATASETS = catalog.DATASET_NAMES


def as_source(dataset, split="train", data_dir=None, image_size=None, num_examples=None, seed=0,
              num_classes=None, split_manifest=None, data_options=None):
    """`dataset` as a checked `Source`, for `train` and `evaluate` alike.

    Args:
        dataset: a name of `DATASETS` (loaded with `load`), a `Source`, or a `tf.data.Dataset`
            of `(image (h, w, c) float, annotations (A, h, w) int)` with `num_classes` given.
        split, data_dir, image_size, num_examples, seed, split_manifest: as in `load`;
            `num_examples` also shortens a `Source` or a dataset; `split_manifest` is for a
            name only.
        num_classes: K of a plain dataset; for a name or a `Source`, the K it must have.
        data_options: a dict of the named dataset's options (`load`'s `**options`).

    Returns:
        A `Source`, its labels checked (`check_source`).
    """
    if data_options and not isinstance(dataset, str):
        raise ValueError(
            "`data_options` are options of a dataset loaded by name (see "
            f"tfprobunet.data.dataset_options); a {type(dataset).__name__} is already read: "
            f"pass them where you read it. Received: data_options={data_options!r}")
    if split_manifest is not None and not isinstance(dataset, str):
        raise ValueError(
            "A split manifest chooses the examples of a dataset loaded by name (one of "
            f"{', '.join(catalog.MANIFEST_DATASETS)}); a {type(dataset).__name__} is already "
            f"split: pass its split itself. Received: split_manifest={split_manifest!r}")
    if isinstance(dataset, str):
        source = load(dataset, split, data_dir, image_size, num_examples, seed, split_manifest,
                      **(data_options or {}))
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
        source = source._replace(dataset=_first(source.dataset, num_examples))
    return source


def _first(dataset, count):
    """The first `count` elements of `dataset`, checked if `dataset` was
    (`checks.mark_checked`)."""
    first = dataset.take(count)
    return checks.mark_checked(first) if checks.is_checked(dataset) else first


def load(name, split="train", data_dir=None, image_size=None, num_examples=None, seed=0,
         split_manifest=None, **options):
    """Load a dataset by name: the `load` of the module the catalog names for it
    (`tfprobunet.catalog.DATASETS[name].module`, under `tfprobunet.data`).

    Args:
        name: `"flips"` or `"graders"` (synthetic, see `tfprobunet.data.synthetic`), `"lidc"`
            (the PNG crops), `"lidc-pickle"` (the PyTorch port's pickle), `"lidc-phiseg"`
            (PHiSeg's hdf5, see `tfprobunet.data.phiseg`), `"cityscapes"`,
            `"npz"`: your own arrays, `data_dir/<split>.npz` (see `tfprobunet.data.arrays`), or
            `"folder"`: your own image files, `data_dir/images` and `data_dir/masks` (see
            `tfprobunet.data.folders`), or `"volumes"`: your NIfTI volumes and DICOM series,
            sliced (see `tfprobunet.data.volumes`).
        split: `"train"`, `"val"` or `"test"`.
        data_dir: where the real data lives (the crops folder, the pickle file or folder, the
            Cityscapes root); unused for the synthetic sets.
        image_size: height and width (an int, or `(h, w)` for Cityscapes). Default: 64 for the
            synthetic sets, 128 for LIDC, `(256, 512)` for Cityscapes.
        num_examples: the first n examples; default all (synthetic:
            `synthetic.DEFAULT_EXAMPLES`, 1000 for train, 100 for val, 100 for graders' test
            and 500 for flips' test).
        seed: synthetic data, the LIDC pickle's split by series and the folder split.
        split_manifest: a split manifest (a JSON file or its dict, see
            `tfprobunet.data.manifests` and `make_manifest`) that fixes which patients (series,
            images) are in each split, instead of `seed` or the split the data comes with (all
            of whose splits are then pooled): for the datasets with such ids
            (`catalog.MANIFEST_DATASETS`: `"lidc"`, `"lidc-pickle"`, `"lidc-phiseg"`,
            `"folder"`).
        **options: the dataset's own options (`dataset_options(name)`), e.g. `"folder"`'s
            `pattern`, `crop`, `window`, `binarize` (see `tfprobunet.data.folders.load`).

    Returns:
        A `Source`.

    Raises:
        ValueError: an option the dataset does not take (its options named).
    """
    entry = catalog.dataset_entry(name)
    check_split(split)
    unknown = sorted(set(options) - set(dataset_options(name)))
    if unknown:
        taken = ", ".join(dataset_options(name)) or "none"
        raise ValueError(f"Dataset {name!r} takes no option {', '.join(unknown)}: its options "
                         f"are {taken}. Received: {options!r}")
    if entry.needs_data_dir and data_dir is None:
        raise ValueError(f"Dataset {name!r} is read from files: pass `data_dir` (CLI: "
                         "--data-dir).")
    options = dict(options)
    if _shares_module(entry):  # the module reads several datasets: tell it which
        options["name"] = name
    if not entry.needs_data_dir:  # generated: as many examples as asked for
        options["num_examples"] = num_examples
    loader = importlib.import_module(f"tfprobunet.data.{entry.module}").load
    source = loader(data_dir, split, image_size, seed, split_manifest, **options)
    if num_examples is not None and entry.needs_data_dir:
        source = source._replace(dataset=_first(source.dataset, num_examples))
    return source


# The arguments every dataset module's `load` takes (not options of one dataset), and those
# `load` fills in itself.
_COMMON = ("data_dir", "split", "image_size", "seed", "split_manifest", "name", "num_examples")


def dataset_options(name):
    """The options of dataset `name` (keyword arguments of its module's `load` beyond those
    every dataset takes): `{option: default}`, e.g. `"folder"`'s `pattern`, `crop`, `window`.
    What `train(data_options=...)` and `evaluate(data_options=...)` pass on."""
    import inspect

    module = importlib.import_module(f"tfprobunet.data.{catalog.dataset_entry(name).module}")
    return {k: p.default for k, p in inspect.signature(module.load).parameters.items()
            if k not in _COMMON and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _shares_module(entry):
    """Whether `entry`'s module reads other datasets of the catalog too (its `load` takes
    `name=`)."""
    return sum(e.module == entry.module for e in catalog.DATASETS.values()) > 1


def make_manifest(name, data_dir, seed=0, fractions=None, split="seed"):
    """The split manifest of dataset `name` (one of `catalog.MANIFEST_DATASETS`) at `data_dir`.

    `"lidc-pickle"`, `"volumes"`, and `"folder"` without split subfolders, are split by `seed`
    and `fractions` (default: theirs, 64/16/20 % and 80/10/10 %); `"lidc"`, `"lidc-phiseg"` and
    `"folder"` with subfolders come split, and their manifest records that split (`"seed":
    None`; `seed` and `fractions` unused). `split="mose"` (`"lidc-pickle"` only) writes MoSE's
    published split of its series instead (`manifests.mose_split`: `"split": "mose"`, its
    random_state 0 as `"seed"`), refusing another `seed` or `fractions`.
    """
    if not catalog.dataset_entry(name).manifests:
        raise ValueError(f"A split manifest fixes the split of "
                         f"{', '.join(catalog.MANIFEST_DATASETS)}, the datasets with patient "
                         f"(series, image) ids; {name!r} has none.")
    manifests.check_split(split, name)
    if name == "lidc":
        return lidc.crops_manifest(data_dir)
    if name == "lidc-phiseg":
        return phiseg.split_manifest(data_dir)
    if name in ("folder", "volumes"):  # images/ and masks/, split by seed or subfolders
        module = importlib.import_module(f"tfprobunet.data.{catalog.DATASETS[name].module}")
        return module.split_manifest(os.path.join(data_dir, "images"),
                                     os.path.join(data_dir, "masks"), seed,
                                     fractions or module.FRACTIONS)
    return lidc.split_manifest(data_dir, seed, fractions or lidc.SPLIT_FRACTIONS, split=split)
