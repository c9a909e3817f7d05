"""Segment images of any size with a trained model, without a server: `predict` on arrays,
`predict_files` on image files (what `tfprobunet predict --model X.keras` runs).

The U-Net needs heights and widths divisible by `2 ** (levels - 1)`. `predict` pads each image
at the bottom and right, repeating its last row and column, up to the next multiple, samples,
and crops the outputs back: you get segmentations of the size you gave (a 1 x 1 image too).

`predict_files` reads each image's size from its header and refuses, before anything is decoded,
an image or a sample count beyond the request limits (`MAX_PIXELS`, `MAX_SAMPLE_PIXELS`,
`MAX_SAMPLES`, and `MAX_SAMPLE_BYTES`, which counts the classes: an export's defaults; a 291 KB
PNG can hold 10000 x 10000 pixels).
"""

import os

import numpy as np
import tensorflow as tf

from tfprobunet import _io, layers, metrics, saving
from tfprobunet.data import images as images_lib
from tfprobunet.data import intensity as intensity_lib
from tfprobunet.defaults import (MAX_PIXELS, MAX_SAMPLES, MAX_SAMPLE_BYTES, MAX_SAMPLE_PIXELS,
                                MAX_SEED, check_number, sample_bytes)
from tfprobunet.models import checks

# What `read_image` decodes (PIL's format names; None: any image PIL reads, as the folder
# dataset does).
IMAGE_FORMATS = None
# The most bytes of probabilities one `model.sample` call of `predict` returns: a request beyond
# it is drawn in several calls (`MAX_SAMPLE_BYTES`, what `model.sample` itself allows).
CALL_BYTES = MAX_SAMPLE_BYTES


def pad_to_multiple(images, divisor, value=None):
    """Pad `(b, h, w, ...)` arrays at the bottom and right to multiples of `divisor`.

    Args:
        images: `(b, h, w, ...)` array.
        divisor: the multiple, e.g. `layers.size_divisor(model.num_channels)`.
        value: the padding value; None repeats the last row and column (images). Label maps
            are padded with the ignore label 255.

    Returns:
        `(padded, (h, w))`: the padded array and the original height and width.
    """
    images = np.asarray(images)
    h, w = images.shape[1:3]
    pad = [(0, 0), (0, layers.padded_size(h, divisor) - h),
           (0, layers.padded_size(w, divisor) - w)] + [(0, 0)] * (images.ndim - 3)
    if value is None:
        return np.pad(images, pad, mode="edge"), (h, w)
    return np.pad(images, pad, constant_values=value), (h, w)


