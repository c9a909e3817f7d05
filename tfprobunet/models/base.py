"""What every model of the package shares: a `keras.Model` that draws segmentations.

`SegmentationSampler` holds the input checks, a training step around a per-example loss, a
validation step that also scores `ged` against all annotations, and the `compile` / `fit`
conventions. A model subclasses it with its layers and two methods:

- `loss_terms(images, segmentations)` -> dict of per-example `(b,)` terms, `"loss"` first (the
  others, e.g. `"kl"`, are logged beside it): what training minimises;
- `sample(images, num_samples=1, seed=None)` -> logits `(b, m, h, w, K)`: m segmentations per
  image, reproducible when `seed` is given. `evaluate`, `fit`'s `val_ged` and the serving
  export use only this.
"""

import inspect
import numbers
import warnings

import keras
import tensorflow as tf

from tfprobunet import _console
from tfprobunet import layers as layers_lib
from tfprobunet import losses
from tfprobunet import metrics as metrics_lib
from tfprobunet.data import checks
from tfprobunet.defaults import check_model_numbers

IGNORE_LABEL = losses.IGNORE_LABEL
# Validation samples for `ged` are drawn with this stateless seed: the same weights and data give
# the same `val_ged`, so epochs and tuner trials are compared on the same noise.
GED_SEED = 0
# `compile` arguments the models have their own of (the loss, its trackers): refused if given.
_BUILT_IN_COMPILE_ARGS = ("loss", "loss_weights", "metrics", "weighted_metrics")


def require(condition, message, tensor):
    """Return `tensor` if `condition` holds. Eagerly, raise `ValueError(message)`; in a graph, the
    returned tensor depends on an assert with the same message, so nothing computed from it runs
    (and fails less clearly) before the check."""
    if tf.executing_eagerly():
        if not bool(condition):
            raise ValueError(message)
        return tensor
    with tf.control_dependencies([tf.debugging.assert_equal(condition, True, message=message)]):
        return tf.identity(tensor)


def seed_pair(seed):
    """A stateless-RNG seed, `(2,)` int32, from an int or a `(2,)` tensor."""
    if isinstance(seed, int):
        return tf.constant([seed, 0], tf.int32)
    seed = tf.cast(seed, tf.int32)
    if seed.shape.rank != 1 or seed.shape[0] != 2:
        raise ValueError(f"`seed` must be an int or an int tensor of shape (2,). Received shape "
                         f"{seed.shape}")
    return seed



def cycle_samples(outputs, num_samples):
    """`(b, m, h, w, K)` from `outputs (b, M, h, w, K)`: sample i is output i mod M (the
    ensemble's members, the M heads)."""
    return tf.gather(outputs, tf.range(num_samples) % tf.shape(outputs)[1], axis=1)


def check_num_samples(num_samples):
    if isinstance(num_samples, int) and num_samples < 1:
        raise ValueError(f"`num_samples` must be >= 1. Received: num_samples={num_samples}")


