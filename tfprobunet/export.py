"""Export a `ProbabilisticUNet` as a SavedModel for TensorFlow Serving (DESIGN section 6).

Four signatures, their input and output keys part of the public API (b batch, h x w image,
m samples, F feature channels, N latent dimension, K classes; `None` dimensions throughout):

- `serving_default`: `images (b, h, w, C) float32`, `num_samples () int32`, `seed (2,) int32`
  -> `masks (b, m, h, w) int32`, `probabilities (b, m, h, w, K) float32`
- `features`: `images` -> `features (b, h, w, F)`, `prior_loc (b, N)`, `prior_scale (b, N)`
- `sample`: `features`, `prior_loc`, `prior_scale`, `num_samples`, `seed`
  -> `masks`, `probabilities`, `z (b, m, N)`
- `decode`: `features`, `z (b, m, N)` -> `masks`, `probabilities`

A client computes `features` once per image and asks `sample` for as many segmentations as it
needs: only f_comb runs per sample. Sampling is stateless, driven by `seed`: the same request
gives the same masks, and `features` + `sample` give exactly what `serving_default` gives.

Versions are written to a temporary sibling folder and renamed into place, so TF Serving, which
polls `<base_dir>/<name>/`, never sees a half-written version. The temporary folder is marked as
being written by a file lock beside it, which the system releases when its writer dies: the
next export removes what killed exports left (`clean_stale_exports`), never a folder another
export is writing. `models.config` is updated under a file lock too, so exports of different
models that finish together all appear in it.
"""

import contextlib
import fcntl
import json
import os
import shutil
import uuid

import keras
import tensorflow as tf

from tfprobunet import model as model_lib

SIGNATURES = ("serving_default", "features", "sample", "decode")
CONFIG_ASSET = os.path.join("assets.extra", "tfprobunet_config.json")
MODELS_CONFIG = "models.config"
TMP_PREFIX = ".tmp-"  # TF Serving ignores folders whose names are not integers
LOCK_SUFFIX = ".lock"


# `tensor` behind an assert: a failing request gets INVALID_ARGUMENT with the message.
_check = model_lib._require


def _check_rank(tensor, rank, name, layout):
    return _check(tf.equal(tf.rank(tensor), rank),
                  f"`{name}` must have rank {rank}, {layout}.", tensor)


def _check_num_samples(num_samples):
    return _check(num_samples >= 1, "`num_samples` must be >= 1.", num_samples)


def _outputs(logits):
    return {"masks": tf.argmax(logits, axis=-1, output_type=tf.int32),
            "probabilities": tf.nn.softmax(logits, axis=-1)}


