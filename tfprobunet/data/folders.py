"""Your own data as image files: a folder of images and a folder of masks, one mask file per
rater, read by `from_folders(images, masks, split)`, and by `load(FOLDER, split)` (the dataset
`"folder"`: `tfprobunet.data.load("folder", ...)`, `tfprobunet train|evaluate --dataset folder
--data-dir FOLDER`) from `FOLDER/images` and `FOLDER/masks`. The files are decoded by
`tfprobunet.data.images`.

Layout (any names; PNG, JPEG, BMP or TIFF; `{stem}` is an image's file name without extension)::

    images/scan01.png            masks/scan01_0.png  masks/scan01_1.png  masks/scan01_2.png
    images/scan02.png            masks/scan02_0.png  ...

Every image has the same raters (the part of the mask name that `*` stands for), so that each
image has A masks, in the sorted order of those parts. With subfolders `train/`, `val/` and
`test/` in both folders, those are the splits; otherwise the images are split by a seed. A
split manifest (`split_manifest`: the image file names of each split) replaces either: the
images of all subfolders are pooled and each split takes the names the manifest lists.
"""

import bisect
import collections
import concurrent.futures
import fnmatch
import glob
import itertools
import os

import numpy as np
import tensorflow as tf

from tfprobunet import layers
from tfprobunet.catalog import IGNORE_LABEL, SPLITS
from tfprobunet.data import checks, manifests
from tfprobunet.data import images as images_lib
from tfprobunet.data.source import Source, check_split

# The image files read (`tfprobunet.data.images` decodes them).
EXTENSIONS = images_lib.EXTENSIONS
FRACTIONS = (0.8, 0.1, 0.1)
# Sides are padded to a multiple of this by default: U-Nets of up to 5 levels take them.
MULTIPLE = 16
# Files decoded at the same time (PIL lets go of the GIL while it decodes). Twice as many cases
# are read ahead of the one being stored, no more: the decoded files do not pile up.
_WORKERS = min(8, (os.cpu_count() or 1) + 2)
# x / 255 in float32 for each 8-bit value x: the dataset looks the pixels up here, so that they
# are the very floats that numpy's `image / 255.0` gives (as they were before the images were
# kept as bytes), whatever TensorFlow's division does.
_FLOATS = np.arange(256, dtype=np.float32) / 255.0


def _files(folder):
    return sorted(name for name in os.listdir(folder)
                  if name.lower().endswith(EXTENSIONS) and os.path.isfile(
                      os.path.join(folder, name)))


def _split_folders(images, masks, split):
    """The split's image and mask folders if `images` has split subfolders, else None."""
    present = [s for s in SPLITS if os.path.isdir(os.path.join(images, s))]
    if not present:
        return None
    if split not in present:
        raise FileNotFoundError(f"{images} has split subfolders {present} but no {split!r}: "
                                f"add {os.path.join(images, split)}, or remove the subfolders "
                                "to split by a seed.")
    mask_folder = os.path.join(masks, split)
    if not os.path.isdir(mask_folder):
        raise FileNotFoundError(f"{os.path.join(images, split)} has no mask folder "
                                f"{mask_folder}: the masks are split as the images are.")
    return os.path.join(images, split), mask_folder


def _match_masks(image_names, masks, pattern):
    """`(n, A)` mask paths: the files of `masks` that `pattern` matches for each image."""
    mask_names = _files(masks)  # sorted
    found = [fnmatch.filter(_starting_with(mask_names, _literal_prefix(pattern, name)),
                            pattern.format(stem=glob.escape(os.path.splitext(name)[0])))
             for name in image_names]
    raters = [sorted(_rater(n, pattern, os.path.splitext(i)[0]) for n in f)
              for f, i in zip(found, image_names)]
    everyone = sorted(set().union(*map(set, raters)))
    if not everyone:
        raise FileNotFoundError(f"No mask in {masks} matches {pattern!r} for any image (e.g. "
                                f"{pattern.format(stem=os.path.splitext(image_names[0])[0])} "
                                "for the first).")
    paths = []
    for name, names, image_raters in zip(image_names, found, raters):
        missing = [r for r in everyone if r not in image_raters]
        if missing:
            stem = os.path.splitext(name)[0]
            raise FileNotFoundError(
                f"{name} has no mask for rater(s) {missing}: expected "
                f"{os.path.join(masks, pattern.format(stem=stem).replace('*', missing[0]))} "
                f"(the other images have masks for raters {everyone}).")
        by_rater = {_rater(n, pattern, os.path.splitext(name)[0]): n for n in names}
        paths.append([os.path.join(masks, by_rater[r]) for r in everyone])
    return paths


