"""Cityscapes with the paper's flip protocol (Kohl et al. 2018, section 4.2).

Five classes are relabelled to new twin classes with fixed probabilities: sidewalk to
"sidewalk 2" with 8/17, person 7/17, car 6/17, vegetation 5/17 and road 4/17, giving 32 modes
from 10.9 % down to 0.5 %. The 19 Cityscapes train ids keep their labels, the twins are 19..23
(24 classes, 255 ignored). Splits follow the paper: the official training set without
Darmstadt, Mönchengladbach and Ulm is `train`, those three cities are `val`, and the official
validation set is `test`.

Layout (the official download)::

    <data_dir>/leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    <data_dir>/gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png

The `*_labelTrainIds.png` files are made by `cityscapesscripts`' `createTrainIdLabelImgs`.
`load(data_dir, split)` gives the dataset as a `Source` (`tfprobunet.data.load("cityscapes",
...)`); the PNGs are decoded by `tfprobunet.data.images`.
"""

import os

import tensorflow as tf

from tfprobunet import catalog
from tfprobunet.data import images as images_lib
from tfprobunet.data import synthetic
from tfprobunet.data.source import Source, check_split, refuse_split_manifest

# (train id, name, flip probability) in the paper's order.
FLIPS = ((1, "sidewalk", 8 / 17), (11, "person", 7 / 17), (13, "car", 6 / 17),
         (8, "vegetation", 5 / 17), (0, "road", 4 / 17))
NUM_TRAIN_IDS = 19
FLIPPABLE = tuple(f[0] for f in FLIPS)
TWINS = tuple(range(NUM_TRAIN_IDS, NUM_TRAIN_IDS + len(FLIPS)))
FLIP_PROBABILITIES = tuple(f[2] for f in FLIPS)
NUM_CLASSES = NUM_TRAIN_IDS + len(FLIPS)
# The official evaluation scores the flippable classes and their twins only.
SCORED_CLASSES = tuple(sorted(FLIPPABLE + TWINS))
VALIDATION_CITIES = ("darmstadt", "monchengladbach", "ulm")
SPLITS = catalog.SPLITS
_IMAGE_SUFFIX = "_leftImg8bit.png"
_LABEL_SUFFIX = "_gtFine_labelTrainIds.png"


def files(data_dir, split="train"):
    """`(images, labels)`: sorted paths of the split's images and train-id label maps."""
    check_split(split)
    official = "val" if split == "test" else "train"
    image_root = os.path.join(data_dir, "leftImg8bit", official)
    label_root = os.path.join(data_dir, "gtFine", official)
    if not os.path.isdir(image_root) or not os.path.isdir(label_root):
        raise FileNotFoundError(f"Cityscapes split {split!r} needs {image_root} and {label_root} "
                                "(the official leftImg8bit and gtFine downloads).")
    cities = sorted(os.listdir(image_root))
    if split != "test":
        keep = (lambda c: c in VALIDATION_CITIES) if split == "val" else (
            lambda c: c not in VALIDATION_CITIES)
        cities = [c for c in cities if keep(c)]
    images, labels = [], []
    for city in cities:
        for name in sorted(os.listdir(os.path.join(image_root, city))):
            if not name.endswith(_IMAGE_SUFFIX):
                continue
            label = os.path.join(label_root, city, name[:-len(_IMAGE_SUFFIX)] + _LABEL_SUFFIX)
            if not os.path.exists(label):
                raise FileNotFoundError(f"No {_LABEL_SUFFIX} for {name}: expected {label}. "
                                        "Create them with cityscapesscripts' "
                                        "createTrainIdLabelImgs.")
            images.append(os.path.join(image_root, city, name))
            labels.append(label)
    if not images:
        raise FileNotFoundError(f"No *{_IMAGE_SUFFIX} images for split {split!r} in cities "
                                f"{cities} under {image_root}.")
    return images, labels


def dataset(data_dir, split="train", image_size=(256, 512), *, max_pixels=None):
    """Cityscapes with all 32 flip modes of each label map.

    Args:
        data_dir: the folder holding `leftImg8bit/` and `gtFine/`.
        split: `"train"`, `"val"` (Darmstadt, Mönchengladbach, Ulm) or `"test"` (official val).
        image_size: `(h, w)` to resize to (images bilinear, labels nearest; the paper works at
            256x512, a quarter of the full resolution), or None for the files' size.
        max_pixels: the most pixels (height x width) of one image or label file, checked
            from its header before anything is decoded (a PNG of 65 bytes can claim 13000 x
            13000); None: `TFPROBUNET_MAX_IMAGE_PIXELS` if set, else
            `tfprobunet.data.images.MAX_IMAGE_PIXELS` (8192 x 8192; the official files are
            1024 x 2048).

    Returns:
        `tf.data.Dataset` of `(image (h, w, 3) float32 in [0, 1], annotations (32, h, w) int32)`
        in the order of `tfprobunet.data.flip_modes(FLIP_PROBABILITIES)`; `mode_probabilities()`
        gives their probabilities.

    Raises:
        ValueError: a file that is not a whole PNG, or beyond `max_pixels` (one line naming it,
            the limit and how to raise it).
    """
    images, labels = files(data_dir, split)
    max_pixels = images_lib.pixel_limit(max_pixels)
    for path in images + labels:
        images_lib.check_pixels(path, *images_lib.png_size(path), max_pixels,
                                "cityscapes.dataset(..., max_pixels=...)")
    modes, _ = synthetic.flip_modes(FLIP_PROBABILITIES)

    def decode(image_path, label_path):
        image = tf.image.convert_image_dtype(images_lib.decode_png(image_path, 3), tf.float32)
        label = images_lib.decode_png(label_path, 1)
        if image_size is not None:
            image = tf.image.resize(image, image_size, method="bilinear", antialias=True)
            label = tf.image.resize(label, image_size, method="nearest")
        base = tf.cast(label[..., 0], tf.int32)
        return image, synthetic.mode_label_maps(base, modes, FLIPPABLE, TWINS)

    return tf.data.Dataset.from_tensor_slices((images, labels)).map(
        decode, num_parallel_calls=tf.data.AUTOTUNE)


def load(data_dir, split, image_size=None, seed=0, split_manifest=None):
    """The dataset `"cityscapes"` as a `Source`: `dataset(data_dir, split, image_size)`,
    `NUM_CLASSES` classes, the annotations weighted by `mode_probabilities()`, the metrics
    scoring `SCORED_CLASSES`.

    Args:
        data_dir, split: as in `dataset`.
        image_size: `(h, w)`; default `(256, 512)`, the paper's (the catalog's).
        seed: unused: the split is the paper's, by city.
        split_manifest: refused (no patient ids: the split is by city).

    Returns:
        A `Source` of `(image (h, w, 3) float32 in [0, 1], annotations (32, h, w) int32)`.
    """
    refuse_split_manifest("cityscapes", split_manifest, "its folders")
    size = image_size or catalog.DATASETS["cityscapes"].image_size
    return Source(dataset(data_dir, split, size), NUM_CLASSES, mode_probabilities(),
                  list(SCORED_CLASSES))


def mode_probabilities():
    """`(32,)` probabilities of the flip modes, in the order of the annotations."""
    return synthetic.flip_modes(FLIP_PROBABILITIES)[1]
