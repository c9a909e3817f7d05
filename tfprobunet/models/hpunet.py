"""`HierarchicalProbabilisticUNet`: the model of Kohl et al., "A Hierarchical Probabilistic U-Net
for Modeling Multi-Scale Ambiguities", 2019, after its reference code (deepmind-research
`hierarchical_probabilistic_unet/model.py`, `geco_utils.py`; Sonnet 1.35 for GECO)."""

import keras
import tensorflow as tf

from tfprobunet import layers as layers_lib
from tfprobunet import losses
from tfprobunet.defaults import check_model_numbers, check_number
from tfprobunet.models import geco as geco_lib
from tfprobunet.models import hpunet_layers as hl
from tfprobunet.models.base import SegmentationSampler
from tfprobunet.models.checks import check_model_sizes, check_num_samples, seed_pair

# The reference's LIDC configuration has 4 latent levels (model.py:277); its channels
# (model.py:315-322) are the default `num_channels`, written out for `--help` to read.
REFERENCE_LATENT_LEVELS = 4
TOP_K_MODES = ("stochastic", "deterministic")


def default_latent_dims(num_channels):
    """One latent channel at each of the `min(4, levels - 1)` coarsest decoder levels: the
    reference's (1, 1, 1, 1) for its 8 levels, as many as fit for fewer."""
    return (1,) * min(REFERENCE_LATENT_LEVELS, len(num_channels) - 1)


def global_latent_channels(num_channels, image_size):
    """`num_channels` continued with its last value until the coarsest level is 1x1 for images
    of side `image_size`, so that the coarsest latent is global, as the reference's is: its 8
    levels reach 1x1 at LIDC's 128x128 (its last 192 repeated, model.py:315-322) and its
    latents sit at 1x1, 2x2, 4x4 and 8x8. A recipe's shorter U-Net (the `cpu` preset's 3
    levels) leaves the coarsest latent at `image_size / 4`: per-pixel only.

    Example: `global_latent_channels([16, 32, 64], 32)` is `[16, 32, 64, 64, 64, 64]`
    (32, 16, 8, 4, 2, 1), whose default latents are at 1x1, 2x2, 4x4 and 8x8.
    """
    num_channels = list(num_channels)
    levels = int(image_size).bit_length()  # 1 + log2 of a power of two
    if image_size < 2 or image_size & (image_size - 1):
        raise ValueError("`image_size` must be a power of two for the U-Net to reach 1x1. "
                         f"Received: image_size={image_size}")
    if len(num_channels) > levels:
        raise ValueError(f"{len(num_channels)} levels go below 1x1 at {image_size}x{image_size} "
                         f"(at most {levels}). Received: num_channels={num_channels}")
    return num_channels + num_channels[-1:] * (levels - len(num_channels))


def latent_resolutions(num_channels, image_size, latent_dims=None):
    """The side of each latent level, coarse to fine, for images of side `image_size`: the
    coarsest decoder levels, `image_size / 2**(len(num_channels) - 1)` first."""
    latent_dims = default_latent_dims(num_channels) if latent_dims is None else latent_dims
    coarsest = image_size // 2 ** (len(num_channels) - 1)
    return [coarsest * 2 ** level for level in range(len(latent_dims))]


