"""The input checks of the models and of the serving signatures: one home for each rule and its
message (DESIGN sections 3 and 6), so that `model.sample` and a served model refuse the same
inputs in the same words.

A check decides now where it can: eagerly (or on a static shape while tracing) a failing check
raises a `ValueError`; in a graph, on values known only at run time, it is an assert op, and the
tensors that depend on it (`checked`) fail with `InvalidArgumentError` and the same message. The
serving signatures pass `in_graph=True`: TF Serving feeds their tensors by name, unchecked
against their static shapes, so every rule there is an assert op.
"""

import numpy as np
import tensorflow as tf

from tfprobunet import layers as layers_lib
from tfprobunet.catalog import IGNORE_LABEL

_NUM_SAMPLES = "`num_samples` must be >= 1. Received: num_samples={}"


# ---------------------------------------------------------------------- the two primitives
def check(condition, template, *values):
    """The check that `condition` holds, its message `template` with a `{}` per value.

    Args:
        condition: a Python bool, or a boolean scalar tensor.
        template: the message; its `{}` are filled with `values` (Python values or tensors).
        *values: what the message shows.

    Returns:
        `[]` when the check was decided now (a Python bool, or eagerly) and holds; in a graph,
        `[assert op]`, to pass to `checked`.

    Raises:
        ValueError: decided now, and it does not hold.
    """
    if isinstance(condition, (bool, np.bool_)) or tf.executing_eagerly():
        if not bool(condition):
            raise ValueError(template.format(*(np.asarray(v) for v in values))
                             if values else template)
        return []
    message = tf.strings.format(template, values) if values else template
    return [tf.debugging.Assert(condition, [message])]


def checked(tensors, checks):
    """`tensors` behind the assert ops `checks`: nothing computed from them runs before every
    check passed, and a failing one answers `InvalidArgumentError` with its message."""
    if not checks:
        return list(tensors)
    with tf.control_dependencies(checks):
        return [tf.identity(t) for t in tensors]


def require(condition, message, tensor):
    """Return `tensor` if `condition` holds. Eagerly, raise `ValueError(message)`; in a graph, the
    returned tensor depends on an assert with the same message, so nothing computed from it runs
    (and fails less clearly) before the check."""
    return checked([tensor], check(condition, message))[0]


# ---------------------------------------------------------------------- rules
def rank(tensor, expected, name, layout, hint=None, in_graph=False):
    """`tensor` has rank `expected`; `layout` names its axes, e.g. `"(b, h, w, c)"`, and `hint`
    what to change. Checked on the static shape unless `in_graph`. Returns the checks."""
    message = f"`{name}` must have rank {expected}, {layout}. Received shape {{}}"
    if in_graph:
        return check(tf.equal(tf.rank(tensor), expected), message + ".", tf.shape(tensor))
    if tensor.shape.rank != expected:
        details = f" (rank {tensor.shape.rank}); {hint}." if hint else "."
        raise ValueError(message.format(tensor.shape) + details)
    return []


def channels(tensor, expected, name, in_graph=False):
    """`tensor (b, h, w, c)` has `expected` channels. Checked on the static shape (when it
    knows them) unless `in_graph`. Returns the checks."""
    message = (f"`{name}` must have {expected} channel(s), (b, h, w, {expected}). Received "
               "shape {}.")
    if in_graph:
        return check(tf.equal(tf.shape(tensor)[3], expected), message, tf.shape(tensor))
    if tensor.shape[-1] is not None and tensor.shape[-1] != expected:
        raise ValueError(message.format(tensor.shape))
    return []


