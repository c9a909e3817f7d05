"""Every Keras callback of the library.

Those `train` runs on every run: `StopOnNonFiniteLoss` (no NaN reaches a file), `StopOnSignal`
(SIGINT/SIGTERM stop at a step boundary), `EpochLog` (a CSV row per epoch) and
`EpochCheckpoint` (weights and optimizer state after each epoch, safe against a kill); and,
when the output is not a terminal, `ProgressLog` (a line every 100 steps or minute).
Those to add to `fit` (or that `train` adds when asked): `TimeBudget` (stop at an epoch end once
time is spent), `CalibrationLog` (mode and flip frequencies on validation images after each
epoch) and `TensorBoardSamples` (sample grids and calibration scalars for TensorBoard).
"""

import contextlib
import csv
import json
import math
import os
import re
import signal
import time
import warnings

import keras
import numpy as np
import tensorflow as tf

from tfprobunet import _interrupts, _io, saving
from tfprobunet.catalog import IGNORE_LABEL

# The loss terms `StopOnNonFiniteLoss` watches.
MONITORED_TERMS = ("loss", "reconstruction", "kl", "energy")


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


class ProgressLog(keras.callbacks.Callback):
    """A line of text every `every_steps` training steps or `every_seconds` seconds, whichever
    comes first, written and flushed at once: progress a log file can show, such as

        epoch 3/10 step 200/500 - kl 2.341 - loss 693.1 - 1.9 s/step - epoch ends in 9:30

    The values are the epoch's running means, as Keras shows them; the time per step is that of
    the steps since the previous line (the first line's includes building the graph), and the
    epoch's end is estimated from it, validation not included. The last step of an epoch has no
    line of its own: Keras' line per epoch (`verbose=2`) follows.

    Keras' progress bar (`verbose=1`) redraws itself with `\\r`, backspaces and colour codes,
    which a file keeps as they are, and its `verbose=2` says nothing until an epoch ends (many
    minutes, on full-size images). `train` and `tune` therefore add this
    callback to `verbose=2` when the output is not a terminal (`progress_callbacks`); pass your
    own to `train(callbacks=[...])` for another interval (it then replaces the default one).

    Args:
        every_steps: at most this many steps between two lines (>= 1).
        every_seconds: at most about this many seconds between two lines, checked at the end
            of each step (> 0).
    """

    def __init__(self, every_steps=100, every_seconds=60.0):
        super().__init__()
        if not (isinstance(every_steps, int) and every_steps >= 1):
            raise ValueError(f"`every_steps` must be an integer >= 1. Received: "
                             f"every_steps={every_steps!r}")
        if not every_seconds > 0:
            raise ValueError(f"`every_seconds` must be > 0. Received: "
                             f"every_seconds={every_seconds!r}")
        self.every_steps = every_steps
        self.every_seconds = float(every_seconds)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._last_step, self._last_time = 0, time.monotonic()

    def on_train_batch_end(self, batch, logs=None):
        step, now = batch + 1, time.monotonic()
        steps, epochs = self.params.get("steps"), self.params.get("epochs")
        if step == steps or (step - self._last_step < self.every_steps
                             and now - self._last_time < self.every_seconds):
            return
        per_step = (now - self._last_time) / (step - self._last_step)
        self._last_step, self._last_time = step, now
        parts = [f"epoch {self._epoch + 1}/{epochs} step {step}/{steps or '?'}"]
        parts += [f"{name} {float(value):.4g}" for name, value in sorted((logs or {}).items())
                  if np.size(value) == 1]
        parts.append(f"{per_step:.1f} s/step" if per_step >= 1.0 else
                     f"{per_step * 1000:.3g} ms/step")
        if steps:
            parts.append(f"epoch ends in {_duration(per_step * (steps - step))}")
        print(" - ".join(parts), flush=True)


