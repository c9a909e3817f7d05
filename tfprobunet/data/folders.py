"""Your own data as image files: a folder of images and a folder of masks, one mask file per
rater, read by `from_folders(images, masks, split)` and `tfprobunet train|evaluate --dataset
folder --data-dir FOLDER` (`FOLDER/images`, `FOLDER/masks`).

Layout (any names; PNG, JPEG, BMP or TIFF; `{stem}` is an image's file name without extension)::

    images/scan01.png            masks/scan01_0.png  masks/scan01_1.png  masks/scan01_2.png
    images/scan02.png            masks/scan02_0.png  ...

Every image has the same raters (the part of the mask name that `*` stands for), so that each
image has A masks, in the sorted order of those parts. With subfolders `train/`, `val/` and
`test/` in both folders, those are the splits; otherwise the images are split by a seed. A
split manifest (`split_manifest`: the image file names of each split) replaces either: the
images of all subfolders are pooled and each split takes the names the manifest lists.
"""

import fnmatch
import glob
import itertools
import os

import numpy as np
import tensorflow as tf

from tfprobunet.data import checks, manifests
from tfprobunet.losses import IGNORE_LABEL

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SPLITS = ("train", "val", "test")
FRACTIONS = (0.8, 0.1, 0.1)
# Sides are padded to a multiple of this by default: U-Nets of up to 5 levels take them.
MULTIPLE = 16


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
    mask_names = _files(masks)
    found = [fnmatch.filter(mask_names,
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


def _rater(mask_name, pattern, stem):
    """The part of `mask_name` that `*` stands for in `pattern`."""
    head, _, tail = pattern.format(stem=stem).partition("*")
    return mask_name[len(head):len(mask_name) - len(tail)]


def _read(path, mode):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if mode is None:
                if image.mode not in ("1", "L", "P", "I", "I;16"):
                    raise ValueError(f"{path} is a {image.mode} image: label masks "
                                     "(binarize=False) must be grey or palette images whose "
                                     "values are the class indices.")
                return np.asarray(image).astype(np.int64)
            return np.asarray(image.convert(mode))
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"{path} cannot be read as an image ({error}).") from None


def from_folders(images, masks, split="train", pattern="{stem}_*.png", channels=1,
                 binarize=True, num_classes=None, multiple=MULTIPLE, fractions=FRACTIONS,
                 seed=0, split_manifest=None):
    """Read a split of your images and their raters' masks from two folders into memory.

    Args:
        images: folder of image files, one per case (or with `train/`, `val/`, `test/`).
        masks: folder of mask files, one per case and rater, split the same way.
        split: `"train"`, `"val"` or `"test"`.
        pattern: the masks of image `{stem}`, `*` standing for the rater.
        channels: 1 reads every image as grey (RGB converted), 3 as RGB (grey repeated).
        binarize: True reads each mask as foreground (1) / background (0) from its grey
            values: `mask > 127` for 8-bit masks (0/255, as annotation tools save them),
            `mask > 0` for masks whose values are 0 and 1. False keeps the values as class
            labels (grey or palette images; 255 is the ignore label).
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
    from tfprobunet.data.sources import Source

    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {SPLITS}. Received: {split!r}")
    if channels not in (1, 3):
        raise ValueError(f"`channels` must be 1 (grey) or 3 (RGB). Received: {channels!r}")
    cases = _cases(images, masks, split, pattern, fractions, seed, split_manifest)
    image_list, mask_list = [], []
    for image_path, mask_paths in zip(*cases):
        image = _read(image_path, "L" if channels == 1 else "RGB")
        image = image[..., None] if channels == 1 else image
        annotations = []
        for path in mask_paths:
            mask = _read(path, "L" if binarize else None)
            if mask.shape[:2] != image.shape[:2]:
                raise ValueError(f"{path} is {mask.shape[0]}x{mask.shape[1]} pixels (height x "
                                 f"width) but its image {image_path} is {image.shape[0]}x"
                                 f"{image.shape[1]}: every mask must have its image's size.")
            annotations.append(_binary(mask) if binarize else mask)
        image_list.append(image.astype(np.float32) / 255.0)
        mask_list.append(np.stack(annotations))
    if not binarize:
        labels = np.concatenate([m.ravel() for m in mask_list])
        if num_classes is None:
            valid = labels[labels != IGNORE_LABEL]
            num_classes = max(2, int(valid.max()) + 1 if valid.size else 2)
        checks.check_labels(labels, num_classes, f"The masks in {masks}")
    height = _round_up(max(i.shape[0] for i in image_list), multiple)
    width = _round_up(max(i.shape[1] for i in image_list), multiple)
    padded_images = np.stack([_pad(i, height, width, None) for i in image_list])
    padded_masks = np.stack([_pad(m.transpose(1, 2, 0), height, width, IGNORE_LABEL)
                             for m in mask_list]).transpose(0, 3, 1, 2)
    dataset = tf.data.Dataset.from_tensor_slices((padded_images,
                                                  padded_masks.astype(np.int32)))
    return Source(dataset, 2 if binarize else int(num_classes), None, None)


def image_sizes(images, masks, split="train", pattern="{stem}_*.png", fractions=FRACTIONS,
                seed=0, split_manifest=None):
    """The original `(height, width)` of each image of the split, in `from_folders`' order
    (same arguments): crop its outputs back with `[:h, :w]`."""
    from PIL import Image

    sizes = []
    for path in _cases(images, masks, split, pattern, fractions, seed, split_manifest)[0]:
        with Image.open(path) as image:
            sizes.append((image.height, image.width))
    return sizes


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


def _binary(mask):
    """Lesion where the grey value is above half its range: 0/255 and 0/1 masks alike."""
    return (mask > (127 if mask.max() > 1 else 0)).astype(np.int64)


def _round_up(size, multiple):
    return -(-size // multiple) * multiple


def _pad(array, height, width, value):
    pad = [(0, height - array.shape[0]), (0, width - array.shape[1]), (0, 0)]
    if value is None:
        return np.pad(array, pad, mode="edge")
    return np.pad(array, pad, constant_values=value)
