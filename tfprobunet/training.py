"""`train()`: fit a `ProbabilisticUNet` (or a baseline) on a built-in benchmark with checkpoints
that survive a kill at any moment, a CSV log, a guard that stops on a non-finite loss, and runs
that continue where they stopped (never overwriting a finished model)."""

import contextlib
import csv
import functools
import inspect
import json
import math
import os
import re
import shutil
import signal
import tempfile
import warnings

import keras
import numpy as np
import tensorflow as tf

from tfprobunet import _cluster, _console, _interrupts, _io
from tfprobunet import callbacks as callbacks_lib
from tfprobunet.defaults import PRESETS, SCHEDULES, STRATEGIES  # noqa: F401
from tfprobunet.defaults import check_model_numbers, check_number
from tfprobunet import data as data_lib
from tfprobunet import layers as layers_lib
from tfprobunet.data import pipeline
from tfprobunet import models as models_lib
from tfprobunet import saving

MONITORED_TERMS = ("loss", "reconstruction", "kl", "energy")
# The official repository's schedule (its only configuration, for Cityscapes,
# training/prob_unet_config.py: 1e-4, then 5e-5, 1e-5 and 5e-7 at 80k, 160k and 240k of 240k
# iterations), as fractions of the run and of the initial learning rate.
PIECEWISE_BOUNDARIES = (1 / 3, 2 / 3, 1.0)
PIECEWISE_FACTORS = (1.0, 0.5, 0.1, 0.005)


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss term."""


WorkdirError = _io.WorkdirError
WorkdirBusyError = _io.WorkdirBusyError
TrainingInterrupted = _interrupts.TrainingInterrupted


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

    A run that starts at `initial_epoch` first drops the rows of epochs >= `initial_epoch`
    (logged before a kill, without a checkpoint), so each epoch appears exactly once. Put it
    before the checkpoint callback: a kill then leaves at worst a row without its checkpoint,
    which the resumed run drops and writes again, never a checkpoint without its row.
    """

    def __init__(self, filename, initial_epoch=0):
        super().__init__()
        self.filename = filename
        self.initial_epoch = initial_epoch

    def _rows(self):
        if not os.path.exists(self.filename):
            return []
        with open(self.filename, newline="") as f:
            return list(csv.DictReader(f))

    def _write(self, rows, fieldnames):
        with _io.replacing(self.filename) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(rows)

    def on_train_begin(self, logs=None):
        rows = self._rows()
        if rows:
            self._write([r for r in rows if int(r["epoch"]) < self.initial_epoch], list(rows[0]))

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch, **{k: float(v) for k, v in sorted((logs or {}).items())}}
        rows = self._rows() + [row]
        self._write(rows, list(rows[0]))


CHECKPOINT = re.compile(r"epoch-(\d+)\.weights\.h5")


class EpochCheckpoint(keras.callbacks.Callback):
    """Save the weights and the optimizer state after every epoch, safe against a kill at any
    moment; `restore` (used by `train`) loads the newest readable checkpoint.

    After epoch n (counted from 1) it writes `directory/.epoch-000n.weights.h5`, flushes it to
    disk and renames it to `epoch-000n.weights.h5`, so a checkpoint file is complete or absent.
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
        _io.ensure_space(self.directory, state_bytes(self.model), "a checkpoint")
        with _io.replacing(self.path(epoch + 1)) as tmp:
            self.model.save_weights(tmp)
        for old in self.epochs()[:-self.keep]:
            os.remove(self.path(old))
        for name in os.listdir(self.directory):  # a write cut short by an earlier kill
            if _io.is_temporary(name) and CHECKPOINT.fullmatch(name.split(".", 2)[2]):
                os.remove(os.path.join(self.directory, name))

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
                    bad = saving.nonfinite_weights(model)
                    if not bad:
                        break
                    # Training never checkpoints NaN weights (StopOnNonFiniteLoss): damage.
                    problem = f"non-finite values in {len(bad)} weights, e.g. {bad[0]}"
            failures.append(f"{path} is unreadable ({problem})")
        else:
            if all(os.path.dirname(c[1]) == self.directory for c in candidates):
                fix = (f"Delete {self.directory} to start this run again from epoch 1 (log.csv "
                       "is rewritten from there), or put back good copies of these files.")
            else:
                fix = "Put back good copies of these files, or use a new workdir."
            raise WorkdirError(f"No readable checkpoint to resume from: {'; '.join(failures)}. "
                               + fix)
        if failures:
            warnings.warn(f"{'; '.join(failures)}; resuming from {path} (after epoch {epochs}) "
                          "instead: the epochs after it run again.", stacklevel=2)
        return epochs


def preset(name, **overrides):
    """The `train` arguments of the preset `name` (see `PRESETS`), updated with `overrides`."""
    if name not in PRESETS:
        raise ValueError(f"`preset` must be one of {sorted(PRESETS)}. Received: {name!r}")
    settings = {k: v for k, v in PRESETS[name].items() if k != "description"}
    return {**settings, **overrides}


@keras.saving.register_keras_serializable(package="tfprobunet")
class WarmupStableDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to `peak` over `warmup_steps`, `peak` until `decay_start`, then
    cosine decay to 0 at `total_steps` (and 0 after).

    Args:
        peak: the learning rate of the stable phase.
        total_steps, warmup_steps, decay_start: steps, `0 <= warmup_steps <= decay_start <
            total_steps`.
    """

    def __init__(self, peak, total_steps, warmup_steps, decay_start):
        if not 0 <= warmup_steps <= decay_start < total_steps:
            raise ValueError("Needs 0 <= warmup_steps <= decay_start < total_steps. Received: "
                             f"{warmup_steps}, {decay_start}, {total_steps}")
        self.peak = float(peak)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.decay_start = int(decay_start)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warmup = step / self.warmup_steps if self.warmup_steps else 1.0
        progress = tf.clip_by_value((step - self.decay_start)
                                    / (self.total_steps - self.decay_start), 0.0, 1.0)
        decay = 0.5 * (1.0 + tf.cos(math.pi * progress))
        return self.peak * tf.minimum(tf.minimum(warmup, 1.0), decay)

    def get_config(self):
        return dict(peak=self.peak, total_steps=self.total_steps,
                    warmup_steps=self.warmup_steps, decay_start=self.decay_start)


