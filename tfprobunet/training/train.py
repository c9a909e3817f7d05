"""`train()`: fit a `ProbabilisticUNet` (or a baseline) on a dataset with checkpoints that
survive a kill at any moment, a CSV log, a guard that stops on a non-finite loss, and runs that
continue where they stopped (never overwriting a finished model).

`train` reads as its recipe; each step lives in its own file: the run's files and resume rules
in `workdir.py`, the learning-rate schedules in `schedules.py`, the strategies and the
multi-worker loop in `distribute.py`, the callbacks in `tfprobunet/callbacks.py`, the presets in
`tfprobunet/models/presets.py`.
"""

import contextlib
import functools
import inspect
import os
import shutil

import keras
import numpy as np

from tfprobunet import _cluster, _console, _interrupts, _io
from tfprobunet import callbacks as callbacks_lib
from tfprobunet import data as data_lib
from tfprobunet import layers as layers_lib
from tfprobunet import models as models_lib
from tfprobunet import saving
from tfprobunet.data import pipeline
from tfprobunet.models.checks import check_training
from tfprobunet.defaults import MIXED_PRECISION, check_model_numbers, check_number
from tfprobunet.training import precision
from tfprobunet.training import workdir as workdir_lib
from tfprobunet.training.distribute import fit_distributed, is_chief, make_strategy, writable_folder
from tfprobunet.training.schedules import learning_rate_schedule

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


def _check_mixed_precision(name):
    if name not in MIXED_PRECISION:
        raise ValueError(f"`mixed_precision` must be one of {MIXED_PRECISION}. Received: "
                         f"{name!r}")


def _dtype_policy(name):
    """Keras' global dtype policy set to `name` (None: left as it is) while models are built."""
    return contextlib.nullcontext() if name is None else layers_lib.global_dtype_policy(name)


