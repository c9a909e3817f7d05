"""`CategoricalDiffusionSegmenter`: the Conditional Categorical Diffusion Model (CCDM) of Zbinden
et al., "Stochastic Segmentation with Conditional Categorical Diffusion Models", ICCV 2023: a
categorical (multinomial) diffusion over label maps, conditioned on the image.

"The reference" below: github.com/LarsDoorenbos/ccdm-stochastic-segmentation
(`ddpm/models/diffusion_denoising.py`: schedules, `q_xt_given_x0`, `theta_post`,
`theta_post_prob`, `forward_denoising`; `ddpm/trainer.py`, `Trainer.train_step`: the loss;
`params.yml`: the defaults).
"""

import math

import keras
import numpy as np
import tensorflow as tf

from tfprobunet import layers as layers_lib
from tfprobunet import losses
from tfprobunet.defaults import MAX_TIME_STEPS, NOISE_SCHEDULES
from tfprobunet.models.base import IGNORE_LABEL, UNetWithHeads
from tfprobunet.models.checks import RNG_ALGORITHM, seed_pair

# The reference's floor on probabilities before their log (loss) and before sampling.
PROBABILITY_FLOOR = 1e-12
# The stateless seed of `call`: a diffusion model has no mean path, so `call` (and `predict`)
# is one chain drawn with this seed.
CALL_SEED = 0
# The cosine schedule's offset s (reference, `params.yml`: `beta_schedule_params: s: 0.008`),
# and the linear schedule's first and last beta (reference, `linear_schedule`).
COSINE_OFFSET = 0.008
LINEAR_BETAS = (1e-2, 0.2)


def diffusion_schedule(name, time_steps):
    """The reference's noise schedules (`cosine_schedule`, `linear_schedule`), in float64.

    Args:
        name: `"cosine"` (the reference's default) or `"linear"`.
        time_steps: T.

    Returns:
        `(betas, alphas, cumalphas)`, each `(T,)`; entry `t - 1` belongs to step t. Linear:
        `betas` evenly from 0.01 to 0.2, `cumalphas` their running product of `1 - betas`.
        Cosine, with f(u) = cos((u + s) / (1 + s) * pi / 2)^2: `betas[i] = min(1 - f((i + 1)/T)
        / f(i/T), 0.999)` and, as the reference has it, `cumalphas[i] = f(i/T)`: one step
        behind the running product of its `alphas` (and not divided by f(0)).
    """
    if name == "linear":
        betas = np.linspace(*LINEAR_BETAS, time_steps)
        alphas = 1.0 - betas
        return betas, alphas, np.cumprod(alphas)
    if name != "cosine":
        raise ValueError(f"`noise_schedule` must be one of {NOISE_SCHEDULES}. "
                         f"Received: noise_schedule={name!r}")

    def f(u):
        return math.cos((u + COSINE_OFFSET) / (1.0 + COSINE_OFFSET) * math.pi / 2) ** 2

    betas = np.array([min(1.0 - f((i + 1) / time_steps) / f(i / time_steps), 0.999)
                      for i in range(time_steps)])
    cumalphas = np.array([f(i / time_steps) for i in range(time_steps)])
    return betas, 1.0 - betas, cumalphas


def denoising_steps(time_steps, steps):
    """The time steps a chain of `steps` denoising steps visits, from T down to 1: all of them
    when `steps == time_steps`, else the reference's `round(np.linspace(T, 1, steps))` (each
    visited step then takes the one-step posterior of its own t, as the reference does)."""
    if steps == time_steps:
        return list(range(time_steps, 0, -1))
    return [int(round(t)) for t in np.linspace(time_steps, 1, steps)]


def timestep_embedding(timesteps, dim, max_period=10000):
    """The sinusoidal embedding of the reference's U-Net (`unet_openai/nn.py`).

    Args:
        timesteps: `(b,)` time steps (any number type).
        dim: the embedding's size.

    Returns:
        `(b, dim)` float32: `[cos(t f_i), sin(t f_i)]`, f_i = max_period^(-i / (dim // 2)),
        padded with a zero column when `dim` is odd.
    """
    half = dim // 2
    frequencies = tf.exp(-math.log(max_period) * tf.range(half, dtype=tf.float32) / half)
    arguments = tf.cast(timesteps, tf.float32)[:, None] * frequencies[None]
    embedding = tf.concat([tf.cos(arguments), tf.sin(arguments)], axis=-1)
    if dim % 2:
        embedding = tf.concat([embedding, tf.zeros_like(embedding[:, :1])], axis=-1)
    return embedding