def serving_functions(model):
    """The four signature functions of `model`, as `tf.function`s with named input signatures.

    Returns:
        dict name -> `tf.function`, in the order of `SIGNATURES`.
    """
    if not model.built or model.image_channels is None:
        raise ValueError("Build the model before exporting it (call it on images, or "
                         "`model.build((None, h, w, c))`), so its channel count is known.")
    channels, n, f = model.image_channels, model.latent_dim, model.num_channels[0]
    images_spec = tf.TensorSpec([None, None, None, channels], tf.float32, name="images")
    num_samples_spec = tf.TensorSpec([], tf.int32, name="num_samples")
    seed_spec = tf.TensorSpec([2], tf.int32, name="seed")
    features_spec = tf.TensorSpec([None, None, None, f], tf.float32, name="features")
    loc_spec = tf.TensorSpec([None, n], tf.float32, name="prior_loc")
    scale_spec = tf.TensorSpec([None, n], tf.float32, name="prior_scale")
    z_spec = tf.TensorSpec([None, None, n], tf.float32, name="z")

    def check_images(images):
        images = _check_rank(images, 4, "images", f"(b, h, w, {channels})")
        # `model.features` then checks that h and w are divisible and the values finite.
        return _check(tf.equal(tf.shape(images)[3], channels),
                      f"`images` must have {channels} channel(s), (b, h, w, {channels}).", images)

    def latents(prior_loc, prior_scale, num_samples, seed):
        num_samples = _check_num_samples(num_samples)
        prior_scale = _check(tf.reduce_all(prior_scale > 0), "`prior_scale` must be > 0.",
                             prior_scale)
        return model._prior_latents(prior_loc, prior_scale, num_samples, seed)

    def check_batch(features, other, other_name):
        """Both tensors behind the check, so neither reaches an op that fails less clearly."""
        features = _check_rank(features, 4, "features", f"(b, h, w, {f})")
        same = tf.equal(tf.shape(features)[0], tf.shape(other)[0])
        message = f"`features` and `{other_name}` must have the same batch size."
        return _check(same, message, features), _check(same, message, other)

    @tf.function(input_signature=[features_spec, loc_spec, scale_spec, num_samples_spec,
                                  seed_spec])
    def sample(features, prior_loc, prior_scale, num_samples, seed):
        features, prior_loc = check_batch(features, prior_loc, "prior_loc")
        z = latents(prior_loc, prior_scale, num_samples, seed)
        return {**_outputs(model.decode(features, z)), "z": z}

    @tf.function(input_signature=[images_spec])
    def features(images):
        features, prior = model.features(check_images(images))
        # float32 on the wire under mixed precision too: `sample` and `decode` take float32.
        return {"features": tf.cast(features, tf.float32), "prior_loc": prior.loc,
                "prior_scale": prior.stddev()}

    @tf.function(input_signature=[images_spec, num_samples_spec, seed_spec])
    def serving_default(images, num_samples, seed):
        features, prior = model.features(check_images(images))
        z = latents(prior.loc, prior.stddev(), num_samples, seed)
        return _outputs(model.decode(features, z))

    @tf.function(input_signature=[features_spec, z_spec])
    def decode(features, z):
        features, z = check_batch(features, z, "z")
        return _outputs(model.decode(features, z))

    return {"serving_default": serving_default, "features": features, "sample": sample,
            "decode": decode}


def next_version(model_dir):
    """1 + the highest integer version folder in `model_dir` (1 if there is none)."""
    versions = [int(v) for v in os.listdir(model_dir) if v.isdigit()] \
        if os.path.isdir(model_dir) else []
    return max(versions, default=0) + 1


def export_for_serving(model, base_dir, name, version=None, config_base_path="/models"):
    """Write `model` as version `version` of `name` under `base_dir`, as TF Serving expects.

    Args:
        model: a built `ProbabilisticUNet`, or the path of a saved `.keras` model.
        base_dir: the model base folder (e.g. `saved_models/`), holding `<name>/<version>/`.
        name: the model's serving name (letters, digits, `-`, `_`, `.`).
        version: integer version; default the next free one.
        config_base_path: where `base_dir` is mounted in the serving container, for the
            `models.config` written beside the models (default `/models`, as in the
            `tensorflow/serving` image).

    Returns:
        The version folder's path, `<base_dir>/<name>/<version>`.
    """
    if isinstance(model, str):
        model = keras.models.load_model(model)
    if not isinstance(model, model_lib.ProbabilisticUNet):
        raise TypeError(f"Expected a ProbabilisticUNet, received {type(model).__name__}.")
    if not name or not all(c.isalnum() or c in "-_." for c in name):
        raise ValueError("`name` must be a non-empty string of letters, digits, '-', '_' or '.'. "
                         f"Received: {name!r}")
    functions = serving_functions(model)  # checks that the model is built
    model_dir = os.path.join(base_dir, name)
    os.makedirs(model_dir, exist_ok=True)
    clean_stale_exports(base_dir, name)
    if version is None:
        version = next_version(model_dir)
    if not isinstance(version, int) or version < 1:
        raise ValueError(f"`version` must be an integer >= 1. Received: {version!r}")
    final = os.path.join(model_dir, str(version))
    if os.path.exists(final):
        raise FileExistsError(f"Version {version} of {name!r} already exists at {final}; TF "
                              "Serving versions are immutable. Pass another version or None.")

    # TF Serving ignores folders whose names are not integers: write there, then rename.
    tmp = os.path.join(model_dir, f"{TMP_PREFIX}{version}-{uuid.uuid4().hex}")
    with _writing(tmp):
        _write_version(model, functions, tmp, final)
    write_models_config(base_dir, name, config_base_path)
    return final