def learning_rate_schedule(name, learning_rate, total_steps, warmup_fraction=0.05):
    """The learning rate of a run of `total_steps` optimizer steps, for `keras.optimizers.Adam`.

    Args:
        name: `"constant"`: `learning_rate` throughout. `"piecewise"`: the schedule of the
            official (Cityscapes) configuration, scaled to the run: `learning_rate`, then x0.5
            after a third of the steps, x0.1 after two thirds (and x0.005 after `total_steps`,
            should a run continue past them).
            `"cosine"`: linear warm-up from 0 over `warmup_fraction` of the steps, then cosine
            decay to 0 at `total_steps`. `"wsd"` (warm-up, stable, decay): the same warm-up,
            `learning_rate` until two thirds of the steps, then cosine decay to 0 over the last
            third (`WarmupStableDecay`).
        learning_rate: the initial (peak, for `"cosine"`) learning rate.
        total_steps: the run's optimizer steps, `epochs * steps_per_epoch`.
        warmup_fraction: the share of the steps that `"cosine"` warms up over.

    Returns:
        A float or a `keras.optimizers.schedules.LearningRateSchedule` of the optimizer's
        `iterations`, which checkpoints hold: a resumed run continues the schedule where it
        stopped.
    """
    if name not in SCHEDULES:
        raise ValueError(f"`schedule` must be one of {SCHEDULES}. Received: {name!r}")
    if not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"`total_steps` must be a positive integer. Received: {total_steps!r}")
    if name == "constant":
        return float(learning_rate)
    if name == "piecewise":
        boundaries = [max(1, round(total_steps * f)) for f in PIECEWISE_BOUNDARIES]
        return keras.optimizers.schedules.PiecewiseConstantDecay(
            boundaries, [learning_rate * f for f in PIECEWISE_FACTORS])
    warmup = min(total_steps - 1, round(total_steps * warmup_fraction))
    if name == "wsd":
        return WarmupStableDecay(learning_rate, total_steps, warmup,
                                 min(total_steps - 1, max(warmup, round(total_steps * 2 / 3))))
    return keras.optimizers.schedules.CosineDecay(
        0.0, total_steps - warmup, alpha=0.0, warmup_target=float(learning_rate),
        warmup_steps=warmup)


def make_strategy(name, connect_timeout=_cluster.CONNECT_TIMEOUT):
    """`"default"`: no distribution. `"mirrored"`: `MirroredStrategy` over every GPU, or over
    every logical CPU device when there is no GPU (so it can be exercised on a CPU machine).
    `"multi_worker"`: `MultiWorkerMirroredStrategy`, configured by the `TF_CONFIG` variable (one
    worker without it). One strategy per process: the same name gives the same strategy.

    A multi-worker strategy must be made before TensorFlow runs anything else in the process
    (it configures collective ops at start-up): `train(strategy="multi_worker")` makes it first;
    in a script that uses TensorFlow before, call `make_strategy("multi_worker")` at its top.
    `TF_CONFIG` is checked first (a `ValueError` names what is wrong with it). Making it waits
    for every task of the cluster: if they have not all joined after `connect_timeout` seconds
    (None: no limit), one line on stderr names the tasks that never answered and the process
    is killed (`_cluster.connect_watchdog`: TensorFlow's wait holds the GIL and takes SIGTERM,
    so nothing gentler reaches it).
    """
    if name not in STRATEGIES:
        raise ValueError(f"`strategy` must be one of {STRATEGIES}. Received: {name!r}")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "multi_worker":
        return _multi_worker(connect_timeout)
    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
        return _mirrored(tuple(d.name for d in gpus), cpu=False)
    return _mirrored(tuple(d.name for d in tf.config.list_logical_devices("CPU")), cpu=True)


