"""Loading and checking saved models: `load_model` reads a `.keras` file only once it knows what
reading it costs, and `check_finite` refuses a model whose weights hold NaN or infinite values
(what a diverged run leaves) before it is evaluated, exported or served.

Before Keras reads a file, `load_model` checks that the path is a complete zip archive, that no
member inflates more than `MAX_EXPANSION` times its stored size (Keras stores members
uncompressed: such a member is a decompression bomb), that the archive inflates to at most the
limit, that `config.json` is at most `MAX_CONFIG_BYTES`, that the numbers which make a model
costly to build (levels, channels, convolutions per block, members, ...) are within the limits
the constructors apply (`tfprobunet.models.checks.check_model_sizes`: a config read as it stands
is not built first), and that the weights the config creates, sized without allocating them,
fit in the limit. The limit, `MAX_MODEL_BYTES` (1 GiB), is
raised per call (`load_model(path, max_bytes=...)`) or for a whole process, the command line
included, by the environment variable `TFPROBUNET_MAX_MODEL_BYTES`.
"""

import importlib
import json
import math
import os
import zipfile

import keras
import numpy as np
import tensorflow as tf

from tfprobunet import catalog
from tfprobunet.models import checks
from tfprobunet.models.checks import byte_limit, readable  # the loaders import them from here

# The most bytes a `.keras` file may inflate to, and its model's weights take (the optimizer's
# state adds up to twice as much again). The default model's weights take about 20 MB.
MAX_MODEL_BYTES = 2**30
MAX_MODEL_BYTES_VARIABLE = "TFPROBUNET_MAX_MODEL_BYTES"
# Keras writes archive members stored (1:1); DEFLATE reaches about 1032:1. Members smaller than
# the floor are not worth checking.
MAX_EXPANSION = 100
EXPANSION_FLOOR = 2**24
# A model's config.json takes a few kilobytes.
MAX_CONFIG_BYTES = 2**24
# Objects (layers, initializers, dtype policies: dicts with a "class_name") a config may
# describe: the package's models have a handful; each Keras layer brings about four.
MAX_CONFIG_OBJECTS = 20000
# What an error message shows of another error's text (Keras' can list every weight).
MAX_ECHO = 300
CONFIG = "config.json"


class ModelFileError(ValueError):
    """A path is not a `.keras` file that can be loaded within the limits: the message names the
    path, what it holds, and what would work."""


class NonFiniteWeightsError(ValueError):
    """A model's weights hold NaN or infinite values: its outputs mean nothing."""


def _raise_hint(limit):
    return (f"If you trust the file and have the memory, raise the limit of {limit:,} bytes: "
            f"load_model(path, max_bytes=...) or {MAX_MODEL_BYTES_VARIABLE}=<bytes>.")


def _open_archive(path):
    """`path` as an open `zipfile.ZipFile`, or a `ModelFileError` saying what it is instead."""
    if not os.path.exists(path):
        raise ModelFileError(f"No model at {path}: pass the .keras file a training run wrote "
                             "(WORKDIR/model.keras) or `model.save` wrote.")
    if os.path.isdir(path):
        inside = os.path.join(path, "model.keras")
        hint = (f"; it holds a training run's model: pass {inside}" if os.path.isfile(inside)
                else ": pass the .keras file a training run wrote (WORKDIR/model.keras) or "
                     "`model.save` wrote (a SavedModel export is served, not loaded)")
        raise ModelFileError(f"{path} is a directory, not a .keras file{hint}.")
    size = os.path.getsize(path)
    if size == 0:
        raise ModelFileError(f"{path} is empty (0 bytes), not a .keras model: a save or copy "
                             "that was interrupted? Save or copy it again.")
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, EOFError, OSError) as error:
        raise ModelFileError(
            f"{path} ({size:,} bytes) is not a complete .keras archive ({error}): a file cut "
            "short by an interrupted save, copy or download? Save or copy it again.") from None


