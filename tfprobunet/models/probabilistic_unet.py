"""`ProbabilisticUNet`: the model of Kohl et al., "A Probabilistic U-Net for Segmentation of
Ambiguous Images", NeurIPS 2018, as a subclassed `keras.Model`."""

import keras
import tensorflow as tf

from tfprobunet import layers as layers_lib
from tfprobunet import losses
from tfprobunet import metrics as metrics_lib
from tfprobunet.defaults import check_model_numbers
from tfprobunet.models import geco as geco_lib
from tfprobunet.models.base import IGNORE_LABEL, SegmentationSampler
from tfprobunet.models.checks import check_model_sizes, check_num_samples


@keras.saving.register_keras_serializable(package="tfprobunet")
class ProbabilisticUNet(SegmentationSampler):
    """The Probabilistic U-Net: a U-Net whose output depends on a latent z drawn from a
    prior net P(z|X); trained as a conditional VAE with a posterior net Q(z|X, Y).

    For one image, `sample(images, m)` gives m consistent segmentations, drawn from the prior
    that training fits to the annotations' variants (how well their frequencies match: docs/recipes.md,
    "What calibrates at CPU budgets"). The U-Net and the prior run once per image; only the
    small `FComb` head runs per sample.

    "Official" below: the official repository (github.com/SimonKohl/probabilistic_unet), whose
    only configuration is for Cityscapes (`training/prob_unet_config.py`).

    Args:
        num_classes: K, number of classes (2 for binary lesion masks).
        num_channels: U-Net filters per level. Default `[32, 64, 128, 192]`: the first four of
            the official configuration's seven levels (32, 64, 128, 192, 192, 192, 192); four
            levels are a choice made here. Image height and width must be multiples of
            `2**(len(num_channels) - 1)`.
        convs_per_block: 3x3 convolutions per U-Net block (official: 3).
        latent_dim: N, the latent dimension (official: 6; the paper's section 2: "N = 6, which
            performed best in our experiments").
        fcomb_layers: hidden 1x1 convolutions + ReLU in f_comb, followed by a 1x1 logits
            convolution. Default 3 hidden + 1 logits, as the official code (`Conv1x1Decoder`:
            `num_1x1_convs` hidden convs, then a logits conv; `num_1x1_convs = 3`); the paper's
            section 2 describes f_comb as "three subsequent 1x1 convolutions" in all.
        fcomb_channels: filters of those convolutions; None (official) takes the U-Net's
            first-level channels, `num_channels[0]`. A U-Net whose first level is narrow (the
            `cpu` preset's 16) gives f_comb too few units to decode every mode: with 16, one of
            the five *flips* classes was never decoded from z on some seeds, with 64 on none
            (docs/recipes.md, "What calibrates at CPU budgets"). Not in the paper.
        beta: weight of the KL term in the loss (official: 1.0).
        reconstruction: `"sum"` of the pixel cross-entropy over pixels, mean over the batch
            (official), or `"mean"` over pixels.
        kl: `"analytic"` KL (official) or `"sampled"` one-sample estimate.
        use_posterior_mean: decode the posterior mean instead of a posterior sample during
            training. Off by default (the official setting); on, training is deterministic,
            which is what reproducibility tests and strategy comparisons use.
        weight_decay: L2 coefficient on kernels only, as `weight_decay * sum(kernel**2) / 2`
            (as the official training script, `training/train_prob_unet.py`, passes
            `regularizers={'w': l2_regularizer(1.0)}`, with `regularizarion_weight = 1e-5`);
            f_comb's logits kernel is not decayed (official `Conv1x1Decoder`). 0 disables it.
        seed: int seed of the model's random draws (posterior samples in training, prior samples
            in `sample` when no seed is given). None: a random seed.
        ged_samples: samples per image for the `ged` metric that `evaluate` and `fit`'s
            validation report when the data yields all annotations per image (see `test_step`).
        ged_classes: the classes `ged` scores (default: class 1 for K = 2, all K otherwise;
            the official Cityscapes evaluation scores the flipped classes and their twins).
        geco_target: None (the paper's beta-ELBO), or kappa in nats per pixel: GECO (Rezende &
            Viola 2018) as the HPU-Net reference code implements it (`tfprobunet.models.geco`),
            minimising `beta * KL` subject to a reconstruction of at most kappa per valid pixel
            (with `reconstruction="mean"`, kappa itself). The training objective becomes
            `lambda * (c) + beta * KL`, c the moving average (decay 0.99, starting at the first
            batch's value) of the batch's reconstruction minus kappa times its valid pixels per
            image, the reconstruction's gradient passed through the average; the Lagrange
            multiplier `lambda = softplus(v)**2` starts at 1 and v, a trainable weight of the
            `geco` layer, is trained by the model's optimizer with its gradient scaled by
            `-geco_rate`: lambda rises while the reconstruction is worse than kappa and falls
            while it is better. The logged `loss` stays the beta-ELBO; `geco_lambda` is logged
            after each step. Not in the paper. (Before this rule, lambda was updated as
            `lambda *= exp(geco_rate * tanh(c / kappa))`: `.keras` files of GECO models saved
            then hold other weights and do not load.)
        geco_rate: the multiplier's gradient scale (reference: 1e-2); with SGD at learning
            rate r a step moves v by `r * geco_rate * c * d lambda / d v`; with Adam only the
            sign of c matters.
        beta_warmup_steps: train with a KL weight rising linearly from 0 to `beta` over this
            many optimizer steps (KL annealing, not in the paper), so that the posterior puts
            information into every latent direction before the KL pulls it towards the prior.
            The logged `loss` is the beta-ELBO with the full `beta` throughout. 0: off.
        energy_weight: 0 (the paper's loss), or a weight in nats: add `energy_weight` times a
            differentiable surrogate of the energy score (Gneiting & Raftery 2007) of
            `energy_samples` segmentations drawn from the *prior* against the training
            segmentation (`losses.energy_score`: a soft `1 - IoU` on softmax probabilities).
            The ELBO trains the prior only to cover the posteriors; this term compares what
            `sample` draws with the annotations. With hard samples and d = 1 - IoU of binary
            masks the energy score is a proper scoring rule, related to GED (see
            `losses.energy_score`); the soft version trained here is a surrogate, not shown to
            be proper nor equal to GED.
            Only f_comb runs per extra sample. Logged as `energy`. Not in the paper.
        energy_samples: prior samples per image for the energy score (>= 2).

    Shapes: images `(b, h, w, c)` float32; segmentations `(b, h, w)` int with values in
    `[0, num_classes)` or 255 (ignored).

    Example:

    ```python
    model = tfprobunet.ProbabilisticUNet(num_classes=2, num_channels=[16, 32, 64])
    model.compile(optimizer=keras.optimizers.Adam(1e-4))
    model.fit(train_ds, epochs=10)            # yields (images, segmentations)
    logits = model.sample(images, 16)         # (b, 16, h, w, 2)
    masks = keras.ops.argmax(logits, -1)
    ```
    """

    TERMS = ("loss", "reconstruction", "kl")
    LOSS_NAME = "its built-in beta-ELBO (cross-entropy + beta * KL)"

    def __init__(self, num_classes=2, num_channels=(32, 64, 128, 192), convs_per_block=3,
                 latent_dim=6, fcomb_layers=3, fcomb_channels=None, beta=1.0,
                 reconstruction="sum", kl="analytic", use_posterior_mean=False, weight_decay=1e-5,
                 seed=None, ged_samples=16, ged_classes=None, geco_target=None, geco_rate=0.01,
                 beta_warmup_steps=0, energy_weight=0.0, energy_samples=4, **kwargs):
        super().__init__(num_classes, num_channels, convs_per_block, weight_decay, seed,
                         ged_samples, ged_classes, **kwargs)
        num_channels = self.num_channels
        if reconstruction not in losses.RECONSTRUCTIONS:
            raise ValueError(f"`reconstruction` must be one of {losses.RECONSTRUCTIONS}. "
                             f"Received: reconstruction={reconstruction!r}")
        if kl not in losses.KL_ESTIMATORS:
            raise ValueError(f"`kl` must be one of {losses.KL_ESTIMATORS}. Received: kl={kl!r}")
        check_model_numbers(dict(beta=beta, geco_target=geco_target, geco_rate=geco_rate,
                                 energy_weight=energy_weight))
        if not isinstance(beta_warmup_steps, int) or beta_warmup_steps < 0:
            raise ValueError("`beta_warmup_steps` must be an integer >= 0. Received: "
                             f"beta_warmup_steps={beta_warmup_steps!r}")
        if fcomb_channels is not None and (not isinstance(fcomb_channels, int)
                                           or fcomb_channels < 1):
            raise ValueError("`fcomb_channels` must be None (the U-Net's first-level channels) "
                             f"or a positive integer. Received: fcomb_channels={fcomb_channels!r}")

        if not isinstance(energy_samples, int) or energy_samples < 2:
            raise ValueError("`energy_samples` must be an integer >= 2 (the energy score "
                             f"compares samples in pairs). Received: {energy_samples!r}")
        check_model_sizes(dict(latent_dim=latent_dim, fcomb_layers=fcomb_layers,
                               fcomb_channels=fcomb_channels, energy_samples=energy_samples,
                               beta_warmup_steps=beta_warmup_steps))
        self.energy_weight = float(energy_weight)
        self.energy_samples = energy_samples
        if self.energy_weight:
            self.TERMS = (*type(self).TERMS, "energy")

        gaussian_args = dict(latent_dim=latent_dim, num_channels=num_channels,
                             convs_per_block=convs_per_block, weight_decay=weight_decay)
        with layers_lib.own_policy(self):  # mixed precision: the parts compute as the model
            self.unet = layers_lib.UNet(num_channels, convs_per_block, weight_decay, name="unet")
            self.prior = layers_lib.AxisAlignedGaussian(**gaussian_args, name="prior")
            self.posterior = layers_lib.AxisAlignedGaussian(**gaussian_args, name="posterior")
            self.fcomb = layers_lib.FComb(num_classes, fcomb_channels or num_channels[0],
                                          fcomb_layers, weight_decay, name="fcomb")
            self.geco = None if geco_target is None else geco_lib.GECO(geco_rate, name="geco")
        self._create_trackers()

        self.latent_dim = latent_dim
        self.fcomb_layers = fcomb_layers
        self.fcomb_channels = fcomb_channels
        self.beta = float(beta)
        self.reconstruction = reconstruction
        self.kl = kl
        self.use_posterior_mean = use_posterior_mean
        self.geco_target = None if geco_target is None else float(geco_target)
        self.geco_rate = float(geco_rate)
        self.beta_warmup_steps = beta_warmup_steps

    # ------------------------------------------------------------------ building
    def build(self, input_shape):
        """Create every weight, the posterior's included, from the images' shape `(b, h, w, c)`.

        Keras builds a model by tracing `call()`, which never runs the posterior net: without
        this, `fit` under a distribution strategy fails on the posterior's late variables.
        """
        input_shape = tuple(input_shape)
        if len(input_shape) != 4 or input_shape[-1] is None:
            raise ValueError("The model is built from images of shape (b, h, w, c) with a known "
                             f"channel count c. Received: input_shape={input_shape}. Images "
                             "decoded in a tf.data pipeline need their channels stated: "
                             "tf.io.decode_png(data, channels=1) (or 3); channels=0 leaves the "
                             "count unknown until run time.")
        channels = input_shape[-1]
        self.image_channels = channels
        self.unet.build(input_shape)
        self.prior.build(input_shape)
        self.posterior.build(input_shape[:-1] + (channels + self.num_classes,))
        self.fcomb.build((None, None, None, self.num_channels[0]), (None, self.latent_dim))
        if self.geco is not None:
            self.geco.build()
        self.built = True

    def features(self, images):
        """Run the U-Net and the prior net once.

        Args:
            images: `(b, h, w, c)` float.

        Returns:
            `(features, prior)`: features `(b, h, w, F)` with F = `num_channels[0]`, and the
            prior `tfd.MultivariateNormalDiag` with batch shape `(b,)`, event shape `(N,)`.
        """
        images = self._check_images(images)
        self._ensure_built(images)
        return self.unet(images), self.prior(images)

    def decode(self, features, z):
        """Segmentation logits for given features and latents: only `FComb` runs.

        Args:
            features: `(b, h, w, F)` from `features()`.
            z: `(b, N)` or `(b, m, N)`.

        Returns:
            logits `(b, h, w, K)` or `(b, m, h, w, K)`.
        """
        z = tf.cast(tf.convert_to_tensor(z), tf.float32)
        if z.shape.rank not in (2, 3) or z.shape[-1] != self.latent_dim:
            raise ValueError(f"`z` must have shape (b, {self.latent_dim}) or (b, m, "
                             f"{self.latent_dim}). Received shape {z.shape}.")
        return self.fcomb(features, z)

    def sample(self, images, num_samples=1, seed=None):
        """Draw `num_samples` segmentations per image from the prior.

        Args:
            images: `(b, h, w, c)` float.
            num_samples: m >= 1.
            seed: None (the model's seed generator), an int, or a `(2,)` int tensor for
                stateless, reproducible draws.

        Returns:
            logits `(b, m, h, w, K)`; `argmax(-1)` gives the label maps.
        """
        check_num_samples(num_samples, images, self.num_classes)
        features, prior = self.features(images)
        return self.decode(features, self.prior_latents(prior.loc, prior.stddev(), num_samples,
                                                        seed))

    def prior_latents(self, loc, scale, num_samples, seed=None):
        """Draw `num_samples` latents per image from the prior N(loc, diag(scale^2)).

        The draw that `sample` and the exported serving signatures share: the same seed gives
        the same z in both.

        Args:
            loc: `(b, N)` prior means, e.g. `features(images)[1].loc`.
            scale: `(b, N)` prior standard deviations, `> 0`.
            num_samples: m >= 1, an int or an int32 scalar tensor.
            seed: as for `sample`.

        Returns:
            z `(b, m, N)` = `loc + scale * noise`.
        """
        noise = self._noise(tf.stack([tf.shape(loc)[0], num_samples, self.latent_dim]), seed)
        return loc[:, None] + scale[:, None] * noise

    def posterior_distribution(self, images, segmentations):
        """Q(z | X, Y): the posterior net on `concat(images, one_hot(segmentations) - 0.5)`.

        Args:
            images: `(b, h, w, c)` float. segmentations: `(b, h, w)` int.

        Returns:
            `tfd.MultivariateNormalDiag`, batch shape `(b,)`, event shape `(N,)`.
        """
        images, segmentations = self._check_pair(images, segmentations)
        return self.posterior(self._posterior_input(images, segmentations))

    def _posterior_input(self, images, segmentations):
        # Label 255 one-hot encodes to zeros, so ignored pixels read as -0.5 in every channel.
        one_hot = tf.one_hot(segmentations, self.num_classes, dtype=images.dtype)
        return tf.concat([images, one_hot - 0.5], axis=-1)

    def reconstruct(self, images, segmentations, use_posterior_mean=True, seed=None):
        """Logits `(b, h, w, K)` decoded from the posterior given the images and segmentations:
        at its mean (default) or at a sample. The prior net does not run."""
        posterior = self.posterior_distribution(images, segmentations)
        z = posterior.loc
        if not use_posterior_mean:
            z = z + posterior.stddev() * self._noise(tf.shape(z), seed)
        return self.decode(self.unet(images), z)

    def call(self, images, training=None):
        """Logits `(b, h, w, K)` decoded at the prior mean: deterministic, what `predict` gives."""
        features, prior = self.features(images)
        return self.decode(features, prior.loc)

    # ------------------------------------------------------------------ training
    def elbo_terms(self, images, segmentations):
        """Per-example `loss`, `reconstruction` and `kl`, each `(b,)`: the negative beta-ELBO
        with z drawn from the posterior (or at its mean if `use_posterior_mean`)."""
        return self.loss_terms(images, segmentations)

    def _loss_terms(self, images, segmentations):
        features = self.unet(images)
        p_loc, p_log_scale = self.prior.loc_log_scale(images)
        q_loc, q_log_scale = self.posterior.loc_log_scale(
            self._posterior_input(images, segmentations))
        if self.use_posterior_mean:
            noise = tf.zeros_like(q_loc)
        else:
            noise = self._noise(tf.shape(q_loc))
        z = q_loc + tf.exp(q_log_scale) * noise
        logits = self.decode(features, z)
        terms = losses.elbo_loss(segmentations, logits, noise, q_loc, q_log_scale, p_loc,
                                 p_log_scale, beta=self.beta, reconstruction=self.reconstruction,
                                 kl=self.kl)
        if self.energy_weight:
            z = self.prior_latents(p_loc, tf.exp(p_log_scale), self.energy_samples)
            probabilities = tf.nn.softmax(tf.cast(self.decode(features, z), tf.float32))
            terms["energy"] = losses.energy_score(
                probabilities, segmentations,
                metrics_lib.scored_classes(self.num_classes, self.ged_classes))
            terms["loss"] = terms["loss"] + self.energy_weight * terms["energy"]
        if self.geco is not None:
            # The constraint's allowance per example: kappa per valid pixel (per pixel summed).
            pixels = 1.0
            if self.reconstruction == "sum":
                pixels = tf.reduce_sum(tf.cast(segmentations != IGNORE_LABEL, tf.float32), (1, 2))
            terms["geco_threshold"] = self.geco_target * pixels * tf.ones_like(terms["kl"])
        return terms

    def _kl_weight(self):
        """beta, ramped up from 0 over the first `beta_warmup_steps` optimizer steps."""
        if not self.beta_warmup_steps:
            return self.beta
        progress = tf.cast(self.optimizer.iterations, tf.float32) / self.beta_warmup_steps
        return self.beta * tf.minimum(progress, 1.0)

    def _objective(self, terms):
        if self.geco is None and not self.beta_warmup_steps:
            return terms["loss"]
        objective = terms["reconstruction"] if self.geco is None else self.geco.objective(
            terms["reconstruction"], terms["geco_threshold"])
        objective += self._kl_weight() * terms["kl"]
        if self.energy_weight:
            objective += self.energy_weight * terms["energy"]
        return objective

    def _after_train_step(self, terms, segmentations, logs):
        if self.geco is not None:
            logs["geco_lambda"] = self.geco.update(terms["reconstruction"])
        return logs

    # ------------------------------------------------------------------ config
    def get_config(self):
        config = super().get_config()
        config.update(
            latent_dim=self.latent_dim,
            fcomb_layers=self.fcomb_layers,
            fcomb_channels=self.fcomb_channels,
            beta=self.beta,
            reconstruction=self.reconstruction,
            kl=self.kl,
            use_posterior_mean=self.use_posterior_mean,
            geco_target=self.geco_target,
            geco_rate=self.geco_rate,
            beta_warmup_steps=self.beta_warmup_steps,
            energy_weight=self.energy_weight,
            energy_samples=self.energy_samples,
        )
        return config