_multi_worker_strategy = []  # one per process, made by the first `_multi_worker` call


def _multi_worker(connect_timeout):
    if _multi_worker_strategy:
        return _multi_worker_strategy[0]
    _cluster.read_tf_config()  # a malformed TF_CONFIG: one clear error, before TensorFlow's
    try:
        with _cluster.connect_watchdog(connect_timeout):
            _multi_worker_strategy.append(tf.distribute.MultiWorkerMirroredStrategy())
        return _multi_worker_strategy[0]
    except RuntimeError as error:
        if "program startup" not in str(error):
            raise
        raise RuntimeError(
            "strategy='multi_worker' must be set up before TensorFlow runs anything else in "
            "this process (TensorFlow configures collective ops at start-up). Call "
            "tfprobunet.training.make_strategy('multi_worker') at the top of your script, "
            "before loading data or building models.") from None


def is_chief(strategy):
    """Whether this process writes the run's files: always, except on the non-chief workers of
    a multi-worker strategy (the chief is task `chief`, or worker 0 when there is none)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    return (resolver.task_type == "worker" and resolver.task_id == 0
            and "chief" not in resolver.cluster_spec().as_dict())


def _tensorboard_callbacks(log_dir, source, seed, num_images=4):
    """Keras' `TensorBoard` and `TensorBoardSamples` on the first images of `source`."""
    images, annotations = zip(*source.dataset.take(num_images).as_numpy_iterator())
    return [keras.callbacks.TensorBoard(log_dir),
            callbacks_lib.TensorBoardSamples(log_dir, np.stack(images), np.stack(annotations),
                                             seed=seed)]


@contextlib.contextmanager
def _writable_folder(workdir, chief):
    """Yield where this process writes the run's files: `workdir` on the chief, a temporary
    folder on the other workers of a multi-worker run, deleted however training ends (as TF's
    multi-worker guide prescribes)."""
    if chief:
        yield workdir
        return
    folder = tempfile.mkdtemp(prefix="tfprobunet-worker-")
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@functools.lru_cache(maxsize=None)
def _mirrored(devices, cpu):
    # One strategy per device set and process: collective all-reduce keys restart with each new
    # strategy, and a second strategy's ops then collide with the first's ("Shape mismatch in
    # the collective instance"), e.g. in a tuner's second trial. On CPU devices, reducing to one
    # device avoids collectives altogether.
    cross_device_ops = tf.distribute.ReductionToOneDevice() if cpu else None
    return tf.distribute.MirroredStrategy(list(devices), cross_device_ops=cross_device_ops)


def _logs(model, keys):
    """The model's metric results named `keys` (what its step returned), over all replicas."""
    results = model.get_metrics_result()
    return {k: float(results[k]) for k in keys}