def _literal_prefix(pattern, image_name):
    """The start of every mask name `pattern` matches for `image_name`: the pattern with the
    stem filled in, up to its first wildcard."""
    formatted = pattern.format(stem=os.path.splitext(image_name)[0])
    return formatted[:min((i for i in map(formatted.find, "*?[") if i >= 0),
                          default=len(formatted))]


def _starting_with(sorted_names, prefix):
    """The names of the sorted list `sorted_names` that start with `prefix` (a bisection: the
    masks of n images are found in n log n, not by testing every name for every image)."""
    start = bisect.bisect_left(sorted_names, prefix)
    end = start
    while end < len(sorted_names) and sorted_names[end].startswith(prefix):
        end += 1
    return sorted_names[start:end]


def _rater(mask_name, pattern, stem):
    """The part of `mask_name` that `*` stands for in `pattern`."""
    head, _, tail = pattern.format(stem=stem).partition("*")
    return mask_name[len(head):len(mask_name) - len(tail)]


def from_folders(images, masks, split="train", pattern="{stem}_*.png", channels=1,
                 binarize=True, num_classes=None, multiple=MULTIPLE, fractions=FRACTIONS,
                 seed=0, split_manifest=None):
    """Read a split of your images and their raters' masks from two folders into memory.

    The files are decoded a few at a time, in threads, and held in bytes, as stored: a case of
    H x W pixels (padded) with A masks takes `H * W * channels + A * H * W` bytes (2 bytes an
    image pixel when a file of the split is 16-bit; 4 bytes a mask pixel for labels outside
    0-255, with `binarize=False`); the dataset makes float32 and int32
    of each example as it yields it. 9000 cases of 180x180, padded to 192x192, with 4 masks take
    184 KB each, 1.7 GB, where they took 737 KB (6.6 GB) as the float32 images and int32 masks
    held before, and several times that while being read. A pipeline reading the dataset holds a
    second copy (tf.data copies the tensors it starts from).

    Args:
        images: folder of image files, one per case (or with `train/`, `val/`, `test/`).
        masks: folder of mask files, one per case and rater, split the same way.
        split: `"train"`, `"val"` or `"test"`.
        pattern: the masks of image `{stem}`, `*` standing for the rater.
        channels: 1 reads every image as grey (RGB converted), 3 as RGB (grey repeated).
        binarize: True reads each mask as foreground (1) / background (0) from its grey
            values: `mask > 127` for 8-bit masks (0/255, as annotation tools save them),
            `mask > 0` for masks whose values are 0 and 1; a mask whose largest value is 2 to
            127 (a label map of several classes, all background read so) is refused. False
            keeps the values as class labels (grey or palette images; 255 is the ignore
            label).
        num_classes: with `binarize=False`, K (default: the largest label + 1).
        multiple: every image is padded at the bottom and right, repeating its last row and
            column, to the largest height and width in the split rounded up to a multiple of
            this (the U-Net needs sides divisible by `2 ** (levels - 1)`); the masks are padded
            with the ignore label, which the loss and the metrics leave out. 1 pads only to a
            common size.
        fractions: shares of train, val and test when splitting by `seed`.
        seed: seeds the split (without split subfolders).
        split_manifest: a manifest (its JSON file, or the dict; see `split_manifest`) whose
            image file names make the split instead of `seed` or the subfolders; refused
            unless made from these files (its sha256 covers their paths and sizes).

    Returns:
        A `tfprobunet.data.Source` of `(image (H, W, channels) float32 in [0, 1], annotations
        (A, H, W) int32)`, images in sorted file order; `image_sizes` gives their original
        sizes, to crop outputs back (`tfprobunet.prediction.predict` pads and crops by itself).

    Raises:
        FileNotFoundError: a folder, split, or rater mask that is missing (named).
        ValueError: an unreadable file, a mask of another size than its image, labels out of
            range, or 0/255 masks with `binarize=False` (`checks.check_labels`).
    """
    check_split(split)
    if channels not in (1, 3):
        raise ValueError(f"`channels` must be 1 (grey) or 3 (RGB). Received: {channels!r}")
    cases = _cases(images, masks, split, pattern, fractions, seed, split_manifest)
    stored_images, stored_masks, sizes = _load(*cases, channels, binarize, multiple)
    if not binarize:
        labels = _unpadded(stored_masks, sizes)
        if num_classes is None:
            num_classes = checks.implied_num_classes(labels)
        checks.check_labels(labels, num_classes, f"The masks in {masks}")
        del labels
    dataset = tf.data.Dataset.from_tensor_slices((stored_images, stored_masks)).map(_for_model)
    # Checked above without the padding (binarised masks hold 0 and 1 only): the pipelines
    # would count the padding's 255 as ignored labels, and warn about 0/255 masks.
    return Source(checks.mark_checked(dataset), 2 if binarize else int(num_classes), None, None)


