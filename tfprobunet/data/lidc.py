"""LIDC-IDRI lung lesions with 4 graders, from the two layouts users already have.

- `crops(data_dir, split)`: the 180x180 PNG crops published with the Hierarchical Probabilistic
  U-Net (Kohl et al. 2019)::

      <data_dir>/<split>/images/<patient>/<slice>.png
      <data_dir>/<split>/gt/<patient>/<slice>_l0.png ... <slice>_l3.png

  `<split>` is `train`, `val` or `test` (folders named `lidc_crops_<split>` work too); grader
  suffixes `_l0`..`_l3` and `_l1`..`_l4` are both accepted.
- `pickle_dataset(path, split)`: the `data_lidc.pickle` of the popular PyTorch port (a dict of
  `{'image': (128, 128) float, 'masks': [4 x (128, 128)], 'series_uid': str}` entries), read
  with an unpickler that builds nothing but numpy arrays and plain containers, and split by
  series (patient scan) with a seed.

Both yield `(image (s, s, 1) float32 in [0, 1], annotations (4, s, s) int32 in {0, 1})`.
"""

import collections
import io
import os
import pickle
import re

import numpy as np
import tensorflow as tf

SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = (0.7, 0.15, 0.15)
_MASK = re.compile(r"^(?P<slice>.+)_l(?P<grader>\d+)\.png$")


def _check_split(split):
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {SPLITS}. Received: {split!r}")


def _split_dir(data_dir, split):
    for name in (split, f"lidc_crops_{split}"):
        path = os.path.join(data_dir, name)
        if os.path.isdir(os.path.join(path, "images")) and os.path.isdir(os.path.join(path, "gt")):
            return path
    raise FileNotFoundError(
        f"No LIDC crops for split {split!r} under {data_dir!r}: expected "
        f"{os.path.join(data_dir, split, 'images')} and {os.path.join(data_dir, split, 'gt')} "
        "(or the same under lidc_crops_<split>), as published with the Hierarchical "
        "Probabilistic U-Net.")


def crops_files(data_dir, split="train"):
    """The image files of a split of the LIDC crops and their graders' mask files.

    Returns:
        `(images, masks)`: sorted image paths `(n,)` and mask paths `(n, graders)`, graders in
        the order of their suffix numbers.
    """
    _check_split(split)
    root = _split_dir(data_dir, split)
    masks = collections.defaultdict(dict)
    for patient in sorted(os.listdir(os.path.join(root, "gt"))):
        folder = os.path.join(root, "gt", patient)
        for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else ():
            match = _MASK.match(name)
            if match:
                key = (patient, match["slice"])
                masks[key][int(match["grader"])] = os.path.join(folder, name)
    images, annotations = [], []
    for patient in sorted(os.listdir(os.path.join(root, "images"))):
        folder = os.path.join(root, "images", patient)
        for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else ():
            if not name.endswith(".png"):
                continue
            key = (patient, name[:-len(".png")])
            if key not in masks:
                raise FileNotFoundError(f"No grader masks for {os.path.join(folder, name)}: "
                                        f"expected {key[1]}_l0.png ... in gt/{patient}/.")
            images.append(os.path.join(folder, name))
            annotations.append([masks[key][g] for g in sorted(masks[key])])
    if not images:
        raise FileNotFoundError(f"No PNG images under {os.path.join(root, 'images')}.")
    counts = collections.Counter(len(a) for a in annotations)
    if len(counts) > 1:
        odd = next(i for i, a in zip(images, annotations) if len(a) != counts.most_common(1)[0][0])
        raise ValueError(f"Every image needs the same number of grader masks; found "
                         f"{dict(counts)} (masks per image: images), e.g. {odd}.")
    return np.array(images), np.array(annotations)


def _read_png(path):
    """`(h, w)` uint8 from a grey (or RGB, converted) PNG."""
    image = tf.io.decode_png(tf.io.read_file(path), channels=1)
    return image[..., 0]


def _center(image, size):
    """Center crop (or zero pad) the last two axes of `(..., h, w)` to `(size, size)`."""
    return tf.image.resize_with_crop_or_pad(image[..., None], size, size)[..., 0]


def crops(data_dir, split="train", image_size=128, random_crop=False, seed=0):
    """The LIDC crops as a `tf.data.Dataset`, read lazily from the PNG files.

    Args:
        data_dir: folder with the `train`/`val`/`test` split folders.
        split: `"train"`, `"val"` or `"test"`.
        image_size: crop size (the paper trains on 128x128 crops of the 180x180 tiles).
        random_crop: a random window (the same for the image and its masks, another one each
            time the dataset is iterated) instead of the center one: the paper's training
            augmentation.
        seed: seeds the random windows.

    Returns:
        `tf.data.Dataset` of `(image (s, s, 1) float32 in [0, 1], annotations (graders, s, s)
        int32)`, masks binarised (any non-zero pixel is lesion).
    """
    images, masks = crops_files(data_dir, split)

    def load(paths, key):
        image_path, mask_paths = paths
        tile = tf.concat([_read_png(image_path)[None],
                          tf.map_fn(_read_png, mask_paths, fn_output_signature=tf.uint8)], axis=0)
        if random_crop:
            # Pad tiles smaller than the crop, then one window for the image and its masks.
            tile = tf.transpose(tf.image.resize_with_crop_or_pad(
                tf.transpose(tile, (1, 2, 0)), tf.maximum(tf.shape(tile)[1], image_size),
                tf.maximum(tf.shape(tile)[2], image_size)), (2, 0, 1))
            tile = tf.image.stateless_random_crop(
                tile, tf.stack([tf.shape(tile)[0], image_size, image_size]),
                seed=tf.stack([tf.cast(seed, tf.int64), key]))
        else:
            tile = _center(tile, image_size)
        image = tf.cast(tile[0], tf.float32) / 255.0
        return image[..., None], tf.cast(tile[1:] > 0, tf.int32)

    keys = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    return tf.data.Dataset.zip(tf.data.Dataset.from_tensor_slices((images, masks)), keys).map(
        load, num_parallel_calls=tf.data.AUTOTUNE)


