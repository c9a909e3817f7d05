"""Synthetic ambiguous segmentation benchmarks whose ground-truth distribution is known exactly.

- `graders`: LIDC-like. One lesion-like blob per grey image and 4 graders who disagree on its
  extent and on whether it is there at all (the fainter the blob, the more graders leave the mask
  empty, up to 3 of 4). Binary labels (K = 2).
- `flips`: the paper's Cityscapes protocol. Each RGB image shows one region of each of
  `len(flip_probabilities)` flippable classes on a background; in a mode, flippable class c is
  relabelled to its twin class with probability p_c, independently: 2**n modes with known
  probabilities (default 8/17 ... 4/17: 32 modes from 10.9 % down to 0.5 %).

Both are seeded `tf.data` pipelines yielding `(image (h, w, c) float32, annotations (A, h, w)
int32)`: every grader's (or every mode's) label map. `tfprobunet.data.training_pipeline` draws
one annotation per example and step, as the model is trained. `load(None, split, name=...)`
gives either's split as a `Source`, for `tfprobunet.data.load("flips" | "graders", ...)`.
"""

import itertools

import numpy as np
import tensorflow as tf

from tfprobunet import catalog
from tfprobunet.data.source import Source, check_split, refuse_split_manifest

FLIP_PROBABILITIES = (8 / 17, 7 / 17, 6 / 17, 5 / 17, 4 / 17)
NUM_GRADERS = 4
# A grader's mask of the *graders* blob reaches out to a radius drawn from this range.
EXTENT_RANGE = (0.7, 1.2)
# The splits are drawn with these offsets added to the seed, so they never overlap.
SPLIT_SEEDS = {"train": 0, "val": 1_000_003, "test": 2_000_003}
# Default sizes of the splits; flips' test split has the official evaluation's 500.
DEFAULT_EXAMPLES = {"flips": {"train": 1000, "val": 100, "test": 500},
                    "graders": {"train": 1000, "val": 100, "test": 100}}

# Distinct RGB colours: background first, then one per flippable class.
_PALETTE = np.array([
    [0.45, 0.45, 0.45], [0.95, 0.15, 0.15], [0.15, 0.85, 0.15], [0.15, 0.25, 0.95],
    [0.95, 0.9, 0.1], [0.85, 0.2, 0.9], [0.1, 0.9, 0.9], [0.98, 0.6, 0.2], [0.5, 0.2, 0.05],
], np.float32)


def _check_size(image_size):
    if not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"`image_size` must be an integer >= 8. Received: {image_size!r}")


def _check_probabilities(flip_probabilities):
    flip_probabilities = tuple(float(p) for p in flip_probabilities)
    if not flip_probabilities or len(flip_probabilities) > len(_PALETTE) - 1:
        raise ValueError(f"`flip_probabilities` needs 1 to {len(_PALETTE) - 1} values, one per "
                         f"flippable class. Received {len(flip_probabilities)}.")
    if not all(0.0 < p < 1.0 for p in flip_probabilities):
        raise ValueError("Each flip probability must lie strictly between 0 and 1. Received: "
                         f"{flip_probabilities}")
    return flip_probabilities


def flips_num_classes(flip_probabilities=FLIP_PROBABILITIES):
    """Background, the n flippable classes and their n twins: `2 * n + 1`."""
    return 2 * len(flip_probabilities) + 1


def flip_modes(flip_probabilities=FLIP_PROBABILITIES):
    """All modes of the *flips* benchmark and their probabilities.

    Returns:
        `(modes, probabilities)`: modes `(2**n, n)` bool, row j says which flippable classes are
        relabelled to their twins in mode j (row 0: none; classes in binary order, class 1 the
        most significant bit); probabilities `(2**n,)` float64 summing to 1, in the same order.
    """
    p = np.asarray(_check_probabilities(flip_probabilities))
    modes = np.array(list(itertools.product([False, True], repeat=len(p))))
    probabilities = np.prod(np.where(modes, p, 1.0 - p), axis=1)
    return modes, probabilities


def mode_label_maps(base_labels, modes, flippable=None, twins=None):
    """The label map of every mode: in mode j, flippable class `flippable[c]` becomes
    `twins[c]` where `modes[j, c]`.

    Args:
        base_labels: `(..., h, w)` int label maps without flips.
        modes: `(M, n)` bool from `flip_modes`.
        flippable: the n flippable labels (default: 1..n, the *flips* layout).
        twins: their n twin labels (default: n+1..2n).

    Returns:
        `(..., M, h, w)` int32 (a tensor if `base_labels` is one). Other labels (e.g. 255) are
        kept as they are.
    """
    n = modes.shape[1]
    flippable = np.arange(1, n + 1) if flippable is None else np.asarray(flippable)
    twins = flippable + n if twins is None else np.asarray(twins)
    # lookup[j, label]: the label in mode j.
    lookup = np.tile(np.arange(256, dtype=np.int32), (len(modes), 1))
    lookup[:, flippable] = np.where(modes, twins, flippable)
    offsets = np.arange(len(modes), dtype=np.int32)[:, None, None] * 256  # row j of the flat table
    base = tf.cast(base_labels, tf.int32)[..., None, :, :]
    return tf.gather(tf.constant(lookup.reshape(-1)), base + offsets)


