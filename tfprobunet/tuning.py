"""Keras Tuner searches over the Probabilistic U-Net, on `val_ged` by default.

```python
hypermodel = tfprobunet.tuning.ProbabilisticUNetHyperModel(
    num_classes=source.num_classes, input_shape=(32, 32, 3), ged_classes=source.classes)
tuner = tfprobunet.tuning.make_tuner("random", hypermodel, max_trials=8, directory="runs/tune")
tfprobunet.tuning.search(tuner, train_source, validation_data=val_source, epochs=5,
                         steps_per_epoch=100)
```

Needs the `tune` extra (`pip install "tfprobunet[tune]"`: keras-tuner and tensorboard).
"""

import contextlib
import json
import os
import warnings

import keras

try:
    import keras_tuner
except ModuleNotFoundError as error:  # an extra: say how to get it
    if error.name != "keras_tuner":
        raise
    raise ModuleNotFoundError('tfprobunet.tuning needs keras-tuner: pip install '
                              '"tfprobunet[tune]"', name="keras_tuner") from None

from tfprobunet import _console, _io
from tfprobunet import callbacks as callbacks_lib
from tfprobunet import data as data_lib
from tfprobunet import training
from tfprobunet.data import pipeline
from tfprobunet.models import ProbabilisticUNet

OBJECTIVE = keras_tuner.Objective("val_ged", direction="min")
TUNERS = {"random": keras_tuner.RandomSearch, "bayesian": keras_tuner.BayesianOptimization,
          "hyperband": keras_tuner.Hyperband}
# The searched hyper-parameters; their defaults are `ProbabilisticUNet`'s and `train`'s.
HYPERPARAMETERS = ("latent_dim", "beta", "learning_rate", "num_levels", "base_channels",
                   "convs_per_block", "fcomb_layers", "schedule", "batch_size")
# Channels of level i: the first level's times these (from 32: the official Cityscapes
# configuration's 32, 64, 128, 192, 192, 192, 192, of which the default U-Net takes four).
CHANNEL_MULTIPLIERS = (1, 2, 4, 6, 6, 6)


def num_channels(num_levels, base_channels):
    """The U-Net's channels per level: doubling from `base_channels`, at most 6 times it, as the
    default `[32, 64, 128, 192]` (the official Cityscapes configuration's first four levels) does
    for 4 levels from 32."""
    if not 1 <= num_levels <= len(CHANNEL_MULTIPLIERS):
        raise ValueError(f"`num_levels` must be in [1, {len(CHANNEL_MULTIPLIERS)}]. Received: "
                         f"{num_levels!r}")
    return [base_channels * m for m in CHANNEL_MULTIPLIERS[:num_levels]]


def _model_arguments():
    return {"num_classes", "seed", *training.model_arguments("probunet")}