def _check_members(path, archive, limit):
    """Refuse bombs and archives past `limit` from the sizes the archive declares: Python's
    zipfile never inflates a member past its declared size (a member that would is a CRC
    error), so these bound what reading it costs."""
    infos = archive.infolist()
    for info in infos:
        if (info.file_size > EXPANSION_FLOOR
                and info.file_size > MAX_EXPANSION * max(info.compress_size, 1)):
            raise ModelFileError(
                f"{path}: its member {info.filename} would inflate from "
                f"{readable(info.compress_size)} to {readable(info.file_size)}, "
                f"{info.file_size // max(info.compress_size, 1):,} times: a decompression "
                f"bomb (Keras stores members uncompressed; more than {MAX_EXPANSION} times is "
                "refused). It was not inflated. Save the model again with model.save.")
    total = sum(info.file_size for info in infos)
    if total > limit:
        largest = max(infos, key=lambda info: info.file_size)
        raise ModelFileError(
            f"{path} inflates to {readable(total)} ({total:,} bytes; {largest.filename}: "
            f"{readable(largest.file_size)}), above the limit of {readable(limit)}. "
            + _raise_hint(limit))
    names = {info.filename for info in infos}
    if CONFIG not in names or not names & {"model.weights.h5", "model.weights.npz"}:
        raise ModelFileError(f"{path} is a zip archive but not a .keras model: it has no "
                             f"{CONFIG} and model.weights.h5 (it holds {sorted(names)[:5]}).")


def _read_config(path, archive):
    info = archive.getinfo(CONFIG)
    if info.file_size > MAX_CONFIG_BYTES:
        raise ModelFileError(f"{path}: its {CONFIG} declares {readable(info.file_size)}, above "
                             f"{readable(MAX_CONFIG_BYTES)} (a model's takes a few KiB): not a "
                             "file model.save wrote. It was not read.")
    try:
        with archive.open(info) as f:
            return json.loads(f.read(MAX_CONFIG_BYTES + 1))
    except (ValueError, RecursionError, zipfile.BadZipFile) as error:
        raise ModelFileError(f"{path}: its {CONFIG} is not a model's JSON config "
                             f"({type(error).__name__}: {error}).") from None


