"""`UNetEnsemble`: the U-Net Ensemble baseline of Kohl et al. 2018 (section 3, Fig. 2b): M
U-Nets, initialised and trained independently on the same batches."""

import keras
import tensorflow as tf

from tfprobunet import losses
from tfprobunet.models.base import UNetWithHeads, cycle_samples
from tfprobunet.models.checks import check_model_sizes, check_num_samples


@keras.saving.register_keras_serializable(package="tfprobunet")
class UNetEnsemble(UNetWithHeads):
    """M deterministic U-Nets (each a `layers.UNet` and a 1x1-conv class head). Each member is
    initialised with its own random weights and trained on its own cross-entropy over the same
    batches: the training loss is their sum, so each member's gradient is its own loss's. Sample
    i is member i mod M (`seed` changes nothing); the paper matches M to the number of samples
    evaluated. `call` returns the first member's logits.

    Args:
        num_classes, num_channels, convs_per_block, weight_decay, seed, ged_samples,
            ged_classes: as for `ProbabilisticUNet` (`SegmentationSampler`).
        num_members: M.
        reconstruction: `"sum"` of the pixel cross-entropy over pixels, or `"mean"`.

    Shapes: images `(b, h, w, c)` float32; segmentations `(b, h, w)` int.
    """

    LOSS_NAME = "the sum of its members' pixel cross-entropies"

    def __init__(self, num_classes=2, num_channels=(32, 64, 128, 192), convs_per_block=3,
                 num_members=16, reconstruction="sum", weight_decay=1e-5, seed=None,
                 ged_samples=16, ged_classes=None, **kwargs):
        super().__init__(num_classes, num_channels, convs_per_block, reconstruction,
                         weight_decay, seed, ged_samples, ged_classes, **kwargs)
        if not isinstance(num_members, int) or num_members < 1:
            raise ValueError(f"`num_members` must be an integer >= 1. Received: {num_members!r}")
        check_model_sizes(dict(num_channels=self.num_channels, convs_per_block=convs_per_block,
                               num_members=num_members))
        # Flat lists of layers (Keras saves these on every 3.x version; nested ones it does not
        # before 3.15). Each layer draws its own initial weights.
        self.unets = [self._make_unet(f"unet_{i}") for i in range(num_members)]
        self.heads = [self._make_head(num_classes, f"logits_{i}") for i in range(num_members)]
        self._create_trackers()
        self.num_members = num_members

    def _unets_and_heads(self):
        return list(zip(self.unets, self.heads))

    def member_logits(self, images):
        """Every member's logits, `(b, M, h, w, K)`."""
        return self._member_logits(self._checked_and_built(images))

    def _logits(self, i, images):
        return keras.ops.cast(self.heads[i](self.unets[i](images)), "float32")

    def _member_logits(self, images):
        return tf.stack([self._logits(i, images) for i in range(self.num_members)], axis=1)

    def call(self, images, training=None):
        """The first member's logits, `(b, h, w, K)`."""
        return self._logits(0, self._checked_and_built(images))

    def sample(self, images, num_samples=1, seed=None):
        """Logits `(b, m, h, w, K)`: sample i is member i mod M (`seed` is not used)."""
        check_num_samples(num_samples, images, self.num_classes)
        return cycle_samples(self.member_logits(images), num_samples)

    def _loss_terms(self, images, segmentations):
        per_member = [losses.pixel_cross_entropy(segmentations, self._logits(i, images),
                                                 self.reconstruction)
                      for i in range(self.num_members)]
        return {"loss": tf.add_n(per_member)}

    def get_config(self):
        config = super().get_config()
        config.update(num_members=self.num_members)
        return config