class ProbabilisticUNetHyperModel(keras_tuner.HyperModel):
    """A `ProbabilisticUNet`, built and compiled from Keras Tuner hyper-parameters.

    Searched, with today's defaults as the defaults (`build(keras_tuner.HyperParameters())`
    is the default model):

    | name | values | default |
    |---|---|---|
    | `latent_dim` | 2-16 | 6 |
    | `beta` | 0.1-30, log | 1.0 |
    | `learning_rate` | 1e-5-1e-2, log (Adam) | 1e-4 |
    | `num_levels`, `base_channels` (`num_channels(...)`) | 3-5; 16, 32, 64 | 4, 32 |
    | `convs_per_block` | 1-3 | 3 |
    | `fcomb_layers` | 1-4 | 3 |
    | `schedule` | `training.SCHEDULES`, only when `steps` is given | `"constant"` |
    | `batch_size` (in `fit`, only on `Source` data) | 4, 8, 16 | 8 |

    Args:
        num_classes: K.
        input_shape: `(h, w, c)` of the images.
        ged_classes: the classes `val_ged` scores (`Source.classes`; None: the default).
        steps: the optimizer steps of one trial (`epochs * steps_per_epoch`); with it, the
            learning-rate `schedule` is searched too (it needs the run's length).
        **fixed: what is not searched: a hyper-parameter's name fixes it (`latent_dim=8` is
            `hp.Fixed("latent_dim", 8)`, shown as fixed in the search space), any other
            `ProbabilisticUNet` argument is passed through (`weight_decay=0.0`); `num_channels`
            replaces `num_levels` and `base_channels`.
    """

    def __init__(self, num_classes, input_shape, ged_classes=None, steps=None, name=None,
                 tunable=True, **fixed):
        super().__init__(name=name, tunable=tunable)
        unknown = sorted(set(fixed) - set(HYPERPARAMETERS) - _model_arguments())
        if unknown:
            raise ValueError(f"Unknown fixed settings {unknown}: give hyper-parameters of "
                             f"{HYPERPARAMETERS} or ProbabilisticUNet arguments.")
        if steps is not None and (not isinstance(steps, int) or steps < 1):
            raise ValueError(f"`steps` must be None or a positive integer. Received: {steps!r}")
        self.num_classes = num_classes
        self.input_shape = tuple(input_shape)
        self.ged_classes = ged_classes
        self.steps = steps
        self.fixed = fixed

    def _value(self, hp, kind, name, *args, **kwargs):
        """`hp.Fixed(name, value)` when `name` is fixed, else the hyper-parameter `hp.<kind>(name,
        *args, **kwargs)` (`kind`: `"Int"`, `"Float"`, `"Choice"`)."""
        if name in self.fixed:
            return hp.Fixed(name, self.fixed[name])
        return getattr(hp, kind)(name, *args, **kwargs)

    def build(self, hp):
        """A built `ProbabilisticUNet` compiled with Adam at `learning_rate` (and `schedule`)."""
        kwargs = {k: v for k, v in self.fixed.items() if k not in HYPERPARAMETERS}
        if "num_channels" not in kwargs:
            kwargs["num_channels"] = num_channels(
                self._value(hp, "Int", "num_levels", 3, 5, default=4),
                self._value(hp, "Choice", "base_channels", [16, 32, 64], default=32))
        model = ProbabilisticUNet(
            num_classes=self.num_classes, ged_classes=self.ged_classes,
            latent_dim=self._value(hp, "Int", "latent_dim", 2, 16, default=6),
            beta=self._value(hp, "Float", "beta", 0.1, 30.0, sampling="log", default=1.0),
            convs_per_block=self._value(hp, "Int", "convs_per_block", 1, 3, default=3),
            fcomb_layers=self._value(hp, "Int", "fcomb_layers", 1, 4, default=3),
            **kwargs)
        model.build((None, *self.input_shape))
        learning_rate = self._value(hp, "Float", "learning_rate", 1e-5, 1e-2, sampling="log",
                                    default=1e-4)
        if self.steps is not None:
            schedule = self._value(hp, "Choice", "schedule", list(training.SCHEDULES),
                                   default="constant")
            learning_rate = training.learning_rate_schedule(schedule, learning_rate,
                                                            self.steps)
        model.compile(optimizer=keras.optimizers.Adam(learning_rate))
        return model

    def fit(self, hp, model, x, *args, validation_data=None, **kwargs):
        """`model.fit`; a `tfprobunet.data.Source` as `x` is batched here with the searched
        `batch_size` (`training_pipeline`), one as `validation_data` with all its annotations
        (`evaluation_pipeline`), which gives `val_ged`."""
        if isinstance(x, data_lib.Source):
            batch_size = self._value(hp, "Choice", "batch_size", [4, 8, 16], default=8)
            x = pipeline.training_pipeline(x.dataset, batch_size, x.annotation_weights,
                                           seed=self.fixed.get("seed") or 0,
                                           num_classes=x.num_classes)
        if isinstance(validation_data, data_lib.Source):
            validation_data = pipeline.evaluation_pipeline(
                validation_data.dataset, 8, validation_data.annotation_weights,
                validation_data.num_classes)
        return model.fit(x, *args, validation_data=validation_data, **kwargs)


class TuningError(RuntimeError):
    """No trial of a search completed."""


def make_tuner(tuner, hypermodel, directory, project_name="search", max_trials=10,
               max_epochs=None, objective=OBJECTIVE, seed=None, overwrite=False, **kwargs):
    """A Keras Tuner tuner of `hypermodel` on `val_ged` (minimised) by default.

    Args:
        tuner: `"random"`, `"bayesian"` or `"hyperband"` (see `TUNERS`).
        hypermodel: a `ProbabilisticUNetHyperModel` (or any `keras_tuner.HyperModel`).
        directory, project_name: where the trials, their checkpoints and the tuner's state
            go; with `overwrite=False` (the default) a search started again there resumes. A
            symbolic link at or under `directory/project_name` is refused
            (`tfprobunet.training.WorkdirError`, naming the link and its target).
        max_trials: trials to run (random, bayesian).
        max_epochs: hyperband's largest number of epochs per trial (required for it).
        objective: what to minimise or maximise.
        **kwargs: passed to the tuner (`distribution_strategy=`, `executions_per_trial=`, ...).
    """
    if tuner not in TUNERS:
        raise ValueError(f"`tuner` must be one of {sorted(TUNERS)}. Received: {tuner!r}")
    _io.refuse_links(directory, [project_name], _LINK_FIX)
    common = dict(objective=objective, seed=seed, directory=directory,
                  project_name=project_name, overwrite=overwrite, **kwargs)
    if tuner == "hyperband":
        if max_epochs is None:
            raise ValueError("The hyperband tuner needs `max_epochs` (the epochs of its "
                             "longest trials).")
        return TUNERS[tuner](hypermodel, max_epochs=max_epochs, **common)
    return TUNERS[tuner](hypermodel, max_trials=max_trials, **common)


