"""`lidc-phiseg`: the `data_lidc.hdf5` that PHiSeg's `data/lidc_data_loader.py`
(baumgach/PHiSeg-code) writes from the PyTorch port's pickle, split 64/16/20 % by CT series
(`series_uid`).

Its layout, read from that code (`prepare_data`): one group per split, `train`, `val` and
`test`, each with
- `images`: `(n, 128, 128)` float64, the pickle's image minus 0.5;
- `labels`: `(n, 128, 128, 4)` uint8, the 4 graders' masks on the last axis;
- `uids`: `(n,)` int64, Python's `hash()` of the series id (`series_uid`), which changes from
  one Python process to the next: series can be told apart within one file, but not matched
  across files nor to the pickle.

Its split comes from `sklearn`'s `train_test_split` without a `random_state`: only those who
share the file share the split, which is why this reader takes the file as it is, and
`split_manifest` writes it down (the uids of each group). With a manifest, `dataset` pools the
three groups and takes the series the manifest lists; `load` gives it as a `Source`, for
`tfprobunet.data.load("lidc-phiseg", ...)`. Needs h5py (`pip install "tfprobunet[data]"`;
Keras installs it too).

Every dataset is sized from the file's metadata before any is read. The file must store at
least 1/100 of a dataset's size when that is over 16 MiB (`saving.MAX_EXPANSION`,
`saving.EXPANSION_FLOOR`): a compressed or never-written dataset of zeros that would inflate
more is a decompression bomb, refused (PHiSeg writes its datasets uncompressed). Each array the
loader holds, float32 images and labels of their stored type, may take at most
`arrays.MAX_ARRAY_BYTES` (2 GiB; raise it with `TFPROBUNET_MAX_ARRAY_BYTES=8e9` or
`dataset(..., max_bytes=...)`).
"""

import math

import numpy as np
import tensorflow as tf

from tfprobunet.catalog import SPLITS
from tfprobunet.data import arrays, manifests
from tfprobunet.data.source import Source, check_split
from tfprobunet.saving import EXPANSION_FLOOR, MAX_EXPANSION, readable

# Each dataset of a split: its dtype kind ("f" float, "u"/"i" integer) and its shape's rank.
LAYOUT = {"images": ("f", 3), "labels": ("u", 4), "uids": ("iu", 1)}
NUM_GRADERS = 4


def _h5py():
    try:
        import h5py
    except ImportError as error:
        raise ImportError("Reading the PHiSeg hdf5 needs h5py: pip install "
                          "'tfprobunet[data]'") from error
    return h5py


def _check_expansion(path, name, dataset):
    """Refuse the h5py `dataset` (`name` in the file `path`) if it would inflate more than
    `MAX_EXPANSION` times what the file stores of it (past `EXPANSION_FLOOR`): a compressed or
    never-written dataset of zeros, found from its metadata, unread."""
    logical = math.prod(dataset.shape) * dataset.dtype.itemsize
    stored = dataset.id.get_storage_size()
    if logical > EXPANSION_FLOOR and logical > MAX_EXPANSION * max(stored, 1):
        kind = f"{dataset.compression or 'uncompressed'}{', chunked' if dataset.chunks else ''}"
        raise ValueError(
            f"{path}: {name!r} is {dataset.dtype} {dataset.shape}, {readable(logical)}, but the "
            f"file stores {readable(stored)} of it ({kind}): it would inflate "
            f"{logical // max(stored, 1):,} times, a decompression bomb (more than "
            f"{MAX_EXPANSION} times is refused; PHiSeg's lidc_data_loader writes its datasets "
            "uncompressed). It was not read. If the file is yours, write it uncompressed: "
            f"h5repack -f NONE {path} uncompressed.hdf5.")


