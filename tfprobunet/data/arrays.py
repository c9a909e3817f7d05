"""Your own data as numpy arrays: a folder with `train.npz`, `val.npz` and `test.npz`, read by
`load(folder, split)` (the dataset `"npz"`: `tfprobunet.data.load("npz", split,
data_dir=folder)`, `tfprobunet train|evaluate --dataset npz --data-dir folder`).

Each file holds (`numpy.savez`):

- `images`: `(n, h, w, c)` float in [0, 1], or uint8 (divided by 255);
- `annotations`: `(n, A, h, w)` int, every annotation of each image (A graders, or A modes),
  labels in `[0, num_classes)` or 255 (ignored); `(n, h, w)` is read as A = 1. Binary masks
  saved as 0/255 are refused (255 is the ignore label): store `(masks > 127)` instead;
- optionally `num_classes` (a scalar; default: the largest label + 1), `annotation_weights`
  `(A,)` (the probabilities of the annotations when they are not equally likely, e.g. known
  modes, which `evaluate` then reports frequencies for) and `classes` (the classes the metrics
  score; default class 1 for two classes, all otherwise).

Files are read with `allow_pickle=False`: object arrays are refused. Before any array is read,
each one's shape and dtype are taken from its `.npy` header and checked against the size its
zip member declares (a file whose two disagree is refused), against each other (`images` and
`annotations` of the same n, h and w, their dtypes, `annotation_weights` of length A), and
against a limit: an array may take at most `MAX_ARRAY_BYTES` (2 GiB) once read, counting 4
bytes per value (images become float32, annotations int32), so a few megabytes of compressed
zeros cannot claim tens of gigabytes. Raise it with `npz_split(..., max_bytes=...)` or, for
`tfprobunet.data.load` and the command line, the environment variable
`TFPROBUNET_MAX_ARRAY_BYTES` (e.g. `8e9`). The same limit bounds the other loaders that read
arrays (`array_limit`, `check_array_bytes`): PHiSeg's hdf5 and the image folders.
"""

import math
import os
import zipfile

import numpy as np
import tensorflow as tf

from tfprobunet.catalog import IGNORE_LABEL
from tfprobunet.data import checks
from tfprobunet.data.source import Source, check_split, refuse_split_manifest
from tfprobunet.saving import byte_limit

KEYS = ("images", "annotations", "num_classes", "annotation_weights", "classes")
# The most bytes one array may take once read (4 per value at least: float32 images, int32
# annotations). The loader holds about three such copies while it builds the dataset.
MAX_ARRAY_BYTES = 2**31
MAX_ARRAY_BYTES_VARIABLE = "TFPROBUNET_MAX_ARRAY_BYTES"
_READERS = {(1, 0): np.lib.format.read_array_header_1_0,
            (2, 0): np.lib.format.read_array_header_2_0}


def npz_headers(path, max_bytes=None):
    """The arrays of an npz file as `{name: (shape, dtype)}`, read from their `.npy` headers
    without reading (or inflating) the arrays.

    Raises:
        ValueError: the file is not a zip of `.npy` arrays; an array's header disagrees with the
            size of its zip member; or an array would take more than `max_bytes` once read
            (default: `TFPROBUNET_MAX_ARRAY_BYTES` if set, else `MAX_ARRAY_BYTES`).
    """
    limit = array_limit(max_bytes)
    headers = {}
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, EOFError) as error:
        raise ValueError(f"{path} is not an npz file (a zip of .npy arrays, as numpy.savez "
                         f"writes): {error}.") from None
    with archive:
        for info in archive.infolist():
            name = info.filename
            if not name.endswith(".npy"):
                raise ValueError(f"{path}: its member {name} is not a .npy array; an npz holds "
                                 "only arrays (numpy.savez). It was not read.")
            shape, dtype, header_bytes = _npy_header(path, archive, info)
            key = name[:-len(".npy")]
            values = math.prod(shape)
            stored = values * dtype.itemsize
            if info.file_size != header_bytes + stored:
                raise ValueError(
                    f"{path}: `{key}` declares {dtype} {shape}, {stored:,} bytes of data, but "
                    f"its zip member holds {info.file_size - header_bytes:,}: the two "
                    "disagree (a damaged or crafted file). Save the arrays again with "
                    "numpy.savez.")
            check_array_bytes(path, key, shape, dtype, limit, "npz_split(..., max_bytes=...)")
            headers[key] = (shape, dtype)
    return headers


