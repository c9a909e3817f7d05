"""`ProbabilisticUNet`: the model of Kohl et al., "A Probabilistic U-Net for Segmentation of
Ambiguous Images", NeurIPS 2018, as a subclassed `keras.Model`."""

import inspect
import warnings

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from tfprobunet import layers as layers_lib
from tfprobunet import losses
from tfprobunet import metrics as metrics_lib

tfd = tfp.distributions

IGNORE_LABEL = losses.IGNORE_LABEL
# Validation samples for `ged` are drawn with this stateless seed: the same weights and data give
# the same `val_ged`, so epochs and tuner trials are compared on the same noise.
GED_SEED = 0
# `compile` arguments the model has its own of (the beta-ELBO, its trackers): refused if given.
_BUILT_IN_COMPILE_ARGS = ("loss", "loss_weights", "metrics", "weighted_metrics")
# GECO: the moving average's decay (the Hierarchical Probabilistic U-Net's) and the range the
# Lagrange multiplier is kept in.
GECO_DECAY = 0.99
GECO_LAMBDA_RANGE = (1e-6, 1e6)


def _require(condition, message, tensor):
    """Return `tensor` if `condition` holds. Eagerly, raise `ValueError(message)`; in a graph, the
    returned tensor depends on an assert with the same message, so nothing computed from it runs
    (and fails less clearly) before the check."""
    if tf.executing_eagerly():
        if not bool(condition):
            raise ValueError(message)
        return tensor
    with tf.control_dependencies([tf.debugging.assert_equal(condition, True, message=message)]):
        return tf.identity(tensor)


def _seed_pair(seed):
    """A stateless-RNG seed, `(2,)` int32, from an int or a `(2,)` tensor."""
    if isinstance(seed, int):
        return tf.constant([seed, 0], tf.int32)
    seed = tf.cast(seed, tf.int32)
    if seed.shape.rank != 1 or seed.shape[0] != 2:
        raise ValueError(f"`seed` must be an int or an int tensor of shape (2,). Received shape "
                         f"{seed.shape}")
    return seed


