"""Write a trained model as a version TensorFlow Serving serves (DESIGN section 6): its
SavedModel with the signatures of `signatures.py`, their defaults, and the limits it records.

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

import inspect
import json
import os
import re
import shutil
import uuid

import keras
import tensorflow as tf

from tfprobunet import _io, layers, saving
from tfprobunet.data import intensity as intensity_lib
from tfprobunet.defaults import (MAX_PIXELS, MAX_SAMPLE_BYTES, MAX_SAMPLE_PIXELS, MAX_SAMPLES,
                                 MAX_VERSION)
from tfprobunet.saving import check_finite
from tfprobunet.serving.signatures import (IMAGE_RANGE, INFO, check_image_range, info_function,
                                           serving_functions)

CONFIG_ASSET = os.path.join("assets.extra", "tfprobunet_config.json")
MODELS_CONFIG = "models.config"
TMP_PREFIX = ".tmp-"  # TF Serving ignores folders whose names are not integers
LOCK_SUFFIX = _io.LOCK_SUFFIX


_VERSION = re.compile(r"[0-9]+")


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
                       max_sample_pixels=MAX_SAMPLE_PIXELS, image_range=IMAGE_RANGE,
                       intensity=None, max_sample_bytes=MAX_SAMPLE_BYTES):
    """Write `model` as version `version` of `name` under `base_dir`, as TF Serving expects.

    Args:
        model: a built `ProbabilisticUNet` (four signatures), `StochasticSegmentationNetwork`
            or `MixtureOfStochasticExperts` (three) or baseline (`serving_default` only, see `serving_functions`), or the path
            of a saved `.keras` model.
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
        max_sample_pixels: the most sampled pixels one request may ask for, b * m * h * w,
            counted once per network pass a sample takes (a diffusion model's denoising
            steps, `passes_per_sample`); default 2**24 (1000 samples of one 128 x 128 image;
            4 with CCDM's 250 steps).
        image_range: `(low, high)`, the range of the pixel values the model was trained on:
            (0, 1) for every built-in loader. Images with values more than half that range
            beyond it (e.g. 0..255 pixels sent to a [0, 1] model) are refused with the
            conversion. None accepts any finite values.
        intensity: the rule the model's images were scaled to [0, 1] by
            (`tfprobunet.data.intensity`, e.g. `{"rule": "window", "low": -1000, "high": 400}`),
            recorded for clients, which must scale theirs the same way. None: for a `.keras`
            path, the rule of the training run beside it (`intensity.of_run`: its
            `train_config.json`'s `window` or `percentiles`), else `{"rule": "dtype"}`.
        max_sample_bytes: the most bytes the per-class probabilities of one request's samples
            may take, b * m * h * w * K * 4 (`defaults.sample_bytes`); default 2**29 (512 MiB:
            1000 samples of one 128 x 128 image with up to 8 classes, 32 with 255 classes).
            They are computed whatever outputs a request asks for.

    The signatures refuse requests beyond these limits with INVALID_ARGUMENT before any
    memory is spent: TF Serving itself bounds neither the sample count nor the image size.
    They are recorded in the version's `assets.extra/tfprobunet_config.json` (`"limits"`),
    with `"multiple"` (the side divisor of the images: the signatures refuse other sizes) and
    `"intensity"`. The export adds the `info` signature, which serves that record to clients
    (TF Serving does not serve `assets.extra`): they pad images to the multiple.

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
        if intensity is None:
            intensity = intensity_lib.of_run(source)
    intensity = intensity_lib.check(intensity)
    if not isinstance(model, keras.Model) or not callable(getattr(model, "sample", None)):
        raise TypeError("Expected a tfprobunet model (a keras.Model with `sample(images, m, "
                        f"seed)`, e.g. a ProbabilisticUNet), received {type(model).__name__}.")
    limits = {"max_samples": max_samples, "max_pixels": max_pixels,
              "max_sample_pixels": max_sample_pixels, "max_sample_bytes": max_sample_bytes}
    # Checks the model is built, the limits and the range.
    functions = serving_functions(model, **limits, image_range=image_range)
    limits["image_range"] = None if image_range is None else list(check_image_range(image_range))
    config = {"class_name": type(model).__name__, "config": model.get_config(),
              "image_channels": model.image_channels, "limits": limits,
              "multiple": layers.size_divisor(model.num_channels), "intensity": intensity}
    functions[INFO] = info_function(config["multiple"], config)
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
                _write_version(model, functions, config, tmp)
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


def _write_version(model, functions, config, tmp):
    archive = keras.export.ExportArchive()
    archive.track(model)
    for signature, fn in functions.items():
        archive.add_endpoint(signature, fn)
    archive.write_out(tmp, verbose=False)
    _write_defaults(tmp, functions)
    os.makedirs(os.path.join(tmp, "assets.extra"), exist_ok=True)
    with open(os.path.join(tmp, CONFIG_ASSET), "w") as f:
        json.dump(config, f, indent=2)


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


# Marks an export's temporary folder as being written (its lock file held).
_writing = _io.claimed


def clean_stale_exports(base_dir, name):
    """Remove the temporary folders (and lock files) that killed exports of `name` left in
    `<base_dir>/<name>/`: those whose lock no process holds. A folder being written by a live
    export, in this process or another, is kept, and so are symbolic links (no export writes
    one, and they could lead outside the base folder). `name` is checked (`model_folder`).

    Returns:
        The removed folders' paths.
    """
    return _io.remove_unclaimed(model_folder(base_dir, name), TMP_PREFIX)


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
