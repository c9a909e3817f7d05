"""LIDC-IDRI lung lesions with 4 graders, from the two layouts users already have.

- `crops(data_dir, split)`: the 180x180 PNG crops published with the Hierarchical Probabilistic
  U-Net (Kohl et al. 2019)::

      <data_dir>/<split>/images/<patient>/<slice>.png
      <data_dir>/<split>/gt/<patient>/<slice>_l0.png ... <slice>_l3.png

  `<split>` is `train`, `val` or `test` (folders named `lidc_crops_<split>` work too); grader
  suffixes `_l0`..`_l3` and `_l1`..`_l4` are both accepted, the same for every image. Every
  PNG's header and end are checked before anything is decoded. A split whose images or
  patients are not as many as published (`PUBLISHED_CROPS`) is loaded with a
  `SplitCountWarning`; `crops_summary` says what was found. `crops_manifest` writes the split of
  the folders down (its patients); with a manifest, `crops` pools the patients of the three
  folders and takes the split the manifest gives.
- `pickle_dataset(path, split)`: the `data_lidc.pickle` of the popular PyTorch port (a dict of
  `{'image': (128, 128) float, 'masks': [4 x (128, 128)], 'series_uid': str}` entries), read
  with the restricted unpickler of `safe_pickle` (nothing but numpy arrays and plain containers,
  and no more array bytes than the file holds), and split by CT series (`series_uid`) with a
  seed, or by a split manifest (MoSE's published split: `split_manifest(path, split="mose")`).

Both yield `(image (s, s, 1) float32 in [0, 1], annotations (4, s, s) int32 in {0, 1})`;
`load(data_dir, split, name="lidc" | "lidc-pickle")` gives either as a `Source`, for
`tfprobunet.data.load`. PNG headers are checked and decoded by `tfprobunet.data.images`.
"""

import collections
import os
import re
import warnings

import numpy as np
import tensorflow as tf

from tfprobunet import catalog
from tfprobunet.catalog import SPLITS
from tfprobunet.data import images as images_lib
from tfprobunet.data import manifests
# The restricted unpickler has its own module; its names stay importable from here.
from tfprobunet.data.safe_pickle import ARRAY_BYTES_SLACK, UnsafePickleError, read_pickle
from tfprobunet.data.source import Source, check_split

__all__ = ["PUBLISHED_CROPS", "SPLITS", "SPLIT_FRACTIONS", "SplitCountWarning", "UnsafePickleError",
           "count_difference", "crop_size", "crops", "crops_files", "crops_manifest",
           "crops_summary", "load", "pickle_arrays", "pickle_dataset", "read_pickle",
           "split_manifest", "split_series"]

# The images and patients of each split of the LIDC crops as published: Kohl et al. 2019 (A
# Hierarchical Probabilistic U-Net for Modeling Multi-Scale Ambiguities), the LIDC crops
# released with it.
PUBLISHED_CROPS = {"train": {"images": 8843, "patients": 530},
                   "val": {"images": 1993, "patients": 111},
                   "test": {"images": 1980, "patients": 103}}
SPLIT_FRACTIONS = manifests.FRACTIONS  # PHiSeg's 64/16/20 of the series
_MASK = re.compile(r"^(?P<slice>.+)_l(?P<grader>\d+)\.png$")


class SplitCountWarning(UserWarning):
    """A split of the LIDC crops does not have the published numbers of images and patients
    (`PUBLISHED_CROPS`): its GED and other metrics are not comparable with published tables."""


def _split_dir(data_dir, split, required=True):
    for name in (split, f"lidc_crops_{split}"):
        path = os.path.join(data_dir, name)
        if os.path.isdir(os.path.join(path, "images")) and os.path.isdir(os.path.join(path, "gt")):
            return path
    if not required:
        return None
    raise FileNotFoundError(
        f"No LIDC crops for split {split!r} under {data_dir!r}: expected "
        f"{os.path.join(data_dir, split, 'images')} and {os.path.join(data_dir, split, 'gt')} "
        "(or the same under lidc_crops_<split>), as published with the Hierarchical "
        "Probabilistic U-Net.")