def fit_distributed(model, dataset, epochs, steps_per_epoch, initial_epoch=0,
                    validation_data=None, callbacks=None, verbose=1, stop=None):
    """`model.fit` for a model built under `model.distribute_strategy`, as a `strategy.run`
    loop over the model's own `train_step` (and `test_step` on `validation_data`): the same
    loss, trackers, callbacks and `History`. Keras 3's `fit` fails under
    `MultiWorkerMirroredStrategy` ("Attempt to convert a value (PerReplica...)",
    keras-team/keras#20585; Keras 3.15), which this replaces.

    `dataset` yields global batches; each worker takes its share of every batch, so one step
    over W workers is one step on the global batch in one process.

    `stop` (a `StopRequest` of `_interrupts.stop_requests`, with `StopOnSignal` among the
    callbacks): every step also sums the workers' requests, so that a signal sent to one worker
    stops them all after the same step (a worker that stopped alone would leave the others
    waiting for it in the next collective).

    Returns:
        `keras.callbacks.History`.
    """
    strategy = model.distribute_strategy
    history = keras.callbacks.History()
    callback_list = keras.callbacks.CallbackList(
        [*(callbacks or []), history], add_history=False, add_progbar=verbose != 0,
        model=model, verbose=verbose, epochs=epochs, steps=steps_per_epoch)
    batches = iter(strategy.experimental_distribute_dataset(dataset))

    def replica_step(batch, requested):
        logs = model.train_step(batch)
        context = tf.distribute.get_replica_context()
        # tf.identity places the flag on the replica's device, as all_reduce needs.
        return logs, context.all_reduce(tf.distribute.ReduceOp.SUM, tf.identity(requested))

    @tf.function
    def train_step(iterator, requested):
        return strategy.run(replica_step, args=(next(iterator), requested))

    @tf.function
    def test_step(batch):
        return strategy.run(model.test_step, args=(batch,))

    model.stop_training = False
    callback_list.on_train_begin()
    logs = {}
    for epoch in range(initial_epoch, epochs):
        model.reset_metrics()
        callback_list.on_epoch_begin(epoch)
        for step in range(steps_per_epoch):
            callback_list.on_train_batch_begin(step)
            keys, requested = train_step(batches, tf.constant(
                0.0 if stop is None or stop.signum is None else 1.0))
            logs = _logs(model, keys)
            if stop is not None and stop.signum is None and float(
                    strategy.experimental_local_results(requested)[0]) > 0:
                stop.signum = signal.SIGTERM  # sent to another worker
            callback_list.on_train_batch_end(step, logs)
            if model.stop_training:
                break
        if validation_data is not None:
            model.reset_metrics()
            keys = ()
            for batch in strategy.experimental_distribute_dataset(validation_data):
                keys = test_step(batch)
            logs.update({f"val_{k}": v for k, v in _logs(model, keys).items()})
        callback_list.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    callback_list.on_train_end(logs)
    return history


# Settings a resumed or continued run may change: more epochs, other devices, data moved elsewhere.
RESUMABLE_CHANGES = ("epochs", "strategy", "data_dir")
CONFIG = "train_config.json"


def _read_config(path):
    """The settings recorded at `path`, `None` if there is no such file."""
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, ValueError) as error:
        saved = error
    if saved is None or isinstance(saved, dict):
        return saved
    problem = (f"{type(saved).__name__}: {saved}" if isinstance(saved, Exception)
               else f"it holds a {type(saved).__name__}, not a JSON object")
    raise WorkdirError(
        f"{path} is unreadable ({problem}). `train` writes it whole or not at all, so it was "
        "changed from outside. It holds the run's settings (and, for a finished run, its epoch "
        "count): put back a good copy, or use a new workdir.")


def model_arguments(model="probunet"):
    """The arguments of the model named `model` (see `tfprobunet.models.MODELS`) that `train`
    forwards, with their defaults."""
    skip = ("self", "num_classes", "seed", "kwargs")
    return {name: p.default for name, p in
            inspect.signature(models_lib.get(model).__init__).parameters.items()
            if name not in skip and p.default is not p.empty}


def _check_model_kwargs(model, model_kwargs):
    """Refuse arguments the model named `model` does not take, naming those it does."""
    known = {"num_classes", *model_arguments(model)}
    unknown = sorted(set(model_kwargs) - known)
    if unknown:
        raise ValueError(f"{models_lib.get(model).__name__} (model={model!r}) takes no "
                         f"argument {', '.join(map(repr, unknown))}; its arguments are "
                         f"{', '.join(sorted(known))}.")


# `train` arguments that are not settings of the run (not recorded in train_config.json).
UNRECORDED = ("workdir", "max_minutes", "jit_compile", "verbose", "callbacks", "validation_data",
              "connect_timeout", "model_kwargs")


def _train_defaults():
    """The recorded `train` arguments with their defaults: settings added in later versions
    (`schedule`, `mixed_precision`) read as their defaults in the records of earlier ones."""
    return {name: p.default for name, p in inspect.signature(train).parameters.items()
            if name not in UNRECORDED and p.default is not p.empty}


def _effective(settings):
    """`settings` with every default filled in, as JSON has them: `beta=1.0` given or left out
    is the same run (the CLI passes the defaults, Python callers rarely do)."""
    defaults = _train_defaults()
    model = settings.get("model", defaults["model"])
    return json.loads(json.dumps({**defaults, **model_arguments(model), **settings},
                                 default=list))


def _write_config(path, settings):
    _io.write_json(path, settings)  # JSON has no NaN: refused, never written


def state_bytes(model):
    """The bytes of `model`'s weights and optimizer state: about what a checkpoint or a
    `.keras` file of it holds."""
    variables = [*model.weights, *getattr(model.optimizer, "variables", [])]
    return sum(int(np.prod(v.shape)) * tf.as_dtype(v.dtype).size for v in variables)