def _checked(f, path, split):
    """`{key: h5py dataset}` of `split` in the open file `f`, checked against the layout and
    for decompression bombs (`_check_expansion`) before any is read."""
    check_split(split)
    if split not in f:
        raise ValueError(f"{path} has no group {split!r}: PHiSeg's data_lidc.hdf5 has "
                         f"{list(SPLITS)}. Found: {sorted(f)}")
    datasets = {}
    for key, (kinds, rank) in LAYOUT.items():
        name = f"{split}/{key}"
        if key not in f[split]:
            raise ValueError(f"{path} has no dataset {name!r} (expected {sorted(LAYOUT)} in "
                             "each split, as PHiSeg's lidc_data_loader writes them).")
        dataset = f[name]
        if dataset.dtype.kind not in kinds or dataset.ndim != rank:
            raise ValueError(f"{path}: {name!r} is {dataset.dtype} of shape "
                             f"{dataset.shape}; PHiSeg writes a rank-{rank} array of "
                             f"kind {kinds!r}.")
        datasets[key] = dataset
    images, labels, uids = datasets["images"].shape, datasets["labels"].shape, \
        datasets["uids"].shape
    if labels[:3] != images or labels[3] != NUM_GRADERS or uids[0] != images[0]:
        raise ValueError(f"{path}: {split!r} holds images {images}, labels {labels} and uids "
                         f"{uids}; expected (n, h, w), (n, h, w, {NUM_GRADERS}) and (n,).")
    for key, dataset in datasets.items():
        _check_expansion(path, f"{split}/{key}", dataset)
    return datasets


def read(path, split, rows=None, *, max_bytes=None):
    """The arrays of `split` in the PHiSeg hdf5 at `path`, checked against the layout.

    Args:
        path: the hdf5 file.
        split: `"train"`, `"val"` or `"test"`, the group.
        rows: increasing indices of the examples to read; default all.
        max_bytes: as in `dataset` (the int32 annotations returned take 4 bytes a value where
            the limit counts their stored type's).

    Returns:
        `(images (n, h, w, 1) float32 in [0, 1], annotations (n, 4, h, w) int32,
        uids (n,) int64)`.

    Raises:
        ValueError: a missing group or dataset, one of another dtype or shape, one inflating
            more than `MAX_EXPANSION` times, or arrays beyond the limit (nothing read), naming
            the file and the key.
    """
    images, labels, ids = _read(path, [(split, rows)], max_bytes)
    return images, labels.astype(np.int32), ids


# Rows read from the file at a time: 64 MiB of PHiSeg's float64 128 x 128 images.
_BLOCK = 512


def _read(path, selections, max_bytes):
    """`(images (n, h, w, 1) float32 in [0, 1], labels (n, 4, h, w) of their stored type,
    uids (n,) int64)` of the rows `selections`, `[(split, increasing rows or None for all)]`,
    in that order. The datasets are checked (`_checked`) and the arrays sized against
    `arrays.array_limit(max_bytes)` before any is read; each array is allocated once and
    filled `_BLOCK` rows at a time (the float64 images are never held whole)."""
    limit = arrays.array_limit(max_bytes)
    with _h5py().File(path, "r") as f:
        picked = []
        for split, rows in selections:
            datasets = _checked(f, path, split)
            everything = np.arange(datasets["uids"].shape[0], dtype=np.int64)
            picked.append((datasets, everything if rows is None else np.asarray(rows, np.int64)))
        sizes = sorted({datasets["images"].shape[1:] for datasets, _ in picked})
        if len(sizes) > 1:
            raise ValueError(f"{path}: its groups hold images of different sizes, {sizes}: "
                             "PHiSeg's file holds 128x128 images in every group.")
        count = sum(len(rows) for _, rows in picked)
        splits = "+".join(split for split, _ in selections)
        label_type = np.result_type(*(datasets["labels"].dtype for datasets, _ in picked))
        option = "phiseg.dataset(..., max_bytes=...)"
        for key, shape, dtype, held in (
                ("images", (count, *sizes[0]), picked[0][0]["images"].dtype, 4),
                ("labels", (count, *sizes[0], NUM_GRADERS), label_type, label_type.itemsize),
                ("uids", (count,), np.dtype(np.int64), 8)):
            arrays.check_array_bytes(path, f"{splits}/{key}", shape, dtype, limit, option, held)
        images = np.empty((count, *sizes[0], 1), np.float32)
        labels = np.empty((count, NUM_GRADERS, *sizes[0]), label_type)
        ids = np.empty((count,), np.int64)
        start = 0
        for datasets, rows in picked:
            for first in range(0, len(rows), _BLOCK):
                block = rows[first:first + _BLOCK]
                # A run of rows reads as a slice; h5py reads a list of rows, but not an empty one
                where = (slice(block[0], block[-1] + 1) if block[-1] - block[0] == len(block) - 1
                         else block)
                end = start + len(block)
                images[start:end, ..., 0] = datasets["images"][where] + 0.5
                labels[start:end] = datasets["labels"][where].transpose(0, 3, 1, 2)
                ids[start:end] = datasets["uids"][where]
                start = end
    return images, labels, ids


