"""`StochasticSegmentationNetwork`: the Stochastic Segmentation Network of Monteiro et al.,
"Stochastic Segmentation Networks: Modelling Spatially Correlated Aleatoric Uncertainty",
NeurIPS 2020: a U-Net whose head gives a low-rank multivariate normal over all pixel logits.

"The LIDC reference" below: the SSN code for LIDC in the PHiSeg fork (`phiseg/model_zoo/
likelihoods.py`, `proposed`; loss `phiseg/phiseg_model.py`, `add_proposed_loss`); "the PyTorch
reference": the SSN repository's BraTS code (`ssn/models/stochastic_deepmedic.py`).
"""

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from tfprobunet import layers as layers_lib
from tfprobunet import losses
from tfprobunet.models.base import IGNORE_LABEL, SegmentationSampler
from tfprobunet.models.checks import check_model_sizes, check_num_samples

tfd = tfp.distributions

# Added to exp(log diagonal), and the diagonal of ignored pixels (both references: 1e-5).
EPSILON = 1e-5


def flatten_parameters(mean, diagonal, factor):
    """The distribution's parameters over the flattened logits of each image, pixel-major and
    class-minor (channels-last, as the LIDC reference flattens them): logit `(i, j, k)` is
    entry `(i * w + j) * K + k`.

    Args:
        mean, diagonal: `(b, h, w, K)`. factor: `(b, h, w, K, r)`.

    Returns:
        `(loc (b, P), diagonal (b, P), factor (b, P, r))`, P = h * w * K.
    """
    batch = tf.shape(mean)[:1]
    return (tf.reshape(mean, tf.concat([batch, [-1]], 0)),
            tf.reshape(diagonal, tf.concat([batch, [-1]], 0)),
            tf.reshape(factor, tf.concat([batch, [-1, tf.shape(factor)[-1]]], 0)))


def low_rank_distribution(mean, diagonal, factor):
    """`tfd.MultivariateNormalDiagPlusLowRankCovariance` with covariance
    `factor @ factor^T + diag(diagonal)` over the flattened logits (`flatten_parameters`):
    batch shape `(b,)`, event shape `(h * w * K,)`."""
    loc, diagonal, factor = flatten_parameters(mean, diagonal, factor)
    return tfd.MultivariateNormalDiagPlusLowRankCovariance(
        loc=loc, cov_diag_factor=diagonal, cov_perturb_factor=factor)


