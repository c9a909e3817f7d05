"""GECO (Rezende & Viola 2018, "Taming VAEs") as the HPU-Net reference code implements it: one
Keras layer holding the moving average of the reconstruction and the Lagrange multiplier, shared
by `ProbabilisticUNet(geco_target=...)` and `HierarchicalProbabilisticUNet`.

The reference (deepmind-research `hierarchical_probabilistic_unet/model.py:549-563`,
`geco_utils.py`, with Sonnet 1.35's `MovingAverage` and `get_lagrange_multiplier`):

    ma = MovingAverage(decay=0.99)(reconstruction)   # first value: the value itself; the
                                                      # gradient passes through unchanged
    c = ma - kappa * selected pixels per image        # the constraint, nats per image
    lambda = softplus(v)**2                           # v trained by the model's optimizer,
                                                      # its gradient scaled by -rate
    loss = lambda * c + KL

A descent step on the loss thus raises lambda while c > 0 (reconstruction worse than kappa per
pixel) and lowers it while c < 0; with SGD at learning rate r,
`v <- v + r * rate * c * 2 * softplus(v) * sigmoid(v)`. With Adam the rate hardly matters, only
the sign of c (Sonnet's documentation says so).
"""

import math

import keras
import tensorflow as tf

# The reference's constants: the moving average's decay and the multiplier's start value.
GECO_DECAY = 0.99
GECO_INITIAL_LAMBDA = 1.0
# softplus^-1(sqrt(1)) = log(e - 1): v at lambda = 1.
_INITIAL_V = math.log(math.expm1(math.sqrt(GECO_INITIAL_LAMBDA)))


def global_mean(values):
    """The mean of per-example `values (b,)` over the global batch: all-reduced over the
    replicas under a distribution strategy (weighted by each replica's batch)."""
    values = tf.cast(values, tf.float32)
    total = tf.stack([tf.reduce_sum(values), tf.cast(tf.size(values), tf.float32)])
    context = tf.distribute.get_replica_context()
    if context is not None and context.num_replicas_in_sync > 1:
        total = context.all_reduce("sum", total)
    return total[0] / total[1]


def _scaled_gradient(scale):
    @tf.custom_gradient
    def identity(x):
        return tf.identity(x), lambda upstream: upstream * scale
    return identity


@keras.saving.register_keras_serializable(package="tfprobunet")
class GECO(keras.layers.Layer):
    """The GECO constraint's state: the moving average of the batch's reconstruction
    (`average`, `initialized`, not trained) and the raw multiplier `v` (trained by the model's
    optimizer, lambda = softplus(v)^2 starting at 1).

    Args:
        rate: the multiplier's gradient scale (reference: 1e-2); its gradient is multiplied by
            `-rate`, so the optimizer's descent step is an ascent on the constraint term.
        decay: of the moving average (reference: 0.99).

    Usage in a model's training step (per-example `(b,)` values):
        `objective(reconstruction, thresholds)` inside the gradient tape, the model's loss then
        adding the KL; `update(reconstruction)` after the optimizer step (the step used the
        average that includes the batch, as the reference's).
    """

    def __init__(self, rate=1e-2, decay=GECO_DECAY, **kwargs):
        kwargs.setdefault("dtype", "float32")  # the constraint stays float32
        super().__init__(**kwargs)
        if not rate > 0 or not 0.0 <= decay < 1.0:
            raise ValueError(f"GECO needs rate > 0 and 0 <= decay < 1. Received: rate={rate!r}, "
                             f"decay={decay!r}")
        self.rate = float(rate)
        self.decay = float(decay)

    def build(self, input_shape=None):
        # Every replica computes the same average from all-reduced values.
        state = dict(shape=(), trainable=False, aggregation="only_first_replica")
        self.average = self.add_weight(initializer="zeros", name="average", **state)
        self.initialized = self.add_weight(initializer="zeros", name="initialized", **state)
        self.multiplier = self.add_weight(
            shape=(), initializer=keras.initializers.Constant(_INITIAL_V), name="multiplier")
        self.built = True

    def lagrange_multiplier(self):
        """lambda = softplus(v)^2, whose gradient into v is scaled by `-rate`."""
        return _scaled_gradient(-self.rate)(tf.square(tf.nn.softplus(self.multiplier)))

    def next_average(self, value):
        """The moving average after the scalar `value`: `value` itself the first time."""
        moved = self.decay * self.average + (1.0 - self.decay) * value
        return tf.where(self.initialized > 0, moved, value)

    def objective(self, reconstruction, thresholds):
        """Per-example `lambda * c_i` whose mean over the global batch is `lambda * c`,
        c = moving average of the reconstruction - mean threshold (the reference's constraint),
        with the reconstruction's gradient passed through the average unchanged.

        Args:
            reconstruction: `(b,)` each example's reconstruction loss.
            thresholds: `(b,)` each example's allowed reconstruction (kappa times its pixels).

        Returns:
            `(b,)` float32.
        """
        reconstruction = tf.cast(reconstruction, tf.float32)
        mean = global_mean(reconstruction)
        shift = tf.stop_gradient(self.next_average(tf.stop_gradient(mean)) - mean)
        constraint = reconstruction + shift - tf.cast(thresholds, tf.float32)
        return self.lagrange_multiplier() * constraint

    def update(self, reconstruction):
        """Move the average by the batch's mean `reconstruction (b,)`; returns lambda."""
        self.average.assign(self.next_average(global_mean(reconstruction)))
        self.initialized.assign(1.0)
        return tf.square(tf.nn.softplus(self.multiplier))

    def get_config(self):
        config = super().get_config()
        config.update(rate=self.rate, decay=self.decay)
        return config
