"""`MixtureOfStochasticExperts`: the Mixture of Stochastic Experts (MoSE) of Gao et al.,
"Modeling Multimodal Aleatoric Uncertainty in Segmentation with Mixture of Stochastic Experts",
ICLR 2023, and its optimal-transport training loss.

"The reference" below: the authors' code, github.com/gaozhitong/MoSE-AUSeg (`models/MoSE.py`,
`utils/OTloss.py`, `experiments/lidc_proposed.py`, `experiments/cityscapes_proposed.py`).
"""

import math

import keras
import tensorflow as tf

from tfprobunet import layers as layers_lib
from tfprobunet import losses
from tfprobunet.defaults import MOSE_COSTS, check_model_numbers
from tfprobunet.models.base import SegmentationSampler
from tfprobunet.models.checks import MAX_COPIES, MAX_SAMPLES, check_model_sizes, \
    check_num_samples

COSTS = MOSE_COSTS
# Added to the experts' scales and to the gate's weights inside the KL's log (reference: 1e-8),
# and to the injected scale (reference `Noise_injector`: 1e-5).
EPSILON = 1e-8
SCALE_OFFSET = 1e-5


def expert_locations(num_experts, latent_dim, uniform):
    """The reference's initial expert means (`mu_init`): the first `min(K, 2**L)` experts on the
    corners of `{0, 1}^L` (expert k at the binary digits of k, most significant first), the
    others at `uniform`'s rows, `(K, L)` draws from U[0, 1)."""
    corners = min(num_experts, 2**latent_dim)
    bits = tf.bitwise.right_shift(tf.range(corners)[:, None],
                                  tf.range(latent_dim - 1, -1, -1)[None]) % 2
    return tf.concat([tf.cast(bits, uniform.dtype), uniform[corners:]], axis=0)


def iou_cost(probabilities, annotations, num_classes):
    """The reference's `'iou'` cost (LIDC): one minus the smoothed soft IoU, averaged over the
    classes but the first (background), between every sample and every annotation.

    Args:
        probabilities: `(b, n, h, w, K)` softmax probabilities of n samples.
        annotations: `(b, a, h, w)` int labels; pixels labelled 255 are left out of the pair.
        num_classes: K >= 2.

    Returns:
        `(b, n, a)` float32: `1 - mean_{c >= 1} (I_c + 1) / (U_c + 1)`, with `I_c` the sum over
        pixels of `p_c * y_c` and `U_c = sum(p_c) + sum(y_c) - I_c`.
    """
    classes = list(range(1, num_classes))
    indicators, valid = losses.class_indicators(annotations, classes)  # (b, a, P, C), (b, a, P)
    shape = tf.shape(probabilities)
    p = tf.reshape(tf.gather(tf.cast(probabilities, tf.float32), classes, axis=-1),
                   tf.stack([shape[0], shape[1], -1, len(classes)]))
    intersection = tf.einsum("bnpc,bapc->bnac", p, indicators)
    predicted = tf.einsum("bnpc,bap->bnac", p, valid)
    union = predicted + tf.reduce_sum(indicators, axis=2)[:, None] - intersection
    return 1.0 - tf.reduce_mean((intersection + 1.0) / (union + 1.0), axis=-1)


def ce_cost(logits, annotations, num_classes):
    """The reference's `'ce'` cost (Cityscapes): the pixel cross-entropy of every sample against
    every annotation, averaged over the annotation's pixels not labelled 255.

    Args:
        logits: `(b, n, h, w, K)`. annotations: `(b, a, h, w)` int. num_classes: K.

    Returns:
        `(b, n, a)` float32.
    """
    one_hot, valid = losses.class_indicators(annotations, list(range(num_classes)))
    shape = tf.shape(logits)
    log_p = tf.reshape(tf.nn.log_softmax(tf.cast(logits, tf.float32)),
                       tf.stack([shape[0], shape[1], -1, num_classes]))
    total = -tf.einsum("bnpc,bapc->bna", log_p, one_hot)
    return total / tf.maximum(tf.reduce_sum(valid, axis=-1), 1.0)[:, None]