def _suffixes(graders):
    return ", ".join(f"_l{g}" for g in graders)


def _check_graders(images, graders):
    """Every image has the same grader suffixes, numbered up from 0 or 1."""
    sets = collections.Counter(graders)
    expected = sets.most_common(1)[0][0]
    for image, found in zip(images, graders):
        if found != expected:
            raise ValueError(
                f"Every image needs the same grader masks: {image} has {_suffixes(found)} "
                f"but {sets[expected]} of the {len(images)} images have {_suffixes(expected)}. "
                "Add the missing masks or rename the stray ones.")
    if expected not in (tuple(range(len(expected))), tuple(range(1, len(expected) + 1))):
        raise ValueError(
            f"Every image has the grader masks {_suffixes(expected)} (e.g. {images[0]}), but "
            f"grader suffixes must count up: {_suffixes(range(len(expected)))} or "
            f"{_suffixes(range(1, len(expected) + 1))}. Rename the misnumbered grader's masks.")


def crops_files(data_dir, split="train"):
    """The image files of a split of the LIDC crops and their graders' mask files.

    Every file is checked before it is returned (two small reads each, no decoding): grader
    suffixes, PNG headers and ends, and mask sizes, so that a broken dataset fails
    here, naming the files, rather than in the middle of training.

    Returns:
        `(images, masks)`: sorted image paths `(n,)` and mask paths `(n, graders)`, graders in
        the order of their suffix numbers.

    Raises:
        FileNotFoundError: no split folder, no images, or an image without masks.
        ValueError: grader suffixes that differ between images or skip a number; an empty,
            foreign or truncated PNG; a mask of another size than its image.
    """
    check_split(split)
    root = _split_dir(data_dir, split)
    masks = collections.defaultdict(dict)
    for patient in sorted(os.listdir(os.path.join(root, "gt"))):
        folder = os.path.join(root, "gt", patient)
        for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else ():
            match = _MASK.match(name)
            if match:
                key = (patient, match["slice"])
                masks[key][int(match["grader"])] = os.path.join(folder, name)
    images, annotations, graders = [], [], []
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
            graders.append(tuple(sorted(masks[key])))
            annotations.append([masks[key][g] for g in graders[-1]])
    if not images:
        raise FileNotFoundError(f"No PNG images under {os.path.join(root, 'images')}.")
    _check_graders(images, graders)
    for image, image_masks in zip(images, annotations):
        size = images_lib.png_size(image)
        for mask in image_masks:
            mask_size = images_lib.png_size(mask)
            if mask_size != size:
                raise ValueError(
                    f"Grader mask {mask} is {mask_size[0]}x{mask_size[1]} pixels (height x "
                    f"width) but its image {image} is {size[0]}x{size[1]}: every mask must have "
                    "its image's size.")
    return np.array(images), np.array(annotations)


def _patients(images):
    """The patient (folder name) of each image path."""
    return [os.path.basename(os.path.dirname(path)) for path in images]


def _found_files(data_dir):
    """`{split: (images, masks)}` (`crops_files`) of every split folder under `data_dir`."""
    files = {split: crops_files(data_dir, split) for split in SPLITS
             if _split_dir(data_dir, split, required=False)}
    if not files:
        _split_dir(data_dir, "train")  # raises, saying what is expected
    graders = {split: masks.shape[1] for split, (_, masks) in files.items()}
    if len(set(graders.values())) > 1:
        raise ValueError(f"The split folders of {data_dir} have different numbers of grader "
                         f"masks per image: {graders}.")
    return files