def _duration(seconds):
    """`h:mm:ss`, or `m:ss` under an hour."""
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def progress_callbacks(verbose, callbacks=None):
    """What an entry point adds to Keras' `verbose` (`_console.progress_verbosity`): a
    `ProgressLog` with its default interval for `verbose=2` (output that is not a terminal),
    unless `callbacks` (the caller's own) hold one already; nothing otherwise."""
    if verbose != 2 or any(isinstance(c, ProgressLog) for c in callbacks or ()):
        return []
    return [ProgressLog()]


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


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss term."""


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stop training at the first batch whose loss terms are not finite, or at the end of an
    epoch whose weights (or optimizer state) are not.

    Unlike `keras.callbacks.TerminateOnNaN`, it raises `NonFiniteLossError` naming the epoch,
    the step and the term that went bad, and it stops before the epoch ends, so the last
    checkpoint written by `EpochCheckpoint` is the last good one.
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

    def on_epoch_end(self, epoch, logs=None):
        # The loss of a step is computed before its update: the last update of the epoch is
        # checked here, before any checkpoint or model file is written.
        bad = saving.nonfinite_weights(self.model, optimizer=True)
        if bad:
            raise NonFiniteLossError(
                f"Training stopped at the end of epoch {epoch + 1}: its last update left "
                f"non-finite values in {len(bad)} weights (or optimizer variables), e.g. "
                f"{bad[0]}. The weights of this epoch are discarded; the last checkpoint is the "
                "last good one. Check the inputs for NaN/Inf, or lower the learning rate.")


class EpochLog(keras.callbacks.Callback):
    """A CSV row per epoch (`epoch` and the logs) that survives restarts.

    Each epoch appears exactly once: the row of an epoch replaces the rows of that epoch and
    later ones (logged before a kill, without a checkpoint, by the run being resumed). Rows are
    dropped only when the epoch that replaces them has run, so a resume that fails leaves the
    log as it was. Put it before the checkpoint callback: a kill then leaves at worst a row
    without its checkpoint, which the resumed run writes again, never a checkpoint without its
    row.

    Args:
        filename: the CSV file; `train` uses `workdir/log.csv`.
        initial_epoch: deprecated and unused (the rows to replace are known from each
            epoch's number); passing it warns, and it is removed in tfprobunet 0.3.0.
    """

    def __init__(self, filename, initial_epoch=None):
        super().__init__()
        if initial_epoch is not None:
            warnings.warn("tfprobunet.callbacks.EpochLog(initial_epoch=...) is deprecated and "
                          "will be removed in tfprobunet 0.3.0: it is unused (each epoch's row "
                          "replaces the rows of that epoch and later ones); drop the argument",
                          DeprecationWarning, stacklevel=2)
        self.filename = filename

    def rows(self):
        """The rows logged so far, as dicts of strings; `WorkdirError` naming the file and the
        row if it is not a log this callback wrote (a row of other length, no `epoch` column,
        an epoch that is not a whole number)."""
        if not os.path.exists(self.filename):
            return []
        try:
            with open(self.filename, newline="") as f:
                reader = csv.DictReader(f)
                rows = list(reader)
                fieldnames = reader.fieldnames or []
        except (OSError, UnicodeDecodeError, csv.Error) as error:
            problem = f"{type(error).__name__}: {error}"
        else:
            problem = None if "epoch" in fieldnames else "it has no `epoch` column"
            for number, row in enumerate(rows if problem is None else (), start=2):
                if None in row or None in row.values():
                    problem = (f"row {number} has {'more' if None in row else 'fewer'} values "
                               f"than its {len(fieldnames)} columns")
                elif not row["epoch"].isdigit():
                    problem = f"row {number} has epoch {row['epoch'][:20]!r}, not a whole number"
                if problem is not None:
                    break
        if problem is not None:
            raise _io.WorkdirError(
                f"{self.filename} is not a log this library wrote ({problem}): it was changed "
                "from outside. Put back a good copy, or move it away (the run writes a new log "
                "from the epoch it continues from).")
        return rows

    def _write(self, rows, fieldnames):
        with _io.replacing(self.filename) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(rows)

    def on_train_begin(self, logs=None):
        self.rows()  # an unreadable log is refused before any epoch runs

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch, **{k: float(v) for k, v in sorted((logs or {}).items())}}
        rows = [r for r in self.rows() if int(r["epoch"]) < epoch] + [row]
        self._write(rows, list(rows[0]))


CHECKPOINT = re.compile(r"epoch-(\d+)\.weights\.h5")
# Beside each checkpoint, `<name>.sha256`: its SHA-256 in `sha256sum`'s format.
CHECKSUM = ".sha256"


class EpochCheckpoint(keras.callbacks.Callback):
    """Save the weights and the optimizer state after every epoch, safe against a kill at any
    moment; `restore` (used by `train`) loads the newest readable checkpoint.

    After epoch n (counted from 1) it writes `directory/.epoch-000n.weights.h5`, flushes it to
    disk and renames it to `epoch-000n.weights.h5`, so a checkpoint file is complete or absent.
    Before the rename, the SHA-256 of its bytes goes to `epoch-000n.weights.h5.sha256` (the
    format `sha256sum -c` reads); `restore` verifies it, so a checkpoint changed afterwards
    (damaged on disk, or overwritten with finite values that no NaN check sees) is not resumed.
    The previous checkpoint is deleted only once the new one is in place; the newest `keep`
    are kept, for `restore` to fall back on if the newest is damaged later.

    `keras.callbacks.BackupAndRestore` rewrites `latest.weights.h5` in place: a kill during the
    write leaves a truncated file and no way back. Its `double_checkpoint=True` (the same code
    in Keras 3.10 and 3.15) copies the file to `.bkp` first and falls back to it on an `OSError`,
    but it loses the only checkpoint when the first write is killed, repeats an epoch silently
    when a kill lands between the weights and its `training_metadata.json`, and fails with a
    bare `JSONDecodeError` when that JSON is left empty.

    Args:
        directory: where the checkpoints go; `train` uses `workdir/backup`.
        keep: how many checkpoints to keep (>= 1; default 2).
    """

    def __init__(self, directory, keep=2):
        super().__init__()
        if keep < 1:
            raise ValueError(f"`keep` must be at least 1. Received: keep={keep}")
        self.directory = directory
        self.keep = keep

    def path(self, epochs):
        """The checkpoint written after `epochs` epochs."""
        return os.path.join(self.directory, f"epoch-{epochs:04d}.weights.h5")

    def epochs(self):
        """The epoch counts of the checkpoints in `directory`, ascending."""
        if not os.path.isdir(self.directory):
            return []
        return sorted(int(m[1]) for m in map(CHECKPOINT.fullmatch, os.listdir(self.directory))
                      if m)

    def on_epoch_end(self, epoch, logs=None):
        os.makedirs(self.directory, exist_ok=True)
        _io.ensure_space(self.directory, saving.state_bytes(self.model), "a checkpoint")
        path = self.path(epoch + 1)
        with _io.replacing(path) as tmp:
            self.model.save_weights(tmp)
            with _io.replacing(path + CHECKSUM) as record, open(record, "w") as f:
                f.write(f"{_io.sha256(tmp)}  {os.path.basename(path)}\n")
        for old in self.epochs()[:-self.keep]:
            self.remove(self.path(old))
        names = set(os.listdir(self.directory))
        for name in names:  # a write cut short by an earlier kill, a record without its file
            temporary = _io.is_temporary(name)
            owner = (name.split(".", 2)[2] if temporary else name).removesuffix(CHECKSUM)
            if CHECKPOINT.fullmatch(owner) and (temporary or owner not in names):
                os.remove(os.path.join(self.directory, name))

    def remove(self, path):
        """Delete the checkpoint `path` and its checksum record."""
        for name in (path, path + CHECKSUM):
            with contextlib.suppress(FileNotFoundError):
                os.remove(name)

    def verify(self, path):
        """Why the checkpoint `path` cannot be trusted, or None: its bytes differ from its
        checksum record (checkpoints of earlier versions, which have none, are not checked)."""
        record = path + CHECKSUM
        if not os.path.exists(record):
            return None
        try:
            with open(record) as f:
                expected = f.read().split()[0]
        except (OSError, UnicodeDecodeError, IndexError) as error:
            return f"its checksum record {record} is unreadable ({type(error).__name__})"
        if _io.sha256(path) != expected:
            return (f"its bytes differ from its checksum in {os.path.basename(record)}: it was "
                    "changed after it was written")
        return None

    def checkpoints(self):
        """`(epochs, path, problem)` of every checkpoint in `directory`, newest first; `problem`
        is why one cannot be used, if that is known without loading it. Includes the layout of
        `keras.callbacks.BackupAndRestore` (`latest.weights.h5` and `training_metadata.json`),
        which earlier versions of `train` wrote."""
        found = [(n, self.path(n), None) for n in reversed(self.epochs())]
        legacy = os.path.join(self.directory, "latest.weights.h5")
        if os.path.exists(legacy):
            record = os.path.join(self.directory, "training_metadata.json")
            try:
                with open(record) as f:
                    found.append((int(json.load(f)["epoch"]), legacy, None))
            except (OSError, ValueError, KeyError, TypeError) as error:
                found.append((None, legacy, f"its epoch record {record} is unreadable "
                                            f"({type(error).__name__}: {error})"))
            found.sort(key=lambda c: -1 if c[0] is None else c[0], reverse=True)
        return found

    def restore(self, model, candidates=None):
        """Load the newest readable checkpoint (of `candidates`, default `checkpoints()`) into
        the compiled, built `model`, optimizer state included, and return its epoch count (0
        when there is none). A damaged newest checkpoint is skipped with a warning that names
        it; when none is readable, `WorkdirError` names every file and says what to do."""
        candidates = self.checkpoints() if candidates is None else candidates
        if not candidates:
            return 0
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)  # its variables are in the files
        failures = []
        for epochs, path, problem in candidates:
            if problem is None:
                try:
                    model.load_weights(path)
                except Exception as error:  # h5py, zipfile and Keras all raise their own
                    problem = f"{type(error).__name__}: {error}"
                else:
                    # Training never checkpoints NaN weights (StopOnNonFiniteLoss): damage.
                    bad = saving.nonfinite_weights(model)
                    problem = (f"non-finite values in {len(bad)} weights, e.g. {bad[0]}" if bad
                               else self.verify(path))
                    if problem is None:
                        break
            failures.append(f"{path} is unreadable ({problem})")
        else:
            if all(os.path.dirname(c[1]) == self.directory for c in candidates):
                fix = (f"Delete {self.directory} to start this run again from epoch 1 (log.csv "
                       "is rewritten from there), or put back good copies of these files.")
            else:
                fix = "Put back good copies of these files, or use a new workdir."
            raise _io.WorkdirError(f"No readable checkpoint to resume from: {'; '.join(failures)}. "
                               + fix)
        if failures:
            warnings.warn(f"{'; '.join(failures)}; resuming from {path} (after epoch {epochs}) "
                          "instead: the epochs after it run again.", stacklevel=2)
        return epochs


class StopOnSignal(keras.callbacks.Callback):
    """Stop training at the end of the step during which SIGINT or SIGTERM arrived (recorded by
    the `StopRequest` of `_interrupts.stop_requests`), raising `TrainingInterrupted`: the
    epoch under way is dropped, the checkpoints on disk stay whole, and the same call resumes
    from the last one. Under a multi-worker strategy, `fit_distributed` shares the request
    between the workers at every step, so that they all stop at the same one."""

    def __init__(self, request):
        super().__init__()
        self.request = request

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        signum = self.request.due()
        if signum is None:
            return
        kept = (f"the checkpoint after epoch {self._epoch} is kept" if self._epoch else
                "no epoch had finished")
        raise _interrupts.TrainingInterrupted(
            f"stopped by {signal.Signals(signum).name} at epoch {self._epoch + 1}, step "
            f"{batch + 1}: {kept}; run the same command again to resume.", signum)
