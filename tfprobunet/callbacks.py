"""Keras callbacks to add to `fit`: `TimeBudget` (stop at an epoch end once time is spent),
`CalibrationLog` (mode and flip frequencies on validation images after each epoch) and
`TensorBoardSamples` (sample grids and calibration scalars for TensorBoard)."""

import time

import keras
import numpy as np
import tensorflow as tf

from tfprobunet.losses import IGNORE_LABEL


class TimeBudget(keras.callbacks.Callback):
    """Stop training at the end of the first epoch that ends after `minutes` of training.

    The budget counts from the start of `fit` (the first epoch's tracing included). Training
    stops between epochs only, so checkpoints and logs stay whole; the last epoch may end up to
    one epoch's time past the budget. `stopped_epoch` is the epoch (from 0) after which it
    stopped, or None.

    Args:
        minutes: the budget, > 0.
    """

    def __init__(self, minutes):
        super().__init__()
        if not minutes > 0:
            raise ValueError(f"`minutes` must be > 0. Received: minutes={minutes!r}")
        self.minutes = float(minutes)
        self.stopped_epoch = None

    def on_train_begin(self, logs=None):
        self._start = time.monotonic()
        self.stopped_epoch = None

    def on_epoch_end(self, epoch, logs=None):
        if time.monotonic() - self._start >= 60.0 * self.minutes:
            self.model.stop_training = True
            self.stopped_epoch = epoch


class CalibrationLog(keras.callbacks.Callback):
    """After each epoch, how well the samples' frequencies match known annotation probabilities
    on a fixed set of images, added to the epoch's logs (so `log.csv`, the progress bar and
    Keras' `TensorBoard` callback, placed after this one, show them):

    - `val_mode_r`, `val_mode_log_r`: Pearson r of the mode frequencies against the
      probabilities, on linear and on log frequencies (`tfprobunet.metrics.log_pearson_r`);
    - `val_modes_found`: the modes hit at least once;
    - `val_flip_<c>_<t>`: the share of class c's pixels that the samples label t, for every
      flip the annotations show (compare with the flip probabilities).

    Args:
        source: a `tfprobunet.data.Source` with `annotation_weights` (e.g. the `val` split of
            *flips* or Cityscapes).
        num_samples: samples per image.
        seed: the samples' seed: the same weights give the same values.
    """

    def __init__(self, source, num_samples=16, seed=0):
        super().__init__()
        if source.annotation_weights is None:
            raise ValueError("CalibrationLog needs a Source with `annotation_weights` (known "
                             "mode probabilities); for equally likely graders, `val_ged` "
                             "measures the match.")
        self.source = source
        self.num_samples = num_samples
        self.seed = seed

    def on_epoch_end(self, epoch, logs=None):
        from tfprobunet import evaluation  # evaluation imports the data pipeline: lazily

        report = evaluation.evaluate(self.model, self.source, sample_counts=(self.num_samples,),
                                     seed=self.seed, num_figure_examples=0, verbose=0)
        modes = report["modes"]
        values = {"val_mode_r": modes["pearson_r"], "val_mode_log_r": modes["log_pearson_r"],
                  "val_modes_found": float(modes["modes_found"])}
        values.update({f"val_flip_{f['class']}_{f['twin']}": f["sampled"] for f in modes["flips"]})
        if logs is not None:
            logs.update(values)


# Label colours of the sample grids (class 0 black, then distinct colours; ignored pixels grey).
_PALETTE = np.array([[0, 0, 0], [255, 255, 255], [230, 25, 75], [60, 180, 75], [255, 225, 25],
                     [0, 130, 200], [245, 130, 48], [145, 30, 180], [70, 240, 240],
                     [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128],
                     [220, 190, 255], [170, 110, 40], [128, 0, 0], [170, 255, 195],
                     [128, 128, 0], [255, 215, 180], [0, 0, 128]], np.float32) / 255.0


def _labels_rgb(labels, num_classes):
    """`(..., h, w)` labels as `(..., h, w, 3)` colours: black/white for two classes."""
    palette = _PALETTE[np.arange(num_classes) % len(_PALETTE)]
    rgb = palette[np.clip(labels, 0, num_classes - 1)]
    rgb[labels == IGNORE_LABEL] = 0.5
    return rgb