def _pooled(files):
    """`(images, masks)` of `files` (`_found_files`), pooled in the order of `SPLITS`."""
    return (np.concatenate([images for images, _ in files.values()]),
            np.concatenate([masks for _, masks in files.values()]))


def _warn_if_not_published(data_dir, split, images):
    difference = count_difference(split, len(images), len(set(_patients(images))))
    if difference:
        warnings.warn(f"{data_dir}: {difference}", SplitCountWarning, stacklevel=3)


def count_difference(split, images, patients):
    """None when `images` and `patients` are the published counts of `split`
    (`PUBLISHED_CROPS`), else a line saying what was found and what was published."""
    published = PUBLISHED_CROPS[split]
    if (images, patients) == (published["images"], published["patients"]):
        return None
    return (f"the LIDC crops' {split!r} split has {images} images of {patients} patients, the "
            f"published one {published['images']} images of {published['patients']} patients "
            "(Kohl et al. 2019): GED and the other metrics will not be comparable with "
            "published tables.")


def crops_summary(data_dir):
    """What the LIDC crops under `data_dir` hold: `{split: {"images": n, "patients": p,
    "published": {"images": N, "patients": P}}}` for every split folder found, the published
    counts from `PUBLISHED_CROPS`. Checks every file (`crops_files`)."""
    return {split: {"images": len(images), "patients": len(set(_patients(images))),
                    "published": dict(PUBLISHED_CROPS[split])}
            for split, (images, _) in _found_files(data_dir).items()}


def crops_manifest(data_dir):
    """The split manifest of the LIDC crops under `data_dir` (see `tfprobunet.data.manifests`):
    the patients of each split folder as found, `"seed": None`, and the sha256 of the files'
    relative paths and sizes (`manifests.sha256`). Warns (`SplitCountWarning`) for every split
    that is not as published."""
    files = _found_files(data_dir)
    for split, (images, _) in files.items():
        _warn_if_not_published(data_dir, split, images)
    images, masks = _pooled(files)
    patients = {split: _patients(split_images) for split, (split_images, _) in files.items()}
    return manifests.found("lidc", data_dir, patients, files=[*images, *masks.ravel()])


def _read_png(path):
    """`(h, w)` uint8 from a grey (or RGB, converted) PNG."""
    return images_lib.decode_png(path, 1)[..., 0]


def _center(image, height, width):
    """Center crop the last two axes of `(..., h, w)` to `(height, width)`."""
    return tf.image.resize_with_crop_or_pad(image[..., None], height, width)[..., 0]


def crop_size(image_size):
    """`(height, width)` from an int or a pair."""
    size = (image_size, image_size) if np.ndim(image_size) == 0 else tuple(image_size)
    if len(size) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in size):
        raise ValueError("`image_size` must be a positive int or (height, width). Received: "
                         f"{image_size!r}")
    return int(size[0]), int(size[1])


