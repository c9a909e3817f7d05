"""The serving signatures of a model, as `tf.function`s with named inputs, and the checks of every
request inside their graph, where TF Serving runs them (DESIGN section 6).

Four signatures for a Probabilistic U-Net, their input and output keys part of the public API
(b batch, h x w image, m samples, F feature channels, N latent dimension, K classes, r rank;
`None` dimensions throughout):

- `serving_default`: `images (b, h, w, C) float32`, `num_samples () int32`, `seed (2,) int32`
  -> `masks (b, m, h, w) int32`, `probabilities (b, m, h, w, K) float32`
- `features`: `images` -> `features (b, h, w, F)`, `prior_loc (b, N)`, `prior_scale (b, N)`
- `sample`: `features`, `prior_loc`, `prior_scale`, `num_samples`, `seed`
  -> `masks`, `probabilities`, `z (b, m, N)`
- `decode`: `features`, `z (b, m, N)` -> `masks`, `probabilities`

Three for a Stochastic Segmentation Network, whose samples are drawn from per-pixel parameters:
- `serving_default` as above;
- `features`: `images` -> `mean (b, h, w, K)`, `diagonal (b, h, w, K)`, `factor (b, h, w, K, r)`
- `sample`: `mean`, `diagonal`, `factor`, `num_samples`, `seed` -> `masks`, `probabilities`

Three for a Mixture of Stochastic Experts, whose samples are drawn from its experts:
- `serving_default` as above;
- `features`: `images` -> `features (b, h, w, F)`, `expert_weights (b, E)` (the gate's, E
  experts)
- `sample`: `features`, `expert_weights`, `num_samples`, `seed` -> `masks`, `probabilities`

Every input is checked inside the graph: the rules a model's own inputs follow
(`tfprobunet.models.checks`: rank, channels, sizes the U-Net divides, finite values,
`num_samples >= 1`), and those of a request (`RequestChecks`): batch sizes that disagree, empty
batches or images, pixel values outside the exported `image_range`, and requests beyond the
limits the export records (`max_samples`, `max_pixels`, `max_sample_pixels`,
`max_sample_bytes`), all INVALID_ARGUMENT with a message that says what was received and what
would work.

Every export adds `info` (`info_function`), for clients: `size (2,) int32` (an image's height
and width; optional, default (1, 1)) -> `multiple () int32`, the side divisor the other
signatures need, `padded_size (2,) int32`, `size` rounded up to it, and `config () string`, the
export's `assets.extra/tfprobunet_config.json` (which TF Serving does not serve). A client pads
images to the multiple, as local prediction does, and crops the outputs back.

A client computes `features` once per image and asks `sample` for as many segmentations as it
needs: only f_comb runs per sample (an SSN's: a matrix product, no network). Sampling is
stateless, driven by `seed`: the same request gives the same masks, and `features` + `sample`
give exactly what `serving_default` gives.
"""

import json

import tensorflow as tf

from tfprobunet.defaults import MAX_PIXELS, MAX_SAMPLE_BYTES, MAX_SAMPLE_PIXELS, MAX_SAMPLES
from tfprobunet.models import checks

SIGNATURES = ("serving_default", "features", "sample", "decode")
# The signature every export adds for clients (`info_function`).
INFO = "info"
# `seed` omitted (or sent as this) draws a fresh random seed per request.
RANDOM_SEED = (-1, -1)
IMAGE_RANGE = (0.0, 1.0)

_NOT_FINITE = ("The model's {} are not finite for these inputs: their values are too large "
               "for it. Send images scaled as in training (e.g. float32 in [0, 1]) and what the "
               "`features` and `sample` signatures return (`features`, `prior_loc`, "
               "`prior_scale`, `z`; an SSN's `mean`, `diagonal`, `factor`).")


def check_image_range(image_range):
    """`(low, high)` as floats with low < high, or None; else a ValueError."""
    if image_range is None:
        return None
    try:
        low, high = (float(v) for v in image_range)
    except (TypeError, ValueError):
        low = high = None
    if low is None or not low < high:
        raise ValueError("`image_range` must be (low, high) with low < high, or None. "
                         f"Received: {image_range!r}")
    return low, high