@keras.saving.register_keras_serializable(package="tfprobunet")
class HierarchicalProbabilisticUNet(SegmentationSampler):
    """The Hierarchical Probabilistic U-Net (HPU-Net): a U-Net of pre-activated residual blocks
    whose decoder draws a per-pixel Gaussian latent at each of its `len(latent_dims)` coarsest
    levels, each conditioned on the coarser ones through the decoder features it reads. The
    prior net sees the image, the posterior net (a second, separate net) the one-hot
    segmentation concatenated with the image. Training reconstructs through the *prior* net
    with the posterior's latents injected, and the loss is GECO's
    `lambda * (moving average of the mined cross-entropy - kappa * mined pixels) + KL`, the KL
    analytic, summed over the latents' pixels and levels (`tfprobunet.models.geco`).

    Each sample runs the whole decoder (the latents re-enter it level by level); the encoder
    runs once per image. Hence no `features` serving signature: only `serving_default`.

    Args:
        num_classes: K.
        num_channels: the residual blocks' channels per level, fine to coarse (reference,
            LIDC: `(24, 48, 96, 192, 192, 192, 192, 192)`); the 3x3 convolutions inside a
            block have half as many (at least 1), as the reference's
            `down_channels_per_block`. Image sides must be multiples of
            `2**(len(num_channels) - 1)` (128 for the reference's).
        convs_per_block: 3x3 convolutions per residual block (reference: 3).
        blocks_per_level: residual blocks per level (reference: 3).
        latent_dims: latent channels per latent level, coarse to fine (the coarsest level is
            the bottleneck); at most `len(num_channels) - 1` levels. None: one channel at each
            of `min(4, len(num_channels) - 1)` levels (the reference's `(1, 1, 1, 1)` at 1x1,
            2x2, 4x4 and 8x8 for 128x128 images).
        top_k_fraction: the reconstruction loss sums the cross-entropy of the
            `ceil(top_k_fraction * h * w)` pixels of each image it mines (reference: 0.02;
            1 uses every pixel). The reference mines `floor(0.02 * b * h * w)` pixels over the
            whole batch; here each image gets its own share, so an example's loss does not
            depend on the others in its batch (nor on how a distribution strategy splits it).
        top_k_mode: `"stochastic"` (reference): the mined pixels are a draw without
            replacement with probabilities proportional to their loss (Gumbel top-k);
            `"deterministic"`: the pixels with the largest losses. Pixels labelled 255 are
            never mined.
        geco_target: kappa, nats per mined pixel (reference: 0.05): GECO constrains the
            moving average (decay 0.99) of the reconstruction to `kappa * mined pixels`; the
            Lagrange multiplier `lambda = softplus(v)**2` starts at 1 and v is trained by the
            model's optimizer, its gradient scaled by `-geco_rate`. None: the beta-ELBO
            `reconstruction + beta * KL` instead (the reference's `type='elbo'`).
        geco_rate: the multiplier's gradient scale (reference: 1e-2; with Adam it hardly
            matters).
        beta: the KL weight when `geco_target` is None.
        weight_decay: L2 `weight_decay * sum(w**2)` on every kernel *and bias*, as the
            reference's regularisers (reference: 1e-5); 0 disables it.
        seed, ged_samples, ged_classes: as for `ProbabilisticUNet` (`SegmentationSampler`).

    The reference's optimizer, learning rate and schedule were never released: train it with
    the library's recipes. Logged: `loss`, `reconstruction` (mined cross-entropy per image),
    `kl` and, with GECO, `geco_lambda` (its mean over the epoch's steps).

    Shapes: images `(b, h, w, c)` float32; segmentations `(b, h, w)` int with values in
    `[0, num_classes)` or 255 (ignored).

    Example:

    ```python
    model = tfprobunet.models.HierarchicalProbabilisticUNet(num_channels=[16, 32, 64, 64])
    model.compile(optimizer=keras.optimizers.Adam(1e-4))
    model.fit(train_ds, epochs=10)            # yields (images, segmentations)
    logits = model.sample(images, 16)         # (b, 16, h, w, 2)
    ```
    """

    TERMS = ("loss", "reconstruction", "kl", "geco_lambda")
    LOSS_NAME = "its built-in GECO loss (mined cross-entropy constraint + KL)"

    def __init__(self, num_classes=2, num_channels=(24, 48, 96, 192, 192, 192, 192, 192),
                 convs_per_block=3, blocks_per_level=3, latent_dims=None, top_k_fraction=0.02,
                 top_k_mode="stochastic", geco_target=0.05, geco_rate=0.01, beta=1.0,
                 weight_decay=1e-5, seed=None, ged_samples=16, ged_classes=None, **kwargs):
        super().__init__(num_classes, num_channels, convs_per_block, weight_decay, seed,
                         ged_samples, ged_classes, **kwargs)
        levels = len(self.num_channels)
        if levels < 2:
            raise ValueError("`num_channels` needs at least 2 levels: the latents live in the "
                             f"decoder. Received: num_channels={list(num_channels)}")
        if latent_dims is None:
            latent_dims = default_latent_dims(self.num_channels)
        latent_dims = tuple(latent_dims)
        if not (1 <= len(latent_dims) < levels
                and all(isinstance(n, int) and n > 0 for n in latent_dims)):
            raise ValueError(f"`latent_dims` must list 1 to {levels - 1} positive integers (one "
                             "per latent level, coarse to fine; at most len(num_channels) - 1). "
                             f"Received: latent_dims={list(latent_dims)}")
        for name, value in (("blocks_per_level", blocks_per_level),
                            ("convs_per_block", convs_per_block)):
            check_number(name, value, 1, integer=True, example=3)
        check_number("top_k_fraction", top_k_fraction, maximum=1.0, above=0.0, example=0.02)
        check_model_sizes(dict(num_channels=self.num_channels, convs_per_block=convs_per_block,
                               blocks_per_level=blocks_per_level, latent_dims=latent_dims))
        if top_k_mode not in TOP_K_MODES:
            raise ValueError(f"`top_k_mode` must be one of {TOP_K_MODES}. Received: "
                             f"top_k_mode={top_k_mode!r}")
        check_model_numbers(dict(geco_target=geco_target, geco_rate=geco_rate, beta=beta))
        if geco_target is None:
            self.TERMS = type(self).TERMS[:3]

        down = tuple(max(1, c // 2) for c in self.num_channels)
        shared = dict(channels=self.num_channels, down_channels=down,
                      blocks_per_level=blocks_per_level, convs_per_block=convs_per_block,
                      weight_decay=weight_decay)
        # The prior's and the posterior's input channels (image, segmentation) are known when
        # the model is built: they are created there.
        self.prior = self.posterior = None
        with layers_lib.own_policy(self):
            self.stitch = hl.StitchingDecoder(num_latent_levels=len(latent_dims),
                                              num_classes=num_classes, name="stitch", **shared)
        self._shared = dict(shared, latent_dims=latent_dims)
        self.geco = None if geco_target is None else geco_lib.GECO(geco_rate, name="geco")
        self._create_trackers()

        self.blocks_per_level = blocks_per_level
        self.latent_dims = latent_dims
        self.top_k_fraction = float(top_k_fraction)
        self.top_k_mode = top_k_mode
        self.geco_target = None if geco_target is None else float(geco_target)
        self.geco_rate = float(geco_rate)
        self.beta = float(beta)

    # ------------------------------------------------------------------ building
    def build(self, input_shape):
        """Create every weight, the posterior's included, from the images' `(b, h, w, c)`."""
        input_shape = tuple(input_shape)
        if len(input_shape) != 4 or input_shape[-1] is None:
            raise ValueError("The model is built from images of shape (b, h, w, c) with a known "
                             f"channel count c. Received: input_shape={input_shape}.")
        self.image_channels = input_shape[-1]
        with layers_lib.own_policy(self):
            self.prior = hl.HierarchicalCore(input_channels=self.image_channels, name="prior",
                                             **self._shared)
            # The blocks after its last latent would compute features nothing reads.
            self.posterior = hl.HierarchicalCore(
                input_channels=self.num_classes + self.image_channels, final_blocks=False,
                name="posterior", **self._shared)
        for part in (self.prior, self.posterior, self.stitch):
            part.build()
        if self.geco is not None:
            self.geco.build()
        self.built = True

    # ------------------------------------------------------------------ the nets
    def _level_noise(self, shape, seed, level):
        """Standard normal noise for latent level `level`: from the seed generator, or
        stateless from `seed` (each level its own stream)."""
        if seed is None:
            return self._noise(shape)
        return tf.random.stateless_normal(shape, seed=tf.random.experimental.stateless_fold_in(
            seed_pair(seed), level))

    def _chooser(self, seed=None, latents=None, mean=False):
        """`choose(level, loc, log_scale)` for the cores: the given latent of that level, the
        mean (`mean`: a bool, or one per level), or a draw `loc + exp(log_scale) * noise`."""
        means = [mean] * len(self.latent_dims) if isinstance(mean, bool) else list(mean)

        def choose(level, loc, log_scale):
            if latents is not None and latents[level] is not None:
                return tf.cast(latents[level], tf.float32)
            if means[level]:
                return loc
            return loc + tf.exp(log_scale) * self._level_noise(tf.shape(loc), seed, level)
        return choose

    def _posterior_input(self, images, segmentations):
        # One-hot segmentation first, then the image (reference, model.py:411-414). Label 255
        # one-hot encodes to zeros.
        one_hot = tf.one_hot(segmentations, self.num_classes, dtype=self.compute_dtype)
        return tf.concat([one_hot, keras.ops.cast(images, self.compute_dtype)], axis=-1)

    def _posterior_and_prior(self, images, segmentations, seed=None, latents=None,
                             use_posterior_mean=False):
        """The posterior net (latents drawn, or given), and the prior net run with the
        posterior's latents injected (reference: `_q_sample`, `_p_sample_z_q`)."""
        posterior = self.posterior(self._posterior_input(images, segmentations),
                                   choose=self._chooser(seed, latents, use_posterior_mean))
        prior = self.prior(keras.ops.cast(images, self.compute_dtype),
                           choose=self._chooser(latents=posterior["latents"]))
        return posterior, prior

    @staticmethod
    def _kl(posterior, prior):
        """KL(Q || P) per example, `(b,)`: analytic per pixel, summed over the pixels and the
        levels (reference, model.py:490-536)."""
        total = 0.0
        for (q_loc, q_log_scale), (p_loc, p_log_scale) in zip(posterior["parameters"],
                                                            prior["parameters"]):
            per_pixel = losses.analytic_kl(q_loc, q_log_scale, p_loc, p_log_scale)
            total += tf.reduce_sum(per_pixel, axis=(1, 2))
        return total

    # ------------------------------------------------------------------ public operations
    def distributions(self, images, segmentations, seed=None, latents=None):
        """The per-level Gaussians that training compares: the posterior's, and the prior's
        with the posterior's latents injected.

        Args:
            images: `(b, h, w, c)` float. segmentations: `(b, h, w)` int.
            seed: None (the seed generator) or a stateless seed for the posterior's draws.
            latents: None, or a list with one entry per latent level (coarse to fine): a
                posterior latent `(b, h_l, w_l, latent_dims[l])` to use instead of a draw,
                or None to draw it.

        Returns:
            dict: `posterior` and `prior`, lists (coarse to fine) of `(loc, log_scale)`, each
            `(b, h_l, w_l, latent_dims[l])` float32 (scale = exp(log_scale)), and `latents`,
            the posterior latents used.
        """
        images, segmentations = self._check_pair(images, segmentations)
        posterior, prior = self._posterior_and_prior(images, segmentations, seed, latents)
        return dict(posterior=posterior["parameters"], prior=prior["parameters"],
                    latents=posterior["latents"])

    def kl(self, images, segmentations, seed=None):
        """KL(Q || P) per example `(b,)`, summed over the latents' pixels and levels, at a
        posterior draw (see `distributions`)."""
        images, segmentations = self._check_pair(images, segmentations)
        return self._kl(*self._posterior_and_prior(images, segmentations, seed))

    def reconstruct(self, images, segmentations, use_posterior_mean=True, seed=None):
        """Logits `(b, h, w, K)` of the prior net run with the posterior's latents (its means,
        or a draw) injected, as training decodes them (training draws).

        The default, `use_posterior_mean=True`, is this library's convention for every
        model's `reconstruct` (deterministic, for tests and figures); the reference's
        `reconstruct(seg, img, mean=False)` draws from the posterior by default (model.py:448-463):
        pass `use_posterior_mean=False` for its behaviour."""
        images, segmentations = self._check_pair(images, segmentations)
        _, prior = self._posterior_and_prior(images, segmentations, seed,
                                             use_posterior_mean=use_posterior_mean)
        return self.stitch(prior["encoder"], prior["decoder"])

    def call(self, images, training=None):
        """Logits `(b, h, w, K)` with every latent at its prior mean: deterministic."""
        images = self._check_images(images)
        self._ensure_built(images)
        prior = self.prior(keras.ops.cast(images, self.compute_dtype),
                           choose=self._chooser(mean=True))
        return self.stitch(prior["encoder"], prior["decoder"])

    def sample(self, images, num_samples=1, seed=None, mean_levels=None):
        """Logits `(b, m, h, w, K)` of `num_samples` draws per image from the prior (`seed`: as
        for `ProbabilisticUNet.sample`): the encoder runs once per image, the decoder once per
        sample, each level's noise its own stateless stream when `seed` is given.
        `mean_levels`: None, or one bool per latent level (coarse to fine), True taking that
        level's prior mean instead of a draw: the reference notebook's `[1, 1, 1, 0]` varies
        only the finest scale ("local" samples), `[0, 1, 1, 1]` only the coarsest."""
        check_num_samples(num_samples, images, self.num_classes)
        if mean_levels is not None and len(mean_levels) != len(self.latent_dims):
            raise ValueError(f"`mean_levels` must hold one bool per latent level "
                             f"({len(self.latent_dims)}). Received: {mean_levels!r}")
        images = self._check_images(images)
        self._ensure_built(images)
        encoder = self.prior.encode(keras.ops.cast(images, self.compute_dtype))
        tiled = [tf.repeat(x, num_samples, axis=0) for x in encoder]  # image-major
        prior = self.prior.decode(tiled, self._chooser(seed, mean=[
            bool(m) for m in mean_levels or [False] * len(self.latent_dims)]))
        logits = self.stitch(tiled, prior["decoder"])
        shape = tf.shape(images)
        return tf.reshape(logits, tf.concat([shape[:1], [num_samples], shape[1:3],
                                             [self.num_classes]], axis=0))

    # ------------------------------------------------------------------ training
    def _loss_terms(self, images, segmentations):
        posterior, prior = self._posterior_and_prior(images, segmentations)
        kl = self._kl(posterior, prior)
        logits = self.stitch(prior["encoder"], prior["decoder"])
        noise = None
        if self.top_k_mode == "stochastic":
            noise = losses.gumbel_noise(keras.random.uniform(tf.shape(segmentations),
                                                             seed=self.seed_generator))
        reconstruction, mined = losses.top_k_cross_entropy(segmentations, logits,
                                                           self.top_k_fraction, noise)
        terms = {"reconstruction": reconstruction, "kl": kl}
        if self.geco is None:
            terms["loss"] = reconstruction + self.beta * kl
        else:
            terms["loss"] = self.geco.objective(reconstruction, self.geco_target * mined) + kl
            terms["geco_lambda"] = tf.fill(tf.shape(kl), tf.stop_gradient(
                self.geco.lagrange_multiplier()))
        return terms

    def _after_train_step(self, terms, segmentations, logs):
        if self.geco is not None:
            self.geco.update(terms["reconstruction"])
        return logs

    # ------------------------------------------------------------------ config
    def get_config(self):
        config = super().get_config()
        config.update(
            blocks_per_level=self.blocks_per_level,
            latent_dims=list(self.latent_dims),
            top_k_fraction=self.top_k_fraction,
            top_k_mode=self.top_k_mode,
            geco_target=self.geco_target,
            geco_rate=self.geco_rate,
            beta=self.beta,
        )
        return config