def array_limit(max_bytes=None):
    """The bytes the arrays a loader reads may take, in force: `max_bytes` if given, else
    `TFPROBUNET_MAX_ARRAY_BYTES` if set (e.g. `8e9`), else `MAX_ARRAY_BYTES` (2 GiB)."""
    return byte_limit(max_bytes, MAX_ARRAY_BYTES_VARIABLE, MAX_ARRAY_BYTES)


def check_array_bytes(path, key, shape, dtype, limit, option, held=None):
    """Refuse the array `key` of the file `path`, of `shape` and numpy `dtype` as the file
    declares them, if it would take more than `limit` bytes once read, at `held` bytes a value
    (default: 4 at least, as images become float32 and labels int32): a `ValueError` in one
    line naming the file, the array, the bytes, the limit and how to raise it
    (`TFPROBUNET_MAX_ARRAY_BYTES`, or the Python argument `option`, e.g.
    `"npz_split(..., max_bytes=...)"`)."""
    per_value = max(dtype.itemsize, 4) if held is None else held
    stored, total = math.prod(shape) * dtype.itemsize, math.prod(shape) * per_value
    if total > limit:
        read_as = ("" if per_value == dtype.itemsize
                   else f" stored, {total:,} once read as {per_value}-byte values")
        raise ValueError(
            f"{path}: `{key}` is {dtype} {tuple(shape)}: {stored:,} bytes{read_as}, above the "
            f"limit of {limit:,} bytes. It was not read. If the file is yours and the machine "
            f"has the memory (about three times that), raise the limit: "
            f"{MAX_ARRAY_BYTES_VARIABLE}={total} (the command line, tfprobunet.data.load) or "
            f"{option}; or split the data into smaller files.")


def _check_layout(path, headers):
    """Refuse, from the arrays' headers (`npz_headers`), an npz whose arrays disagree: before
    any of them is read."""
    unknown = sorted(set(headers) - set(KEYS))
    missing = [k for k in KEYS[:2] if k not in headers]
    if missing or unknown:
        raise ValueError(f"{path} must hold `images` and `annotations` (and optionally "
                         f"num_classes, annotation_weights, classes). Missing: {missing}; "
                         f"unknown: {unknown}.")
    (images, image_type), (annotations, label_type) = headers["images"], headers["annotations"]
    graders = annotations[1:2] if len(annotations) == 4 else (1,)
    if len(images) != 4 or len(annotations) not in (3, 4) or images[0] != annotations[0] \
            or images[1:3] != annotations[-2:]:
        raise ValueError(f"{path}: `images` must be (n, h, w, c) and `annotations` (n, A, h, w) "
                         f"with the same n, h and w. Received images {images}, annotations "
                         f"{annotations}. Nothing was read.")
    if not (image_type == np.uint8 or np.issubdtype(image_type, np.floating)) \
            or not np.issubdtype(label_type, np.integer):
        raise ValueError(f"{path}: `images` must be float (or uint8) and `annotations` int. "
                         f"Received {image_type} and {label_type}.")
    expected = {"num_classes": "a single number", "annotation_weights": f"of shape {graders}",
                "classes": "a list of class labels (one axis)"}
    fits = {"num_classes": lambda shape: math.prod(shape) == 1,
            "annotation_weights": lambda shape: shape == graders,
            "classes": lambda shape: len(shape) <= 1}
    for key in expected:
        if key in headers and not fits[key](headers[key][0]):
            raise ValueError(f"{path}: `{key}` must be {expected[key]} (annotations "
                             f"{annotations}). Received shape {headers[key][0]}. Nothing was "
                             "read.")