@contextlib.contextmanager
def _plain_trial_summaries():
    """Keras Tuner's trial summaries as plain text outside a notebook, within the block.

    Keras Tuner (1.4) takes any process that can import IPython for a notebook
    (`keras_tuner.src.utils.IS_NOTEBOOK`: the class name of `get_ipython()`, which is None
    outside IPython, lacks "Terminal"), and before each "Trial n Complete" clears the output
    with IPython's `clear_output`, which elsewhere prints the escape codes `ESC[2K\\r` twice:
    into the log file, when the output goes to one. Here it is a notebook only in a notebook's
    kernel (`_console.in_notebook`), and prints a blank line otherwise.
    """
    try:
        from keras_tuner.src import utils
    except ImportError:  # another layout of Keras Tuner: nothing to correct
        utils = None
    saved = getattr(utils, "IS_NOTEBOOK", False)
    if saved:
        utils.IS_NOTEBOOK = _console.in_notebook()
    try:
        yield
    finally:
        if saved:
            utils.IS_NOTEBOOK = saved


def search(tuner, *args, **kwargs):
    """`tuner.search(*args, **kwargs)`, then raise `TuningError` with the first failed
    trial's error when no trial completed (Keras Tuner itself returns quietly when fewer trials
    than `max_consecutive_failed_trials` were run and all failed). Outside a notebook, Keras
    Tuner's summaries are plain text (no escape codes in a log file).

    Returns:
        The best trials, best first (`tuner.oracle.get_best_trials`); [] on a distributed
        search's workers.
    """
    with _plain_trial_summaries():
        tuner.search(*args, **kwargs)
    if distributed_role() == "worker":
        return []  # the chief's oracle holds the trials
    trials = list(tuner.oracle.trials.values())
    if trials and not any(t.status == "COMPLETED" for t in trials):
        first = trials[0]  # the oracle keeps its trials in the order they were created
        raise TuningError(f"All {len(trials)} trials of the search failed. The first one "
                          f"({first.trial_id}) failed with:\n{first.message}")
    return tuner.oracle.get_best_trials(len(trials))


def hyperparameters_json(hp):
    """`hp.values` as JSON text (what `tfprobunet tune` writes as `best_hyperparameters.json`);
    `hyperparameters_from_json` reads it back."""
    return json.dumps(hp.values, indent=2, sort_keys=True)


def hyperparameters_from_json(text):
    """`keras_tuner.HyperParameters` with every value of `hyperparameters_json` fixed: pass it
    to `hypermodel.build` to rebuild the best model."""
    hp = keras_tuner.HyperParameters()
    for name, value in json.loads(text).items():
        hp.Fixed(name, value)
    return hp


# `tune --chief` / `--worker`: Keras Tuner's own protocol, configured by these variables.
TUNER_ID, ORACLE_IP, ORACLE_PORT = ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP",
                                    "KERASTUNER_ORACLE_PORT")
BEST_MODEL, BEST_HYPERPARAMETERS = "best_model.keras", "best_hyperparameters.json"
SEARCH, TENSORBOARD = "search", "tensorboard"  # `tune`'s Keras Tuner project and logs
_LINK_FIX = "Remove the link (or use another directory): the search writes its own files there."


def distributed_role():
    """`"chief"`, `"worker"` or None (not distributed), from Keras Tuner's variables."""
    if not os.environ.get(ORACLE_IP):
        return None
    return "chief" if os.environ.get(TUNER_ID, "chief") == "chief" else "worker"