def _write_version(model, functions, tmp, final):
    try:
        archive = keras.export.ExportArchive()
        archive.track(model)
        for signature, fn in functions.items():
            archive.add_endpoint(signature, fn)
        archive.write_out(tmp, verbose=False)
        os.makedirs(os.path.join(tmp, "assets.extra"), exist_ok=True)
        with open(os.path.join(tmp, CONFIG_ASSET), "w") as f:
            json.dump({"class_name": type(model).__name__, "config": model.get_config(),
                       "image_channels": model.image_channels}, f, indent=2)
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _locked(path, blocking=True):
    """Hold an exclusive lock on the file `path` (created if missing) within the block; other
    processes and threads wait for it (or, not `blocking`, the block gets False at once)."""
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def _writing(tmp):
    """Mark the temporary folder `tmp` as being written while the block runs: its lock file
    (`tmp` + `.lock`, created first) is held, and released by the system if the writer dies."""
    lock = tmp + LOCK_SUFFIX
    with _locked(lock):
        try:
            yield
        finally:
            os.remove(lock)


def clean_stale_exports(base_dir, name):
    """Remove the temporary folders (and lock files) that killed exports of `name` left in
    `<base_dir>/<name>/`: those whose lock no process holds. A folder being written by a live
    export, in this process or another, is kept.

    Returns:
        The removed folders' paths.
    """
    model_dir = os.path.join(base_dir, name)
    entries = os.listdir(model_dir) if os.path.isdir(model_dir) else []
    # Each export's folder and its lock file; either may be left alone by a kill (the lock
    # file alone when killed between the rename into place and the unlock).
    stems = {entry[:-len(LOCK_SUFFIX)] if entry.endswith(LOCK_SUFFIX) else entry
             for entry in entries if entry.startswith(TMP_PREFIX)}
    removed = []
    for stem in sorted(stems):
        path = os.path.join(model_dir, stem)
        with _locked(path + LOCK_SUFFIX, blocking=False) as stale:
            if stale:
                if os.path.isdir(path):
                    shutil.rmtree(path, ignore_errors=True)
                    removed.append(path)
                os.remove(path + LOCK_SUFFIX)
    return removed


def write_models_config(base_dir, name, config_base_path="/models"):
    """Add (or keep) `name` in `<base_dir>/models.config`, TF Serving's `ModelServerConfig` in
    text format; other models listed there are kept. Written atomically, under a lock on
    `models.config.lock` (concurrent calls, from threads or processes, all land)."""
    try:
        from google.protobuf import text_format
        from tensorflow_serving.config import model_server_config_pb2
    except ImportError as e:
        raise ImportError("Writing models.config needs tensorflow-serving-api: "
                          "pip install 'tfprobunet[serving]'") from e
    path = os.path.join(base_dir, MODELS_CONFIG)
    os.makedirs(base_dir, exist_ok=True)
    with _locked(path + LOCK_SUFFIX):  # read, modify and replace: one writer at a time
        config = model_server_config_pb2.ModelServerConfig()
        if os.path.exists(path):
            with open(path) as f:
                text_format.Parse(f.read(), config)
        entries = config.model_config_list.config
        if not any(entry.name == name for entry in entries):
            entry = entries.add()
            entry.name = name
            entry.base_path = f"{config_base_path.rstrip('/')}/{name}"
            entry.model_platform = "tensorflow"
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with open(tmp, "w") as f:
            f.write(text_format.MessageToString(config))
        os.replace(tmp, path)
    return path
