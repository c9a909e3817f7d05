"""Segment images of any size with a trained model, without a server: `predict` on arrays,
`predict_files` on image files (what `tfprobunet predict --model X.keras` runs).

The U-Net needs heights and widths divisible by `2 ** (levels - 1)`. `predict` pads each image
at the bottom and right, repeating its last row and column, up to the next multiple, samples,
and crops the outputs back: you get segmentations of the size you gave.
"""

import os

import numpy as np
import tensorflow as tf

from tfprobunet import layers, metrics


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
    pad = [(0, 0), (0, -h % divisor), (0, -w % divisor)] + [(0, 0)] * (images.ndim - 3)
    if value is None:
        return np.pad(images, pad, mode="edge"), (h, w)
    return np.pad(images, pad, constant_values=value), (h, w)


def predict(model, images, num_samples=16, seed=None):
    """Draw `num_samples` segmentations of images of any height and width.

    Args:
        model: any `tfprobunet.models.SegmentationSampler` (a trained `ProbabilisticUNet` or
            baseline).
        images: `(b, h, w, c)` float in the range the model was trained on ([0, 1] for the
            built-in loaders), or uint8 (divided by 255, as the loaders do).
        num_samples: segmentations per image.
        seed: an int makes the samples reproducible; None draws fresh ones.

    Returns:
        A dict, as the served `sample` signature's: `masks (b, num_samples, h, w)` int32 labels
        and `probabilities (b, num_samples, h, w, K)` float32, each sample's class
        probabilities.
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"`images` must be (b, h, w, c). Received shape {images.shape}.")
    # uint8 stays uint8: `model.sample` divides it by 255 itself.
    padded, (h, w) = pad_to_multiple(images, layers.size_divisor(model.num_channels))
    logits = model.sample(padded, num_samples, seed=seed)[:, :, :h, :w]
    return {"masks": tf.argmax(logits, axis=-1, output_type=tf.int32).numpy(),
            "probabilities": tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1).numpy()}


def write_masks(masks, probabilities, out_dir):
    """Write one image's samples and uncertainty as PNGs.

    Args:
        masks: `(m, h, w)` labels; written as `sample_00.png`, ... scaled to 0..255.
        probabilities: `(m, h, w, K)` the samples' class probabilities; the entropy of their
            mean, scaled by its maximum log K, is written as `uncertainty.png`.
        out_dir: created if missing.

    Returns:
        The paths written.
    """
    from PIL import Image

    num_classes = probabilities.shape[-1]
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for i, mask in enumerate(masks):
        path = os.path.join(out_dir, f"sample_{i:02d}.png")
        Image.fromarray((np.asarray(mask) * (255 // (num_classes - 1))).astype(np.uint8)).save(
            path)
        written.append(path)
    entropy, _ = metrics.uncertainty_maps(np.asarray(probabilities)[None])
    path = os.path.join(out_dir, "uncertainty.png")
    Image.fromarray(np.uint8(np.clip(entropy[0] / np.log(num_classes), 0, 1) * 255)).save(path)
    return written + [path]


def predict_files(model, paths, num_samples, out_dir, seed=None):
    """Segment image files, each at its own size: locally, or through a served model.

    Args:
        model: a `SegmentationSampler`, the path of a `.keras` file, or a serving client
            (`tfprobunet.serving.GrpcClient` or `RestClient`: `features` once per image, then
            `sample`; the served model refuses sides it cannot divide, which are padded only
            locally).
        paths: PNG or JPEG files; read with the model's channels (grey or RGB converted).
        num_samples: segmentations per image.
        out_dir: `out_dir/<file stem>/sample_00.png, ..., uncertainty.png` per image
            (`write_masks`).
        seed: an int makes the samples reproducible.

    Returns:
        The paths written.
    """
    import keras

    from tfprobunet.serving.client import read_image

    if isinstance(model, str):
        model = keras.saving.load_model(model)
    if hasattr(model, "features") and hasattr(model, "metadata"):  # a serving client
        channels = model.metadata()["features"]["inputs"]["images"][1][-1]

        def run(images):
            return model.sample(model.features(images), num_samples, seed)
    else:
        channels = model.image_channels

        def run(images):
            return predict(model, images, num_samples, seed)
    written = []
    for path in paths:
        outputs = run(read_image(path, channels))
        stem = os.path.splitext(os.path.basename(path))[0]
        written += write_masks(outputs["masks"][0], outputs["probabilities"][0],
                               os.path.join(out_dir, stem))
    return written
