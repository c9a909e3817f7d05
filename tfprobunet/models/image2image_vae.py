"""`Image2ImageVAE`: the Image2Image VAE baseline of Kohl et al. 2018 (section 3, Fig. 2d), after
Zhu et al. 2017: a U-Net whose input carries a latent z, with a fixed N(0, I) prior and a
posterior that sees only the segmentation."""

import keras
import tensorflow as tf

from tfprobunet import layers as layers_lib
from tfprobunet import losses
from tfprobunet.defaults import check_model_numbers
from tfprobunet.models.base import SegmentationSampler
from tfprobunet.models.checks import check_num_samples


@keras.saving.register_keras_serializable(package="tfprobunet")
class Image2ImageVAE(SegmentationSampler):
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
        super().__init__(num_classes, num_channels, convs_per_block, weight_decay, seed,
                         ged_samples, ged_classes, **kwargs)
        if not isinstance(latent_dim, int) or latent_dim < 1:
            raise ValueError(f"`latent_dim` must be an integer >= 1. Received: {latent_dim!r}")
        check_model_numbers(dict(beta=beta))
        if reconstruction not in losses.RECONSTRUCTIONS:
            raise ValueError(f"`reconstruction` must be one of {losses.RECONSTRUCTIONS}. "
                             f"Received: reconstruction={reconstruction!r}")
        with layers_lib.own_policy(self):
            self.unet = layers_lib.UNet(self.num_channels, convs_per_block, weight_decay,
                                        name="unet")
            self.head = keras.layers.Conv2D(num_classes, 1, name="logits")
            self.posterior = layers_lib.AxisAlignedGaussian(
                latent_dim, self.num_channels, convs_per_block, weight_decay, name="posterior")
        self._create_trackers()
        self.latent_dim = latent_dim
        self.beta = float(beta)
        self.reconstruction = reconstruction

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        self.image_channels = input_shape[-1]
        self.unet.build(input_shape[:-1] + (self.image_channels + self.latent_dim,))
        self.head.build((None, None, None, self.num_channels[0]))
        self.posterior.build(input_shape[:-1] + (self.num_classes,))
        self.built = True

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
        images = self._check_images(images)
        self._ensure_built(images)
        return self.decode(images, tf.zeros([tf.shape(images)[0], self.latent_dim]))

    def sample(self, images, num_samples=1, seed=None):
        """`num_samples` segmentations per image, z drawn from N(0, I).

        Returns:
            logits `(b, m, h, w, K)`.
        """
        check_num_samples(num_samples)
        images = self._check_images(images)
        self._ensure_built(images)
        shape = tf.shape(images)
        z = self._noise(tf.stack([shape[0] * num_samples, self.latent_dim]), seed)
        logits = self.decode(tf.repeat(images, num_samples, axis=0), z)
        return tf.reshape(logits, tf.concat([shape[:1], [num_samples], shape[1:3],
                                             [self.num_classes]], axis=0))

    def _loss_terms(self, images, segmentations):
        q_loc, q_log_scale = self.posterior.loc_log_scale(self._posterior_input(segmentations))
        noise = self._noise(tf.shape(q_loc))
        logits = self.decode(images, q_loc + tf.exp(q_log_scale) * noise)
        zeros = tf.zeros_like(q_loc)
        return losses.elbo_loss(segmentations, logits, noise, q_loc, q_log_scale, zeros, zeros,
                                beta=self.beta, reconstruction=self.reconstruction)

    def get_config(self):
        config = super().get_config()
        config.update(latent_dim=self.latent_dim, beta=self.beta,
                      reconstruction=self.reconstruction)
        return config