def predict(model, images, num_samples=16, seed=None, max_sample_bytes=MAX_SAMPLE_BYTES):
    """Draw `num_samples` segmentations of images of any height and width.

    Args:
        model: any `tfprobunet.models.SegmentationSampler` (a trained `ProbabilisticUNet` or
            baseline).
        images: `(b, h, w, c)` float in the range the model was trained on ([0, 1] for the
            built-in loaders), or uint8 (divided by 255, as the loaders do).
        num_samples: segmentations per image.
        seed: an int from 0 to 2**31 - 1 makes the samples reproducible; None draws fresh ones.
        max_sample_bytes: the most bytes the probabilities may take (b * m * h * w * K * 4,
            of the padded images); beyond `CALL_BYTES` (`MAX_SAMPLE_BYTES`), which one
            `model.sample` call may return, the samples are drawn in several calls, the i-th seeded `[seed, i]`
            (a served model draws them in one call: the same seed gives it other masks).

    Returns:
        A dict, as the served `sample` signature's: `masks (b, num_samples, h, w)` int32 labels
        and `probabilities (b, num_samples, h, w, K)` float32, each sample's class
        probabilities.
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"`images` must be (b, h, w, c). Received shape {images.shape}.")
    if seed is not None:
        check_number("seed", seed, 0, MAX_SEED, integer=True, example=0)
    # uint8 stays uint8: `model.sample` divides it by 255 itself.
    padded, (h, w) = pad_to_multiple(images, layers.size_divisor(model.num_channels))
    per_call = num_samples
    k = getattr(model, "num_classes", None)  # a stand-in sampler may not say
    if k is not None:
        b, (ph, pw) = len(padded), padded.shape[1:3]
        checks.check_sample_bytes(b, num_samples, ph, pw, k, max_sample_bytes,
                                  hint="or raise max_sample_bytes")
        per_call = max(1, CALL_BYTES // sample_bytes(b, 1, ph, pw, k))
    masks, probabilities = [], []
    for i, start in enumerate(range(0, num_samples, per_call)):
        call_seed = seed if i == 0 or seed is None else tf.constant([seed, i], tf.int32)
        logits = model.sample(padded, min(per_call, num_samples - start),
                              seed=call_seed)[:, :, :h, :w]
        masks.append(tf.argmax(logits, axis=-1, output_type=tf.int32).numpy())
        probabilities.append(tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1).numpy())
    return {"masks": np.concatenate(masks, axis=1),
            "probabilities": np.concatenate(probabilities, axis=1)}


def write_masks(masks, probabilities, out_dir):
    """Write one image's samples and uncertainty as PNGs.

    Args:
        masks: `(m, h, w)` labels; written as `sample_00.png`, ... scaled to 0..255.
        probabilities: `(m, h, w, K)` the samples' class probabilities; the entropy H (nats)
            of their mean is written as `uncertainty.png`, 8-bit grey `round(255 * H / log K)`:
            black where every sample is certain of the same class, white at log K (all K
            classes equally likely: 0.69 nats for two), e.g. 120 for a mean of (0.9, 0.1).
            The PNG's text field `Description` says so.
        out_dir: created if missing.

    Returns:
        The paths written.
    """
    from PIL import Image, PngImagePlugin

    num_classes = probabilities.shape[-1]
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for i, mask in enumerate(masks):
        path = os.path.join(out_dir, f"sample_{i:02d}.png")
        with _io.replacing(path) as tmp:  # a link at `path` is replaced, not written through
            Image.fromarray((np.asarray(mask) * (255 // (num_classes - 1))).astype(
                np.uint8)).save(tmp, format="PNG")
        written.append(path)
    entropy, _ = metrics.uncertainty_maps(np.asarray(probabilities)[None])
    path = os.path.join(out_dir, "uncertainty.png")
    scale = PngImagePlugin.PngInfo()
    scale.add_text("Description", f"entropy H of the samples' mean class probabilities: grey = "
                                  f"round(255 * H / log {num_classes}); 0 = 0 nats, 255 = "
                                  f"log {num_classes} = {np.log(num_classes):.4f} nats")
    grey = np.round(np.clip(entropy[0] / np.log(num_classes), 0, 1) * 255)
    with _io.replacing(path) as tmp:
        Image.fromarray(grey.astype(np.uint8)).save(tmp, format="PNG", pnginfo=scale)
    return written + [path]


def image_size(path):
    """The `(height, width)` of an image file, read from its header: nothing is decoded
    (`tfprobunet.data.images.header_size`).

    Raises:
        ValueError: `path` is missing, a directory, or not an image PIL reads; the message says
            which.
    """
    if os.path.isdir(path):
        raise ValueError(f"{path} is a directory: pass image files (on the command line, "
                         f"e.g. --image {os.path.join(path, '*.png')}: the shell expands it).")
    return images_lib.header_size(path, IMAGE_FORMATS)


def check_image_files(paths, num_samples, max_samples=MAX_SAMPLES, max_pixels=MAX_PIXELS,
                      max_sample_pixels=MAX_SAMPLE_PIXELS, num_classes=None, divisor=1,
                      max_sample_bytes=MAX_SAMPLE_BYTES):
    """Refuse, from their headers and before anything is decoded, image files that cannot be
    read and requests beyond the limits.

    Args:
        paths: image files, each segmented on its own (a batch of one).
        num_samples: segmentations per image.
        max_samples, max_pixels, max_sample_pixels: the most samples per image, pixels per
            image (h * w) and sampled pixels per image (num_samples * h * w); the defaults are
            an export's (`tfprobunet.defaults`).
        num_classes, divisor, max_sample_bytes: with `num_classes` K, also the most bytes of
            the samples' probabilities, num_samples * h * w * K * 4, for the image padded to
            multiples of `divisor` (`defaults.sample_bytes`).

    Returns:
        The `(height, width)` of each file.
    """
    if not 1 <= num_samples <= max_samples:
        raise ValueError(f"num_samples = {num_samples}: between 1 and max_samples = "
                         f"{max_samples} segmentations per image can be drawn at once.")
    sizes = [image_size(path) for path in paths]
    for path, (height, width) in zip(paths, sizes):
        pixels = height * width
        if pixels > max_pixels:
            scale = (max_pixels / pixels) ** 0.5
            raise ValueError(
                f"{path} is {height} x {width} pixels (height x width), {pixels:,} pixels, "
                f"above max_pixels = {max_pixels:,} (by default an export's limit, applied to "
                f"local prediction too): it was not decoded. Resize it to at most "
                f"{int(height * scale)} x {int(width * scale)}, or split it into tiles.")
        if num_samples * pixels > max_sample_pixels:
            raise ValueError(
                f"{path}: {num_samples} samples of {height} x {width} pixels are "
                f"{num_samples * pixels:,} sampled pixels, above max_sample_pixels = "
                f"{max_sample_pixels:,}: ask for at most "
                f"{max(1, max_sample_pixels // pixels)} samples of it.")
        if num_classes is not None:
            try:
                checks.check_sample_bytes(
                    1, num_samples, layers.padded_size(height, divisor),
                    layers.padded_size(width, divisor), num_classes, max_sample_bytes,
                    hint="--num-samples; max_sample_bytes, --max-sample-bytes, raises the limit")
            except ValueError as error:
                raise ValueError(f"{path}: {error} It was not decoded.") from None
    return sizes


def predict_files(model, paths, num_samples, out_dir, seed=None, max_samples=MAX_SAMPLES,
                  max_pixels=MAX_PIXELS, max_sample_pixels=MAX_SAMPLE_PIXELS, intensity=None,
                  max_sample_bytes=MAX_SAMPLE_BYTES):
    """Segment image files, each at its own size: locally, or through a served model.

    Args:
        model: a `SegmentationSampler`, the path of a `.keras` file (`saving.load_model`), or a
            serving client (`tfprobunet.serving.GrpcClient` or `RestClient`: `predict`, which
            pads each image to the served model's multiple as `predict` does here and crops
            the masks back, so both give the same masks for the same seed; an export made
            before the `info` signature existed gets the image as it is, and refuses sides it
            cannot divide).
        paths: PNG or JPEG files; read with the model's channels (grey or RGB converted).
        num_samples: segmentations per image.
        out_dir: `out_dir/<file stem>/sample_00.png, ..., uncertainty.png` per image
            (`write_masks`).
        seed: an int (0 to 2**31 - 1) makes the samples reproducible.
        max_samples, max_pixels, max_sample_pixels, max_sample_bytes: every file is checked
            against these before any is decoded or sent (`check_image_files`;
            `max_sample_bytes`, for a local model, bounds num_samples * h * w * K * 4, K its
            classes: by default `defaults.MAX_SAMPLE_BYTES`, 32 samples of 128 x 128 for 255
            classes); a served model's export may record other limits (its
            `assets.extra/tfprobunet_config.json`), which its server applies.
        intensity: how pixel values become [0, 1] (`tfprobunet.data.intensity`); None: the
            rule the model was trained with: its training run's (`intensity.of_run`, for the
            path of a `.keras` file in a run's workdir), or the one a served model's export
            records (`client.info()`); the data type's range otherwise.

    Returns:
        The paths written.
    """
    if intensity is None and isinstance(model, (str, os.PathLike)):
        intensity = intensity_lib.of_run(os.fspath(model))
    if isinstance(model, (str, os.PathLike)):
        model = saving.load_model(model)
    served = hasattr(model, "features") and hasattr(model, "metadata")  # a serving client
    # A served model's classes are its server's to count (before any request is sent).
    check_image_files(paths, num_samples, max_samples, max_pixels, max_sample_pixels,
                      *((None, 1) if served else (model.num_classes,
                                                   layers.size_divisor(model.num_channels))),
                      max_sample_bytes)
    if served:
        # `serving_default`, which every export has (a baseline's has no `features`).
        channels = model.metadata()["serving_default"]["inputs"]["images"][1][-1]

        def run(images):
            return model.predict(images, num_samples, seed)
        if intensity is None and model.info() is not None:
            intensity = model.info()["config"].get("intensity")
    else:
        channels = model.image_channels

        def run(images):
            return predict(model, images, num_samples, seed, max_sample_bytes)
    written = []
    for path in paths:
        outputs = run(images_lib.read_image(path, channels, intensity))
        stem = os.path.splitext(os.path.basename(path))[0]
        written += write_masks(outputs["masks"][0], outputs["probabilities"][0],
                               os.path.join(out_dir, stem))
    return written