def spatial_size(images, num_channels, in_graph=False):
    """Height and width of `images (b, h, w, c)` divisible by the U-Net's factor,
    `2**(len(num_channels) - 1)`. Static sizes raise `layers.check_spatial_size`'s error; the
    others are checked at run time, with the nearest sizes that work. Returns the checks."""
    h, w = images.shape[1], images.shape[2]
    if not in_graph:
        layers_lib.check_spatial_size(h, w, num_channels)
        if h is not None and w is not None:
            return []
    d = layers_lib.size_divisor(num_channels)
    h, w = tf.shape(images)[1], tf.shape(images)[2]
    below_h, below_w = tf.maximum(h // d * d, d), tf.maximum(w // d * d, d)
    above_h, above_w = (h + d - 1) // d * d, (w + d - 1) // d * d
    return check(tf.equal(h % d + w % d, 0),
                 f"`images` are {{}}x{{}} pixels (height x width); this model needs both "
                 f"divisible by {d}: the nearest sizes that work are {{}}x{{}} and {{}}x{{}} "
                 "(crop or pad the images to one of them).",
                 h, w, below_h, below_w, above_h, above_w)


def finite(tensor, name, example=None):
    """No NaN or Inf in `tensor`; `example` says what finite values look like. Returns the
    checks."""
    example = f", e.g. {example}" if example else ""
    return check(tf.reduce_all(tf.math.is_finite(tensor)),
                 f"`{name}` contain NaN or Inf values; send finite values{example}.")


def num_samples(value):
    """`num_samples` (m, an int or an int tensor) >= 1. Returns the checks."""
    return check(value >= 1, _NUM_SAMPLES, value)


def check_num_samples(value):
    """Raise a `ValueError` if `value` is a Python int below 1 (a tensor is left to the op that
    uses it)."""
    if isinstance(value, int):
        num_samples(value)


def seed_pair(seed):
    """A stateless-RNG seed, `(2,)` int32, from an int or a `(2,)` tensor."""
    if isinstance(seed, int):
        return tf.constant([seed, 0], tf.int32)
    seed = tf.cast(seed, tf.int32)
    if seed.shape.rank != 1 or seed.shape[0] != 2:
        raise ValueError(f"`seed` must be an int or an int tensor of shape (2,). Received shape "
                         f"{seed.shape}")
    return seed


# The stateless RNG algorithm of seeded draws (`sample(..., seed=...)`, the serving signatures).
# Named rather than left to "auto_select", which picks Philox in TensorFlow's kernels but
# another algorithm under XLA (`jit_compile=True`): a seeded sample would differ with XLA. (For
# seeds computed at run time, such as the seed generator's and the HPU-Net's per-level seeds,
# XLA's Philox still draws other numbers than TensorFlow's kernels: docs/benchmarks.md.)
RNG_ALGORITHM = "philox"


def stateless_normal(shape, seed):
    """Standard normal noise of `shape` from the `(2,)` seed `seed` (`RNG_ALGORITHM`)."""
    return tf.random.stateless_normal(shape, seed=seed, alg=RNG_ALGORITHM)


# ---------------------------------------------------------------------- a model's inputs
IMAGES_EXAMPLE = "float32 in [0, 1]"


def images(images, image_channels, num_channels):
    """A model's `images (b, h, w, c)` as float (uint8 divided by 255, as the loaders do),
    checked: float, rank 4, `image_channels` channels (None: any), sizes the U-Net divides,
    finite values."""
    images = tf.convert_to_tensor(images)
    if images.dtype == tf.uint8:
        images = tf.cast(images, tf.float32) / 255.0
    if not images.dtype.is_floating:
        raise ValueError(f"`images` must be float, e.g. float32 scaled to [0, 1], or uint8 "
                         f"(divided by 255). Received dtype {images.dtype.name}: convert "
                         "with `images.astype('float32') / 255` if 0..255 is their range.")
    rank(images, 4, "images", "(b, h, w, c)", missing_axes(images.shape, image_channels))
    if image_channels is not None:
        channels(images, image_channels, "images")
    images = checked([images], spatial_size(images, num_channels))[0]
    return checked([images], finite(images, "images", IMAGES_EXAMPLE))[0]


def missing_axes(shape, image_channels=None):
    """What to add to images of the wrong rank, from their last axis."""
    if shape.rank == 2:
        return "add a batch and a channel axis for one grey image: `image[None, ..., None]`"
    if shape.rank == 3:
        channel_count = image_channels or 4  # built: its count; else 1, 3 or 4 look like c
        if shape[-1] is not None and shape[-1] <= channel_count:
            return "add a batch axis for one image: `image[None]`"
        return ("add a channel axis for grey images (b, h, w): `images[..., None]`; for "
                "one (h, w, c) image, a batch axis: `image[None]`")
    return "images are (batch, height, width, channels)"


def segmentations(segmentations, images, num_classes):
    """`segmentations (b, h, w)` (or `(b, h, w, 1)`) as int32 labels, checked like `labels`."""
    segmentations = tf.convert_to_tensor(segmentations)
    if segmentations.shape.rank == 4 and segmentations.shape[-1] == 1:
        segmentations = segmentations[..., 0]
    if segmentations.shape.rank != 3:
        raise ValueError("`segmentations` must have rank 3, (b, h, w) class labels (not one-"
                         f"hot). Received shape {segmentations.shape}.")
    return labels("segmentations", "(b, h, w)", segmentations, images, num_classes)


def labels(name, layout, values, images, num_classes):
    """Integer labels `values` (`layout`, e.g. `"(b, A, h, w)"`) with the images' height and
    width, in [0, K) or 255 (ignore), as int32."""
    if not values.dtype.is_integer:
        raise ValueError(f"`{name}` must be integer class labels, {layout}. Received dtype "
                         f"{values.dtype.name}.")
    message = (f"`{name}` {values.shape} and `images` {images.shape} must have the same "
               f"height and width: {layout} and (b, h, w, c).")
    if not values.shape[-2:].is_compatible_with(images.shape[1:3]):
        raise ValueError(message)
    values = tf.cast(values, tf.int32)
    if not (values.shape[-2:].is_fully_defined() and images.shape[1:3].is_fully_defined()):
        values = require(tf.reduce_all(tf.shape(values)[-2:] == tf.shape(images)[1:3]),
                         message, values)
    valid = ((values >= 0) & (values < num_classes)) | (values == IGNORE_LABEL)
    return require(tf.reduce_all(valid),
                   f"`{name}` must hold labels in [0, {num_classes - 1}] "
                   f"(num_classes={num_classes}) or {IGNORE_LABEL} (ignore); they hold "
                   "other values.", values)