def sample_grid_image(images, annotations, logits, max_annotations=4):
    """The grid `TensorBoardSamples` writes, as one RGB image: a row per image with the image,
    its annotations, the samples' label maps and the entropy of the mean probabilities (white
    = log K nats), separated by 1-pixel grey lines.

    Args:
        images: `(b, h, w, c)` in [0, 1]. annotations: `(b, A, h, w)` int or None.
        logits: `(b, m, h, w, K)`, e.g. `model.sample(images, m)`.

    Returns:
        `(H, W, 3)` float32 in [0, 1].
    """
    from tfprobunet import metrics

    images, logits = np.asarray(images, np.float32), np.asarray(logits, np.float32)
    num_classes = logits.shape[-1]
    entropy, _ = metrics.uncertainty_maps(tf.nn.softmax(logits).numpy())
    entropy = np.clip(entropy / np.log(num_classes), 0.0, 1.0).astype(np.float32)
    shown = 0 if annotations is None else min(np.shape(annotations)[1], max_annotations)
    rows = []
    for i, image in enumerate(np.clip(images, 0.0, 1.0)):
        image = np.repeat(image, 3, -1) if image.shape[-1] == 1 else image[..., :3]
        tiles = [image]
        tiles += [_labels_rgb(np.asarray(annotations[i][a]), num_classes) for a in range(shown)]
        tiles += list(_labels_rgb(logits[i].argmax(-1), num_classes))
        tiles.append(np.repeat(entropy[i][..., None], 3, -1))
        rows.append(np.concatenate([np.pad(t, ((0, 1), (0, 1), (0, 0)), constant_values=0.5)
                                    for t in tiles], axis=1))
    return np.concatenate(rows, axis=0)


class TensorBoardSamples(keras.callbacks.Callback):
    """Write what the model samples, and how calibrated it is, to TensorBoard after epochs.

    Every `every_n_epochs` epochs (and after the last), to `log_dir/samples`:

    - the image `samples`: for each of the given images, the image, its annotations, the label
      maps of `num_samples` prior samples (the same draws every epoch) and the entropy of their
      mean probabilities (`sample_grid_image`);
    - scalars `calibration/<name>` for the epoch's validation GED and calibration diagnostics
      in the logs: `val_ged`, and `val_mode_*`, `val_modes_found`, `val_flip_*` from a
      `CalibrationLog` placed before this callback.

    Keras' own `TensorBoard` callback (losses, histograms, the graph) works beside it: it
    writes to `log_dir/train` and `log_dir/validation`, this one to `log_dir/samples`.

    Args:
        log_dir: the TensorBoard log folder.
        images: `(b, h, w, c)` float, a few images (4 to 8 keep the grid legible).
        annotations: optional `(b, A, h, w)` int, shown beside the samples.
        num_samples: samples per image.
        every_n_epochs: write after every n-th epoch.
        seed: the samples' seed.
    """

    SCALARS = ("val_ged", "val_mode_", "val_modes_found", "val_flip_")

    def __init__(self, log_dir, images, annotations=None, num_samples=4, every_n_epochs=1,
                 seed=0):
        super().__init__()
        images = np.asarray(images, np.float32)
        if images.ndim != 4:
            raise ValueError("`images` must be a batch (b, h, w, c). Received shape "
                             f"{images.shape}")
        if annotations is not None and (np.ndim(annotations) != 4
                                        or len(annotations) != len(images)):
            raise ValueError("`annotations` must be (b, A, h, w) for the b images. Received "
                             f"shape {np.shape(annotations)} for {len(images)} images")
        if num_samples < 1 or every_n_epochs < 1:
            raise ValueError("`num_samples` and `every_n_epochs` must be >= 1. Received: "
                             f"num_samples={num_samples}, every_n_epochs={every_n_epochs}")
        self.log_dir = log_dir
        self.images = images
        self.annotations = annotations
        self.num_samples = num_samples
        self.every_n_epochs = every_n_epochs
        self.seed = seed
        self._writer = None

    def on_train_begin(self, logs=None):
        self._epochs = self.params.get("epochs") if self.params else None

    def on_epoch_end(self, epoch, logs=None):
        last = self._epochs is not None and epoch + 1 == self._epochs
        if (epoch + 1) % self.every_n_epochs and not last:
            return
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(f"{self.log_dir}/samples")
        logits = self.model.sample(self.images, self.num_samples, seed=self.seed)
        grid = sample_grid_image(self.images, self.annotations, logits)
        with self._writer.as_default(step=epoch):
            tf.summary.image("samples", grid[None], max_outputs=1)
            for name, value in (logs or {}).items():
                if name.startswith(self.SCALARS):
                    tf.summary.scalar(f"calibration/{name}", float(value))
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