def _npy_header(path, archive, info):
    """`(shape, dtype, header bytes)` of the `.npy` member `info`: its first bytes only."""
    with archive.open(info) as f:
        try:
            version = np.lib.format.read_magic(f)
            if version not in _READERS:
                raise ValueError(f"npy format version {version} (1.0 and 2.0 are read)")
            shape, _, dtype = _READERS[version](f)
        except ValueError as error:
            raise ValueError(f"{path}: its member {info.filename} is not a .npy array "
                             f"({error}).") from None
        if dtype.hasobject:
            raise ValueError(f"{path}: `{info.filename[:-4]}` is an object array, which only "
                             "pickle can read (refused): store numeric arrays.")
        return tuple(shape), dtype, f.tell()


def npz_split(data_dir, split, max_bytes=None):
    """Read `data_dir/<split>.npz`.

    Args:
        data_dir: the folder of train.npz, val.npz and test.npz.
        split: `"train"`, `"val"` or `"test"`.
        max_bytes: the most bytes one array may take once read (4 per value at least); None:
            `TFPROBUNET_MAX_ARRAY_BYTES` if set, else `MAX_ARRAY_BYTES` (2 GiB).

    Returns:
        `(dataset, num_classes, annotation_weights, classes)`, the fields of a
        `tfprobunet.data.Source`; dataset yields `(image (h, w, c) float32, annotations
        (A, h, w) int32)`.
    """
    path = os.path.join(data_dir, f"{split}.npz")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No {split} split at {path}: the npz layout is one file per "
                                "split, train.npz, val.npz and test.npz, each with `images` "
                                "(n, h, w, c) and `annotations` (n, A, h, w).")
    _check_layout(path, npz_headers(path, max_bytes))
    try:
        with np.load(path, allow_pickle=False) as f:
            content = {k: f[k] for k in f.files}
    except ValueError as error:
        raise ValueError(f"{path} is not a plain npz of numeric arrays ({error}).") from None
    images, annotations = content["images"], content["annotations"]
    if annotations.ndim == 3:
        annotations = annotations[:, None]
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / 255.0
    labels = annotations[annotations != IGNORE_LABEL]
    if "num_classes" in content:
        num_classes = int(content["num_classes"])
    else:
        present = np.unique(labels)
        if len(present) == 2 and present[0] == 0 and present[1] > 1:
            raise ValueError(
                f"{path}: the annotations hold only the labels 0 and {present[1]}: binary masks "
                f"saved as 0/{present[1]}? Binarise them, e.g. `(masks > {present[1] // 2})"
                ".astype(np.uint8)`, or store `num_classes` in the file if the classes in "
                "between exist.")
        num_classes = checks.implied_num_classes(labels)
    checks.check_labels(annotations, num_classes, f"The annotations of {path}")
    weights = content.get("annotation_weights")
    classes = content.get("classes")
    dataset = tf.data.Dataset.from_tensor_slices((images.astype(np.float32, copy=False),
                                                  annotations.astype(np.int32, copy=False)))
    return (dataset, num_classes, None if weights is None else weights.astype(np.float64),
            None if classes is None else [int(c) for c in np.ravel(classes)])


def load(data_dir, split, image_size=None, seed=0, split_manifest=None, *, max_bytes=None):
    """The dataset `"npz"`: `npz_split(data_dir, split, max_bytes)` as a `Source`.

    Args:
        data_dir: the folder of train.npz, val.npz and test.npz.
        split: `"train"`, `"val"` or `"test"`.
        image_size, seed: unused: the arrays are taken as stored, split by their files.
        split_manifest: refused (the files are the split).
        max_bytes: as in `npz_split`.

    Returns:
        A `Source` of `(image (h, w, c) float32, annotations (A, h, w) int32)`, with the
        file's `num_classes`, `annotation_weights` and `classes` when it holds them.
    """
    refuse_split_manifest("npz", split_manifest, "your train/val/test files")
    check_split(split)
    return Source(*npz_split(data_dir, split, max_bytes))