def setting_differences(before, now, ignore=()):
    """The settings that differ between the dicts `before` and `now` (but those in `ignore`),
    as `"key: old before, new now, ..."`; empty if none do."""
    changed = sorted(k for k in set(before) | set(now)
                     if k not in ignore and before.get(k) != now.get(k))
    return ", ".join(f"{k}: {before.get(k)!r} before, {now.get(k)!r} now" for k in changed)


def _check_settings(workdir, saved, settings):
    """Refuse to continue a run made with other settings (other than `RESUMABLE_CHANGES`)."""
    differences = setting_differences(_effective(saved), _effective(settings),
                                      ignore=(*RESUMABLE_CHANGES, "finished_epochs"))
    if differences:
        raise WorkdirError(f"{workdir} holds a run with other settings ({differences}). "
                           f"Continue it with the same arguments (only "
                           f"{', '.join(RESUMABLE_CHANGES)} may change), or use a new workdir "
                           "to start a new run.")


def _resume_points(workdir, checkpoint, saved, settings):
    """What a run in `workdir` can continue from, newest first, as `(epochs, path, problem)`
    (see `EpochCheckpoint.checkpoints`): the checkpoints newer than the finished model, then
    `model.keras`. Raises `WorkdirError` when the run has other settings, when `epochs` leaves
    nothing to train, or when `model.keras` holds an unknown number of epochs."""
    model_path = os.path.join(workdir, "model.keras")
    if os.path.lexists(model_path) and not os.path.isfile(model_path):
        raise WorkdirError(f"{model_path} is not a file, and `train` writes the trained model "
                           "there: move it away, or use a new workdir.")
    finished = (saved or {}).get("finished_epochs")
    if finished is not None and not os.path.exists(model_path):
        raise WorkdirError(
            f"{workdir} holds a finished run of {finished} epochs, but its {model_path} is "
            "missing: put it back to continue training it, or use a new workdir to start a new "
            "run (this one is not trained again from scratch).")
    points = checkpoint.checkpoints()
    if points and saved is None:
        raise WorkdirError(
            f"{checkpoint.directory} holds checkpoints but {os.path.join(workdir, CONFIG)} is "
            "missing, so the settings they were made with are unknown: put it back to resume, "
            f"or delete {checkpoint.directory} to start the run again from epoch 1.")
    if finished is not None:
        # Checkpoints no newer than the finished model are what a kill during the end of that
        # run left behind (model.keras holds their state): finish its clean-up.
        stale = [c for c in points if c[0] is not None and c[0] <= finished]
        for _, path, _ in stale:
            os.remove(path)
        points = [c for c in points if c not in stale]
        if not points:
            shutil.rmtree(checkpoint.directory, ignore_errors=True)
    if os.path.exists(model_path):
        if finished is not None:
            points.append((finished, model_path, None))
        elif not points:
            raise WorkdirError(
                f"{model_path} exists but {CONFIG} does not say how many epochs it was trained "
                f"for (a run of an earlier tfprobunet?); `train` does not overwrite it. Move it "
                f"away to start a new run in {workdir}, or use a new workdir.")
    if saved is not None and points:
        _check_settings(workdir, saved, settings)
    epochs = settings["epochs"]
    newest = max((c[0] for c in points if c[0] is not None), default=None)
    if finished is not None and newest == finished and epochs <= finished:
        raise WorkdirError(
            f"{workdir} holds a finished run of {finished} epochs ({model_path}); "
            f"epochs={epochs} leaves nothing to train. Pass epochs > {finished} to continue "
            "training it (log.csv gets the new epochs), load it with keras.models.load_model, "
            "or use a new workdir to start a new run.")
    if newest is not None and epochs < newest:
        raise WorkdirError(
            f"{workdir} holds a run checkpointed after epoch {newest} ({checkpoint.directory}); "
            f"epochs={epochs} is fewer. Pass epochs >= {newest} to finish it, or use a new "
            "workdir to start a new run.")
    return points


def _check_run_numbers(learning_rate, max_minutes, num_examples, validation_examples,
                       **counts):
    """Refuse `train`'s numeric settings outside their sense (NaN, infinities, a negative or
    huge learning rate, no epochs) before anything is built or written."""
    check_number("learning_rate", learning_rate, maximum=1.0, above=0.0, example="1e-4")
    if max_minutes is not None:
        check_number("max_minutes", max_minutes, above=0.0, example=30)
    if num_examples is not None:
        check_number("num_examples", num_examples, minimum=1, integer=True)
    check_number("validation_examples", validation_examples, minimum=0, integer=True)
    for name, value in counts.items():
        check_number(name, value, minimum=1, integer=True)