def tune(directory, dataset="flips", data_dir=None, tuner="random", max_trials=10, epochs=5,
         steps_per_epoch=100, image_size=None, num_examples=None, validation_examples=100,
         validation_data=None, strategy="default", seed=0, verbose=None, data_options=None,
         **fixed):
    """Search the hyper-parameters of `ProbabilisticUNetHyperModel` on `val_ged`, resuming a
    search that `directory` already holds, and keep the best model.

    Writes to `directory`: `search/` (Keras Tuner's trials, checkpoints and state),
    `tensorboard/<trial>/` (each trial's logs and hyper-parameters, for TensorBoard's HParams
    tab), and, once the search is over (on the chief when distributed), `best_model.keras` (the
    best trial's model, at its best epoch) and `best_hyperparameters.json`
    (`hyperparameters_from_json` reads it).

    A symbolic link at any of these paths, or under `search/` or `tensorboard/`, is refused
    before anything is read or written (`tfprobunet.training.WorkdirError`, one line naming the
    link and its target): the search never writes outside `directory`.

    Distributed (Keras Tuner's protocol): with `KERASTUNER_ORACLE_IP` / `_PORT` set, the process
    with `KERASTUNER_TUNER_ID=chief` runs the oracle and waits, and every other (ids `tuner0`,
    `tuner1`, ...) runs trials; all need the same arguments and a shared `directory`.

    Args:
        directory: the search's folder.
        dataset, data_dir, image_size, num_examples: the training data, as `train` takes them
            (a name, a `tfprobunet.data.Source`, or a dataset with `num_classes=`).
        tuner: `"random"`, `"bayesian"` or `"hyperband"`.
        max_trials: trials (random, bayesian); hyperband runs as many as `epochs` allows.
        epochs, steps_per_epoch: each trial's training (hyperband: the longest trials').
        validation_examples: val images whose `val_ged` is the objective (all annotations).
        validation_data: your own validation data instead (a `Source`, or a dataset of
            `(image, annotations)`); needed when `dataset` is not a name.
        strategy: `"default"` or `"mirrored"` (`training.make_strategy`): each trial's devices.
        seed: the search's, the data's and the models' seed.
        verbose: Keras Tuner's and Keras' progress output (0: silent; 1: progress bars; 2: a
            line per epoch and one every 100 steps or minute, `callbacks.ProgressLog`; None:
            progress bars on a terminal or in a notebook, 2 otherwise, e.g. into a log file).
        data_options: the named dataset's options, as `train` takes them (e.g. `{"crop":
            (128, 128)}` for `"folder"`).
        **fixed: passed to `ProbabilisticUNetHyperModel` (settings not searched);
            `num_classes=` for a plain dataset, as `train` takes it.

    Returns:
        The completed trials, best first, as dicts: `trial_id`, `score` (`val_ged`), `values`
        (the hyper-parameters). A worker returns [] (the chief reports).

    Raises:
        TuningError: no trial completed (the first one's error is in the message).
    """
    if strategy not in ("default", "mirrored"):
        raise ValueError("`strategy` must be 'default' or 'mirrored': trials train with Keras' "
                         "fit, which fails under MultiWorkerMirroredStrategy (keras-team/keras"
                         "#20585); spread a search over machines with chief and workers "
                         f"instead. Received: strategy={strategy!r}")
    _io.refuse_links(directory, [SEARCH, TENSORBOARD, BEST_MODEL, BEST_HYPERPARAMETERS],
                     _LINK_FIX)
    source = data_lib.as_source(dataset, "train", data_dir, image_size, num_examples, seed,
                                fixed.pop("num_classes", None), data_options=data_options)
    if validation_data is None and not isinstance(dataset, str):
        raise ValueError("A search on your own `dataset` needs `validation_data=` (a Source or "
                         "a dataset of (image, annotations)) to compute val_ged on.")
    validation = data_lib.as_source(
        dataset if validation_data is None else validation_data, "val", data_dir, image_size,
        validation_examples if validation_data is None else None, seed, source.num_classes,
        data_options=data_options if validation_data is None else None)
    hypermodel = ProbabilisticUNetHyperModel(
        source.num_classes, source.dataset.element_spec[0].shape, ged_classes=source.classes,
        steps=epochs * steps_per_epoch, seed=seed, **fixed)
    search_tuner = make_tuner(
        tuner, hypermodel, directory, project_name=SEARCH, max_trials=max_trials,
        max_epochs=epochs, seed=seed, distribution_strategy=(
            None if strategy == "default" else training.make_strategy(strategy)))
    verbose = _console.progress_verbosity(verbose)
    trials = search(search_tuner, source, epochs=epochs, steps_per_epoch=steps_per_epoch,
                    validation_data=validation, verbose=verbose,
                    callbacks=[keras.callbacks.TensorBoard(os.path.join(directory, TENSORBOARD),
                                                           write_graph=False),
                               *callbacks_lib.progress_callbacks(verbose)])
    if distributed_role() == "worker":
        return []
    completed = [t for t in trials if t.status == "COMPLETED"]
    with warnings.catch_warnings():  # the trial's checkpoint holds the optimizer's state too
        warnings.filterwarnings("ignore", "Skipping variable loading for optimizer")
        best = search_tuner.get_best_models(1)[0]
    with _io.replacing(os.path.join(directory, BEST_MODEL)) as tmp:
        best.save(tmp)
    with _io.replacing(os.path.join(directory, BEST_HYPERPARAMETERS)) as tmp:
        with open(tmp, "w") as f:
            f.write(hyperparameters_json(completed[0].hyperparameters))
    return [dict(trial_id=t.trial_id, score=t.score, values=t.hyperparameters.values)
            for t in completed]
