"""`train()`: fit a `ProbabilisticUNet` on a built-in benchmark with checkpoints that survive a
crash, a CSV log and a guard that stops on a non-finite loss."""

import csv
import functools
import json
import math
import os

import keras
import tensorflow as tf

from tfprobunet import data as data_lib
from tfprobunet.data import pipeline
from tfprobunet.model import ProbabilisticUNet

STRATEGIES = ("default", "mirrored")
MONITORED_TERMS = ("loss", "reconstruction", "kl")


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss term."""


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stop training at the first batch whose loss terms are not finite.

    Unlike `keras.callbacks.TerminateOnNaN`, it raises `NonFiniteLossError` naming the epoch,
    the step and the term that went bad, and it stops before the epoch ends, so the last
    checkpoint written by `BackupAndRestore` is the last good one.
    """

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        bad = {k: float(logs[k]) for k in MONITORED_TERMS
               if k in (logs or {}) and not math.isfinite(float(logs[k]))}
        if bad:
            terms = ", ".join(f"{k}={v}" for k, v in bad.items())
            raise NonFiniteLossError(
                f"Training stopped at epoch {self._epoch + 1}, step {batch + 1}: {terms}. The "
                "weights of this epoch are discarded; the last checkpoint is the last good one. "
                "Check the inputs for NaN/Inf, or lower the learning rate.")


class EpochLog(keras.callbacks.Callback):
    """A CSV row per epoch (`epoch` and the logs) that survives restarts: when a resumed run
    starts at epoch e, rows of epochs >= e (written before a crash, not checkpointed) are
    dropped, so each epoch appears exactly once."""

    def __init__(self, filename):
        super().__init__()
        self.filename = filename
        self._started = False

    def _rows(self):
        if not os.path.exists(self.filename):
            return []
        with open(self.filename, newline="") as f:
            return list(csv.DictReader(f))

    def _write(self, rows, fieldnames):
        tmp = self.filename + ".tmp"
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.filename)

    def on_epoch_begin(self, epoch, logs=None):
        if not self._started:
            self._started = True
            rows = self._rows()
            if rows:
                self._write([r for r in rows if int(r["epoch"]) < epoch], list(rows[0]))

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch, **{k: float(v) for k, v in sorted((logs or {}).items())}}
        rows = self._rows() + [row]
        self._write(rows, list(rows[0]))


def make_strategy(name):
    """`"default"`: no distribution. `"mirrored"`: `MirroredStrategy` over every GPU, or over
    every logical CPU device when there is no GPU (so it can be exercised on a CPU machine)."""
    if name not in STRATEGIES:
        raise ValueError(f"`strategy` must be one of {STRATEGIES}. Received: {name!r}")
    if name == "default":
        return tf.distribute.get_strategy()
    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
        return _mirrored(tuple(d.name for d in gpus), cpu=False)
    return _mirrored(tuple(d.name for d in tf.config.list_logical_devices("CPU")), cpu=True)


@functools.lru_cache(maxsize=None)
def _mirrored(devices, cpu):
    # One strategy per device set and process: collective all-reduce keys restart with each new
    # strategy, and a second strategy's ops then collide with the first's ("Shape mismatch in
    # the collective instance"), e.g. in a tuner's second trial. On CPU devices, reducing to one
    # device avoids collectives altogether.
    cross_device_ops = tf.distribute.ReductionToOneDevice() if cpu else None
    return tf.distribute.MirroredStrategy(list(devices), cross_device_ops=cross_device_ops)


# Settings a resumed run may change: more epochs, other devices, data moved elsewhere.
RESUMABLE_CHANGES = ("epochs", "strategy", "data_dir")


def _record_settings(workdir, settings):
    """Write `train_config.json`; if `workdir` holds a checkpoint made with other settings
    (other than `RESUMABLE_CHANGES`), refuse to resume it rather than mix two runs."""
    path = os.path.join(workdir, "train_config.json")
    settings = json.loads(json.dumps(settings, default=list))
    if os.path.isdir(os.path.join(workdir, "backup")) and os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        changed = sorted(k for k in set(saved) | set(settings)
                         if k not in RESUMABLE_CHANGES and saved.get(k) != settings.get(k))
        if changed:
            differences = ", ".join(f"{k}: {saved.get(k)!r} in the checkpointed run, "
                                    f"{settings.get(k)!r} now" for k in changed)
            raise ValueError(f"{workdir} holds a checkpointed run with other settings "
                             f"({differences}). Resume it with the same arguments (only "
                             f"{', '.join(RESUMABLE_CHANGES)} may change), or use a new workdir.")
    with open(path + ".tmp", "w") as f:
        json.dump(settings, f, indent=2)
    os.replace(path + ".tmp", path)


