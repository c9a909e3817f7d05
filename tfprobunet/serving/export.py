"""Export a `ProbabilisticUNet` as a SavedModel for TensorFlow Serving (DESIGN section 6).

Four signatures, their input and output keys part of the public API (b batch, h x w image,
m samples, F feature channels, N latent dimension, K classes; `None` dimensions throughout):

- `serving_default`: `images (b, h, w, C) float32`, `num_samples () int32`, `seed (2,) int32`
  -> `masks (b, m, h, w) int32`, `probabilities (b, m, h, w, K) float32`
- `features`: `images` -> `features (b, h, w, F)`, `prior_loc (b, N)`, `prior_scale (b, N)`
- `sample`: `features`, `prior_loc`, `prior_scale`, `num_samples`, `seed`
  -> `masks`, `probabilities`, `z (b, m, N)`
- `decode`: `features`, `z (b, m, N)` -> `masks`, `probabilities`

Every input is checked inside the graph, where TF Serving runs it: batch sizes that disagree,
NaN or Inf values, empty batches or images, and requests beyond the limits the export records
(`max_samples`, `max_pixels`, `max_sample_pixels`) are INVALID_ARGUMENT with a message that says
what was received and what would work.

A client computes `features` once per image and asks `sample` for as many segmentations as it
needs: only f_comb runs per sample. Sampling is stateless, driven by `seed`: the same request
gives the same masks, and `features` + `sample` give exactly what `serving_default` gives.

Versions are written to a temporary sibling folder and renamed into place, so TF Serving, which
polls `<base_dir>/<name>/`, never sees a half-written version. The temporary folder is marked as
being written by a file lock beside it, which the system releases when its writer dies: the
next export removes what killed exports left (`clean_stale_exports`), never a folder another
export is writing. `models.config` is updated under a file lock too, so exports of different
models that finish together all appear in it, and before the version is renamed into place, so
an export that fails (a full disk) leaves neither a version missing from it nor a temporary file.

Model names are checked by `check_model_name` wherever one names a folder (the export, the
clean-up, `models.config`): each is a folder directly inside the base, and nothing is written or
removed outside it, through `..` or a symbolic link.
"""

import contextlib
import inspect
import json
import os
import re
import shutil
import uuid

import keras
import tensorflow as tf

from tfprobunet.defaults import MAX_PIXELS, MAX_SAMPLE_PIXELS, MAX_SAMPLES  # noqa: F401
from tfprobunet import _io, saving
from tfprobunet.saving import check_finite

SIGNATURES = ("serving_default", "features", "sample", "decode")
CONFIG_ASSET = os.path.join("assets.extra", "tfprobunet_config.json")
MODELS_CONFIG = "models.config"
TMP_PREFIX = ".tmp-"  # TF Serving ignores folders whose names are not integers
LOCK_SUFFIX = ".lock"


def _checked(tensors, checks):
    """`tensors` behind the assert ops `checks`: nothing computed from them runs before every
    check passed, and a failing one answers INVALID_ARGUMENT with its message."""
    with tf.control_dependencies(checks):
        return [tf.identity(t) for t in tensors]


def _assert(condition, template, *values):
    """An assert whose message is `template` formatted with the tensors `values` (`{}`)."""
    return tf.debugging.Assert(condition, [tf.strings.format(template, values)])


def _finite(tensor, name):
    return _assert(tf.reduce_all(tf.math.is_finite(tensor)),
                   f"`{name}` contain NaN or Inf values; send finite values.")


_NOT_FINITE = ("The model's {} are not finite for these inputs: their values are too large "
               "for it. Send images scaled as in training (e.g. float32 in [0, 1]) and the "
               "`features`, `prior_loc`, `prior_scale` or `z` that the `features` and `sample` "
               "signatures return.")


def _outputs(logits):
    [logits] = _checked([logits], [_assert(tf.reduce_all(tf.math.is_finite(logits)),
                                           _NOT_FINITE.format("logits"))])
    return {"masks": tf.argmax(logits, axis=-1, output_type=tf.int32),
            "probabilities": tf.nn.softmax(logits, axis=-1)}


