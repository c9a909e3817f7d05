"""`Image2ImageVAE`: the Image2Image VAE baseline of Kohl et al. 2018 (section 3, Fig. 2d), after
Zhu et al. 2017: a U-Net whose input carries a latent z, with a fixed N(0, I) prior and a
posterior that sees only the segmentation."""

import keras
import tensorflow as tf

from tfprobunet import layers as layers_lib
from tfprobunet import losses
from tfprobunet.defaults import check_model_numbers
from tfprobunet.models.base import UNetWithHeads
from tfprobunet.models.checks import check_model_sizes


@keras.saving.register_keras_serializable(package="tfprobunet")
class Image2ImageVAE(UNetWithHeads):
    """A conditional VAE whose latent is broadcast over the image and concatenated to it at the
    U-Net's input. The prior is fixed, N(0, I): unlike the Probabilistic U-Net's, it does not
    depend on the image. The posterior Q(z | Y) sees only the segmentation. Training minimises
    the pixel cross-entropy plus `beta` times KL(Q(z | Y) || N(0, I)); each sample runs the whole
    U-Net on the image and its own z. `call` decodes z = 0, the prior mean.

    Args:
        num_classes, num_channels, convs_per_block, weight_decay, seed, ged_samples,
            ged_classes: as for `ProbabilisticUNet` (`SegmentationSampler`).
        latent_dim: N.
        beta: the KL term's weight.
        reconstruction: `"sum"` of the pixel cross-entropy over pixels, or `"mean"`.

    Shapes: images `(b, h, w, c)` float32; segmentations `(b, h, w)` int.
    """

    TERMS = ("loss", "reconstruction", "kl")
    LOSS_NAME = "its built-in beta-ELBO (cross-entropy + beta * KL to N(0, I))"

    def __init__(self, num_classes=2, num_channels=(32, 64, 128, 192), convs_per_block=3,
                 latent_dim=6, beta=1.0, reconstruction="sum", weight_decay=1e-5, seed=None,
                 ged_samples=16, ged_classes=None, **kwargs):
        super().__init__(num_classes, num_channels, convs_per_block, reconstruction,
                         weight_decay, seed, ged_samples, ged_classes, **kwargs)
        if not isinstance(latent_dim, int) or latent_dim < 1:
            raise ValueError(f"`latent_dim` must be an integer >= 1. Received: {latent_dim!r}")
        check_model_numbers(dict(beta=beta))
        check_model_sizes(dict(latent_dim=latent_dim))
        self.unet, self.head = self._make_unet(), self._make_head(num_classes)
        with layers_lib.own_policy(self):
            self.posterior = layers_lib.AxisAlignedGaussian(
                latent_dim, self.num_channels, convs_per_block, weight_decay, name="posterior")
        self._create_trackers()
        self.latent_dim = latent_dim
        self.beta = float(beta)

    def _unets_and_heads(self):
        return [(self.unet, self.head)]

    def _unet_input_shape(self, input_shape):
        # z's N planes beside the image's channels.
        return input_shape[:-1] + (input_shape[-1] + self.latent_dim,)

    def build(self, input_shape):
        super().build(input_shape)
        self.posterior.build(tuple(input_shape)[:-1] + (self.num_classes,))

    def posterior_distribution(self, segmentations):
        """Q(z | Y) from the segmentations alone, `(b, h, w)` int: a `tfd.MultivariateNormalDiag`
        with batch shape `(b,)` and event shape `(N,)`."""
        return self.posterior(self._posterior_input(segmentations))

    def _posterior_input(self, segmentations):
        # Label 255 one-hot encodes to zeros, so ignored pixels read as -0.5 in every channel.
        return tf.one_hot(segmentations, self.num_classes, dtype=self.compute_dtype) - 0.5

    def decode(self, images, z):
        """Logits `(b, h, w, K)` of the U-Net on `images (b, h, w, c)` with `z (b, N)` broadcast
        over them and concatenated as extra channels."""
        images = keras.ops.cast(images, self.compute_dtype)
        shape = tf.shape(images)
        planes = tf.broadcast_to(tf.cast(z, images.dtype)[:, None, None, :],
                                 tf.concat([shape[:3], [self.latent_dim]], 0))
        features = self.unet(tf.concat([images, planes], axis=-1))
        return keras.ops.cast(self.head(features), "float32")

    def call(self, images, training=None):
        """Logits `(b, h, w, K)` at z = 0, the prior mean: deterministic."""
        images = self._checked_and_built(images)
        return self.decode(images, tf.zeros([tf.shape(images)[0], self.latent_dim]))

    def sample(self, images, num_samples=1, seed=None):
        """`num_samples` segmentations per image, z drawn from N(0, I).

        Returns:
            logits `(b, m, h, w, K)`.
        """
        return self._sample_copies(images, num_samples, lambda copies: self.decode(
            copies, self._noise(tf.stack([tf.shape(copies)[0], self.latent_dim]), seed)))

    def _loss_terms(self, images, segmentations):
        q_loc, q_log_scale = self.posterior.loc_log_scale(self._posterior_input(segmentations))
        noise = self._noise(tf.shape(q_loc))
        logits = self.decode(images, q_loc + tf.exp(q_log_scale) * noise)
        zeros = tf.zeros_like(q_loc)
        return losses.elbo_loss(segmentations, logits, noise, q_loc, q_log_scale, zeros, zeros,
                                beta=self.beta, reconstruction=self.reconstruction)

    def get_config(self):
        config = super().get_config()
        config.update(latent_dim=self.latent_dim, beta=self.beta)
        return config