def _categorical(log_probabilities, seed):
    """Labels `(..., )` int32 drawn from `log_probabilities (..., K)` by the Gumbel-max trick,
    with stateless uniforms from the `(2,)` seed."""
    uniform = tf.random.stateless_uniform(tf.shape(log_probabilities), seed, alg=RNG_ALGORITHM)
    return tf.argmax(log_probabilities + losses.gumbel_noise(uniform), axis=-1,
                     output_type=tf.int32)


@keras.saving.register_keras_serializable(package="tfprobunet")
class CategoricalDiffusionSegmenter(UNetWithHeads):
    """A categorical diffusion over label maps conditioned on the image (CCDM).

    Forward (noising) process, as the reference: `q(x_t | x_(t-1)) = Cat((1 - beta_t)
    x_(t-1) + beta_t / K)`, `q(x_t | x_0) = Cat(abar_t x_0 + (1 - abar_t) / K)` (`abar_t` the
    reference's `cumalphas[t - 1]`, see `diffusion_schedule`); both tend to the uniform 1/K,
    their stationary distribution. A denoising U-Net (`layers.UNet` and a 1x1 head, softmax)
    sees `concat(one_hot(x_t), image, e(t))`, e(t) the reference's sinusoidal embedding of t
    through its two dense layers (SiLU between), and predicts x_0's class probabilities. The
    model's `p(x_(t-1) | x_t)` is the posterior `q(x_(t-1) | x_t, x_0)` averaged over that
    prediction (the reference's `theta_post_prob`; at t = 1 it is the prediction itself).

    Training (the reference's `train_step`): t uniform in 1..T per example, x_t drawn from
    `q(x_t | x_0)`, and the loss is `KL(q(x_(t-1) | x_t, x_0) || p(x_(t-1) | x_t))` summed
    over classes and pixels (`reconstruction="sum"`, the reference's; `"mean"`: over pixels),
    averaged over the batch; the reference adds no other term (its class weights are uniform).
    Pixels labelled 255 are left out of the loss and noised from the uniform distribution.

    Sampling (`sample`): each sample is its own chain, started from uniform labels; at each
    visited t the U-Net predicts x_0, `p(x_(t-1) | x_t)` is floored at 1e-12 and x_(t-1) drawn
    from it. The returned logits are the log of the last step's (t = 1) probabilities: their
    argmax is the reference's final label ("majority"), their softmax the probabilities.
    Fewer steps than T skip as the reference does (`denoising_steps`). Every draw is
    stateless from one seed (the given `seed`, or one drawn from the model's seed generator),
    each step its own stream.

    Differences from the reference: the denoiser is this package's U-Net (ReLU convolutions,
    no residual blocks, attention or normalisation, far smaller than the reference's OpenAI
    U-Net of 2 residual blocks per level with attention) and takes the time embedding as input
    channels instead of adding it inside every residual block; its head is not
    zero-initialised (a zero head would give the rest of the network no gradient at the first
    step); no Polyak averaging of the weights; weight decay as the other models (the
    reference's Adam has none); `call` is one chain drawn with the fixed seed 0.

    Args:
        num_classes, num_channels, convs_per_block, weight_decay, seed, ged_samples,
            ged_classes: as for `ProbabilisticUNet` (`SegmentationSampler`).
        time_steps: T, the diffusion's steps (the reference's 250).
        noise_schedule: `"cosine"` (the reference's, s = 0.008) or `"linear"` (0.01 to 0.2).
        sampling_steps: denoising steps of `sample` by default, 1 to T; None: all T (the
            reference's default).
        reconstruction: `"sum"` of the KL over pixels (the reference's) or `"mean"`.

    Shapes: images `(b, h, w, c)` float32; segmentations `(b, h, w)` int in `[0, K)` or 255.

    Example:

    ```python
    model = tfprobunet.models.CategoricalDiffusionSegmenter(num_classes=2, time_steps=250)
    model.compile(optimizer=keras.optimizers.Adam(1e-4))
    model.fit(train_ds, epochs=10)
    logits = model.sample(images, 16, seed=0, steps=25)   # (b, 16, h, w, 2)
    ```
    """

    LOSS_NAME = "the KL divergence of its denoising posteriors"

    def __init__(self, num_classes=2, num_channels=(32, 64, 128, 192), convs_per_block=3,
                 time_steps=250, noise_schedule="cosine", sampling_steps=None,
                 reconstruction="sum", weight_decay=1e-5, seed=None, ged_samples=16,
                 ged_classes=None, **kwargs):
        super().__init__(num_classes, num_channels, convs_per_block, reconstruction,
                         weight_decay, seed, ged_samples, ged_classes, **kwargs)
        if not isinstance(time_steps, int) or not 1 <= time_steps <= MAX_TIME_STEPS:
            raise ValueError(f"`time_steps` must be an integer from 1 to {MAX_TIME_STEPS} (the "
                             f"reference's: 250). Received: time_steps={time_steps!r}")
        if noise_schedule not in NOISE_SCHEDULES:
            raise ValueError(f"`noise_schedule` must be one of {NOISE_SCHEDULES}. "
                             f"Received: noise_schedule={noise_schedule!r}")
        self.time_steps = time_steps
        self.sampling_steps = sampling_steps
        self._check_steps(sampling_steps, "sampling_steps")
        self.noise_schedule = noise_schedule
        betas, alphas, cumalphas = diffusion_schedule(noise_schedule, time_steps)
        # The reference's posterior at t = 1: alpha_t = 0 and abar_(t-1) = 1 (x_0 itself).
        # Complements are taken in float64: 1 - abar in float32 loses digits when abar ~ 1.
        posterior_alphas = np.concatenate([[0.0], alphas[1:]])
        posterior_cumalphas = np.concatenate([[1.0], cumalphas[:-1]])
        self._tables = dict(
            betas=betas, alphas=alphas, cumalphas=cumalphas, noise=1.0 - cumalphas,
            posterior_alphas=posterior_alphas, posterior_betas=1.0 - posterior_alphas,
            posterior_cumalphas=posterior_cumalphas,
            posterior_noise=1.0 - posterior_cumalphas)
        embedding = self.num_channels[0]
        regularizer = keras.regularizers.L2(weight_decay / 2.0) if weight_decay else None
        with layers_lib.own_policy(self):
            self.unet = self._make_unet()
            self.head = self._make_head(num_classes)
            # The reference's `time_embed` (linear to 4x the first level's width, SiLU, linear),
            # then SiLU and a linear to that width (its residual blocks' `emb_layers`).
            self.time_hidden = keras.layers.Dense(4 * embedding, activation="silu",
                                                  kernel_regularizer=regularizer,
                                                  name="time_hidden")
            self.time_mixed = keras.layers.Dense(4 * embedding, activation="silu",
                                                 kernel_regularizer=regularizer,
                                                 name="time_mixed")
            self.time_out = keras.layers.Dense(embedding, kernel_regularizer=regularizer,
                                               name="time_out")
        self._create_trackers()

    @property
    def passes_per_sample(self):
        """The network passes one sample of `sample`'s default takes: its denoising steps
        (`sampling_steps`, else T). The serving limits count sample pixels once per pass."""
        return self._check_steps(None)

    def _check_steps(self, steps, name="steps"):
        """`steps` as an int in `[1, time_steps]`; None: `sampling_steps`, else T."""
        if steps is None:
            steps = self.time_steps if self.sampling_steps is None else self.sampling_steps
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not (
                1 <= steps <= self.time_steps):
            raise ValueError(f"`{name}` must be None or an integer from 1 to time_steps = "
                             f"{self.time_steps}. Received: {name}={steps!r}")
        return int(steps)

    def _table(self, name, t):
        """`(b, 1, 1, 1)` float32: the schedule's `name` entry of each step of `t (b,)`."""
        values = tf.gather(tf.constant(self._tables[name], tf.float32), tf.cast(t, tf.int32) - 1)
        return values[:, None, None, None]

    # ------------------------------------------------------------------ the nets
    def _unets_and_heads(self):
        return [(self.unet, self.head)]

    def _unet_input_shape(self, input_shape):
        extra = self.num_classes + self.num_channels[0]
        return (*input_shape[:-1], input_shape[-1] + extra)

    def build(self, input_shape):
        super().build(input_shape)
        embedding = self.num_channels[0]
        self.time_hidden.build((None, embedding))
        self.time_mixed.build((None, 4 * embedding))
        self.time_out.build((None, 4 * embedding))

    def _x0_probabilities(self, images, labels, t):
        dtype = self.compute_dtype
        embedding = timestep_embedding(t, self.num_channels[0])
        embedding = self.time_out(self.time_mixed(self.time_hidden(
            keras.ops.cast(embedding, dtype))))
        shape = tf.shape(images)
        embedding = tf.broadcast_to(embedding[:, None, None], tf.concat(
            [shape[:3], [self.num_channels[0]]], 0))
        inputs = tf.concat([tf.one_hot(labels, self.num_classes, dtype=dtype),
                            keras.ops.cast(images, dtype), embedding], axis=-1)
        logits = keras.ops.cast(self.head(self.unet(inputs)), "float32")
        return tf.nn.softmax(logits, axis=-1)

    def x0_probabilities(self, images, labels, t):
        """The denoiser's prediction of x_0.

        Args:
            images: `(b, h, w, c)` float.
            labels: `(b, h, w)` int, the noisy label map x_t.
            t: `(b,)` int in `[1, T]`.

        Returns:
            `(b, h, w, K)` float32 class probabilities.
        """
        images = self._checked_and_built(images)
        return self._x0_probabilities(images, tf.cast(labels, tf.int32), t)

    # ------------------------------------------------------------------ the diffusion
    def forward_step_probabilities(self, previous, t):
        """`q(x_t | x_(t-1))` (the reference's `q_xt_given_xtm1`): `(1 - beta_t) x_(t-1) +
        beta_t / K` for `previous (b, h, w, K)` one-hot (or probabilities) and `t (b,)`."""
        return (self._table("alphas", t) * tf.cast(previous, tf.float32)
                + self._table("betas", t) / self.num_classes)

    def forward_probabilities(self, x0, t):
        """`q(x_t | x_0)` (the reference's `q_xt_given_x0`): `abar_t x_0 + (1 - abar_t) / K`
        for `x0 (b, h, w, K)` one-hot (or probabilities) and `t (b,)` in `[1, T]`."""
        return (self._table("cumalphas", t) * tf.cast(x0, tf.float32)
                + self._table("noise", t) / self.num_classes)

    def posterior_probabilities(self, xt, x0, t):
        """`q(x_(t-1) | x_t, x_0)` averaged over `x0`'s probabilities (the reference's
        `theta_post_prob`; for one-hot `x0`, its `theta_post`).

        With `A = alpha_t x_t + (1 - alpha_t) / K`, `a = abar_(t-1)`, `u = (1 - a) / K`, the
        posterior given class d is `A * (a e_d + u) / Z_d`, `Z_d = a A_d + u sum(A)`; its
        average over `x0` is `A * (a x0 / Z + u sum_d x0_d / Z_d)` (at t = 1, alpha = 0 and
        a = 1: `x0` itself).

        Args:
            xt: `(b, h, w, K)` one-hot x_t.
            x0: `(b, h, w, K)` one-hot x_0 or probabilities over it.
            t: `(b,)` int in `[1, T]`.

        Returns:
            `(b, h, w, K)` float32 probabilities of x_(t-1).
        """
        cumalpha = self._table("posterior_cumalphas", t)
        x0 = tf.cast(x0, tf.float32)
        a = (self._table("posterior_alphas", t) * tf.cast(xt, tf.float32)
             + self._table("posterior_betas", t) / self.num_classes)
        spread = self._table("posterior_noise", t) / self.num_classes
        z = cumalpha * a + spread * tf.reduce_sum(a, axis=-1, keepdims=True)
        return a * (cumalpha * x0 / z + spread * tf.reduce_sum(x0 / z, axis=-1, keepdims=True))

    def _noisy_labels(self, x0, t, seed):
        return _categorical(tf.math.log(self.forward_probabilities(x0, t)), seed)

    def noisy_labels(self, segmentations, t, seed):
        """x_t drawn from `q(x_t | x_0)`.

        Args:
            segmentations: `(b, h, w)` int x_0 (255: drawn from the uniform distribution).
            t: `(b,)` int in `[1, T]`.
            seed: an int or a `(2,)` int tensor (stateless draws).

        Returns:
            `(b, h, w)` int32.
        """
        return self._noisy_labels(self._one_hot(segmentations), t, seed_pair(seed))

    def _one_hot(self, segmentations):
        """`(b, h, w, K)` one-hot of `segmentations`; pixels labelled 255 uniform."""
        segmentations = tf.cast(segmentations, tf.int32)
        one_hot = tf.one_hot(segmentations, self.num_classes)
        return tf.where(tf.equal(segmentations, IGNORE_LABEL)[..., None],
                        1.0 / self.num_classes, one_hot)

    # ------------------------------------------------------------------ sampling
    def _chain(self, images, seed, steps):
        """Final log-probabilities `(n, h, w, K)` of one chain per image of `images (n, h, w,
        c)`, stateless from the `(2,)` seed: step i draws with `fold_in(seed, i + 1)`."""
        shape = tf.shape(images)
        start = _categorical(tf.zeros(tf.concat([shape[:3], [self.num_classes]], 0)),
                             tf.random.experimental.stateless_fold_in(seed, 0))
        schedule = tf.constant(denoising_steps(self.time_steps, steps), tf.int32)

        def step(i, labels, _):
            t = tf.fill(shape[:1], schedule[i])
            x0 = self._x0_probabilities(images, labels, t)
            posterior = self.posterior_probabilities(
                tf.one_hot(labels, self.num_classes), x0, t)
            log_probabilities = tf.math.log(tf.maximum(posterior, PROBABILITY_FLOOR))
            labels = _categorical(log_probabilities,
                                  tf.random.experimental.stateless_fold_in(seed, i + 1))
            return i + 1, labels, log_probabilities

        initial = tf.zeros(tf.concat([shape[:3], [self.num_classes]], 0))
        _, _, log_probabilities = tf.while_loop(
            lambda i, *_: i < steps, step, (tf.constant(0), start, initial))
        return log_probabilities

    def sample(self, images, num_samples=1, seed=None, steps=None):
        """Logits `(b, m, h, w, K)` of `num_samples` (m >= 1) chains per image of `images
        (b, h, w, c)`: the log of each chain's last probabilities.

        Args:
            seed: None (a seed drawn from the model's seed generator), an int or a `(2,)` int
                tensor: stateless, reproducible draws.
            steps: denoising steps, 1 to T (None: `sampling_steps`); fewer skip as the
                reference does (`denoising_steps`).
        """
        steps = self._check_steps(steps)
        seed = self._fresh_seed() if seed is None else seed_pair(seed)
        return self._sample_copies(images, num_samples,
                                   lambda copies: self._chain(copies, seed, steps))

    def call(self, images, training=None):
        """Logits `(b, h, w, K)` of one chain per image drawn with the fixed seed `CALL_SEED`:
        deterministic, what `predict` gives."""
        return self.sample(images, 1, seed=CALL_SEED)[:, 0]

    # ------------------------------------------------------------------ training
    def _fresh_seed(self):
        """A `(2,)` int32 stateless seed drawn from the model's seed generator."""
        return keras.random.randint((2,), 0, 2**31 - 1, seed=self.seed_generator, dtype="int32")

    def _loss_terms(self, images, segmentations):
        seed = self._fresh_seed()
        t = tf.random.stateless_uniform(
            tf.shape(images)[:1], tf.random.experimental.stateless_fold_in(seed, 0), 1,
            self.time_steps + 1, dtype=tf.int32, alg=RNG_ALGORITHM)
        labels = self._noisy_labels(self._one_hot(segmentations), t,
                                    tf.random.experimental.stateless_fold_in(seed, 1))
        return {"loss": self._denoising_kl(images, segmentations, labels, t)}

    def denoising_kl(self, images, segmentations, noisy_labels, t):
        """The loss of given x_t and t: `KL(q(x_(t-1) | x_t, x_0) || p(x_(t-1) | x_t))` summed
        over classes, then over the pixels not labelled 255 (`reconstruction="sum"`) or
        averaged over them (`"mean"`).

        Args:
            images: `(b, h, w, c)` float.
            segmentations: `(b, h, w)` int x_0.
            noisy_labels: `(b, h, w)` int x_t.
            t: `(b,)` int in `[1, T]`.

        Returns:
            `(b,)` float32.
        """
        images, segmentations = self._check_pair(images, segmentations)
        return self._denoising_kl(images, segmentations, tf.cast(noisy_labels, tf.int32), t)

    def _denoising_kl(self, images, segmentations, labels, t):
        xt = tf.one_hot(labels, self.num_classes)
        target = self.posterior_probabilities(xt, self._one_hot(segmentations), t)
        predicted = self.posterior_probabilities(xt, self._x0_probabilities(images, labels, t), t)
        # torch's kl_div(log p, q): q log q (0 where q = 0) - q log p, p floored at 1e-12.
        kl = tf.reduce_sum(tf.math.xlogy(target, target) - target * tf.math.log(
            tf.maximum(predicted, PROBABILITY_FLOOR)), axis=-1)
        valid = tf.cast(tf.not_equal(tf.cast(segmentations, tf.int32), IGNORE_LABEL), tf.float32)
        total = tf.reduce_sum(kl * valid, axis=(1, 2))
        if self.reconstruction == "mean":
            return tf.math.divide_no_nan(total, tf.reduce_sum(valid, axis=(1, 2)))
        return total

    def get_config(self):
        config = super().get_config()
        config.update(time_steps=self.time_steps, noise_schedule=self.noise_schedule,
                      sampling_steps=self.sampling_steps)
        return config