def transport_plan(cost, annotation_weights=None, gamma=0.5):
    """The reference's coupling (`OT_loss.get_coupling_matrix`), no gradient: each annotation
    carries mass 1/a; annotations in the order of their best sample's cost, each sends its
    mass to the samples in the order of their cost, each sample taking at most `gamma` in all;
    the plan is then scaled by `annotation_weights * a`. With `gamma = 1` each annotation goes
    whole to its nearest sample.

    Args:
        cost: `(b, n, a)` costs of n samples against a annotations.
        annotation_weights: `(b, a)` weights summing to 1, or None (uniform).
        gamma: a sample's capacity, in (0, 1] (a float or a scalar tensor).

    Returns:
        plan `(b, n, a)` float32; its columns sum to the annotation weights when
        `n * gamma >= 1`.
    """
    cost = tf.stop_gradient(tf.cast(cost, tf.float32))
    shape = tf.shape(cost)
    depth = cost.shape[2] or shape[2]  # static where known: the loop keeps the plan's shape
    count = tf.cast(shape[2], tf.float32)
    order = tf.argsort(tf.reduce_min(cost, axis=1), axis=-1, stable=True)  # (b, a)
    by_annotation = tf.transpose(cost, (0, 2, 1))  # (b, a, n)

    def send(k, load, plan):
        annotation = order[:, k]
        ranks = tf.argsort(tf.gather(by_annotation, annotation, batch_dims=1), axis=-1,
                           stable=True)  # the samples, cheapest first
        room = tf.gather(tf.maximum(gamma - load, 0.0), ranks, batch_dims=1)
        taken = tf.minimum(tf.maximum(1.0 / count - tf.cumsum(room, axis=-1, exclusive=True),
                                      0.0), room)
        amount = tf.gather(taken, tf.argsort(ranks, axis=-1), batch_dims=1)  # sample order
        plan += amount[:, :, None] * tf.one_hot(annotation, depth)[:, None, :]
        return k + 1, load + amount, plan

    _, _, plan = tf.while_loop(lambda k, *_: k < shape[2], send,
                               (tf.constant(0), tf.zeros(shape[:2]), tf.zeros(shape)))
    if annotation_weights is not None:
        plan *= tf.cast(annotation_weights, tf.float32)[:, None, :] * count
    return tf.stop_gradient(plan)


def ot_loss(cost, sample_weights, annotation_weights=None, gamma=0.5, beta=1.0):
    """MoSE's loss per example (reference `OT_loss.forward`): the transport cost of
    `transport_plan` plus `beta` times the KL divergence from the plan's sample marginal to the
    samples' weights, which trains the gate.

    Args:
        cost: `(b, n, a)`, differentiable (`iou_cost`, `ce_cost`).
        sample_weights: `(b, n)` the samples' weights (the gate's expert weights / samples
            per expert).
        annotation_weights, gamma: as for `transport_plan`.
        beta: weight of the KL term (reference: 1; 10 with one annotation per LIDC image).

    Returns:
        dict of `(b,)` float32: `transport = sum(plan * cost)`, `kl = sum_n t_n log(t_n /
        (w_n + 1e-8)) / n` with `t = plan.sum(-1)` (PyTorch's `kl_div`, mean over samples, as
        the reference), `loss = transport + beta * kl`. Their batch means are the reference's.
    """
    cost = tf.cast(cost, tf.float32)
    plan = transport_plan(cost, annotation_weights, gamma)
    target = tf.reduce_sum(plan, axis=-1)
    log_weights = tf.math.log(tf.cast(sample_weights, tf.float32) + EPSILON)
    kl = tf.reduce_mean(tf.math.xlogy(target, target) - target * log_weights, axis=-1)
    transport = tf.reduce_sum(plan * cost, axis=(1, 2))
    return {"loss": transport + beta * kl, "transport": transport, "kl": kl}


def _pointwise(layer, x):
    """The dense `layer` on the last axis of `x` of any rank, as one 2-D product."""
    shape = tf.shape(x)
    y = layer(tf.reshape(x, (-1, x.shape[-1])))
    return tf.reshape(y, tf.concat([shape[:-1], [layer.units]], axis=0))