def crops(data_dir, split="train", image_size=128, random_crop=False, seed=0,
          split_manifest=None, cache=False, *, max_pixels=None):
    """The LIDC crops as a `tf.data.Dataset`, read lazily from the PNG files.

    Args:
        data_dir: folder with the `train`/`val`/`test` split folders.
        split: `"train"`, `"val"` or `"test"`.
        image_size: crop size, an int or `(height, width)` (the paper trains on 128x128 crops
            of the 180x180 tiles). Every tile must be at least this size: smaller ones are
            refused, naming the file, rather than padded.
        random_crop: a random window (the same for the image and its masks, another one each
            time the dataset is iterated) instead of the center one: the paper's training
            augmentation.
        seed: seeds the random windows.
        split_manifest: a manifest (its JSON file, or the dict; see `crops_manifest`) whose
            patients make the split, taken from the images of all split folders found;
            refused unless made from these files (its sha256).
        cache: keep the decoded tiles after the first pass, before the crop: True in memory
            (uint8, (graders + 1) * 180 * 180 bytes a tile: 1.4 GB for the 8843 training
            tiles), a file path to cache on disk (`tf.data.Dataset.cache`), False to decode
            the PNGs on every pass. The crops and their order are the same either way
            (bench/pipeline.py measures both).
        max_pixels: the most pixels (height x width) of one tile, checked from its header
            before it is decoded; None: `TFPROBUNET_MAX_IMAGE_PIXELS` if set, else
            `images.MAX_IMAGE_PIXELS` (2**26; the published tiles have 32400).

    Returns:
        `tf.data.Dataset` of `(image (h, w, 1) float32 in [0, 1], annotations (graders, h, w)
        int32)`, masks binarised (any non-zero pixel is lesion).

    Raises:
        FileNotFoundError, ValueError: as `crops_files`, which checks every file up front; a
            tile smaller than `image_size`, or larger than `max_pixels`.

    Warns:
        SplitCountWarning: the split's images or patients are not as many as published
            (`count_difference`; once per data folder and split, as Python shows a warning).
    """
    height, width = crop_size(image_size)
    if split_manifest is None:
        images, masks = crops_files(data_dir, split)
    else:
        check_split(split)
        images, masks = _pooled(_found_files(data_dir))
        manifest = manifests.read(split_manifest, data_dir, "lidc",
                                  files=[*images, *masks.ravel()])
        index = manifests.indices(manifest["splits"], _patients(images), split)
        if not len(index):
            raise ValueError(f"The split manifest puts no patient of {data_dir} in {split!r}.")
        images, masks = images[index], masks[index]
    _warn_if_not_published(data_dir, split, images)
    max_pixels = images_lib.pixel_limit(max_pixels)
    for path in images:
        tile = images_lib.png_size(path)
        images_lib.check_pixels(path, *tile, max_pixels, "lidc.crops(..., max_pixels=...)")
        if tile[0] < height or tile[1] < width:
            raise ValueError(
                f"{path} is {tile[0]}x{tile[1]} pixels (height x width), smaller than the "
                f"{height}x{width} crop asked for. Pass a crop that fits every tile (CLI: "
                f"--image-size {min(height, tile[0])},{min(width, tile[1])}), or read the "
                "folder with tfprobunet.data.from_folders (CLI: --dataset folder), which keeps "
                "each image's size.")

    def decode(image_path, mask_paths):
        return tf.concat([_read_png(image_path)[None],
                          tf.map_fn(_read_png, mask_paths, fn_output_signature=tf.uint8)], axis=0)

    def window(tile, key):
        if random_crop:  # one window for the image and its masks
            tile = tf.image.stateless_random_crop(
                tile, tf.stack([tf.shape(tile)[0], height, width]),
                seed=tf.stack([tf.cast(seed, tf.int64), key]))
        else:
            tile = _center(tile, height, width)
        image = tf.cast(tile[0], tf.float32) / 255.0
        return image[..., None], tf.cast(tile[1:] > 0, tf.int32)

    tiles = tf.data.Dataset.from_tensor_slices((images, masks)).map(
        decode, num_parallel_calls=tf.data.AUTOTUNE)
    if cache:
        tiles = tiles.cache("" if cache is True else os.fspath(cache))
    keys = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    return tf.data.Dataset.zip(tiles, keys).map(window, num_parallel_calls=tf.data.AUTOTUNE)


# Stacked as float32 and int32, arrays stored at 1 byte a pixel or more grow at most 4 times;
# beyond 8, entries share arrays (one array referenced many times, each reference a copy once
# stacked): a few kB of pickle could ask for GBs.
_STACKED_PER_STORED_BYTE = 8


def _described(value):
    """What an entry holds, in a line: shapes of arrays (in a list), else type names."""
    if isinstance(value, (list, tuple)):
        items = [str(v.shape) if isinstance(v, np.ndarray) else type(v).__name__
                 for v in value[:8]]
        return f"a {type(value).__name__} of {', '.join(items)}{', ...' if len(value) > 8 else ''}"
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape}"
    return f"a {type(value).__name__}"


