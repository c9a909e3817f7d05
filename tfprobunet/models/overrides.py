"""`KerasOverrides`: where the models depart from `keras.Model`'s `compile`, `fit`, `export` and
build config, each for a reason its docstring gives. A mixin, listed before `keras.Model`:
`SegmentationSampler(KerasOverrides, keras.Model)`."""

import inspect
import warnings

import keras
import tensorflow as tf

from tfprobunet import _console
from tfprobunet.data import checks as data_checks
from tfprobunet.data.source import Source

# `compile` arguments the models have their own of (the loss, its trackers): refused if given.
_BUILT_IN_COMPILE_ARGS = ("loss", "loss_weights", "metrics", "weighted_metrics")
# Inputs that shuffle themselves (or cannot be shuffled): `fit`'s `shuffle` defaults to False.
_SELF_SHUFFLING = (tf.data.Dataset, tf.distribute.DistributedDataset, keras.utils.PyDataset)


class KerasOverrides:
    """`keras.Model` methods with the models' conventions. The class using it has `TERMS` (the
    logged loss terms), `LOSS_NAME` (what it trains on, for messages), `num_classes` and
    `image_channels`."""

    def get_build_config(self):
        """`{"input_shape": [b, h, w, c]}` as plain ints and None, however `build` was called
        (a `TensorShape` is not JSON: Keras Tuner and `.keras` saving write this config)."""
        config = super().get_build_config()
        if config and "input_shape" in config:
            config["input_shape"] = [None if d is None else int(d)
                                     for d in tf.TensorShape(config["input_shape"]).as_list()]
        return config

    def export(self, filepath, format="tf_saved_model", verbose=None, input_signature=None,
               **kwargs):
        """Keras' `Model.export` of `call`, with images of any batch size, height and width by
        default: `input_signature=[(None, None, None, c) float32]`.

        The serving signatures that sample (`serving_default`, `features`, `sample`,
        `decode`) are written by `tfprobunet.export_for_serving`.
        """
        if input_signature is None:
            if not self.built:
                raise ValueError("Build the model (`model.build((None, h, w, c))`, a call or "
                                 "`fit`) before exporting it.")
            input_signature = [tf.TensorSpec((None, None, None, self.image_channels),
                                             tf.float32, name="images")]
        return super().export(filepath, format=format, verbose=verbose,
                              input_signature=input_signature, **kwargs)

    def compile(self, optimizer="rmsprop", **kwargs):
        """`keras.Model.compile` with an optimizer only: the loss is built in, and the model
        reports its `TERMS` and, on validation data with all annotations, `ged`. A `loss`,
        `loss_weights`, `metrics` or `weighted_metrics` would be ignored, so they are
        refused."""
        given = {name: kwargs.pop(name) for name in _BUILT_IN_COMPILE_ARGS if kwargs.get(name)}
        if given:
            raise ValueError(
                f"{type(self).__name__} trains on {self.LOSS_NAME} and reports "
                f"{', '.join(self.TERMS)} and ged itself: compile it with an optimizer only, "
                "e.g. model.compile(optimizer=keras.optimizers.Adam(1e-4)). "
                f"Received: {', '.join(f'{k}={v!r}' for k, v in given.items())}.")
        super().compile(optimizer=optimizer, **kwargs)

    def compile_from_config(self, config):
        """What `keras.models.load_model` calls: compile as saved and create the optimizer's
        variables, so that its saved state loads too. (Keras skips, with a warning, models whose
        `compile` is overridden, unless they override this.) A `loss` or `metrics` in a file
        written by version 0.1, which accepted and ignored them, is dropped with a warning."""
        config = dict(keras.saving.deserialize_keras_object(config))
        ignored = {k: config.pop(k) for k in _BUILT_IN_COMPILE_ARGS if config.get(k)}
        if ignored:
            warnings.warn(f"Dropped {', '.join(sorted(ignored))} from the saved compile "
                          f"settings: the model trains on {self.LOSS_NAME} and never used "
                          "them.", stacklevel=2)
        self.compile(**config)
        self._build_optimizer()

    def _build_optimizer(self):
        """Create the optimizer's variables now, in the model's strategy, if the model is built
        and they do not exist yet."""
        if self.built and self.optimizer is not None and not self.optimizer.built:
            with self.distribute_strategy.scope():
                self.optimizer.build(self.trainable_variables)

    def fit(self, x=None, y=None, *args, **kwargs):
        """`keras.Model.fit`, with defaults that suit these models:

        - on a dataset, which shuffles itself (`tfprobunet.data.training_pipeline`), or a
          generator, `shuffle` defaults to False instead of True, which Keras ignores there
          with a warning (arrays are still shuffled by default);
        - `verbose` defaults to the progress bar on a terminal or in a notebook and one line
          per epoch otherwise (Keras' "auto" writes the bar's escape codes into log files);
        - callbacks that monitor `ged` / `val_ged` in `mode="auto"` (`EarlyStopping`,
          `ModelCheckpoint`, `ReduceLROnPlateau`) get `mode="min"` set on them: Keras finds the
          direction of compiled metrics only, and would otherwise stop with "isn't able to
          automatically determine whether that metric should be maximized or minimized";
        - the labels of `y`, or of the first batches of a dataset, and of `validation_data`
          are checked before training (`tfprobunet.data.checks.check_labels`): masks saved as
          0/255 are refused, since 255 is the ignore label;
        - the model (from a dataset's element spec) and the optimizer's variables are built
          before the first step: otherwise the optimizer creates them inside the first traced
          step and TensorFlow traces the whole step a second time (twice the start-up).

        Arguments are read by name, however they were passed (bound to `keras.Model.fit`'s
        signature, which raises Keras' TypeError for arguments it does not take).
        """
        bound = inspect.signature(keras.Model.fit).bind(self, x, y, *args, **kwargs)
        given = bound.arguments
        _refuse_sources(x, given.get("validation_data"))
        if "verbose" not in given:  # Keras' "auto" draws bars into files
            given["verbose"] = _console.progress_verbosity()
        if ((isinstance(x, _SELF_SHUFFLING) or inspect.isgenerator(x))
                and "shuffle" not in given):
            given["shuffle"] = False
        for callback in given.get("callbacks") or ():
            if (getattr(callback, "monitor", None) in ("ged", "val_ged")
                    and getattr(callback, "mode", None) == "auto"):
                callback.mode = "min"
        if not self.built and isinstance(x, tf.data.Dataset) \
                and isinstance(x.element_spec, (tuple, list)):
            shape = tuple(x.element_spec[0].shape)
            if len(shape) == 4 and shape[-1] is not None:
                self.build(shape)
        self._check_fit_labels(x, y, given.get("validation_data"))
        self._build_optimizer()
        return super().fit(*bound.args[1:], **bound.kwargs)

    def _check_fit_labels(self, x, y, validation_data):
        """Refuse 0/255 masks and labels out of range before the first step (the train step
        refuses out-of-range labels too, but not masks whose foreground is all ignored)."""
        for data, where in ((x, "`fit`'s dataset"), (validation_data, "`validation_data`")):
            if isinstance(data, tf.data.Dataset):
                data_checks.check_dataset(data, self.num_classes,
                                          f"The segmentations of {where}",
                                          count=data_checks.PEEK_BATCHES)
            elif isinstance(data, (tuple, list)) and len(data) > 1:
                data_checks.check_labels(data[1], self.num_classes,
                                         f"The segmentations of {where}")
        if y is not None and not isinstance(x, tf.data.Dataset):
            data_checks.check_labels(y, self.num_classes, "`fit`'s y")


def _refuse_sources(x, validation_data):
    """A `tfprobunet.data.Source` passed to `fit` (Keras would unpack the namedtuple as inputs
    and labels): refused in one line naming the pipeline that makes its batches."""
    for value, where, make in (
            (x, "x", "tfprobunet.data.training_pipeline(source.dataset, batch_size=8, "
                     "annotation_weights=source.annotation_weights)"),
            (validation_data, "validation_data", "tfprobunet.data.evaluation_pipeline("
                                                 "source.dataset, 8, source.annotation_weights)")):
        if isinstance(value, Source):
            raise TypeError(f"`fit` got a tfprobunet.data.Source as `{where}`: pass its batches, "
                            f"e.g. {where}={make} (as `train` does).")