def _check_range(image_range):
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


def _check_limit(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"`{name}` must be an integer >= 1. Received: {value!r}")
    return value


class _Checks:
    """The signatures' input checks, against the limits an export records."""

    def __init__(self, model, max_samples, max_pixels, max_sample_pixels, image_range):
        self.channels, self.features_channels = model.image_channels, model.num_channels[0]
        self.divisor = 2 ** (len(model.num_channels) - 1)
        self.max_samples, self.max_pixels = max_samples, max_pixels
        self.max_sample_pixels = max_sample_pixels
        self.image_range = image_range

    @staticmethod
    def rank(tensor, rank, name, layout):
        # First, alone: the other checks index the shape.
        return _checked([tensor], [_assert(tf.equal(tf.rank(tensor), rank),
                                           f"`{name}` must have rank {rank}, {layout}.")])[0]

    def image_like(self, tensor, name, channels):
        """Checks of `images` or `features (b, h, w, c)`: rank, channels, not empty, pixels."""
        tensor = self.rank(tensor, 4, name, f"(b, h, w, {channels})")
        shape = tf.shape(tensor)
        pixels = tf.reduce_prod(tf.cast(shape[:3], tf.int64))
        return [
            _assert(tf.equal(shape[3], channels),
                    f"`{name}` must have {channels} channel(s), (b, h, w, {channels})."),
            _assert(pixels > 0, f"`{name}` is empty: shape {{}}; send at least one image of at "
                                "least one pixel.", shape),
            _assert(pixels <= self.max_pixels,
                    f"`{name}` holds {{}} x {{}} x {{}} = {{}} pixels, above max_pixels = "
                    f"{self.max_pixels} (recorded in this export): send fewer or smaller images "
                    "per request, or export with a larger `max_pixels`.",
                    shape[0], shape[1], shape[2], pixels),
        ], tensor

    def samples(self, num_samples, shape, what="`num_samples` is {}"):
        """Checks of `num_samples` (m) per image for `shape = (b, h, w, ...)`: at most
        `max_samples`, and b * m * h * w at most `max_sample_pixels`. `what` names m."""
        num_samples = tf.cast(num_samples, tf.int64)
        sample_pixels = num_samples * tf.reduce_prod(tf.cast(shape[:3], tf.int64))
        return [
            _assert(num_samples <= self.max_samples,
                    f"{what}, above max_samples = {self.max_samples} (recorded in this export): "
                    "ask in several requests, or export with a larger `max_samples`.",
                    num_samples),
            _assert(sample_pixels <= self.max_sample_pixels,
                    f"The request asks for {{}} x {{}} x {{}} x {{}} = {{}} sample pixels, above "
                    f"max_sample_pixels = {self.max_sample_pixels} (recorded in this export): "
                    "ask for fewer samples or images per request, or export with a larger "
                    "`max_sample_pixels`.", shape[0], num_samples, shape[1], shape[2],
                    sample_pixels),
        ]

    def same_batch(self, named):
        """All `(name, tensor)` pairs have the first one's batch size."""
        (first, reference), *others = named
        return [_assert(tf.equal(tf.shape(reference)[0], tf.shape(tensor)[0]),
                        f"`{first}` and `{name}` must have the same batch size; received {{}} "
                        f"and {{}}.", tf.shape(reference)[0], tf.shape(tensor)[0])
                for name, tensor in others]

    def images(self, images):
        checks, images = self.image_like(images, "images", self.channels)
        images = _checked([images], checks)[0]
        images = _checked([images], self.size(images) + [_finite(images, "images")])[0]
        return _checked([images], self.range(images))[0]

    def size(self, images):
        """Height and width divisible by the U-Net's factor; the message gives the nearest
        sizes that are."""
        d = self.divisor
        h, w = tf.shape(images)[1], tf.shape(images)[2]
        below_h, below_w = tf.maximum(h // d * d, d), tf.maximum(w // d * d, d)
        above_h, above_w = (h + d - 1) // d * d, (w + d - 1) // d * d
        return [_assert(tf.equal(h % d + w % d, 0),
                        f"`images` are {{}}x{{}} pixels (height x width); this model needs both "
                        f"divisible by {d}: the nearest sizes that work are {{}}x{{}} and "
                        "{}x{} (crop or pad the images to one of them).",
                        h, w, below_h, below_w, above_h, above_w)]

    def range(self, images):
        """Pixel values within the range the model was trained on, give or take half of it."""
        if self.image_range is None:
            return []
        low, high = self.image_range
        margin = (high - low) / 2
        smallest, largest = tf.reduce_min(images), tf.reduce_max(images)
        return [_assert(
            (smallest >= low - margin) & (largest <= high + margin),
            f"`images` hold values from {{}} to {{}}, outside the range [{low:g}, {high:g}] this "
            f"model was exported for (image_range): scale them as in training, e.g. 8-bit "
            f"pixels divided by 255 for [0, 1].", smallest, largest)]

    def num_samples(self, num_samples, shape):
        return [_assert(num_samples >= 1, "`num_samples` must be >= 1; received {}.",
                        num_samples)] + self.samples(num_samples, shape)

    def prior(self, prior_loc, prior_scale, num_samples, shape):
        checks = [_finite(prior_loc, "prior_loc"), _finite(prior_scale, "prior_scale")]
        checks += self.num_samples(num_samples, shape)
        prior_loc, prior_scale = _checked([prior_loc, prior_scale], checks)
        # After the finiteness check: NaN is not > 0 either, and that message says less.
        scale_positive = _assert(tf.reduce_all(prior_scale > 0), "`prior_scale` must be > 0.")
        return prior_loc, _checked([prior_scale], [scale_positive])[0]

    def features(self, features, **others):
        checks, features = self.image_like(features, "features", self.features_channels)
        checks += [_finite(features, "features")]
        checks += self.same_batch([("features", features), *others.items()])
        return _checked([features, *others.values()], checks)


def samples_cheaply(model):
    """Whether `model` computes features once and decodes each sample with a small head (the
    Probabilistic U-Net's `features`, `prior_latents` and `decode`): then the export has the
    `features`, `sample` and `decode` signatures too."""
    return all(callable(getattr(model, m, None)) for m in ("features", "decode",
                                                            "prior_latents"))


# `seed` omitted (or sent as this) draws a fresh random seed per request.
RANDOM_SEED = (-1, -1)
IMAGE_RANGE = (0.0, 1.0)


def _fresh_seed(seed):
    """`seed`, or a random one where it is `RANDOM_SEED`."""
    random = tf.random.uniform([2], 0, 2**31 - 1, dtype=tf.int32)
    return tf.where(tf.reduce_all(tf.equal(seed, RANDOM_SEED)), random, seed)


def serving_functions(model, max_samples=MAX_SAMPLES, max_pixels=MAX_PIXELS,
                      max_sample_pixels=MAX_SAMPLE_PIXELS, image_range=IMAGE_RANGE):
    """The signature functions of `model`, as `tf.function`s with named input signatures: the
    four of `SIGNATURES` for a Probabilistic U-Net, `serving_default` alone for a model that
    only has `sample` (the baselines: each sample runs the whole network, or is one of M fixed
    outputs, so there are no features to compute once).

    Args:
        model: a built `tfprobunet.models.SegmentationSampler`.
        max_samples, max_pixels, max_sample_pixels: the request limits the signatures enforce
            (see `export_for_serving`).
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
    checks = _Checks(model, _check_limit("max_samples", max_samples),
                     _check_limit("max_pixels", max_pixels),
                     _check_limit("max_sample_pixels", max_sample_pixels),
                     _check_range(image_range))
    channels = model.image_channels
    images_spec = tf.TensorSpec([None, None, None, channels], tf.float32, name="images")
    num_samples_spec = tf.TensorSpec([], tf.int32, name="num_samples")
    seed_spec = tf.TensorSpec([2], tf.int32, name="seed")

    one, random_seed = tf.constant(1, tf.int32), tf.constant(RANDOM_SEED, tf.int32)

    @tf.function(input_signature=[images_spec, num_samples_spec, seed_spec])
    def serving_default(images, num_samples=one, seed=random_seed):
        images = checks.images(images)
        [images] = _checked([images], checks.num_samples(num_samples, tf.shape(images)))
        # `sample` then checks that the values are finite.
        return _outputs(model.sample(images, num_samples, _fresh_seed(seed)))

    if not samples_cheaply(model):
        return {"serving_default": serving_default}

    n, f = model.latent_dim, model.num_channels[0]
    features_spec = tf.TensorSpec([None, None, None, f], tf.float32, name="features")
    loc_spec = tf.TensorSpec([None, n], tf.float32, name="prior_loc")
    scale_spec = tf.TensorSpec([None, n], tf.float32, name="prior_scale")
    z_spec = tf.TensorSpec([None, None, n], tf.float32, name="z")

    @tf.function(input_signature=[features_spec, loc_spec, scale_spec, num_samples_spec,
                                  seed_spec])
    def sample(features, prior_loc, prior_scale, num_samples=one, seed=random_seed):
        features, prior_loc, prior_scale = checks.features(
            features, prior_loc=checks.rank(prior_loc, 2, "prior_loc", f"(b, {n})"),
            prior_scale=checks.rank(prior_scale, 2, "prior_scale", f"(b, {n})"))
        prior_loc, prior_scale = checks.prior(prior_loc, prior_scale, num_samples,
                                              tf.shape(features))
        z = model.prior_latents(prior_loc, prior_scale, num_samples, _fresh_seed(seed))
        return {**_outputs(model.decode(features, z)), "z": z}

    @tf.function(input_signature=[images_spec])
    def features(images):
        features, prior = model.features(checks.images(images))
        # float32 on the wire under mixed precision too: `sample` and `decode` take float32.
        outputs = {"features": tf.cast(features, tf.float32), "prior_loc": prior.loc,
                   "prior_scale": prior.stddev()}
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(v)) for v in outputs.values()])
        values = _checked(list(outputs.values()), [_assert(finite, _NOT_FINITE.format(
            "features or prior"))])
        return dict(zip(outputs, values))

    @tf.function(input_signature=[features_spec, z_spec])
    def decode(features, z):
        features, z = checks.features(features, z=checks.rank(z, 3, "z", f"(b, m, {n})"))
        samples = tf.shape(z)[1]
        [z] = _checked([z], [_finite(z, "z"), _assert(
            samples >= 1, "`z` holds {} samples per image; send at least one, (b, m, N) with "
                          "m >= 1.", samples)] + checks.samples(
            samples, tf.shape(features), "`z` holds {} samples per image"))
        return _outputs(model.decode(features, z))

    return {"serving_default": serving_default, "features": features, "sample": sample,
            "decode": decode}


_VERSION = re.compile(r"[0-9]+")
MAX_VERSION = 2**63 - 1  # TF Serving's versions are int64


def version_folders(model_dir):
    """`{version: folder name}` of the version folders in `model_dir`, as TF Serving reads them:
    names of ASCII digits (`0007` is version 7) within int64; others are not versions."""
    try:
        names = os.listdir(model_dir)
    except OSError:  # missing, or not a folder
        return {}
    versions = {}
    for name in sorted(names):  # of `0007` and `7`, `7` (sorted last) wins
        if _VERSION.fullmatch(name) and 0 < int(name) <= MAX_VERSION:
            versions[int(name)] = name
    return versions


# A folder name on every file system, that is neither `.`, `..`, hidden nor temporary.
_MODEL_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,254}")


def check_model_name(name, what="`name`"):
    """`name` if it can name a served model: 1 to 255 ASCII letters, digits, `-`, `_` and `.`,
    not starting with `.` (so not `.`, `..`, nor a hidden or temporary folder), no path
    separators. Else a ValueError that says what was received; `what` names where it came from.
    """
    if not isinstance(name, str) or not _MODEL_NAME.fullmatch(name):
        raise ValueError(
            f"{what} must be 1 to 255 ASCII letters, digits, '-', '_' or '.', not starting with "
            "'.', e.g. 'probunet' or 'probunet-v2.1': it names the folder <base>/<name>/ that "
            f"TF Serving serves, which must be inside the base folder. Received: {name!r}")
    return name


def model_folder(base_dir, name):
    """`<base_dir>/<name>`, for a checked `name`; a ValueError if that is a symbolic link (it
    could lead outside the base folder, where exports must write and remove nothing)."""
    folder = os.path.join(base_dir, check_model_name(name))
    if os.path.realpath(folder) != os.path.join(os.path.realpath(base_dir), name):
        raise ValueError(
            f"The model folder {folder} is a symbolic link (to {os.path.realpath(folder)}): "
            "exports write and clean only inside the base folder. Replace the link by a "
            "folder, or export with the linked folder's parent as the base folder.")
    return folder


def next_version(model_dir):
    """1 + the highest integer version folder in `model_dir` (1 if there is none)."""
    return max(version_folders(model_dir), default=0) + 1


def export_for_serving(model, base_dir, name, version=None, config_base_path="/models",
                       max_samples=MAX_SAMPLES, max_pixels=MAX_PIXELS,
                       max_sample_pixels=MAX_SAMPLE_PIXELS, image_range=IMAGE_RANGE):
    """Write `model` as version `version` of `name` under `base_dir`, as TF Serving expects.

    Args:
        model: a built `ProbabilisticUNet` (four signatures) or baseline (`serving_default`
            only, see `serving_functions`), or the path of a saved `.keras` model.
        base_dir: the model base folder (e.g. `saved_models/`), holding `<name>/<version>/`.
        name: the model's serving name: ASCII letters, digits, `-`, `_`, `.`, not starting
            with `.` (`check_model_name`); `<base_dir>/<name>` must not be a symbolic link.
        version: integer version; default the next free one.
        config_base_path: where `base_dir` is mounted in the serving container, for the
            `models.config` written beside the models (default `/models`, as in the
            `tensorflow/serving` image).
        max_samples: the most samples per image one request may ask for (`num_samples`, or
            the samples of `z` in `decode`); default 1000.
        max_pixels: the most image pixels one request may send, b * h * w of `images` or
            `features`; default 2**20 (one 1024 x 1024 image, 64 of 128 x 128; about 1 GB of
            activations on the default configuration).
        max_sample_pixels: the most sampled pixels one request may ask for, b * m * h * w;
            default 2**24 (1000 samples of one 128 x 128 image).
        image_range: `(low, high)`, the range of the pixel values the model was trained on:
            (0, 1) for every built-in loader. Images with values more than half that range
            beyond it (e.g. 0..255 pixels sent to a [0, 1] model) are refused with the
            conversion. None accepts any finite values.

    The signatures refuse requests beyond these limits with INVALID_ARGUMENT before any
    memory is spent: TF Serving itself bounds neither the sample count nor the image size.
    They are recorded in the version's `assets.extra/tfprobunet_config.json` (`"limits"`).

    Returns:
        The version folder's path, `<base_dir>/<name>/<version>`.

    Raises:
        ValueError: a bad name, version or limit, or `NonFiniteWeightsError` for a model whose
            weights hold NaN or Inf (a run that diverged): before anything is written.
        OSError: writing failed (e.g. ENOSPC, a full disk), naming the version's path; no
            version and no temporary file is left. `models.config` is updated just before the
            version is renamed into place: only if that rename fails does it list a name that
            has no version yet (which TF Serving waits for).
    """
    # Everything is checked before anything is written.
    model_dir = model_folder(base_dir, name)
    if version is not None and (not isinstance(version, int) or version < 1):
        raise ValueError(f"`version` must be an integer >= 1 or None. Received: {version!r}")
    source = model if isinstance(model, str) else None
    if source is not None:
        model = saving.load_model(source)  # bounded, and refuses non-finite weights
    if not isinstance(model, keras.Model) or not callable(getattr(model, "sample", None)):
        raise TypeError("Expected a tfprobunet model (a keras.Model with `sample(images, m, "
                        f"seed)`, e.g. a ProbabilisticUNet), received {type(model).__name__}.")
    limits = {"max_samples": max_samples, "max_pixels": max_pixels,
              "max_sample_pixels": max_sample_pixels}
    # Checks the model is built, the limits and the range.
    functions = serving_functions(model, **limits, image_range=image_range)
    limits["image_range"] = None if image_range is None else list(_check_range(image_range))
    check_finite(model, source)
    os.makedirs(model_dir, exist_ok=True)
    clean_stale_exports(base_dir, name)
    if version is None:
        version = next_version(model_dir)
    final = os.path.join(model_dir, str(version))
    if os.path.exists(final):
        raise FileExistsError(f"Version {version} of {name!r} already exists at {final}; TF "
                              "Serving versions are immutable. Pass another version or None.")

    # TF Serving ignores folders whose names are not integers: write there, then rename.
    tmp = os.path.join(model_dir, f"{TMP_PREFIX}{version}-{uuid.uuid4().hex}")
    try:
        with _writing(tmp):
            try:
                _write_version(model, functions, limits, tmp)
                # Listed before the version appears: an export that fails changes neither.
                write_models_config(base_dir, name, config_base_path)
                os.rename(tmp, final)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    except (OSError, tf.errors.OpError) as e:
        raise _failed(e, f"Exporting version {version} of {name!r} to {final} failed",
                      "no version and no temporary file is left: free some space or fix the "
                      "permissions there, then export again") from e
    return final


def _failed(error, what, consequence):
    """One OSError for a failed write (an OSError, or a TensorFlow file error): `what` failed,
    the cause, then `consequence`. Keeps the errno, so a full disk is still ENOSPC."""
    if isinstance(error, OSError):
        cause = error.strerror or str(error)
        if error.filename:
            cause += f" ({error.filename})"
    else:  # TensorFlow's file errors carry no errno
        cause = f"{type(error).__name__}: {' '.join(error.message.split()) or 'no message'}"
    message = f"{what}: {cause.rstrip('.')}; {consequence}."
    code = getattr(error, "errno", None)
    return OSError(code, message) if code else OSError(message)


def _write_version(model, functions, limits, tmp):
    archive = keras.export.ExportArchive()
    archive.track(model)
    for signature, fn in functions.items():
        archive.add_endpoint(signature, fn)
    archive.write_out(tmp, verbose=False)
    _write_defaults(tmp, functions)
    os.makedirs(os.path.join(tmp, "assets.extra"), exist_ok=True)
    with open(os.path.join(tmp, CONFIG_ASSET), "w") as f:
        json.dump({"class_name": type(model).__name__, "config": model.get_config(),
                   "image_channels": model.image_channels, "limits": limits}, f, indent=2)


def _write_defaults(path, functions):
    """Record the functions' default arguments (`num_samples`, `seed`) as their SignatureDefs'
    `defaults`, which TF Serving fills in for inputs a request leaves out. `tf.saved_model.save`
    records them only for signatures given as `tf.function`s; Keras' `ExportArchive` passes
    concrete functions. The fingerprint is written again for the changed graph file."""
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow.python.saved_model.pywrap_saved_model import fingerprinting

    graph_path = os.path.join(path, "saved_model.pb")
    saved_model = saved_model_pb2.SavedModel()
    with open(graph_path, "rb") as f:
        saved_model.ParseFromString(f.read())
    for name, fn in functions.items():
        parameters = inspect.signature(fn.python_function).parameters.values()
        signature = saved_model.meta_graphs[0].signature_def[name]
        for parameter in parameters:
            if parameter.default is not inspect.Parameter.empty:
                signature.defaults[parameter.name].CopyFrom(
                    tf.make_tensor_proto(parameter.default))
    with open(graph_path, "wb") as f:
        f.write(saved_model.SerializeToString())
    fingerprint_path = os.path.join(path, "fingerprint.pb")
    if os.path.exists(fingerprint_path):
        with open(fingerprint_path, "wb") as f:
            f.write(fingerprinting.CreateFingerprintDef(path))


@contextlib.contextmanager
def _writing(tmp):
    """Mark the temporary folder `tmp` as being written while the block runs: its lock file
    (`tmp` + `.lock`, created first) is held, and released by the system if the writer dies."""
    lock = tmp + LOCK_SUFFIX
    with _io.locked(lock):
        try:
            yield
        finally:
            os.remove(lock)


def clean_stale_exports(base_dir, name):
    """Remove the temporary folders (and lock files) that killed exports of `name` left in
    `<base_dir>/<name>/`: those whose lock no process holds. A folder being written by a live
    export, in this process or another, is kept, and so are symbolic links (no export writes
    one, and they could lead outside the base folder). `name` is checked (`model_folder`).

    Returns:
        The removed folders' paths.
    """
    model_dir = model_folder(base_dir, name)
    entries = os.listdir(model_dir) if os.path.isdir(model_dir) else []
    # Each export's folder and its lock file; either may be left alone by a kill (the lock
    # file alone when killed between the rename into place and the unlock).
    stems = {entry[:-len(LOCK_SUFFIX)] if entry.endswith(LOCK_SUFFIX) else entry
             for entry in entries if entry.startswith(TMP_PREFIX)}
    removed = []
    for stem in sorted(stems):
        path = os.path.join(model_dir, stem)
        if os.path.islink(path) or os.path.islink(path + LOCK_SUFFIX):
            continue
        with _io.locked(path + LOCK_SUFFIX, blocking=False) as stale:
            if stale:
                if os.path.isdir(path):
                    shutil.rmtree(path, ignore_errors=True)
                    removed.append(path)
                os.remove(path + LOCK_SUFFIX)
    return removed


def write_models_config(base_dir, name, config_base_path="/models"):
    """Add (or keep) `name` in `<base_dir>/models.config`, TF Serving's `ModelServerConfig` in
    text format; other models listed there are kept. Written atomically, under a lock on
    `models.config.lock` (concurrent calls, from threads or processes, all land); not written
    when `name` is listed already. The names, `name` and those read, are checked
    (`check_model_name`). A failed write leaves models.config as it was, and no temporary file:
    one OSError naming it."""
    try:
        from google.protobuf import text_format
        from tensorflow_serving.config import model_server_config_pb2
    except ImportError as e:
        raise ImportError("Writing models.config needs tensorflow-serving-api: "
                          "pip install 'tfprobunet[serving]'") from e
    check_model_name(name)
    path = os.path.join(base_dir, MODELS_CONFIG)
    os.makedirs(base_dir, exist_ok=True)
    with _io.locked(path + LOCK_SUFFIX):  # read, modify and replace: one writer at a time
        config = model_server_config_pb2.ModelServerConfig()
        if os.path.exists(path):
            with open(path) as f:
                text_format.Parse(f.read(), config)
        entries = config.model_config_list.config
        for entry in entries:
            check_model_name(entry.name, f"Each model name listed in {path}")
        if any(entry.name == name for entry in entries):
            return path
        entry = entries.add()
        entry.name = name
        entry.base_path = f"{config_base_path.rstrip('/')}/{name}"
        entry.model_platform = "tensorflow"
        try:
            with _io.replacing(path) as tmp, open(tmp, "w") as f:
                f.write(text_format.MessageToString(config))
        except OSError as e:
            raise _failed(e, f"Could not update {path}", "it is as it was") from e
    return path