def _make_workdir(workdir):
    """Create `workdir` if needed, or say in one sentence why it cannot be written."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise WorkdirError(f"The workdir {workdir} is not a folder (it is a file): pass a "
                           "folder, new or holding a run of `train`.")
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = tempfile.TemporaryFile(dir=workdir)
    except OSError as error:
        raise WorkdirError(f"The workdir {workdir} cannot be written ({error.strerror}): pass "
                           "a folder you can write to.") from None
    probe.close()


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
        signum = self.request.signum
        if signum is None:
            return
        kept = (f"the checkpoint after epoch {self._epoch} is kept" if self._epoch else
                "no epoch had finished")
        raise TrainingInterrupted(
            f"stopped by {signal.Signals(signum).name} at epoch {self._epoch + 1}, step "
            f"{batch + 1}: {kept}; run the same command again to resume.", signum)


MIXED_PRECISION = (None, "mixed_float16", "mixed_bfloat16")


def _dtype_policy(name):
    """Keras' global dtype policy set to `name` (None: left as it is) while models are built."""
    if name not in MIXED_PRECISION:
        raise ValueError(f"`mixed_precision` must be one of {MIXED_PRECISION}. Received: "
                         f"{name!r}")
    return contextlib.nullcontext() if name is None else layers_lib.global_dtype_policy(name)


