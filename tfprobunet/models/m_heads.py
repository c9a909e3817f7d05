"""`MHeads`: the M-Heads baseline of Kohl et al. 2018 (section 3, Fig. 2c), after Rupprecht et al.
2017 and Ilg et al. 2018: one U-Net with M output heads trained with the oracle set loss."""

import keras
import tensorflow as tf

from tfprobunet import losses
from tfprobunet.models.base import UNetWithHeads, cycle_samples
from tfprobunet.models.checks import check_model_sizes, check_num_samples


@keras.saving.register_keras_serializable(package="tfprobunet")
class MHeads(UNetWithHeads):
    """A U-Net with `num_heads` 1x1-conv class heads on its last feature map. Training weighs,
    per example, the best head's cross-entropy by `1 - epsilon` and the others' by
    `epsilon / (M - 1)` (`losses.oracle_set_loss`), so the heads specialise on different modes.
    Sample i is head i mod M: the model has M outputs, not a distribution, and `seed` changes
    nothing. `call` returns the first head.

    Args:
        num_classes, num_channels, convs_per_block, weight_decay, seed, ged_samples,
            ged_classes: as for `ProbabilisticUNet` (`SegmentationSampler`).
        num_heads: M (the paper matches it to the number of samples evaluated, e.g. 16).
        epsilon: the oracle set loss's weight on the heads that are not the best (paper: 0.05).
        reconstruction: `"sum"` of the pixel cross-entropy over pixels, or `"mean"`.

    Shapes: images `(b, h, w, c)` float32; segmentations `(b, h, w)` int.
    """

    LOSS_NAME = "the oracle set loss of its heads' pixel cross-entropies"

    def __init__(self, num_classes=2, num_channels=(32, 64, 128, 192), convs_per_block=3,
                 num_heads=16, epsilon=0.05, reconstruction="sum", weight_decay=1e-5,
                 seed=None, ged_samples=16, ged_classes=None, **kwargs):
        super().__init__(num_classes, num_channels, convs_per_block, reconstruction,
                         weight_decay, seed, ged_samples, ged_classes, **kwargs)
        if not isinstance(num_heads, int) or num_heads < 1:
            raise ValueError(f"`num_heads` must be an integer >= 1. Received: {num_heads!r}")
        if not 0.0 <= epsilon < 1.0:
            raise ValueError(f"`epsilon` must be in [0, 1) (paper: 0.05). Received: {epsilon!r}")
        check_model_sizes(dict(num_heads=num_heads))
        # All heads in one 1x1 convolution: M * K output channels.
        self.unet, self.heads = self._make_unet(), self._make_head(num_heads * num_classes, "heads")
        self._create_trackers()
        self.num_heads = num_heads
        self.epsilon = float(epsilon)

    def _unets_and_heads(self):
        return [(self.unet, self.heads)]

    def head_logits(self, images):
        """Every head's logits, `(b, M, h, w, K)`."""
        return self._head_logits(self._checked_and_built(images))

    def _head_logits(self, images):
        logits = keras.ops.cast(self.heads(self.unet(images)), "float32")
        shape = tf.shape(logits)
        logits = tf.reshape(logits, tf.concat([shape[:3], [self.num_heads, self.num_classes]], 0))
        return tf.transpose(logits, (0, 3, 1, 2, 4))

    def call(self, images, training=None):
        """The first head's logits, `(b, h, w, K)`."""
        return self.head_logits(images)[:, 0]

    def sample(self, images, num_samples=1, seed=None):
        """Logits `(b, m, h, w, K)`: sample i is head i mod M (`seed` is not used)."""
        check_num_samples(num_samples, images, self.num_classes)
        return cycle_samples(self.head_logits(images), num_samples)

    def _loss_terms(self, images, segmentations):
        logits = self._head_logits(images)  # (b, M, h, w, K)
        shape = tf.shape(logits)
        flat = tf.reshape(logits, tf.concat([[-1], shape[2:]], 0))
        labels = tf.repeat(segmentations, self.num_heads, axis=0)
        per_head = tf.reshape(losses.pixel_cross_entropy(labels, flat, self.reconstruction),
                              (-1, self.num_heads))
        return {"loss": losses.oracle_set_loss(per_head, self.epsilon)}

    def get_config(self):
        config = super().get_config()
        config.update(num_heads=self.num_heads, epsilon=self.epsilon)
        return config