def uids(path):
    """`{split: uids (n,) int64}` of every group of the PHiSeg hdf5 at `path` (each group
    checked as `read` checks it)."""
    limit = arrays.array_limit()
    found = {}
    with _h5py().File(path, "r") as f:
        for split in SPLITS:
            dataset = _checked(f, path, split)["uids"]
            arrays.check_array_bytes(path, f"{split}/uids", dataset.shape, dataset.dtype, limit,
                                     "phiseg.dataset(..., max_bytes=...)", 8)
            found[split] = dataset[()].astype(np.int64)
    return found


def split_manifest(path):
    """The split manifest of the PHiSeg hdf5 at `path` (see `tfprobunet.data.manifests`): the
    uids (as decimal strings) of each group, `"seed": None`, and the file's sha256."""
    return manifests.found("lidc-phiseg", path,
                           {split: ids.astype(str) for split, ids in uids(path).items()})


def dataset(path, split="train", split_manifest=None, *, max_bytes=None):
    """`tf.data.Dataset` of `(image (h, w, 1) float32, annotations (4, h, w) int32)`: the group
    `split`, or with `split_manifest` (its JSON file, or the dict; refused unless made from
    this very file, its sha256), the examples of all groups whose uids it puts in `split`.

    The examples are held as float32 images and labels of their stored type (PHiSeg's uint8),
    made int32 as the dataset yields them: each array may take at most `max_bytes` (None:
    `TFPROBUNET_MAX_ARRAY_BYTES` if set, else `arrays.MAX_ARRAY_BYTES`, 2 GiB; PHiSeg's
    training split takes 0.6 GB of images and as much of labels), checked before any is read.
    """
    if split_manifest is None:
        selections = [(split, None)]
    else:
        manifest = manifests.read(split_manifest, path, "lidc-phiseg")
        selections = [(group, manifests.indices(manifest["splits"], ids.astype(str), split))
                      for group, ids in uids(path).items()]
        if not sum(len(rows) for _, rows in selections):
            raise ValueError(f"The split manifest puts no uid of {path} in {split!r}.")
    images, labels, _ = _read(path, selections, max_bytes)
    return tf.data.Dataset.from_tensor_slices((images, labels)).map(
        lambda image, annotations: (image, tf.cast(annotations, tf.int32)))


def load(data_dir, split, image_size=None, seed=0, split_manifest=None):
    """The dataset `"lidc-phiseg"`: `dataset(data_dir, split, split_manifest)` as a `Source`
    of 2 classes, annotations equally likely.

    Args:
        data_dir: PHiSeg's `data_lidc.hdf5`.
        split: `"train"`, `"val"` or `"test"`.
        image_size, seed: unused: the file holds 128x128 images, split.
        split_manifest: as in `dataset`.

    Returns:
        A `Source` of `(image (h, w, 1) float32 in [0, 1], annotations (4, h, w) int32)`.
    """
    return Source(dataset(data_dir, split, split_manifest), 2, None, None)
