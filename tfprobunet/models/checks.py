"""The input checks of the models and of the serving signatures: one home for each rule and its
message (DESIGN sections 3 and 6), so that `model.sample` and a served model refuse the same
inputs in the same words.

The size-driving numbers of a model's configuration (levels, channels, convolutions per block,
members, ...) are bounded here too (`check_model_sizes`): the constructors and
`saving.load_model` (before it builds what a `.keras` file describes) refuse the same
configurations in the same words. So are the bytes an eager `sample` call would return
(`check_sample_bytes`) and what a training run asks for (`check_training`).

A check decides now where it can: eagerly (or on a static shape while tracing) a failing check
raises a `ValueError`; in a graph, on values known only at run time, it is an assert op, and the
tensors that depend on it (`checked`) fail with `InvalidArgumentError` and the same message. The
serving signatures pass `in_graph=True`: TF Serving feeds their tensors by name, unchecked
against their static shapes, so every rule there is an assert op.
"""

import inspect
import numbers
import os

import numpy as np
import tensorflow as tf

from tfprobunet import catalog
from tfprobunet import layers as layers_lib
from tfprobunet.catalog import IGNORE_LABEL
from tfprobunet.defaults import (MAX_CONNECT_TIMEOUT, MAX_SAMPLE_BYTES, MAX_SAMPLES, MAX_SEED,
                                 check_number, sample_bytes)

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


def check_num_samples(value, images=None, num_classes=None):
    """Raise a `ValueError` if `value` is a Python int below 1 or, run eagerly on `images
    (b, h, w, c)` of known shape, if its samples' probabilities would exceed `MAX_SAMPLE_BYTES`
    (`check_sample_bytes`; K = `num_classes`). A tensor `value`, and shapes known only inside
    a `tf.function` (`fit`'s validation, the serving signatures), are left to the ops that use
    them."""
    if not isinstance(value, int):
        return
    num_samples(value)
    shape = tuple(getattr(images, "shape", ()))
    if (num_classes is not None and len(shape) == 4 and None not in shape[:3]
            and tf.executing_eagerly()):
        check_sample_bytes(shape[0], value, *shape[1:3], num_classes)


def check_sample_bytes(images, samples, height, width, num_classes, limit=MAX_SAMPLE_BYTES,
                       hint="draw more in further calls, with other seeds"):
    """Refuse `samples` segmentations of each of `images` images of `height` x `width` pixels
    and `num_classes` classes whose float32 probabilities (`defaults.sample_bytes`:
    b * m * h * w * K * 4 bytes) exceed `limit`, saying how many samples, or images, fit;
    `hint` says how the caller gets more (a flag, a keyword that raises the limit)."""
    needed = sample_bytes(images, samples, height, width, num_classes)
    if needed <= limit:
        return
    most_samples = limit // sample_bytes(images, 1, height, width, num_classes)
    most_images = limit // sample_bytes(1, samples, height, width, num_classes)
    fits = [f"at most {most_samples} samples of {images} image(s)" if most_samples else None,
            f"at most {most_images} image(s) of {samples} samples"
            if most_images and images > 1 else None]
    fits = " or ".join(f for f in fits if f) or "smaller images (not even one sample fits)"
    raise ValueError(
        f"{samples} samples of {images} image(s) of {height} x {width} pixels with "
        f"{num_classes} classes take {readable(needed)} as float32 probabilities (b*m*h*w*K*4 "
        f"bytes), above the limit of {readable(limit)}: ask for {fits} ({hint}).")


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


# ---------------------------------------------------------------------- limits
def byte_limit(max_bytes, variable, default):
    """The limit in force: `max_bytes` if given, else the environment variable `variable` (a
    number of bytes, e.g. `8000000000` or `8e9`), else `default`."""
    source = "max_bytes"
    if max_bytes is None:
        text = os.environ.get(variable, "").strip()
        if not text:
            return default
        source = variable
        try:
            max_bytes = int(text) if text.isdigit() else int(float(text))
        except (ValueError, OverflowError):
            raise ValueError(f"{variable} must be a number of bytes, e.g. 8000000000 or 8e9. "
                             f"Received {text!r}.") from None
    if max_bytes < 1:
        raise ValueError(f"{source} must be a positive number of bytes. Received {max_bytes}.")
    return int(max_bytes)


