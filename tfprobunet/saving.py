"""Loading and checking saved models: `load_model` reads a `.keras` file only once it knows what
reading it costs, and `check_finite` refuses a model whose weights hold NaN or infinite values
(what a diverged run leaves) before it is evaluated, exported or served.

Before Keras reads a file, `load_model` checks that the path is a complete zip archive, that no
member inflates more than `MAX_EXPANSION` times its stored size (Keras stores members
uncompressed: such a member is a decompression bomb), that the archive inflates to at most the
limit, that `config.json` is at most `MAX_CONFIG_BYTES`, and that the weights the config creates,
sized without allocating them, fit in the limit. The limit, `MAX_MODEL_BYTES` (1 GiB), is
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
CONFIG = "config.json"


class ModelFileError(ValueError):
    """A path is not a `.keras` file that can be loaded within the limits: the message names the
    path, what it holds, and what would work."""


class NonFiniteWeightsError(ValueError):
    """A model's weights hold NaN or infinite values: its outputs mean nothing."""


def byte_limit(max_bytes, variable, default):
    """The limit in force: `max_bytes` if given, else the environment variable `variable` (a
    number of bytes, e.g. `8000000000` or `8e9`), else `default`."""
    source = "max_bytes"
    if max_bytes is None:
        text = os.environ.get(variable, "").strip()
        if not text:
            return default
        source = variable
        try:
            max_bytes = int(text) if text.isdigit() else int(float(text))
        except (ValueError, OverflowError):
            raise ValueError(f"{variable} must be a number of bytes, e.g. 8000000000 or 8e9. "
                             f"Received {text!r}.") from None
    if max_bytes < 1:
        raise ValueError(f"{source} must be a positive number of bytes. Received {max_bytes}.")
    return int(max_bytes)


def readable(size):
    """`size` bytes as `1.5 GiB` (or `512 bytes`)."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


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
                             f"({type(error).__name__}: {' '.join(str(error).split())})") from None
    sizes = [math.prod(shape) * tf.as_dtype(dtype).size for _, shape, dtype in weights]
    total = sum(sizes)
    if total > limit:
        name, shape, _ = weights[int(np.argmax(sizes))]
        arguments = {k: v for k, v in config.get("config", {}).items()
                     if k in ("num_channels", "latent_dim", "num_classes")}
        raise ModelFileError(
            f"{path}: its config builds a {config.get('class_name', 'model')} "
            f"({', '.join(f'{k}={v}' for k, v in arguments.items())}) whose {len(weights)} "
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
            a decompression bomb, beyond the limit, or Keras cannot load it; the message says
            which.
        NonFiniteWeightsError: its weights hold NaN or infinite values.

    Example:
        >>> model = tfprobunet.saving.load_model("runs/demo/model.keras")
    """
    path = os.fspath(path)
    limit = byte_limit(max_bytes, MAX_MODEL_BYTES_VARIABLE, MAX_MODEL_BYTES)
    with _open_archive(path) as archive:
        _check_members(path, archive, limit)
        config = _read_config(path, archive)
    _import_model_class(config)
    _check_weights(path, config, limit)
    try:
        model = keras.saving.load_model(path)
    except Exception as error:  # noqa: BLE001 -- one error type, naming the path
        raise ModelFileError(f"{path}: Keras could not load it ({type(error).__name__}: "
                             f"{' '.join(str(error).split())})") from error
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