@keras.saving.register_keras_serializable(package="tfprobunet")
class StochasticSegmentationNetwork(SegmentationSampler):
    """A U-Net whose last feature map gives, through three 1x1 convolutions, the mean `mu`, a
    diagonal `d` and a rank-r factor `P` of a multivariate normal over all h * w * K logits of
    an image: `eta ~ N(mu, P P^T + diag(d))`, with `d = exp(.) + 1e-5`. A sample is
    `eta = mu + P z + sqrt(d) * e`, z ~ N(0, I_r), e ~ N(0, I_(hwK)) (the references'
    `rsample`; TFP's low-rank normal samples the same way): after the U-Net has run once, each
    extra sample costs a matrix product. `call` (and `predict`) returns the mean logits, as
    the LIDC reference predicts.

    Training minimises minus the log of the Monte Carlo estimate of the likelihood over
    `num_mc_samples` samples (`losses.ssn_loss`): summed over pixels, averaged over the batch,
    as both references. Pixels labelled 255 are left out of it; as the PyTorch reference does
    outside its region of interest, their factor rows are zeroed and their diagonal set to
    1e-5 in `distribution_parameters(images, segmentations)` (with their likelihood terms
    left out, this changes neither the loss nor its gradient).

    Differences from the references: the backbone is this package's U-Net (`layers.UNet`:
    ReLU convolutions without batch normalisation, whose last block already ends in the ReLU
    the references apply before the heads) instead of the LIDC reference's 7-level
    batch-normalised U-Net with three 1x1 "recombination" layers; samples are drawn plainly
    (as the LIDC reference), not in the PyTorch reference's antithetic pairs.

    Args:
        num_classes, num_channels, convs_per_block, weight_decay, seed, ged_samples,
            ged_classes: as for `ProbabilisticUNet` (`SegmentationSampler`). The weight decay
            acts on the U-Net's kernels; the LIDC reference trains without it.
        rank: r, the rank of the covariance factor (both references: 10).
        num_mc_samples: N, the logit samples per image of the training loss (both
            references' configurations: 20).

    Shapes: images `(b, h, w, c)` float32; segmentations `(b, h, w)` int with values in
    `[0, num_classes)` or 255 (ignored).

    Example:

    ```python
    model = tfprobunet.models.StochasticSegmentationNetwork(num_classes=2, rank=10)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.fit(train_ds, epochs=10)
    logits = model.sample(images, 16, seed=0)   # (b, 16, h, w, 2)
    ```
    """

    LOSS_NAME = "the Monte Carlo estimate of its log-likelihood"

    def __init__(self, num_classes=2, num_channels=(32, 64, 128, 192), convs_per_block=3,
                 rank=10, num_mc_samples=20, weight_decay=1e-5, seed=None, ged_samples=16,
                 ged_classes=None, **kwargs):
        super().__init__(num_classes, num_channels, convs_per_block, weight_decay, seed,
                         ged_samples, ged_classes, **kwargs)
        if not isinstance(rank, int) or rank < 1:
            raise ValueError("`rank` must be an integer >= 1 (the references': 10). "
                             f"Received: rank={rank!r}")
        if not isinstance(num_mc_samples, int) or num_mc_samples < 1:
            raise ValueError("`num_mc_samples` must be an integer >= 1 (the references': 20). "
                             f"Received: num_mc_samples={num_mc_samples!r}")
        check_model_sizes(dict(rank=rank, num_mc_samples=num_mc_samples))
        with layers_lib.own_policy(self):
            self.unet = layers_lib.UNet(self.num_channels, convs_per_block, weight_decay,
                                        name="unet")
            # 1x1 convolutions with biases and He-normal kernels, as the LIDC reference's heads.
            self.mean_head, self.log_diagonal_head, self.factor_head = (
                keras.layers.Conv2D(filters, 1, kernel_initializer="he_normal", name=name)
                for filters, name in ((num_classes, "mean"), (num_classes, "log_diagonal"),
                                      (num_classes * rank, "factor")))
        self._create_trackers()
        self.rank = rank
        self.num_mc_samples = num_mc_samples

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        self.image_channels = input_shape[-1]
        self.unet.build(input_shape)
        for head in (self.mean_head, self.log_diagonal_head, self.factor_head):
            head.build((None, None, None, self.num_channels[0]))
        self.built = True

    # ------------------------------------------------------------------ the distribution
    def distribution_parameters(self, images, segmentations=None):
        """The U-Net once, then the three heads.

        Args:
            images: `(b, h, w, c)` float.
            segmentations: None, or `(b, h, w)` int: pixels labelled 255 then get a zero
                factor and the diagonal 1e-5 (the PyTorch reference's mask).

        Returns:
            `(mean (b, h, w, K), diagonal (b, h, w, K), factor (b, h, w, K, r))`, float32;
            the covariance of the flattened logits is `P P^T + diag(d)` (`flatten_parameters`
            says in which order).
        """
        if segmentations is None:
            images = self._check_images(images)
            self._ensure_built(images)
        else:
            images, segmentations = self._check_pair(images, segmentations)
        return self._parameters(images, segmentations)

    def _parameters(self, images, segmentations=None):
        features = self.unet(images)
        mean = keras.ops.cast(self.mean_head(features), "float32")
        diagonal = tf.exp(keras.ops.cast(self.log_diagonal_head(features), "float32")) + EPSILON
        factor = keras.ops.cast(self.factor_head(features), "float32")
        # Channel k * r + j is column j of class k's rows (the LIDC reference's order).
        factor = tf.reshape(factor, tf.concat([tf.shape(factor)[:3],
                                               [self.num_classes, self.rank]], 0))
        if segmentations is not None:
            valid = tf.not_equal(segmentations, IGNORE_LABEL)[..., None]
            diagonal = tf.where(valid, diagonal, EPSILON)
            factor = factor * tf.cast(valid, tf.float32)[..., None]
        return mean, diagonal, factor

    def distribution(self, images, segmentations=None):
        """The logits' distribution, a `tfd.MultivariateNormalDiagPlusLowRankCovariance` with
        batch shape `(b,)` over the flattened `h * w * K` logits of each image
        (`flatten_parameters`); `segmentations` as for `distribution_parameters`."""
        return low_rank_distribution(*self.distribution_parameters(images, segmentations))

    def sample_logits(self, mean, diagonal, factor, num_samples, seed=None):
        """`num_samples` logit maps per image from given parameters: no network runs.

        Args:
            mean, diagonal, factor: as `distribution_parameters` returns them.
            num_samples: m >= 1, an int or an int32 scalar tensor.
            seed: None (the model's seed generator), an int or a `(2,)` int tensor for
                stateless, reproducible draws.

        Returns:
            logits `(b, m, h, w, K)` = `mean + factor @ z + sqrt(diagonal) * e`, with z
            `(b, m, r)` and e standard normal, both from one draw of the seed.
        """
        shape = tf.shape(mean)
        noise = self._noise(tf.stack([shape[0], num_samples,
                                      self.rank + tf.reduce_prod(shape[1:])]), seed)
        z = noise[..., :self.rank]
        e = tf.reshape(noise[..., self.rank:], tf.concat([shape[:1], [num_samples],
                                                           shape[1:]], 0))
        correlated = tf.einsum("bhwkr,bmr->bmhwk", factor, z)
        return mean[:, None] + correlated + tf.sqrt(diagonal)[:, None] * e

    def sample(self, images, num_samples=1, seed=None):
        """Logits `(b, m, h, w, K)` of `num_samples` (m >= 1) segmentations of `images
        (b, h, w, c)`: the U-Net once, then `sample_logits` (`seed` as there)."""
        check_num_samples(num_samples, images, self.num_classes)
        return self.sample_logits(*self.distribution_parameters(images), num_samples, seed)

    def call(self, images, training=None):
        """The mean logits `(b, h, w, K)`: deterministic, what `predict` gives."""
        return self.distribution_parameters(images)[0]

    # ------------------------------------------------------------------ training
    def _loss_terms(self, images, segmentations):
        parameters = self._parameters(images, segmentations)
        samples = self.sample_logits(*parameters, self.num_mc_samples)
        return {"loss": losses.ssn_loss(segmentations, samples)}

    def get_config(self):
        config = super().get_config()
        config.update(rank=self.rank, num_mc_samples=self.num_mc_samples)
        return config