def identify_flip_modes(masks, base_labels, num_flippable):
    """Which mode each predicted mask shows, by majority vote inside each flippable region.

    Args:
        masks: `(m, h, w)` predicted label maps of one image.
        base_labels: `(h, w)` the image's unflipped labels.
        num_flippable: n.

    Returns:
        `(m,)` int mode indices in the order of `flip_modes` (bit of class 1 most significant).
    """
    masks = np.asarray(masks)
    base_labels = np.asarray(base_labels)
    index = np.zeros(len(masks), np.int64)
    for c in range(1, num_flippable + 1):
        region = base_labels == c
        flipped = (masks[:, region] == num_flippable + c).mean(axis=1) > 0.5 if region.any() \
            else np.zeros(len(masks), bool)
        index = index * 2 + flipped
    return index


def flips_arrays(num_examples, image_size=64, flip_probabilities=FLIP_PROBABILITIES, seed=0):
    """The *flips* images and their unflipped label maps as numpy arrays.

    Returns:
        `(images (n, s, s, 3) float32 in [0, 1], base_labels (n, s, s) int32)`.
    """
    _check_size(image_size)
    n_classes = len(_check_probabilities(flip_probabilities))
    rng = np.random.default_rng(seed)
    grid = int(np.ceil(np.sqrt(n_classes + 1)))
    cell = image_size // grid
    images = np.empty((num_examples, image_size, image_size, 3), np.float32)
    labels = np.zeros((num_examples, image_size, image_size), np.int32)
    yy, xx = np.mgrid[:image_size, :image_size]
    for i in range(num_examples):
        cells = rng.permutation(grid * grid)[:n_classes]
        for c, k in enumerate(cells, start=1):
            height, width = rng.integers(cell // 2, cell + 1, size=2)
            top = (k // grid) * cell + rng.integers(0, cell - height + 1)
            left = (k % grid) * cell + rng.integers(0, cell - width + 1)
            labels[i, top:top + height, left:left + width] = c
        # Colour per class plus a class-specific stripe texture, then pixel noise.
        stripes = 0.08 * np.sin((xx + labels[i] * yy) * (0.5 + 0.25 * labels[i]))
        images[i] = _PALETTE[labels[i]] + stripes[..., None]
    images += rng.normal(0.0, 0.05, images.shape).astype(np.float32)
    return np.clip(images, 0.0, 1.0), labels


def flips(num_examples, image_size=64, flip_probabilities=FLIP_PROBABILITIES, seed=0):
    """The *flips* benchmark (the paper's Cityscapes protocol on synthetic scenes).

    Args:
        num_examples: number of images.
        image_size: height and width.
        flip_probabilities: p_c for each flippable class (class c + 1); default the paper's
            8/17, 7/17, 6/17, 5/17, 4/17.
        seed: the same seed gives the same images.

    Returns:
        `tf.data.Dataset` of `(image (s, s, 3) float32, annotations (2**n, s, s) int32)`,
        annotations in the order of `flip_modes(flip_probabilities)`; use those probabilities
        as `training_pipeline(annotation_weights=...)`.
    """
    images, labels = flips_arrays(num_examples, image_size, flip_probabilities, seed)
    modes, _ = flip_modes(flip_probabilities)
    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    return dataset.map(lambda image, base: (image, mode_label_maps(base, modes)),
                       num_parallel_calls=tf.data.AUTOTUNE)


def _graders(num_examples, image_size, seed):
    """The images, the graders' masks, and what the masks are drawn from: each image's blob
    as a radius map `(n, s, s)` (a mask is `radius <= t`, t ~ U(0.7, 1.2)) and its number of
    empty masks `(n,)`."""
    _check_size(image_size)
    rng = np.random.default_rng(seed)
    s = image_size
    yy, xx = np.mgrid[:s, :s].astype(np.float32) / s
    images = np.empty((num_examples, s, s, 1), np.float32)
    annotations = np.zeros((num_examples, NUM_GRADERS, s, s), np.int32)
    radii = np.empty((num_examples, s, s), np.float32)
    empty_counts = np.empty(num_examples, np.int64)
    for i in range(num_examples):
        cy, cx = rng.uniform(0.3, 0.7, size=2)
        ry, rx = rng.uniform(0.08, 0.18, size=2)
        contrast = rng.uniform(0.15, 0.8)
        radius = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
        # A soft-edged blob on a smooth textured background.
        blob = contrast / (1.0 + np.exp((radius - 1.0) * 8.0))
        background = 0.25 + 0.05 * np.sin(xx * rng.uniform(6, 12)) * np.cos(yy * rng.uniform(6, 12))
        images[i, ..., 0] = background + blob
        # Fainter lesions are missed by more graders: 3 empty masks at the faintest.
        num_empty = int(np.clip((0.8 - contrast) / 0.65 * 4, 0, 3))
        empty = rng.permutation(NUM_GRADERS)[:num_empty]
        for g in range(NUM_GRADERS):
            if g not in empty:
                annotations[i, g] = radius <= rng.uniform(*EXTENT_RANGE)
        radii[i], empty_counts[i] = radius, num_empty
    images += rng.normal(0.0, 0.03, images.shape).astype(np.float32)
    return images, annotations, radii, empty_counts


def graders_arrays(num_examples, image_size=128, seed=0):
    """The *graders* images and the 4 graders' masks as numpy arrays.

    Returns:
        `(images (n, s, s, 1) float32, annotations (n, 4, s, s) int32 in {0, 1})`.
    """
    images, annotations, _, _ = _graders(num_examples, image_size, seed)
    return images, annotations


def graders_truth(num_examples, image_size=128, seed=0):
    """The distribution the *graders* masks are drawn from, to draw fresh ones: for the images
    of `graders_arrays` with the same arguments, a function `draw(count, rng)` that returns
    `(n, count, s, s)` int32 masks of `count` new graders per image (each empty with the
    probability that one of the 4 graders left that image's mask empty, otherwise the blob out
    to a radius drawn as the graders' are). What a perfect model would sample."""
    _, _, radii, empty_counts = _graders(num_examples, image_size, seed)

    def draw(count, rng):
        present = rng.random((num_examples, count)) >= empty_counts[:, None] / NUM_GRADERS
        extents = rng.uniform(*EXTENT_RANGE, size=(num_examples, count))
        masks = radii[:, None] <= extents[:, :, None, None]
        return (masks & present[:, :, None, None]).astype(np.int32)

    return draw


def graders(num_examples, image_size=128, seed=0):
    """The *graders* benchmark (LIDC-like: 4 graders, up to 3 empty masks per image).

    Returns:
        `tf.data.Dataset` of `(image (s, s, 1) float32, annotations (4, s, s) int32)`.
    """
    return tf.data.Dataset.from_tensor_slices(graders_arrays(num_examples, image_size, seed))


def load(data_dir, split, image_size=None, seed=0, split_manifest=None, *, name,
         num_examples=None):
    """A split of *flips* or *graders* as a `Source`, generated.

    Args:
        data_dir: unused (None): the data is generated.
        split: `"train"`, `"val"` or `"test"`: drawn with the seed `seed + SPLIT_SEEDS[split]`,
            so that the splits never share an image.
        image_size: height and width; default the catalog's (64).
        seed: the same seed gives the same images.
        split_manifest: refused (no patient ids: the split is by seed).
        name: `"flips"` or `"graders"`: this module generates both.
        num_examples: default `DEFAULT_EXAMPLES[name][split]` (1000 for train, 100 for val,
            100 for graders' test and 500 for flips' test).

    Returns:
        A `Source`: *flips* `(image (s, s, 3) float32, annotations (32, s, s) int32)`, 11
        classes, the modes' probabilities, scoring the flippable classes and their twins (as
        the official Cityscapes evaluation); *graders* `(image (s, s, 1) float32, annotations
        (4, s, s) int32)`, 2 classes, annotations equally likely.
    """
    if name not in DEFAULT_EXAMPLES:
        raise ValueError(f"`name` must be one of {tuple(DEFAULT_EXAMPLES)}. Received: {name!r}")
    refuse_split_manifest(name, split_manifest, "its seed (synthetic)")
    check_split(split)
    image_size = image_size or catalog.DATASETS[name].image_size
    if num_examples is None:
        num_examples = DEFAULT_EXAMPLES[name][split]
    seed = seed + SPLIT_SEEDS[split]
    if name == "flips":
        _, probabilities = flip_modes()
        num_classes = flips_num_classes()
        return Source(flips(num_examples, image_size, seed=seed), num_classes, probabilities,
                      list(range(1, num_classes)))
    return Source(graders(num_examples, image_size, seed=seed), 2, None, None)
