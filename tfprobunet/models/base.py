"""The train/test contract every model of the package shares: a `keras.Model` that draws
segmentations (`SegmentationSampler`).

A model subclasses it with its layers and two methods:

- `loss_terms(images, segmentations)` -> dict of per-example `(b,)` terms, `"loss"` first (the
  others, e.g. `"kl"`, are logged beside it): what training minimises;
- `sample(images, num_samples=1, seed=None)` -> logits `(b, m, h, w, K)`: m segmentations per
  image, reproducible when `seed` is given. `evaluate`, `fit`'s `val_ged` and the serving
  export use only this.

The base class then gives the training step around the per-example loss and a validation step
that also scores `ged` against all annotations. The input checks live in `checks.py`, the
departures from `keras.Model`'s `compile` / `fit` in `overrides.py`.

`UNetWithHeads` is the one builder of the paper's four baselines (`DropoutUNet`, `UNetEnsemble`,
`MHeads`, `Image2ImageVAE`): U-Nets with 1x1-convolution heads, their `build`, the
`reconstruction` argument and sampling by running copies of each image.
"""

import numbers

import keras
import tensorflow as tf

from tfprobunet import layers as layers_lib
from tfprobunet import losses
from tfprobunet import metrics as metrics_lib
from tfprobunet.catalog import IGNORE_LABEL
from tfprobunet.defaults import check_model_numbers
from tfprobunet.models import checks
from tfprobunet.models.checks import check_num_samples, seed_pair
from tfprobunet.models.overrides import KerasOverrides

# Validation samples for `ged` are drawn with this stateless seed: the same weights and data give
# the same `val_ged`, so epochs and tuner trials are compared on the same noise.
GED_SEED = 0


def cycle_samples(outputs, num_samples):
    """`(b, m, h, w, K)` from `outputs (b, M, h, w, K)`: sample i is output i mod M (the
    ensemble's members, the M heads)."""
    return tf.gather(outputs, tf.range(num_samples) % tf.shape(outputs)[1], axis=1)


class SegmentationSampler(KerasOverrides, keras.Model):
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
    # Whether `train` gives the model every annotation of an image, `(images, annotations
    # (b, A, h, w)[, annotation_weights (b, A)])`, rather than one drawn per image and step
    # (`data.training_pipeline(all_annotations=...)`): MoSE's optimal transport needs them all.
    TRAINS_ON_ALL_ANNOTATIONS = False

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
        checks.check_model_sizes(dict(num_channels=num_channels, convs_per_block=convs_per_block,
                                      ged_samples=ged_samples))
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

    # ------------------------------------------------------------------ input checks
    def _check_images(self, images):
        """`images (b, h, w, c)` as float, checked (`checks.images`)."""
        return checks.images(images, self.image_channels, self.num_channels)

    def _check_segmentations(self, segmentations, images):
        return checks.segmentations(segmentations, images, self.num_classes)

    def _check_labels(self, name, layout, labels, images):
        return checks.labels(name, layout, labels, images, self.num_classes)

    def _ensure_built(self, images):
        if not self.built:
            self.build(tuple(images.shape))

    def _checked_and_built(self, images):
        """`images (b, h, w, c)` as float, checked, the model built for them."""
        images = self._check_images(images)
        self._ensure_built(images)
        return images

    # ------------------------------------------------------------------ randomness
    def _noise(self, shape, seed=None):
        """Standard normal noise: from the model's seed generator, or stateless from `seed`
        (the same with XLA: `checks.RNG_ALGORITHM`)."""
        if seed is None:
            return keras.random.normal(shape, seed=self.seed_generator)
        return checks.stateless_normal(shape, seed_pair(seed))

    # ------------------------------------------------------------------ training
    def _unpack(self, data):
        if not isinstance(data, (tuple, list)) or len(data) < 2:
            raise ValueError("The model trains on (images, segmentations) pairs: images "
                             "(b, h, w, c) float, segmentations (b, h, w) int. Received a "
                             f"{type(data).__name__} of length "
                             f"{len(data) if isinstance(data, (tuple, list)) else 1}.")
        return self._check_pair(data[0], data[1])

    def _check_pair(self, images, segmentations):
        images = self._checked_and_built(images)
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


