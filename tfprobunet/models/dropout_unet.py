"""`DropoutUNet`: the Dropout U-Net baseline of Kohl et al. 2018 (section 3, Fig. 2a), after the
Bayesian SegNet: a U-Net whose samples differ by dropout kept on while sampling."""

import keras
import tensorflow as tf

from tfprobunet import losses
from tfprobunet.models.base import UNetWithHeads
from tfprobunet.models.checks import seed_pair


@keras.saving.register_keras_serializable(package="tfprobunet")
class DropoutUNet(UNetWithHeads):
    """A U-Net with dropout (p = 0.5 in the paper) on the inputs of its three inner-most encoder
    and decoder blocks, during training as well as when sampling: each sample is one dropout
    mask. The image itself is never dropped. `call` (and `predict`) runs with dropout off.

    Args:
        num_classes, num_channels, convs_per_block, weight_decay, seed, ged_samples,
            ged_classes: as for `ProbabilisticUNet` (`SegmentationSampler`).
        dropout_rate: the probability of dropping an activation (the paper's: 0.5).
        dropout_blocks: how many inner-most encoder and decoder blocks get dropout on their
            inputs (the paper's: 3). A U-Net of L levels has L encoder and L - 1 decoder
            blocks, and its first encoder block's input is the image, which is never dropped:
            with `dropout_blocks >= L`, dropout acts on the inputs of encoder blocks 2 to L and
            of all L - 1 decoder blocks (at the `cpu` recipe's 3 levels: 2 and 2).
        reconstruction: `"sum"` of the pixel cross-entropy over pixels (as the Probabilistic
            U-Net's) or `"mean"`.

    Shapes: images `(b, h, w, c)` float32; segmentations `(b, h, w)` int.

    Example:

    ```python
    model = tfprobunet.models.DropoutUNet(num_classes=2, num_channels=[16, 32, 64])
    model.compile(optimizer=keras.optimizers.Adam(1e-4))
    model.fit(train_ds, epochs=10)
    logits = model.sample(images, 16, seed=0)   # (b, 16, h, w, 2)
    ```
    """

    LOSS_NAME = "the pixel cross-entropy under dropout"

    def __init__(self, num_classes=2, num_channels=(32, 64, 128, 192), convs_per_block=3,
                 dropout_rate=0.5, dropout_blocks=3, reconstruction="sum", weight_decay=1e-5,
                 seed=None, ged_samples=16, ged_classes=None, **kwargs):
        super().__init__(num_classes, num_channels, convs_per_block, reconstruction,
                         weight_decay, seed, ged_samples, ged_classes, **kwargs)
        if not 0.0 < dropout_rate < 1.0:
            raise ValueError("`dropout_rate` must be in (0, 1) (the paper's: 0.5). Received: "
                             f"dropout_rate={dropout_rate!r}")
        if not isinstance(dropout_blocks, int) or dropout_blocks < 1:
            raise ValueError("`dropout_blocks` must be an integer >= 1 (the paper's: 3). "
                             f"Received: dropout_blocks={dropout_blocks!r}")
        self.unet, self.head = self._make_unet(), self._make_head(num_classes)
        self._create_trackers()
        self.dropout_rate = float(dropout_rate)
        self.dropout_blocks = dropout_blocks

    def _unets_and_heads(self):
        return [(self.unet, self.head)]

    def _logits(self, images, dropout=None):
        features = self.unet(images, dropout=dropout, dropout_blocks=self.dropout_blocks)
        return keras.ops.cast(self.head(features), "float32")

    def _dropout(self, seed=None):
        """The dropout of one forward pass: from the seed generator, or stateless from `seed`
        (one stream per block)."""
        if seed is None:
            return lambda x, j: keras.random.dropout(x, self.dropout_rate,
                                                     seed=self.seed_generator)
        seed = seed_pair(seed)
        return lambda x, j: tf.nn.experimental.stateless_dropout(
            x, self.dropout_rate, seed=tf.random.experimental.stateless_fold_in(seed, j))

    def call(self, images, training=None):
        """Logits `(b, h, w, K)` with dropout off: deterministic."""
        return self._logits(self._checked_and_built(images))

    def sample(self, images, num_samples=1, seed=None):
        """`num_samples` segmentations per image, one dropout mask each.

        Args:
            images: `(b, h, w, c)` float.
            num_samples: m >= 1.
            seed: None (the model's seed generator), an int or a `(2,)` int tensor.

        Returns:
            logits `(b, m, h, w, K)`.
        """
        # Every copy of an image gets its own dropout masks.
        return self._sample_copies(images, num_samples,
                                   lambda copies: self._logits(copies, self._dropout(seed)))

    def _loss_terms(self, images, segmentations):
        logits = self._logits(images, self._dropout())
        return {"loss": losses.pixel_cross_entropy(segmentations, logits,
                                                   reduction=self.reconstruction)}

    def get_config(self):
        config = super().get_config()
        config.update(dropout_rate=self.dropout_rate, dropout_blocks=self.dropout_blocks)
        return config