def pickle_arrays(path):
    """All entries of the LIDC pickle(s) at `path` (a file, or a folder of `*.pickle` files).

    Returns:
        `(images (n, h, w, 1) float32, annotations (n, 4, h, w) int32, series (n,) str)`,
        sorted by key.

    Raises:
        UnsafePickleError: a file asks to build anything but numpy arrays and plain containers,
            or more array bytes than it holds (see `safe_pickle.read_pickle`).
        ValueError: entries that are not `{'image': 2-D array, 'masks': [arrays of its shape],
            'series_uid': str}`, or that share arrays so much that stacking them would take
            more than 8 times the files' size.
    """
    files = [path] if os.path.isfile(path) else sorted(
        os.path.join(path, f) for f in os.listdir(path) if f.endswith(".pickle")) \
        if os.path.isdir(path) else []
    if not files:
        raise FileNotFoundError(f"No LIDC pickle at {path!r}: pass the data_lidc.pickle file or "
                                "a folder holding *.pickle files.")
    entries, origin = {}, {}
    for file in files:
        data = read_pickle(file)
        if not isinstance(data, dict):
            raise ValueError(f"{file}: expected a dict of {{'image', 'masks', 'series_uid'}} "
                             f"entries, found a {type(data).__name__}.")
        entries.update(data)
        origin.update(dict.fromkeys(data, file))
    pixels = 0  # counted before anything is copied
    for key in sorted(entries):
        entry, where = entries[key], f"Entry {key!r} of {origin[key]}"
        if not isinstance(entry, dict) or not {"image", "masks", "series_uid"} <= set(entry):
            raise ValueError(f"{where} must be a dict with keys 'image', 'masks' and "
                             f"'series_uid'. Received: {entry!r:.200}")
        image, masks = entry["image"], entry["masks"]
        if not isinstance(image, np.ndarray) or image.ndim != 2:
            raise ValueError(f"{where}: 'image' must be a 2-D numpy array. Received: "
                             f"{_described(image)}.")
        if (not isinstance(masks, (list, tuple)) or not masks
                or any(not isinstance(m, np.ndarray) or m.shape != image.shape for m in masks)):
            raise ValueError(f"{where}: 'masks' must be a list of numpy arrays of the image's "
                             f"shape {image.shape}. Received: {_described(masks)}.")
        if not isinstance(entry["series_uid"], str):
            raise ValueError(f"{where}: 'series_uid' must be a str. Received: "
                             f"{_described(entry['series_uid'])}.")
        pixels += image.size * (1 + len(masks))
    stored = sum(os.path.getsize(f) for f in files)
    if 4 * pixels > _STACKED_PER_STORED_BYTE * stored + ARRAY_BYTES_SLACK:
        raise ValueError(
            f"{path}: its {len(entries)} entries would stack into {4 * pixels:,} bytes of "
            f"float32 and int32 arrays, more than {_STACKED_PER_STORED_BYTE} times the "
            f"{stored:,} bytes of pickle: entries share arrays (one array referenced many "
            "times), and each reference would be copied. Save every entry's arrays separately.")
    images, annotations, series = [], [], []
    for key in sorted(entries):
        entry = entries[key]
        images.append(np.asarray(entry["image"], np.float32))
        annotations.append(np.stack([m > 0 for m in entry["masks"]]).astype(np.int32))
        series.append(entry["series_uid"])
    images = np.stack(images)[..., None]
    if images.max() > 1.0:  # stored as 0..255
        images = images / 255.0
    return images, np.stack(annotations), np.array(series)


def split_series(series, split, fractions=SPLIT_FRACTIONS, seed=0):
    """Indices of the examples in `split`, with every series (scan) in exactly one split.

    The unique series are shuffled with `seed` and cut by `fractions` (train, val, test), as
    a split manifest records them (`manifests.split_ids`).
    """
    return manifests.indices(manifests.split_ids(series, seed, fractions), series, split)