def load(data_dir, split, image_size=None, seed=0, split_manifest=None, **options):
    """The dataset `"folder"`: `from_folders(data_dir/images, data_dir/masks, split, ...)`.

    Args:
        data_dir: the folder holding `images/` and `masks/`.
        split: `"train"`, `"val"` or `"test"`.
        image_size: unused: every image keeps its size (padded to a common one, see
            `from_folders`' `multiple`).
        seed, split_manifest: as in `from_folders`.
        **options: the other arguments of `from_folders` (`pattern`, `channels`, `binarize`,
            `num_classes`, `multiple`, `fractions`).

    Returns:
        A `Source` of `(image (H, W, channels) float32 in [0, 1], annotations (A, H, W) int32)`.
    """
    return from_folders(os.path.join(data_dir, "images"), os.path.join(data_dir, "masks"),
                        split, seed=seed, split_manifest=split_manifest, **options)


def image_sizes(images, masks, split="train", pattern="{stem}_*.png", fractions=FRACTIONS,
                seed=0, split_manifest=None):
    """The original `(height, width)` of each image of the split, in `from_folders`' order
    (same arguments): crop its outputs back with `[:h, :w]`."""
    return [images_lib.header_size(path)
            for path in _cases(images, masks, split, pattern, fractions, seed, split_manifest)[0]]


def split_manifest(images, masks, seed=0, fractions=FRACTIONS):
    """The split manifest (see `tfprobunet.data.manifests`) of the images in `images`: their
    file names split by `seed` and `fractions`, or, with split subfolders, as the subfolders
    split them (`"seed": None`); its sha256 covers the paths (relative to the folder holding
    both) and sizes of the image and mask files."""
    folders = _all_folders(images, masks)
    files = _data_files(folders)
    if None in folders:
        return manifests.make("folder", _root(images, masks), _names(images), seed, fractions,
                              files=files)
    return manifests.found("folder", _root(images, masks),
                           {split: _names(pair[0]) for split, pair in folders.items()},
                           files=files)


def _root(images, masks):
    return os.path.commonpath([os.path.abspath(images), os.path.abspath(masks)])