class SegmentationSampler(keras.Model):
    """Base class of the models: a `keras.Model` whose `sample(images, m, seed)` draws m
    segmentations per image, trained with `fit` on `(images, segmentations)` pairs.

    Args:
        num_classes: K, number of classes (2 for binary lesion masks).
        num_channels: U-Net filters per level; image height and width must be multiples of
            `2**(len(num_channels) - 1)`.
        convs_per_block: 3x3 convolutions per U-Net block.
        weight_decay: L2 coefficient on kernels only, not biases (as the official training
            script, `training/train_prob_unet.py`, passes
            `regularizers={'w': l2_regularizer(1.0)}`); 0 disables it.
        seed: int seed of the model's random draws; None: a random seed.
        ged_samples: samples per image for the `ged` metric of `evaluate` and `fit`'s
            validation on data with all annotations per image (see `test_step`).
        ged_classes: the classes `ged` scores (default: class 1 for K = 2, all K otherwise).

    Subclasses create their layers after calling this constructor, implement `loss_terms`
    and `sample`, and list their extra per-example terms in `TERMS`.
    """

    # The per-example terms `loss_terms` returns, "loss" first; each gets a `Mean` tracker
    # attribute `<term>_tracker` (created by the subclass for terms other than "loss").
    TERMS = ("loss",)
    LOSS_NAME = "its built-in loss"

    def __init__(self, num_classes=2, num_channels=(32, 64, 128, 192), convs_per_block=3,
                 weight_decay=1e-5, seed=None, ged_samples=16, ged_classes=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError("`num_classes` must be an integer >= 2 (2 for a binary mask). "
                             f"Received: num_classes={num_classes!r}")
        if num_classes > IGNORE_LABEL:
            raise ValueError(f"`num_classes` must be <= {IGNORE_LABEL}: label {IGNORE_LABEL} "
                             f"means 'ignore'. Received: num_classes={num_classes}")
        if not isinstance(ged_samples, int) or ged_samples < 1:
            raise ValueError(f"`ged_samples` must be an integer >= 1. Received: {ged_samples!r}")
        if ged_classes is not None and (isinstance(ged_classes, (dict, str, bytes)) or not all(
                isinstance(c, numbers.Integral) for c in ged_classes)):
            raise ValueError("`ged_classes` must be None (class 1 for K = 2, all K otherwise) or "
                             "a list of class indices, e.g. [1] or [0, 2]. Received: "
                             f"ged_classes={ged_classes!r}")
        check_model_numbers(dict(weight_decay=weight_decay))
        self.num_classes = num_classes
        self.num_channels = layers_lib.check_num_channels(num_channels)
        self.convs_per_block = convs_per_block
        self.weight_decay = weight_decay
        self.seed = seed
        self.ged_samples = ged_samples
        self.image_channels = None
        self._ged_classes = ged_classes

    def _create_trackers(self):
        """The seed generator and the metric trackers; subclasses call it after creating their
        layers (the order of creation is part of the saved file's layout)."""
        self.seed_generator = keras.random.SeedGenerator(self.seed, name="seed_generator")
        for term in self.TERMS:
            setattr(self, f"{term}_tracker", keras.metrics.Mean(name=term))
        self.ged_tracker = metrics_lib.GeneralizedEnergyDistance(
            self.num_classes, self._ged_classes, name="ged")
        self.ged_classes = self.ged_tracker.classes

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

    # ------------------------------------------------------------------ input checks
    def _check_images(self, images):
        """`images (b, h, w, c)` as float: uint8 is divided by 255, as the loaders do."""
        images = tf.convert_to_tensor(images)
        if images.dtype == tf.uint8:
            images = tf.cast(images, tf.float32) / 255.0
        if not images.dtype.is_floating:
            raise ValueError(f"`images` must be float, e.g. float32 scaled to [0, 1], or uint8 "
                             f"(divided by 255). Received dtype {images.dtype.name}: convert "
                             "with `images.astype('float32') / 255` if 0..255 is their range.")
        shape = images.shape
        if shape.rank != 4:
            raise ValueError(f"`images` must have rank 4, (b, h, w, c). Received shape {shape} "
                             f"(rank {shape.rank}); {self._missing_axes(shape)}.")
        if self.image_channels is not None and shape[-1] != self.image_channels:
            raise ValueError(f"`images` must have {self.image_channels} channel(s), as the model "
                             f"was built with. Received shape {shape} with {shape[-1]} channels.")
        layers_lib.check_spatial_size(shape[1], shape[2], self.num_channels)
        if shape[1] is None or shape[2] is None:
            divisor = layers_lib.size_divisor(self.num_channels)
            dynamic = tf.shape(images)
            images = require(
                tf.equal(dynamic[1] % divisor + dynamic[2] % divisor, 0),
                f"Image height and width must be divisible by {divisor} for "
                f"num_channels={list(self.num_channels)}.", images)
        return require(tf.reduce_all(tf.math.is_finite(images)),
                        f"`images` contain NaN or Inf values (shape {shape}); the model needs "
                        "finite pixel values, e.g. float32 in [0, 1].", images)

    def _missing_axes(self, shape):
        """What to add to images of the wrong rank, from their last axis."""
        if shape.rank == 2:
            return "add a batch and a channel axis for one grey image: `image[None, ..., None]`"
        if shape.rank == 3:
            channels = self.image_channels or 4  # built: its count; else 1, 3 or 4 look like c
            if shape[-1] is not None and shape[-1] <= channels:
                return "add a batch axis for one image: `image[None]`"
            return ("add a channel axis for grey images (b, h, w): `images[..., None]`; for "
                    "one (h, w, c) image, a batch axis: `image[None]`")
        return "images are (batch, height, width, channels)"

    def _check_segmentations(self, segmentations, images):
        segmentations = tf.convert_to_tensor(segmentations)
        if segmentations.shape.rank == 4 and segmentations.shape[-1] == 1:
            segmentations = segmentations[..., 0]
        if segmentations.shape.rank != 3:
            raise ValueError("`segmentations` must have rank 3, (b, h, w) class labels (not one-"
                             f"hot). Received shape {segmentations.shape}.")
        return self._check_labels("segmentations", "(b, h, w)", segmentations, images)

    def _check_labels(self, name, layout, labels, images):
        """Integer labels `layout` with the images' height and width, in [0, K) or 255."""
        if not labels.dtype.is_integer:
            raise ValueError(f"`{name}` must be integer class labels, {layout}. Received dtype "
                             f"{labels.dtype.name}.")
        message = (f"`{name}` {labels.shape} and `images` {images.shape} must have the same "
                   f"height and width: {layout} and (b, h, w, c).")
        if not labels.shape[-2:].is_compatible_with(images.shape[1:3]):
            raise ValueError(message)
        labels = tf.cast(labels, tf.int32)
        if not (labels.shape[-2:].is_fully_defined() and images.shape[1:3].is_fully_defined()):
            labels = require(tf.reduce_all(tf.shape(labels)[-2:] == tf.shape(images)[1:3]),
                              message, labels)
        valid = ((labels >= 0) & (labels < self.num_classes)) | (labels == IGNORE_LABEL)
        return require(tf.reduce_all(valid),
                        f"`{name}` must hold labels in [0, {self.num_classes - 1}] "
                        f"(num_classes={self.num_classes}) or {IGNORE_LABEL} (ignore); they hold "
                        "other values.", labels)

    def _ensure_built(self, images):
        if not self.built:
            self.build(tuple(images.shape))

    # ------------------------------------------------------------------ randomness
    def _noise(self, shape, seed=None):
        """Standard normal noise: from the model's seed generator, or stateless from `seed`."""
        if seed is None:
            return keras.random.normal(shape, seed=self.seed_generator)
        return tf.random.stateless_normal(shape, seed=seed_pair(seed))

    # ------------------------------------------------------------------ training
    def _unpack(self, data):
        if not isinstance(data, (tuple, list)) or len(data) < 2:
            raise ValueError("The model trains on (images, segmentations) pairs: images "
                             "(b, h, w, c) float, segmentations (b, h, w) int. Received a "
                             f"{type(data).__name__} of length "
                             f"{len(data) if isinstance(data, (tuple, list)) else 1}.")
        return self._check_pair(data[0], data[1])

    def _check_pair(self, images, segmentations):
        images = self._check_images(images)
        self._ensure_built(images)
        return images, self._check_segmentations(segmentations, images)

    def _regularization(self):
        if not self.losses:
            return tf.constant(0.0)
        return tf.add_n([tf.cast(loss, tf.float32) for loss in self.losses])

    def _trackers(self):
        return [getattr(self, f"{term}_tracker") for term in self.TERMS]

    def _update_trackers(self, terms, regularization):
        # Weighted by the replica's batch size, so the trackers (summed over replicas) hold the
        # global batch mean whatever the split. The logged loss includes the weight decay.
        weight = tf.cast(tf.shape(terms["loss"])[0], tf.float32)
        for term, tracker in zip(self.TERMS, self._trackers()):
            value = tf.reduce_mean(terms[term])
            tracker.update_state(value + regularization if term == "loss" else value, weight)
        return {tracker.name: tracker.result() for tracker in self._trackers()}

    def loss_terms(self, images, segmentations):
        """Per-example terms `(b,)` keyed by `TERMS`, `"loss"` the one training minimises."""
        return self._loss_terms(*self._check_pair(images, segmentations))

    def _loss_terms(self, images, segmentations):
        raise NotImplementedError(f"{type(self).__name__} must implement `_loss_terms`.")

    def sample(self, images, num_samples=1, seed=None):
        """Logits `(b, m, h, w, K)` of `num_samples` segmentations per image."""
        raise NotImplementedError(f"{type(self).__name__} must implement `sample`.")

    def _objective(self, terms):
        """The per-example values training minimises (`(b,)`); a subclass may weigh terms."""
        return terms["loss"]

    def _after_train_step(self, terms, segmentations, logs):
        """Hook after the optimizer step (e.g. a Lagrange multiplier's update); returns logs."""
        return logs

    def train_step(self, data):
        images, segmentations = self._unpack(data)
        with tf.GradientTape() as tape:
            terms = self._loss_terms(images, segmentations)
            regularization = self._regularization()
            # Keras' optimizer sums gradients over replicas: average over the *global* batch.
            loss = tf.nn.compute_average_loss(self._objective(terms)) + \
                tf.nn.scale_regularization_loss(regularization)
            # Under mixed_float16, `compile` wraps the optimizer in a LossScaleOptimizer, whose
            # `apply` unscales the gradients (and skips a step whose gradients overflowed).
            scaled_loss = self.optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled_loss, self.trainable_variables)
        self.optimizer.apply(gradients, self.trainable_variables)
        logs = self._update_trackers(terms, regularization)
        return self._after_train_step(terms, segmentations, logs)

    def test_step(self, data):
        """The loss terms on `(images, segmentations)`; on `(images, annotations)` or
        `(images, annotations, annotation_weights)` also `ged`.

        With all annotations per image, `annotations (b, A, h, w)` and optional weights `(b, A)`
        (e.g. the exact mode probabilities; uniform when absent), the loss terms use one
        annotation per image drawn with those weights, and `ged` is the generalized energy
        distance of `ged_samples` samples per image (stateless seed `GED_SEED`) against
        all annotations: `fit(validation_data=...)` then logs `val_ged`. (When one `evaluate`
        function has seen both kinds of labels, Keras' relaxed trace cannot tell them apart; a
        single segmentation then counts as one annotation and `ged` is reported for it too.)
        """
        images, labels, weights = keras.utils.unpack_x_y_sample_weight(data)
        images = self._check_images(images)
        self._ensure_built(images)
        labels = tf.convert_to_tensor(labels)
        if labels.shape.rank is None:
            # Keras traces test_step with `reduce_retracing`: once it has seen (b, h, w) labels
            # and (b, A, h, w) annotations, the relaxed trace gets labels of unknown rank. Read
            # them as (b, A, h, w), a single map being A = 1.
            shape = tf.shape(images)
            labels = tf.reshape(labels, tf.concat([shape[:1], [-1], shape[1:3]], axis=0))
        if labels.shape.rank == 4 and not (labels.shape[-1] == 1 and labels.shape[1:3]
                                           .is_compatible_with(images.shape[1:3])):
            annotations = self._check_labels("annotations", "(b, A, h, w)", labels, images)
            return self._test_step_annotations(images, annotations, weights)
        segmentations = self._check_segmentations(labels, images)
        return self._update_trackers(self._loss_terms(images, segmentations),
                                     self._regularization())

    def _test_step_annotations(self, images, annotations, weights):
        count = tf.shape(annotations)[1]
        if weights is None:
            log_weights = tf.zeros(tf.stack([tf.shape(annotations)[0], count]))
        else:
            weights = tf.broadcast_to(tf.cast(weights, tf.float32), tf.shape(annotations)[:2])
            log_weights = tf.math.log(weights)
        index = keras.random.categorical(log_weights, 1, seed=self.seed_generator)
        segmentations = tf.gather(annotations, index[:, 0], batch_dims=1)
        logs = self._update_trackers(self._loss_terms(images, segmentations),
                                     self._regularization())
        samples = tf.argmax(self.sample(images, self.ged_samples, seed=GED_SEED), axis=-1)
        self.ged_tracker.update_state(samples, annotations, weights)
        return {**logs, "ged": self.ged_tracker.result()}

    @property
    def metrics(self):
        return [*self._trackers(), self.ged_tracker]

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
        """
        if "verbose" not in kwargs and len(args) < 3:  # Keras' "auto" draws bars into files
            kwargs["verbose"] = _console.progress_verbosity()
        self_shuffling = (tf.data.Dataset, tf.distribute.DistributedDataset,
                          keras.utils.PyDataset)
        if ((isinstance(x, self_shuffling) or inspect.isgenerator(x))
                and "shuffle" not in kwargs and len(args) < 7):
            kwargs["shuffle"] = False
        callbacks = kwargs.get("callbacks", args[3] if len(args) > 3 else None)
        for callback in callbacks or ():
            if (getattr(callback, "monitor", None) in ("ged", "val_ged")
                    and getattr(callback, "mode", None) == "auto"):
                callback.mode = "min"
        if not self.built and isinstance(x, tf.data.Dataset) \
                and isinstance(x.element_spec, (tuple, list)):
            shape = tuple(x.element_spec[0].shape)
            if len(shape) == 4 and shape[-1] is not None:
                self.build(shape)
        self._check_fit_labels(x, y, kwargs.get("validation_data",
                                                args[5] if len(args) > 5 else None))
        self._build_optimizer()
        return super().fit(x, y, *args, **kwargs)

    def _check_fit_labels(self, x, y, validation_data):
        """Refuse 0/255 masks and labels out of range before the first step (the train step
        refuses out-of-range labels too, but not masks whose foreground is all ignored)."""
        for data, where in ((x, "`fit`'s dataset"), (validation_data, "`validation_data`")):
            if isinstance(data, tf.data.Dataset):
                checks.check_dataset(data, self.num_classes, f"The segmentations of {where}",
                                     count=checks.PEEK_BATCHES)
            elif isinstance(data, (tuple, list)) and len(data) > 1:
                checks.check_labels(data[1], self.num_classes,
                                    f"The segmentations of {where}")
        if y is not None and not isinstance(x, tf.data.Dataset):
            checks.check_labels(y, self.num_classes, "`fit`'s y")

    # ------------------------------------------------------------------ config
    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            num_channels=list(self.num_channels),
            convs_per_block=self.convs_per_block,
            weight_decay=self.weight_decay,
            seed=self.seed,
            ged_samples=self.ged_samples,
            ged_classes=self.ged_classes,
        )
        return config