def readable(size):
    """`size` bytes as `1.5 GiB` (or `512 bytes`)."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


# ---------------------------------------------------------------------- a model's size
# The ceilings of the numbers that make a model costly to build, far above the presets and the
# published configurations (in brackets). A `.keras` file's config.json sets them: a 128 KB file
# asking for convs_per_block=1000 kept `load_model` building for minutes before its weights
# were found missing. Checked by the constructors and by `saving.load_model` before it builds.
MAX_LEVELS = 16  # len(num_channels) [4; the HPU-Net's 8]: images at least 2**15 pixels a side
MAX_CHANNELS = 4096  # each of num_channels, fcomb_channels [16 to 192]
MAX_REPEATS = 32  # convs_per_block, blocks_per_level, fcomb_layers, a block's num_convs [2, 3]
MAX_LATENT_DIM = 1024  # latent_dim, each of latent_dims [6 or 8; the HPU-Net's 1]
MAX_COPIES = 256  # num_members, num_heads, rank [16; the SSN's rank 10]
MAX_STEPS = 2**31 - 1  # beta_warmup_steps [2000]
# The 3x3 convolutions a model builds, estimated as 4 nets (encoder, decoder, prior and
# posterior encoders) x levels x num_members x blocks_per_level x convs_per_block [48 for the
# default model, 288 for the HPU-Net's reference, 768 for the ensemble of 16]. At the limit (32
# U-Nets of 4 levels, 8 convolutions per block), `load_model` took 18 s on one CPU core.
MAX_CONVOLUTIONS = 4096

# name: (lowest, highest, example) of the integer arguments.
SIZES = {
    "convs_per_block": (1, MAX_REPEATS, 3), "blocks_per_level": (1, MAX_REPEATS, 3),
    "fcomb_layers": (1, MAX_REPEATS, 3), "num_convs": (1, MAX_REPEATS, 3),
    "fcomb_channels": (1, MAX_CHANNELS, 64),
    "latent_dim": (1, MAX_LATENT_DIM, 6), "num_members": (1, MAX_COPIES, 16),
    "num_heads": (1, MAX_COPIES, 16), "rank": (1, MAX_COPIES, 10),
    "ged_samples": (1, MAX_SAMPLES, 16), "energy_samples": (2, MAX_SAMPLES, 4),
    "num_mc_samples": (1, MAX_SAMPLES, 20), "beta_warmup_steps": (0, MAX_STEPS, 2000),
}
# name: (most items, lowest, highest, example) of the list arguments.
LIST_SIZES = {
    "num_channels": (MAX_LEVELS, 1, MAX_CHANNELS, "[32, 64, 128, 192]"),
    "latent_dims": (MAX_LEVELS - 1, 1, MAX_LATENT_DIM, "[1, 1, 1, 1]"),
}


def shown(value, limit=60):
    """`value` as a message shows it: its repr cut to `limit` characters (a list also says
    how many items it has), so that a hostile config is never echoed whole."""
    text = repr(value)
    if len(text) <= limit:
        return text
    count = f"{len(value):,} items" if isinstance(value, (list, tuple)) else \
        f"{len(text):,} characters"
    return f"{text[:limit]}... ({count})"


def _integer_in(value, lowest, highest):
    try:
        check_number("value", value, lowest, highest, integer=True)
    except ValueError:
        return False
    return True


def convolutions(arguments):
    """About how many 3x3 convolutions a model with constructor `arguments` builds (see
    `MAX_CONVOLUTIONS`); 0 without `num_channels`."""
    count = 4 * len(arguments.get("num_channels") or ())
    for name in ("num_members", "blocks_per_level", "convs_per_block"):
        count *= arguments.get(name) or 1
    return count


def check_model_sizes(arguments):
    """Refuse the size-driving numbers among the dict `arguments` (a model's constructor
    arguments, or the `config` of its config.json) beyond `SIZES`, `LIST_SIZES` and
    `MAX_CONVOLUTIONS`: one short `ValueError` naming the argument, what was received (cut
    short) and what works. Other keys, and None values, are left alone."""
    for name, (lowest, highest, example) in SIZES.items():
        value = arguments.get(name)
        if value is not None and not _integer_in(value, lowest, highest):
            raise ValueError(f"`{name}` must be an integer from {lowest} to {highest:,} (e.g. "
                             f"{example}). Received: {name}={shown(value)}")
    for name, (most, lowest, highest, example) in LIST_SIZES.items():
        value = arguments.get(name)
        if value is not None and not (isinstance(value, (list, tuple)) and 1 <= len(value) <= most
                                      and all(_integer_in(v, lowest, highest) for v in value)):
            raise ValueError(f"`{name}` must be a list of 1 to {most} integers from {lowest} to "
                             f"{highest:,}, e.g. {example}. Received: {name}={shown(value)}")
    count = convolutions(arguments)
    if count > MAX_CONVOLUTIONS:
        given = ", ".join(f"{name}={shown(arguments[name], 30)}" for name in (
            "num_channels", "num_members", "blocks_per_level", "convs_per_block")
            if arguments.get(name) is not None)
        raise ValueError(f"A model with {given} builds about {count:,} convolutions (4 x levels "
                         f"x num_members x blocks_per_level x convs_per_block), above "
                         f"{MAX_CONVOLUTIONS:,}: make one of them smaller.")


# ---------------------------------------------------------------------- a training run
# The bytes a training step holds per pixel of an example and per channel of its feature maps:
# those of each 3x3 convolution of the U-Net, each level's divided by 4 per level below the
# first, and those of f_comb's 1x1 convolutions (`training_bytes`). Peak RSS per example measured
# on a CPU (the slope between two batch sizes), per such channel: 15.3 for the default
# ProbabilisticUNet and 11.5 for the cpu preset at 64 x 64, 13.0 for a 4-member ensemble and 19.0
# for the SSN at 64 x 64, 31.8 for the HPU-Net at 128 x 128.
# The lowest is used: only a batch that cannot fit is refused.
ACTIVATION_BYTES = 11
MAX_TRAIN_BYTES_VARIABLE = "TFPROBUNET_MAX_TRAIN_BYTES"


def training_bytes(arguments, height, width):
    """At least how many bytes one `height` x `width` example takes in a training step of a
    model with the constructor `arguments` (`num_channels`, `convs_per_block`, and the
    `num_members`, `blocks_per_level`, `fcomb_layers` and `fcomb_channels` of the models that
    have them): `ACTIVATION_BYTES` x pixels x (the channels of every 3x3 convolution of the
    U-Net, each level's divided by 4 per level below the first, + f_comb's channels x its
    layers + 1)."""
    num_channels = arguments["num_channels"]
    channels = sum(c / 4**level for level, c in enumerate(num_channels))
    for name in ("convs_per_block", "blocks_per_level", "num_members"):
        channels *= arguments.get(name) or 1
    if arguments.get("fcomb_layers"):
        channels += (arguments.get("fcomb_channels") or num_channels[0]) * (
            arguments["fcomb_layers"] + 1)
    return int(ACTIVATION_BYTES * height * width * channels)


def available_memory():
    """The bytes of memory available to a new allocation: `MemAvailable` of /proc/meminfo,
    else the free physical pages (`os.sysconf`); None where neither is known."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def _image_size(dataset, image_size):
    """`(height, width)` of the training images, or None where only loading them tells."""
    if image_size is None and isinstance(dataset, str) and dataset in catalog.DATASETS:
        image_size = catalog.DATASETS[dataset].image_size
    elif image_size is None:
        spec = getattr(getattr(dataset, "dataset", dataset), "element_spec", None)
        shape = spec[0].shape if isinstance(spec, tuple) else None
        image_size = tuple(shape[:2]) if shape is not None and shape.rank == 3 else None
    if image_size is None:
        return None
    size = (image_size, image_size) if isinstance(image_size, numbers.Integral) else \
        tuple(image_size) if isinstance(image_size, (list, tuple)) else None
    if size is None or len(size) != 2 or None in size:
        return None
    return size