def check_limit(name, value):
    """`value` if it is an integer >= 1, else a ValueError naming the limit `name`."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"`{name}` must be an integer >= 1. Received: {value!r}")
    return value


def samples_cheaply(model):
    """Whether `model` computes features once and decodes each sample with a small head (the
    Probabilistic U-Net's `features`, `prior_latents` and `decode`): then the export has the
    `features`, `sample` and `decode` signatures too."""
    return all(callable(getattr(model, m, None)) for m in ("features", "decode",
                                                            "prior_latents"))


def samples_from_experts(model):
    """Whether `model` draws its samples from experts weighted per image (the Mixture of
    Stochastic Experts' `features_and_weights` and `decode_experts`): then the export has the
    `features` and `sample` signatures too, and only the decoder runs per sample."""
    return all(callable(getattr(model, m, None)) for m in ("features_and_weights",
                                                            "decode_experts"))


def samples_from_parameters(model):
    """Whether `model` draws its samples from per-pixel parameters computed once (the
    Stochastic Segmentation Network's `distribution_parameters` and `sample_logits`): then the
    export has the `features` and `sample` signatures too, and a sample is a matrix product."""
    return all(callable(getattr(model, m, None)) for m in ("distribution_parameters",
                                                            "sample_logits"))


class RequestChecks:
    """The signatures' input checks (assert ops, `tfprobunet.models.checks`), against a model
    and the limits an export records.

    Args:
        model: the built model being exported.
        max_samples, max_pixels, max_sample_pixels, max_sample_bytes: the limits (see
            `export_for_serving`).
        image_range: `(low, high)` of the pixel values the model was trained on, or None.
    """

    def __init__(self, model, max_samples, max_pixels, max_sample_pixels, image_range,
                 max_sample_bytes=MAX_SAMPLE_BYTES):
        self.channels, self.features_channels = model.image_channels, model.num_channels[0]
        self.num_channels = model.num_channels
        self.num_classes, self.factor_rank = model.num_classes, getattr(model, "rank", None)
        self.max_samples, self.max_pixels = max_samples, max_pixels
        self.max_sample_pixels, self.max_sample_bytes = max_sample_pixels, max_sample_bytes
        self.image_range = image_range
        # A diffusion model's sample runs its network once per denoising step.
        self.passes = getattr(model, "passes_per_sample", 1)

    @staticmethod
    def rank(tensor, rank, name, layout):
        """`tensor` behind the check of its rank: first, alone, as the others index its shape."""
        return checks.checked([tensor], checks.rank(tensor, rank, name, layout,
                                                    in_graph=True))[0]

    def image_like(self, tensor, name, channels):
        """Checks of `images` or `features (b, h, w, c)`: rank, channels, not empty, pixels.
        Returns the checks and `tensor` behind its rank check."""
        tensor = self.rank(tensor, 4, name, f"(b, h, w, {channels})")
        shape = tf.shape(tensor)
        pixels = tf.reduce_prod(tf.cast(shape[:3], tf.int64))
        return [
            *checks.channels(tensor, channels, name, in_graph=True),
            *checks.check(pixels > 0, f"`{name}` is empty: shape {{}}; send at least one image "
                                      "of at least one pixel.", shape),
            *checks.check(pixels <= self.max_pixels,
                          f"`{name}` holds {{}} x {{}} x {{}} = {{}} pixels, above max_pixels = "
                          f"{self.max_pixels} (recorded in this export): send fewer or smaller "
                          "images per request, or export with a larger `max_pixels`.",
                          shape[0], shape[1], shape[2], pixels),
        ], tensor

    def samples(self, num_samples, shape, what="`num_samples` is {}"):
        """Checks of `num_samples` (m) per image for `shape = (b, h, w, ...)`: at most
        `max_samples`, b * m * h * w at most `max_sample_pixels` (times the network passes a
        sample takes, `passes_per_sample`: a diffusion model's denoising steps), and the K
        classes' probabilities of those pixels, b * m * h * w * K * 4 bytes
        (`defaults.sample_bytes`), at most `max_sample_bytes`. `what` names m."""
        num_samples = tf.cast(num_samples, tf.int64)
        sample_pixels = num_samples * tf.reduce_prod(tf.cast(shape[:3], tf.int64))
        # When m or b * h * w is beyond its own limit, this may overflow; that check fails.
        sample_bytes = sample_pixels * (4 * self.num_classes)
        # A sample of a diffusion model computes its pixels once per denoising step.
        work = sample_pixels * self.passes
        computed, fewer, values = "", "", [sample_pixels]
        if self.passes > 1:
            computed = (f", each computed {self.passes} times (one per denoising step): "
                        "{}")
            fewer, values = " export a model with fewer `sampling_steps`,", [sample_pixels, work]
        pixels = checks.check(
            work <= self.max_sample_pixels,
            f"The request asks for {{}} x {{}} x {{}} x {{}} = {{}} sample pixels{computed}, above "
            f"max_sample_pixels = {self.max_sample_pixels} (recorded in this export): ask for "
            f"fewer samples or images per request,{fewer} or export with a larger "
            "`max_sample_pixels`.", shape[0], num_samples, shape[1], shape[2], *values)
        return [
            *checks.check(num_samples <= self.max_samples,
                          f"{what}, above max_samples = {self.max_samples} (recorded in this "
                          "export): ask in several requests, or export with a larger "
                          "`max_samples`.", num_samples),
            *pixels,
            *checks.check(sample_bytes <= self.max_sample_bytes,
                          f"The request asks for {{}} x {{}} x {{}} x {{}} samples of "
                          f"{self.num_classes} classes: {{}} bytes of probabilities (float32), "
                          f"above max_sample_bytes = {self.max_sample_bytes} (recorded in this "
                          "export): ask for fewer samples or images per request, or export with "
                          "a larger `max_sample_bytes`.", shape[0], num_samples, shape[1],
                          shape[2], sample_bytes),
        ]

    @staticmethod
    def same_batch(named):
        """All `(name, tensor)` pairs have the first one's batch size."""
        (first, reference), *others = named
        return [op for name, tensor in others for op in checks.check(
            tf.equal(tf.shape(reference)[0], tf.shape(tensor)[0]),
            f"`{first}` and `{name}` must have the same batch size; received {{}} and {{}}.",
            tf.shape(reference)[0], tf.shape(tensor)[0])]

    def images(self, images):
        """`images (b, h, w, C)` behind all their checks."""
        asserts, images = self.image_like(images, "images", self.channels)
        images = checks.checked([images], asserts)[0]
        asserts = checks.spatial_size(images, self.num_channels, in_graph=True)
        asserts += checks.finite(images, "images", checks.IMAGES_EXAMPLE)
        images = checks.checked([images], asserts)[0]
        return checks.checked([images], self.range(images))[0]

    def range(self, images):
        """Pixel values within the range the model was trained on, give or take half of it."""
        if self.image_range is None:
            return []
        low, high = self.image_range
        margin = (high - low) / 2
        smallest, largest = tf.reduce_min(images), tf.reduce_max(images)
        return checks.check(
            (smallest >= low - margin) & (largest <= high + margin),
            f"`images` hold values from {{}} to {{}}, outside the range [{low:g}, {high:g}] this "
            f"model was exported for (image_range): scale them as in training, e.g. 8-bit "
            f"pixels divided by 255 for [0, 1].", smallest, largest)

    def num_samples(self, num_samples, shape):
        """Checks of `num_samples`: >= 1, and within the limits for `shape (b, h, w, ...)`."""
        return checks.num_samples(num_samples) + self.samples(num_samples, shape)

    def prior(self, prior_loc, prior_scale, num_samples, shape):
        """`prior_loc`, `prior_scale (b, N)` behind their checks and those of `num_samples`."""
        asserts = checks.finite(prior_loc, "prior_loc") + checks.finite(prior_scale,
                                                                        "prior_scale")
        asserts += self.num_samples(num_samples, shape)
        prior_loc, prior_scale = checks.checked([prior_loc, prior_scale], asserts)
        # After the finiteness check: NaN is not > 0 either, and that message says less.
        positive = checks.check(tf.reduce_all(prior_scale > 0), "`prior_scale` must be > 0.")
        return prior_loc, checks.checked([prior_scale], positive)[0]

    def parameters(self, mean, diagonal, factor, num_samples):
        """An SSN's `mean`, `diagonal (b, h, w, K)` and `factor (b, h, w, K, r)` behind their
        checks (ranks, shapes that agree, finite, `diagonal > 0`) and those of `num_samples`."""
        k, r = self.num_classes, self.factor_rank
        asserts, mean = self.image_like(mean, "mean", k)
        diagonal = self.rank(diagonal, 4, "diagonal", f"(b, h, w, {k})")
        factor = self.rank(factor, 5, "factor", f"(b, h, w, {k}, {r})")
        shape = tf.shape(mean)
        for name, tensor, expected in (("diagonal", diagonal, shape),
                                       ("factor", factor, tf.concat([shape, [r]], 0))):
            asserts += checks.check(
                tf.reduce_all(tf.equal(tf.shape(tensor), expected)),
                f"`{name}` must have shape {{}} for `mean` of shape {{}} (rank r = {r}); "
                "received {}.", expected, shape, tf.shape(tensor))
        for name, tensor in (("mean", mean), ("diagonal", diagonal), ("factor", factor)):
            asserts += checks.finite(tensor, name)
        asserts += self.num_samples(num_samples, shape)
        mean, diagonal, factor = checks.checked([mean, diagonal, factor], asserts)
        # After the finiteness check: NaN is not > 0 either, and that message says less.
        positive = checks.check(tf.reduce_all(diagonal > 0), "`diagonal` must be > 0.")
        return mean, checks.checked([diagonal], positive)[0], factor

    def experts(self, weights, num_samples, shape):
        """MoSE's `expert_weights (b, E)` behind their checks (finite, >= 0, summing to 1 per
        image within 1e-3; the signature fixes E) and those of `num_samples`."""
        asserts = checks.finite(weights, "expert_weights")
        asserts += self.num_samples(num_samples, shape)
        [weights] = checks.checked([weights], asserts)
        totals = tf.reduce_sum(weights, axis=-1)
        valid = checks.check(
            tf.reduce_all(weights >= 0) & tf.reduce_all(tf.abs(totals - 1.0) <= 1e-3),
            "`expert_weights` must be >= 0 and sum to 1 per image, as `features` returns them; "
            "received sums {}.", totals)
        return checks.checked([weights], valid)[0]

    def features(self, features, **others):
        """`features (b, h, w, F)` and the per-image `others` behind their checks."""
        asserts, features = self.image_like(features, "features", self.features_channels)
        asserts += checks.finite(features, "features")
        asserts += self.same_batch([("features", features), *others.items()])
        return checks.checked([features, *others.values()], asserts)


def _outputs(logits):
    """`masks` and `probabilities` of finite `logits (..., K)`."""
    [logits] = checks.checked([logits], checks.check(tf.reduce_all(tf.math.is_finite(logits)),
                                                     _NOT_FINITE.format("logits")))
    return {"masks": tf.argmax(logits, axis=-1, output_type=tf.int32),
            "probabilities": tf.nn.softmax(logits, axis=-1)}


def _fresh_seed(seed):
    """`seed`, or a random one where it is `RANDOM_SEED`."""
    random = tf.random.uniform([2], 0, 2**31 - 1, dtype=tf.int32)
    return tf.where(tf.reduce_all(tf.equal(seed, RANDOM_SEED)), random, seed)


def _specs(model):
    """The `TensorSpec` of every signature input, by name."""
    specs = {"images": tf.TensorSpec([None, None, None, model.image_channels], tf.float32,
                                     name="images"),
             "num_samples": tf.TensorSpec([], tf.int32, name="num_samples"),
             "seed": tf.TensorSpec([2], tf.int32, name="seed")}
    if samples_cheaply(model):
        n, f = model.latent_dim, model.num_channels[0]
        specs.update(features=tf.TensorSpec([None, None, None, f], tf.float32, name="features"),
                     prior_loc=tf.TensorSpec([None, n], tf.float32, name="prior_loc"),
                     prior_scale=tf.TensorSpec([None, n], tf.float32, name="prior_scale"),
                     z=tf.TensorSpec([None, None, n], tf.float32, name="z"))
    if samples_from_experts(model):
        specs.update(features=tf.TensorSpec([None, None, None, model.num_channels[0]], tf.float32,
                                            name="features"),
                     expert_weights=tf.TensorSpec([None, model.num_experts], tf.float32,
                                                  name="expert_weights"))
    if samples_from_parameters(model):
        k, r = model.num_classes, model.rank
        specs.update(mean=tf.TensorSpec([None, None, None, k], tf.float32, name="mean"),
                     diagonal=tf.TensorSpec([None, None, None, k], tf.float32, name="diagonal"),
                     factor=tf.TensorSpec([None, None, None, k, r], tf.float32, name="factor"))
    return specs


def serving_functions(model, max_samples=MAX_SAMPLES, max_pixels=MAX_PIXELS,
                      max_sample_pixels=MAX_SAMPLE_PIXELS, image_range=IMAGE_RANGE,
                      max_sample_bytes=MAX_SAMPLE_BYTES):
    """The signature functions of `model`, as `tf.function`s with named input signatures: the
    four of `SIGNATURES` for a Probabilistic U-Net, `serving_default`, `features` and `sample`
    for a Stochastic Segmentation Network and a Mixture of Stochastic Experts,
    `serving_default` alone for a model that only has
    `sample` (the baselines: each sample runs the whole network, or is one of M fixed outputs,
    so there are no features to compute once).

    Args:
        model: a built `tfprobunet.models.SegmentationSampler`.
        max_samples, max_pixels, max_sample_pixels, max_sample_bytes: the request limits the
            signatures enforce (see `export_for_serving`).
        image_range: `(low, high)` of the pixel values the model was trained on, or None (see
            `export_for_serving`).

    `num_samples` and `seed` are optional inputs (the SignatureDef's `defaults`, which TF
    Serving fills in): one sample, and a fresh random seed (`RANDOM_SEED`).

    Returns:
        dict name -> `tf.function`, in the order of `SIGNATURES`.
    """
    if not model.built or model.image_channels is None:
        raise ValueError("Build the model before exporting it (call it on images, or "
                         "`model.build((None, h, w, c))`), so its channel count is known.")
    request = RequestChecks(model, check_limit("max_samples", max_samples),
                            check_limit("max_pixels", max_pixels),
                            check_limit("max_sample_pixels", max_sample_pixels),
                            check_image_range(image_range),
                            check_limit("max_sample_bytes", max_sample_bytes))
    specs = _specs(model)
    functions = {"serving_default": _serving_default(model, request, specs)}
    if samples_cheaply(model):
        functions.update(features=_features(model, request, specs),
                         sample=_sample(model, request, specs),
                         decode=_decode(model, request, specs))
    elif samples_from_parameters(model):
        functions.update(features=_parameter_features(model, request, specs),
                         sample=_parameter_sample(model, request, specs))
    elif samples_from_experts(model):
        functions.update(features=_expert_features(model, request, specs),
                         sample=_expert_sample(model, request, specs))
    return functions


def _serving_default(model, request, specs):
    one, random_seed = tf.constant(1, tf.int32), tf.constant(RANDOM_SEED, tf.int32)

    @tf.function(input_signature=[specs["images"], specs["num_samples"], specs["seed"]])
    def serving_default(images, num_samples=one, seed=random_seed):
        images = request.images(images)
        [images] = checks.checked([images], request.num_samples(num_samples, tf.shape(images)))
        # `sample` then checks that the values are finite.
        return _outputs(model.sample(images, num_samples, _fresh_seed(seed)))

    return serving_default


def _finite_outputs(outputs, what):
    """The dict `outputs` behind the check that all its values are finite (`what` names them)."""
    finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(v)) for v in outputs.values()])
    values = checks.checked(list(outputs.values()), checks.check(finite,
                                                                 _NOT_FINITE.format(what)))
    return dict(zip(outputs, values))


def _features(model, request, specs):
    @tf.function(input_signature=[specs["images"]])
    def features(images):
        features, prior = model.features(request.images(images))
        # float32 on the wire under mixed precision too: `sample` and `decode` take float32.
        return _finite_outputs({"features": tf.cast(features, tf.float32),
                                "prior_loc": prior.loc, "prior_scale": prior.stddev()},
                               "features or prior")

    return features


def _parameter_features(model, request, specs):
    @tf.function(input_signature=[specs["images"]])
    def features(images):
        mean, diagonal, factor = model.distribution_parameters(request.images(images))
        return _finite_outputs({"mean": mean, "diagonal": diagonal, "factor": factor},
                               "mean, diagonal or factor")

    return features


def _parameter_sample(model, request, specs):
    one, random_seed = tf.constant(1, tf.int32), tf.constant(RANDOM_SEED, tf.int32)

    @tf.function(input_signature=[specs[k] for k in ("mean", "diagonal", "factor",
                                                     "num_samples", "seed")])
    def sample(mean, diagonal, factor, num_samples=one, seed=random_seed):
        mean, diagonal, factor = request.parameters(mean, diagonal, factor, num_samples)
        return _outputs(model.sample_logits(mean, diagonal, factor, num_samples,
                                            _fresh_seed(seed)))

    return sample


def _expert_features(model, request, specs):
    @tf.function(input_signature=[specs["images"]])
    def features(images):
        features, weights = model.features_and_weights(request.images(images))
        return _finite_outputs({"features": tf.cast(features, tf.float32),
                                "expert_weights": weights}, "features or expert weights")

    return features


def _expert_sample(model, request, specs):
    one, random_seed = tf.constant(1, tf.int32), tf.constant(RANDOM_SEED, tf.int32)
    e = model.num_experts

    @tf.function(input_signature=[specs[k] for k in ("features", "expert_weights",
                                                     "num_samples", "seed")])
    def sample(features, expert_weights, num_samples=one, seed=random_seed):
        features, expert_weights = request.features(
            features, expert_weights=request.rank(expert_weights, 2, "expert_weights",
                                                  f"(b, {e})"))
        expert_weights = request.experts(expert_weights, num_samples, tf.shape(features))
        return _outputs(model.decode_experts(features, expert_weights, num_samples,
                                             _fresh_seed(seed)))

    return sample


def _sample(model, request, specs):
    one, random_seed = tf.constant(1, tf.int32), tf.constant(RANDOM_SEED, tf.int32)
    n = model.latent_dim

    @tf.function(input_signature=[specs[k] for k in ("features", "prior_loc", "prior_scale",
                                                     "num_samples", "seed")])
    def sample(features, prior_loc, prior_scale, num_samples=one, seed=random_seed):
        features, prior_loc, prior_scale = request.features(
            features, prior_loc=request.rank(prior_loc, 2, "prior_loc", f"(b, {n})"),
            prior_scale=request.rank(prior_scale, 2, "prior_scale", f"(b, {n})"))
        prior_loc, prior_scale = request.prior(prior_loc, prior_scale, num_samples,
                                               tf.shape(features))
        z = model.prior_latents(prior_loc, prior_scale, num_samples, _fresh_seed(seed))
        return {**_outputs(model.decode(features, z)), "z": z}

    return sample


def _decode(model, request, specs):
    n = model.latent_dim

    @tf.function(input_signature=[specs["features"], specs["z"]])
    def decode(features, z):
        features, z = request.features(features, z=request.rank(z, 3, "z", f"(b, m, {n})"))
        samples = tf.shape(z)[1]
        asserts = checks.finite(z, "z") + checks.check(
            samples >= 1, "`z` holds {} samples per image; send at least one, (b, m, N) with "
                          "m >= 1.", samples)
        asserts += request.samples(samples, tf.shape(features), "`z` holds {} samples per image")
        [z] = checks.checked([z], asserts)
        return _outputs(model.decode(features, z))

    return decode


def info_function(multiple, config):
    """The `info` signature: what a client must know before it sends images, served because TF
    Serving does not serve `assets.extra`. Exports made before it existed lack it.

    Args:
        multiple: the side divisor of the model's images (`layers.size_divisor`).
        config: the export's JSON-able record (`assets.extra/tfprobunet_config.json`).

    Returns:
        A `tf.function`: `size (2,) int32`, an image's height and width (optional: TF Serving's
        REST API refuses a signature without inputs, so it has one; default (1, 1)) ->
        `multiple () int32`, `padded_size (2,) int32` (`size` rounded up to `multiple`, the
        size to pad the image to) and `config () string` (the record as JSON).
    """
    text = json.dumps(config)

    @tf.function(input_signature=[tf.TensorSpec([2], tf.int32, name="size")])
    def info(size=tf.constant([1, 1], tf.int32)):
        size = RequestChecks.rank(size, 1, "size", "(2,): height, width")
        [size] = checks.checked([size], checks.check(
            tf.equal(tf.size(size), 2) & tf.reduce_all(size >= 1),
            "`size` must be the (height, width) of an image, both >= 1. Received: {}.", size))
        divisor = tf.constant(multiple, tf.int32)
        return {"multiple": divisor, "padded_size": (size + divisor - 1) // divisor * divisor,
                "config": tf.constant(text)}

    return info