def train(workdir, dataset="flips", data_dir=None, epochs=10, steps_per_epoch=100,
          batch_size=8, image_size=None, num_examples=None, validation_examples=0,
          learning_rate=1e-4, strategy="default", seed=0, jit_compile=False, verbose=1,
          callbacks=None, **model_kwargs):
    """Train a `ProbabilisticUNet` on a named dataset, resuming if `workdir` holds a run.

    Writes to `workdir`: `backup/` (a `BackupAndRestore` checkpoint at each epoch end: a killed
    run started again with the same arguments continues from the last finished epoch; other
    arguments, except `epochs`, `strategy` and `data_dir`, are refused with a `ValueError`),
    `log.csv` (one row per epoch), `train_config.json` and, at the end, `model.keras`.

    Args:
        workdir: output directory.
        dataset: a name of `tfprobunet.data.DATASETS`: `"flips"`, `"graders"` (synthetic),
            `"lidc"`, `"lidc-pickle"` or `"cityscapes"` (read from `data_dir`).
        data_dir: where the real data lives (see `tfprobunet.data.load`).
        epochs, steps_per_epoch, batch_size: the schedule; `batch_size` is global.
        image_size: height and width (default: the dataset's, see `tfprobunet.data.load`).
        num_examples: size of the training set (default: the dataset's).
        validation_examples: if > 0, that many examples of the `val` split with all their
            annotations are evaluated after each epoch: `log.csv` gets `val_loss`, ... and
            `val_ged` (16 samples per image).
        learning_rate: Adam's learning rate (official: 1e-4).
        strategy: `"default"` or `"mirrored"` (see `make_strategy`).
        seed: seeds the data, the weights and the model's random draws.
        jit_compile: XLA-compile the train step (see bench/train_step.py: slower on CPU).
        verbose: Keras progress bar (1), one line per epoch (2) or silent (0).
        callbacks: extra Keras callbacks, run after the built-in ones.
        **model_kwargs: forwarded to `ProbabilisticUNet` (e.g. `num_channels`, `latent_dim`,
            `beta`); `num_classes` is set by the dataset.

    Returns:
        `(model, history)`.
    """
    os.makedirs(workdir, exist_ok=True)
    settings = dict(dataset=dataset, data_dir=data_dir, epochs=epochs,
                    steps_per_epoch=steps_per_epoch, batch_size=batch_size,
                    image_size=image_size, num_examples=num_examples,
                    validation_examples=validation_examples, learning_rate=learning_rate,
                    strategy=strategy, seed=seed, **model_kwargs)
    _record_settings(workdir, settings)
    source = data_lib.load(dataset, "train", data_dir, image_size, num_examples, seed)
    batches = pipeline.training_pipeline(source.dataset, batch_size, source.annotation_weights,
                                         seed=seed)
    validation = None
    if validation_examples:
        validation = data_lib.load(dataset, "val", data_dir, image_size, validation_examples,
                                   seed)
        validation = pipeline.evaluation_pipeline(validation.dataset, batch_size,
                                                  validation.annotation_weights)
    keras.utils.set_random_seed(seed)
    with make_strategy(strategy).scope():
        model_kwargs.setdefault("ged_classes", source.classes)
        model = ProbabilisticUNet(num_classes=source.num_classes, seed=seed, **model_kwargs)
        model.build((None, *source.dataset.element_spec[0].shape))
        model.compile(optimizer=keras.optimizers.Adam(learning_rate), jit_compile=jit_compile)
    history = model.fit(
        batches,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        validation_data=validation,
        shuffle=False,  # the pipeline shuffles
        verbose=verbose,
        callbacks=[
            StopOnNonFiniteLoss(),
            EpochLog(os.path.join(workdir, "log.csv")),
            keras.callbacks.BackupAndRestore(os.path.join(workdir, "backup")),
            *(callbacks or []),
        ],
    )
    path = os.path.join(workdir, "model.keras")
    model.save(path + ".tmp.keras")
    os.replace(path + ".tmp.keras", path)
    return model, history