def _all_folders(images, masks):
    """`{split: (image folder, mask folder)}` of every split subfolder, or `{None: (images,
    masks)}` without them."""
    present = [s for s in SPLITS if os.path.isdir(os.path.join(images, s))]
    if not present:
        return {None: (images, masks)}
    return {split: _split_folders(images, masks, split) for split in present}


def _data_files(folders):
    return [os.path.join(folder, name) for pair in folders.values() for folder in pair
            for name in _files(folder)]


def _names(folder):
    names = _files(folder)
    if not names:
        raise FileNotFoundError(f"No image files ({', '.join(EXTENSIONS)}) in {folder}.")
    return names


def _cases(images, masks, split, pattern, fractions, seed, split_manifest=None):
    """`(image paths, mask paths (n, A))` of the split."""
    for folder in (images, masks):
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"No folder {folder}: from_folders reads images from one "
                                    "folder and their masks from another.")
    if pattern.count("*") != 1 or "{stem}" not in pattern:
        raise ValueError("`pattern` must hold {stem} and one * (the rater), e.g. "
                         f"'{{stem}}_*.png'. Received: {pattern!r}")
    if split_manifest is None:
        folders = _split_folders(images, masks, split)
        image_folder, mask_folder = folders or (images, masks)
        names = _names(image_folder)
        how = f"{len(names)} images split by fractions {tuple(fractions)}"
        if folders is None:
            names = [names[i] for i in manifests.indices(manifests.split_ids(
                names, seed, fractions), names, split)]
        cases = [(image_folder, mask_folder, name) for name in names]
    else:
        folders = _all_folders(images, masks)
        cases = [(i, m, name) for i, m in folders.values() for name in _names(i)]
        manifest = manifests.read(split_manifest, _root(images, masks), "folder",
                                  files=_data_files(folders))
        index = manifests.indices(manifest["splits"], [name for *_, name in cases], split)
        cases = [cases[k] for k in index]
        how = "the split manifest lists none of its images"
    if not cases:
        raise ValueError(f"Split {split!r} is empty: {how}.")
    image_paths, mask_paths = [], []
    for (image_folder, mask_folder), group in itertools.groupby(cases, lambda c: c[:2]):
        names = [name for *_, name in group]
        image_paths += [os.path.join(image_folder, name) for name in names]
        mask_paths += _match_masks(names, mask_folder, pattern)
    return image_paths, mask_paths


def _load(image_paths, mask_paths, channels, binarize, multiple):
    """`(images (n, H, W, channels) uint8, or uint16 if any file is 16-bit, masks (n, A, H, W),
    sizes)`: the cases read, padded as
    `from_folders` says, masks in uint8 (int32 if labels do not fit), `sizes` the images'
    `(h, w)`. The arrays are allocated once, at the padded size their headers give, and each
    case is stored as its files are decoded, in order: the first bad file is the one named."""
    count, raters = len(image_paths), len(mask_paths[0])
    with concurrent.futures.ThreadPoolExecutor(_WORKERS) as pool:
        found = [size for size in pool.map(_header_size, image_paths) if size] or [(1, 1)]
        height = layers.padded_size(max(h for h, _ in found), multiple)
        width = layers.padded_size(max(w for _, w in found), multiple)
        images = np.empty((count, height, width, channels), np.uint8)
        masks = np.empty((count, raters, height, width), np.uint8)
        sizes = []
        arguments = [(i, m, channels, binarize) for i, m in zip(image_paths, mask_paths)]
        for n, (image, annotations) in enumerate(_in_order(pool, _decode, arguments)):
            # 8 and 16 bits in one folder: all held in 16, an 8-bit v as v * 257 (v / 255 still)
            if image.dtype == np.uint16 and images.dtype == np.uint8:
                images = images.astype(np.uint16) * np.uint16(257)
            elif image.dtype == np.uint8 and images.dtype == np.uint16:
                image = image.astype(np.uint16) * np.uint16(257)
            h, w = image.shape[:2]
            sizes.append((h, w))
            images[n, :h, :w] = image
            images[n, h:, :w] = image[-1]  # the last row, then the last column (and corner)
            images[n, :, w:] = images[n, :, w - 1:w]
            if masks.dtype == np.uint8 and annotations.dtype != np.uint8 and (
                    annotations.min() < 0 or annotations.max() > np.iinfo(np.uint8).max):
                masks = masks.astype(np.int32)  # 16- or 32-bit labels that need it
            masks[n, :, :h, :w] = annotations
            masks[n, :, h:] = IGNORE_LABEL
            masks[n, :, :h, w:] = IGNORE_LABEL
    return images, masks, sizes