def train(workdir, dataset="flips", data_dir=None, epochs=10, steps_per_epoch=100,
          batch_size=8, image_size=None, num_examples=None, validation_examples=0,
          learning_rate=1e-4, schedule="constant", max_minutes=None, strategy="default",
          seed=0, jit_compile=False, mixed_precision=None, verbose=None, callbacks=None,
          validation_data=None, tensorboard=None, connect_timeout=_cluster.CONNECT_TIMEOUT,
          model="probunet", split_manifest=None, data_options=None, **model_kwargs):
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
            `"lidc"`, `"lidc-pickle"`, `"lidc-phiseg"`, `"cityscapes"` or `"npz"` (read from
            `data_dir`); or
            your own data: a `tfprobunet.data.Source`, or a `tf.data.Dataset` of `(image
            (h, w, c) float32, annotations (A, h, w) int)` with `num_classes=` given.
            `train_config.json` records your own data as `"custom"`: resuming is then up to
            you passing the same data.
        model: the model to train, a name of `tfprobunet.models.MODELS`: `"probunet"` (the
            default), or a baseline of the paper's section 3, `"dropout"` (`DropoutUNet`),
            `"ensemble"` (`UNetEnsemble`), `"mheads"` (`MHeads`), `"i2ivae"`
            (`Image2ImageVAE`); or a successor, `"hpunet"` (`HierarchicalProbabilisticUNet`,
            Kohl et al. 2019), `"ssn"` (`StochasticSegmentationNetwork`, Monteiro et al.
            2020), `"mose"` (`MixtureOfStochasticExperts`, Gao et al. 2023; trained on every
            annotation of an image) or `"ccdm"` (`CategoricalDiffusionSegmenter`, Zbinden et
            al. 2023).
        data_dir: where the real data lives (see `tfprobunet.data.load`).
        split_manifest: a split manifest (JSON file; `tfprobunet data manifest`) fixing which
            patients train and validate, for the datasets split by patient (see
            `tfprobunet.data.load`); recorded, so a resumed run must pass the same one.
        data_options: the named dataset's own options as a dict
            (`tfprobunet.data.dataset_options(dataset)`), e.g. for `"folder"`
            `{"pattern": "*/{stem}.png", "crop": (128, 128), "window": (-1000, 400),
            "binarize": False}`; recorded, so `evaluate` and `export` read the data (and scale
            the intensities) as the run did, and a resumed run must pass the same ones.
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
        jit_compile: XLA-compile the train step (bench/xla.py: 0.65x the examples/s on a CPU;
            it does not compile under mixed_bfloat16 there).
        mixed_precision: None or `"float32"` (float32), `"mixed_float16"` (GPUs; with dynamic
            loss scaling), `"mixed_bfloat16"` (TPUs, CPUs with AMX or AVX-512-BF16), or
            `"auto"`: `"mixed_bfloat16"` on a CPU with AMX or AVX-512-BF16 and no GPU, float32
            elsewhere (`tfprobunet.training.precision`; a resumed run keeps the precision it
            began with). bfloat16 cuts a step's cost by 2-3x on such CPUs but, on *flips*,
            cost one seed of six its calibration (docs/results/bf16): the presets use
            float32. The model computes in that precision, its variables, distributions,
            losses and metrics stay float32. train_config.json records the policy used
            (None: float32); `model.keras` keeps it; the global Keras policy is left as it
            was.
        verbose: Keras progress bar (1), one line per epoch and one every 100 steps or minute
            (2: `tfprobunet.callbacks.ProgressLog`; a `ProgressLog` in `callbacks` sets another
            interval) or silent (0); None: the progress bar on a terminal or in a notebook, 2
            otherwise (output to a log file).
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
    _check_mixed_precision(mixed_precision)
    # The seed, the join limit, the image size, the model's size and the batch's memory.
    check_training(model, model_kwargs, dataset, image_size, batch_size, seed, connect_timeout)
    distribution = make_strategy(strategy, connect_timeout)  # before TensorFlow runs anything
    workdir_lib.check_model_kwargs(model, model_kwargs)
    check_model_numbers(model_kwargs)
    data_options = dict(data_options) if data_options else None
    source, validation = _sources(dataset, validation_data, validation_examples, data_dir,
                                  image_size, num_examples, seed, model_kwargs.get("num_classes"),
                                  split_manifest, data_options)
    schedule_value = learning_rate_schedule(schedule, learning_rate, epochs * steps_per_epoch)
    workdir_lib.make_workdir(workdir)
    chief = is_chief(distribution)
    # One run per workdir (the chief's: the other workers write to folders of their own), and
    # SIGINT/SIGTERM stop training at a step boundary instead of wherever they land.
    lock = _io.exclusive(workdir, "train") if chief else contextlib.nullcontext()
    with lock, _interrupts.stop_requests() as stop:
        # Refusals before anything is read or written: links, files of the wrong kind, a log
        # that cannot be continued.
        workdir_lib.check_files(workdir)
        callbacks_lib.EpochLog(os.path.join(workdir, workdir_lib.LOG)).rows()
        saved = _effective(workdir_lib.read_settings(workdir))
        mixed_precision = precision.resolve(
            mixed_precision, "unknown" if saved is None else saved["mixed_precision"])
        settings = _effective(dict(
            dataset=dataset if isinstance(dataset, str) else "custom", model=model,
            data_dir=data_dir, epochs=epochs, steps_per_epoch=steps_per_epoch,
            batch_size=batch_size, image_size=image_size, num_examples=num_examples,
            validation_examples=validation_examples, learning_rate=learning_rate,
            schedule=schedule, mixed_precision=mixed_precision, strategy=strategy, seed=seed,
            split_manifest=split_manifest, data_options=data_options, **model_kwargs))
        checkpoint = callbacks_lib.EpochCheckpoint(os.path.join(workdir, workdir_lib.BACKUP))
        points = workdir_lib.resume_points(workdir, checkpoint, saved, settings)
        batches, validation_batches = _pipelines(
            source, validation, batch_size, seed,
            models_lib.get(model).TRAINS_ON_ALL_ANNOTATIONS)
        calibration = ([] if validation is None or validation.annotation_weights is None
                       else [callbacks_lib.CalibrationLog(validation, seed=seed)])
        # Multi-worker: the non-chief workers write what the chief writes to a folder of their
        # own (saving may need every worker), and resume from the chief's.
        with writable_folder(workdir, chief) as writable:
            keras.utils.set_random_seed(seed)
            with distribution.scope(), _dtype_policy(mixed_precision):
                built = _build(model, {**model_kwargs, "num_classes": source.num_classes},
                               source, seed)
                built.compile(optimizer=keras.optimizers.Adam(schedule_value),
                              jit_compile=jit_compile)
                initial_epoch = checkpoint.restore(built, points)
            # Only now, once every refusal is past: a refused call leaves the workdir as it was.
            if "finished_epochs" in (saved or {}):
                settings["finished_epochs"] = saved["finished_epochs"]
            if chief:
                workdir_lib.write_settings(workdir, settings)
            run_callbacks = [
                callbacks_lib.StopOnNonFiniteLoss(),
                callbacks_lib.StopOnSignal(stop),
                *callbacks_lib.progress_callbacks(verbose, callbacks),
                *calibration,
                callbacks_lib.EpochLog(os.path.join(writable, workdir_lib.LOG)),
                *([] if tensorboard is None else _tensorboard(
                    tensorboard if chief else os.path.join(writable, "tensorboard"),
                    validation or source, seed)),
                checkpoint if chief else callbacks_lib.EpochCheckpoint(
                    os.path.join(writable, workdir_lib.BACKUP)),
                *([] if max_minutes is None else [callbacks_lib.TimeBudget(max_minutes)]),
                *(callbacks or []),
            ]
            fit = functools.partial(fit_distributed, stop=stop) if strategy == "multi_worker" \
                else _fit
            history = fit(built, batches, epochs, steps_per_epoch, initial_epoch,
                          validation_batches, run_callbacks, verbose)
            _save(built, workdir, writable, chief, checkpoint,
                  {**settings, "finished_epochs": initial_epoch + len(history.epoch)})
            return built, history