def _cut(text, limit=MAX_ECHO):
    """`text` on one line, at most `limit` characters of it."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def check_config_sizes(path, config):
    """Refuse, before anything is built, a config whose model or nested layers ask for more
    than `checks.check_model_sizes` admits (levels, channels, convolutions per block, members,
    ...: what the constructors refuse too), or that describes more than `MAX_CONFIG_OBJECTS`
    objects; one short `ModelFileError` naming the class and the argument."""
    stack, objects = [config], 0
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            if "class_name" in item:
                objects += 1
                if isinstance(item.get("config"), dict):
                    try:
                        checks.check_model_sizes(item["config"])
                    except ValueError as error:
                        raise ModelFileError(
                            f"{path}: its {CONFIG} asks for a "
                            f"{checks.shown(item['class_name'], 40)} beyond the size limits; "
                            f"nothing was built: {error}") from None
            stack.extend(item.values())
    if objects > MAX_CONFIG_OBJECTS:
        raise ModelFileError(f"{path}: its {CONFIG} describes {objects:,} objects (layers, "
                             f"initializers, ...), above {MAX_CONFIG_OBJECTS:,}; refused before "
                             "anything was built.")


def config_weights(config):
    """The weights a model config (a `.keras` file's config.json, `build_config` included)
    creates, as `[(path, shape, dtype)]`, found without allocating them: the model is built in a
    `keras.StatelessScope`, where Keras defers creating variables until they are used."""
    from keras.src.backend.common import global_state  # where Keras keeps deferred variables

    # The optimizer creates its variables with values, which a stateless scope refuses.
    config = {k: v for k, v in config.items() if k != "compile_config"}
    deferred = list(global_state.get_global_attribute("uninitialized_variables") or [])
    try:
        with keras.StatelessScope(initialize_variables=False):
            model = keras.saving.deserialize_keras_object(config)
        return [(v.path, tuple(v.shape), v.dtype) for v in model.weights]
    finally:
        # Left there, the next symbolic call would allocate them.
        global_state.set_global_attribute("uninitialized_variables", deferred)


def _check_weights(path, config, limit):
    try:
        weights = config_weights(config)
    except Exception as error:  # noqa: BLE001 -- any failure here is the load's failure
        raise ModelFileError(f"{path}: Keras cannot build the model its {CONFIG} describes "
                             f"({type(error).__name__}: {_cut(error)})") from None
    sizes = [math.prod(shape) * tf.as_dtype(dtype).size for _, shape, dtype in weights]
    total = sum(sizes)
    if total > limit:
        name, shape, _ = weights[int(np.argmax(sizes))]
        arguments = {k: v for k, v in config.get("config", {}).items()
                     if k in ("num_channels", "latent_dim", "num_classes")}
        raise ModelFileError(
            f"{path}: its config builds a {checks.shown(config.get('class_name', 'model'), 40)} "
            f"({', '.join(f'{k}={checks.shown(v)}' for k, v in arguments.items())}) whose "
            f"{len(weights)} "
            f"weights take {readable(total)} ({total:,} bytes; the largest, {name}, "
            f"{shape}), above the limit of {readable(limit)}; nothing was allocated. "
            + _raise_hint(limit))


def _import_model_class(config):
    """Import the module of the model class `config` names when Keras does not know the class
    yet: one of the package's (`import tfprobunet` imports none until it is used), or a model
    of your own that an installed package declares in the `tfprobunet.models` entry-point group
    (see `tfprobunet.catalog`)."""
    if not isinstance(config, dict) or keras.saving.get_registered_object(
            config.get("registered_name")) is not None:
        return
    module = config.get("module")
    if isinstance(module, str) and module.startswith("tfprobunet.models."):
        importlib.import_module(module)
    else:
        catalog.entry_point_class(module, config.get("class_name"))


def load_model(path, max_bytes=None):
    """Load a `.keras` model after checking what loading it costs, and that its weights are
    finite.

    Args:
        path: a `.keras` file (`model.save`; a training run's `WORKDIR/model.keras`).
        max_bytes: the most bytes the archive may inflate to and the model's weights may take;
            None: `TFPROBUNET_MAX_MODEL_BYTES` if set, else `MAX_MODEL_BYTES` (1 GiB).

    Returns:
        The model, compiled as it was saved.

    Raises:
        ModelFileError: `path` is missing, a directory, empty, cut short, not a `.keras` archive,
            a decompression bomb, beyond the limit, its config asks for a model beyond the
            size limits (`check_config_sizes`), or Keras cannot load it; the message says which.
        NonFiniteWeightsError: its weights hold NaN or infinite values.

    Example:
        >>> model = tfprobunet.saving.load_model("runs/demo/model.keras")
    """
    path = os.fspath(path)
    limit = byte_limit(max_bytes, MAX_MODEL_BYTES_VARIABLE, MAX_MODEL_BYTES)
    with _open_archive(path) as archive:
        _check_members(path, archive, limit)
        config = _read_config(path, archive)
    check_config_sizes(path, config)
    _import_model_class(config)
    _check_weights(path, config, limit)
    try:
        model = keras.saving.load_model(path)
    except Exception as error:  # noqa: BLE001 -- one error type, naming the path
        raise ModelFileError(f"{path}: Keras could not load it ({type(error).__name__}: "
                             f"{_cut(error)})") from error
    check_finite(model, path)
    return model


def nonfinite_weights(model, optimizer=False):
    """The paths of `model`'s weights (and, with `optimizer`, its optimizer's variables) that
    hold a NaN or an infinite value, in order; empty when every one is finite."""
    variables = [*model.weights, *(getattr(model.optimizer, "variables", []) if optimizer
                                   else [])]
    return [v.path for v in variables
            if not np.all(np.isfinite(keras.ops.convert_to_numpy(v)))]


def check_finite(model, what=None):
    """Raise `NonFiniteWeightsError` if any of `model`'s weights is NaN or infinite, naming how
    many and the first; `what` names the model in the message (e.g. its path)."""
    bad = nonfinite_weights(model)
    if bad:
        raise NonFiniteWeightsError(
            f"{what or 'The model'} has non-finite (NaN or infinite) values in {len(bad)} of its "
            f"{len(model.weights)} weights, e.g. {bad[0]}: it comes from a run that diverged, "
            "and its samples would mean nothing. Train it again (a lower learning rate, checked "
            "inputs), or use an earlier checkpoint.")


def state_bytes(model):
    """The bytes of `model`'s weights and optimizer state: about what a checkpoint or a
    `.keras` file of it holds."""
    variables = [*model.weights, *getattr(model.optimizer, "variables", [])]
    return sum(int(np.prod(v.shape)) * tf.as_dtype(v.dtype).size
               for v in variables)