def _header_size(path):
    """`(height, width)` from the file's header, or None if it cannot be opened: decoding it
    then raises the error, in the files' order."""
    try:
        return images_lib.header_size(path)
    except Exception:  # noqa: BLE001 -- `_decode` raises it, in the files' order
        return None


def _in_order(pool, function, arguments):
    """`function(*a) for a in arguments`, run in `pool` and yielded in order, at most
    `2 * _WORKERS` ahead of the consumer; the first error in order is raised, the calls still
    waiting are then cancelled."""
    pending, arguments = collections.deque(), iter(arguments)
    try:
        while True:
            while len(pending) < 2 * _WORKERS and (item := next(arguments, None)) is not None:
                pending.append(pool.submit(function, *item))
            if not pending:
                return
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()


def _decode(image_path, mask_paths, channels, binarize):
    """`(image (h, w, channels) uint8 or uint16, annotations (A, h, w))` of one case, from its
    files."""
    image = images_lib.decode(image_path, "L" if channels == 1 else "RGB")
    image = image[..., None] if channels == 1 else image
    annotations = []
    for path in mask_paths:
        mask = images_lib.decode(path, "L" if binarize else None)
        if mask.shape[:2] != image.shape[:2]:
            raise ValueError(f"{path} is {mask.shape[0]}x{mask.shape[1]} pixels (height x "
                             f"width) but its image {image_path} is {image.shape[0]}x"
                             f"{image.shape[1]}: every mask must have its image's size.")
        annotations.append(_binary(mask, path) if binarize else mask)
    return image, np.stack(annotations)


def _unpadded(masks, sizes):
    """The pixels of `masks` without their padding, flat (`masks` itself if none is padded)."""
    if all(size == masks.shape[2:] for size in sizes):
        return masks
    labels = np.empty(sum(masks.shape[1] * h * w for h, w in sizes), masks.dtype)
    start = 0
    for mask, (h, w) in zip(masks, sizes):
        labels[start:start + mask.shape[0] * h * w].reshape(mask.shape[0], h, w)[:] = mask[
            :, :h, :w]
        start += mask.shape[0] * h * w
    return labels


def _for_model(image, annotations):
    """A stored example as the model takes it: float32 in [0, 1] and int32."""
    if image.dtype == tf.uint16:  # by images.SCALE_RULE, as the 8-bit table
        return tf.cast(image, tf.float32) / 65535.0, tf.cast(annotations, tf.int32)
    return tf.gather(_FLOATS, tf.cast(image, tf.int32)), tf.cast(annotations, tf.int32)


def _binary(mask, path):
    """Lesion where the grey value is above half its range: 0/255 and 0/1 masks alike. A mask
    whose labels are small integers beyond 1 (a label map of several classes: every one of
    them below half the range, so all background) is refused."""
    top = int(mask.max()) if mask.size else 0
    if 1 < top <= 127:
        values = np.unique(mask)
        shown = f"{values[:8].tolist()}{' ...' if len(values) > 8 else ''}"
        raise ValueError(
            f"{path} holds the labels {shown}: a label map of {top + 1} classes? Read as a "
            "binary mask (foreground above 127) it would be all background. Pass "
            "binarize=False to keep the labels as classes (from_folders; the command line "
            "reads binary masks only), or save binary masks as 0/1 or 0/255.")
    return (mask > (127 if top > 1 else 0)).astype(np.uint8)