def _recorded_defaults():
    """The recorded `train` arguments with their defaults."""
    return {name: p.default for name, p in inspect.signature(train).parameters.items()
            if name not in workdir_lib.UNRECORDED and p.default is not p.empty}


def _effective(settings):
    """`settings` (None: None) with every default filled in, as train_config.json has them."""
    return None if settings is None else workdir_lib.effective(settings, _recorded_defaults())


def _sources(dataset, validation_data, validation_examples, data_dir, image_size, num_examples,
             seed, num_classes, split_manifest, data_options):
    """The training `Source` and the validation one (None without validation)."""
    source = data_lib.as_source(dataset, "train", data_dir, image_size, num_examples, seed,
                                num_classes, split_manifest=split_manifest,
                                data_options=data_options)
    validation = None
    if validation_data is not None:
        validation = data_lib.as_source(validation_data, "val", data_dir, image_size, None, seed,
                                        num_classes)
    elif validation_examples:
        validation = data_lib.as_source(dataset, "val", data_dir, image_size,
                                        validation_examples, seed, num_classes,
                                        split_manifest=split_manifest,
                                        data_options=data_options)
    return source, validation


def _pipelines(source, validation, batch_size, seed, all_annotations=False):
    """The training batches (of every annotation with `all_annotations`), and the validation
    batches (None without validation)."""
    batches = pipeline.training_pipeline(source.dataset, batch_size, source.annotation_weights,
                                         seed=seed, num_classes=source.num_classes,
                                         all_annotations=all_annotations)
    if validation is None:
        return batches, None
    return batches, pipeline.evaluation_pipeline(validation.dataset, batch_size,
                                                 validation.annotation_weights,
                                                 validation.num_classes)


def _fit(model, dataset, epochs, steps_per_epoch, initial_epoch, validation_data, callbacks,
         verbose):
    """Keras' `fit`, with `fit_distributed`'s arguments."""
    return model.fit(dataset, epochs=epochs, initial_epoch=initial_epoch,
                     steps_per_epoch=steps_per_epoch, validation_data=validation_data,
                     shuffle=False,  # the pipeline shuffles
                     verbose=verbose, callbacks=callbacks)


def _build(name, model_kwargs, source, seed):
    """The model named `name`, built for `source`'s images (in the current strategy scope)."""
    model_kwargs = {"ged_classes": source.classes, **model_kwargs}
    model = models_lib.get(name)(seed=seed, **model_kwargs)
    model.build((None, *source.dataset.element_spec[0].shape))
    return model


def _tensorboard(log_dir, shown, seed, num_images=4):
    """Keras' `TensorBoard`, and `TensorBoardSamples` on the first images of `shown`."""
    images, annotations = zip(*shown.dataset.take(num_images).as_numpy_iterator())
    return [keras.callbacks.TensorBoard(log_dir),
            callbacks_lib.TensorBoardSamples(log_dir, np.stack(images), np.stack(annotations),
                                             seed=seed)]


def _save(model, workdir, writable, chief, checkpoint, settings):
    """Write `model.keras`, then its epoch count, then delete the checkpoints: a kill in between
    leaves a checkpoint at least as new as the recorded model.keras, which the next call
    finishes from."""
    _io.ensure_space(writable, saving.state_bytes(model), "the trained model")
    with _io.replacing(os.path.join(writable, workdir_lib.MODEL)) as tmp:
        model.save(tmp)
    if chief:
        workdir_lib.write_settings(workdir, settings)
        shutil.rmtree(checkpoint.directory, ignore_errors=True)
