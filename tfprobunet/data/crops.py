"""Random training windows of images of real size: `random_windows(dataset, size)`.

A folder of scans of mixed sizes (`tfprobunet.data.from_folders`) is padded to its largest size,
and every training step then pays for the largest image, padding included: the cost of a step
grows with its pixels (bench/step_cost.py). Training on windows of a fixed size keeps the step
cheap; evaluation and prediction still run on whole images, which a fully convolutional U-Net
takes at any size divisible by `2 ** (levels - 1)`.

Each window lies within its example's own extent (the pixels that are not padding), and a share
of them is centred on a lesion, as nnU-Net oversamples foreground (Isensee et al. 2021, Nature
Methods 18: a third of each batch), so that small lesions in large scans are not mostly cropped
away.
"""

import math
import numbers

import tensorflow as tf

from tfprobunet import catalog
from tfprobunet.data import checks

__all__ = ["LABELLED_SHARE", "check_multiple", "random_windows"]

# nnU-Net's `oversample_foreground_percent` (0.33): a third of the windows are sure to show a
# lesion, and the other two thirds show the scan as it is, background included, so that the
# prior net still sees how often a window holds nothing (with 1, every window would hold a
# lesion, and empty predictions would be learnt as rare).
LABELLED_SHARE = 1 / 3


def _window_size(size):
    """`(h, w)` from `size`, or a ValueError naming what was received."""
    valid = (isinstance(size, (tuple, list)) and len(size) == 2
             and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v > 0
                     for v in size))
    if not valid:
        raise ValueError("`size` must be two positive ints (height, width), e.g. (128, 128). "
                         f"Received: size={size!r}")
    return int(size[0]), int(size[1])


def check_multiple(size, multiple):
    """Refuse a window `size` whose sides are not multiples of `multiple` (the loaders'
    `multiple`: the sides a U-Net of their depth divides), naming the nearest that are."""
    height, width = _window_size(size)
    if multiple > 1 and (height % multiple or width % multiple):
        near = [max(multiple, round(v / multiple) * multiple) for v in (height, width)]
        raise ValueError(f"A crop of {height}x{width} does not suit the U-Net: its sides must be "
                         f"multiples of {multiple} (`multiple`), e.g. {near[0]}x{near[1]} (crop="
                         f"({near[0]}, {near[1]}); command line: --crop {near[0]},{near[1]}).")


def _share(labelled_share):
    valid = (isinstance(labelled_share, numbers.Real) and not isinstance(labelled_share, bool)
             and math.isfinite(labelled_share) and 0 <= labelled_share <= 1)
    if not valid:
        raise ValueError("`labelled_share` must be a number in [0, 1] (the share of windows "
                         "centred on a lesion; 0: all uniform). Received: "
                         f"labelled_share={labelled_share!r}")
    return float(labelled_share)


def _check_spec(dataset):
    spec = dataset.element_spec
    valid = (isinstance(spec, tuple) and len(spec) == 2
             and all(isinstance(s, tf.TensorSpec) and s.shape.rank in (3, None) for s in spec))
    if not valid:
        raise ValueError("`random_windows` takes a dataset of (image (h, w, c), annotations "
                         f"(A, h, w)). Received a dataset of {spec}")


def _extent(labelled):
    """`(height, width)` of the rows and columns up to the last one holding a labelled pixel
    (`labelled`: `(H, W)` bool); the whole `(H, W)` when no pixel is labelled."""
    def last(any_labelled):
        count = tf.shape(any_labelled)[0]
        end = tf.reduce_max(tf.where(any_labelled, tf.range(1, count + 1), 0))
        return tf.where(end > 0, end, count)
    return last(tf.reduce_any(labelled, axis=1)), last(tf.reduce_any(labelled, axis=0))


def _draw(key, maxval):
    """An int32 uniform in `[0, maxval)` (`maxval >= 1`)."""
    return tf.random.stateless_uniform((), key, 0, maxval, dtype=tf.int32)