# ---------------------------------------------------------------------- the PyTorch port's pickle
class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asks to build an object other than numpy arrays and plain containers."""


class _NumpyUnpickler(pickle.Unpickler):
    """Builds only numpy arrays, dtypes, scalars and the plain containers pickle itself makes
    (dict, list, tuple, str, numbers): no other class, so no `__reduce__` payload can run."""

    _ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),  # protocol 2 writes bytes as _codecs.encode(str, 'latin1')
    }

    def __init__(self, file, source):
        super().__init__(file)
        self.source = source

    def find_class(self, module, name):
        # Pickles written by numpy 1.x name numpy.core, numpy 2 numpy._core.
        canonical = re.sub(r"^numpy\.core\b", "numpy._core", module)
        if (canonical, name) in self._ALLOWED:
            return super().find_class(canonical, name)
        raise UnsafePickleError(
            f"Refusing to load {self.source}: it asks to build `{module}.{name}`, and the LIDC "
            "pickle reader only builds numpy arrays and plain containers (dict, list, str). "
            "Nothing from the file was run. If you trust the file, convert it to .npz yourself.")


def read_pickle(path):
    """Load a pickle with `_NumpyUnpickler`; raises `UnsafePickleError` for anything else."""
    with open(path, "rb") as f:
        return _NumpyUnpickler(io.BytesIO(f.read()), path).load()


def pickle_arrays(path):
    """All entries of the LIDC pickle(s) at `path` (a file, or a folder of `*.pickle` files).

    Returns:
        `(images (n, h, w, 1) float32, annotations (n, 4, h, w) int32, series (n,) str)`,
        sorted by key.
    """
    files = [path] if os.path.isfile(path) else sorted(
        os.path.join(path, f) for f in os.listdir(path) if f.endswith(".pickle")) \
        if os.path.isdir(path) else []
    if not files:
        raise FileNotFoundError(f"No LIDC pickle at {path!r}: pass the data_lidc.pickle file or "
                                "a folder holding *.pickle files.")
    entries = {}
    for file in files:
        data = read_pickle(file)
        if not isinstance(data, dict):
            raise ValueError(f"{file}: expected a dict of {{'image', 'masks', 'series_uid'}} "
                             f"entries, found a {type(data).__name__}.")
        entries.update(data)
    images, annotations, series = [], [], []
    for key in sorted(entries):
        entry = entries[key]
        if not isinstance(entry, dict) or not {"image", "masks", "series_uid"} <= set(entry):
            raise ValueError(f"Entry {key!r} must be a dict with keys 'image', 'masks' and "
                             f"'series_uid'. Received: {entry!r:.200}")
        images.append(np.asarray(entry["image"], np.float32))
        annotations.append(np.stack([np.asarray(m) > 0 for m in entry["masks"]]).astype(np.int32))
        series.append(str(entry["series_uid"]))
    images = np.stack(images)[..., None]
    if images.max() > 1.0:  # stored as 0..255
        images = images / 255.0
    return images, np.stack(annotations), np.array(series)


def split_series(series, split, fractions=SPLIT_FRACTIONS, seed=0):
    """Indices of the examples in `split`, with every series (scan) in exactly one split.

    The unique series are shuffled with `seed` and cut by `fractions` (train, val, test).
    """
    _check_split(split)
    unique = np.unique(series)
    order = np.random.default_rng(seed).permutation(len(unique))
    bounds = np.round(np.cumsum((0.0,) + tuple(fractions)) / sum(fractions) * len(unique))
    i = SPLITS.index(split)
    chosen = set(unique[order[int(bounds[i]):int(bounds[i + 1])]])
    return np.array([k for k, s in enumerate(series) if s in chosen], np.int64)


def pickle_dataset(path, split="train", image_size=None, seed=0, fractions=SPLIT_FRACTIONS):
    """The LIDC pickle of the PyTorch port, split by series.

    Args:
        path: the `data_lidc.pickle` file, or a folder of `*.pickle` files.
        split: `"train"`, `"val"` or `"test"`.
        image_size: center crop (or pad) to this size; None keeps the stored 128x128.
        seed: seeds the split by series.
        fractions: shares of the series in train, val and test.

    Returns:
        `tf.data.Dataset` of `(image (s, s, 1) float32, annotations (4, s, s) int32)`.
    """
    images, annotations, series = pickle_arrays(path)
    index = split_series(series, split, fractions, seed)
    if not len(index):
        raise ValueError(f"Split {split!r} of {path} is empty: {len(np.unique(series))} series "
                         f"split by {fractions}.")
    dataset = tf.data.Dataset.from_tensor_slices((images[index], annotations[index]))
    if image_size is None:
        return dataset
    return dataset.map(lambda image, masks: (
        _center(image[..., 0], image_size)[..., None], _center(masks, image_size)))