@keras.saving.register_keras_serializable(package="tfprobunet")
class ProbabilisticUNet(keras.Model):
    """The Probabilistic U-Net: a U-Net whose output depends on a latent z drawn from a
    prior net P(z|X); trained as a conditional VAE with a posterior net Q(z|X, Y).

    For one image, `sample(images, m)` gives m consistent segmentations whose frequencies
    follow the ambiguity seen in training. The U-Net and the prior run once per image; only
    the small `FComb` head runs per sample.

    Args:
        num_classes: K, number of classes (2 for binary lesion masks).
        num_channels: U-Net filters per level; LIDC configuration `[32, 64, 128, 192]`.
            Image height and width must be multiples of `2**(len(num_channels) - 1)`.
        convs_per_block: 3x3 convolutions per U-Net block (official: 3).
        latent_dim: N, the latent dimension (official: 6).
        fcomb_layers: hidden 1x1 convolutions in f_comb (official: 3).
        fcomb_channels: filters of those convolutions; None (official) takes the U-Net's
            first-level channels, `num_channels[0]`. A U-Net whose first level is narrow (the
            `cpu` preset's 16) gives f_comb too few units to decode every mode: with 16, one of
            the five *flips* classes was never decoded from z on some seeds, with 64 on none
            (README, "What calibrates at CPU budgets"). Not in the paper.
        beta: weight of the KL term in the loss (official: 1.0).
        reconstruction: `"sum"` of the pixel cross-entropy over pixels, mean over the batch
            (official), or `"mean"` over pixels.
        kl: `"analytic"` KL (official) or `"sampled"` one-sample estimate.
        use_posterior_mean: decode the posterior mean instead of a posterior sample during
            training. Off by default (the official setting); on, training is deterministic,
            which is what reproducibility tests and strategy comparisons use.
        weight_decay: L2 coefficient on kernels and biases (official: 1e-5, as
            `weight_decay * sum(w**2) / 2`). 0 disables it.
        seed: int seed of the model's random draws (posterior samples in training, prior samples
            in `sample` when no seed is given). None: a random seed.
        ged_samples: samples per image for the `ged` metric that `evaluate` and `fit`'s
            validation report when the data yields all annotations per image (see `test_step`).
        ged_classes: the classes `ged` scores (default: class 1 for K = 2, all K otherwise;
            the official Cityscapes evaluation scores the flipped classes and their twins).
        geco_target: None (the paper's beta-ELBO), or kappa in nats per pixel: train with GECO
            (Rezende & Viola 2018, as the Hierarchical Probabilistic U-Net does), minimising
            `beta * KL` subject to a reconstruction of at most kappa per pixel. The loss becomes
            `lambda * reconstruction + beta * KL`; the Lagrange multiplier lambda (a model
            weight, `geco_lambda`, starting at 1) grows while the moving average (decay 0.99)
            of the reconstruction per pixel is above kappa and shrinks while below, so the KL
            pushes the posteriors as wide as the reconstruction allows. Not in the paper.
        geco_rate: lambda changes by a factor of at most `exp(geco_rate)` per step:
            `lambda *= exp(geco_rate * tanh(average / kappa - 1))`.
        beta_warmup_steps: train with a KL weight rising linearly from 0 to `beta` over this
            many optimizer steps (KL annealing, not in the paper), so that the posterior puts
            information into every latent direction before the KL pulls it towards the prior.
            The logged `loss` is the beta-ELBO with the full `beta` throughout. 0: off.

    Shapes: images `(b, h, w, c)` float32; segmentations `(b, h, w)` int with values in
    `[0, num_classes)` or 255 (ignored).

    Example:

    ```python
    model = tfprobunet.ProbabilisticUNet(num_classes=2, num_channels=[16, 32, 64])
    model.compile(optimizer=keras.optimizers.Adam(1e-4))
    model.fit(train_ds, epochs=10)            # yields (images, segmentations)
    logits = model.sample(images, 16)         # (b, 16, h, w, 2)
    masks = keras.ops.argmax(logits, -1)
    ```
    """

    def __init__(self, num_classes=2, num_channels=(32, 64, 128, 192), convs_per_block=3,
                 latent_dim=6, fcomb_layers=3, fcomb_channels=None, beta=1.0,
                 reconstruction="sum", kl="analytic", use_posterior_mean=False, weight_decay=1e-5,
                 seed=None, ged_samples=16, ged_classes=None, geco_target=None, geco_rate=0.01,
                 beta_warmup_steps=0, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError("`num_classes` must be an integer >= 2 (2 for a binary mask). "
                             f"Received: num_classes={num_classes!r}")
        if num_classes > IGNORE_LABEL:
            raise ValueError(f"`num_classes` must be <= {IGNORE_LABEL}: label {IGNORE_LABEL} "
                             f"means 'ignore'. Received: num_classes={num_classes}")
        num_channels = layers_lib.check_num_channels(num_channels)
        if reconstruction not in losses.RECONSTRUCTIONS:
            raise ValueError(f"`reconstruction` must be one of {losses.RECONSTRUCTIONS}. "
                             f"Received: reconstruction={reconstruction!r}")
        if kl not in losses.KL_ESTIMATORS:
            raise ValueError(f"`kl` must be one of {losses.KL_ESTIMATORS}. Received: kl={kl!r}")
        if beta < 0:
            raise ValueError(f"`beta` must be >= 0. Received: beta={beta}")
        if geco_target is not None and not geco_target > 0:
            raise ValueError("`geco_target` must be None or > 0 (nats per pixel, e.g. 0.01). "
                             f"Received: geco_target={geco_target!r}")
        if not isinstance(beta_warmup_steps, int) or beta_warmup_steps < 0:
            raise ValueError("`beta_warmup_steps` must be an integer >= 0. Received: "
                             f"beta_warmup_steps={beta_warmup_steps!r}")
        if not geco_rate > 0:
            raise ValueError(f"`geco_rate` must be > 0. Received: geco_rate={geco_rate!r}")
        if fcomb_channels is not None and (not isinstance(fcomb_channels, int)
                                           or fcomb_channels < 1):
            raise ValueError("`fcomb_channels` must be None (the U-Net's first-level channels) "
                             f"or a positive integer. Received: fcomb_channels={fcomb_channels!r}")
        if not isinstance(ged_samples, int) or ged_samples < 1:
            raise ValueError(f"`ged_samples` must be an integer >= 1. Received: {ged_samples!r}")

        gaussian_args = dict(latent_dim=latent_dim, num_channels=num_channels,
                             convs_per_block=convs_per_block, weight_decay=weight_decay)
        with layers_lib.own_policy(self):  # mixed precision: the parts compute as the model
            self.unet = layers_lib.UNet(num_channels, convs_per_block, weight_decay, name="unet")
            self.prior = layers_lib.AxisAlignedGaussian(**gaussian_args, name="prior")
            self.posterior = layers_lib.AxisAlignedGaussian(**gaussian_args, name="posterior")
            self.fcomb = layers_lib.FComb(num_classes, fcomb_channels or num_channels[0],
                                          fcomb_layers, weight_decay, name="fcomb")
        self.seed_generator = keras.random.SeedGenerator(seed, name="seed_generator")
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.reconstruction_tracker = keras.metrics.Mean(name="reconstruction")
        self.kl_tracker = keras.metrics.Mean(name="kl")
        self.ged_tracker = metrics_lib.GeneralizedEnergyDistance(num_classes, ged_classes,
                                                                 name="ged")

        self.num_classes = num_classes
        self.num_channels = num_channels
        self.convs_per_block = convs_per_block
        self.latent_dim = latent_dim
        self.fcomb_layers = fcomb_layers
        self.fcomb_channels = fcomb_channels
        self.beta = float(beta)
        self.reconstruction = reconstruction
        self.kl = kl
        self.use_posterior_mean = use_posterior_mean
        self.weight_decay = weight_decay
        self.seed = seed
        self.ged_samples = ged_samples
        self.ged_classes = self.ged_tracker.classes
        self.geco_target = None if geco_target is None else float(geco_target)
        self.geco_rate = float(geco_rate)
        self.beta_warmup_steps = beta_warmup_steps
        self.image_channels = None

    # ------------------------------------------------------------------ building
    def build(self, input_shape):
        """Create every weight, the posterior's included, from the images' shape `(b, h, w, c)`.

        Keras builds a model by tracing `call()`, which never runs the posterior net: without
        this, `fit` under a distribution strategy fails on the posterior's late variables.
        """
        input_shape = tuple(input_shape)
        if len(input_shape) != 4 or input_shape[-1] is None:
            raise ValueError("The model is built from images of shape (b, h, w, c) with a known "
                             f"channel count c. Received: input_shape={input_shape}")
        channels = input_shape[-1]
        self.image_channels = channels
        self.unet.build(input_shape)
        self.prior.build(input_shape)
        self.posterior.build(input_shape[:-1] + (channels + self.num_classes,))
        self.fcomb.build((None, None, None, self.num_channels[0]), (None, self.latent_dim))
        if self.geco_target is not None:
            # Every replica computes the same update from all-reduced values.
            geco = dict(shape=(), trainable=False, aggregation="only_first_replica")
            self.geco_lambda = self.add_weight(initializer="ones", name="geco_lambda", **geco)
            self.geco_average = self.add_weight(initializer="zeros", name="geco_average",
                                                **geco)
        self.built = True

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
        """Keras' `Model.export` of `call` (logits at the prior mean), with images of any batch
        size, height and width by default: `input_signature=[(None, None, None, c) float32]`.

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
        images = tf.convert_to_tensor(images)
        if not images.dtype.is_floating:
            raise ValueError(f"`images` must be float, e.g. float32 scaled to [0, 1]. Received "
                             f"dtype {images.dtype.name}.")
        shape = images.shape
        if shape.rank != 4:
            raise ValueError(f"`images` must have rank 4, (b, h, w, c). Received shape {shape} "
                             f"(rank {shape.rank}); add a batch axis for one image.")
        if self.image_channels is not None and shape[-1] != self.image_channels:
            raise ValueError(f"`images` must have {self.image_channels} channel(s), as the model "
                             f"was built with. Received shape {shape} with {shape[-1]} channels.")
        layers_lib.check_spatial_size(shape[1], shape[2], self.num_channels)
        if shape[1] is None or shape[2] is None:
            divisor = layers_lib.size_divisor(self.num_channels)
            dynamic = tf.shape(images)
            images = _require(
                tf.equal(dynamic[1] % divisor + dynamic[2] % divisor, 0),
                f"Image height and width must be divisible by {divisor} for "
                f"num_channels={list(self.num_channels)}.", images)
        return _require(tf.reduce_all(tf.math.is_finite(images)),
                        f"`images` contain NaN or Inf values (shape {shape}); the model needs "
                        "finite pixel values, e.g. float32 in [0, 1].", images)

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
            labels = _require(tf.reduce_all(tf.shape(labels)[-2:] == tf.shape(images)[1:3]),
                              message, labels)
        valid = ((labels >= 0) & (labels < self.num_classes)) | (labels == IGNORE_LABEL)
        return _require(tf.reduce_all(valid),
                        f"`{name}` must hold labels in [0, {self.num_classes - 1}] "
                        f"(num_classes={self.num_classes}) or {IGNORE_LABEL} (ignore); they hold "
                        "other values.", labels)

    def _ensure_built(self, images):
        if not self.built:
            self.build(tuple(images.shape))

    # ------------------------------------------------------------------ the model's operations
    def _noise(self, shape, seed=None):
        if seed is None:
            return keras.random.normal(shape, seed=self.seed_generator)
        return tf.random.stateless_normal(shape, seed=_seed_pair(seed))

    def features(self, images):
        """Run the U-Net and the prior net once.

        Args:
            images: `(b, h, w, c)` float.

        Returns:
            `(features, prior)`: features `(b, h, w, F)` with F = `num_channels[0]`, and the
            prior `tfd.MultivariateNormalDiag` with batch shape `(b,)`, event shape `(N,)`.
        """
        images = self._check_images(images)
        self._ensure_built(images)
        return self.unet(images), self.prior(images)

    def decode(self, features, z):
        """Segmentation logits for given features and latents: only `FComb` runs.

        Args:
            features: `(b, h, w, F)` from `features()`.
            z: `(b, N)` or `(b, m, N)`.

        Returns:
            logits `(b, h, w, K)` or `(b, m, h, w, K)`.
        """
        z = tf.cast(tf.convert_to_tensor(z), tf.float32)
        if z.shape.rank not in (2, 3) or z.shape[-1] != self.latent_dim:
            raise ValueError(f"`z` must have shape (b, {self.latent_dim}) or (b, m, "
                             f"{self.latent_dim}). Received shape {z.shape}.")
        return self.fcomb(features, z)

    def sample(self, images, num_samples=1, seed=None):
        """Draw `num_samples` segmentations per image from the prior.

        Args:
            images: `(b, h, w, c)` float.
            num_samples: m >= 1.
            seed: None (the model's seed generator), an int, or a `(2,)` int tensor for
                stateless, reproducible draws.

        Returns:
            logits `(b, m, h, w, K)`; `argmax(-1)` gives the label maps.
        """
        if isinstance(num_samples, int) and num_samples < 1:
            raise ValueError(f"`num_samples` must be >= 1. Received: num_samples={num_samples}")
        features, prior = self.features(images)
        return self.decode(features, self.prior_latents(prior.loc, prior.stddev(), num_samples,
                                                        seed))

    def prior_latents(self, loc, scale, num_samples, seed=None):
        """Draw `num_samples` latents per image from the prior N(loc, diag(scale^2)).

        The draw that `sample` and the exported serving signatures share: the same seed gives
        the same z in both.

        Args:
            loc: `(b, N)` prior means, e.g. `features(images)[1].loc`.
            scale: `(b, N)` prior standard deviations, `> 0`.
            num_samples: m >= 1, an int or an int32 scalar tensor.
            seed: as for `sample`.

        Returns:
            z `(b, m, N)` = `loc + scale * noise`.
        """
        noise = self._noise(tf.stack([tf.shape(loc)[0], num_samples, self.latent_dim]), seed)
        return loc[:, None] + scale[:, None] * noise

    def posterior_distribution(self, images, segmentations):
        """Q(z | X, Y): the posterior net on `concat(images, one_hot(segmentations) - 0.5)`.

        Args:
            images: `(b, h, w, c)` float. segmentations: `(b, h, w)` int.

        Returns:
            `tfd.MultivariateNormalDiag`, batch shape `(b,)`, event shape `(N,)`.
        """
        images, segmentations = self._check_pair(images, segmentations)
        return self.posterior(self._posterior_input(images, segmentations))

    def _posterior_input(self, images, segmentations):
        # Label 255 one-hot encodes to zeros, so ignored pixels read as -0.5 in every channel.
        one_hot = tf.one_hot(segmentations, self.num_classes, dtype=images.dtype)
        return tf.concat([images, one_hot - 0.5], axis=-1)

    def reconstruct(self, images, segmentations, use_posterior_mean=True, seed=None):
        """Logits `(b, h, w, K)` decoded from the posterior given the images and segmentations:
        at its mean (default) or at a sample. The prior net does not run."""
        posterior = self.posterior_distribution(images, segmentations)
        z = posterior.loc
        if not use_posterior_mean:
            z = z + posterior.stddev() * self._noise(tf.shape(z), seed)
        return self.decode(self.unet(images), z)

    def call(self, images, training=None):
        """Logits `(b, h, w, K)` decoded at the prior mean: deterministic, what `predict` gives."""
        features, prior = self.features(images)
        return self.decode(features, prior.loc)

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

    def elbo_terms(self, images, segmentations):
        """Per-example `loss`, `reconstruction` and `kl`, each `(b,)`: the negative beta-ELBO
        with z drawn from the posterior (or at its mean if `use_posterior_mean`)."""
        return self._elbo_terms(*self._check_pair(images, segmentations))

    def _elbo_terms(self, images, segmentations):
        features = self.unet(images)
        p_loc, p_log_scale = self.prior.loc_log_scale(images)
        q_loc, q_log_scale = self.posterior.loc_log_scale(
            self._posterior_input(images, segmentations))
        if self.use_posterior_mean:
            noise = tf.zeros_like(q_loc)
        else:
            noise = self._noise(tf.shape(q_loc))
        z = q_loc + tf.exp(q_log_scale) * noise
        logits = self.decode(features, z)
        return losses.elbo_loss(segmentations, logits, noise, q_loc, q_log_scale, p_loc,
                                p_log_scale, beta=self.beta, reconstruction=self.reconstruction,
                                kl=self.kl)

    def _regularization(self):
        if not self.losses:
            return tf.constant(0.0)
        return tf.add_n([tf.cast(loss, tf.float32) for loss in self.losses])

    def _update_trackers(self, terms, regularization):
        # Weighted by the replica's batch size, so the trackers (summed over replicas) hold the
        # global batch mean whatever the split.
        weight = tf.cast(tf.shape(terms["loss"])[0], tf.float32)
        self.loss_tracker.update_state(tf.reduce_mean(terms["loss"]) + regularization, weight)
        self.reconstruction_tracker.update_state(tf.reduce_mean(terms["reconstruction"]), weight)
        self.kl_tracker.update_state(tf.reduce_mean(terms["kl"]), weight)
        trackers = (self.loss_tracker, self.reconstruction_tracker, self.kl_tracker)
        return {m.name: m.result() for m in trackers}

    def _geco_update(self, reconstruction, segmentations):
        """One GECO step of the Lagrange multiplier from the batch's reconstruction `(b,)`."""
        if self.reconstruction == "sum":
            pixels = tf.reduce_sum(tf.cast(segmentations != IGNORE_LABEL, tf.float32), (1, 2))
            reconstruction = tf.math.divide_no_nan(reconstruction, pixels)
        value = tf.reduce_mean(reconstruction)
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            value = context.all_reduce("mean", value)
        average = GECO_DECAY * self.geco_average + (1.0 - GECO_DECAY) * (value - self.geco_target)
        self.geco_average.assign(average)
        step = tf.exp(self.geco_rate * tf.tanh(average / self.geco_target))
        self.geco_lambda.assign(tf.clip_by_value(self.geco_lambda * step, *GECO_LAMBDA_RANGE))

    def _kl_weight(self):
        """beta, ramped up from 0 over the first `beta_warmup_steps` optimizer steps."""
        if not self.beta_warmup_steps:
            return self.beta
        progress = tf.cast(self.optimizer.iterations, tf.float32) / self.beta_warmup_steps
        return self.beta * tf.minimum(progress, 1.0)

    def train_step(self, data):
        images, segmentations = self._unpack(data)
        with tf.GradientTape() as tape:
            terms = self._elbo_terms(images, segmentations)
            regularization = self._regularization()
            objective = terms["loss"]
            if self.geco_target is not None or self.beta_warmup_steps:
                weight = 1.0 if self.geco_target is None else tf.stop_gradient(self.geco_lambda)
                objective = weight * terms["reconstruction"] + self._kl_weight() * terms["kl"]
            # Keras' optimizer sums gradients over replicas: average over the *global* batch.
            loss = tf.nn.compute_average_loss(objective) + tf.nn.scale_regularization_loss(
                regularization)
            # Under mixed_float16, `compile` wraps the optimizer in a LossScaleOptimizer, whose
            # `apply` unscales the gradients (and skips a step whose gradients overflowed).
            scaled_loss = self.optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled_loss, self.trainable_variables)
        self.optimizer.apply(gradients, self.trainable_variables)
        logs = self._update_trackers(terms, regularization)
        if self.geco_target is not None:
            self._geco_update(terms["reconstruction"], segmentations)
            logs["geco_lambda"] = tf.identity(self.geco_lambda)
        return logs

    def test_step(self, data):
        """The loss terms on `(images, segmentations)`; on `(images, annotations)` or
        `(images, annotations, annotation_weights)` also `ged`.

        With all annotations per image, `annotations (b, A, h, w)` and optional weights `(b, A)`
        (e.g. the exact mode probabilities; uniform when absent), the loss terms use one
        annotation per image drawn with those weights, and `ged` is the generalized energy
        distance of `ged_samples` prior samples per image (stateless seed `GED_SEED`) against
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
        return self._update_trackers(self._elbo_terms(images, segmentations),
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
        logs = self._update_trackers(self._elbo_terms(images, segmentations),
                                     self._regularization())
        samples = tf.argmax(self.sample(images, self.ged_samples, seed=GED_SEED), axis=-1)
        self.ged_tracker.update_state(samples, annotations, weights)
        return {**logs, "ged": self.ged_tracker.result()}

    @property
    def metrics(self):
        return [self.loss_tracker, self.reconstruction_tracker, self.kl_tracker, self.ged_tracker]

    def compile(self, optimizer="rmsprop", **kwargs):
        """`keras.Model.compile` with an optimizer only: the loss is the built-in beta-ELBO
        and the model reports `loss`, `reconstruction`, `kl` and, on validation data with all
        annotations, `ged`. A `loss`, `loss_weights`, `metrics` or `weighted_metrics` would be
        ignored, so they are refused."""
        given = {name: kwargs.pop(name) for name in _BUILT_IN_COMPILE_ARGS if kwargs.get(name)}
        if given:
            raise ValueError(
                "ProbabilisticUNet trains on its built-in beta-ELBO (cross-entropy + beta * KL) "
                "and reports loss, reconstruction, kl and ged itself: compile it with an "
                "optimizer only, e.g. model.compile(optimizer=keras.optimizers.Adam(1e-4)). "
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
                          "settings: the model trains on its built-in beta-ELBO and never used "
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
        """`keras.Model.fit`, with two defaults that suit this model:

        - on a dataset, which shuffles itself (`tfprobunet.data.training_pipeline`), or a
          generator, `shuffle` defaults to False instead of True, which Keras ignores there
          with a warning (arrays are still shuffled by default);
        - callbacks that monitor `ged` / `val_ged` in `mode="auto"` (`EarlyStopping`,
          `ModelCheckpoint`, `ReduceLROnPlateau`) get `mode="min"` set on them: Keras finds the
          direction of compiled metrics only, and would otherwise stop with "isn't able to
          automatically determine whether that metric should be maximized or minimized";
        - the model (from a dataset's element spec) and the optimizer's variables are built
          before the first step: otherwise the optimizer creates them inside the first traced
          step and TensorFlow traces the whole step a second time (twice the start-up).
        """
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
        self._build_optimizer()
        return super().fit(x, y, *args, **kwargs)

    # ------------------------------------------------------------------ config
    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            num_channels=list(self.num_channels),
            convs_per_block=self.convs_per_block,
            latent_dim=self.latent_dim,
            fcomb_layers=self.fcomb_layers,
            fcomb_channels=self.fcomb_channels,
            beta=self.beta,
            reconstruction=self.reconstruction,
            kl=self.kl,
            use_posterior_mean=self.use_posterior_mean,
            weight_decay=self.weight_decay,
            seed=self.seed,
            ged_samples=self.ged_samples,
            ged_classes=self.ged_classes,
            geco_target=self.geco_target,
            geco_rate=self.geco_rate,
            beta_warmup_steps=self.beta_warmup_steps,
        )
        return config