def _start(extent, side, centre, centred, key):
    """The first row (column) of a window of `side` within `extent`: around `centre` if
    `centred`, else uniform; 0 when the extent is smaller than the window."""
    room = tf.maximum(extent - side, 0)
    return tf.where(centred, tf.clip_by_value(centre - side // 2, 0, room), _draw(key, room + 1))


def _cut(image, annotations, rows, cols, extent_h, extent_w):
    """`image[rows][:, cols]` and `annotations[:, rows][:, :, cols]`, where rows and columns
    beyond the extent repeat its last one in the image and are the ignore label in the masks."""
    clamped_rows, clamped_cols = tf.minimum(rows, extent_h - 1), tf.minimum(cols, extent_w - 1)
    image = tf.gather(tf.gather(image, clamped_rows, axis=0), clamped_cols, axis=1)
    annotations = tf.gather(tf.gather(annotations, clamped_rows, axis=1), clamped_cols, axis=2)
    inside = (rows < extent_h)[:, None] & (cols < extent_w)[None, :]
    ignore = tf.cast(catalog.IGNORE_LABEL, annotations.dtype)
    return image, tf.where(inside[None], annotations, ignore)


def random_windows(dataset, size, seed=0, labelled_share=LABELLED_SHARE):
    """Random `size` windows of `(image, annotations)` examples, the same window for the image
    and all its masks, another one each time the dataset is iterated.

    The windows lie within each example's own extent: the rows and columns up to the last one
    where some annotation is not the ignore label (255, `tfprobunet.catalog.IGNORE_LABEL`), the
    padding `from_folders` adds at the bottom and right of images smaller than the largest.
    Where the extent is smaller than the window, the window starts at the top (left) and is
    padded at the bottom (right) as `from_folders` pads: the image repeating its last real row
    (column), the masks with the ignore label, which the loss and the metrics leave out. Every
    window is therefore `size`, and never shows the source's own padding when the extent is at
    least the window.

    A share `labelled_share` of the windows (each window independently, with that probability)
    is centred, as far as the extent allows, on a pixel drawn uniformly among those any rater
    labelled foreground (label > 0, not 255); the window then always contains that pixel.
    The other windows, and those of examples without foreground, are drawn uniformly among
    all positions within the extent.

    The draws are stateless ops keyed by `seed` and a counter (`tf.data.Dataset.random`, as
    `tfprobunet.data.lidc.crops` does): the first pass over the result is the same for the same
    seed and TensorFlow global seed (which `keras.utils.set_random_seed` sets, and `train` with
    its seed), in any process; each further pass (`repeat`, a new iterator) draws new windows.
    Runs as a parallel `map` (`tf.data.AUTOTUNE`), in graph mode.

    Args:
        dataset: `tf.data.Dataset` of `(image (H, W, C), annotations (A, H, W) int)`, e.g.
            `from_folders(...).dataset`; H and W may differ between examples.
        size: `(h, w)`, two positive ints: the window's height and width (for the U-Net,
            multiples of `2 ** (levels - 1)`: 16 serves up to 5 levels).
        seed: seeds the windows.
        labelled_share: the probability, in [0, 1], that a window is centred on foreground.
            Default 1/3 (`LABELLED_SHARE`): nnU-Net's foreground oversampling, which keeps two
            thirds of the windows as uniform as the data, background included.

    Returns:
        `tf.data.Dataset` of `(image (h, w, C), annotations (A, h, w))`, dtypes as given. A
        dataset whose labels were checked (`tfprobunet.data.checks`) stays marked checked: the
        windows hold its labels and the ignore label only.

    Raises:
        ValueError: `size` is not two positive ints; `labelled_share` is not a number in
            [0, 1]; the dataset does not yield `(image (H, W, C), annotations (A, H, W))`.

    Example:

    ```python
    from tfprobunet.data import crops, graders, training_pipeline
    windows = crops.random_windows(graders(8, image_size=64), (32, 32), seed=0)
    image, annotations = next(iter(windows))             # (32, 32, 1), (4, 32, 32)
    batches = training_pipeline(windows, batch_size=4)   # (4, 32, 32, 1), (4, 32, 32)
    ```
    """
    height, width = _window_size(size)
    share = _share(labelled_share)
    _check_spec(dataset)

    def window(example, counter):
        image, annotations = example
        keys = tf.random.experimental.stateless_split(
            tf.stack([tf.cast(seed, tf.int64), counter]), 4)
        ignore = tf.cast(catalog.IGNORE_LABEL, annotations.dtype)
        extent_h, extent_w = _extent(tf.reduce_any(annotations != ignore, axis=0))
        # Padding is all 255, so the foreground found lies within the extent. A last row
        # (0, 0) stands in for none, which is then never used: gather needs a row to read.
        foreground = tf.where(tf.reduce_any((annotations > 0) & (annotations != ignore), axis=0))
        count = tf.shape(foreground, out_type=tf.int32)[0]
        foreground = tf.concat([foreground, tf.zeros((1, 2), foreground.dtype)], axis=0)
        centred = (tf.random.stateless_uniform((), keys[0]) < share) & (count > 0)
        centre = tf.cast(tf.gather(foreground, _draw(keys[1], tf.maximum(count, 1))), tf.int32)
        rows = _start(extent_h, height, centre[0], centred, keys[2]) + tf.range(height)
        cols = _start(extent_w, width, centre[1], centred, keys[3]) + tf.range(width)
        return _cut(image, annotations, rows, cols, extent_h, extent_w)

    counters = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    windows = tf.data.Dataset.zip(dataset, counters).map(
        window, num_parallel_calls=tf.data.AUTOTUNE)
    if checks.is_checked(dataset):
        checks.mark_checked(windows)
    return windows