def train(workdir, dataset="flips", data_dir=None, epochs=10, steps_per_epoch=100,
          batch_size=8, image_size=None, num_examples=None, validation_examples=0,
          learning_rate=1e-4, schedule="constant", max_minutes=None, strategy="default",
          seed=0, jit_compile=False, mixed_precision=None, verbose=None, callbacks=None,
          validation_data=None, tensorboard=None, connect_timeout=_cluster.CONNECT_TIMEOUT,
          model="probunet", **model_kwargs):
    """Train a `ProbabilisticUNet` (or a baseline) on a dataset, continuing the run `workdir`
    holds.

    Writes to `workdir`:
    - `backup/`: an `EpochCheckpoint` after each epoch (weights and optimizer state, written
      to a temporary file and renamed, the previous one kept until the new one is in place).
      A run killed at any moment, even during a save, and started again with the same
      arguments continues from the last complete checkpoint. A damaged newest checkpoint is
      skipped with a warning (the previous one is used); if none is readable, `WorkdirError`
      names the files and says that deleting `backup/` starts the run again from epoch 1.
    - `log.csv`: one row per epoch, written before the epoch's checkpoint; a resumed or
      continued run first drops the rows of the epochs it runs again, so each epoch is logged
      once.
    - `train_config.json`: the settings and, once a run is finished, `finished_epochs`.
    - `model.keras` at the end (optimizer state included); `backup/` is then deleted.

    A finished run (`model.keras` and its `finished_epochs`) is never overwritten from scratch:
    with `epochs` > `finished_epochs`, training continues from `model.keras` (weights and
    optimizer state) at epoch `finished_epochs`, appending to `log.csv`, and `model.keras` is
    replaced when the continued run finishes; with `epochs` <= `finished_epochs` there is
    nothing to train and `WorkdirError` says so. Resuming or continuing with other arguments
    than `epochs`, `strategy` and `data_dir` raises `WorkdirError` too (use a new `workdir` to
    start a new run). Refusals happen before anything in `workdir` is written, except that
    checkpoints left over from a kill at the very end of a finished run (none newer than its
    `model.keras`) are removed first. The data pipeline restarts from `seed` on every resume.

    Args:
        workdir: output directory.
        dataset: a name of `tfprobunet.data.DATASETS`: `"flips"`, `"graders"` (synthetic),
            `"lidc"`, `"lidc-pickle"`, `"cityscapes"` or `"npz"` (read from `data_dir`); or
            your own data: a `tfprobunet.data.Source`, or a `tf.data.Dataset` of `(image
            (h, w, c) float32, annotations (A, h, w) int)` with `num_classes=` given.
            `train_config.json` records your own data as `"custom"`: resuming is then up to
            you passing the same data.
        model: the model to train, a name of `tfprobunet.models.MODELS`: `"probunet"` (the
            default), or a baseline of the paper's section 3, `"dropout"` (`DropoutUNet`),
            `"ensemble"` (`UNetEnsemble`), `"mheads"` (`MHeads`), `"i2ivae"`
            (`Image2ImageVAE`).
        data_dir: where the real data lives (see `tfprobunet.data.load`).
        epochs, steps_per_epoch, batch_size: the schedule; `batch_size` is global. `epochs`
            counts every epoch of the run, those of earlier calls included.
        image_size: height and width (default: the dataset's, see `tfprobunet.data.load`).
        num_examples: size of the training set (default: the dataset's).
        validation_examples: if > 0, that many examples of the `val` split with all their
            annotations are evaluated after each epoch: `log.csv` gets `val_loss`, ... and
            `val_ged` (16 samples per image) and, where the annotation probabilities are known
            (*flips*, Cityscapes), the mode and flip frequencies of `CalibrationLog`.
        validation_data: your own validation data instead (a `Source` or a dataset of
            `(image, annotations)`), evaluated after each epoch like `validation_examples`.
        learning_rate: Adam's (initial) learning rate (official Cityscapes configuration:
            1e-4).
        schedule: `"constant"` (default), `"piecewise"` (the official Cityscapes
            configuration's schedule scaled to `epochs * steps_per_epoch`) or `"cosine"`
            (warm-up, then cosine decay); see `learning_rate_schedule`. A continued run (more
            `epochs`) stretches the schedule to its new length.
        max_minutes: stop at the end of the first epoch that ends after this many minutes of
            this call (`tfprobunet.callbacks.TimeBudget`); the model is saved as if `epochs`
            had been reached, and the same call again continues to `epochs`.
        strategy: `"default"`, `"mirrored"` or `"multi_worker"` (see `make_strategy`; one
            process per worker, each with its `TF_CONFIG` and the same arguments, `workdir` on
            a file system they share: the chief writes the run's files, the others resume from
            them; trained with `fit_distributed`). SIGINT or SIGTERM, to any worker, stops
            every worker after the same step (see `StopOnSignal`).
        connect_timeout: seconds a multi-worker run waits for the whole cluster to join before
            one line names the tasks that never answered and the process is killed (see
            `make_strategy`; None: it waits for ever).
        seed: seeds the data, the weights and the model's random draws.
        jit_compile: XLA-compile the train step (see bench/train_step.py: slower on CPU).
        mixed_precision: None (float32), `"mixed_float16"` (GPUs; with dynamic loss scaling)
            or `"mixed_bfloat16"` (TPUs, CPUs with AMX or AVX-512-BF16): the model computes in
            that precision, its variables, distributions, losses and metrics stay float32.
            `model.keras` keeps the policy; the global Keras policy is left as it was.
        verbose: Keras progress bar (1), one line per epoch (2) or silent (0); None: the
            progress bar on a terminal or in a notebook, a line per epoch otherwise.
        callbacks: extra Keras callbacks, run after the built-in ones (after the checkpoint).
        tensorboard: a TensorBoard log folder: Keras' `TensorBoard` callback (losses, with
            `val_ged` and the calibration diagnostics when validating) and
            `tfprobunet.callbacks.TensorBoardSamples` on 4 validation images (training images
            without validation) with their annotations. Not a setting of the run: it may
            change when resuming.
        **model_kwargs: forwarded to the model's constructor (e.g. `num_channels`,
            `latent_dim`, `beta` of `ProbabilisticUNet`); `num_classes` is set by the dataset.
            An argument the model does not take is a `ValueError`.

    Returns:
        `(model, history)`; `history.epoch` lists the epochs this call ran.

    Raises:
        WorkdirError: `workdir` holds a run that cannot continue as asked (see above).
        NonFiniteLossError: a loss term, or the weights after an epoch, became NaN or
            infinite (see `StopOnNonFiniteLoss`); nothing non-finite is written.
        WorkdirBusyError: another process is training in `workdir` (a lock on
            `workdir/.tfprobunet.lock`, released by the system if that process dies).
        TrainingInterrupted: SIGINT (Ctrl-C) or SIGTERM arrived; training stopped at the end of
            the step under way, and the same call resumes from the last checkpoint.
        OSError: the disk has no room for a checkpoint or the model (`errno.ENOSPC`, checked
            before writing); nothing partial is left, and the same call resumes.
    """
    verbose = _console.progress_verbosity(verbose)
    _check_run_numbers(epochs=epochs, steps_per_epoch=steps_per_epoch, batch_size=batch_size,
                       num_examples=num_examples, validation_examples=validation_examples,
                       learning_rate=learning_rate, max_minutes=max_minutes)
    # First: a multi-worker strategy must exist before TensorFlow runs anything.
    distribution = make_strategy(strategy, connect_timeout)
    model_name = model
    _check_model_kwargs(model_name, model_kwargs)
    check_model_numbers(model_kwargs)
    num_classes = model_kwargs.get("num_classes")
    source = data_lib.as_source(dataset, "train", data_dir, image_size, num_examples, seed,
                                num_classes)
    validation = None
    if validation_data is not None:
        validation = data_lib.as_source(validation_data, "val", data_dir, image_size, None, seed,
                                        num_classes)
    elif validation_examples:
        validation = data_lib.as_source(dataset, "val", data_dir, image_size,
                                        validation_examples, seed, num_classes)
    schedule_value = learning_rate_schedule(schedule, learning_rate, epochs * steps_per_epoch)
    budget = None if max_minutes is None else callbacks_lib.TimeBudget(max_minutes)
    _make_workdir(workdir)
    chief = is_chief(distribution)
    # One run per workdir (the chief's: the other workers write to folders of their own), and
    # SIGINT/SIGTERM stop training at a step boundary instead of wherever they land.
    lock = _io.exclusive(workdir, "train") if chief else contextlib.nullcontext()
    with lock, _interrupts.stop_requests() as stop:
        settings = dict(dataset=dataset if isinstance(dataset, str) else "custom",
                        model=model_name, data_dir=data_dir, epochs=epochs,
                        steps_per_epoch=steps_per_epoch,
                        batch_size=batch_size, image_size=image_size, num_examples=num_examples,
                        validation_examples=validation_examples, learning_rate=learning_rate,
                        schedule=schedule, mixed_precision=mixed_precision, strategy=strategy,
                        seed=seed, **model_kwargs)
        settings = json.loads(json.dumps(settings, default=list))  # as train_config.json has
        config_path = os.path.join(workdir, CONFIG)
        model_path = os.path.join(workdir, "model.keras")
        saved = _read_config(config_path)
        checkpoint = EpochCheckpoint(os.path.join(workdir, "backup"))
        points = _resume_points(workdir, checkpoint, saved, settings)

        batches = pipeline.training_pipeline(source.dataset, batch_size,
                                             source.annotation_weights, seed=seed,
                                             num_classes=source.num_classes)
        shown = validation or source  # the images TensorBoardSamples draws samples for
        monitors = []
        if validation is not None and validation.annotation_weights is not None:
            monitors.append(callbacks_lib.CalibrationLog(validation, seed=seed))
        if validation is not None:
            validation = pipeline.evaluation_pipeline(validation.dataset, batch_size,
                                                      validation.annotation_weights,
                                                      validation.num_classes)
        # Multi-worker: the non-chief workers write what the chief writes to a folder of their
        # own (saving may need every worker), and resume from the chief's.
        chief = is_chief(distribution)
        with _writable_folder(workdir, chief) as writable:
            keras.utils.set_random_seed(seed)
            with distribution.scope(), _dtype_policy(mixed_precision):
                model_kwargs = {**model_kwargs, "num_classes": source.num_classes}
                model_kwargs.setdefault("ged_classes", source.classes)
                model = models_lib.get(model_name)(seed=seed, **model_kwargs)
                model.build((None, *source.dataset.element_spec[0].shape))
                model.compile(optimizer=keras.optimizers.Adam(schedule_value),
                              jit_compile=jit_compile)
                initial_epoch = checkpoint.restore(model, points)
            # Only now, once every refusal is past: a refused call leaves the workdir as it was.
            record = _effective(settings)
            if "finished_epochs" in (saved or {}):
                record["finished_epochs"] = saved["finished_epochs"]
            if chief:
                _write_config(config_path, record)
            callbacks = [
                StopOnNonFiniteLoss(),
                StopOnSignal(stop),
                *monitors,
                EpochLog(os.path.join(writable, "log.csv"), initial_epoch=initial_epoch),
                *([] if tensorboard is None else _tensorboard_callbacks(
                    tensorboard if chief else os.path.join(writable, "tensorboard"), shown,
                    seed)),
                checkpoint if chief else EpochCheckpoint(os.path.join(writable, "backup")),
                *([budget] if budget else []),
                *(callbacks or []),
            ]
            if strategy == "multi_worker":
                history = fit_distributed(model, batches, epochs, steps_per_epoch,
                                          initial_epoch, validation, callbacks, verbose, stop)
            else:
                history = model.fit(batches, epochs=epochs, initial_epoch=initial_epoch,
                                    steps_per_epoch=steps_per_epoch, validation_data=validation,
                                    shuffle=False,  # the pipeline shuffles
                                    verbose=verbose, callbacks=callbacks)
            # model.keras, then its epoch count, then the checkpoints go: a kill in between
            # leaves a checkpoint at least as new as the recorded model.keras, which the next
            # call finishes from.
            _io.ensure_space(writable, state_bytes(model), "the trained model")
            with _io.replacing(os.path.join(writable, "model.keras")) as tmp:
                model.save(tmp)
            if chief:
                _write_config(config_path, {**record,
                                            "finished_epochs": initial_epoch + len(history.epoch)})
                shutil.rmtree(checkpoint.directory, ignore_errors=True)
            return model, history