def check_training(model, model_kwargs, dataset, image_size, batch_size, seed,
                   connect_timeout):
    """Refuse, before `train` builds or writes anything, what its checks of single numbers do
    not see: a `seed` outside [0, 2**31 - 1]; a `connect_timeout` that is not a finite number
    of seconds in (0, 3600] (None waits for ever); an `image_size` that is not positive or that
    the model's U-Net cannot divide (naming the nearest sizes that work); the model's
    size-driving numbers (`check_model_sizes`); and a `batch_size` whose training step needs
    more memory than is available (`training_bytes`, against `available_memory`, or
    `TFPROBUNET_MAX_TRAIN_BYTES` where set; not checked with a GPU, whose memory TensorFlow
    guards itself).

    Args:
        model: the model's name; `model_kwargs`: its constructor arguments given.
        dataset, image_size, batch_size, seed, connect_timeout: `train`'s.
    """
    from tfprobunet import models

    check_number("seed", seed, 0, MAX_SEED, integer=True, example=0)
    if connect_timeout is not None:
        check_number("connect_timeout", connect_timeout, maximum=MAX_CONNECT_TIMEOUT,
                     above=0.0, example=300)
    if image_size is not None:
        sides = image_size if isinstance(image_size, (list, tuple)) else [image_size]
        if len(sides) not in (1, 2) or not all(_integer_in(s, 1, None) for s in sides):
            raise ValueError("`image_size` must be a positive integer or (height, width), e.g. "
                             f"64 or (256, 512). Received: image_size={shown(image_size)}")
    cls = models.get(model)
    defaults = {name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()
                if p.default is not p.empty}
    arguments = {**defaults, **model_kwargs}
    check_model_sizes(arguments)
    size = _image_size(dataset, image_size)
    if size is None or not isinstance(arguments.get("num_channels"), (list, tuple)):
        return
    layers_lib.check_spatial_size(*size, arguments["num_channels"])
    if tf.config.list_physical_devices("GPU"):
        return
    per_example = training_bytes(arguments, *size)
    set_by = MAX_TRAIN_BYTES_VARIABLE if os.environ.get(MAX_TRAIN_BYTES_VARIABLE, "").strip() \
        else "MemAvailable"
    available = byte_limit(None, MAX_TRAIN_BYTES_VARIABLE, available_memory() or 0)
    if not available or batch_size * per_example <= available:
        return
    fits = available // per_example
    fix = (f"use batch_size <= {fits} (--batch-size)" if fits else
           "not even one example fits: use smaller images (--image-size)")
    raise ValueError(
        f"batch_size={batch_size} of {size[0]} x {size[1]} images needs at least "
        f"{readable(batch_size * per_example)} for a training step of this "
        f"{cls.__name__} ({readable(per_example)} per example: {ACTIVATION_BYTES} bytes "
        f"per pixel per channel of its feature maps), above the {readable(available)} of "
        f"memory available ({set_by}): {fix}; if the estimate is wrong, set "
        f"{MAX_TRAIN_BYTES_VARIABLE}=<bytes>.")
