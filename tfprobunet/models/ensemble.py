"""`UNetEnsemble`: the U-Net Ensemble baseline of Kohl et al. 2018 (section 3, Fig. 2b): M
U-Nets, initialised and trained independently on the same batches."""

import keras
import tensorflow as tf

from tfprobunet import layers as layers_lib
from tfprobunet import losses
from tfprobunet.models.base import SegmentationSampler, cycle_samples
from tfprobunet.models.checks import check_num_samples


@keras.saving.register_keras_serializable(package="tfprobunet")
class UNetEnsemble(SegmentationSampler):
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
        super().__init__(num_classes, num_channels, convs_per_block, weight_decay, seed,
                         ged_samples, ged_classes, **kwargs)
        if not isinstance(num_members, int) or num_members < 1:
            raise ValueError(f"`num_members` must be an integer >= 1. Received: {num_members!r}")
        if reconstruction not in losses.RECONSTRUCTIONS:
            raise ValueError(f"`reconstruction` must be one of {losses.RECONSTRUCTIONS}. "
                             f"Received: reconstruction={reconstruction!r}")
        with layers_lib.own_policy(self):
            # Flat lists of layers (Keras saves these on every 3.x version; nested ones it
            # does not before 3.15). Each layer draws its own initial weights.
            self.unets = [layers_lib.UNet(self.num_channels, convs_per_block, weight_decay,
                                          name=f"unet_{i}") for i in range(num_members)]
            self.heads = [keras.layers.Conv2D(num_classes, 1, name=f"logits_{i}")
                          for i in range(num_members)]
        self._create_trackers()
        self.num_members = num_members
        self.reconstruction = reconstruction

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        self.image_channels = input_shape[-1]
        for unet, head in zip(self.unets, self.heads):
            unet.build(input_shape)
            head.build((None, None, None, self.num_channels[0]))
        self.built = True

    def member_logits(self, images):
        """Every member's logits, `(b, M, h, w, K)`."""
        images = self._check_images(images)
        self._ensure_built(images)
        return self._member_logits(images)

    def _logits(self, i, images):
        return keras.ops.cast(self.heads[i](self.unets[i](images)), "float32")

    def _member_logits(self, images):
        return tf.stack([self._logits(i, images) for i in range(self.num_members)], axis=1)

    def call(self, images, training=None):
        """The first member's logits, `(b, h, w, K)`."""
        images = self._check_images(images)
        self._ensure_built(images)
        return self._logits(0, images)

    def sample(self, images, num_samples=1, seed=None):
        """Logits `(b, m, h, w, K)`: sample i is member i mod M (`seed` is not used)."""
        check_num_samples(num_samples)
        return cycle_samples(self.member_logits(images), num_samples)

    def _loss_terms(self, images, segmentations):
        per_member = [losses.pixel_cross_entropy(segmentations, self._logits(i, images),
                                                 self.reconstruction)
                      for i in range(self.num_members)]
        return {"loss": tf.add_n(per_member)}

    def get_config(self):
        config = super().get_config()
        config.update(num_members=self.num_members, reconstruction=self.reconstruction)
        return config