class UNetWithHeads(SegmentationSampler):
    """The builder of the baselines of Kohl et al. 2018 (section 3, Fig. 2): a
    `SegmentationSampler` made of U-Nets (`layers.UNet`, images `(b, h, w, c)` to features
    `(b, h, w, F)`, F = `num_channels[0]`), each with a 1x1-convolution head on its features,
    trained on the pixel cross-entropy. `DropoutUNet`, `UNetEnsemble`, `MHeads` and
    `Image2ImageVAE` subclass it.

    Args:
        num_classes, num_channels, convs_per_block, weight_decay, seed, ged_samples,
            ged_classes: as for `SegmentationSampler`.
        reconstruction: `"sum"` of the pixel cross-entropy over pixels (as the Probabilistic
            U-Net's) or `"mean"`.

    A subclass calls this constructor, checks its own arguments, creates its U-Nets and heads
    with `_make_unet` and `_make_head`, assigns them to its attributes and calls
    `_create_trackers` (the attributes' names and order fix the layout of its `.keras` file; the
    order of creation, its initial weights under `keras.utils.set_random_seed`). It lists them
    in pairs in `_unets_and_heads`, which `build` builds: each U-Net on
    `_unet_input_shape(input_shape)`, each head on `(b, h, w, F)`.
    """

    def __init__(self, num_classes=2, num_channels=(32, 64, 128, 192), convs_per_block=3,
                 reconstruction="sum", weight_decay=1e-5, seed=None, ged_samples=16,
                 ged_classes=None, **kwargs):
        super().__init__(num_classes, num_channels, convs_per_block, weight_decay, seed,
                         ged_samples, ged_classes, **kwargs)
        if reconstruction not in losses.RECONSTRUCTIONS:
            raise ValueError(f"`reconstruction` must be one of {losses.RECONSTRUCTIONS}. "
                             f"Received: reconstruction={reconstruction!r}")
        self.reconstruction = reconstruction

    def _make_unet(self, name="unet"):
        """A `layers.UNet` of the model's levels, computing with its dtype policy."""
        with layers_lib.own_policy(self):
            return layers_lib.UNet(self.num_channels, self.convs_per_block, self.weight_decay,
                                   name=name)

    def _make_head(self, channels, name="logits"):
        """A 1x1 convolution with `channels` outputs (K, or M * K for M heads in one) for the
        U-Net's features `(b, h, w, F)`, computing with the model's dtype policy."""
        with layers_lib.own_policy(self):
            return keras.layers.Conv2D(channels, 1, name=name)

    def _unets_and_heads(self):
        """The model's `(unet, head)` pairs, in the order `build` builds them."""
        raise NotImplementedError(f"{type(self).__name__} must implement `_unets_and_heads`.")

    def _unet_input_shape(self, input_shape):
        """The U-Nets' input shape for images of `input_shape (b, h, w, c)`: the same, unless a
        subclass feeds them more channels."""
        return input_shape

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        self.image_channels = input_shape[-1]
        for unet, head in self._unets_and_heads():
            unet.build(self._unet_input_shape(input_shape))
            head.build((None, None, None, self.num_channels[0]))
        self.built = True

    def _sample_copies(self, images, num_samples, copy_logits):
        """Logits `(b, m, h, w, K)` of `num_samples` segmentations per image of `images
        (b, h, w, c)`: `copy_logits` maps `(b * m, h, w, c)`, each image repeated m times in a
        row, to logits `(b * m, h, w, K)`, drawing each copy's randomness itself."""
        check_num_samples(num_samples, images, self.num_classes)
        images = self._checked_and_built(images)
        shape = tf.shape(images)
        logits = copy_logits(tf.repeat(images, num_samples, axis=0))
        return tf.reshape(logits, tf.concat([shape[:1], [num_samples], shape[1:3],
                                             [self.num_classes]], axis=0))

    def get_config(self):
        config = super().get_config()
        config.update(reconstruction=self.reconstruction)
        return config