def split_manifest(path, seed=0, fractions=SPLIT_FRACTIONS, split="seed"):
    """The split manifest of the pickle at `path` (see `tfprobunet.data.manifests`): its series
    shuffled with `seed`, cut by `fractions`, or with `split="mose"` MoSE's split of them
    (`manifests.mose_split`), and the file's sha256."""
    return manifests.make("lidc-pickle", path, pickle_arrays(path)[2], seed, fractions,
                          split=split)


def pickle_dataset(path, split="train", image_size=None, seed=0, fractions=SPLIT_FRACTIONS,
                   split_manifest=None):
    """The LIDC pickle of the PyTorch port, split by series.

    Args:
        path: the `data_lidc.pickle` file, or a folder of `*.pickle` files.
        split: `"train"`, `"val"` or `"test"`.
        image_size: center crop (or pad) to this size; None keeps the stored 128x128.
        seed: seeds the split by series.
        fractions: shares of the series in train, val and test (PHiSeg's 64/16/20).
        split_manifest: a manifest (its JSON file, or the dict) to take the split from instead
            of `seed` and `fractions`; refused unless made from this very file (its sha256).

    Returns:
        `tf.data.Dataset` of `(image (s, s, 1) float32, annotations (4, s, s) int32)`.
    """
    images, annotations, series = pickle_arrays(path)
    if split_manifest is None:
        index = split_series(series, split, fractions, seed)
    else:
        manifest = manifests.read(split_manifest, path, "lidc-pickle")
        index = manifests.indices(manifest["splits"], series, split)
    if not len(index):
        raise ValueError(f"Split {split!r} of {path} is empty: {len(np.unique(series))} series "
                         f"split by {fractions}.")
    dataset = tf.data.Dataset.from_tensor_slices((images[index], annotations[index]))
    if image_size is None:
        return dataset
    return dataset.map(lambda image, masks: (
        _center(image[..., 0], *crop_size(image_size))[..., None],
        _center(masks, *crop_size(image_size))))


def load(data_dir, split, image_size=None, seed=0, split_manifest=None, *, name="lidc",
         **options):
    """The datasets `"lidc"` (the PNG crops, `crops`) and `"lidc-pickle"` (the PyTorch port's
    pickle, `pickle_dataset`) as a `Source` of 2 classes, annotations equally likely.

    Args:
        data_dir: the crops' folder (`"lidc"`), or the pickle file or its folder
            (`"lidc-pickle"`).
        split: `"train"`, `"val"` or `"test"`.
        image_size: crop size, an int or `(height, width)`. Default: the crops' 128 (the
            catalog's), the pickle's stored size.
        seed: seeds the crops' random windows, or the pickle's split by series.
        split_manifest: a manifest (its JSON file, or the dict) fixing the split.
        name: `"lidc"` or `"lidc-pickle"`: this module reads both.
        **options: passed to `crops` (`random_crop`, default True for `"train"`: random
            windows for training, this library's choice, the paper gives none; DeepMind's
            notebook and CCDM take the central crop; `cache`) or to `pickle_dataset`
            (`fractions`).

    Returns:
        A `Source` of `(image (h, w, 1) float32 in [0, 1], annotations (4, h, w) int32)`.
    """
    if name == "lidc":
        options.setdefault("random_crop", split == "train")
        dataset = crops(data_dir, split, image_size or catalog.DATASETS[name].image_size,
                        seed=seed, split_manifest=split_manifest, **options)
    elif name == "lidc-pickle":
        dataset = pickle_dataset(data_dir, split, image_size, seed,
                                 split_manifest=split_manifest, **options)
    else:
        raise ValueError(f"`name` must be 'lidc' or 'lidc-pickle'. Received: {name!r}")
    return Source(dataset, 2, None, None)