@keras.saving.register_keras_serializable(package="tfprobunet")
class MixtureOfStochasticExperts(SegmentationSampler):
    """MoSE: a U-Net, K experts each a Gaussian over a latent z, a gate that weighs the experts
    per image, and one decoder that injects z into the U-Net's features. A sample is: an
    expert k drawn with the gate's weight `pi_k(X)`, then `z ~ N(mu_k, sigma_k^2)`, then the
    decoder. The U-Net and the gate run once per image; only the decoder's 1x1 convolutions
    run per sample.

    As the reference: the experts' means and log-scales are trainable `(K, L)` weights (the
    image enters through the features and the gate), means initialised on the corners of
    `{0, 1}^L` (`expert_locations`), scales at 1/8; the gate is the global mean of the U-Net's
    deepest map, two ReLU dense layers of its width and a dense layer to K logits without bias,
    then a softmax; the decoder maps features F and z to `(F + W_r z + b_r) * (W_s z + b_s +
    1e-5)`, a 1x1 convolution to F + L channels, three 1x1 ReLU convolutions to F channels and
    one to the K logits.

    Training (`ot_loss`): S samples per expert (`samples_per_expert`), weighted `pi_k / S`,
    against every annotation of the batch (its weights, if the batch carries them, or uniform):
    the transport cost under the reference's greedy plan of capacity `gamma` per sample plus
    `beta` times the KL from the plan's sample marginal to the samples' weights. Batches of
    `(images, segmentations (b, h, w))` count as one annotation per image; `(images,
    annotations (b, A, h, w))` and `(images, annotations, annotation_weights (b, A))` give the
    reference's loss over all annotations.

    Two representations of the output: `sample(images, m)` draws the standard one (m equally
    weighted samples; the published tables' GED(16)), `weighted_sample(images, S)` the compact
    one (S samples per expert with weights `pi_k / S`: score it with
    `metrics.generalized_energy_distance(..., sample_weights=weights)`). `call` (`predict`)
    decodes the mean of the expert with the largest weight.

    Differences from the reference: the backbone is this package's U-Net (`layers.UNet`, no
    batch normalisation; the reference's decoder convolutions have none here either), with
    the library's defaults of four levels [32, 64, 128, 192] instead of the reference's seven
    [32, 64, 128, 192, 192, 192, 192] at 128 x 128 (the gate's width is the deepest level's, as
    there); weight decay acts on the U-Net's kernels (the reference's Adam decays every
    weight by 1e-5); Keras' default initialisers outside the U-Net. The reference raises
    `gamma` to 1 when the training loss has not improved for 10 epochs (LIDC; Cityscapes also
    a soft gradient `G < 1` and more samples per expert, not implemented); here `gamma` becomes
    1 after `gamma_switch_steps` optimizer steps, if given. The `'ce'` cost is averaged over
    all valid pixels (the reference's slice `[..., 1:]`, meant to leave out the background
    class, leaves out the first pixel there).

    Args:
        num_classes, num_channels, convs_per_block, weight_decay, seed, ged_samples,
            ged_classes: as for `ProbabilisticUNet` (`SegmentationSampler`).
        num_experts: K (reference: 4 for LIDC, 35 for Cityscapes).
        latent_dim: L, each expert's latent dimension (reference: 1 for LIDC, 5 for
            Cityscapes).
        samples_per_expert: S, samples per expert in training and the default of
            `weighted_sample` (reference: 4 for LIDC, 1 for Cityscapes).
        cost: `"iou"` (the reference's LIDC cost, on softmax probabilities) or `"ce"` (its
            Cityscapes cost, on logits).
        beta: weight of the KL term (reference: 1).
        gamma: each sample's transport capacity in (0, 1] (reference: 1/2 for LIDC, 1/32 for
            Cityscapes).
        gamma_switch_steps: None (gamma fixed), or the optimizer step from which gamma is 1.

    Shapes: images `(b, h, w, c)` float32; segmentations `(b, h, w)` or annotations
    `(b, A, h, w)` int with values in `[0, num_classes)` or 255 (ignored).

    Example:

    ```python
    model = tfprobunet.models.MixtureOfStochasticExperts(num_classes=2, num_experts=4)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.fit(train_ds, epochs=10)        # (images, annotations[, annotation_weights])
    logits = model.sample(images, 16, seed=0)               # (b, 16, h, w, 2)
    logits, weights = model.weighted_sample(images, 4)      # (b, 16, h, w, 2), (b, 16)
    ```
    """

    TERMS = ("loss", "transport", "kl")
    TRAINS_ON_ALL_ANNOTATIONS = True
    LOSS_NAME = "its optimal-transport loss (transport cost + beta * KL of the gate)"

    def __init__(self, num_classes=2, num_channels=(32, 64, 128, 192), convs_per_block=3,
                 num_experts=4, latent_dim=1, samples_per_expert=4, cost="iou", beta=1.0,
                 gamma=0.5, gamma_switch_steps=None, weight_decay=1e-5, seed=None,
                 ged_samples=16, ged_classes=None, **kwargs):
        super().__init__(num_classes, num_channels, convs_per_block, weight_decay, seed,
                         ged_samples, ged_classes, **kwargs)
        for name, value, most in (("num_experts", num_experts, MAX_COPIES),
                                  ("samples_per_expert", samples_per_expert, MAX_SAMPLES)):
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= most:
                raise ValueError(f"`{name}` must be an integer from 1 to {most:,} (reference: "
                                 f"4). Received: {name}={value!r}")
        if cost not in COSTS:
            raise ValueError(f"`cost` must be one of {COSTS}. Received: cost={cost!r}")
        check_model_numbers(dict(beta=beta, gamma=gamma))
        if gamma_switch_steps is not None and (not isinstance(gamma_switch_steps, int)
                                               or gamma_switch_steps < 0):
            raise ValueError("`gamma_switch_steps` must be None or an integer >= 0. Received: "
                             f"gamma_switch_steps={gamma_switch_steps!r}")
        check_model_sizes(dict(latent_dim=latent_dim))
        width, channels = self.num_channels[-1], self.num_channels[0]
        with layers_lib.own_policy(self):
            self.unet = layers_lib.UNet(self.num_channels, convs_per_block, weight_decay,
                                        name="unet")
            self.gate_hidden = [keras.layers.Dense(width, activation="relu", name=f"gate_{i}")
                                for i in range(2)]
            self.gate_logits = keras.layers.Dense(num_experts, use_bias=False,
                                                  name="gate_logits")
            self.residual = keras.layers.Dense(channels, name="residual")
            self.scale = keras.layers.Dense(channels, name="scale")
            self.inject = keras.layers.Dense(channels + latent_dim, name="inject")
            self.hidden = [keras.layers.Dense(channels, activation="relu", name=f"conv1x1_{i}")
                           for i in range(3)]
            self.logits = keras.layers.Dense(num_classes, name="logits")
        self._create_trackers()
        self.num_experts = num_experts
        self.latent_dim = latent_dim
        self.samples_per_expert = samples_per_expert
        self.cost = cost
        self.beta = float(beta)
        self.gamma = float(gamma)
        self.gamma_switch_steps = gamma_switch_steps

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        self.image_channels = input_shape[-1]
        width, channels = self.num_channels[-1], self.num_channels[0]
        self.unet.build(input_shape)
        for layer, inputs in ((self.gate_hidden[0], width), (self.gate_hidden[1], width),
                              (self.gate_logits, width), (self.residual, self.latent_dim),
                              (self.scale, self.latent_dim), (self.inject, channels),
                              (self.hidden[0], channels + self.latent_dim),
                              (self.hidden[1], channels), (self.hidden[2], channels),
                              (self.logits, channels)):
            layer.build((None, inputs))
        shape = (self.num_experts, self.latent_dim)
        self.expert_loc = self.add_weight(
            shape=shape, name="expert_loc", dtype="float32", autocast=False,
            initializer=lambda shape, dtype=None: expert_locations(
                *shape, keras.random.uniform(shape, dtype="float32")))
        self.expert_log_scale = self.add_weight(
            shape=shape, name="expert_log_scale", dtype="float32", autocast=False,
            initializer=keras.initializers.Constant(math.log(1 / 8)))
        self.built = True

    # ------------------------------------------------------------------ the network
    def _features_and_weights(self, images):
        """The U-Net once: features `(b, h, w, F)` and the gate's weights `(b, K)` float32."""
        features, bottleneck = self.unet(images, return_bottleneck=True)
        x = keras.ops.mean(bottleneck, axis=(1, 2))
        for layer in self.gate_hidden:
            x = layer(x)
        return features, tf.nn.softmax(tf.cast(self.gate_logits(x), tf.float32), axis=-1)

    def features_and_weights(self, images):
        """What a sample needs of an image, computed once: the U-Net's features `(b, h, w, F)`
        and the gate's weights `(b, K)` (the serving `features` signature's outputs;
        `decode_experts` draws from them)."""
        return self._features_and_weights(self._checked_and_built(images))

    def decode_experts(self, features, weights, num_samples, seed=None):
        """Logits `(b, m, h, w, K)` of `num_samples` samples drawn from the experts with
        `weights (b, K)` and decoded on `features (b, h, w, F)`: `sample(images, m, seed)` is
        `decode_experts(*features_and_weights(images), m, seed)`; only the decoder runs per
        sample."""
        return self.decode(features, self.latents(weights, num_samples, seed)[0])

    def expert_weights(self, images):
        """The gate's weights `(b, K)` of the experts for `images (b, h, w, c)`: each row
        non-negative, summing to 1."""
        return self.features_and_weights(images)[1]

    def decode(self, features, z):
        """Logits `(b, m, h, w, K)` of the latents `z (b, m, L)` on the U-Net's features
        `(b, h, w, F)`: the reference's noise injection, then the 1x1 convolutions."""
        z = keras.ops.cast(z, self.compute_dtype)
        residual = self.residual(z)[:, :, None, None]
        scale = self.scale(z)[:, :, None, None]
        x = (keras.ops.cast(features, self.compute_dtype)[:, None] + residual) * (
            scale + SCALE_OFFSET)
        x = _pointwise(self.inject, x)
        for layer in self.hidden:
            x = _pointwise(layer, x)
        return keras.ops.cast(_pointwise(self.logits, x), "float32")

    def _experts(self):
        return (tf.cast(self.expert_loc, tf.float32),
                tf.exp(tf.cast(self.expert_log_scale, tf.float32)) + EPSILON)

    # ------------------------------------------------------------------ sampling
    def latents(self, weights, num_samples, seed=None):
        """The standard representation's latents: for each of `num_samples`, an expert drawn
        with `weights (b, K)` (inverse CDF of a uniform), then z from its Gaussian.

        Returns:
            `(z (b, m, L), experts (b, m) int32)`; one normal draw of `(b, m, L + 1)` from
            `seed` (None: the model's seed generator), its first column made uniform.
        """
        noise = self._noise(tf.stack([tf.shape(weights)[0], num_samples, self.latent_dim + 1]),
                            seed)
        uniform = 0.5 * tf.math.erfc(-noise[..., 0] / math.sqrt(2.0))
        passed = tf.cumsum(weights, axis=-1)[:, None, :] <= uniform[..., None]
        experts = tf.minimum(tf.reduce_sum(tf.cast(passed, tf.int32), -1), self.num_experts - 1)
        loc, scale = self._experts()
        return tf.gather(loc, experts) + tf.gather(scale, experts) * noise[..., 1:], experts

    def weighted_latents(self, weights, samples_per_expert, seed=None):
        """The compact representation's latents: S draws from each expert, expert-major
        (sample `k * S + s` is expert k's s-th), weighted `weights[:, k] / S`.

        Returns:
            `(z (b, K * S, L), sample_weights (b, K * S))`.
        """
        batch = tf.shape(weights)[0]
        noise = self._noise(tf.stack([batch, self.num_experts, samples_per_expert,
                                      self.latent_dim]), seed)
        loc, scale = self._experts()
        z = loc[None, :, None] + scale[None, :, None] * noise
        z = tf.reshape(z, tf.stack([batch, -1, self.latent_dim]))
        return z, tf.repeat(weights, samples_per_expert, axis=-1) / tf.cast(
            samples_per_expert, tf.float32)

    def sample(self, images, num_samples=1, seed=None):
        """Logits `(b, m, h, w, K)` of `num_samples` (m >= 1) equally weighted segmentations
        of `images (b, h, w, c)` (the standard representation; `seed` as for `latents`)."""
        check_num_samples(num_samples, images, self.num_classes)
        return self.decode_experts(*self.features_and_weights(images), num_samples, seed)

    def weighted_sample(self, images, samples_per_expert=None, seed=None):
        """The compact representation: S samples from each expert with their weights.

        Args:
            images: `(b, h, w, c)` float.
            samples_per_expert: S >= 1 (None: the model's `samples_per_expert`).
            seed: as for `latents`.

        Returns:
            `(logits (b, K * S, h, w, K_classes), weights (b, K * S))`, the weights summing to 1
            per image; sample `k * S + s` is expert k's.
        """
        samples_per_expert = samples_per_expert or self.samples_per_expert
        check_num_samples(samples_per_expert * self.num_experts, images, self.num_classes)
        features, weights = self.features_and_weights(images)
        z, sample_weights = self.weighted_latents(weights, samples_per_expert, seed)
        return self.decode(features, z), sample_weights

    def call(self, images, training=None):
        """Logits `(b, h, w, K)` at the mean of the expert with the largest weight:
        deterministic, what `predict` gives."""
        features, weights = self.features_and_weights(images)
        z = tf.gather(self._experts()[0], tf.argmax(weights, axis=-1))
        return self.decode(features, z[:, None])[:, 0]

    # ------------------------------------------------------------------ training
    def _check_pair(self, images, labels, annotation_weights=None):
        """`(images, (annotations (b, A, h, w), weights (b, A) or None))` from segmentations
        `(b, h, w)` (A = 1) or annotations `(b, A, h, w)` with optional weights `(A,)` or
        `(b, A)`, normalised to sum to 1 per image."""
        images = self._checked_and_built(images)
        labels = tf.convert_to_tensor(labels)
        if labels.shape.rank == 4 and not (labels.shape[-1] == 1 and labels.shape[1:3]
                                           .is_compatible_with(images.shape[1:3])):
            annotations = self._check_labels("annotations", "(b, A, h, w)", labels, images)
        else:
            annotations = self._check_segmentations(labels, images)[:, None]
        if annotation_weights is not None:
            annotation_weights = tf.broadcast_to(tf.cast(annotation_weights, tf.float32),
                                                 tf.shape(annotations)[:2])
            annotation_weights /= tf.reduce_sum(annotation_weights, axis=-1, keepdims=True)
        return images, (annotations, annotation_weights)

    def _unpack(self, data):
        if isinstance(data, (tuple, list)) and len(data) == 3:
            return self._check_pair(*data)
        return super()._unpack(data)

    def loss_terms(self, images, segmentations, annotation_weights=None):
        """Per-example `loss`, `transport` and `kl`, each `(b,)` (`ot_loss`), for segmentations
        `(b, h, w)` or annotations `(b, A, h, w)` with optional `annotation_weights`."""
        return self._loss_terms(*self._check_pair(images, segmentations, annotation_weights))

    def _gamma(self):
        optimizer = getattr(self, "optimizer", None)
        if self.gamma_switch_steps is None or optimizer is None:
            return self.gamma
        return tf.where(optimizer.iterations >= self.gamma_switch_steps, 1.0, self.gamma)

    def _loss_terms(self, images, labels):
        # The base class's validation step passes one drawn segmentation per image.
        annotations, weights = labels if isinstance(labels, tuple) else (labels[:, None], None)
        features, gate = self._features_and_weights(images)
        z, sample_weights = self.weighted_latents(gate, self.samples_per_expert)
        logits = self.decode(features, z)
        if self.cost == "iou":
            cost = iou_cost(tf.nn.softmax(logits), annotations, self.num_classes)
        else:
            cost = ce_cost(logits, annotations, self.num_classes)
        return ot_loss(cost, sample_weights, weights, self._gamma(), self.beta)

    def get_config(self):
        config = super().get_config()
        config.update(num_experts=self.num_experts, latent_dim=self.latent_dim,
                      samples_per_expert=self.samples_per_expert, cost=self.cost,
                      beta=self.beta, gamma=self.gamma,
                      gamma_switch_steps=self.gamma_switch_steps)
        return config
